"""The v2 read model (`queries.project_order`) on SQLite and PostgreSQL.

A projection writes the order's slim row, its new events, executions, allocations (with the
positions they touch) and settlement statuses in one transaction. Every projection is written
twice, as a retried activity would, and the second write must change nothing. The row is keyed by
version and never moves backwards, whatever order the writers commit in; events are keyed by
sequence number, so an older projection still adds the events it carries.

The PostgreSQL race tests are deterministic: the second writer is started only once the first
holds its lock, and the first commits only once PostgreSQL reports the second waiting on it.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, inspect, text
from sqlmodel import Session, col, select

from db import queries
from db.engine import SessionFactory, create_schema, make_engine, session_factory
from db.tables import AllocationRow, ExecutionRow, OrderRow, PositionRow, SettlementRow
from domain.models import (
    Allocation,
    ExecType,
    Execution,
    OrderRequest,
    OrderStatus,
    OrderType,
    SettlementInstruction,
    SettlementStatus,
    Side,
)
from domain.order import Order, OrderProjection, OrderSummary, summarise
from domain.status import OrderEvent
from tests.conftest import BACKENDS, POSTGRES_URL, _postgres_database

V2 = "OrderWorkflowV2"
T0 = datetime(2025, 3, 3, 14, 30, 15, 123456, tzinfo=UTC)
FUND = "fund-alpha"

# How long a writer may take to reach its lock wait, and the other to finish once released: far
# above what either needs, so only a real hang fails the test.
DEADLINE_SECONDS = 15.0
POLL_SECONDS = 0.01


def unique(prefix: str) -> str:
    """Return an id no other test (or earlier run on the shared database) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


# ---- building orders through the domain -------------------------------------------------------


def new_order(quantity: str = "1000") -> Order:
    """Return a just-created limit buy of AAPL in fund-alpha (version 1: its creation event)."""
    request = OrderRequest(
        client_order_id=unique("c"),
        fund=FUND,
        symbol="AAPL",
        side=Side.BUY,
        quantity=Decimal(quantity),
        order_type=OrderType.LIMIT,
        limit_price=Decimal("230.55"),
    )
    return Order.new(unique("ord"), request, "alice", T0)


def step(order: Order, kind: OrderEvent, actor: str = "system", **details: Any) -> Order:
    """Record one event on the order, a second after the previous one; return the order."""
    order.record(kind, at=T0 + timedelta(seconds=order.last_seq), actor=actor, details=details)
    return order


def to_working(order: Order) -> Order:
    """Take the order through compliance, one approval and release to a working order (v6)."""
    step(order, OrderEvent.COMPLIANCE_PASSED)
    step(order, OrderEvent.APPROVAL_GIVEN, "dana", level="desk_head")
    step(order, OrderEvent.APPROVALS_COMPLETE)
    step(order, OrderEvent.RELEASED, "tom", venue="simulator")
    order.venue = "simulator"
    return step(order, OrderEvent.VENUE_ACCEPTED)


def trade(order: Order, quantity: str, price: str) -> Execution:
    """Apply a trade report to the order, as the workflow does: the execution, then its events."""
    last_quantity, last_price = Decimal(quantity), Decimal(price)
    cumulative = order.filled_quantity + last_quantity
    average = (
        order.filled_quantity * (order.average_price or 0) + last_quantity * last_price
    ) / cumulative
    execution = Execution(
        exec_id=f"SIM-{order.order_id}-{order.execution_count + 1}",
        exec_type=ExecType.TRADE,
        last_quantity=last_quantity,
        last_price=last_price,
        cumulative_quantity=cumulative,
        leaves_quantity=order.terms.quantity - cumulative,
        average_price=average,
        transact_time=T0 + timedelta(seconds=order.last_seq),
        received_at=T0 + timedelta(seconds=order.last_seq),
        reported_by="sim-venue",
    )
    order.add_execution(execution)
    step(order, OrderEvent.EXECUTION_APPLIED, "sim-venue", exec_id=execution.exec_id)
    done = cumulative == order.terms.quantity
    step(order, OrderEvent.FILL if done else OrderEvent.PARTIAL_FILL, "sim-venue")
    return execution


