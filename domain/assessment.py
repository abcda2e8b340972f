"""Pre-trade compliance: one pure assessment of an order against the fund after the trade.

`assess(order, snapshot, rules, matrix, created_by=...)` runs every rule the order answers to
(`CompliancePolicy.rules_for`) on a `PortfolioSnapshot` and returns each rule's result, the
worst outcome and the approval levels the order needs. The order workflow, the what-if endpoint
and the release re-check all call it, so the same inputs give the same answer everywhere.

How the order is valued (in the fund's base currency):

- exposure, for what the order adds to the fund: a buy at the higher, a sell at the lower of its
  limit and the reference price; a market order at the reference price;
- size, for the size limits and the approval matrix: the quantity at the reference price, so a
  far-off limit cannot hide how big an order is (a sale of 1,000,000 AAPL limited at 0.01 is
  worth 230.5 million, not 10,000).

Every rule sees the fund as it would be after the order: its positions, the exposure its other
open orders reserve (an order pending approval reserves too, so two orders cannot jointly breach
a limit) and this order. Open orders on the other side are not netted: they may never fill.

A rule type is a pure function `(order, ctx, spec) -> ComplianceResult` registered in
`RULE_TYPES` with the model of its parameters (`domain.compliance_policy.PARAMS_BY_TYPE`). A
breach gives the rule's severity; a rule that cannot be checked (no reference data, no price, no
FX rate, no NAV) fails, whatever its severity, and says why.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from decimal import Context as DecimalContext
from functools import cached_property
from typing import Literal, TypeVar
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict

from domain.approvals import ApprovalRequirement, FundApprovalPolicy, required_approvals
from domain.compliance import worst_outcome
from domain.compliance_policy import (
    PARAMS_BY_TYPE,
    AssetClassBandParams,
    CashAvailableParams,
    CompliancePolicy,
    DuplicateOrderParams,
    InstrumentFilter,
    IssuerConcentrationParams,
    MaxOrderNotionalParams,
    MaxOrderQuantityParams,
    OrderRateParams,
    PositionLimitParams,
    PriceCollarParams,
    RestrictedListParams,
    RuleParams,
    RuleSpec,
    Scope,
    SectorBandParams,
    Severity,
    ShortSaleParams,
    TradingHoursParams,
)
from domain.models import (
    MAX_PLACES,
    ComplianceOutcome,
    ComplianceResult,
    OrderRequest,
    OrderType,
    Side,
)
from domain.portfolio import (
    InstrumentData,
    MarketHours,
    NoPriceError,
    PortfolioSnapshot,
    RecentOrder,
    order_exposure,
    size_notional,
)

PASS, WARN, FAIL = ComplianceOutcome.PASS, ComplianceOutcome.WARN, ComplianceOutcome.FAIL

# Sums of values and percentages of NAV are computed to this many digits, whatever the
# caller's decimal context is (the valuation helpers fix their own).
_DECIMALS = DecimalContext(prec=100, rounding=ROUND_HALF_EVEN)
_HUNDRED = Decimal(100)

KILL_SWITCH_RULE = "kill_switch"
SNAPSHOT_RULE = "portfolio_snapshot"

GroupKind = Literal["issuer", "sector", "asset_class"]


# ---- valuation ---------------------------------------------------------------------------------


def _usable(price: Decimal | None) -> Decimal | None:
    # A price or rate of zero or below would value an order at nothing (or divide by zero).
    return price if price is not None and price.is_finite() and price > 0 else None


def _valued(
    value: Callable[[OrderRequest, InstrumentData, Decimal], Decimal],
    order: OrderRequest,
    instrument: InstrumentData,
    fx: Decimal,
) -> Decimal | None:
    try:
        return value(order, instrument, fx)
    except NoPriceError:
        return None


# ---- the fund, aggregated once per snapshot ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Group:
    """What the fund holds of one issuer, sector or asset class, in the base currency.

    Attributes:
        net: the positions' value, long positive, short negative, at reference prices.
        open_buys: the exposure the fund's open buys reserve.
        open_sells: the exposure the fund's open sells (short sales included) reserve.
        unvalued: symbols held without a usable price or FX rate, left out of `net`.
    """

    net: Decimal = Decimal(0)
    open_buys: Decimal = Decimal(0)
    open_sells: Decimal = Decimal(0)
    unvalued: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Sums:
    """Sums per key (an issuer, a sector or an asset class) of one kind of group."""

    net: defaultdict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    open_buys: defaultdict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    open_sells: defaultdict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    unvalued: defaultdict[str, list[str]] = field(default_factory=lambda: defaultdict(list))


class FundExposures:
    """The fund's aggregates that rules look up: built on first use, kept for the snapshot.

    It holds the snapshot's collections, not the snapshot itself, so the cache in
    `exposures_of` can let go of it when the snapshot is dropped. Its results depend only on
    the snapshot, so keeping it changes no answer, only how fast one comes.
    """

    def __init__(self, snapshot: PortfolioSnapshot) -> None:
        """Keep what the aggregates are computed from; compute nothing yet."""
        self._base = snapshot.base_currency
        self._fx_table = snapshot.fx_to_base
        self._holdings = snapshot.holdings
        self._instruments = snapshot.instruments
        self._reservations = snapshot.reservations
        self._recent = snapshot.recent_orders

    def fx(self, currency: str) -> Decimal | None:
        """Return how many units of the base currency one unit of `currency` is worth."""
        return self._rates.get(currency)

    @cached_property
    def _rates(self) -> dict[str, Decimal]:
        rates = {c: r for c, r in self._fx_table.items() if _usable(r) is not None}
        rates[self._base] = Decimal(1)
        return rates

    @cached_property
    def open_quantities(self) -> dict[str, tuple[Decimal, Decimal]]:
        """Return symbol -> (quantity of open buys, quantity of open sells), both positive."""
        buys: dict[str, Decimal] = defaultdict(Decimal)
        sells: dict[str, Decimal] = defaultdict(Decimal)
        for reservation in self._reservations:
            side = buys if reservation.side is Side.BUY else sells
            side[reservation.symbol] += reservation.quantity
        return {s: (buys.get(s, Decimal(0)), sells.get(s, Decimal(0))) for s in {*buys, *sells}}

    @cached_property
    def open_buy_exposure(self) -> Decimal:
        """Return the exposure all open buys reserve: cash they may still spend."""
        return sum((r.exposure for r in self._reservations if r.side is Side.BUY), Decimal(0))

    def group(self, kind: GroupKind, key: str) -> Group:
        """Return what the fund holds and has reserved of one issuer, sector or asset class."""
        sums = self._sums[kind]
        zero = Decimal(0)
        return Group(
            net=sums.net.get(key, zero),
            open_buys=sums.open_buys.get(key, zero),
            open_sells=sums.open_sells.get(key, zero),
            unvalued=tuple(sums.unvalued.get(key, ())),
        )

    @cached_property
    def _sums(self) -> dict[GroupKind, _Sums]:
        """Sum every holding and open order by issuer, sector and asset class, in one pass.

        A holding without a usable price or FX rate is named, not valued; a holding or open
        order in an instrument without reference data cannot be placed in any group.
        """
        issuers, sectors, classes = _Sums(), _Sums(), _Sums()
        instruments = self._instruments
        for symbol, quantity in self._holdings.items():
            instrument = instruments.get(symbol)
            if instrument is None or not quantity:
                continue
            price, rate = _usable(instrument.reference_price), self.fx(instrument.currency)
            keys = (instrument.issuer, instrument.sector, instrument.asset_class.value)
            if price is None or rate is None:
                for sums, key in zip((issuers, sectors, classes), keys, strict=True):
                    sums.unvalued[key].append(symbol)
                continue
            value = quantity * price * rate
            issuers.net[keys[0]] += value
            sectors.net[keys[1]] += value
            classes.net[keys[2]] += value
        for reservation in self._reservations:
            instrument = instruments.get(reservation.symbol)
            if instrument is None:
                continue
            buy = reservation.side is Side.BUY
            exposure = reservation.exposure
            (issuers.open_buys if buy else issuers.open_sells)[instrument.issuer] += exposure
            (sectors.open_buys if buy else sectors.open_sells)[instrument.sector] += exposure
            (classes.open_buys if buy else classes.open_sells)[instrument.asset_class.value] += (
                exposure
            )
        return {"issuer": issuers, "sector": sectors, "asset_class": classes}

    @cached_property
    def _recent_by_order(self) -> dict[tuple[str, Side, Decimal], list[RecentOrder]]:
        index: dict[tuple[str, Side, Decimal], list[RecentOrder]] = defaultdict(list)
        for recent in self._recent:
            index[(recent.symbol, recent.side, recent.quantity)].append(recent)
        return index

    def same_orders(self, symbol: str, side: Side, quantity: Decimal) -> list[RecentOrder]:
        """Return the fund's recent orders with this symbol, side and quantity."""
        return self._recent_by_order.get((symbol, side, quantity), [])

    @cached_property
    def _recent_by_user(self) -> dict[str, list[datetime]]:
        index: dict[str, list[datetime]] = defaultdict(list)
        for recent in self._recent:
            index[recent.created_by].append(_aware(recent.created_at))
        return index

    def orders_by(self, user: str) -> list[datetime]:
        """Return when `user` created each of the fund's recent orders."""
        return self._recent_by_user.get(user, [])


