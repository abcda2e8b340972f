"""Valuation for pre-trade compliance: exposure (conservative) and size (at the reference price).

An order's exposure is valued at the worse of its limit and the market for the fund: a buy at the
higher, a sell at the lower. Its size is valued at the reference price alone, so a limit far from
the market cannot hide how big the order is. Neither is ever 0 for want of a price.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.models import AssetClass, OrderRequest, OrderStatus, OrderType, Side
from domain.portfolio import (
    IN_POSITIONS,
    InstrumentData,
    NoPriceError,
    exposure_price,
    order_exposure,
    prorated,
    reserved_quantity,
    size_notional,
)
from domain.status import FINAL

AAPL = InstrumentData(
    symbol="AAPL", asset_class=AssetClass.EQUITY, currency="USD", reference_price=Decimal("230.50")
)
UNPRICED = AAPL.model_copy(update={"reference_price": None})
SAP = InstrumentData(
    symbol="SAP", asset_class=AssetClass.EQUITY, currency="EUR", reference_price=Decimal("200")
)


def order(side: str, quantity: str, limit: str | None = None, **overrides: Any) -> OrderRequest:
    """Return an order of AAPL in fund-alpha: a limit order when `limit` is given, else market."""
    fields: dict[str, Any] = {
        "client_order_id": "c-1",
        "fund": "fund-alpha",
        "symbol": "AAPL",
        "side": side,
        "quantity": Decimal(quantity),
        "order_type": OrderType.MARKET if limit is None else OrderType.LIMIT,
        "limit_price": None if limit is None else Decimal(limit),
    }
    return OrderRequest.model_validate(fields | overrides)


# ---- the hostile case: a sell far below the market ---------------------------------------------


def test_a_sell_limited_far_below_the_market_shows_its_size_but_not_its_exposure() -> None:
    hostile = order("sell", "1000000", "0.01")

    # Exposure: a sell at the lower of its limit (0.01) and the reference (230.50).
    assert order_exposure(hostile, AAPL, Decimal(1)) == Decimal("10000")
    # Size: at the reference price whatever the limit, so the limit hides nothing.
    assert size_notional(hostile, AAPL, Decimal(1)) == Decimal("230500000")


# ---- exposure: both sides, both order types ----------------------------------------------------


@pytest.mark.parametrize(
    ("side", "limit", "exposure"),
    [
        # Buys at the higher of limit and reference.
        ("buy", "231", "231000"),
        ("buy", "200", "230500"),
        ("buy", "230.50", "230500"),
        ("buy", None, "230500"),
        # Sells and short sales at the lower.
        ("sell", "231", "230500"),
        ("sell", "200", "200000"),
        ("sell", None, "230500"),
        ("sell_short", "231", "230500"),
        ("sell_short", "200", "200000"),
        ("sell_short", None, "230500"),
    ],
)
def test_exposure_is_valued_at_the_worse_price(side: str, limit: str | None, exposure: str) -> None:
    assert order_exposure(order(side, "1000", limit), AAPL, Decimal(1)) == Decimal(exposure)


@pytest.mark.parametrize("side", ["buy", "sell", "sell_short"])
@pytest.mark.parametrize("limit", [None, "1", "999"])
def test_size_is_valued_at_the_reference_price(side: str, limit: str | None) -> None:
    assert size_notional(order(side, "1000", limit), AAPL, Decimal(1)) == Decimal("230500")


def test_both_are_converted_into_the_base_currency() -> None:
    sap = order("buy", "1250", "210", symbol="SAP")

    # 1,250 at 210 EUR = 262,500 EUR, at 1.085 USD per EUR.
    assert order_exposure(sap, SAP, Decimal("1.085")) == Decimal("284812.5")
    # 1,250 at 200 EUR = 250,000 EUR.
    assert size_notional(sap, SAP, Decimal("1.085")) == Decimal("271250")


def test_an_inverted_rate_is_rounded_to_twelve_places_half_even() -> None:
    inverse = Decimal(1) / Decimal("1.085")  # 0.9216589861751152073732718894 (28 digits)

    value = size_notional(order("buy", "1085"), AAPL, inverse)

    # 1,085 x 230.50 = 250,092.5 USD; exactly 230,500 EUR but for the rate's last digit.
    assert value == Decimal("230500.000000000000")
    assert -value.as_tuple().exponent <= 12  # type: ignore[operator]


def test_values_keep_every_digit_of_large_amounts() -> None:
    """More digits than the default decimal context's 28: exact, then rounded to 12 places."""
    large = order("buy", "999999999999.999999999999", "999.999999999999")
    instrument = AAPL.model_copy(update={"reference_price": Decimal("0.000000000001")})

    exposure = order_exposure(large, instrument, Decimal("1.000000000001"))

    # 999,999,999,999.999999999999 x 999.999999999999 x 1.000000000001, to 12 places.
    assert exposure == Decimal("1000000000000998.999999998999")
    assert "E" not in str(exposure)


