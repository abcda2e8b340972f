"""VenueActivities with the real simulator on a real database, reporting into a recording sink."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.venue import (
    CancelAtVenueInput,
    ReplaceAtVenueInput,
    SubmitOrderInput,
    VenueActivities,
    VenueOrderStatusInput,
)
from db import simulators
from db.engine import SessionFactory, create_schema, make_engine, session_factory
from db.simulators import SimVenueOrderRow
from domain.executions import ExecutionReport
from domain.models import ExecType, OrderType, Side, TimeInForce
from venues.base import VenueOrder, VenueOrderStatus, VenueRefusedError
from venues.manual import ManualVenue
from venues.simulator import (
    PriceSource,
    Scenario,
    SimulatedVenue,
    fill_price,
    next_part,
    parse_scenario,
)

DELAY = 0.02
LISTINGS = {
    "AAPL": (Decimal("230.5"), Decimal(1)),
    "EURUSD": (Decimal("1.085"), Decimal(1000)),
}


@pytest.fixture
def sessions(sessions: SessionFactory, engine: Engine) -> SessionFactory:
    """The shared read model, with the simulator's table whichever module made it first."""
    create_schema(engine)
    return sessions


class RecordingSink:
    """The OMS as the venue sees it: keeps every report it takes, in arrival order.

    It can be made to fail (`failures` calls raise, as an unreachable OMS would), or to hang on
    a report as an OMS the worker dies talking to: `hang_before` (exec ids it never takes) or
    `hang_after` (exec ids it takes but never answers).
    """

    def __init__(
        self,
        *,
        failures: int = 0,
        hang_before: frozenset[str] = frozenset(),
        hang_after: frozenset[str] = frozenset(),
    ) -> None:
        self.reports: list[ExecutionReport] = []
        self.reporters: set[str] = set()
        self.attempts = 0
        self.failures = failures
        self.hang_before = hang_before
        self.hang_after = hang_after
        self.hanging = asyncio.Event()

    async def report(self, report: ExecutionReport, reported_by: str) -> None:
        self.attempts += 1
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("OMS unreachable")
        if report.exec_id in self.hang_before:
            await self._hang()
        self.reports.append(report)
        self.reporters.add(reported_by)
        if report.exec_id in self.hang_after:
            await self._hang()

    async def _hang(self) -> None:
        self.hanging.set()
        await asyncio.Event().wait()  # never answers; ends only when the worker stops

    def of(self, order: VenueOrder) -> list[ExecutionReport]:
        return [r for r in self.reports if r.order_id == order.order_id]


@dataclass
class Venue:
    """A simulator, the activities in front of it, and where its reports went."""

    sink: RecordingSink
    simulator: SimulatedVenue
    sessions: SessionFactory
    activities: VenueActivities = field(init=False)
    env: ActivityEnvironment = field(default_factory=ActivityEnvironment)

    def __post_init__(self) -> None:
        self.activities = VenueActivities({"simulator": self.simulator, "manual": ManualVenue()})

    async def submit(self, order: VenueOrder, venue: str = "simulator") -> None:
        await self.env.run(self.activities.submit_order, SubmitOrderInput(venue=venue, order=order))

    async def cancel(
        self, order: VenueOrder, venue: str = "simulator", cancel_cl_ord_id: str = ""
    ) -> None:
        """Ask to cancel `order`: under its own ClOrdID (as v1 orders did), or a request's."""
        await self.env.run(
            self.activities.cancel_at_venue,
            CancelAtVenueInput(
                venue=venue,
                order_id=order.order_id,
                cl_ord_id=cancel_cl_ord_id or order.cl_ord_id,
                orig_cl_ord_id=order.cl_ord_id if cancel_cl_ord_id else "",
            ),
        )

    async def status(self, cl_ord_id: str, venue: str = "simulator") -> VenueOrderStatus:
        result: VenueOrderStatus = await self.env.run(
            self.activities.venue_order_status,
            VenueOrderStatusInput(venue=venue, cl_ord_id=cl_ord_id),
        )
        return result

    def row(self, order: VenueOrder) -> SimVenueOrderRow:
        with self.sessions() as session:
            row = simulators.venue_order(session, order.cl_ord_id)
        assert row is not None
        return row

    def settled(self, order: VenueOrder) -> bool:
        """Whether the simulator has nothing more to do for the order (every report is out)."""
        row = self.row(order)
        return row.next_step_at is None and row.lease_owner is None


@asynccontextmanager
async def running(simulator: SimulatedVenue) -> AsyncIterator[asyncio.Task[None]]:
    """Run the simulator's loop for the block, and stop it as a worker shutting down would."""
    task = asyncio.create_task(simulator.run())
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.wait({task})


