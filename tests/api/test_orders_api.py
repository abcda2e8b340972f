"""The HTTP contract of API.md, over HTTP, against the real dev server with real workers."""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Replayer

from db import queries
from db.engine import make_engine, session_factory
from domain.ids import order_id_for, order_workflow_id
from domain.models import AllocationRequest, OrderRequest, Side
from tests.api.conftest import Stack
from tests.workflows.test_replay import HISTORIES
from workflows.messages import OrderWorkflowInput
from workflows.order import OrderWorkflow
from workflows.order_v1 import OrderWorkflowV1

OVERRIDE_X = {"justification": "x", "rules": ["x"]}


def order_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "client_order_id": f"api-{uuid.uuid4().hex[:10]}",
        "fund": "fund-alpha",
        "symbol": "AAPL",
        "side": "buy",
        "quantity": 1000,
        "order_type": "limit",
        "limit_price": "231",
        "time_in_force": "gtc",
        "allocations": [
            {"account": "alpha-main", "quantity": 600},
            {"account": "alpha-growth", "quantity": 400},
        ],
    }
    body.update(overrides)
    return body


async def create(stack: Stack, user: str = "alice", **overrides: Any) -> dict[str, Any]:
    response = await stack.call(user, "POST", "/orders", order_body(**overrides))
    assert response.status_code == 201, response.text
    order: dict[str, Any] = response.json()
    return order


async def assert_no_workflow(stack: Stack, fund: str, client_order_id: str) -> None:
    handle = stack.env.client.get_workflow_handle(
        order_workflow_id(order_id_for(fund, client_order_id))
    )
    with pytest.raises(RPCError) as missing:
        await handle.describe()
    assert missing.value.status is RPCStatusCode.NOT_FOUND


