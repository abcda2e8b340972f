"""Amend: new terms re-checked before release, FIX cancel/replace with ClOrdID chaining after."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from db.engine import SessionFactory
from domain.authority import Action
from domain.errors import RefusalType
from domain.models import AllocationRequest, ComplianceOutcome, ExecType, OrderStatus
from domain.order import FlagKind, Order, amendment_subject
from domain.status import REPLACED_EVENTS, OrderEvent
from tests.authority import statement
from tests.workflows.conftest import (
    SHORT_APPROVALS,
    Desk,
    OrderHandle,
    kill_switch_engaged,
    settle_all,
    wait_for_event,
    wait_for_status,
)
from tests.workflows.test_order_workflow import (
    CIO,
    approve_as,
    refusal_of,
    report,
)
from tests.workflows.test_replay import replays
from workflows.messages import (
    AmendInput,
    CancelInput,
    ExecutionReportResult,
    RejectInput,
    ReleaseInput,
)
from workflows.order import AMEND_AT_VENUE, OrderWorkflow


async def amend_as(
    desk: Desk,
    user: str,
    order_id: str,
    *,
    quantity: str | None = None,
    limit_price: str | None = None,
    at_venue_only: bool = False,
) -> AmendInput:
    """An amend as the API signs it: a trader's permission covers only orders at a venue."""
    q = Decimal(quantity) if quantity is not None else None
    p = Decimal(limit_price) if limit_price is not None else None
    authority = statement(
        order_id,
        Action.AMEND,
        user,
        subject=amendment_subject(q, p),
        permission=list(AMEND_AT_VENUE) if at_venue_only else None,
        issued_at=await desk.env.get_current_time(),  # the order's clock: time is skipped
    )
    return AmendInput(user=user, quantity=q, limit_price=p, reason="resize", authority=authority)


def order_id_of(handle: OrderHandle) -> str:
    return handle.id.removeprefix("order:")


def kinds(state: Order) -> list[OrderEvent]:
    return [e.kind for e in state.events]


async def working(desk: Desk, **fields: object) -> OrderHandle:
    """An order approved by dana, released to the manual venue and acknowledged there."""
    handle = await desk.start(manual_back_office=True, **fields)  # type: ignore[arg-type]
    await wait_for_status(handle, OrderStatus.PENDING_APPROVAL)
    await handle.execute_update(OrderWorkflow.approve, approve_as("dana"))
    await handle.execute_update(OrderWorkflow.release, ReleaseInput(user="tom", venue="manual"))
    await report(desk, handle, f"{handle.id}-new", ExecType.NEW)
    await wait_for_status(handle, OrderStatus.WORKING)
    return handle


async def test_amend_before_release_runs_compliance_and_the_approvals_it_needs(
    desk: Desk,
) -> None:
    handle = await desk.start(
        quantity="1000",
        manual_back_office=True,
        allocations=[
            AllocationRequest(account="alpha-main", quantity=Decimal(600)),
            AllocationRequest(account="alpha-growth", quantity=Decimal(400)),
        ],
    )
    state = await wait_for_status(handle, OrderStatus.PENDING_APPROVAL)
    assert state.approvals.required == ["desk_head"]
    await handle.execute_update(OrderWorkflow.approve, approve_as("dana"))
    await wait_for_status(handle, OrderStatus.APPROVED)

    # Ten times the size: above 10,000,000 the cio must approve too, and dana's word on the
    # old terms no longer counts.
    state = await handle.execute_update(
        OrderWorkflow.amend, await amend_as(desk, "alice", order_id_of(handle), quantity="50000")
    )
    assert state.status is OrderStatus.PENDING_APPROVAL
    assert state.terms.quantity == Decimal(50000)
    assert state.approvals.required == ["desk_head", "cio"]
    assert state.approvals.given == []
    assert state.notional is not None and state.notional > Decimal(10_000_000)
    assert state.terms.allocations == [
        AllocationRequest(account="alpha-main", quantity=Decimal(30000)),
        AllocationRequest(account="alpha-growth", quantity=Decimal(20000)),
    ]
    assert state.request.quantity == Decimal(1000)  # the request stays as it was sent

    await handle.execute_update(OrderWorkflow.approve, approve_as("dana"))
    await handle.execute_update(OrderWorkflow.approve, approve_as("carl", CIO))
    await handle.execute_update(OrderWorkflow.release, ReleaseInput(user="tom", venue="manual"))
    await report(desk, handle, "am-1", ExecType.TRADE, "50000", "230")
    state = await wait_for_status(handle, OrderStatus.SETTLEMENT_PENDING)
    assert sorted((a.account, a.quantity) for a in state.allocations) == [
        ("alpha-growth", Decimal(20000)),
        ("alpha-main", Decimal(30000)),
    ]
    (amended,) = [e for e in state.events if e.kind is OrderEvent.AMENDED]
    assert (amended.actor, amended.reason) == ("alice", "resize")
    assert amended.details["quantity"] == "50000"
    assert amended.details["previous"] == {"quantity": "1000", "limit_price": None}
    assert amended.details["authority"]  # the signed statement, as for every person's action
    await settle_all(handle)
    await replays(handle, "v2_order_amended_before_release_two_levels")


