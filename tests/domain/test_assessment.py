"""The pre-trade assessment: each rule type at, just under and just over its limits, the
conservative valuation, reservations, the kill switch, approvals, and a fuzz of absurd orders."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.approvals import FundApprovalPolicy, parse_approval_policies
from domain.assessment import KILL_SWITCH_RULE, SNAPSHOT_RULE, Assessment, assess, exposures_of
from domain.compliance import approval_notional
from domain.compliance_policy import CompliancePolicy, RuleSpec, Scope, Severity
from domain.compliance_policy import parse_compliance_policy as parse_rules
from domain.models import (
    ComplianceOutcome,
    ComplianceResult,
    ComplianceSnapshot,
    Instrument,
    OrderRequest,
    OrderType,
)
from domain.portfolio import (
    InstrumentData,
    KillSwitch,
    MarketHours,
    PortfolioSnapshot,
    RecentOrder,
    Reservation,
)

PASS, WARN, FAIL = ComplianceOutcome.PASS, ComplianceOutcome.WARN, ComplianceOutcome.FAIL

POLICIES = Path(__file__).resolve().parents[2] / "policies"
MATRICES = parse_approval_policies((POLICIES / "approvals.toml").read_bytes())
ALPHA_MATRIX = MATRICES.for_fund("fund-alpha")
BETA_MATRIX = MATRICES.for_fund("fund-beta")

# A Friday, 10:30 in New York: XNYS is open.
NOW = datetime(2025, 3, 14, 14, 30, tzinfo=UTC)
XNYS = MarketHours(
    market="XNYS", timezone="America/New_York", opens=time(9, 30), closes=time(16, 0)
)

INSTRUMENTS = {
    "AAPL": InstrumentData(
        symbol="AAPL",
        asset_class="equity",
        currency="USD",
        reference_price=Decimal("230.50"),
        issuer="Apple Inc.",
        sector="Technology",
        hours=XNYS,
    ),
    "MSFT": InstrumentData(
        symbol="MSFT",
        asset_class="equity",
        currency="USD",
        reference_price=Decimal("415.20"),
        issuer="Microsoft Corp.",
        sector="Technology",
        hours=XNYS,
    ),
    "GOOG": InstrumentData(
        symbol="GOOG",
        asset_class="equity",
        currency="USD",
        reference_price=Decimal("100"),
        issuer="Alphabet Inc.",
        sector="Communication Services",
        hours=XNYS,
    ),
    "GOOGL": InstrumentData(
        symbol="GOOGL",
        asset_class="equity",
        currency="USD",
        reference_price=Decimal("100"),
        issuer="Alphabet Inc.",
        sector="Communication Services",
        hours=XNYS,
    ),
    "GME": InstrumentData(
        symbol="GME",
        asset_class="equity",
        currency="USD",
        reference_price=Decimal("24.10"),
        issuer="GameStop Corp.",
        sector="Consumer Discretionary",
        hours=XNYS,
    ),
    "SAP": InstrumentData(
        symbol="SAP",
        asset_class="equity",
        currency="EUR",
        reference_price=Decimal("200"),
        issuer="SAP SE",
        sector="Technology",
    ),
    "EURUSD": InstrumentData(
        symbol="EURUSD",
        asset_class="fx_spot",
        currency="USD",
        reference_price=Decimal("1.085"),
        lot_size=Decimal(1000),
    ),
    "BTC-USD": InstrumentData(
        symbol="BTC-USD",
        asset_class="crypto",
        currency="USD",
        reference_price=Decimal("64000"),
        lot_size=Decimal("0.0001"),
        sector="Digital Assets",
        hours=MarketHours(
            market="CRYPTO", timezone="UTC", opens=time(0), closes=time(0), always_open=True
        ),
    ),
    "NOPRICE": InstrumentData(
        symbol="NOPRICE", asset_class="equity", currency="USD", issuer="Nobody", sector="Nothing"
    ),
    "VOD": InstrumentData(
        symbol="VOD", asset_class="equity", currency="GBP", reference_price=Decimal("0.7")
    ),
}


def order(**fields: Any) -> OrderRequest:
    """A market buy of 100 AAPL for fund-alpha; a `limit_price` makes it a limit order."""
    values: dict[str, Any] = {
        "client_order_id": "c-1",
        "fund": "fund-alpha",
        "symbol": "AAPL",
        "side": "buy",
        "quantity": Decimal(100),
    }
    values.update(fields)
    if fields.get("limit_price") is not None:
        values.setdefault("order_type", OrderType.LIMIT)
    return OrderRequest.model_validate(values)


def snapshot(**fields: Any) -> PortfolioSnapshot:
    """fund-alpha in USD, NAV 500M, cash 100M, nothing held, no open orders, at NOW."""
    values: dict[str, Any] = {
        "fund": "fund-alpha",
        "base_currency": "USD",
        "nav": Decimal(500_000_000),
        "cash": Decimal(100_000_000),
        "instruments": INSTRUMENTS,
        "fx_to_base": {"EUR": Decimal("1.085")},
        "taken_at": NOW,
    }
    values.update(fields)
    return PortfolioSnapshot.model_validate(values)


def rule(rule_type: str, severity: str = "fail", **params: Any) -> RuleSpec:
    return RuleSpec(
        id=f"test-{rule_type}",
        type=rule_type,
        severity=Severity(severity),
        scope=Scope.FIRM,
        params=params,
    )


def check(
    spec: RuleSpec,
    the_order: OrderRequest | None = None,
    the_snapshot: PortfolioSnapshot | None = None,
) -> ComplianceResult:
    """Assess with only `spec` and return its result (the kill switch's comes first)."""
    assessment = assess(
        the_order or order(),
        the_snapshot or snapshot(),
        CompliancePolicy(version="test", rules=[spec]),
        ALPHA_MATRIX,
        created_by="alice",
    )
    [kill_switch, result] = assessment.results
    assert kill_switch.outcome is PASS
    assert result.rule == spec.id
    return result


def reservation(
    symbol: str = "AAPL", side: str = "buy", quantity: str = "100", exposure: str | None = None
) -> Reservation:
    price = INSTRUMENTS[symbol].reference_price or Decimal(1)
    return Reservation(
        order_id=f"o-{symbol}-{side}-{quantity}",
        symbol=symbol,
        side=side,
        quantity=Decimal(quantity),
        exposure=Decimal(exposure) if exposure is not None else Decimal(quantity) * price,
        created_by="bob",
        created_at=NOW - timedelta(minutes=5),
    )


def recent(
    seconds_ago: float,
    *,
    symbol: str = "AAPL",
    side: str = "buy",
    quantity: str = "100",
    created_by: str = "bob",
) -> RecentOrder:
    return RecentOrder(
        order_id=f"o-{seconds_ago}",
        symbol=symbol,
        side=side,
        quantity=Decimal(quantity),
        created_by=created_by,
        created_at=NOW - timedelta(seconds=seconds_ago),
    )


# ---- restricted list ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "symbol", "severity", "outcome"),
    [
        ({"symbols": ["GME"]}, "GME", "fail", FAIL),
        ({"symbols": ["GME"]}, "GME", "warn", WARN),
        ({"symbols": ["GME"]}, "AAPL", "fail", PASS),
        ({"symbols": ["GME"]}, "GMEX", "fail", PASS),  # a symbol is matched whole
        ({"issuers": ["apple inc."]}, "AAPL", "fail", FAIL),  # issuers ignore case
        ({"issuers": ["Alphabet Inc."]}, "GOOGL", "fail", FAIL),  # every symbol of the issuer
        ({"issuers": ["Apple Inc"]}, "AAPL", "fail", PASS),
        ({"issuers": ["Apple Inc."]}, "EURUSD", "fail", PASS),  # no issuer on record
        ({"issuers": ["Apple Inc."]}, "UNKNOWN", "warn", FAIL),  # cannot be checked
        ({"symbols": ["GME"]}, "UNKNOWN", "fail", PASS),  # symbols need no reference data
    ],
)
def test_restricted_list(
    params: dict[str, Any], symbol: str, severity: str, outcome: ComplianceOutcome
) -> None:
    result = check(rule("restricted_list", severity, **params), order(symbol=symbol))

    assert result.outcome is outcome
    assert symbol in result.message


