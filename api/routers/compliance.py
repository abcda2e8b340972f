"""What-if pre-trade compliance: the results an order would get, without creating it."""

from __future__ import annotations

from decimal import Decimal

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from activities.compliance import load_approval_matrix, take_snapshot
from api.deps import ServicesDep, UserDep, run_db
from api.errors import invalid
from api.routers.orders import normalise_order
from domain.approvals import required_levels
from domain.compliance import evaluate, order_notional, worst_outcome
from domain.models import ComplianceOutcome, ComplianceResult, OrderRequest

router = APIRouter(prefix="/compliance", tags=["compliance"])


class ComplianceCheck(BaseModel):
    outcome: ComplianceOutcome
    results: list[ComplianceResult]
    notional: Decimal
    currency: str
    approvals_required: list[str]


@router.post("/check", response_model=ComplianceCheck)
async def check_order(body: OrderRequest, services: ServicesDep, user: UserDep) -> ComplianceCheck:
    """Run the fund's rules on an order body as the order itself would, and create nothing.

    A real order re-reads the data when it is created, so the answer can differ later.
    """
    request = await run_db(
        services,
        lambda session: normalise_order(body, services, session, user, ("compliance", "check")),
    )
    policies = services.settings.policies_dir
    snapshot = await run_in_threadpool(take_snapshot, services.sessions, policies, request)
    if snapshot is None:  # pragma: no cover - normalise_order already refused unknown symbols
        raise invalid("symbol", f"unknown symbol {request.symbol}")
    results = evaluate(request, snapshot)
    notional = order_notional(request, snapshot)
    matrix = load_approval_matrix(policies)
    outcome = worst_outcome(results)
    return ComplianceCheck(
        outcome=outcome,
        results=results,
        notional=notional,
        currency=snapshot.instrument.currency,
        approvals_required=[]
        if outcome is ComplianceOutcome.FAIL
        else required_levels(matrix, notional, results),
    )
