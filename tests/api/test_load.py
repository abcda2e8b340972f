"""The API under load: every answer is 200 or a quick 503 with Retry-After, never a 500.

The real app is served by uvicorn on a free port against the real dev server (no workers: these
calls read only the read model) and a read model holding a few hundred orders, on SQLite and,
where configured, PostgreSQL. Burst figures (latency percentiles, answers by status) are printed,
not asserted: they depend on the machine. The PostgreSQL-only tests make the database busy or
unreachable on purpose (a table lock, a database closed to connections), so what they assert
does not depend on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import statistics
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import create_engine, text
from sqlalchemy.engine.url import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from api.deps import DatabaseGate
from api.errors import ApiError, from_database_error, from_rpc_error
from api.tokens import issue_token
from config import Settings
from db import queries
from db.demo import load_demo_data
from db.engine import create_schema, make_engine, session_factory
from devserver import _Server
from domain.models import OrderRequest, OrderType, Side
from domain.order import Order, OrderProjection, summarise
from tests.api.conftest import free_port
from tests.conftest import BACKENDS, POSTGRES_URL, _postgres_database

BURST = 200
ORDERS = 300
# A request still unanswered after this long counts as a transport error, i.e. a failure.
REQUEST_TIMEOUT_SECONDS = 20.0
# Bounds on waiting for the server to start or PostgreSQL to show a lock wait: far above what
# either needs, so only a real hang fails a test.
DEADLINE_SECONDS = 20.0
POLL_SECONDS = 0.01


@dataclass
class Api:
    url: str
    settings: Settings

    def auth(self, user: str) -> dict[str, str]:
        token = issue_token(user, self.settings.jwt_secret, timedelta(minutes=30))
        return {"Authorization": f"Bearer {token}"}


def _seed(database_url: str) -> None:
    """Load the demo reference data and ORDERS orders in fund-alpha, as the projector writes them."""
    engine = make_engine(database_url)
    try:
        create_schema(engine)
        sessions = session_factory(engine)
        with sessions() as session:
            load_demo_data(session)
        start = datetime(2025, 3, 3, 14, 30, tzinfo=UTC)
        for n in range(ORDERS):
            request = OrderRequest(
                client_order_id=f"load-{n}",
                fund="fund-alpha",
                symbol="AAPL",
                side=Side.BUY,
                quantity=Decimal(100 + n),
                order_type=OrderType.LIMIT,
                limit_price=Decimal("230.55"),
            )
            order = Order.new(f"ord-load-{n:04d}", request, "alice", start + timedelta(seconds=n))
            with sessions() as session:
                queries.project_order(
                    session,
                    OrderProjection(
                        summary=summarise(order, "OrderWorkflowV2"), events=order.events
                    ),
                )
    finally:
        engine.dispose()


@contextlib.asynccontextmanager
async def serving(
    database_url: str, client: Client, data_dir: Path, **settings: Any
) -> AsyncIterator[Api]:
    """Serve the real app with uvicorn in this event loop, on a free port, until the block ends."""
    port = free_port()
    configured = Settings(
        data_dir=data_dir,
        database_url=database_url,
        temporal_address=client.service_client.config.target_host,
        api_port=port,
        jwt_secret=f"test-secret-{uuid.uuid4().hex}-long-enough-for-hs256",
        **settings,
    )
    server = _Server(
        uvicorn.Config(
            create_app(configured, client), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    task = asyncio.create_task(server.serve(), name="api")
    deadline = time.monotonic() + DEADLINE_SECONDS
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the API stopped during start-up")
            if time.monotonic() > deadline:
                raise RuntimeError("the API did not start")
            await asyncio.sleep(POLL_SECONDS)
        yield Api(f"http://127.0.0.1:{port}", configured)
    finally:
        server.should_exit = True
        await task


@pytest.fixture(params=BACKENDS)
def load_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A seeded read model of this test's own: SQLite always, PostgreSQL where configured."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'oms.db'}"
        _seed(url)
        yield url
        return
    yield from _seeded_postgres_database()


@pytest.fixture
def pg_database_url() -> Iterator[str]:
    """A seeded PostgreSQL read model of this test's own."""
    yield from _seeded_postgres_database()


def _seeded_postgres_database() -> Iterator[str]:
    if not POSTGRES_URL:
        pytest.skip("OMS_TEST_POSTGRES_URL is not set")
    with contextlib.contextmanager(_postgres_database)() as url:
        _seed(url)
        yield url


# ---- a burst of list calls --------------------------------------------------------------------


@dataclass
class Answer:
    status: int | str  # the HTTP status, or the transport error's name
    seconds: float
    retry_after: str | None = None
    code: str | None = None