_VIEWS: dict[int, tuple[weakref.ref[PortfolioSnapshot], FundExposures]] = {}


def exposures_of(snapshot: PortfolioSnapshot) -> FundExposures:
    """Return the snapshot's aggregates, built once per snapshot object and kept while it lives.

    A snapshot must not be changed after it is first assessed: its model is frozen, but its
    dicts and lists are not, and the aggregates would no longer match them.
    """
    key = id(snapshot)
    entry = _VIEWS.get(key)
    if entry is not None and entry[0]() is snapshot:
        return entry[1]
    view = FundExposures(snapshot)

    def forget(ref: weakref.ref[PortfolioSnapshot]) -> None:
        if _VIEWS.get(key, (None,))[0] is ref:
            del _VIEWS[key]

    _VIEWS[key] = (weakref.ref(snapshot, forget), view)
    return view


def _aware(moment: datetime) -> datetime:
    # Times are UTC by convention; a naive one is read as UTC rather than the machine's zone,
    # which would make the answer depend on where it runs.
    return moment if moment.utcoffset() is not None else moment.replace(tzinfo=UTC)


# ---- what each rule sees -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Context:
    """What every rule sees besides the order and its own spec.

    Attributes:
        snapshot: the fund as it stands, with its open and recent orders.
        fund: the fund's aggregates (per issuer, sector and asset class, open quantities).
        instrument: the order's instrument, None when the snapshot has no reference data for it.
        reference_price: the instrument's usable reference price (positive), else None.
        fx_rate: base-currency units per unit of the instrument's currency, else None.
        exposure: the order valued conservatively (limit or reference, whichever is worse), in
            the base currency; None when it cannot be valued.
        size_notional: the quantity at the reference price, in the base currency; else None.
        created_by: who sends the order.
        now: when the snapshot was taken; the rules' clock.
    """

    snapshot: PortfolioSnapshot
    fund: FundExposures
    instrument: InstrumentData | None
    reference_price: Decimal | None
    fx_rate: Decimal | None
    exposure: Decimal | None
    size_notional: Decimal | None
    created_by: str
    now: datetime

    @property
    def currency(self) -> str:
        """Return the fund's base currency: every amount here is in it."""
        return self.snapshot.base_currency

    def valuation_problem(self, symbol: str) -> str:
        """Return why the order has no size: no reference data, price or FX rate."""
        if self.instrument is None:
            return f"there is no reference data for {symbol}"
        if self.reference_price is None:
            return f"there is no reference price for {symbol}"
        return (
            f"there is no FX rate from {self.instrument.currency} to the fund's base "
            f"currency {self.currency}"
        )


