"""ComplianceActivities: reference data from the read model, rules from the real policy files."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlmodel import SQLModel
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.compliance import (
    ApprovalMatrixInput,
    ComplianceActivities,
    ComplianceSnapshotInput,
    PreTradeData,
    PreTradeDataInput,
    load_approval_matrix,
    load_approval_policies,
)
from db.engine import SessionFactory
from db.tables import FundRow, InstrumentRow
from domain.approvals import ApprovalLevel, ApprovalMatrix, ApprovalPolicyError, required_approvals
from domain.compliance import approval_notional, evaluate
from domain.models import AssetClass, ComplianceSnapshot, OrderRequest, Side

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def order(
    symbol: str = "AAPL", fund: str = "fund-alpha", quantity: Decimal = Decimal(100)
) -> OrderRequest:
    return OrderRequest(
        client_order_id="c-1", fund=fund, symbol=symbol, side=Side.BUY, quantity=quantity
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
    # Every demo fund and instrument is in USD: nothing to convert.
    assert (taken.fund_currency, taken.fx_rate, taken.fx_symbol) == ("USD", Decimal(1), None)


async def test_snapshot_of_a_fund_without_limits_has_none(
    sessions: SessionFactory, tmp_path: Path
) -> None:
    shutil.copytree(POLICIES, tmp_path, dirs_exist_ok=True)
    (tmp_path / "compliance.toml").write_text(
        '[[rules]]\nid = "firm-restricted-list"\ntype = "restricted_list"\nseverity = "fail"\n'
        'scope = "firm"\nparams = { symbols = ["GME"] }\n'
    )

    taken = snapshot(ComplianceActivities(sessions, tmp_path), order("GME", "fund-beta"))

    assert (taken.max_order_notional, taken.warn_order_notional) == (None, None)


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
        rules.read_text().replace(
            'params = { symbols = ["GME"] }', 'params = { symbols = ["AAPL"] }'
        )
    )

    assert snapshot(activities, order()).restricted_symbols == ["AAPL"]


async def test_snapshot_of_an_unknown_fund_is_refused_for_good(sessions: SessionFactory) -> None:
    # Without the fund's base currency the order cannot be valued for its approvals.
    with pytest.raises(ApplicationError) as refusal:
        snapshot(ComplianceActivities(sessions, POLICIES), order(fund="fund-nowhere"))

    assert (refusal.value.type, refusal.value.non_retryable) == ("InvalidInput", True)
    assert refusal.value.message == "unknown fund fund-nowhere"


TODAYS_MATRIX = ApprovalMatrix(
    levels=[
        ApprovalLevel(level="desk_head", min_notional=Decimal(0), on_warning=False),
        ApprovalLevel(level="cio", min_notional=Decimal(10000000), on_warning=True),
    ]
)
BETA_MATRIX = ApprovalMatrix(
    levels=[
        ApprovalLevel(level="desk_head", min_notional=Decimal(250000), on_warning=True),
        ApprovalLevel(level="cio", min_notional=Decimal(5000000), on_warning=True),
    ]
)


@pytest.mark.parametrize(
    ("fund", "matrix"),
    [
        ("fund-alpha", TODAYS_MATRIX),
        ("fund-beta", BETA_MATRIX),
        ("fund-nowhere", TODAYS_MATRIX),  # a fund without a section: the firm default
    ],
)
async def test_approval_matrix_is_the_funds_in_approval_order(
    sessions: SessionFactory, fund: str, matrix: ApprovalMatrix
) -> None:
    activities = ComplianceActivities(sessions, POLICIES)
    env = ActivityEnvironment()

    assert env.run(activities.approval_matrix, ApprovalMatrixInput(fund=fund)) == matrix
    assert env.run(activities.approval_matrix, ApprovalMatrixInput(fund=fund)) == matrix
    assert load_approval_matrix(POLICIES) == TODAYS_MATRIX


def pre_trade(activities: ComplianceActivities, request: OrderRequest) -> PreTradeData:
    return ActivityEnvironment().run(activities.pre_trade_data, PreTradeDataInput(order=request))


@pytest.mark.parametrize(
    ("fund", "quantity", "section", "matrix", "levels", "escalate", "expire"),
    [
        # 100 AAPL at 230.50: 23,050 USD
        ("fund-alpha", "100", "funds.fund-alpha", TODAYS_MATRIX, ["desk_head"], 4, 24),
        ("fund-beta", "100", "funds.fund-beta", BETA_MATRIX, [], 2, 8),
        # 1,085 AAPL: 250,092.50 USD, over fund-beta's desk_head bound
        ("fund-beta", "1085", "funds.fund-beta", BETA_MATRIX, ["desk_head"], 2, 8),
    ],
)
async def test_pre_trade_data_carries_the_funds_policy_and_valuation(
    sessions: SessionFactory,
    fund: str,
    quantity: str,
    section: str,
    matrix: ApprovalMatrix,
    levels: list[str],
    escalate: int,
    expire: int,
) -> None:
    activities = ComplianceActivities(sessions, POLICIES)
    request = order(fund=fund, quantity=Decimal(quantity))

    first = pre_trade(activities, request)
    second = pre_trade(activities, request)

    policy = first.approval_policy
    assert policy is not None
    assert (policy.fund, policy.section) == (fund, section)
    assert policy.version == hashlib.sha256((POLICIES / "approvals.toml").read_bytes()).hexdigest()
    assert (policy.escalate_after, policy.expire_after) == (
        timedelta(hours=escalate),
        timedelta(hours=expire),
    )
    assert first.matrix == matrix
    assert (first.snapshot.fund_currency, first.snapshot.fx_rate) == ("USD", Decimal(1))
    notional = approval_notional(request, first.snapshot)
    assert notional == Decimal(quantity) * Decimal("230.5")
    decided = required_approvals(
        policy, notional, first.snapshot.instrument.asset_class, evaluate(request, first.snapshot)
    )
    assert (decided.levels, decided.straight_through) == (levels, not levels)
    # Reading twice changes nothing but the time the snapshot was taken.
    taken_at = second.snapshot.taken_at
    assert (
        first.model_copy(
            update={"snapshot": first.snapshot.model_copy(update={"taken_at": taken_at})}
        )
        == second
    )


async def test_pre_trade_data_recorded_before_the_policy_still_decodes(
    sessions: SessionFactory,
) -> None:
    data = pre_trade(ComplianceActivities(sessions, POLICIES), order())
    recorded = data.model_dump(mode="json", exclude={"approval_policy"})
    for field in ("fund_currency", "fx_rate", "fx_symbol"):
        del recorded["snapshot"][field]
    payload = pydantic_data_converter.payload_converter.to_payloads([recorded])
    [decoded] = pydantic_data_converter.payload_converter.from_payloads(payload, [PreTradeData])

    assert decoded.approval_policy is None
    assert decoded.snapshot.fx_rate is None
    assert decoded.matrix == data.matrix
    # And the new shape survives the converter whole.
    payload = pydantic_data_converter.payload_converter.to_payloads([data])
    assert pydantic_data_converter.payload_converter.from_payloads(payload, [PreTradeData]) == [
        data
    ]


async def test_the_approval_policy_file_is_read_afresh_each_time(
    sessions: SessionFactory, tmp_path: Path
) -> None:
    shutil.copytree(POLICIES, tmp_path, dirs_exist_ok=True)
    activities = ComplianceActivities(sessions, tmp_path)
    before = pre_trade(activities, order(fund="fund-beta")).approval_policy
    assert before is not None

    matrix = tmp_path / "approvals.toml"
    matrix.write_text(
        matrix.read_text()
        .replace('max_notional = "250000"', 'max_notional = "20000"')
        .replace('min_notional = "250000"', 'min_notional = "20000"')
    )

    after = pre_trade(activities, order(fund="fund-beta")).approval_policy
    assert after is not None
    assert after.version != before.version
    assert after.version == load_approval_policies(tmp_path).version
    assert after.rules[0].max_notional == Decimal(20000)


async def test_a_broken_policy_file_is_left_to_retry(
    sessions: SessionFactory, tmp_path: Path
) -> None:
    # A mistake in the file is not the order's: the order waits for the fix.
    shutil.copytree(POLICIES, tmp_path, dirs_exist_ok=True)
    matrix = tmp_path / "approvals.toml"
    matrix.write_text(matrix.read_text().replace('expire_after = "PT8H"', 'expire_after = "PT0S"'))

    with pytest.raises(
        ApprovalPolicyError, match=r"approvals\.toml: \[funds\.fund-beta\] expire_after"
    ):
        pre_trade(ComplianceActivities(sessions, tmp_path), order())


# ---- valuation in the fund's currency --------------------------------------------------------

FX_FUND = FundRow(
    fund="test-fund-eur", name="Euro fund", base_currency="EUR", default_account="test-eur-main"
)
FX_INSTRUMENTS = [
    InstrumentRow(
        symbol="TEST-SAP",
        name="SAP",
        asset_class="equity",
        currency="EUR",
        reference_price=Decimal("200"),
    ),
    InstrumentRow(
        symbol="TEST-VOD",
        name="Vodafone",
        asset_class="equity",
        currency="GBP",
        reference_price=Decimal("0.7"),
    ),
]


@pytest.fixture
def fx_reference_data(sessions: SessionFactory) -> Iterator[None]:
    """A fund in EUR and instruments in EUR and GBP, next to the demo data's EURUSD at 1.085.

    The database is shared by the session's tests, so the rows go again afterwards.
    """
    with sessions() as session:
        for row in [FX_FUND, *FX_INSTRUMENTS]:
            session.merge(row.model_copy())
        session.commit()
    yield
    with sessions() as session:
        stale: list[SQLModel | None] = [session.get(FundRow, FX_FUND.fund)]
        stale += [session.get(InstrumentRow, row.symbol) for row in FX_INSTRUMENTS]
        for stored in stale:
            if stored is not None:
                session.delete(stored)
        session.commit()


@pytest.mark.usefixtures("fx_reference_data")
@pytest.mark.parametrize(
    ("symbol", "fund", "quantity", "fund_currency", "rate", "fx_symbol", "notional"),
    [
        # 1,250 SAP at 200 EUR = 250,000 EUR, at EURUSD 1.085 = 271,250 USD
        ("TEST-SAP", "fund-alpha", "1250", "USD", "1.085", "EURUSD", "271250"),
        # 1,085 AAPL at 230.50 USD = 250,092.50 USD, at 1 / EURUSD = 230,500 EUR
        (
            "AAPL",
            "test-fund-eur",
            "1085",
            "EUR",
            "0.9216589861751152073732718894",
            "EURUSD",
            "230500",
        ),
        # nothing to convert
        ("TEST-SAP", "test-fund-eur", "1250", "EUR", "1", None, "250000"),
    ],
)
async def test_snapshot_values_the_order_in_the_funds_currency(
    sessions: SessionFactory,
    symbol: str,
    fund: str,
    quantity: str,
    fund_currency: str,
    rate: str,
    fx_symbol: str | None,
    notional: str,
) -> None:
    request = order(symbol, fund, Decimal(quantity))

    taken = snapshot(ComplianceActivities(sessions, POLICIES), request)

    assert (taken.fund_currency, taken.fx_rate, taken.fx_symbol) == (
        fund_currency,
        Decimal(rate),
        fx_symbol,
    )
    assert approval_notional(request, taken) == Decimal(notional)


@pytest.mark.usefixtures("fx_reference_data")
async def test_snapshot_without_an_fx_rate_is_refused_for_good(sessions: SessionFactory) -> None:
    activities = ComplianceActivities(sessions, POLICIES)

    for call in (
        lambda: snapshot(activities, order("TEST-VOD")),
        lambda: pre_trade(activities, order("TEST-VOD")),
    ):
        with pytest.raises(ApplicationError) as refusal:
            call()
        assert (refusal.value.type, refusal.value.non_retryable) == ("InvalidInput", True)
        assert refusal.value.message == (
            "no FX rate to value TEST-VOD (GBP) in fund-alpha's base currency USD: "
            "no FX instrument GBPUSD or USDGBP"
        )


async def test_a_policy_in_another_currency_than_the_funds_is_refused_for_good(
    sessions: SessionFactory, tmp_path: Path
) -> None:
    shutil.copytree(POLICIES, tmp_path, dirs_exist_ok=True)
    matrix = tmp_path / "approvals.toml"
    alpha = '[funds.fund-alpha]\ncurrency = "USD"'
    matrix.write_text(matrix.read_text().replace(alpha, alpha.replace("USD", "EUR")))
    activities = ComplianceActivities(sessions, tmp_path)

    with pytest.raises(ApplicationError) as refusal:
        pre_trade(activities, order())

    assert (refusal.value.type, refusal.value.non_retryable) == ("InvalidInput", True)
    assert refusal.value.message == (
        "the approval matrix [funds.fund-alpha] is in EUR but fund-alpha's base currency is USD"
    )
    # Its bounds would be misread; the other funds' are not.
    assert pre_trade(activities, order(fund="fund-beta")).approval_policy is not None
