"""Order lifecycle throughput and latency, against the real Temporal dev server.

What is measured
    N orders driven concurrently (at most C in flight, one asyncio.Semaphore) through the public
    HTTP API of an in-process OMS (API + both workers, `devserver.running_oms`) on a real Temporal
    dev server with a SQLite read model, each the whole story of API.md:

        POST /orders (alice)  ->  approve (dana)  ->  release (tom)  ->  poll GET /orders/{id}
        (alice, every ~50 ms)  until the order is `settled`.

    Per order the bench records, with `time.perf_counter`:

    - create            POST /orders latency. It includes pre-trade compliance, because the API
                        starts the order with update-with-start and answers once compliance has
                        decided (the response already says `pending_approval`).
    - approve           POST /orders/{id}/approve latency (a workflow Update).
    - release           POST /orders/{id}/release latency (a workflow Update that sends the
                        order to the venue).
    - release->settled  from the release response to the first poll that sees `settled`: venue
                        ack and two fills (three simulated fill delays), allocation, positions,
                        settlement instructions and their confirmation (one simulated back-office
                        delay). It is quantised by the poll interval plus a query's latency,
                        which is printed too: "(each poll GET)", over every poll of every order.
    - total             POST sent -> settled seen.

    Then, on the same dev server, the reference: a trivial workflow that runs one trivial activity,
    on its own worker and task queue, N of them at the same concurrency via `execute_workflow`.

How to read it
    - orders/s is settled orders / wall time of the whole batch (including the polling load the
      clients put on the API: one workflow Query per order per poll).
    - Percentiles are nearest-rank over the orders (no interpolation): below 100 orders p99 is
      the maximum, so read p99/max at small N as "the worst one", not as a tail estimate.
    - The simulated market and back-office delays are a floor on release->settled
      (3 x fill delay + 1 x confirm delay); they are printed with the results, compare like with
      like. Lower them with --fill-delay/--confirm-delay to see the orchestration cost alone.
    - The ratio OMS orders/s / trivial workflows/s says how much heavier an order is than the
      cheapest thing Temporal can do on this machine; the event counts of one order's history are
      printed to show why (activities, updates, signals).
    - One warm-up order and one warm-up trivial workflow run first and are not counted, so the
      figures exclude first-use costs (sandbox module loading, connection set-up).
    - Everything (API, both workers, simulators, this load generator) shares one process and
      one event loop, as in `oms dev`: on a small machine that process, not the Temporal server,
      is usually what saturates. Compare runs on the same machine only.
    - Stage percentiles are over settled orders. An order that fails (an HTTP error, a timeout
      of 120 s per order, or still unfinished when the whole phase's budget of 120 s + 1 s per
      order runs out) is listed under FAILED with the step it was in; warnings and errors logged
      by the OMS and the Temporal core during the run are counted at the end. Any failure makes
      the exit status 1, so a broken lifecycle never passes as a slow one.

Run: `python -m bench.lifecycle [--orders N] [--concurrency C] [--fill-delay S] [--confirm-delay S]`
(`make bench`). Nothing is downloaded: the dev server is the `temporal` CLI next to this Python.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import math
import re
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from temporalio import activity, workflow

# The workflow below is defined in this module, so the sandbox re-imports the module when it
# validates the workflow: everything that is not Temporal passes through unchanged.
with workflow.unsafe.imports_passed_through():
    import httpx
    from pydantic import BaseModel
    from temporalio.api.enums.v1 import EventType
    from temporalio.client import Client
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.runtime import (
        LogForwardingConfig,
        LoggingConfig,
        Runtime,
        TelemetryConfig,
        TelemetryFilter,
    )
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker

    from api.tokens import issue_token
    from config import Settings
    from db.demo import load_demo_data
    from db.engine import create_schema, make_engine, session_factory
    from devserver import running_oms
    from domain.ids import order_workflow_id

POLL_INTERVAL_SECONDS = 0.05
ORDER_TIMEOUT_SECONDS = 120.0
HTTP_TIMEOUT_SECONDS = 60.0
TEARDOWN_SECONDS = 30.0
STAGES = ("create", "approve", "release", "release->settled", "total")

T = TypeVar("T")


# --- the reference: the cheapest workflow worth measuring --------------------------------------


class TrivialInput(BaseModel):
    """Input of the trivial workflow and its activity."""

    name: str


@activity.defn
async def trivial_activity(input: TrivialInput) -> str:
    """Return a greeting; does no I/O."""
    return f"hello {input.name}"


@workflow.defn
class TrivialWorkflow:
    """Run one trivial activity and return its result."""

    @workflow.run
    async def run(self, input: TrivialInput) -> str:
        return await workflow.execute_activity(
            trivial_activity, input, start_to_close_timeout=timedelta(seconds=30)
        )


# --- figures -----------------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """Return the nearest-rank percentile `pct` (0 < pct <= 100) of `values`."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def stats_row(label: str, seconds: Sequence[float]) -> str:
    ms = [s * 1000 for s in seconds]
    cells = [percentile(ms, p) for p in (50, 95, 99)] + [max(ms) if ms else math.nan]
    return f"  {label:<18}" + "".join(f"{c:>10.1f}" for c in cells) + f"{len(ms):>7}"


