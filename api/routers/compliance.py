"""Pre-trade compliance for people: the what-if check and the rules in force."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel
from sqlmodel import Session
from temporalio.exceptions import ApplicationError

from activities.assessment import AssessmentActivities, AssessOrderInput, load_compliance_policy
from activities.portfolio import PortfolioActivities, ReadModelPrices
from api.deps import Services, ServicesDep, UserDep, run_db
from api.errors import ApiError, forbidden, invalid
from api.routers.orders import normalise_order
from db import queries
from domain.assessment import RULE_TYPES
from domain.compliance_policy import CompliancePolicyError
from domain.ids import order_id_for
from domain.models import ComplianceOutcome, ComplianceResult, OrderRequest

router = APIRouter(prefix="/compliance", tags=["compliance"])


class ComplianceCheck(BaseModel):
    """What the order's own check would answer now: the same function on the same data."""

    outcome: ComplianceOutcome
    results: list[ComplianceResult]
    notional: Decimal | None
    exposure: Decimal | None
    currency: str
    approvals_required: list[str]
    approval_rules: list[str]
    rules_version: str


class RuleView(BaseModel):
    id: str
    type: str
    summary: str
    severity: str
    scope: str
    fund: str | None
    account: str | None
    params: dict[str, Any]
    description: str


class RulesInForce(BaseModel):
    fund: str
    version: str
    rules: list[RuleView]


def _assessments(services: Services) -> AssessmentActivities:
    portfolio = PortfolioActivities(services.sessions, ReadModelPrices(services.sessions))
    return AssessmentActivities(portfolio, services.settings.policies_dir)


def _policy_unavailable(exc: Exception) -> ApiError:
    return ApiError(503, "policy_unavailable", f"the compliance rules cannot be read: {exc}")


@router.post("/check", response_model=ComplianceCheck)
async def check_order(body: OrderRequest, services: ServicesDep, user: UserDep) -> ComplianceCheck:
    """Judge an order body exactly as the order's own check would, and create nothing.

    It reserves nothing either, so the answer holds only until the fund changes.
    """
    request = await run_db(
        services,
        lambda session: normalise_order(body, services, session, user, ("compliance", "check")),
    )
    judge = AssessOrderInput(
        order_id=order_id_for(request.fund, request.client_order_id),
        order=request,
        created_by=user,
        reserve=False,
    )
    try:
        judged = await run_in_threadpool(_assessments(services).judge, judge)
    except ApplicationError as exc:  # the fund or instrument cannot be judged (no NAV, no FX)
        raise invalid("symbol", exc.message) from exc
    except CompliancePolicyError as exc:
        raise _policy_unavailable(exc) from exc
    assessment = judged.assessment
    failed = assessment.outcome is ComplianceOutcome.FAIL
    return ComplianceCheck(
        outcome=assessment.outcome,
        results=assessment.results,
        notional=assessment.size_notional,
        exposure=assessment.exposure,
        currency=assessment.base_currency,
        approvals_required=[] if failed else list(assessment.approval.levels),
        approval_rules=[] if failed else list(assessment.approval.rules),
        rules_version=assessment.rules_version,
    )


@router.get("/rules", response_model=RulesInForce)
async def rules_in_force(services: ServicesDep, user: UserDep, fund: str) -> RulesInForce:
    """List the rules an order of `fund` answers to: the firm's, the fund's and its accounts'."""
    if services.authorizer.check(user, fund, "compliance", "rules") is None:
        raise forbidden(f"{user} may not read the compliance rules of {fund}")

    def accounts_of(session: Session) -> list[str]:
        # After the permission, so only a caller who may read every fund's rules learns this.
        if queries.get_fund(session, fund) is None:
            raise invalid("fund", f"unknown fund {fund}")
        return queries.fund_accounts(session, fund)

    accounts = await run_db(services, accounts_of)
    try:
        policy = load_compliance_policy(services.settings.policies_dir)
    except CompliancePolicyError as exc:
        raise _policy_unavailable(exc) from exc
    return RulesInForce(
        fund=fund,
        version=policy.version,
        rules=[
            RuleView(
                id=rule.id,
                type=rule.type,
                summary=RULE_TYPES[rule.type].summary,
                severity=rule.severity.value,
                scope=rule.scope.value,
                fund=rule.fund,
                account=rule.account,
                params=rule.params,
                description=rule.description,
            )
            for rule in policy.rules_for(fund, accounts)
        ],
    )
