"""The simulators' own books: the simulated venue's orders, and what the simulated back office reads.

A simulator keeps here everything a crash must not lose, so a restarted worker (or another one on
the same database) picks up where the last one stopped. Every write is a single conditional
statement, safe when two simulators share the database.
"""

from __future__ import annotations

import functools
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Index, bindparam, or_, update
from sqlalchemy import select as sql_select
from sqlmodel import Field, Session, SQLModel, col, select

from db.tables import SettlementRow, _decimal, _timestamp, core_insert
from domain.models import SettlementStatus


class SimVenueOrderRow(SQLModel, table=True):
    """One order the simulated venue received, keyed by its ClOrdID, and how far it has got.

    `next_step_at` is when the simulator next has something to report (None: nothing more);
    `lease_owner` and `lease_until` say which simulator is reporting on it right now, so two
    simulators on one database never report on the same order at once.
    """

    __tablename__ = "sim_venue_orders"
    # The loop's poll: due steps, most overdue first.
    __table_args__ = (Index("ix_sim_venue_orders_next_step_at", "next_step_at"),)

    cl_ord_id: str = Field(primary_key=True, max_length=128)
    order_id: str = Field(index=True, max_length=64)
    fund: str = Field(max_length=64)
    symbol: str = Field(max_length=32)
    side: str = Field(max_length=16)
    quantity: Decimal = _decimal()
    order_type: str = Field(max_length=16)
    limit_price: Decimal | None = _decimal(nullable=True)
    time_in_force: str = Field(max_length=8)
    # The listing as it was when the order arrived (a resting order's as it last looked), so a
    # restarted simulator fills at the same price.
    reference_price: Decimal = _decimal()
    lot_size: Decimal = _decimal()
    state: str = Field(max_length=16)
    # The `sim:` scenario the order asked for, as `Scenario.canonical` writes it ("": none).
    scenario: str = Field(default="", max_length=256)
    filled: Decimal = _decimal(default=Decimal(0))
    next_exec: int = 1
    cancel_requested: bool = False
    cancel_answered: bool = False
    # The ClOrdID of the last cancel request (None: rows from before requests had their own).
    cancel_cl_ord_id: str | None = Field(default=None, max_length=128)
    # The ClOrdID the order goes by since its last replace (None: `cl_ord_id`), and a replace
    # request waiting for the venue's answer: its new ClOrdID and terms.
    current_cl_ord_id: str | None = Field(default=None, max_length=128, index=True)
    replace_cl_ord_id: str | None = Field(default=None, max_length=128)
    replace_quantity: Decimal | None = _decimal(nullable=True)
    replace_limit_price: Decimal | None = _decimal(nullable=True)
    next_step_at: datetime | None = _timestamp(nullable=True)
    lease_owner: str | None = Field(default=None, max_length=64)
    lease_until: datetime | None = _timestamp(nullable=True)
    submissions: int = 1
    received_at: datetime = _timestamp()


def count_resubmission(session: Session, cl_ord_id: str) -> bool:
    """Count one more submission of a known ClOrdID; returns whether the ClOrdID was known."""
    result = session.exec(
        update(SimVenueOrderRow)
        .where(col(SimVenueOrderRow.cl_ord_id) == cl_ord_id)
        .values(submissions=col(SimVenueOrderRow.submissions) + 1)
    )
    session.commit()
    return bool(result.rowcount)


def record_submission(session: Session, order: SimVenueOrderRow) -> bool:
    """Store a newly received order, or count a resubmission if it is there already.

    One statement (INSERT ... ON CONFLICT DO UPDATE), so two concurrent submissions of one
    ClOrdID leave one row that counts both.

    Returns:
        Whether the order was new.
    """
    values: dict[str, Any] = order.model_dump()
    statement = _submission_upsert(session.get_bind().dialect.name, tuple(values))
    submissions = session.execute(statement, values).scalar_one()
    session.commit()
    return bool(submissions == 1)


# The statements the simulator's loop runs for every step of every order: built once per
# backend (and shape), executed with parameters.
_ORDERS = SimVenueOrderRow.__table__  # type: ignore[attr-defined]


@functools.cache
def _submission_upsert(dialect: str, columns: tuple[str, ...]) -> Any:
    del columns  # part of the cache key: the statement takes exactly these parameters
    insert = core_insert(dialect, SimVenueOrderRow)
    return insert.on_conflict_do_update(
        index_elements=["cl_ord_id"], set_={"submissions": _ORDERS.c.submissions + 1}
    ).returning(_ORDERS.c.submissions)