async def test_amend_that_breaks_a_hard_rule_rejects_the_order_as_a_new_order_would(
    desk: Desk,
) -> None:
    handle = await desk.start(quantity="1000")
    await wait_for_status(handle, OrderStatus.PENDING_APPROVAL)
    state = await handle.execute_update(
        OrderWorkflow.amend, await amend_as(desk, "alice", order_id_of(handle), quantity="300000")
    )
    assert state.status is OrderStatus.COMPLIANCE_REJECTED
    assert any(r.outcome is ComplianceOutcome.FAIL for r in state.compliance)


async def test_amend_refusals_change_nothing(desk: Desk) -> None:
    handle = await desk.start(quantity="1000", order_type="limit", limit_price=Decimal(231))
    await wait_for_status(handle, OrderStatus.PENDING_APPROVAL)
    order_id = order_id_of(handle)
    cases = [
        # A trader amends only what works at a venue.
        (
            await amend_as(desk, "tom", order_id, quantity="900", at_venue_only=True),
            RefusalType.FORBIDDEN,
        ),
        (
            await amend_as(desk, "alice", order_id, quantity="1000"),
            RefusalType.INVALID_INPUT,
        ),  # no change
        (
            await amend_as(desk, "alice", order_id, quantity="1000.5"),
            RefusalType.INVALID_INPUT,
        ),  # lots
        # Signed for another order.
        (
            (await amend_as(desk, "alice", "fund-alpha.other", quantity="900")).model_copy(
                update={"user": "alice"}
            ),
            RefusalType.FORBIDDEN,
        ),
        # Signed for other terms than those sent.
        (
            (await amend_as(desk, "alice", order_id, quantity="900")).model_copy(
                update={"quantity": Decimal(9000)}
            ),
            RefusalType.FORBIDDEN,
        ),
    ]
    for update, refusal_type in cases:
        refused = await refusal_of(handle, OrderWorkflow.amend, update)
        assert refused.type == refusal_type, (update, refused.message)
    state = await handle.query(OrderWorkflow.state)
    assert state.status is OrderStatus.PENDING_APPROVAL
    assert state.terms.quantity == Decimal(1000)
    assert OrderEvent.AMENDED not in kinds(state)

    market = await desk.start(quantity="10")
    await wait_for_status(market, OrderStatus.PENDING_APPROVAL)
    refused = await refusal_of(
        market,
        OrderWorkflow.amend,
        await amend_as(desk, "alice", order_id_of(market), limit_price="200"),
    )
    assert refused.type == RefusalType.INVALID_INPUT and "market order" in refused.message
    for open_order in (handle, market):
        await open_order.execute_update(
            OrderWorkflow.cancel, CancelInput(user="alice", reason="done")
        )


