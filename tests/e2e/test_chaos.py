"""Chaos: kill -9 the workers and restart the Temporal server under 50+ orders in every stage.

The issue's proof that nothing a crash can lose lives only in process memory. Every part of the
OMS runs as its own process, as in production (`docker-compose.yml`): the Temporal dev server
(persisted to a file, so a restart keeps the orders), the API, the orders worker (with the
simulated venue) and the back-office worker (with the simulated back office), configured only by
`OMS_*` variables and sharing one SQLite read model. With orders spread over every stage:

1. the orders worker is killed with SIGKILL while orders are mid-fill at the simulated venue,
   and more orders are released while it is down;
2. the back-office worker is killed with SIGKILL while settlement instructions wait for it;
3. the Temporal server itself is killed and started again on the same state; the API and the
   workers must reconnect by themselves (nothing restarts them).

Then every order must end where it should: never-approved orders still wait for approval,
approved-but-unreleased ones are still approved, and every released order is settled, filled
exactly once (no duplicate exec id, fills summing to the quantity, one `settled` event). The
simulated venue, which keeps its book in the read model's database, must have received each
order once: one row (one ClOrdID) per order, a resubmission counted there and answered
idempotently, never turned into a venue rejection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from api.tokens import issue_token
from db import simulators
from db.engine import make_engine, session_factory
from tests.api.conftest import free_port

BIN_DIR = Path(sys.executable).parent
TEMPORAL_CLI = BIN_DIR / "temporal"
OMS = BIN_DIR / "oms"
SECRET = "chaos-secret-that-is-long-enough-for-hs256"
FUND = "fund-alpha"

pytestmark = pytest.mark.skipif(
    not TEMPORAL_CLI.exists(), reason=f"the Temporal CLI is not installed at {TEMPORAL_CLI}"
)

# The simulator is slow enough that a kill finds orders between acknowledgement and the two
# fills, and the back office waits long enough that orders sit in settlement_pending when its
# worker dies. Short leases let a restarted worker take over the dead one's venue orders soon.
FILL_DELAY_SECONDS = 0.8
CONFIRM_DELAY_SECONDS = 8.0
LEASE_SECONDS = 3.0
VENUE_ACK_TIMEOUT_SECONDS = 10

# How many orders are left at each stage when the orders worker is killed (52 in all).
PENDING = 8  # created, never approved: must still be pending_approval at the end
APPROVED = 8  # approved, never released: must still be approved at the end
SETTLED_FIRST = 6  # released and settled before any kill
SETTLING = 8  # in settlement_pending (the back office's delay) at the first kill
MID_FILL = 8  # released to the simulator, acknowledged or part-filled at the first kill
JUST_RELEASED = 4  # released the moment before the first kill: their submission may be cut off
RELEASED_WHILE_DOWN = 6  # released while the orders worker is dead
MANUAL = 4  # released to the manual venue; the test posts their execution reports

START_SECONDS = 60.0  # each process's start-up
STAGE_SECONDS = 60.0  # each wait for orders to reach a stage
# The final wait for every released order to settle. An instruction the back-office worker
# took with it when killed is retried only after its activity's start-to-close timeout (30 s).
SETTLE_SECONDS = 150.0
POLL_SECONDS = 0.2
HTTP_CONCURRENCY = 8  # requests in flight at once (2 cores run everything)

AT_VENUE = frozenset({"released", "working", "partially_filled"})
FILLED_NOT_SETTLED = frozenset({"filled", "allocated", "settlement_pending"})


class Service:
    """One OMS process in its own process group, its output in a log file.

    Its own group means `kill -9` reaches every process it started (a killed worker leaves no
    orphan that could go on reporting), and nothing signals the test runner by mistake.
    """

    def __init__(self, name: str, argv: list[str], env: dict[str, str], tmp: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.cwd = tmp
        self.log = tmp / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        assert not self.alive, f"{self.name} is already running"
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"\n===== start {self.starts} of {self.name} =====\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill9(self) -> None:
        """SIGKILL the whole group: no shutdown hook, no flush, as when a machine dies."""
        assert self.process is not None and self.alive, f"{self.name} is not running"
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """Stop the group if it runs (at the end of the test): SIGTERM, then SIGKILL."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        except ProcessLookupError:
            pass

    def tail(self, lines: int = 60) -> str:
        if not self.log.exists():
            return f"--- {self.name}: no log ---"
        text = self.log.read_text(errors="replace").splitlines()[-lines:]
        return f"--- {self.name} ({self.log}) ---\n" + "\n".join(text)