def stats_header() -> str:
    return (
        f"  {'stage (ms)':<18}"
        + "".join(f"{h:>10}" for h in ("p50", "p95", "p99", "max"))
        + (f"{'n':>7}")
    )


@dataclass
class OrderTiming:
    """Seconds spent in each stage of one order; `failure` says where and why it stopped."""

    stages: dict[str, float] = field(default_factory=dict)
    order_id: str = ""
    step: str = "waiting for a slot"
    last_status: str = ""
    failure: str = ""
    poll_latencies: list[float] = field(default_factory=list)


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
        shape = _VARYING.sub("#", message)[:90]
        key = f"{record.levelname} {record.name}: {shape}"
        self.counts[key] += 1
        self.example.setdefault(key, message[:300])


_VARYING = re.compile(r"[0-9a-f]{8}-[0-9a-f-]{27}|\b(?:ord_)?[0-9a-f]{20,}\b|\d+(?:\.\d+)?")


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


# --- the OMS run -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


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
        self, user: str, method: str, path: str, body: dict[str, Any] | None = None
    ) -> httpx.Response:
        return await self._http.request(method, path, json=body, headers=self._headers[user])

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
        body = {
            "client_order_id": f"bench-{self._run_id}-{index}",
            "fund": "fund-alpha",
            "symbol": "AAPL",
            "side": "buy",
            "quantity": 100,
            "order_type": "market",
            "time_in_force": "day",
        }
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

        timing.step = "polling GET /orders/{id}"
        while True:
            await asyncio.sleep(POLL_INTERVAL_SECONDS)
            asked = time.perf_counter()
            polled = await self._call("alice", "GET", f"/orders/{order_id}")
            seen = time.perf_counter()
            timing.poll_latencies.append(seen - asked)
            if polled.status_code != 200:
                timing.failure = f"GET /orders/{{id}} -> {polled.status_code} {polled.text[:200]}"
                return
            timing.last_status = polled.json().get("status", "")
            if timing.last_status == "settled":
                timing.stages["release->settled"] = seen - released
                timing.stages["total"] = seen - started
                return
            if timing.last_status in ("settlement_failed", "venue_rejected", "canceled"):
                timing.failure = f"order ended {timing.last_status}"
                return


async def bounded(
    count: int, concurrency: int, job: Callable[[int], Awaitable[T]], budget: float
) -> tuple[list[T | None], float]:
    """Run `job(0..count-1)`, at most `concurrency` in flight, for at most `budget` seconds.

    Return each job's result (None when it raised or was still running at the budget, and was
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


async def history_counts(client: Client, workflow_id: str) -> dict[str, int]:
    """Count the events of one workflow's history that say what it cost."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    kinds = collections.Counter(event.event_type for event in history.events)
    return {
        "events": len(history.events),
        "workflow tasks": kinds[EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED],
        "activities": kinds[EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED],
        "updates": kinds[EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED],
        "signals": kinds[EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED],
        "timers": kinds[EventType.EVENT_TYPE_TIMER_STARTED],
    }


def format_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{value} {name}" for name, value in counts.items()) or "unavailable"


def phase_budget(orders: int) -> float:
    """Seconds the OMS phase may take before unfinished orders are abandoned (and reported)."""
    return ORDER_TIMEOUT_SECONDS + orders * 1.0


@dataclass
class OmsResult:
    wall: float
    budget: float
    timings: list[OrderTiming]
    history: dict[str, int]
    teardown: str = ""

    @property
    def settled(self) -> list[OrderTiming]:
        return [t for t in self.timings if "total" in t.stages and not t.failure]


