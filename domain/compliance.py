"""Pre-trade compliance rules: pure functions of the order and a snapshot of the data they look at."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from domain.models import (
    ComplianceOutcome,
    ComplianceResult,
    ComplianceSnapshot,
    OrderRequest,
    tidy,
)

Rule = Callable[[OrderRequest, ComplianceSnapshot], ComplianceResult]


def order_price(order: OrderRequest, snapshot: ComplianceSnapshot) -> Decimal:
    """Return the price the order is valued at: its limit, else the instrument's reference price."""
    return (
        order.limit_price if order.limit_price is not None else snapshot.instrument.reference_price
    )


def order_notional(order: OrderRequest, snapshot: ComplianceSnapshot) -> Decimal:
    """Return the order's notional in the instrument's currency."""
    return tidy(order.quantity * order_price(order, snapshot))


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
