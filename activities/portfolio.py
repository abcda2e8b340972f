"""The portfolio pre-trade compliance looks at, captured while the order reserves its exposure.

`PortfolioActivities.portfolio_snapshot` reads the fund as it stands (holdings, open orders,
reference data, prices, FX rates, kill switches) and records what the order itself reserves, in
one transaction that no other check of the fund can interleave with: two orders checked at once
see each other, so they cannot jointly breach a limit that each passes alone.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Protocol

from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError

from db import queries
from db.engine import SessionFactory
from db.tables import ComplianceReservationRow, MarketRow, OrderRow
from domain.compliance import fx_pair_symbols, fx_rate
from domain.errors import RefusalType
from domain.models import AssetClass, Instrument, OrderRequest, OrderStatus, Side, tidy
from domain.portfolio import (
    InstrumentData,
    KillSwitch,
    MarketHours,
    NoPriceError,
    PortfolioSnapshot,
    RecentOrder,
    Reservation,
    exposure_price,
    order_exposure,
    prorated,
    reserved_quantity,
    value_in_base,
)
from domain.status import AT_VENUE, PRE_RELEASE

# How far back the duplicate and rate rules look.
RECENT_WINDOW = timedelta(minutes=10)

# Orders that hold no reservation (placed before reservations were kept, or by the first
# workflow) but still count: open, or filled and waiting to be allocated. Ended orders are left
# out, as their quantity is either nothing or in the positions by the time anyone checks.
_UNRESERVED_OPEN = frozenset({*PRE_RELEASE, *AT_VENUE, OrderStatus.FILLED})


class PriceSource(Protocol):
    """Where reference prices come from: one place, so market data can replace it."""

    def reference_prices(self, symbols: Collection[str]) -> dict[str, Decimal]:
        """Return the price of each of `symbols` that has one; a symbol left out has none."""
        ...


class ReadModelPrices:
    """Reference prices as the read model's `instruments` table holds them today."""

    def __init__(self, sessions: SessionFactory) -> None:
        self._sessions = sessions

    def reference_prices(self, symbols: Collection[str]) -> dict[str, Decimal]:
        """Return the stored reference price of each known symbol of `symbols`."""
        if not symbols:
            return {}
        with self._sessions() as session:
            return queries.instrument_reference_prices(session, symbols)


class PortfolioSnapshotInput(BaseModel):
    """Which order to take the fund's snapshot for.

    Attributes:
        order_id: the order's id: its own reservation is written under it and left out of the
            snapshot's `reservations`.
        order: the order as requested (or as amended, when checked again).
        created_by: who placed the order, recorded on its reservation.
        reserve: whether to record the order's reservation (False: a what-if that must not
            count against the fund).
    """

    order_id: str
    order: OrderRequest
    created_by: str
    reserve: bool = True


def _refuse(message: str) -> ApplicationError:
    return ApplicationError(message, type=RefusalType.INVALID_INPUT, non_retryable=True)


def _instrument_data(
    references: Mapping[str, queries.InstrumentReference],
    prices: Mapping[str, Decimal],
    markets: Mapping[str, MarketRow],
) -> dict[str, InstrumentData]:
    hours = {code: _hours_key(market) for code, market in markets.items()}
    return {
        symbol: _instrument(ref, prices.get(symbol), hours.get(ref.market) if ref.market else None)
        for symbol, ref in sorted(references.items())
    }


_HoursKey = tuple[str, str, time, time, tuple[int, ...], bool]


def _hours_key(market: MarketRow) -> _HoursKey:
    return (
        market.market,
        market.timezone,
        market.opens,
        market.closes,
        tuple(market.weekdays),
        market.always_open,
    )


@functools.lru_cache(maxsize=100_000)
def _instrument(
    ref: queries.InstrumentReference, price: Decimal | None, hours: _HoursKey | None
) -> InstrumentData:
    """Return an instrument's data: one frozen instance per distinct value, kept across checks.

    Building 10,000 of them was the largest part of a big fund's check (under the fund's lock).
    The reference data, the price and the market's hours are the key, so a change to any of
    them gives a new instance.
    """
    return InstrumentData(
        symbol=ref.symbol,
        asset_class=AssetClass(ref.asset_class),
        currency=ref.currency,
        reference_price=price,
        lot_size=ref.lot_size,
        issuer=ref.issuer,
        sector=ref.sector,
        hours=None if hours is None else _market_hours(hours),
    )


@functools.lru_cache(maxsize=1_000)
def _market_hours(key: _HoursKey) -> MarketHours:
    # One instance per market's hours, shared by its instruments (pydantic keeps a model
    # instance as given): a fund may hold thousands of instruments on a handful of markets.
    market, timezone, opens, closes, weekdays, always_open = key
    return MarketHours(
        market=market,
        timezone=timezone,
        opens=opens,
        closes=closes,
        weekdays=list(weekdays),
        always_open=always_open,
    )


