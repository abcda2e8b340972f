"""ComplianceActivities: reference data from the read model, rules from the real policy files."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.compliance import (
    ApprovalMatrixInput,
    ComplianceActivities,
    ComplianceSnapshotInput,
)
from db.engine import SessionFactory
from domain.approvals import ApprovalLevel
from domain.models import AssetClass, ComplianceSnapshot, OrderRequest, Side

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def order(symbol: str = "AAPL", fund: str = "fund-alpha") -> OrderRequest:
    return OrderRequest(
        client_order_id="c-1", fund=fund, symbol=symbol, side=Side.BUY, quantity=Decimal(100)
    )


def snapshot(activities: ComplianceActivities, request: OrderRequest) -> ComplianceSnapshot:
    return ActivityEnvironment().run(
        activities.compliance_snapshot, ComplianceSnapshotInput(order=request)
    )


async def test_snapshot_captures_instrument_restricted_list_and_fund_limits(
    sessions: SessionFactory,
) -> None:
    activities = ComplianceActivities(sessions, policies_dir=POLICIES)
    before = datetime.now(UTC)

    first = snapshot(activities, order())
    second = snapshot(activities, order())

    assert first.fund == "fund-alpha"
    assert first.instrument.symbol == "AAPL"
    assert first.instrument.reference_price == Decimal("230.5")
    assert first.instrument.asset_class is AssetClass.EQUITY
    assert (first.instrument.currency, first.instrument.lot_size) == ("USD", Decimal(1))
    assert "GME" in first.restricted_symbols
    assert first.max_order_notional == Decimal(50000000)
    assert first.warn_order_notional == Decimal(20000000)
    assert first.taken_at.utcoffset() == timedelta(0)
    assert before <= first.taken_at <= second.taken_at
    # Reading twice changes nothing but the time it was taken.
    assert first.model_copy(update={"taken_at": second.taken_at}) == second


@pytest.mark.parametrize(
    ("symbol", "fund", "price", "lot", "limits"),
    [
        ("MSFT", "fund-beta", "415.2", "1", (Decimal(25000000), Decimal(10000000))),
        ("EURUSD", "fund-alpha", "1.085", "1000", (Decimal(50000000), Decimal(20000000))),
        ("BTC-USD", "fund-beta", "64000", "0.0001", (Decimal(25000000), Decimal(10000000))),
        ("GME", "fund-gamma", "24.1", "1", (None, None)),  # a fund without limits has none
    ],
)
async def test_snapshot_of_other_instruments_and_funds(
    sessions: SessionFactory,
    symbol: str,
    fund: str,
    price: str,
    lot: str,
    limits: tuple[Decimal | None, Decimal | None],
) -> None:
    taken = snapshot(ComplianceActivities(sessions, POLICIES), order(symbol, fund))

    assert (taken.instrument.symbol, taken.fund) == (symbol, fund)
    assert taken.instrument.reference_price == Decimal(price)
    assert taken.instrument.lot_size == Decimal(lot)
    assert (taken.max_order_notional, taken.warn_order_notional) == limits


async def test_snapshot_of_an_unknown_symbol_is_refused_for_good(sessions: SessionFactory) -> None:
    activities = ComplianceActivities(sessions, POLICIES)

    with pytest.raises(ApplicationError) as refusal:
        snapshot(activities, order("NOPE"))

    assert refusal.value.type == "InvalidInput"
    assert refusal.value.non_retryable is True
    assert "NOPE" in refusal.value.message


async def test_snapshot_reads_the_rule_file_afresh_each_time(
    sessions: SessionFactory, tmp_path: Path
) -> None:
    shutil.copytree(POLICIES, tmp_path, dirs_exist_ok=True)
    activities = ComplianceActivities(sessions, tmp_path)
    assert snapshot(activities, order()).restricted_symbols == ["GME"]

    rules = tmp_path / "compliance.toml"
    rules.write_text(
        rules.read_text().replace('restricted_symbols = ["GME"]', 'restricted_symbols = ["AAPL"]')
    )

    assert snapshot(activities, order()).restricted_symbols == ["AAPL"]


async def test_approval_matrix_lists_the_levels_in_approval_order(
    sessions: SessionFactory,
) -> None:
    activities = ComplianceActivities(sessions, POLICIES)
    env = ActivityEnvironment()

    matrix = env.run(activities.approval_matrix, ApprovalMatrixInput(fund="fund-alpha"))

    assert matrix.levels == [
        ApprovalLevel(level="desk_head", min_notional=Decimal(0), on_warning=False),
        ApprovalLevel(level="cio", min_notional=Decimal(10000000), on_warning=True),
    ]
    assert env.run(activities.approval_matrix, ApprovalMatrixInput(fund="fund-alpha")) == matrix
