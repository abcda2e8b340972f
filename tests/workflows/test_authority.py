"""Nobody with only Temporal access can act on an order as someone else (signed authority).

These tests play an intruder who reaches Temporal directly: its client does not sign, or signs
with a key of its own, or replays and bends statements the API signed for others.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from domain.authority import Action, Authority, SignedAuthority, key_id, sign
from domain.errors import RefusalType
from domain.executions import WRONG_VENUE
from domain.models import ExecType, OrderStatus
from tests.authority import statement
from tests.workflows.conftest import Desk, OrderHandle, wait_for_status
from tests.workflows.test_order_workflow import (
    CIO,
    DESK_HEAD,
    approve_as,
    refusal_of,
    report_input,
)
from workflows.messages import ApproveInput, CancelInput, ReleaseInput
from workflows.order import OrderWorkflow


def order_id_of(handle: OrderHandle) -> str:
    return handle.id.removeprefix("order:")


def intruders_handle(desk: Desk, handle: OrderHandle) -> OrderHandle:
    """The same order, reached with a bare Temporal client (nothing signs for it)."""
    return desk.env.client.get_workflow_handle_for(OrderWorkflow.run, handle.id)


async def pending_order(desk: Desk, quantity: str = "50000") -> OrderHandle:
    handle = await desk.start(quantity=quantity)  # 11.5M: desk head, then CIO
    await wait_for_status(handle, OrderStatus.PENDING_APPROVAL)
    return handle


async def signed_now(desk: Desk, order_id: str, action: Action, user: str, **kw: Any) -> Any:
    return statement(order_id, action, user, issued_at=await desk.env.get_current_time(), **kw)


async def test_an_unsigned_approval_sent_straight_to_temporal_is_refused(desk: Desk) -> None:
    handle = await pending_order(desk)
    forged = ApproveInput(user="mallory", comment="trust me", grants=[DESK_HEAD, CIO])
    refusal = await refusal_of(intruders_handle(desk, handle), OrderWorkflow.approve, forged)
    assert refusal.type == RefusalType.FORBIDDEN
    assert "mallory may not decide level desk_head" in refusal.message
    # Claiming to be dana, with her grants, is no better.
    as_dana = ApproveInput(user="dana", grants=[DESK_HEAD])
    refusal = await refusal_of(intruders_handle(desk, handle), OrderWorkflow.approve, as_dana)
    assert refusal.type == RefusalType.FORBIDDEN
    state = await handle.query(OrderWorkflow.state)
    assert (state.status, state.approvals.given) == (OrderStatus.PENDING_APPROVAL, [])


async def test_a_statement_signed_with_a_key_the_oms_does_not_trust_is_refused(
    desk: Desk,
) -> None:
    handle = await pending_order(desk)
    own_key = Ed25519PrivateKey.generate()
    authority = Authority(
        order_id=order_id_of(handle),
        action=Action.APPROVE,
        user="dana",
        level="desk_head",
        permission=["approvals", "desk_head"],
        policy=["desk_head", "*", "approvals", "desk_head"],
        policy_version="forged",
        issued_at=await desk.env.get_current_time(),
        nonce="n-1",
        key_id=key_id(own_key.public_key()),
    )
    forged = ApproveInput(user="dana", authorities=[sign(authority, own_key)])
    refusal = await refusal_of(intruders_handle(desk, handle), OrderWorkflow.approve, forged)
    assert "a key this OMS does not trust" in refusal.message
    # The trusted key's id on the intruder's signature: the signature does not hold.
    good = await signed_now(desk, order_id_of(handle), Action.APPROVE, "dana", level="desk_head")
    bent = SignedAuthority(
        statement=good.statement.replace('"user":"dana"', '"user":"mallory"'),
        signature=good.signature,
    )
    mallory = ApproveInput(user="mallory", authorities=[bent])
    refusal = await refusal_of(intruders_handle(desk, handle), OrderWorkflow.approve, mallory)
    assert "signature is not valid" in refusal.message


async def test_statements_for_another_order_person_or_time_are_refused(desk: Desk) -> None:
    handle = await pending_order(desk)
    other = await pending_order(desk, quantity="10")
    intruder = intruders_handle(desk, handle)
    order_id = order_id_of(handle)
    # dana's real statement, signed for the other order.
    for_other = await signed_now(
        desk, order_id_of(other), Action.APPROVE, "dana", level="desk_head"
    )
    refusal = await refusal_of(
        intruder, OrderWorkflow.approve, ApproveInput(user="dana", authorities=[for_other])
    )
    assert "issued for another order, action or person" in refusal.message
    # dana's statement, presented by mallory.
    danas = await signed_now(desk, order_id, Action.APPROVE, "dana", level="desk_head")
    refusal = await refusal_of(
        intruder, OrderWorkflow.approve, ApproveInput(user="mallory", authorities=[danas])
    )
    assert "issued for another order, action or person" in refusal.message
    # A reject statement offered as an approval.
    rejecting = await signed_now(desk, order_id, Action.REJECT, "dana", level="desk_head")
    refusal = await refusal_of(
        intruder, OrderWorkflow.approve, ApproveInput(user="dana", authorities=[rejecting])
    )
    assert "issued for another order, action or person" in refusal.message
    # A statement captured ten minutes ago.
    now = await desk.env.get_current_time()
    stale = statement(
        order_id, Action.APPROVE, "dana", level="desk_head", issued_at=now - timedelta(minutes=10)
    )
    refusal = await refusal_of(
        intruder, OrderWorkflow.approve, ApproveInput(user="dana", authorities=[stale])
    )
    assert "more than 300 s from now" in refusal.message
    state = await handle.query(OrderWorkflow.state)
    assert state.approvals.given == []


async def test_a_statement_is_used_once(desk: Desk) -> None:
    handle = await pending_order(desk)
    order_id = order_id_of(handle)
    danas = await signed_now(desk, order_id, Action.APPROVE, "dana", level="desk_head", nonce="x1")
    await handle.execute_update(
        OrderWorkflow.approve, ApproveInput(user="dana", authorities=[danas])
    )
    # carl's statement for the level now pending, but reusing the spent nonce.
    carls = await signed_now(desk, order_id, Action.APPROVE, "carl", level="cio", nonce="x1")
    refusal = await refusal_of(
        intruders_handle(desk, handle),
        OrderWorkflow.approve,
        ApproveInput(user="carl", authorities=[carls]),
    )
    assert "has been used already" in refusal.message


async def test_levels_go_in_order_and_each_person_decides_one(desk: Desk) -> None:
    handle = await pending_order(desk)
    cio_first = await refusal_of(handle, OrderWorkflow.approve, approve_as("carl", CIO))
    assert "carl may not decide level desk_head" in cio_first.message
    await handle.execute_update(OrderWorkflow.approve, approve_as("dana", DESK_HEAD, CIO))
    twice = await refusal_of(handle, OrderWorkflow.approve, approve_as("dana", DESK_HEAD, CIO))
    assert "one person decides at most one level" in twice.message


async def test_the_creator_never_releases_their_own_order(desk: Desk) -> None:
    handle = await desk.start(quantity="10", created_by="tom")
    await wait_for_status(handle, OrderStatus.PENDING_APPROVAL)
    await handle.execute_update(OrderWorkflow.approve, approve_as("dana"))
    own = await refusal_of(handle, OrderWorkflow.release, ReleaseInput(user="tom", venue="manual"))
    assert own.type == RefusalType.FORBIDDEN
    assert "creator cannot release" in own.message
    await handle.execute_update(OrderWorkflow.cancel, CancelInput(user="tom", reason="done"))


async def test_an_order_started_straight_on_temporal_never_trades(desk: Desk) -> None:
    """Without the API's word that its creator may create it, the order is refused."""
    handle = await desk.start(quantity="10", attest_creation=False)
    await desk.env.sleep(timedelta(minutes=2))
    state = await wait_for_status(handle, OrderStatus.COMPLIANCE_REJECTED)
    assert "attests this order's creation" in state.status_reason
    assert state.creation is None


