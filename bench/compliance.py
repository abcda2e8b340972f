"""How long one pre-trade assessment takes: 50 rules on a fund of 10,000 positions, 1,000 open orders.

Generates a fund the size of a large one: --positions instruments (mostly equities of about a
fifth as many issuers, in eleven sectors, some in EUR and GBP, a few FX pairs and coins), each
held long or short; --open-orders open orders of the fund (pending approval to working), each
reserving its exposure; a few hundred recent orders for the duplicate and rate rules. Then a
rules file of --rules rules spread over every rule type, the firm, the fund and two accounts,
parsed with `parse_compliance_policy`. It prints:

1.  parse: `parse_compliance_policy` of the generated rules file.
2.  load: `PortfolioSnapshot.model_validate` of the fund as plain data (what the activity
    returns, decoded), --loads times, each on a new copy of the data.
3.  first: the first assessment on each freshly loaded snapshot; it also builds the fund's
    aggregates (per issuer, sector and asset class, open quantities), which are then kept for
    that snapshot.
4.  assess: `assess` of --orders random orders (buys and sells, market and limit, across the
    fund's instruments, some allocated to the accounts with rules of their own) on the loaded
    snapshot. One pass over 200 of them runs first, uncounted. Every order answers to every
    rule: the account rules are those of the account each order allocates to (or defaults to).

Percentiles are nearest-rank; loads in milliseconds, assessments in microseconds. The garbage
collector stays on, as it is in a worker. The target is p99 under 1 ms per assessment.

Run: `python -m bench.compliance [--positions N] [--open-orders N] [--rules N] [--orders N]`.
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench.measure import percentile
from domain.approvals import parse_approval_policies
from domain.assessment import assess
from domain.compliance_policy import CompliancePolicy, parse_compliance_policy
from domain.models import ComplianceOutcome, OrderRequest
from domain.portfolio import PortfolioSnapshot

POLICIES = Path(__file__).resolve().parents[1] / "policies"
FUND = "fund-bench"
# Account rules are the main account's, where every order goes: each order answers to every rule.
ACCOUNTS = ["bench-main", "bench-esg", "bench-hedge"]
MAIN = ACCOUNTS[0]
SECTORS = [
    "Technology",
    "Health Care",
    "Financials",
    "Consumer Discretionary",
    "Consumer Staples",
    "Industrials",
    "Energy",
    "Materials",
    "Utilities",
    "Real Estate",
    "Communication Services",
]
NOW = datetime(2025, 3, 14, 14, 30, tzinfo=UTC)  # a Friday, 10:30 in New York
XNYS = {"market": "XNYS", "timezone": "America/New_York", "opens": "09:30", "closes": "16:00"}
XETR = {"market": "XETR", "timezone": "Europe/Berlin", "opens": "09:00", "closes": "17:30"}
CRYPTO = {
    "market": "CRYPTO",
    "timezone": "UTC",
    "opens": "00:00",
    "closes": "00:00",
    "always_open": True,
}


def generate_fund(positions: int, open_orders: int, seed: int = 0) -> dict[str, Any]:
    """Return a fund of `positions` holdings and `open_orders` open orders as plain data."""
    rng = random.Random(seed)
    issuers = [f"Issuer {i:05d}" for i in range(max(1, positions // 5))]
    instruments: dict[str, dict[str, Any]] = {}
    holdings: dict[str, str] = {}
    for index in range(positions):
        symbol = f"S{index:05d}"
        kind = rng.random()
        if kind < 0.01:
            data: dict[str, Any] = {"asset_class": "fx_spot", "currency": "USD", "lot_size": "1000"}
            price = Decimal(rng.randint(50, 200)) / 100
        elif kind < 0.02:
            data = {"asset_class": "crypto", "currency": "USD", "hours": CRYPTO}
            price = Decimal(rng.randint(10, 70_000))
            data["sector"] = "Digital Assets"
        else:
            currency = rng.choice(["USD"] * 8 + ["EUR", "GBP"])
            data = {
                "asset_class": "equity",
                "currency": currency,
                "issuer": rng.choice(issuers),
                "sector": rng.choice(SECTORS),
                "hours": XNYS if currency == "USD" else XETR,
            }
            price = Decimal(rng.randint(100, 100_000)) / 100
        instruments[symbol] = {"symbol": symbol, "reference_price": str(price), **data}
        quantity = rng.randint(-2_000, 20_000)
        holdings[symbol] = str(quantity or 1)
    symbols = list(instruments)
    reservations = []
    for number in range(open_orders):
        symbol = rng.choice(symbols)
        quantity = rng.randint(1, 5_000)
        price = Decimal(instruments[symbol]["reference_price"])
        reservations.append(
            {
                "order_id": f"open-{number:05d}",
                "symbol": symbol,
                "side": rng.choice(["buy", "buy", "sell", "sell_short"]),
                "quantity": str(quantity),
                "exposure": str(quantity * price),
                "created_by": rng.choice(["alice", "bob", "erin"]),
                "created_at": (NOW - timedelta(minutes=rng.randint(1, 600))).isoformat(),
            }
        )
    recent = [
        {
            "order_id": f"recent-{number:04d}",
            "symbol": rng.choice(symbols),
            "side": rng.choice(["buy", "sell"]),
            "quantity": str(rng.randint(1, 5_000)),
            "created_by": rng.choice(["alice", "bob", "erin"]),
            "created_at": (NOW - timedelta(seconds=rng.randint(0, 300))).isoformat(),
        }
        for number in range(300)
    ]
    return {
        "fund": FUND,
        "base_currency": "USD",
        "nav": "20000000000",
        "cash": "3000000000",
        "holdings": holdings,
        "instruments": instruments,
        "fx_to_base": {"EUR": "1.085", "GBP": "1.27"},
        "reservations": reservations,
        "recent_orders": recent,
        "kill_switches": [],
        "taken_at": NOW.isoformat(),
    }


# (type, severity, params as TOML) per rule; cycled to make --rules rules.
RULE_SHAPES: list[tuple[str, str, str]] = [
    ("restricted_list", "fail", 'symbols = ["S00007", "S00042", "S09999"]'),
    ("restricted_list", "fail", 'issuers = ["Issuer 00003", "Issuer 00100"]'),
    ("max_order_quantity", "fail", 'max_quantity = "1000000", asset_classes = ["equity"]'),
    ("max_order_notional", "fail", 'max_notional = "50000000"'),
    ("max_order_notional", "warn", 'max_notional = "20000000"'),
    ("price_collar", "warn", 'max_deviation_pct = "5"'),
    ("price_collar", "fail", 'max_deviation_pct = "20"'),
    ("position_limit", "fail", 'max_long = "1000000", max_short = "250000"'),
    ("issuer_concentration", "warn", 'max_pct = "5"'),
    ("issuer_concentration", "fail", 'max_pct = "10"'),
    ("asset_class_band", "fail", 'asset_class = "equity", max_pct = "150"'),
    ("asset_class_band", "fail", 'asset_class = "crypto", max_pct = "5"'),
    ("sector_band", "warn", 'max_pct = "40"'),
    ("sector_band", "fail", 'sector = "Energy", min_pct = "0", max_pct = "20"'),
    ("cash_available", "fail", 'min_cash_after = "1000000"'),
    ("short_sale", "fail", "require_locate = true"),
    ("duplicate_order", "warn", "window_seconds = 60"),
    ("order_rate", "fail", "max_orders = 30, window_seconds = 60"),
    ("trading_hours", "warn", ""),
]


def generate_rules(count: int) -> str:
    """Return a rules file of `count` rules: every type, for the firm, the fund and accounts."""
    out = []
    for number in range(count):
        rule_type, severity, params = RULE_SHAPES[number % len(RULE_SHAPES)]
        scope = ("firm", "fund", "account")[number % 3]
        where = {"firm": "", "fund": f'fund = "{FUND}"\n', "account": ""}[scope]
        if scope == "account":
            where = f'account = "{MAIN}"\n'
        out.append(
            f'[[rules]]\nid = "r{number:03d}-{rule_type}"\ntype = "{rule_type}"\n'
            f'severity = "{severity}"\nscope = "{scope}"\n{where}params = {{ {params} }}\n'
        )
    return "\n".join(out)


def random_orders(fund: dict[str, Any], count: int, seed: int = 1) -> list[OrderRequest]:
    """Return `count` orders across the fund's instruments, a third allocated to its accounts."""
    rng = random.Random(seed)
    symbols = list(fund["instruments"])
    orders = []
    for number in range(count):
        symbol = rng.choice(symbols)
        reference = Decimal(fund["instruments"][symbol]["reference_price"])
        quantity = rng.randint(1, 20_000)
        fields: dict[str, Any] = {
            "client_order_id": f"bench-{number}",
            "fund": FUND,
            "symbol": symbol,
            "side": rng.choice(["buy", "buy", "sell", "sell_short"]),
            "quantity": quantity,
        }
        if fields["side"] == "sell_short" and rng.random() < 0.5:
            fields["locate_id"] = f"LOC-{number}"
        if rng.random() < 0.5:
            fields["order_type"] = "limit"
            fields["limit_price"] = (reference * Decimal(rng.randint(80, 120)) / 100).quantize(
                Decimal("0.01")
            )
        if rng.random() < 0.33:
            first = rng.randint(1, quantity - 1) if quantity > 1 else 0
            split = [(MAIN, first), (rng.choice(ACCOUNTS[1:]), quantity - first)]
            fields["allocations"] = [{"account": a, "quantity": q} for a, q in split if q]
        orders.append(OrderRequest.model_validate(fields))
    return orders


