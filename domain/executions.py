"""Applying a venue's execution report to an order: FIX semantics and the guards that refuse it.

The guards (each a refusal naming the field at fault and the numbers): a duplicate ExecID, a
report the order's status cannot take, a fill through the limit price, a fill that is not a
whole number of lots, a fill priced more than `PRICE_BAND` away from the instrument's reference
price, an overfill. The transact_time window (`transact_time_problem`) and the venue's identity
(`may_report_for`) are checked before a report reaches the order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from domain.models import (
    AwareDatetime,
    ExecType,
    Execution,
    NonNegativeDecimal,
    OrderState,
    OrderStatus,
    PositiveDecimal,
    Side,
    tidy,
)
from domain.status import (
    ALLOCATED_OPEN,
    AT_VENUE,
    CLOSED_BY_VENUE,
    REPLACED_EVENTS,
    OrderEvent,
    allows,
)

# Average prices keep more places than any venue quotes, so the block's notional reproduces.
AVERAGE_PRICE_PLACES = Decimal("0.00000001")
# A fill priced further than this fraction of the reference price from it is refused as a
# fat finger: |last_price - reference| / reference may be exactly 0.5, not more.
PRICE_BAND = Decimal("0.5")
# A report's transact_time may be at most this far ahead of the order's clock.
REPORT_TIME_AHEAD = timedelta(days=1)
# ... and no earlier than the release, less this much: the venue stamps its own clock, which may
# run a little behind ours (NTP keeps them within milliseconds; 5 s covers a bad day), while an
# execution seconds before the order reached the venue cannot be real.
RELEASE_CLOCK_SKEW = timedelta(seconds=5)
# Who may report for a venue (settings.venue_reporters): this entry means any holder of
# ("executions", "create") in the order's fund, as for the manual venue keyed in by people.
ANY_REPORTER = "*"
# The type of the workflow's refusal of a report from another venue than the order's: the API
# answers 404, as for an order that venue cannot see.
WRONG_VENUE = "ExecutionWrongVenue"


class ExecutionReport(BaseModel):
    """One execution report as a venue sends it (`POST /executions`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    order_id: str = Field(min_length=1, max_length=64)
    exec_id: str = Field(min_length=1, max_length=128)
    exec_type: ExecType
    last_quantity: NonNegativeDecimal = Decimal(0)
    last_price: PositiveDecimal | None = None
    text: str = Field(default="", max_length=1000)
    transact_time: AwareDatetime
    exec_ref_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="trade_cancel and trade_correct: the exec_id of the trade they change.",
    )


