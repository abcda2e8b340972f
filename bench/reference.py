"""The references an order is measured against, and the loads that drive them.

- `TrivialWorkflow`: one trivial activity. The cheapest thing worth measuring on a server.
- `InteractionWorkflow`: the messages of an order and nothing else. It is started by
  update-with-start (an Update that answers at once), takes the two other human Updates
  (approve, release), the venue's execution reports as Updates (ack and two fills, one after
  the other, as the simulator sends them) and one Signal per settlement instruction, and then
  completes. It has no activities, no local activities and no timers, so its rate is the
  ceiling for an order's shape of interaction on this server and worker.
- `OrderShapeWorkflow`: the same messages, plus every Temporal command an order's history
  holds, each doing nothing: its patch marker, a no-op local activity wherever the order runs
  one (the two compliance checks, the submission, and a projector that writes when the run
  loop waits or an Update waits for its answer), its timers (creation, approval, the day's
  end, the venue's acknowledgement, the settlement deadline) and the back office's activity.
  Its rate is what the order's design would reach if the OMS's own work (HTTP, database,
  compliance rules, the simulators) cost nothing.

The load plays the API, the venue and the back office straight through the Temporal client,
with the same message types as the order workflow (`workflows.messages`), so the payloads are
alike. The answers are small: how big the order workflow's answers are is the order's cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from temporalio import activity, workflow
from temporalio.exceptions import ApplicationError

# The sandbox re-imports this module for each workflow it runs: everything that is not
# Temporal passes through unchanged (it is deterministic, and loaded once).
with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel
    from temporalio.client import Client, WithStartWorkflowOperation
    from temporalio.common import WorkflowIDConflictPolicy
    from temporalio.worker import Worker, WorkflowRunner

    from bench.measure import Probe, bounded, mean_history_counts
    from domain.executions import ExecutionReport
    from domain.models import (
        AllocationRequest,
        ExecType,
        OrderRequest,
        OrderType,
        SettlementStatus,
        Side,
        TimeInForce,
    )
    from workflows.messages import (
        ApproveInput,
        AwaitComplianceInput,
        ExecutionReportInput,
        OrderWorkflowInput,
        PolicyGrant,
        ReleaseInput,
        SettlementUpdateInput,
    )


# --- the trivial workflow ----------------------------------------------------------------------


class TrivialInput(BaseModel):
    """Input of the trivial workflow and its activity."""

    name: str


@activity.defn
async def trivial_activity(input: TrivialInput) -> str:
    """Return a greeting; does no I/O."""
    return f"hello {input.name}"


@workflow.defn
class TrivialWorkflow:
    """Run one trivial activity and return its result."""

    @workflow.run
    async def run(self, input: TrivialInput) -> str:
        return await workflow.execute_activity(
            trivial_activity, input, start_to_close_timeout=timedelta(seconds=30)
        )


# --- the same-interaction workflow -------------------------------------------------------------


class InteractionAnswer(BaseModel):
    """What each Update answers: the step it took."""

    step: str
    count: int


class InteractionResult(BaseModel):
    reports: int
    settlements: int


def _refuse(message: str) -> ApplicationError:
    return ApplicationError(message, type="InvalidState", non_retryable=True)


@workflow.defn
class InteractionWorkflow:
    """An order's messages and no work: created, approved, released, reported on, settled.

    Validators refuse messages out of turn, as the order's do; handlers only count.
    """

    @workflow.init
    def __init__(self, input: OrderWorkflowInput) -> None:
        self._settlements_expected = len(input.request.allocations)
        self._step = "created"
        self._reports = 0
        self._settled: set[str] = set()

    @workflow.run
    async def run(self, input: OrderWorkflowInput) -> InteractionResult:
        await workflow.wait_condition(
            lambda: len(self._settled) >= self._settlements_expected and self._reports >= 3
        )
        await workflow.wait_condition(workflow.all_handlers_finished)
        return InteractionResult(reports=self._reports, settlements=len(self._settled))

    @workflow.update
    def await_compliance(self, input: AwaitComplianceInput) -> InteractionAnswer:
        return InteractionAnswer(step=self._step, count=0)

    @workflow.update
    def approve(self, input: ApproveInput) -> InteractionAnswer:
        self._step = "approved"
        return InteractionAnswer(step=self._step, count=1)

    @approve.validator
    def _validate_approve(self, input: ApproveInput) -> None:
        if self._step != "created":
            raise _refuse(f"cannot approve an order that is {self._step}")

    @workflow.update
    def release(self, input: ReleaseInput) -> InteractionAnswer:
        self._step = "released"
        return InteractionAnswer(step=self._step, count=1)

    @release.validator
    def _validate_release(self, input: ReleaseInput) -> None:
        if self._step != "approved":
            raise _refuse(f"cannot release an order that is {self._step}")

    @workflow.update
    def execution_report(self, input: ExecutionReportInput) -> InteractionAnswer:
        self._reports += 1
        return InteractionAnswer(step=input.report.exec_type.value, count=self._reports)

    @execution_report.validator
    def _validate_execution_report(self, input: ExecutionReportInput) -> None:
        if self._step != "released":
            raise _refuse(f"the order is {self._step}, not at a venue")

    @workflow.signal
    def settlement_update(self, input: SettlementUpdateInput) -> None:
        self._settled.add(input.settlement_id)


# --- the order-shaped workflow ------------------------------------------------------------------

# An order's timers (`workflows.order`): its creation's attestation, the approval's escalation,
# the day order's end while it waits for release and while it works at the venue, the venue's
# acknowledgement and the settlement deadline. None of them fires here.
_CREATION_WAIT = timedelta(minutes=1)
_APPROVAL_WAIT = timedelta(hours=4)
_DAY_ENDS = timedelta(days=1)
_ACK_WAIT = timedelta(minutes=1)
_SETTLEMENT_WAIT = timedelta(days=3)
_STEP_TIMEOUT = timedelta(seconds=30)


class OrderStep(BaseModel):
    """Which of an order's activities a no-op step stands in for."""

    step: str