def build_context(order: OrderRequest, snapshot: PortfolioSnapshot, created_by: str) -> Context:
    """Return what the rules see of `order` on `snapshot` (call inside `assess`'s decimals)."""
    fund = exposures_of(snapshot)
    instrument = snapshot.instruments.get(order.symbol)
    reference = fx = exposure = size = None
    if instrument is not None:
        reference = _usable(instrument.reference_price)
        if reference != instrument.reference_price:
            # A price of zero or below would value the order at nothing: read it as no price.
            instrument = instrument.model_copy(update={"reference_price": None})
        fx = fund.fx(instrument.currency)
        if fx is not None:
            exposure = _valued(order_exposure, order, instrument, fx)
            size = _valued(size_notional, order, instrument, fx)
    return Context(
        snapshot=snapshot,
        fund=fund,
        instrument=instrument,
        reference_price=reference,
        fx_rate=fx,
        exposure=exposure,
        size_notional=size,
        created_by=created_by,
        now=_aware(snapshot.taken_at),
    )


# ---- helpers the rules share -------------------------------------------------------------------

_P = TypeVar("_P", bound=RuleParams)


def _params(spec: RuleSpec, model: type[_P]) -> _P:
    params = spec.typed_params
    if not isinstance(params, model):
        raise TypeError(f"rule {spec.id} of type {spec.type} has {type(params).__name__}")
    return params


def _result(
    spec: RuleSpec,
    outcome: ComplianceOutcome,
    message: str,
    observed: str | None = None,
    limit: str | None = None,
) -> ComplianceResult:
    return ComplianceResult(
        rule=spec.id, outcome=outcome, message=message, observed=observed, limit=limit
    )


def _breach(spec: RuleSpec) -> ComplianceOutcome:
    return spec.severity.outcome


def _whose(spec: RuleSpec) -> str:
    if spec.scope is Scope.FIRM:
        return "the firm's"
    if spec.scope is Scope.FUND:
        return f"{spec.fund}'s"
    return f"account {spec.account}'s"


def _cap(spec: RuleSpec) -> str:
    """Return what to call a limit: a `warn` rule's is a soft limit."""
    return "maximum" if spec.severity is Severity.FAIL else "soft limit"


def _price(value: Decimal) -> str:
    """Return a price as it was given (230.50 stays 230.50), thousands separated."""
    return f"{value:,f}"


def _num(value: Decimal) -> str:
    """Return `value` for a sentence: thousands separated, no exponent, no trailing zeros."""
    return f"{value.normalize():,f}"


def _plain(value: Decimal) -> str:
    """Return `value` for `observed` / `limit`: no separators, no exponent."""
    return format(value.normalize(), "f")


def _pct_plain(value: Decimal) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".")


def _pair(observed: Decimal, limit: Decimal, places: int = 2) -> tuple[str, str]:
    """Format two numbers to `places`, with more places where rounding would hide a breach."""
    for digits in range(places, MAX_PLACES + 1):
        shown = f"{observed:,.{digits}f}", f"{limit:,.{digits}f}"
        if (shown[0] == shown[1]) == (observed == limit):
            return shown
    return f"{observed:,f}", f"{limit:,f}"


def _sells(order: OrderRequest) -> bool:
    return order.side is not Side.BUY


def _not_applicable(spec: RuleSpec, order: OrderRequest, ctx: Context) -> ComplianceResult:
    kind = f" ({ctx.instrument.asset_class.value})" if ctx.instrument is not None else ""
    return _result(spec, PASS, f"Does not apply to {order.symbol}{kind}.")


def _filter_blocks(params: InstrumentFilter, order: OrderRequest, ctx: Context) -> bool:
    asset_class = ctx.instrument.asset_class if ctx.instrument is not None else None
    return not params.applies_to(order.symbol, asset_class)


def _cannot(spec: RuleSpec, what: str, why: str) -> ComplianceResult:
    # Not knowing must never let an order through: a rule that cannot be checked fails.
    return _result(spec, FAIL, f"Cannot check {what}: {why}.")


# ---- the rule types ----------------------------------------------------------------------------


def restricted_list(order: OrderRequest, ctx: Context, spec: RuleSpec) -> ComplianceResult:
    """Breach when the order's symbol, or its instrument's issuer, is restricted."""
    params = _params(spec, RestrictedListParams)
    whose = _whose(spec)
    if order.symbol in params.symbols:
        return _result(
            spec,
            _breach(spec),
            f"{order.symbol} is on {whose} restricted list.",
            observed=order.symbol,
        )
    if not params.issuers:
        return _result(
            spec, PASS, f"{order.symbol} is not on {whose} restricted list.", observed=order.symbol
        )
    if ctx.instrument is None:
        return _cannot(
            spec,
            f"{order.symbol} against {whose} restricted issuers",
            f"there is no reference data for {order.symbol}",
        )
    issuer = ctx.instrument.issuer
    if issuer and issuer.casefold() in params.issuer_keys:
        return _result(
            spec,
            _breach(spec),
            f"{order.symbol} is issued by {issuer}, which is on {whose} restricted list.",
            observed=issuer,
        )
    issued = f"its issuer {issuer} is not" if issuer else "it has no issuer on record, nor is it"
    return _result(
        spec,
        PASS,
        f"{order.symbol} is not on {whose} restricted list; {issued} restricted.",
        observed=issuer or order.symbol,
    )