def _fx_to_base(
    base: str,
    currencies: Iterable[str],
    pairs: Mapping[str, queries.InstrumentReference],
    prices: Mapping[str, Decimal],
) -> dict[str, Decimal]:
    """Return the rate into `base` of each currency that has one (as `domain.compliance.fx_rate`)."""
    priced = {
        symbol: Instrument(
            symbol=symbol,
            asset_class=AssetClass(pair.asset_class),
            currency=pair.currency,
            reference_price=prices[symbol],
            lot_size=pair.lot_size,
        )
        for symbol, pair in pairs.items()
        # A zero price would give no rate (or an infinite inverse); treated as no price.
        if prices.get(symbol, Decimal(0)) > 0
    }
    rates: dict[str, Decimal] = {}
    for currency in sorted({base, *currencies}):
        rate = fx_rate(currency, base, priced)
        if rate is not None:
            rates[currency] = rate.rate
    return rates


class PortfolioActivities:
    """Capture the fund as pre-trade compliance sees it, and reserve what each order adds.

    Args:
        sessions: the read model's session factory.
        prices: where reference prices come from (instruments' and FX pairs').
        recent_window: how far back `PortfolioSnapshot.recent_orders` reaches.
    """

    def __init__(
        self,
        sessions: SessionFactory,
        prices: PriceSource,
        recent_window: timedelta = RECENT_WINDOW,
    ) -> None:
        self._sessions = sessions
        self._prices = prices
        self._recent_window = recent_window

    @activity.defn
    def portfolio_snapshot(self, input: PortfolioSnapshotInput) -> PortfolioSnapshot:
        """Return the fund as it stands, and (when `input.reserve`) reserve the order's exposure.

        See `snapshot_then_reserve`, of which this is the activity that always reserves.
        """
        return self.snapshot_then_reserve(input)

    def snapshot_then_reserve(
        self,
        input: PortfolioSnapshotInput,
        decide: Callable[[PortfolioSnapshot], bool] | None = None,
    ) -> PortfolioSnapshot:
        """Return the fund as it stands, and (when `input.reserve`) reserve the order's exposure.

        Reading and reserving are one transaction under the fund's lock
        (`queries.lock_fund_for_check`): a second check of the fund waits for this one and then
        sees its reservation. Calling it again for the same order replaces the order's
        reservation (one per order) and never counts the order against itself.

        Holdings are the start-of-day book plus the positions booked since (see
        `queries.fund_holdings`). Every other order of the fund reserves what is not in the
        positions yet (`domain.portfolio.reserved_quantity`): the whole order while it is open
        or awaiting allocation, pending approval included. `decide`, when given, sees the
        snapshot under the lock and says whether the order is to reserve (a rejected one is not).

        Raises:
            ApplicationError: non-retryable, of type InvalidInput, for an unknown fund or
                instrument, a fund without NAV or cash, or an instrument whose currency no FX
                instrument converts into the fund's: the order cannot be judged.
        """
        order = input.order
        with self._sessions() as session:
            fund = queries.lock_fund_for_check(session, order.fund)
            if fund is None:
                raise _refuse(f"unknown fund {order.fund}")
            if fund.nav is None or fund.cash is None:
                raise _refuse(
                    f"fund {order.fund} has no NAV or cash recorded: it cannot be checked"
                )
            # After the lock: nothing committed before this instant is missing from the snapshot.
            taken_at = datetime.now(UTC)
            base = fund.base_currency

            holdings = queries.fund_holdings(session, order.fund)
            reserved = queries.reservations_with_status(session, order.fund, input.order_id)
            unreserved = queries.unreserved_orders(
                session, order.fund, _UNRESERVED_OPEN, input.order_id
            )
            recent = queries.orders_created_since(
                session, order.fund, taken_at - self._recent_window, input.order_id
            )
            switches = queries.engaged_kill_switches(session, order.fund)

            symbols = {
                order.symbol,
                *holdings,
                *(r.reservation.symbol for r in reserved),
                *(row.symbol for row in unreserved),
            }
            references = queries.instrument_references(session, symbols)
            if order.symbol not in references:
                raise _refuse(f"unknown symbol {order.symbol}")
            currencies = {ref.currency for ref in references.values()}
            pair_symbols = {
                pair for currency in currencies for pair in fx_pair_symbols(currency, base)
            }
            pairs = queries.instrument_references(session, pair_symbols - references.keys())
            pairs |= {s: references[s] for s in pair_symbols & references.keys()}
            prices = self._prices.reference_prices(references.keys() | pairs.keys())
            instruments = _instrument_data(references, prices, queries.all_markets(session))
            fx_to_base = _fx_to_base(base, currencies, pairs, prices)

            instrument = instruments[order.symbol]
            if instrument.currency not in fx_to_base:
                direct, inverse = fx_pair_symbols(instrument.currency, base)
                raise _refuse(
                    f"no FX rate to value {order.symbol} ({instrument.currency}) in "
                    f"{order.fund}'s base currency {base}: no priced FX instrument {direct} "
                    f"or {inverse}"
                )

            reservations, ended = _count_reservations(reserved)
            reservations += _value_unreserved(unreserved, instruments, fx_to_base)
            reservations.sort(key=lambda r: (r.created_at, r.order_id))
            # Kept small: a reservation that counts for nothing is gone for good (order
            # statuses only move forward), and this transaction already holds the fund's lock.
            queries.delete_reservations(session, ended)

            snapshot = PortfolioSnapshot(
                fund=order.fund,
                base_currency=base,
                # Storage pads decimals (PostgreSQL: 12 places); the snapshot shows them as written.
                nav=tidy(fund.nav),
                cash=tidy(fund.cash),
                holdings=holdings,
                instruments=instruments,
                fx_to_base=fx_to_base,
                reservations=reservations,
                recent_orders=_recent_orders(recent, reserved, taken_at - self._recent_window),
                kill_switches=[
                    KillSwitch(
                        scope=row.scope,
                        engaged_by=row.engaged_by,
                        reason=row.reason,
                        engaged_at=row.engaged_at,
                    )
                    for row in switches
                ],
                taken_at=taken_at,
            )
            if input.reserve and (decide is None or decide(snapshot)):
                try:
                    exposure = order_exposure(order, instrument, fx_to_base[instrument.currency])
                except NoPriceError:
                    # A market order in an instrument without a price: its quantity is still
                    # reserved (quantity limits count it) but its value is unknown, and the
                    # rules refuse an order they cannot value, so nothing is lost by 0 here.
                    exposure = Decimal(0)
                queries.upsert_reservation(
                    session,
                    ComplianceReservationRow(
                        order_id=input.order_id,
                        fund=order.fund,
                        symbol=order.symbol,
                        side=order.side.value,
                        quantity=order.quantity,
                        exposure=exposure,
                        created_by=input.created_by,
                        created_at=taken_at,
                    ),
                )
            session.commit()
        return snapshot


