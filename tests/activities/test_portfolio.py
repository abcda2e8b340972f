"""PortfolioActivities: the fund as pre-trade compliance sees it, on SQLite and PostgreSQL.

Each test but the demo data's works in a fund of its own (the module's database is shared by its
tests), with start-of-day holdings of its own. Orders move through the read model as the
projection would write them: a row per order, with its status and what it filled.

The race tests are deterministic: the first check is held inside its transaction (its price
source waits) while the second starts; on PostgreSQL the test waits until the server reports the
second blocked on the first's lock, on SQLite the second cannot have read anything by the time
the first commits, since it waits to begin its transaction at all.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from datetime import time as clock
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, inspect, text
from sqlmodel import col, select
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.portfolio import (
    PortfolioActivities,
    PortfolioSnapshotInput,
    PriceSource,
    ReadModelPrices,
)
from db import queries
from db.demo import load_demo_data
from db.engine import SessionFactory, create_schema, make_engine, session_factory
from db.tables import (
    AccountRow,
    ComplianceReservationRow,
    FundRow,
    HoldingSodRow,
    InstrumentRow,
    MarketRow,
    OrderRow,
)
from domain.errors import RefusalType
from domain.models import (
    Allocation,
    AssetClass,
    OrderRequest,
    OrderState,
    OrderStatus,
    OrderType,
    Side,
    TimeInForce,
)
from domain.portfolio import MarketHours, PortfolioSnapshot
from tests.conftest import BACKENDS, POSTGRES_URL, _postgres_database

# Far above what a check needs, so only a real hang fails a test.
DEADLINE_SECONDS = 15.0
POLL_SECONDS = 0.01
XNYS = MarketHours(
    market="XNYS", timezone="America/New_York", opens=clock(9, 30), closes=clock(16, 0)
)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module", params=BACKENDS)
def engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    """A read model of this module's own, with the demo data: no other module's orders in it."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('portfolio') / 'oms.db'}"
        database: contextlib.AbstractContextManager[str] = contextlib.nullcontext(url)
    else:
        if not POSTGRES_URL:
            pytest.skip("OMS_TEST_POSTGRES_URL is not set")
        database = contextlib.contextmanager(_postgres_database)()
    with database as url:
        made = make_engine(url)
        create_schema(made)
        with session_factory(made)() as session:
            load_demo_data(session)
        yield made
        made.dispose()


@pytest.fixture(scope="module")
def sessions(engine: Engine) -> SessionFactory:
    return session_factory(engine)


@pytest.fixture(scope="module")
def portfolio(sessions: SessionFactory) -> PortfolioActivities:
    return PortfolioActivities(sessions, ReadModelPrices(sessions))


# ---- building blocks --------------------------------------------------------------------------


def new_fund(
    sessions: SessionFactory, holdings: dict[str, str] | None = None, base_currency: str = "USD"
) -> str:
    """Create a fund with one account and the given start-of-day holdings; return its name."""
    fund = unique("fund")
    account = f"{fund}-main"
    with sessions() as session:
        session.add(
            FundRow(
                fund=fund,
                name="Test fund",
                base_currency=base_currency,
                default_account=account,
                nav=Decimal(100_000_000),
                cash=Decimal(20_000_000),
            )
        )
        session.flush()
        session.add(AccountRow(account=account, fund=fund, name="Test account"))
        for symbol, quantity in (holdings or {}).items():
            session.add(
                HoldingSodRow(account=account, fund=fund, symbol=symbol, quantity=Decimal(quantity))
            )
        session.commit()
    return fund


def order(
    fund: str,
    symbol: str = "AAPL",
    side: str = "buy",
    quantity: str = "1000",
    limit: str | None = "231",
) -> OrderRequest:
    """Return a limit order (a market order when `limit` is None)."""
    return OrderRequest(
        client_order_id=unique("c"),
        fund=fund,
        symbol=symbol,
        side=Side(side),
        quantity=Decimal(quantity),
        order_type=OrderType.MARKET if limit is None else OrderType.LIMIT,
        limit_price=None if limit is None else Decimal(limit),
    )


