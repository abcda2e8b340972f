"""ProjectionActivities against the real read model (SQLite, and PostgreSQL where configured).

Every write activity runs twice with the same input: the second call must change nothing.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from sqlmodel import col, select
from temporalio.testing import ActivityEnvironment

from activities.back_office import BackOfficeActivities, InstructSettlementInput
from activities.projection import (
    BookAllocationsInput,
    ProjectionActivities,
    ProjectOrderInput,
    RecordSettlementStatusInput,
)
from db.engine import SessionFactory
from db.tables import AllocationRow, ExecutionRow, OrderRow, PositionRow, SettlementRow
from domain.models import (
    Allocation,
    ApprovalGiven,
    ApprovalState,
    ExecType,
    Execution,
    OrderState,
    OrderStatus,
    OrderType,
    SettlementInstruction,
    SettlementStatus,
    Side,
    TimeInForce,
)

T0 = datetime(2025, 3, 3, 14, 30, 15, 123456, tzinfo=UTC)


def unique(prefix: str) -> str:
    """Return an id no other test (or earlier run on the shared database) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def order_state(order_id: str, **fields: Any) -> OrderState:
    """Build an order as the workflow holds it; `fields` override the defaults."""
    values: dict[str, Any] = {
        "order_id": order_id,
        "client_order_id": f"c-{order_id}",
        "fund": "fund-alpha",
        "symbol": "AAPL",
        "side": Side.BUY,
        "quantity": Decimal(1000),
        "order_type": OrderType.LIMIT,
        "limit_price": Decimal("230.55"),
        "time_in_force": TimeInForce.DAY,
        "created_by": "alice",
        "created_at": T0,
        "updated_at": T0,
        "notional": Decimal("230550"),
        "currency": "USD",
    }
    values.update(fields)
    return OrderState(**values)


def execution(
    exec_id: str,
    exec_type: ExecType,
    *,
    quantity: str = "0",
    price: str | None = None,
    cumulative: str = "0",
    average: str | None = None,
    at: datetime = T0,
) -> Execution:
    return Execution(
        exec_id=exec_id,
        exec_type=exec_type,
        last_quantity=Decimal(quantity),
        last_price=Decimal(price) if price else None,
        cumulative_quantity=Decimal(cumulative),
        average_price=Decimal(average) if average else None,
        transact_time=at,
        received_at=at,
        reported_by="sim-venue",
    )


def order_rows(sessions: SessionFactory, order_id: str) -> list[OrderRow]:
    with sessions() as session:
        return list(session.exec(select(OrderRow).where(OrderRow.order_id == order_id)))


def execution_rows(sessions: SessionFactory, order_id: str) -> list[ExecutionRow]:
    with sessions() as session:
        query = (
            select(ExecutionRow)
            .where(ExecutionRow.order_id == order_id)
            .order_by(col(ExecutionRow.exec_id))
        )
        return list(session.exec(query))


def allocation_rows(sessions: SessionFactory, order_id: str) -> list[AllocationRow]:
    with sessions() as session:
        query = (
            select(AllocationRow)
            .where(AllocationRow.order_id == order_id)
            .order_by(col(AllocationRow.account))
        )
        return list(session.exec(query))


def position(sessions: SessionFactory, account: str, symbol: str = "AAPL") -> PositionRow:
    with sessions() as session:
        rows = list(
            session.exec(
                select(PositionRow).where(
                    PositionRow.account == account, PositionRow.symbol == symbol
                )
            )
        )
    assert len(rows) == 1
    return rows[0]


def project(env: ActivityEnvironment, projection: ProjectionActivities, state: OrderState) -> bool:
    return env.run(projection.project_order, ProjectOrderInput(state=state))


def book(
    env: ActivityEnvironment,
    projection: ProjectionActivities,
    state: OrderState,
    allocations: list[Allocation],
    booked_at: datetime,
) -> None:
    """Book twice with the same input, as a retried activity would."""
    booking = BookAllocationsInput(state=state, allocations=allocations, booked_at=booked_at)
    for _ in range(2):
        env.run(projection.book_allocations, booking)


def fill(account: str, quantity: str, price: str) -> Allocation:
    return Allocation(
        account=account,
        requested_quantity=Decimal(quantity),
        quantity=Decimal(quantity),
        price=Decimal(price),
    )


# ---- project_order ----------------------------------------------------------------------------


