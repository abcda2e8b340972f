"""A CPU profile of every Python thread of this process, and a summary of where the time went.

cProfile only watches the thread that enables it, and the OMS works on several: the event loop
(API, workers' polling, payload conversion, simulators), the workflow-activation threads, the
activity thread pool and the API's database threads. `AllThreadsProfiler` gives each thread
started after `start()` a profiler of its own (through `threading.setprofile`) and merges them.
The clock is each thread's CPU time, so a thread waiting for I/O, a lock or the GIL counts
nothing, and the totals are CPU seconds that add up across threads.
"""

from __future__ import annotations

import cProfile
import pstats
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from bench.measure import thread_group

_PROJECT = str(Path(__file__).resolve().parent.parent) + "/"

# pstats' key of a function: (file, line, name); its row: (primitive calls, calls, tottime,
# cumtime, callers).
FunctionKey = tuple[str, int, str]
StatsRow = tuple[int, int, float, float, dict[FunctionKey, Any]]

# Where a function's own time goes, by its file (or, for built-ins, its name): the first match
# wins. Built-ins carry the name of their type, e.g. "<method 'send' of '_socket.socket' objects>".
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "workflow sandbox (module import/exec per workflow and per payload)",
        ("temporalio/worker/workflow_sandbox/",),
    ),
    (
        "workflow code and SDK workflow runtime",
        (
            "temporalio/worker/_workflow_instance",
            "temporalio/workflow.py",
            "/workflows/",
            "/bench/reference.py",
        ),
    ),
    ("OMS domain (pure)", ("/domain/",)),
    (
        "Temporal SDK: worker, client, bridge, converter",
        (
            "temporalio/",
            "'builtins.WorkerRef'",
            "'builtins.ClientRef'",
            "temporal_sdk_bridge",
            "google/protobuf",
            "'google._upb",
            "_upb._message",
        ),
    ),
    (
        "pydantic (validation, serialisation)",
        ("pydantic/", "pydantic_core", "'pydantic_core."),
    ),
    (
        "SQL (SQLAlchemy, sqlmodel, sqlite3)",
        ("sqlalchemy/", "sqlmodel/", "sqlite3", "/db/"),
    ),
    (
        "HTTP server (uvicorn, starlette, FastAPI)",
        ("uvicorn/", "starlette/", "fastapi/", "/api/"),
    ),
    ("HTTP client (httpx, httpcore) and h11", ("httpx/", "httpcore/", "h11/", "/venues/sinks")),
    ("authorisation (casbin, simpleeval, ast)", ("casbin/", "simpleeval", "/ast.py")),
    ("JWT (PyJWT, hmac, json)", ("jwt/", "/hmac.py", "/json/", "'_hashlib", "_json")),
    ("OMS activities and simulators", ("/activities/", "/venues/")),
    (
        "asyncio, anyio, sockets",
        ("asyncio/", "anyio/", "selectors", "socket", "'select.", "_asyncio", "sniffio"),
    ),
    (
        "threads, queues, locks",
        ("threading.py", "concurrent/futures", "queue", "'_thread.", "_queue"),
    ),
    (
        "imports, compile, exec",
        ("importlib", "<frozen", "builtins.compile", "builtins.exec", "marshal"),
    ),
    ("this benchmark (load generator)", ("/bench/",)),
)
OTHER = "other (stdlib, logging, typing, ... whose callers are too)"

# Inclusive CPU time of a few entry points, where cumtime means something (functions that run
# to completion without awaiting): name of the entry -> (file suffix, function name).
ENTRY_POINTS: tuple[tuple[str, str, str], ...] = (
    ("workflow activations (in the sandbox)", "workflow_sandbox/_runner.py", "activate"),
    ("workflow activations (no sandbox)", "worker/_workflow_instance.py", "activate"),
    (
        "new workflow instance (sandbox import of the workflow module)",
        "worker/_workflow.py",
        "_create_workflow_instance",
    ),
    (
        "sandbox serialisation-context lookups (per payload)",
        "workflow_sandbox/_runner.py",
        "get_serialization_context",
    ),
    ("local activity: project_events (read model)", "activities/projection.py", "project_events"),
    ("local activity: pre_trade_data", "activities/compliance.py", "pre_trade_data"),
    ("casbin enforce (Authorizer.check)", "api/auth.py", "check"),
    ("JWT decode (user_from_token)", "api/tokens.py", "user_from_token"),
    ("JWT encode (issue_token)", "api/tokens.py", "issue_token"),
    ("approval matrix read from TOML", "activities/compliance.py", "load_approval_matrix"),
    ("OrderPublic.from_order", "api/schemas.py", "from_order"),
)


