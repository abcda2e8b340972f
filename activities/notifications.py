"""Approval notices in chat: a Slack-compatible Block Kit message when an order waits on a level.

The notice carries Approve and Reject buttons (handled by `POST /chat/slack/actions`) and
mentions the people who may decide the level; a follow-up says who decided it and when, so a
button left on an old notice is never the only word. Messages go to one incoming webhook
(`OMS_CHAT_WEBHOOK_URL`); with none configured nothing is sent.

The webhook URL is a credential (whoever has it may post to the channel), so it never appears
in a log line or an error that the workflow's history would keep.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import BaseModel, Field
from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ConfirmObject,
    ContextBlock,
    HeaderBlock,
    MarkdownTextObject,
    SectionBlock,
)
from temporalio import activity
from temporalio.exceptions import ApplicationError

from domain.models import ApprovalGiven, ComplianceOutcome, ComplianceResult, Side

if TYPE_CHECKING:
    from api.auth import Authorizer

log = logging.getLogger(__name__)

CHAT_USERS_FILE = "chat_users.toml"
APPROVE_ACTION = "approve"
REJECT_ACTION = "reject"
# The actions block's id names the level the notice asked about, so a click on an old notice
# can be told apart from a click on the current one (see api/routers/chat.py).
DECIDE_BLOCK_PREFIX = "oms-decide:"

# Block Kit's limits (characters): a header, a section's text, one section field.
_HEADER_MAX = 150
_SECTION_MAX = 3000
_FIELD_MAX = 2000
# How much of a webhook's refusal is worth keeping in the error (it is usually one word).
_REFUSAL_BODY_MAX = 200


class ChatUsers:
    """Who is who in chat: each chat (Slack) user id and the OMS user it acts as, one to one."""

    def __init__(self, by_chat_id: Mapping[str, str]) -> None:
        """Build the directory.

        Raises:
            ValueError: An id or user is empty, or one OMS user has two chat ids (a mention
                could then reach the wrong account).
        """
        self._users: dict[str, str] = {}
        self._chat_ids: dict[str, str] = {}
        for chat_id, user in by_chat_id.items():
            if not chat_id.strip() or not isinstance(user, str) or not user.strip():
                raise ValueError(f"chat user {chat_id!r} = {user!r}: both must be non-empty")
            if user in self._chat_ids:
                raise ValueError(
                    f"{user} has two chat ids ({self._chat_ids[user]}, {chat_id}); keep one"
                )
            self._users[chat_id] = user
            self._chat_ids[user] = chat_id

    def user_for(self, chat_id: str) -> str | None:
        """Return the OMS user that `chat_id` acts as, or None when it is not linked."""
        return self._users.get(chat_id)

    def chat_id_for(self, user: str) -> str | None:
        """Return the chat id of OMS `user`, or None when they have none."""
        return self._chat_ids.get(user)

    @property
    def chat_ids(self) -> Mapping[str, str]:
        """OMS user -> chat id, for `ChatNotifications`."""
        return dict(self._chat_ids)


def load_chat_users(policies_dir: Path) -> ChatUsers:
    """Read `policies/chat_users.toml` (its `[slack]` table); a missing file links nobody."""
    path = policies_dir / CHAT_USERS_FILE
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        return ChatUsers({})
    table = data.get("slack", {})
    if not isinstance(table, dict):
        raise ValueError(f"{path}: [slack] must be a table of chat id = OMS user")
    return ChatUsers(table)


class Decision(StrEnum):
    """How a level ended."""

    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"  # an amend waiting for the level no longer applies


class ApprovalNeededInput(BaseModel):
    """An order waits on an approval level (or still waits, escalated)."""

    order_id: str
    fund: str
    symbol: str
    side: Side
    quantity: Decimal
    notional: Decimal | None = None
    currency: str | None = None
    created_by: str
    level: str = Field(description="The level the order waits on.")
    levels_required: list[str] = Field(description="Every level the order needs, in order.")
    approved: list[ApprovalGiven] = Field(
        default_factory=list, description="The levels approved so far."
    )
    escalated: bool = Field(default=False, description="The level has waited too long.")
    escalate_to: str | None = Field(
        default=None,
        description="The level whose holders an escalated notice addresses; none: the next "
        "level up in the fund's approval matrix.",
    )
    waiting_since: datetime
    compliance: list[ComplianceResult] = Field(default_factory=list)
    amends_quantity: Decimal | None = Field(
        default=None,
        description="An amend of an order working at a venue waits on the level: the quantity "
        "working now (`quantity` and `notional` are the amend's).",
    )
    amend_requested_by: str | None = None


class ApprovalDecidedInput(BaseModel):
    """A level an earlier notice asked about has been decided, or has expired."""

    order_id: str
    level: str
    decision: Decision
    by: str | None = Field(default=None, description="Who decided; none when it expired.")
    at: datetime
    reason: str = Field(default="", description="The rejection's reason or the approval's comment.")


class NotificationResult(BaseModel):
    """Whether the message went out, and if not, why not."""

    sent: bool
    detail: str = ""


# --- Message building (pure; the chat API reuses the decided message) ---------------------


def escape(text: str) -> str:
    """Escape the three characters Slack's mrkdwn treats as control characters.

    Text that people typed (a comment, a reason) must not become a mention such as <!channel>.
    """
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, limit: int) -> str:
    """Shorten `text` to `limit` characters, marking the cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_time(at: datetime) -> str:
    """Render a time in UTC for people; plain text, so every Slack-compatible client shows it."""
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def format_trade(side: str, quantity: Decimal, symbol: str) -> str:
    """Render e.g. 'BUY 1,000 AAPL'."""
    return f"{side.replace('_', ' ').upper()} {quantity.normalize():,f} {escape(symbol)}"


