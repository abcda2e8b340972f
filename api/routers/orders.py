"""Orders: create, read (live, or long-polled), list, history, and the human actions (Updates)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from sqlmodel import Session
from temporalio.client import WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from api import decisions
from api.authority import attest, attest_on
from api.deps import Services, ServicesDep, SessionDep, UserDep, run_db
from api.errors import ApiError, forbidden, invalid
from api.history import order_as_of, render_history
from api.kill_switch import cancel_if_engaged, ensure_not_engaged
from api.order_access import (
    locate,
    order_handle,
    order_state,
    query_order,
    readable_funds,
    refusals_recorded,
    require,
    run_update,
)
from api.schemas import (
    AmendBody,
    ApproveBody,
    CancelBody,
    HistoryEntry,
    OrderPage,
    OrderPublic,
    OrderSummary,
    OverrideBody,
    RefusedAction,
    RejectBody,
    ReleaseBody,
)
from config import Settings
from db import queries
from db.changes import ORDER_CHANGES
from domain.authority import Action
from domain.ids import order_id_for, order_workflow_id
from domain.models import AllocationRequest, OrderRequest, OrderState, OrderStatus, step_problem
from domain.order import amendment_subject
from domain.status import has_reached
from workflows.messages import (
    AmendInput,
    AwaitComplianceInput,
    CancelInput,
    OrderTimeouts,
    OrderWorkflowInput,
    OverrideInput,
    ReleaseInput,
)
from workflows.order import AMEND_AT_VENUE, WORKFLOW_TYPE, OrderWorkflow

router = APIRouter(prefix="/orders", tags=["orders"])

# A long-poll waits at most this long, and reads the read model this often (growing to
# `_POLL_MAX`; to `_POLL_MAX_TOLD` where commits are told in this process, by its own projector
# or PostgreSQL's notifications, so that the reads only catch what nobody told).
MAX_WAIT_SECONDS = 60
_POLL_FIRST, _POLL_MAX, _POLL_MAX_TOLD = 0.05, 0.5, 2.0


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
    # The permission first, and the same 403 for a fund that does not exist: the answer must
    # not tell a caller which funds exist.
    require(services, user, body.fund, *permission)
    fund = queries.get_fund(session, body.fund)
    if fund is None:
        raise forbidden(f"{user} may not {permission[1]} {permission[0]} in {body.fund}")
    instrument = queries.get_instrument(session, body.symbol)
    if instrument is None:
        raise invalid("symbol", f"unknown symbol {body.symbol}")
    if body.quantity % instrument.lot_size != 0:
        raise invalid(
            "quantity", f"quantity must be a multiple of the lot size {instrument.lot_size}"
        )
    if body.limit_price is not None:
        problem = step_problem(body.limit_price, instrument.tick_size, "limit_price")
        if problem is not None:
            raise invalid("limit_price", f"{problem}, the tick size of {body.symbol}")
    accounts = set(queries.fund_accounts(session, body.fund))
    for allocation in body.allocations:
        if allocation.account not in accounts:
            raise invalid("allocations", f"{allocation.account} is not an account of {body.fund}")
    if body.allocations:
        return body
    default = [AllocationRequest(account=fund.default_account, quantity=body.quantity)]
    return body.model_copy(update={"allocations": default})


@router.post(
    "",
    status_code=201,
    response_model=OrderPublic,
    responses={200: {"model": OrderPublic, "description": "The same order, created before."}},
)
async def create_order(
    body: OrderRequest,
    response: Response,
    services: ServicesDep,
    user: UserDep,
) -> OrderPublic:
    """Create an order; the same client_order_id again returns the existing order (200) or 409."""
    request = await run_db(services, lambda session: normalise_order(body, services, session, user))
    await ensure_not_engaged(services, request.fund)
    order_id = order_id_for(request.fund, request.client_order_id)
    settings = services.settings
    workflow_input = OrderWorkflowInput(
        order_id=order_id,
        request=request,
        created_by=user,
        back_office_task_queue=settings.back_office_task_queue,
        notify_approvers=settings.chat_webhook_url is not None,
        timeouts=_timeouts(settings),
    )
    # Update-with-start: one round trip starts the order and answers once compliance has decided
    # and the read model shows it, so the caller sees the rule results in the response.
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
        order = await services.temporal.execute_update_with_start_workflow(
            OrderWorkflow.await_compliance,
            AwaitComplianceInput(
                authority=attest(
                    services,
                    user,
                    order_id=order_id,
                    fund=request.fund,
                    action=Action.CREATE,
                    permission=("orders", "create"),
                )
            ),
            start_workflow_operation=start,
        )
    except WorkflowAlreadyStartedError:
        # Update-with-start hands a refused start's error to the start operation too: retrieve
        # it, or asyncio logs "Future exception was never retrieved" (every duplicate create did).
        with contextlib.suppress(WorkflowAlreadyStartedError):
            await start.workflow_handle()
        return await _existing_order(services, order_id, request, response)
    except RPCError:
        # The same for a start Temporal refused (the operation holds the error, or a handle).
        with contextlib.suppress(RPCError):
            await start.workflow_handle()
        raise
    return OrderPublic.from_order(order)


def _timeouts(settings: Settings) -> OrderTimeouts:
    """Return the order's waiting times: the fund's approval times, unless settings override them."""
    defaults = OrderTimeouts()
    escalate, expire = (
        settings.approval_escalate_after_seconds,
        settings.approval_expire_after_seconds,
    )
    return OrderTimeouts(
        approval_escalate_after=(
            timedelta(seconds=escalate) if escalate else defaults.approval_escalate_after
        ),
        approval_expire_after=timedelta(seconds=expire)
        if expire
        else defaults.approval_expire_after,
        override_approval_deadlines=escalate is not None or expire is not None,
        venue_ack_timeout=timedelta(seconds=settings.venue_ack_timeout_seconds),
    )


async def _existing_order(
    services: Services, order_id: str, request: OrderRequest, response: Response
) -> OrderPublic:
    """Answer a repeated create: the same order (200) if the body is the same, else 409."""
    route = await run_db(services, lambda session: queries.order_route(session, order_id))
    state = await order_state(services, order_id, route[1] if route else WORKFLOW_TYPE)
    if isinstance(state, OrderState):
        same, public = state.request().same_order_as(request), OrderPublic.from_v1(state)
    else:
        same, public = state.request.same_order_as(request), OrderPublic.from_order(state)
    if same:
        response.status_code = 200
        return public
    raise ApiError(
        409,
        "duplicate_client_order_id",
        f"client_order_id {request.client_order_id} is already used in {request.fund} by a different order",
        "client_order_id",
    )


@router.get("", response_model=OrderPage)
def list_orders(
    services: ServicesDep,
    session: SessionDep,
    user: UserDep,
    fund: str | None = None,
    status: OrderStatus | None = None,
    symbol: Annotated[str | None, Query(max_length=32)] = None,
    created_by: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
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


def _parse_statuses(text: str) -> frozenset[OrderStatus]:
    wanted = set()
    for name in filter(None, (part.strip() for part in text.split(","))):
        try:
            wanted.add(OrderStatus(name))
        except ValueError:
            raise invalid("wait_for", f"unknown status {name!r}") from None
    if not wanted:
        raise invalid("wait_for", "name at least one status")
    return frozenset(wanted)


async def _wait_in_read_model(
    services: Services, order_id: str, wanted: frozenset[OrderStatus], within: float
) -> None:
    """Return once the read model shows the order at one of `wanted`, later, or final; or at timeout.

    The read model is read (cheap, indexed by order id) rather than the workflow queried: a
    Query per look would cost the worker a workflow task each time. A projection committed in
    this process, or heard of on PostgreSQL, is told at once (`db.changes`), with its status.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    interval = _POLL_FIRST

    async def read() -> tuple[OrderStatus, bool] | None:
        row = await run_db(services, lambda session: queries.order_status(session, order_id))
        return None if row is None else (OrderStatus(row[0]), row[1])

    with ORDER_CHANGES.watch(order_id) as changes:
        seen = await read()
        while True:
            if seen is not None and has_reached(seen[0], wanted, filled=seen[1]):
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            seen = await changes.next(min(interval, remaining))
            if seen is None:
                seen = await read()
                # Asked at each read: a listener may have connected or been lost meanwhile.
                ceiling = _POLL_MAX_TOLD if ORDER_CHANGES.commits_told_here else _POLL_MAX
                interval = min(interval * 1.5, ceiling)


