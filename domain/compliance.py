"""Pre-trade compliance rules: pure functions of the order and a snapshot of the data they look at."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import NamedTuple

from domain.models import (
    MAX_PLACES,
    AssetClass,
    ComplianceOutcome,
    ComplianceResult,
    ComplianceSnapshot,
    Instrument,
    OrderRequest,
    tidy,
)

Rule = Callable[[OrderRequest, ComplianceSnapshot], ComplianceResult]

# An inverted rate is rounded; fixing its precision here keeps it independent of the caller's
# decimal context.
_INVERSE = Context(prec=28, rounding=ROUND_HALF_EVEN)
# Enough digits that quantity x price x rate is exact before it is rounded to the read model's
# places (amounts below 1e15 with 12 places, times a rate of 28 digits).
_VALUATION = Context(prec=100, rounding=ROUND_HALF_EVEN)
_PLACES = Decimal(1).scaleb(-MAX_PLACES)


def order_price(order: OrderRequest, snapshot: ComplianceSnapshot) -> Decimal:
    """Return the price the order is valued at: its limit, else the instrument's reference price."""
    return (
        order.limit_price if order.limit_price is not None else snapshot.instrument.reference_price
    )


def order_notional(order: OrderRequest, snapshot: ComplianceSnapshot) -> Decimal:
    """Return the order's notional in the instrument's currency."""
    return tidy(order.quantity * order_price(order, snapshot))


class FxRate(NamedTuple):
    """How to convert an amount from one currency into another.

    Attributes:
        rate: multiply an amount in the first currency by this to get the second.
        symbol: the FX instrument whose reference price gave the rate; None when the currencies
            are the same (rate 1).
    """

    rate: Decimal
    symbol: str | None


def fx_pair_symbols(from_currency: str, to_currency: str) -> tuple[str, str]:
    """Return the FX instruments that can convert `from_currency` into `to_currency`.

    Returns:
        The direct pair (EURUSD converts EUR into USD at its price) and the inverse pair (USDEUR,
        at one over its price), in the order they are preferred.
    """
    return f"{from_currency}{to_currency}", f"{to_currency}{from_currency}"


def fx_rate(
    from_currency: str, to_currency: str, instruments: Mapping[str, Instrument]
) -> FxRate | None:
    """Return the rate from `from_currency` into `to_currency`, or None when none is known.

    Args:
        from_currency: the currency amounts are in (an instrument's).
        to_currency: the currency they are wanted in (a fund's base currency).
        instruments: the instruments found under the symbols `fx_pair_symbols` names.

    Only an FX spot instrument priced in its pair's second currency counts: EURUSD priced in USD
    is dollars per euro; anything else under that name would give a wrong rate.
    """
    if from_currency == to_currency:
        return FxRate(rate=Decimal(1), symbol=None)
    direct, inverse = fx_pair_symbols(from_currency, to_currency)
    price = _fx_price(instruments.get(direct), quoted_in=to_currency)
    if price is not None:
        return FxRate(rate=price, symbol=direct)
    price = _fx_price(instruments.get(inverse), quoted_in=from_currency)
    if price is not None:
        return FxRate(rate=_INVERSE.divide(Decimal(1), price), symbol=inverse)
    return None


def _fx_price(instrument: Instrument | None, quoted_in: str) -> Decimal | None:
    if (
        instrument is None
        or instrument.asset_class is not AssetClass.FX_SPOT
        or instrument.currency != quoted_in
    ):
        return None
    return instrument.reference_price


def approval_notional(order: OrderRequest, snapshot: ComplianceSnapshot) -> Decimal:
    """Return what the approval matrix looks at: the order valued in the fund's base currency.

    The value is the quantity at the instrument's reference price (not the limit price, which
    the order's creator chooses), times `snapshot.fx_rate`, rounded half-even to the read
    model's 12 places: an inverted rate (1 / 1.085) is itself rounded, and must not leave an
    order worth exactly a bound a hair's breadth below it.

    A snapshot taken before valuation was captured (no `fund_currency`) values the order in the
    instrument's currency, as orders were then.

    Raises:
        ValueError: the snapshot names a fund currency other than the instrument's but no rate,
            which `ComplianceActivities.compliance_snapshot` never returns.
    """
    instrument = snapshot.instrument
    rate = snapshot.fx_rate
    if rate is None:
        if snapshot.fund_currency not in (None, instrument.currency):
            raise ValueError(
                f"no FX rate from {instrument.currency} to {snapshot.fund_currency} in the snapshot"
            )
        rate = Decimal(1)
    value = _VALUATION.multiply(
        _VALUATION.multiply(order.quantity, instrument.reference_price), rate
    )
    rounded = value.quantize(_PLACES, context=_VALUATION).normalize(_VALUATION)
    # As `tidy` does, without its default context's 28 digits.
    return Decimal(format(rounded, "f"))


def approval_currency(snapshot: ComplianceSnapshot) -> str:
    """Return the currency `approval_notional` is in: the fund's, else the instrument's."""
    return snapshot.fund_currency or snapshot.instrument.currency


def restricted_list(order: OrderRequest, snapshot: ComplianceSnapshot) -> ComplianceResult:
    """Fail any order in an instrument on the firm's restricted list."""
    if order.symbol in snapshot.restricted_symbols:
        return ComplianceResult(
            rule="restricted_list",
            outcome=ComplianceOutcome.FAIL,
            message=f"{order.symbol} is on the firm's restricted list",
            observed=order.symbol,
        )
    return ComplianceResult(
        rule="restricted_list",
        outcome=ComplianceOutcome.PASS,
        message=f"{order.symbol} is not restricted",
        observed=order.symbol,
    )


def max_order_notional(order: OrderRequest, snapshot: ComplianceSnapshot) -> ComplianceResult:
    """Fail an order above the fund's maximum notional; warn above its soft threshold."""
    notional = order_notional(order, snapshot)
    currency = snapshot.instrument.currency
    hard, soft = snapshot.max_order_notional, snapshot.warn_order_notional
    if hard is not None and notional > hard:
        return ComplianceResult(
            rule="max_order_notional",
            outcome=ComplianceOutcome.FAIL,
            message=f"order notional {notional:,.2f} {currency} exceeds the fund's maximum {hard:,.2f}",
            observed=str(notional),
            limit=str(hard),
        )
    if soft is not None and notional > soft:
        return ComplianceResult(
            rule="max_order_notional",
            outcome=ComplianceOutcome.WARN,
            message=f"order notional {notional:,.2f} {currency} exceeds the soft limit {soft:,.2f}",
            observed=str(notional),
            limit=str(soft),
        )
    return ComplianceResult(
        rule="max_order_notional",
        outcome=ComplianceOutcome.PASS,
        message=f"order notional {notional:,.2f} {currency} is within limits",
        observed=str(notional),
        limit=str(hard) if hard is not None else None,
    )


RULES: tuple[Rule, ...] = (restricted_list, max_order_notional)


def evaluate(order: OrderRequest, snapshot: ComplianceSnapshot) -> list[ComplianceResult]:
    """Run every rule on the order and return all results, in rule order."""
    return [rule(order, snapshot) for rule in RULES]


def worst_outcome(results: list[ComplianceResult]) -> ComplianceOutcome:
    """Return fail if any rule failed, else warn if any warned, else pass."""
    outcomes = {r.outcome for r in results}
    for outcome in (ComplianceOutcome.FAIL, ComplianceOutcome.WARN):
        if outcome in outcomes:
            return outcome
    return ComplianceOutcome.PASS