async def timed(call: Awaitable[httpx.Response]) -> Answer:
    started = time.perf_counter()
    try:
        response = await call
    except httpx.TransportError as exc:
        return Answer(type(exc).__name__, time.perf_counter() - started)
    seconds = time.perf_counter() - started
    code = None
    if response.status_code >= 400:
        try:
            code = response.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = f"not our error shape: {response.text[:200]!r}"
    return Answer(response.status_code, seconds, response.headers.get("retry-after"), code)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _report(name: str, answers: list[Answer]) -> None:
    seconds = [a.seconds for a in answers]
    counts = Counter(str(a.status) for a in answers)
    print(
        f"\n{name}: {len(answers)} answers {dict(sorted(counts.items()))}; "
        f"p50 {statistics.median(seconds) * 1000:.0f} ms, "
        f"p99 {_percentile(seconds, 0.99) * 1000:.0f} ms, "
        f"max {max(seconds) * 1000:.0f} ms"
    )


async def _burst(url: str, headers: dict[str, str]) -> tuple[list[Answer], list[Answer]]:
    """Send BURST list calls at once, and /healthz one call after another until they are answered."""
    limits = httpx.Limits(max_connections=BURST + 10, max_keepalive_connections=BURST + 10)
    async with httpx.AsyncClient(
        base_url=url, timeout=REQUEST_TIMEOUT_SECONDS, limits=limits
    ) as http:
        burst = [
            asyncio.create_task(timed(http.get("/orders", headers=headers))) for _ in range(BURST)
        ]
        health = [await timed(http.get("/healthz"))]
        while not all(task.done() for task in burst):
            health.append(await timed(http.get("/healthz")))
        return list(await asyncio.gather(*burst)), health


async def test_a_burst_of_list_calls_answers_200_or_503_and_healthz_stays_up(
    load_database_url: str, dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with serving(load_database_url, dev_env.client, tmp_path) as api:
        headers = api.auth("alice")
        async with httpx.AsyncClient(base_url=api.url, timeout=REQUEST_TIMEOUT_SECONDS) as http:
            first = await http.get("/orders", headers=headers)
            assert first.status_code == 200, first.text
            assert len(first.json()["items"]) == 50

        # The callers run in a thread and event loop of their own, as they would in other
        # processes: sharing the server's loop would pace the burst to the server's speed.
        started = time.perf_counter()
        answers, health = await asyncio.to_thread(asyncio.run, _burst(api.url, headers))
        elapsed = time.perf_counter() - started

    _report(f"GET /orders x{BURST} in {elapsed:.2f} s", answers)
    _report("GET /healthz during the burst", health)
    assert {a.status for a in answers} <= {200, 503}, Counter(str(a.status) for a in answers)
    refused = [a for a in answers if a.status == 503]
    assert all(a.code in ("database_busy", "database_unavailable") for a in refused)
    assert all(a.retry_after is not None for a in refused)
    assert len(refused) < BURST // 2, f"{len(refused)} of {BURST} refused"
    assert [a.status for a in health] == [200] * len(health)


# ---- PostgreSQL made busy or unreachable on purpose -------------------------------------------


async def _wait_for_lock_wait(admin: Any, holder_pid: int) -> None:
    """Return once some backend waits on a lock that `holder_pid` holds (polls, yielding the loop)."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    waiting = text("SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))")
    while admin.execute(waiting, {"pid": holder_pid}).scalar_one() == 0:
        if time.monotonic() > deadline:
            raise AssertionError("no request waited on the table lock")
        await asyncio.sleep(POLL_SECONDS)  # the server runs in this loop: let it work


@pytest.mark.postgres
async def test_a_request_that_cannot_get_a_turn_is_answered_503_busy_and_healthz_still_answers(
    pg_database_url: str, dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    locker = create_engine(pg_database_url)
    async with (
        serving(
            pg_database_url,
            dev_env.client,
            tmp_path,
            api_db_concurrency=1,
            api_db_wait_seconds=0.2,
        ) as api,
        httpx.AsyncClient(base_url=api.url, timeout=REQUEST_TIMEOUT_SECONDS) as http,
    ):
        headers = api.auth("alice")
        try:
            with locker.connect() as holder, locker.connect() as observer:
                observer = observer.execution_options(isolation_level="AUTOCOMMIT")
                pid = holder.execute(text("SELECT pg_backend_pid()")).scalar_one()
                holder.execute(text("LOCK TABLE funds IN ACCESS EXCLUSIVE MODE"))
                # The first list call takes the only slot and waits on the lock ...
                first = asyncio.create_task(http.get("/orders", headers=headers))
                await _wait_for_lock_wait(observer, pid)

                # ... so the next one waits 0.2 s for a turn, then is told to come back.
                second = await http.get("/orders", headers=headers)
                health = await http.get("/healthz")
                holder.rollback()
            answered = await first
        finally:
            locker.dispose()

    assert second.status_code == 503
    assert second.headers["retry-after"] == "1"
    assert second.json() == {
        "error": {
            "code": "database_busy",
            "message": "the database is busy; try again shortly",
            "field": None,
        }
    }
    assert health.status_code == 200, health.text
    assert health.json() == {"status": "ok", "temporal": "ok", "database": "ok"}
    assert answered.status_code == 200
    assert len(answered.json()["items"]) == 50


@pytest.mark.postgres
async def test_an_unreachable_database_is_answered_503_unavailable_until_it_is_back(
    pg_database_url: str, dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    name = make_url(pg_database_url).database
    admin = create_engine(make_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")

    def close_database(closed: bool) -> None:
        """Refuse (or allow again) new connections; on closing, end those the API's pool holds."""
        allow = "false" if closed else "true"
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {allow}'))
            if not closed:
                return
            backends = {"name": name}
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"
                ),
                backends,
            )
            # Termination is a signal: wait until the backends are gone, so none answers a ping.
            deadline = time.monotonic() + DEADLINE_SECONDS
            remaining = text("SELECT count(*) FROM pg_stat_activity WHERE datname = :name")
            while connection.execute(remaining, backends).scalar_one():
                assert time.monotonic() < deadline, "the API's connections were not ended"
                time.sleep(POLL_SECONDS)

    try:
        async with (
            serving(pg_database_url, dev_env.client, tmp_path) as api,
            httpx.AsyncClient(base_url=api.url, timeout=REQUEST_TIMEOUT_SECONDS) as http,
        ):
            headers = api.auth("alice")
            assert (await http.get("/orders", headers=headers)).status_code == 200
            close_database(True)
            down = await http.get("/orders", headers=headers)
            health = await http.get("/healthz")
            close_database(False)
            back = await http.get("/orders", headers=headers)
    finally:
        close_database(False)
        admin.dispose()

    assert down.status_code == 503
    assert down.headers["retry-after"] == "5"
    assert down.json() == {
        "error": {
            "code": "database_unavailable",
            "message": "the database is unavailable; try again shortly",
            "field": None,
        }
    }
    assert health.status_code == 503
    assert health.json() == {"status": "degraded", "temporal": "ok", "database": "unreachable"}
    assert back.status_code == 200


