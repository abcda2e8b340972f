"""What pre-trade compliance looks at: the fund as it stands, and its open orders.

An activity captures a `PortfolioSnapshot` once per check (and once more at release), so the
assessment in `domain.assessment` is a pure function of it: the same snapshot gives the same
results in the workflow, the what-if endpoint and the release re-check.
"""

from __future__ import annotations

from datetime import datetime, time
from decimal import ROUND_HALF_EVEN, Context, Decimal

from pydantic import BaseModel, ConfigDict, Field

from domain.models import MAX_PLACES, AssetClass, OrderRequest, OrderStatus, Side
from domain.status import is_final


class MarketHours(BaseModel):
    """When an instrument's market trades: local opening hours on its trading days."""

    model_config = ConfigDict(frozen=True)

    market: str = Field(description="The market's code, e.g. XNYS; 24x7 markets say so.")
    timezone: str = Field(description="IANA time zone of the hours below, e.g. America/New_York.")
    opens: time
    closes: time
    weekdays: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4], description="Monday is 0.")
    always_open: bool = Field(default=False, description="Trades around the clock (crypto).")


class InstrumentData(BaseModel):
    """Reference data of one instrument, as the rules see it."""

    model_config = ConfigDict(frozen=True)

    symbol: str
    asset_class: AssetClass
    currency: str
    reference_price: Decimal | None = Field(
        default=None, description="None: no price known (a market order then fails the collar)."
    )
    lot_size: Decimal = Decimal(1)
    issuer: str = ""
    sector: str = ""
    hours: MarketHours | None = None


class Reservation(BaseModel):
    """An open order of the fund (not terminal, pending approval included) and its exposure.

    Every open order reserves what it would add, so two orders cannot jointly breach a limit.
    """

    model_config = ConfigDict(frozen=True)

    order_id: str
    symbol: str
    side: Side
    quantity: Decimal = Field(description="What is still open: not yet in the positions.")
    exposure: Decimal = Field(description="Valued conservatively, in the fund's base currency.")
    created_by: str
    created_at: datetime


class RecentOrder(BaseModel):
    """An order of the fund created lately (duplicate and rate rules look at these)."""

    model_config = ConfigDict(frozen=True)

    order_id: str
    symbol: str
    side: Side
    quantity: Decimal
    created_by: str
    created_at: datetime


class KillSwitch(BaseModel):
    """A kill switch engaged for the fund, or firm-wide (`scope` "*")."""

    model_config = ConfigDict(frozen=True)

    scope: str
    engaged_by: str
    reason: str
    engaged_at: datetime


class PortfolioSnapshot(BaseModel):
    """The fund as it stands when the check runs, in its base currency."""

    model_config = ConfigDict(frozen=True)

    fund: str
    base_currency: str
    nav: Decimal
    cash: Decimal
    holdings: dict[str, Decimal] = Field(
        default_factory=dict,
        description="symbol -> quantity (long positive, short negative): start-of-day holdings "
        "plus today's allocations.",
    )
    instruments: dict[str, InstrumentData] = Field(
        default_factory=dict,
        description="Reference data of the order's instrument and of every instrument held or "
        "reserved.",
    )
    fx_to_base: dict[str, Decimal] = Field(
        default_factory=dict,
        description="currency -> how many units of the base currency one unit is worth.",
    )
    reservations: list[Reservation] = Field(
        default_factory=list, description="The fund's other open orders."
    )
    recent_orders: list[RecentOrder] = Field(
        default_factory=list, description="The fund's orders of the last few minutes."
    )
    kill_switches: list[KillSwitch] = Field(
        default_factory=list, description="Kill switches engaged for this fund or the firm."
    )
    taken_at: datetime


# ---- valuation --------------------------------------------------------------------------------

# Enough digits that quantity x price x rate is exact before it is rounded to the read model's
# places (amounts below 1e15 with 12 places, times a rate of 28 digits), whatever the caller's
# decimal context is.
_VALUATION = Context(prec=100, rounding=ROUND_HALF_EVEN)
_PLACES = Decimal(1).scaleb(-MAX_PLACES)


class NoPriceError(ValueError):
    """Raised when an order cannot be valued: no price to value it at.

    A value of 0 would let an order of any size through every limit, so the caller decides what
    an unpriced order means (the reservation records its quantity; the rules refuse it).

    Attributes:
        symbol: the instrument without a price.
    """

    def __init__(self, symbol: str, what: str) -> None:
        super().__init__(f"cannot value {what} in {symbol}: no price known")
        self.symbol = symbol


