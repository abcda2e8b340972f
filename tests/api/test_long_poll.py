"""`GET /orders/{id}?wait_for=STATUS[,STATUS]&timeout=S`: the long-poll, and its refusals.

The stack runs the orders worker in the API's process, as `oms dev` does, so the projector's
commits are told to the long-polls at once (`db.changes`); the read model is still read on a
slower schedule, for what a projector in another process writes.
"""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from db.changes import ORDER_CHANGES
from domain.models import OrderStatus
from tests.api.conftest import Stack
from tests.api.test_orders_api import create


async def _waiting(stack: Stack, order_id: str, wait_for: str) -> asyncio.Task[httpx.Response]:
    """Start alice's long-poll of the order; return once it watches (it has read the model once)."""
    path = f"/orders/{order_id}?wait_for={wait_for}&timeout=30"
    waiting = asyncio.create_task(stack.call("alice", "GET", path))
    for _ in range(2000):
        if ORDER_CHANGES.watchers(order_id):
            return waiting
        await asyncio.sleep(0.005)
    waiting.cancel()
    raise AssertionError(f"no long-poll watches {order_id}")


async def test_an_order_already_there_is_answered_at_once(stack: Stack) -> None:
    order = await create(stack)

    response = await stack.call(
        "alice", "GET", f"/orders/{order['order_id']}?wait_for=pending_approval&timeout=30"
    )

    assert response.status_code == 200
    assert response.json()["status"] == "pending_approval"


async def test_a_later_status_answers_a_wait_for_an_earlier_one(stack: Stack) -> None:
    order = await create(stack)
    approved = await stack.call("dana", "POST", f"/orders/{order['order_id']}/approve", {})
    assert approved.status_code == 200, approved.text

    response = await stack.call(
        "alice", "GET", f"/orders/{order['order_id']}?wait_for=pending_approval&timeout=30"
    )

    assert response.json()["status"] == "approved"


async def test_the_wait_ends_when_the_order_gets_there(stack: Stack) -> None:
    order = await create(stack)
    waiting = await _waiting(stack, order["order_id"], "approved,approval_rejected")

    approved = await stack.call("dana", "POST", f"/orders/{order['order_id']}/approve", {})
    assert approved.status_code == 200, approved.text
    response = await asyncio.wait_for(waiting, 25)

    assert response.status_code == 200
    assert response.json()["status"] == "approved"


async def test_a_commit_told_in_this_process_ends_the_wait_without_reading_the_model_again(
    stack: Stack,
) -> None:
    """The push path: the read model still says pending_approval, yet the told commit answers."""
    order = await create(stack)
    waiting = await _waiting(stack, order["order_id"], "settled")

    # As the projector's activity thread tells it (a forged status: nothing else moves).
    teller = threading.Thread(
        target=ORDER_CHANGES.committed, args=(order["order_id"], OrderStatus.SETTLED, True)
    )
    teller.start()
    response = await asyncio.wait_for(waiting, 25)
    teller.join()

    # The answer is the live order, from its workflow: the wait ended, the order did not move.
    assert response.status_code == 200
    assert response.json()["status"] == "pending_approval"


async def test_at_the_timeout_the_order_is_answered_as_it_stands(stack: Stack) -> None:
    order = await create(stack)

    response = await stack.call(
        "alice", "GET", f"/orders/{order['order_id']}?wait_for=settled&timeout=0.3"
    )

    assert response.status_code == 200
    assert response.json()["status"] == "pending_approval"
    assert ORDER_CHANGES.watchers(order["order_id"]) == 0  # the watch ended with the wait


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("wait_for=settled&timeout=0", "timeout"),
        ("wait_for=settled&timeout=61", "timeout"),
        ("wait_for=settled&timeout=soon", "timeout"),
        ("wait_for=sett1ed", "wait_for"),
        ("wait_for=,", "wait_for"),
        ("wait_for=" + "settled," * 60, "wait_for"),
    ],
)
async def test_a_bad_wait_is_refused_naming_the_field(stack: Stack, query: str, field: str) -> None:
    order = await create(stack)

    response = await stack.call("alice", "GET", f"/orders/{order['order_id']}?{query}")

    assert response.status_code == 422, response.text
    assert field in response.text


async def test_a_wait_on_an_order_the_caller_may_not_see_is_not_found(stack: Stack) -> None:
    order = await create(stack)

    response = await stack.call(
        "bob", "GET", f"/orders/{order['order_id']}?wait_for=settled&timeout=30"
    )

    assert response.status_code == 404
    assert ORDER_CHANGES.watchers(order["order_id"]) == 0


async def test_on_postgresql_the_api_listens_for_every_processs_commits(stack: Stack) -> None:
    url = make_url(stack.settings.resolved_database_url)
    if url.get_backend_name() != "postgresql":
        pytest.skip("the API listens for notifications on PostgreSQL only")
    engine = create_engine(url)
    try:
        # The listener connects in the background once the API has started: wait for it.
        for _ in range(300):
            with engine.connect() as connection:
                listeners = connection.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = :database"
                        " AND application_name = 'oms-order-changes' AND query LIKE 'LISTEN%'"
                    ),
                    {"database": url.database},
                ).scalar_one()
            if listeners:
                break
            await asyncio.sleep(0.1)
    finally:
        engine.dispose()

    assert listeners == 1