# ---- what each failure becomes ----------------------------------------------------------------


def _assert_503(error: ApiError, code: str, retry_after: str, *hidden: str) -> None:
    assert (error.status, error.code, error.headers) == (503, code, {"Retry-After": retry_after})
    for text_ in hidden:
        assert text_.lower() not in error.message.lower()


def test_an_exhausted_pool_is_database_busy(tmp_path: Path) -> None:
    engine = make_engine(
        f"sqlite:///{tmp_path / 'pool.db'}", pool_size=1, max_overflow=0, pool_timeout=0.05
    )
    try:
        with engine.connect(), pytest.raises(PoolTimeoutError) as raised:
            engine.connect()
    finally:
        engine.dispose()
    _assert_503(from_database_error(raised.value), "database_busy", "1", "QueuePool")


def test_a_locked_sqlite_database_is_database_busy(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x INTEGER)")
    holder.execute("BEGIN EXCLUSIVE")
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    try:
        with engine.connect() as connection, pytest.raises(OperationalError) as raised:
            connection.execute(text("SELECT * FROM t"))
    finally:
        engine.dispose()
        holder.close()
    _assert_503(from_database_error(raised.value), "database_busy", "1", "locked", "SELECT")


def test_a_refused_connection_is_database_unavailable() -> None:
    port = free_port()  # nothing listens there
    engine = create_engine(f"postgresql+psycopg://oms@127.0.0.1:{port}/oms")
    try:
        with pytest.raises(OperationalError) as raised:
            engine.connect()
    finally:
        engine.dispose()
    _assert_503(
        from_database_error(raised.value), "database_unavailable", "5", "127.0.0.1", str(port)
    )


@pytest.mark.parametrize(
    ("status", "code", "retry_after"),
    [
        (RPCStatusCode.RESOURCE_EXHAUSTED, "temporal_busy", "1"),
        (RPCStatusCode.UNAVAILABLE, "temporal_unavailable", "5"),
        (RPCStatusCode.DEADLINE_EXCEEDED, "temporal_unavailable", "5"),
    ],
)
def test_a_refused_temporal_call_is_503_to_retry(
    status: RPCStatusCode, code: str, retry_after: str
) -> None:
    error = RPCError("namespace rps limit exceeded at 10.0.0.7:7233", status, b"")
    _assert_503(from_rpc_error(error), code, retry_after, "10.0.0.7", "rps limit")


def test_a_missing_workflow_is_404() -> None:
    error = from_rpc_error(RPCError("workflow not found", RPCStatusCode.NOT_FOUND, b""))
    assert (error.status, error.code) == (404, "not_found")


async def test_the_gate_admits_up_to_its_slots_then_answers_busy() -> None:
    gate = DatabaseGate(slots=1, wait_seconds=0.05)
    async with gate.slot():
        with pytest.raises(ApiError) as raised:
            async with gate.slot():
                pytest.fail("a second request was admitted to a one-slot gate")
    _assert_503(raised.value, "database_busy", "1")
    async with gate.slot():  # the slot was given back
        pass

    no_queue = DatabaseGate(slots=1, wait_seconds=0)
    async with no_queue.slot():  # a free slot is taken even with no wait allowed
        with pytest.raises(ApiError):
            async with no_queue.slot():
                pytest.fail("admitted without a free slot")