@asynccontextmanager
async def open_venue(
    sessions: SessionFactory,
    prices: PriceSource = LISTINGS.get,
    *,
    delay: float = DELAY,
    sink: RecordingSink | None = None,
    lease_seconds: float = 10.0,
    recheck: float = DELAY,
) -> AsyncIterator[Venue]:
    sink = sink or RecordingSink()
    simulator = SimulatedVenue(
        sink,
        prices,
        sessions,
        delay_seconds=delay,
        lease_seconds=lease_seconds,
        recheck_seconds=recheck,
    )
    venue = Venue(sink, simulator, sessions)
    async with running(simulator):
        yield venue


@pytest.fixture
async def venue(sessions: SessionFactory) -> AsyncIterator[Venue]:
    async with open_venue(sessions) as opened:
        yield opened


def venue_order(
    *,
    symbol: str = "AAPL",
    quantity: str = "1001",
    order_type: OrderType = OrderType.LIMIT,
    limit_price: str | None = "231",
    side: Side = Side.BUY,
    time_in_force: TimeInForce = TimeInForce.DAY,
    notes: str = "",
) -> VenueOrder:
    order_id = f"ord_t{uuid.uuid4().hex[:16]}"
    return VenueOrder(
        order_id=order_id,
        cl_ord_id=f"{order_id}-1",
        fund="fund-alpha",
        symbol=symbol,
        side=side,
        quantity=Decimal(quantity),
        order_type=order_type,
        limit_price=Decimal(limit_price) if limit_price else None,
        time_in_force=time_in_force,
        notes=notes,
    )


def exec_ids(order: VenueOrder, *numbers: int) -> list[str]:
    return [f"SIM-{order.cl_ord_id}-{n}" for n in numbers]


async def eventually(condition: Callable[[], bool], within: float = 10) -> None:
    """Wait for `condition`, however slow the machine (a hang guard, not a timing assertion)."""
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never came true"
        await asyncio.sleep(0.01)


async def refusal(call: Awaitable[object]) -> ApplicationError:
    with pytest.raises(ApplicationError) as refused:
        await call
    assert refused.value.non_retryable is True
    return refused.value


async def done(venue: Venue, order: VenueOrder) -> list[ExecutionReport]:
    """Wait until the simulator has nothing more to send for the order; return its reports."""
    await eventually(lambda: venue.settled(order))
    return venue.sink.of(order)


async def test_a_marketable_limit_order_is_acknowledged_then_filled_in_two_at_the_market(
    venue: Venue,
) -> None:
    order = venue_order()
    await venue.submit(order)

    reports = await done(venue, order)

    assert [r.exec_type for r in reports] == [ExecType.NEW, ExecType.TRADE, ExecType.TRADE]
    new, *trades = reports
    assert (new.last_quantity, new.last_price, new.text) == (Decimal(0), None, "accepted")
    assert [t.last_quantity for t in trades] == [Decimal(500), Decimal(501)]
    assert sum(t.last_quantity for t in trades) == order.quantity
    assert {t.last_price for t in trades} == {Decimal("230.5")}  # the market, not the limit
    assert [r.exec_id for r in reports] == exec_ids(order, 1, 2, 3)
    assert venue.sink.reporters == {"sim-venue"}
    assert all(r.transact_time.utcoffset() is not None for r in reports)
    row = venue.row(order)
    assert (row.state, row.filled, row.next_exec, row.submissions) == (
        "filled",
        order.quantity,
        4,
        1,
    )


async def test_a_market_order_fills_at_the_reference_price(venue: Venue) -> None:
    order = venue_order(quantity="300", order_type=OrderType.MARKET, limit_price=None)
    await venue.submit(order)

    reports = await done(venue, order)

    assert [r.exec_type for r in reports] == [ExecType.NEW, ExecType.TRADE, ExecType.TRADE]
    assert [r.last_quantity for r in reports[1:]] == [Decimal(150), Decimal(150)]
    assert {r.last_price for r in reports[1:]} == {Decimal("230.5")}


async def test_fills_respect_the_lot_size(venue: Venue) -> None:
    order = venue_order(symbol="EURUSD", quantity="2500", limit_price="1.0851")
    await venue.submit(order)

    reports = await done(venue, order)

    assert [r.last_quantity for r in reports] == [Decimal(0), Decimal(1000), Decimal(1500)]
    assert {r.last_price for r in reports[1:]} == {Decimal("1.085")}


async def test_an_order_smaller_than_two_lots_fills_at_once(venue: Venue) -> None:
    order = venue_order(symbol="EURUSD", quantity="1000", limit_price="1.09")

    await venue.submit(order)

    reports = await done(venue, order)
    assert [(r.exec_type, r.last_quantity) for r in reports] == [
        (ExecType.NEW, Decimal(0)),
        (ExecType.TRADE, Decimal(1000)),
    ]
    assert [r.exec_id for r in reports] == exec_ids(order, 1, 2)


