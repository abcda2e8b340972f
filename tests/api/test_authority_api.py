"""What the API attests for each decision, and the audit of refused attempts, over HTTP."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from domain.authority import SignedAuthority
from tests.api.conftest import Stack
from tests.api.test_orders_api import create


async def test_an_approval_records_who_by_which_rule_and_policy_version(stack: Stack) -> None:
    order = await create(stack, "alice")
    order_id = order["order_id"]
    await stack.wait_for_status("alice", order_id, "pending_approval")
    approved = await stack.call("dana", "POST", f"/orders/{order_id}/approve", {"comment": "ok"})
    assert approved.status_code == 200, approved.text
    (given,) = approved.json()["approvals"]["given"]
    assert given["user"] == "dana"
    assert given["policy"] == ["desk_head", "*", "approvals", "desk_head"]
    assert "desk_head" in given["roles"]
    assert len(given["policy_version"]) == 64  # sha256 of the policy files in force

    history = (await stack.call("cora", "GET", f"/orders/{order_id}/history")).json()
    (entry,) = [e for e in history if e["actor"] == "dana"]
    signed = SignedAuthority.model_validate(entry["details"]["authority"])
    # Compliance can re-verify the statement with the workers' public key.
    public_key: Ed25519PublicKey = stack.settings.verify_keys()[0]
    public_key.verify(base64.b64decode(signed.signature), signed.statement.encode())
    authority = signed.authority()
    assert (authority.user, authority.level, authority.order_id) == ("dana", "desk_head", order_id)


async def test_refused_attempts_are_in_the_audit_table(stack: Stack) -> None:
    order = await create(stack, "alice")
    order_id = order["order_id"]
    await stack.wait_for_status("alice", order_id, "pending_approval")
    # The API's policy refuses a pm and a trader; the order refuses a release before approval.
    own = await stack.call("alice", "POST", f"/orders/{order_id}/approve", {"comment": "mine"})
    assert own.status_code == 403
    trader = await stack.call("tom", "POST", f"/orders/{order_id}/approve", {"comment": "me"})
    assert trader.status_code == 403
    early = await stack.call("tom", "POST", f"/orders/{order_id}/release", {})
    assert early.status_code == 409

    refusals = await stack.call("cora", "GET", f"/orders/{order_id}/refusals")
    assert refusals.status_code == 200, refusals.text
    seen = [(r["user"], r["action"], r["status"], r["via"]) for r in refusals.json()]
    assert seen == [
        ("alice", "approve", 403, "api"),
        ("tom", "approve", 403, "api"),
        ("tom", "release", 409, "api"),
    ]
    assert refusals.json()[0]["message"] == "alice may not approve orders in fund-alpha"
    # Only those who may read the order's history see them.
    assert (await stack.call("tom", "GET", f"/orders/{order_id}/refusals")).status_code == 200
    assert (await stack.call("bob", "GET", f"/orders/{order_id}/refusals")).status_code == 404