def check(
    activities: PortfolioActivities,
    request: OrderRequest,
    order_id: str | None = None,
    *,
    reserve: bool = True,
    created_by: str = "alice",
) -> PortfolioSnapshot:
    """Run the activity as Temporal would, its result through the data converter."""
    taken = ActivityEnvironment().run(
        activities.portfolio_snapshot,
        PortfolioSnapshotInput(
            order_id=order_id or unique("ord"),
            order=request,
            created_by=created_by,
            reserve=reserve,
        ),
    )
    payloads = pydantic_data_converter.payload_converter.to_payloads([taken])
    [decoded] = pydantic_data_converter.payload_converter.from_payloads(
        payloads, [PortfolioSnapshot]
    )
    assert decoded == taken
    return taken


def write_row(
    sessions: SessionFactory,
    order_id: str,
    request: OrderRequest,
    status: OrderStatus,
    *,
    filled: str = "0",
    created_at: datetime | None = None,
    created_by: str = "alice",
) -> None:
    """Write (or move) the order's read-model row, as the projection would."""
    at = created_at or datetime.now(UTC)
    with sessions() as session:
        stored = session.get(OrderRow, order_id)
        row = stored or OrderRow(
            order_id=order_id,
            client_order_id=request.client_order_id,
            fund=request.fund,
            symbol=request.symbol,
            side=request.side.value,
            quantity=request.quantity,
            order_type=request.order_type.value,
            limit_price=request.limit_price,
            time_in_force=request.time_in_force.value,
            status=status.value,
            created_by=created_by,
            created_at=at,
            updated_at=at,
        )
        row.status, row.filled_quantity = status.value, Decimal(filled)
        session.add(row)
        session.commit()


def book(sessions: SessionFactory, order_id: str, request: OrderRequest, quantity: str) -> None:
    """Book the order's allocation into the fund's main account, as allocation would."""
    now = datetime.now(UTC)
    state = OrderState(
        order_id=order_id,
        client_order_id=request.client_order_id,
        fund=request.fund,
        symbol=request.symbol,
        side=request.side,
        quantity=request.quantity,
        order_type=request.order_type,
        limit_price=request.limit_price,
        time_in_force=TimeInForce.DAY,
        created_by="alice",
        created_at=now,
        updated_at=now,
    )
    allocation = Allocation(
        account=f"{request.fund}-main",
        requested_quantity=Decimal(quantity),
        quantity=Decimal(quantity),
        price=Decimal("230.60"),
    )
    with sessions() as session:
        queries.book_allocations(session, state, [allocation], now)


def stored_reservations(sessions: SessionFactory, fund: str) -> list[ComplianceReservationRow]:
    with sessions() as session:
        return list(
            session.exec(
                select(ComplianceReservationRow)
                .where(ComplianceReservationRow.fund == fund)
                .order_by(col(ComplianceReservationRow.order_id))
            )
        )


def counted(snapshot: PortfolioSnapshot) -> list[tuple[str, Decimal, Decimal]]:
    return [(r.order_id, r.quantity, r.exposure) for r in snapshot.reservations]


# ---- the snapshot of the demo funds -----------------------------------------------------------