async def test_a_resent_order_is_counted_answered_ok_and_reported_once(
    sessions: SessionFactory,
) -> None:
    listings = dict(LISTINGS)
    async with open_venue(sessions, listings.get) as venue:
        order = venue_order()
        await venue.submit(order)
        await venue.submit(order)  # a retried activity: recognised by its ClOrdID
        reports = await done(venue, order)

        # Even once the venue no longer lists the symbol, a resend of a known ClOrdID is OK.
        del listings["AAPL"]
        await venue.submit(order)

        assert venue.row(order).submissions == 3
        assert venue.settled(order)
        assert [r.exec_id for r in venue.sink.of(order)] == exec_ids(order, 1, 2, 3)
        assert reports == venue.sink.of(order)
        with sessions() as session:
            rows = [r for r in simulators.venue_orders(session) if r.order_id == order.order_id]
        assert [r.cl_ord_id for r in rows] == [order.cl_ord_id]


async def test_concurrent_submissions_of_one_cl_ord_id_make_one_order(venue: Venue) -> None:
    order = venue_order()

    await asyncio.gather(*(venue.submit(order) for _ in range(6)))

    reports = await done(venue, order)
    assert venue.row(order).submissions == 6
    assert [r.exec_id for r in reports] == exec_ids(order, 1, 2, 3)


async def test_recording_a_cl_ord_id_twice_keeps_one_row_that_counts_both(
    sessions: SessionFactory,
) -> None:
    order = venue_order()
    row = SimVenueOrderRow(
        cl_ord_id=order.cl_ord_id,
        order_id=order.order_id,
        fund=order.fund,
        symbol=order.symbol,
        side=order.side.value,
        quantity=order.quantity,
        order_type=order.order_type.value,
        limit_price=order.limit_price,
        time_in_force=order.time_in_force.value,
        reference_price=Decimal("230.5"),
        lot_size=Decimal(1),
        state="new",
        received_at=datetime.now(UTC),
    )

    with sessions() as session:
        first = simulators.record_submission(session, row)
    with sessions() as session:
        second = simulators.record_submission(session, row)

    assert (first, second) == (True, False)
    with sessions() as session:
        [stored] = [r for r in simulators.venue_orders(session) if r.order_id == order.order_id]
    assert (stored.cl_ord_id, stored.submissions, stored.quantity) == (
        order.cl_ord_id,
        2,
        Decimal(1001),
    )


async def test_a_new_cl_ord_id_for_the_same_order_is_a_new_venue_order(venue: Venue) -> None:
    first = venue_order(quantity="10")
    second = first.model_copy(update={"cl_ord_id": f"{first.order_id}-2"})

    await venue.submit(first)
    await venue.submit(second)

    await eventually(lambda: venue.settled(first) and venue.settled(second))
    by_exec = {r.exec_id: r for r in venue.sink.of(first)}
    assert sorted(by_exec) == sorted(exec_ids(first, 1, 2, 3) + exec_ids(second, 1, 2, 3))


async def test_an_order_survives_the_simulator_that_received_it(sessions: SessionFactory) -> None:
    order = venue_order()
    # The first simulator's OMS takes the acknowledgement, then never answers the first fill:
    # the worker is stopped with that report in flight.
    dying = RecordingSink(hang_before=frozenset(exec_ids(order, 2)))
    async with open_venue(sessions, sink=dying, lease_seconds=0.2) as first:
        await first.submit(order)
        await eventually(dying.hanging.is_set)
    assert [r.exec_id for r in dying.reports] == exec_ids(order, 1)

    # A new worker on the same database carries on; the lease of the dead one runs out.
    async with open_venue(sessions, lease_seconds=0.2) as second:
        await eventually(lambda: second.settled(order))

    delivered = dying.reports + second.sink.reports
    assert [r.exec_id for r in delivered] == exec_ids(order, 1, 2, 3)
    assert [r.exec_type for r in delivered] == [ExecType.NEW, ExecType.TRADE, ExecType.TRADE]
    assert sum(r.last_quantity for r in delivered) == order.quantity


async def test_a_report_taken_but_not_recorded_is_sent_again_with_the_same_exec_id(
    sessions: SessionFactory,
) -> None:
    order = venue_order(quantity="10")
    # The worker dies after the OMS took the first fill but before the step was recorded.
    dying = RecordingSink(hang_after=frozenset(exec_ids(order, 2)))
    async with open_venue(sessions, sink=dying, lease_seconds=0.2) as first:
        await first.submit(order)
        await eventually(dying.hanging.is_set)

    async with open_venue(sessions, lease_seconds=0.2) as second:
        await eventually(lambda: second.settled(order))

    # At least once: the fill comes again under the same exec id, which the OMS recognises
    # as a repeat; nothing is missing and no other id is invented.
    assert [r.exec_id for r in dying.reports] == exec_ids(order, 1, 2)
    assert [r.exec_id for r in second.sink.reports] == exec_ids(order, 2, 3)
    first_fill, resent = dying.reports[1], second.sink.reports[0]
    assert (resent.last_quantity, resent.last_price) == (
        first_fill.last_quantity,
        first_fill.last_price,
    )


