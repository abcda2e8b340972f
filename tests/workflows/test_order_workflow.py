"""OrderWorkflow (v2) on the real time-skipping server, with real activities, simulators and read model."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from domain.errors import RefusalType
from domain.executions import ExecutionReport
from domain.models import (
    AllocationRequest,
    AssetClass,
    ComplianceOutcome,
    ExecType,
    OrderStatus,
    SettlementStatus,
)
from domain.order import FlagKind, Order
from domain.settlement import settlement_date
from tests.workflows.conftest import (
    SHORT_APPROVALS,
    Desk,
    OrderHandle,
    confirm_settlement,
    wait_for_status,
)
from workflows.messages import (
    ApproveInput,
    CancelInput,
    ExecutionReportInput,
    ExecutionReportResult,
    OverrideInput,
    PolicyGrant,
    RejectInput,
    ReleaseInput,
    SettlementUpdateInput,
)
from workflows.order import OrderWorkflow

DESK_HEAD = PolicyGrant(permission="desk_head", policy=["desk_head", "*", "approvals", "desk_head"])
CIO = PolicyGrant(permission="cio", policy=["cio", "*", "approvals", "cio"])


def warned(state: Order) -> list[str]:
    """Return the rules that warned on the order: what an override must name."""
    return [r.rule for r in state.compliance if r.outcome is ComplianceOutcome.WARN]


def approve_as(user: str, *grants: PolicyGrant) -> ApproveInput:
    return ApproveInput(user=user, comment=f"ok from {user}", grants=list(grants or [DESK_HEAD]))


async def refusal_of(handle: OrderHandle, update: object, arg: object) -> ApplicationError:
    with pytest.raises(WorkflowUpdateFailedError) as failure:
        await handle.execute_update(update, arg)  # type: ignore[call-overload]
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    return cause


def report_input(
    order_id: str,
    exec_id: str,
    exec_type: ExecType,
    qty: str = "0",
    price: str | None = None,
    transact_time: datetime | None = None,
    exec_ref_id: str | None = None,
) -> ExecutionReportInput:
    return ExecutionReportInput(
        report=ExecutionReport(
            order_id=order_id,
            exec_id=exec_id,
            exec_type=exec_type,
            last_quantity=Decimal(qty),
            last_price=Decimal(price) if price else None,
            transact_time=transact_time or datetime.now(UTC),
            exec_ref_id=exec_ref_id,
        ),
        reported_by="sim-venue",
    )


async def report(
    desk: Desk,
    handle: OrderHandle,
    exec_id: str,
    exec_type: ExecType,
    qty: str = "0",
    price: str | None = None,
) -> ExecutionReportResult | ApplicationError:
    """Send a report as the venue would (on the server's clock); return the verdict or refusal."""
    now = await desk.env.get_current_time()
    update = report_input(handle.id.removeprefix("order:"), exec_id, exec_type, qty, price, now)
    try:
        return await handle.execute_update(OrderWorkflow.execution_report, update)
    except WorkflowUpdateFailedError as failure:
        if not isinstance(failure.cause, ApplicationError):
            raise
        return failure.cause


async def test_order_goes_from_creation_to_settled(desk: Desk) -> None:
    handle = await desk.start(
        quantity="1000",
        allocations=[
            AllocationRequest(account="alpha-main", quantity=Decimal(600)),
            AllocationRequest(account="alpha-growth", quantity=Decimal(400)),
        ],
    )
    state = await wait_for_status(handle, OrderStatus.PENDING_APPROVAL)
    assert {r.outcome for r in state.compliance} == {ComplianceOutcome.PASS}
    assert state.compliance[0].rule == "kill_switch"  # then every rule the order answers to
    assert state.approvals.required == ["desk_head"]
    assert state.notional == Decimal("230500")  # at the reference price, in the fund's USD

    state = await handle.execute_update(OrderWorkflow.approve, approve_as("dana"))
    assert state.status is OrderStatus.APPROVED
    assert state.approvals.given[0].policy == DESK_HEAD.policy
    state = await handle.execute_update(
        OrderWorkflow.release, ReleaseInput(user="tom", venue="simulator")
    )
    # The simulator may already have reported by the time the update answers.
    assert state.venue == "simulator"
    assert state.status not in (OrderStatus.APPROVED, OrderStatus.VENUE_REJECTED)

    state = await wait_for_status(handle, OrderStatus.SETTLED)
    assert state.filled_quantity == Decimal(1000)
    assert state.average_price == Decimal("230.5")
    assert [e.exec_type for e in state.executions] == [ExecType.NEW, ExecType.TRADE, ExecType.TRADE]
    assert {(a.account, a.quantity) for a in state.allocations} == {
        ("alpha-main", Decimal(600)),
        ("alpha-growth", Decimal(400)),
    }
    trade_day = state.executions[-1].transact_time.date()
    assert {s.settlement_date for s in state.settlements} == {
        settlement_date(trade_day, AssetClass.EQUITY)
    }
    assert all(s.status is SettlementStatus.CONFIRMED for s in state.settlements)
    result = await handle.result()
    assert result.status is OrderStatus.SETTLED


async def test_restricted_symbol_is_rejected_by_compliance(desk: Desk) -> None:
    handle = await desk.start(symbol="GME", quantity="100")
    result = await handle.result()
    assert result.status is OrderStatus.COMPLIANCE_REJECTED
    state = await handle.query(OrderWorkflow.state)
    assert "GME is on the firm's restricted list" in state.status_reason
    restricted = next(r for r in state.compliance if r.rule == "firm-restricted-list")
    assert restricted.outcome.value == "fail"


async def test_hard_notional_breach_is_rejected(desk: Desk) -> None:
    handle = await desk.start(quantity="300000")  # 69.15M > fund-alpha's 50M maximum
    assert (await handle.result()).status is OrderStatus.COMPLIANCE_REJECTED
    state = await handle.query(OrderWorkflow.state)
    breach = next(r for r in state.compliance if r.rule == "alpha-max-order-notional")
    assert breach.outcome is ComplianceOutcome.FAIL
    assert "69,150,000.00 USD" in breach.message and "50,000,000.00 USD" in breach.message


async def test_segregation_of_duties_and_two_levels(desk: Desk) -> None:
    handle = await desk.start(quantity="50000")  # 11.5M: desk head, then CIO
    state = await wait_for_status(handle, OrderStatus.PENDING_APPROVAL)
    assert state.approvals.required == ["desk_head", "cio"]

    creator = await refusal_of(handle, OrderWorkflow.approve, approve_as("alice", DESK_HEAD))
    assert (creator.type, "creator" in creator.message) == (RefusalType.FORBIDDEN, True)
    wrong_level = await refusal_of(handle, OrderWorkflow.approve, approve_as("carl", CIO))
    assert wrong_level.type == RefusalType.FORBIDDEN
    assert "desk_head" in wrong_level.message

    state = await handle.execute_update(OrderWorkflow.approve, approve_as("dana", DESK_HEAD, CIO))
    assert (state.status, state.approvals.current_level) == (OrderStatus.PENDING_APPROVAL, "cio")
    twice = await refusal_of(handle, OrderWorkflow.approve, approve_as("dana", DESK_HEAD, CIO))
    assert "already approved" in twice.message

    state = await handle.execute_update(OrderWorkflow.approve, approve_as("carl", CIO))
    assert state.status is OrderStatus.APPROVED
    assert [g.user for g in state.approvals.given] == ["dana", "carl"]
    late = await refusal_of(handle, OrderWorkflow.approve, approve_as("carl", CIO))
    assert late.type == RefusalType.INVALID_STATE

    await handle.execute_update(
        OrderWorkflow.cancel, CancelInput(user="alice", reason="changed my mind")
    )
    assert (await handle.result()).status is OrderStatus.CANCELED


async def test_soft_breach_waits_for_a_compliance_override(desk: Desk) -> None:
    handle = await desk.start(quantity="100000")  # 23.05M: above the 20M soft limit
    state = await wait_for_status(handle, OrderStatus.PENDING_OVERRIDE)
    assert warned(state) == ["alpha-soft-order-notional"]

    rules = warned(state)
    by_creator = await refusal_of(
        handle, OrderWorkflow.override, OverrideInput(user="alice", justification="x", rules=rules)
    )
    assert by_creator.type == RefusalType.FORBIDDEN
    blank = await refusal_of(
        handle, OrderWorkflow.override, OverrideInput(user="cora", justification="  ", rules=rules)
    )
    assert blank.type == RefusalType.INVALID_INPUT
    unnamed = await refusal_of(
        handle, OrderWorkflow.override, OverrideInput(user="cora", justification="ok", rules=[])
    )
    assert unnamed.type == RefusalType.INVALID_INPUT and "not named" in unnamed.message
    stranger = await refusal_of(
        handle,
        OrderWorkflow.override,
        OverrideInput(user="cora", justification="ok", rules=[*rules, "no_such_rule"]),
    )
    assert "did not warn" in stranger.message

    state = await handle.execute_update(
        OrderWorkflow.override,
        OverrideInput(user="cora", justification="index rebalance, pre-agreed", rules=rules),
    )
    assert state.override is not None and state.override.rules == rules
    assert state.status is OrderStatus.PENDING_APPROVAL
    assert state.override is not None and state.override.user == "cora"
    assert state.approvals.required == ["desk_head", "cio"]
    await handle.execute_update(
        OrderWorkflow.reject, RejectInput(user="dana", reason="too big", grants=[DESK_HEAD])
    )
    assert (await handle.result()).status is OrderStatus.APPROVAL_REJECTED


async def test_rejection_needs_a_reason_and_ends_the_order(desk: Desk) -> None:
    handle = await desk.start(quantity="10")
    await wait_for_status(handle, OrderStatus.PENDING_APPROVAL)
    blank = await refusal_of(
        handle, OrderWorkflow.reject, RejectInput(user="dana", reason=" ", grants=[DESK_HEAD])
    )
    assert blank.type == RefusalType.INVALID_INPUT
    premature = await refusal_of(
        handle, OrderWorkflow.release, ReleaseInput(user="tom", venue="simulator")
    )
    assert premature.type == RefusalType.INVALID_STATE
    state = await handle.execute_update(
        OrderWorkflow.reject, RejectInput(user="dana", reason="not in mandate", grants=[DESK_HEAD])
    )
    assert (state.status, state.status_reason, state.status_actor) == (
        OrderStatus.APPROVAL_REJECTED,
        "not in mandate",
        "dana",
    )
    assert (await handle.result()).status is OrderStatus.APPROVAL_REJECTED


async def test_unapproved_order_escalates_then_expires(desk: Desk) -> None:
    handle = await desk.start(quantity="10", timeouts=SHORT_APPROVALS)
    await wait_for_status(handle, OrderStatus.PENDING_APPROVAL)
    await desk.env.sleep(timedelta(minutes=90))
    state = await handle.query(OrderWorkflow.state)
    assert state.status is OrderStatus.PENDING_APPROVAL  # never approved by default
    assert [(f.kind, f.ref) for f in state.flags] == [(FlagKind.APPROVAL_ESCALATED, "desk_head")]
    await desk.env.sleep(timedelta(minutes=45))
    assert (await handle.result()).status is OrderStatus.APPROVAL_EXPIRED


async def _approved(desk: Desk, **kwargs: object) -> OrderHandle:
    handle = await desk.start(**kwargs)  # type: ignore[arg-type]
    await wait_for_status(handle, OrderStatus.PENDING_APPROVAL)
    await handle.execute_update(OrderWorkflow.approve, approve_as("dana"))
    return handle


async def test_manual_fills_dedupe_refuse_overfill_and_average(desk: Desk) -> None:
    handle = await _approved(desk, quantity="1000", manual_back_office=True)
    await handle.execute_update(OrderWorkflow.release, ReleaseInput(user="tom", venue="manual"))
    await report(desk, handle, "m-1", ExecType.NEW)
    await report(desk, handle, "m-2", ExecType.TRADE, "400", "230")
    duplicate = await report(desk, handle, "m-2", ExecType.TRADE, "400", "230")
    assert isinstance(duplicate, ApplicationError) and duplicate.type == RefusalType.DUPLICATE
    # Refused, and flagged once.
    overfill = await report(desk, handle, "m-3", ExecType.TRADE, "700", "231")
    assert isinstance(overfill, ExecutionReportResult)
    assert (overfill.verdict.value, overfill.field) == ("refused", "last_quantity")
    again = await report(desk, handle, "m-3", ExecType.TRADE, "700", "231")
    assert isinstance(again, ApplicationError) and again.type == RefusalType.EXECUTION_REFUSED
    assert "overfill" in again.message
    state = await wait_for_status(handle, OrderStatus.PARTIALLY_FILLED)
    await report(desk, handle, "m-4", ExecType.TRADE, "600", "231")
    state = await wait_for_status(handle, OrderStatus.SETTLEMENT_PENDING)
    assert state.filled_quantity == Decimal(1000)
    assert state.average_price == Decimal("230.6")
    assert [e.exec_id for e in state.executions] == ["m-1", "m-2", "m-4"]
    refused = [f for f in state.flags if f.kind is FlagKind.EXECUTION_REFUSED]
    assert [f.ref for f in refused] == ["m-3"] and "overfill" in refused[0].message

    (instruction,) = state.settlements
    fail = SettlementUpdateInput(
        settlement_id=instruction.settlement_id,
        status=SettlementStatus.FAILED,
        reason="no ssi",
        user="betty",
        at=datetime.now(UTC),
    )
    await handle.signal(OrderWorkflow.settlement_update, fail)
    await wait_for_status(handle, OrderStatus.SETTLEMENT_FAILED)
    confirm = fail.model_copy(update={"status": SettlementStatus.CONFIRMED, "reason": ""})
    await handle.signal(OrderWorkflow.settlement_update, confirm)
    assert (await handle.result()).status is OrderStatus.SETTLED


async def test_unconfirmed_settlement_fails_after_settlement_date(desk: Desk) -> None:
    handle = await _approved(
        desk,
        symbol="EURUSD",
        quantity="1000000",
        manual_back_office=True,
        allocations=[AllocationRequest(account="alpha-main", quantity=Decimal(1000000))],
    )
    await handle.execute_update(OrderWorkflow.release, ReleaseInput(user="tom", venue="manual"))
    await report(desk, handle, "fx-1", ExecType.TRADE, "1000000", "1.0850")
    state = await wait_for_status(handle, OrderStatus.SETTLEMENT_PENDING)
    (instruction,) = state.settlements
    assert instruction.settlement_date == settlement_date(
        instruction.trade_date, AssetClass.FX_SPOT
    )
    await desk.env.sleep(timedelta(days=6))
    state = await wait_for_status(handle, OrderStatus.SETTLEMENT_FAILED)
    assert [f.kind for f in state.flags] == [FlagKind.SETTLEMENT_NOT_CONFIRMED]
    await confirm_settlement(handle, instruction.settlement_id)
    assert (await handle.result()).status is OrderStatus.SETTLED


async def test_cancel_after_release_goes_through_pending_cancel(desk: Desk) -> None:
    handle = await _approved(desk, quantity="1000", manual_back_office=True)
    await handle.execute_update(OrderWorkflow.release, ReleaseInput(user="tom", venue="manual"))
    await report(desk, handle, "c-1", ExecType.NEW)
    await report(desk, handle, "c-2", ExecType.TRADE, "200", "230")
    await wait_for_status(handle, OrderStatus.PARTIALLY_FILLED)
    state = await handle.execute_update(
        OrderWorkflow.cancel, CancelInput(user="tom", reason="market moved")
    )
    assert state.status is OrderStatus.PENDING_CANCEL
    await report(desk, handle, "c-3", ExecType.CANCELED)
    state = await wait_for_status(handle, OrderStatus.SETTLEMENT_PENDING)
    assert state.status_reason == ""  # allocation and settlement carry no reason of their own
    assert [(a.account, a.quantity) for a in state.allocations] == [("alpha-main", Decimal(200))]
    assert state.leaves_quantity == 0


async def test_venue_that_does_not_exist_rejects_the_release(desk: Desk) -> None:
    handle = await _approved(desk, quantity="5")
    state = await handle.execute_update(
        OrderWorkflow.release, ReleaseInput(user="tom", venue="nowhere")
    )
    # The venue phase sends it while the answer waits for the read model: either may come first.
    assert state.status in (OrderStatus.RELEASED, OrderStatus.VENUE_REJECTED)
    assert (await handle.result()).status is OrderStatus.VENUE_REJECTED
    state = await handle.query(OrderWorkflow.state)
    assert "unknown venue" in state.status_reason


async def test_order_for_an_instrument_without_reference_data_fails_compliance(desk: Desk) -> None:
    handle = await desk.start(symbol="NOPE", quantity="10")
    assert (await handle.result()).status is OrderStatus.COMPLIANCE_REJECTED
    state = await handle.query(OrderWorkflow.state)
    assert state.status_reason == "compliance could not run: unknown symbol NOPE"


async def test_released_order_can_be_canceled_before_the_venue_acknowledges(desk: Desk) -> None:
    handle = await _approved(desk, quantity="10")
    state = await handle.execute_update(
        OrderWorkflow.release, ReleaseInput(user="tom", venue="manual")
    )
    assert state.status is OrderStatus.RELEASED
    state = await handle.execute_update(
        OrderWorkflow.cancel, CancelInput(user="tom", reason="wrong account")
    )
    assert state.status is OrderStatus.PENDING_CANCEL
    again = await refusal_of(handle, OrderWorkflow.cancel, CancelInput(user="tom", reason="again"))
    assert again.type == RefusalType.INVALID_STATE
    await report(desk, handle, "r-1", ExecType.CANCELED)
    assert (await handle.result()).status is OrderStatus.CANCELED
    state = await handle.query(OrderWorkflow.state)
    assert (state.status_reason, state.status_actor) == ("wrong account", "sim-venue")
