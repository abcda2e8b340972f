"""Chat notifications: the Block Kit notices and follow-ups, posted to a real local webhook.

The webhook is a real HTTP server on 127.0.0.1 (standing in for Slack's incoming webhook), so
the activity's client, timeouts and status handling run as they do in production. Who may
decide comes from the real policy files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.compliance import load_approval_policies
from activities.notifications import (
    ApprovalDecidedInput,
    ApprovalNeededInput,
    ChatNotifications,
    ChatUsers,
    Decision,
    load_chat_users,
)
from api.auth import Authorizer
from config import POLICIES_DIR
from domain.models import ApprovalGiven, ComplianceOutcome, ComplianceResult, Side

WAITING_SINCE = datetime(2025, 3, 4, 14, 30, tzinfo=UTC)


@dataclass
class Answer:
    status: int = 200
    body: str = "ok"
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


class ChatWebhookServer:
    """A real HTTP server on 127.0.0.1 that records JSON posts and answers as told (default 200 ok).

    It runs in a thread of its own, so it answers while the test's event loop awaits the post.
    """

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the name http.server dispatches POST to
                length = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(length))
                with server._lock:
                    answer = server.answers.pop(0) if server.answers else Answer()
                time.sleep(answer.delay)
                with server._arrived:
                    server.posts.append(body)
                    server.paths.append(self.path)
                    server._arrived.notify_all()
                # A client that gave up waiting (a timeout test) has closed the connection.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.send_response(answer.status)
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.send_header("content-type", "text/plain")
                    self.end_headers()
                    self.wfile.write(answer.body.encode())

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep the test output quiet

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # A short poll interval: shutdown() waits up to one interval.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def url(self, path: str = "/services/T000/B000/secret-part") -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def wait_for_posts(self, count: int, within: float = 10) -> list[dict[str, Any]]:
        """Return the posts once `count` have arrived (from any thread); fail after `within`."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.posts) >= count, timeout=within):
                raise AssertionError(f"{len(self.posts)} posts arrived; expected {count}")
            return list(self.posts)

    async def posted(self, count: int, within: float = 10) -> list[dict[str, Any]]:
        """Like `wait_for_posts`, without blocking the event loop (the poster may run on it)."""
        deadline = time.monotonic() + within
        while True:
            with self._lock:
                if len(self.posts) >= count:
                    return list(self.posts)
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.posts)} posts arrived; expected {count}")
            await asyncio.sleep(0.02)

    def __enter__(self) -> ChatWebhookServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def webhook() -> Iterator[ChatWebhookServer]:
    with ChatWebhookServer() as server:
        yield server


def notifier(
    http: httpx.AsyncClient, url: str | None, timeout_seconds: float = 5.0
) -> ChatNotifications:
    return ChatNotifications(
        http,
        url,
        Authorizer(POLICIES_DIR),
        load_chat_users(POLICIES_DIR).chat_ids,
        levels_in_order=lambda fund: (
            load_approval_policies(POLICIES_DIR).for_fund(fund).levels_in_order
        ),
        timeout_seconds=timeout_seconds,
    )


def needed(**overrides: Any) -> ApprovalNeededInput:
    fields: dict[str, Any] = {
        "order_id": "ord_0123456789abcdef0123",
        "fund": "fund-alpha",
        "symbol": "AAPL",
        "side": Side.BUY,
        "quantity": Decimal(50000),
        "notional": Decimal("11512500.00"),
        "currency": "USD",
        "created_by": "alice",
        "level": "desk_head",
        "levels_required": ["desk_head", "cio"],
        "waiting_since": WAITING_SINCE,
        "compliance": [
            ComplianceResult(rule="restricted_list", outcome=ComplianceOutcome.PASS, message="ok"),
            ComplianceResult(
                rule="max_order_notional", outcome=ComplianceOutcome.PASS, message="ok"
            ),
        ],
    }
    fields.update(overrides)
    return ApprovalNeededInput(**fields)


