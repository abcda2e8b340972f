"""The approvals inbox in the read model, on SQLite and PostgreSQL.

The slim row carries what the inbox shows (the level pending, since when, who approved, whether
it escalated, what compliance found), derived by `summarise` from the order. The inbox query
filters in SQL: the status, each level with the funds it may be decided in, the creator and the
approvers so far; it orders by waiting time and pages with an opaque cursor.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlmodel import select

from db import queries
from db.engine import SessionFactory, create_schema, make_engine, session_factory
from db.tables import OrderRow
from domain.models import (
    ApprovalGiven,
    ApprovalState,
    ComplianceOutcome,
    ComplianceResult,
    OrderRequest,
    OrderState,
    OrderStatus,
    OrderType,
    Side,
    TimeInForce,
)
from domain.order import FlagKind, Order, Override, summarise, summarise_v1
from domain.status import OrderEvent
from tests.conftest import BACKENDS, POSTGRES_URL, _postgres_database

V2 = "OrderWorkflowV2"
T0 = datetime(2025, 3, 3, 14, 30, 15, 123456, tzinfo=UTC)
PASSED = [
    ComplianceResult(rule="restricted_list", outcome=ComplianceOutcome.PASS, message="ok"),
    ComplianceResult(
        rule="max_order_notional",
        outcome=ComplianceOutcome.PASS,
        message="within the limit",
        observed="230550",
        limit="50000000",
    ),
]
WARNED = [
    PASSED[0],
    ComplianceResult(
        rule="max_order_notional",
        outcome=ComplianceOutcome.WARN,
        message="above the soft threshold",
        observed="25000000",
        limit="20000000",
    ),
]
NEW_COLUMNS = [
    "approvals_required",
    "approvals_given",
    "approval_waiting_since",
    "approval_escalated",
    "approval_expire_at",
    "compliance_outcome",
    "compliance_results",
]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


# ---- orders built through the domain, as the workflow builds them ------------------------------


def checked(
    fund: str,
    *,
    created_by: str = "alice",
    levels: Sequence[str] = ("desk_head",),
    checked_at: datetime = T0,
    results: Sequence[ComplianceResult] = PASSED,
) -> Order:
    """Return an order created a second before `checked_at`, with compliance's findings then."""
    request = OrderRequest(
        client_order_id=unique("c"),
        fund=fund,
        symbol="AAPL",
        side=Side.BUY,
        quantity=Decimal(1000),
        order_type=OrderType.LIMIT,
        limit_price=Decimal("230.55"),
    )
    order = Order.new(unique("ord"), request, created_by, checked_at - timedelta(seconds=1))
    order.notional, order.currency = Decimal("230550"), "USD"
    order.compliance = list(results)
    order.approvals.required = list(levels)
    order.approval_escalate_at = checked_at + timedelta(hours=4)
    order.approval_expire_at = checked_at + timedelta(hours=24)
    return order


def pending(
    fund: str,
    *,
    created_by: str = "alice",
    levels: Sequence[str] = ("desk_head",),
    checked_at: datetime = T0,
) -> Order:
    """Return an order that passed compliance at `checked_at` and waits on its first level."""
    order = checked(fund, created_by=created_by, levels=levels, checked_at=checked_at)
    order.record(OrderEvent.COMPLIANCE_PASSED, at=checked_at)
    return order


def approve(order: Order, user: str, at: datetime) -> Order:
    """Approve the order's pending level as `user` at `at`, as the workflow's Update does."""
    level = order.approvals.current_level
    assert level is not None
    order.approvals.given.append(ApprovalGiven(level=level, user=user, at=at, comment="fine"))
    last = order.approvals.current_level is None
    kind = OrderEvent.APPROVALS_COMPLETE if last else OrderEvent.APPROVAL_GIVEN
    order.record(kind, at=at, actor=user)
    return order


def escalate(order: Order, at: datetime) -> Order:
    level = order.approvals.current_level or ""
    order.raise_flag(FlagKind.APPROVAL_ESCALATED, f"{level} is overdue", at=at, ref=level)
    return order