async def test_a_replace_chain_of_three_ends_filled_when_the_quantity_comes_down_to_the_fills(
    desk: Desk,
) -> None:
    handle = await working(desk, quantity="1000", order_type="limit", limit_price=Decimal(231))
    order_id = order_id_of(handle)

    # 1: the trader takes the size down; the venue says pending, then replaced.
    state = await handle.execute_update(
        OrderWorkflow.amend,
        await amend_as(desk, "tom", order_id, quantity="800", at_venue_only=True),
    )
    assert state.status is OrderStatus.PENDING_REPLACE
    assert state.replacing is not None and state.replacing.cl_ord_id == f"{order_id}-R1"
    assert state.terms.quantity == Decimal(1000)  # until the venue says replaced
    pending = await report(desk, handle, "r-1", ExecType.PENDING_REPLACE)
    assert isinstance(pending, ExecutionReportResult) and pending.verdict.value == "applied"
    replaced = await report(desk, handle, "r-2", ExecType.REPLACED)
    assert isinstance(replaced, ExecutionReportResult)
    assert (replaced.status, replaced.leaves_quantity) == (OrderStatus.WORKING, Decimal(800))
    await report(desk, handle, "r-3", ExecType.TRADE, "300", "230")
    await wait_for_status(handle, OrderStatus.PARTIALLY_FILLED)

    # 2: the PM moves the limit (a buy's lower limit asks less of the fund: no compliance).
    state = await handle.execute_update(
        OrderWorkflow.amend, await amend_as(desk, "alice", order_id, limit_price="229")
    )
    assert state.status is OrderStatus.PENDING_REPLACE
    replaced = await report(desk, handle, "r-4", ExecType.REPLACED)
    assert isinstance(replaced, ExecutionReportResult)
    assert replaced.status is OrderStatus.PARTIALLY_FILLED
    assert replaced.leaves_quantity == Decimal(500)

    # 3: down to what is filled: once replaced, the order is filled and goes on to booking.
    await handle.execute_update(
        OrderWorkflow.amend, await amend_as(desk, "alice", order_id, quantity="200")
    )
    await report(desk, handle, "r-5", ExecType.REPLACED)
    state = await wait_for_status(handle, OrderStatus.SETTLEMENT_PENDING)
    assert state.terms.quantity == Decimal(300)  # never below what was filled
    assert state.terms.limit_price == Decimal(229)
    assert state.terms.cl_ord_id == f"{order_id}-R3"
    assert state.terms.previous_cl_ord_ids == [order_id, f"{order_id}-R1", f"{order_id}-R2"]
    assert [(a.account, a.quantity) for a in state.allocations] == [("alpha-main", Decimal(300))]
    sent = [e for e in state.events if e.kind is OrderEvent.REPLACE_SENT_TO_VENUE]
    assert [(e.details["orig_cl_ord_id"], e.details["cl_ord_id"]) for e in sent] == [
        (order_id, f"{order_id}-R1"),
        (f"{order_id}-R1", f"{order_id}-R2"),
        (f"{order_id}-R2", f"{order_id}-R3"),
    ]
    replaced_events = [e for e in state.events if e.kind in REPLACED_EVENTS]
    assert [e.details["quantity"] for e in replaced_events] == ["800", "800", "300"]
    await settle_all(handle)
    await replays(handle, "v2_order_replace_chain_of_three")


async def test_a_rejected_replace_leaves_the_order_as_it_was(desk: Desk) -> None:
    handle = await working(desk, quantity="1000", order_type="limit", limit_price=Decimal(231))
    order_id = order_id_of(handle)
    await handle.execute_update(
        OrderWorkflow.amend, await amend_as(desk, "alice", order_id, quantity="900")
    )
    rejected = await report(desk, handle, "rr-1", ExecType.REPLACE_REJECTED)
    assert isinstance(rejected, ExecutionReportResult)
    assert (rejected.status, rejected.leaves_quantity) == (OrderStatus.WORKING, Decimal(1000))
    state = await handle.query(OrderWorkflow.state)
    assert state.replacing is None and state.terms.cl_ord_id == order_id

    # A cancel reject while only a replace is pending answers the replace (CxlRejResponseTo=2).
    await report(desk, handle, "rr-2", ExecType.TRADE, "100", "230")
    await handle.execute_update(
        OrderWorkflow.amend, await amend_as(desk, "alice", order_id, quantity="800")
    )
    rejected = await report(desk, handle, "rr-3", ExecType.CANCEL_REJECTED)
    assert isinstance(rejected, ExecutionReportResult)
    assert rejected.status is OrderStatus.PARTIALLY_FILLED

    # No replace pending: replace reports are refused, once, with the reason.
    stray = await report(desk, handle, "rr-4", ExecType.REPLACED)
    assert isinstance(stray, ExecutionReportResult)
    assert stray.verdict.value == "refused" and "none is pending" in stray.reason
    # The next request burns a new ClOrdID: a venue never sees one twice.
    state = await handle.execute_update(
        OrderWorkflow.amend, await amend_as(desk, "alice", order_id, quantity="700")
    )
    assert state.replacing is not None and state.replacing.cl_ord_id == f"{order_id}-R3"
    await report(desk, handle, "rr-5", ExecType.CANCELED)
    state = await wait_for_status(handle, OrderStatus.SETTLEMENT_PENDING)
    assert state.replacing is None and state.filled_quantity == Decimal(100)
    await settle_all(handle)
    await replays(handle, "v2_order_replace_rejected_then_canceled")


