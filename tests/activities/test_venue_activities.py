"""VenueActivities with the real simulator, reporting into a sink that records what it is sent."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

import worker
from activities.venue import CancelAtVenueInput, SubmitOrderInput, VenueActivities
from db.engine import SessionFactory
from domain.executions import ExecutionReport
from domain.models import ExecType, OrderType, Side, TimeInForce
from venues.base import VenueOrder
from venues.simulator import PriceSource, SimulatedVenue, fill_price

DELAY = 0.04
LISTINGS = {
    "AAPL": (Decimal("230.5"), Decimal(1)),
    "EURUSD": (Decimal("1.085"), Decimal(1000)),
}


class RecordingSink:
    """Where the simulator's execution reports go: kept, in arrival order."""

    def __init__(self) -> None:
        self.reports: list[ExecutionReport] = []
        self.reporters: set[str] = set()

    async def report(self, report: ExecutionReport, reported_by: str) -> None:
        self.reports.append(report)
        self.reporters.add(reported_by)

    def exec_types(self) -> list[ExecType]:
        return [r.exec_type for r in self.reports]


@dataclass
class Venue:
    sink: RecordingSink
    simulator: SimulatedVenue
    activities: VenueActivities
    env: ActivityEnvironment

    async def submit(self, order: VenueOrder, venue: str = "simulator") -> None:
        await self.env.run(self.activities.submit_order, SubmitOrderInput(venue=venue, order=order))

    async def cancel(self, order_id: str, venue: str = "simulator") -> None:
        await self.env.run(
            self.activities.cancel_at_venue, CancelAtVenueInput(venue=venue, order_id=order_id)
        )


@asynccontextmanager
async def open_venue(prices: PriceSource, delay: float = DELAY) -> AsyncIterator[Venue]:
    sink = RecordingSink()
    simulator = SimulatedVenue(sink, prices, delay_seconds=delay)
    try:
        yield Venue(
            sink, simulator, VenueActivities({simulator.name: simulator}), ActivityEnvironment()
        )
    finally:
        await simulator.close()


@pytest.fixture
async def venue() -> AsyncIterator[Venue]:
    async with open_venue(LISTINGS.get) as opened:
        yield opened


@pytest.fixture
async def slow_venue() -> AsyncIterator[Venue]:
    async with open_venue(LISTINGS.get, delay=0.3) as opened:
        yield opened


def venue_order(
    *,
    symbol: str = "AAPL",
    quantity: str = "1001",
    order_type: OrderType = OrderType.LIMIT,
    limit_price: str | None = "229.75",
    side: Side = Side.BUY,
) -> VenueOrder:
    return VenueOrder(
        order_id=f"ord_t{uuid.uuid4().hex[:16]}",
        fund="fund-alpha",
        symbol=symbol,
        side=side,
        quantity=Decimal(quantity),
        order_type=order_type,
        limit_price=Decimal(limit_price) if limit_price else None,
        time_in_force=TimeInForce.DAY,
    )


async def refusal(call: Awaitable[None]) -> ApplicationError:
    with pytest.raises(ApplicationError) as refused:
        await call
    assert refused.value.non_retryable is True
    return refused.value


async def filled_by(venue: Venue, order: VenueOrder, delay: float = DELAY) -> list[ExecutionReport]:
    """Wait until the simulator has acknowledged and filled the order (or given up)."""
    for _ in range(500):  # up to 10 s on a loaded machine; usually three delays
        if len(venue.sink.reports) >= 3:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(delay * 1.5)  # room for a report that should not come
    return [r for r in venue.sink.reports if r.order_id == order.order_id]


async def test_a_limit_order_is_acknowledged_then_filled_in_two_at_the_limit(venue: Venue) -> None:
    order = venue_order()
    await venue.submit(order)
    await venue.submit(order)  # a resend (retried activity) is recognised by its ClOrdID
    assert venue.sink.reports == []  # the venue answers later, not within the call

    reports = await filled_by(venue, order)

    assert [r.exec_type for r in reports] == [ExecType.NEW, ExecType.TRADE, ExecType.TRADE]
    new, *trades = reports
    assert (new.last_quantity, new.last_price) == (Decimal(0), None)
    assert [t.last_quantity for t in trades] == [Decimal(500), Decimal(501)]
    assert sum(t.last_quantity for t in trades) == order.quantity
    assert {t.last_price for t in trades} == {Decimal("229.75")}
    assert [r.exec_id for r in reports] == [f"SIM-{order.order_id}-{n}" for n in (1, 2, 3)]
    assert venue.sink.reporters == {"sim-venue"}
    assert all(r.transact_time.utcoffset() is not None for r in reports)

    await venue.submit(order)  # once the order is done, a resend still creates nothing
    await asyncio.sleep(DELAY * 2)
    assert len(venue.sink.reports) == 3