def max_order_quantity(order: OrderRequest, ctx: Context, spec: RuleSpec) -> ComplianceResult:
    """Breach when the order asks for more units than the maximum per order."""
    params = _params(spec, MaxOrderQuantityParams)
    if _filter_blocks(params, order, ctx):
        return _not_applicable(spec, order, ctx)
    quantity, limit = order.quantity, params.max_quantity
    shown, shown_limit = _num(quantity), _num(limit)
    if quantity > limit:
        outcome = _breach(spec)
        message = (
            f"The order is for {shown} {order.symbol}, above {_whose(spec)} {_cap(spec)} of "
            f"{shown_limit} per order."
        )
    else:
        outcome = PASS
        message = (
            f"The order is for {shown} {order.symbol}, within {_whose(spec)} {_cap(spec)} of "
            f"{shown_limit} per order."
        )
    return _result(spec, outcome, message, observed=_plain(quantity), limit=_plain(limit))


def max_order_notional(order: OrderRequest, ctx: Context, spec: RuleSpec) -> ComplianceResult:
    """Breach when the order, at the reference price, is worth more than the maximum."""
    params = _params(spec, MaxOrderNotionalParams)
    if _filter_blocks(params, order, ctx):
        return _not_applicable(spec, order, ctx)
    size = ctx.size_notional
    limit = params.max_notional
    if size is None or ctx.instrument is None or ctx.reference_price is None:
        return _cannot(
            spec,
            f"the order's value against {_whose(spec)} {_cap(spec)}",
            ctx.valuation_problem(order.symbol),
        )
    value, shown_limit = _pair(size, limit)
    how = f"{_num(order.quantity)} {order.symbol} at the reference price {_price(ctx.reference_price)}"
    if ctx.instrument.currency != ctx.currency:
        how += (
            f" {ctx.instrument.currency}, at {_num(ctx.fx_rate or Decimal(1))} {ctx.currency} each"
        )
    currency = ctx.currency
    if size > limit:
        outcome = _breach(spec)
        message = (
            f"The order is worth {value} {currency} ({how}), above {_whose(spec)} {_cap(spec)} of "
            f"{shown_limit} {currency} per order."
        )
    else:
        outcome = PASS
        message = (
            f"The order is worth {value} {currency} ({how}), within {_whose(spec)} {_cap(spec)} of "
            f"{shown_limit} {currency} per order."
        )
    return _result(spec, outcome, message, observed=_plain(size), limit=_plain(limit))


def price_collar(order: OrderRequest, ctx: Context, spec: RuleSpec) -> ComplianceResult:
    """Breach when a limit is more than the collar through the reference price.

    "Through" is the aggressive side: above the reference for a buy, below it for a sell. A
    market order passes when there is a reference price, and fails without one: nothing bounds
    the price it may fill at.
    """
    params = _params(spec, PriceCollarParams)
    if _filter_blocks(params, order, ctx):
        return _not_applicable(spec, order, ctx)
    collar = params.max_deviation_pct
    reference = ctx.reference_price
    if reference is None:
        why = (
            f"there is no reference data for {order.symbol}"
            if ctx.instrument is None
            else f"there is no reference price for {order.symbol}"
        )
        if order.order_type is OrderType.MARKET:
            return _cannot(spec, "a market order against the price collar", why)
        return _cannot(spec, "the limit price against the price collar", why)
    if order.order_type is OrderType.MARKET or order.limit_price is None:
        return _result(
            spec,
            PASS,
            f"A market order: no limit to check; {order.symbol}'s reference price is "
            f"{_price(reference)}.",
            limit=_pct_plain(collar),
        )
    limit_price = order.limit_price
    sign = -1 if _sells(order) else 1
    through = (limit_price - reference) / reference * _HUNDRED * sign
    side = "sell" if _sells(order) else "buy"
    direction = "below" if (limit_price < reference) else "above"
    shown, shown_collar = _pair(abs(through), collar)
    where = (
        f"The {side} limit {_price(limit_price)} is {shown}% {direction} the reference price "
        f"{_price(reference)}"
        if limit_price != reference
        else f"The {side} limit {_price(limit_price)} is at the reference price"
    )
    if through > collar:
        outcome = _breach(spec)
        message = f"{where}, more than {_whose(spec)} collar of {shown_collar}%."
    elif through > 0:
        outcome = PASS
        message = f"{where}, within {_whose(spec)} collar of {shown_collar}%."
    else:
        outcome = PASS
        message = f"{where}: not through the market, so within the collar of {shown_collar}%."
    return _result(spec, outcome, message, observed=_pct_plain(through), limit=_pct_plain(collar))