# ---- maximum order quantity --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "outcome"),
    [
        ("999", PASS),
        ("999.999999999999", PASS),
        ("1000", PASS),
        ("1000.000000000001", FAIL),
        ("1001", FAIL),
    ],
)
def test_max_order_quantity(quantity: str, outcome: ComplianceOutcome) -> None:
    result = check(rule("max_order_quantity", max_quantity="1000"), order(quantity=quantity))

    assert result.outcome is outcome
    assert (result.observed, result.limit) == (quantity, "1000")


@pytest.mark.parametrize(
    ("params", "symbol", "outcome"),
    [
        ({"asset_classes": ["crypto"]}, "AAPL", PASS),  # not an instrument it applies to
        ({"asset_classes": ["equity"]}, "AAPL", FAIL),
        ({"symbols": ["MSFT"]}, "AAPL", PASS),
        ({"symbols": ["AAPL"]}, "AAPL", FAIL),
        ({"asset_classes": ["crypto"]}, "UNKNOWN", FAIL),  # an unknown class is not let off
    ],
)
def test_a_rule_limited_to_some_instruments(
    params: dict[str, Any], symbol: str, outcome: ComplianceOutcome
) -> None:
    spec = rule("max_order_quantity", max_quantity="10", **params)

    result = check(spec, order(symbol=symbol))

    assert result.outcome is outcome
    if outcome is PASS:
        assert result.message.startswith(f"Does not apply to {symbol}")


# ---- maximum order notional (size at the reference price, in the base currency) ------------------


@pytest.mark.parametrize(
    ("fields", "outcome", "observed"),
    [
        # 1,000 AAPL at 230.50 is 230,500: the limit.
        ({"quantity": "999"}, PASS, "230269.5"),
        ({"quantity": "1000"}, PASS, "230500"),
        ({"quantity": "1001"}, FAIL, "230730.5"),
        ({"quantity": "1000.000000000001"}, FAIL, "230500.00000000023"),  # rounded to 12 places
        # The limit price plays no part: size is at the reference price.
        ({"quantity": "1000", "side": "sell", "limit_price": "0.01"}, PASS, "230500"),
        ({"quantity": "1001", "side": "sell", "limit_price": "0.01"}, FAIL, "230730.5"),
        ({"quantity": "1000", "limit_price": "9999"}, PASS, "230500"),
        # 1,062.2119815668 SAP at 200 EUR, at 1.085 USD per EUR: converted into USD.
        ({"symbol": "SAP", "quantity": "1062"}, PASS, "230454"),
        ({"symbol": "SAP", "quantity": "1063"}, FAIL, "230671"),
    ],
)
def test_max_order_notional(
    fields: dict[str, Any], outcome: ComplianceOutcome, observed: str
) -> None:
    result = check(rule("max_order_notional", max_notional="230500"), order(**fields))

    assert result.outcome is outcome
    assert (result.observed, result.limit) == (observed, "230500")
    assert "USD" in result.message


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"symbol": "NOPRICE"}, "there is no reference price for NOPRICE"),
        ({"symbol": "NOPRICE", "limit_price": "10"}, "there is no reference price for NOPRICE"),
        ({"symbol": "UNKNOWN"}, "there is no reference data for UNKNOWN"),
        ({"symbol": "VOD"}, "there is no FX rate from GBP to the fund's base currency USD"),
    ],
)
def test_an_order_that_cannot_be_sized_fails_a_size_rule_of_any_severity(
    fields: dict[str, Any], why: str
) -> None:
    result = check(rule("max_order_notional", "warn", max_notional="1e12"), order(**fields))

    assert result.outcome is FAIL
    assert result.message == f"Cannot check the order's value against the firm's soft limit: {why}."


