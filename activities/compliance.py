"""Activities that capture what compliance and approvals look at, so the workflow can decide purely."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import NamedTuple

from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError

from db import queries
from db.engine import SessionFactory
from domain.approvals import (
    ApprovalMatrix,
    ApprovalPolicies,
    FundApprovalPolicy,
    parse_approval_policies,
)
from domain.compliance import fx_pair_symbols, fx_rate
from domain.compliance_policy import (
    MaxOrderNotionalParams,
    RestrictedListParams,
    Severity,
    parse_compliance_policy,
)
from domain.errors import RefusalType
from domain.models import ComplianceSnapshot, Instrument, OrderRequest


class ComplianceSnapshotInput(BaseModel):
    order: OrderRequest


class ApprovalMatrixInput(BaseModel):
    fund: str


class PreTradeDataInput(BaseModel):
    order: OrderRequest


class PreTradeData(BaseModel):
    """Everything pre-trade compliance and the approval matrix look at, captured at once.

    Attributes:
        snapshot: what the rules look at, with the valuation in the fund's currency
            (`fund_currency`, `fx_rate`) that `domain.compliance.approval_notional` uses.
        matrix: the fund's policy in the first matrix's shape (`FundApprovalPolicy.as_matrix`),
            for `required_levels`.
        approval_policy: the fund's policy, with the version of the file, for
            `required_approvals`. Optional: data recorded before it existed must still decode.
    """

    snapshot: ComplianceSnapshot
    matrix: ApprovalMatrix
    approval_policy: FundApprovalPolicy | None = None


class _LegacyLimits(NamedTuple):
    restricted_symbols: list[str]
    max_order_notional: Decimal | None
    warn_order_notional: Decimal | None


def _legacy_limits(
    policies_dir: Path, order: OrderRequest, instrument: Instrument
) -> _LegacyLimits:
    """Derive the first snapshot's restricted list and notional limits from today's rules.

    Orders still on the first workflow judge with `domain.compliance.evaluate`, which knows one
    restricted list and two notional limits. They are read from `compliance.toml` as the
    assessment would apply them to `order`: the symbols of every hard (`fail`) restricted list
    of the firm and of the fund, and the lowest of the `max_order_notional` rules that apply to
    the instrument, hard and soft. Restricted issuers, and every other rule type, have no place
    in the first snapshot and are left out.

    Raises:
        CompliancePolicyError: the file breaks one of its rules. It is left retryable on
            purpose, as the approval matrix's is: the order waits until the file is fixed.
    """
    path = policies_dir / "compliance.toml"
    policy = parse_compliance_policy(path.read_bytes(), source=str(path))
    restricted: list[str] = []
    hard: list[Decimal] = []
    soft: list[Decimal] = []
    for rule in policy.rules_for(order.fund):
        params = rule.typed_params
        if isinstance(params, RestrictedListParams) and rule.severity is Severity.FAIL:
            restricted += [s for s in params.symbols if s not in restricted]
        elif isinstance(params, MaxOrderNotionalParams) and params.applies_to(
            order.symbol, instrument.asset_class
        ):
            (hard if rule.severity is Severity.FAIL else soft).append(params.max_notional)
    return _LegacyLimits(
        restricted_symbols=restricted,
        max_order_notional=min(hard, default=None),
        warn_order_notional=min(soft, default=None),
    )


def take_snapshot(
    sessions: SessionFactory, policies_dir: Path, order: OrderRequest
) -> ComplianceSnapshot | None:
    """Return what the rules look at for `order` as of now, or None for an unknown instrument.

    The snapshot also values the order for the approval matrix: the fund's base currency and the
    rate from the instrument's currency into it. Either is None when it cannot be found (an
    unknown fund, no FX instrument for the pair); `ComplianceActivities.compliance_snapshot`
    refuses such a snapshot.
    """
    with sessions() as session:
        instrument = queries.get_instrument(session, order.symbol)
        if instrument is None:
            return None
        fund = queries.get_fund(session, order.fund)
        fund_currency = None if fund is None else fund.base_currency
        rate = None
        if fund_currency is not None:
            pairs: dict[str, Instrument] = {}
            for symbol in fx_pair_symbols(instrument.currency, fund_currency):
                pair = queries.get_instrument(session, symbol)
                if pair is not None:
                    pairs[symbol] = pair
            rate = fx_rate(instrument.currency, fund_currency, pairs)
    limits = _legacy_limits(policies_dir, order, instrument)
    return ComplianceSnapshot(
        fund=order.fund,
        instrument=instrument,
        restricted_symbols=limits.restricted_symbols,
        max_order_notional=limits.max_order_notional,
        warn_order_notional=limits.warn_order_notional,
        taken_at=datetime.now(UTC),
        fund_currency=fund_currency,
        fx_rate=None if rate is None else rate.rate,
        fx_symbol=None if rate is None else rate.symbol,
    )


def load_approval_policies(policies_dir: Path) -> ApprovalPolicies:
    """Return every fund's approval matrix as `policies/approvals.toml` defines it now.

    Raises:
        ApprovalPolicyError: the file breaks one of its rules (the message names the place).
            It is left retryable on purpose: the order waits until the file is fixed, rather
            than failing for a mistake that is not its own.
    """
    path = policies_dir / "approvals.toml"
    return parse_approval_policies(path.read_bytes(), source=str(path))


def load_approval_matrix(policies_dir: Path) -> ApprovalMatrix:
    """Return the firm default's approval levels in the first matrix's shape.

    For code written before the matrix was per fund; see `FundApprovalPolicy.as_matrix`.
    """
    return load_approval_policies(policies_dir).firm_default.as_matrix()


def _refuse(message: str) -> ApplicationError:
    return ApplicationError(message, type=RefusalType.INVALID_INPUT, non_retryable=True)


class ComplianceActivities:
    """Read reference data and the rule files in `policies/` (re-read each time: edits apply at once)."""

    def __init__(self, sessions: SessionFactory, policies_dir: Path) -> None:
        self._sessions = sessions
        self._policies_dir = policies_dir

    @activity.defn
    def compliance_snapshot(self, input: ComplianceSnapshotInput) -> ComplianceSnapshot:
        """Return the instrument, restricted list, fund limits and valuation, as of now.

        Raises:
            ApplicationError: non-retryable, of type InvalidInput, for an unknown instrument or
                fund, or when no FX instrument converts the instrument's currency into the
                fund's: the order cannot be judged.
        """
        order = input.order
        snapshot = take_snapshot(self._sessions, self._policies_dir, order)
        if snapshot is None:
            raise _refuse(f"unknown symbol {order.symbol}")
        if snapshot.fund_currency is None:
            raise _refuse(f"unknown fund {order.fund}")
        if snapshot.fx_rate is None:
            currency = snapshot.instrument.currency
            direct, inverse = fx_pair_symbols(currency, snapshot.fund_currency)
            raise _refuse(
                f"no FX rate to value {order.symbol} ({currency}) in {order.fund}'s base "
                f"currency {snapshot.fund_currency}: no FX instrument {direct} or {inverse}"
            )
        return snapshot

    @activity.defn
    def pre_trade_data(self, input: PreTradeDataInput) -> PreTradeData:
        """Return the compliance snapshot and the fund's approval policy for `input.order`, now.

        Raises:
            ApplicationError: non-retryable, of type InvalidInput, as `compliance_snapshot`
                does, and when the fund's policy is written in a currency other than the
                fund's base currency (its bounds would be misread).
        """
        snapshot = self.compliance_snapshot(ComplianceSnapshotInput(order=input.order))
        policy = load_approval_policies(self._policies_dir).for_fund(input.order.fund)
        if policy.currency is not None and policy.currency != snapshot.fund_currency:
            raise _refuse(
                f"the approval matrix [{policy.section}] is in {policy.currency} but "
                f"{input.order.fund}'s base currency is {snapshot.fund_currency}"
            )
        return PreTradeData(snapshot=snapshot, matrix=policy.as_matrix(), approval_policy=policy)

    @activity.defn
    def approval_matrix(self, input: ApprovalMatrixInput) -> ApprovalMatrix:
        """Return `input.fund`'s approval levels in the first matrix's shape (for the v1 order)."""
        return load_approval_policies(self._policies_dir).for_fund(input.fund).as_matrix()