def position_limit(order: OrderRequest, ctx: Context, spec: RuleSpec) -> ComplianceResult:
    """Breach when the position after the order and the fund's open orders on its side is
    longer than `max_long` (buys) or shorter than `max_short` (sells)."""
    params = _params(spec, PositionLimitParams)
    if _filter_blocks(params, order, ctx):
        return _not_applicable(spec, order, ctx)
    held = ctx.snapshot.holdings.get(order.symbol, Decimal(0))
    open_buys, open_sells = ctx.fund.open_quantities.get(order.symbol, (Decimal(0), Decimal(0)))
    if _sells(order):
        after, limit, reserved, side = (
            held - open_sells - order.quantity,
            params.max_short,
            open_sells,
            "sells",
        )
        observed = -after
        label = "short"
    else:
        after, limit, reserved, side = (
            held + open_buys + order.quantity,
            params.max_long,
            open_buys,
            "buys",
        )
        observed = after
        label = "long"
    position = f"{_num(abs(after))} {'short' if after < 0 else 'long'}" if after else "flat"
    basis = (
        f"{_num(held)} held, {_num(reserved)} in open {side}, {_num(order.quantity)} in this order"
    )
    if limit is None:
        return _result(
            spec,
            PASS,
            f"{order.symbol} would be {position} ({basis}); {_whose(spec)} limit sets no "
            f"{label} maximum.",
            observed=_plain(observed),
        )
    if observed > limit:
        outcome = _breach(spec)
        verdict = f"beyond {_whose(spec)} {label} limit of {_num(limit)}"
    else:
        outcome = PASS
        verdict = f"within {_whose(spec)} {label} limit of {_num(limit)}"
    return _result(
        spec,
        outcome,
        f"{order.symbol} would be {position} ({basis}), {verdict}.",
        observed=_plain(observed),
        limit=_plain(limit),
    )


def _projected(
    order: OrderRequest, ctx: Context, kind: GroupKind, key: str
) -> tuple[Decimal, Group]:
    """Return the group's net value after the order and the open orders on its side."""
    group = ctx.fund.group(kind, key)
    exposure = ctx.exposure or Decimal(0)
    if _sells(order):
        return group.net - group.open_sells - exposure, group
    return group.net + group.open_buys + exposure, group


def _left_out(group: Group) -> str:
    if not group.unvalued:
        return ""
    names = ", ".join(group.unvalued[:5]) + (", ..." if len(group.unvalued) > 5 else "")
    return f" Left out for want of a price: {names}."


def _nav_problem(ctx: Context) -> str | None:
    nav = ctx.snapshot.nav
    if nav.is_finite() and nav > 0:
        return None
    return f"the fund's NAV is {_num(nav)} {ctx.currency}, so no percentage of it can be taken"


def issuer_concentration(order: OrderRequest, ctx: Context, spec: RuleSpec) -> ComplianceResult:
    """Breach when the fund's net position in the order's issuer would exceed `max_pct` of NAV
    on the order's side (long for a buy, short for a sell)."""
    params = _params(spec, IssuerConcentrationParams)
    what = "issuer concentration"
    if ctx.instrument is None:
        return _cannot(spec, what, f"there is no reference data for {order.symbol}")
    issuer = ctx.instrument.issuer
    if not issuer:
        return _result(spec, PASS, f"{order.symbol} has no issuer on record; not checked.")
    if ctx.exposure is None:
        return _cannot(spec, what, ctx.valuation_problem(order.symbol))
    problem = _nav_problem(ctx)
    if problem:
        return _cannot(spec, what, problem)
    after, group = _projected(order, ctx, "issuer", issuer)
    # A buy can only lengthen and a sell only shorten the position, so each is held to the
    # limit on its own side: a sale that reduces a long concentration is never refused by it.
    sells = _sells(order)
    observed = (-after if sells else after) / ctx.snapshot.nav * _HUNDRED
    limit = params.max_pct
    stance = "short" if sells else "long"
    shown, shown_limit = _pair(observed, limit)
    amount = f"{abs(after):,.2f} {ctx.currency}"
    if observed > 0:
        describe = f"The fund would be net {stance} {issuer} by {amount}, {shown}% of NAV"
    elif after:
        share = f"{abs(after) / ctx.snapshot.nav * _HUNDRED:,.2f}"
        other = "long" if sells else "short"
        describe = (
            f"The fund would be net {other} {issuer} by {amount}, {share}% of NAV, "
            f"so not net {stance}"
        )
    else:
        describe = f"The fund would hold no net position in {issuer}"
    breached = observed > limit
    verdict = f"{'above' if breached else 'within'} {_whose(spec)} {stance} limit of {shown_limit}% of NAV"
    return _result(
        spec,
        _breach(spec) if breached else PASS,
        f"{describe}: {verdict} (positions, open {'sells' if sells else 'buys'} and this "
        f"order).{_left_out(group)}",
        observed=_pct_plain(observed),
        limit=_pct_plain(limit),
    )


def _band(
    spec: RuleSpec,
    order: OrderRequest,
    ctx: Context,
    params: AssetClassBandParams | SectorBandParams,
    kind: GroupKind,
    key: str,
    subject: str,
) -> ComplianceResult:
    """Judge the group's net value after the order, as a percentage of NAV, against a band.

    A buy can only raise the group and a sell only lower it, so a buy is held to the ceiling
    and a sell to the floor: an order that brings the fund back towards its band is never
    refused by it.
    """
    after, group = _projected(order, ctx, kind, key)
    pct = after / ctx.snapshot.nav * _HUNDRED
    sells = _sells(order)
    floor, ceiling = params.min_pct, params.max_pct
    band = (
        f"{_pct_plain(floor) + '%' if floor is not None else 'no floor'} to "
        f"{_pct_plain(ceiling) + '%' if ceiling is not None else 'no ceiling'}"
    )
    basis = f"positions, open {'sells' if sells else 'buys'} and this order"
    bound = floor if sells else ceiling
    if bound is None:
        return _result(
            spec,
            PASS,
            f"The fund's net exposure to {subject} would be {_pct_plain(pct)}% of NAV ({basis}); "
            f"{_whose(spec)} band ({band}) has no {'floor' if sells else 'ceiling'} for a "
            f"{'sale' if sells else 'purchase'} to breach.",
            observed=_pct_plain(pct),
        )
    shown, _ = _pair(pct, bound)
    breached = pct < bound if sells else pct > bound
    if breached:
        verdict = f"{'below' if sells else 'above'} {_whose(spec)} band of {band} of NAV"
    else:
        verdict = f"within {_whose(spec)} band of {band} of NAV"
    return _result(
        spec,
        _breach(spec) if breached else PASS,
        f"The fund's net exposure to {subject} would be {after:,.2f} {ctx.currency}, "
        f"{shown}% of NAV ({basis}), {verdict}.{_left_out(group)}",
        observed=_pct_plain(pct),
        limit=_pct_plain(bound),
    )