@dataclass
class Timeline:
    """Seconds since the test began, per step, printed as the test goes and at its end."""

    started: float = field(default_factory=time.monotonic)
    marks: list[tuple[str, float]] = field(default_factory=list)

    def mark(self, what: str) -> None:
        at = time.monotonic() - self.started
        self.marks.append((what, at))
        print(f"[chaos {at:7.2f}s] {what}", flush=True)


@dataclass
class Chaos:
    """The processes, the ports, and the calls the test makes on the OMS."""

    tmp: Path
    http: httpx.AsyncClient
    timeline: Timeline
    temporal_port: int
    database_url: str
    temporal: Service
    api: Service
    orders_worker: Service
    back_office_worker: Service
    gate: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(HTTP_CONCURRENCY))

    @property
    def services(self) -> list[Service]:
        return [self.temporal, self.api, self.orders_worker, self.back_office_worker]

    @property
    def temporal_address(self) -> str:
        return f"127.0.0.1:{self.temporal_port}"

    # ---- processes ----------------------------------------------------------------------------

    async def start_temporal(self) -> None:
        """Start the dev server on its state file and wait until it answers a client."""
        self.temporal.start()
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            self.assert_alive(self.temporal)
            try:
                with socket.create_connection(("127.0.0.1", self.temporal_port), timeout=1):
                    pass
                client = await Client.connect(self.temporal_address)
                await client.service_client.check_health(timeout=timedelta(seconds=2))
                return
            except Exception:  # not listening, or not serving yet: both mean "not yet"
                await asyncio.sleep(POLL_SECONDS)
        raise AssertionError("the Temporal dev server did not answer in time")

    async def wait_healthy(self) -> None:
        """Wait until the API says it reaches Temporal and the database."""
        deadline = time.monotonic() + START_SECONDS
        last = "no answer"
        while time.monotonic() < deadline:
            self.assert_alive(self.api)
            try:
                response = await self.http.get("/healthz", timeout=5)
                if response.status_code == 200:
                    return
                last = response.text
            except httpx.TransportError as exc:
                last = repr(exc)
            await asyncio.sleep(POLL_SECONDS)
        raise AssertionError(f"the API did not become healthy: {last}")

    async def wait_polling(
        self, worker: Service, queue: str, kind: TaskQueueType.ValueType
    ) -> None:
        """Wait until `worker` (this start of it, by its pid) polls `queue` on the server.

        The SDK names a worker `<pid>@<host>`, so the dead worker's poller, which the server
        lists for a while after the kill, is not taken for the new one.
        """
        identity = f"{worker.pid}@{socket.gethostname()}"
        client = await Client.connect(self.temporal_address)
        request = DescribeTaskQueueRequest(
            namespace="default", task_queue=TaskQueue(name=queue), task_queue_type=kind
        )
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            self.assert_alive(worker)
            response = await client.workflow_service.describe_task_queue(request)
            if any(poller.identity == identity for poller in response.pollers):
                return
            await asyncio.sleep(POLL_SECONDS)
        raise AssertionError(f"{worker.name} ({identity}) never polled {queue}")

    async def start_orders_worker(self) -> None:
        self.orders_worker.start()
        await self.wait_polling(
            self.orders_worker, "orders", TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW
        )

    async def start_back_office_worker(self) -> None:
        self.back_office_worker.start()
        await self.wait_polling(
            self.back_office_worker, "back-office", TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY
        )

    def assert_alive(self, *services: Service) -> None:
        for service in services or tuple(self.services):
            assert service.alive, f"{service.name} exited unexpectedly\n{service.tail()}"

    # ---- HTTP ---------------------------------------------------------------------------------

    async def call(
        self,
        user: str,
        method: str,
        path: str,
        body: Any = None,
        seconds: float = 90,
        gated: bool = True,
    ) -> httpx.Response:
        """Call the API as `user`; `gated` calls share HTTP_CONCURRENCY slots.

        A call that waits for a dead worker is not gated: it loads nothing, and holding a slot
        for it would starve the calls the test makes meanwhile.
        """
        token = issue_token(user, SECRET, timedelta(minutes=30))
        async with self.gate if gated else contextlib.nullcontext():
            return await self.http.request(
                method,
                path,
                json=body,
                headers={"Authorization": f"Bearer {token}"},
                timeout=seconds,
            )

    async def create(self, client_order_id: str, symbol: str, quantity: int) -> str:
        body = {
            "client_order_id": client_order_id,
            "fund": FUND,
            "symbol": symbol,
            "side": "buy",
            "quantity": quantity,
            "order_type": "market",
            "time_in_force": "day",
            # Two accounts: two settlement instructions per order for the back office.
            "allocations": [
                {"account": "alpha-main", "quantity": quantity * 3 // 5},
                {"account": "alpha-growth", "quantity": quantity - quantity * 3 // 5},
            ],
        }
        response = await self.call("alice", "POST", "/orders", body)
        assert response.status_code == 201, response.text
        assert response.json()["status"] == "pending_approval", response.text
        order_id: str = response.json()["order_id"]
        return order_id

    async def approve(self, order_id: str) -> None:
        response = await self.call("dana", "POST", f"/orders/{order_id}/approve", {"comment": "ok"})
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "approved", response.text

    async def release(self, order_id: str, venue: str, gated: bool = True) -> None:
        response = await self.call(
            "tom", "POST", f"/orders/{order_id}/release", {"venue": venue}, gated=gated
        )
        assert response.status_code == 200, f"release {order_id}: {response.text}"

    async def report(
        self, order_id: str, n: int, exec_type: str, quantity: Decimal = Decimal(0)
    ) -> httpx.Response:
        """Post the manual venue's execution report number `n` of an order, as sim-venue."""
        body: dict[str, Any] = {
            "order_id": order_id,
            "exec_id": f"MAN-{order_id}-{n}",
            "exec_type": exec_type,
            "last_quantity": str(quantity),
            "transact_time": datetime.now(UTC).isoformat(),
        }
        if exec_type == "trade":
            body["last_price"] = "415.20"
        return await self.call("sim-venue", "POST", "/executions", body)

    async def order(self, order_id: str) -> dict[str, Any]:
        response = await self.call("alice", "GET", f"/orders/{order_id}")
        assert response.status_code == 200, response.text
        order: dict[str, Any] = response.json()
        return order

    async def statuses(self) -> dict[str, str]:
        """Every order's status in the read model (one list call)."""
        response = await self.call("alice", "GET", f"/orders?fund={FUND}&limit=500")
        assert response.status_code == 200, response.text
        return {item["order_id"]: item["status"] for item in response.json()["items"]}

    async def wait_until(
        self, what: str, ready: Callable[[dict[str, str]], bool], seconds: float = STAGE_SECONDS
    ) -> dict[str, str]:
        """Poll the read model until `ready(statuses)`; fail naming `what` and where orders are."""
        deadline = time.monotonic() + seconds
        while True:
            statuses = await self.statuses()
            if ready(statuses):
                return statuses
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not reached; statuses {Counter(statuses.values())}")
            await asyncio.sleep(POLL_SECONDS)


async def each(ids: Iterable[str], act: Callable[[str], Awaitable[None]]) -> None:
    """Act on every order at once (the HTTP gate bounds how many calls are in flight)."""
    await asyncio.gather(*(act(order_id) for order_id in ids))


def count_in(statuses: dict[str, str], ids: Iterable[str], wanted: Iterable[str]) -> int:
    wanted = frozenset(wanted)
    return sum(1 for order_id in ids if statuses.get(order_id) in wanted)


def build_chaos(tmp: Path, http: httpx.AsyncClient, timeline: Timeline, api_port: int) -> Chaos:
    temporal_port, ui_port = free_port(), free_port()
    database_url = f"sqlite:///{tmp / 'oms.db'}"
    # Only what is set here configures the processes: no OMS_* from the caller's shell, and no
    # .env (they run in the tmp dir).
    env = {key: value for key, value in os.environ.items() if not key.startswith("OMS_")}
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "OMS_DATA_DIR": str(tmp / "state"),
            "OMS_DATABASE_URL": database_url,
            "OMS_TEMPORAL_ADDRESS": f"127.0.0.1:{temporal_port}",
            "OMS_API_HOST": "127.0.0.1",
            "OMS_API_PORT": str(api_port),
            "OMS_METRICS_PORT": "0",  # not under test here; never collide with `make run`
            "OMS_API_URL": f"http://127.0.0.1:{api_port}",
            "OMS_JWT_SECRET": SECRET,
            "OMS_ORDERS_TASK_QUEUE": "orders",
            "OMS_BACK_OFFICE_TASK_QUEUE": "back-office",
            "OMS_SIMULATOR_FILL_DELAY_SECONDS": str(FILL_DELAY_SECONDS),
            "OMS_SIMULATOR_LEASE_SECONDS": str(LEASE_SECONDS),
            "OMS_BACK_OFFICE_CONFIRM_DELAY_SECONDS": str(CONFIRM_DELAY_SECONDS),
            "OMS_VENUE_ACK_TIMEOUT_SECONDS": str(VENUE_ACK_TIMEOUT_SECONDS),
            # The suite's rules (tests/conftest.py): 52 alike orders in seconds are the point
            # here, not something for compliance to stop.
            "OMS_POLICIES_DIR": os.environ["OMS_POLICIES_DIR"],
            # The development keys and secrets, as `oms dev` uses them (production refuses them).
            "OMS_ENV": "development",
        }
    )
    temporal = Service(
        "temporal",
        [
            str(TEMPORAL_CLI),
            "server",
            "start-dev",
            "--db-filename",
            str(tmp / "temporal.db"),
            "--ip",
            "127.0.0.1",
            "--port",
            str(temporal_port),
            "--ui-port",
            str(ui_port),
            "--headless",
            "--log-level",
            "warn",
        ],
        env,
        tmp,
    )
    return Chaos(
        tmp=tmp,
        http=http,
        timeline=timeline,
        temporal_port=temporal_port,
        database_url=database_url,
        temporal=temporal,
        api=Service("api", [str(OMS), "api"], env, tmp),
        orders_worker=Service("orders-worker", [str(OMS), "worker", "--queue", "orders"], env, tmp),
        back_office_worker=Service(
            "back-office-worker", [str(OMS), "worker", "--queue", "back-office"], env, tmp
        ),
    )


