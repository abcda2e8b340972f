"""The simulated venue's per-order scenarios (asked for in `notes`) reach it through the order."""

from __future__ import annotations

from typing import Any

from domain.models import ExecType, OrderStatus
from tests.workflows.conftest import Desk, OrderHandle, wait_for_status
from tests.workflows.test_order_workflow import approve_as
from workflows.messages import CancelInput, ReleaseInput
from workflows.order import OrderWorkflow


async def released(desk: Desk, **fields: Any) -> OrderHandle:
    handle = await desk.start(quantity="90", **fields)
    await wait_for_status(handle, OrderStatus.PENDING_APPROVAL)
    await handle.execute_update(OrderWorkflow.approve, approve_as("dana"))
    await handle.execute_update(OrderWorkflow.release, ReleaseInput(user="tom", venue="simulator"))
    return handle


async def test_a_rejecting_venue_ends_the_order_venue_rejected(desk: Desk) -> None:
    handle = await released(desk, notes="please sim:reject")
    assert (await handle.result()).status is OrderStatus.VENUE_REJECTED


async def test_partial_fills_over_time_then_settled(desk: Desk) -> None:
    handle = await released(desk, notes="sim:partial=3")
    state = await wait_for_status(handle, OrderStatus.SETTLED, within=30)
    trades = [e for e in state.executions if e.exec_type is ExecType.TRADE]
    assert [t.last_quantity for t in trades] == [30, 30, 30]


async def test_a_buy_limited_below_the_market_rests_working(desk: Desk) -> None:
    handle = await released(desk, order_type="limit", limit_price="100")
    state = await wait_for_status(handle, OrderStatus.WORKING)
    assert state.filled_quantity == 0
    await handle.execute_update(OrderWorkflow.cancel, CancelInput(user="tom", reason="done"))
    assert (await handle.result()).status is OrderStatus.CANCELED