def projection(order: Order, *, after_seq: int = 0, **what: Any) -> OrderProjection:
    """Return what the projector would write now: the row and the events after `after_seq`."""
    return OrderProjection(
        summary=summarise(order, V2),
        events=[e for e in order.events if e.seq > after_seq],
        executions=list(order.executions),
        **what,
    )


def project(sessions: SessionFactory, *projections: OrderProjection) -> None:
    """Write each projection twice, as a retried activity would."""
    for written in projections:
        for _ in range(2):
            with sessions() as session:
                queries.project_order(session, written)


# ---- reading the read model back --------------------------------------------------------------


def order_row(sessions: SessionFactory, order_id: str) -> OrderRow:
    with sessions() as session:
        rows = list(session.exec(select(OrderRow).where(OrderRow.order_id == order_id)))
    assert len(rows) == 1
    return rows[0]


def stored_version(sessions: SessionFactory, order_id: str) -> tuple[str, int]:
    row = order_row(sessions, order_id)
    return row.status, row.version


def read_model(sessions: SessionFactory, order: Order, accounts: list[str]) -> dict[str, Any]:
    """Return everything the read model holds about the order, as plain comparable values."""
    with sessions() as session:
        executions = session.exec(
            select(ExecutionRow)
            .where(ExecutionRow.order_id == order.order_id)
            .order_by(col(ExecutionRow.exec_id))
        )
        allocations = session.exec(
            select(AllocationRow)
            .where(AllocationRow.order_id == order.order_id)
            .order_by(col(AllocationRow.account))
        )
        positions = session.exec(
            select(PositionRow)
            .where(col(PositionRow.account).in_(accounts))
            .order_by(col(PositionRow.account))
        )
        return {
            "orders": [
                r.model_dump()
                for r in session.exec(select(OrderRow).where(OrderRow.order_id == order.order_id))
            ],
            "events": [r.model_dump() for r in queries.order_events(session, order.order_id)],
            "executions": [r.model_dump() for r in executions],
            "allocations": [r.model_dump() for r in allocations],
            "positions": [r.model_dump() for r in positions],
        }


def position(sessions: SessionFactory, account: str) -> PositionRow:
    with sessions() as session:
        held = session.get(PositionRow, (account, "AAPL"))
    assert held is not None
    return held


# ---- project_order on both backends -----------------------------------------------------------


def test_project_order_writes_the_row_events_and_executions(sessions: SessionFactory) -> None:
    order = to_working(new_order())
    first = trade(order, "400", "230.25")
    second = trade(order, "100", "230.75")

    project(sessions, projection(order))

    row = order_row(sessions, order.order_id)
    assert (row.version, row.status, row.workflow_type) == (10, "partially_filled", V2)
    assert (row.fund, row.symbol, row.side, row.order_type, row.time_in_force) == (
        FUND,
        "AAPL",
        "buy",
        "limit",
        "day",
    )
    assert (row.quantity, row.limit_price) == (Decimal(1000), Decimal("230.55"))
    assert (row.filled_quantity, row.average_price) == (Decimal(500), Decimal("230.35"))
    assert (row.venue, row.created_by, row.created_at) == ("simulator", "alice", T0)
    assert row.updated_at == T0 + timedelta(seconds=9)
    with sessions() as session:
        assert queries.order_status(session, order.order_id) == ("partially_filled", True)
        assert queries.order_route(session, order.order_id) == (FUND, V2)
        assert queries.order_status(session, unique("ord")) is None
        assert queries.order_route(session, unique("ord")) is None
        events = queries.order_events(session, order.order_id)
        executions = list(
            session.exec(
                select(ExecutionRow)
                .where(ExecutionRow.order_id == order.order_id)
                .order_by(col(ExecutionRow.exec_id))
            )
        )

    assert [(e.seq, e.kind, e.actor, e.status) for e in events] == [
        (1, "order_created", "alice", "pending_compliance"),
        (2, "compliance_passed", "system", "pending_approval"),
        (3, "approval_given", "dana", "pending_approval"),
        (4, "approvals_complete", "system", "approved"),
        (5, "released", "tom", "released"),
        (6, "venue_accepted", "system", "working"),
        (7, "execution_applied", "sim-venue", "working"),
        (8, "partial_fill", "sim-venue", "partially_filled"),
        (9, "execution_applied", "sim-venue", "partially_filled"),
        (10, "partial_fill", "sim-venue", "partially_filled"),
    ]
    assert {e.fund for e in events} == {FUND}
    assert [e.at for e in events] == [T0 + timedelta(seconds=n) for n in range(10)]
    assert events[0].details["request"]["client_order_id"] == order.request.client_order_id
    assert events[2].details == {"level": "desk_head"}
    assert events[6].details == {"exec_id": first.exec_id}
    assert [
        (x.exec_id, x.last_quantity, x.last_price, x.cumulative_quantity) for x in executions
    ] == [
        (first.exec_id, Decimal(400), Decimal("230.25"), Decimal(400)),
        (second.exec_id, Decimal(100), Decimal("230.75"), Decimal(500)),
    ]