async def test_orders_survive_killed_workers_and_a_restarted_temporal_server(
    tmp_path: Path,
) -> None:
    timeline = Timeline()
    api_port = free_port()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}") as http:
        chaos = build_chaos(tmp_path, http, timeline, api_port)
        try:
            await run_chaos(chaos)
        except BaseException:
            for service in chaos.services:
                print(service.tail(), flush=True)
            raise
        finally:
            for service in reversed(chaos.services):
                service.stop()
            for what, at in timeline.marks:
                print(f"  {at:7.2f}s  {what}")


async def run_chaos(chaos: Chaos) -> None:
    mark = chaos.timeline.mark

    # ---- start everything ---------------------------------------------------------------------
    await chaos.start_temporal()
    mark("Temporal dev server answers")
    await asyncio.to_thread(
        subprocess.run,
        [str(OMS), "load-demo-data"],
        env=chaos.api.env,
        cwd=chaos.tmp,
        check=True,
        capture_output=True,
        timeout=START_SECONDS,
    )
    chaos.api.start()
    await asyncio.gather(
        chaos.wait_healthy(), chaos.start_orders_worker(), chaos.start_back_office_worker()
    )
    mark("API healthy, both workers polling")

    # ---- orders at every stage ----------------------------------------------------------------
    groups: dict[str, list[str]] = {}
    plan = {
        "pending": PENDING,
        "approved": APPROVED,
        "settled-first": SETTLED_FIRST,
        "settling": SETTLING,
        "mid-fill": MID_FILL,
        "just-released": JUST_RELEASED,
        "released-while-down": RELEASED_WHILE_DOWN,
        "manual": MANUAL,
    }

    async def create_group(name: str, size: int) -> None:
        symbol = "MSFT" if name == "manual" else "AAPL"
        ids = await asyncio.gather(
            *(chaos.create(f"chaos-{name}-{i}", symbol, 100 + 10 * i) for i in range(size))
        )
        groups[name] = list(ids)

    await asyncio.gather(*(create_group(name, size) for name, size in plan.items()))
    everyone = [order_id for ids in groups.values() for order_id in ids]
    assert len(everyone) == len(set(everyone)) >= 50
    mark(f"{len(everyone)} orders created")
    await each((i for name, ids in groups.items() if name != "pending" for i in ids), chaos.approve)
    mark(f"{len(everyone) - PENDING} orders approved")

    simulator_ids = [
        *groups["settled-first"],
        *groups["settling"],
        *groups["mid-fill"],
        *groups["just-released"],
        *groups["released-while-down"],
    ]
    manual_ids = groups["manual"]
    released_ids = [*simulator_ids, *manual_ids]

    await each(groups["settled-first"], lambda i: chaos.release(i, "simulator"))
    await chaos.wait_until(
        "first orders settled",
        lambda s: count_in(s, groups["settled-first"], {"settled"}) == SETTLED_FIRST,
    )
    mark(f"{SETTLED_FIRST} orders settled")
    await each(groups["settling"], lambda i: chaos.release(i, "simulator"))
    await chaos.wait_until(
        "orders awaiting settlement",
        lambda s: count_in(s, groups["settling"], {"settlement_pending"}) == SETTLING,
    )
    mark(f"{SETTLING} orders awaiting settlement")

    # The manual venue: x1 fully filled, x2 partially, x3 acknowledged only, x4 nothing yet.
    await each(manual_ids, lambda i: chaos.release(i, "manual"))
    x1, x2, x3, x4 = manual_ids
    quantities = {
        order_id: Decimal((await chaos.order(order_id))["quantity"]) for order_id in manual_ids
    }
    for order_id in (x1, x2, x3):
        assert (await chaos.report(order_id, 1, "new")).status_code == 202
    x1_fill = await chaos.report(x1, 2, "trade", quantities[x1])
    assert x1_fill.status_code == 202, x1_fill.text
    x2_first = quantities[x2] // 2
    assert (await chaos.report(x2, 2, "trade", x2_first)).status_code == 202
    mark("manual orders worked by hand: filled, partially filled, acknowledged, released")

    mid_fill = groups["mid-fill"]
    await each(mid_fill, lambda i: chaos.release(i, "simulator"))
    at_kill = await chaos.wait_until(
        "orders mid-fill at the simulator",
        lambda s: count_in(s, mid_fill, {"working", "partially_filled"}) >= 3,
    )
    # The kill follows the first of these releases' answers at once. The workflow sends an
    # order to the venue (a local activity) right after it answers a release, so the worker
    # may die with the venue holding an order and Temporal not knowing it was sent. The next
    # worker sends it again, and the venue must take the resend as the same order.
    just_released = [
        asyncio.create_task(chaos.release(order_id, "simulator", gated=False))
        for order_id in groups["just-released"]
    ]
    await asyncio.wait(just_released, return_when=asyncio.FIRST_COMPLETED)

    # ---- 1. kill -9 the orders worker ---------------------------------------------------------
    chaos.orders_worker.kill9()
    mark(
        f"orders worker killed (-9); read model before the last {JUST_RELEASED} releases: "
        f"{dict(Counter(at_kill.values()))}"
    )
    stages = {
        "pending_approval": {"pending_approval"},
        "approved": {"approved"},
        "at the venue": AT_VENUE,
        "filled, awaiting settlement": FILLED_NOT_SETTLED,
        "settled": {"settled"},
    }
    for stage, statuses in stages.items():
        assert count_in(at_kill, everyone, statuses) > 0, f"no order {stage} at the kill"

    # Released while no worker runs: the API still answers; the release waits for a worker.
    down = groups["released-while-down"]
    releases = [
        asyncio.create_task(chaos.release(order_id, "simulator", gated=False)) for order_id in down
    ]
    assert (await chaos.http.get("/healthz")).status_code == 200  # Temporal and DB still answer
    listed = await chaos.statuses()
    assert all(listed[order_id] == "approved" for order_id in down)
    assert not any(task.done() for task in releases)
    mark(f"{len(down)} releases sent while the orders worker is down")
    await chaos.start_orders_worker()
    mark("orders worker restarted and polling")
    await asyncio.gather(*releases, *just_released)
    mark("releases sent while it was down (or cut off by the kill) answered")

    # ---- 2. kill -9 the back-office worker ----------------------------------------------------
    later = [*mid_fill, *groups["just-released"], *down]
    await chaos.wait_until(
        "orders awaiting settlement after the restart",
        lambda s: count_in(s, later, {"settlement_pending"}) >= 3,
    )
    at_second_kill = await chaos.statuses()
    chaos.back_office_worker.kill9()
    mark(
        "back-office worker killed (-9); read model at the kill: "
        f"{dict(Counter(at_second_kill.values()))}"
    )
    assert count_in(at_second_kill, released_ids, {"settlement_pending"}) >= 3
    # x2 is filled while the back office is down: its instructions wait on the back office's
    # task queue (allocated, not yet settlement_pending) until a worker takes them.
    x2_rest = await chaos.report(x2, 3, "trade", quantities[x2] - x2_first)
    assert x2_rest.status_code == 202, x2_rest.text
    await chaos.wait_until("x2 allocated", lambda s: s[x2] == "allocated")
    await chaos.start_back_office_worker()
    mark("back-office worker restarted and polling")

    # ---- 3. kill -9 the Temporal server and start it again on its state -----------------------
    chaos.temporal.kill9()
    mark("Temporal dev server killed (-9)")
    degraded = await chaos.http.get("/healthz", timeout=10)
    assert degraded.status_code == 503, degraded.text  # the API lives on, and says what is wrong
    await chaos.start_temporal()
    mark("Temporal dev server restarted on the same state file")
    # Nothing restarts the API or the workers: they must find the server again by themselves.
    await chaos.wait_healthy()
    mark("API healthy again (reconnected by itself)")
    chaos.assert_alive()

    # The manual venue goes on after the restart. A report sent again (x3's acknowledgement,
    # taken before the restart) is answered as a duplicate, and changes nothing.
    again = await chaos.report(x3, 1, "new")
    assert again.status_code == 200 and again.json()["status"] == "duplicate", again.text
    x3_fill = await chaos.report(x3, 2, "trade", quantities[x3])
    assert x3_fill.status_code == 202, x3_fill.text
    assert (await chaos.report(x4, 1, "new")).status_code == 202
    x4_fill = await chaos.report(x4, 2, "trade", quantities[x4])
    assert x4_fill.status_code == 202, x4_fill.text
    mark("manual reports after the restart taken; x3's acknowledgement again: 200 duplicate")

    # ---- every order ends where it should ---------------------------------------------------
    deadline = time.monotonic() + SETTLE_SECONDS

    async def settled(order_id: str) -> None:
        while True:
            remaining = deadline - time.monotonic()
            wait = max(1, min(30, int(remaining)))
            response = await chaos.call(
                "alice",
                "GET",
                f"/orders/{order_id}?wait_for=settled&timeout={wait}",
                seconds=wait + 30,
            )
            assert response.status_code == 200, response.text
            status = response.json()["status"]
            if status == "settled":
                return
            assert status not in {"venue_rejected", "settlement_failed", "canceled"}, status
            assert remaining > 0, f"{order_id} stranded at {status}"

    await each(released_ids, settled)
    mark(f"all {len(released_ids)} released orders settled")
    chaos.assert_alive()
    await assert_end_states(chaos, groups, simulator_ids, manual_ids)
    mark("end states checked")


