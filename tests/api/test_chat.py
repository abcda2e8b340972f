"""Chat-ops over HTTP, with requests signed exactly as Slack signs them, against the real stack.

The signature is computed here with hashlib/hmac, independently of the Slack SDK the API
verifies with; Slack's own worked example pins both to the specification.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

import cli
from api.chat import verify_slack_request
from api.errors import ApiError
from config import Settings
from tests.activities.test_notifications import ChatWebhookServer
from tests.api.conftest import Stack
from tests.api.test_amend_api import close, working
from tests.api.test_orders_api import create

# Slack's "Verifying requests from Slack" worked example, byte for byte. (Its token is the
# short `xyzz0WbapA4vBCDEFasx0q6G`: with any other the published signature does not match.)
EXAMPLE_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
EXAMPLE_TIMESTAMP = "1531420618"
EXAMPLE_BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G"
    b"&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar"
    b"&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
    b"&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
    b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
EXAMPLE_SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"

# 11,512,500 USD: desk_head, then cio.
BIG: dict[str, Any] = {
    "quantity": 50000,
    "allocations": [{"account": "alpha-main", "quantity": 50000}],
}


def slack_signature(secret: str, timestamp: str, body: bytes) -> str:
    """Sign as Slack does: v0= hex HMAC-SHA256 of b'v0:' + timestamp + b':' + the raw body."""
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def encode(form: dict[str, str]) -> bytes:
    return urlencode(form).encode()


async def post_signed(
    stack: Stack,
    path: str,
    body: bytes,
    *,
    timestamp: str | None = None,
    secret: str | None = None,
    signature: str | None = None,
) -> httpx.Response:
    timestamp = timestamp or str(int(time.time()))
    headers = {
        "content-type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": signature
        or slack_signature(secret or stack.settings.slack_signing_secret, timestamp, body),
    }
    return await stack.http.post(path, content=body, headers=headers)


def command_body(chat_id: str, text: str) -> bytes:
    """A slash command as Slack posts it (form-encoded, these fields, this order)."""
    return encode(
        {
            "token": "deprecated-verification-token",
            "team_id": "T0OMS",
            "team_domain": "oms-demo",
            "channel_id": "C0DESK",
            "channel_name": "trading-desk",
            "user_id": chat_id,
            "user_name": chat_id.lower(),
            "command": "/oms",
            "text": text,
            "api_app_id": "A0OMS",
            "response_url": "https://chat.invalid/commands/T0OMS/1/x",
            "trigger_id": "1.2.3",
        }
    )


async def command(stack: Stack, chat_id: str, text: str) -> dict[str, Any]:
    response = await post_signed(stack, "/chat/slack/commands", command_body(chat_id, text))
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def click_body(chat_id: str, action_id: str, order_id: str, level: str, response_url: str) -> bytes:
    """A button click as Slack posts it: the block_actions payload as JSON in `payload`."""
    payload = {
        "type": "block_actions",
        "user": {"id": chat_id, "username": chat_id.lower(), "team_id": "T0OMS"},
        "api_app_id": "A0OMS",
        "team": {"id": "T0OMS", "domain": "oms-demo"},
        "channel": {"id": "C0DESK", "name": "trading-desk"},
        "container": {"type": "message", "message_ts": "1700000000.000100", "channel_id": "C0DESK"},
        "trigger_id": "1.2.3",
        "response_url": response_url,
        "state": {"values": {}},
        "actions": [
            {
                "type": "button",
                "action_id": action_id,
                "block_id": f"oms-decide:{level}",
                "value": order_id,
                "text": {"type": "plain_text", "text": action_id.title()},
                "action_ts": "1700000001.000200",
            }
        ],
    }
    return encode({"payload": json.dumps(payload)})


async def click(
    stack: Stack, chat_id: str, action_id: str, order_id: str, level: str, response_url: str
) -> dict[str, Any]:
    body = click_body(chat_id, action_id, order_id, level, response_url)
    response = await post_signed(stack, "/chat/slack/actions", body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def order_as(stack: Stack, user: str, order_id: str) -> dict[str, Any]:
    response = await stack.call(user, "GET", f"/orders/{order_id}")
    assert response.status_code == 200, response.text
    order: dict[str, Any] = response.json()
    return order


async def assert_untouched(stack: Stack, order_id: str) -> None:
    order = await order_as(stack, "alice", order_id)
    assert (order["status"], order["approvals"]["given"]) == ("pending_approval", [])


def text_of(answer: dict[str, Any]) -> str:
    return json.dumps(answer)


@pytest.fixture
def response_urls() -> Iterator[ChatWebhookServer]:
    with ChatWebhookServer() as server:
        yield server


# --- Verification ----------------------------------------------------------------------------


def test_slacks_worked_example() -> None:
    assert slack_signature(EXAMPLE_SECRET, EXAMPLE_TIMESTAMP, EXAMPLE_BODY) == EXAMPLE_SIGNATURE
    at = int(EXAMPLE_TIMESTAMP) + 10
    verify_slack_request(EXAMPLE_SECRET, EXAMPLE_BODY, EXAMPLE_TIMESTAMP, EXAMPLE_SIGNATURE, at)
    refusals = [
        (EXAMPLE_BODY.replace(b"text=", b"text=approve"), EXAMPLE_SIGNATURE, at),
        (EXAMPLE_BODY, EXAMPLE_SIGNATURE.replace("a2114", "a2115"), at),
        (EXAMPLE_BODY, EXAMPLE_SIGNATURE, int(EXAMPLE_TIMESTAMP) + 301),
        (EXAMPLE_BODY, EXAMPLE_SIGNATURE, int(EXAMPLE_TIMESTAMP) - 301),
        (EXAMPLE_BODY, "v0=é", at),
    ]
    for body, signature, now in refusals:
        with pytest.raises(ApiError) as refused:
            verify_slack_request(EXAMPLE_SECRET, body, EXAMPLE_TIMESTAMP, signature, now)
        assert (refused.value.status, refused.value.code) == (401, "invalid_signature")


async def test_a_wrong_signature_is_401_and_changes_nothing(stack: Stack) -> None:
    order_id = (await create(stack))["order_id"]
    body = command_body("U0DANA", f"approve {order_id}")
    wrong = await post_signed(stack, "/chat/slack/commands", body, secret="not-the-secret")
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_signature"
    missing = await stack.http.post(
        "/chat/slack/commands",
        content=body,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert missing.status_code == 401
    garbled = await post_signed(stack, "/chat/slack/commands", body, signature="v0=nonsense")
    assert garbled.status_code == 401
    bad_time = await post_signed(stack, "/chat/slack/commands", body, timestamp="soon")
    assert bad_time.status_code == 401
    click = click_body("U0DANA", "approve", order_id, "desk_head", "https://chat.invalid/r")
    clicked = await post_signed(stack, "/chat/slack/actions", click, secret="not-the-secret")
    assert clicked.status_code == 401
    await assert_untouched(stack, order_id)


async def test_an_old_timestamp_is_401_even_when_signed_right(stack: Stack) -> None:
    order_id = (await create(stack))["order_id"]
    body = command_body("U0DANA", f"approve {order_id}")
    # A minute past the limit either way: the test's clock and the server's are read apart, and
    # `int(time.time())` truncates, so a skew of 301 s can be judged as 300 s (exactly allowed).
    for skew in (-360, 360):
        old = await post_signed(
            stack, "/chat/slack/commands", body, timestamp=str(int(time.time()) + skew)
        )
        assert old.status_code == 401
        assert "5 minutes" in old.json()["error"]["message"]
    await assert_untouched(stack, order_id)


async def test_a_replayed_body_with_a_changed_text_is_401(stack: Stack) -> None:
    order_id = (await create(stack))["order_id"]
    timestamp = str(int(time.time()))
    seen = command_body("U0DANA", f"show {order_id}")
    signature = slack_signature(stack.settings.slack_signing_secret, timestamp, seen)
    shown = await post_signed(
        stack, "/chat/slack/commands", seen, timestamp=timestamp, signature=signature
    )
    assert shown.status_code == 200
    changed = seen.replace(b"text=show", b"text=approve")
    assert changed != seen
    replayed = await post_signed(
        stack, "/chat/slack/commands", changed, timestamp=timestamp, signature=signature
    )
    assert replayed.status_code == 401
    await assert_untouched(stack, order_id)


# --- Who may do what -------------------------------------------------------------------------


async def test_an_unlinked_chat_user_gets_a_private_answer_and_changes_nothing(
    stack: Stack, response_urls: ChatWebhookServer
) -> None:
    order_id = (await create(stack))["order_id"]
    answer = await command(stack, "U0MALLORY", f"approve {order_id}")
    assert answer["response_type"] == "ephemeral"
    assert "U0MALLORY is not linked to an OMS user" in answer["text"]
    clicked = await click(stack, "U0MALLORY", "approve", order_id, "desk_head", response_urls.url())
    assert clicked["response_type"] == "ephemeral"
    assert "not linked" in clicked["text"]
    garbled = await post_signed(stack, "/chat/slack/actions", encode({"payload": "{not json"}))
    assert garbled.status_code == 200
    assert garbled.json()["text"] == "The OMS could not read that interaction."
    await assert_untouched(stack, order_id)


async def test_a_user_without_the_right_is_refused_privately(stack: Stack) -> None:
    order_id = (await create(stack))["order_id"]
    trader = await command(stack, "U0TOM", f"approve {order_id} lgtm")
    assert trader["response_type"] == "ephemeral"
    assert trader["text"].startswith("Refused: tom may not approve")
    creator = await command(stack, "U0ALICE", f"approve {order_id}")
    assert (creator["response_type"], creator["text"][:8]) == ("ephemeral", "Refused:")
    other_fund = await command(stack, "U0BOB", f"reject {order_id} no")
    assert other_fund["response_type"] == "ephemeral"
    assert other_fund["text"] == f"No order {order_id} that you can see."
    await assert_untouched(stack, order_id)


# --- Commands --------------------------------------------------------------------------------


async def test_an_approval_from_chat_takes_the_api_path(stack: Stack) -> None:
    order_id = (await create(stack))["order_id"]
    answer = await command(stack, "U0DANA", f"approve `{order_id}` within <mandate> & fine")
    assert answer["response_type"] == "in_channel"
    assert answer["text"].startswith(f"dana approved desk_head of {order_id} at ")
    assert "Every level has approved" in text_of(answer)
    order = await order_as(stack, "dana", order_id)
    assert order["status"] == "approved"
    [given] = order["approvals"]["given"]
    assert (given["level"], given["user"], given["comment"]) == (
        "desk_head",
        "dana",
        "within <mandate> & fine",  # Slack's escaping undone, the comment as typed
    )
    assert given["policy"]  # the authority check the API makes recorded its rule
    again = await command(stack, "U0HANA", f"approve {order_id}")
    assert again["response_type"] == "ephemeral"
    assert f"`{order_id}` is approved (approved: desk_head by dana at" in again["text"]


async def test_a_rejection_needs_a_reason_and_records_it(stack: Stack) -> None:
    order_id = (await create(stack))["order_id"]
    bare = await command(stack, "U0DANA", f"reject {order_id}")
    assert bare["response_type"] == "ephemeral"
    assert "needs a reason" in bare["text"]
    # The HTTP API's limits hold in chat too.
    long = await command(stack, "U0DANA", f"approve {order_id} {'x' * 2001}")
    assert long["response_type"] == "ephemeral"
    assert "at most 2000 characters" in long["text"]
    await assert_untouched(stack, order_id)
    answer = await command(stack, "U0DANA", f"reject {order_id} too large for today")
    assert answer["response_type"] == "in_channel"
    assert answer["text"].startswith(f"dana rejected desk_head of {order_id}")
    order = await order_as(stack, "alice", order_id)
    assert (order["status"], order["status_actor"], order["status_reason"]) == (
        "approval_rejected",
        "dana",
        "too large for today",
    )


async def test_show_inbox_and_help_answer_privately(stack: Stack) -> None:
    order_id = (await create(stack, **BIG))["order_id"]
    shown = await command(stack, "U0DANA", f"show {order_id}")
    assert shown["response_type"] == "ephemeral"
    assert shown["text"] == f"{order_id}: pending_approval"
    assert "desk_head: waiting" in text_of(shown) and "cio: waiting" in text_of(shown)
    assert "BUY 50,000 AAPL in fund-alpha" in text_of(shown)
    inbox = await command(stack, "U0DANA", "inbox")
    assert inbox["response_type"] == "ephemeral"
    assert order_id in text_of(inbox)
    assert "orders wait on your approval" in inbox["text"]
    nothing = await command(stack, "U0TOM", "inbox")
    assert nothing["text"] == "Nothing waits on your approval."
    for text in ("", "help", "frobnicate ord_x", "approve"):
        usage = await command(stack, "U0DANA", text)
        assert usage["response_type"] == "ephemeral"
        assert "/oms approve ORDER_ID [comment]" in usage["text"]
    await assert_untouched(stack, order_id)


# --- Buttons ---------------------------------------------------------------------------------


async def test_buttons_decide_their_level_and_a_stale_button_says_who_decided(
    stack: Stack, response_urls: ChatWebhookServer
) -> None:
    order_id = (await create(stack, **BIG))["order_id"]
    url = response_urls.url("/actions/T0OMS/1/x")

    approved = await click(stack, "U0DANA", "approve", order_id, "desk_head", url)
    assert (approved["response_type"], approved["replace_original"]) == ("in_channel", True)
    assert approved["text"].startswith(f"dana approved desk_head of {order_id} at ")
    assert not [b for b in approved["blocks"] if b["type"] == "actions"]  # the buttons go
    assert "Now waiting on *cio*" in text_of(approved)
    # Slack takes a button's answer through its response_url.
    assert await response_urls.posted(1) == [approved]
    order = await order_as(stack, "carl", order_id)
    assert (order["status"], [g["user"] for g in order["approvals"]["given"]]) == (
        "pending_approval",
        ["dana"],
    )

    # carl holds cio, the level now pending, but the notice he clicks asked about desk_head:
    # it must not decide cio.
    stale = await click(stack, "U0CARL", "approve", order_id, "desk_head", url)
    assert (stale["response_type"], stale["replace_original"]) == ("ephemeral", False)
    assert f"The desk_head level of `{order_id}` was already approved by dana at" in stale["text"]
    assert (await order_as(stack, "carl", order_id))["approvals"]["given"][-1]["user"] == "dana"

    final = await click(stack, "U0CARL", "approve", order_id, "cio", url)
    assert final["response_type"] == "in_channel"
    assert "Every level has approved" in text_of(final)
    order = await order_as(stack, "carl", order_id)
    assert (order["status"], [g["user"] for g in order["approvals"]["given"]]) == (
        "approved",
        ["dana", "carl"],
    )
    assert (await response_urls.posted(3))[1:] == [stale, final]


async def test_the_reject_button_records_a_default_reason_and_later_clicks_say_who(
    stack: Stack, response_urls: ChatWebhookServer
) -> None:
    order_id = (await create(stack))["order_id"]
    url = response_urls.url()
    refused = await click(stack, "U0TOM", "reject", order_id, "desk_head", url)
    assert (refused["response_type"], refused["text"][:8]) == ("ephemeral", "Refused:")
    await assert_untouched(stack, order_id)

    rejected = await click(stack, "U0DANA", "reject", order_id, "desk_head", url)
    assert (rejected["response_type"], rejected["replace_original"]) == ("in_channel", True)
    assert "rejected from chat by dana" in text_of(rejected)
    order = await order_as(stack, "alice", order_id)
    assert (order["status"], order["status_reason"]) == (
        "approval_rejected",
        "rejected from chat by dana",
    )
    late = await click(stack, "U0HANA", "approve", order_id, "desk_head", url)
    assert late["response_type"] == "ephemeral"
    assert f"`{order_id}` was already rejected by dana at" in late["text"]


# --- oms dev ---------------------------------------------------------------------------------


def test_oms_dev_says_where_slack_posts_and_whether_notices_go_out() -> None:
    dev = "\n".join(cli.chat_banner(Settings()))
    assert "/chat/slack/commands" in dev and "/chat/slack/actions" in dev
    assert Settings().slack_signing_secret in dev  # the development secret, to sign with
    assert "not sent: OMS_CHAT_WEBHOOK_URL is not set" in dev
    production = "\n".join(
        cli.chat_banner(
            Settings(
                slack_signing_secret="a-real-secret-from-slack",
                chat_webhook_url="https://chat.invalid/services/T/B/secret-part",
            )
        )
    )
    assert "a-real-secret-from-slack" not in production
    assert "secret-part" not in production
    assert "posted to OMS_CHAT_WEBHOOK_URL" in production


async def test_an_absurd_order_id_is_not_echoed_back_whole(stack: Stack) -> None:
    answer = await command(stack, "U0DANA", "approve " + "x" * 5000 + " <!channel>")
    assert answer["response_type"] == "ephemeral"
    assert len(answer["text"]) < 120
    assert "<!channel>" not in json.dumps(answer)


async def test_the_cio_approves_an_amend_of_a_working_order_with_its_notice_button(
    stack: Stack, response_urls: ChatWebhookServer
) -> None:
    order_id = await working(stack)
    amended = await stack.call("alice", "POST", f"/orders/{order_id}/amend", {"quantity": "50000"})
    assert amended.status_code == 200 and amended.json()["amendment"], amended.text
    url = response_urls.url("/actions/T0OMS/2/x")
    # A desk_head notice's button (an old one) decides nothing: the amend waits on cio.
    stale = await click(stack, "U0HANA", "approve", order_id, "desk_head", url)
    assert stale["response_type"] == "ephemeral"
    approved = await click(stack, "U0CARL", "approve", order_id, "cio", url)
    assert approved["response_type"] == "in_channel", approved
    assert approved["text"].startswith(f"carl approved cio of {order_id} at ")
    order = await stack.wait_for_status("tom", order_id, "pending_replace")
    assert order["replace_pending"]["quantity"] == "50000"
    await close(stack, order_id)
