"""Pre-trade compliance over HTTP: a soft breach from creation to settled, the rules in force."""

from __future__ import annotations

import uuid

from sqlmodel import col, select

from db import audit
from db.engine import make_engine, session_factory
from db.tables import AuditRow
from tests.api.conftest import Stack
from tests.api.test_orders_api import create


async def test_a_soft_breach_goes_override_approval_release_settled(stack: Stack) -> None:
    quantity = 90000 + uuid.uuid4().int % 1000  # ~20.8M: above fund-alpha's 20M soft limit
    order = await create(stack, "alice", quantity=quantity, allocations=[])
    order_id = order["order_id"]
    assert order["status"] == "pending_override", order
    warned = [c["rule"] for c in order["compliance"] if c["outcome"] == "warn"]
    assert warned == ["alpha-soft-order-notional"]
    soft = next(c for c in order["compliance"] if c["rule"] == "alpha-soft-order-notional")
    assert soft["limit"] and soft["observed"]  # the numbers behind the sentence
    assert order["approvals"]["required"] == ["desk_head", "cio"]  # a soft breach: both

    body = {"justification": "index rebalance agreed with the CIO", "rules": warned}
    by_creator = await stack.call("alice", "POST", f"/orders/{order_id}/override", body)
    assert by_creator.status_code == 403
    by_trader = await stack.call("tom", "POST", f"/orders/{order_id}/override", body)
    assert by_trader.status_code == 403
    unjustified = {**body, "justification": ""}
    assert (
        await stack.call("cora", "POST", f"/orders/{order_id}/override", unjustified)
    ).status_code == 422
    unnamed = await stack.call(
        "cora", "POST", f"/orders/{order_id}/override", {**body, "rules": ["kill_switch"]}
    )
    assert (unnamed.status_code, unnamed.json()["error"]["field"]) == (422, "rules")
    overridden = await stack.call("cora", "POST", f"/orders/{order_id}/override", body)
    assert overridden.status_code == 200, overridden.text
    assert overridden.json()["status"] == "pending_approval"

    for approver in ("dana", "carl"):
        approved = await stack.call(approver, "POST", f"/orders/{order_id}/approve", {})
        assert approved.status_code == 200, approved.text
    released = await stack.call("tom", "POST", f"/orders/{order_id}/release", {})
    assert released.status_code == 200, released.text
    settled = await stack.wait_for_status("alice", order_id, "settled", within=60)
    assert settled["status"] == "settled"

    history = (await stack.call("cora", "GET", f"/orders/{order_id}/history")).json()
    events = [h["event"] for h in history]
    assert events[:4] == ["order_created", "compliance_warned", "overridden", "approval_given"]
    override = next(h for h in history if h["event"] == "overridden")
    assert override["actor"] == "cora" and override["details"]["rules"] == warned
    warned_entry = next(h for h in history if h["event"] == "compliance_warned")
    assert len(warned_entry["details"]["rules_version"]) == 64

    # Every event of its life is in fund-alpha's audit chain, in order, and the chain verifies.
    engine = make_engine(stack.settings.resolved_database_url)
    with session_factory(engine)() as session:
        chained = session.exec(
            select(AuditRow).where(AuditRow.order_id == order_id).order_by(col(AuditRow.position))
        ).all()
        assert [row.kind for row in chained] == events
        assert audit.verify(session, ["fund-alpha"]) == []
    engine.dispose()


async def test_the_what_if_answers_what_the_order_got(stack: Stack) -> None:
    quantity = 1000 + uuid.uuid4().int % 1000
    body = {
        "client_order_id": f"wi-{uuid.uuid4().hex[:8]}",
        "fund": "fund-alpha",
        "symbol": "MSFT",
        "side": "buy",
        "quantity": str(quantity),
        "order_type": "market",
    }
    what_if = (await stack.call("alice", "POST", "/compliance/check", body)).json()
    created = (await stack.call("alice", "POST", "/orders", body)).json()
    assert [(r["rule"], r["outcome"]) for r in what_if["results"]] == [
        (c["rule"], c["outcome"]) for c in created["compliance"]
    ]
    assert what_if["approvals_required"] == created["approvals"]["required"]
    await stack.call("alice", "POST", f"/orders/{created['order_id']}/cancel", {})


async def test_the_rules_in_force_for_a_fund(stack: Stack) -> None:
    response = await stack.call("alice", "GET", "/compliance/rules?fund=fund-alpha")
    assert response.status_code == 200, response.text
    rules = response.json()
    assert len(rules["version"]) == 64
    by_id = {r["id"]: r for r in rules["rules"]}
    assert by_id["alpha-max-order-notional"]["severity"] == "fail"
    assert by_id["alpha-soft-order-notional"]["severity"] == "warn"
    assert by_id["firm-restricted-list"]["params"]["symbols"] == ["GME"]
    assert not any(r["fund"] == "fund-beta" for r in rules["rules"])
    assert (await stack.call("cora", "GET", "/compliance/rules?fund=fund-beta")).status_code == 200
    assert (await stack.call("bob", "GET", "/compliance/rules?fund=fund-alpha")).status_code == 403
    assert (await stack.call("tom", "GET", "/compliance/rules?fund=fund-alpha")).status_code == 403