def format_notional(notional: Decimal | None, currency: str | None) -> str:
    """Render e.g. '230,250.00 USD', or 'unknown'."""
    if notional is None:
        return "unknown"
    return f"{notional:,.2f} {escape(currency or '')}".strip()


def mention(chat_id: str) -> str:
    return f"<@{chat_id}>"


def compliance_summary(results: Iterable[ComplianceResult]) -> str:
    """Summarise rule results: the ones that did not pass, else how many passed."""
    results = list(results)
    if not results:
        return "no rule results"
    flagged = [r for r in results if r.outcome is not ComplianceOutcome.PASS]
    if not flagged:
        return f"all {len(results)} rules passed"
    return "\n".join(
        f"{r.outcome.value.upper()} {escape(r.rule)}: {escape(r.message)}" for r in flagged
    )


def _approved_so_far(approved: Iterable[ApprovalGiven]) -> str:
    lines = [f"{escape(a.level)} by {escape(a.user)} at {format_time(a.at)}" for a in approved]
    return "\n".join(lines) or "none yet"


def _decide_block(order_id: str, level: str) -> ActionsBlock:
    return ActionsBlock(
        block_id=f"{DECIDE_BLOCK_PREFIX}{level}",
        elements=[
            ButtonElement(
                text="Approve", action_id=APPROVE_ACTION, value=order_id, style="primary"
            ),
            ButtonElement(
                text="Reject",
                action_id=REJECT_ACTION,
                value=order_id,
                style="danger",
                confirm=ConfirmObject(
                    title="Reject this order?",
                    text=clip(
                        'It ends as approval_rejected, with the reason "rejected from chat by" '
                        f"and your name. To give a reason, type `/oms reject {order_id} REASON`.",
                        300,
                    ),
                    confirm="Reject",
                    deny="Cancel",
                ),
            ),
        ],
    )


def _message(text: str, blocks: list[Block]) -> dict[str, Any]:
    """A webhook / response body: `text` for notifications and clients without Block Kit."""
    return {"text": text, "blocks": [block.to_dict() for block in blocks]}


