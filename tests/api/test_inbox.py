"""The approvals inbox, `GET /approvals`, over HTTP against the real dev server and workers.

The session's stack is shared with other API tests, so an inbox may hold their orders too: the
tests look for their own orders in it (paging through all of it) rather than for exact lists.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from config import POLICIES_DIR, Settings
from db.demo import load_demo_data
from db.engine import create_schema, make_engine, session_factory
from devserver import running_oms
from tests.api.conftest import Stack, free_port
from tests.api.test_orders_api import create

# Above 10,000,000 of notional (and below fund-alpha's soft threshold): desk_head, then cio.
TWO_LEVELS = 50_000
# fund-beta lets orders below 250,000 straight through: this one needs its desk_head.
BETA = 2_000


async def page(stack: Stack, user: str, query: str = "", expect: int = 200) -> dict[str, Any]:
    response = await stack.call(user, "GET", f"/approvals{query}")
    assert response.status_code == expect, response.text
    body: dict[str, Any] = response.json()
    return body


async def whole_inbox(
    stack: Stack, user: str, query: str = "", limit: int = 200
) -> list[dict[str, Any]]:
    """Return every item of the caller's inbox, following `next_cursor` page after page."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = f"?limit={limit}" + (f"&cursor={cursor}" if cursor else "") + query
        body = await page(stack, user, params)
        assert len(body["items"]) <= limit
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items
        assert len(body["items"]) == limit  # a page before the last is full


def find(items: list[dict[str, Any]], order_id: str) -> dict[str, Any] | None:
    found = [item for item in items if item["order_id"] == order_id]
    assert len(found) <= 1, "an order shows once"
    return found[0] if found else None


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def test_a_fresh_order_waits_in_the_desk_heads_inbox(stack: Stack) -> None:
    order = await create(stack, quantity=10, allocations=[])
    order_id = order["order_id"]

    item = find(await whole_inbox(stack, "dana"), order_id)
    assert item is not None
    assert {k: item[k] for k in ("fund", "symbol", "side", "quantity", "order_type")} == {
        "fund": "fund-alpha",
        "symbol": "AAPL",
        "side": "buy",
        "quantity": "10",
        "order_type": "limit",
    }
    assert (item["limit_price"], item["notional"], item["currency"]) == (
        "231",
        order["notional"],
        "USD",
    )
    assert (item["created_by"], item["client_order_id"]) == ("alice", order["client_order_id"])
    assert (item["approval_level"], item["approvals_required"], item["approvals_given"]) == (
        "desk_head",
        ["desk_head"],
        [],
    )
    # It waits from the compliance check, made while the create call ran.
    assert at(order["created_at"]) <= at(item["waiting_since"]) <= at(order["updated_at"])
    assert item["waiting_seconds"] >= 0
    assert (item["escalated"], item["may_decide"]) == (False, True)
    assert at(item["expire_at"]) > at(item["waiting_since"])
    assert item["compliance_outcome"] == "pass"
    assert [(c["rule"], c["outcome"]) for c in item["compliance"]] == [
        (c["rule"], c["outcome"]) for c in order["compliance"]
    ]
    assert item["version"] >= 2

    # The creator (a PM, who may decide no level) and a PM of another fund see an empty inbox.
    assert await page(stack, "alice") == {"items": [], "next_cursor": None}
    assert await page(stack, "bob") == {"items": [], "next_cursor": None}
    # The cio has no level to decide on a small order.
    assert find(await whole_inbox(stack, "carl"), order_id) is None

    approved = await stack.call("dana", "POST", f"/orders/{order_id}/approve", {})
    assert approved.status_code == 200, approved.text
    assert find(await whole_inbox(stack, "dana"), order_id) is None


async def test_the_next_level_waits_from_the_approval_before_it(stack: Stack) -> None:
    order = await create(stack, quantity=TWO_LEVELS, allocations=[])
    order_id = order["order_id"]
    assert order["approvals"]["required"] == ["desk_head", "cio"]
    assert find(await whole_inbox(stack, "carl"), order_id) is None  # not his level yet

    approved = await stack.call("dana", "POST", f"/orders/{order_id}/approve", {"comment": "ok"})
    assert approved.status_code == 200, approved.text
    given = approved.json()["approvals"]["given"]

    item = find(await whole_inbox(stack, "carl"), order_id)
    assert item is not None
    assert (item["approval_level"], item["approvals_required"]) == ("cio", ["desk_head", "cio"])
    assert [(g["level"], g["user"], g["comment"]) for g in item["approvals_given"]] == [
        ("desk_head", "dana", "ok")
    ]
    assert at(item["waiting_since"]) == at(given[0]["at"]) == at(item["approvals_given"][0]["at"])
    assert item["may_decide"] is True
    # dana holds no cio level; and one person decides one level of an order anyway.
    assert find(await whole_inbox(stack, "dana"), order_id) is None
    assert (await stack.call("carl", "POST", f"/orders/{order_id}/approve", {})).status_code == 200
    assert find(await whole_inbox(stack, "carl"), order_id) is None