async def test_reports_the_oms_could_not_take_are_sent_again_in_order(
    sessions: SessionFactory,
) -> None:
    sink = RecordingSink(failures=3)
    async with open_venue(sessions, sink=sink) as venue:
        order = venue_order()
        await venue.submit(order)

        reports = await done(venue, order)

    assert sink.attempts == 3 + 3
    assert [r.exec_id for r in reports] == exec_ids(order, 1, 2, 3)
    assert [r.exec_type for r in reports] == [ExecType.NEW, ExecType.TRADE, ExecType.TRADE]


async def test_two_simulators_on_one_database_report_each_step_once(
    sessions: SessionFactory,
) -> None:
    orders = [venue_order(quantity=str(10 + n)) for n in range(5)]
    async with open_venue(sessions) as one, open_venue(sessions) as other:
        for n, order in enumerate(orders):
            await (one if n % 2 else other).submit(order)
        await eventually(lambda: all(one.settled(order) for order in orders))

    for order in orders:
        delivered = sorted(
            (r.exec_id for r in one.sink.of(order) + other.sink.of(order)),
            key=lambda exec_id: int(exec_id.rsplit("-", 1)[1]),
        )
        assert delivered == exec_ids(order, 1, 2, 3)


async def test_cancelling_an_order_before_it_is_filled_reports_it_canceled(
    sessions: SessionFactory,
) -> None:
    async with open_venue(sessions, delay=2) as venue:  # the fills would be seconds away
        order = venue_order()
        await venue.submit(order)
        await venue.cancel(order)

        [canceled] = await done(venue, order)  # answered at once, not after the delay

        assert (canceled.exec_type, canceled.exec_id) == (ExecType.CANCELED, *exec_ids(order, 1))
        assert (canceled.order_id, canceled.last_quantity) == (order.order_id, Decimal(0))
        assert await venue.status(order.cl_ord_id) == VenueOrderStatus(
            cl_ord_id=order.cl_ord_id, known=True, state="canceled", filled_quantity=Decimal(0)
        )

        # A repeated cancel (a retried activity) is answered already: no second report, so the
        # order is not flagged for a reject it never asked for.
        await venue.cancel(order)
        assert venue.settled(order)
        assert [r.exec_type for r in venue.sink.of(order)] == [ExecType.CANCELED]


async def test_cancelling_a_filled_order_is_rejected_as_too_late(venue: Venue) -> None:
    order = venue_order()
    await venue.submit(order)
    await done(venue, order)

    await venue.cancel(order)
    reports = await done(venue, order)
    await venue.cancel(order)  # a repeat: already answered

    assert [r.exec_type for r in reports] == [
        ExecType.NEW,
        ExecType.TRADE,
        ExecType.TRADE,
        ExecType.CANCEL_REJECTED,
    ]
    assert reports[-1].text == "too late to cancel: order is done"
    assert reports[-1].exec_id == exec_ids(order, 4)[0]
    assert venue.settled(order)
    assert len(venue.sink.of(order)) == 4
    assert (await venue.status(order.cl_ord_id)).state == "filled"


async def test_orders_of_v1_workflows_are_known_by_their_order_id(
    sessions: SessionFactory,
) -> None:
    """Orders started before ClOrdIDs were apart send none: their order id is their ClOrdID."""
    fields = venue_order().model_dump(exclude={"cl_ord_id"})
    order = VenueOrder(**fields)
    async with open_venue(sessions, delay=2) as venue:
        await venue.submit(order)
        await venue.env.run(
            venue.activities.cancel_at_venue,
            CancelAtVenueInput(venue="simulator", order_id=order.order_id),
        )

        [canceled] = await done(venue, order)

    assert order.cl_ord_id == order.order_id
    assert (canceled.exec_type, canceled.exec_id) == (
        ExecType.CANCELED,
        f"SIM-{order.order_id}-1",
    )


async def test_order_status_says_whether_the_venue_has_the_cl_ord_id(venue: Venue) -> None:
    order = venue_order(quantity="40")

    assert await venue.status(order.cl_ord_id) == VenueOrderStatus(
        cl_ord_id=order.cl_ord_id, known=False
    )
    await venue.submit(order)
    received = await venue.status(order.cl_ord_id)
    await done(venue, order)

    assert (received.known, received.state in {"new", "working", "filled"}) == (True, True)
    assert await venue.status(order.cl_ord_id) == VenueOrderStatus(
        cl_ord_id=order.cl_ord_id, known=True, state="filled", filled_quantity=Decimal(40)
    )


async def test_an_unlisted_symbol_is_refused_for_good(venue: Venue) -> None:
    order = venue_order(symbol="NOPE")

    refused = await refusal(venue.submit(order))

    assert refused.type == "VenueRefused"
    assert "NOPE" in refused.message
    assert (await venue.status(order.cl_ord_id)).known is False


