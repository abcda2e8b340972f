"""Demo data for `oms dev`: funds, accounts, markets, instruments and start-of-day holdings.

Loaded idempotently, also into a read model made by older code (see `load_demo_data`).
"""

from __future__ import annotations

from datetime import time
from decimal import Decimal

from sqlmodel import Session, SQLModel

from db.tables import AccountRow, FundRow, HoldingSodRow, InstrumentRow, MarketRow

FUNDS = [
    FundRow(
        fund="fund-alpha",
        name="Alpha Global Equity",
        default_account="alpha-main",
        nav=Decimal(500_000_000),
        cash=Decimal(100_000_000),
    ),
    FundRow(
        fund="fund-beta",
        name="Beta Macro",
        default_account="beta-main",
        nav=Decimal(200_000_000),
        cash=Decimal(50_000_000),
    ),
]

ACCOUNTS = [
    AccountRow(account="alpha-main", fund="fund-alpha", name="Alpha main account"),
    AccountRow(account="alpha-growth", fund="fund-alpha", name="Alpha growth sleeve"),
    AccountRow(account="beta-main", fund="fund-beta", name="Beta main account"),
    AccountRow(account="beta-hedge", fund="fund-beta", name="Beta hedge sleeve"),
]

# Regular sessions only: holidays and half days are not kept.
MARKETS = [
    MarketRow(
        market="XNYS",
        timezone="America/New_York",
        opens=time(9, 30),
        closes=time(16, 0),
        weekdays=[0, 1, 2, 3, 4],
    ),
    # Spot FX trades from Sunday 17:00 to Friday 17:00 New York time, which one daily window
    # cannot say. Approximated by whole New York weekdays: closed on Sunday evening (an order is
    # refused that could have traded) and open on Friday evening (an order may rest unfilled
    # until Sunday); neither sends an order to a market that is not there.
    MarketRow(
        market="FX",
        timezone="America/New_York",
        opens=time(0, 0),
        closes=time(23, 59, 59),
        weekdays=[0, 1, 2, 3, 4],
    ),
    MarketRow(
        market="CRYPTO",
        timezone="UTC",
        opens=time(0, 0),
        closes=time(23, 59, 59),
        weekdays=[0, 1, 2, 3, 4, 5, 6],
        always_open=True,
    ),
]

INSTRUMENTS = [
    InstrumentRow(
        symbol="AAPL",
        name="Apple Inc.",
        asset_class="equity",
        currency="USD",
        reference_price=Decimal("230.50"),
        issuer="Apple Inc.",
        sector="Technology",
        market="XNYS",
        tick_size=Decimal("0.01"),
    ),
    InstrumentRow(
        symbol="MSFT",
        name="Microsoft Corp.",
        asset_class="equity",
        currency="USD",
        reference_price=Decimal("415.20"),
        issuer="Microsoft Corp.",
        sector="Technology",
        market="XNYS",
        tick_size=Decimal("0.01"),
    ),
    InstrumentRow(
        symbol="GME",
        name="GameStop Corp.",
        asset_class="equity",
        currency="USD",
        reference_price=Decimal("24.10"),
        issuer="GameStop Corp.",
        sector="Consumer Discretionary",
        market="XNYS",
        tick_size=Decimal("0.01"),
    ),
    # A currency pair and a coin have no issuer: issuer limits do not apply to them.
    InstrumentRow(
        symbol="EURUSD",
        name="Euro / US dollar spot",
        asset_class="fx_spot",
        currency="USD",
        reference_price=Decimal("1.0850"),
        lot_size=Decimal(1000),
        sector="Currencies",
        market="FX",
        tick_size=Decimal("0.00001"),
    ),
    InstrumentRow(
        symbol="BTC-USD",
        name="Bitcoin / US dollar",
        asset_class="crypto",
        currency="USD",
        reference_price=Decimal("64000"),
        lot_size=Decimal("0.0001"),
        sector="Digital Assets",
        market="CRYPTO",
        tick_size=Decimal("0.01"),
    ),
]

# Start-of-day holdings (negative: short). fund-alpha: about 95M of its 500M NAV in equities;
# fund-beta: equities, a euro position, some bitcoin and a short AAPL hedge.
HOLDINGS_SOD = [
    HoldingSodRow(
        account="alpha-main", fund="fund-alpha", symbol="AAPL", quantity=Decimal(200_000)
    ),
    HoldingSodRow(
        account="alpha-main", fund="fund-alpha", symbol="MSFT", quantity=Decimal(100_000)
    ),
    HoldingSodRow(
        account="alpha-growth", fund="fund-alpha", symbol="AAPL", quantity=Decimal(20_000)
    ),
    HoldingSodRow(
        account="alpha-growth", fund="fund-alpha", symbol="GME", quantity=Decimal(50_000)
    ),
    HoldingSodRow(account="beta-main", fund="fund-beta", symbol="MSFT", quantity=Decimal(40_000)),
    HoldingSodRow(
        account="beta-main", fund="fund-beta", symbol="EURUSD", quantity=Decimal(5_000_000)
    ),
    HoldingSodRow(account="beta-main", fund="fund-beta", symbol="BTC-USD", quantity=Decimal(50)),
    HoldingSodRow(account="beta-hedge", fund="fund-beta", symbol="AAPL", quantity=Decimal(-10_000)),
]

# Columns the demo data gained after read models were first filled with it: set where a stored
# row has none, and kept where it has one (a NAV, cash or sector set since survives a restart).
# The other columns are refreshed from the demo data, as they always were.
_FILLED_WHEN_EMPTY: dict[type[SQLModel], frozenset[str]] = {
    FundRow: frozenset({"nav", "cash"}),
    InstrumentRow: frozenset({"issuer", "sector", "market"}),
    # Holdings are the fund's book, not reference data: a stored quantity is never replaced.
    HoldingSodRow: frozenset({"quantity"}),
}


def _load(session: Session, row: SQLModel) -> None:
    table = type(row)
    key = tuple(getattr(row, column.name) for column in table.__table__.primary_key)  # type: ignore[attr-defined]
    stored = session.get(table, key)
    if stored is None:
        # A new instance: a copy would share the module-level row's ORM state, which remembers
        # being stored (in whatever database was loaded first in this process).
        session.add(table(**row.model_dump()))
        return
    fill_only = _FILLED_WHEN_EMPTY.get(table, frozenset())
    for name, value in row.model_dump().items():
        current = getattr(stored, name)
        if name not in fill_only or current is None or current == "":
            setattr(stored, name, value)
    session.add(stored)


def load_demo_data(session: Session) -> None:
    """Insert the demo data that is missing and refresh what is there; safe to run any number of times.

    A read model made before a column existed gets the demo's value for it where it is empty;
    values set since (a fund's NAV, a holding's quantity) are kept.
    """
    for row in [*FUNDS, *ACCOUNTS, *MARKETS, *INSTRUMENTS, *HOLDINGS_SOD]:
        _load(session, row)
    session.commit()