async def assert_end_states(
    chaos: Chaos, groups: dict[str, list[str]], simulator_ids: list[str], manual_ids: list[str]
) -> None:
    """Each order ends where it should, filled exactly once, received by the venue once."""
    released_ids = [*simulator_ids, *manual_ids]
    orders = {order_id: await chaos.order(order_id) for ids in groups.values() for order_id in ids}
    for order_id in groups["pending"]:
        assert orders[order_id]["status"] == "pending_approval", orders[order_id]
    for order_id in groups["approved"]:
        assert orders[order_id]["status"] == "approved", orders[order_id]
    for order_id in released_ids:
        order = orders[order_id]
        assert order["status"] == "settled", order
        quantity = Decimal(order["quantity"])
        assert Decimal(order["filled_quantity"]) == quantity, order
        exec_ids = [e["exec_id"] for e in order["executions"]]
        assert len(exec_ids) == len(set(exec_ids)), f"{order_id}: duplicate executions {exec_ids}"
        traded = sum(
            (Decimal(e["last_quantity"]) for e in order["executions"] if e["exec_type"] == "trade"),
            Decimal(0),
        )
        assert traded == quantity, f"{order_id}: fills add up to {traded}, not {quantity}"
        assert all(s["status"] == "confirmed" for s in order["settlements"]), order["settlements"]

        response = await chaos.call("cora", "GET", f"/orders/{order_id}/history")
        assert response.status_code == 200, response.text
        history: list[dict[str, Any]] = response.json()
        kinds = Counter(entry["event"] for entry in history)
        assert kinds["settled"] == 1, f"{order_id}: {kinds}"
        assert kinds["venue_rejected"] == 0, f"{order_id}: {kinds}"
        seqs = [entry["seq"] for entry in history]
        assert None not in seqs and len(seqs) == len(set(seqs)), f"{order_id}: seqs {seqs}"

    # The read model lists exactly the released orders as settled.
    response = await chaos.call("alice", "GET", f"/orders?status=settled&fund={FUND}&limit=500")
    assert response.status_code == 200, response.text
    listed = {item["order_id"] for item in response.json()["items"]}
    assert listed == set(released_ids)

    # At the venue: one row, one ClOrdID, per order released to it; filled once.
    engine = make_engine(chaos.database_url)
    try:
        with session_factory(engine)() as session:
            rows = simulators.venue_orders(session)
    finally:
        engine.dispose()
    by_order = Counter(row.order_id for row in rows)
    assert set(by_order) == set(simulator_ids), "the venue's orders are not the released ones"
    assert all(count == 1 for count in by_order.values()), f"received twice: {by_order}"
    assert len({row.cl_ord_id for row in rows}) == len(rows) == len(simulator_ids)
    for row in rows:
        order = orders[row.order_id]
        assert row.cl_ord_id == order["cl_ord_id"], (row, order["cl_ord_id"])
        assert row.state == "filled" and row.filled == Decimal(order["quantity"]), row
    flags = Counter(flag["kind"] for order in orders.values() for flag in order["flags"])
    print(f"flags raised on the orders (for people to look at): {dict(flags) or 'none'}")
    submissions = Counter(row.submissions for row in rows)
    resent = {row.order_id: row.submissions for row in rows if row.submissions > 1}
    print(f"venue: {len(rows)} orders received; submissions per order {dict(submissions)}")
    print(f"venue: resubmitted (answered idempotently): {resent or 'none'}")