async def test_fills_cross_a_replace_and_a_cancel_overtakes_it(desk: Desk) -> None:
    handle = await working(desk, quantity="1000")
    order_id = order_id_of(handle)
    await handle.execute_update(
        OrderWorkflow.amend, await amend_as(desk, "alice", order_id, quantity="600")
    )
    crossed = await report(desk, handle, "x-1", ExecType.TRADE, "200", "230")
    assert isinstance(crossed, ExecutionReportResult)
    assert crossed.status is OrderStatus.PENDING_REPLACE  # fills on the old terms

    # Another amend waits for the venue's answer to this one.
    refused = await refusal_of(
        handle, OrderWorkflow.amend, await amend_as(desk, "alice", order_id, quantity="500")
    )
    assert refused.type == RefusalType.INVALID_STATE and "pending" in refused.message

    # A cancel does not wait: the replace's answer then leaves it pending cancel.
    state = await handle.execute_update(
        OrderWorkflow.cancel, CancelInput(user="tom", reason="done for today")
    )
    assert state.status is OrderStatus.PENDING_CANCEL
    replaced = await report(desk, handle, "x-2", ExecType.REPLACED)
    assert isinstance(replaced, ExecutionReportResult)
    assert (replaced.status, replaced.leaves_quantity) == (OrderStatus.PENDING_CANCEL, Decimal(400))
    await report(desk, handle, "x-3", ExecType.CANCELED)
    state = await wait_for_status(handle, OrderStatus.SETTLEMENT_PENDING)
    assert state.terms.quantity == Decimal(600) and state.filled_quantity == Decimal(200)
    await settle_all(handle)
    await replays(handle, "v2_order_cancel_overtakes_replace")


async def test_an_upsize_at_the_venue_is_checked_by_compliance_and_the_approvals_given(
    desk: Desk,
) -> None:
    handle = await working(desk, quantity="1000")
    order_id = order_id_of(handle)
    # Within dana's level: checked, and sent.
    state = await handle.execute_update(
        OrderWorkflow.amend, await amend_as(desk, "alice", order_id, quantity="2000")
    )
    assert state.status is OrderStatus.PENDING_REPLACE
    await report(desk, handle, "u-1", ExecType.REPLACED)
    await wait_for_status(handle, OrderStatus.WORKING)
    # Past the fund's hard limit: refused, the order works on as it was.
    refused = await refusal_of(
        handle, OrderWorkflow.amend, await amend_as(desk, "alice", order_id, quantity="300000")
    )
    assert refused.type == RefusalType.COMPLIANCE_REFUSED
    assert "compliance refused" in refused.message
    state = await handle.query(OrderWorkflow.state)
    assert (state.status, state.terms.quantity) == (OrderStatus.WORKING, Decimal(2000))
    await report(desk, handle, "u-2", ExecType.CANCELED)
    await wait_for_status(handle, OrderStatus.CANCELED)


async def test_the_simulator_replaces_a_resting_order_and_it_fills_at_its_new_limit(
    desk: Desk,
) -> None:
    handle = await desk.start(quantity="100", order_type="limit", limit_price=Decimal(100))
    await wait_for_status(handle, OrderStatus.PENDING_APPROVAL)
    await handle.execute_update(OrderWorkflow.approve, approve_as("dana"))
    await handle.execute_update(OrderWorkflow.release, ReleaseInput(user="tom", venue="simulator"))
    await wait_for_status(handle, OrderStatus.WORKING)  # a buy at 100 rests: AAPL is at 230
    await handle.execute_update(
        OrderWorkflow.amend, await amend_as(desk, "alice", order_id_of(handle), limit_price="240")
    )
    state = await wait_for_status(
        handle, OrderStatus.SETTLEMENT_PENDING, OrderStatus.SETTLED, within=30
    )
    assert state.terms.limit_price == Decimal(240)
    assert state.filled_quantity == Decimal(100)
    assert state.average_price is not None and state.average_price <= Decimal(240)
    await wait_for_status(handle, OrderStatus.SETTLED, within=30)  # the simulators run on wall time
    await replays(handle, "v2_order_simulator_replace_fills_settled")


