"""End to end: a 6,000,000 order in fund-beta approved by dana and carl from chat, then settled.

The whole OMS runs on the dev server with a chat webhook configured; a local HTTP server stands
in for the chat's incoming webhook (and for a button's response_url), and every chat request is
signed exactly as Slack signs it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from config import Settings
from db.demo import load_demo_data
from db.engine import create_schema, make_engine, session_factory
from devserver import running_oms
from tests.activities.test_notifications import ChatWebhookServer
from tests.api.conftest import Stack, free_port
from tests.api.test_chat import click, command


def buttons(message: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (element["action_id"], element["value"])
        for block in message.get("blocks", [])
        if block["type"] == "actions"
        for element in block["elements"]
    ]


@pytest.fixture
async def chat_stack(
    dev_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Stack, ChatWebhookServer]]:
    suffix = uuid.uuid4().hex[:8]
    port = free_port()
    data_dir = tmp_path_factory.mktemp("oms-chat")
    with ChatWebhookServer() as webhook:
        settings = Settings(
            data_dir=data_dir,
            database_url=f"sqlite:///{data_dir / 'oms.db'}",
            temporal_address=dev_env.client.service_client.config.target_host,
            api_port=port,
            orders_task_queue=f"orders-{suffix}",
            back_office_task_queue=f"back-office-{suffix}",
            simulator_fill_delay_seconds=0.05,
            back_office_confirm_delay_seconds=0.05,
            jwt_secret=f"test-secret-{suffix}-long-enough-for-hs256",
            chat_webhook_url=webhook.url(),
            slack_signing_secret=f"signing-{suffix}",
        )
        engine = make_engine(settings.resolved_database_url)
        create_schema(engine)
        with session_factory(engine)() as session:
            load_demo_data(session)
        engine.dispose()
        async with (
            running_oms(settings, dev_env.client),
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http,
        ):
            yield Stack(settings, http, dev_env), webhook


async def test_a_six_million_order_approved_from_chat_by_dana_then_carl_settles(
    chat_stack: tuple[Stack, ChatWebhookServer],
) -> None:
    stack, webhook = chat_stack
    quantity = 26031  # x 230.50 = 6,000,145.50 USD: desk head, then CIO, in fund-beta
    created = await stack.call(
        "bob",
        "POST",
        "/orders",
        {
            "client_order_id": f"chat-{uuid.uuid4().hex[:8]}",
            "fund": "fund-beta",
            "symbol": "AAPL",
            "side": "buy",
            "quantity": str(quantity),
            "order_type": "market",
            "allocations": [{"account": "beta-main", "quantity": str(quantity)}],
        },
    )
    assert created.status_code == 201, created.text
    order = created.json()
    order_id = order["order_id"]
    assert order["approvals"]["required"] == ["desk_head", "cio"]

    (desk_head_notice,) = await webhook.posted(1)
    assert buttons(desk_head_notice) == [("approve", order_id), ("reject", order_id)]
    assert "<@U0DANA>" in json.dumps(desk_head_notice)

    # dana approves with the slash command.
    answer = await command(stack, "U0DANA", f"approve {order_id} within mandate")
    assert answer["response_type"] == "in_channel", answer
    decided, cio_notice = (await webhook.posted(3))[1:3]
    assert "dana" in json.dumps(decided) and not buttons(decided)
    assert buttons(cio_notice) == [("approve", order_id), ("reject", order_id)]
    assert "<@U0CARL>" in json.dumps(cio_notice)

    # carl clicks Approve on the notice; the answer also goes to the button's response_url.
    with ChatWebhookServer() as response_url:
        clicked = await click(stack, "U0CARL", "approve", order_id, "cio", response_url.url("/r"))
        assert clicked.get("replace_original") is True, clicked
        await response_url.posted(1)
    approved = await stack.wait_for_status("bob", order_id, "approved")
    given = approved["approvals"]["given"]
    assert [(g["level"], g["user"]) for g in given] == [("desk_head", "dana"), ("cio", "carl")]
    assert given[0]["comment"] == "within mandate"

    released = await stack.call("tom", "POST", f"/orders/{order_id}/release", {})
    assert released.status_code == 200, released.text
    settled = await stack.wait_for_status("bob", order_id, "settled", within=60)
    assert Decimal(settled["filled_quantity"]) == quantity

    posts = await webhook.posted(4)
    assert "carl" in json.dumps(posts[3]) and not buttons(posts[3])
    assert len(webhook.posts) == 4
    history = (await stack.call("cora", "GET", f"/orders/{order_id}/history")).json()
    approvers = [e["actor"] for e in history if e["event"].startswith("approval")]
    assert approvers == ["dana", "carl"]
