"""What the benchmarks share: percentiles, a bounded load loop, history counts, CPU accounting, logs."""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import math
import os
import re
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    Interceptor,
    OutboundInterceptor,
    QueryWorkflowInput,
    SignalWorkflowInput,
    StartWorkflowInput,
    StartWorkflowUpdateInput,
    StartWorkflowUpdateWithStartInput,
    WorkflowHandle,
    WorkflowUpdateHandle,
)
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)

T = TypeVar("T")

# --- percentiles -------------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """Return the nearest-rank percentile `pct` (0 < pct <= 100) of `values`; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


STATS_COLUMNS = ("p50", "p95", "p99", "max")


def stats_header(label: str = "stage (ms)") -> str:
    return f"  {label:<18}" + "".join(f"{h:>9}" for h in STATS_COLUMNS) + f"{'n':>6}"


def stats_row(label: str, seconds: Sequence[float]) -> str:
    ms = [s * 1000 for s in seconds]
    cells = [percentile(ms, p) for p in (50, 95, 99)] + [max(ms) if ms else math.nan]
    return f"  {label:<18}" + "".join(f"{c:>9.0f}" for c in cells) + f"{len(ms):>6}"


# --- load --------------------------------------------------------------------------------------


async def bounded(
    count: int, concurrency: int, job: Callable[[int], Awaitable[T]], budget: float
) -> tuple[list[T | None], float]:
    """Run `job(0..count-1)`, at most `concurrency` in flight, for at most `budget` seconds.

    Return each job's result (None when it raised, or was still running at the budget and was
    cancelled) and the wall time.
    """
    gate = asyncio.Semaphore(concurrency)

    async def gated(index: int) -> T:
        async with gate:
            return await job(index)

    started = time.perf_counter()
    tasks = [asyncio.create_task(gated(i)) for i in range(count)]
    _, pending = await asyncio.wait(tasks, timeout=budget)
    wall = time.perf_counter() - started
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return [
        None if task.cancelled() or task.exception() is not None else task.result()
        for task in tasks
    ], wall


# --- what a workflow cost, from its history ----------------------------------------------------

HISTORY_KINDS: dict[str, EventType.ValueType] = {
    "workflow tasks": EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
    "activities": EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
    "local activities": EventType.EVENT_TYPE_MARKER_RECORDED,
    "updates": EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
    "signals": EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED,
    "timers": EventType.EVENT_TYPE_TIMER_STARTED,
}


async def history_counts(client: Client, workflow_id: str) -> dict[str, int]:
    """Count the events of one workflow's history that say what it cost (after it has closed)."""
    handle = client.get_workflow_handle(workflow_id)
    # The order closes a moment after the status a client waits for: count the whole history.
    await asyncio.wait_for(handle.result(), 30)
    history = await handle.fetch_history()
    kinds = collections.Counter(event.event_type for event in history.events)
    counts = {"events": len(history.events)}
    counts.update({name: kinds[kind] for name, kind in HISTORY_KINDS.items()})
    counts["history KB"] = round(sum(e.ByteSize() for e in history.events) / 1024)
    # Wall time the workflow spent with a task queued for a worker, and with one open on a
    # worker (which includes its local activities): the rest it waited for messages.
    queued = running = 0.0
    scheduled = started = 0.0
    for event in history.events:
        at = event.event_time.ToNanoseconds() / 1e9
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
            scheduled = at
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
            started = at
            queued += at - scheduled
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            running += at - started
    counts["ms task queued"] = round(queued * 1000)
    counts["ms task on worker"] = round(running * 1000)
    return counts


async def mean_history_counts(
    client: Client, workflow_ids: Iterable[str], concurrency: int = 8
) -> tuple[dict[str, float], int]:
    """Average `history_counts` over `workflow_ids`; return it and how many histories were read."""
    ids = list(workflow_ids)
    gate = asyncio.Semaphore(concurrency)

    async def one(workflow_id: str) -> dict[str, int] | None:
        async with gate:
            try:
                return await history_counts(client, workflow_id)
            except Exception:  # a history that cannot be read is left out of the mean, and said
                return None

    read = [c for c in await asyncio.gather(*(one(i) for i in ids)) if c is not None]
    if not read:
        return {}, 0
    return {name: sum(c[name] for c in read) / len(read) for name in read[0]}, len(read)


def format_counts(counts: dict[str, float]) -> str:
    if not counts:
        return "unavailable"
    return ", ".join(
        f"{value:.0f} {name}" if value >= 100 else f"{value:.1f} {name}".replace(".0 ", " ")
        for name, value in counts.items()
    )