class ReportVerdict(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    REFUSED = "refused"


@dataclass(frozen=True)
class ReportOutcome:
    """What applying a report did: the event it raised and the execution to record, or why not."""

    verdict: ReportVerdict
    event: OrderEvent | None = None
    execution: Execution | None = None
    reason: str = ""
    field: str | None = None  # the report field a refusal is about


@dataclass(frozen=True)
class ReportGuards:
    """What an order's fills are checked against: its side, limit, lot and reference price.

    `None` for a value skips its guard (a market order has no limit; an order whose instrument
    is not known yet has no lot or reference price).
    """

    side: Side
    limit_price: Decimal | None = None
    lot_size: Decimal | None = None
    reference_price: Decimal | None = None


def _refused(reason: str, field: str) -> ReportOutcome:
    return ReportOutcome(ReportVerdict.REFUSED, reason=reason, field=field)


def _fill_problem(
    guards: ReportGuards, last_quantity: Decimal, last_price: Decimal, leaves: Decimal
) -> ReportOutcome | None:
    """Return the refusal of a fill that breaks the order's limit, lot or price band, if any."""
    lot = guards.lot_size
    # An order whose own quantity is an odd lot can only complete with an odd fill: its last.
    completes_odd_order = last_quantity == leaves and leaves % (lot or 1) != 0
    if lot is not None and last_quantity % lot != 0 and not completes_odd_order:
        return _refused(
            f"last_quantity {last_quantity} is not a whole number of lots of {lot}", "last_quantity"
        )
    limit = guards.limit_price
    if limit is not None:
        buying = guards.side is Side.BUY
        if (buying and last_price > limit) or (not buying and last_price < limit):
            word = "above" if buying else "below"
            return _refused(
                f"last_price {last_price} is through the limit: a {guards.side.value} limited "
                f"at {limit} cannot fill {word} it",
                "last_price",
            )
    reference = guards.reference_price
    if reference is not None and abs(last_price - reference) > PRICE_BAND * reference:
        low, high = (
            tidy(reference - PRICE_BAND * reference),
            tidy(reference + PRICE_BAND * reference),
        )
        return _refused(
            f"last_price {last_price} is more than {PRICE_BAND:%} away from the reference "
            f"price {reference} (fills are taken from {low} to {high})",
            "last_price",
        )
    return None


def transact_time_problem(
    transact_time: datetime, *, now: datetime, released_at: datetime | None
) -> str | None:
    """Return why a report's transact_time cannot be true, or None when it can.

    It may not be more than `REPORT_TIME_AHEAD` after `now`, nor before the order's release
    (less `RELEASE_CLOCK_SKEW`, for the venue's clock).
    """
    if transact_time > now + REPORT_TIME_AHEAD:
        return (
            f"transact_time {transact_time.isoformat()} is more than a day after now "
            f"({now.isoformat()})"
        )
    if released_at is not None and transact_time < released_at - RELEASE_CLOCK_SKEW:
        return (
            f"transact_time {transact_time.isoformat()} is before the order was released "
            f"({released_at.isoformat()})"
        )
    return None


def may_report_for(
    venue: str | None, reporter: str, reporters: Mapping[str, Sequence[str]]
) -> bool:
    """Tell whether `reporter` speaks for `venue` (`reporters`: venue -> users, or `ANY_REPORTER`).

    Nobody reports for an order at no venue, or for a venue no entry names.
    """
    if venue is None:
        return False
    allowed = reporters.get(venue, ())
    return ANY_REPORTER in allowed or reporter in allowed


def _event_for(
    report: ExecutionReport,
    status: OrderStatus,
    cumulative: Decimal,
    quantity: Decimal,
    replacing: Decimal | None,
) -> OrderEvent | None:
    after_fills = cumulative > 0
    match report.exec_type:
        case ExecType.NEW:
            return OrderEvent.VENUE_ACCEPTED
        case ExecType.TRADE:
            return OrderEvent.FILL if cumulative == quantity else OrderEvent.PARTIAL_FILL
        case ExecType.CANCELED:
            return OrderEvent.VENUE_CANCELED
        case ExecType.EXPIRED:
            return OrderEvent.VENUE_EXPIRED
        case ExecType.REJECTED:
            return OrderEvent.VENUE_REJECTED
        case ExecType.PENDING_CANCEL:
            return None if status is OrderStatus.PENDING_CANCEL else OrderEvent.CANCEL_REQUESTED
        case ExecType.CANCEL_REJECTED if status is OrderStatus.PENDING_REPLACE:
            return _replace_rejected(after_fills)
        case ExecType.CANCEL_REJECTED:
            return (
                OrderEvent.CANCEL_REJECTED_AFTER_FILLS
                if after_fills
                else OrderEvent.CANCEL_REJECTED
            )
        case ExecType.REPLACE_REJECTED:
            return _replace_rejected(after_fills)
        case ExecType.REPLACED if replacing is not None:
            if cumulative >= replacing:
                return OrderEvent.REPLACED_TO_FILLED
            return OrderEvent.REPLACED_AFTER_FILLS if after_fills else OrderEvent.REPLACED
        case ExecType.DONE_FOR_DAY | ExecType.PENDING_REPLACE | ExecType.REPLACED:
            # Before amend existed a replace report changed nothing.
            return None
    return None


def _replace_rejected(after_fills: bool) -> OrderEvent:
    return OrderEvent.REPLACE_REJECTED_AFTER_FILLS if after_fills else OrderEvent.REPLACE_REJECTED


# Reports that answer a replace request: refused when none is pending.
_REPLACE_REPORTS = frozenset(
    {ExecType.REPLACED, ExecType.PENDING_REPLACE, ExecType.REPLACE_REJECTED}
)


_TRADE_CHANGES = frozenset({ExecType.TRADE_CANCEL, ExecType.TRADE_CORRECT})


def live_fill(executions: Sequence[Execution], exec_id: str) -> tuple[Decimal, Decimal] | str:
    """Return the quantity and price trade `exec_id` stands at (after corrections), or why none.

    A busted trade, a trade the order does not hold among `executions`, and a report that is not
    a trade cannot be busted or corrected.
    """
    found: tuple[Decimal, Decimal] | None = None
    for execution in executions:
        if execution.exec_id == exec_id:
            if execution.exec_type is not ExecType.TRADE or execution.last_price is None:
                return f"exec_ref_id {exec_id} is a {execution.exec_type.value} report, not a trade"
            found = (execution.last_quantity, execution.last_price)
        elif execution.exec_ref_id == exec_id and found is not None:
            if execution.exec_type is ExecType.TRADE_CANCEL:
                return f"trade {exec_id} was busted already"
            if execution.exec_type is ExecType.TRADE_CORRECT and execution.last_price is not None:
                found = (execution.last_quantity, execution.last_price)
    if found is None:
        return f"exec_ref_id {exec_id} names no trade of this order"
    return found


def _trade_change(
    *,
    status: OrderStatus,
    quantity: Decimal,
    filled_quantity: Decimal,
    average_price: Decimal | None,
    report: ExecutionReport,
    executions: Sequence[Execution],
    guards: ReportGuards | None,
) -> tuple[OrderEvent, Decimal, Decimal | None] | ReportOutcome:
    """Decide a bust or correction: its event, the cumulative quantity and average after it."""
    if report.exec_ref_id is None:
        return _refused(
            f"a {report.exec_type.value} report names the trade in exec_ref_id", "exec_ref_id"
        )
    fill = live_fill(executions, report.exec_ref_id)
    if isinstance(fill, str):
        return _refused(fill, "exec_ref_id")
    old_quantity, old_price = fill
    booked = status in ALLOCATED_OPEN
    if report.exec_type is ExecType.TRADE_CANCEL:
        if report.last_quantity != 0:
            return _refused(
                "a trade_cancel carries no last_quantity: the trade it names says it",
                "last_quantity",
            )
        if booked:
            return OrderEvent.TRADE_BUSTED_AFTER_ALLOCATION, filled_quantity, average_price
        cumulative = filled_quantity - old_quantity
        value = filled_quantity * (average_price or Decimal(0)) - old_quantity * old_price
        event = OrderEvent.TRADE_BUSTED_AFTER_FILLS if cumulative > 0 else OrderEvent.TRADE_BUSTED
    else:
        if report.last_quantity <= 0 or report.last_price is None:
            return _refused(
                "a trade_correct needs the trade's corrected last_quantity and last_price",
                "last_price" if report.last_quantity > 0 else "last_quantity",
            )
        if booked:
            return OrderEvent.TRADE_CORRECTED_AFTER_ALLOCATION, filled_quantity, average_price
        cumulative = filled_quantity - old_quantity + report.last_quantity
        if guards is not None:
            leaves_for_it = quantity - filled_quantity + old_quantity
            problem = _fill_problem(guards, report.last_quantity, report.last_price, leaves_for_it)
            if problem is not None:
                return problem
        if cumulative > quantity:
            return _refused(
                f"overfill: the correction makes cumulative {cumulative}, above the order "
                f"quantity {quantity}",
                "last_quantity",
            )
        value = (
            filled_quantity * (average_price or Decimal(0))
            - old_quantity * old_price
            + report.last_quantity * report.last_price
        )
        event = (
            OrderEvent.TRADE_CORRECTED_TO_FILLED
            if cumulative == quantity
            else OrderEvent.TRADE_CORRECTED
        )
    average = None if cumulative == 0 else tidy((value / cumulative).quantize(AVERAGE_PRICE_PLACES))
    return event, cumulative, average


def apply_report(
    *,
    status: OrderStatus,
    quantity: Decimal,
    filled_quantity: Decimal,
    average_price: Decimal | None,
    seen_exec_ids: set[str],
    report: ExecutionReport,
    reported_by: str,
    received_at: datetime,
    guards: ReportGuards | None = None,
    replacing: Decimal | None = None,
    replace_semantics: bool = False,
    executions: Sequence[Execution] | None = None,
) -> ReportOutcome:
    """Decide what one execution report does to an order.

    A repeated ExecID is a duplicate and changes nothing. A trade that would take the cumulative
    quantity past the order quantity, a trade without a price, or a report the order's status
    does not accept is refused (and the caller flags it). With `guards` (the v2 order), a report
    on an order not at a venue, and a fill through the limit, not in whole lots or outside the
    price band, are refused too; without them (the first workflow's recorded histories) those
    are not checked, so old histories replay as they ran.

    `replacing` is the quantity a pending replace request asks for (None: none is pending).
    With `replace_semantics` (orders that can be amended), `replaced`, `pending_replace` and
    `replace_rejected` answer that request and are refused without one; `replaced` gives the
    order its new quantity (leaves are the new quantity less the filled, and an order whose new
    quantity is already filled is filled). Without it, replace reports change nothing, as the
    histories recorded before amend existed took them.

    With `executions` (the order's applied reports), `trade_cancel` and `trade_correct` change
    the trade their `exec_ref_id` names: at the venue the cumulative quantity and average follow
    (a bust can take a partially filled order back to working, a correction can fill it); once
    the order is allocated nothing booked changes and the event says so (the caller flags it for
    middle office). Without it they are refused.
    """
    if report.exec_id in seen_exec_ids:
        return ReportOutcome(
            ReportVerdict.DUPLICATE, reason=f"exec_id {report.exec_id} already applied"
        )
    if report.exec_type in _TRADE_CHANGES:
        return _apply_trade_change(
            status=status,
            quantity=quantity,
            filled_quantity=filled_quantity,
            average_price=average_price,
            report=report,
            reported_by=reported_by,
            received_at=received_at,
            guards=guards,
            executions=executions,
        )
    if guards is not None and status not in AT_VENUE:
        # Every venue event of the status table starts at a venue; reports that raise no event
        # (done_for_day, replaced, ...) must not slip past it on an order never released or
        # already done there.
        return _refused(
            f"a {report.exec_type.value} report is not allowed while the order is "
            f"{status.value}: it is not at a venue",
            "exec_type",
        )
    cumulative, avg = filled_quantity, average_price
    if report.exec_type is ExecType.TRADE:
        if report.last_quantity <= 0 or report.last_price is None:
            return ReportOutcome(
                ReportVerdict.REFUSED,
                reason="a trade needs a positive last_quantity and a last_price",
                field="last_price" if report.last_quantity > 0 else "last_quantity",
            )
        if guards is not None:
            problem = _fill_problem(
                guards, report.last_quantity, report.last_price, quantity - filled_quantity
            )
            if problem is not None:
                return problem
        cumulative = filled_quantity + report.last_quantity
        if cumulative > quantity:
            return ReportOutcome(
                ReportVerdict.REFUSED,
                reason=f"overfill: cumulative {cumulative} would exceed order quantity {quantity}",
                field="last_quantity",
            )
        previous_value = filled_quantity * (average_price or Decimal(0))
        avg = tidy(
            ((previous_value + report.last_quantity * report.last_price) / cumulative).quantize(
                AVERAGE_PRICE_PLACES
            )
        )
    elif report.last_quantity != 0:
        return ReportOutcome(
            ReportVerdict.REFUSED,
            reason=f"a {report.exec_type.value} report carries no last_quantity",
            field="last_quantity",
        )
    if not replace_semantics and report.exec_type is ExecType.REPLACE_REJECTED:
        return _refused("replace_rejected is not understood by this order", "exec_type")
    if replace_semantics and report.exec_type in _REPLACE_REPORTS and replacing is None:
        return _refused(
            f"a {report.exec_type.value} report needs a replace request, and none is pending "
            f"(the order is {status.value})",
            "exec_type",
        )
    if not replace_semantics:
        replacing = None
    event = _event_for(report, status, cumulative, quantity, replacing)
    if event is not None and not allows(status, event):
        return ReportOutcome(
            ReportVerdict.REFUSED,
            reason=f"a {report.exec_type.value} report is not allowed while the order is {status.value}",
            field="exec_type",
        )
    terminal = event in CLOSED_BY_VENUE
    if replacing is not None and event in REPLACED_EVENTS:
        quantity = max(replacing, cumulative)
    execution = Execution(
        exec_id=report.exec_id,
        exec_type=report.exec_type,
        last_quantity=report.last_quantity,
        last_price=report.last_price,
        cumulative_quantity=cumulative,
        leaves_quantity=Decimal(0) if terminal else quantity - cumulative,
        average_price=avg,
        text=report.text,
        transact_time=report.transact_time,
        received_at=received_at,
        reported_by=reported_by,
    )
    return ReportOutcome(ReportVerdict.APPLIED, event=event, execution=execution)


def _apply_trade_change(
    *,
    status: OrderStatus,
    quantity: Decimal,
    filled_quantity: Decimal,
    average_price: Decimal | None,
    report: ExecutionReport,
    reported_by: str,
    received_at: datetime,
    guards: ReportGuards | None,
    executions: Sequence[Execution] | None,
) -> ReportOutcome:
    if executions is None:
        return _refused(f"{report.exec_type.value} is not understood by this order", "exec_type")
    if status not in AT_VENUE and status not in ALLOCATED_OPEN:
        return _refused(
            f"a {report.exec_type.value} report is not allowed while the order is {status.value}",
            "exec_type",
        )
    change = _trade_change(
        status=status,
        quantity=quantity,
        filled_quantity=filled_quantity,
        average_price=average_price,
        report=report,
        executions=executions,
        guards=guards,
    )
    if isinstance(change, ReportOutcome):
        return change
    event, cumulative, average = change
    if not allows(status, event):
        return _refused(
            f"a {report.exec_type.value} report is not allowed while the order is {status.value}",
            "exec_type",
        )
    at_venue = status in AT_VENUE
    return ReportOutcome(
        ReportVerdict.APPLIED,
        event=event,
        execution=Execution(
            exec_id=report.exec_id,
            exec_type=report.exec_type,
            last_quantity=report.last_quantity,
            last_price=report.last_price,
            cumulative_quantity=cumulative,
            leaves_quantity=quantity - cumulative if at_venue else Decimal(0),
            average_price=average,
            text=report.text,
            transact_time=report.transact_time,
            received_at=received_at,
            reported_by=reported_by,
            exec_ref_id=report.exec_ref_id,
        ),
    )


def apply_report_to(
    state: OrderState, report: ExecutionReport, reported_by: str, received_at: datetime
) -> ReportOutcome:
    """Decide what `report` does to the order `state` (see `apply_report`)."""
    return apply_report(
        status=state.status,
        quantity=state.quantity,
        filled_quantity=state.filled_quantity,
        average_price=state.average_price,
        seen_exec_ids={e.exec_id for e in state.executions},
        report=report,
        reported_by=reported_by,
        received_at=received_at,
    )
