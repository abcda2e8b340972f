"""Amend and cancel through the API, by role: who may, at which stage, and what refusals say."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import Stack
from tests.api.test_audit_api import as_of, assert_same_view, live_then
from tests.api.test_execution_guards import released, report, send
from tests.api.test_inbox import whole_inbox
from tests.api.test_orders_api import create, order_body


async def amend(stack: Stack, user: str, order_id: str, body: dict[str, Any]) -> Any:
    return await stack.call(user, "POST", f"/orders/{order_id}/amend", body)


async def pending_approval(stack: Stack, **overrides: Any) -> str:
    order_id: str = (await create(stack, **overrides))["order_id"]
    await stack.wait_for_status("alice", order_id, "pending_approval")
    return order_id


async def close(stack: Stack, order_id: str) -> None:
    """Cancel an order a test leaves waiting: approvers' inboxes are shared by the suite."""
    answer = await stack.call("alice", "POST", f"/orders/{order_id}/cancel", {"reason": "done"})
    assert answer.status_code == 200, answer.text
    if answer.json()["status"] == "pending_cancel":
        done = await send(stack, report(order_id, f"{order_id}-closed", "canceled"))
        assert done.status_code == 202, done.text


async def working(stack: Stack) -> str:
    order_id = await released(stack)
    answer = await send(stack, report(order_id, f"{order_id}-ack", "new"))
    assert answer.status_code == 202, answer.text
    return order_id


async def test_a_pm_amends_before_release_and_the_order_is_judged_again(stack: Stack) -> None:
    body = order_body(quantity=1000)
    created = await stack.call("alice", "POST", "/orders", body)
    assert created.status_code == 201, created.text
    order_id = created.json()["order_id"]
    await stack.wait_for_status("alice", order_id, "pending_approval")
    approved = await stack.call("dana", "POST", f"/orders/{order_id}/approve", {})
    assert approved.json()["status"] == "approved", approved.text

    answer = await amend(
        stack, "alice", order_id, {"quantity": "2000", "limit_price": "230", "reason": "add"}
    )
    assert answer.status_code == 200, answer.text
    order = answer.json()
    assert (order["status"], order["quantity"], order["limit_price"]) == (
        "pending_approval",
        "2000",
        "230",
    )
    assert order["approvals"]["given"] == []  # dana approved other terms
    assert order["requested_allocations"] == [
        {"account": "alpha-main", "quantity": "1200"},
        {"account": "alpha-growth", "quantity": "800"},
    ]
    history = (await stack.call("cora", "GET", f"/orders/{order_id}/history")).json()
    (amended,) = [e for e in history if e["event"] == "amended"]
    assert amended["actor"] == "alice" and amended["details"]["quantity"] == "2000"
    # The list shows the new terms at once (the answer waits for the read model).
    listed = (await stack.call("alice", "GET", "/orders?symbol=AAPL&limit=50")).json()
    row = next(o for o in listed["items"] if o["order_id"] == order_id)
    assert (row["quantity"], row["status"]) == ("2000", "pending_approval")

    # Creating again with the original body still answers with this order; new terms differ.
    again = await stack.call("alice", "POST", "/orders", body)
    assert again.status_code == 200 and again.json()["order_id"] == order_id, again.text
    amended_body = {**body, "quantity": 2000, "allocations": order["requested_allocations"]}
    differs = await stack.call("alice", "POST", "/orders", amended_body)
    assert differs.status_code == 409, differs.text
    await close(stack, order_id)


@pytest.mark.parametrize(
    ("user", "status", "code"),
    [
        ("tom", 403, "forbidden"),  # a trader amends only what works at a venue
        ("dana", 403, "forbidden"),
        ("cora", 403, "forbidden"),
        ("bob", 404, "not_found"),  # fund-beta's PM cannot see fund-alpha's order
    ],
)
async def test_who_may_not_amend_before_release(
    stack: Stack, user: str, status: int, code: str
) -> None:
    order_id = await pending_approval(stack)
    answer = await amend(stack, user, order_id, {"quantity": "900"})
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code
    if user in ("dana", "cora"):  # holds no amend permission at all: says so plainly
        assert answer.json()["error"]["message"] == f"{user} may not amend orders in fund-alpha"
    order = (await stack.call("alice", "GET", f"/orders/{order_id}")).json()
    assert order["quantity"] == "1000"
    await close(stack, order_id)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, None),
        ({"quantity": "1000"}, None),  # the same terms: nothing to amend
        ({"quantity": "-5"}, "quantity"),
        ({"quantity": "0"}, "quantity"),
        ({"quantity": "1e400"}, "quantity"),
        ({"quantity": "10.5"}, "quantity"),  # not a whole number of lots
        ({"limit_price": "abc"}, "limit_price"),
        ({"quantity": "900", "venue": "x"}, "venue"),  # no such field
        ({"reason": "x" * 2001}, "reason"),
    ],
)
async def test_a_bad_amend_is_refused_with_a_422_and_changes_nothing(
    stack: Stack, body: dict[str, Any], field: str | None
) -> None:
    order_id = await pending_approval(stack)
    answer = await amend(stack, "alice", order_id, body)
    assert answer.status_code == 422, answer.text
    if field is not None:
        assert field in answer.text
    order = (await stack.call("alice", "GET", f"/orders/{order_id}")).json()
    assert (order["quantity"], order["status"]) == ("1000", "pending_approval")
    await close(stack, order_id)