def test_project_order_twice_changes_nothing(sessions: SessionFactory) -> None:
    order = to_working(new_order())
    trade(order, "1000", "230.5")
    written = projection(order)

    with sessions() as session:
        queries.project_order(session, written)
    before = read_model(sessions, order, [])
    with sessions() as session:
        queries.project_order(session, written)
    assert read_model(sessions, order, []) == before
    assert (len(before["orders"]), len(before["events"]), len(before["executions"])) == (1, 8, 1)

    with sessions() as session:
        assert queries.upsert_order_summary(session, written.summary) is False
        session.commit()


def test_upsert_order_summary_tells_whether_the_row_changed(sessions: SessionFactory) -> None:
    order = new_order()
    created = summarise(order, V2)
    step(order, OrderEvent.COMPLIANCE_PASSED)
    checked = summarise(order, V2)

    for summary, changed in ((created, True), (created, False), (checked, True), (created, False)):
        with sessions() as session:
            assert queries.upsert_order_summary(session, summary) is changed
            session.commit()
    assert order_row(sessions, order.order_id).status == "pending_approval"


def test_an_older_projection_keeps_the_newer_row_and_adds_its_events(
    sessions: SessionFactory,
) -> None:
    order = new_order()
    step(order, OrderEvent.COMPLIANCE_PASSED)
    step(order, OrderEvent.APPROVAL_GIVEN, "dana", level="desk_head")
    older = projection(order)  # v3, events 1-3: delivered late
    step(order, OrderEvent.APPROVALS_COMPLETE)
    step(order, OrderEvent.RELEASED, "tom", venue="simulator")
    newer = projection(order, after_seq=3)  # v5, events 4-5

    project(sessions, newer, older)

    row = order_row(sessions, order.order_id)
    assert (row.version, row.status, row.updated_at) == (5, "released", T0 + timedelta(seconds=4))
    with sessions() as session:
        events = queries.order_events(session, order.order_id)
    assert [(e.seq, e.kind) for e in events] == [
        (1, "order_created"),
        (2, "compliance_passed"),
        (3, "approval_given"),
        (4, "approvals_complete"),
        (5, "released"),
    ]


def test_an_event_already_stored_is_kept_as_first_written(sessions: SessionFactory) -> None:
    order = new_order()
    step(order, OrderEvent.COMPLIANCE_PASSED)
    first = projection(order)
    # A projection that carries seq 2 again (a retry after continue-as-new) with other content.
    rewritten = first.model_copy(
        update={"events": [first.events[1].model_copy(update={"reason": "second copy"})]}
    )

    project(sessions, first, rewritten)

    with sessions() as session:
        events = queries.order_events(session, order.order_id)
    assert [(e.seq, e.reason) for e in events] == [(1, ""), (2, "")]


