"""Demo reference data for `oms dev`: funds, accounts and instruments, loaded idempotently."""

from __future__ import annotations

from decimal import Decimal

from sqlmodel import Session

from db.tables import AccountRow, FundRow, InstrumentRow

FUNDS = [
    FundRow(fund="fund-alpha", name="Alpha Global Equity", default_account="alpha-main"),
    FundRow(fund="fund-beta", name="Beta Macro", default_account="beta-main"),
]

ACCOUNTS = [
    AccountRow(account="alpha-main", fund="fund-alpha", name="Alpha main account"),
    AccountRow(account="alpha-growth", fund="fund-alpha", name="Alpha growth sleeve"),
    AccountRow(account="beta-main", fund="fund-beta", name="Beta main account"),
    AccountRow(account="beta-hedge", fund="fund-beta", name="Beta hedge sleeve"),
]

INSTRUMENTS = [
    InstrumentRow(
        symbol="AAPL",
        name="Apple Inc.",
        asset_class="equity",
        currency="USD",
        reference_price=Decimal("230.50"),
    ),
    InstrumentRow(
        symbol="MSFT",
        name="Microsoft Corp.",
        asset_class="equity",
        currency="USD",
        reference_price=Decimal("415.20"),
    ),
    InstrumentRow(
        symbol="GME",
        name="GameStop Corp.",
        asset_class="equity",
        currency="USD",
        reference_price=Decimal("24.10"),
    ),
    InstrumentRow(
        symbol="EURUSD",
        name="Euro / US dollar spot",
        asset_class="fx_spot",
        currency="USD",
        reference_price=Decimal("1.0850"),
        lot_size=Decimal(1000),
    ),
    InstrumentRow(
        symbol="BTC-USD",
        name="Bitcoin / US dollar",
        asset_class="crypto",
        currency="USD",
        reference_price=Decimal("64000"),
        lot_size=Decimal("0.0001"),
    ),
]


def load_demo_data(session: Session) -> None:
    """Insert or refresh the demo funds, accounts and instruments; safe to run any number of times."""
    for row in [*FUNDS, *ACCOUNTS, *INSTRUMENTS]:
        session.merge(row.model_copy())
    session.commit()