def test_snapshot_of_fund_alpha(portfolio: PortfolioActivities, sessions: SessionFactory) -> None:
    before = datetime.now(UTC)
    request = order("fund-alpha", "MSFT", "sell", "5000", "410")
    order_id = unique("ord")

    taken = check(portfolio, request, order_id)

    assert (taken.fund, taken.base_currency) == ("fund-alpha", "USD")
    assert (taken.nav, taken.cash) == (Decimal(500_000_000), Decimal(100_000_000))
    # As written, whatever padding the backend stores.
    assert taken.model_dump(mode="json")["nav"] == "500000000"
    # Start-of-day holdings over both accounts (alpha-main 200,000 AAPL, alpha-growth 20,000).
    assert taken.holdings == {
        "AAPL": Decimal(220_000),
        "GME": Decimal(50_000),
        "MSFT": Decimal(100_000),
    }
    assert sorted(taken.instruments) == ["AAPL", "GME", "MSFT"]
    msft = taken.instruments["MSFT"]
    assert (msft.asset_class, msft.currency, msft.reference_price, msft.lot_size) == (
        AssetClass.EQUITY,
        "USD",
        Decimal("415.2"),
        Decimal(1),
    )
    assert (msft.issuer, msft.sector, msft.hours) == ("Microsoft Corp.", "Technology", XNYS)
    assert taken.instruments["GME"].sector == "Consumer Discretionary"
    assert taken.fx_to_base == {"USD": Decimal(1)}
    # The order does not count against itself, and no other order of the fund is open.
    assert taken.reservations == []
    assert taken.kill_switches == []
    assert before <= taken.taken_at <= datetime.now(UTC)
    assert taken.taken_at.utcoffset() == timedelta(0)

    [reserved] = [r for r in stored_reservations(sessions, "fund-alpha") if r.order_id == order_id]
    # A sell at the lower of its limit (410) and the reference price (415.20).
    assert (reserved.symbol, reserved.side, reserved.quantity, reserved.exposure) == (
        "MSFT",
        "sell",
        Decimal(5000),
        Decimal(2_050_000),
    )
    assert reserved.created_by == "alice"

    # The next order of the fund sees it, still in compliance (no row yet), and as recent.
    following = check(portfolio, order("fund-alpha"), reserve=False)
    assert counted(following) == [(order_id, Decimal(5000), Decimal(2_050_000))]
    assert [r.order_id for r in following.recent_orders] == [order_id]


def test_snapshot_of_fund_beta_has_fx_crypto_and_a_short(portfolio: PortfolioActivities) -> None:
    taken = check(portfolio, order("fund-beta", "BTC-USD", "buy", "0.5", None), reserve=False)

    assert (taken.nav, taken.cash) == (Decimal(200_000_000), Decimal(50_000_000))
    assert taken.holdings == {
        "AAPL": Decimal(-10_000),
        "BTC-USD": Decimal(50),
        "EURUSD": Decimal(5_000_000),
        "MSFT": Decimal(40_000),
    }
    assert sorted(taken.instruments) == ["AAPL", "BTC-USD", "EURUSD", "MSFT"]
    crypto = taken.instruments["BTC-USD"]
    assert crypto.hours is not None and crypto.hours.always_open
    assert crypto.hours.weekdays == [0, 1, 2, 3, 4, 5, 6]
    assert (crypto.lot_size, crypto.reference_price) == (Decimal("0.0001"), Decimal(64000))
    fx = taken.instruments["EURUSD"]
    assert fx.hours == MarketHours(
        market="FX", timezone="America/New_York", opens=clock(0), closes=clock(23, 59, 59)
    )
    assert (fx.issuer, fx.sector) == ("", "Currencies")


def test_a_fund_in_another_currency_gets_rates_into_it(
    portfolio: PortfolioActivities, sessions: SessionFactory
) -> None:
    fund = new_fund(sessions, {"MSFT": "1000"}, base_currency="EUR")

    taken = check(portfolio, order(fund), reserve=False)

    # USD into EUR: one over the demo's EURUSD 1.085 (as domain.compliance.fx_rate gives it).
    assert taken.fx_to_base == {"EUR": Decimal(1), "USD": Decimal(1) / Decimal("1.085")}


# ---- reservations: which orders count, and how much -------------------------------------------


def test_a_reservation_counts_while_open_and_stops_when_canceled(
    portfolio: PortfolioActivities, sessions: SessionFactory
) -> None:
    fund = new_fund(sessions)
    first, first_id = order(fund, limit="231"), unique("ord")
    check(portfolio, first, first_id)

    def others() -> list[tuple[str, Decimal, Decimal]]:
        return counted(check(portfolio, order(fund), reserve=False))

    expected = [(first_id, Decimal(1000), Decimal(231_000))]
    # Still in compliance: no row yet.
    assert others() == expected
    for status in (OrderStatus.PENDING_APPROVAL, OrderStatus.APPROVED, OrderStatus.WORKING):
        write_row(sessions, first_id, first, status)
        assert others() == expected

    write_row(sessions, first_id, first, OrderStatus.CANCELED)

    assert others() == []
    # Gone for good: the order cannot reopen, and the next check reads less.
    assert stored_reservations(sessions, fund) == []