async def test_unauthenticated_amend_is_401(stack: Stack) -> None:
    order_id = await pending_approval(stack)
    answer = await stack.call(None, "POST", f"/orders/{order_id}/amend", {"quantity": "900"})
    assert answer.status_code == 401
    await close(stack, order_id)


async def test_a_trader_amends_a_working_order_through_pending_replace(stack: Stack) -> None:
    order_id = await working(stack)
    answer = await amend(stack, "tom", order_id, {"quantity": "500", "reason": "less"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "pending_replace"
    # One at a time: another amend waits for the venue's answer.
    busy = await amend(stack, "alice", order_id, {"quantity": "400"})
    assert busy.status_code == 409 and "pending" in busy.json()["error"]["message"]

    replaced = await send(stack, report(order_id, f"{order_id}-rep", "replaced"))
    assert replaced.status_code == 202, replaced.text
    assert (replaced.json()["order_status"], replaced.json()["leaves_quantity"]) == (
        "working",
        "500",
    )
    order = (await stack.call("tom", "GET", f"/orders/{order_id}")).json()
    assert order["quantity"] == "500" and order["cl_ord_id"] == f"{order_id}-R1"

    # No replace pending: the venue's replace answers are refused, with the reason.
    stray = await send(stack, report(order_id, f"{order_id}-stray", "replace_rejected"))
    assert stray.status_code == 409 and "none is pending" in stray.json()["error"]["message"]

    rejected_next = await amend(stack, "alice", order_id, {"limit_price": "229"})
    assert rejected_next.json()["status"] == "pending_replace", rejected_next.text
    refused = await send(stack, report(order_id, f"{order_id}-rr", "replace_rejected"))
    assert refused.status_code == 202 and refused.json()["order_status"] == "working", refused.text
    order = (await stack.call("tom", "GET", f"/orders/{order_id}")).json()
    assert (order["limit_price"], order["cl_ord_id"]) == ("231", f"{order_id}-R1")
    await close(stack, order_id)


async def test_cancel_by_role(stack: Stack) -> None:
    # A PM cancels an order of their fund before release: at once.
    order_id = await pending_approval(stack)
    for user, status in (("dana", 403), ("mike", 403), ("bob", 404)):
        refused = await stack.call(user, "POST", f"/orders/{order_id}/cancel", {"reason": "no"})
        assert refused.status_code == status, (user, refused.text)
    canceled = await stack.call("alice", "POST", f"/orders/{order_id}/cancel", {"reason": "no"})
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"

    # A trader cancels a working order: pending_cancel until the venue confirms.
    order_id = await working(stack)
    pending = await stack.call("tom", "POST", f"/orders/{order_id}/cancel", {"reason": "stop"})
    assert pending.status_code == 200 and pending.json()["status"] == "pending_cancel"
    again = await stack.call("alice", "POST", f"/orders/{order_id}/cancel", {"reason": "stop"})
    assert again.status_code == 409, again.text
    no_amend = await amend(stack, "alice", order_id, {"quantity": "100"})
    assert (
        no_amend.status_code == 409 and "cancel is pending" in no_amend.json()["error"]["message"]
    )
    done = await send(stack, report(order_id, f"{order_id}-cxl", "canceled"))
    assert done.status_code == 202 and done.json()["order_status"] == "canceled", done.text


async def test_an_upsize_needing_a_new_level_waits_in_the_approvers_inbox(stack: Stack) -> None:
    order_id = await working(stack)
    working_quantity = (await stack.call("tom", "GET", f"/orders/{order_id}")).json()["quantity"]
    # 50,000 at 231 is past 10,000,000: the cio must approve, which the order never needed.
    answer = await amend(stack, "alice", order_id, {"quantity": "50000", "reason": "scale up"})
    assert answer.status_code == 200, answer.text
    order = answer.json()
    assert (order["status"], order["quantity"]) == ("working", working_quantity)
    pending = order["amendment"]
    assert (pending["quantity"], pending["requested_by"], pending["reason"]) == (
        "50000",
        "alice",
        "scale up",
    )
    assert pending["approvals"]["required"] == ["cio"] and pending["expire_at"]

    # The cio's inbox lists it, the new terms beside the working ones; dana's does not.
    items = await whole_inbox(stack, "carl")
    item = next(i for i in items if i["order_id"] == order_id)
    assert (item["approval_level"], item["approvals_required"]) == ("cio", ["cio"])
    assert item["may_decide"] and item["quantity"] == working_quantity
    # Compliance's results are those on the new terms: what the approver decides.
    assert any("50,000" in r["message"] for r in item["compliance"])
    assert (item["amendment"]["quantity"], item["amendment"]["working_quantity"]) == (
        "50000",
        working_quantity,
    )
    assert order_id not in {i["order_id"] for i in await whole_inbox(stack, "dana")}
    # What the approver saw is what the timeline folds back to, afterwards.
    seen, seen_at = await live_then(stack, order_id, "carl")
    assert seen["amendment"]["quantity"] == "50000"

    # The desk head already approved the order, and holds no cio level anyway.
    refused = await stack.call("dana", "POST", f"/orders/{order_id}/approve", {})
    assert refused.status_code == 403, refused.text
    approved = await stack.call("carl", "POST", f"/orders/{order_id}/approve", {"comment": "ok"})
    assert approved.status_code == 200, approved.text
    order = await stack.wait_for_status("tom", order_id, "pending_replace")
    assert order["amendment"] is None
    assert order["replace_pending"] == {
        "quantity": "50000",
        "limit_price": "231",
        "cl_ord_id": f"{order_id}-R1",
        "orig_cl_ord_id": order_id,
    }
    assert order_id not in {i["order_id"] for i in await whole_inbox(stack, "carl")}
    replacing, replacing_at = await live_then(stack, order_id, "tom")
    history = (await stack.call("cora", "GET", f"/orders/{order_id}/history")).json()
    events = [e["event"] for e in history]
    waited = events.index("amendment_awaits_approval")
    assert events.index("amendment_approved") > waited
    assert events.index("replace_requested") > events.index("amendment_approved")

    replaced = await send(stack, report(order_id, f"{order_id}-rep", "replaced"))
    assert replaced.status_code == 202, replaced.text
    assert replaced.json()["leaves_quantity"] == "50000"
    assert_same_view(await as_of(stack, order_id, seen_at), seen)
    assert_same_view(await as_of(stack, order_id, replacing_at), replacing)
    await close(stack, order_id)


async def test_a_rejected_upsize_leaves_the_order_working_as_it_was(stack: Stack) -> None:
    order_id = await working(stack)
    answer = await amend(stack, "tom", order_id, {"quantity": "50000"})
    assert answer.status_code == 200 and answer.json()["amendment"], answer.text
    no_reason = await stack.call("carl", "POST", f"/orders/{order_id}/reject", {"reason": " "})
    assert no_reason.status_code == 422, no_reason.text
    rejected = await stack.call(
        "carl", "POST", f"/orders/{order_id}/reject", {"reason": "not today"}
    )
    assert rejected.status_code == 200, rejected.text
    order = rejected.json()
    assert (order["status"], order["amendment"]) == ("working", None)
    again = await stack.call("carl", "POST", f"/orders/{order_id}/reject", {"reason": "twice"})
    assert again.status_code == 409, again.text

    # A cancel withdraws an amend still waiting; a late approval then has nothing to decide.
    waiting = await amend(stack, "tom", order_id, {"quantity": "50000"})
    assert waiting.json()["amendment"], waiting.text
    await close(stack, order_id)
    late = await stack.call("carl", "POST", f"/orders/{order_id}/approve", {})
    assert late.status_code == 409, late.text
    history = (await stack.call("cora", "GET", f"/orders/{order_id}/history")).json()
    (withdrawn,) = [e for e in history if e["event"] == "amendment_withdrawn"]
    assert withdrawn["reason"] == "a cancel was requested"
