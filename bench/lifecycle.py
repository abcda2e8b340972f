"""Order lifecycle throughput and latency against three references, on one real Temporal dev server.

What is measured, in one run, on one dev server (in-memory), in this order:

1.  The trivial reference (`bench.reference.TrivialWorkflow`): N workflows of one trivial
    activity, C at a time (`execute_workflow`), on a worker and task queue of their own.
2.  The same-interaction reference (`bench.reference.InteractionWorkflow`): N workflows that
    take an order's messages and do nothing else: update-with-start answered at once, the
    approve and release Updates, the venue's three execution reports as Updates (one after
    the other) and one Signal per settlement instruction, sent straight through the Temporal
    client as the API, the venue and the back office would. Its rate is the ceiling for an
    order's shape of interaction.
3.  The order shape (`bench.reference.OrderShapeWorkflow`): the same messages, driven the same
    way, to a workflow that also gives every command an order's history holds (its patch
    marker, about 12 local activities, its timers, the back office's activity), each a no-op. Its
    rate is the ceiling of the order's design: what the lifecycle would reach if the OMS's own
    work (HTTP, database, compliance rules, simulators) cost nothing.
4.  The lifecycle: N orders, C at a time, through the public HTTP API of the OMS, in this
    process as under `oms dev` (API, both workers and both simulators, `devserver.running_oms`;
    or in four processes with --processes), on a SQLite read model (or PostgreSQL):

        POST /orders (alice) -> approve (dana) -> release (tom) to the simulator
        -> GET /orders/{id}?wait_for=settled (alice's long-poll) until it answers settled

    The order is 100 AAPL split over two accounts, so it has two settlement instructions,
    as the reference has two settlement Signals.

Per phase it prints the rate, latency percentiles, the mean history of a workflow (events,
workflow tasks, activities, local activities, Updates, Signals, timers, its size, and how long
it had a workflow task queued or open on a worker), where the CPU went (per thread group of
this process, per OMS process, the Temporal server, other processes; from /proc), the
event-loop lag and the Temporal calls' latency. Then a summary table and the two ratios:
lifecycle orders/s / trivial workflows/s and / same-interaction workflows/s, and the order
shape's rate over each reference and the lifecycle's over the order shape's. All of it runs
three times (rounds) on the one server, and the last lines give each ratio's median over the
rounds: the machine's speed drifts (the references have run at half and at twice the speed an
hour apart), and a ratio from one batch of each can be off by a third.

How to read it
    - Rates are completed workflows / wall time of the batch. One warm-up of each runs first,
      uncounted: the figures exclude first-use costs (the sandbox's first import, connections).
    - The lifecycle stages: create = POST /orders (update-with-start; answers once compliance
      has decided and the read model shows it), approve and release (Updates), release->settled
      = release answered -> long-poll answered `settled` (three simulated venue delays, two
      settlement instructions and one simulated back-office delay; the long-poll's own read-model
      polling, 50 ms growing to 500 ms, quantises it), total = POST sent -> settled seen.
    - Percentiles are nearest-rank: below 100 orders p99 is the worst order.
    - Everything (API, workers, simulators, this load) shares one process and one event loop,
      as in `oms dev`, unless --processes. The CPU lines say who is busy: the OMS (and the
      load), the Temporal server, and other processes on the machine (a shared machine skews
      rates; CPU per workflow is steadier), and give two ceilings: all cores for this run, and
      one core for the busiest process's Python (its GIL). The event-loop lag and the Temporal
      calls as their caller sees them (the API's, or the load's for the references) say where
      an order waits.
    - A failure (an HTTP error, 120 s per order, or the phase's budget) is listed with the step
      it was in, and makes the exit status 1.

Options
    --profile       profile every Python thread of the lifecycle batch (cProfile, each thread's
                    CPU time): CPU by thread and by kind of code, inclusive CPU of entry points
                    (workflow activations, sandbox, projections, casbin, ...), top 25 functions.
                    The profiler slows the OMS down about 2.5x: read the shares, not the rate.
    --profile-out PATH   with --profile, also write the merged profile (pstats) to PATH.
    --runner        `sandbox` (workflow_runner.workflow_runner(...), the default: the sandbox
                    with our modules passed through) or `unsandboxed`
                    (UnsandboxedWorkflowRunner), for the OMS workers and both references alike.
    --max-concurrent-activities   Settings.worker_max_concurrent_activities for the OMS workers.
    --processes     the API and each queue's worker in a process of its own (`bench.serve`), as
                    in production, instead of all in this one (one GIL).
    --postgres URL  the read model on a database of its own on this PostgreSQL server.
    --experiment    a proposed change monkeypatched into the OMS's process(es) only
                    (bench/experiments.py), to measure it before anyone edits the OMS. Printed
                    as EXPERIMENT, and named in the summary.
    --lifecycle-only   skip the references (quick comparisons).
    --rounds N      how many times to run the references and the lifecycle (default 3; 1 with
                    --lifecycle-only or --profile).

Run: `python -m bench.lifecycle [--orders N] [--concurrency C] [...]` (`make bench`). Nothing is
downloaded: the dev server is the `temporal` CLI next to this Python.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import math
import os
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import WorkflowRunner

from activities.assessment import copy_policies_without
from api.tokens import issue_token
from bench import experiments
from bench.measure import (
    VARYING,
    LogCounter,
    Probe,
    RpcTimes,
    bounded,
    format_counts,
    mean_history_counts,
    route_logs,
    stats_header,
    stats_row,
)
from bench.profiling import AllThreadsProfiler, ProfileReport
from bench.reference import (
    PhaseResult,
    order_request,
    run_interaction,
    run_order_shape,
    run_trivial,
)
from config import POLICIES_DIR, Settings
from db.demo import load_demo_data
from db.engine import create_schema, make_engine, session_factory
from devserver import running_oms
from domain.ids import order_workflow_id

ORDER_TIMEOUT_SECONDS = 120.0
LONG_POLL_SECONDS = 30
HTTP_TIMEOUT_SECONDS = LONG_POLL_SECONDS + 30.0
TEARDOWN_SECONDS = 30.0
STAGES = ("create", "approve", "release", "release->settled", "total")
FAILED_STATUSES = frozenset({"settlement_failed", "venue_rejected", "canceled", "expired"})
TARGET_TRIVIAL, TARGET_INTERACTION = 0.25, 0.6
# The machine's speed drifts between runs, and the references with it: ratios are medians.
DEFAULT_ROUNDS = 3
DEFAULT_CONCURRENCY, PROFILE_CONCURRENCY = 25, 10


@dataclass
class References:
    """One round's reference batches: what the lifecycle's rate is divided by."""

    trivial: PhaseResult
    interaction: PhaseResult
    order_shape: PhaseResult


# --- the lifecycle -----------------------------------------------------------------------------


@dataclass
class OrderTiming:
    """Seconds spent in each stage of one order; `failure` says where and why it stopped."""

    stages: dict[str, float] = field(default_factory=dict)
    order_id: str = ""
    step: str = "waiting for a slot"
    last_status: str = ""
    failure: str = ""
    long_polls: int = 0


class Driver:
    """Drives orders through the API as alice (pm), dana (desk head) and tom (trader)."""

    def __init__(self, http: httpx.AsyncClient, secret: str, run_id: str) -> None:
        self._http = http
        self._run_id = run_id
        self._headers = {
            user: {"Authorization": f"Bearer {issue_token(user, secret, timedelta(hours=1))}"}
            for user in ("alice", "dana", "tom")
        }

    async def _call(
        self,
        user: str,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        return await self._http.request(
            method, path, json=body, params=params, headers=self._headers[user]
        )

    async def one_order(self, index: int, timing: OrderTiming) -> None:
        """Drive order `index` from POST to settled, filling `timing`; never raises."""
        try:
            await asyncio.wait_for(self._story(index, timing), ORDER_TIMEOUT_SECONDS)
        except TimeoutError:
            timing.failure = (
                f"timed out after {ORDER_TIMEOUT_SECONDS:.0f} s in {timing.step}"
                f" (last status {timing.last_status or 'none'})"
            )
        except Exception as exc:  # a benchmark reports every failure instead of stopping
            timing.failure = f"{type(exc).__name__} in {timing.step}: {str(exc)[:200]}"

    async def _story(self, index: int, timing: OrderTiming) -> None:
        body = order_request(f"bench-{self._run_id}-{index}").model_dump(
            mode="json", exclude_defaults=True
        )
        timing.step = "POST /orders"
        started = time.perf_counter()
        created = await self._call("alice", "POST", "/orders", body)
        elapsed = time.perf_counter() - started
        if created.status_code != 201:
            timing.failure = (
                f"POST /orders -> {created.status_code} after {elapsed:.1f} s: {created.text[:200]}"
            )
            return
        timing.stages["create"] = elapsed
        order_id: str = created.json()["order_id"]
        timing.order_id = order_id
        timing.last_status = created.json().get("status", "")

        for stage, user in (("approve", "dana"), ("release", "tom")):
            timing.step = f"POST /orders/{{id}}/{stage}"
            before = time.perf_counter()
            response = await self._call(user, "POST", f"/orders/{order_id}/{stage}", {})
            elapsed = time.perf_counter() - before
            if response.status_code != 200:
                timing.failure = f"{stage} -> {response.status_code} after {elapsed:.1f} s: {response.text[:200]}"
                return
            timing.stages[stage] = elapsed
            timing.last_status = response.json().get("status", "")
        released = time.perf_counter()

        timing.step = "long-poll GET /orders/{id}?wait_for=settled"
        wait = {"wait_for": "settled", "timeout": str(LONG_POLL_SECONDS)}
        while True:
            polled = await self._call("alice", "GET", f"/orders/{order_id}", params=wait)
            seen = time.perf_counter()
            timing.long_polls += 1
            if polled.status_code != 200:
                timing.failure = f"GET /orders/{{id}} -> {polled.status_code} {polled.text[:200]}"
                return
            timing.last_status = polled.json().get("status", "")
            if timing.last_status == "settled":
                timing.stages["release->settled"] = seen - released
                timing.stages["total"] = seen - started
                return
            if timing.last_status in FAILED_STATUSES:
                timing.failure = f"order ended {timing.last_status}"
                return


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def phase_budget(count: int) -> float:
    """Seconds a phase may take before unfinished work is abandoned (and reported)."""
    return ORDER_TIMEOUT_SECONDS + count * 1.0


@dataclass
class LifecycleResult:
    wall: float
    budget: float
    timings: list[OrderTiming]
    probe: Probe
    history: dict[str, float]
    histories_read: int
    teardown: str
    profile: ProfileReport | None = None

    @property
    def settled(self) -> list[OrderTiming]:
        return [t for t in self.timings if "total" in t.stages and not t.failure]

    @property
    def rate(self) -> float:
        return len(self.settled) / self.wall if self.wall > 0 else math.nan


@contextlib.contextmanager
def read_model_url(server_url: str) -> Iterator[str]:
    """Yield a fresh database's URL on the PostgreSQL server `server_url`, dropped afterwards.

    An empty `server_url` yields "" (SQLite in the run's data directory).
    """
    if not server_url:
        yield ""
        return
    admin_url = make_url(server_url)
    name = f"oms_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# As in production, where the venue and the back office are elsewhere: the simulators run in a
# process of their own, and the workers run none (OMS_RUN_SIMULATORS=false).
OMS_ROLES = ("api", "orders", "back-office", "simulators")


def process_env(settings: Settings) -> dict[str, str]:
    """Return the environment that gives an `oms` process `settings` (OMS_* variables)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMS_")}
    values = settings.model_dump(mode="json")
    values["database_url"] = settings.resolved_database_url
    for name, value in values.items():
        if value is None:
            continue  # unset: the process takes the setting's default ("null" is no value)
        env[f"OMS_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return env


@contextlib.asynccontextmanager
async def oms_processes(
    settings: Settings, args: argparse.Namespace, logs: Path
) -> AsyncIterator[None]:
    """Run the API and each queue's worker as processes of their own until the block exits."""
    flags = ["--runner", args.runner]
    for name in args.experiment:
        flags += ["--experiment", name]
    env = process_env(settings) | {"OMS_RUN_SIMULATORS": "false"}
    processes: dict[str, asyncio.subprocess.Process] = {}
    try:
        for role in OMS_ROLES:
            with (logs / f"{role}.log").open("wb") as log:
                processes[role] = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bench.serve",
                    role,
                    *flags,
                    env=env,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=log,
                )
        url = f"http://127.0.0.1:{settings.api_port}/healthz"
        async with httpx.AsyncClient(timeout=2) as http:
            for _ in range(150):
                for role, process in processes.items():
                    if process.returncode is not None:
                        tail = (logs / f"{role}.log").read_text()[-2000:]
                        raise RuntimeError(f"the {role} process stopped at start-up:\n{tail}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(url)).status_code == 200:
                        break
                await asyncio.sleep(0.2)
            else:
                raise RuntimeError("the API process did not answer /healthz within 30 s")
        yield
    finally:
        for process in processes.values():
            if process.returncode is None:
                process.terminate()
        for process in processes.values():
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


def process_log_lines(logs: Path) -> list[str]:
    """Return the warnings and errors the OMS processes wrote, counted by shape."""
    counts: collections.Counter[str] = collections.Counter()
    for role in OMS_ROLES:
        path = logs / f"{role}.log"
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if any(word in line for word in ("WARNING", "ERROR", "Traceback", "Error")):
                counts[f"{role}: {VARYING.sub('#', line)[:120]}"] += 1
    if not counts:
        return []
    lines = ["", "Warnings and errors the OMS processes logged (by shape, most frequent first):"]
    lines += [f"  {n:>5} x {key}" for key, n in counts.most_common(12)]
    return lines


# The load generator sends alike orders as one user, dozens a second: no desk works that way,
# and the rules that stop a person doing it would stop the benchmark. The rest run as shipped.
PACE_RULES = ("duplicate_order", "order_rate")


def oms_settings(
    args: argparse.Namespace, data_dir: Path, temporal_address: str, database_url: str
) -> Settings:
    suffix = uuid.uuid4().hex[:8]
    return Settings(
        policies_dir=copy_policies_without(POLICIES_DIR, data_dir / "policies", PACE_RULES),
        data_dir=data_dir,
        database_url=database_url,
        temporal_address=temporal_address,
        api_host="127.0.0.1",
        api_port=free_port(),
        orders_task_queue=f"bench-orders-{suffix}",
        back_office_task_queue=f"bench-back-office-{suffix}",
        simulator_fill_delay_seconds=args.fill_delay,
        back_office_confirm_delay_seconds=args.confirm_delay,
        back_office_simulator=True,
        jwt_secret=f"bench-secret-{suffix}-long-enough-for-hs256",
        worker_max_concurrent_activities=args.max_concurrent_activities,
        # The development keys, as `oms dev` runs (production refuses them).
        env="development",
    )


async def run_lifecycle(
    env: WorkflowEnvironment,
    args: argparse.Namespace,
    data_dir: Path,
    log_counter: LogCounter,
    profiler: AllThreadsProfiler | None,
    database_url: str,
    rpc: RpcTimes,
) -> LifecycleResult:
    settings = oms_settings(
        args, data_dir, env.client.service_client.config.target_host, database_url
    )
    engine = make_engine(settings.resolved_database_url)
    create_schema(engine)
    with session_factory(engine)() as session:
        load_demo_data(session)
    engine.dispose()

    # Room for every order in flight; the simulators' callbacks use their own client.
    limits = httpx.Limits(
        max_connections=args.concurrency + 10, max_keepalive_connections=args.concurrency + 10
    )
    budget = phase_budget(args.orders)
    timings = [OrderTiming() for _ in range(args.orders)]
    probe = Probe(rpc)
    history: dict[str, float] = {}
    read = 0
    report: ProfileReport | None = None
    stack = contextlib.AsyncExitStack()
    if profiler is not None:
        profiler.start()  # before the OMS starts its threads, so that each gets a profiler
    try:
        if args.processes:
            await stack.enter_async_context(oms_processes(settings, args, data_dir))
        else:
            # The API's client is timed; the workers connect on their own.
            await stack.enter_async_context(running_oms(settings, rpc.client(env.client)))
        # uvicorn configures its loggers at start-up, dropping handlers added before.
        logging.getLogger("uvicorn").addHandler(log_counter)
        http = await stack.enter_async_context(
            httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{settings.api_port}",
                timeout=HTTP_TIMEOUT_SECONDS,
                limits=limits,
            )
        )
        driver = Driver(http, settings.jwt_secret, uuid.uuid4().hex[:8])
        warm = OrderTiming()
        await driver.one_order(-1, warm)
        if warm.failure:
            raise RuntimeError(f"the warm-up order failed: {warm.failure}")

        async def order(index: int) -> None:
            await driver.one_order(index, timings[index])

        if profiler is not None:
            profiler.reset()
        probe.begin()
        _, wall = await bounded(args.orders, args.concurrency, order, budget)
        await probe.end()
        if profiler is not None:
            report = profiler.stop()
            profiler = None
            if args.profile_out and report.merged is not None:
                report.merged.dump_stats(args.profile_out)
        for timing in timings:
            if not timing.failure and "total" not in timing.stages:
                timing.failure = (
                    f"unfinished at the {budget:.0f} s budget, in {timing.step}"
                    f" (last status {timing.last_status or 'none'})"
                )
        ids = [order_workflow_id(t.order_id) for t in timings if "total" in t.stages]
        history, read = await mean_history_counts(env.client, ids)
    finally:
        if profiler is not None:
            profiler.stop()
        logging.getLogger("uvicorn").removeHandler(log_counter)
        started = time.perf_counter()
        try:
            # uvicorn waits for every request in flight; one stuck on Temporal would hang here.
            await asyncio.wait_for(stack.aclose(), TEARDOWN_SECONDS)
        except TimeoutError:
            teardown = (
                f"the API did not stop within {TEARDOWN_SECONDS:.0f} s (requests still in flight);"
                " it and the workers were cancelled"
            )
        else:
            teardown = f"API and workers stopped in {time.perf_counter() - started:.1f} s"
    return LifecycleResult(wall, budget, timings, probe, history, read, teardown, report)


# --- reports -----------------------------------------------------------------------------------


def report_lifecycle(args: argparse.Namespace, result: LifecycleResult) -> None:
    """Print the lifecycle's figures (as soon as they exist, so a later failure cannot lose them)."""
    settled = result.settled
    floor = 3 * args.fill_delay + args.confirm_delay
    polls = sum(t.long_polls for t in settled)
    lines = [
        "",
        "Lifecycle: POST /orders -> approve -> release -> settled, through the HTTP API"
        + (
            " (API and workers in processes of their own)"
            if args.processes
            else " (API, workers and simulators in this process)"
        ),
        f"  orders / in flight  {args.orders} / {args.concurrency}",
        f"  simulated latency   venue {args.fill_delay * 1000:.0f} ms per report (ack, 2 fills),"
        f" back office {args.confirm_delay * 1000:.0f} ms;"
        f" floor on release->settled {floor * 1000:.0f} ms",
        f"  settled             {len(settled)}/{args.orders} in {result.wall:.2f} s"
        f" (budget {result.budget:.0f} s)",
        f"  orders per second   {result.rate:.2f}",
        f"  long-polls          {polls / max(1, len(settled)):.1f} per order"
        f" (GET ?wait_for=settled&timeout={LONG_POLL_SECONDS})",
        stats_header() + "  (settled orders)",
    ]
    lines += [stats_row(stage, [t.stages[stage] for t in settled]) for stage in STAGES]
    lines.append(
        f"  per order           {format_counts(result.history)}"
        f" (mean of {result.histories_read} histories)"
    )
    lines += result.probe.lines(len(settled))
    lines.append(f"  teardown            {result.teardown}")
    failures = [t for t in result.timings if t.failure]
    if failures:
        lines.append(f"  FAILED              {len(failures)} orders:")
        reasons = collections.Counter(VARYING.sub("#", t.failure) for t in failures)
        lines.extend(f"    {n} x {reason}" for reason, n in reasons.most_common(10))
    print("\n".join(lines), flush=True)


def report_reference(
    title: str, args: argparse.Namespace, result: PhaseResult, probe: Probe
) -> None:
    rate = len(result.latencies) / result.wall if result.wall > 0 else math.nan
    lines = [
        "",
        title,
        f"  workflows           {len(result.latencies)}/{result.count} in {result.wall:.2f} s,"
        f" {args.concurrency} in flight",
        f"  workflows per sec   {rate:.2f}",
        stats_header(),
        stats_row("start -> result", result.latencies),
        f"  per workflow        {format_counts(result.history)}"
        f" (mean of {result.histories_read} histories)",
    ]
    lines += probe.lines(len(result.latencies))
    print("\n".join(lines), flush=True)


def rate_of(result: PhaseResult) -> float:
    return len(result.latencies) / result.wall if result.wall > 0 else math.nan


def report_summary(
    args: argparse.Namespace, lifecycle: LifecycleResult, refs: References, runner: str
) -> None:
    settled = lifecycle.settled
    trivial_rate, interaction_rate = rate_of(refs.trivial), rate_of(refs.interaction)
    shape_rate = rate_of(refs.order_shape)
    to_trivial = lifecycle.rate / trivial_rate if trivial_rate else math.nan
    to_interaction = lifecycle.rate / interaction_rate if interaction_rate else math.nan

    def p(stage: str, pct: float) -> str:
        values = sorted(t.stages[stage] for t in settled)
        if not values:
            return "-"
        rank = max(1, math.ceil(pct / 100 * len(values)))
        return f"{values[rank - 1] * 1000:.0f}"

    def wft(history: dict[str, float]) -> str:
        if not history:
            return "-"
        return f"{history['events']:.0f} / {history['workflow tasks']:.1f}"

    def row(name: str, result: PhaseResult) -> str:
        return (
            f"  | {name} | {rate_of(result):.2f} |"
            f" {_ms(result.latencies, 50)} / {_ms(result.latencies, 99)}"
            f" | {wft(result.history)} |"
        )

    changes = [
        f"runner={runner}",
        f"max concurrent activities {args.max_concurrent_activities}",
        "OMS in 4 processes" if args.processes else "OMS in this process",
        "read model on PostgreSQL" if args.postgres else "read model on SQLite",
    ]
    changes += [f"EXPERIMENT {name}" for name in args.experiment]
    if args.profile:
        changes.append("lifecycle PROFILED: its rate and the ratios are not comparable")
    lines = [
        "",
        f"Summary ({args.orders} each, {args.concurrency} in flight; {', '.join(changes)})",
        "  | workflow | per s | p50 / p99 ms | events / workflow tasks per workflow |",
        "  |---|---|---|---|",
        f"  | order lifecycle | {lifecycle.rate:.2f} | {p('total', 50)} / {p('total', 99)}"
        f" | {wft(lifecycle.history)} |",
        row("order shape, no work", refs.order_shape),
        row("same-interaction reference", refs.interaction),
        row("trivial reference", refs.trivial),
        "",
        "  lifecycle stages p50 / p99 (ms): "
        + ", ".join(f"{stage} {p(stage, 50)} / {p(stage, 99)}" for stage in STAGES),
        "",
        f"  lifecycle / trivial          = {lifecycle.rate:.2f} / {trivial_rate:.2f}"
        f" = {to_trivial:.3f}   (target >= {TARGET_TRIVIAL})"
        f" {'met' if to_trivial >= TARGET_TRIVIAL else 'NOT MET'}",
        f"  lifecycle / same-interaction = {lifecycle.rate:.2f} / {interaction_rate:.2f}"
        f" = {to_interaction:.3f}   (target >= {TARGET_INTERACTION})"
        f" {'met' if to_interaction >= TARGET_INTERACTION else 'NOT MET'}",
        "",
        "  The order's shape with every step free (its ceiling, whatever the OMS's own work costs):",
        f"  order shape / trivial          = {shape_rate:.2f} / {trivial_rate:.2f}"
        f" = {_ratio(shape_rate, trivial_rate):.3f}",
        f"  order shape / same-interaction = {shape_rate:.2f} / {interaction_rate:.2f}"
        f" = {_ratio(shape_rate, interaction_rate):.3f}",
        f"  lifecycle / order shape        = {lifecycle.rate:.2f} / {shape_rate:.2f}"
        f" = {_ratio(lifecycle.rate, shape_rate):.3f}   (what the OMS's own work leaves)",
    ]
    print("\n".join(lines), flush=True)


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


def _ms(latencies: Sequence[float], pct: float) -> str:
    if not latencies:
        return "-"
    ordered = sorted(latencies)
    return f"{ordered[max(1, math.ceil(pct / 100 * len(ordered))) - 1] * 1000:.0f}"


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.lifecycle",
        description="Order lifecycle vs a trivial and a same-interaction workflow, on one dev server.",
    )
    parser.add_argument("--orders", type=int, default=50, help="orders (and of each reference)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help=f"in flight at most (default {DEFAULT_CONCURRENCY}, {PROFILE_CONCURRENCY} under"
        " --profile: the profiler slows the OMS down enough to time out a closed order's Query)",
    )
    parser.add_argument(
        "--fill-delay", type=float, default=0.05, help="simulated venue delay per report (s)"
    )
    parser.add_argument(
        "--confirm-delay", type=float, default=0.05, help="simulated back-office delay (s)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="profile the lifecycle (every Python thread)"
    )
    parser.add_argument(
        "--profile-out",
        default="",
        metavar="PATH",
        help="with --profile, also write the merged profile to PATH (pstats, for snakeviz or"
        " `python -m pstats`)",
    )
    parser.add_argument(
        "--runner",
        choices=("sandbox", "unsandboxed"),
        default="sandbox",
        help="workflow runner of the OMS workers and the references",
    )
    parser.add_argument(
        "--max-concurrent-activities",
        type=int,
        default=Settings.model_fields["worker_max_concurrent_activities"].default,
        help="Settings.worker_max_concurrent_activities for the OMS workers",
    )
    parser.add_argument(
        "--experiment",
        action="append",
        default=[],
        choices=sorted(experiments.EXPERIMENTS),
        help="monkeypatch a proposed change into this process (repeatable); see bench/experiments.py",
    )
    parser.add_argument(
        "--postgres",
        default="",
        metavar="URL",
        help="read model on this PostgreSQL server (a database of its own, dropped after);"
        " default SQLite",
    )
    parser.add_argument(
        "--processes",
        action="store_true",
        help="run the API and each worker in a process of its own (the production shape),"
        " not all in this one",
    )
    parser.add_argument(
        "--lifecycle-only",
        action="store_true",
        help="skip the three references (quick experiments)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="run the references and the lifecycle this many times, one after the other, and"
        " print each ratio's median (default 3, 1 with --lifecycle-only or --profile)",
    )
    args = parser.parse_args(argv)
    if args.concurrency is None:
        args.concurrency = PROFILE_CONCURRENCY if args.profile else DEFAULT_CONCURRENCY
    if args.orders < 1 or args.concurrency < 1 or args.max_concurrent_activities < 1:
        parser.error("--orders, --concurrency and --max-concurrent-activities must be at least 1")
    if args.fill_delay < 0 or args.confirm_delay < 0:
        parser.error("delays cannot be negative")
    if args.rounds is None:
        args.rounds = 1 if args.lifecycle_only or args.profile else DEFAULT_ROUNDS
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.profile and args.rounds > 1:
        parser.error("--profile profiles one round: use --rounds 1")
    if args.profile_out and not args.profile:
        parser.error("--profile-out needs --profile")
    if args.profile and args.processes:
        parser.error("--profile profiles this process: it cannot be used with --processes")
    return args


async def run_references(
    client: Client,
    runner: WorkflowRunner,
    args: argparse.Namespace,
    budget: float,
    rpc: RpcTimes,
) -> References:
    """Run and report the three reference batches of one round."""
    batches = []
    for title, run in (
        ("Trivial reference: one workflow, one trivial activity (execute_workflow)", run_trivial),
        (
            "Same-interaction reference: update-with-start, approve, release,"
            " 3 report Updates, 2 settlement Signals; no activities",
            run_interaction,
        ),
        (
            "Order shape, no work: the same messages and an order's commands, each a no-op"
            " (patch marker, about 12 local activities, timers, 1 activity)",
            run_order_shape,
        ),
    ):
        probe = Probe(rpc)
        result = await run(client, runner, args.orders, args.concurrency, budget, probe)
        report_reference(title, args, result, probe)
        batches.append(result)
    trivial, interaction, order_shape = batches
    return References(trivial=trivial, interaction=interaction, order_shape=order_shape)


async def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    log_counter = LogCounter()
    route_logs(log_counter)
    for name in args.experiment:
        print(f"EXPERIMENT {name}: {experiments.EXPERIMENTS[name].describe}", flush=True)
    experiments.apply(args.experiment)
    runner = experiments.use_runner(args.runner, pydantic_data_converter)
    temporal_cli = Path(sys.executable).parent / "temporal"
    print(
        f"starting the Temporal dev server ({temporal_cli}); {args.orders} of each,"
        f" {args.concurrency} in flight, runner {args.runner},"
        f" max concurrent activities {args.max_concurrent_activities} ...",
        flush=True,
    )
    budget = phase_budget(args.orders)
    rounds: list[tuple[LifecycleResult, References | None]] = []
    with tempfile.TemporaryDirectory(prefix="oms-bench-") as tmp:
        env = await WorkflowEnvironment.start_local(
            data_converter=pydantic_data_converter,
            dev_server_existing_path=str(temporal_cli),
            dev_server_log_level="error",
        )
        try:
            rpc = RpcTimes()
            client = rpc.client(env.client)
            for index in range(args.rounds):
                if args.rounds > 1:
                    print(f"\n=== Round {index + 1} of {args.rounds} ===", flush=True)
                refs = None
                if not args.lifecycle_only:
                    refs = await run_references(client, runner, args, budget, rpc)
                profiler = AllThreadsProfiler() if args.profile else None
                data_dir = Path(tmp) / f"round-{index + 1}"
                data_dir.mkdir()
                with read_model_url(args.postgres) as database_url:
                    lifecycle = await run_lifecycle(
                        env, args, data_dir, log_counter, profiler, database_url, rpc
                    )
                report_lifecycle(args, lifecycle)
                if args.processes:
                    print("\n".join(process_log_lines(data_dir)), flush=True)
                rounds.append((lifecycle, refs))
        finally:
            await env.shutdown()
    for lifecycle, _ in rounds:
        if lifecycle.profile is not None:
            print(
                "\nProfile of the lifecycle batch (every Python thread, thread CPU time;"
                " profiling slows it down, so read shares, not rates):",
                flush=True,
            )
            print("\n".join(lifecycle.profile.lines(len(lifecycle.settled))), flush=True)
    for lifecycle, refs in rounds:
        if refs is not None:
            report_summary(args, lifecycle, refs, args.runner)
    report_rounds(rounds)
    print("\n".join(log_counter.lines()), flush=True)
    return 1 if any(len(lifecycle.settled) < args.orders for lifecycle, _ in rounds) else 0


def report_rounds(rounds: Sequence[tuple[LifecycleResult, References | None]]) -> None:
    """Print each ratio's median over the rounds (the machine's speed drifts between runs)."""
    measured = [
        (lifecycle, refs)
        for lifecycle, refs in rounds
        if refs is not None
        and all(
            rate_of(result) > 0  # NaN (an empty batch) is not
            for result in (refs.trivial, refs.interaction, refs.order_shape)
        )
    ]
    if len(measured) < 2:
        return

    def spread(name: str, values: Sequence[float], target: str = "") -> str:
        ordered = sorted(values)
        return (
            f"  {name:<32} {statistics.median(ordered):.3f}"
            f"  ({ordered[0]:.3f} .. {ordered[-1]:.3f}){target}"
        )

    rates = sorted(lifecycle.rate for lifecycle, _ in rounds)
    trivial = [rate_of(refs.trivial) for _, refs in measured]
    interaction = [rate_of(refs.interaction) for _, refs in measured]
    shape = [rate_of(refs.order_shape) for _, refs in measured]
    lifecycles = [lifecycle.rate for lifecycle, _ in measured]
    print(
        "\n".join(
            [
                "",
                f"Over {len(measured)} rounds (median, and the range):",
                f"  {'lifecycle orders/s':<32} {statistics.median(rates):.2f}"
                f"   ({rates[0]:.2f} .. {rates[-1]:.2f})",
                spread(
                    "lifecycle / trivial",
                    [_ratio(a, b) for a, b in zip(lifecycles, trivial, strict=True)],
                    f"   (target >= {TARGET_TRIVIAL})",
                ),
                spread(
                    "lifecycle / same-interaction",
                    [_ratio(a, b) for a, b in zip(lifecycles, interaction, strict=True)],
                    f"   (target >= {TARGET_INTERACTION})",
                ),
                spread(
                    "order shape / trivial",
                    [_ratio(a, b) for a, b in zip(shape, trivial, strict=True)],
                ),
                spread(
                    "order shape / same-interaction",
                    [_ratio(a, b) for a, b in zip(shape, interaction, strict=True)],
                ),
                spread(
                    "lifecycle / order shape",
                    [_ratio(a, b) for a, b in zip(lifecycles, shape, strict=True)],
                ),
            ]
        ),
        flush=True,
    )


if __name__ == "__main__":
    # Run the module's own import, not `__main__`: the workflow sandbox re-imports the module
    # that defines a workflow by name, which `__main__` may lack (under runpy wrappers).
    from bench.lifecycle import main as _main
    from worker import run_event_loop

    # The event loop `oms dev` and the workers run on.
    sys.exit(run_event_loop(_main()))
