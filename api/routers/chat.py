"""Chat-ops: `/oms` slash commands and the Approve / Reject buttons, as Slack sends them.

Every request is verified with the Slack signing secret before anything is read from it; an
unverified one is a 401 and changes nothing. The chat user then maps to an OMS user
(`policies/chat_users.toml`), and a decision goes through `api.decisions`, the very path
`POST /orders/{id}/approve|reject` takes: the same authority check, the same workflow Update.

A verified request is always answered 200 with a message (Slack shows nothing useful for an
error status): refusals privately (`ephemeral`), decisions in the channel.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, BackgroundTasks, Depends, Request
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from temporalio.client import (
    RPCTimeoutOrCancelledError,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.service import RPCError

from activities.notifications import (
    APPROVE_ACTION,
    DECIDE_BLOCK_PREFIX,
    REJECT_ACTION,
    ChatUsers,
    escape,
    format_notional,
    format_time,
    format_trade,
    load_chat_users,
)
from api import chat, decisions, inbox
from api.deps import Services, ServicesDep
from api.errors import (
    ApiError,
    from_database_error,
    from_rpc_error,
    from_update_failure,
    temporal_busy,
)
from api.schemas import ApproveBody, OrderPublic, RejectBody
from domain.models import OrderStatus

router = APIRouter(prefix="/chat/slack", tags=["chat"])
log = logging.getLogger(__name__)

INBOX_PAGE = 10
# `/oms inbox` counts what is beyond its first page up to this many, then says "N+ more".
_INBOX_COUNT_LIMIT = 500
_RESPONSE_URL_TIMEOUT_SECONDS = 5.0


async def verified_body(request: Request, services: ServicesDep) -> bytes:
    """Return the raw body once it is verified as Slack's (401 otherwise)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > chat.MAX_BODY_BYTES:
        raise ApiError(413, "too_large", "request body too large")
    body = await request.body()
    if len(body) > chat.MAX_BODY_BYTES:
        raise ApiError(413, "too_large", "request body too large")
    chat.verify_slack_request(
        services.settings.slack_signing_secret,
        body,
        request.headers.get("x-slack-request-timestamp"),
        request.headers.get("x-slack-signature"),
    )
    return body


VerifiedBody = Annotated[bytes, Depends(verified_body)]


def _chat_users(services: Services) -> ChatUsers:
    # Re-read on each request (a few lines of TOML), so linking a user applies at once.
    return load_chat_users(services.settings.policies_dir)


async def _attempt(call: Awaitable[OrderPublic]) -> OrderPublic | ApiError:
    """Run a decision or a read; return the order, or the refusal the HTTP API would answer."""
    try:
        return await call
    except ApiError as exc:
        return exc
    except WorkflowUpdateFailedError as exc:
        return from_update_failure(exc)
    except RPCError as exc:
        return from_rpc_error(exc)
    except RPCTimeoutOrCancelledError:
        return temporal_busy()
    except WorkflowQueryFailedError as exc:
        return ApiError(503, "query_failed", f"order could not be read: {exc.message}")
    except (DBAPIError, PoolTimeoutError) as exc:
        return from_database_error(exc)


# --- Slash commands --------------------------------------------------------------------------