def test_allocations_in_a_projection_rebuild_positions_once(sessions: SessionFactory) -> None:
    order = to_working(new_order())
    trade(order, "1000", "230.5")
    main, growth = unique("main"), unique("growth")
    allocations = [
        Allocation(
            account=main,
            requested_quantity=Decimal(600),
            quantity=Decimal(600),
            price=Decimal("230.5"),
        ),
        Allocation(
            account=growth,
            requested_quantity=Decimal(400),
            quantity=Decimal(400),
            price=Decimal("230.5"),
        ),
    ]
    step(order, OrderEvent.ALLOCATED)
    booked = projection(order, allocations=allocations)

    project(sessions, booked)
    after_first = read_model(sessions, order, [main, growth])
    # A later projection of the order carrying the same allocations again books nothing more.
    step(order, OrderEvent.SETTLEMENT_INSTRUCTED)
    project(sessions, projection(order, after_seq=9, allocations=allocations))

    after_second = read_model(sessions, order, [main, growth])
    assert after_second["allocations"] == after_first["allocations"]
    assert [(a["account"], a["quantity"]) for a in after_second["allocations"]] == sorted(
        [(main, Decimal(600)), (growth, Decimal(400))]
    )
    held_main, held_growth = position(sessions, main), position(sessions, growth)
    assert (held_main.quantity, held_main.average_cost, held_main.cash_flow) == (
        Decimal(600),
        Decimal("230.5"),
        Decimal(-138300),
    )
    assert (held_growth.quantity, held_growth.cash_flow) == (Decimal(400), Decimal(-92200))
    assert held_main.fund == FUND
    row = order_row(sessions, order.order_id)
    assert (row.version, row.status) == (10, "settlement_pending")


def instruction_for(order: Order, account: str) -> SettlementInstruction:
    return SettlementInstruction(
        settlement_id=f"{order.order_id}.{account}",
        order_id=order.order_id,
        fund=FUND,
        account=account,
        symbol="AAPL",
        side=Side.BUY,
        quantity=Decimal(1000),
        price=Decimal("230.5"),
        gross_amount=Decimal(230500),
        currency="USD",
        trade_date=date(2025, 3, 3),
        settlement_date=date(2025, 3, 4),
    )


def settlement_row(sessions: SessionFactory, settlement_id: str) -> SettlementRow:
    with sessions() as session:
        row = session.get(SettlementRow, settlement_id)
    assert row is not None
    return row


def test_settlement_status_through_projections_and_confirmed_stays_confirmed(
    sessions: SessionFactory,
) -> None:
    order = to_working(new_order())
    trade(order, "1000", "230.5")
    step(order, OrderEvent.ALLOCATED)
    step(order, OrderEvent.SETTLEMENT_INSTRUCTED)
    instruction = instruction_for(order, unique("acct"))
    with sessions() as session:
        assert queries.record_instruction(session, instruction, T0) is True
    project(sessions, projection(order))
    assert settlement_row(sessions, instruction.settlement_id).status == "instructed"

    failed_at, confirmed_at = T0 + timedelta(hours=20), T0 + timedelta(hours=22)
    failed = instruction.model_copy(
        update={
            "status": SettlementStatus.FAILED,
            "status_reason": "no SSI",
            "status_at": failed_at,
        }
    )
    step(order, OrderEvent.SETTLEMENT_FAILED, "betty")
    project(sessions, projection(order, after_seq=10, settlements=[failed]))
    row = settlement_row(sessions, instruction.settlement_id)
    assert (row.status, row.status_reason, row.status_at) == ("failed", "no SSI", failed_at)

    confirmed = instruction.model_copy(
        update={"status": SettlementStatus.CONFIRMED, "status_at": confirmed_at}
    )
    step(order, OrderEvent.SETTLED, "betty")
    project(sessions, projection(order, after_seq=11, settlements=[confirmed]))
    row = settlement_row(sessions, instruction.settlement_id)
    assert (row.status, row.status_reason, row.status_at) == ("confirmed", "", confirmed_at)

    # A failure delivered after the confirmation (a late or replayed projection) changes nothing.
    late = failed.model_copy(update={"status_at": confirmed_at + timedelta(hours=1)})
    project(sessions, projection(order, after_seq=12, settlements=[late]))
    row = settlement_row(sessions, instruction.settlement_id)
    assert (row.status, row.status_reason, row.status_at) == ("confirmed", "", confirmed_at)
    assert (row.quantity, row.gross_amount) == (Decimal(1000), Decimal(230500))
    assert order_row(sessions, order.order_id).status == "settled"


def test_a_status_without_its_own_time_takes_the_projection_time(sessions: SessionFactory) -> None:
    order = to_working(new_order())
    trade(order, "1000", "230.5")
    instruction = instruction_for(order, unique("acct"))
    with sessions() as session:
        queries.record_instruction(session, instruction, T0)
    confirmed = instruction.model_copy(update={"status": SettlementStatus.CONFIRMED})

    project(sessions, projection(order, settlements=[confirmed]))

    row = settlement_row(sessions, instruction.settlement_id)
    assert (row.status, row.status_at) == ("confirmed", order.updated_at)


