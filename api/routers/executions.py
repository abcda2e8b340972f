"""Execution reports from venues, delivered to the order workflow as Signals."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Response

from api.deps import ServicesDep, UserDep
from api.errors import ApiError
from api.order_access import visible_order
from api.schemas import Accepted
from domain.executions import ExecutionReport, ReportVerdict, apply_report_to
from workflows.messages import ExecutionReportInput
from workflows.order import OrderWorkflow

router = APIRouter(prefix="/executions", tags=["executions"])


@router.post("", status_code=202, response_model=Accepted)
async def post_execution(
    report: ExecutionReport, response: Response, services: ServicesDep, user: UserDep
) -> Accepted:
    """Take one execution report: 202 when passed to the order, 200 for a duplicate exec_id.

    A report the order cannot accept (overfill, wrong state) is still delivered, so the order
    records and flags it, and the venue gets 409 with the reason.
    """
    handle, state = await visible_order(services, user, report.order_id, ("executions", "create"))
    outcome = apply_report_to(state, report, user, datetime.now(UTC))
    if outcome.verdict is ReportVerdict.DUPLICATE:
        response.status_code = 200
        return Accepted(status="duplicate", detail=outcome.reason)
    await handle.signal(
        OrderWorkflow.execution_report, ExecutionReportInput(report=report, reported_by=user)
    )
    if outcome.verdict is ReportVerdict.REFUSED:
        raise ApiError(409, "execution_refused", outcome.reason, outcome.field)
    return Accepted(status="accepted")
