"""Chat-ops helpers: Slack request verification, form parsing, commands, and the replies' text.

The router (api/routers/chat.py) does the talking to the OMS; this module holds what can be
said without it, so it can be tested without a server.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

from slack_sdk.models.blocks import Block, ContextBlock, MarkdownTextObject, SectionBlock
from slack_sdk.signature import Clock, SignatureVerifier

from activities.notifications import (
    ApprovalDecidedInput,
    Decision,
    clip,
    compliance_summary,
    escape,
    format_notional,
    format_time,
    format_trade,
)
from api.errors import ApiError
from api.schemas import OrderPublic
from domain.models import ApprovalGiven, OrderStatus

# Slack refuses to act on a request whose timestamp is further than this from now, and so do
# we: a captured request cannot be replayed later.
MAX_CLOCK_SKEW_SECONDS = 5 * 60
# Slack's requests are a few kilobytes (a button click carries the message it came from).
MAX_BODY_BYTES = 256 * 1024
_SECTION_MAX = 3000

USAGE = (
    "Usage:\n"
    "• `/oms approve ORDER_ID [comment]`: approve the level the order waits on\n"
    "• `/oms reject ORDER_ID reason`: reject it (a reason is required)\n"
    "• `/oms show ORDER_ID`: the order, its approvals and compliance results\n"
    "• `/oms inbox`: the orders waiting on a level you may approve"
)


class _FixedClock(Clock):
    """The verifier's clock, set to the instant the request is judged at (tests pass theirs)."""

    def __init__(self, now: float) -> None:
        self._now = now

    def now(self) -> float:
        return self._now


def _unverified(message: str) -> ApiError:
    return ApiError(401, "invalid_signature", message)


def verify_slack_request(
    signing_secret: str,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    now: float | None = None,
) -> None:
    """Check a request is Slack's, as Slack specifies (v0 HMAC-SHA256 of `v0:ts:body`).

    The signature is computed and compared (in constant time) by the Slack SDK's
    `SignatureVerifier`; the timestamp is checked first so a stale request gets a reason of its
    own.

    Args:
        signing_secret: The Slack app's signing secret.
        body: The raw request body, exactly as received.
        timestamp: The `X-Slack-Request-Timestamp` header.
        signature: The `X-Slack-Signature` header.
        now: The current Unix time (default: the clock's).

    Raises:
        ApiError: 401 `invalid_signature` when a header is missing, the timestamp is more than
            five minutes away, or the signature does not match.
    """
    if not timestamp or not signature:
        raise _unverified("missing X-Slack-Request-Timestamp or X-Slack-Signature")
    if not (timestamp.isascii() and timestamp.isdigit()):
        raise _unverified("X-Slack-Request-Timestamp is not a Unix time")
    now = time.time() if now is None else now
    if abs(now - int(timestamp)) > MAX_CLOCK_SKEW_SECONDS:
        raise _unverified("request timestamp is more than 5 minutes from now")
    verifier = SignatureVerifier(signing_secret, clock=_FixedClock(now))
    try:
        valid = verifier.is_valid(body=body, timestamp=timestamp, signature=signature)
    except (ValueError, TypeError):
        # A body that is not UTF-8, or a signature with non-ASCII characters: not Slack's.
        valid = False
    if not valid:
        raise _unverified("signature does not match")


def parse_form(body: bytes) -> dict[str, str]:
    """Return a form-encoded body's fields (the first value of each).

    Raises:
        ApiError: 400 when the body is not UTF-8.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid", "the body is not UTF-8 form data") from exc
    return {key: values[0] for key, values in parse_qs(text, keep_blank_values=True).items()}


def unescape(text: str) -> str:
    """Undo Slack's escaping of `&`, `<` and `>` in what a person typed."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


@dataclass(frozen=True)
class Command:
    """A parsed `/oms` command: the verb, the order it names, and the free text after it."""

    verb: str
    order_id: str = ""
    text: str = ""


def parse_command(text: str) -> Command:
    """Split `/oms` text: `VERB [ORDER_ID [free text]]` (the free text keeps its spaces)."""
    parts = unescape(text).strip().split(maxsplit=2)
    if not parts:
        return Command("help")
    verb = parts[0].lower()
    # People paste ids from messages where they are set as `code`.
    order_id = parts[1].strip("`'\"") if len(parts) > 1 else ""
    return Command(verb, order_id, parts[2].strip() if len(parts) > 2 else "")


def reply(
    text: str,
    blocks: Sequence[Block] = (),
    *,
    in_channel: bool = False,
    replace_original: bool | None = None,
) -> dict[str, Any]:
    """Build a response body: ephemeral (only the caller sees it) unless `in_channel`.

    `text` is always set: it is what clients without Block Kit (Mattermost) and notifications
    show.
    """
    message: dict[str, Any] = {
        "response_type": "in_channel" if in_channel else "ephemeral",
        "text": text,
    }
    if blocks:
        message["blocks"] = [block.to_dict() for block in blocks]
    if replace_original is not None:
        message["replace_original"] = replace_original
    return message