# ---- create_schema on a read model made by older code -----------------------------------------


@pytest.fixture(params=BACKENDS)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of this test's own, with no tables yet."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'oms.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip("OMS_TEST_POSTGRES_URL is not set")
    yield from _postgres_database()


def _make_old_read_model(url: str, order: Order) -> None:
    """Leave at `url` a read model as the code before v2 made it, holding one v1 order."""
    engine = make_engine(url)
    try:
        create_schema(engine)
        with session_factory(engine)() as session:
            queries.upsert_order_summary(session, summarise(order, queries.V1_WORKFLOW_TYPE))
            session.commit()
        with engine.begin() as connection:
            connection.execute(text("ALTER TABLE orders DROP COLUMN workflow_type"))
            connection.execute(text("DROP TABLE order_events"))
        assert "workflow_type" not in {c["name"] for c in inspect(engine).get_columns("orders")}
    finally:
        engine.dispose()


def test_create_schema_adds_the_columns_an_old_read_model_lacks(empty_database_url: str) -> None:
    old = new_order()
    _make_old_read_model(empty_database_url, old)

    engine = make_engine(empty_database_url)
    try:
        create_schema(engine)
        create_schema(engine)  # a second start finds nothing to add

        [column] = [
            c for c in inspect(engine).get_columns("orders") if c["name"] == "workflow_type"
        ]
        assert column["nullable"] is False
        assert "OrderWorkflow" in str(column["default"])
        sessions = session_factory(engine)
        with sessions() as session:
            assert queries.order_route(session, old.order_id) == (FUND, "OrderWorkflow")
        assert order_row(sessions, old.order_id).workflow_type == "OrderWorkflow"

        new = new_order()
        project(sessions, projection(step(new, OrderEvent.COMPLIANCE_PASSED)))
        with sessions() as session:
            assert queries.order_route(session, new.order_id) == (FUND, V2)
            assert [e.seq for e in queries.order_events(session, new.order_id)] == [1, 2]
    finally:
        engine.dispose()


# ---- PostgreSQL: concurrent writers never move the row backwards ------------------------------


@pytest.fixture(scope="module")
def pg_engine() -> Iterator[Engine]:
    """A PostgreSQL read model of this module's own, so no other test touches its locks."""
    if not POSTGRES_URL:
        pytest.skip("OMS_TEST_POSTGRES_URL is not set")
    with contextlib.contextmanager(_postgres_database)() as url:
        engine = make_engine(url)
        create_schema(engine)
        yield engine
        engine.dispose()


@dataclass
class Writer:
    """A session whose transaction is open on a connection of its own (its backend is `pid`)."""

    session: Session
    pid: int


def open_writer(engine: Engine) -> Writer:
    session = Session(engine, expire_on_commit=False)
    pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
    return Writer(session, pid)