async def closed_history(stack: Stack, order_id: str, within: float = 20) -> list[dict[str, Any]]:
    """Return the order's audit timeline once it shows the order closed (its last event)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        history: list[dict[str, Any]] = (
            await stack.call("cora", "GET", f"/orders/{order_id}/history")
        ).json()
        if history and history[-1]["event"] == "order_closed":
            return history
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"order never closed; history ends {history[-1:]}")
        await asyncio.sleep(0.05)


async def test_the_story_from_post_to_settled(stack: Stack) -> None:
    order = await create(stack)
    order_id = order["order_id"]
    assert order["status"] == "pending_approval"  # compliance already decided in the response
    assert {c["outcome"] for c in order["compliance"]} == {"pass"}
    assert {"kill_switch", "firm-restricted-list", "alpha-max-order-notional"} <= {
        c["rule"] for c in order["compliance"]
    }
    assert order["approvals"]["required"] == ["desk_head"]

    own = await stack.call("alice", "POST", f"/orders/{order_id}/approve", {"comment": "mine"})
    assert own.status_code == 403
    assert (await stack.call("bob", "GET", f"/orders/{order_id}")).status_code == 404
    inbox = (await stack.call("dana", "GET", "/approvals?limit=200")).json()["items"]
    assert order_id in [o["order_id"] for o in inbox]

    approved = await stack.call("dana", "POST", f"/orders/{order_id}/approve", {"comment": "fine"})
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "approved"
    released = await stack.call("tom", "POST", f"/orders/{order_id}/release", {})
    assert released.status_code == 200, released.text

    settled = await stack.wait_for_status("alice", order_id, "settled")
    assert settled["filled_quantity"] == "1000"
    assert settled["average_price"] == "230.5"
    assert [(a["account"], a["quantity"]) for a in settled["allocations"]] == [
        ("alpha-main", "600"),
        ("alpha-growth", "400"),
    ]
    assert {s["status"] for s in settled["settlements"]} == {"confirmed"}

    # Lists come from the read model, which the order's last projection activity brings level
    # with the live state a moment after it.
    for _ in range(100):
        listed = (await stack.call("alice", "GET", "/orders?status=settled&limit=100")).json()
        if order_id in [o["order_id"] for o in listed["items"]]:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the settled order never reached the read model")
    assert order_id not in [
        o["order_id"] for o in (await stack.call("bob", "GET", "/orders")).json()["items"]
    ]

    history = await closed_history(stack, order_id)
    # A closed order is read from the state it closed with (a Query would replay its history).
    engine = make_engine(stack.settings.resolved_database_url)
    with session_factory(engine)() as session:
        final = queries.final_order_state(session, order_id)
    engine.dispose()
    assert final is not None and final["status"] == "settled" and final["events"] == []
    shown = (await stack.call("alice", "GET", f"/orders/{order_id}")).json()
    assert (shown["status"], shown["filled_quantity"]) == ("settled", "1000")
    events = [(h["event"], h["actor"]) for h in history]
    assert events[0] == ("order_created", "alice")
    assert [h["seq"] for h in history] == list(range(1, len(history) + 1))
    assert ("approvals_complete", "dana") in events
    assert ("released", "tom") in events
    assert ("venue_accepted", "sim-venue") in events
    assert ("settlement_answered", "betty") in events
    assert events[-2:] == [("settled", "system"), ("order_closed", "system")]
    statuses = [h["status"] for h in history]
    assert statuses[:4] == ["pending_compliance", "pending_approval", "approved", "released"]
    compliance = next(h for h in history if h["event"] == "compliance_passed")
    assert {r["outcome"] for r in compliance["details"]["results"]} == {"pass"}
    assert len(compliance["details"]["rules_version"]) == 64  # the rules file that judged it
    approved_entry = next(h for h in history if h["event"] == "approvals_complete")
    assert approved_entry["details"]["policy"] == ["desk_head", "*", "approvals", "desk_head"]
    assert (
        await stack.call("cora", "GET", f"/orders/{order_id}/history?format=xml")
    ).status_code == 422
    assert (await stack.call("bob", "GET", f"/orders/{order_id}/history")).status_code == 404
    raw = await stack.call("cora", "GET", f"/orders/{order_id}/history?format=temporal")
    assert raw.status_code == 200 and "events" in raw.json()
    # The order as the API made it (update-with-start, HTTP callbacks) replays deterministically.
    recorded = WorkflowHistory.from_json(order_workflow_id(order_id), raw.text)
    await Replayer(
        workflows=[OrderWorkflow, OrderWorkflowV1], data_converter=pydantic_data_converter
    ).replay_workflow(recorded)
    if os.environ.get("OMS_RECORD_HISTORIES"):
        (HISTORIES / "v2_order_created_over_http_settled.json").write_text(raw.text)

    positions = (await stack.call("mike", "GET", "/positions?fund=fund-alpha")).json()
    assert any(p["account"] == "alpha-main" and p["symbol"] == "AAPL" for p in positions)
    settlements = (
        await stack.call("betty", "GET", "/settlements?fund=fund-alpha&status=confirmed")
    ).json()
    assert {s["account"] for s in settlements if s["order_id"] == order_id} == {
        "alpha-main",
        "alpha-growth",
    }


async def test_restricted_symbol_is_compliance_rejected(stack: Stack) -> None:
    order = await create(
        stack,
        symbol="GME",
        quantity=100,
        order_type="market",
        limit_price=None,
        allocations=[{"account": "alpha-main", "quantity": 100}],
    )
    assert order["status"] == "compliance_rejected"
    failed = next(c for c in order["compliance"] if c["rule"] == "firm-restricted-list")
    assert failed["outcome"] == "fail"
    assert "GME is on the firm's restricted list" in failed["message"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"quantity": -5, "allocations": []}, "quantity"),
        ({"quantity": "1e30", "allocations": []}, "quantity"),
        ({"limit_price": "1e-13"}, "limit_price"),
        ({"quantity": 0, "allocations": []}, "quantity"),
        ({"symbol": "NOPE"}, "symbol"),
        ({"order_type": "limit", "limit_price": None}, "limit_price"),
        ({"order_type": "market", "limit_price": "10"}, "limit_price"),
        ({"side": "sideways"}, "side"),
        ({"time_in_force": "gtd"}, "expire_at"),
        ({"allocations": [{"account": "beta-main", "quantity": 1000}]}, "allocations"),
        ({"allocations": [{"account": "alpha-main", "quantity": 999}]}, "allocations"),
        (
            {
                "symbol": "EURUSD",
                "quantity": 1500,
                "limit_price": "1.08",
                "allocations": [{"account": "alpha-main", "quantity": 1500}],
            },
            "quantity",
        ),
        ({"client_order_id": "has spaces"}, "client_order_id"),
        ({"unexpected": 1}, "unexpected"),
    ],
)
async def test_bad_orders_are_refused_naming_the_field(
    stack: Stack, overrides: dict[str, Any], field: str
) -> None:
    body = order_body(**overrides)
    response = await stack.call("alice", "POST", "/orders", body)
    assert response.status_code == 422, response.text
    payload = response.json()
    if "error" in payload:
        assert payload["error"]["field"] == field
    else:
        assert any(field in [str(part) for part in item["loc"]] for item in payload["detail"]), (
            payload
        )
    await assert_no_workflow(stack, body["fund"], body["client_order_id"])


async def test_identity_and_rights(stack: Stack) -> None:
    body = order_body()
    assert (await stack.http.post("/orders", json=body)).status_code == 401
    bad = await stack.http.post("/orders", json=body, headers={"Authorization": "Bearer not-a-jwt"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "unauthenticated"
    assert (await stack.call("mallory", "GET", "/orders")).status_code == 401
    assert (await stack.call("bob", "POST", "/orders", body)).status_code == 403
    assert (await stack.call("tom", "POST", "/orders", body)).status_code == 403
    await assert_no_workflow(stack, body["fund"], body["client_order_id"])
    assert (await stack.call("alice", "GET", "/orders/ord_00000000000000000000")).status_code == 404
    assert (await stack.call("alice", "GET", "/orders/../../etc")).status_code == 404
    assert (await stack.call("alice", "GET", "/orders?fund=fund-beta")).status_code == 422


async def test_creation_is_idempotent_by_client_order_id(stack: Stack) -> None:
    body = order_body()
    first = await stack.call("alice", "POST", "/orders", body)
    again = await stack.call("alice", "POST", "/orders", body)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["order_id"] == again.json()["order_id"]
    changed = await stack.call("alice", "POST", "/orders", {**body, "limit_price": "231.5"})
    assert changed.status_code == 409
    assert changed.json()["error"]["field"] == "client_order_id"


async def test_actions_the_state_does_not_allow(stack: Stack) -> None:
    order = await create(stack)
    order_id = order["order_id"]
    early = await stack.call("tom", "POST", f"/orders/{order_id}/release", {})
    assert early.status_code == 409 and "approved" in early.json()["error"]["message"]
    assert (await stack.call("alice", "POST", f"/orders/{order_id}/release", {})).status_code == 403
    assert (
        await stack.call("cora", "POST", f"/orders/{order_id}/override", OVERRIDE_X)
    ).status_code == 409
    assert (await stack.call("dana", "POST", f"/orders/{order_id}/reject", {})).status_code == 422
    unknown_venue = await stack.call(
        "tom", "POST", f"/orders/{order_id}/release", {"venue": "darkpool"}
    )
    assert unknown_venue.status_code == 422 and unknown_venue.json()["error"]["field"] == "venue"
    assert (await stack.call("dana", "POST", f"/orders/{order_id}/approve", {})).status_code == 200
    again = await stack.call("dana", "POST", f"/orders/{order_id}/approve", {})
    assert again.status_code == 409
    canceled = await stack.call(
        "alice", "POST", f"/orders/{order_id}/cancel", {"reason": "no longer needed"}
    )
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    await stack.wait_for_status("alice", order_id, "canceled")
    late = await stack.call("alice", "POST", f"/orders/{order_id}/cancel", {"reason": "again"})
    assert late.status_code == 409


async def test_execution_reports_from_a_venue(stack: Stack) -> None:
    order = await create(
        stack, quantity=100, allocations=[{"account": "alpha-main", "quantity": 100}]
    )
    order_id = order["order_id"]
    await stack.call("dana", "POST", f"/orders/{order_id}/approve", {})
    released = await stack.call("tom", "POST", f"/orders/{order_id}/release", {"venue": "manual"})
    assert released.json()["status"] == "released"

    def report(
        exec_id: str, exec_type: str, qty: str = "0", price: str | None = None
    ) -> dict[str, Any]:
        return {
            "order_id": order_id,
            "exec_id": exec_id,
            "exec_type": exec_type,
            "last_quantity": qty,
            "last_price": price,
            "transact_time": datetime.now(UTC).isoformat(),
        }

    # Only a venue may report; whoever lacks that right sees no order at all.
    for outsider in ("alice", "bob"):
        refused = await stack.call(outsider, "POST", "/executions", report("x-1", "new"))
        assert refused.status_code == 404
    assert (
        await stack.call("sim-venue", "POST", "/executions", report("x-1", "new"))
    ).status_code == 202
    fill = report("x-2", "trade", "40", "230")
    assert (await stack.call("sim-venue", "POST", "/executions", fill)).status_code == 202
    await stack.wait_for_status("alice", order_id, "partially_filled")
    duplicate = await stack.call("sim-venue", "POST", "/executions", fill)
    assert (duplicate.status_code, duplicate.json()["status"]) == (200, "duplicate")
    overfill = await stack.call(
        "sim-venue", "POST", "/executions", report("x-3", "trade", "70", "230")
    )
    assert overfill.status_code == 409 and "overfill" in overfill.json()["error"]["message"]
    assert overfill.json()["error"]["field"] == "last_quantity"
    # The same refused report again: the same answer, and still recorded on the order once.
    again = await stack.call(
        "sim-venue", "POST", "/executions", report("x-3", "trade", "70", "230")
    )
    assert again.status_code == 409 and "overfill" in again.json()["error"]["message"]
    # A transact_time far from now is refused before it reaches the order's state.
    absurd = await stack.call(
        "sim-venue",
        "POST",
        "/executions",
        {**report("x-9", "trade", "1", "230"), "transact_time": "9999-12-31T23:59:59+00:00"},
    )
    assert (absurd.status_code, absurd.json()["error"]["field"]) == (422, "transact_time")
    assert (await stack.call("alice", "GET", f"/orders/{order_id}")).status_code == 200
    naive = await stack.call(
        "sim-venue",
        "POST",
        "/executions",
        {**report("x-4", "new"), "transact_time": "2026-11-26T15:00:00"},
    )
    assert naive.status_code == 422
    missing = await stack.call(
        "sim-venue",
        "POST",
        "/executions",
        {**report("x-5", "new"), "order_id": "ord_ffffffffffffffffffff"},
    )
    assert missing.status_code == 404
    # Two fills racing for the last 60: the order decides once, and each venue call learns it.
    racing = await asyncio.gather(
        stack.call("sim-venue", "POST", "/executions", report("x-6", "trade", "60", "231")),
        stack.call("sim-venue", "POST", "/executions", report("x-7", "trade", "60", "231")),
    )
    assert sorted(r.status_code for r in racing) == [202, 409]
    filled = await stack.wait_for_status("alice", order_id, "settled")
    assert filled["average_price"] == "230.6"
    refused_refs = [f["ref"] for f in filled["flags"] if f["kind"] == "execution_refused"]
    assert sorted(refused_refs) == ["x-3", "x-6" if racing[0].status_code == 409 else "x-7"]
    # After the order has closed, a venue resending a report it already sent learns it was taken;
    # a report it never sent is refused.
    await closed_history(stack, order_id)
    late = await stack.call("sim-venue", "POST", "/executions", fill)
    assert (late.status_code, late.json()["status"]) == (200, "duplicate")
    unknown = await stack.call("sim-venue", "POST", "/executions", report("x-8", "trade", "1", "1"))
    assert unknown.status_code == 409 and "closed" in unknown.json()["error"]["message"]


async def test_read_endpoints_respect_funds(stack: Stack) -> None:
    assert (await stack.call("alice", "GET", "/settlements")).status_code == 403
    assert (await stack.call("tom", "GET", "/positions")).status_code == 403
    assert (await stack.call("sim-venue", "GET", "/orders")).status_code == 403
    assert (await stack.call("alice", "GET", "/positions?fund=fund-beta")).status_code == 422
    assert (await stack.call("alice", "GET", "/approvals")).json() == {
        "items": [],
        "next_cursor": None,
    }
    health = await stack.http.get("/healthz")
    assert health.json() == {"status": "ok", "temporal": "ok", "database": "ok"}
    assert (await stack.http.get("/metrics")).status_code == 404  # its own listener only
    assert (await stack.call("alice", "GET", "/orders?cursor=garbage")).status_code == 422


async def test_many_concurrent_creations_all_answer(stack: Stack) -> None:
    # More concurrent creations than the database pool has connections: an endpoint that held
    # a pooled connection across its Temporal call would block the event loop here for good.
    responses = await asyncio.wait_for(
        asyncio.gather(
            *(
                stack.call("alice", "POST", "/orders", order_body(quantity=10, allocations=[]))
                for _ in range(40)
            )
        ),
        timeout=120,  # a hang guard, not a speed assertion
    )
    assert [r.status_code for r in responses] == [201] * 40
    assert len({r.json()["order_id"] for r in responses}) == 40


async def test_decisions_need_the_right_role_in_the_fund(stack: Stack) -> None:
    order_id = (await create(stack, quantity=10, allocations=[]))["order_id"]
    assert (
        await stack.call("tom", "POST", f"/orders/{order_id}/reject", {"reason": "no"})
    ).status_code == 403
    assert (
        await stack.call("bob", "POST", f"/orders/{order_id}/reject", {"reason": "no"})
    ).status_code == 404
    assert (await stack.call("bob", "POST", f"/orders/{order_id}/cancel", {})).status_code == 404
    assert (
        await stack.call("alice", "POST", f"/orders/{order_id}/override", OVERRIDE_X)
    ).status_code == 403
    assert (await stack.call("cora", "POST", f"/orders/{order_id}/override", {})).status_code == 422
    assert (await stack.call("mike", "POST", f"/orders/{order_id}/cancel", {})).status_code == 403
    order = (await stack.call("alice", "GET", f"/orders/{order_id}")).json()
    assert (order["status"], order["version"]) == ("pending_approval", 2)  # nothing changed


async def test_settlement_answers_need_the_back_office(stack: Stack) -> None:
    order = await create(stack, quantity=10, allocations=[])
    order_id = order["order_id"]
    await stack.call("dana", "POST", f"/orders/{order_id}/approve", {})
    await stack.call("tom", "POST", f"/orders/{order_id}/release", {})
    settled = await stack.wait_for_status("alice", order_id, "settled")
    settlement_id = settled["settlements"][0]["settlement_id"]
    for user in ("alice", "mike"):  # cannot read settlements: as if it did not exist
        assert (
            await stack.call(user, "POST", f"/settlements/{settlement_id}/confirm", {})
        ).status_code == 404
    assert (await stack.call("betty", "POST", "/settlements/nope/confirm", {})).status_code == 404
    assert (
        await stack.call("betty", "POST", f"/settlements/{settlement_id}/fail", {})
    ).status_code == 422
    assert (await stack.call("betty", "GET", "/settlements?status=lost")).status_code == 422
    # Answers are checked against the read model, a moment behind the live order.
    for _ in range(100):
        rows = (await stack.call("betty", "GET", "/settlements?status=confirmed")).json()
        if settlement_id in [r["settlement_id"] for r in rows]:
            break
        await asyncio.sleep(0.05)
    # A confirmation repeated after settlement changes nothing; failing it now is a conflict.
    again = await stack.call("betty", "POST", f"/settlements/{settlement_id}/confirm", {})
    assert (again.status_code, again.json()["status"]) == (200, "duplicate")
    late = await stack.call("betty", "POST", f"/settlements/{settlement_id}/fail", {"reason": "x"})
    assert late.status_code == 409
    assert (await stack.call("alice", "GET", f"/orders/{order_id}")).json()["status"] == "settled"


async def test_malformed_execution_reports_are_refused(stack: Stack) -> None:
    body = {"order_id": "ord_ffffffffffffffffffff", "exec_id": "z-1", "exec_type": "teleported",
            "transact_time": "2026-11-26T15:00:00+00:00"}  # fmt: skip
    response = await stack.call("sim-venue", "POST", "/executions", body)
    assert response.status_code == 422
    negative = {**body, "exec_type": "trade", "last_quantity": "-1", "last_price": "1"}
    assert (await stack.call("sim-venue", "POST", "/executions", negative)).status_code == 422


async def test_what_if_compliance_check_creates_nothing(stack: Stack) -> None:
    body = order_body(quantity=100000, order_type="market", limit_price=None, allocations=[])
    response = await stack.call("alice", "POST", "/compliance/check", body)
    assert response.status_code == 200, response.text
    check = response.json()
    assert (check["outcome"], check["notional"], check["currency"]) == ("warn", "23050000", "USD")
    assert check["approvals_required"] == ["desk_head", "cio"]
    warned = [r["rule"] for r in check["results"] if r["outcome"] == "warn"]
    assert warned == ["alpha-soft-order-notional"]
    await assert_no_workflow(stack, body["fund"], body["client_order_id"])

    restricted = await stack.call(
        "alice", "POST", "/compliance/check", order_body(symbol="GME", allocations=[])
    )
    assert (restricted.json()["outcome"], restricted.json()["approvals_required"]) == ("fail", [])
    assert (await stack.call("tom", "POST", "/compliance/check", body)).status_code == 403
    assert (
        await stack.call("alice", "POST", "/compliance/check", {**body, "fund": "fund-beta"})
    ).status_code == 403
    unknown = await stack.call("alice", "POST", "/compliance/check", {**body, "symbol": "NOPE"})
    assert (unknown.status_code, unknown.json()["error"]["field"]) == (422, "symbol")


async def test_a_burst_of_reports_on_one_order_is_taken_or_refused_for_a_retry(
    stack: Stack,
) -> None:
    """Temporal takes at most 10 Updates in flight per workflow: the rest answer 503, never 500."""
    order = await create(stack, quantity=1000, allocations=[])
    order_id = order["order_id"]
    await stack.call("dana", "POST", f"/orders/{order_id}/approve", {})
    await stack.call("tom", "POST", f"/orders/{order_id}/release", {"venue": "manual"})
    now = datetime.now(UTC).isoformat()
    fills = [
        {
            "order_id": order_id,
            "exec_id": f"burst-{n}",
            "exec_type": "trade",
            "last_quantity": "10",
            "last_price": "230",
            "transact_time": now,
        }
        for n in range(60)
    ]
    answers = await asyncio.gather(
        *(stack.call("sim-venue", "POST", "/executions", fill) for fill in fills)
    )
    codes = [a.status_code for a in answers]
    print("burst of 60 reports:", {code: codes.count(code) for code in set(codes)})
    assert set(codes) <= {202, 503}
    for answer in answers:
        if answer.status_code == 503:
            assert answer.headers["retry-after"]
            assert answer.json()["error"]["code"] == "temporal_busy"
    taken = codes.count(202)
    shown = (await stack.call("alice", "GET", f"/orders/{order_id}")).json()
    assert shown["filled_quantity"] == str(10 * taken)


async def test_creating_a_closed_order_again_answers_from_the_state_it_closed_with(
    stack: Stack,
) -> None:
    body = order_body(
        symbol="GME",
        quantity=100,
        order_type="market",
        limit_price=None,
        allocations=[{"account": "alpha-main", "quantity": 100}],
    )
    first = await stack.call("alice", "POST", "/orders", body)
    assert (first.status_code, first.json()["status"]) == (201, "compliance_rejected")
    await closed_history(stack, first.json()["order_id"])
    again = await stack.call("alice", "POST", "/orders", body)
    assert (again.status_code, again.json()) == (200, first.json())
    different = await stack.call("alice", "POST", "/orders", {**body, "notes": "another"})
    assert different.status_code == 409
    assert different.json()["error"]["code"] == "duplicate_client_order_id"


async def test_an_order_running_on_the_first_workflow_finishes_on_it_through_the_api(
    stack: Stack,
) -> None:
    """Orders started before v2 keep running on v1: the API routes them by the read model."""
    request = OrderRequest(
        client_order_id=f"v1-{uuid.uuid4().hex[:10]}",
        fund="fund-alpha",
        symbol="AAPL",
        side=Side.BUY,
        quantity=Decimal(100),
        allocations=[AllocationRequest(account="alpha-main", quantity=Decimal(100))],
    )
    order_id = order_id_for(request.fund, request.client_order_id)
    await stack.env.client.start_workflow(
        OrderWorkflowV1.run,
        OrderWorkflowInput(
            order_id=order_id,
            request=request,
            created_by="alice",
            back_office_task_queue=stack.settings.back_office_task_queue,
        ),
        id=order_workflow_id(order_id),
        task_queue=stack.settings.orders_task_queue,
    )
    pending = await stack.wait_for_status("alice", order_id, "pending_approval")
    assert pending["approvals"]["required"] == ["desk_head"]
    listed = (await stack.call("dana", "GET", "/approvals?limit=200")).json()["items"]
    assert order_id in [o["order_id"] for o in listed]
    own = await stack.call("alice", "POST", f"/orders/{order_id}/approve", {})
    assert own.status_code == 403
    approved = await stack.call("dana", "POST", f"/orders/{order_id}/approve", {"comment": "v1"})
    assert (approved.status_code, approved.json()["status"]) == (200, "approved")
    released = await stack.call("tom", "POST", f"/orders/{order_id}/release", {})
    assert released.status_code == 200
    # The simulator reports over HTTP; the API delivers them to v1 as Signals.
    settled = await stack.wait_for_status("alice", order_id, "settled")
    assert (settled["filled_quantity"], settled["cl_ord_id"]) == ("100", order_id)
    last = settled["executions"][-1]
    report = {k: last[k] for k in ("exec_id", "exec_type", "last_quantity", "last_price")}
    resend = await stack.call(
        "sim-venue",
        "POST",
        "/executions",
        report | {"order_id": order_id, "transact_time": last["transact_time"]},
    )
    assert (resend.status_code, resend.json()["status"]) == (200, "duplicate")
    history = (await stack.call("cora", "GET", f"/orders/{order_id}/history")).json()
    assert ("approved", "dana") in [(h["event"], h["actor"]) for h in history]
