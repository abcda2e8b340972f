"""Finding an order the caller may see, and acting on it through its workflow."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from sqlmodel import Session
from temporalio.client import WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from api.auth import Grant
from api.deps import Services
from api.errors import ApiError, forbidden, invalid, not_found
from db import queries
from domain.ids import order_workflow_id
from domain.models import OrderState
from workflows.order import OrderWorkflow

ORDER_ID_PATTERN = re.compile(r"^ord_[0-9a-f]{20}$")
_RPC_TIMEOUT = timedelta(seconds=15)

OrderHandle = WorkflowHandle[OrderWorkflow, Any]


def order_handle(services: Services, order_id: str) -> OrderHandle:
    return services.temporal.get_workflow_handle_for(OrderWorkflow.run, order_workflow_id(order_id))


async def read_state(handle: OrderHandle) -> OrderState:
    """Query the live order; 404 when there is no such workflow."""
    try:
        return await handle.query(OrderWorkflow.state, rpc_timeout=_RPC_TIMEOUT)
    except RPCError as err:
        if err.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
            raise not_found() from err
        raise


async def visible_order(
    services: Services, user: str, order_id: str, seen_through: tuple[str, str] = ("orders", "read")
) -> tuple[OrderHandle, OrderState]:
    """Return the order if the caller may see it; 404 otherwise, so ids cannot be probed across funds.

    The caller sees an order through the permission `seen_through` (object, action) in its fund,
    e.g. a venue through ("executions", "create").
    """
    if not ORDER_ID_PATTERN.match(order_id):
        raise not_found()
    handle = order_handle(services, order_id)
    state = await read_state(handle)
    if services.authorizer.check(user, state.fund, *seen_through) is None:
        raise not_found()
    return handle, state


def readable_funds(
    services: Services, session: Session, user: str, obj: str, fund: str | None
) -> list[str]:
    """Return the funds whose `obj` the caller may read, narrowed to `fund` when one is asked for.

    Asking for a fund the caller may not read is a 422 naming `fund` (not an empty list, which
    would hide a typo); a caller who may read `obj` in no fund at all gets 403.
    """
    funds = services.authorizer.funds_allowed(
        user, [f.fund for f in queries.all_funds(session)], obj, "read"
    )
    if not funds:
        raise forbidden(f"{user} may not read {obj} in any fund")
    if fund is None:
        return funds
    if fund not in funds:
        raise invalid("fund", f"{fund} is not a fund whose {obj} you may read")
    return [fund]


def require(services: Services, user: str, fund: str, obj: str, action: str) -> Grant:
    """Return the caller's grant for the action, or refuse with 403."""
    grant = services.authorizer.check(user, fund, obj, action)
    if grant is None:
        raise forbidden(f"{user} may not {action} {obj} in {fund}")
    return grant


async def run_update(state: OrderState, call: Callable[[], Awaitable[OrderState]]) -> OrderState:
    """Run an Update; an order whose workflow has closed takes no more actions (409)."""
    try:
        return await call()
    except RPCError as err:
        if err.status is RPCStatusCode.NOT_FOUND:
            raise ApiError(
                409, "conflict", f"the order is {state.status.value} and takes no more actions"
            ) from err
        raise