async def test_project_order_twice_writes_one_row(sessions: SessionFactory) -> None:
    env, projection = ActivityEnvironment(), ProjectionActivities(sessions)
    order_id = unique("ord")
    state = order_state(order_id)

    assert project(env, projection, state) is True
    assert project(env, projection, state) is False

    [row] = order_rows(sessions, order_id)
    assert row.client_order_id == state.client_order_id
    assert (row.fund, row.symbol, row.side, row.order_type) == (
        "fund-alpha",
        "AAPL",
        "buy",
        "limit",
    )
    assert row.time_in_force == "day"
    assert row.status == OrderStatus.PENDING_COMPLIANCE.value
    assert row.created_by == "alice"
    assert row.quantity == Decimal(1000)
    assert row.limit_price == Decimal("230.55")
    assert row.notional == Decimal("230550")
    assert row.filled_quantity == Decimal(0)
    assert row.average_price is None
    assert row.venue is None
    assert row.version == 1
    assert execution_rows(sessions, order_id) == []


async def test_project_order_newer_version_updates_the_row(sessions: SessionFactory) -> None:
    env, projection = ActivityEnvironment(), ProjectionActivities(sessions)
    order_id = unique("ord")
    assert project(env, projection, order_state(order_id)) is True

    later = T0 + timedelta(minutes=5)
    approved = order_state(
        order_id,
        version=2,
        status=OrderStatus.PENDING_APPROVAL,
        updated_at=later,
        approvals=ApprovalState(
            required=["desk_head", "cio"],
            given=[ApprovalGiven(level="desk_head", user="dana", at=later)],
        ),
    )
    assert project(env, projection, approved) is True
    assert project(env, projection, approved) is False

    [row] = order_rows(sessions, order_id)
    assert row.version == 2
    assert row.status == "pending_approval"
    assert row.approval_level == "cio"
    assert row.approved_by == "dana"
    assert row.updated_at == later
    assert row.created_at == T0

    released = order_state(
        order_id,
        version=3,
        status=OrderStatus.WORKING,
        venue="simulator",
        updated_at=later + timedelta(minutes=1),
    )
    assert project(env, projection, released) is True
    [row] = order_rows(sessions, order_id)
    assert (row.version, row.status, row.venue) == (3, "working", "simulator")
    assert row.approval_level is None  # only an order waiting for approval waits at a level


async def test_project_order_older_version_never_moves_the_row_back(
    sessions: SessionFactory,
) -> None:
    env, projection = ActivityEnvironment(), ProjectionActivities(sessions)
    order_id = unique("ord")
    newer = order_state(
        order_id, version=5, status=OrderStatus.FILLED, filled_quantity=Decimal(1000)
    )
    older = order_state(order_id, version=4, status=OrderStatus.PARTIALLY_FILLED)

    assert project(env, projection, newer) is True
    assert project(env, projection, older) is False
    assert project(env, projection, older) is False

    [row] = order_rows(sessions, order_id)
    assert (row.version, row.status, row.filled_quantity) == (5, "filled", Decimal(1000))


async def test_project_order_records_each_execution_once(sessions: SessionFactory) -> None:
    env, projection = ActivityEnvironment(), ProjectionActivities(sessions)
    order_id = unique("ord")
    t1, t2, t3 = (T0 + timedelta(seconds=n) for n in (1, 2, 3))
    new = execution(f"SIM-{order_id}-1", ExecType.NEW, at=t1)
    first = execution(
        f"SIM-{order_id}-2",
        ExecType.TRADE,
        quantity="400",
        price="230.25",
        cumulative="400",
        average="230.25",
        at=t2,
    )
    partial = order_state(
        order_id,
        version=3,
        status=OrderStatus.PARTIALLY_FILLED,
        venue="simulator",
        filled_quantity=Decimal(400),
        average_price=Decimal("230.25"),
        executions=[new, first],
    )
    assert project(env, projection, partial) is True
    assert project(env, projection, partial) is False
    assert [r.exec_id for r in execution_rows(sessions, order_id)] == [new.exec_id, first.exec_id]

    second = execution(
        f"SIM-{order_id}-3",
        ExecType.TRADE,
        quantity="600",
        price="230.75",
        cumulative="1000",
        average="230.55",
        at=t3,
    )
    filled = partial.model_copy(
        update={
            "version": 4,
            "status": OrderStatus.FILLED,
            "filled_quantity": Decimal(1000),
            "average_price": Decimal("230.55"),
            "executions": [new, first, second],
        }
    )
    assert project(env, projection, filled) is True
    assert project(env, projection, filled) is False

    rows = execution_rows(sessions, order_id)
    assert [r.exec_id for r in rows] == [new.exec_id, first.exec_id, second.exec_id]
    ack, trade1, trade2 = rows
    assert (ack.exec_type, ack.last_quantity, ack.last_price) == ("new", Decimal(0), None)
    assert (trade1.exec_type, trade1.last_quantity, trade1.last_price) == (
        "trade",
        Decimal(400),
        Decimal("230.25"),
    )
    assert (trade2.cumulative_quantity, trade2.average_price) == (Decimal(1000), Decimal("230.55"))
    assert {r.fund for r in rows} == {"fund-alpha"}
    assert [r.transact_time for r in rows] == [t1, t2, t3]
    [row] = order_rows(sessions, order_id)
    assert (row.status, row.filled_quantity, row.average_price) == (
        "filled",
        Decimal(1000),
        Decimal("230.55"),
    )


