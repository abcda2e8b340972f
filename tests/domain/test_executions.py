"""Applying execution reports: FIX semantics, duplicates, overfills and status checks."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from domain.executions import (
    AVERAGE_PRICE_PLACES,
    ExecutionReport,
    ReportOutcome,
    ReportVerdict,
    apply_report,
)
from domain.models import ExecType, OrderStatus
from domain.status import OrderEvent

S = OrderStatus
T0 = datetime(2025, 3, 14, 14, 30, tzinfo=UTC)
RECEIVED = datetime(2025, 3, 14, 14, 30, 1, tzinfo=UTC)


def _report(exec_type: ExecType, exec_id: str = "x-1", **fields: Any) -> ExecutionReport:
    return ExecutionReport.model_validate(
        {
            "order_id": "ord_1",
            "exec_id": exec_id,
            "exec_type": exec_type,
            "transact_time": T0,
            **fields,
        }
    )


def _trade(qty: str, price: str, exec_id: str = "x-1") -> ExecutionReport:
    return _report(ExecType.TRADE, exec_id, last_quantity=Decimal(qty), last_price=Decimal(price))


def _apply(
    report: ExecutionReport,
    *,
    status: OrderStatus = S.WORKING,
    quantity: str = "1000",
    filled: str = "0",
    average: str | None = None,
    seen: set[str] | None = None,
) -> ReportOutcome:
    return apply_report(
        status=status,
        quantity=Decimal(quantity),
        filled_quantity=Decimal(filled),
        average_price=Decimal(average) if average is not None else None,
        seen_exec_ids=seen or set(),
        report=report,
        reported_by="sim-venue",
        received_at=RECEIVED,
    )


def test_new_is_venue_accepted() -> None:
    outcome = _apply(_report(ExecType.NEW, text="ack"), status=S.RELEASED)
    assert outcome.verdict is ReportVerdict.APPLIED
    assert outcome.event is OrderEvent.VENUE_ACCEPTED
    assert outcome.reason == ""
    execution = outcome.execution
    assert execution is not None
    assert execution.exec_id == "x-1"
    assert execution.exec_type is ExecType.NEW
    assert execution.last_quantity == 0
    assert execution.last_price is None
    assert execution.cumulative_quantity == 0
    assert execution.leaves_quantity == Decimal(1000)
    assert execution.average_price is None
    assert execution.text == "ack"
    assert execution.transact_time == T0
    assert execution.received_at == RECEIVED
    assert execution.reported_by == "sim-venue"


def test_partial_fill() -> None:
    outcome = _apply(_trade("300", "10.00"), status=S.WORKING)
    assert outcome.verdict is ReportVerdict.APPLIED
    assert outcome.event is OrderEvent.PARTIAL_FILL
    execution = outcome.execution
    assert execution is not None
    assert execution.last_quantity == 300
    assert execution.last_price == Decimal("10.00")
    assert execution.cumulative_quantity == 300
    assert execution.leaves_quantity == 700
    assert execution.average_price == Decimal("10.00000000")


def test_second_partial_then_full_fill_weighted_average() -> None:
    second = _apply(
        _trade("200", "10.30", "x-2"), status=S.PARTIALLY_FILLED, filled="300", average="10.00"
    )
    assert second.event is OrderEvent.PARTIAL_FILL
    assert second.execution is not None
    assert second.execution.cumulative_quantity == 500
    assert second.execution.leaves_quantity == 500
    # (300 * 10.00 + 200 * 10.30) / 500 = 10.12
    assert second.execution.average_price == Decimal("10.12")

    last = _apply(
        _trade("500", "10.01", "x-3"),
        status=S.PARTIALLY_FILLED,
        filled="500",
        average="10.12",
        seen={"x-1", "x-2"},
    )
    assert last.verdict is ReportVerdict.APPLIED
    assert last.event is OrderEvent.FILL
    assert last.execution is not None
    assert last.execution.cumulative_quantity == 1000
    assert last.execution.leaves_quantity == 0
    # (500 * 10.12 + 500 * 10.01) / 1000 = 10.065
    assert last.execution.average_price == Decimal("10.065")


def test_single_full_fill_from_released() -> None:
    outcome = _apply(_trade("1000", "99.5"), status=S.RELEASED)
    assert outcome.event is OrderEvent.FILL
    assert outcome.execution is not None
    assert outcome.execution.leaves_quantity == 0


def test_average_price_is_quantized_to_eight_places() -> None:
    # (1 * 10 + 2 * 11) / 3 = 10.6666...
    outcome = _apply(_trade("2", "11", "x-2"), quantity="3", filled="1", average="10")
    assert outcome.execution is not None
    average = outcome.execution.average_price
    assert average == Decimal("10.66666667")
    assert average is not None
    assert average.as_tuple().exponent == AVERAGE_PRICE_PLACES.as_tuple().exponent == -8


def test_fill_while_pending_cancel() -> None:
    partial = _apply(_trade("100", "10"), status=S.PENDING_CANCEL)
    assert partial.verdict is ReportVerdict.APPLIED
    assert partial.event is OrderEvent.PARTIAL_FILL
    full = _apply(_trade("1000", "10"), status=S.PENDING_CANCEL)
    assert full.event is OrderEvent.FILL


def test_duplicate_exec_id_changes_nothing() -> None:
    outcome = _apply(_trade("100", "10", "x-1"), seen={"x-1"})
    assert outcome.verdict is ReportVerdict.DUPLICATE
    assert outcome.event is None
    assert outcome.execution is None
    assert "x-1" in outcome.reason


def test_duplicate_wins_over_other_refusals() -> None:
    # Even a report that would overfill is only a duplicate when its ExecID was already applied.
    outcome = _apply(_trade("5000", "10", "x-1"), seen={"x-1"})
    assert outcome.verdict is ReportVerdict.DUPLICATE


@pytest.mark.parametrize(
    ("filled", "qty"),
    [("0", "1001"), ("900", "101"), ("1000", "1")],
)
def test_overfill_is_refused(filled: str, qty: str) -> None:
    status = S.WORKING if filled == "0" else S.PARTIALLY_FILLED
    outcome = _apply(_trade(qty, "10"), status=status, filled=filled, average="10")
    assert outcome.verdict is ReportVerdict.REFUSED
    assert "overfill" in outcome.reason
    assert outcome.field == "last_quantity"
    assert outcome.event is None
    assert outcome.execution is None


def test_fill_exactly_to_quantity_is_not_an_overfill() -> None:
    outcome = _apply(_trade("100", "10"), status=S.PARTIALLY_FILLED, filled="900", average="10")
    assert outcome.verdict is ReportVerdict.APPLIED
    assert outcome.event is OrderEvent.FILL


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        pytest.param({"last_quantity": Decimal(100)}, "last_price", id="no-price"),
        pytest.param({"last_price": Decimal(10)}, "last_quantity", id="no-quantity"),
        pytest.param(
            {"last_quantity": Decimal(0), "last_price": Decimal(10)},
            "last_quantity",
            id="zero-quantity",
        ),
    ],
)
def test_trade_without_price_or_quantity_is_refused(fields: dict[str, Any], field: str) -> None:
    outcome = _apply(_report(ExecType.TRADE, **fields))
    assert outcome.verdict is ReportVerdict.REFUSED
    assert outcome.field == field
    assert "last_quantity" in outcome.reason
    assert "last_price" in outcome.reason
    assert outcome.execution is None


@pytest.mark.parametrize(
    "exec_type",
    # Busts and corrections name a trade: tests/domain/test_trade_changes.py.
    [
        t
        for t in ExecType
        if t not in (ExecType.TRADE, ExecType.TRADE_CANCEL, ExecType.TRADE_CORRECT)
    ],
    ids=lambda t: t.value,
)
def test_non_trade_with_last_quantity_is_refused(exec_type: ExecType) -> None:
    outcome = _apply(_report(exec_type, last_quantity=Decimal(5)))
    assert outcome.verdict is ReportVerdict.REFUSED
    assert "carries no last_quantity" in outcome.reason
    assert outcome.field == "last_quantity"
    assert exec_type.value in outcome.reason


@pytest.mark.parametrize(
    ("report", "status"),
    [
        pytest.param(_trade("100", "10"), S.APPROVED, id="trade-while-approved"),
        pytest.param(_trade("100", "10"), S.PENDING_APPROVAL, id="trade-pre-approval"),
        pytest.param(_trade("100", "10"), S.CANCELED, id="trade-after-cancel"),
        pytest.param(_trade("100", "10"), S.EXPIRED, id="trade-after-expiry"),
        pytest.param(_trade("100", "10"), S.VENUE_REJECTED, id="trade-after-reject"),
        pytest.param(_report(ExecType.NEW), S.WORKING, id="new-while-working"),
        pytest.param(_report(ExecType.NEW), S.APPROVED, id="new-before-release"),
        pytest.param(_report(ExecType.REJECTED), S.WORKING, id="rejected-while-working"),
        pytest.param(_report(ExecType.CANCELED), S.APPROVED, id="canceled-before-release"),
        pytest.param(_report(ExecType.EXPIRED), S.FILLED, id="expired-after-fill"),
        pytest.param(_report(ExecType.CANCEL_REJECTED), S.WORKING, id="cancel-rej-no-request"),
        pytest.param(_report(ExecType.PENDING_CANCEL), S.FILLED, id="pending-cancel-filled"),
    ],
)
def test_report_not_allowed_in_status_is_refused(
    report: ExecutionReport, status: OrderStatus
) -> None:
    outcome = _apply(report, status=status, filled="1000" if status is S.FILLED else "0")
    assert outcome.verdict is ReportVerdict.REFUSED
    assert "not allowed" in outcome.reason
    assert outcome.field == "exec_type"
    assert status.value in outcome.reason
    assert outcome.execution is None


@pytest.mark.parametrize(
    ("exec_type", "status", "event"),
    [
        (ExecType.CANCELED, S.WORKING, OrderEvent.VENUE_CANCELED),
        (ExecType.CANCELED, S.PENDING_CANCEL, OrderEvent.VENUE_CANCELED),
        (ExecType.EXPIRED, S.WORKING, OrderEvent.VENUE_EXPIRED),
        (ExecType.REJECTED, S.RELEASED, OrderEvent.VENUE_REJECTED),
    ],
)
def test_terminal_reports_leave_nothing(
    exec_type: ExecType, status: OrderStatus, event: OrderEvent
) -> None:
    outcome = _apply(_report(exec_type), status=status)
    assert outcome.verdict is ReportVerdict.APPLIED
    assert outcome.event is event
    assert outcome.execution is not None
    assert outcome.execution.leaves_quantity == 0


def test_canceled_after_partial_fill_keeps_cumulative() -> None:
    outcome = _apply(
        _report(ExecType.CANCELED), status=S.PENDING_CANCEL, filled="400", average="10.5"
    )
    assert outcome.event is OrderEvent.VENUE_CANCELED
    assert outcome.execution is not None
    assert outcome.execution.cumulative_quantity == 400
    assert outcome.execution.leaves_quantity == 0
    assert outcome.execution.average_price == Decimal("10.5")


def test_pending_cancel_report() -> None:
    first = _apply(_report(ExecType.PENDING_CANCEL), status=S.WORKING)
    assert first.verdict is ReportVerdict.APPLIED
    assert first.event is OrderEvent.CANCEL_REQUESTED
    # Already pending cancel: recorded, no event.
    again = _apply(_report(ExecType.PENDING_CANCEL, "x-2"), status=S.PENDING_CANCEL)
    assert again.verdict is ReportVerdict.APPLIED
    assert again.event is None
    assert again.execution is not None


def test_cancel_rejected_without_fills_goes_back_to_working() -> None:
    outcome = _apply(_report(ExecType.CANCEL_REJECTED, text="too late"), status=S.PENDING_CANCEL)
    assert outcome.verdict is ReportVerdict.APPLIED
    assert outcome.event is OrderEvent.CANCEL_REJECTED
    assert outcome.execution is not None
    assert outcome.execution.leaves_quantity == 1000
    assert outcome.execution.text == "too late"


def test_cancel_rejected_with_fills_goes_back_to_partially_filled() -> None:
    outcome = _apply(
        _report(ExecType.CANCEL_REJECTED), status=S.PENDING_CANCEL, filled="250", average="9.9"
    )
    assert outcome.verdict is ReportVerdict.APPLIED
    assert outcome.event is OrderEvent.CANCEL_REJECTED_AFTER_FILLS
    assert outcome.execution is not None
    assert outcome.execution.cumulative_quantity == 250
    assert outcome.execution.leaves_quantity == 750


@pytest.mark.parametrize("exec_type", [ExecType.DONE_FOR_DAY, ExecType.REPLACED])
def test_informational_reports_raise_no_event(exec_type: ExecType) -> None:
    outcome = _apply(_report(exec_type), status=S.WORKING)
    assert outcome.verdict is ReportVerdict.APPLIED
    assert outcome.event is None
    assert outcome.execution is not None
    assert outcome.execution.leaves_quantity == 1000


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"last_quantity": Decimal(-1)}, id="negative-quantity"),
        pytest.param({"last_price": Decimal(0)}, id="zero-price"),
        pytest.param({"last_price": Decimal("NaN")}, id="nan-price"),
        pytest.param({"transact_time": datetime(2025, 3, 14, 14, 30)}, id="naive-time"),  # noqa: DTZ001
        pytest.param({"exec_id": ""}, id="empty-exec-id"),
        pytest.param({"venue": "x"}, id="extra-field"),
    ],
)
def test_execution_report_validation(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        _report(ExecType.TRADE, **fields)
