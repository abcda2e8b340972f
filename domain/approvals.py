"""The approval matrix: which levels an order needs, decided by its notional and compliance results."""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

from domain.models import ComplianceOutcome, ComplianceResult


class ApprovalLevel(BaseModel):
    """One level of the matrix: orders whose notional is above `min_notional` need it."""

    model_config = ConfigDict(frozen=True)

    level: str
    min_notional: Decimal = Decimal(0)
    on_warning: bool = Field(default=False, description="Also required whenever a rule warned.")


class ApprovalMatrix(BaseModel):
    """Levels in the order they must approve."""

    model_config = ConfigDict(frozen=True)

    levels: list[ApprovalLevel]


def required_levels(
    matrix: ApprovalMatrix, notional: Decimal, compliance: list[ComplianceResult]
) -> list[str]:
    """Return the levels an order must pass, in approval order."""
    warned = any(r.outcome is ComplianceOutcome.WARN for r in compliance)
    return [
        lvl.level
        for lvl in matrix.levels
        if notional > lvl.min_notional or (warned and lvl.on_warning)
    ]