def asset_class_band(order: OrderRequest, ctx: Context, spec: RuleSpec) -> ComplianceResult:
    """Breach when the fund's net exposure to the asset class would leave its band."""
    params = _params(spec, AssetClassBandParams)
    what = "the asset-class band"
    if ctx.instrument is None:
        return _cannot(spec, what, f"there is no reference data for {order.symbol}")
    asset_class = ctx.instrument.asset_class
    if params.asset_class is not None and params.asset_class is not asset_class:
        return _not_applicable(spec, order, ctx)
    if ctx.exposure is None:
        return _cannot(spec, what, ctx.valuation_problem(order.symbol))
    problem = _nav_problem(ctx)
    if problem:
        return _cannot(spec, what, problem)
    return _band(spec, order, ctx, params, "asset_class", asset_class.value, asset_class.value)


def sector_band(order: OrderRequest, ctx: Context, spec: RuleSpec) -> ComplianceResult:
    """Breach when the fund's net exposure to the sector would leave its band."""
    params = _params(spec, SectorBandParams)
    what = "the sector band"
    if ctx.instrument is None:
        return _cannot(spec, what, f"there is no reference data for {order.symbol}")
    sector = ctx.instrument.sector
    if params.sector is not None and params.sector.casefold() != sector.casefold():
        return _not_applicable(spec, order, ctx)
    if not sector:
        return _result(spec, PASS, f"{order.symbol} has no sector on record; not checked.")
    if ctx.exposure is None:
        return _cannot(spec, what, ctx.valuation_problem(order.symbol))
    problem = _nav_problem(ctx)
    if problem:
        return _cannot(spec, what, problem)
    return _band(spec, order, ctx, params, "sector", sector, f"the {sector} sector")


def cash_available(order: OrderRequest, ctx: Context, spec: RuleSpec) -> ComplianceResult:
    """Breach when a buy needs more cash than the fund has left after its open buys."""
    params = _params(spec, CashAvailableParams)
    if _sells(order):
        return _result(spec, PASS, "A sale needs no cash.")
    if ctx.exposure is None:
        return _cannot(spec, "the cash for this buy", ctx.valuation_problem(order.symbol))
    cash, reserved = ctx.snapshot.cash, ctx.fund.open_buy_exposure
    available = cash - reserved - params.min_cash_after
    need, have = _pair(ctx.exposure, available)
    currency = ctx.currency
    basis = f"cash {_num(cash)} less {_num(reserved)} reserved by open buys"
    if params.min_cash_after:
        basis += f" and {_num(params.min_cash_after)} kept back"
    if ctx.exposure > available:
        outcome = _breach(spec)
        message = (
            f"The buy needs {need} {currency} but only {have} {currency} is available ({basis})."
        )
    else:
        outcome = PASS
        message = f"The buy needs {need} {currency}; {have} {currency} is available ({basis})."
    return _result(spec, outcome, message, observed=_plain(ctx.exposure), limit=_plain(available))


def short_sale(order: OrderRequest, ctx: Context, spec: RuleSpec) -> ComplianceResult:
    """Breach when a `sell` goes beyond the long position, or a `sell_short` has no locate."""
    params = _params(spec, ShortSaleParams)
    if order.side is Side.BUY:
        return _result(spec, PASS, "A buy is not a short sale.")
    if order.side is Side.SELL_SHORT:
        locate = order.locate_id
        if locate:
            return _result(spec, PASS, f"A short sale with locate {locate}.", observed=locate)
        if not params.require_locate:
            return _result(spec, PASS, "A short sale; no locate is required.")
        return _result(
            spec,
            _breach(spec),
            f"A short sale of {_num(order.quantity)} {order.symbol} needs a locate_id "
            "(the borrow arranged with the broker).",
        )
    held = ctx.snapshot.holdings.get(order.symbol, Decimal(0))
    _, open_sells = ctx.fund.open_quantities.get(order.symbol, (Decimal(0), Decimal(0)))
    long = max(held - open_sells, Decimal(0))
    basis = f"{_num(held)} held, {_num(open_sells)} already in open sells"
    if order.quantity > long:
        return _result(
            spec,
            _breach(spec),
            f"The sale of {_num(order.quantity)} {order.symbol} goes beyond the long position "
            f"of {_num(long)} ({basis}): a sale beyond it must be sent as sell_short, with a "
            "locate_id.",
            observed=_plain(order.quantity),
            limit=_plain(long),
        )
    return _result(
        spec,
        PASS,
        f"The sale of {_num(order.quantity)} {order.symbol} is covered by the long position of "
        f"{_num(long)} ({basis}).",
        observed=_plain(order.quantity),
        limit=_plain(long),
    )


def _ago(ctx: Context, moment: datetime) -> timedelta:
    return ctx.now - _aware(moment)


def _seconds(span: timedelta) -> str:
    return (
        f"{span.total_seconds():,.0f}"
        if span % timedelta(seconds=1) == timedelta(0)
        else f"{span.total_seconds():,.3f}"
    )