def test_a_filled_order_counts_once_before_and_once_after_allocation(
    portfolio: PortfolioActivities, sessions: SessionFactory
) -> None:
    fund = new_fund(sessions, {"AAPL": "5000"})
    bought, bought_id = order(fund, limit="231"), unique("ord")
    check(portfolio, bought, bought_id)
    write_row(sessions, bought_id, bought, OrderStatus.FILLED, filled="1000")

    before = check(portfolio, order(fund), reserve=False)
    assert before.holdings == {"AAPL": Decimal(5000)}
    assert counted(before) == [(bought_id, Decimal(1000), Decimal(231_000))]

    # Allocation books it into the positions, then the row says so.
    book(sessions, bought_id, bought, "1000")
    write_row(sessions, bought_id, bought, OrderStatus.ALLOCATED, filled="1000")

    after = check(portfolio, order(fund), reserve=False)
    assert after.holdings == {"AAPL": Decimal(6000)}
    assert after.reservations == []

    # Settlement changes neither.
    write_row(sessions, bought_id, bought, OrderStatus.SETTLEMENT_PENDING, filled="1000")
    assert check(portfolio, order(fund), reserve=False).holdings == {"AAPL": Decimal(6000)}


def test_an_order_canceled_after_a_partial_fill_reserves_the_fill_until_allocated(
    portfolio: PortfolioActivities, sessions: SessionFactory
) -> None:
    fund = new_fund(sessions)
    partial, partial_id = order(fund, limit="231"), unique("ord")
    check(portfolio, partial, partial_id)
    write_row(sessions, partial_id, partial, OrderStatus.CANCELED, filled="400")

    taken = check(portfolio, order(fund), reserve=False)

    # 400 of 1,000: that share of the 231,000 reserved.
    assert counted(taken) == [(partial_id, Decimal(400), Decimal(92_400))]


def test_a_sell_short_holding_nets_against_the_start_of_day_book(
    portfolio: PortfolioActivities, sessions: SessionFactory
) -> None:
    fund = new_fund(sessions, {"AAPL": "300", "MSFT": "10"})
    sold, sold_id = order(fund, side="sell_short", limit="229"), unique("ord")
    check(portfolio, sold, sold_id)
    write_row(sessions, sold_id, sold, OrderStatus.FILLED, filled="1000")
    book(sessions, sold_id, sold, "1000")
    write_row(sessions, sold_id, sold, OrderStatus.ALLOCATED, filled="1000")

    taken = check(portfolio, order(fund, "MSFT"), reserve=False)

    assert taken.holdings == {"AAPL": Decimal(-700), "MSFT": Decimal(10)}


def test_an_open_order_without_a_reservation_still_counts(
    portfolio: PortfolioActivities, sessions: SessionFactory
) -> None:
    """An order placed before reservations were kept (or by the first workflow) is valued now."""
    fund = new_fund(sessions)
    legacy, legacy_id = order(fund, "MSFT", "buy", "100", "400"), unique("ord")
    write_row(sessions, legacy_id, legacy, OrderStatus.PENDING_APPROVAL, created_by="bob")
    ended_id = unique("ord")
    write_row(sessions, ended_id, order(fund), OrderStatus.APPROVAL_REJECTED)

    taken = check(portfolio, order(fund), reserve=False)

    # A buy at the higher of 400 and 415.20.
    assert counted(taken) == [(legacy_id, Decimal(100), Decimal(41_520))]
    assert taken.reservations[0].created_by == "bob"
    assert "MSFT" in taken.instruments


# ---- the order's own reservation --------------------------------------------------------------


def test_checking_an_order_twice_keeps_one_reservation(
    portfolio: PortfolioActivities, sessions: SessionFactory
) -> None:
    fund = new_fund(sessions)
    request, order_id = order(fund, limit="231"), unique("ord")

    first = check(portfolio, request, order_id)
    [reserved] = stored_reservations(sessions, fund)
    second = check(portfolio, request, order_id)

    assert first.reservations == second.reservations == []
    assert stored_reservations(sessions, fund) == [reserved]
    # Checked again after an amendment (at release): the new terms replace the old, from the
    # time it first reserved.
    amended = request.model_copy(update={"quantity": Decimal(2000), "limit_price": Decimal(232)})
    check(portfolio, amended, order_id)
    [replaced] = stored_reservations(sessions, fund)
    assert (replaced.quantity, replaced.exposure) == (Decimal(2000), Decimal(464_000))
    assert replaced.created_at == reserved.created_at