@router.get("/{order_id}", response_model=OrderPublic)
async def get_order(
    order_id: str,
    services: ServicesDep,
    user: UserDep,
    wait_for: Annotated[str | None, Query(max_length=400)] = None,
    wait_seconds: Annotated[float, Query(alias="timeout", gt=0, le=MAX_WAIT_SECONDS)] = 30,
) -> OrderPublic:
    """The live order, from its workflow; with `wait_for`, once it reaches one of those statuses."""
    wanted = _parse_statuses(wait_for) if wait_for is not None else None
    ref = await locate(services, user, order_id)
    if wanted is not None:
        await _wait_in_read_model(services, ref.order_id, wanted, wait_seconds)
    return await query_order(services, ref.order_id, ref.workflow_type)


@router.get("/{order_id}/refusals", response_model=list[RefusedAction])
async def order_refusals(
    order_id: str,
    services: ServicesDep,
    user: UserDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[RefusedAction]:
    """Actions on the order that were refused (by policy or by the order), oldest first."""
    ref = await locate(services, user, order_id)
    require(services, user, ref.fund, "orders", "history")
    rows = await run_db(
        services, lambda session: queries.refused_actions(session, ref.order_id, limit)
    )
    return [RefusedAction.model_validate(row, from_attributes=True) for row in rows]


# Keys of the raw Temporal history that name a worker's host and process or the code's paths.
_HIDDEN_HISTORY_KEYS = frozenset({"identity", "lastWorkerIdentity", "stackTrace"})


def _without_keys(value: Any, hidden: frozenset[str]) -> Any:
    """Return the JSON value without the `hidden` keys, at any depth."""
    if isinstance(value, dict):
        return {k: _without_keys(v, hidden) for k, v in value.items() if k not in hidden}
    if isinstance(value, list):
        return [_without_keys(item, hidden) for item in value]
    return value


@router.get("/{order_id}/history", response_model=None)
async def order_history(
    order_id: str,
    services: ServicesDep,
    user: UserDep,
    format: str | None = None,
    as_of: Annotated[
        datetime | None,
        Query(description="An instant with its offset: the order as it stood then (OrderPublic)."),
    ] = None,
) -> list[HistoryEntry] | OrderPublic | Response:
    """The audit timeline from the order's event log (`?format=temporal`: the raw history).

    With `as_of`, the order's public view as it stood at that instant, from the read model.
    """
    if format not in (None, "temporal"):
        raise invalid("format", "format must be 'temporal' or absent")
    if as_of is not None and (format is not None or as_of.utcoffset() is None):
        raise invalid("as_of", "as_of must carry a timezone offset and comes without format")
    ref = await locate(services, user, order_id)
    require(services, user, ref.fund, "orders", "history")
    if as_of is not None:
        return await order_as_of(services, ref, as_of)
    if format == "temporal" or ref.is_v1:
        history = await order_handle(services, ref.order_id).fetch_history()
        if format == "temporal":
            # Without the workers' identities (pid@host) and failures' stack traces (paths).
            raw = _without_keys(history.to_json_dict(), _HIDDEN_HISTORY_KEYS)
            return Response(content=json.dumps(raw), media_type="application/json")
        return await render_history(history, services.temporal.data_converter)
    rows = await run_db(services, lambda session: queries.order_events(session, ref.order_id))
    return [
        HistoryEntry(
            at=row.at,
            event=row.kind,
            actor=row.actor,
            details=row.details,
            seq=row.seq,
            status=row.status,
            reason=row.reason,
        )
        for row in rows
    ]


@router.post("/{order_id}/approve", response_model=OrderPublic)
async def approve_order(
    order_id: str, body: ApproveBody, services: ServicesDep, user: UserDep
) -> OrderPublic:
    """Approve the order's current level."""
    return await decisions.approve(services, user, order_id, body.comment)


@router.post("/{order_id}/reject", response_model=OrderPublic)
async def reject_order(
    order_id: str, body: RejectBody, services: ServicesDep, user: UserDep
) -> OrderPublic:
    """Reject the order at its current level."""
    return await decisions.reject(services, user, order_id, body.reason)


@router.post("/{order_id}/override", response_model=OrderPublic)
async def override_order(
    order_id: str, body: OverrideBody, services: ServicesDep, user: UserDep
) -> OrderPublic:
    """Accept the order's soft compliance breaches (compliance only)."""
    ref = await locate(services, user, order_id)
    async with refusals_recorded(services, ref, user, "override"):
        authority = attest_on(services, user, ref, Action.OVERRIDE)
        update = OverrideInput(
            user=user,
            justification=body.justification,
            rules=body.rules,
            policy=authority.authority().policy,
            authority=authority,
        )
        return await run_update(services, ref, "override", update)


@router.post("/{order_id}/release", response_model=OrderPublic)
async def release_order(
    order_id: str, services: ServicesDep, user: UserDep, body: ReleaseBody | None = None
) -> OrderPublic:
    """Release an approved order to a venue (traders only)."""
    ref = await locate(services, user, order_id)
    async with refusals_recorded(services, ref, user, "release"):
        require(services, user, ref.fund, "orders", "release")
        await ensure_not_engaged(services, ref.fund)
        venue = (body.venue if body else None) or services.settings.default_venue
        if venue not in services.settings.known_venues:
            raise invalid(
                "venue",
                f"unknown venue {venue}; known: {', '.join(services.settings.known_venues)}",
            )
        authority = attest_on(services, user, ref, Action.RELEASE, subject=venue)
        update = ReleaseInput(
            user=user, venue=venue, policy=authority.authority().policy, authority=authority
        )
        released = await run_update(services, ref, "release", update)
        # A switch engaged while this release was on its way: its sweep may have looked before
        # the order was at the venue, so this release cancels it itself (and answers 423).
        await cancel_if_engaged(services, ref)
        return released


@router.post("/{order_id}/cancel", response_model=OrderPublic)
async def cancel_order(
    order_id: str, services: ServicesDep, user: UserDep, body: CancelBody | None = None
) -> OrderPublic:
    """Cancel: at once before release, through pending_cancel after."""
    ref = await locate(services, user, order_id)
    async with refusals_recorded(services, ref, user, "cancel"):
        authority = attest_on(services, user, ref, Action.CANCEL)
        update = CancelInput(
            user=user,
            reason=body.reason if body else "",
            policy=authority.authority().policy,
            authority=authority,
        )
        return await run_update(services, ref, "cancel", update)


@router.post("/{order_id}/amend", response_model=OrderPublic)
async def amend_order(
    order_id: str, body: AmendBody, services: ServicesDep, user: UserDep
) -> OrderPublic:
    """Amend: before release compliance and approvals run again; after, cancel/replace."""
    ref = await locate(services, user, order_id)
    async with refusals_recorded(services, ref, user, "amend"):
        # A PM amends at any stage; a trader only what works at a venue (the order decides).
        permission = next(
            (
                held
                for held in (("orders", "amend"), AMEND_AT_VENUE)
                if services.authorizer.check(user, ref.fund, *held) is not None
            ),
            None,
        )
        if permission is None:
            raise forbidden(f"{user} may not amend orders in {ref.fund}")
        authority = attest(
            services,
            user,
            order_id=ref.order_id,
            fund=ref.fund,
            action=Action.AMEND,
            permission=permission,
            subject=amendment_subject(body.quantity, body.limit_price),
        )
        if ref.is_v1:
            raise ApiError(409, "conflict", "orders of the first workflow cannot be amended")
        instrument = await run_db(
            services, lambda session: queries.order_instrument(session, ref.order_id)
        )
        if instrument is not None:
            for field, value, step in (
                ("quantity", body.quantity, instrument.lot_size),
                ("limit_price", body.limit_price, instrument.tick_size),
            ):
                problem = None if value is None else step_problem(value, step, field)
                if problem is not None:
                    raise invalid(field, f"{problem} for {instrument.symbol}")
        update = AmendInput(
            user=user,
            quantity=body.quantity,
            limit_price=body.limit_price,
            reason=body.reason,
            policy=authority.authority().policy,
            authority=authority,
        )
        return await run_update(services, ref, "amend", update)
