"""Applying a venue's execution report to an order: FIX semantics, duplicate and overfill guards."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
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
    tidy,
)
from domain.status import CLOSED_BY_VENUE, OrderEvent, allows

# Average prices keep more places than any venue quotes, so the block's notional reproduces.
AVERAGE_PRICE_PLACES = Decimal("0.00000001")


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


def _event_for(
    report: ExecutionReport, status: OrderStatus, cumulative: Decimal, quantity: Decimal
) -> OrderEvent | None:
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
        case ExecType.CANCEL_REJECTED:
            return (
                OrderEvent.CANCEL_REJECTED_AFTER_FILLS
                if cumulative > 0
                else OrderEvent.CANCEL_REJECTED
            )
        case ExecType.DONE_FOR_DAY:
            return None
        case ExecType.REPLACED | ExecType.PENDING_REPLACE:
            return None
    return None


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
) -> ReportOutcome:
    """Decide what one execution report does to an order.

    A repeated ExecID is a duplicate and changes nothing. A trade that would take the cumulative
    quantity past the order quantity, a trade without a price, or a report the order's status
    does not accept is refused (and the caller flags it).
    """
    if report.exec_id in seen_exec_ids:
        return ReportOutcome(
            ReportVerdict.DUPLICATE, reason=f"exec_id {report.exec_id} already applied"
        )
    cumulative, avg = filled_quantity, average_price
    if report.exec_type is ExecType.TRADE:
        if report.last_quantity <= 0 or report.last_price is None:
            return ReportOutcome(
                ReportVerdict.REFUSED,
                reason="a trade needs a positive last_quantity and a last_price",
                field="last_price" if report.last_quantity > 0 else "last_quantity",
            )
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
    event = _event_for(report, status, cumulative, quantity)
    if event is not None and not allows(status, event):
        return ReportOutcome(
            ReportVerdict.REFUSED,
            reason=f"a {report.exec_type.value} report is not allowed while the order is {status.value}",
            field="exec_type",
        )
    terminal = event in CLOSED_BY_VENUE
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
