"""Finding an order the caller may see, and acting on it through its workflow.

The read model knows each order's fund and workflow type, so the API authorises and routes an
action without asking Temporal first; the workflow's answer to the action is the one decision.
Orders still running on the first workflow (v1) are routed to it by the same names.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import Session
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode

from api.auth import Grant
from api.deps import Services, run_db
from api.errors import ApiError, forbidden, from_update_failure, invalid, not_found
from api.schemas import OrderPublic
from db import queries
from db.tables import RefusedActionRow
from domain.ids import order_workflow_id
from domain.models import OrderState
from domain.order import Order
from workflows.order import WORKFLOW_TYPE

logger = logging.getLogger(__name__)
# Refusals of a person's action worth compliance's eye: forbidden, impossible now, invalid, or
# stopped by a kill switch.
_AUDITED_REFUSALS = frozenset({403, 409, 422, 423})
ORDER_ID_PATTERN = re.compile(r"^ord_[0-9a-f]{20}$")
_RPC_TIMEOUT = timedelta(seconds=15)


@dataclass(frozen=True)
class OrderRef:
    """An order the caller may see: its id, fund, and the workflow type that runs it."""

    order_id: str
    fund: str
    workflow_type: str

    @property
    def is_v1(self) -> bool:
        return self.workflow_type == queries.V1_WORKFLOW_TYPE


def order_handle(services: Services, order_id: str) -> WorkflowHandle[Any, Any]:
    return services.temporal.get_workflow_handle(order_workflow_id(order_id))


async def order_state(services: Services, order_id: str, workflow_type: str) -> Order | OrderState:
    """Return the order: as it closed from the read model, else live from its workflow (404: none).

    A closed workflow is no longer cached on a worker, so a Query would replay its whole
    history; the projector stores a closed order's final state instead.
    """
    if workflow_type == WORKFLOW_TYPE:
        final = await run_db(services, lambda s: queries.final_order_state(s, order_id))
        if final is not None:
            return Order.model_validate(final)
    result_type: type[Order] | type[OrderState] = (
        OrderState if workflow_type == queries.V1_WORKFLOW_TYPE else Order
    )
    try:
        state: Order | OrderState = await order_handle(services, order_id).query(
            "state", result_type=result_type, rpc_timeout=_RPC_TIMEOUT
        )
    except RPCError as err:
        if err.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
            raise not_found() from err
        raise
    return state


async def query_order(services: Services, order_id: str, workflow_type: str) -> OrderPublic:
    """Return the public view of the order (see `order_state`)."""
    state = await order_state(services, order_id, workflow_type)
    if isinstance(state, OrderState):
        return OrderPublic.from_v1(state)
    return OrderPublic.from_order(state)


async def locate(
    services: Services, user: str, order_id: str, seen_through: tuple[str, str] = ("orders", "read")
) -> OrderRef:
    """Return the order if the caller may see it; 404 otherwise, so ids cannot be probed across funds.

    The caller sees an order through the permission `seen_through` (object, action) in its fund,
    e.g. a venue through ("executions", "create").
    """
    if not ORDER_ID_PATTERN.match(order_id):
        raise not_found()
    route = services.routes.get(order_id)
    if route is None:
        route = await run_db(services, lambda session: queries.order_route(session, order_id))
        if route is not None:
            services.routes.remember(order_id, route)
    if route is None:
        # Not projected yet (a create still in flight): only Temporal knows its type and fund.
        try:
            workflow_type = (await order_handle(services, order_id).describe()).workflow_type
        except RPCError as err:
            if err.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
                raise not_found() from err
            raise
        route = ((await query_order(services, order_id, workflow_type)).fund, workflow_type)
    fund, workflow_type = route
    if services.authorizer.check(user, fund, *seen_through) is None:
        raise not_found()
    return OrderRef(order_id, fund, workflow_type)


@contextlib.asynccontextmanager
async def refusals_recorded(
    services: Services, ref: OrderRef, user: str, action: str, via: str = "api"
) -> AsyncIterator[None]:
    """Write a refusal of `user`'s `action` (by policy or by the order) to the audit table.

    A refused Update leaves no workflow history; compliance reads refused attempts there. A
    failure to write the row is logged and never hides the refusal itself.
    """
    try:
        yield
    except ApiError as err:
        if err.status in _AUDITED_REFUSALS:
            refusal = RefusedActionRow(
                at=datetime.now(UTC),
                order_id=ref.order_id,
                fund=ref.fund,
                user=user,
                action=action,
                status=err.status,
                code=err.code,
                message=err.message[:500],
                via=via,
            )
            try:
                await run_db(services, lambda s: queries.record_refused_action(s, refusal))
            except Exception:
                logger.exception("could not record a refused %s of %s", action, ref.order_id)
        raise


async def run_update(services: Services, ref: OrderRef, update: str, argument: Any) -> OrderPublic:
    """Run a human action (an Update of the same name on v1 and v2) and return the order.

    An order whose workflow has closed takes no more actions (409).
    """
    handle = order_handle(services, ref.order_id)
    try:
        if ref.is_v1:
            state = await handle.execute_update(update, argument, result_type=OrderState)
            return OrderPublic.from_v1(state)
        order = await handle.execute_update(update, argument, result_type=Order)
        return OrderPublic.from_order(order)
    except WorkflowUpdateFailedError as err:
        raise from_update_failure(err) from err
    except RPCError as err:
        if err.status is RPCStatusCode.NOT_FOUND:
            raise ApiError(
                409, "conflict", "the order is closed and takes no more actions"
            ) from err
        raise


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