def main() -> None:
    """Generate the fund, the rules and the orders; measure; print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--positions", type=int, default=10_000)
    parser.add_argument("--open-orders", type=int, default=1_000)
    parser.add_argument("--rules", type=int, default=50)
    parser.add_argument("--orders", type=int, default=5_000)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    fund = generate_fund(args.positions, args.open_orders, args.seed)
    rules_text = generate_rules(args.rules).encode()
    orders = random_orders(fund, args.orders, args.seed + 1)
    matrix = parse_approval_policies((POLICIES / "approvals.toml").read_bytes()).for_fund(FUND)

    parses = []
    for _ in range(20):
        started = time.perf_counter()
        parse_compliance_policy(rules_text)
        parses.append(time.perf_counter() - started)
    policy = parse_compliance_policy(rules_text)
    per_order = [
        len(policy.rules_for(FUND, [a.account for a in o.allocations] or [MAIN])) for o in orders
    ]

    loads, firsts = [], []
    snapshot = None
    for _ in range(args.loads):
        data = generate_fund(args.positions, args.open_orders, args.seed)
        started = time.perf_counter()
        snapshot = PortfolioSnapshot.model_validate(data)
        loads.append(time.perf_counter() - started)
        started = time.perf_counter()
        assess(orders[0], snapshot, policy, matrix, created_by="alice", default_account=MAIN)
        firsts.append(time.perf_counter() - started)
    assert snapshot is not None

    for order in orders[:200]:
        assess(order, snapshot, policy, matrix, created_by="alice", default_account=MAIN)
    assessments = []
    outcomes: dict[ComplianceOutcome, int] = dict.fromkeys(ComplianceOutcome, 0)
    for order in orders:
        started = time.perf_counter()
        result = assess(order, snapshot, policy, matrix, created_by="alice", default_account=MAIN)
        assessments.append(time.perf_counter() - started)
        outcomes[result.outcome] += 1

    report(args, policy, per_order, parses, loads, firsts, assessments, outcomes)


def report(
    args: argparse.Namespace,
    policy: CompliancePolicy,
    per_order: list[int],
    parses: list[float],
    loads: list[float],
    firsts: list[float],
    assessments: list[float],
    outcomes: dict[ComplianceOutcome, int],
) -> None:
    """Print every figure."""

    def row(label: str, values: list[float], unit: float) -> str:
        figures = [percentile(values, p) * unit for p in (50, 99)] + [max(values) * unit]
        return f"  {label:<34}" + "".join(f"{f:>10,.1f}" for f in figures) + f"{len(values):>7}"

    header = f"  {'':<34}" + "".join(f"{h:>10}" for h in ("p50", "p99", "max")) + f"{'n':>7}"
    print(
        f"pre-trade assessment: {args.positions:,} positions, {args.open_orders:,} open orders, "
        f"{len(policy.rules)} rules ({min(per_order)}-{max(per_order)} per order, "
        f"{len(set(r.type for r in policy.rules))} types), {len(assessments):,} orders"
    )
    print(header.replace("  " + " " * 34, f"  {'(ms)':<34}", 1))
    print(row("parse_compliance_policy", parses, 1e3))
    print(row("snapshot load (model_validate)", loads, 1e3))
    print(row("first assess (builds aggregates)", firsts, 1e3))
    print(header.replace("  " + " " * 34, f"  {'(us)':<34}", 1))
    print(row("assess", assessments, 1e6))
    p99 = percentile(assessments, 99) * 1e3
    verdict = "met" if p99 < 1 else "NOT met"
    print(f"  target p99 < 1 ms per assessment: {verdict} ({p99:.3f} ms)")
    counts = ", ".join(f"{outcome.value} {count:,}" for outcome, count in outcomes.items())
    print(f"  outcomes: {counts}", flush=True)


if __name__ == "__main__":
    main()