def _count_reservations(
    reserved: Iterable[queries.ReservationWithStatus],
) -> tuple[list[Reservation], list[str]]:
    """Return the reservations that still count, and the order ids of those that do not.

    What counts is what is not in the positions yet; its exposure is the reserved exposure in
    proportion (an order half filled then canceled reserves half until it is allocated).
    """
    counted: list[Reservation] = []
    ended: list[str] = []
    for item in reserved:
        row = item.reservation
        status = None if item.status is None else OrderStatus(item.status)
        quantity = row.quantity if item.quantity is None else item.quantity
        filled = item.filled_quantity or Decimal(0)
        open_quantity = reserved_quantity(status, quantity, filled)
        if open_quantity <= 0:
            ended.append(row.order_id)
            continue
        exposure = prorated(row.exposure, open_quantity, row.quantity)
        counted.append(
            Reservation(
                order_id=row.order_id,
                symbol=row.symbol,
                side=Side(row.side),
                quantity=tidy(open_quantity),
                exposure=tidy(exposure),
                created_by=row.created_by,
                created_at=row.created_at,
            )
        )
    return counted, ended


def _value_unreserved(
    rows: Iterable[OrderRow],
    instruments: Mapping[str, InstrumentData],
    fx_to_base: Mapping[str, Decimal],
) -> list[Reservation]:
    """Value, as their reservation would have, the open orders that hold none."""
    counted: list[Reservation] = []
    for row in rows:
        side = Side(row.side)
        quantity = reserved_quantity(OrderStatus(row.status), row.quantity, row.filled_quantity)
        instrument = instruments.get(row.symbol)
        exposure = Decimal(0)
        if instrument is not None and instrument.currency in fx_to_base:
            # As for the order being checked: unpriced (or unconvertible) counts its quantity only.
            try:
                price = exposure_price(
                    side, row.limit_price, instrument.reference_price, row.symbol
                )
                exposure = value_in_base(quantity, price, fx_to_base[instrument.currency])
            except NoPriceError:
                pass
        counted.append(
            Reservation(
                order_id=row.order_id,
                symbol=row.symbol,
                side=side,
                quantity=tidy(quantity),
                exposure=exposure,
                created_by=row.created_by,
                created_at=row.created_at,
            )
        )
    return counted


def _recent_orders(
    rows: Iterable[queries.CreatedOrder],
    reserved: Iterable[queries.ReservationWithStatus],
    since: datetime,
) -> list[RecentOrder]:
    """Return the fund's orders created since `since`: rows, and reservations of orders with none.

    An order whose check ran but whose row is not written yet is recent too (its reservation
    was made when it was checked, moments after it was created).
    """
    recent = {
        row.order_id: RecentOrder(
            order_id=row.order_id,
            symbol=row.symbol,
            side=Side(row.side),
            quantity=tidy(row.quantity),
            created_by=row.created_by,
            created_at=row.created_at,
        )
        for row in rows
    }
    for item in reserved:
        row = item.reservation
        if item.status is None and row.created_at >= since and row.order_id not in recent:
            recent[row.order_id] = RecentOrder(
                order_id=row.order_id,
                symbol=row.symbol,
                side=Side(row.side),
                quantity=tidy(row.quantity),
                created_by=row.created_by,
                created_at=row.created_at,
            )
    return sorted(recent.values(), key=lambda r: (r.created_at, r.order_id))