def test_a_what_if_reserves_nothing(
    portfolio: PortfolioActivities, sessions: SessionFactory
) -> None:
    fund = new_fund(sessions)

    check(portfolio, order(fund), reserve=False)

    assert stored_reservations(sessions, fund) == []


class FixedPrices:
    """A price source of the test's own: the activity asks nothing else for prices."""

    def __init__(self, prices: dict[str, Decimal]) -> None:
        self.prices = prices
        self.asked: list[set[str]] = []

    def reference_prices(self, symbols: Collection[str]) -> dict[str, Decimal]:
        self.asked.append(set(symbols))
        return {s: p for s, p in self.prices.items() if s in symbols}


def test_prices_come_from_the_price_source(sessions: SessionFactory) -> None:
    fund = new_fund(sessions, {"MSFT": "10"})
    prices = FixedPrices({"AAPL": Decimal(250), "MSFT": Decimal(400)})
    activities = PortfolioActivities(sessions, prices)
    order_id = unique("ord")

    taken = check(activities, order(fund, limit="240"), order_id)

    assert {s: i.reference_price for s, i in taken.instruments.items()} == {
        "AAPL": Decimal(250),
        "MSFT": Decimal(400),
    }
    assert prices.asked == [{"AAPL", "MSFT"}]
    # A buy at the higher of its limit (240) and the source's price (250).
    assert [r.exposure for r in stored_reservations(sessions, fund)] == [Decimal(250_000)]


def test_an_unpriced_market_order_reserves_its_quantity_at_no_value(
    sessions: SessionFactory,
) -> None:
    fund = new_fund(sessions)
    activities = PortfolioActivities(sessions, FixedPrices({}))

    taken = check(activities, order(fund, limit=None))

    assert taken.instruments["AAPL"].reference_price is None
    [reserved] = stored_reservations(sessions, fund)
    assert (reserved.quantity, reserved.exposure) == (Decimal(1000), Decimal(0))


# ---- recent orders and kill switches ----------------------------------------------------------


def test_recent_orders_are_the_last_ten_minutes(
    portfolio: PortfolioActivities, sessions: SessionFactory
) -> None:
    fund = new_fund(sessions)
    now = datetime.now(UTC)
    recent_id, old_id = unique("ord"), unique("ord")
    write_row(
        sessions,
        recent_id,
        order(fund),
        OrderStatus.COMPLIANCE_REJECTED,
        created_at=now - timedelta(minutes=9),
    )
    write_row(
        sessions,
        old_id,
        order(fund),
        OrderStatus.PENDING_APPROVAL,
        created_at=now - timedelta(minutes=11),
    )

    taken = check(portfolio, order(fund), reserve=False)

    # Rejected orders count for the rate and duplicate rules; old ones only as reservations.
    assert [(r.order_id, r.side, r.quantity) for r in taken.recent_orders] == [
        (recent_id, Side.BUY, Decimal(1000))
    ]
    assert [r.order_id for r in taken.reservations] == [old_id]


def test_kill_switches_of_the_fund_and_the_firm(
    portfolio: PortfolioActivities, sessions: SessionFactory
) -> None:
    fund, other = new_fund(sessions), new_fund(sessions)
    at = datetime(2025, 3, 3, 15, tzinfo=UTC)
    with sessions() as session:
        queries.set_kill_switch(session, fund, engaged=True, by="cora", reason="breach", at=at)
        queries.set_kill_switch(session, other, engaged=True, by="cora", reason="other", at=at)
    try:
        taken = check(portfolio, order(fund), reserve=False)
        assert [(k.scope, k.engaged_by, k.reason, k.engaged_at) for k in taken.kill_switches] == [
            (fund, "cora", "breach", at)
        ]
        with sessions() as session:
            queries.set_kill_switch(session, "*", engaged=True, by="cora", reason="firm", at=at)
        taken = check(portfolio, order(fund), reserve=False)
        assert [k.scope for k in taken.kill_switches] == ["*", fund]
    finally:
        with sessions() as session:
            queries.set_kill_switch(session, "*", engaged=False, by="cora", reason="done", at=at)