async def test_project_order_timestamps_come_back_aware_utc(sessions: SessionFactory) -> None:
    env, projection = ActivityEnvironment(), ProjectionActivities(sessions)
    order_id = unique("ord")
    paris = timezone(timedelta(hours=2))
    created = datetime(2025, 6, 2, 16, 45, 1, 250000, tzinfo=paris)
    traded = datetime(2025, 6, 2, 16, 46, 2, 999999, tzinfo=paris)
    state = order_state(
        order_id,
        created_at=created,
        updated_at=traded,
        executions=[execution(f"X-{order_id}", ExecType.NEW, at=traded)],
    )
    assert project(env, projection, state) is True
    assert project(env, projection, state) is False

    [row] = order_rows(sessions, order_id)
    [exec_row] = execution_rows(sessions, order_id)
    for stored, given in (
        (row.created_at, created),
        (row.updated_at, traded),
        (exec_row.transact_time, traded),
    ):
        assert stored.tzinfo is not None
        assert stored.utcoffset() == timedelta(0)
        assert stored == given  # the same instant, microseconds included
    assert row.created_at.hour == 14  # 16:45 at +02:00 is stored and read back as 14:45 UTC


EXACT_DECIMALS = [
    pytest.param(
        {
            "quantity": "1000",
            "limit_price": "230.55",
            "notional": "230550",
            "filled_quantity": "0.000000000001",
            "average_price": "1.0850",
        },
        id="float-safe",
    ),
    pytest.param(
        {
            "quantity": "1000.5",
            "limit_price": "230.55",
            "notional": "230665.275",
            "filled_quantity": "1000.5",
            "average_price": "230.55",
        },
        id="equity-notional",
    ),
    pytest.param(
        {
            "symbol": "BTC-USD",
            "quantity": "1.2345",
            "limit_price": "64000.1",
            "notional": "79008.12345",
            "filled_quantity": "0.1234",
            "average_price": "63999.99",
        },
        id="crypto",
    ),
]


@pytest.mark.parametrize("numbers", EXACT_DECIMALS)
async def test_project_order_keeps_decimals_exact(
    sessions: SessionFactory, numbers: dict[str, str]
) -> None:
    env, projection = ActivityEnvironment(), ProjectionActivities(sessions)
    order_id = unique("ord")
    fields: dict[str, Any] = {
        key: Decimal(value) if key != "symbol" else value for key, value in numbers.items()
    }
    state = order_state(order_id, **fields)
    assert project(env, projection, state) is True
    assert project(env, projection, state) is False

    [row] = order_rows(sessions, order_id)
    stored = {
        "quantity": row.quantity,
        "limit_price": row.limit_price,
        "notional": row.notional,
        "filled_quantity": row.filled_quantity,
        "average_price": row.average_price,
    }
    expected = {key: value for key, value in fields.items() if key != "symbol"}
    assert stored == expected


# ---- book_allocations and positions -----------------------------------------------------------