# --- CPU: who burnt it (threads of this process, and the Temporal server) ----------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
THREAD_GROUPS = (
    "event loop (API, workers, simulators, load)",
    "workflow activations (temporal_workflow_*)",
    "activity thread pools",
    "API threads (AnyIO: read model)",
    "asyncio.to_thread (simulators' DB)",
    "other Python threads",
    "native threads (Temporal core, Rust)",
)


def thread_group(native_id: int, name: str | None) -> str:
    """Name what a thread of this process does, from its Python name (None: not a Python thread)."""
    if native_id == os.getpid():
        return THREAD_GROUPS[0]
    if name is None:
        return THREAD_GROUPS[6]
    if name.startswith("temporal_workflow_"):
        return THREAD_GROUPS[1]
    if name.startswith("ThreadPoolExecutor-"):
        return THREAD_GROUPS[2]
    if name.startswith("AnyIO worker thread"):
        return THREAD_GROUPS[3]
    if name.startswith(("asyncio_", "uvloop_")):  # the event loop's default executor
        return THREAD_GROUPS[4]
    return THREAD_GROUPS[5]


def _cpu_seconds(stat_path: Path) -> tuple[float, int] | None:
    """Return (user + system CPU seconds, parent pid) from a /proc stat file, or None."""
    try:
        text = stat_path.read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK, int(fields[1])


SERVER = "Temporal server"


def _child_label(pid: int) -> str:
    """Name a child process: the Temporal server, an OMS process of `--processes`, or other."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "other child processes"
    words = [a.decode(errors="replace") for a in argv if a]
    if "bench.serve" in words:
        role = words[words.index("bench.serve") + 1 :][:1]
        return f"OMS process: {role[0] if role else '?'}"
    if any(w.endswith("temporal") for w in words[:1]) and "server" in words:
        return SERVER
    return "other child processes"


@dataclass
class CpuSnapshot:
    """CPU seconds so far: per thread of this process, per child process, and the whole machine."""

    at: float
    threads: dict[int, float] = field(default_factory=dict)
    children: dict[int, tuple[str, float]] = field(default_factory=dict)
    machine: float = 0.0  # busy CPU seconds of the whole machine (every process)

    @classmethod
    def take(cls) -> CpuSnapshot:
        snapshot = cls(at=time.perf_counter())
        tasks = Path("/proc/self/task")
        if not tasks.is_dir():
            return snapshot
        for entry in tasks.iterdir():
            seconds = _cpu_seconds(entry / "stat")
            if seconds is not None:
                snapshot.threads[int(entry.name)] = seconds[0]
        snapshot.children = {
            pid: (_child_label(pid), used) for pid, used in _descendants(os.getpid()).items()
        }
        snapshot.machine = _machine_busy()
        return snapshot


def _machine_busy() -> float:
    """Return the CPU seconds the machine has been busy (all but idle and iowait), or 0."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return 0.0
    ticks = [int(f) for f in fields[:8]]
    return (sum(ticks) - ticks[3] - ticks[4]) / _TICK


def _descendants(pid: int) -> dict[int, float]:
    """Return the CPU seconds of each descendant process of `pid`."""
    by_parent: dict[int, list[tuple[int, float]]] = collections.defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            found = _cpu_seconds(entry / "stat")
            if found is not None:
                by_parent[found[1]].append((int(entry.name), found[0]))
    found_cpu: dict[int, float] = {}
    todo = [pid]
    while todo:
        for child, used in by_parent.get(todo.pop(), []):
            found_cpu[child] = used
            todo.append(child)
    return found_cpu