async def test_an_unknown_venue_is_refused_for_good(venue: Venue) -> None:
    order = venue_order()

    refusals = [
        await refusal(venue.submit(order, venue="nyse")),
        await refusal(venue.cancel(order, venue="nyse")),
        await refusal(venue.status(order.cl_ord_id, venue="nyse")),
    ]

    assert {r.type for r in refusals} == {"VenueRefused"}
    assert all("nyse" in r.message for r in refusals)


async def test_cancelling_an_order_the_venue_never_saw_is_refused(venue: Venue) -> None:
    order = venue_order()

    refused = await refusal(venue.cancel(order))

    assert refused.type == "VenueRefused"
    assert (await venue.status(order.cl_ord_id)).known is False


async def test_cancelling_with_another_orders_cl_ord_id_is_refused(venue: Venue) -> None:
    order, other = venue_order(), venue_order()
    await venue.submit(order)

    refused = await refusal(
        venue.env.run(
            venue.activities.cancel_at_venue,
            CancelAtVenueInput(
                venue="simulator", order_id=other.order_id, cl_ord_id=order.cl_ord_id
            ),
        )
    )

    assert refused.type == "VenueRefused"
    assert venue.row(order).cancel_requested is False


async def test_the_manual_venue_takes_everything_and_knows_every_order(venue: Venue) -> None:
    order = venue_order()

    await venue.submit(order, venue="manual")
    await venue.cancel(order, venue="manual")

    assert await venue.status(order.cl_ord_id, venue="manual") == VenueOrderStatus(
        cl_ord_id=order.cl_ord_id, known=True, state="manual"
    )


async def test_close_stops_the_loop(sessions: SessionFactory) -> None:
    simulator = SimulatedVenue(RecordingSink(), LISTINGS.get, sessions, delay_seconds=DELAY)
    task = asyncio.create_task(simulator.run())
    await asyncio.sleep(0)  # let the loop start

    await simulator.close()

    assert task.cancelled()


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


# The simulated market: resting limit orders, ioc and fok, and the scenarios an order asks for.


class Market:
    """A price source whose prices a test moves, counting how often each symbol is looked at."""

    def __init__(self) -> None:
        self.listings = dict(LISTINGS)
        self.looks: dict[str, int] = {}

    def __call__(self, symbol: str) -> tuple[Decimal, Decimal] | None:
        self.looks[symbol] = self.looks.get(symbol, 0) + 1
        return self.listings.get(symbol)

    def move(self, symbol: str, price: str) -> None:
        self.listings[symbol] = (Decimal(price), self.listings[symbol][1])


def kinds(reports: list[ExecutionReport]) -> list[tuple[ExecType, Decimal]]:
    return [(r.exec_type, r.last_quantity) for r in reports]


async def acknowledged(venue: Venue, order: VenueOrder) -> None:
    await eventually(lambda: bool(venue.sink.of(order)))
    assert [r.exec_type for r in venue.sink.of(order)] == [ExecType.NEW]


async def looked_again(venue: Venue, market: Market, symbol: str, times: int = 3) -> None:
    """Wait until the simulator looked at the market `times` more times (it rechecked)."""
    seen = market.looks.get(symbol, 0)
    await eventually(lambda: market.looks.get(symbol, 0) >= seen + times)


@pytest.mark.parametrize(("side", "limit"), [(Side.BUY, "100"), (Side.SELL, "300")])
async def test_a_limit_order_that_is_not_marketable_rests_until_canceled(
    sessions: SessionFactory, side: Side, limit: str
) -> None:
    market = Market()
    async with open_venue(sessions, market) as venue:
        order = venue_order(quantity="100", limit_price=limit, side=side)
        await venue.submit(order)
        await acknowledged(venue, order)
        await looked_again(venue, market, "AAPL")

        # Working, nothing filled: the market (230.5) is not at the limit.
        assert kinds(venue.sink.of(order)) == [(ExecType.NEW, Decimal(0))]
        assert await venue.status(order.cl_ord_id) == VenueOrderStatus(
            cl_ord_id=order.cl_ord_id, known=True, state="working", filled_quantity=Decimal(0)
        )

        await venue.cancel(order)
        reports = await done(venue, order)

    assert kinds(reports) == [(ExecType.NEW, Decimal(0)), (ExecType.CANCELED, Decimal(0))]
    assert [r.exec_id for r in reports] == exec_ids(order, 1, 2)
    assert reports[-1].text == "canceled on request"
    assert (venue.row(order).state, venue.row(order).filled) == ("canceled", Decimal(0))