async def test_the_simulator_can_refuse_a_replace(desk: Desk) -> None:
    handle = await desk.start(
        quantity="100", order_type="limit", limit_price=Decimal(100), notes="sim:replace-reject"
    )
    await wait_for_status(handle, OrderStatus.PENDING_APPROVAL)
    await handle.execute_update(OrderWorkflow.approve, approve_as("dana"))
    await handle.execute_update(OrderWorkflow.release, ReleaseInput(user="tom", venue="simulator"))
    await wait_for_status(handle, OrderStatus.WORKING)
    await handle.execute_update(
        OrderWorkflow.amend, await amend_as(desk, "alice", order_id_of(handle), limit_price="240")
    )

    state = await wait_for_status(handle, OrderStatus.WORKING)  # refused: back where it was
    assert state.replacing is None and state.terms.limit_price == Decimal(100)
    assert OrderEvent.REPLACE_REJECTED in kinds(state)
    await handle.execute_update(OrderWorkflow.cancel, CancelInput(user="tom", reason="enough"))
    await wait_for_status(handle, OrderStatus.CANCELED, within=30)


async def test_a_pending_replace_survives_continue_as_new_in_the_middle_of_fills(
    desk: Desk,
) -> None:
    handle = await working(
        desk, quantity="1000", workflow_fields={"updates_before_continue_as_new": 4}
    )
    first_run = (await handle.describe()).run_id
    order_id = order_id_of(handle)
    await report(desk, handle, "can-1", ExecType.TRADE, "100", "230")
    await handle.execute_update(
        OrderWorkflow.amend, await amend_as(desk, "alice", order_id, quantity="500")
    )
    for n in range(2, 5):  # fills cross the replace; the order goes on in a new run meanwhile
        await report(desk, handle, f"can-{n}", ExecType.TRADE, "100", "230")
    state = await wait_for_status(handle, OrderStatus.PENDING_REPLACE)
    assert (await handle.describe()).run_id != first_run
    assert state.replacing is not None and state.replacing.cl_ord_id == f"{order_id}-R1"
    replaced = await report(desk, handle, "can-5", ExecType.REPLACED)
    assert isinstance(replaced, ExecutionReportResult)
    assert (replaced.status, replaced.leaves_quantity) == (
        OrderStatus.PARTIALLY_FILLED,
        Decimal(100),
    )
    await report(desk, handle, "can-6", ExecType.TRADE, "100", "230")
    state = await wait_for_status(handle, OrderStatus.SETTLEMENT_PENDING)
    assert (state.filled_quantity, state.terms.quantity) == (Decimal(500), Decimal(500))
    await settle_all(handle)


async def test_the_fill_that_completes_the_old_terms_ends_a_pending_replace(desk: Desk) -> None:
    handle = await working(desk, quantity="1000")
    order_id = order_id_of(handle)
    state = await handle.execute_update(
        OrderWorkflow.amend, await amend_as(desk, "alice", order_id, quantity="2000")
    )
    assert state.status is OrderStatus.PENDING_REPLACE
    # The venue fills the old 1000 before it looks at the replace: the order is done.
    filled = await report(desk, handle, "race-1", ExecType.TRADE, "1000", "230")
    assert isinstance(filled, ExecutionReportResult) and filled.status is OrderStatus.FILLED
    state = await wait_for_status(handle, OrderStatus.SETTLEMENT_PENDING)
    assert state.replacing is None and state.terms.quantity == Decimal(1000)
    # The venue's late answer to the replace is refused: the order is no longer at the venue.
    late = await report(desk, handle, "race-2", ExecType.REPLACE_REJECTED)
    assert isinstance(late, ExecutionReportResult) and late.verdict.value == "refused"
    await settle_all(handle)