async def test_a_market_order_fills_at_the_reference_price(venue: Venue) -> None:
    order = venue_order(quantity="300", order_type=OrderType.MARKET, limit_price=None)
    await venue.submit(order)

    reports = await filled_by(venue, order)

    assert [r.exec_type for r in reports] == [ExecType.NEW, ExecType.TRADE, ExecType.TRADE]
    assert [r.last_quantity for r in reports[1:]] == [Decimal(150), Decimal(150)]
    assert {r.last_price for r in reports[1:]} == {Decimal("230.5")}


async def test_fills_respect_the_lot_size(venue: Venue) -> None:
    order = venue_order(symbol="EURUSD", quantity="2500", limit_price="1.0849")
    await venue.submit(order)

    reports = await filled_by(venue, order)

    assert [r.last_quantity for r in reports] == [Decimal(0), Decimal(1000), Decimal(1500)]
    assert {r.last_price for r in reports[1:]} == {Decimal("1.0849")}


async def test_an_unlisted_symbol_is_refused_for_good(venue: Venue) -> None:
    order = venue_order(symbol="NOPE")

    refused = await refusal(venue.submit(order))

    assert refused.type == "VenueRefused"
    assert "NOPE" in refused.message
    await asyncio.sleep(DELAY * 2)
    assert venue.sink.reports == []


async def test_an_unknown_venue_is_refused_for_good(venue: Venue) -> None:
    order = venue_order()

    submitted = await refusal(venue.submit(order, venue="nyse"))
    canceled = await refusal(venue.cancel(order.order_id, venue="nyse"))

    assert (submitted.type, canceled.type) == ("VenueRefused", "VenueRefused")
    assert "nyse" in submitted.message
    await asyncio.sleep(DELAY * 2)
    assert venue.sink.reports == []


async def test_cancelling_an_order_the_venue_never_saw_is_refused(venue: Venue) -> None:
    refused = await refusal(venue.cancel("ord_unknown"))

    assert refused.type == "VenueRefused"
    assert venue.sink.reports == []


async def test_cancelling_a_working_order_reports_it_canceled(slow_venue: Venue) -> None:
    order = venue_order()
    await slow_venue.submit(order)
    await slow_venue.cancel(order.order_id)

    assert slow_venue.sink.exec_types() == [ExecType.CANCELED]
    await asyncio.sleep(0.4)  # past the acknowledgement the simulator would have sent
    [canceled] = slow_venue.sink.reports
    assert (canceled.order_id, canceled.last_quantity) == (order.order_id, Decimal(0))

    # A repeated cancel (a retried activity) is answered already: no second report, so the
    # order is not flagged for a reject it never asked for.
    await slow_venue.cancel(order.order_id)
    assert slow_venue.sink.exec_types() == [ExecType.CANCELED]


async def test_cancelling_a_filled_order_is_rejected_as_too_late(venue: Venue) -> None:
    order = venue_order()
    await venue.submit(order)
    await filled_by(venue, order)

    await venue.cancel(order.order_id)

    assert venue.sink.exec_types() == [
        ExecType.NEW,
        ExecType.TRADE,
        ExecType.TRADE,
        ExecType.CANCEL_REJECTED,
    ]
    assert "too late" in venue.sink.reports[-1].text


async def test_worker_price_source_reads_the_read_model(sessions: SessionFactory) -> None:
    prices = worker.price_source(sessions)

    assert prices("AAPL") == (Decimal("230.5"), Decimal(1))
    assert prices("EURUSD") == (Decimal("1.085"), Decimal(1000))
    assert prices("NOPE") is None


async def test_the_simulator_fills_at_the_read_model_reference_price(
    sessions: SessionFactory,
) -> None:
    async with open_venue(worker.price_source(sessions)) as venue:
        order = venue_order(quantity="10", order_type=OrderType.MARKET, limit_price=None)
        await venue.submit(order)
        await venue.submit(order)

        reports = await filled_by(venue, order)

        assert [r.exec_type for r in reports] == [ExecType.NEW, ExecType.TRADE, ExecType.TRADE]
        assert [(r.last_quantity, r.last_price) for r in reports[1:]] == [
            (Decimal(5), Decimal("230.5")),
            (Decimal(5), Decimal("230.5")),
        ]


@pytest.mark.parametrize(
    ("side", "order_type", "limit", "expected"),
    [
        (Side.BUY, OrderType.MARKET, None, "230.5"),
        (Side.BUY, OrderType.LIMIT, "231", "230.5"),  # marketable: the market price, not worse
        (Side.BUY, OrderType.LIMIT, "229", "229"),  # the market comes to the limit
        (Side.SELL, OrderType.LIMIT, "229", "230.5"),
        (Side.SELL_SHORT, OrderType.LIMIT, "232", "232"),
        (Side.SELL, OrderType.MARKET, None, "230.5"),
    ],
)
def test_fill_price_is_never_worse_than_the_limit(
    side: Side, order_type: OrderType, limit: str | None, expected: str
) -> None:
    order = venue_order(side=side, order_type=order_type, limit_price=limit)
    assert fill_price(order, Decimal("230.5")) == Decimal(expected)