@activity.defn
async def order_step(input: OrderStep) -> str:
    """Stand in for one of an order's activities; do nothing."""
    return input.step


@workflow.defn
class OrderShapeWorkflow:
    """An order's messages and every Temporal command an order gives, each doing nothing.

    It runs as `workflows.order.OrderWorkflow` runs a created, approved, released, filled and
    settled order: one patch marker; a local activity for each compliance check (at creation and
    at release) and for the submission; a projector coroutine that runs a local activity when
    something is unprojected and the run loop waits or an Update waits for its answer (holding
    it while a check runs); the order's timers; one activity for the back office. Human
    Updates answer once their change is "projected"; the venue's reports answer at once.
    """

    @workflow.init
    def __init__(self, input: OrderWorkflowInput) -> None:
        self._settlements_expected = len(input.request.allocations)
        self._step = "created"
        self._asked = False
        self._checked = False
        self._release_checked = False
        self._reports = 0
        self._settled: set[str] = set()
        self._changes = 0
        self._projected = 0
        self._answers_awaited = 0
        self._judging = False
        self._closing = False
        self._run_loop_waits_for: Callable[[], bool] | None = None

    @workflow.run
    async def run(self, input: OrderWorkflowInput) -> InteractionResult:
        workflow.patched("order-shape-baseline")
        projector = asyncio.create_task(self._projector())
        self._changes += 1  # created
        await self._wait_until(lambda: self._asked, _CREATION_WAIT)
        await self._judge()
        self._checked = True
        await self._wait_until(lambda: self._step == "approved", _APPROVAL_WAIT)
        await self._wait_until(lambda: self._step == "released", _DAY_ENDS)
        await self._judge()
        self._release_checked = True
        await self._local("submit")
        self._changes += 1  # sent to the venue
        await self._wait_until(lambda: self._reports >= 1, _ACK_WAIT)
        await self._wait_until(lambda: self._reports >= 3, _DAY_ENDS)
        self._changes += 1  # allocated
        await workflow.execute_activity(
            order_step, OrderStep(step="instruct_settlements"), start_to_close_timeout=_STEP_TIMEOUT
        )
        self._changes += 1  # instructed
        await self._wait_until(
            lambda: len(self._settled) >= self._settlements_expected, _SETTLEMENT_WAIT
        )
        self._changes += 1  # settled
        await workflow.wait_condition(workflow.all_handlers_finished)
        self._closing = True
        await projector
        return InteractionResult(reports=self._reports, settlements=len(self._settled))

    async def _local(self, step: str) -> None:
        await workflow.execute_local_activity(
            order_step, OrderStep(step=step), start_to_close_timeout=_STEP_TIMEOUT
        )

    async def _judge(self) -> None:
        """A compliance check: the projector holds its write for the judgement's events."""
        self._judging = True
        try:
            await self._local("assess_order")
        finally:
            self._judging = False
        self._changes += 1

    async def _wait_until(
        self, condition: Callable[[], bool], within: timedelta | None = None
    ) -> None:
        self._run_loop_waits_for = condition
        try:
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(condition, timeout=within)
        finally:
            self._run_loop_waits_for = None

    def _projection_due(self) -> bool:
        if self._changes <= self._projected:
            return self._closing
        if self._closing or self._answers_awaited:
            return True
        if self._judging:
            return False
        waits_for = self._run_loop_waits_for
        return waits_for is None or not waits_for()

    async def _projector(self) -> None:
        while True:
            await workflow.wait_condition(self._projection_due)
            if self._changes <= self._projected:
                return
            written = self._changes
            await self._local("project_events")
            self._projected = max(self._projected, written)

    async def _answer(self, step: str, change: int) -> InteractionAnswer:
        """Answer an Update once its change is projected, as the order's human Updates do."""
        self._answers_awaited += 1
        try:
            await workflow.wait_condition(lambda: self._projected >= change)
        finally:
            self._answers_awaited -= 1
        return InteractionAnswer(step=step, count=change)

    @workflow.update
    async def await_compliance(self, input: AwaitComplianceInput) -> InteractionAnswer:
        self._asked = True
        await workflow.wait_condition(lambda: self._checked)
        return await self._answer(self._step, self._changes)

    @workflow.update
    async def approve(self, input: ApproveInput) -> InteractionAnswer:
        self._step = "approved"
        self._changes += 1
        return await self._answer(self._step, self._changes)

    @approve.validator
    def _validate_approve(self, input: ApproveInput) -> None:
        if self._step != "created" or not self._checked:
            raise _refuse(f"cannot approve an order that is {self._step}")

    @workflow.update
    async def release(self, input: ReleaseInput) -> InteractionAnswer:
        self._step = "released"
        await workflow.wait_condition(lambda: self._release_checked)
        return await self._answer(self._step, self._changes)

    @release.validator
    def _validate_release(self, input: ReleaseInput) -> None:
        if self._step != "approved":
            raise _refuse(f"cannot release an order that is {self._step}")

    @workflow.update
    def execution_report(self, input: ExecutionReportInput) -> InteractionAnswer:
        self._reports += 1
        self._changes += 1
        return InteractionAnswer(step=input.report.exec_type.value, count=self._reports)

    @execution_report.validator
    def _validate_execution_report(self, input: ExecutionReportInput) -> None:
        if self._step != "released":
            raise _refuse(f"the order is {self._step}, not at a venue")

    @workflow.signal
    def settlement_update(self, input: SettlementUpdateInput) -> None:
        self._settled.add(input.settlement_id)
        self._changes += 1