async def test_book_allocations_twice_books_once(sessions: SessionFactory) -> None:
    env, projection = ActivityEnvironment(), ProjectionActivities(sessions)
    order_id, main, growth = unique("ord"), unique("main"), unique("growth")
    state = order_state(
        order_id,
        status=OrderStatus.FILLED,
        filled_quantity=Decimal(1000),
        average_price=Decimal("230.5"),
    )
    allocations = [fill(main, "600", "230.5"), fill(growth, "400", "230.5")]

    book(env, projection, state, allocations, T0)

    rows = allocation_rows(sessions, order_id)
    assert sorted((r.account, r.quantity, r.price) for r in rows) == sorted(
        [(main, Decimal(600), Decimal("230.5")), (growth, Decimal(400), Decimal("230.5"))]
    )
    assert {(r.fund, r.symbol, r.side, r.booked_at) for r in rows} == {
        ("fund-alpha", "AAPL", "buy", T0)
    }
    main_position, growth_position = position(sessions, main), position(sessions, growth)
    assert (main_position.quantity, main_position.average_cost, main_position.cash_flow) == (
        Decimal(600),
        Decimal("230.5"),
        Decimal(-138300),
    )
    assert (growth_position.quantity, growth_position.average_cost, growth_position.cash_flow) == (
        Decimal(400),
        Decimal("230.5"),
        Decimal(-92200),
    )
    assert main_position.fund == "fund-alpha"
    assert main_position.updated_at == T0


async def test_a_sell_reduces_the_position_and_keeps_its_average_cost(
    sessions: SessionFactory,
) -> None:
    env, projection = ActivityEnvironment(), ProjectionActivities(sessions)
    account = unique("acct")
    buy = order_state(unique("ord"), status=OrderStatus.FILLED, quantity=Decimal(100))
    sell = order_state(
        unique("ord"), side=Side.SELL, status=OrderStatus.FILLED, quantity=Decimal(40)
    )

    book(env, projection, buy, [fill(account, "100", "230.5")], T0)
    book(env, projection, sell, [fill(account, "40", "250")], T0 + timedelta(hours=1))

    held = position(sessions, account)
    assert held.quantity == Decimal(60)
    assert held.average_cost == Decimal("230.5")
    assert held.cash_flow == Decimal(-13050)  # -100 * 230.5 + 40 * 250
    assert held.updated_at == T0 + timedelta(hours=1)
    [sold] = allocation_rows(sessions, sell.order_id)
    assert (sold.side, sold.quantity, sold.price) == ("sell", Decimal(40), Decimal(250))


async def test_a_buy_at_another_price_moves_the_weighted_average_cost(
    sessions: SessionFactory,
) -> None:
    env, projection = ActivityEnvironment(), ProjectionActivities(sessions)
    account = unique("acct")
    first = order_state(unique("ord"), status=OrderStatus.FILLED, quantity=Decimal(100))
    second = order_state(unique("ord"), status=OrderStatus.FILLED, quantity=Decimal(300))

    book(env, projection, first, [fill(account, "100", "230.5")], T0)
    book(env, projection, second, [fill(account, "300", "240")], T0 + timedelta(hours=1))

    held = position(sessions, account)
    assert held.quantity == Decimal(400)
    assert held.average_cost == Decimal("237.625")  # (100 * 230.5 + 300 * 240) / 400
    assert held.cash_flow == Decimal(-95050)


async def test_a_sell_through_zero_starts_the_average_cost_anew(sessions: SessionFactory) -> None:
    env, projection = ActivityEnvironment(), ProjectionActivities(sessions)
    account = unique("acct")
    buy = order_state(unique("ord"), status=OrderStatus.FILLED, quantity=Decimal(100))
    sell = order_state(
        unique("ord"), side=Side.SELL_SHORT, status=OrderStatus.FILLED, quantity=Decimal(150)
    )

    book(env, projection, buy, [fill(account, "100", "230.5")], T0)
    book(env, projection, sell, [fill(account, "150", "250")], T0 + timedelta(hours=1))

    held = position(sessions, account)
    assert (held.quantity, held.average_cost, held.cash_flow) == (
        Decimal(-50),
        Decimal(250),
        Decimal(14450),
    )