# ---- refusals ---------------------------------------------------------------------------------


def _refusal(activities: PortfolioActivities, request: OrderRequest) -> ApplicationError:
    with pytest.raises(ApplicationError) as raised:
        check(activities, request)
    assert raised.value.non_retryable
    assert raised.value.type == RefusalType.INVALID_INPUT
    return raised.value


def test_an_unknown_fund_or_symbol_is_refused(
    portfolio: PortfolioActivities, sessions: SessionFactory
) -> None:
    fund = new_fund(sessions)

    assert _refusal(portfolio, order("fund-nowhere")).message == "unknown fund fund-nowhere"
    assert _refusal(portfolio, order(fund, "NOPE")).message == "unknown symbol NOPE"
    # A refused check reserves nothing.
    assert stored_reservations(sessions, fund) == []


def test_a_fund_without_nav_is_refused(
    portfolio: PortfolioActivities, sessions: SessionFactory
) -> None:
    fund = new_fund(sessions)
    with sessions() as session:
        row = session.get(FundRow, fund)
        assert row is not None
        row.nav = None
        session.add(row)
        session.commit()

    assert "has no NAV or cash" in _refusal(portfolio, order(fund)).message


def test_an_instrument_no_fx_converts_is_refused(
    portfolio: PortfolioActivities, sessions: SessionFactory
) -> None:
    fund, symbol = new_fund(sessions), unique("VOD")[:32]
    with sessions() as session:
        session.add(
            InstrumentRow(
                symbol=symbol,
                name="Vodafone",
                asset_class="equity",
                currency="GBP",
                reference_price=Decimal("0.7"),
            )
        )
        session.commit()

    message = _refusal(portfolio, order(fund, symbol, limit=None)).message

    assert message == (
        f"no FX rate to value {symbol} (GBP) in {fund}'s base currency USD: "
        "no priced FX instrument GBPUSD or USDGBP"
    )


# ---- two checks of one fund at once -----------------------------------------------------------


class HeldPrices:
    """A price source that holds the check asking it until released: the check's transaction
    (and the fund's lock) stays open meanwhile."""

    def __init__(self, prices: PriceSource) -> None:
        self._prices = prices
        self.asked = threading.Event()
        self.release = threading.Event()

    def reference_prices(self, symbols: Collection[str]) -> dict[str, Decimal]:
        self.asked.set()
        if not self.release.wait(DEADLINE_SECONDS):
            raise AssertionError("the held check was never released")
        return self._prices.reference_prices(symbols)