def category(key: FunctionKey) -> str:
    """Return the category of a function's own time."""
    filename, _, name = key
    where = filename if filename != "~" else name
    for title, needles in CATEGORIES:
        if any(needle in where for needle in needles):
            return title
    return OTHER


class _Collected:
    """What pstats.Stats takes as a profile: an object with `stats` and `create_stats()`."""

    def __init__(self, stats: dict[FunctionKey, StatsRow]) -> None:
        self.stats = stats

    def create_stats(self) -> None:
        """Nothing to do: the stats were snapshotted already."""


@dataclass
class ThreadProfile:
    name: str
    native_id: int
    profile: cProfile.Profile


class AllThreadsProfiler:
    """Profile this thread and every thread started after `start()`, in thread CPU time."""

    def __init__(self) -> None:
        self._profiles: list[ThreadProfile] = []
        self._lock = threading.Lock()
        self._main: cProfile.Profile | None = None

    def _new(self) -> cProfile.Profile:
        profile = cProfile.Profile(time.thread_time)
        thread = threading.current_thread()
        with self._lock:
            self._profiles.append(ThreadProfile(thread.name, threading.get_native_id(), profile))
        return profile

    def _hook(self, frame: FrameType, event: str, arg: object) -> None:
        # The first event in a new thread: give it its own profiler, which replaces this hook.
        self._new().enable()

    def start(self) -> None:
        self._main = self._new()
        threading.setprofile(self._hook)
        self._main.enable()

    def reset(self) -> None:
        """Forget what was measured so far (a warm-up), in every thread."""
        with self._lock:
            for thread in self._profiles:
                thread.profile.clear()

    def stop(self) -> ProfileReport:
        threading.setprofile(None)
        assert self._main is not None
        self._main.disable()
        by_group: dict[str, pstats.Stats] = {}
        merged: pstats.Stats | None = None
        with self._lock:
            profiles = list(self._profiles)
        for thread in profiles:
            # Another thread's profiler cannot be disabled from here (disable() acts on the
            # calling thread): snapshot it as it stands.
            thread.profile.snapshot_stats()
            stats: dict[FunctionKey, StatsRow] = getattr(thread.profile, "stats", {})
            if not stats:
                continue
            one = pstats.Stats(_Collected(stats))  # type: ignore[arg-type]
            group = thread_group(thread.native_id, thread.name)
            if thread.profile is self._main:
                group = thread_group(threading.main_thread().native_id or 0, None)
            if group in by_group:
                by_group[group].add(one)
            else:
                by_group[group] = one
            if merged is None:
                merged = pstats.Stats(_Collected(dict(stats)))  # type: ignore[arg-type]
            else:
                merged.add(one)
        return ProfileReport(merged, by_group)


def _rows(stats: pstats.Stats) -> dict[FunctionKey, StatsRow]:
    rows: dict[FunctionKey, StatsRow] = getattr(stats, "stats", {})
    return rows