@given(
    quantity=st.decimals(min_value="0.0001", max_value="1e9", places=4),
    limit=st.decimals(min_value="0.01", max_value="1e5", places=2),
    reference=st.decimals(min_value="0.01", max_value="1e5", places=2),
    rate=st.decimals(min_value="0.0001", max_value="1000", places=4),
)
def test_exposure_bounds_the_size_on_the_side_that_hurts(
    quantity: Decimal, limit: Decimal, reference: Decimal, rate: Decimal
) -> None:
    instrument = AAPL.model_copy(update={"reference_price": reference})
    buy, sell = order("buy", str(quantity), str(limit)), order("sell", str(quantity), str(limit))

    size = size_notional(buy, instrument, rate)

    assert size == size_notional(sell, instrument, rate) > 0
    assert order_exposure(buy, instrument, rate) >= size
    assert 0 < order_exposure(sell, instrument, rate) <= size


# ---- no price: never a silent 0 ---------------------------------------------------------------


def test_an_instrument_without_a_reference_price_is_valued_at_the_limit() -> None:
    assert order_exposure(order("buy", "1000", "231"), UNPRICED, Decimal(1)) == Decimal("231000")
    assert order_exposure(order("sell", "1000", "231"), UNPRICED, Decimal(1)) == Decimal("231000")


def test_a_market_order_without_a_reference_price_cannot_be_valued() -> None:
    with pytest.raises(NoPriceError, match="AAPL") as raised:
        order_exposure(order("buy", "1000"), UNPRICED, Decimal(1))

    assert raised.value.symbol == "AAPL"
    assert isinstance(raised.value, ValueError)


@pytest.mark.parametrize("limit", [None, "231"])
def test_a_size_without_a_reference_price_cannot_be_valued(limit: str | None) -> None:
    with pytest.raises(NoPriceError, match="no price known"):
        size_notional(order("sell", "1000", limit), UNPRICED, Decimal(1))


@pytest.mark.parametrize("rate", ["0", "-1", "NaN"])
def test_a_rate_that_is_not_positive_is_refused(rate: str) -> None:
    with pytest.raises(ValueError, match="FX rate must be positive"):
        order_exposure(order("buy", "1000"), AAPL, Decimal(rate))


def test_exposure_price_directly() -> None:
    assert exposure_price(Side.BUY, None, Decimal(5), "X") == Decimal(5)
    assert exposure_price(Side.SELL, Decimal(4), None, "X") == Decimal(4)
    with pytest.raises(NoPriceError):
        exposure_price(Side.SELL_SHORT, None, None, "X")


# ---- what an order still reserves -------------------------------------------------------------

OPEN = [
    OrderStatus.PENDING_COMPLIANCE,
    OrderStatus.PENDING_OVERRIDE,
    OrderStatus.PENDING_APPROVAL,
    OrderStatus.APPROVED,
    OrderStatus.RELEASED,
    OrderStatus.WORKING,
    OrderStatus.PARTIALLY_FILLED,
    OrderStatus.PENDING_CANCEL,
    OrderStatus.PENDING_REPLACE,
    # Executed but not yet allocated: not in the positions.
    OrderStatus.FILLED,
]


def test_every_status_is_classified() -> None:
    classified = {*OPEN, *FINAL, *IN_POSITIONS, OrderStatus.CANCELED, OrderStatus.EXPIRED}
    assert classified == set(OrderStatus)


@pytest.mark.parametrize("status", [None, *OPEN])
def test_an_open_order_reserves_its_whole_quantity(status: OrderStatus | None) -> None:
    assert reserved_quantity(status, Decimal(1000), Decimal(400)) == Decimal(1000)


@pytest.mark.parametrize("status", sorted(FINAL | IN_POSITIONS))
def test_an_ended_or_booked_order_reserves_nothing(status: OrderStatus) -> None:
    assert reserved_quantity(status, Decimal(1000), Decimal(400)) == 0


@pytest.mark.parametrize("status", [OrderStatus.CANCELED, OrderStatus.EXPIRED])
def test_an_order_ended_early_reserves_what_it_filled_until_allocated(status: OrderStatus) -> None:
    assert reserved_quantity(status, Decimal(1000), Decimal(400)) == Decimal(400)
    assert reserved_quantity(status, Decimal(1000), Decimal(0)) == 0


def test_prorated_keeps_twelve_places() -> None:
    assert prorated(Decimal("231000"), Decimal(400), Decimal(1000)) == Decimal("92400")
    assert prorated(Decimal(1), Decimal(1), Decimal(3)) == Decimal("0.333333333333")
    assert prorated(Decimal("7.5"), Decimal(3), Decimal(3)) == Decimal("7.5")
