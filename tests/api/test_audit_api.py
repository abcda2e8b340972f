"""The compliance timeline over HTTP: an order as it stood (`?as_of=`), and `GET /audit`.

`as_of` is checked against what `GET /orders/{id}` showed live at the same moments of one
order's life: pending approval (what the approver saw), approved, and after its fills.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlmodel import select
from temporalio.service import RPCError, RPCStatusCode

from db.engine import make_engine, session_factory
from db.tables import OrderEventRow, OrderRow
from domain.ids import order_workflow_id
from tests.api.conftest import Stack
from tests.api.test_orders_api import closed_history, create

# Nothing of the public view is live-only while the read model has caught up with the order:
# every action answers once the read model shows it, and these moments are all after one. A
# long-lived order would differ in `executions` only: a run carries its newest 50 into the next
# (continue-as-new), while the read model keeps them all.
LIVE_ONLY: frozenset[str] = frozenset()


async def get(stack: Stack, user: str | None, path: str, **params: str) -> httpx.Response:
    headers = stack.auth(user) if user else {}
    return await stack.http.get(path, params=params, headers=headers)


async def as_of(stack: Stack, order_id: str, instant: datetime, user: str = "cora") -> Any:
    response = await get(stack, user, f"/orders/{order_id}/history", as_of=instant.isoformat())
    assert response.status_code == 200, response.text
    return response.json()


def assert_same_view(folded: dict[str, Any], live: dict[str, Any]) -> None:
    assert folded.keys() == live.keys()
    for name in live.keys() - LIVE_ONLY:
        assert _by_value(folded[name]) == _by_value(live[name]), (name, folded[name], live[name])


_AMOUNTS = {"quantity", "price", "gross_amount"}


def _by_value(value: Any) -> Any:
    """Settlement amounts compare by value: the read model stores 92200.00 as 92200."""
    if isinstance(value, list):
        return [_by_value(v) for v in value]
    if isinstance(value, dict):
        return {
            k: Decimal(v) if k in _AMOUNTS and isinstance(v, str) else _by_value(v)
            for k, v in value.items()
        }
    return value


async def live_then(stack: Stack, order_id: str, user: str) -> tuple[dict[str, Any], datetime]:
    """Return the order as `GET /orders/{id}` shows it now, and an instant just after that."""
    response = await stack.call(user, "GET", f"/orders/{order_id}")
    assert response.status_code == 200, response.text
    return response.json(), datetime.now(UTC)


async def test_as_of_is_what_get_order_showed_at_each_moment(stack: Stack) -> None:
    order = await create(stack)
    order_id = order["order_id"]
    assert order["status"] == "pending_approval"

    # What the approver saw, then the approval.
    seen, pending_at = await live_then(stack, order_id, "dana")
    approved = await stack.call("dana", "POST", f"/orders/{order_id}/approve", {"comment": "ok"})
    assert approved.status_code == 200, approved.text
    after_approval, approved_at = await live_then(stack, order_id, "alice")
    assert after_approval["status"] == "approved"

    released = await stack.call("tom", "POST", f"/orders/{order_id}/release", {})
    assert released.status_code == 200, released.text
    await stack.wait_for_status("alice", order_id, "settled", within=60)
    timeline = await closed_history(stack, order_id)
    after_fills, closed_at = await live_then(stack, order_id, "alice")
    assert after_fills["status"] == "settled" and after_fills["filled_quantity"] == "1000"

    folded = await as_of(stack, order_id, pending_at)
    assert folded["status"] == "pending_approval" and folded["approvals"]["given"] == []
    assert_same_view(folded, seen)
    assert_same_view(await as_of(stack, order_id, approved_at), after_approval)
    assert_same_view(await as_of(stack, order_id, closed_at), after_fills)

    # The instant of the first fill: filled in part or whole, nothing allocated yet.
    fill = next(e for e in timeline if e["event"] in ("partial_fill", "fill"))
    at_fill = await as_of(stack, order_id, datetime.fromisoformat(fill["at"]))
    assert at_fill["status"] == fill["status"] and at_fill["version"] == fill["seq"]
    assert at_fill["executions"] and at_fill["allocations"] == [] and at_fill["settlements"] == []
    assert at_fill["filled_quantity"] == at_fill["executions"][-1]["cumulative_quantity"]

    # The future is the current view; an instant in another offset is the same instant.
    assert_same_view(await as_of(stack, order_id, closed_at + timedelta(days=365)), after_fills)
    tokyo = approved_at.astimezone(datetime.fromisoformat("2026-01-01T00:00:00+09:00").tzinfo)
    assert_same_view(await as_of(stack, order_id, tokyo), after_approval)


async def test_as_of_refuses_what_it_cannot_answer(stack: Stack) -> None:
    order = await create(stack)
    order_id = order["order_id"]
    path = f"/orders/{order_id}/history"
    created_at = datetime.fromisoformat(order["created_at"])
    refusals = {
        "before the order": (created_at - timedelta(seconds=1)).isoformat(),
        "no offset": created_at.replace(tzinfo=None).isoformat(),
        "not a time": "yesterday",
    }
    for why, value in refusals.items():
        response = await get(stack, "cora", path, as_of=value)
        assert response.status_code == 422, (why, response.text)
        assert response.json()["error"]["field"] == "as_of", why
    assert (
        "before the order's creation"
        in (await get(stack, "cora", path, as_of=refusals["before the order"])).json()["error"][
            "message"
        ]
    )
    now = datetime.now(UTC).isoformat()
    assert (await get(stack, None, path, as_of=now)).status_code == 401
    assert (await get(stack, "bob", path, as_of=now)).status_code == 404  # another fund's order
    assert (await get(stack, "cora", path, as_of=now, format="temporal")).status_code == 422
    await stack.call("alice", "POST", f"/orders/{order_id}/cancel", {"reason": "done"})


async def test_timeline_and_as_of_answer_once_temporal_has_forgotten_the_order(
    stack: Stack,
) -> None:
    """An order whose workflow history retention removed: only its read-model rows are left."""
    order = await create(stack)
    canceled = await stack.call("alice", "POST", f"/orders/{order['order_id']}/cancel", {})
    assert canceled.status_code == 200, canceled.text
    timeline = await closed_history(stack, order["order_id"])

    # The same rows under an id Temporal has never known.
    gone = f"ord_{uuid.uuid4().hex[:20]}"
    engine = make_engine(stack.settings.resolved_database_url)
    with session_factory(engine)() as session:
        row = session.get(OrderRow, order["order_id"])
        assert row is not None
        session.add(OrderRow.model_validate(row.model_dump() | {"order_id": gone}))
        for event in session.exec(
            select(OrderEventRow).where(OrderEventRow.order_id == order["order_id"])
        ).all():
            session.add(OrderEventRow.model_validate(event.model_dump() | {"order_id": gone}))
        session.commit()
    engine.dispose()
    with pytest.raises(RPCError) as unknown:
        await stack.env.client.get_workflow_handle(order_workflow_id(gone)).describe()
    assert unknown.value.status is RPCStatusCode.NOT_FOUND

    forgotten = await get(stack, "cora", f"/orders/{gone}/history")
    assert forgotten.status_code == 200, forgotten.text
    assert forgotten.json() == timeline
    original = await as_of(stack, order["order_id"], datetime.now(UTC))
    copy = await as_of(stack, gone, datetime.now(UTC))
    assert original["status"] == "canceled"
    assert copy == original | {"order_id": gone, "cl_ord_id": gone}
    assert (await get(stack, "bob", f"/orders/{gone}/history")).status_code == 404
    # The order's page too: a closed order's final state is in the read model.
    page = await stack.call("cora", "GET", f"/orders/{gone}")
    assert (page.status_code, page.json()["status"]) == (200, "canceled")


async def audit_page(stack: Stack, user: str, **params: str) -> dict[str, Any]:
    response = await get(stack, user, "/audit", **params)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


async def test_audit_search_filters_pages_and_refuses(stack: Stack) -> None:
    since = datetime.now(UTC) - timedelta(milliseconds=1)
    alpha = [await create(stack) for _ in range(3)]
    beta = await create(stack, "bob", fund="fund-beta", allocations=[])
    # Let each order's projection land (the create answers once compliance is in the read model).
    await asyncio.sleep(0.2)

    one = alpha[0]["order_id"]
    rows = (await audit_page(stack, "cora", order_id=one))["items"]
    timeline = (await stack.call("cora", "GET", f"/orders/{one}/history")).json()
    assert [(r["seq"], r["kind"], r["actor"]) for r in rows] == [
        (e["seq"], e["event"], e["actor"]) for e in reversed(timeline)
    ]
    assert all(len(r["hash"]) == 64 and len(r["prev_hash"]) == 64 for r in rows)

    # Paging: the pages, in turn, are the whole answer, newest first, nothing twice.
    window = {"fund": "fund-alpha", "from": since.isoformat()}
    whole = (await audit_page(stack, "cora", **window, limit="200"))["items"]
    assert {r["order_id"] for r in whole} >= {o["order_id"] for o in alpha}
    assert {r["fund"] for r in whole} == {"fund-alpha"}
    paged: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        extra = {"cursor": cursor} if cursor else {}
        page = await audit_page(stack, "cora", **window, limit="2", **extra)
        assert len(page["items"]) <= 2
        paged += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert paged == whole
    keys = [(r["at"], r["fund"], r["position"]) for r in whole]
    assert keys == sorted(keys, reverse=True) and len(set(keys)) == len(keys)

    # Filters: an actor, a period that ends before the orders, a fund of the caller's.
    by_bob = (await audit_page(stack, "cora", actor="bob", **{"from": since.isoformat()}))["items"]
    assert {(r["actor"], r["fund"]) for r in by_bob} == {("bob", "fund-beta")}
    assert beta["order_id"] in {r["order_id"] for r in by_bob}
    before = await audit_page(stack, "cora", to=since.isoformat(), order_id=one)
    assert before["items"] == []

    # Who: compliance everywhere, a desk head in their funds, no one else.
    assert (await audit_page(stack, "dana", order_id=one))["items"] == rows
    assert (await get(stack, None, "/audit")).status_code == 401
    for user, params in [
        ("alice", {}),
        ("tom", {"fund": "fund-alpha"}),
        ("mike", {}),
        ("dana", {"fund": "fund-nowhere"}),
    ]:
        response = await get(stack, user, "/audit", **params)
        assert (response.status_code, response.json()["error"]["code"]) == (403, "forbidden"), (
            user,
            params,
        )
    # A fund that does not exist answers as one the caller may not read.
    unknown = (await get(stack, "cora", "/audit", fund="fund-nowhere")).json()["error"]
    denied = (await get(stack, "tom", "/audit", fund="fund-alpha")).json()["error"]
    assert unknown["code"] == denied["code"] == "forbidden"

    # Bad input names its field.
    later = (since + timedelta(hours=1)).isoformat()
    for params, field in [
        ({"from": "yesterday"}, "from"),
        ({"from": since.replace(tzinfo=None).isoformat()}, "from"),
        ({"to": since.replace(tzinfo=None).isoformat()}, "to"),
        ({"from": later, "to": since.isoformat()}, "to"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"limit": "201"}, "limit"),
        ({"limit": "0"}, "limit"),
    ]:
        response = await get(stack, "cora", "/audit", **params)
        assert response.status_code == 422, (params, response.text)
        assert response.json()["error"]["field"] == field, (params, response.json())
    # Approvers' inboxes are shared by the suite: leave nothing waiting on them.
    for order, user in [*((o, "alice") for o in alpha), (beta, "bob")]:
        await stack.call(user, "POST", f"/orders/{order['order_id']}/cancel", {"reason": "done"})
