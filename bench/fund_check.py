"""How long one order's pre-trade check takes on a big fund, read from the read model.

`bench.compliance` times the rules on a snapshot in memory; this times what an order waits for
and what holds the fund's lock: `AssessmentActivities.judge`, the local activity an order runs
at creation and again at release. It reads the fund's holdings, every instrument's reference
data and price, the open orders' reservations and the recent orders, judges the order on the
policy files' rules and writes its reservation, in one transaction under the fund's lock.

It seeds a read model (SQLite in a temporary directory, or a database of its own on a
PostgreSQL server with --postgres) with the demo data and a fund `fund-big` of --positions
equities held at start of day (one account) and --open-orders open orders' reservations, then
judges --checks orders (buys of 10, each a new order) after 3 uncounted, with the garbage
collector settled as a started worker has it, and prints the p50, p95 and max. Then it does the same on a fund of --small positions, for scale.

Run: `python -m bench.fund_check [--positions N] [--open-orders N] [--checks N] [--postgres URL]`.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from activities.assessment import AssessmentActivities, AssessOrderInput
from activities.portfolio import PortfolioActivities, ReadModelPrices
from bench.lifecycle import read_model_url
from bench.measure import percentile
from config import Settings
from db.demo import load_demo_data
from db.engine import SessionFactory, create_schema, make_engine, session_factory
from db.tables import (
    AccountRow,
    ComplianceReservationRow,
    FundRow,
    HoldingSodRow,
    InstrumentRow,
)
from domain.models import AllocationRequest, OrderRequest
from worker import settle_garbage_collector

SECTORS = ["Technology", "Health Care", "Financials", "Energy", "Industrials", "Utilities"]


def seed_fund(sessions: SessionFactory, fund: str, positions: int, open_orders: int) -> None:
    """Add a fund of `positions` equities held at start of day and `open_orders` reservations."""
    rng = random.Random(positions)
    account = f"{fund}-main"
    with sessions() as session:
        session.add(
            FundRow(
                fund=fund,
                name=fund,
                default_account=account,
                nav=Decimal("20000000000"),
                cash=Decimal("3000000000"),
            )
        )
        session.commit()
        session.add(AccountRow(account=account, fund=fund, name=account))
        for index in range(positions):
            symbol = f"{fund.upper()}-{index:05d}"
            session.add(
                InstrumentRow(
                    symbol=symbol,
                    name=symbol,
                    asset_class="equity",
                    currency="USD",
                    reference_price=Decimal(rng.randint(100, 100_000)) / 100,
                    issuer=f"Issuer {index // 5:05d}",
                    sector=rng.choice(SECTORS),
                    market="XNYS",
                )
            )
            session.add(
                HoldingSodRow(
                    account=account,
                    symbol=symbol,
                    fund=fund,
                    quantity=Decimal(rng.randint(1, 20_000)),
                )
            )
        created = datetime.now(UTC) - timedelta(hours=1)
        for number in range(open_orders):
            session.add(
                ComplianceReservationRow(
                    order_id=f"{fund}-open-{number:05d}",
                    fund=fund,
                    symbol=f"{fund.upper()}-{rng.randrange(positions):05d}",
                    side="buy",
                    quantity=Decimal(10),
                    exposure=Decimal(1_000),
                    created_by="alice",
                    created_at=created,
                )
            )
        session.commit()


def time_checks(
    assessment: AssessmentActivities, fund: str, checks: int, warm_up: int = 3
) -> list[float]:
    """Judge `warm_up` + `checks` new orders of `fund`; return the counted ones' seconds."""
    seconds = []
    for number in range(warm_up + checks):
        order = OrderRequest(
            client_order_id=f"check-{number}",
            fund=fund,
            symbol=f"{fund.upper()}-00001",
            side="buy",
            quantity=Decimal(10),
            order_type="market",
            time_in_force="gtc",
            allocations=[AllocationRequest(account=f"{fund}-main", quantity=Decimal(10))],
        )
        started = time.perf_counter()
        assessment.judge(
            AssessOrderInput(order_id=f"ord-{fund}-{number}", order=order, created_by="alice")
        )
        if number >= warm_up:
            seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    """Seed the funds, time the checks, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--positions", type=int, default=10_000)
    parser.add_argument("--open-orders", type=int, default=1_000)
    parser.add_argument("--small", type=int, default=100, help="positions of the fund for scale")
    parser.add_argument("--checks", type=int, default=20)
    parser.add_argument("--postgres", default="", metavar="URL")
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="oms-fund-check-") as tmp,
        read_model_url(args.postgres) as server_url,
    ):
        url = server_url or f"sqlite:///{Path(tmp) / 'oms.db'}"
        engine = make_engine(url)
        create_schema(engine)
        sessions = session_factory(engine)
        with sessions() as session:
            load_demo_data(session)
        funds = [("fund-big", args.positions, args.open_orders), ("fund-small", args.small, 10)]
        for fund, positions, open_orders in funds:
            seed_fund(sessions, fund, positions, open_orders)
        portfolio = PortfolioActivities(sessions, ReadModelPrices(sessions))
        assessment = AssessmentActivities(portfolio, Settings().policies_dir)
        settle_garbage_collector()  # as a started worker has
        backend = "PostgreSQL" if args.postgres else "SQLite"
        print(
            f"one order's pre-trade check (judge: read, assess, reserve), read model on {backend}"
        )
        print(f"  {'fund':<44}{'p50':>8}{'p95':>8}{'max':>8}  ms")
        for fund, positions, open_orders in funds:
            seconds = time_checks(assessment, fund, args.checks)
            label = f"{positions:,} positions, {open_orders:,} open orders"
            print(
                f"  {label:<44}"
                + "".join(f"{percentile(seconds, p) * 1000:>8.1f}" for p in (50, 95, 100))
            )
        engine.dispose()


if __name__ == "__main__":
    main()
