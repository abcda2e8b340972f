"""Read-model queries and idempotent writes. Every write is keyed so that repeating it changes nothing."""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any, NamedTuple

from sqlalchemy import String, and_, any_, bindparam, case, delete, func, literal, not_, or_, update
from sqlalchemy import select as sql_select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlmodel import Session, col, select

from db import audit, changes
from db.tables import (
    FIRM_WIDE_SCOPE,
    AccountRow,
    AllocationRow,
    ComplianceReservationRow,
    ExecutionRow,
    FundRow,
    HoldingSodRow,
    InstrumentRow,
    KillSwitchEventRow,
    KillSwitchRow,
    MarketRow,
    OrderEventRow,
    OrderRow,
    PositionRow,
    RefusedActionRow,
    SettlementRow,
    core_insert,
    dialect_insert,
)
from domain.models import (
    Allocation,
    AssetClass,
    Execution,
    Instrument,
    OrderState,
    SettlementInstruction,
    SettlementStatus,
    Side,
    tidy,
)
from domain.order import OrderProjection, OrderSummary, summarise_v1

# ---- reference data ---------------------------------------------------------------------------


def all_funds(session: Session) -> list[FundRow]:
    return list(session.exec(select(FundRow).order_by(col(FundRow.fund))))


def get_fund(session: Session, fund: str) -> FundRow | None:
    return session.get(FundRow, fund)


def fund_accounts(session: Session, fund: str) -> list[str]:
    rows = session.exec(
        select(AccountRow).where(AccountRow.fund == fund).order_by(col(AccountRow.account))
    )
    return [row.account for row in rows]


def get_instrument(session: Session, symbol: str) -> Instrument | None:
    row = session.get(InstrumentRow, symbol)
    if row is None:
        return None
    return Instrument(
        symbol=row.symbol,
        asset_class=AssetClass(row.asset_class),
        currency=row.currency,
        reference_price=tidy(row.reference_price),
        lot_size=tidy(row.lot_size),
        tick_size=None if row.tick_size is None else tidy(row.tick_size),
    )


def reference_prices(session: Session) -> dict[str, Decimal]:
    return {row.symbol: tidy(row.reference_price) for row in session.exec(select(InstrumentRow))}


# The type name of the first order workflow, which orders created before v2 still run on.
V1_WORKFLOW_TYPE = "OrderWorkflow"

# ---- orders -----------------------------------------------------------------------------------

# The slim row's fields kept as JSON.
_JSON_COLUMNS = {"approvals_required", "approvals_given", "compliance_results", "amendment"}


def upsert_order_summary(session: Session, summary: OrderSummary) -> bool:
    """Write the order's row unless the stored one is at this version or newer, in one statement.

    The version test is part of the UPDATE (`ON CONFLICT ... DO UPDATE ... WHERE`), so two
    writers committing in any order leave the newer version: a row never moves backwards.

    Returns:
        Whether the row changed.
    """
    # Enum members go to the database as their values (a driver may adapt an Enum by its name);
    # JSON columns take JSON-ready values (times as ISO text, decimals as strings).
    values = {
        k: v.value if isinstance(v, Enum) else v
        for k, v in summary.model_dump(exclude=_JSON_COLUMNS).items()
    }
    values |= summary.model_dump(mode="json", include=_JSON_COLUMNS)
    statement = _summary_upsert(_dialect(session), tuple(values))
    result = session.execute(statement, values)
    rowcount: int = result.rowcount  # type: ignore[attr-defined]
    return rowcount > 0


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


@functools.cache
def _summary_upsert(dialect: str, columns: tuple[str, ...]) -> Any:
    """The order row's upsert of `columns`, conditioned on the version (built once per shape)."""
    insert = core_insert(dialect, OrderRow)
    excluded = insert.excluded
    return insert.on_conflict_do_update(
        index_elements=["order_id"],
        set_={k: excluded[k] for k in columns if k != "order_id"},
        where=excluded.version > OrderRow.__table__.c.version,  # type: ignore[attr-defined]
        # SQLAlchemy keeps an INSERT's rowcount only when asked: psycopg's is gone once the
        # cursor closes, and -1 (unknown) would read as "changed".
    ).execution_options(preserve_rowcount=True)


@functools.cache
def _events_insert(dialect: str) -> Any:
    """Insert events not yet written, answering the sequence numbers it wrote (built once)."""
    insert = core_insert(dialect, OrderEventRow)
    return insert.on_conflict_do_nothing().returning(insert.table.c.seq)


@functools.cache
def _executions_insert(dialect: str) -> Any:
    return core_insert(dialect, ExecutionRow).on_conflict_do_nothing()