@dataclass
class CpuUse:
    """CPU used between two snapshots: this process by thread group, each child, the rest."""

    wall: float
    groups: dict[str, float]  # this process's threads, and the OMS's own child processes
    server: float
    others: float  # CPU seconds of every other process on the machine

    @classmethod
    def between(cls, before: CpuSnapshot, after: CpuSnapshot) -> CpuUse:
        names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
        groups = dict.fromkeys(THREAD_GROUPS, 0.0)
        for tid, seconds in after.threads.items():
            groups[thread_group(tid, names.get(tid))] += seconds - before.threads.get(tid, 0.0)
        server = 0.0
        for pid, (label, used) in after.children.items():
            spent = used - before.children.get(pid, (label, 0.0))[1]
            if label == SERVER:
                server += spent
            else:
                groups[label] = groups.get(label, 0.0) + spent
        machine = after.machine - before.machine
        others = max(0.0, machine - sum(groups.values()) - server) if machine else math.nan
        return cls(after.at - before.at, groups, server, others)

    @property
    def process(self) -> float:
        """CPU of the OMS and the load: this process and the OMS processes it started."""
        return sum(self.groups.values())

    @property
    def python(self) -> float:
        """CPU of this process's Python threads (those that need its GIL)."""
        return sum(v for k, v in self.groups.items() if k in THREAD_GROUPS[:6])

    def busiest(self) -> tuple[str, float]:
        """Return the process with the most CPU that one GIL serialises, and that CPU.

        For this process, its Python threads; for an OMS process of its own, all of it.
        """
        candidates = [("this process", self.python)]
        candidates += [(k, v) for k, v in self.groups.items() if k.startswith("OMS process")]
        return max(candidates, key=lambda item: item[1])

    def per(self, count: int) -> tuple[float, float]:
        """Return CPU seconds per workflow: (the OMS and the load, the Temporal server)."""
        return self.process / max(1, count), self.server / max(1, count)

    def lines(self, count: int) -> list[str]:
        if not self.groups or self.wall <= 0:
            return ["  CPU                 unavailable (no /proc)"]
        process, server = self.per(count)
        cores = os.cpu_count() or 1
        name, busiest = self.busiest()
        python = busiest / max(1, count)
        lines = [
            f"  CPU per workflow    OMS and load {process * 1000:.0f} ms, Temporal server"
            f" {server * 1000:.0f} ms; {name} {python * 1000:.0f} ms under one GIL",
            f"  ceilings            {cores / (process + server):.1f}/s if all {cores} cores"
            f" were ours; {1 / python if python else math.inf:.1f}/s for {name}'s GIL"
            " (one core of Python)",
            f"  CPU (cores busy)    OMS and load {self.process / self.wall:.2f},"
            f" Temporal server {self.server / self.wall:.2f},"
            f" other processes on the machine {self.others / self.wall:.2f}",
        ]
        lines += [
            f"    {name:<44}{seconds / self.wall:>6.2f}"
            for name, seconds in self.groups.items()
            if seconds / self.wall >= 0.005
        ]
        return lines


# --- latency of Temporal calls as their caller sees them, and of the event loop ----------------


class RpcTimes(Interceptor):
    """A client interceptor that keeps the wall time of each start, Update, Query and Signal."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = collections.defaultdict(list)

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        return _TimedCalls(next, self)

    def reset(self) -> None:
        self.seconds.clear()

    def client(self, client: Client) -> Client:
        """Return a client on `client`'s connection whose calls are timed."""
        return Client(
            client.service_client,
            namespace=client.namespace,
            data_converter=client.data_converter,
            interceptors=[self],
        )

    def lines(self) -> list[str]:
        if not self.seconds:
            return []
        lines = [stats_header("Temporal call (ms)") + "  (as the caller sees it)"]
        for name, seconds in sorted(self.seconds.items()):
            lines.append(stats_row(name[:18], seconds))
        return lines


class _TimedCalls(OutboundInterceptor):
    def __init__(self, next: OutboundInterceptor, times: RpcTimes) -> None:
        super().__init__(next)
        self._times = times

    def _record(self, name: str, started: float) -> None:
        self._times.seconds[name].append(time.perf_counter() - started)

    async def start_workflow(self, input: StartWorkflowInput) -> WorkflowHandle[Any, Any]:
        started = time.perf_counter()
        try:
            return await self.next.start_workflow(input)
        finally:
            self._record("start workflow", started)

    async def start_workflow_update(
        self, input: StartWorkflowUpdateInput
    ) -> WorkflowUpdateHandle[Any]:
        started = time.perf_counter()
        try:
            return await self.next.start_workflow_update(input)
        finally:
            self._record(f"U {input.update}", started)

    async def start_update_with_start_workflow(
        self, input: StartWorkflowUpdateWithStartInput
    ) -> WorkflowUpdateHandle[Any]:
        started = time.perf_counter()
        try:
            return await self.next.start_update_with_start_workflow(input)
        finally:
            self._record(f"U+start {input.update_workflow_input.update}", started)

    async def query_workflow(self, input: QueryWorkflowInput) -> Any:
        started = time.perf_counter()
        try:
            return await self.next.query_workflow(input)
        finally:
            self._record(f"Q {input.query}", started)

    async def signal_workflow(self, input: SignalWorkflowInput) -> None:
        started = time.perf_counter()
        try:
            await self.next.signal_workflow(input)
        finally:
            self._record(f"S {input.signal}", started)