@pytest.mark.parametrize("action", [Action.CANCEL, Action.RELEASE])
async def test_an_unsigned_cancel_or_release_is_refused(desk: Desk, action: Action) -> None:
    handle = await desk.start(quantity="10")
    await wait_for_status(handle, OrderStatus.PENDING_APPROVAL)
    await handle.execute_update(OrderWorkflow.approve, approve_as("dana"))
    intruder = intruders_handle(desk, handle)
    if action is Action.CANCEL:
        refusal = await refusal_of(intruder, OrderWorkflow.cancel, CancelInput(user="alice"))
    else:
        refusal = await refusal_of(
            intruder, OrderWorkflow.release, ReleaseInput(user="tom", venue="manual")
        )
    assert "no authority signed by the OMS API" in refusal.message
    # A statement for another venue than the one named.
    if action is Action.RELEASE:
        elsewhere = await signed_now(
            desk, order_id_of(handle), Action.RELEASE, "tom", subject="simulator"
        )
        refusal = await refusal_of(
            intruder,
            OrderWorkflow.release,
            ReleaseInput(user="tom", venue="manual", authority=elsewhere),
        )
        assert "issued for another order" in refusal.message
    await handle.execute_update(OrderWorkflow.cancel, CancelInput(user="alice", reason="done"))


async def test_a_report_from_a_venue_the_order_was_not_sent_to_is_refused(desk: Desk) -> None:
    handle = await desk.start(quantity="10")
    await wait_for_status(handle, OrderStatus.PENDING_APPROVAL)
    await handle.execute_update(OrderWorkflow.approve, approve_as("dana"))
    await handle.execute_update(OrderWorkflow.release, ReleaseInput(user="tom", venue="manual"))
    now = await desk.env.get_current_time()
    fill = report_input(order_id_of(handle), "elsewhere-1", ExecType.TRADE, "10", "230", now)
    refusal = await refusal_of(
        handle, OrderWorkflow.execution_report, fill.model_copy(update={"venues": ["simulator"]})
    )
    assert refusal.type == WRONG_VENUE
    assert (await handle.query(OrderWorkflow.state)).filled_quantity == 0
    await handle.execute_update(OrderWorkflow.cancel, CancelInput(user="alice", reason="done"))