async def test_a_booking_committed_after_a_later_one_counts_in_booking_time_order(
    sessions: SessionFactory,
) -> None:
    """Average cost follows the trades' booking times, not the order the bookings committed in."""
    env, projection = ActivityEnvironment(), ProjectionActivities(sessions)
    account = unique("acct")
    first = order_state(unique("ord"), status=OrderStatus.FILLED, quantity=Decimal(100))
    later = order_state(
        unique("ord"), side=Side.SELL_SHORT, status=OrderStatus.FILLED, quantity=Decimal(150)
    )
    earlier = order_state(unique("ord"), status=OrderStatus.FILLED, quantity=Decimal(100))

    book(env, projection, first, [fill(account, "100", "230.5")], T0)
    book(env, projection, later, [fill(account, "150", "250")], T0 + timedelta(hours=2))
    book(env, projection, earlier, [fill(account, "100", "240")], T0 + timedelta(hours=1))

    # +100 @ 230.5, +100 @ 240 (average 235.25), then -150 @ 250 (a reduction keeps it). In
    # commit order the sell would have flipped the position and the buy flipped it back at 240.
    held = position(sessions, account)
    assert (held.quantity, held.average_cost, held.cash_flow) == (
        Decimal(50),
        Decimal("235.25"),
        Decimal(-9550),  # -23050 - 24000 + 37500
    )
    assert held.updated_at == T0 + timedelta(hours=2)

    # The next booking in time order is folded into the position as it stands.
    next_one = order_state(unique("ord"), status=OrderStatus.FILLED, quantity=Decimal(50))
    book(env, projection, next_one, [fill(account, "50", "260")], T0 + timedelta(hours=3))
    held = position(sessions, account)
    assert (held.quantity, held.average_cost) == (Decimal(100), Decimal("247.625"))
    assert held.updated_at == T0 + timedelta(hours=3)


# ---- record_settlement_status -----------------------------------------------------------------


def settlement_instruction(order_id: str, account: str) -> SettlementInstruction:
    return SettlementInstruction(
        settlement_id=f"{order_id}.{account}",
        order_id=order_id,
        fund="fund-alpha",
        account=account,
        symbol="AAPL",
        side=Side.BUY,
        quantity=Decimal(600),
        price=Decimal("230.5"),
        gross_amount=Decimal(138300),
        currency="USD",
        trade_date=date(2025, 3, 3),
        settlement_date=date(2025, 3, 4),
    )


def settlement_row(sessions: SessionFactory, settlement_id: str) -> SettlementRow:
    with sessions() as session:
        rows = list(
            session.exec(select(SettlementRow).where(SettlementRow.settlement_id == settlement_id))
        )
    assert len(rows) == 1
    return rows[0]


def record_status(
    env: ActivityEnvironment,
    projection: ProjectionActivities,
    settlement_id: str,
    status: SettlementStatus,
    at: datetime,
    reason: str = "",
) -> None:
    """Record twice with the same input, as a retried activity would."""
    update = RecordSettlementStatusInput(
        settlement_id=settlement_id, status=status, reason=reason, at=at
    )
    for _ in range(2):
        env.run(projection.record_settlement_status, update)


async def test_settlement_status_follows_the_back_office_and_confirmed_stays_confirmed(
    sessions: SessionFactory,
) -> None:
    env, projection = ActivityEnvironment(), ProjectionActivities(sessions)
    instruction = settlement_instruction(unique("ord"), unique("acct"))
    await env.run(
        BackOfficeActivities(sessions).instruct_settlement,
        InstructSettlementInput(instruction=instruction),
    )
    assert settlement_row(sessions, instruction.settlement_id).status == "instructed"

    failed_at, confirmed_at = T0 + timedelta(hours=20), T0 + timedelta(hours=22)
    record_status(
        env, projection, instruction.settlement_id, SettlementStatus.FAILED, failed_at, "no SSI"
    )
    row = settlement_row(sessions, instruction.settlement_id)
    assert (row.status, row.status_reason, row.status_at) == ("failed", "no SSI", failed_at)

    record_status(
        env, projection, instruction.settlement_id, SettlementStatus.CONFIRMED, confirmed_at
    )
    row = settlement_row(sessions, instruction.settlement_id)
    assert (row.status, row.status_reason, row.status_at) == ("confirmed", "", confirmed_at)

    record_status(
        env,
        projection,
        instruction.settlement_id,
        SettlementStatus.FAILED,
        confirmed_at + timedelta(hours=1),
        "late failure",
    )
    row = settlement_row(sessions, instruction.settlement_id)
    assert (row.status, row.status_reason, row.status_at) == ("confirmed", "", confirmed_at)
    assert row.status_at is not None
    assert row.status_at.utcoffset() == timedelta(0)
    assert (row.quantity, row.price, row.gross_amount) == (
        Decimal(600),
        Decimal("230.5"),
        Decimal(138300),
    )


async def test_settlement_status_of_an_unknown_instruction_writes_nothing(
    sessions: SessionFactory,
) -> None:
    env, projection = ActivityEnvironment(), ProjectionActivities(sessions)
    settlement_id = unique("missing")
    record_status(env, projection, settlement_id, SettlementStatus.CONFIRMED, T0)
    with sessions() as session:
        assert session.get(SettlementRow, settlement_id) is None