def approval_needed_message(
    input: ApprovalNeededInput, deciders: Iterable[str], escalated_to: Iterable[str] = ()
) -> dict[str, Any]:
    """Build the notice: the order, its level, who may decide (as mentions), and two buttons.

    Args:
        input: The order and the level it waits on.
        deciders: Chat ids of the people who may decide the level.
        escalated_to: Chat ids of the people an escalated notice also addresses.
    """
    may_decide = [mention(c) for c in deciders]
    addressed_up = [mention(c) for c in escalated_to]
    trade = format_trade(input.side.value, input.quantity, input.symbol)
    position = (
        input.levels_required.index(input.level) + 1
        if input.level in input.levels_required
        else None
    )
    of_levels = f" ({position} of {len(input.levels_required)})" if position else ""
    if input.escalated:
        header = (
            f"Escalated: {input.level} approval waiting since {format_time(input.waiting_since)}"
        )
        if input.escalate_to is None:
            addressed = f"*Escalated*: there is no level above {escape(input.level)}."
        elif addressed_up:
            addressed = f"*Escalated* to {escape(input.escalate_to)}: {' '.join(addressed_up)}"
        else:
            addressed = (
                f"*Escalated* to {escape(input.escalate_to)}: nobody there is linked to chat."
            )
        who = f"{addressed}\nMay decide {escape(input.level)}: {' '.join(may_decide) or 'nobody linked to chat'}"
    else:
        header = f"Approval needed: {input.level}"
        who = (
            f"May decide: {' '.join(may_decide)}"
            if may_decide
            else "Nobody who may decide this level is linked to chat (policies/chat_users.toml)."
        )
    summary = (
        f"*{trade}* in *{escape(input.fund)}*, notional *{format_notional(input.notional, input.currency)}*, "
        f"created by *{escape(input.created_by)}*\nOrder `{input.order_id}`"
    )
    if input.amends_quantity is not None:
        header = f"Amend {header[0].lower()}{header[1:]}"
        summary = (
            f"*Amend* of a working order to *{trade}* (working now: {input.amends_quantity:,}), "
            f"asked by *{escape(input.amend_requested_by or '')}*\n{summary}"
        )
    fields = [
        f"*Level*\n{escape(input.level)}{of_levels}",
        f"*Approved so far*\n{_approved_so_far(input.approved)}",
        f"*Waiting since*\n{format_time(input.waiting_since)}",
        f"*Compliance*\n{compliance_summary(input.compliance)}",
    ]
    blocks: list[Block] = [
        HeaderBlock(text=clip(header, _HEADER_MAX)),
        SectionBlock(
            text=MarkdownTextObject(text=clip(summary, _SECTION_MAX)),
            fields=[MarkdownTextObject(text=clip(f, _FIELD_MAX)) for f in fields],
        ),
        SectionBlock(text=MarkdownTextObject(text=clip(who, _SECTION_MAX))),
        _decide_block(input.order_id, input.level),
        ContextBlock(
            elements=[
                MarkdownTextObject(
                    text=f"Or type `/oms approve {input.order_id} [comment]` or "
                    f"`/oms reject {input.order_id} reason`."
                )
            ]
        ),
    ]
    prefix = "Escalated approval" if input.escalated else "Approval needed"
    text = (
        f"{prefix} ({input.level}) for {input.order_id}: {trade} in {escape(input.fund)}. "
        f"{' '.join(addressed_up + may_decide)}"
    ).strip()
    return _message(text, blocks)


_DECISION_VERB = {
    Decision.APPROVED: "approved",
    Decision.REJECTED: "rejected",
    Decision.EXPIRED: "expired",
    Decision.WITHDRAWN: "withdrawn",
}


def decided_message(input: ApprovalDecidedInput) -> dict[str, Any]:
    """Build the follow-up to a notice: who decided its level, and when."""
    verb = _DECISION_VERB[input.decision]
    when = format_time(input.at)
    if input.decision is Decision.EXPIRED:
        line = f"The *{escape(input.level)}* approval of `{input.order_id}` *expired* at {when}: nobody decided in time."
        text = f"{input.order_id}: {input.level} approval expired at {when}"
    elif input.decision is Decision.WITHDRAWN:
        line = f"The amend of `{input.order_id}` waiting on *{escape(input.level)}* was *withdrawn* at {when}."
        text = f"{input.order_id}: the amend waiting on {input.level} was withdrawn at {when}"
    else:
        by = escape(input.by or "someone")
        line = f"The *{escape(input.level)}* level of `{input.order_id}` was *{verb}* by *{by}* at {when}."
        text = f"{input.order_id}: {input.level} {verb} by {by} at {when}"
    if input.reason:
        label = "Comment" if input.decision is Decision.APPROVED else "Reason"
        line += f"\n>{label}: {escape(input.reason)}"
    blocks: list[Block] = [
        HeaderBlock(text=clip(f"{input.level} {verb}", _HEADER_MAX)),
        SectionBlock(text=MarkdownTextObject(text=clip(line, _SECTION_MAX))),
        ContextBlock(
            elements=[
                MarkdownTextObject(
                    text="Buttons on the earlier notice for this level no longer decide anything."
                )
            ]
        ),
    ]
    return _message(text, blocks)


# --- The activities ------------------------------------------------------------------------


def _retry_after(response: httpx.Response) -> timedelta | None:
    """Return the wait a 429 asks for (Retry-After in seconds), if it names one."""
    value = response.headers.get("retry-after", "")
    return timedelta(seconds=int(value)) if value.isdigit() else None