def _wait(condition: Callable[[], bool], pending: Future[Any], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        if pending.done():
            pending.result()
            raise AssertionError(f"finished before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"never {what}")
        time.sleep(POLL_SECONDS)


def _blocked_on_another_backend(engine: Engine) -> Callable[[], bool]:
    """Return a probe: is a backend of this database waiting on another's lock (PostgreSQL)?"""
    query = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND cardinality(pg_blocking_pids(pid)) > 0"
    )

    def probe() -> bool:
        with engine.connect() as observer:
            return bool(observer.execute(query).scalar_one())

    return probe


def test_concurrent_checks_of_one_fund_see_each_other(
    engine: Engine, sessions: SessionFactory
) -> None:
    fund = new_fund(sessions)
    held = HeldPrices(ReadModelPrices(sessions))
    first_id, second_id = unique("ord"), unique("ord")
    second_done = threading.Event()

    def second_check() -> PortfolioSnapshot:
        try:
            return check(
                PortfolioActivities(sessions, ReadModelPrices(sessions)), order(fund), second_id
            )
        finally:
            second_done.set()

    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(check, PortfolioActivities(sessions, held), order(fund), first_id)
        try:
            # The first check has read the fund and holds its lock, not yet reserved.
            _wait(held.asked.is_set, first, "the first check took its lock")
            second = pool.submit(second_check)
            if engine.dialect.name == "postgresql":
                _wait(_blocked_on_another_backend(engine), second, "the second check waited")
            else:
                # SQLite: the second waits to begin its transaction (BEGIN IMMEDIATE); whatever
                # it did meanwhile, it cannot have read before the first commits.
                assert not second_done.wait(0.5)
        finally:
            held.release.set()
        first_taken = first.result(timeout=DEADLINE_SECONDS)
        second_taken = second.result(timeout=DEADLINE_SECONDS)

    assert first_taken.reservations == []
    assert counted(second_taken) == [(first_id, Decimal(1000), Decimal(231_000))]
    assert [r.order_id for r in stored_reservations(sessions, fund)] == sorted(
        [first_id, second_id]
    )


@pytest.mark.postgres
def test_checks_of_other_funds_do_not_wait(engine: Engine, sessions: SessionFactory) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite serialises every writer: only PostgreSQL locks one fund")
    fund, other = new_fund(sessions), new_fund(sessions)
    held = HeldPrices(ReadModelPrices(sessions))

    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(check, PortfolioActivities(sessions, held), order(fund))
        try:
            _wait(held.asked.is_set, first, "the first check took its lock")
            taken = check(PortfolioActivities(sessions, ReadModelPrices(sessions)), order(other))
        finally:
            held.release.set()
        first.result(timeout=DEADLINE_SECONDS)

    assert taken.fund == other


# ---- demo data on a read model made by older code ---------------------------------------------


@pytest.fixture(params=BACKENDS)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of this test's own, with no tables yet."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'oms.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip("OMS_TEST_POSTGRES_URL is not set")
    yield from _postgres_database()


def _make_old_read_model(url: str) -> None:
    """Leave at `url` the read model and demo data as they were before portfolio data existed."""
    engine = make_engine(url)
    try:
        create_schema(engine)
        with session_factory(engine)() as session:
            load_demo_data(session)
        with engine.begin() as connection:
            for table, column in [
                ("funds", "nav"),
                ("funds", "cash"),
                ("instruments", "issuer"),
                ("instruments", "sector"),
                ("instruments", "market"),
            ]:
                connection.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
            for table in ("markets", "holdings_sod", "compliance_reservations"):
                connection.execute(text(f"DROP TABLE {table}"))
    finally:
        engine.dispose()


def test_demo_data_migrates_an_old_read_model_and_loads_twice(empty_database_url: str) -> None:
    _make_old_read_model(empty_database_url)

    engine = make_engine(empty_database_url)
    try:
        create_schema(engine)
        tables = set(inspect(engine).get_table_names())
        assert {"markets", "holdings_sod", "compliance_reservations"} <= tables
        sessions = session_factory(engine)
        with sessions() as session:
            load_demo_data(session)
        # Values set since the demo data was loaded are kept by a second load.
        with sessions() as session:
            alpha = session.get(FundRow, "fund-alpha")
            holding = session.get(HoldingSodRow, ("alpha-main", "AAPL"))
            assert alpha is not None and holding is not None
            alpha.nav, holding.quantity = Decimal(600_000_000), Decimal(1)
            session.add_all([alpha, holding])
            session.commit()
        with sessions() as session:
            load_demo_data(session)
        with sessions() as session:
            alpha = session.get(FundRow, "fund-alpha")
            beta = session.get(FundRow, "fund-beta")
            aapl = session.get(InstrumentRow, "AAPL")
            holding = session.get(HoldingSodRow, ("alpha-main", "AAPL"))
            markets = sorted(m.market for m in session.exec(select(MarketRow)))
            holdings = len(list(session.exec(select(HoldingSodRow))))
        assert alpha is not None and beta is not None and aapl is not None
        assert (alpha.nav, alpha.cash) == (Decimal(600_000_000), Decimal(100_000_000))
        assert (beta.nav, beta.cash) == (Decimal(200_000_000), Decimal(50_000_000))
        assert (aapl.issuer, aapl.sector, aapl.market) == ("Apple Inc.", "Technology", "XNYS")
        assert holding is not None and holding.quantity == Decimal(1)
        assert markets == ["CRYPTO", "FX", "XNYS"]
        assert holdings == 8

        taken = check(PortfolioActivities(sessions, ReadModelPrices(sessions)), order("fund-beta"))
        assert taken.holdings["MSFT"] == Decimal(40_000)
    finally:
        engine.dispose()