async def test_an_upsize_that_needs_a_new_level_waits_for_it_while_the_order_works_on(
    desk: Desk,
) -> None:
    handle = await working(desk, quantity="1000")
    order_id = order_id_of(handle)
    # Past 10,000,000 the cio must approve too: dana's desk_head approval covered 1,000.
    state = await handle.execute_update(
        OrderWorkflow.amend, await amend_as(desk, "alice", order_id, quantity="50000")
    )
    assert (state.status, state.terms.quantity) == (OrderStatus.WORKING, Decimal(1000))
    amendment = state.amendment
    assert amendment is not None and amendment.terms.quantity == Decimal(50000)
    assert amendment.approvals.required == ["cio"] and amendment.requested_by == "alice"
    assert amendment.notional is not None and amendment.notional > Decimal(10_000_000)
    assert any("50,000" in r.message for r in amendment.compliance)  # judged on the new terms
    assert (
        kinds(await handle.query(OrderWorkflow.state))[-1] is OrderEvent.AMENDMENT_AWAITS_APPROVAL
    )
    # The order fills on its current terms meanwhile.
    verdict = await report(desk, handle, "n-1", ExecType.TRADE, "400", "230")
    assert isinstance(verdict, ExecutionReportResult)
    state = await wait_for_status(handle, OrderStatus.PARTIALLY_FILLED)
    assert state.amendment is not None
    # Nobody who approved a level of the order, and not its creator, decides the new one.
    refused = await refusal_of(handle, OrderWorkflow.approve, approve_as("dana", CIO))
    assert refused.type == RefusalType.FORBIDDEN and "already approved" in refused.message
    refused = await refusal_of(handle, OrderWorkflow.approve, approve_as("alice", CIO))
    assert refused.type == RefusalType.FORBIDDEN and "creator" in refused.message
    # Nor someone without the level.
    refused = await refusal_of(handle, OrderWorkflow.approve, approve_as("bea"))
    assert refused.type == RefusalType.FORBIDDEN

    await handle.execute_update(OrderWorkflow.approve, approve_as("carl", CIO))
    state = await wait_for_status(handle, OrderStatus.PENDING_REPLACE)
    assert state.amendment is None
    assert state.replacing is not None and state.replacing.quantity == Decimal(50000)
    assert state.replacing.cl_ord_id == f"{order_id}-R1"
    approved = next(e for e in state.events if e.kind is OrderEvent.AMENDMENT_APPROVED)
    assert approved.actor == "carl" and approved.details["level"] == "cio"
    requested = next(e for e in state.events if e.kind is OrderEvent.REPLACE_REQUESTED)
    assert requested.actor == "alice"  # the amend's author, on her signed word
    assert requested.details["authority"]
    # The cio's approval is the order's now: a later upsize does not ask it again.
    assert state.approvals.required == ["desk_head", "cio"]
    assert [g.user for g in state.approvals.given] == ["dana", "carl"]
    await report(desk, handle, "n-2", ExecType.REPLACED)
    state = await wait_for_status(handle, OrderStatus.PARTIALLY_FILLED)
    assert (state.terms.quantity, state.leaves_quantity) == (Decimal(50000), Decimal(49600))
    state = await handle.execute_update(
        OrderWorkflow.amend, await amend_as(desk, "alice", order_id, quantity="60000")
    )
    assert (state.status, state.amendment) == (OrderStatus.PENDING_REPLACE, None)
    await report(desk, handle, "n-2b", ExecType.REPLACED)
    await wait_for_status(handle, OrderStatus.PARTIALLY_FILLED)
    # Nothing is left to decide.
    refused = await refusal_of(handle, OrderWorkflow.approve, approve_as("cleo", CIO))
    assert refused.type == RefusalType.INVALID_STATE
    await report(desk, handle, "n-3", ExecType.CANCELED)
    await settle_all(handle)
    await replays(handle, "v2_order_amend_approved_at_venue")


