"""Day and gtd orders not released in time expire; the close comes from the exchange calendar."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

import pytest

from activities.trading_day import session_close
from domain.models import AssetClass, ExecType, OrderStatus
from domain.portfolio import InstrumentData, MarketHours
from tests.workflows.conftest import Desk, wait_for_status
from tests.workflows.test_order_workflow import approve_as, report_input
from tests.workflows.test_replay import replays
from workflows.messages import ReleaseInput
from workflows.order import OrderWorkflow

XNYS = MarketHours(
    market="XNYS", timezone="America/New_York", opens=time(9, 30), closes=time(16, 0)
)
AAPL = InstrumentData(
    symbol="AAPL", asset_class=AssetClass.EQUITY, currency="USD", reference_price=Decimal(230)
)


@pytest.mark.parametrize(
    ("at", "closes"),
    [
        ("2026-11-25T15:00:00+00:00", "2026-11-25T21:00:00+00:00"),  # a Wednesday: 16:00 ET
        ("2026-11-26T15:00:00+00:00", "2026-11-27T18:00:00+00:00"),  # Thanksgiving: Friday's
        ("2026-11-27T17:59:00+00:00", "2026-11-27T18:00:00+00:00"),  # early close, 13:00 ET
        ("2026-11-27T18:00:00+00:00", "2026-11-30T21:00:00+00:00"),  # after it: Monday's
        ("2026-12-24T12:00:00+00:00", "2026-12-24T18:00:00+00:00"),  # Christmas Eve, early
        ("2026-07-01T15:00:00+00:00", "2026-07-01T20:00:00+00:00"),  # summer time: 16:00 EDT
    ],
)
def test_a_day_orders_close_by_the_exchange_calendar(at: str, closes: str) -> None:
    equity = AAPL.model_copy(update={"hours": XNYS})
    assert session_close(equity, datetime.fromisoformat(at)) == datetime.fromisoformat(closes)


def test_fx_closes_at_five_in_new_york_on_weekdays_and_crypto_at_midnight_utc() -> None:
    fx = AAPL.model_copy(update={"symbol": "EURUSD", "asset_class": AssetClass.FX_SPOT})
    friday_evening = datetime(2026, 11, 27, 23, 0, tzinfo=UTC)
    assert session_close(fx, friday_evening) == datetime(2026, 11, 30, 22, 0, tzinfo=UTC)
    crypto = AAPL.model_copy(update={"symbol": "BTC-USD", "asset_class": AssetClass.CRYPTO})
    assert session_close(crypto, friday_evening) == datetime(2026, 11, 28, 0, 0, tzinfo=UTC)
    assert session_close(AAPL, friday_evening) is None  # no market known: no close


async def test_a_day_order_not_released_by_the_close_expires(desk: Desk) -> None:
    handle = await desk.start(quantity="10", time_in_force="day")
    state = await wait_for_status(handle, OrderStatus.PENDING_APPROVAL)
    ends = state.time_in_force_ends_at
    assert ends is not None
    created = state.created_at
    assert timedelta(0) < ends - created <= timedelta(days=4)  # the next close, a weekend at most
    await handle.execute_update(OrderWorkflow.approve, approve_as("dana"))
    await desk.env.sleep(ends - await desk.env.get_current_time() + timedelta(seconds=1))
    assert (await handle.result()).status is OrderStatus.EXPIRED
    state = await handle.query(OrderWorkflow.state)
    assert "day order not released by" in state.status_reason
    assert "market closed" in state.status_reason
    await replays(handle, "v2_order_day_expired_before_release")


async def test_a_gtd_order_expires_at_its_time(desk: Desk) -> None:
    now = await desk.env.get_current_time()
    handle = await desk.start(
        quantity="10", time_in_force="gtd", expire_at=now + timedelta(hours=2)
    )
    state = await wait_for_status(handle, OrderStatus.PENDING_APPROVAL)
    assert state.time_in_force_ends_at == now + timedelta(hours=2)
    await handle.execute_update(OrderWorkflow.approve, approve_as("dana"))
    await desk.env.sleep(timedelta(hours=2, seconds=1))
    assert (await handle.result()).status is OrderStatus.EXPIRED
    state = await handle.query(OrderWorkflow.state)
    assert "gtd order not released by" in state.status_reason
    await replays(handle, "v2_order_gtd_expired")


async def test_a_day_order_at_the_venue_is_canceled_there_at_the_close_and_ends_expired(
    desk: Desk,
) -> None:
    handle = await desk.start(quantity="10", time_in_force="day")
    state = await wait_for_status(handle, OrderStatus.PENDING_APPROVAL)
    ends = state.time_in_force_ends_at
    assert ends is not None
    await handle.execute_update(OrderWorkflow.approve, approve_as("dana"))
    await handle.execute_update(OrderWorkflow.release, ReleaseInput(user="tom", venue="manual"))
    order_id = handle.id.removeprefix("order:")
    now = await desk.env.get_current_time()
    acknowledged = await handle.execute_update(
        OrderWorkflow.execution_report,
        report_input(order_id, "ack-1", ExecType.NEW, transact_time=now),
    )
    assert acknowledged.status is OrderStatus.WORKING
    await desk.env.sleep(ends - await desk.env.get_current_time() + timedelta(seconds=1))
    state = await wait_for_status(handle, OrderStatus.PENDING_CANCEL)
    assert state.status_reason == "a day order: its market closed"
    now = await desk.env.get_current_time()
    confirmed = await handle.execute_update(
        OrderWorkflow.execution_report,
        report_input(order_id, "out-1", ExecType.CANCELED, transact_time=now),
    )
    assert confirmed.status is OrderStatus.EXPIRED
    assert (await handle.result()).status is OrderStatus.EXPIRED
    await replays(handle, "v2_order_day_expired_at_the_venue")