async def run_oms(
    env: WorkflowEnvironment, args: argparse.Namespace, data_dir: Path, log_counter: LogCounter
) -> OmsResult:
    suffix = uuid.uuid4().hex[:8]
    port = free_port()
    settings = Settings(
        data_dir=data_dir,
        database_url="",
        temporal_address=env.client.service_client.config.target_host,
        api_host="127.0.0.1",
        api_port=port,
        orders_task_queue=f"bench-orders-{suffix}",
        back_office_task_queue=f"bench-back-office-{suffix}",
        simulator_fill_delay_seconds=args.fill_delay,
        back_office_confirm_delay_seconds=args.confirm_delay,
        back_office_simulator=True,
        jwt_secret=f"bench-secret-{suffix}-long-enough-for-hs256",
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
    counts: dict[str, int] = {}
    stack = contextlib.AsyncExitStack()
    await stack.enter_async_context(running_oms(settings, env.client))
    try:
        # uvicorn configures its loggers at start-up, dropping handlers added before.
        logging.getLogger("uvicorn").addHandler(log_counter)
        http = await stack.enter_async_context(
            httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", timeout=HTTP_TIMEOUT_SECONDS, limits=limits
            )
        )
        driver = Driver(http, settings.jwt_secret, suffix)
        warm = OrderTiming()
        await driver.one_order(-1, warm)
        if warm.failure:
            raise RuntimeError(f"the warm-up order failed: {warm.failure}")

        async def order(index: int) -> None:
            await driver.one_order(index, timings[index])

        _, wall = await bounded(args.orders, args.concurrency, order, budget)
        for timing in timings:
            if not timing.failure and "total" not in timing.stages:
                timing.failure = (
                    f"unfinished at the {budget:.0f} s budget, in {timing.step}"
                    f" (last status {timing.last_status or 'none'})"
                )
        sample = next((t.order_id for t in timings if "total" in t.stages), warm.order_id)
        with contextlib.suppress(Exception):
            counts = await asyncio.wait_for(
                history_counts(env.client, order_workflow_id(sample)), 30
            )
    finally:
        logging.getLogger("uvicorn").removeHandler(log_counter)
        teardown = ""
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
    return OmsResult(wall, budget, timings, counts, teardown)


async def run_trivial(
    env: WorkflowEnvironment, args: argparse.Namespace
) -> tuple[float, list[float], dict[str, int]]:
    suffix = uuid.uuid4().hex[:8]
    queue = f"bench-trivial-{suffix}"

    async def one(index: int) -> float:
        started = time.perf_counter()
        await env.client.execute_workflow(
            TrivialWorkflow.run,
            TrivialInput(name=str(index)),
            id=f"bench-trivial-{suffix}-{index}",
            task_queue=queue,
        )
        return time.perf_counter() - started

    async with Worker(
        env.client, task_queue=queue, workflows=[TrivialWorkflow], activities=[trivial_activity]
    ):
        await one(-1)
        results, wall = await bounded(args.orders, args.concurrency, one, phase_budget(args.orders))
    latencies = [r for r in results if r is not None]
    counts = await history_counts(env.client, f"bench-trivial-{suffix}-0")
    return wall, latencies, counts


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.lifecycle",
        description="Order lifecycle throughput/latency vs a trivial workflow, on a dev server.",
    )
    parser.add_argument("--orders", type=int, default=50, help="orders (and trivial workflows)")
    parser.add_argument("--concurrency", type=int, default=25, help="in flight at most")
    parser.add_argument(
        "--fill-delay", type=float, default=0.05, help="simulated venue delay per report (s)"
    )
    parser.add_argument(
        "--confirm-delay", type=float, default=0.05, help="simulated back-office delay (s)"
    )
    args = parser.parse_args(argv)
    if args.orders < 1 or args.concurrency < 1:
        parser.error("--orders and --concurrency must be at least 1")
    if args.fill_delay < 0 or args.confirm_delay < 0:
        parser.error("delays cannot be negative")
    return args


def oms_rate(oms: OmsResult) -> float:
    return len(oms.settled) / oms.wall