async def test_a_resting_order_fills_when_the_market_comes_to_it(sessions: SessionFactory) -> None:
    market = Market()
    async with open_venue(sessions, market) as venue:
        order = venue_order(quantity="100", limit_price="230")
        await venue.submit(order)
        await acknowledged(venue, order)
        await looked_again(venue, market, "AAPL")

        market.move("AAPL", "229.9")
        reports = await done(venue, order)

    assert kinds(reports) == [
        (ExecType.NEW, Decimal(0)),
        (ExecType.TRADE, Decimal(50)),
        (ExecType.TRADE, Decimal(50)),
    ]
    assert {r.last_price for r in reports[1:]} == {Decimal("229.9")}  # the market, not worse
    assert (venue.row(order).reference_price, venue.row(order).state) == (
        Decimal("229.9"),
        "filled",
    )


async def test_a_marketable_limit_order_fills_at_the_reference_price(venue: Venue) -> None:
    order = venue_order(quantity="10", limit_price="250", side=Side.BUY)
    await venue.submit(order)

    reports = await done(venue, order)

    assert [r.exec_type for r in reports] == [ExecType.NEW, ExecType.TRADE, ExecType.TRADE]
    assert {r.last_price for r in reports[1:]} == {Decimal("230.5")}


async def test_a_resting_order_is_resent_and_reported_once(sessions: SessionFactory) -> None:
    async with open_venue(sessions) as venue:
        order = venue_order(limit_price="100")
        await venue.submit(order)
        await acknowledged(venue, order)
        await venue.submit(order)
        await venue.submit(order)
        await asyncio.sleep(10 * DELAY)

        assert venue.row(order).submissions == 3
        assert [r.exec_id for r in venue.sink.of(order)] == exec_ids(order, 1)


async def test_a_resting_order_survives_the_simulator_that_acknowledged_it(
    sessions: SessionFactory,
) -> None:
    market = Market()
    order = venue_order(quantity="10", limit_price="200")
    async with open_venue(sessions, market, lease_seconds=0.2) as first:
        await first.submit(order)
        await acknowledged(first, order)
        await looked_again(first, market, "AAPL")

    # A new worker on the same database keeps it resting, then fills it once the market moves.
    async with open_venue(sessions, market, lease_seconds=0.2) as second:
        await looked_again(second, market, "AAPL")
        assert second.sink.of(order) == []
        market.move("AAPL", "199")
        await eventually(lambda: second.settled(order))

    delivered = first.sink.of(order) + second.sink.of(order)
    assert [r.exec_id for r in delivered] == exec_ids(order, 1, 2, 3)
    assert kinds(delivered) == [
        (ExecType.NEW, Decimal(0)),
        (ExecType.TRADE, Decimal(5)),
        (ExecType.TRADE, Decimal(5)),
    ]
    assert {r.last_price for r in delivered[1:]} == {Decimal(199)}


@pytest.mark.parametrize("tif", [TimeInForce.IOC, TimeInForce.FOK])
async def test_a_marketable_ioc_or_fok_order_fills_whole_at_once(
    venue: Venue, tif: TimeInForce
) -> None:
    order = venue_order(quantity="100", time_in_force=tif)
    await venue.submit(order)

    reports = await done(venue, order)

    assert kinds(reports) == [(ExecType.NEW, Decimal(0)), (ExecType.TRADE, Decimal(100))]
    assert reports[1].last_price == Decimal("230.5")
    assert venue.row(order).state == "filled"


@pytest.mark.parametrize("tif", [TimeInForce.IOC, TimeInForce.FOK])
async def test_an_ioc_or_fok_order_that_is_not_marketable_is_canceled_at_once(
    venue: Venue, tif: TimeInForce
) -> None:
    order = venue_order(quantity="100", limit_price="100", time_in_force=tif)
    await venue.submit(order)

    reports = await done(venue, order)

    assert kinds(reports) == [(ExecType.NEW, Decimal(0)), (ExecType.CANCELED, Decimal(0))]
    assert reports[1].text == f"{tif.value}: not marketable at 230.5; canceled"
    assert (venue.row(order).state, venue.row(order).filled) == ("canceled", Decimal(0))


async def test_an_ioc_remainder_is_canceled(venue: Venue) -> None:
    order = venue_order(
        quantity="100", time_in_force=TimeInForce.IOC, notes="sim:ioc-remainder=40%"
    )
    await venue.submit(order)

    reports = await done(venue, order)

    assert kinds(reports) == [
        (ExecType.NEW, Decimal(0)),
        (ExecType.TRADE, Decimal(60)),
        (ExecType.CANCELED, Decimal(0)),
    ]
    assert reports[-1].text == "ioc: remainder 40 canceled"
    assert (venue.row(order).state, venue.row(order).filled) == ("canceled", Decimal(60))


async def test_a_fok_order_the_market_cannot_fill_whole_is_canceled_unfilled(
    venue: Venue,
) -> None:
    order = venue_order(quantity="100", time_in_force=TimeInForce.FOK, notes="sim:ioc-remainder")

    await venue.submit(order)
    reports = await done(venue, order)

    assert kinds(reports) == [(ExecType.NEW, Decimal(0)), (ExecType.CANCELED, Decimal(0))]
    assert reports[-1].text == "fok: only 50 of 100 available; canceled"


