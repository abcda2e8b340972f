"""Orders: create, read, list, history, and the human actions (Updates) on one order."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Response
from sqlmodel import Session
from temporalio.client import WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from api.deps import Services, ServicesDep, SessionDep, UserDep, run_db
from api.errors import ApiError, invalid
from api.history import render_history
from api.order_access import (
    order_handle,
    read_state,
    readable_funds,
    require,
    run_update,
    visible_order,
)
from api.schemas import (
    ApproveBody,
    CancelBody,
    HistoryEntry,
    OrderPage,
    OrderSummary,
    OverrideBody,
    RejectBody,
    ReleaseBody,
)
from db import queries
from domain.ids import order_id_for, order_workflow_id
from domain.models import AllocationRequest, OrderRequest, OrderState, OrderStatus
from workflows.messages import (
    ApproveInput,
    AwaitComplianceInput,
    CancelInput,
    OrderTimeouts,
    OrderWorkflowInput,
    OverrideInput,
    PolicyGrant,
    RejectInput,
    ReleaseInput,
)
from workflows.order import OrderWorkflow

router = APIRouter(prefix="/orders", tags=["orders"])


def normalise_order(
    body: OrderRequest,
    services: Services,
    session: Session,
    user: str,
    permission: tuple[str, str] = ("orders", "create"),
) -> OrderRequest:
    """Check the order against reference data and fill the fund's default account.

    The caller needs `permission` (object, action) in the order's fund.
    """
    fund = queries.get_fund(session, body.fund)
    if fund is None:
        raise invalid("fund", f"unknown fund {body.fund}")
    require(services, user, body.fund, *permission)
    instrument = queries.get_instrument(session, body.symbol)
    if instrument is None:
        raise invalid("symbol", f"unknown symbol {body.symbol}")
    if body.quantity % instrument.lot_size != 0:
        raise invalid(
            "quantity", f"quantity must be a multiple of the lot size {instrument.lot_size}"
        )
    accounts = set(queries.fund_accounts(session, body.fund))
    for allocation in body.allocations:
        if allocation.account not in accounts:
            raise invalid("allocations", f"{allocation.account} is not an account of {body.fund}")
    if body.allocations:
        return body
    default = [AllocationRequest(account=fund.default_account, quantity=body.quantity)]
    return body.model_copy(update={"allocations": default})


@router.post("", status_code=201, response_model=OrderState)
async def create_order(
    body: OrderRequest,
    response: Response,
    services: ServicesDep,
    user: UserDep,
) -> OrderState:
    """Create an order; the same client_order_id again returns the existing order (200) or 409."""
    request = await run_db(services, lambda session: normalise_order(body, services, session, user))
    order_id = order_id_for(request.fund, request.client_order_id)
    settings = services.settings
    workflow_input = OrderWorkflowInput(
        order_id=order_id,
        request=request,
        created_by=user,
        back_office_task_queue=settings.back_office_task_queue,
        timeouts=OrderTimeouts(
            approval_escalate_after=timedelta(seconds=settings.approval_escalate_after_seconds),
            approval_expire_after=timedelta(seconds=settings.approval_expire_after_seconds),
        ),
    )
    # Update-with-start: one round trip starts the order and answers once compliance has decided,
    # so the caller sees the rule results (and a hard breach) in the response.
    start = WithStartWorkflowOperation(
        OrderWorkflow.run,
        workflow_input,
        id=order_workflow_id(order_id),
        task_queue=settings.orders_task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        static_summary=f"{request.side.value} {request.quantity} {request.symbol} for {request.fund} by {user}",
    )
    try:
        return await services.temporal.execute_update_with_start_workflow(
            OrderWorkflow.await_compliance, AwaitComplianceInput(), start_workflow_operation=start
        )
    except WorkflowAlreadyStartedError:
        existing = await read_state(order_handle(services, order_id))
        if existing.request().same_order_as(request):
            response.status_code = 200
            return existing
        raise ApiError(
            409,
            "duplicate_client_order_id",
            f"client_order_id {request.client_order_id} is already used in {request.fund} by a different order",
            "client_order_id",
        ) from None


@router.get("", response_model=OrderPage)
def list_orders(
    services: ServicesDep,
    session: SessionDep,
    user: UserDep,
    fund: str | None = None,
    status: OrderStatus | None = None,
    symbol: str | None = None,
    created_by: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> OrderPage:
    """List orders from the read model, newest first, in the funds the caller may read."""
    funds = readable_funds(services, session, user, "orders", fund)
    flt = queries.OrderFilter(
        funds=funds, status=status.value if status else None, symbol=symbol, created_by=created_by
    )
    try:
        rows = queries.list_orders(session, flt, limit + 1, cursor)
    except ValueError as exc:
        raise invalid("cursor", str(exc)) from exc
    page = rows[:limit]
    next_cursor = queries.encode_cursor(page[-1]) if len(rows) > limit else None
    return OrderPage(
        items=[OrderSummary.model_validate(row, from_attributes=True) for row in page],
        next_cursor=next_cursor,
    )


@router.get("/{order_id}", response_model=OrderState)
async def get_order(order_id: str, services: ServicesDep, user: UserDep) -> OrderState:
    """The live order, from its workflow."""
    _, state = await visible_order(services, user, order_id)
    return state


@router.get("/{order_id}/history", response_model=None)
async def order_history(
    order_id: str, services: ServicesDep, user: UserDep, format: str | None = None
) -> list[HistoryEntry] | Response:
    """The audit timeline rendered from the workflow's event history (`?format=temporal`: raw)."""
    if format not in (None, "temporal"):
        raise invalid("format", "format must be 'temporal' or absent")
    handle, state = await visible_order(services, user, order_id)
    require(services, user, state.fund, "orders", "history")
    history = await handle.fetch_history()
    if format == "temporal":
        return Response(content=history.to_json(), media_type="application/json")
    return await render_history(history, services.temporal.data_converter)