@dataclass
class ProfileReport:
    merged: pstats.Stats | None
    by_group: dict[str, pstats.Stats]

    def split(self, stats: pstats.Stats) -> dict[str, float]:
        """Return own CPU seconds by category, largest first.

        Time in built-ins and generic stdlib code (isinstance, getattr, contextlib, ...) goes
        to the categories of its callers, in proportion to the calls' time, up to 3 levels up.
        """
        rows = _rows(stats)
        totals: dict[str, float] = {}
        memo: dict[tuple[FunctionKey, int], dict[str, float]] = {}
        for key, row in rows.items():
            for title, share in _attributed(rows, key, 3, memo).items():
                totals[title] = totals.get(title, 0.0) + row[2] * share
        return dict(sorted(totals.items(), key=lambda item: -item[1]))

    def entry_points(self) -> list[tuple[str, float, int]]:
        """Return (entry, inclusive CPU seconds, calls) for the ENTRY_POINTS that ran."""
        if self.merged is None:
            return []
        found = []
        rows = _rows(self.merged)
        for title, suffix, name in ENTRY_POINTS:
            matching = [row for (f, _, n), row in rows.items() if n == name and f.endswith(suffix)]
            if matching:
                found.append((title, sum(r[3] for r in matching), sum(r[1] for r in matching)))
        return found

    def lines(self, orders: int, top: int = 25) -> list[str]:
        if self.merged is None:
            return ["  (nothing was profiled)"]
        total = sum(r[2] for r in _rows(self.merged).values())
        per = 1000 / max(1, orders)
        lines = [
            f"  profiled CPU        {total:.2f} s in Python threads, {total * per:.0f} ms per order",
            "",
            "  By thread (own CPU s, ms per order):",
        ]
        for group, stats in sorted(
            self.by_group.items(), key=lambda item: -sum(r[2] for r in _rows(item[1]).values())
        ):
            seconds = sum(r[2] for r in _rows(stats).values())
            lines.append(f"    {group:<58}{seconds:>7.2f}{seconds * per:>8.1f}")
        lines += ["", "  By kind of code, all threads (own CPU s, share, ms per order):"]
        for title, seconds in self.split(self.merged).items():
            lines.append(
                f"    {title:<58}{seconds:>7.2f}{seconds / total:>7.0%}{seconds * per:>8.1f}"
            )
        lines += ["", "  Inclusive CPU of entry points (s, calls, ms per order):"]
        for title, seconds, calls in self.entry_points():
            lines.append(f"    {title:<58}{seconds:>7.2f}{calls:>7}{seconds * per:>8.1f}")
        lines += ["", f"  Top {top} functions by cumulative CPU time (all threads):"]
        lines += _top(self.merged, "cumulative", top)
        lines += ["", f"  Top {top} functions by own CPU time (all threads):"]
        lines += _top(self.merged, "tottime", top)
        return lines


def short_path(filename: str) -> str:
    """Shorten a profiled file name to its package path (site-packages, the project, the stdlib)."""
    for marker in ("site-packages/", _PROJECT, "/lib/python3."):
        if marker in filename:
            rest = filename.split(marker, 1)[1]
            return rest.split("/", 1)[1] if marker == "/lib/python3." else rest
    return filename


def _attributed(
    rows: dict[FunctionKey, StatsRow],
    key: FunctionKey,
    levels: int,
    memo: dict[tuple[FunctionKey, int], dict[str, float]] | None = None,
) -> dict[str, float]:
    """Return the categories a function's own time belongs to, as shares that sum to 1."""
    memo = {} if memo is None else memo
    if (key, levels) in memo:
        return memo[(key, levels)]
    title = category(key)
    callers: dict[FunctionKey, tuple[int, int, float, float]] = rows[key][4] if key in rows else {}
    shares: dict[str, float] = {}
    if title != OTHER or levels == 0 or not callers:
        shares[title] = 1.0
    else:
        total = sum(timing[2] for timing in callers.values())
        for caller, timing in callers.items():
            part = timing[2] / total if total > 0 else 1 / len(callers)
            for name, share in _attributed(rows, caller, levels - 1, memo).items():
                shares[name] = shares.get(name, 0.0) + part * share
    memo[(key, levels)] = shares
    return shares


def _top(stats: pstats.Stats, sort: str, top: int) -> list[str]:
    def order(item: tuple[FunctionKey, StatsRow]) -> float:
        return -(item[1][3] if sort == "cumulative" else item[1][2])

    rows = sorted(_rows(stats).items(), key=order)[:top]
    lines = [f"    {'calls':>9}{'own s':>8}{'cum s':>8}  function"]
    for key, row in rows:
        lines.append(f"    {row[1]:>9}{row[2]:>8.2f}{row[3]:>8.2f}  {_where(key)[:110]}")
    return lines


def _where(key: FunctionKey) -> str:
    filename, line, name = key
    return name if filename == "~" else f"{short_path(filename)}:{line}({name})"


def profiled(profiler: AllThreadsProfiler | None) -> Callable[[], None]:
    """Return a function that resets `profiler` (if any): call it when the warm-up is over."""
    return profiler.reset if profiler is not None else (lambda: None)