async def test_partial_fills_over_time(venue: Venue) -> None:
    order = venue_order(symbol="EURUSD", quantity="5000", limit_price="1.1", notes="sim:partial=3")
    await venue.submit(order)

    reports = await done(venue, order)

    # Thirds in whole lots of 1000: 1000, 2000, then the rest.
    assert kinds(reports) == [
        (ExecType.NEW, Decimal(0)),
        (ExecType.TRADE, Decimal(1000)),
        (ExecType.TRADE, Decimal(2000)),
        (ExecType.TRADE, Decimal(2000)),
    ]
    assert [r.exec_id for r in reports] == exec_ids(order, 1, 2, 3, 4)
    assert venue.row(order).scenario == "sim:partial=3"


async def test_a_rejected_order_is_rejected_and_cannot_be_canceled(venue: Venue) -> None:
    order = venue_order(notes="please work carefully sim:reject")
    await venue.submit(order)
    [rejected] = await done(venue, order)

    await venue.cancel(order)
    reports = await done(venue, order)

    assert (rejected.exec_type, rejected.text) == (
        ExecType.REJECTED,
        "rejected by the venue (sim:reject)",
    )
    assert [r.exec_type for r in reports] == [ExecType.REJECTED, ExecType.CANCEL_REJECTED]
    assert (await venue.status(order.cl_ord_id)).state == "rejected"


async def test_a_cancel_reject_leaves_the_order_working(sessions: SessionFactory) -> None:
    market = Market()
    async with open_venue(sessions, market) as venue:
        order = venue_order(quantity="10", limit_price="200", notes="sim:cancel-reject")
        await venue.submit(order)
        await acknowledged(venue, order)

        await venue.cancel(order, cancel_cl_ord_id=f"{order.cl_ord_id}-C1")
        await eventually(lambda: len(venue.sink.of(order)) == 2)
        # A resend of the same request is answered OK and not again; a new request (its own
        # ClOrdID) is answered again.
        await venue.cancel(order, cancel_cl_ord_id=f"{order.cl_ord_id}-C1")
        await venue.cancel(order, cancel_cl_ord_id=f"{order.cl_ord_id}-C2")
        await eventually(lambda: len(venue.sink.of(order)) == 3)
        await venue.cancel(order, cancel_cl_ord_id=f"{order.cl_ord_id}-C2")
        await looked_again(venue, market, "AAPL")
        assert venue.row(order).state == "working"

        market.move("AAPL", "199")
        reports = await done(venue, order)

    assert [r.exec_type for r in reports] == [
        ExecType.NEW,
        ExecType.CANCEL_REJECTED,
        ExecType.CANCEL_REJECTED,
        ExecType.TRADE,
        ExecType.TRADE,
    ]
    assert reports[1].text == reports[2].text == "cancel refused (sim:cancel-reject)"
    assert venue.row(order).state == "filled"


async def test_a_never_ack_order_hears_nothing(venue: Venue) -> None:
    order = venue_order(notes="sim:never-ack")
    await venue.submit(order)
    await eventually(lambda: venue.settled(order))
    await venue.cancel(order)
    await eventually(lambda: venue.settled(order))
    await asyncio.sleep(5 * DELAY)

    assert venue.sink.of(order) == []
    assert await venue.status(order.cl_ord_id) == VenueOrderStatus(
        cl_ord_id=order.cl_ord_id, known=True, state="new", filled_quantity=Decimal(0)
    )


async def test_a_fill_comes_after_the_cancel_request_then_the_cancel(venue: Venue) -> None:
    order = venue_order(quantity="100", notes="sim:late-fill-after-cancel")
    await venue.submit(order)
    await acknowledged(venue, order)
    await eventually(lambda: venue.settled(order))  # resting: waits for the cancel
    assert venue.sink.of(order)[-1].exec_type is ExecType.NEW

    await venue.cancel(order)
    reports = await done(venue, order)

    assert kinds(reports) == [
        (ExecType.NEW, Decimal(0)),
        (ExecType.TRADE, Decimal(50)),
        (ExecType.CANCELED, Decimal(0)),
    ]
    assert reports[1].last_price == Decimal("230.5")
    assert (venue.row(order).state, venue.row(order).filled) == ("canceled", Decimal(50))


@pytest.mark.parametrize(
    "notes", ["sim:partail=3", "sim:partial=0", "sim:partial=x", "sim:ioc-remainder=100%"]
)
async def test_a_scenario_the_simulator_does_not_know_is_refused(venue: Venue, notes: str) -> None:
    order = venue_order(notes=notes)

    refused = await refusal(venue.submit(order))

    assert refused.type == "VenueRefused"
    assert "sim:" in refused.message
    assert (await venue.status(order.cl_ord_id)).known is False


