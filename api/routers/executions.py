"""Execution reports from venues: an Update on the order, whose answer is the one decision."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Response
from sqlmodel import Session, select
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from api.deps import Services, ServicesDep, UserDep, run_db
from api.errors import ApiError, from_update_failure, not_found
from api.order_access import OrderRef, locate, order_handle, order_state, query_order
from api.schemas import ExecutionAnswer
from db.tables import OrderRow
from domain.errors import RefusalType
from domain.executions import (
    WRONG_VENUE,
    ExecutionReport,
    ReportVerdict,
    apply_report,
    may_report_for,
)
from workflows.messages import ExecutionReportInput, ExecutionReportResult
from workflows.order import OrderWorkflow

router = APIRouter(prefix="/executions", tags=["executions"])


@router.post(
    "",
    status_code=202,
    response_model=ExecutionAnswer,
    responses={200: {"model": ExecutionAnswer, "description": "A duplicate exec_id: ignored."}},
)
async def post_execution(
    report: ExecutionReport, response: Response, services: ServicesDep, user: UserDep
) -> ExecutionAnswer:
    """Take one execution report: 202 when taken, 200 for a duplicate exec_id, 409 when refused.

    A refused report (overfill, a fill through the limit, not in whole lots or too far from the
    reference price, a report the order's status does not take) is recorded on the order once,
    and the venue gets 409 with the reason; sending it again gets the same answer. A caller who
    does not report for the venue the order was released to gets 404, as for an order it cannot
    see (`settings.venue_reporters`).
    """
    ref = await locate(services, user, report.order_id, ("executions", "create"))
    await _require_reporter_for_its_venue(services, ref, user)
    reporters = services.settings.venue_reporters
    update = ExecutionReportInput(
        report=report,
        reported_by=user,
        venues=[venue for venue in reporters if may_report_for(venue, user, reporters)],
    )
    if ref.is_v1:
        return await _report_to_v1(services, ref, update, response)
    handle = order_handle(services, ref.order_id)
    try:
        result = await handle.execute_update(OrderWorkflow.execution_report, update)
    except WorkflowUpdateFailedError as err:
        cause = err.cause
        if isinstance(cause, ApplicationError) and cause.type == RefusalType.DUPLICATE:
            response.status_code = 200
            return ExecutionAnswer(status="duplicate", detail=cause.message)
        if isinstance(cause, ApplicationError) and cause.type == WRONG_VENUE:
            raise not_found() from err
        raise from_update_failure(err) from err
    except RPCError as err:
        if err.status is not RPCStatusCode.NOT_FOUND:
            raise
        return await _report_to_closed_order(services, ref, report, response)
    return _answer(result, response)


async def _require_reporter_for_its_venue(services: Services, ref: OrderRef, user: str) -> None:
    """Answer 404 unless `user` reports for the venue the order was released to.

    The read model's row names the venue; a row not yet projected past the release is asked of
    the order itself. An order at no venue is left to the order, which refuses the report (409).
    """
    venue = await run_db(services, lambda session: _projected_venue(session, ref.order_id))
    if venue is None:
        venue = (await order_state(services, ref.order_id, ref.workflow_type)).venue
    if venue is not None and not may_report_for(venue, user, services.settings.venue_reporters):
        raise not_found()


def _projected_venue(session: Session, order_id: str) -> str | None:
    return session.exec(select(OrderRow.venue).where(OrderRow.order_id == order_id)).first()


async def _report_to_closed_order(
    services: Services, ref: OrderRef, report: ExecutionReport, response: Response
) -> ExecutionAnswer:
    """A venue resending a report late, after the order closed, learns it was taken (200)."""
    order = await query_order(services, ref.order_id, ref.workflow_type)
    if report.exec_id in {e.exec_id for e in order.executions}:
        response.status_code = 200
        return ExecutionAnswer(
            status="duplicate", detail=f"exec_id {report.exec_id} already applied"
        )
    raise ApiError(
        409, "conflict", f"the order is closed ({order.status.value}) and takes no more reports"
    )


def _answer(result: ExecutionReportResult, response: Response) -> ExecutionAnswer:
    if result.verdict is ReportVerdict.REFUSED:
        raise ApiError(409, "execution_refused", result.reason, result.field)
    if result.verdict is ReportVerdict.DUPLICATE:
        response.status_code = 200
    return ExecutionAnswer(
        status="accepted" if result.verdict is ReportVerdict.APPLIED else "duplicate",
        detail=result.reason,
        order_status=result.status,
        filled_quantity=result.filled_quantity,
        leaves_quantity=result.leaves_quantity,
        average_price=result.average_price,
        version=result.version,
    )


async def _report_to_v1(
    services: Services, ref: OrderRef, update: ExecutionReportInput, response: Response
) -> ExecutionAnswer:
    """Deliver a report to an order still on the first workflow, which takes reports as Signals."""
    order = await query_order(services, ref.order_id, ref.workflow_type)
    outcome = apply_report(
        status=order.status,
        quantity=order.quantity,
        filled_quantity=order.filled_quantity,
        average_price=order.average_price,
        seen_exec_ids={e.exec_id for e in order.executions},
        report=update.report,
        reported_by=update.reported_by,
        received_at=datetime.now(UTC),
    )
    if outcome.verdict is ReportVerdict.DUPLICATE:
        response.status_code = 200
        return ExecutionAnswer(status="duplicate", detail=outcome.reason)
    await order_handle(services, ref.order_id).signal("execution_report", update)
    if outcome.verdict is ReportVerdict.REFUSED:
        raise ApiError(409, "execution_refused", outcome.reason, outcome.field)
    return ExecutionAnswer(status="accepted")