class LoopLag:
    """Measure how late the event loop wakes a 20 ms sleep: its lag is every coroutine's wait."""

    def __init__(self, interval: float = 0.02) -> None:
        self._interval = interval
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            await asyncio.sleep(self._interval)
            self.samples.append(loop.time() - asked - self._interval)

    def start(self) -> None:
        self.samples.clear()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def line(self) -> str:
        if not self.samples:
            return "  event-loop lag      unmeasured"
        ms = [s * 1000 for s in self.samples]
        return (
            f"  event-loop lag      p50 {percentile(ms, 50):.1f} ms, p99 {percentile(ms, 99):.1f} ms,"
            f" max {max(ms):.0f} ms (a 20 ms sleep's overshoot)"
        )


class GcPauses:
    """The garbage collector's collections in this process, and their time, per generation."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            generation = info["generation"]
            self.count[generation] += 1
            self.seconds[generation] += time.perf_counter() - self._started

    def start(self) -> None:
        gc.callbacks.append(self._callback)

    def stop(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def line(self, count: int) -> str:
        per = 1000 / max(1, count)
        parts = ", ".join(
            f"gen {g} {n} ({seconds * per:.1f} ms)"
            for g, (n, seconds) in enumerate(zip(self.count, self.seconds, strict=True))
        )
        return (
            f"  GC pauses           {sum(self.seconds) * per:.1f} ms per workflow in this"
            f" process: collections {parts}"
        )


class Probe:
    """What one phase measures around its batch (after its warm-up): CPU, loop lag, Temporal calls,
    and the garbage collector's pauses in this process."""

    def __init__(self, rpc: RpcTimes) -> None:
        self._rpc = rpc
        self._lag = LoopLag()
        self._gc = GcPauses()
        self._before: CpuSnapshot | None = None
        self.cpu: CpuUse | None = None
        self._lines: list[str] = []

    def begin(self) -> None:
        self._rpc.reset()
        self._lag.start()
        self._gc.start()
        self._before = CpuSnapshot.take()

    async def end(self) -> None:
        if self._before is None:
            return
        self.cpu = CpuUse.between(self._before, CpuSnapshot.take())
        self._gc.stop()
        await self._lag.stop()
        self._lines = [self._lag.line(), *self._rpc.lines()]

    def lines(self, count: int) -> list[str]:
        cpu = self.cpu.lines(count) if self.cpu is not None else []
        return [*cpu, self._gc.line(count), *self._lines]


# --- warnings and errors, counted ---------------------------------------------------------------

VARYING = re.compile(r"[0-9a-f]{8}-[0-9a-f-]{27}|\b(?:ord_)?[0-9a-f]{20,}\b|\d+(?:\.\d+)?")


class LogCounter(logging.Handler):
    """Count WARNING and above by logger and message shape, keeping one example of each."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: collections.Counter[str] = collections.Counter()
        self.example: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = (record.getMessage().splitlines() or [""])[0]
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            message += f" [{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}]"
        shape = VARYING.sub("#", message)[:90]
        key = f"{record.levelname} {record.name}: {shape}"
        self.counts[key] += 1
        self.example.setdefault(key, message[:300])

    def lines(self) -> list[str]:
        if not self.counts:
            return []
        lines = ["", "Warnings and errors logged during the run (by shape, most frequent first):"]
        for key, n in self.counts.most_common(12):
            lines.append(f"  {n:>5} x {key}")
            lines.append(f"          e.g. {self.example[key]}")
        return lines


def route_logs(counter: LogCounter) -> None:
    """Count warnings (Python's and the Temporal core's) and still show them on stderr."""
    logging.getLogger().addHandler(counter)
    shown = logging.StreamHandler(sys.stderr)
    shown.setLevel(logging.WARNING)
    logging.getLogger().addHandler(shown)
    # The core (Rust) side of the SDK logs to stdout unless forwarded; forward it to Python so
    # it is counted with the rest and stays out of the printed figures.
    core = logging.getLogger("temporal-core")
    Runtime.set_default(
        Runtime(
            telemetry=TelemetryConfig(
                logging=LoggingConfig(
                    filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
                    forwarding=LogForwardingConfig(
                        logger=core,
                        append_target_to_name=False,
                        prepend_target_on_message=False,
                        append_log_fields_to_message=True,
                    ),
                )
            )
        )
    )