async def test_the_inbox_pages_longest_waiting_first_and_filters_by_fund(stack: Stack) -> None:
    mine = [(await create(stack, quantity=10, allocations=[]))["order_id"] for _ in range(3)]
    beta = (await create(stack, user="bob", fund="fund-beta", allocations=[], quantity=BETA))[
        "order_id"
    ]

    paged = await whole_inbox(stack, "dana", limit=2)
    listed = [item["order_id"] for item in paged]
    assert len(listed) == len(set(listed)) >= 4
    assert set(mine) | {beta} <= set(listed)
    waits = [at(item["waiting_since"]) for item in paged]
    assert waits == sorted(waits)  # oldest first, across pages
    assert [i for i in listed if i in mine] == mine  # created (and checked) one after the other

    alpha = await whole_inbox(stack, "dana", "&fund=fund-alpha")
    assert {item["fund"] for item in alpha} == {"fund-alpha"}
    assert set(mine) <= {item["order_id"] for item in alpha}
    only_beta = await whole_inbox(stack, "dana", "&fund=fund-beta")
    assert {item["fund"] for item in only_beta} == {"fund-beta"}
    assert beta in {item["order_id"] for item in only_beta}
    # A fund in which the caller may decide nothing is an empty inbox, not an error.
    assert await page(stack, "alice", "?fund=fund-beta") == {"items": [], "next_cursor": None}
    # A fund that does not exist answers the same: the inbox tells no one which funds exist.
    assert await page(stack, "dana", "?fund=fund-nowhere") == {"items": [], "next_cursor": None}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("?cursor=garbage", "cursor"),
        ("?cursor=eyJ4IjogMX0", "cursor"),
    ],
)
async def test_bad_parameters_are_refused_naming_them(stack: Stack, query: str, field: str) -> None:
    refused = await page(stack, "dana", query, expect=422)
    assert refused["error"]["field"] == field


@pytest.mark.parametrize("limit", ["0", "201", "-1", "many"])
async def test_a_limit_out_of_bounds_is_refused(stack: Stack, limit: str) -> None:
    refused = await page(stack, "dana", f"?limit={limit}", expect=422)
    assert [d["loc"] for d in refused["detail"]] == [["query", "limit"]]


async def test_a_cursor_of_the_order_list_is_not_an_inbox_cursor(stack: Stack) -> None:
    await create(stack, quantity=10, allocations=[])
    await create(stack, quantity=10, allocations=[])
    orders = (await stack.call("alice", "GET", "/orders?limit=1")).json()
    assert orders["next_cursor"]
    refused = await page(stack, "dana", f"?cursor={orders['next_cursor']}", expect=422)
    assert refused["error"]["field"] == "cursor"
    assert (await stack.http.get("/approvals")).status_code == 401


# ---- escalation: a stack of its own, whose approvals escalate after a second ------------------


@pytest.fixture(scope="module")
async def escalating_stack(
    dev_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    """The OMS with approvals that escalate after 1 second, on a read model of its own.

    Both places an escalation time may come from say a second: the setting, and the approval
    matrix's `escalate_after` (in a copy of the policies).
    """
    suffix = uuid.uuid4().hex[:8]
    port = free_port()
    data_dir = tmp_path_factory.mktemp("escalating")
    policies = data_dir / "policies"
    shutil.copytree(POLICIES_DIR, policies)
    matrix = policies / "approvals.toml"
    matrix.write_text(
        re.sub(r'(?m)^escalate_after = ".*"$', 'escalate_after = "PT1S"', matrix.read_text())
    )
    settings = Settings(
        policies_dir=policies,
        data_dir=data_dir,
        database_url=f"sqlite:///{data_dir / 'oms.db'}",
        temporal_address=dev_env.client.service_client.config.target_host,
        api_port=port,
        orders_task_queue=f"orders-esc-{suffix}",
        back_office_task_queue=f"back-office-esc-{suffix}",
        run_simulators=False,
        jwt_secret=f"test-secret-{suffix}-long-enough-for-hs256",
        approval_escalate_after_seconds=1,
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
        yield Stack(settings, http, dev_env)


async def test_an_overdue_level_shows_escalated_to_its_approvers_and_the_next_up(
    escalating_stack: Stack,
) -> None:
    stack = escalating_stack
    order_id = (await create(stack, quantity=10, allocations=[]))["order_id"]

    deadline = asyncio.get_running_loop().time() + 20
    while True:
        item = find(await whole_inbox(stack, "dana"), order_id)
        assert item is not None
        if item["escalated"]:
            break
        assert asyncio.get_running_loop().time() < deadline, "the order never escalated"
        await asyncio.sleep(0.1)
    assert (item["approval_level"], item["may_decide"]) == ("desk_head", True)
    assert item["waiting_seconds"] >= 1

    # The next approvers up (the cio) see it too, for information: they cannot decide it.
    above = find(await whole_inbox(stack, "carl"), order_id)
    assert above is not None
    assert (above["approval_level"], above["escalated"], above["may_decide"]) == (
        "desk_head",
        True,
        False,
    )
    assert await page(stack, "alice") == {"items": [], "next_cursor": None}

    approved = await stack.call("dana", "POST", f"/orders/{order_id}/approve", {})
    assert approved.status_code == 200, approved.text
    assert find(await whole_inbox(stack, "dana"), order_id) is None
    assert find(await whole_inbox(stack, "carl"), order_id) is None