@router.post("/commands")
async def slash_command(body: VerifiedBody, services: ServicesDep) -> dict[str, Any]:
    """Answer `/oms approve|reject|show|inbox` (form-encoded, as Slack and Mattermost send it)."""
    form = chat.parse_form(body)
    if form.get("ssl_check"):
        return {}
    chat_id = form.get("user_id", "")
    user = _chat_users(services).user_for(chat_id)
    if user is None:
        return chat.unlinked_reply(chat_id)
    command = chat.parse_command(form.get("text", ""))
    if command.verb in ("help", "?"):
        return chat.usage_reply()
    if command.verb == "inbox":
        return await _inbox(services, user)
    if command.verb not in ("approve", "reject", "show"):
        return chat.usage_reply(f"Unknown command `{escape(command.verb)}`.")
    if not command.order_id:
        return chat.usage_reply(f"`{command.verb}` needs an order id.")
    if command.verb == "show":
        shown = await _attempt(decisions.show(services, user, command.order_id))
        if isinstance(shown, ApiError):
            return chat.refusal_reply(shown, command.order_id)
        return chat.order_reply(shown)
    if command.verb == "reject" and not command.text:
        return chat.usage_reply("A rejection needs a reason: `/oms reject ORDER_ID reason`.")
    # The same limits as the HTTP API's bodies.
    try:
        if command.verb == "approve":
            comment = ApproveBody(comment=command.text).comment
            return await _approve(services, user, command.order_id, comment)
        reason = RejectBody(reason=command.text).reason
    except ValidationError as exc:
        return chat.usage_reply(f"Not accepted: {escape(exc.errors()[0]['msg'])}.")
    return await _reject(services, user, command.order_id, reason)


async def _approve(
    services: Services,
    user: str,
    order_id: str,
    comment: str,
    *,
    from_button: bool = False,
    level: str | None = None,
) -> dict[str, Any]:
    """Approve as `user`; `level` is the level a clicked notice asked about, if it names one."""
    if level is not None:
        stale = await _stale_notice(services, user, order_id, level)
        if stale is not None:
            return stale
    result = await _attempt(decisions.approve(services, user, order_id, comment))
    if isinstance(result, ApiError):
        return await _refused(services, user, order_id, result, level)
    return chat.approved_reply(result, user, from_button=from_button)


async def _reject(
    services: Services,
    user: str,
    order_id: str,
    reason: str,
    *,
    from_button: bool = False,
    level: str | None = None,
) -> dict[str, Any]:
    """Reject as `user`; `level` as for `_approve`."""
    pending_level = level
    if level is not None:
        stale = await _stale_notice(services, user, order_id, level)
        if stale is not None:
            return stale
    result = await _attempt(decisions.reject(services, user, order_id, reason))
    if isinstance(result, ApiError):
        return await _refused(services, user, order_id, result, level)
    if pending_level is None:
        # The level rejected is the first one not approved.
        given = len(result.approvals.given)
        required = result.approvals.required
        pending_level = required[given] if given < len(required) else None
    return chat.rejected_reply(result, user, pending_level, reason, from_button=from_button)


async def _stale_notice(
    services: Services, user: str, order_id: str, level: str | None
) -> dict[str, Any] | None:
    """Answer a click on a notice whose level is no longer the one waiting; None if it is.

    The buttons carry only the order id, and an Update approves whatever level is pending: a
    click on an old notice must not decide a later level the notice never showed. The workflow
    still makes the decision; this only keeps an old button from reaching a new question.
    """
    order = await _attempt(decisions.show(services, user, order_id))
    if isinstance(order, ApiError):
        return chat.refusal_reply(order, order_id)
    if order.status is OrderStatus.PENDING_APPROVAL and order.approvals.current_level == level:
        return None
    if order.amendment is not None and order.amendment.approvals.current_level == level:
        return None
    return chat.already_decided_reply(order, level)


async def _refused(
    services: Services, user: str, order_id: str, error: ApiError, level: str | None
) -> dict[str, Any]:
    """Answer a refused decision privately; a 409 (not pending that level) says who decided."""
    if error.status == 409:
        order = await _attempt(decisions.show(services, user, order_id))
        if isinstance(order, OrderPublic):
            return chat.already_decided_reply(order, level)
    return chat.refusal_reply(error, order_id)