# ---- price collar ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("side", "limit_price", "outcome"),
    [
        # 5% through 230.50: a buy limit of 242.025, a sell limit of 218.975.
        ("buy", "242.024", PASS),
        ("buy", "242.025", PASS),
        ("buy", "242.026", FAIL),
        ("buy", "100", PASS),  # far below the market: passive, not through it
        ("sell", "218.976", PASS),
        ("sell", "218.975", PASS),
        ("sell", "218.974", FAIL),
        ("sell_short", "218.974", FAIL),
        ("sell", "9999", PASS),
        ("sell", "0.01", FAIL),
        ("buy", "230.50", PASS),
    ],
)
def test_price_collar(side: str, limit_price: str, outcome: ComplianceOutcome) -> None:
    result = check(
        rule("price_collar", max_deviation_pct="5"), order(side=side, limit_price=limit_price)
    )

    assert result.outcome is outcome
    assert result.limit == "5"
    assert f"{Decimal(limit_price):,f}" in result.message
    assert "230.50" in result.message


@pytest.mark.parametrize(
    ("fields", "outcome", "message"),
    [
        ({}, PASS, "A market order: no limit to check; AAPL's reference price is 230.50."),
        # No FX rate is needed to compare two prices in one currency.
        (
            {"symbol": "VOD", "limit_price": "0.7"},
            PASS,
            "The buy limit 0.7 is at the reference price: not through the market, so within the collar of 5.00%.",
        ),
        (
            {"symbol": "NOPRICE"},
            FAIL,
            "Cannot check a market order against the price collar: there is no reference price for NOPRICE.",
        ),
        (
            {"symbol": "NOPRICE", "limit_price": "1"},
            FAIL,
            "Cannot check the limit price against the price collar: there is no reference price for NOPRICE.",
        ),
        (
            {"symbol": "UNKNOWN", "limit_price": "1"},
            FAIL,
            "Cannot check the limit price against the price collar: there is no reference data for UNKNOWN.",
        ),
    ],
)
def test_price_collar_without_a_limit_or_a_reference(
    fields: dict[str, Any], outcome: ComplianceOutcome, message: str
) -> None:
    result = check(rule("price_collar", "warn", max_deviation_pct="5"), order(**fields))

    assert (result.outcome, result.message) == (outcome, message)


# ---- position limit ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("side", "quantity", "held", "open_orders", "outcome", "observed"),
    [
        # Long limit 1,000: 600 held and 200 in an open buy leave room for 200.
        ("buy", "199", "600", [("buy", "200")], PASS, "999"),
        ("buy", "200", "600", [("buy", "200")], PASS, "1000"),
        ("buy", "201", "600", [("buy", "200")], FAIL, "1001"),
        # An open sell is not netted against a buy: it may never fill.
        ("buy", "101", "900", [("sell", "500")], FAIL, "1001"),
        # Short limit 500: 600 held and 100 in an open sell leave 1,000 to sell.
        ("sell", "999", "600", [("sell", "100")], PASS, "499"),
        ("sell", "1000", "600", [("sell", "100")], PASS, "500"),
        ("sell", "1001", "600", [("sell", "100")], FAIL, "501"),
        ("sell_short", "1001", "600", [("sell", "100")], FAIL, "501"),
        ("sell", "1", "-500", [("buy", "400")], FAIL, "501"),
        # An order that brings a position back towards its limit is never refused by it.
        ("sell", "100", "5000", [], PASS, "-4900"),
        ("buy", "100", "-5000", [], PASS, "-4900"),
    ],
)
def test_position_limit(
    side: str,
    quantity: str,
    held: str,
    open_orders: list[tuple[str, str]],
    outcome: ComplianceOutcome,
    observed: str,
) -> None:
    spec = rule("position_limit", max_long="1000", max_short="500")
    fund = snapshot(
        holdings={"AAPL": Decimal(held)},
        reservations=[reservation(side=s, quantity=q) for s, q in open_orders],
    )

    result = check(spec, order(side=side, quantity=quantity), fund)

    assert result.outcome is outcome
    assert result.observed == observed


def test_position_limit_on_one_side_only() -> None:
    spec = rule("position_limit", max_long="1000")

    assert check(spec, order(side="sell", quantity="1000000")).outcome is PASS
    assert check(spec, order(quantity="1001")).outcome is FAIL


# ---- issuer concentration ----------------------------------------------------------------------

# NAV 2,305,000: 10% is 230,500, the value of 1,000 AAPL.
SMALL = {"nav": Decimal(2_305_000)}


@pytest.mark.parametrize(
    ("fields", "fund", "outcome", "observed"),
    [
        ({"quantity": "999"}, {}, PASS, "9.99"),
        ({"quantity": "1000"}, {}, PASS, "10"),
        ({"quantity": "1001"}, {}, FAIL, "10.01"),
        # A buy is valued at the higher of its limit and the reference price.
        ({"quantity": "1000", "limit_price": "230.5001"}, {}, FAIL, "10.000004"),
        ({"quantity": "1000", "limit_price": "100"}, {}, PASS, "10"),
        # Positions and open buys count; open sells do not lower a buy's.
        (
            {"quantity": "500"},
            {"holdings": {"AAPL": Decimal(300)}, "reservations": [reservation(quantity="200")]},
            PASS,
            "10",
        ),
        (
            {"quantity": "501"},
            {"holdings": {"AAPL": Decimal(300)}, "reservations": [reservation(quantity="200")]},
            FAIL,
            "10.01",
        ),
        (
            {"quantity": "501"},
            {
                "holdings": {"AAPL": Decimal(300)},
                "reservations": [
                    reservation(quantity="200"),
                    reservation(side="sell", quantity="800"),
                ],
            },
            FAIL,
            "10.01",
        ),
        # Every instrument of the issuer counts: 1,152.5 GOOG at 100 is 5%.
        (
            {"symbol": "GOOGL", "quantity": "1152.5"},
            {"holdings": {"GOOG": Decimal("1152.5")}},
            PASS,
            "10",
        ),
        (
            {"symbol": "GOOGL", "quantity": "1153"},
            {"holdings": {"GOOG": Decimal("1152.5")}},
            FAIL,
            "10.002169",
        ),
        # Short: a sale is held to the limit on the short side.
        ({"side": "sell_short", "quantity": "1000"}, {}, PASS, "10"),
        ({"side": "sell_short", "quantity": "1001"}, {}, FAIL, "10.01"),
        ({"side": "sell", "quantity": "1"}, {"holdings": {"AAPL": Decimal(-1000)}}, FAIL, "10.01"),
        # A sale that lowers a long concentration is never refused by it.
        ({"side": "sell", "quantity": "100"}, {"holdings": {"AAPL": Decimal(5000)}}, PASS, "-49"),
        # A sell is valued at the lower of its limit and the reference price.
        ({"side": "sell_short", "quantity": "1001", "limit_price": "230"}, {}, PASS, "9.988286"),
    ],
)
def test_issuer_concentration(
    fields: dict[str, Any], fund: dict[str, Any], outcome: ComplianceOutcome, observed: str
) -> None:
    result = check(
        rule("issuer_concentration", max_pct="10"), order(**fields), snapshot(**SMALL, **fund)
    )

    assert result.outcome is outcome
    assert (result.observed, result.limit) == (observed, "10")
    assert "of NAV" in result.message