def _due_and_free() -> Any:
    """Due by `:now`, and free or held by `:owner` (an expired lease is free)."""
    now: Any = bindparam("now")
    return (
        _ORDERS.c.next_step_at.is_not(None),
        _ORDERS.c.next_step_at <= now,
        or_(
            _ORDERS.c.lease_until.is_(None),
            _ORDERS.c.lease_until < now,
            _ORDERS.c.lease_owner == bindparam("owner"),
        ),
    )


_DUE = (
    sql_select(_ORDERS.c.cl_ord_id)
    .where(*_due_and_free())
    .order_by(_ORDERS.c.next_step_at)
    .limit(bindparam("limit"))
)
_CLAIM = (
    update(_ORDERS)
    .where(_ORDERS.c.cl_ord_id == bindparam("id"), *_due_and_free())
    .values(lease_owner=bindparam("owner"), lease_until=bindparam("lease_until"))
)
# A request that arrived while a step's report was on its way is due at once.
_REQUEST_PENDING = (
    update(_ORDERS)
    .where(
        _ORDERS.c.cl_ord_id == bindparam("id"),
        or_(
            _ORDERS.c.cancel_requested.is_(True) & _ORDERS.c.cancel_answered.is_(False),
            _ORDERS.c.replace_cl_ord_id.is_not(None),
        ),
    )
    .values(next_step_at=bindparam("now"))
)


def venue_order(session: Session, cl_ord_id: str) -> SimVenueOrderRow | None:
    """Return the simulated venue's order of a ClOrdID, if it ever received it."""
    return session.get(SimVenueOrderRow, cl_ord_id)


def _goes_by(cl_ord_id: str) -> Any:
    """Match the order that went, goes or is asked to go by `cl_ord_id`."""
    return or_(
        col(SimVenueOrderRow.cl_ord_id) == cl_ord_id,
        col(SimVenueOrderRow.current_cl_ord_id) == cl_ord_id,
        col(SimVenueOrderRow.replace_cl_ord_id) == cl_ord_id,
    )


def venue_order_by_any_id(session: Session, cl_ord_id: str) -> SimVenueOrderRow | None:
    """Return the order known by `cl_ord_id`: its first, its current, or a requested ClOrdID."""
    return session.exec(select(SimVenueOrderRow).where(_goes_by(cl_ord_id))).first()


def request_replace(
    session: Session,
    order_id: str,
    orig_cl_ord_id: str,
    cl_ord_id: str,
    quantity: Decimal,
    limit_price: Decimal | None,
    now: datetime,
) -> bool:
    """Record a replace request (once per new ClOrdID) and make it due now.

    Returns:
        Whether the venue has the request: it took it now, or had it already.
    """
    if venue_order_by_any_id(session, cl_ord_id) is not None:
        return True  # a resend
    result = session.exec(
        update(SimVenueOrderRow)
        .where(
            col(SimVenueOrderRow.order_id) == order_id,
            or_(
                col(SimVenueOrderRow.cl_ord_id) == orig_cl_ord_id,
                col(SimVenueOrderRow.current_cl_ord_id) == orig_cl_ord_id,
            ),
            col(SimVenueOrderRow.replace_cl_ord_id).is_(None),
        )
        .values(
            replace_cl_ord_id=cl_ord_id,
            replace_quantity=quantity,
            replace_limit_price=limit_price,
            next_step_at=now,
        )
    )
    session.commit()
    return bool(result.rowcount)


def venue_orders(session: Session) -> list[SimVenueOrderRow]:
    """Return every order the simulated venue received, oldest first."""
    query = select(SimVenueOrderRow).order_by(
        col(SimVenueOrderRow.received_at), col(SimVenueOrderRow.cl_ord_id)
    )
    return list(session.exec(query))