def section(text: str) -> SectionBlock:
    return SectionBlock(text=MarkdownTextObject(text=clip(text, _SECTION_MAX)))


def context(text: str) -> ContextBlock:
    return ContextBlock(elements=[MarkdownTextObject(text=clip(text, _SECTION_MAX))])


def trade_of(order: OrderPublic) -> str:
    """Render the order's trade, e.g. 'BUY 1,000 AAPL in fund-alpha'."""
    return f"{format_trade(order.side.value, order.quantity, order.symbol)} in {escape(order.fund)}"


def approval_by(order: OrderPublic, user: str) -> ApprovalGiven | None:
    """Return the approval `user` gave the order (a person approves at most one level)."""
    given = [*order.approvals.given]
    if order.amendment is not None:
        given += order.amendment.approvals.given
    return next((g for g in reversed(given) if g.user == user), None)


def next_step(order: OrderPublic) -> str:
    """Say what the order waits for now, after a decision."""
    amendment = order.amendment
    if amendment is not None and amendment.approvals.current_level:
        return f"The amend now waits on *{escape(amendment.approvals.current_level)}*."
    if amendment is not None:
        return "Every level has approved the amend: it goes to the venue as a replace."
    if order.status is OrderStatus.PENDING_APPROVAL and order.approvals.current_level:
        return f"Now waiting on *{escape(order.approvals.current_level)}*."
    if order.status is OrderStatus.APPROVED:
        return "Every level has approved: a trader may release it."
    return f"The order is now *{order.status.value}*."


def approved_reply(order: OrderPublic, user: str, *, from_button: bool) -> dict[str, Any]:
    """The in-channel answer to an approval: who approved which level; replaces a clicked notice."""
    given = approval_by(order, user)
    level = given.level if given else "its level"
    decided = ApprovalDecidedInput(
        order_id=order.order_id,
        level=level,
        decision=Decision.APPROVED,
        by=user,
        at=given.at if given else order.updated_at,
        reason=given.comment if given else "",
    )
    return _decided_reply(order, decided, from_button=from_button)


def rejected_reply(
    order: OrderPublic, user: str, level: str | None, reason: str, *, from_button: bool
) -> dict[str, Any]:
    """The in-channel answer to a rejection; replaces a clicked notice."""
    decided = ApprovalDecidedInput(
        order_id=order.order_id,
        level=level or "approval",
        decision=Decision.REJECTED,
        by=user,
        at=order.updated_at,
        reason=reason,
    )
    return _decided_reply(order, decided, from_button=from_button)


def _decided_reply(
    order: OrderPublic, decided: ApprovalDecidedInput, *, from_button: bool
) -> dict[str, Any]:
    verb = decided.decision.value
    when = format_time(decided.at)
    line = (
        f"*{escape(decided.by or '')}* {verb} the *{escape(decided.level)}* level of "
        f"`{order.order_id}` ({trade_of(order)}) at {when}."
    )
    if decided.reason:
        label = "Comment" if decided.decision is Decision.APPROVED else "Reason"
        line += f"\n>{label}: {escape(decided.reason)}"
    text = f"{decided.by} {verb} {decided.level} of {order.order_id} at {when}"
    blocks: list[Block] = [section(line), context(next_step(order))]
    return reply(text, blocks, in_channel=True, replace_original=True if from_button else None)


def who_decided(order: OrderPublic, level: str | None = None) -> str:
    """Say who decided the order's approval (the `level` asked about, if it was), and when."""
    given = {g.level: g for g in order.approvals.given}
    if level is not None and level in given:
        g = given[level]
        line = f"The *{escape(level)}* level of `{order.order_id}` was already approved by *{escape(g.user)}* at {format_time(g.at)}."
        return f"{line} {next_step(order)}"
    if order.status is OrderStatus.APPROVAL_REJECTED:
        return (
            f"`{order.order_id}` was already rejected by *{escape(order.status_actor)}* at "
            f"{format_time(order.updated_at)}: {escape(order.status_reason)}"
        )
    if order.status is OrderStatus.APPROVAL_EXPIRED:
        return f"`{order.order_id}`'s approval expired at {format_time(order.updated_at)}: nobody decided in time."
    approvals = "; ".join(
        f"{escape(g.level)} by {escape(g.user)} at {format_time(g.at)}"
        for g in order.approvals.given
    )
    waiting = (
        f" It waits on *{escape(order.approvals.current_level)}*."
        if order.status is OrderStatus.PENDING_APPROVAL and order.approvals.current_level
        else ""
    )
    return (
        f"`{order.order_id}` is *{order.status.value}*"
        + (f" (approved: {approvals})." if approvals else ".")
        + waiting
    )