def project_order(session: Session, projection: OrderProjection) -> bool:
    """Write one projection of an order in one transaction; repeating it changes nothing.

    Events and executions are keyed by (order, seq) and (order, exec id); allocations by
    (order, account); settlement statuses only move away from "instructed" once confirmed.

    Returns:
        Whether the order's row moved forward (a repeat, or an older projection, leaves it).
    """
    summary = projection.summary
    moved = upsert_order_summary(session, summary)
    if projection.events:
        rows = [
            {
                "order_id": summary.order_id,
                "seq": e.seq,
                "fund": summary.fund,
                "at": e.at,
                "kind": e.kind.value,
                "actor": e.actor,
                "status": e.status.value,
                "reason": e.reason,
                "details": e.details,
            }
            for e in projection.events
        ]
        inserted = set(session.execute(_events_insert(_dialect(session)), rows).scalars())
        # Only events this projection wrote join the audit chain: a repeat appends nothing.
        audit.append(
            session,
            summary.fund,
            [
                audit.AuditEntry(
                    order_id=summary.order_id,
                    seq=e.seq,
                    kind=e.kind.value,
                    actor=e.actor,
                    at=e.at,
                    status=e.status.value,
                    reason=e.reason,
                    details=dict(e.details),
                )
                for e in projection.events
                if e.seq in inserted
            ],
        )
    if projection.executions:
        session.execute(
            _executions_insert(_dialect(session)),
            [_execution_row(summary.order_id, summary.fund, e) for e in projection.executions],
        )
    if projection.allocations:
        _book(
            session,
            summary.order_id,
            summary.fund,
            summary.symbol,
            summary.side,
            projection.allocations,
            summary.updated_at,
        )
    for instruction in projection.settlements:
        _set_settlement_status(
            session,
            instruction.settlement_id,
            instruction.status,
            instruction.status_reason,
            instruction.status_at or summary.updated_at,
        )
    if projection.final is not None:
        session.execute(
            update(OrderRow)
            .where(col(OrderRow.order_id) == summary.order_id)
            .values(final_state=projection.final.model_dump(mode="json"))
        )
    if moved:
        changes.notify_at_commit(
            session, summary.order_id, summary.status, summary.filled_quantity > 0
        )
    session.commit()
    return moved


def order_route(session: Session, order_id: str) -> tuple[str, str] | None:
    """Return the order's fund and workflow type, or None when the read model has no such order."""
    row = session.exec(
        select(OrderRow.fund, OrderRow.workflow_type).where(OrderRow.order_id == order_id)
    ).first()
    return None if row is None else (row[0], row[1])


def order_instrument(session: Session, order_id: str) -> Instrument | None:
    """Return the reference data of the order's instrument (None: no such order or symbol)."""
    symbol = session.exec(select(OrderRow.symbol).where(OrderRow.order_id == order_id)).first()
    return None if symbol is None else get_instrument(session, symbol)


def order_status(session: Session, order_id: str) -> tuple[str, bool] | None:
    """Return the order's projected status and whether anything was filled, or None."""
    row = session.exec(
        select(OrderRow.status, col(OrderRow.filled_quantity)).where(OrderRow.order_id == order_id)
    ).first()
    return None if row is None else (row[0], Decimal(row[1] or 0) > 0)


def final_order_state(session: Session, order_id: str) -> dict[str, Any] | None:
    """Return the order as it closed, or None while it is open (or for a v1 order)."""
    final = session.exec(select(OrderRow.final_state).where(OrderRow.order_id == order_id)).first()
    return None if final is None else dict(final)


def order_events(session: Session, order_id: str) -> list[OrderEventRow]:
    """Return the order's event log in sequence."""
    return list(
        session.exec(
            select(OrderEventRow)
            .where(OrderEventRow.order_id == order_id)
            .order_by(col(OrderEventRow.seq))
        )
    )


def record_refused_action(session: Session, refusal: RefusedActionRow) -> None:
    session.add(refusal)
    session.commit()


def refused_actions(session: Session, order_id: str, limit: int) -> list[RefusedActionRow]:
    """Return the order's refused actions, oldest first (at most `limit`)."""
    query = (
        select(RefusedActionRow)
        .where(RefusedActionRow.order_id == order_id)
        .order_by(col(RefusedActionRow.at), col(RefusedActionRow.id))
        .limit(limit)
    )
    return list(session.exec(query))


def upsert_order(session: Session, state: OrderState) -> bool:
    """Write a v1 order's row (and executions) unless the stored row is at this version or newer.

    Returns:
        Whether the row changed. Projections retried or delivered late never move an order back.
    """
    summary = summarise_v1(state, V1_WORKFLOW_TYPE)
    changed = upsert_order_summary(session, summary)
    if changed:
        for execution in state.executions:
            _upsert_execution(session, state.order_id, state.fund, execution)
    session.commit()
    return changed