def request_cancel(
    session: Session, order_id: str, cl_ord_id: str, orig_cl_ord_id: str, now: datetime
) -> SimVenueOrderRow | None:
    """Record a cancel request, under its ClOrdID, of the order going by `orig_cl_ord_id`.

    A repeated request changes nothing: a venue answers a cancel ClOrdID once. A new cancel
    ClOrdID after the last request was answered (rejected) is a new request, due now.

    Returns:
        The order as it stands, or None if the venue has no such ClOrdID for `order_id`.
    """
    cancel = col(SimVenueOrderRow.cancel_cl_ord_id)
    session.exec(
        update(SimVenueOrderRow)
        .where(
            _goes_by(orig_cl_ord_id),
            col(SimVenueOrderRow.order_id) == order_id,
            or_(
                col(SimVenueOrderRow.cancel_requested).is_(False),
                col(SimVenueOrderRow.cancel_answered).is_(True)
                & cancel.is_not(None)
                & (cancel != cl_ord_id),
            ),
        )
        .values(
            cancel_requested=True,
            cancel_answered=False,
            cancel_cl_ord_id=cl_ord_id,
            next_step_at=now,
        )
    )
    session.commit()
    row = venue_order_by_any_id(session, orig_cl_ord_id)
    return row if row is not None and row.order_id == order_id else None


def due_venue_orders(session: Session, now: datetime, owner: str, limit: int) -> list[str]:
    """Return the ClOrdIDs with a step due by `now` that no other simulator holds, most overdue first."""
    return list(session.execute(_DUE, {"now": now, "owner": owner, "limit": limit}).scalars())


def claim_venue_order(
    session: Session, cl_ord_id: str, *, owner: str, now: datetime, lease_until: datetime
) -> SimVenueOrderRow | None:
    """Take the lease on an order whose step is due; returns the order as it stands, or None.

    None when the step is no longer due or another simulator holds an unexpired lease.
    """
    result = session.execute(
        _CLAIM, {"id": cl_ord_id, "now": now, "owner": owner, "lease_until": lease_until}
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        session.rollback()
        return None
    row = session.get(SimVenueOrderRow, cl_ord_id)
    session.commit()
    return row


def record_venue_step(
    session: Session,
    cl_ord_id: str,
    *,
    reported_exec: int,
    next_exec: int,
    state: str,
    filled: Decimal,
    cancel_answered: bool,
    next_step_at: datetime | None,
    now: datetime,
    reference_price: Decimal | None = None,
    replace_answer: str | None = None,
) -> bool:
    """Record a step whose report was delivered, and release the lease.

    The step is recorded only if the order's exec sequence is still `reported_exec`, so a step
    another simulator recorded first is never recorded twice. A cancel request that arrived while
    the report was on its way stays due at once. `reference_price`, if given, is the price the
    order's next fill is at (a resting order's market moved). `replace_answer` "replaced" gives
    the order the terms and ClOrdID of its pending replace request; "rejected" drops the request.

    Returns:
        Whether the step was recorded.
    """
    result = session.execute(
        update(_ORDERS)
        .where(_ORDERS.c.cl_ord_id == cl_ord_id, _ORDERS.c.next_exec == reported_exec)
        .values(
            next_exec=next_exec,
            state=state,
            filled=filled,
            cancel_answered=cancel_answered,
            next_step_at=next_step_at,
            lease_owner=None,
            lease_until=None,
            **({} if reference_price is None else {"reference_price": reference_price}),
            **_replace_answered(replace_answer),
        )
    )
    recorded = bool(result.rowcount)  # type: ignore[attr-defined]
    if recorded:
        session.execute(_REQUEST_PENDING, {"id": cl_ord_id, "now": now})
    session.commit()
    return recorded


def _replace_answered(answer: str | None) -> dict[str, Any]:
    """Return the column changes of a replace request's answer (in the same statement)."""
    cleared = {"replace_cl_ord_id": None, "replace_quantity": None, "replace_limit_price": None}
    if answer == "replaced":
        return {
            "current_cl_ord_id": col(SimVenueOrderRow.replace_cl_ord_id),
            "quantity": col(SimVenueOrderRow.replace_quantity),
            "limit_price": col(SimVenueOrderRow.replace_limit_price),
            **cleared,
        }
    return cleared if answer == "rejected" else {}


def instructions_awaiting_confirmation(
    session: Session, instructed_before: datetime, limit: int
) -> list[tuple[str, str]]:
    """Return `(settlement_id, order_id)` of instructions still unconfirmed, oldest first."""
    query = (
        select(SettlementRow.settlement_id, SettlementRow.order_id)
        .where(
            col(SettlementRow.status) == SettlementStatus.INSTRUCTED.value,
            col(SettlementRow.instructed_at) <= instructed_before,
        )
        .order_by(col(SettlementRow.instructed_at))
        .limit(limit)
    )
    return [(settlement_id, order_id) for settlement_id, order_id in session.exec(query)]