class ChatNotifications:
    """Post approval notices and their follow-ups to the chat webhook.

    Retries are the workflow's: a webhook that is down, slow, rate-limited (429) or failing
    (5xx) raises a retryable error; one that refuses the message (another 4xx) raises a
    non-retryable `ChatWebhookRefused`, since sending it again would be refused again. An
    incoming webhook has no idempotency key, so a retry after a timeout can post twice; the
    follow-up makes a duplicate harmless.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        webhook_url: str | None,
        authorizer: Authorizer | None,
        chat_users: Mapping[str, str],
        levels_in_order: Callable[[str], Sequence[str]] | None = None,
        timeout_seconds: float = 5.0,
    ) -> None:
        """Wire the notifier.

        Args:
            http: The client to post with.
            webhook_url: The incoming webhook; None or empty: notices are not sent.
            authorizer: Tells who may decide a level in a fund; None mentions nobody.
            chat_users: OMS user -> chat (Slack) user id, for mentions.
            levels_in_order: Returns a fund's approval levels in order, to find "the next
                level up" that an escalated notice addresses; None: there is none.
            timeout_seconds: How long one post may take.
        """
        self._http = http
        self._webhook_url = webhook_url or None
        self._authorizer = authorizer
        self._chat_users = dict(chat_users)
        self._levels_in_order = levels_in_order
        self._timeout = timeout_seconds

    def _people_who_may_decide(self, fund: str, level: str, exclude: Iterable[str]) -> list[str]:
        """Return the chat ids of those holding `level` in `fund`, less those in `exclude`."""
        if self._authorizer is None:
            return []
        excluded = set(exclude)
        holders = self._authorizer.users_with(fund, "approvals", level)
        chat_ids = (self._chat_users.get(u) for u in sorted(set(holders) - excluded))
        return [c for c in chat_ids if c]

    def _next_level_up(self, fund: str, level: str) -> str | None:
        if self._levels_in_order is None:
            return None
        try:
            levels = list(self._levels_in_order(fund))
        except (OSError, ValueError) as exc:
            # A broken policy file must not hold the notice back; it goes without the level up.
            log.warning("approval levels of %s unreadable: %s", fund, exc)
            return None
        if level in levels and levels.index(level) + 1 < len(levels):
            return levels[levels.index(level) + 1]
        return None

    @activity.defn
    async def notify_approval_needed(self, input: ApprovalNeededInput) -> NotificationResult:
        """Post the notice that the order waits on `input.level`, with Approve and Reject buttons."""
        # The order's creator and its earlier approvers may not decide this level (SoD).
        excluded = [input.created_by, *(a.user for a in input.approved)]
        deciders = self._people_who_may_decide(input.fund, input.level, excluded)
        escalated_to: list[str] = []
        if input.escalated:
            target = input.escalate_to or self._next_level_up(input.fund, input.level)
            if target is not None:
                input = input.model_copy(update={"escalate_to": target})
                escalated_to = [
                    c
                    for c in self._people_who_may_decide(input.fund, target, excluded)
                    if c not in deciders
                ]
        return await self._post(approval_needed_message(input, deciders, escalated_to))

    @activity.defn
    async def notify_decided(self, input: ApprovalDecidedInput) -> NotificationResult:
        """Post the follow-up: the level was approved, rejected or expired, by whom and when."""
        return await self._post(decided_message(input))

    async def _post(self, message: dict[str, Any]) -> NotificationResult:
        if self._webhook_url is None:
            log.debug("no chat webhook configured; not sending %s", message["text"])
            return NotificationResult(sent=False, detail="no chat webhook configured")
        try:
            response = await self._http.post(self._webhook_url, json=message, timeout=self._timeout)
        except httpx.TimeoutException as exc:
            # Only the exception's type: its text may carry the webhook's URL.
            raise ApplicationError(
                f"chat webhook timed out ({type(exc).__name__})", type="ChatWebhookUnavailable"
            ) from None
        except httpx.TransportError as exc:
            raise ApplicationError(
                f"chat webhook unreachable ({type(exc).__name__})", type="ChatWebhookUnavailable"
            ) from None
        status = response.status_code
        if response.is_success:
            return NotificationResult(sent=True)
        body = clip(response.text.strip(), _REFUSAL_BODY_MAX)
        if status == 429 or status >= 500:
            raise ApplicationError(
                f"chat webhook answered {status} {body}",
                type="ChatWebhookBusy",
                next_retry_delay=_retry_after(response),
            )
        raise ApplicationError(
            f"chat webhook refused the message: {status} {body}",
            type="ChatWebhookRefused",
            non_retryable=True,
        )