# --- the loads ---------------------------------------------------------------------------------

ACCOUNTS = ("alpha-main", "alpha-growth")
QUANTITY = Decimal(100)
PRICE = Decimal("190.50")


def order_request(client_order_id: str) -> OrderRequest:
    """The order both the lifecycle and the reference use: 100 AAPL, split over two accounts."""
    share = QUANTITY / len(ACCOUNTS)
    return OrderRequest(
        client_order_id=client_order_id,
        fund="fund-alpha",
        symbol="AAPL",
        side=Side.BUY,
        quantity=QUANTITY,
        order_type=OrderType.MARKET,
        time_in_force=TimeInForce.DAY,
        allocations=[AllocationRequest(account=a, quantity=share) for a in ACCOUNTS],
    )


class PhaseResult(BaseModel):
    """What one reference load measured."""

    wall: float
    latencies: list[float]
    count: int
    history: dict[str, float]
    histories_read: int


async def _run_phase(
    client: Client,
    runner: WorkflowRunner,
    name: str,
    worker_parts: dict[str, Any],
    drive: Callable[[str, str], Awaitable[None]],
    count: int,
    concurrency: int,
    budget: float,
    probe: Probe,
) -> PhaseResult:
    """Drive `count` workflows of one kind, `concurrency` at a time, on a worker of their own.

    `drive(queue, workflow_id)` runs one workflow to its end; `worker_parts` are the Worker's
    workflows and activities.
    """
    suffix = uuid.uuid4().hex[:8]
    queue = f"bench-{name}-{suffix}"

    async def one(index: int) -> float:
        started = time.perf_counter()
        await drive(queue, f"bench-{name}-{suffix}-{index}")
        return time.perf_counter() - started

    async with Worker(client, task_queue=queue, workflow_runner=runner, **worker_parts):
        await one(-1)  # warm-up: the sandbox's first import, connections
        probe.begin()
        results, wall = await bounded(count, concurrency, one, budget)
        await probe.end()
        latencies = [r for r in results if r is not None]
        history, read = await mean_history_counts(
            client, (f"bench-{name}-{suffix}-{i}" for i in range(count))
        )
    return PhaseResult(
        wall=wall, latencies=latencies, count=count, history=history, histories_read=read
    )


