"""Each tier of each fund's approval matrix, on the time-skipping server with the real files."""

from __future__ import annotations

from decimal import Decimal

import pytest

from domain.models import AllocationRequest, OrderStatus
from tests.workflows.conftest import Desk, wait_for_status
from tests.workflows.test_order_workflow import CIO, DESK_HEAD, approve_as, warned
from workflows.messages import CancelInput, OverrideInput
from workflows.order import OrderWorkflow

# AAPL's reference price is 230.50 USD; both funds are in USD.
TIERS = [
    # fund, quantity, notional, levels
    ("fund-beta", "1084", "249862", []),  # under 250,000: straight through
    ("fund-beta", "1085", "250092.5", ["desk_head"]),
    ("fund-beta", "21691", "4999775.5", ["desk_head"]),
    ("fund-beta", "21692", "5000006", ["desk_head", "cio"]),
    ("fund-alpha", "1", "230.5", ["desk_head"]),
    ("fund-alpha", "43383", "9999781.5", ["desk_head"]),
    ("fund-alpha", "43384", "10000012", ["desk_head", "cio"]),
]


def account_of(fund: str) -> str:
    return "alpha-main" if fund == "fund-alpha" else "beta-main"


@pytest.mark.parametrize(("fund", "quantity", "notional", "levels"), TIERS)
async def test_each_tier_needs_its_levels(
    desk: Desk, fund: str, quantity: str, notional: str, levels: list[str]
) -> None:
    creator = "alice" if fund == "fund-alpha" else "bob"
    handle = await desk.start(
        fund=fund,
        quantity=quantity,
        created_by=creator,
        allocations=[AllocationRequest(account=account_of(fund), quantity=Decimal(quantity))],
    )
    state = await wait_for_status(handle, OrderStatus.PENDING_APPROVAL, OrderStatus.APPROVED)
    approvals = state.approvals
    assert approvals.required == levels
    assert approvals.notional == Decimal(notional)
    assert approvals.currency == "USD"
    assert len(approvals.matrix_version) == 64 and approvals.rules
    if not levels:
        # Approved by policy, and recorded as such: no person, the rule and matrix named.
        assert state.status is OrderStatus.APPROVED and approvals.by_policy
        assert approvals.given == []
        assert state.status_actor == "policy"
        assert state.status_reason.startswith("approved by policy (")
    else:
        for level in levels:
            grant = DESK_HEAD if level == "desk_head" else CIO
            state = await handle.execute_update(
                OrderWorkflow.approve, approve_as("dana" if level == "desk_head" else "carl", grant)
            )
        assert state.status is OrderStatus.APPROVED and not approvals.by_policy
    await handle.execute_update(OrderWorkflow.cancel, CancelInput(user=creator, reason="test"))


async def test_a_soft_breach_never_goes_straight_through(desk: Desk) -> None:
    """fund-beta's soft limit is 10,000,000: above it, compliance overrides, then two levels."""
    handle = await desk.start(
        fund="fund-beta",
        quantity="43384",  # 10,000,012
        created_by="bob",
        allocations=[AllocationRequest(account="beta-main", quantity=Decimal(43384))],
    )
    state = await wait_for_status(handle, OrderStatus.PENDING_OVERRIDE)
    assert state.approvals.required == ["desk_head", "cio"]
    state = await handle.execute_update(
        OrderWorkflow.override,
        OverrideInput(user="cora", justification="index rebalance", rules=warned(state)),
    )
    assert (state.status, state.approvals.current_level) == (
        OrderStatus.PENDING_APPROVAL,
        "desk_head",
    )
    await handle.execute_update(OrderWorkflow.cancel, CancelInput(user="bob", reason="test"))


async def test_the_funds_own_deadlines_apply(desk: Desk) -> None:
    """fund-beta escalates after 2 h and expires after 8 h (fund-alpha: 4 h and 24 h)."""
    beta = await desk.start(
        fund="fund-beta",
        quantity="1085",
        created_by="bob",
        allocations=[AllocationRequest(account="beta-main", quantity=Decimal(1085))],
    )
    alpha = await desk.start(quantity="10")
    beta_state = await wait_for_status(beta, OrderStatus.PENDING_APPROVAL)
    alpha_state = await wait_for_status(alpha, OrderStatus.PENDING_APPROVAL)
    for state, escalate, expire in ((beta_state, 2, 8), (alpha_state, 4, 24)):
        assert state.approval_escalate_at is not None and state.approval_expire_at is not None
        start = state.updated_at  # compliance's decision, when the deadlines were set
        assert (state.approval_escalate_at - start).total_seconds() == escalate * 3600
        assert (state.approval_expire_at - start).total_seconds() == expire * 3600
    for handle, creator in ((beta, "bob"), (alpha, "alice")):
        await handle.execute_update(OrderWorkflow.cancel, CancelInput(user=creator, reason="t"))
