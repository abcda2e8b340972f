"""Busts and corrections on a live order: before allocation they change its fills; after, flagged."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlmodel import select
from temporalio.client import WorkflowUpdateFailedError

from db.engine import SessionFactory
from db.tables import ExecutionRow
from domain.models import ExecType, OrderStatus
from domain.order import FlagKind
from domain.status import OrderEvent
from tests.workflows.conftest import Desk, OrderHandle, settle_all, wait_for_status
from tests.workflows.test_amend import working
from tests.workflows.test_order_workflow import report_input
from tests.workflows.test_replay import replays
from workflows.messages import ExecutionReportResult
from workflows.order import OrderWorkflow


async def send(
    desk: Desk,
    handle: OrderHandle,
    exec_id: str,
    exec_type: ExecType,
    qty: str = "0",
    price: str | None = None,
    ref: str | None = None,
) -> ExecutionReportResult:
    now = await desk.env.get_current_time()  # the order's clock: time is skipped
    update = report_input(
        handle.id.removeprefix("order:"), exec_id, exec_type, qty, price, now, exec_ref_id=ref
    )
    result: ExecutionReportResult = await handle.execute_update(
        OrderWorkflow.execution_report, update
    )
    return result


async def test_a_bust_reopens_the_order_and_a_correction_fills_it(
    desk: Desk, layer_sessions: SessionFactory
) -> None:
    handle = await working(desk, quantity="1000")
    await send(desk, handle, "t-1", ExecType.TRADE, "400", "230")
    await send(desk, handle, "t-2", ExecType.TRADE, "300", "231")
    busted = await send(desk, handle, "t-3", ExecType.TRADE_CANCEL, ref="t-2")
    assert busted.verdict.value == "applied"
    assert (busted.status, busted.filled_quantity, busted.leaves_quantity) == (
        OrderStatus.PARTIALLY_FILLED,
        Decimal(400),
        Decimal(600),
    )
    assert busted.average_price == Decimal(230)
    again = await send(desk, handle, "t-4", ExecType.TRADE_CANCEL, ref="t-2")
    assert again.verdict.value == "refused" and "busted already" in again.reason
    corrected = await send(desk, handle, "t-5", ExecType.TRADE_CORRECT, "1000", "229", ref="t-1")
    assert (corrected.status, corrected.filled_quantity) == (OrderStatus.FILLED, Decimal(1000))
    state = await wait_for_status(handle, OrderStatus.SETTLEMENT_PENDING)
    assert state.average_price == Decimal(229)
    assert [(a.quantity, a.price) for a in state.allocations] == [(Decimal(1000), Decimal(229))]
    kinds = [e.kind for e in state.events]
    assert OrderEvent.TRADE_BUSTED_AFTER_FILLS in kinds
    assert OrderEvent.TRADE_CORRECTED_TO_FILLED in kinds

    # Booked: a bust now changes nothing booked, and middle office is told.
    late = await send(desk, handle, "t-6", ExecType.TRADE_CANCEL, ref="t-1")
    assert late.verdict.value == "applied" and late.filled_quantity == Decimal(1000)
    state = await handle.query(OrderWorkflow.state)
    (flag,) = [f for f in state.flags if f.kind is FlagKind.TRADE_CHANGED_AFTER_ALLOCATION]
    assert "t-1" in flag.message and "middle office" in flag.message
    assert state.status is OrderStatus.SETTLEMENT_PENDING
    assert [(a.quantity, a.price) for a in state.allocations] == [(Decimal(1000), Decimal(229))]
    await settle_all(handle)
    # The read model keeps which trade each bust or correction changed.
    with layer_sessions() as session:
        rows = session.exec(
            select(ExecutionRow).where(ExecutionRow.order_id == handle.id.removeprefix("order:"))
        ).all()
    assert {r.exec_id: r.exec_ref_id for r in rows if r.exec_ref_id} == {
        "t-3": "t-2",
        "t-5": "t-1",
        "t-6": "t-1",
    }
    await replays(handle, "v2_order_bust_correct_and_late_bust")


async def test_a_bust_can_take_the_order_back_to_working(desk: Desk) -> None:
    handle = await working(desk, quantity="100")
    await send(desk, handle, "w-1", ExecType.TRADE, "40", "230")
    busted = await send(desk, handle, "w-2", ExecType.TRADE_CANCEL, ref="w-1")
    assert (busted.status, busted.filled_quantity, busted.average_price) == (
        OrderStatus.WORKING,
        Decimal(0),
        None,
    )
    with pytest.raises(WorkflowUpdateFailedError) as duplicate:  # dropped by the validator
        await send(desk, handle, "w-2", ExecType.TRADE_CANCEL, ref="w-1")
    assert "already applied" in str(duplicate.value.cause)
    canceled = await send(desk, handle, "w-3", ExecType.CANCELED)
    assert canceled.status is OrderStatus.CANCELED