@pytest.mark.parametrize(
    ("fields", "fund", "outcome", "text"),
    [
        ({"symbol": "EURUSD"}, {}, PASS, "EURUSD has no issuer on record; not checked."),
        ({}, {"nav": Decimal(0)}, FAIL, "the fund's NAV is 0 USD"),
        ({"symbol": "NOPRICE"}, {}, FAIL, "there is no reference price for NOPRICE"),
        ({"symbol": "UNKNOWN"}, {}, FAIL, "there is no reference data for UNKNOWN"),
    ],
)
def test_issuer_concentration_without_the_data(
    fields: dict[str, Any], fund: dict[str, Any], outcome: ComplianceOutcome, text: str
) -> None:
    result = check(
        rule("issuer_concentration", "warn", max_pct="10"), order(**fields), snapshot(**fund)
    )

    assert result.outcome is outcome
    assert text in result.message


def test_holdings_without_a_price_are_named() -> None:
    fund = snapshot(holdings={"NOPRICE": Decimal(10)})
    spec = rule("sector_band", max_pct="10")

    result = check(spec, order(symbol="NOPRICE", limit_price="1"), fund)

    assert result.outcome is PASS
    assert "Left out for want of a price: NOPRICE." in result.message


# ---- asset-class and sector bands --------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "fields", "fund", "outcome"),
    [
        # Crypto at most 5% of 1,280,000: one bitcoin at 64,000.
        (
            {"asset_class": "crypto", "max_pct": "5"},
            {"symbol": "BTC-USD", "quantity": "0.9999"},
            {"nav": Decimal(1_280_000)},
            PASS,
        ),
        (
            {"asset_class": "crypto", "max_pct": "5"},
            {"symbol": "BTC-USD", "quantity": "1"},
            {"nav": Decimal(1_280_000)},
            PASS,
        ),
        (
            {"asset_class": "crypto", "max_pct": "5"},
            {"symbol": "BTC-USD", "quantity": "1.0001"},
            {"nav": Decimal(1_280_000)},
            FAIL,
        ),
        (
            {"asset_class": "crypto", "max_pct": "5"},
            {"symbol": "AAPL"},
            {"nav": Decimal(1_280_000)},
            PASS,
        ),
        # Left out, the band is the order's own asset class.
        (
            {"max_pct": "5"},
            {"symbol": "BTC-USD", "quantity": "1.0001"},
            {"nav": Decimal(1_280_000)},
            FAIL,
        ),
        # Equity at least 50% of 2,305,000: 5,000 AAPL. A sale is held to the floor.
        (
            {"asset_class": "equity", "min_pct": "50"},
            {"side": "sell", "quantity": "1"},
            {"nav": Decimal(2_305_000), "holdings": {"AAPL": Decimal(5001)}},
            PASS,
        ),
        (
            {"asset_class": "equity", "min_pct": "50"},
            {"side": "sell", "quantity": "2"},
            {"nav": Decimal(2_305_000), "holdings": {"AAPL": Decimal(5001)}},
            FAIL,
        ),
        # An open sale counts against the floor too.
        (
            {"asset_class": "equity", "min_pct": "50"},
            {"side": "sell", "quantity": "1"},
            {
                "nav": Decimal(2_305_000),
                "holdings": {"AAPL": Decimal(5001)},
                "reservations": [reservation(side="sell", quantity="1")],
            },
            FAIL,
        ),
        # A buy below the floor, or a sale above the ceiling, brings the fund back: passes.
        (
            {"asset_class": "equity", "min_pct": "50"},
            {"quantity": "1"},
            {"nav": Decimal(2_305_000)},
            PASS,
        ),
        (
            {"asset_class": "equity", "max_pct": "10"},
            {"side": "sell", "quantity": "1"},
            {"nav": Decimal(2_305_000), "holdings": {"AAPL": Decimal(5001)}},
            PASS,
        ),
    ],
)
def test_asset_class_band(
    params: dict[str, Any], fields: dict[str, Any], fund: dict[str, Any], outcome: ComplianceOutcome
) -> None:
    result = check(rule("asset_class_band", **params), order(**fields), snapshot(**fund))

    assert result.outcome is outcome


# Technology at most 40% of 2,190,500 = 876,200: 1,000 MSFT (415,200) and 2,000 AAPL (461,000).
TECH = {"nav": Decimal(2_190_500), "holdings": {"MSFT": Decimal(1000)}}


@pytest.mark.parametrize(
    ("params", "fields", "outcome", "observed"),
    [
        ({"sector": "Technology", "max_pct": "40"}, {"quantity": "1999"}, PASS, "39.989477"),
        ({"sector": "Technology", "max_pct": "40"}, {"quantity": "2000"}, PASS, "40"),
        ({"sector": "Technology", "max_pct": "40"}, {"quantity": "2001"}, FAIL, "40.010523"),
        ({"sector": "technology", "max_pct": "40"}, {"quantity": "2001"}, FAIL, "40.010523"),
        ({"max_pct": "40"}, {"quantity": "2001"}, FAIL, "40.010523"),  # the order's sector
        # In EUR: 1,000 SAP at 200 EUR at 1.085 is 217,000 USD.
        ({"max_pct": "40"}, {"symbol": "SAP", "quantity": "2124"}, PASS, "39.9958"),
        ({"max_pct": "40"}, {"symbol": "SAP", "quantity": "2125"}, FAIL, "40.005706"),
        ({"sector": "Energy", "max_pct": "40"}, {"quantity": "9999"}, PASS, None),
        ({"max_pct": "40"}, {"symbol": "EURUSD", "quantity": "999999999"}, PASS, None),
    ],
)
def test_sector_band(
    params: dict[str, Any], fields: dict[str, Any], outcome: ComplianceOutcome, observed: str | None
) -> None:
    result = check(rule("sector_band", **params), order(**fields), snapshot(**TECH))

    assert result.outcome is outcome
    assert result.observed == observed