def report_oms(args: argparse.Namespace, oms: OmsResult) -> None:
    """Print the OMS figures (as soon as they exist, so a later failure cannot lose them)."""
    settled = oms.settled
    floor = 3 * args.fill_delay + args.confirm_delay
    polls = sum(len(t.poll_latencies) for t in oms.timings)
    lines = [
        "",
        "OMS order lifecycle: POST /orders -> approve -> release -> settled (HTTP, real dev server)",
        f"  orders              {args.orders}",
        f"  concurrency         {args.concurrency}",
        f"  simulated latency   venue fill delay {args.fill_delay * 1000:.0f} ms (x3: ack, 2 fills),"
        f" back-office confirm delay {args.confirm_delay * 1000:.0f} ms;"
        f" floor on release->settled {floor * 1000:.0f} ms",
        f"  poll interval       {POLL_INTERVAL_SECONDS * 1000:.0f} ms (GET /orders/{{id}}, a Query)",
        f"  settled             {len(settled)}/{args.orders}",
        f"  wall time           {oms.wall:.2f} s (budget {oms.budget:.0f} s)",
        f"  orders per second   {oms_rate(oms):.2f}",
        f"  status polls        {polls} x GET /orders/{{id}} ({polls / oms.wall:.0f}/s,"
        f" {polls / max(1, len(oms.timings)):.1f} per order), part of the load measured",
        stats_header() + "  (settled orders)",
    ]
    lines += [stats_row(stage, [t.stages[stage] for t in settled]) for stage in STAGES]
    lines.append(stats_row("(each poll GET)", [s for t in settled for s in t.poll_latencies]))
    lines.append(f"  one order's history {format_counts(oms.history)}")
    lines.append(f"  teardown            {oms.teardown}")
    failures = [t for t in oms.timings if t.failure]
    if failures:
        lines.append(f"  FAILED              {len(failures)} orders:")
        reasons = collections.Counter(_VARYING.sub("#", t.failure) for t in failures)
        lines.extend(f"    {n} x {reason}" for reason, n in reasons.most_common(10))
    print("\n".join(lines), flush=True)


def report_trivial(
    args: argparse.Namespace, trivial: tuple[float, list[float], dict[str, int]]
) -> float:
    """Print the reference's figures; return its workflows per second."""
    wall, latencies, counts = trivial
    rate = len(latencies) / wall
    lines = [
        "",
        "Reference: trivial workflow, one trivial activity (execute_workflow, own worker/queue)",
        f"  workflows           {len(latencies)}/{args.orders}",
        f"  concurrency         {args.concurrency}",
        f"  wall time           {wall:.2f} s",
        f"  workflows per sec   {rate:.2f}",
        stats_header(),
        stats_row("latency", latencies),
        f"  one history         {format_counts(counts)}",
    ]
    print("\n".join(lines), flush=True)
    return rate


def report_ratio(oms: OmsResult, trivial_rate: float, log_counter: LogCounter) -> None:
    rate = oms_rate(oms)
    ratio = rate / trivial_rate if trivial_rate else math.nan
    lines = [
        "",
        f"Ratio OMS orders/s / trivial workflows/s = {rate:.2f} / {trivial_rate:.2f} = {ratio:.3f}",
        "  (an order is ~a dozen activities, 3 updates, several signals and two simulated"
        " latencies; the trivial workflow is one activity)",
    ]
    if log_counter.counts:
        lines += ["", "Warnings and errors logged during the run (by shape, most frequent first):"]
        for key, n in log_counter.counts.most_common(12):
            lines.append(f"  {n:>5} x {key}")
            lines.append(f"          e.g. {log_counter.example[key]}")
    print("\n".join(lines), flush=True)


async def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    log_counter = LogCounter()
    route_logs(log_counter)
    temporal_cli = Path(sys.executable).parent / "temporal"
    print(f"starting the Temporal dev server ({temporal_cli}) ...", flush=True)
    with tempfile.TemporaryDirectory(prefix="oms-bench-") as tmp:
        env = await WorkflowEnvironment.start_local(
            data_converter=pydantic_data_converter,
            dev_server_existing_path=str(temporal_cli),
            dev_server_log_level="error",
        )
        try:
            print(f"driving {args.orders} orders, {args.concurrency} at a time ...", flush=True)
            oms = await run_oms(env, args, Path(tmp), log_counter)
            report_oms(args, oms)
            print(f"\nrunning {args.orders} trivial workflows ...", flush=True)
            trivial = await run_trivial(env, args)
        finally:
            await env.shutdown()
    trivial_rate = report_trivial(args, trivial)
    report_ratio(oms, trivial_rate, log_counter)
    return 1 if len(oms.settled) < args.orders else 0


if __name__ == "__main__":
    # Run the module's own import, not `__main__`: the workflow sandbox re-imports the module that
    # defines TrivialWorkflow by name and file, which `__main__` may lack (under runpy wrappers).
    from bench.lifecycle import main as _main

    sys.exit(asyncio.run(_main()))