def exposure_price(
    side: Side, limit_price: Decimal | None, reference_price: Decimal | None, symbol: str
) -> Decimal:
    """Return the price an order's exposure is valued at: the worse of its limit and the market.

    A buy is valued at the higher and a sell (or short sale) at the lower of its limit price and
    the reference price; a market order (no limit) at the reference price; an order in an
    instrument without a reference price at its limit.

    Raises:
        NoPriceError: neither price is known.
    """
    if limit_price is None and reference_price is None:
        raise NoPriceError(symbol, "the exposure of a market order")
    if limit_price is None:
        assert reference_price is not None  # for mypy: both None raised above
        return reference_price
    if reference_price is None:
        return limit_price
    if side is Side.BUY:
        return max(limit_price, reference_price)
    return min(limit_price, reference_price)


def value_in_base(quantity: Decimal, price: Decimal, fx_to_base: Decimal) -> Decimal:
    """Return quantity x price x rate, exact, rounded half-even to the read model's 12 places.

    Raises:
        ValueError: the rate is not a positive number (a missing rate must not read as free).
    """
    if not fx_to_base.is_finite() or fx_to_base <= 0:
        raise ValueError(f"an FX rate must be positive, not {fx_to_base}")
    value = _VALUATION.multiply(_VALUATION.multiply(quantity, price), fx_to_base)
    rounded = value.quantize(_PLACES, context=_VALUATION).normalize(_VALUATION)
    # As `domain.models.tidy` does, without its default context's 28 digits.
    return Decimal(format(rounded, "f"))


def prorated(amount: Decimal, part: Decimal, whole: Decimal) -> Decimal:
    """Return `amount` x `part` / `whole`, rounded half-even to the read model's 12 places.

    What part of an order's exposure a part of its quantity carries (`whole` is positive).
    """
    if part == whole:
        return amount
    value = _VALUATION.divide(_VALUATION.multiply(amount, part), whole)
    rounded = value.quantize(_PLACES, context=_VALUATION).normalize(_VALUATION)
    return Decimal(format(rounded, "f"))


def order_exposure(order: OrderRequest, instrument: InstrumentData, fx_to_base: Decimal) -> Decimal:
    """Return what the order adds to the fund's exposure, valued conservatively, in base currency.

    The price is `exposure_price`'s: a buy at the higher and a sell at the lower of its limit and
    the reference price, so a limit far from the market cannot make an order look cheaper than
    it may trade. The value is positive whatever the side.

    Args:
        order: the order.
        instrument: its instrument's reference data (the reference price may be None).
        fx_to_base: units of the fund's base currency one unit of the instrument's currency buys.

    Raises:
        NoPriceError: a market order in an instrument without a reference price.
    """
    price = exposure_price(order.side, order.limit_price, instrument.reference_price, order.symbol)
    return value_in_base(order.quantity, price, fx_to_base)


def size_notional(order: OrderRequest, instrument: InstrumentData, fx_to_base: Decimal) -> Decimal:
    """Return the order's size for size limits: its quantity at the reference price, in base currency.

    The limit price plays no part, so a far-off limit (a sell limited at 0.01) cannot hide the
    size of the order.

    Raises:
        NoPriceError: the instrument has no reference price.
    """
    if instrument.reference_price is None:
        raise NoPriceError(order.symbol, "the size of an order")
    return value_in_base(order.quantity, instrument.reference_price, fx_to_base)


# ---- what an open order still reserves --------------------------------------------------------

# Booked: the order's allocations are in the positions, so its reservation would count it twice.
IN_POSITIONS = frozenset(
    {
        OrderStatus.ALLOCATED,
        OrderStatus.SETTLEMENT_PENDING,
        OrderStatus.SETTLEMENT_FAILED,
        OrderStatus.SETTLED,
    }
)


def reserved_quantity(
    status: OrderStatus | None, quantity: Decimal, filled_quantity: Decimal
) -> Decimal:
    """Return how much of an order still counts against its fund's limits, beyond its positions.

    Args:
        status: the order's status in the read model; None when it has no row yet (its
            pre-trade check is still running).
        quantity: the order's quantity (its current terms, once amended).
        filled_quantity: what has executed so far.

    Returns:
        The whole quantity while the order is open (pending approval included) or filled but
        not yet allocated; what was filled when the venue ended it early (canceled or expired)
        and allocation has not booked it yet; 0 once it is allocated (its positions count it)
        or ended with nothing executed.
    """
    if status is None:
        return quantity
    if status in IN_POSITIONS or is_final(status, filled=filled_quantity > 0):
        return Decimal(0)
    if status in (OrderStatus.CANCELED, OrderStatus.EXPIRED):
        return filled_quantity
    return quantity