def blocks_of(message: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [b for b in message["blocks"] if b["type"] == kind]


def all_text(message: dict[str, Any]) -> str:
    """Every piece of text in a message, for 'it says X' checks."""
    return json.dumps(message)


async def test_a_notice_has_approve_and_reject_buttons_for_the_order_and_mentions_the_deciders(
    webhook: ChatWebhookServer,
) -> None:
    async with httpx.AsyncClient() as http:
        result = await ActivityEnvironment().run(
            notifier(http, webhook.url()).notify_approval_needed, needed()
        )
    assert result.sent
    [message] = webhook.wait_for_posts(1)
    assert webhook.paths == ["/services/T000/B000/secret-part"]
    [actions] = blocks_of(message, "actions")
    assert actions["block_id"] == "oms-decide:desk_head"
    buttons = {b["action_id"]: b for b in actions["elements"]}
    assert set(buttons) == {"approve", "reject"}
    assert {b["value"] for b in buttons.values()} == {"ord_0123456789abcdef0123"}
    assert all(b["type"] == "button" for b in buttons.values())
    assert (buttons["approve"]["style"], buttons["reject"]["style"]) == ("primary", "danger")
    assert "confirm" in buttons["reject"]  # a rejection ends the order: ask first
    assert blocks_of(message, "header")[0]["text"]["text"] == "Approval needed: desk_head"
    # dana (desk head) and hana (head of trading, who holds desk_head) may decide; alice
    # created it and carl is the next level, not this one.
    text = all_text(message)
    assert "<@U0DANA>" in text and "<@U0HANA>" in text
    assert "<@U0ALICE>" not in text and "<@U0CARL>" not in text
    assert "BUY 50,000 AAPL" in message["text"]
    assert "11,512,500.00 USD" in text
    assert "desk_head (1 of 2)" in text
    assert "2025-03-04 14:30 UTC" in text
    assert "all 2 rules passed" in text


async def test_an_escalated_notice_says_so_and_addresses_the_next_level_up(
    webhook: ChatWebhookServer,
) -> None:
    async with httpx.AsyncClient() as http:
        await ActivityEnvironment().run(
            notifier(http, webhook.url()).notify_approval_needed, needed(escalated=True)
        )
    [message] = webhook.wait_for_posts(1)
    header = blocks_of(message, "header")[0]["text"]["text"]
    assert header.startswith("Escalated: desk_head approval waiting since 2025-03-04 14:30 UTC")
    text = all_text(message)
    assert "*Escalated* to cio: <@U0CARL>" in text
    assert "<@U0DANA>" in text  # who may decide still can
    assert message["text"].startswith("Escalated approval (desk_head)")
    assert len(blocks_of(message, "actions")) == 1


async def test_a_notice_for_a_later_level_leaves_out_those_who_approved_already(
    webhook: ChatWebhookServer,
) -> None:
    approved = [ApprovalGiven(level="desk_head", user="dana", at=WAITING_SINCE)]
    warned = ComplianceResult(
        rule="max_order_notional",
        outcome=ComplianceOutcome.WARN,
        message="notional <b>25,000,000</b> above 20,000,000",
    )
    async with httpx.AsyncClient() as http:
        await ActivityEnvironment().run(
            notifier(http, webhook.url()).notify_approval_needed,
            needed(level="cio", approved=approved, compliance=[warned]),
        )
    [message] = webhook.wait_for_posts(1)
    text = all_text(message)
    assert blocks_of(message, "actions")[0]["block_id"] == "oms-decide:cio"
    assert "<@U0CARL>" in text and "<@U0DANA>" not in text
    assert "desk_head by dana at 2025-03-04 14:30 UTC" in text
    # What people typed is escaped: it cannot become markup or a mention.
    assert "WARN max_order_notional: notional &lt;b&gt;25,000,000&lt;/b&gt;" in text


async def test_the_follow_up_says_who_decided_and_when(webhook: ChatWebhookServer) -> None:
    at = datetime(2025, 3, 4, 15, 2, tzinfo=UTC)
    async with httpx.AsyncClient() as http:
        chat = notifier(http, webhook.url())
        await ActivityEnvironment().run(
            chat.notify_decided,
            ApprovalDecidedInput(
                order_id="ord_0123456789abcdef0123",
                level="desk_head",
                decision=Decision.REJECTED,
                by="dana",
                at=at,
                reason="<!channel> too big",
            ),
        )
        await ActivityEnvironment().run(
            chat.notify_decided,
            ApprovalDecidedInput(
                order_id="ord_0123456789abcdef0123",
                level="cio",
                decision=Decision.EXPIRED,
                at=at,
            ),
        )
    rejected, expired = webhook.wait_for_posts(2)
    assert (
        rejected["text"]
        == "ord_0123456789abcdef0123: desk_head rejected by dana at 2025-03-04 15:02 UTC"
    )
    assert "&lt;!channel&gt; too big" in all_text(rejected)
    assert "<!channel>" not in all_text(rejected)
    assert not blocks_of(rejected, "actions")  # nothing left to click
    assert (
        expired["text"] == "ord_0123456789abcdef0123: cio approval expired at 2025-03-04 15:02 UTC"
    )


async def test_an_amend_notice_shows_the_new_terms_and_its_withdrawal_is_followed_up(
    webhook: ChatWebhookServer,
) -> None:
    approved = [ApprovalGiven(level="desk_head", user="dana", at=WAITING_SINCE)]
    async with httpx.AsyncClient() as http:
        chat = notifier(http, webhook.url())
        await ActivityEnvironment().run(
            chat.notify_approval_needed,
            needed(
                level="cio",
                levels_required=["cio"],
                approved=approved,
                amends_quantity=Decimal(1000),
                amend_requested_by="tom",
            ),
        )
        await ActivityEnvironment().run(
            chat.notify_decided,
            ApprovalDecidedInput(
                order_id="ord_0123456789abcdef0123",
                level="cio",
                decision=Decision.WITHDRAWN,
                at=datetime(2025, 3, 4, 15, 2, tzinfo=UTC),
                reason="the order is filled",
            ),
        )
    notice, withdrawn = webhook.wait_for_posts(2)
    assert blocks_of(notice, "header")[0]["text"]["text"] == "Amend approval needed: cio"
    text = all_text(notice)
    assert "*Amend* of a working order to *BUY 50,000 AAPL* (working now: 1,000)" in text
    assert "asked by *tom*" in text
    # Whoever approved a level of the order stays out of the amend's decision.
    assert "<@U0CARL>" in text and "<@U0DANA>" not in text
    assert withdrawn["text"] == (
        "ord_0123456789abcdef0123: the amend waiting on cio was withdrawn at 2025-03-04 15:02 UTC"
    )
    assert "the order is filled" in all_text(withdrawn)


async def test_without_a_webhook_nothing_is_sent(webhook: ChatWebhookServer) -> None:
    async with httpx.AsyncClient() as http:
        chat = notifier(http, None)
        first = await ActivityEnvironment().run(chat.notify_approval_needed, needed())
        second = await ActivityEnvironment().run(
            chat.notify_decided,
            ApprovalDecidedInput(
                order_id="ord_0123456789abcdef0123",
                level="desk_head",
                decision=Decision.APPROVED,
                by="dana",
                at=WAITING_SINCE,
            ),
        )
    assert (first.sent, second.sent) == (False, False)
    assert first.detail == "no chat webhook configured"
    assert webhook.posts == []


@pytest.mark.parametrize(
    ("answer", "retryable", "error_type"),
    [
        (Answer(500, "rollup_error"), True, "ChatWebhookBusy"),
        (Answer(503, "unavailable"), True, "ChatWebhookBusy"),
        (Answer(429, "rate_limited", headers={"Retry-After": "7"}), True, "ChatWebhookBusy"),
        (Answer(400, "invalid_blocks"), False, "ChatWebhookRefused"),
        (Answer(404, "channel_not_found"), False, "ChatWebhookRefused"),
        (Answer(410, "channel_is_archived"), False, "ChatWebhookRefused"),
    ],
)
async def test_a_failing_webhook_is_retried_and_a_refusing_one_is_not(
    webhook: ChatWebhookServer, answer: Answer, retryable: bool, error_type: str
) -> None:
    webhook.answers.append(answer)
    async with httpx.AsyncClient() as http:
        with pytest.raises(ApplicationError) as raised:
            await ActivityEnvironment().run(
                notifier(http, webhook.url()).notify_approval_needed, needed()
            )
    error = raised.value
    assert (error.type, error.non_retryable) == (error_type, not retryable)
    assert str(answer.status) in error.message and answer.body in error.message
    assert "secret-part" not in error.message  # the webhook URL is a credential
    if answer.status == 429:
        assert error.next_retry_delay == timedelta(seconds=7)


async def test_a_slow_or_unreachable_webhook_raises_a_retryable_error(
    webhook: ChatWebhookServer,
) -> None:
    webhook.answers.append(Answer(delay=1.0))
    async with httpx.AsyncClient() as http:
        with pytest.raises(ApplicationError) as slow:
            await ActivityEnvironment().run(
                notifier(http, webhook.url(), timeout_seconds=0.2).notify_approval_needed,
                needed(),
            )
        # A port nobody listens on: one just bound and let go.
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{probe.getsockname()[1]}/services/T000/B000/secret-part"
        with pytest.raises(ApplicationError) as unreachable:
            await ActivityEnvironment().run(notifier(http, url).notify_approval_needed, needed())
    for error in (slow.value, unreachable.value):
        assert (error.type, error.non_retryable) == ("ChatWebhookUnavailable", False)
        assert "secret-part" not in error.message
    assert "timed out" in slow.value.message


async def test_without_an_authorizer_the_notice_mentions_nobody(
    webhook: ChatWebhookServer,
) -> None:
    async with httpx.AsyncClient() as http:
        chat = ChatNotifications(http, webhook.url(), None, {"dana": "U0DANA"})
        await ActivityEnvironment().run(chat.notify_approval_needed, needed())
    [message] = webhook.wait_for_posts(1)
    assert "<@" not in all_text(message)
    assert "Nobody who may decide this level is linked to chat" in all_text(message)
    assert len(blocks_of(message, "actions")[0]["elements"]) == 2


def test_the_demo_chat_users_link_each_person_once(tmp_path: Path) -> None:
    users = load_chat_users(POLICIES_DIR)
    assert {u: users.user_for(f"U0{u.upper()}") for u in ("alice", "dana", "carl", "hana")} == {
        u: u for u in ("alice", "dana", "carl", "hana")
    }
    assert users.chat_id_for("cora") == "U0CORA"
    assert users.user_for("U0MALLORY") is None
    assert load_chat_users(tmp_path).user_for("U0ALICE") is None  # no file: nobody linked
    with pytest.raises(ValueError, match="dana has two chat ids"):
        ChatUsers({"U1": "dana", "U2": "dana"})