async def _inbox(services: Services, user: str) -> dict[str, Any]:
    """List the first orders waiting on the caller, and count the rest."""
    try:
        page = await inbox.inbox(services, user, None, INBOX_PAGE)
        more, cursor = 0, page.next_cursor
        while cursor is not None and more < _INBOX_COUNT_LIMIT:
            rest = await inbox.inbox(services, user, cursor, 100)
            more, cursor = more + len(rest.items), rest.next_cursor
    except ApiError as exc:
        return chat.refusal_reply(exc)
    except (DBAPIError, PoolTimeoutError) as exc:
        return chat.refusal_reply(from_database_error(exc))
    lines = [
        chat.InboxLine(
            order_id=item.order_id,
            trade=format_trade(item.side.value, item.quantity, item.symbol),
            fund=item.fund,
            notional=format_notional(item.notional, item.currency),
            created_by=item.created_by,
            level=item.approval_level,
            waiting_since=format_time(item.waiting_since),
            escalated=item.escalated,
            may_decide=item.may_decide,
        )
        for item in page.items
    ]
    return chat.inbox_reply(lines, more, more_is_lower_bound=cursor is not None)


# --- Buttons ---------------------------------------------------------------------------------


@router.post("/actions")
async def button_click(
    body: VerifiedBody, services: ServicesDep, background: BackgroundTasks
) -> dict[str, Any]:
    """Answer a click on Approve or Reject (`payload`: the interaction as JSON)."""
    try:
        payload = json.loads(chat.parse_form(body).get("payload", ""))
        action = payload["actions"][0]
        chat_id = str(payload["user"]["id"])
        action_id, order_id = str(action["action_id"]), str(action["value"])
        block_id = str(action.get("block_id", ""))
    except (ValueError, KeyError, IndexError, TypeError):
        return chat.reply("The OMS could not read that interaction.")
    answer = await _click(services, payload, chat_id, action_id, order_id, block_id)
    response_url = payload.get("response_url")
    if isinstance(response_url, str) and response_url.startswith(("https://", "http://")):
        # Slack takes a button's answer only through its response_url (the response body is
        # an acknowledgement); clients that read the body (Mattermost) get it there too.
        background.add_task(_post_to_response_url, response_url, answer)
    return answer


async def _click(
    services: Services,
    payload: dict[str, Any],
    chat_id: str,
    action_id: str,
    order_id: str,
    block_id: str,
) -> dict[str, Any]:
    user = _chat_users(services).user_for(chat_id)
    if user is None:
        return chat.unlinked_reply(chat_id)
    level = (
        block_id.removeprefix(DECIDE_BLOCK_PREFIX)
        if block_id.startswith(DECIDE_BLOCK_PREFIX)
        else ""
    )
    if action_id == APPROVE_ACTION:
        return await _approve(services, user, order_id, "", from_button=True, level=level or None)
    if action_id == REJECT_ACTION:
        reason = _typed_reason(payload) or f"rejected from chat by {user}"
        return await _reject(
            services, user, order_id, reason, from_button=True, level=level or None
        )
    return chat.reply(f"The OMS has no action {action_id!r}.")


def _typed_reason(payload: dict[str, Any]) -> str:
    """Return a reason typed into the message's `reason` input, if the message has one."""
    state = payload.get("state")
    values = state.get("values") if isinstance(state, dict) else None
    if not isinstance(values, dict):
        return ""
    for block in values.values():
        field = block.get("reason") if isinstance(block, dict) else None
        if isinstance(field, dict) and isinstance(field.get("value"), str):
            return chat.unescape(field["value"]).strip()
    return ""


async def _post_to_response_url(url: str, message: dict[str, Any]) -> None:
    """Deliver a button's answer; a failure only loses the message, never the decision."""
    try:
        async with httpx.AsyncClient(timeout=_RESPONSE_URL_TIMEOUT_SECONDS) as http:
            response = await http.post(url, json=message)
    except httpx.HTTPError as exc:
        log.warning("chat response_url unreachable: %s", type(exc).__name__)
        return
    if response.is_error:
        log.warning("chat response_url refused the answer: %s", response.status_code)