# ---- cash --------------------------------------------------------------------------------------

# Cash 230,500 less an open buy of 100 AAPL (23,050) leaves 207,450: 900 AAPL.
CASH = {"cash": Decimal(230_500), "reservations": [reservation(quantity="100")]}


@pytest.mark.parametrize(
    ("params", "fields", "outcome"),
    [
        ({}, {"quantity": "899"}, PASS),
        ({}, {"quantity": "900"}, PASS),
        ({}, {"quantity": "900.000000000001"}, FAIL),
        ({}, {"quantity": "901"}, FAIL),
        # A buy is paid at the higher of its limit and the reference price.
        ({}, {"quantity": "900", "limit_price": "230.51"}, FAIL),
        ({}, {"quantity": "900", "limit_price": "200"}, PASS),
        ({"min_cash_after": "230.50"}, {"quantity": "899"}, PASS),
        ({"min_cash_after": "230.50"}, {"quantity": "900"}, FAIL),
        ({}, {"side": "sell", "quantity": "99999"}, PASS),
        ({}, {"symbol": "NOPRICE"}, FAIL),
    ],
)
def test_cash_available(
    params: dict[str, Any], fields: dict[str, Any], outcome: ComplianceOutcome
) -> None:
    result = check(rule("cash_available", **params), order(**fields), snapshot(**CASH))

    assert result.outcome is outcome


# ---- short sale --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "fields", "outcome"),
    [
        # 1,000 held, 200 already in an open sell: 800 left to sell long.
        ({}, {"side": "sell", "quantity": "799"}, PASS),
        ({}, {"side": "sell", "quantity": "800"}, PASS),
        ({}, {"side": "sell", "quantity": "801"}, FAIL),
        ({}, {"side": "sell_short", "quantity": "801"}, FAIL),
        ({}, {"side": "sell_short", "quantity": "801", "locate_id": "LOC-1"}, PASS),
        ({"require_locate": False}, {"side": "sell_short", "quantity": "801"}, PASS),
        ({}, {"side": "buy", "quantity": "99999"}, PASS),
        ({}, {"symbol": "MSFT", "side": "sell", "quantity": "1"}, FAIL),
    ],
)
def test_short_sale(
    params: dict[str, Any], fields: dict[str, Any], outcome: ComplianceOutcome
) -> None:
    fund = snapshot(
        holdings={"AAPL": Decimal(1000)}, reservations=[reservation(side="sell", quantity="200")]
    )

    result = check(rule("short_sale", **params), order(**fields), fund)

    assert result.outcome is outcome
    if outcome is FAIL:
        assert "locate_id" in result.message


# ---- duplicate orders and order rate -----------------------------------------------------------


@pytest.mark.parametrize(
    ("recent_orders", "outcome"),
    [
        ([recent(59)], WARN),
        ([recent(60)], WARN),
        ([recent(60.001)], PASS),
        ([recent(1, quantity="100.000")], WARN),  # the same quantity, written otherwise
        ([recent(1, quantity="101")], PASS),
        ([recent(1, side="sell")], PASS),
        ([recent(1, symbol="MSFT")], PASS),
        ([recent(120), recent(30), recent(5)], WARN),
        ([], PASS),
    ],
)
def test_duplicate_order(recent_orders: list[RecentOrder], outcome: ComplianceOutcome) -> None:
    spec = rule("duplicate_order", "warn", window_seconds=60)

    result = check(spec, order(), snapshot(recent_orders=recent_orders))

    assert result.outcome is outcome
    if outcome is WARN:
        assert "Possible duplicate" in result.message
        assert "bob" in result.message


@pytest.mark.parametrize(
    ("recent_orders", "outcome", "observed"),
    [
        # At most 3 a minute, this one included.
        ([recent(10, created_by="alice")], PASS, "2"),
        ([recent(s, created_by="alice") for s in (10, 20)], PASS, "3"),
        ([recent(s, created_by="alice") for s in (10, 20, 60)], FAIL, "4"),
        ([recent(s, created_by="alice") for s in (10, 20, 60.001)], PASS, "3"),
        ([recent(s, created_by="bob") for s in (10, 20, 30)], PASS, "1"),
    ],
)
def test_order_rate(
    recent_orders: list[RecentOrder], outcome: ComplianceOutcome, observed: str
) -> None:
    spec = rule("order_rate", max_orders=3, window_seconds=60)

    result = check(spec, order(), snapshot(recent_orders=recent_orders))

    assert result.outcome is outcome
    assert (result.observed, result.limit) == (observed, "3")


# ---- trading hours -----------------------------------------------------------------------------

NIGHT = MarketHours(
    market="NIGHT", timezone="Asia/Tokyo", opens=time(18), closes=time(6), weekdays=[0, 1, 2, 3, 4]
)