def duplicate_order(order: OrderRequest, ctx: Context, spec: RuleSpec) -> ComplianceResult:
    """Breach when the fund sent the same symbol, side and quantity within the window."""
    params = _params(spec, DuplicateOrderParams)
    window = timedelta(seconds=params.window_seconds)
    what = f"{order.side.value} {_num(order.quantity)} {order.symbol}"
    matches = [
        recent
        for recent in ctx.fund.same_orders(order.symbol, order.side, order.quantity)
        if abs(_ago(ctx, recent.created_at)) <= window
    ]
    if not matches:
        return _result(
            spec,
            PASS,
            f"No other {what} in the last {params.window_seconds} s.",
            limit=str(params.window_seconds),
        )
    latest = min(matches, key=lambda r: abs(_ago(ctx, r.created_at)))
    ago = _ago(ctx, latest.created_at)
    others = f" (and {len(matches) - 1} more)" if len(matches) > 1 else ""
    return _result(
        spec,
        _breach(spec),
        f"Possible duplicate: {latest.created_by} sent the same order ({what}) as "
        f"{latest.order_id} {_seconds(abs(ago))} s {'ago' if ago >= timedelta(0) else 'later'}"
        f"{others}, within {_whose(spec)} window of {params.window_seconds} s.",
        observed=_seconds(abs(ago)),
        limit=str(params.window_seconds),
    )


def order_rate(order: OrderRequest, ctx: Context, spec: RuleSpec) -> ComplianceResult:
    """Breach when the sender's orders in the window, this one included, exceed the maximum."""
    params = _params(spec, OrderRateParams)
    window = timedelta(seconds=params.window_seconds)
    start = ctx.now - window
    count = 1 + sum(1 for moment in ctx.fund.orders_by(ctx.created_by) if moment >= start)
    line = (
        f"{ctx.created_by} would have sent {count} order{'s' if count != 1 else ''} in "
        f"{params.window_seconds} s (this one included)"
    )
    if count > params.max_orders:
        outcome = _breach(spec)
        message = f"{line}, more than {_whose(spec)} {_cap(spec)} of {params.max_orders}."
    else:
        outcome = PASS
        message = f"{line}, within {_whose(spec)} {_cap(spec)} of {params.max_orders}."
    return _result(spec, outcome, message, observed=str(count), limit=str(params.max_orders))


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _days(weekdays: list[int]) -> str:
    days = sorted({d for d in weekdays if 0 <= d <= 6})
    if days and days == list(range(days[0], days[-1] + 1)) and len(days) > 2:
        return f"{_DAYS[days[0]]}-{_DAYS[days[-1]]}"
    return ", ".join(_DAYS[d] for d in days) or "no day"


def market_open(hours: MarketHours, moment: datetime) -> bool:
    """Tell whether the market trades at `moment` (holidays are not known).

    Raises:
        zoneinfo.ZoneInfoNotFoundError: the time zone is unknown (a KeyError).
        ValueError: the time zone's name is malformed.
    """
    if hours.always_open:
        return True
    local = moment.astimezone(ZoneInfo(hours.timezone))
    now, day = local.time().replace(tzinfo=None), local.weekday()
    if hours.opens < hours.closes:
        return day in hours.weekdays and hours.opens <= now < hours.closes
    # A session through midnight (or round the clock, opens == closes) belongs to the day it
    # opened on.
    return (day in hours.weekdays and now >= hours.opens) or (
        (day - 1) % 7 in hours.weekdays and now < hours.closes
    )


def trading_hours(order: OrderRequest, ctx: Context, spec: RuleSpec) -> ComplianceResult:
    """Breach when the instrument's market is closed at the snapshot's time.

    With no hours known the rule passes and says so; exchange holidays are not known.
    """
    _params(spec, TradingHoursParams)
    if ctx.instrument is None or ctx.instrument.hours is None:
        return _result(spec, PASS, f"No trading hours are known for {order.symbol}; not checked.")
    hours = ctx.instrument.hours
    if hours.always_open:
        return _result(spec, PASS, f"{hours.market} trades around the clock.")
    try:
        is_open = market_open(hours, ctx.now)
        local = ctx.now.astimezone(ZoneInfo(hours.timezone))
    except (KeyError, ValueError, OSError):
        # zoneinfo refuses an unknown key with ZoneInfoNotFoundError (a KeyError), a malformed
        # one with a ValueError, and an unreadable zone file with an OSError.
        return _cannot(
            spec, f"{hours.market}'s trading hours", f"the time zone {hours.timezone!r} is unknown"
        )
    schedule = (
        f"it trades {_days(hours.weekdays)} {_clock(hours.opens)}-{_clock(hours.closes)} "
        f"{hours.timezone}; exchange holidays are not checked"
    )
    clock = f"{_DAYS[local.weekday()]} {local:%H:%M} there"
    observed = local.isoformat(timespec="minutes")
    if is_open:
        return _result(
            spec, PASS, f"{hours.market} is open ({clock}; {schedule}).", observed=observed
        )
    return _result(
        spec,
        _breach(spec),
        f"{hours.market} is closed ({clock}; {schedule}).",
        observed=observed,
    )


def _clock(moment: time) -> str:
    return moment.strftime("%H:%M")


# ---- the registry ------------------------------------------------------------------------------

RuleCheck = Callable[[OrderRequest, Context, RuleSpec], ComplianceResult]


@dataclass(frozen=True)
class RuleType:
    """One kind of rule: its function and the model of its parameters.

    Attributes:
        name: the `type` the policy file names it by.
        check: the pure function that judges an order.
        params: the pydantic model of its parameters (its JSON schema lists them).
        summary: one line saying what it checks.
    """

    name: str
    check: RuleCheck
    params: type[RuleParams]
    summary: str


