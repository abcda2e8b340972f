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
from domain.approvals import ApprovalLevel, ApprovalMatrix
from domain.errors import RefusalType
from domain.models import ComplianceSnapshot, OrderRequest


class ComplianceSnapshotInput(BaseModel):
    order: OrderRequest


class ApprovalMatrixInput(BaseModel):
    fund: str


class PreTradeDataInput(BaseModel):
    order: OrderRequest


class PreTradeData(BaseModel):
    """Everything pre-trade compliance and the approval matrix look at, captured at once."""

    snapshot: ComplianceSnapshot
    matrix: ApprovalMatrix


def _read_toml(path: Path) -> dict[str, Any]:
    with path.open("rb") as handle:
        return tomllib.load(handle)


def _optional_decimal(value: object) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def take_snapshot(
    sessions: SessionFactory, policies_dir: Path, order: OrderRequest
) -> ComplianceSnapshot | None:
    """Return what the rules look at for `order` as of now, or None for an unknown instrument."""
    with sessions() as session:
        instrument = queries.get_instrument(session, order.symbol)
    if instrument is None:
        return None
    rules = _read_toml(policies_dir / "compliance.toml")
    fund_rules = rules.get("funds", {}).get(order.fund, {})
    return ComplianceSnapshot(
        fund=order.fund,
        instrument=instrument,
        restricted_symbols=list(rules.get("firm", {}).get("restricted_symbols", [])),
        max_order_notional=_optional_decimal(fund_rules.get("max_order_notional")),
        warn_order_notional=_optional_decimal(fund_rules.get("warn_order_notional")),
        taken_at=datetime.now(UTC),
    )


def load_approval_matrix(policies_dir: Path) -> ApprovalMatrix:
    """Return the approval levels in force (the matrix in `policies/approvals.toml`)."""
    data = _read_toml(policies_dir / "approvals.toml")
    return ApprovalMatrix(
        levels=[ApprovalLevel.model_validate(level) for level in data.get("levels", [])]
    )


class ComplianceActivities:
    """Read reference data and the rule files in `policies/` (re-read each time: edits apply at once)."""

    def __init__(self, sessions: SessionFactory, policies_dir: Path) -> None:
        self._sessions = sessions
        self._policies_dir = policies_dir

    @activity.defn
    def compliance_snapshot(self, input: ComplianceSnapshotInput) -> ComplianceSnapshot:
        """Return the instrument, the restricted list and the fund's limits as of now."""
        snapshot = take_snapshot(self._sessions, self._policies_dir, input.order)
        if snapshot is None:
            raise ApplicationError(
                f"unknown symbol {input.order.symbol}",
                type=RefusalType.INVALID_INPUT,
                non_retryable=True,
            )
        return snapshot

    @activity.defn
    def pre_trade_data(self, input: PreTradeDataInput) -> PreTradeData:
        """Return the compliance snapshot and the approval matrix for `input.order`, as of now."""
        snapshot = self.compliance_snapshot(ComplianceSnapshotInput(order=input.order))
        return PreTradeData(snapshot=snapshot, matrix=load_approval_matrix(self._policies_dir))

    @activity.defn
    def approval_matrix(self, input: ApprovalMatrixInput) -> ApprovalMatrix:
        """Return the approval levels in force (the matrix in `policies/approvals.toml`)."""
        return load_approval_matrix(self._policies_dir)