@router.post("/{order_id}/approve", response_model=OrderState)
async def approve_order(
    order_id: str, body: ApproveBody, services: ServicesDep, user: UserDep
) -> OrderState:
    """Approve the order's current level."""
    handle, state = await visible_order(services, user, order_id)
    grants = _approval_grants(services, user, state)
    update = ApproveInput(user=user, comment=body.comment, grants=grants)
    return await run_update(state, lambda: handle.execute_update(OrderWorkflow.approve, update))


@router.post("/{order_id}/reject", response_model=OrderState)
async def reject_order(
    order_id: str, body: RejectBody, services: ServicesDep, user: UserDep
) -> OrderState:
    """Reject the order at its current level."""
    handle, state = await visible_order(services, user, order_id)
    grants = _approval_grants(services, user, state)
    update = RejectInput(user=user, reason=body.reason, grants=grants)
    return await run_update(state, lambda: handle.execute_update(OrderWorkflow.reject, update))


@router.post("/{order_id}/override", response_model=OrderState)
async def override_order(
    order_id: str, body: OverrideBody, services: ServicesDep, user: UserDep
) -> OrderState:
    """Accept the order's soft compliance breaches (compliance only)."""
    handle, state = await visible_order(services, user, order_id)
    grant = require(services, user, state.fund, "orders", "override")
    update = OverrideInput(user=user, justification=body.justification, policy=grant.policy)
    return await run_update(state, lambda: handle.execute_update(OrderWorkflow.override, update))


@router.post("/{order_id}/release", response_model=OrderState)
async def release_order(
    order_id: str, services: ServicesDep, user: UserDep, body: ReleaseBody | None = None
) -> OrderState:
    """Send an approved order to a venue (traders only)."""
    handle, state = await visible_order(services, user, order_id)
    grant = require(services, user, state.fund, "orders", "release")
    venue = (body.venue if body else None) or services.settings.default_venue
    if venue not in services.settings.known_venues:
        raise invalid(
            "venue", f"unknown venue {venue}; known: {', '.join(services.settings.known_venues)}"
        )
    update = ReleaseInput(user=user, venue=venue, policy=grant.policy)
    return await run_update(state, lambda: handle.execute_update(OrderWorkflow.release, update))


@router.post("/{order_id}/cancel", response_model=OrderState)
async def cancel_order(
    order_id: str, services: ServicesDep, user: UserDep, body: CancelBody | None = None
) -> OrderState:
    """Cancel: at once before release, through pending_cancel after."""
    handle, state = await visible_order(services, user, order_id)
    grant = require(services, user, state.fund, "orders", "cancel")
    update = CancelInput(user=user, reason=body.reason if body else "", policy=grant.policy)
    return await run_update(state, lambda: handle.execute_update(OrderWorkflow.cancel, update))


def _approval_grants(services: ServicesDep, user: str, state: OrderState) -> list[PolicyGrant]:
    """Return the approval levels of this order the caller holds, with the policy that grants each."""
    grants = []
    for level in state.approvals.required:
        grant = services.authorizer.check(user, state.fund, "approvals", level)
        if grant is not None:
            grants.append(PolicyGrant(permission=level, policy=grant.policy))
    if not grants:
        raise ApiError(
            403, "forbidden", f"{user} may not approve orders of this size in {state.fund}"
        )
    return grants