@pytest.mark.parametrize(
    ("hours", "at", "outcome"),
    [
        # XNYS: 09:30 to 16:00 New York (UTC-4 on 14 March 2025), Monday to Friday.
        (XNYS, datetime(2025, 3, 14, 13, 29, 59, tzinfo=UTC), WARN),
        (XNYS, datetime(2025, 3, 14, 13, 30, tzinfo=UTC), PASS),
        (XNYS, datetime(2025, 3, 14, 19, 59, 59, tzinfo=UTC), PASS),
        (XNYS, datetime(2025, 3, 14, 20, 0, tzinfo=UTC), WARN),
        (XNYS, datetime(2025, 3, 15, 14, 30, tzinfo=UTC), WARN),  # Saturday
        (XNYS, datetime(2025, 1, 10, 14, 30, tzinfo=UTC), PASS),  # winter: 09:30 is 14:30 UTC
        (XNYS, datetime(2025, 1, 10, 14, 29, tzinfo=UTC), WARN),
        # A session through midnight belongs to the day it opened on (Tokyo is UTC+9).
        (NIGHT, datetime(2025, 3, 11, 17, 0, tzinfo=UTC), PASS),  # Tue 02:00, Monday's session
        (NIGHT, datetime(2025, 3, 9, 17, 0, tzinfo=UTC), WARN),  # Mon 02:00, Sunday's: none
        (NIGHT, datetime(2025, 3, 14, 21, 0, tzinfo=UTC), WARN),  # Sat 06:00: closed
        (NIGHT, datetime(2025, 3, 14, 20, 59, 59, tzinfo=UTC), PASS),  # Sat 05:59:59, Friday's
        (NIGHT, datetime(2025, 3, 15, 9, 0, tzinfo=UTC), WARN),  # Sat 18:00
        (NIGHT, datetime(2025, 3, 14, 9, 0, tzinfo=UTC), PASS),  # Fri 18:00
    ],
)
def test_trading_hours(hours: MarketHours, at: datetime, outcome: ComplianceOutcome) -> None:
    instruments = {**INSTRUMENTS, "AAPL": INSTRUMENTS["AAPL"].model_copy(update={"hours": hours})}
    result = check(
        rule("trading_hours", "warn"), order(), snapshot(instruments=instruments, taken_at=at)
    )

    assert result.outcome is outcome
    assert hours.market in result.message
    assert "holidays are not checked" in result.message


@pytest.mark.parametrize(
    ("symbol", "hours", "outcome", "text"),
    [
        ("BTC-USD", None, PASS, "CRYPTO trades around the clock."),
        ("EURUSD", None, PASS, "No trading hours are known for EURUSD; not checked."),
        (
            "AAPL",
            XNYS.model_copy(update={"timezone": "Mars/Olympus"}),
            FAIL,
            "Cannot check XNYS's trading hours: the time zone 'Mars/Olympus' is unknown.",
        ),
        (
            "AAPL",
            XNYS.model_copy(update={"timezone": "../../etc/passwd"}),
            FAIL,
            "Cannot check XNYS's trading hours: the time zone '../../etc/passwd' is unknown.",
        ),
    ],
)
def test_trading_hours_without_a_schedule(
    symbol: str, hours: MarketHours | None, outcome: ComplianceOutcome, text: str
) -> None:
    instruments = dict(INSTRUMENTS)
    if hours is not None:
        instruments[symbol] = instruments[symbol].model_copy(update={"hours": hours})
    result = check(
        rule("trading_hours", "warn"), order(symbol=symbol), snapshot(instruments=instruments)
    )

    assert result.outcome is outcome
    assert text in result.message
    assert "could not be evaluated" not in result.message


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            RuleSpec(id="hand-made", type="astrology", severity=Severity.WARN, scope=Scope.FIRM),
            "Cannot check rule hand-made: its type 'astrology' is unknown.",
        ),
        (
            RuleSpec(
                id="hand-made", type="max_order_notional", severity=Severity.WARN, scope=Scope.FIRM
            ),
            "Cannot check rule hand-made: it could not be evaluated (1 validation error",
        ),
    ],
)
def test_a_rule_built_by_hand_that_cannot_run_fails_rather_than_raising(
    spec: RuleSpec, message: str
) -> None:
    # The parser refuses both; a spec built some other way must still not break a workflow.
    result = check(spec)

    assert result.outcome is FAIL
    assert result.message.startswith(message)


# ---- the kill switch ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "outcome"), [("fund-alpha", FAIL), ("*", FAIL), ("fund-beta", PASS)]
)
def test_the_kill_switch_is_always_checked(scope: str, outcome: ComplianceOutcome) -> None:
    switch = KillSwitch(
        scope=scope, engaged_by="carol", reason="runaway algo", engaged_at=NOW - timedelta(hours=1)
    )

    assessment = assess(
        order(),
        snapshot(kill_switches=[switch]),
        CompliancePolicy(version="v", rules=[]),
        ALPHA_MATRIX,
        created_by="alice",
    )

    [result] = assessment.results
    assert (result.rule, result.outcome, assessment.outcome) == (KILL_SWITCH_RULE, outcome, outcome)
    if outcome is FAIL:
        assert "carol" in result.message
        assert "runaway algo" in result.message
        assert "2025-03-14 13:30 UTC" in result.message


def test_a_snapshot_of_another_fund_fails() -> None:
    assessment = assess(
        order(fund="fund-beta"),
        snapshot(),
        CompliancePolicy(version="v", rules=[]),
        BETA_MATRIX,
        created_by="alice",
    )

    assert [(r.rule, r.outcome) for r in assessment.results] == [
        (KILL_SWITCH_RULE, PASS),
        (SNAPSHOT_RULE, FAIL),
    ]


# ---- the whole assessment against the real rules -----------------------------------------------

RULES = parse_rules((POLICIES / "compliance.toml").read_bytes())


def demo_alpha(**fields: Any) -> PortfolioSnapshot:
    """fund-alpha as the demo data has it: 220,000 AAPL, 100,000 MSFT, 50,000 GME."""
    values: dict[str, Any] = {
        "holdings": {"AAPL": Decimal(220_000), "MSFT": Decimal(100_000), "GME": Decimal(50_000)}
    }
    values.update(fields)
    return snapshot(**values)


def assess_alpha(the_order: OrderRequest, fund: PortfolioSnapshot | None = None) -> Assessment:
    return assess(the_order, fund or demo_alpha(), RULES, ALPHA_MATRIX, created_by="alice")


def breaches(assessment: Assessment) -> dict[str, ComplianceOutcome]:
    return {r.rule: r.outcome for r in assessment.results if r.outcome is not PASS}