def write(sessions: SessionFactory, *orders: Order) -> None:
    """Project each order's row twice, as a retried activity would."""
    for order in orders:
        for _ in range(2):
            with sessions() as session:
                queries.upsert_order_summary(session, summarise(order, V2))
                session.commit()


def row(sessions: SessionFactory, order_id: str) -> OrderRow:
    with sessions() as session:
        found = session.get(OrderRow, order_id)
    assert found is not None
    return found


def inbox(
    sessions: SessionFactory,
    user: str,
    decide: Mapping[str, Sequence[str]],
    escalated: Mapping[str, Sequence[str]] | None = None,
    *,
    limit: int = 50,
    cursor: str | None = None,
) -> list[OrderRow]:
    scope = queries.InboxScope(user=user, decide=decide, escalated=escalated or {})
    with sessions() as session:
        return queries.approval_inbox(session, scope, limit, cursor)


def ids(rows: Sequence[OrderRow]) -> list[str]:
    return [r.order_id for r in rows]


# ---- the slim row's approval and compliance columns ----------------------------------------------


def test_the_row_follows_the_pending_level_and_since_when_it_waits(
    sessions: SessionFactory,
) -> None:
    fund = unique("fund")
    order = pending(fund, levels=["desk_head", "cio"])
    write(sessions, order)
    first = row(sessions, order.order_id)
    assert (first.approval_level, first.approvals_required) == ("desk_head", ["desk_head", "cio"])
    assert first.approval_waiting_since == T0  # since compliance passed
    assert (first.approval_escalated, first.approvals_given, first.approved_by) == (False, [], "")
    assert first.approval_expire_at == T0 + timedelta(hours=24)
    assert first.compliance_outcome == "pass"
    assert first.compliance_results == [r.model_dump(mode="json") for r in PASSED]

    approved_at = T0 + timedelta(minutes=7)
    write(sessions, approve(order, "dana", approved_at))
    second = row(sessions, order.order_id)
    assert (second.approval_level, second.approval_waiting_since) == ("cio", approved_at)
    assert second.approved_by == "dana"
    assert second.approvals_given is not None
    assert [(g["level"], g["user"], g["comment"]) for g in second.approvals_given] == [
        ("desk_head", "dana", "fine")
    ]
    assert datetime.fromisoformat(second.approvals_given[0]["at"]) == approved_at

    write(sessions, escalate(order, T0 + timedelta(hours=4)))
    third = row(sessions, order.order_id)
    assert (third.approval_level, third.approval_escalated) == ("cio", True)
    assert third.approval_waiting_since == approved_at  # a flag is not a decision

    write(sessions, approve(order, "carl", T0 + timedelta(hours=5)))
    done = row(sessions, order.order_id)
    assert done.status == OrderStatus.APPROVED.value
    assert (done.approval_level, done.approval_waiting_since) == (None, None)
    assert (done.approval_escalated, done.approval_expire_at) == (False, None)
    assert done.approved_by == "dana,carl"
    assert done.compliance_outcome == "pass"  # kept after approval, for lists


def test_an_overridden_order_waits_from_its_override() -> None:
    order = checked("fund-x", levels=["desk_head", "cio"], results=WARNED)
    order.record(OrderEvent.COMPLIANCE_WARNED, at=T0)
    assert summarise(order, V2).approval_waiting_since is None  # pending_override: no level waits
    overridden_at = T0 + timedelta(minutes=30)
    order.override = Override(user="cora", justification="mandate allows", at=overridden_at)
    order.record(OrderEvent.OVERRIDDEN, at=overridden_at, actor="cora")
    summary = summarise(order, V2)
    assert (summary.approval_level, summary.approval_waiting_since) == ("desk_head", overridden_at)
    assert summary.compliance_outcome is ComplianceOutcome.WARN