def already_decided_reply(order: OrderPublic, level: str | None) -> dict[str, Any]:
    """The private answer to a click on a notice whose level has been decided."""
    line = who_decided(order, level)
    return reply(_plain(line), [section(line)], replace_original=False)


def order_reply(order: OrderPublic) -> dict[str, Any]:
    """The private answer to `/oms show`: the order, its approvals and compliance."""
    given = {g.level: g for g in order.approvals.given}
    levels = [
        f"{escape(lvl)}: approved by {escape(given[lvl].user)} at {format_time(given[lvl].at)}"
        if lvl in given
        else f"{escape(lvl)}: waiting"
        for lvl in order.approvals.required
    ]
    price = f" limit {order.limit_price.normalize():,f}" if order.limit_price is not None else ""
    head = (
        f"*{trade_of(order)}*{price}, status *{order.status.value}*\n"
        f"Order `{order.order_id}` created by *{escape(order.created_by)}* at {format_time(order.created_at)}"
    )
    fields = [
        f"*Notional*\n{format_notional(order.notional, order.currency)}",
        f"*Approvals*\n{chr(10).join(levels) or 'none required'}",
        f"*Compliance*\n{compliance_summary(order.compliance)}",
        f"*Filled*\n{_quantity(order.filled_quantity)} of {_quantity(order.quantity)}",
    ]
    block = SectionBlock(
        text=MarkdownTextObject(text=clip(head, _SECTION_MAX)),
        fields=[MarkdownTextObject(text=clip(f, 2000)) for f in fields],
    )
    blocks: list[Block] = [block]
    if order.status_reason:
        blocks.append(context(f"{escape(order.status_actor)}: {escape(order.status_reason)}"))
    return reply(f"{order.order_id}: {order.status.value}", blocks)


def _quantity(value: Decimal) -> str:
    return f"{value.normalize():,f}"


@dataclass(frozen=True)
class InboxLine:
    """One order waiting on a level, as `/oms inbox` lists it."""

    order_id: str
    trade: str
    fund: str
    notional: str
    created_by: str
    level: str
    waiting_since: str
    escalated: bool
    may_decide: bool


def inbox_reply(lines: Iterable[InboxLine], more: int, more_is_lower_bound: bool) -> dict[str, Any]:
    """The private answer to `/oms inbox`: what waits on the caller, and how many more."""
    lines = list(lines)
    if not lines:
        return reply("Nothing waits on your approval.")
    rows = [
        f"• `{line.order_id}` {line.trade} in {escape(line.fund)}, {line.notional}, by "
        f"{escape(line.created_by)}: *{escape(line.level)}* since {line.waiting_since}"
        + (
            " (escalated to you, for information)"
            if not line.may_decide
            else " (escalated)"
            if line.escalated
            else ""
        )
        for line in lines
    ]
    blocks: list[Block] = [section("\n".join(rows))]
    if more:
        blocks.append(context(f"and {more}{'+' if more_is_lower_bound else ''} more"))
    blocks.append(
        context("Decide with `/oms approve ORDER_ID [comment]` or `/oms reject ORDER_ID reason`.")
    )
    count = f"{len(lines) + more}{'+' if more_is_lower_bound else ''}"
    return reply(f"{count} orders wait on your approval", blocks)


_ORDER_ID_ECHO = 40


def refusal_reply(error: ApiError, order_id: str = "") -> dict[str, Any]:
    """The private answer to a refused request: what the OMS said, in words for people."""
    if error.status == 404:
        # Echo a typed id back only as far as an id goes: it is whatever someone typed.
        shown = escape(order_id[:_ORDER_ID_ECHO]) + (
            "..." if len(order_id) > _ORDER_ID_ECHO else ""
        )
        text = f"No order {shown} that you can see." if order_id else "Not found."
    elif error.status == 403:
        text = f"Refused: {error.message}."
    elif error.status == 503:
        text = "The OMS is busy or unavailable right now; try again in a moment."
    else:
        text = f"Not done: {error.message}."
    return reply(text, [section(escape(text))])


def unlinked_reply(chat_id: str) -> dict[str, Any]:
    """The private answer to someone whose chat id is not linked to an OMS user."""
    text = (
        f"Your chat user {chat_id} is not linked to an OMS user, so the OMS cannot act for you. "
        "Ask an administrator to add it to policies/chat_users.toml."
    )
    return reply(text, [section(escape(text))])


def usage_reply(problem: str = "") -> dict[str, Any]:
    """The private answer to a command the OMS does not understand."""
    text = f"{problem}\n{USAGE}".strip()
    return reply(_plain(text), [section(text)])


def _plain(mrkdwn: str) -> str:
    """Drop mrkdwn's emphasis marks, for the plain-text fallback."""
    return mrkdwn.replace("*", "")
