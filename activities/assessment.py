"""Pre-trade compliance on the portfolio after the trade: one activity, deciding under the fund's lock.

The snapshot a check looks at (positions, open orders, reference data) can be large, so it is
not sent to the workflow: the activity captures it, runs the pure `domain.assessment.assess` on
it and returns the assessment. Judging and reserving under one lock is also what lets two
concurrent orders of one fund never both pass a limit they breach together: the second sees the
first's reservation. A rejected order reserves nothing.
"""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, Field
from temporalio import activity

from activities.compliance import load_approval_policies
from activities.portfolio import PortfolioActivities, PortfolioSnapshotInput
from activities.trading_day import session_close
from domain.approvals import FundApprovalPolicy
from domain.assessment import Assessment, assess
from domain.compliance_policy import (
    CompliancePolicy,
    parse_compliance_policy,
    without_rule_types,
)
from domain.models import ComplianceOutcome, OrderRequest
from domain.portfolio import InstrumentData, PortfolioSnapshot


class AssessOrderInput(BaseModel):
    order_id: str
    order: OrderRequest
    created_by: str
    reserve: bool = True


class AssessOrderResult(BaseModel):
    """The assessment, and what the order keeps from the check: its instrument and matrix."""

    assessment: Assessment
    instrument: InstrumentData
    approval_policy: FundApprovalPolicy
    taken_at: datetime
    session_close: datetime | None = Field(
        default=None,
        description="When the instrument's trading day ends (a day order's time in force).",
    )


def load_compliance_policy(policies_dir: Path) -> CompliancePolicy:
    """Return the compliance rules in force (`policies/compliance.toml`, re-read each time).

    A file broken by an edit raises `CompliancePolicyError`: a check retries until it is fixed,
    rather than judge an order on no rules.
    """
    path = policies_dir / "compliance.toml"
    return parse_compliance_policy(path.read_bytes(), source=path.name)


def copy_policies_without(source: Path, into: Path, rule_types: tuple[str, ...]) -> Path:
    """Copy the policy files in `source` to `into` without the compliance rules of `rule_types`.

    For runs that send orders as no desk would (the test suite, the benchmark); returns `into`.
    """
    shutil.copytree(source, into, dirs_exist_ok=True)
    rules = into / "compliance.toml"
    rules.write_text(without_rule_types(rules.read_text(), rule_types))
    return into


class AssessmentActivities:
    """Judge orders on their fund's portfolio (see the module's docstring)."""

    def __init__(self, portfolio: PortfolioActivities, policies_dir: Path) -> None:
        self._portfolio = portfolio
        self._policies_dir = policies_dir

    def judge(self, input: AssessOrderInput) -> AssessOrderResult:
        """Return the assessment of `input.order`, reserving its exposure unless it fails.

        With `reserve` false nothing is written: the what-if endpoint's check.
        """
        rules = load_compliance_policy(self._policies_dir)
        matrix = load_approval_policies(self._policies_dir).for_fund(input.order.fund)
        judged: list[Assessment] = []

        def passes(snapshot: PortfolioSnapshot) -> bool:
            judged.append(assess(input.order, snapshot, rules, matrix, created_by=input.created_by))
            return judged[0].outcome is not ComplianceOutcome.FAIL

        snapshot = self._portfolio.snapshot_then_reserve(
            PortfolioSnapshotInput(
                order_id=input.order_id,
                order=input.order,
                created_by=input.created_by,
                reserve=input.reserve,
            ),
            passes,
        )
        if not judged:  # nothing to reserve, so `passes` was not asked
            judged.append(assess(input.order, snapshot, rules, matrix, created_by=input.created_by))
        instrument = snapshot.instruments[input.order.symbol]
        return AssessOrderResult(
            assessment=judged[0],
            instrument=instrument,
            approval_policy=matrix,
            taken_at=snapshot.taken_at,
            session_close=session_close(instrument, snapshot.taken_at),
        )

    @activity.defn
    def assess_order(self, input: AssessOrderInput) -> AssessOrderResult:
        """Judge the order on its fund after the trade and reserve its exposure (unless it fails)."""
        return self.judge(input)