def test_after_continue_as_new_the_waiting_time_comes_from_the_order_not_its_log() -> None:
    order = pending("fund-x", checked_at=T0)
    carried = order.carried(projected_seq=order.last_seq)
    assert carried.events == []
    # The compliance event went with the old run: the creation (a moment before) stands in.
    assert summarise(carried, V2).approval_waiting_since == order.created_at
    approved_at = T0 + timedelta(minutes=3)
    two_levels = pending("fund-x", levels=["desk_head", "cio"])
    approve(two_levels, "dana", approved_at)
    carried = two_levels.carried(projected_seq=two_levels.last_seq)
    assert summarise(carried, V2).approval_waiting_since == approved_at


def test_a_v1_order_fills_what_it_can() -> None:
    approved_at = T0 + timedelta(minutes=2)
    state = OrderState(
        order_id=unique("ord"),
        client_order_id="c-1",
        fund="fund-alpha",
        symbol="AAPL",
        side=Side.BUY,
        quantity=Decimal(100),
        order_type=OrderType.MARKET,
        limit_price=None,
        time_in_force=TimeInForce.DAY,
        status=OrderStatus.PENDING_APPROVAL,
        created_by="alice",
        created_at=T0,
        updated_at=approved_at,
        compliance=WARNED,
        approvals=ApprovalState(
            required=["desk_head", "cio"],
            given=[ApprovalGiven(level="desk_head", user="dana", at=approved_at)],
        ),
        flags=["approval_escalated:desk_head"],
    )
    summary = summarise_v1(state, queries.V1_WORKFLOW_TYPE)
    assert (summary.approval_level, summary.approval_waiting_since) == ("cio", approved_at)
    assert (summary.approval_escalated, summary.approval_expire_at) == (True, None)
    assert summary.compliance_outcome is ComplianceOutcome.WARN
    assert [g.user for g in summary.approvals_given] == ["dana"]
    fresh = state.model_copy(
        update={"approvals": ApprovalState(required=["desk_head"]), "flags": []}
    )
    summary = summarise_v1(fresh, queries.V1_WORKFLOW_TYPE)
    assert (summary.approval_waiting_since, summary.approval_escalated) == (T0, False)


# ---- the inbox query ----------------------------------------------------------------------------


def test_an_approver_sees_the_levels_they_may_decide_in_their_funds(
    sessions: SessionFactory,
) -> None:
    mine, other = unique("fund"), unique("fund")
    waiting = pending(mine, checked_at=T0)
    elsewhere = pending(other, checked_at=T0)
    own = pending(mine, created_by="dana", checked_at=T0)
    decided = approve(pending(mine, levels=["desk_head", "cio"]), "dana", T0 + timedelta(minutes=1))
    done = approve(pending(mine), "dana", T0 + timedelta(minutes=1))
    write(sessions, waiting, elsewhere, own, decided, done)

    assert ids(inbox(sessions, "dana", {"desk_head": [mine]})) == [waiting.order_id]
    # dana holding the cio level too still never decides a second level of the same order.
    both = inbox(sessions, "dana", {"desk_head": [mine], "cio": [mine]})
    assert ids(both) == [waiting.order_id]
    assert ids(inbox(sessions, "carl", {"cio": [mine]})) == [decided.order_id]
    assert ids(inbox(sessions, "carl", {"cio": [other]})) == []
    assert ids(inbox(sessions, "alice", {})) == []  # may decide nothing: an empty inbox
    # A user whose name LIKE would match "dana" (`_` is a wildcard there) is not taken for her.
    assert ids(inbox(sessions, "d_na", {"cio": [mine]})) == [decided.order_id]
    assert ids(inbox(sessions, "dan", {"cio": [mine]})) == [decided.order_id]