def wait_until_blocked(
    engine: Engine, waiter: Writer, holder: Writer, pending: Future[Any]
) -> None:
    """Return once PostgreSQL reports `waiter` waiting on a lock that `holder` holds."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    with engine.connect() as observer:
        # Autocommit: each poll reads the lock table as it is now.
        observer = observer.execution_options(isolation_level="AUTOCOMMIT")
        blocking = text("SELECT pg_blocking_pids(:pid)")
        while holder.pid not in observer.execute(blocking, {"pid": waiter.pid}).scalar_one():
            if pending.done():
                pending.result()  # raises what the waiter raised, if it did
                raise AssertionError("the waiting writer finished without waiting for the lock")
            if time.monotonic() > deadline:
                raise AssertionError(f"writer {waiter.pid} never waited on {holder.pid}")
            time.sleep(POLL_SECONDS)


def race(
    engine: Engine,
    held: Callable[[Session], object],
    waiting: Callable[[Session], object],
) -> tuple[object, object]:
    """Run `held` in an open transaction, `waiting` in another that blocks on it, then commit both.

    The holder commits only once PostgreSQL reports the other writer waiting on its lock, so
    the interleaving is the same on every run.

    Returns:
        What `held` and `waiting` returned.
    """
    holder, waiter = open_writer(engine), open_writer(engine)

    def write_and_commit() -> object:
        try:
            result = waiting(waiter.session)
            waiter.session.commit()
            return result
        finally:
            waiter.session.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            held_result = held(holder.session)
            pending = pool.submit(write_and_commit)
            wait_until_blocked(engine, waiter, holder, pending)
            holder.session.commit()
        finally:
            holder.session.close()  # on failure this rolls back, releasing the waiter
        waiting_result = pending.result(timeout=DEADLINE_SECONDS)
    return held_result, waiting_result


def summaries_up_to_v5() -> tuple[Order, dict[int, OrderSummary]]:
    """Return an order at version 5 and its row as it stood at each version 1-5."""
    order = new_order()
    rows = {1: summarise(order, V2)}
    for kind in (
        OrderEvent.COMPLIANCE_PASSED,
        OrderEvent.APPROVAL_GIVEN,
        OrderEvent.APPROVALS_COMPLETE,
        OrderEvent.RELEASED,
    ):
        step(order, kind)
        rows[order.version] = summarise(order, V2)
    assert [(v, s.status) for v, s in rows.items()] == [
        (1, OrderStatus.PENDING_COMPLIANCE),
        (2, OrderStatus.PENDING_APPROVAL),
        (3, OrderStatus.PENDING_APPROVAL),
        (4, OrderStatus.APPROVED),
        (5, OrderStatus.RELEASED),
    ]
    return order, rows


def upsert(summary: OrderSummary) -> Callable[[Session], bool]:
    return lambda session: queries.upsert_order_summary(session, summary)


@pytest.mark.postgres
@pytest.mark.parametrize("row_exists", [True, False], ids=["update", "first-insert"])
@pytest.mark.parametrize(
    ("held_version", "waiting_version"), [(5, 3), (3, 5)], ids=["newer-holds", "older-holds"]
)
def test_concurrent_writers_leave_the_newest_version(
    pg_engine: Engine, row_exists: bool, held_version: int, waiting_version: int
) -> None:
    order, rows = summaries_up_to_v5()
    sessions = session_factory(pg_engine)
    if row_exists:
        with sessions() as session:
            assert queries.upsert_order_summary(session, rows[1]) is True
            session.commit()

    # The waiter never fails on the key (an insert race turns into the conditional update).
    held_changed, waiting_changed = race(
        pg_engine, upsert(rows[held_version]), upsert(rows[waiting_version])
    )

    assert held_changed is True
    assert waiting_changed is (waiting_version > held_version)
    assert order_row(sessions, order.order_id).model_dump(exclude={"final_state"}) == {
        **rows[5].model_dump(),
        "status": "released",
    }


@pytest.mark.postgres
def test_an_older_write_committed_after_a_newer_one_changes_nothing(pg_engine: Engine) -> None:
    order, rows = summaries_up_to_v5()
    sessions = session_factory(pg_engine)
    with sessions() as session:
        queries.upsert_order_summary(session, rows[1])
        session.commit()

    older, newer = open_writer(pg_engine), open_writer(pg_engine)
    try:
        # The older writer's transaction starts first and has read the row at version 1 ...
        seen = older.session.get(OrderRow, order.order_id)
        assert seen is not None and seen.version == 1
        # ... the newer one writes and commits meanwhile, and the older one commits last.
        assert queries.upsert_order_summary(newer.session, rows[5]) is True
        newer.session.commit()
        assert queries.upsert_order_summary(older.session, rows[3]) is False
        older.session.commit()
    finally:
        older.session.close()
        newer.session.close()

    assert stored_version(sessions, order.order_id) == ("released", 5)


@pytest.mark.postgres
def test_an_older_projection_waiting_on_a_newer_writer_still_adds_its_events(
    pg_engine: Engine,
) -> None:
    order, rows = summaries_up_to_v5()
    older = OrderProjection(summary=rows[3], events=order.events[:3])
    sessions = session_factory(pg_engine)

    def project_older(session: Session) -> None:
        queries.project_order(session, older)

    race(pg_engine, upsert(rows[5]), project_older)

    assert stored_version(sessions, order.order_id) == ("released", 5)
    with sessions() as session:
        assert [e.seq for e in queries.order_events(session, order.order_id)] == [1, 2, 3]