def _upsert_execution(session: Session, order_id: str, fund: str, execution: Execution) -> None:
    session.execute(
        _executions_insert(_dialect(session)), _execution_row(order_id, fund, execution)
    )


def _execution_row(order_id: str, fund: str, execution: Execution) -> dict[str, Any]:
    """Return an execution as its row's values (written once per (order, exec id))."""
    return {
        "order_id": order_id,
        "exec_id": execution.exec_id,
        "fund": fund,
        "exec_type": execution.exec_type.value,
        "last_quantity": execution.last_quantity,
        "last_price": execution.last_price,
        "cumulative_quantity": execution.cumulative_quantity,
        "average_price": execution.average_price,
        "transact_time": execution.transact_time,
        "exec_ref_id": execution.exec_ref_id,
    }


@dataclass(frozen=True)
class OrderFilter:
    funds: Sequence[str] | None  # None: every fund (firm-wide callers)
    status: str | None = None
    symbol: str | None = None
    created_by: str | None = None


def encode_cursor(row: OrderRow) -> str:
    raw = json.dumps([row.created_at.isoformat(), row.order_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Decode a paging cursor; raises ValueError when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, order_id = json.loads(raw)
        at = datetime.fromisoformat(created_at)
    except Exception as exc:
        raise ValueError("cursor is not valid") from exc
    # Ours always carry an offset; a naive time cannot be compared with the stored ones.
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("cursor is not valid")
    return at, str(order_id)


def list_orders(
    session: Session, flt: OrderFilter, limit: int, cursor: str | None = None
) -> list[OrderRow]:
    """Return up to `limit` orders matching the filter, newest first, after `cursor`."""
    query = select(OrderRow)
    if flt.funds is not None:
        query = query.where(col(OrderRow.fund).in_(list(flt.funds)))
    if flt.status:
        query = query.where(OrderRow.status == flt.status)
    if flt.symbol:
        query = query.where(OrderRow.symbol == flt.symbol)
    if flt.created_by:
        query = query.where(OrderRow.created_by == flt.created_by)
    if cursor:
        created_at, order_id = decode_cursor(cursor)
        query = query.where(
            or_(
                col(OrderRow.created_at) < created_at,
                and_(col(OrderRow.created_at) == created_at, col(OrderRow.order_id) < order_id),
            )
        )
    query = query.order_by(col(OrderRow.created_at).desc(), col(OrderRow.order_id).desc()).limit(
        limit
    )
    return list(session.exec(query))


@dataclass(frozen=True)
class InboxScope:
    """Whose inbox: the user, the levels they may decide (level -> funds), and the levels they
    sit above (level -> funds), whose orders they see once escalated."""

    user: str
    decide: Mapping[str, Sequence[str]]
    escalated: Mapping[str, Sequence[str]]


def inbox_waiting_since(row: OrderRow) -> datetime:
    """Return since when the row's pending level waits, as the inbox orders and pages by it."""
    return row.approval_waiting_since or row.created_at


def encode_inbox_cursor(row: OrderRow) -> str:
    raw = json.dumps(["inbox", inbox_waiting_since(row).isoformat(), row.order_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_inbox_cursor(cursor: str) -> tuple[datetime, str]:
    """Decode an inbox paging cursor; raises ValueError when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        kind, waiting_since, order_id = json.loads(raw)
        at = datetime.fromisoformat(waiting_since)
    except Exception as exc:
        raise ValueError("cursor is not valid") from exc
    if kind != "inbox" or at.tzinfo is None or not isinstance(order_id, str):
        raise ValueError("cursor is not valid")
    return at, order_id


def approval_inbox(
    session: Session, scope: InboxScope, limit: int, cursor: str | None = None
) -> list[OrderRow]:
    """Return up to `limit` orders of the approver's inbox, longest waiting first, after `cursor`.

    Everything is filtered in SQL: the status, each level with the funds it may be decided in,
    the creator, and the approvers so far. Raises ValueError for a cursor that is not one of ours.
    """
    level, fund = col(OrderRow.approval_level), col(OrderRow.fund)
    scopes = [
        and_(level == lvl, fund.in_(list(funds))) for lvl, funds in scope.decide.items() if funds
    ]
    scopes += [
        and_(level == lvl, fund.in_(list(funds)), col(OrderRow.approval_escalated))
        for lvl, funds in scope.escalated.items()
        if funds
    ]
    after = decode_inbox_cursor(cursor) if cursor else None
    if not scopes:
        return []
    # `approved_by` is a comma-separated list: match the user as a whole item, LIKE-escaped.
    escaped = scope.user.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    approved_by = literal(",") + col(OrderRow.approved_by) + literal(",")
    # Rows written before the column existed have no waiting time: their creation stands in.
    waiting = func.coalesce(col(OrderRow.approval_waiting_since), col(OrderRow.created_at))
    # A level waits on orders pending approval, and on working orders whose amend needs one.
    query = select(OrderRow).where(
        col(OrderRow.approval_level).is_not(None),
        or_(*scopes),
        col(OrderRow.created_by) != scope.user,
        not_(approved_by.like(f"%,{escaped},%", escape="\\")),
    )
    if after is not None:
        since, order_id = after
        query = query.where(
            or_(waiting > since, and_(waiting == since, col(OrderRow.order_id) > order_id))
        )
    query = query.order_by(waiting, col(OrderRow.order_id)).limit(limit)
    return list(session.exec(query))


# ---- allocations and positions ----------------------------------------------------------------


def book_allocations(
    session: Session, state: OrderState, allocations: Iterable[Allocation], booked_at: datetime
) -> None:
    """Record the order's allocations (once) and move the positions they touch."""
    _book(session, state.order_id, state.fund, state.symbol, state.side, allocations, booked_at)
    session.commit()


def _book(
    session: Session,
    order_id: str,
    fund: str,
    symbol: str,
    side: Side,
    allocations: Iterable[Allocation],
    booked_at: datetime,
) -> None:
    booked: dict[str, list[AllocationRow]] = {}
    for allocation in allocations:
        if session.get(AllocationRow, (order_id, allocation.account)) is not None:
            continue  # booked by an earlier projection: its position has it already
        row = AllocationRow(
            order_id=order_id,
            account=allocation.account,
            fund=fund,
            symbol=symbol,
            side=side.value,
            quantity=allocation.quantity,
            price=allocation.price,
            booked_at=booked_at,
        )
        session.add(row)
        booked.setdefault(allocation.account, []).append(row)
    session.flush()
    for account in sorted(booked):
        _move_position(session, fund, account, symbol, booked[account], booked_at)


def _move_position(
    session: Session,
    fund: str,
    account: str,
    symbol: str,
    booked: Sequence[AllocationRow],
    at: datetime,
) -> None:
    """Add newly booked allocations to one position.

    A position is the fold of its allocations in booking-time order (`_fold`). Allocations
    booked after everything the position holds are folded into it as it stands; one booked
    earlier (two orders booking at nearly the same moment, committed the other way round)
    rebuilds the position from all its allocations, so the order of commits never shows.

    Two orders booking into one position at once must not each move it without the other's
    allocation: the position row is locked (PostgreSQL) before it is read, so the second waits
    for the first and then sees its result. A position not yet there is inserted by one of
    them; the other fails on the key and its activity retries. (SQLite serialises writers and
    refuses a stale writer, with the same retry.)
    """
    position = session.get(PositionRow, (account, symbol), with_for_update=True)
    trades: Iterable[tuple[Decimal, str, Decimal, datetime]]
    if position is not None and all(row.booked_at > position.updated_at for row in booked):
        trades = [
            (row.quantity, row.side, row.price, row.booked_at)
            for row in sorted(booked, key=lambda row: (row.booked_at, row.order_id))
        ]
    else:
        # New (its first allocations), or booked out of order: from all its allocations (as
        # plain rows: a position may have thousands).
        trades = session.execute(
            sql_select(
                col(AllocationRow.quantity),
                col(AllocationRow.side),
                col(AllocationRow.price),
                col(AllocationRow.booked_at),
            )
            .where(col(AllocationRow.account) == account, col(AllocationRow.symbol) == symbol)
            .order_by(col(AllocationRow.booked_at), col(AllocationRow.order_id))
        )
        if position is None:
            position = PositionRow(fund=fund, account=account, symbol=symbol, updated_at=at)
        position.quantity, position.average_cost, position.cash_flow = (
            Decimal(0),
            Decimal(0),
            Decimal(0),
        )
    quantity, average_cost, cash_flow = position.quantity, position.average_cost, position.cash_flow
    latest = position.updated_at
    for traded, side, price, booked_at in trades:
        quantity, average_cost, cash_flow = _fold(
            quantity, average_cost, cash_flow, traded * Side(side).sign, price
        )
        latest = max(latest, booked_at)
    # The latest booking time folded in: what tells a later booking whether it comes after.
    position.quantity, position.average_cost, position.cash_flow, position.updated_at = (
        quantity,
        average_cost,
        cash_flow,
        latest,
    )
    session.add(position)


def _fold(
    quantity: Decimal, average_cost: Decimal, cash_flow: Decimal, signed: Decimal, price: Decimal
) -> tuple[Decimal, Decimal, Decimal]:
    """Return a position (quantity, average cost, cash flow) after a trade of `signed` at `price`.

    Average cost is the weighted cost of the open position: trades that add to it move the
    average, trades that reduce it leave it, a trade that flips the sign starts it anew.
    """
    new_quantity = quantity + signed
    if quantity == 0 or (quantity > 0) == (signed > 0):
        average_cost = (
            (quantity * average_cost + signed * price) / new_quantity
            if new_quantity
            else Decimal(0)
        )
    elif (new_quantity > 0) != (quantity > 0) and new_quantity != 0:
        average_cost = price
    elif new_quantity == 0:
        average_cost = Decimal(0)
    return new_quantity, average_cost, cash_flow - signed * price


def positions(session: Session, funds: Sequence[str] | None) -> list[PositionRow]:
    query = select(PositionRow)
    if funds is not None:
        query = query.where(col(PositionRow.fund).in_(list(funds)))
    return list(
        session.exec(
            query.order_by(col(PositionRow.fund), col(PositionRow.account), col(PositionRow.symbol))
        )
    )


# ---- settlements ------------------------------------------------------------------------------


def record_instruction(
    session: Session, instruction: SettlementInstruction, instructed_at: datetime
) -> bool:
    """Store a settlement instruction once; returns whether it was new."""
    if session.get(SettlementRow, instruction.settlement_id) is not None:
        return False
    session.add(
        SettlementRow(
            settlement_id=instruction.settlement_id,
            order_id=instruction.order_id,
            fund=instruction.fund,
            account=instruction.account,
            symbol=instruction.symbol,
            side=instruction.side.value,
            quantity=instruction.quantity,
            price=instruction.price,
            gross_amount=instruction.gross_amount,
            currency=instruction.currency,
            trade_date=instruction.trade_date,
            settlement_date=instruction.settlement_date,
            status=SettlementStatus.INSTRUCTED.value,
            instructed_at=instructed_at,
        )
    )
    session.commit()
    return True


def set_settlement_status(
    session: Session, settlement_id: str, status: SettlementStatus, reason: str, at: datetime
) -> None:
    """Record the back office's answer on an instruction; a confirmed one stays confirmed."""
    _set_settlement_status(session, settlement_id, status, reason, at)
    session.commit()


def _set_settlement_status(
    session: Session, settlement_id: str, status: SettlementStatus, reason: str, at: datetime
) -> None:
    row = session.get(SettlementRow, settlement_id)
    if row is None or row.status == SettlementStatus.CONFIRMED.value:
        return
    row.status, row.status_reason, row.status_at = status.value, reason, at
    session.add(row)


def get_settlement(session: Session, settlement_id: str) -> SettlementRow | None:
    return session.get(SettlementRow, settlement_id)


def list_settlements(
    session: Session, funds: Sequence[str] | None, status: str | None
) -> list[SettlementRow]:
    query = select(SettlementRow)
    if funds is not None:
        query = query.where(col(SettlementRow.fund).in_(list(funds)))
    if status:
        query = query.where(SettlementRow.status == status)
    return list(
        session.exec(
            query.order_by(col(SettlementRow.settlement_date), col(SettlementRow.settlement_id))
        )
    )


# ---- kill switches ----------------------------------------------------------------------------


def engaged_kill_switches(session: Session, fund: str) -> list[KillSwitchRow]:
    """Return the kill switches engaged for `fund`: the firm's ("*") first, then the fund's own."""
    rows = session.exec(
        select(KillSwitchRow).where(
            col(KillSwitchRow.engaged), col(KillSwitchRow.scope).in_([FIRM_WIDE_SCOPE, fund])
        )
    )
    return sorted(rows, key=lambda row: row.scope != FIRM_WIDE_SCOPE)


def all_engaged_kill_switches(session: Session) -> list[KillSwitchRow]:
    """Return every engaged kill switch, the firm's first, then by fund."""
    rows = session.exec(select(KillSwitchRow).where(col(KillSwitchRow.engaged)))
    return sorted(rows, key=lambda row: (row.scope != FIRM_WIDE_SCOPE, row.scope))


def get_kill_switch(session: Session, scope: str) -> KillSwitchRow | None:
    return session.get(KillSwitchRow, scope)


def set_kill_switch(
    session: Session, scope: str, *, engaged: bool, by: str, reason: str, at: datetime
) -> KillSwitchRow | None:
    """Engage (again) or lift the kill switch of `scope`, and record the change, in one transaction.

    Engaging an engaged switch keeps the time it was first engaged and takes the new author and
    reason. Lifting keeps who engaged it and why (the event says who lifted it); lifting a switch
    that was never engaged only records the request.

    Returns:
        The switch as it now stands, or None when there has never been one for `scope`.
    """
    if engaged:
        insert = dialect_insert(session, KillSwitchRow).values(
            scope=scope, engaged=True, engaged_by=by, reason=reason, engaged_at=at, updated_at=at
        )
        # One statement, so two compliance officers engaging at once leave one row, engaged
        # since the first of them.
        session.execute(
            insert.on_conflict_do_update(
                index_elements=["scope"],
                set_={
                    "engaged": True,
                    "engaged_by": insert.excluded.engaged_by,
                    "reason": insert.excluded.reason,
                    "updated_at": insert.excluded.updated_at,
                    "engaged_at": case(
                        (col(KillSwitchRow.engaged), col(KillSwitchRow.engaged_at)),
                        else_=insert.excluded.engaged_at,
                    ),
                },
            )
        )
    else:
        session.execute(
            update(KillSwitchRow)
            .where(col(KillSwitchRow.scope) == scope)
            .values(engaged=False, updated_at=at)
        )
    session.add(KillSwitchEventRow(scope=scope, engaged=engaged, by=by, reason=reason, at=at))
    session.commit()
    # The statements above bypassed the session: a row it holds already is stale.
    return session.get(KillSwitchRow, scope, populate_existing=True)


def kill_switch_events(
    session: Session, scopes: Sequence[str] | None, limit: int
) -> list[KillSwitchEventRow]:
    """Return the latest changes of the kill switches of `scopes` (None: all), newest first."""
    query = select(KillSwitchEventRow)
    if scopes is not None:
        query = query.where(col(KillSwitchEventRow.scope).in_(list(scopes)))
    query = query.order_by(col(KillSwitchEventRow.at).desc(), col(KillSwitchEventRow.id).desc())
    return list(session.exec(query.limit(limit)))


def orders_at_venue(
    session: Session, scope: str, statuses: Iterable[str]
) -> list[tuple[str, str, str]]:
    """Return (order id, fund, workflow type) of the orders of `scope` ("*": every fund) in `statuses`.

    Oldest first: the sweep of a kill switch cancels what has been at the venue longest first.
    """
    query = select(OrderRow.order_id, OrderRow.fund, OrderRow.workflow_type).where(
        col(OrderRow.status).in_(list(statuses))
    )
    if scope != FIRM_WIDE_SCOPE:
        query = query.where(OrderRow.fund == scope)
    query = query.order_by(col(OrderRow.created_at), col(OrderRow.order_id))
    return [(row[0], row[1], row[2]) for row in session.exec(query)]


def orders_working_at(
    session: Session, venue: str, statuses: Iterable[str], workflow_type: str
) -> list[str]:
    """Return the ids of `workflow_type` orders the read model has at `venue` in `statuses`."""
    query = select(OrderRow.order_id).where(
        OrderRow.venue == venue,
        col(OrderRow.status).in_(list(statuses)),
        OrderRow.workflow_type == workflow_type,
    )
    return list(session.exec(query.order_by(col(OrderRow.created_at))))


# ---- the portfolio pre-trade compliance looks at ----------------------------------------------

# Symbols per IN (...) list: far below SQLite's and PostgreSQL's bound-parameter limits, for a
# fund of 10,000 positions.
_IN_CHUNK = 1000


def _chunks(values: Iterable[str]) -> Iterator[list[str]]:
    ordered = sorted(set(values))
    for start in range(0, len(ordered), _IN_CHUNK):
        yield ordered[start : start + _IN_CHUNK]


def _rows_for_symbols(
    session: Session, statements: tuple[Any, Any], symbols: Iterable[str]
) -> list[Any]:
    """Run one of the `statements` (PostgreSQL's, SQLite's) for every symbol of `symbols`.

    PostgreSQL takes the symbols as one array (`= ANY(:symbols)`): a statement with a thousand
    parameters costs the driver and the planner five times what the rows do. SQLite has no
    arrays, so there the symbols go in expanding IN lists of `_IN_CHUNK`.
    """
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        wanted = list(set(symbols))
        return list(connection.execute(statements[0], {"symbols": wanted})) if wanted else []
    rows: list[Any] = []
    for chunk in _chunks(symbols):
        rows += connection.execute(statements[1], {"symbols": chunk}).all()
    return rows


def _by_symbols(*columns: Any) -> tuple[Any, Any]:
    """Return the select of instruments' `columns` by symbol: PostgreSQL's and SQLite's."""
    symbol = col(InstrumentRow.symbol)
    return (
        sql_select(*columns).where(symbol == any_(bindparam("symbols", type_=ARRAY(String)))),
        sql_select(*columns).where(symbol.in_(bindparam("symbols", expanding=True))),
    )


# Built once: executed with the symbols as parameters (see `_rows_for_symbols`).
_REFERENCES = _by_symbols(
    col(InstrumentRow.symbol),
    col(InstrumentRow.asset_class),
    col(InstrumentRow.currency),
    col(InstrumentRow.lot_size),
    col(InstrumentRow.issuer),
    col(InstrumentRow.sector),
    col(InstrumentRow.market),
)
_PRICES = _by_symbols(col(InstrumentRow.symbol), col(InstrumentRow.reference_price))


def lock_fund_for_check(session: Session, fund: str) -> FundRow | None:
    """Begin the fund's pre-trade check: from here to the commit, no other check of it runs.

    Call it first in a fresh session. PostgreSQL locks the fund's row (`FOR NO KEY UPDATE`),
    so a second check of the fund waits here until the first commits, and then reads (each
    statement sees what was committed before it) the first one's reservation. SQLite locks no
    rows: its write transaction is begun at once (`BEGIN IMMEDIATE`), which waits for any other
    writer, instead of at the first write, when two checks could both have read already.

    Returns:
        The fund's row, or None when there is no such fund (the transaction is still open).
    """
    if session.get_bind().dialect.name == "sqlite":
        # pysqlite would begin only at the first INSERT; an explicit BEGIN is kept until the
        # session's commit or rollback, which the driver passes on.
        session.connection().exec_driver_sql("BEGIN IMMEDIATE")
        return session.get(FundRow, fund)
    # FOR NO KEY UPDATE: checks of the fund exclude each other, but a row that refers to the fund
    # (an account being added) need not wait for one.
    return session.get(FundRow, fund, with_for_update={"key_share": True}, populate_existing=True)


def fund_holdings(session: Session, fund: str) -> dict[str, Decimal]:
    """Return the fund's holdings per symbol over all its accounts: start of day plus booked.

    `holdings_sod` is the book as it stood before the allocations this read model holds, and
    `positions` is the fold of those allocations, so the two add up without counting a trade
    twice. (Rolling a day over must move positions into `holdings_sod` and retire their
    allocations in one transaction; nothing does that yet.) Symbols netting to zero are left out.
    """
    totals: dict[str, Decimal] = {}
    # Core statements on the session's connection: a fund may hold 10,000 instruments, and the
    # ORM's result handling costs more than the rows themselves.
    connection = session.connection()
    sod = connection.execute(
        sql_select(col(HoldingSodRow.symbol), col(HoldingSodRow.quantity)).where(
            col(HoldingSodRow.fund) == fund
        )
    ).all()
    booked = connection.execute(
        sql_select(col(PositionRow.symbol), col(PositionRow.quantity)).where(
            col(PositionRow.fund) == fund
        )
    ).all()
    for symbol, quantity in [*sod, *booked]:
        totals[symbol] = totals.get(symbol, Decimal(0)) + quantity
    return {symbol: tidy(quantity) for symbol, quantity in sorted(totals.items()) if quantity}


class InstrumentReference(NamedTuple):
    """An instrument's reference data without its price (prices come from a price source).

    A tuple (hashable, and built in C): a big fund's check reads 10,000 of them.
    """

    symbol: str
    asset_class: str
    currency: str
    lot_size: Decimal
    issuer: str
    sector: str
    market: str | None


def instrument_references(
    session: Session, symbols: Iterable[str]
) -> dict[str, InstrumentReference]:
    """Return the reference data of those of `symbols` that are known, by symbol."""
    return {
        symbol: InstrumentReference(
            symbol, asset_class, currency, tidy(lot_size), issuer, sector, market
        )
        for symbol, asset_class, currency, lot_size, issuer, sector, market in _rows_for_symbols(
            session, _REFERENCES, symbols
        )
    }


def instrument_reference_prices(session: Session, symbols: Iterable[str]) -> dict[str, Decimal]:
    """Return the instruments' reference prices, for those of `symbols` that are known."""
    return {symbol: tidy(price) for symbol, price in _rows_for_symbols(session, _PRICES, symbols)}


def all_markets(session: Session) -> dict[str, MarketRow]:
    """Return every market's trading hours, by market code."""
    return {row.market: row for row in session.exec(select(MarketRow))}


@dataclass(frozen=True)
class Reserved:
    """A compliance reservation as read (plain values: a fund may have thousands open)."""

    order_id: str
    symbol: str
    side: str
    quantity: Decimal
    exposure: Decimal
    created_by: str
    created_at: datetime


@dataclass(frozen=True)
class ReservationWithStatus:
    """A compliance reservation and, when the order has a row yet, where the order stands."""

    reservation: Reserved
    status: str | None
    quantity: Decimal | None
    filled_quantity: Decimal | None


def reservations_with_status(
    session: Session, fund: str, exclude_order_id: str
) -> list[ReservationWithStatus]:
    """Return the fund's reservations but `exclude_order_id`'s, each with its order's status.

    The order's row may not be there yet (its check runs before the projection catches up): the
    join is an outer one, and such a reservation comes with status None.
    """
    reservation = ComplianceReservationRow.__table__.c  # type: ignore[attr-defined]
    rows = (
        session.connection()
        .execute(
            sql_select(
                reservation.order_id,
                reservation.symbol,
                reservation.side,
                reservation.quantity,
                reservation.exposure,
                reservation.created_by,
                reservation.created_at,
                col(OrderRow.status),
                col(OrderRow.quantity),
                col(OrderRow.filled_quantity),
            )
            .outerjoin(OrderRow, col(OrderRow.order_id) == reservation.order_id)
            .where(reservation.fund == fund, reservation.order_id != exclude_order_id)
            .order_by(reservation.created_at, reservation.order_id)
        )
        .all()
    )
    return [ReservationWithStatus(Reserved(*row[:7]), row[7], row[8], row[9]) for row in rows]


def unreserved_orders(
    session: Session, fund: str, statuses: Iterable[str], exclude_order_id: str
) -> list[OrderRow]:
    """Return the fund's orders in `statuses` that hold no reservation, but `exclude_order_id`.

    Orders created before reservations existed (and orders of the first workflow) still count
    against the fund's limits; the caller values them now.
    """
    reserved = select(ComplianceReservationRow.order_id).where(
        ComplianceReservationRow.order_id == OrderRow.order_id
    )
    return list(
        session.exec(
            select(OrderRow)
            .where(
                OrderRow.fund == fund,
                col(OrderRow.status).in_(list(statuses)),
                OrderRow.order_id != exclude_order_id,
                not_(reserved.exists()),
            )
            .order_by(col(OrderRow.created_at), col(OrderRow.order_id))
        )
    )


@dataclass(frozen=True)
class CreatedOrder:
    """An order as the duplicate and rate rules see it."""

    order_id: str
    symbol: str
    side: str
    quantity: Decimal
    created_by: str
    created_at: datetime


def orders_created_since(
    session: Session, fund: str, since: datetime, exclude_order_id: str
) -> list[CreatedOrder]:
    """Return the fund's orders created at or after `since`, but `exclude_order_id`, oldest first."""
    rows = session.execute(
        sql_select(
            col(OrderRow.order_id),
            col(OrderRow.symbol),
            col(OrderRow.side),
            col(OrderRow.quantity),
            col(OrderRow.created_by),
            col(OrderRow.created_at),
        )
        .where(
            col(OrderRow.fund) == fund,
            col(OrderRow.created_at) >= since,
            col(OrderRow.order_id) != exclude_order_id,
        )
        .order_by(col(OrderRow.created_at), col(OrderRow.order_id))
    )
    return [CreatedOrder(*row) for row in rows]


def upsert_reservation(session: Session, reservation: ComplianceReservationRow) -> None:
    """Write the order's reservation; a second check of the order replaces what it reserves.

    `created_at` stays as first written: the order reserved from then on.
    """
    values = reservation.model_dump()
    session.execute(_reservation_upsert(_dialect(session), tuple(values)), values)


@functools.cache
def _reservation_upsert(dialect: str, columns: tuple[str, ...]) -> Any:
    """The reservation's upsert of `columns` (built once per shape, executed with parameters)."""
    insert = core_insert(dialect, ComplianceReservationRow)
    kept = {"order_id", "created_at"}
    return insert.on_conflict_do_update(
        index_elements=["order_id"],
        set_={k: insert.excluded[k] for k in columns if k not in kept},
    )


def delete_reservations(session: Session, order_ids: Iterable[str]) -> None:
    """Delete the reservations of orders that reserve nothing any more (ended, or booked)."""
    for chunk in _chunks(order_ids):
        session.execute(
            delete(ComplianceReservationRow).where(
                col(ComplianceReservationRow.order_id).in_(chunk)
            )
        )


# ---- an order as it stood: the read model's log, for `?as_of=` -------------------------------


def order_log(session: Session, order_id: str) -> tuple[list[OrderEventRow], list[SettlementRow]]:
    """Return what the order's past is folded from: its event log in sequence, its instructions."""
    settlements = session.exec(
        select(SettlementRow)
        .where(SettlementRow.order_id == order_id)
        .order_by(col(SettlementRow.settlement_id))
    )
    return order_events(session, order_id), list(settlements)