@pytest.mark.parametrize("quantity", ["100", "1000", "50000"])
def test_ordinary_demo_orders_pass(quantity: str) -> None:
    assessment = assess_alpha(order(quantity=quantity))

    assert breaches(assessment) == {}
    assert assessment.outcome is PASS
    assert (
        assessment.rules_version
        == hashlib.sha256((POLICIES / "compliance.toml").read_bytes()).hexdigest()
    )
    assert assessment.base_currency == "USD"


def test_alice_cannot_hide_the_size_of_a_sale_behind_a_far_off_limit() -> None:
    # alice sold 1,000,000 AAPL limited at 0.01: valued at its limit it was worth 10,000.
    sale = order(side="sell", quantity="1000000", limit_price="0.01")
    legacy = ComplianceSnapshot(
        fund="fund-alpha",
        instrument=Instrument(
            symbol="AAPL", asset_class="equity", currency="USD", reference_price=Decimal("230.50")
        ),
        taken_at=NOW,
    )
    assert approval_notional(sale, legacy) == Decimal(230_500_000)

    assessment = assess_alpha(sale)

    assert assessment.size_notional == Decimal(230_500_000)
    assert assessment.exposure == Decimal(10_000)  # the least it can add, for exposure limits
    [hard] = [r for r in assessment.results if r.rule == "alpha-max-order-notional"]
    assert (hard.outcome, hard.observed, hard.limit) == (FAIL, "230500000", "50000000")
    assert "230,500,000.00 USD" in hard.message
    assert "50,000,000.00 USD" in hard.message
    assert assessment.outcome is FAIL
    # The price collar catches the limit itself.
    assert breaches(assessment)["firm-price-collar-hard"] is FAIL


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"symbol": "GME", "side": "sell", "quantity": "10"}, {"firm-restricted-list": FAIL}),
        ({"quantity": "100000"}, {"alpha-soft-order-notional": WARN}),
        (
            {"quantity": "250000"},
            {
                "alpha-max-order-notional": FAIL,
                "alpha-soft-order-notional": WARN,
                "firm-issuer-concentration-soft": WARN,  # 470,000 AAPL: 21.7% of NAV
            },
        ),
        ({"limit_price": "250"}, {"firm-price-collar-soft": WARN}),
        ({"symbol": "GOOG", "side": "sell", "quantity": "10"}, {"firm-short-sale": FAIL}),
        ({"side": "sell_short", "quantity": "100"}, {"firm-short-sale": FAIL}),
        ({"side": "sell_short", "quantity": "100", "locate_id": "LOC-7"}, {}),
    ],
)
def test_hostile_and_unusual_orders(fields: dict[str, Any], expected: dict[str, Any]) -> None:
    assessment = assess_alpha(order(**fields))

    assert breaches(assessment) == expected
    worst = FAIL if FAIL in expected.values() else WARN if expected else PASS
    assert assessment.outcome is worst


def test_two_orders_each_within_a_limit_together_over_it_the_second_breaches() -> None:
    # fund-alpha with 30,000,000 in cash; each order buys 185,000 GOOG at 100: 18,500,000.
    fund = demo_alpha(cash=Decimal(30_000_000))
    first = order(client_order_id="c-1", symbol="GOOG", quantity="185000")
    assert breaches(assess_alpha(first, fund)) == {}

    # The first is pending approval: it reserves its exposure.
    pending = reservation(symbol="GOOG", quantity="185000")
    second = order(client_order_id="c-2", symbol="GOOG", quantity="185000")
    assessment = assess_alpha(second, demo_alpha(cash=Decimal(30_000_000), reservations=[pending]))

    assert breaches(assessment) == {"firm-cash-for-buys": FAIL}
    assert assessment.outcome is FAIL
    [result] = [r for r in assessment.results if r.rule == "firm-cash-for-buys"]
    assert (result.observed, result.limit) == ("18500000", "11500000")
    assert result.message == (
        "The buy needs 18,500,000.00 USD but only 11,500,000.00 USD is available "
        "(cash 30,000,000 less 18,500,000 reserved by open buys)."
    )


def test_an_open_order_counts_towards_the_issuer_limit() -> None:
    # 220,000 AAPL is 50,710,000; 320,000 more (73,760,000) makes 24.894% of NAV, within 25%.
    [limit] = [r for r in RULES.rules if r.id == "firm-issuer-concentration-hard"]
    policy = CompliancePolicy(version="v", rules=[limit])
    first = order(client_order_id="c-1", quantity="320000")
    alone = assess(first, demo_alpha(), policy, ALPHA_MATRIX, created_by="alice")
    assert (alone.outcome, alone.results[-1].observed) == (PASS, "24.894")

    pending = reservation(quantity="320000")
    second = order(client_order_id="c-2", quantity="320000")
    together = assess(
        second, demo_alpha(reservations=[pending]), policy, ALPHA_MATRIX, created_by="alice"
    )

    assert (together.outcome, together.results[-1].observed) == (FAIL, "39.646")


@pytest.mark.parametrize(
    ("fields", "matrix", "levels"),
    [
        # fund-beta: no one below 250,000, a desk_head to 5,000,000, then the cio too.
        ({"fund": "fund-beta", "quantity": "1000"}, BETA_MATRIX, []),
        # 1,050 at 242 would be 254,100; at the reference price 230.50 it is 242,025.
        ({"fund": "fund-beta", "quantity": "1050", "limit_price": "242"}, BETA_MATRIX, []),
        ({"fund": "fund-beta", "quantity": "1085"}, BETA_MATRIX, ["desk_head"]),
        ({"quantity": "100"}, ALPHA_MATRIX, ["desk_head"]),
        ({"quantity": "50000"}, ALPHA_MATRIX, ["desk_head", "cio"]),
        # A soft breach always needs the matrix's soft-breach levels.
        (
            {"fund": "fund-beta", "quantity": "1", "limit_price": "250"},
            BETA_MATRIX,
            ["desk_head", "cio"],
        ),
    ],
)
def test_approval_levels_come_from_the_size_at_the_reference_price(
    fields: dict[str, Any], matrix: FundApprovalPolicy, levels: list[str]
) -> None:
    the_order = order(**fields)
    fund = snapshot(fund=the_order.fund, nav=Decimal(200_000_000))

    assessment = assess(the_order, fund, RULES, matrix, created_by="alice")

    assert assessment.approval.levels == levels
    assert assessment.approval.matrix_version == matrix.version


