"""Regressions: each way the first workflow could wedge, lose work or fail, on the time-skipping server.

Each test runs a worker of its own (its own task queue) where it needs to put a fault in the
order's way: a compliance check that is still running, a venue that does not answer, a back
office that is down, a worker that is stopped while a timer fires.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlmodel import select
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.assessment import AssessmentActivities, AssessOrderInput, AssessOrderResult
from activities.back_office import BackOfficeActivities, InstructSettlementsInput
from activities.portfolio import PortfolioActivities, ReadModelPrices
from activities.projection import ProjectionActivities
from activities.venue import VenueActivities
from db.engine import SessionFactory
from db.tables import OrderEventRow
from domain.errors import RefusalType
from domain.models import ExecType, OrderStatus
from domain.order import FlagKind
from domain.status import OrderEvent
from tests.authority import signing_client
from tests.workflows.conftest import (
    Desk,
    OrderHandle,
    confirm_settlement,
    wait_for_event,
    wait_for_status,
)
from tests.workflows.test_order_workflow import approve_as, report_input
from tests.workflows.test_replay import replays
from venues.base import Venue, VenueOrder, VenueOrderStatus, VenueRefusedError
from venues.manual import ManualVenue
from workflow_runner import workflow_runner
from workflows.messages import (
    AmendInput,
    CancelInput,
    OrderTimeouts,
    ReconcileInput,
    ReleaseInput,
)
from workflows.order import OrderWorkflow


@asynccontextmanager
async def order_worker(
    desk: Desk,
    sessions: SessionFactory,
    *,
    queue: str | None = None,
    venues: Mapping[str, Venue] | None = None,
    compliance: AssessmentActivities | None = None,
) -> AsyncIterator[str]:
    """Run an orders worker (on `queue`, or one of its own) with the given venues; yield the queue."""
    queue = queue or f"orders-{uuid.uuid4().hex[:8]}"
    projection = ProjectionActivities(sessions)
    compliance = compliance or AssessmentActivities(
        PortfolioActivities(sessions, ReadModelPrices(sessions)), desk.settings.policies_dir
    )
    venue_activities = VenueActivities(venues or {"manual": ManualVenue()})
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as executor:
        async with Worker(
            desk.client,
            task_queue=queue,
            workflows=[OrderWorkflow],
            activities=[
                projection.project_events,
                compliance.assess_order,
                venue_activities.submit_order,
                venue_activities.cancel_at_venue,
                venue_activities.venue_order_status,
                venue_activities.replace_at_venue,
            ],
            activity_executor=executor,
            workflow_runner=workflow_runner(desk.client.data_converter),
            max_concurrent_activities=4,
            max_concurrent_local_activities=4,
        ):
            yield queue


async def refusal(handle: OrderHandle, update: object, argument: object) -> ApplicationError:
    with pytest.raises(WorkflowUpdateFailedError) as failure:
        await handle.execute_update(update, argument)  # type: ignore[call-overload]
    assert isinstance(failure.value.cause, ApplicationError)
    return failure.value.cause


def projected_kinds(sessions: SessionFactory, order_id: str) -> list[str]:
    with sessions() as session:
        rows = session.exec(select(OrderEventRow).where(OrderEventRow.order_id == order_id)).all()
    return [row.kind for row in sorted(rows, key=lambda r: r.seq)]


class HeldCompliance(AssessmentActivities):
    """Compliance whose answer arrives only when the test lets it (a slow portfolio read)."""

    def __init__(self, sessions: SessionFactory, desk: Desk) -> None:
        super().__init__(
            PortfolioActivities(sessions, ReadModelPrices(sessions)), desk.settings.policies_dir
        )
        self.started = threading.Event()
        self.release = threading.Event()

    @activity.defn
    def assess_order(self, input: AssessOrderInput) -> AssessOrderResult:
        self.started.set()
        self.release.wait(timeout=30)
        return super().assess_order(input)


async def test_cancel_while_compliance_runs_ends_the_order_canceled(
    desk: Desk, layer_sessions: SessionFactory
) -> None:
    """v1 took the cancel, then tried an illegal transition when compliance returned: wedged."""
    compliance = HeldCompliance(layer_sessions, desk)
    async with order_worker(desk, layer_sessions, compliance=compliance) as queue:
        # A short task timeout makes the worker hand the task back while the check still runs,
        # so the cancel is delivered while compliance is in flight (deterministically).
        handle = await desk.start(
            quantity="10", task_queue=queue, task_timeout=timedelta(seconds=2)
        )
        assert await asyncio.to_thread(compliance.started.wait, 10)
        state = await handle.execute_update(
            OrderWorkflow.cancel, CancelInput(user="alice", reason="fat finger")
        )
        assert state.status is OrderStatus.CANCELED
        compliance.release.set()
        assert (await handle.result()).status is OrderStatus.CANCELED
    order_id = handle.id.removeprefix("order:")
    # The compliance results that came back after the cancel were discarded, not applied.
    assert projected_kinds(layer_sessions, order_id) == [
        OrderEvent.ORDER_CREATED,
        OrderEvent.CANCELED_BEFORE_RELEASE,
        OrderEvent.ORDER_CLOSED,
    ]


async def test_expiry_timer_in_the_same_task_as_an_approval_counts_the_approval(
    desk: Desk, dev_env: WorkflowEnvironment, layer_sessions: SessionFactory
) -> None:
    """v1 saw the timer's timeout and tried approval_expired on an approved order: wedged.

    On the dev server with real (short) timers: the time-skipping server will not skip time
    while a workflow task waits for a worker, and that wait is what puts the fired timer and
    the approval in one task.
    """
    live = Desk(
        signing_client(dev_env.client), dev_env, desk.settings, desk.manual_back_office_queue
    )
    timeouts = OrderTimeouts(
        approval_escalate_after=timedelta(seconds=1),
        approval_expire_after=timedelta(seconds=2),
        override_approval_deadlines=True,
    )
    async with order_worker(live, layer_sessions) as queue:
        handle = await live.start(quantity="10", task_queue=queue, timeouts=timeouts)
        state = await wait_for_event(handle, OrderEvent.FLAG_RAISED)  # escalated
    assert state.approval_expire_at is not None
    # No worker now: the expiry timer fires on the server and its workflow task waits.
    await asyncio.sleep((state.approval_expire_at - datetime.now(UTC)).total_seconds() + 0.5)
    approving = asyncio.create_task(
        handle.execute_update(OrderWorkflow.approve, approve_as("dana"))
    )
    # Give the Update time to reach the server, so the worker's next task carries both the
    # fired timer and the Update (were it later, the test would still pass, proving less).
    await asyncio.sleep(0.5)
    async with order_worker(live, layer_sessions, queue=queue):
        state = await approving
        assert state.status is OrderStatus.APPROVED
        await handle.execute_update(
            OrderWorkflow.cancel, CancelInput(user="alice", reason="done testing")
        )
        assert (await handle.result()).status is OrderStatus.CANCELED
    history = await handle.fetch_history()
    fired = [e.event_id for e in history.events if e.event_type == EventType.EVENT_TYPE_TIMER_FIRED]
    accepted = [
        e.event_id
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
    ]
    assert len(fired) == 2 and accepted  # escalation, expiry; then the approval


async def test_absurd_transact_time_is_refused_and_the_order_stays_usable(desk: Desk) -> None:
    """v1 took 9999-12-31 and overflowed the settlement date: every read answered 503 after."""
    handle = await desk.start(quantity="10", manual_back_office=True)
    await wait_for_status(handle, OrderStatus.PENDING_APPROVAL)
    await handle.execute_update(OrderWorkflow.approve, approve_as("dana"))
    await handle.execute_update(OrderWorkflow.release, ReleaseInput(user="tom", venue="manual"))
    order_id = handle.id.removeprefix("order:")
    far = datetime(9999, 12, 31, 23, 59, tzinfo=UTC)
    absurd = await refusal(
        handle,
        OrderWorkflow.execution_report,
        report_input(order_id, "far-1", ExecType.TRADE, "10", "230", far),
    )
    assert (absurd.type, absurd.details) == (RefusalType.INVALID_INPUT, ("transact_time",))
    # A price the read model cannot store, sent past the API's validation: its payload does not
    # decode into a report, so the Update is refused before the order sees it.
    now = await desk.env.get_current_time()
    raw = report_input(order_id, "huge-1", ExecType.TRADE, "10", "230", now)
    huge = raw.model_copy(
        update={
            "report": raw.report.model_construct(
                **{**dict(raw.report), "last_price": Decimal("1e20")}
            )
        }
    )
    with pytest.raises(WorkflowUpdateFailedError):
        await handle.execute_update(OrderWorkflow.execution_report, huge)
    state = await handle.query(OrderWorkflow.state)
    assert (state.status, state.executions, state.flags) == (OrderStatus.RELEASED, [], [])
    await handle.execute_update(OrderWorkflow.cancel, CancelInput(user="tom", reason="test"))
    await handle.execute_update(
        OrderWorkflow.execution_report,
        report_input(
            order_id, "c-1", ExecType.CANCELED, transact_time=await desk.env.get_current_time()
        ),
    )
    assert (await handle.result()).status is OrderStatus.CANCELED


class DownBackOffice(BackOfficeActivities):
    """A back office that refuses instructions for a while (its system is down), then takes them."""

    def __init__(self, sessions: SessionFactory, failures: int) -> None:
        super().__init__(sessions)
        self.attempts = 0
        self._failures = failures

    @activity.defn
    async def instruct_settlements(self, input: InstructSettlementsInput) -> None:
        self.attempts += 1
        if self.attempts <= self._failures:
            raise RuntimeError("back office system unavailable")
        await super().instruct_settlements(input)


async def test_back_office_down_for_long_is_retried_until_it_takes_the_instruction(
    desk: Desk, layer_sessions: SessionFactory
) -> None:
    """v1 gave up after 5 attempts and failed the whole workflow after booking the allocations."""
    back_office = DownBackOffice(layer_sessions, failures=8)
    queue = f"bo-down-{uuid.uuid4().hex[:8]}"
    async with Worker(desk.client, task_queue=queue, activities=[back_office.instruct_settlements]):
        handle = await desk.start(quantity="100", back_office_queue=queue)
        await wait_for_status(handle, OrderStatus.PENDING_APPROVAL)
        await handle.execute_update(OrderWorkflow.approve, approve_as("dana"))
        await handle.execute_update(OrderWorkflow.release, ReleaseInput(user="tom", venue="manual"))
        now = await desk.env.get_current_time()
        order_id = handle.id.removeprefix("order:")
        await handle.execute_update(
            OrderWorkflow.execution_report,
            report_input(order_id, "f-1", ExecType.TRADE, "100", "230", now),
        )
        await wait_for_status(handle, OrderStatus.ALLOCATED)
        await desk.env.sleep(timedelta(minutes=10))  # the retries' back-off, skipped
        state = await wait_for_status(handle, OrderStatus.SETTLEMENT_PENDING)
        assert back_office.attempts == 9
        (instruction,) = state.settlements
        await confirm_settlement(handle, instruction.settlement_id)
        assert (await handle.result()).status is OrderStatus.SETTLED


class SilentVenue(ManualVenue):
    """A venue whose gateway times out on the first submissions, and that lost them."""

    name = "silent"

    def __init__(self, timeouts: int) -> None:
        self.submissions: list[str] = []
        self._timeouts = timeouts

    async def submit(self, order: VenueOrder) -> None:
        self.submissions.append(order.cl_ord_id)
        if len(self.submissions) <= self._timeouts:
            raise TimeoutError("venue gateway did not answer")

    async def order_status(self, cl_ord_id: str) -> VenueOrderStatus:
        known = len(self.submissions) > self._timeouts
        return VenueOrderStatus(cl_ord_id=cl_ord_id, known=known, state="new" if known else "")


async def test_venue_timeout_is_flagged_and_the_venue_asked_never_a_rejection(
    desk: Desk, layer_sessions: SessionFactory
) -> None:
    """v1 took a venue timeout for a rejection, though the order may have been live there."""
    venue = SilentVenue(timeouts=3)  # one local activity's attempts
    async with order_worker(desk, layer_sessions, venues={"silent": venue}) as queue:
        handle = await desk.start(quantity="10", task_queue=queue, manual_back_office=True)
        await wait_for_status(handle, OrderStatus.PENDING_APPROVAL)
        await handle.execute_update(OrderWorkflow.approve, approve_as("dana"))
        await handle.execute_update(OrderWorkflow.release, ReleaseInput(user="tom", venue="silent"))
        state = await wait_for_event(handle, OrderEvent.FLAG_RAISED)
        assert [f.kind for f in state.flags] == [FlagKind.VENUE_UNCONFIRMED]
        assert state.status is OrderStatus.RELEASED
        await desk.env.sleep(timedelta(seconds=30))  # the back-off before asking, skipped
        state = await wait_for_event(handle, OrderEvent.SENT_TO_VENUE)
        kinds = [e.kind for e in state.events]
        # Asked the venue, heard it never got the order, sent it again under the same ClOrdID.
        assert kinds.index(OrderEvent.VENUE_STATUS_CHECKED) < kinds.index(OrderEvent.SENT_TO_VENUE)
        assert set(venue.submissions) == {state.terms.cl_ord_id}
        assert state.status is OrderStatus.RELEASED
        now = await desk.env.get_current_time()
        order_id = handle.id.removeprefix("order:")
        await handle.execute_update(
            OrderWorkflow.execution_report,
            report_input(order_id, "s-1", ExecType.NEW, "0", None, now),
        )
        await handle.execute_update(OrderWorkflow.cancel, CancelInput(user="tom", reason="test"))
        await handle.execute_update(
            OrderWorkflow.execution_report,
            report_input(order_id, "s-2", ExecType.CANCELED, "0", None, now),
        )
        assert (await handle.result()).status is OrderStatus.CANCELED


async def test_unacknowledged_order_is_flagged_and_the_venue_asked(desk: Desk) -> None:
    handle = await desk.start(
        quantity="10",
        manual_back_office=True,
        timeouts=OrderTimeouts(venue_ack_timeout=timedelta(seconds=60)),
    )
    await wait_for_status(handle, OrderStatus.PENDING_APPROVAL)
    await handle.execute_update(OrderWorkflow.approve, approve_as("dana"))
    await handle.execute_update(OrderWorkflow.release, ReleaseInput(user="tom", venue="manual"))
    await wait_for_event(handle, OrderEvent.SENT_TO_VENUE)
    await desk.env.sleep(timedelta(minutes=2))
    state = await wait_for_event(handle, OrderEvent.VENUE_STATUS_CHECKED)
    assert [f.kind for f in state.flags] == [FlagKind.VENUE_ACK_OVERDUE]
    assert state.status is OrderStatus.RELEASED
    await handle.execute_update(OrderWorkflow.cancel, CancelInput(user="tom", reason="no ack"))
    now = await desk.env.get_current_time()
    await handle.execute_update(
        OrderWorkflow.execution_report,
        report_input(handle.id.removeprefix("order:"), "a-1", ExecType.CANCELED, transact_time=now),
    )
    assert (await handle.result()).status is OrderStatus.CANCELED
    await replays(handle, "v2_order_ack_timeout_then_canceled")


async def test_long_lived_order_continues_as_new_and_still_answers(
    desk: Desk, layer_sessions: SessionFactory
) -> None:
    handle = await desk.start(
        quantity="600",
        manual_back_office=True,
        workflow_fields={"updates_before_continue_as_new": 3},
    )
    await wait_for_status(handle, OrderStatus.PENDING_APPROVAL)
    first_run = (await handle.describe()).run_id
    await handle.execute_update(OrderWorkflow.approve, approve_as("dana"))
    await handle.execute_update(OrderWorkflow.release, ReleaseInput(user="tom", venue="manual"))
    order_id = handle.id.removeprefix("order:")
    reports = [report_input(order_id, "l-0", ExecType.NEW)] + [
        report_input(order_id, f"l-{n}", ExecType.TRADE, "100", str(230 + n)) for n in range(1, 7)
    ]
    for update in reports:
        now = await desk.env.get_current_time()
        stamped = update.model_copy(
            update={"report": update.report.model_copy(update={"transact_time": now})}
        )
        await handle.execute_update(OrderWorkflow.execution_report, stamped)
    state = await wait_for_status(handle, OrderStatus.SETTLEMENT_PENDING)
    assert (await handle.describe()).run_id != first_run  # it went on in a new run
    assert state.filled_quantity == Decimal(600)
    assert state.average_price == Decimal("233.5")
    assert state.execution_count == 7
    # A duplicate from before the new run is still recognised.
    duplicate = await refusal(handle, OrderWorkflow.execution_report, stamped)
    assert duplicate.type == RefusalType.DUPLICATE
    (instruction,) = state.settlements
    await confirm_settlement(handle, instruction.settlement_id)
    assert (await handle.result()).status is OrderStatus.SETTLED
    with layer_sessions() as session:
        seqs = [
            row.seq
            for row in session.exec(select(OrderEventRow).where(OrderEventRow.order_id == order_id))
        ]
    assert sorted(seqs) == list(range(1, max(seqs) + 1))  # every event projected once, none lost


class UnreachableVenue(SilentVenue):
    """A venue whose gateway never answers a submission, and that refuses to cancel what it lacks."""

    name = "unreachable"

    async def cancel(self, order_id: str, cl_ord_id: str, orig_cl_ord_id: str = "") -> None:
        raise VenueRefusedError(f"unknown order {orig_cl_ord_id or cl_ord_id}")


async def test_cancel_of_an_order_the_venue_never_received_ends_it_canceled(
    desk: Desk, layer_sessions: SessionFactory
) -> None:
    """Canceled while its submission is unconfirmed, and the venue never had it: not 'working'."""
    venue = UnreachableVenue(timeouts=1_000)
    async with order_worker(desk, layer_sessions, venues={"unreachable": venue}) as queue:
        handle = await desk.start(quantity="10", task_queue=queue, manual_back_office=True)
        await wait_for_status(handle, OrderStatus.PENDING_APPROVAL)
        await handle.execute_update(OrderWorkflow.approve, approve_as("dana"))
        await handle.execute_update(
            OrderWorkflow.release, ReleaseInput(user="tom", venue="unreachable")
        )
        await wait_for_event(handle, OrderEvent.FLAG_RAISED)  # venue_unconfirmed
        await handle.execute_update(OrderWorkflow.cancel, CancelInput(user="tom", reason="stop"))
        assert (await handle.result()).status is OrderStatus.CANCELED
        state = await handle.query(OrderWorkflow.state)
        assert state.status_reason == "canceled: the venue never received the order"
        assert [f.kind for f in state.flags] == [FlagKind.VENUE_UNCONFIRMED]


class ReplaceRefusingVenue(ManualVenue):
    """A venue worked by hand that refuses replaces, or cannot be reached for them, and that
    no longer knows its orders when asked (its book was lost)."""

    name = "no-replace"

    def __init__(self, *, outage: bool) -> None:
        self._outage = outage

    async def replace(self, order: VenueOrder, orig_cl_ord_id: str) -> None:
        if self._outage:
            raise ConnectionError("gateway down")
        raise VenueRefusedError("replaces are not accepted here")

    async def order_status(self, cl_ord_id: str) -> VenueOrderStatus:
        return VenueOrderStatus(cl_ord_id=cl_ord_id, known=False)


@pytest.mark.parametrize("outage", [False, True], ids=["refused", "unreachable"])
async def test_a_replace_the_venue_refuses_or_never_gets_leaves_the_order_as_it_was(
    desk: Desk, layer_sessions: SessionFactory, outage: bool
) -> None:
    venue = ReplaceRefusingVenue(outage=outage)
    async with order_worker(desk, layer_sessions, venues={venue.name: venue}) as queue:
        handle = await desk.start(quantity="10", task_queue=queue, manual_back_office=True)
        await wait_for_status(handle, OrderStatus.PENDING_APPROVAL)
        await handle.execute_update(OrderWorkflow.approve, approve_as("dana"))
        await handle.execute_update(
            OrderWorkflow.release, ReleaseInput(user="tom", venue=venue.name)
        )
        order_id = handle.id.removeprefix("order:")
        now = await desk.env.get_current_time()
        await handle.execute_update(
            OrderWorkflow.execution_report,
            report_input(order_id, "n-1", ExecType.NEW, transact_time=now),
        )
        await handle.execute_update(
            OrderWorkflow.amend, AmendInput(user="alice", quantity=Decimal(5), reason="less")
        )
        state = await wait_for_event(handle, OrderEvent.REPLACE_REJECTED, within=30)
        assert (state.status, state.terms.quantity, state.replacing) == (
            OrderStatus.WORKING,
            Decimal(10),
            None,
        )
        if outage:
            assert [f.kind for f in state.flags] == [FlagKind.REPLACE_NOT_SENT]
            assert "could not be sent" in state.status_reason
        else:
            assert "refused the replace: replaces are not accepted here" in state.status_reason

        # Its book lost, the venue does not know the order: reconciliation flags that.
        await handle.signal(OrderWorkflow.reconcile, ReconcileInput(venue=venue.name))
        state = await wait_for_event(handle, OrderEvent.VENUE_STATUS_CHECKED)
        mismatch = [f for f in state.flags if f.kind is FlagKind.VENUE_MISMATCH]
        assert [f.message for f in mismatch] == [f"{venue.name} does not know {order_id}"]

        await handle.execute_update(OrderWorkflow.cancel, CancelInput(user="tom", reason="done"))
        now = await desk.env.get_current_time()
        await handle.execute_update(
            OrderWorkflow.execution_report,
            report_input(order_id, "c-1", ExecType.CANCELED, transact_time=now),
        )
        assert (await handle.result()).status is OrderStatus.CANCELED
