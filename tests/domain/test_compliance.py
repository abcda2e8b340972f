"""Pre-trade compliance rules: the restricted list, the notional limits and their edges."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest

from domain.compliance import (
    RULES,
    evaluate,
    max_order_notional,
    order_notional,
    order_price,
    restricted_list,
    worst_outcome,
)
from domain.models import (
    ComplianceOutcome,
    ComplianceResult,
    ComplianceSnapshot,
    Instrument,
    OrderRequest,
    tidy,
)

OrderFactory = Callable[..., OrderRequest]
SnapshotFactory = Callable[..., ComplianceSnapshot]

PASS, WARN, FAIL = ComplianceOutcome.PASS, ComplianceOutcome.WARN, ComplianceOutcome.FAIL

HARD = Decimal("50000000")
SOFT = Decimal("20000000")


# ---- restricted list ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("symbol", "restricted", "outcome"),
    [
        ("GME", ["GME"], FAIL),
        ("GME", ["AMC", "GME"], FAIL),
        ("AAPL", ["GME"], PASS),
        ("AAPL", [], PASS),
    ],
)
def test_restricted_list(
    make_order: OrderFactory,
    make_snapshot: SnapshotFactory,
    symbol: str,
    restricted: list[str],
    outcome: ComplianceOutcome,
) -> None:
    result = restricted_list(make_order(symbol=symbol), make_snapshot(restricted=restricted))
    assert result.rule == "restricted_list"
    assert result.outcome is outcome
    assert result.observed == symbol
    assert symbol in result.message
    if outcome is FAIL:
        assert "restricted list" in result.message


# ---- max order notional ---------------------------------------------------------------------

# (quantity, limit price or None for market at the 200.00 reference price, hard, soft) -> outcome
NOTIONAL_CASES = [
    pytest.param(Decimal(100), None, HARD, SOFT, PASS, id="small"),
    pytest.param(Decimal(100_000), None, HARD, SOFT, PASS, id="exactly-soft-passes"),
    pytest.param(Decimal("100000.00005"), None, HARD, SOFT, WARN, id="one-cent-above-soft"),
    pytest.param(Decimal(150_000), None, HARD, SOFT, WARN, id="between-soft-and-hard"),
    pytest.param(Decimal(250_000), None, HARD, SOFT, WARN, id="exactly-hard-warns"),
    pytest.param(Decimal(250_000), None, HARD, None, PASS, id="exactly-hard-no-soft-passes"),
    pytest.param(Decimal("250000.00005"), None, HARD, SOFT, FAIL, id="one-cent-above-hard"),
    pytest.param(Decimal("250000.00005"), None, HARD, None, FAIL, id="above-hard-no-soft"),
    pytest.param(Decimal(1_000_000), None, HARD, SOFT, FAIL, id="far-above-hard"),
    pytest.param(Decimal(1_000_000), None, None, SOFT, WARN, id="no-hard-above-soft"),
    pytest.param(Decimal(1_000_000), None, None, None, PASS, id="no-limits"),
    # Limit orders are valued at their limit price, not the reference price.
    pytest.param(Decimal(250_000), Decimal("199.99"), HARD, SOFT, WARN, id="limit-below-ref"),
    pytest.param(Decimal(100_000), Decimal("500.01"), HARD, SOFT, FAIL, id="limit-above-ref"),
    pytest.param(Decimal(100_000), Decimal("199.99"), HARD, SOFT, PASS, id="limit-under-soft"),
    pytest.param(Decimal(250_000), Decimal("200.00"), HARD, None, PASS, id="limit-exactly-hard"),
]


@pytest.mark.parametrize(("quantity", "limit", "hard", "soft", "outcome"), NOTIONAL_CASES)
def test_max_order_notional(
    make_order: OrderFactory,
    make_snapshot: SnapshotFactory,
    quantity: Decimal,
    limit: Decimal | None,
    hard: Decimal | None,
    soft: Decimal | None,
    outcome: ComplianceOutcome,
) -> None:
    order = make_order(quantity=quantity, limit_price=limit)
    snapshot = make_snapshot(hard=hard, soft=soft)
    result = max_order_notional(order, snapshot)
    notional = quantity * (limit if limit is not None else Decimal("200.00"))
    assert result.rule == "max_order_notional"
    assert result.outcome is outcome
    assert result.observed == str(tidy(notional))  # the value, without the product's padding
    if outcome is FAIL:
        assert result.limit == str(hard)
        assert "exceeds the fund's maximum" in result.message
    elif outcome is WARN:
        assert result.limit == str(soft)
        assert "exceeds the soft limit" in result.message
    else:
        assert result.limit == (str(hard) if hard is not None else None)
        assert "within limits" in result.message
    assert "USD" in result.message


def test_one_cent_either_side_of_the_hard_max(
    make_order: OrderFactory, make_snapshot: SnapshotFactory
) -> None:
    # 1 share at a limit price: the notional is the price, so a cent is easy to express.
    snapshot = make_snapshot(hard=Decimal("1000.00"))
    at = max_order_notional(make_order(quantity=1, limit_price=Decimal("1000.00")), snapshot)
    above = max_order_notional(make_order(quantity=1, limit_price=Decimal("1000.01")), snapshot)
    below = max_order_notional(make_order(quantity=1, limit_price=Decimal("999.99")), snapshot)
    assert (below.outcome, at.outcome, above.outcome) == (PASS, PASS, FAIL)
    assert above.observed == "1000.01"
    assert above.limit == "1000.00"


def test_message_formats_money_with_thousands_separators(
    make_order: OrderFactory, make_snapshot: SnapshotFactory
) -> None:
    result = max_order_notional(
        make_order(quantity=Decimal(300_000)), make_snapshot(hard=HARD, soft=SOFT)
    )
    assert result.outcome is FAIL
    assert "60,000,000.00 USD" in result.message
    assert "50,000,000.00" in result.message


def test_market_order_valued_at_reference_price(
    make_order: OrderFactory,
    make_snapshot: SnapshotFactory,
    make_instrument: Callable[..., Instrument],
) -> None:
    snapshot = make_snapshot(instrument=make_instrument(reference_price=Decimal("12.34")))
    order = make_order(quantity=Decimal(10))
    assert order_price(order, snapshot) == Decimal("12.34")
    assert order_notional(order, snapshot) == Decimal("123.40")


def test_limit_order_valued_at_limit_price(
    make_order: OrderFactory, make_snapshot: SnapshotFactory
) -> None:
    order = make_order(quantity=Decimal(10), limit_price=Decimal("150.5"))
    snapshot = make_snapshot()
    assert order_price(order, snapshot) == Decimal("150.5")
    assert order_notional(order, snapshot) == Decimal("1505.0")


# ---- worst outcome --------------------------------------------------------------------------


def _result(outcome: ComplianceOutcome) -> ComplianceResult:
    return ComplianceResult(rule="r", outcome=outcome, message="m")


@pytest.mark.parametrize(
    ("outcomes", "worst"),
    [
        ([], PASS),
        ([PASS], PASS),
        ([PASS, PASS], PASS),
        ([WARN], WARN),
        ([PASS, WARN], WARN),
        ([WARN, PASS], WARN),
        ([FAIL], FAIL),
        ([PASS, FAIL], FAIL),
        ([WARN, FAIL], FAIL),
        ([FAIL, WARN, PASS], FAIL),
    ],
)
def test_worst_outcome(outcomes: list[ComplianceOutcome], worst: ComplianceOutcome) -> None:
    assert worst_outcome([_result(o) for o in outcomes]) is worst


# ---- evaluate -------------------------------------------------------------------------------


def test_rules_are_in_order() -> None:
    assert (restricted_list, max_order_notional) == RULES


def test_evaluate_returns_every_result_in_rule_order(
    make_order: OrderFactory, make_snapshot: SnapshotFactory
) -> None:
    order = make_order(symbol="GME", quantity=Decimal(150_000))
    results = evaluate(order, make_snapshot(restricted=["GME"], hard=HARD, soft=SOFT))
    assert [r.rule for r in results] == ["restricted_list", "max_order_notional"]
    assert [r.outcome for r in results] == [FAIL, WARN]
    assert results[0].observed == "GME"
    assert results[0].limit is None
    assert results[1].observed == "30000000"
    assert results[1].limit == "20000000"
    assert worst_outcome(results) is FAIL


def test_evaluate_clean_order(make_order: OrderFactory, make_snapshot: SnapshotFactory) -> None:
    results = evaluate(make_order(), make_snapshot(restricted=["GME"], hard=HARD, soft=SOFT))
    assert [(r.rule, r.outcome) for r in results] == [
        ("restricted_list", PASS),
        ("max_order_notional", PASS),
    ]
    assert results[1].observed == "20000"
    assert results[1].limit == "50000000"
    assert worst_outcome(results) is PASS


def test_evaluate_is_deterministic(
    make_order: OrderFactory, make_snapshot: SnapshotFactory
) -> None:
    order = make_order(quantity=Decimal(120_000))
    snapshot = make_snapshot(hard=HARD, soft=SOFT)
    assert evaluate(order, snapshot) == evaluate(order, snapshot)