_CHECKS: dict[str, RuleCheck] = {
    "restricted_list": restricted_list,
    "max_order_quantity": max_order_quantity,
    "max_order_notional": max_order_notional,
    "price_collar": price_collar,
    "position_limit": position_limit,
    "issuer_concentration": issuer_concentration,
    "asset_class_band": asset_class_band,
    "sector_band": sector_band,
    "cash_available": cash_available,
    "short_sale": short_sale,
    "duplicate_order": duplicate_order,
    "order_rate": order_rate,
    "trading_hours": trading_hours,
}
if set(_CHECKS) != set(PARAMS_BY_TYPE):  # pragma: no cover - a programming error, caught at import
    raise RuntimeError("every rule type needs both a function and a params model")

RULE_TYPES: dict[str, RuleType] = {
    name: RuleType(
        name=name,
        check=check,
        params=PARAMS_BY_TYPE[name],
        summary=(PARAMS_BY_TYPE[name].__doc__ or "").strip().splitlines()[0],
    )
    for name, check in _CHECKS.items()
}


# ---- the assessment ----------------------------------------------------------------------------


class Assessment(BaseModel):
    """Pre-trade compliance's answer for one order.

    Attributes:
        results: the kill switch first, then each rule's result in `rules_for` order.
        outcome: the worst result: any fail rejects the order (`compliance_rejected`),
            warnings only need an override (`pending_override`).
        approval: the levels the order needs, from its size notional and the results.
        rules_version: the version (sha256) of the compliance policy that judged it.
        exposure: the order valued conservatively in the base currency (None: no price).
        size_notional: the order at the reference price in the base currency (None: no
            price, and then every approval level is required).
        base_currency: the fund's base currency.
    """

    model_config = ConfigDict(frozen=True)

    results: list[ComplianceResult]
    outcome: ComplianceOutcome
    approval: ApprovalRequirement
    rules_version: str
    exposure: Decimal | None
    size_notional: Decimal | None
    base_currency: str


def assess(
    order: OrderRequest,
    snapshot: PortfolioSnapshot,
    rules: CompliancePolicy,
    matrix: FundApprovalPolicy,
    *,
    created_by: str,
    default_account: str | None = None,
) -> Assessment:
    """Judge `order` against the rules it answers to, on the fund after the trade.

    Args:
        order: the order as sent.
        snapshot: the order's fund, captured once: positions, NAV, cash, reference data, the
            fund's OTHER open orders (`reservations`) and recent orders (neither may include
            this order), kill switches, and `taken_at`, the rules' clock.
        rules: the compliance policy; its version is recorded on the assessment.
        matrix: the fund's approval policy.
        created_by: who sends the order (the per-user rate rule counts their orders).
        default_account: the fund's default account, whose rules apply to an order that
            names no allocations.

    Returns:
        Every result (the kill switch first), the worst outcome, the approval levels (decided
        on the size notional: the reference price, in the base currency) and the valuation.

    Nothing in the order can make it raise: a rule that cannot judge fails and says why.
    """
    with localcontext(_DECIMALS):
        ctx = build_context(order, snapshot, created_by)
        results = [_kill_switch(order, snapshot)]
        if order.fund != snapshot.fund:
            results.append(
                ComplianceResult(
                    rule=SNAPSHOT_RULE,
                    outcome=FAIL,
                    message=f"The portfolio snapshot is {snapshot.fund}'s, not {order.fund}'s.",
                    observed=snapshot.fund,
                    limit=order.fund,
                )
            )
        accounts = [a.account for a in order.allocations]
        if not accounts and default_account:
            accounts = [default_account]
        results.extend(_run(spec, order, ctx) for spec in rules.rules_for(order.fund, accounts))
        approval = _approval(matrix, ctx, results)
    return Assessment(
        results=results,
        outcome=worst_outcome(results),
        approval=approval,
        rules_version=rules.version,
        exposure=ctx.exposure,
        size_notional=ctx.size_notional,
        base_currency=snapshot.base_currency,
    )


def _run(spec: RuleSpec, order: OrderRequest, ctx: Context) -> ComplianceResult:
    rule_type = RULE_TYPES.get(spec.type)
    if rule_type is None:
        return _cannot(spec, f"rule {spec.id}", f"its type {spec.type!r} is unknown")
    try:
        return rule_type.check(order, ctx, spec)
    except Exception as err:
        # A rule that breaks (bad parameters in a spec built by hand, a bug) must reject the
        # order visibly rather than fail the workflow task that called it, over and over.
        return _cannot(spec, f"rule {spec.id}", f"it could not be evaluated ({err})")


def _kill_switch(order: OrderRequest, snapshot: PortfolioSnapshot) -> ComplianceResult:
    engaged = [s for s in snapshot.kill_switches if s.scope in (order.fund, "*")]
    if not engaged:
        return ComplianceResult(
            rule=KILL_SWITCH_RULE,
            outcome=PASS,
            message=f"No kill switch is engaged for {order.fund} or the firm.",
        )
    said = "; ".join(
        f"{'the firm' if s.scope == '*' else s.scope} by {s.engaged_by} at "
        f"{_aware(s.engaged_at).astimezone(UTC):%Y-%m-%d %H:%M} UTC: {s.reason}"
        for s in engaged
    )
    return ComplianceResult(
        rule=KILL_SWITCH_RULE,
        outcome=FAIL,
        message=f"A kill switch is engaged for {said}.",
        observed=", ".join(s.scope for s in engaged),
    )


def _approval(
    matrix: FundApprovalPolicy, ctx: Context, results: list[ComplianceResult]
) -> ApprovalRequirement:
    if ctx.size_notional is None or ctx.instrument is None:
        # Without a size the matrix cannot place the order: every level, never none.
        return ApprovalRequirement(
            levels=list(matrix.levels_in_order),
            rules=[],
            matrix_version=matrix.version,
            straight_through=False,
        )
    return required_approvals(matrix, ctx.size_notional, ctx.instrument.asset_class, results)