@pytest.mark.parametrize(
    ("notes", "scenario"),
    [
        ("", Scenario()),
        ("call me before 3pm; simulate nothing", Scenario()),
        ("x sim:partial=4 sim:cancel-reject", Scenario(parts=4, cancel_reject=True)),
        ("sim:never-ack", Scenario(never_ack=True)),
        ("sim:late-fill-after-cancel", Scenario(late_fill_after_cancel=True)),
        ("sim:ioc-remainder=12.5%", Scenario(ioc_remainder=Decimal("12.5"))),
        ("sim:ioc-remainder=40", Scenario(ioc_remainder=Decimal(40))),
        ("sim:reject", Scenario(reject=True)),
    ],
)
def test_scenarios_parse_and_write_back_alike(notes: str, scenario: Scenario) -> None:
    assert parse_scenario(notes) == scenario
    assert parse_scenario(scenario.canonical()) == scenario


def test_an_unknown_scenario_names_the_known_ones() -> None:
    with pytest.raises(VenueRefusedError, match="late-fill-after-cancel"):
        parse_scenario("sim:explode")


def test_the_replace_and_bust_scenarios_parse_and_write_back_alike() -> None:
    scenario = parse_scenario("hedge sim:replace-reject sim:bust")
    assert (scenario.replace_reject, scenario.bust) == (True, True)
    assert parse_scenario(scenario.canonical()) == scenario


@pytest.mark.parametrize(
    ("quantity", "lot", "parts", "fills"),
    [
        ("1001", "1", 2, ["500", "501"]),
        ("1000", "1000", 2, ["1000"]),
        ("300", "1", 3, ["100", "100", "100"]),
        ("10", "1", 4, ["2", "3", "2", "3"]),
        ("7", "1", 1, ["7"]),
    ],
)
def test_partial_fills_are_whole_lots_that_add_up(
    quantity: str, lot: str, parts: int, fills: list[str]
) -> None:
    done, taken = Decimal(0), []
    while done < Decimal(quantity):
        part = next_part(Decimal(quantity), done, Decimal(lot), parts)
        taken.append(part)
        done += part
    assert taken == [Decimal(f) for f in fills]


def test_a_book_from_before_scenarios_gains_the_column(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    create_schema(engine)
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE sim_venue_orders DROP COLUMN scenario"))
        connection.execute(
            text(
                "INSERT INTO sim_venue_orders (cl_ord_id, order_id, fund, symbol, side, quantity,"
                " order_type, time_in_force, reference_price, lot_size, state, filled, next_exec,"
                " cancel_requested, cancel_answered, submissions, received_at) VALUES ('old-1',"
                " 'old', 'fund-alpha', 'AAPL', 'buy', 10, 'market', 'day', 230.5, 1, 'new', 0, 1,"
                " FALSE, FALSE, 1, '2026-01-02 03:04:05')"
            )
        )

    create_schema(engine)

    with session_factory(engine)() as session:
        row = simulators.venue_order(session, "old-1")
    engine.dispose()
    assert row is not None and row.scenario == ""


async def test_a_replace_is_answered_once_and_the_order_goes_on_under_its_new_cl_ord_id(
    sessions: SessionFactory,
) -> None:
    async with open_venue(sessions, delay=2) as venue:  # fills seconds away: nothing crosses
        order = venue_order(limit_price="100")  # rests: AAPL is above it
        await venue.submit(order)
        await eventually(lambda: len(venue.sink.of(order)) == 1)  # new
        new_terms = order.model_copy(
            update={"cl_ord_id": f"{order.order_id}-R1", "quantity": Decimal(500)}
        )
        replace = ReplaceAtVenueInput(
            venue="simulator", order=new_terms, orig_cl_ord_id=order.cl_ord_id
        )
        await venue.env.run(venue.activities.replace_at_venue, replace)
        await venue.env.run(venue.activities.replace_at_venue, replace)  # a retried activity
        await eventually(lambda: len(venue.sink.of(order)) == 2)
        answer = venue.sink.of(order)[1]
        assert answer.exec_type is ExecType.REPLACED
        status = await venue.status(new_terms.cl_ord_id)
        assert (status.known, status.state) == (True, "working")
        await asyncio.sleep(0.2)
        assert len(venue.sink.of(order)) == 2  # answered once
        # The simulator still knows the order by its first ClOrdID: a later replace naming it
        # is taken (a venue may be stricter); one for an order it never had is refused.
        stale = replace.model_copy(
            update={"order": new_terms.model_copy(update={"cl_ord_id": f"{order.order_id}-R2"})}
        )
        await venue.env.run(venue.activities.replace_at_venue, stale)
        await eventually(lambda: len(venue.sink.of(order)) == 3)
        unknown = ReplaceAtVenueInput(
            venue="simulator",
            order=new_terms.model_copy(update={"cl_ord_id": "never-R9", "order_id": "ord_none"}),
            orig_cl_ord_id="never",
        )
        refused = await refusal(venue.env.run(venue.activities.replace_at_venue, unknown))
        assert "unknown to the simulator" in refused.message
