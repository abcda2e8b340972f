"""Reconciliation: after the venue adapter restarts, orders working there compare themselves with it."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from sqlalchemy import text

from db.engine import SessionFactory
from domain.models import ExecType, OrderStatus
from domain.order import FlagKind, Order
from domain.status import OrderEvent
from tests.workflows.conftest import Desk, OrderHandle, wait_for_status
from tests.workflows.test_order_workflow import approve_as, report
from venues.reconcile import reconcile_orders_at
from workflows.messages import CancelInput, ReconcileInput, ReleaseInput
from workflows.order import OrderWorkflow


async def resting(desk: Desk, venue: str = "simulator") -> OrderHandle:
    """A buy limited far below the market: it rests at the simulator, working, unfilled."""
    handle = await desk.start(quantity="10", order_type="limit", limit_price=Decimal(100))
    await wait_for_status(handle, OrderStatus.PENDING_APPROVAL)
    await handle.execute_update(OrderWorkflow.approve, approve_as("dana"))
    await handle.execute_update(OrderWorkflow.release, ReleaseInput(user="tom", venue=venue))
    if venue == "simulator":
        await wait_for_status(handle, OrderStatus.WORKING)
    return handle


async def checked(handle: OrderHandle, checks_before: int, within: float = 15) -> Order:
    """Wait until the order has asked the venue once more (a reconciliation ran)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        state = await handle.query(OrderWorkflow.state)
        checks = [e for e in state.events if e.kind is OrderEvent.VENUE_STATUS_CHECKED]
        if len(checks) > checks_before:
            return state
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the order never asked the venue")
        await asyncio.sleep(0.05)


def status_checks(state: Order) -> int:
    return sum(1 for e in state.events if e.kind is OrderEvent.VENUE_STATUS_CHECKED)


async def test_a_restarted_adapter_reconciles_and_every_difference_is_flagged(
    desk: Desk, layer_sessions: SessionFactory
) -> None:
    agrees = await resting(desk)
    differs = await resting(desk)
    differs_id = differs.id.removeprefix("order:")
    # While the adapter was down the venue canceled the order after a fill of 5 (the reports
    # never came): its view and the OMS's now differ.
    with layer_sessions() as session:
        session.execute(
            text(
                "UPDATE sim_venue_orders SET filled = 5, state = 'canceled', next_step_at = NULL"
                " WHERE cl_ord_id = :id"
            ),
            {"id": differs_id},
        )
        session.commit()
    before = {h.id: status_checks(await h.query(OrderWorkflow.state)) for h in (agrees, differs)}

    asked = await reconcile_orders_at(desk.client, layer_sessions, "simulator")
    assert asked >= 2

    state = await checked(differs, before[differs.id])
    flags = [f for f in state.flags if f.kind is FlagKind.VENUE_MISMATCH]
    assert [f.message for f in flags] == [
        "simulator has 5 filled, the order 0",
        "simulator says the order is canceled; it is working here",
    ]
    assert state.status is OrderStatus.WORKING  # flagged for the trader, not guessed at
    state = await checked(agrees, before[agrees.id])
    assert not [f for f in state.flags if f.kind is FlagKind.VENUE_MISMATCH]

    # Close both (the shared server's later clock skips fire every open order's timers): the
    # venue's book says `differs` is done, so its cancel is refused; the trader books it by hand.
    for handle in (agrees, differs):
        await handle.execute_update(OrderWorkflow.cancel, CancelInput(user="tom", reason="done"))
    await wait_for_status(agrees, OrderStatus.CANCELED)
    await wait_for_status(differs, OrderStatus.WORKING)
    await report(desk, differs, "rec-closed", ExecType.CANCELED)
    assert (await differs.result()).status is OrderStatus.CANCELED


async def test_orders_at_another_venue_are_not_asked(
    desk: Desk, layer_sessions: SessionFactory
) -> None:
    manual = await resting(desk, venue="manual")
    await reconcile_orders_at(desk.client, layer_sessions, "simulator")
    await manual.signal(OrderWorkflow.reconcile, ReconcileInput(venue="simulator"))
    await asyncio.sleep(0.5)
    state = await manual.query(OrderWorkflow.state)
    assert status_checks(state) == 0 and not state.flags
    await manual.execute_update(OrderWorkflow.cancel, CancelInput(user="tom", reason="done"))
    await report(desk, manual, "rec-manual-closed", ExecType.CANCELED)
    assert (await manual.result()).status is OrderStatus.CANCELED
