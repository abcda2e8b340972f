"""The simulated venue's per-order scenarios (asked for in `notes`) reach it through the order."""

from __future__ import annotations

import asyncio
from typing import Any

from domain.models import ExecType, OrderStatus
from domain.order import FlagKind
from domain.status import OrderEvent
from tests.workflows.conftest import Desk, OrderHandle, wait_for_status
from tests.workflows.test_amend import amend_as
from tests.workflows.test_order_workflow import approve_as
from tests.workflows.test_replay import replays
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
    await replays(handle, "v2_order_venue_rejected")


async def test_partial_fills_over_time_then_settled(desk: Desk) -> None:
    handle = await released(desk, notes="sim:partial=3")
    state = await wait_for_status(handle, OrderStatus.SETTLED, within=30)
    trades = [e for e in state.executions if e.exec_type is ExecType.TRADE]
    assert [t.last_quantity for t in trades] == [30, 30, 30]
    await replays(handle, "v2_order_partial_fills_settled")


async def test_a_buy_limited_below_the_market_rests_working(desk: Desk) -> None:
    handle = await released(desk, order_type="limit", limit_price="100")
    state = await wait_for_status(handle, OrderStatus.WORKING)
    assert state.filled_quantity == 0
    await handle.execute_update(OrderWorkflow.cancel, CancelInput(user="tom", reason="done"))
    assert (await handle.result()).status is OrderStatus.CANCELED


async def test_a_venue_that_refuses_the_cancel_leaves_the_order_working(desk: Desk) -> None:
    handle = await released(desk, order_type="limit", limit_price="100", notes="sim:cancel-reject")
    await wait_for_status(handle, OrderStatus.WORKING)
    state = await handle.execute_update(
        OrderWorkflow.cancel, CancelInput(user="tom", reason="stop")
    )
    assert state.status is OrderStatus.PENDING_CANCEL
    state = await wait_for_status(handle, OrderStatus.WORKING)  # cancel_rejected: back to work
    rejected = [e for e in state.executions if e.exec_type is ExecType.CANCEL_REJECTED]
    assert rejected and "sim:cancel-reject" in rejected[0].text
    assert OrderEvent.CANCEL_REJECTED in [e.kind for e in state.events]
    # It still trades: moved through the market, it fills.
    await handle.execute_update(
        OrderWorkflow.amend,
        await amend_as(desk, "alice", handle.id.removeprefix("order:"), limit_price="240"),
    )
    await wait_for_status(handle, OrderStatus.SETTLED, within=30)
    await replays(handle, "v2_order_cancel_rejected_then_amended_filled")


async def test_a_fill_that_crosses_the_cancel_request_is_booked(desk: Desk) -> None:
    handle = await released(desk, notes="sim:late-fill-after-cancel")
    await wait_for_status(handle, OrderStatus.WORKING)
    await handle.execute_update(OrderWorkflow.cancel, CancelInput(user="tom", reason="stop"))
    await wait_for_status(handle, OrderStatus.SETTLED, within=30)
    state = await handle.query(OrderWorkflow.state)
    kinds = [e.kind for e in state.events]
    # The fill came while the cancel was pending; the rest was canceled; the fill is booked.
    assert kinds.index(OrderEvent.CANCEL_REQUESTED) < kinds.index(OrderEvent.PARTIAL_FILL)
    assert kinds.index(OrderEvent.PARTIAL_FILL) < kinds.index(OrderEvent.VENUE_CANCELED)
    assert state.filled_quantity == 45 and [a.quantity for a in state.allocations] == [45]
    await replays(handle, "v2_order_late_fill_after_cancel")


async def test_a_bust_after_the_fill_is_flagged_for_middle_office(desk: Desk) -> None:
    handle = await released(desk, notes="sim:bust")
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        state = await handle.query(OrderWorkflow.state)
        flags = [f for f in state.flags if f.kind is FlagKind.TRADE_CHANGED_AFTER_ALLOCATION]
        if flags or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert flags, [e.kind for e in state.events]
    (bust,) = [e for e in state.executions if e.exec_type is ExecType.TRADE_CANCEL]
    trades = [e for e in state.executions if e.exec_type is ExecType.TRADE]
    assert bust.exec_ref_id == trades[-1].exec_id
    assert state.filled_quantity == 90  # booked as filled: middle office corrects the books
    await wait_for_status(handle, OrderStatus.SETTLED, within=30)
    await replays(handle, "v2_order_busted_after_allocation")
