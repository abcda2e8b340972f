"""Approval notices reach people: a level waiting, escalated, decided or expired, posted to chat."""

from __future__ import annotations

import concurrent.futures
import json
import uuid
from datetime import timedelta
from typing import Any

import httpx

from db.engine import SessionFactory
from domain.models import OrderStatus
from tests.activities.test_notifications import ChatWebhookServer
from tests.workflows.conftest import SHORT_APPROVALS, Desk, wait_for_status
from tests.workflows.test_order_workflow import CIO, DESK_HEAD, approve_as
from venues.sinks import TemporalCallbacks
from worker import build_orders_worker
from workflows.order import OrderWorkflow


def buttons(message: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (element["action_id"], element["value"])
        for block in message.get("blocks", [])
        if block["type"] == "actions"
        for element in block["elements"]
    ]


async def test_a_waiting_level_is_posted_escalated_decided_and_expired(
    desk: Desk, layer_sessions: SessionFactory
) -> None:
    with ChatWebhookServer() as webhook:
        settings = desk.settings.model_copy(
            update={
                "orders_task_queue": f"orders-chat-{uuid.uuid4().hex[:8]}",
                "chat_webhook_url": webhook.url(),
            }
        )
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as executor:
            async with httpx.AsyncClient() as http:
                worker, _ = build_orders_worker(
                    desk.client,
                    settings,
                    layer_sessions,
                    TemporalCallbacks(desk.client),
                    executor,
                    http,
                )
                async with worker:
                    handle = await desk.start(
                        quantity="50000",  # 11.5M: desk head, then CIO
                        timeouts=SHORT_APPROVALS,
                        task_queue=settings.orders_task_queue,
                        workflow_fields={"notify_approvers": True},
                    )
                    order_id = handle.id.removeprefix("order:")
                    await wait_for_status(handle, OrderStatus.PENDING_APPROVAL)
                    (waiting,) = await webhook.posted(1)
                    assert buttons(waiting) == [("approve", order_id), ("reject", order_id)]
                    assert "<@U0DANA>" in json.dumps(waiting)

                    await desk.env.sleep(timedelta(hours=1, minutes=1))  # past escalation
                    escalated = (await webhook.posted(2))[1]
                    text = json.dumps(escalated).lower()
                    assert "escalated" in text and "<@u0carl>" in text

                    await handle.execute_update(
                        OrderWorkflow.approve, approve_as("dana", DESK_HEAD, CIO)
                    )
                    decided, cio_waiting = (await webhook.posted(4))[2:4]
                    assert "dana" in json.dumps(decided) and not buttons(decided)
                    assert buttons(cio_waiting) == [("approve", order_id), ("reject", order_id)]

                    await desk.env.sleep(timedelta(hours=1))  # past expiry
                    state = await wait_for_status(handle, OrderStatus.APPROVAL_EXPIRED)
                    assert state.approvals_notified == ["desk_head", "desk_head:escalated", "cio"]
                    expired = (await webhook.posted(5))[4]
                    assert "expired" in json.dumps(expired).lower()
                    assert (await handle.result()).status is OrderStatus.APPROVAL_EXPIRED
                    assert len(webhook.posts) == 5


async def test_no_notices_unless_the_order_asks_for_them(desk: Desk) -> None:
    handle = await desk.start(quantity="10")
    state = await wait_for_status(handle, OrderStatus.PENDING_APPROVAL)
    assert state.approvals_notified == []
    await handle.execute_update(OrderWorkflow.approve, approve_as("dana"))