async def test_an_amend_waiting_for_approval_is_rejected_superseded_expired_or_withdrawn(
    desk: Desk,
) -> None:
    handle = await working(desk, quantity="1000", timeouts=SHORT_APPROVALS)
    order_id = order_id_of(handle)

    async def upsize() -> None:
        state = await handle.execute_update(
            OrderWorkflow.amend, await amend_as(desk, "alice", order_id, quantity="50000")
        )
        assert state.amendment is not None

    # Whoever asked for the amend does not decide it, whatever level they hold.
    await handle.execute_update(
        OrderWorkflow.amend, await amend_as(desk, "carl", order_id, quantity="50000")
    )
    refused = await refusal_of(handle, OrderWorkflow.approve, approve_as("carl", CIO))
    assert refused.type == RefusalType.FORBIDDEN and "asked for the amend" in refused.message

    # Rejected: the order works on as it was (alice's amend supersedes carl's).
    await upsize()
    refused = await refusal_of(
        handle, OrderWorkflow.reject, RejectInput(user="carl", reason=" ", grants=[CIO])
    )
    assert refused.type == RefusalType.INVALID_INPUT
    state = await handle.execute_update(
        OrderWorkflow.reject, RejectInput(user="carl", reason="too big today", grants=[CIO])
    )
    assert state.amendment is None
    assert (state.status, state.terms.quantity) == (OrderStatus.WORKING, Decimal(1000))
    state = await handle.query(OrderWorkflow.state)
    rejected = next(e for e in state.events if e.kind is OrderEvent.AMENDMENT_REJECTED)
    assert (rejected.actor, rejected.reason) == ("carl", "too big today")

    # Superseded by an amend that needs no new level: that one goes to the venue.
    await upsize()
    state = await handle.execute_update(
        OrderWorkflow.amend, await amend_as(desk, "alice", order_id, quantity="2000")
    )
    assert state.amendment is None and state.status is OrderStatus.PENDING_REPLACE
    state = await handle.query(OrderWorkflow.state)
    withdrawn = [e for e in state.events if e.kind is OrderEvent.AMENDMENT_WITHDRAWN]
    assert withdrawn[-1].reason == "alice amended the order again"
    await report(desk, handle, "s-1", ExecType.REPLACED)
    await wait_for_status(handle, OrderStatus.WORKING)

    # Nobody decides: escalated after an hour, expired after two.
    await upsize()
    await desk.env.sleep(timedelta(hours=1, minutes=1))
    state = await handle.query(OrderWorkflow.state)
    assert state.amendment is not None and state.amendment.escalated
    assert any(f.kind is FlagKind.APPROVAL_ESCALATED for f in state.flags)
    await desk.env.sleep(timedelta(hours=1))
    state = await handle.query(OrderWorkflow.state)
    assert state.amendment is None
    assert (state.status, state.terms.quantity) == (OrderStatus.WORKING, Decimal(2000))
    assert kinds(state)[-1] is OrderEvent.AMENDMENT_EXPIRED

    # Withdrawn when the order fills on its current terms first.
    await upsize()
    await report(desk, handle, "s-2", ExecType.TRADE, "2000", "230")
    state = await wait_for_status(handle, OrderStatus.SETTLEMENT_PENDING)
    assert state.amendment is None
    withdrawn = [e for e in state.events if e.kind is OrderEvent.AMENDMENT_WITHDRAWN]
    assert withdrawn[-1].reason == "the order is filled"
    await settle_all(handle)
    await replays(handle, "v2_order_amend_rejected_superseded_expired_withdrawn")


async def test_each_cancel_request_has_its_own_cl_ord_id_naming_the_order_s(desk: Desk) -> None:
    handle = await working(desk, quantity="1000")
    order_id = order_id_of(handle)

    def sent(state: Order) -> list[tuple[object, object]]:
        return [
            (e.details["cl_ord_id"], e.details.get("orig_cl_ord_id"))
            for e in state.events
            if e.kind is OrderEvent.CANCEL_SENT_TO_VENUE
        ]

    await handle.execute_update(OrderWorkflow.cancel, CancelInput(user="tom", reason="first"))
    await report(desk, handle, "c-1", ExecType.CANCEL_REJECTED)
    state = await wait_for_status(handle, OrderStatus.WORKING)
    assert sent(state) == [(f"{order_id}-C1", order_id)]
    assert state.terms.cl_ord_id == order_id  # a refused cancel leaves the order as it was

    await handle.execute_update(
        OrderWorkflow.amend, await amend_as(desk, "alice", order_id, quantity="800")
    )
    await report(desk, handle, "c-2", ExecType.REPLACED)
    state = await wait_for_status(handle, OrderStatus.WORKING)
    assert state.terms.cl_ord_id == f"{order_id}-R2"

    await handle.execute_update(OrderWorkflow.cancel, CancelInput(user="tom", reason="second"))
    state = await wait_for_status(handle, OrderStatus.PENDING_CANCEL)
    requested = [e for e in state.events if e.kind is OrderEvent.CANCEL_REQUESTED][-1]
    assert requested.details["cl_ord_id"] == f"{order_id}-C3"
    await report(desk, handle, "c-3", ExecType.CANCELED)
    state = await wait_for_status(handle, OrderStatus.CANCELED)
    assert sent(state)[-1] == (f"{order_id}-C3", f"{order_id}-R2")
    await replays(handle, "v2_order_cancels_with_their_own_cl_ord_ids")