def test_an_order_without_a_price_fails_and_needs_every_level() -> None:
    assessment = assess_alpha(order(symbol="NOPRICE"))

    assert (assessment.exposure, assessment.size_notional) == (None, None)
    assert assessment.outcome is FAIL
    assert breaches(assessment)["alpha-max-order-notional"] is FAIL
    assert breaches(assessment)["firm-price-collar-soft"] is FAIL
    assert assessment.approval.levels == ALPHA_MATRIX.levels_in_order


def test_account_rules_apply_to_the_accounts_the_order_allocates_to() -> None:
    altria = InstrumentData(
        symbol="MO",
        asset_class="equity",
        currency="USD",
        reference_price=Decimal(50),
        issuer="Altria Group Inc.",
    )
    fund = demo_alpha(instruments={**INSTRUMENTS, "MO": altria})
    to_growth = order(
        symbol="MO",
        quantity="100",
        allocations=[
            {"account": "alpha-main", "quantity": 60},
            {"account": "alpha-growth", "quantity": 40},
        ],
    )
    to_main = order(
        symbol="MO", quantity="100", allocations=[{"account": "alpha-main", "quantity": 100}]
    )

    assert breaches(assess_alpha(to_growth, fund)) == {"alpha-growth-exclusions": FAIL}
    assert breaches(assess_alpha(to_main, fund)) == {}
    # Without allocations the order goes to the fund's default account.
    unallocated = order(symbol="MO", quantity="100")
    assert breaches(assess_alpha(unallocated, fund)) == {}
    by_default = assess(
        unallocated, fund, RULES, ALPHA_MATRIX, created_by="alice", default_account="alpha-growth"
    )
    assert breaches(by_default) == {"alpha-growth-exclusions": FAIL}


def test_results_come_in_order_firm_then_fund_each_named_by_its_rule() -> None:
    assessment = assess_alpha(order())

    assert [r.rule for r in assessment.results] == [KILL_SWITCH_RULE] + [
        r.id for r in RULES.rules_for("fund-alpha")
    ]
    assert all(r.message.endswith((".", ")")) for r in assessment.results)


# ---- purity ------------------------------------------------------------------------------------


def test_the_same_inputs_give_the_same_answer_whatever_the_decimal_context() -> None:
    the_order = order(symbol="SAP", quantity="1234.5678", limit_price="201.3")
    fund = demo_alpha(holdings={"SAP": Decimal("333.3")}, reservations=[reservation()])
    first = assess_alpha(the_order, fund)

    with localcontext() as narrow:
        narrow.prec = 5
        second = assess_alpha(the_order, fund)
    # A new snapshot object, built again: no cached aggregate leaks between them.
    third = assess_alpha(the_order, fund.model_copy(deep=True))

    assert first == second == third


def test_a_changed_snapshot_is_judged_afresh() -> None:
    spec = rule("issuer_concentration", max_pct="10")
    fund = snapshot(**SMALL)
    assert check(spec, order(quantity="1000"), fund).outcome is PASS

    held = fund.model_copy(update={"holdings": {"AAPL": Decimal(1)}})

    assert check(spec, order(quantity="1000"), held).outcome is FAIL
    assert exposures_of(held) is exposures_of(held)
    assert exposures_of(held) is not exposures_of(fund)


# ---- nothing a person sends makes it raise -----------------------------------------------------

_AMOUNTS = st.decimals(
    min_value=Decimal("0.000000000001"),
    max_value=Decimal("999999999999999.999999999999"),
    places=12,
    allow_nan=False,
    allow_infinity=False,
)


@st.composite
def orders(draw: st.DrawFn) -> OrderRequest:
    fields: dict[str, Any] = {
        "client_order_id": "fuzz",
        "fund": "fund-alpha",
        "symbol": draw(st.sampled_from([*INSTRUMENTS, "UNKNOWN"])),
        "side": draw(st.sampled_from(["buy", "sell", "sell_short"])),
        "quantity": draw(_AMOUNTS),
        "locate_id": draw(st.none() | st.just("LOC-1")),
    }
    if draw(st.booleans()):
        fields["order_type"] = "limit"
        fields["limit_price"] = draw(_AMOUNTS)
    # Every drawn value is within the model's bounds: what the API lets a person send.
    return OrderRequest.model_validate(fields)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    the_order=orders(),
    nav=st.sampled_from([Decimal(0), Decimal(-5), Decimal(1), Decimal("1e20")]),
    cash=st.sampled_from([Decimal(0), Decimal(-1_000_000), Decimal("1e20")]),
    held=st.sampled_from([Decimal(0), Decimal("-999999999999999"), Decimal("999999999999999")]),
    reference=st.sampled_from(
        [None, Decimal(0), Decimal(-1), Decimal("0.000000000001"), Decimal("1e14")]
    ),
    minutes=st.integers(min_value=0, max_value=60 * 24 * 7),
)
def test_no_order_makes_the_assessment_raise(
    the_order: OrderRequest,
    nav: Decimal,
    cash: Decimal,
    held: Decimal,
    reference: Decimal | None,
    minutes: int,
) -> None:
    odd = {
        symbol: data.model_copy(update={"reference_price": reference})
        for symbol, data in INSTRUMENTS.items()
        if symbol in ("MSFT", "GOOG")
    }
    fund = snapshot(
        nav=nav,
        cash=cash,
        instruments={**INSTRUMENTS, **odd},
        holdings={"AAPL": held, "MSFT": held, "UNKNOWN": held},
        reservations=[reservation(), reservation(symbol="MSFT", side="sell", quantity="1")],
        recent_orders=[recent(1, created_by="alice")],
        taken_at=NOW + timedelta(minutes=minutes),
    )

    assessment = assess(the_order, fund, RULES, ALPHA_MATRIX, created_by="alice")

    assert len(assessment.results) == 1 + len(RULES.rules_for("fund-alpha"))
    assert not [r.message for r in assessment.results if "could not be evaluated" in r.message]
    if any(r.outcome is FAIL for r in assessment.results):
        assert assessment.outcome is FAIL