async def run_trivial(
    client: Client,
    runner: WorkflowRunner,
    count: int,
    concurrency: int,
    budget: float,
    probe: Probe,
) -> PhaseResult:
    """Start and await `count` trivial workflows, `concurrency` at a time, on a worker of its own."""

    async def drive(queue: str, workflow_id: str) -> None:
        await client.execute_workflow(
            TrivialWorkflow.run,
            TrivialInput(name=workflow_id),
            id=workflow_id,
            task_queue=queue,
        )

    parts = {"workflows": [TrivialWorkflow], "activities": [trivial_activity]}
    return await _run_phase(
        client, runner, "trivial", parts, drive, count, concurrency, budget, probe
    )


async def drive_interaction(
    client: Client, queue: str, workflow_id: str, workflow_type: str = "InteractionWorkflow"
) -> None:
    """One order's messages, in order, each sent when the one before it has been answered.

    `workflow_type` is `InteractionWorkflow` or `OrderShapeWorkflow`: they take the same
    messages under the same names.
    """
    request = order_request(workflow_id[-60:])
    start: WithStartWorkflowOperation[Any, InteractionResult] = WithStartWorkflowOperation(
        workflow_type,
        OrderWorkflowInput(order_id=workflow_id, request=request, created_by="alice"),
        id=workflow_id,
        task_queue=queue,
        id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        result_type=InteractionResult,
    )
    # The API: create (update-with-start), approve, release.
    await client.execute_update_with_start_workflow(
        "await_compliance",
        AwaitComplianceInput(),
        start_workflow_operation=start,
        result_type=InteractionAnswer,
    )
    handle = await start.workflow_handle()
    grants = [PolicyGrant(permission="desk_head", policy=["dana", "*", "approvals", "desk_head"])]
    await handle.execute_update(
        "approve", ApproveInput(user="dana", grants=grants), result_type=InteractionAnswer
    )
    await handle.execute_update(
        "release", ReleaseInput(user="tom", venue="simulator"), result_type=InteractionAnswer
    )
    # The venue: acknowledgement, then two fills, each Update answered before the next.
    half = QUANTITY / 2
    for n, (exec_type, quantity) in enumerate(
        ((ExecType.NEW, Decimal(0)), (ExecType.TRADE, half), (ExecType.TRADE, half))
    ):
        report = ExecutionReport(
            order_id=workflow_id[-60:],
            exec_id=f"SIM-{workflow_id[-60:]}-{n}",
            exec_type=exec_type,
            last_quantity=quantity,
            last_price=PRICE if quantity else None,
            transact_time=datetime.now(UTC),
        )
        await handle.execute_update(
            "execution_report",
            ExecutionReportInput(report=report, reported_by="sim-venue"),
            result_type=InteractionAnswer,
        )
    # The back office: one Signal per settlement instruction, as its confirmations arrive.
    await asyncio.gather(
        *(
            handle.signal(
                "settlement_update",
                SettlementUpdateInput(
                    settlement_id=f"stl-{account}",
                    status=SettlementStatus.CONFIRMED,
                    user="betty",
                    at=datetime.now(UTC),
                ),
            )
            for account in ACCOUNTS
        )
    )
    await handle.result()


async def run_interaction(
    client: Client,
    runner: WorkflowRunner,
    count: int,
    concurrency: int,
    budget: float,
    probe: Probe,
) -> PhaseResult:
    """Drive `count` same-interaction workflows, `concurrency` at a time, on a worker of its own."""

    async def drive(queue: str, workflow_id: str) -> None:
        await drive_interaction(client, queue, workflow_id)

    parts = {"workflows": [InteractionWorkflow]}
    return await _run_phase(
        client, runner, "interaction", parts, drive, count, concurrency, budget, probe
    )


async def run_order_shape(
    client: Client,
    runner: WorkflowRunner,
    count: int,
    concurrency: int,
    budget: float,
    probe: Probe,
) -> PhaseResult:
    """Drive `count` order-shaped workflows, `concurrency` at a time, on a worker of their own."""

    async def drive(queue: str, workflow_id: str) -> None:
        await drive_interaction(client, queue, workflow_id, "OrderShapeWorkflow")

    parts = {"workflows": [OrderShapeWorkflow], "activities": [order_step]}
    return await _run_phase(
        client, runner, "order-shape", parts, drive, count, concurrency, budget, probe
    )