async def test_an_amend_waiting_for_approval_survives_continue_as_new(desk: Desk) -> None:
    handle = await working(
        desk,
        quantity="1000",
        timeouts=SHORT_APPROVALS,
        workflow_fields={"updates_before_continue_as_new": 4},
    )
    first_run = (await handle.describe()).run_id
    order_id = order_id_of(handle)
    await handle.execute_update(
        OrderWorkflow.amend, await amend_as(desk, "alice", order_id, quantity="50000")
    )
    for n in range(1, 4):  # fills on the current terms; the order goes on in a new run meanwhile
        await report(desk, handle, f"cw-{n}", ExecType.TRADE, "100", "230")
    state = await wait_for_status(handle, OrderStatus.PARTIALLY_FILLED)
    assert (await handle.describe()).run_id != first_run
    assert state.amendment is not None and state.amendment.approvals.current_level == "cio"
    # Its deadlines are absolute: the new run escalates it on time.
    await desk.env.sleep(timedelta(hours=1, minutes=1))
    state = await handle.query(OrderWorkflow.state)
    assert state.amendment is not None and state.amendment.escalated
    await handle.execute_update(OrderWorkflow.approve, approve_as("carl", CIO))
    state = await wait_for_status(handle, OrderStatus.PENDING_REPLACE)
    assert state.replacing is not None and state.replacing.quantity == Decimal(50000)
    await report(desk, handle, "cw-4", ExecType.REPLACED)
    await report(desk, handle, "cw-5", ExecType.CANCELED)
    await settle_all(handle)


async def test_a_kill_switch_engaged_before_the_approval_withdraws_the_amend(
    desk: Desk, layer_sessions: SessionFactory
) -> None:
    handle = await working(desk, quantity="1000")
    order_id = order_id_of(handle)
    await handle.execute_update(
        OrderWorkflow.amend, await amend_as(desk, "alice", order_id, quantity="50000")
    )
    with kill_switch_engaged(layer_sessions, "fund-alpha", "desk drill"):
        # Compliance judges the terms once more after the last level: nothing goes out.
        await handle.execute_update(OrderWorkflow.approve, approve_as("carl", CIO))
        state = await wait_for_event(handle, OrderEvent.AMENDMENT_WITHDRAWN)
    withdrawn = [e for e in state.events if e.kind is OrderEvent.AMENDMENT_WITHDRAWN][-1]
    assert withdrawn.reason.startswith("approved, but ") and "desk drill" in withdrawn.reason
    assert (state.status, state.terms.quantity, state.amendment) == (
        OrderStatus.WORKING,
        Decimal(1000),
        None,
    )
    assert OrderEvent.REPLACE_REQUESTED not in kinds(state)
    await report(desk, handle, "ks-1", ExecType.CANCELED)
    await wait_for_status(handle, OrderStatus.CANCELED)


async def test_a_new_amend_does_not_inherit_the_approvals_of_the_one_it_supersedes(
    desk: Desk,
) -> None:
    # fund-beta lets 100 AAPL through by policy; past 5,000,000 it needs desk_head, then cio.
    handle = await desk.start(
        quantity="100", created_by="bob", fund="fund-beta", manual_back_office=True
    )
    await wait_for_status(handle, OrderStatus.APPROVED)
    await handle.execute_update(OrderWorkflow.release, ReleaseInput(user="tom", venue="manual"))
    await report(desk, handle, "sup-1", ExecType.NEW)
    await wait_for_status(handle, OrderStatus.WORKING)
    order_id = order_id_of(handle)
    state = await handle.execute_update(
        OrderWorkflow.amend, await amend_as(desk, "bob", order_id, quantity="25000")
    )
    assert state.amendment is not None
    assert state.amendment.approvals.required == ["desk_head", "cio"]
    state = await handle.execute_update(OrderWorkflow.approve, approve_as("dana"))
    assert state.amendment is not None and state.amendment.approvals.current_level == "cio"
    # Other terms: dana approved 25,000, not these; both levels are asked again.
    state = await handle.execute_update(
        OrderWorkflow.amend, await amend_as(desk, "bob", order_id, quantity="26000")
    )
    assert state.amendment is not None and state.amendment.terms.quantity == Decimal(26000)
    assert state.amendment.approvals.required == ["desk_head", "cio"]
    assert state.amendment.approvals.given == []
    await report(desk, handle, "sup-2", ExecType.CANCELED)
    await wait_for_status(handle, OrderStatus.CANCELED)
