"""Activities that capture what compliance and approvals look at, so the workflow can decide purely."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

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


def _read_toml(path: Path) -> dict[str, Any]:
    with path.open("rb") as handle:
        return tomllib.load(handle)


def _optional_decimal(value: object) -> Decimal | None:
    return None if value is None else Decimal(str(value))


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
    rules = _read_toml(policies_dir / "compliance.toml")
    fund_rules = rules.get("funds", {}).get(order.fund, {})
    return ComplianceSnapshot(
        fund=order.fund,
        instrument=instrument,
        restricted_symbols=list(rules.get("firm", {}).get("restricted_symbols", [])),
        max_order_notional=_optional_decimal(fund_rules.get("max_order_notional")),
        warn_order_notional=_optional_decimal(fund_rules.get("warn_order_notional")),
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