def test_an_escalated_order_shows_to_the_next_approvers_up(sessions: SessionFactory) -> None:
    fund = unique("fund")
    late = escalate(pending(fund, checked_at=T0), T0 + timedelta(hours=4))
    on_time = pending(fund, checked_at=T0 + timedelta(hours=1))
    write(sessions, late, on_time)

    carl = inbox(sessions, "carl", {"cio": [fund]}, {"desk_head": [fund]})
    assert ids(carl) == [late.order_id]
    assert carl[0].approval_escalated is True
    dana = inbox(sessions, "dana", {"desk_head": [fund]})
    assert ids(dana) == [late.order_id, on_time.order_id]
    assert [r.approval_escalated for r in dana] == [True, False]


def test_the_inbox_pages_longest_waiting_first_with_a_cursor(sessions: SessionFactory) -> None:
    fund = unique("fund")
    times = [T0 + timedelta(minutes=m) for m in (5, 1, 3, 3, 9)]  # two wait equally long
    orders = [pending(fund, checked_at=at) for at in times]
    write(sessions, *orders)
    expected = [o.order_id for o in sorted(orders, key=lambda o: (o.updated_at, o.order_id))]

    seen: list[str] = []
    cursor = None
    for _ in range(len(orders)):
        rows = inbox(sessions, "dana", {"desk_head": [fund]}, limit=2, cursor=cursor)
        seen += ids(rows)
        if len(rows) < 2:
            break
        cursor = queries.encode_inbox_cursor(rows[-1])
    assert seen == expected
    waits = [queries.inbox_waiting_since(row(sessions, order_id)) for order_id in seen]
    assert waits == sorted(waits)


def test_a_cursor_that_is_not_the_inbox_s_is_refused(sessions: SessionFactory) -> None:
    fund = unique("fund")
    order = pending(fund)
    write(sessions, order)
    stored = row(sessions, order.order_id)
    for bad in ("garbage", "", "e30", queries.encode_cursor(stored)):
        with pytest.raises(ValueError, match="cursor"):
            queries.decode_inbox_cursor(bad)
    with pytest.raises(ValueError, match="cursor"):
        inbox(sessions, "dana", {"desk_head": [fund]}, cursor=queries.encode_cursor(stored))
    # Even an inbox without scope refuses a bad cursor rather than answering empty.
    with pytest.raises(ValueError, match="cursor"):
        inbox(sessions, "alice", {}, cursor="garbage")


# ---- a read model made before these columns -----------------------------------------------------


@pytest.fixture(params=BACKENDS)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of this test's own, with no tables yet."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'oms.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip("OMS_TEST_POSTGRES_URL is not set")
    yield from _postgres_database()


def test_an_older_read_model_gains_the_columns_and_its_waiting_orders_show(
    empty_database_url: str,
) -> None:
    fund = unique("fund")
    old = pending(fund, checked_at=T0)
    engine = make_engine(empty_database_url)
    try:
        create_schema(engine)
        sessions = session_factory(engine)
        with sessions() as session:
            queries.upsert_order_summary(session, summarise(old, V2))
            session.commit()
        with engine.begin() as connection:
            for column in NEW_COLUMNS:
                connection.execute(text(f"ALTER TABLE orders DROP COLUMN {column}"))

        create_schema(engine)
        create_schema(engine)  # a second start finds nothing to add

        columns = {c["name"]: c for c in inspect(engine).get_columns("orders")}
        assert set(NEW_COLUMNS) <= set(columns)
        assert columns["approval_escalated"]["nullable"] is False
        legacy = row(sessions, old.order_id)
        assert (legacy.approval_escalated, legacy.approval_waiting_since) == (False, None)
        # Until its next projection, the creation time stands in for the waiting time.
        [shown] = inbox(sessions, "dana", {"desk_head": [fund]})
        assert queries.inbox_waiting_since(shown) == old.created_at
        newer = pending(fund, checked_at=T0 + timedelta(minutes=1))
        write(sessions, newer)
        assert ids(inbox(sessions, "dana", {"desk_head": [fund]})) == [
            old.order_id,
            newer.order_id,
        ]
        with sessions() as session:
            assert session.exec(select(OrderRow.approval_escalated)).all() == [False, False]
    finally:
        engine.dispose()
