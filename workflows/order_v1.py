"""The first order workflow (v1), kept so that orders started on it finish on it and its histories replay.

Frozen: new orders run on `workflows.order.OrderWorkflow` (v2). Change nothing here that a
running v1 order's history depends on.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    from activities.back_office import BackOfficeActivities, InstructSettlementInput
    from activities.compliance import (
        ApprovalMatrixInput,
        ComplianceActivities,
        ComplianceSnapshotInput,
    )
    from activities.projection import (
        BookAllocationsInput,
        ProjectionActivities,
        ProjectOrderInput,
        RecordSettlementStatusInput,
    )
    from activities.venue import CancelAtVenueInput, SubmitOrderInput, VenueActivities
    from domain.allocation import allocate
    from domain.approvals import required_levels
    from domain.compliance import evaluate, order_notional, worst_outcome
    from domain.errors import RefusalType
    from domain.executions import ReportVerdict, apply_report_to
    from domain.ids import settlement_id_for
    from domain.models import (
        ApprovalGiven,
        ComplianceOutcome,
        Instrument,
        OrderState,
        OrderStatus,
        SettlementInstruction,
        SettlementStatus,
    )
    from domain.settlement import settlement_date
    from domain.status import (
        AT_VENUE,
        CLOSED_BY_VENUE,
        DONE_AT_VENUE,
        PRE_RELEASE,
        OrderEvent,
        allows,
        next_status,
    )
    from venues.base import VenueOrder
    from workflows.messages import (
        ApproveInput,
        AwaitComplianceInput,
        CancelInput,
        ExecutionReportInput,
        OrderWorkflowInput,
        OrderWorkflowResult,
        OverrideInput,
        PolicyGrant,
        RejectInput,
        ReleaseInput,
        SettlementUpdateInput,
    )

# Read-model writes and reference reads: retried until the database is back.
_LOCAL_IO: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=30)),
}
# Venue and back-office calls: a few attempts, then the failure surfaces on the order.
_EXTERNAL: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=10), maximum_attempts=5),
}


# workflow.patched() ids: each marks a change that orders already running must not see.
_PATCH_CREATE_ANSWERS_AFTER_PROJECTION = "create-answers-after-projection"


def _cause(err: ActivityError) -> str:
    """Return the message of what made an activity fail, for people."""
    return err.cause.message if isinstance(err.cause, FailureError) else str(err)


def _refuse(message: str, refusal: RefusalType) -> ApplicationError:
    return ApplicationError(message, type=refusal, non_retryable=True)


@workflow.defn(name="OrderWorkflow")
class OrderWorkflowV1:
    """One order: compliance, approvals, release, execution, allocation and settlement (v1).

    Human actions (approve, reject, override, release, cancel) are Updates whose validators refuse
    what the order's state or segregation of duties forbids; venue and back-office events are
    Signals; `state` is the live view. Status changes go through the table in `domain.status`.
    """

    @workflow.init
    def __init__(self, input: OrderWorkflowInput) -> None:
        request = input.request
        now = workflow.now()
        self._input = input
        self._instrument: Instrument | None = None
        self._projected_version = 0  # the newest version the read model is known to hold
        self._state = OrderState(
            order_id=input.order_id,
            client_order_id=request.client_order_id,
            fund=request.fund,
            symbol=request.symbol,
            side=request.side,
            quantity=request.quantity,
            order_type=request.order_type,
            limit_price=request.limit_price,
            time_in_force=request.time_in_force,
            expire_at=request.expire_at,
            notes=request.notes,
            requested_allocations=list(request.allocations),
            created_by=input.created_by,
            created_at=now,
            updated_at=now,
            leaves_quantity=request.quantity,
        )

    # ---- the life of the order ----------------------------------------------------------------

    @workflow.run
    async def run(self, input: OrderWorkflowInput) -> OrderWorkflowResult:
        await self._project()
        if await self._pre_trade_compliance():
            await self._collect_approvals()
        if self._state.status is OrderStatus.APPROVED:
            await workflow.wait_condition(lambda: self._state.status is not OrderStatus.APPROVED)
        if self._state.status in AT_VENUE:
            await workflow.wait_condition(lambda: self._state.status in DONE_AT_VENUE)
        if self._state.status in DONE_AT_VENUE and self._state.filled_quantity > 0:
            await self._allocate()
            await self._settle()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return OrderWorkflowResult(order_id=self._state.order_id, status=self._state.status)

    async def _pre_trade_compliance(self) -> bool:
        """Check the order; return whether it may go on to approval (possibly after an override)."""
        try:
            snapshot = await workflow.execute_activity_method(
                ComplianceActivities.compliance_snapshot,
                ComplianceSnapshotInput(order=self._input.request),
                **_LOCAL_IO,
            )
        except ActivityError as err:
            # Only a non-retryable refusal gets here (an instrument unknown to reference data):
            # without the data the rules cannot pass, so the order fails compliance.
            self._transition(
                OrderEvent.COMPLIANCE_FAILED, reason=f"compliance could not run: {_cause(err)}"
            )
            await self._project()
            return False
        self._instrument = snapshot.instrument
        results = evaluate(self._input.request, snapshot)
        self._state.compliance = results
        self._state.notional = order_notional(self._input.request, snapshot)
        self._state.currency = snapshot.instrument.currency
        outcome = worst_outcome(results)
        if outcome is ComplianceOutcome.FAIL:
            failed = "; ".join(r.message for r in results if r.outcome is ComplianceOutcome.FAIL)
            self._transition(OrderEvent.COMPLIANCE_FAILED, reason=failed)
            await self._project()
            return False
        matrix = await workflow.execute_activity_method(
            ComplianceActivities.approval_matrix,
            ApprovalMatrixInput(fund=self._state.fund),
            **_LOCAL_IO,
        )
        self._state.approvals.required = required_levels(matrix, self._state.notional, results)
        if outcome is ComplianceOutcome.WARN:
            self._transition(OrderEvent.COMPLIANCE_WARNED)
            await self._project()
            timeouts = self._input.timeouts
            overridden = await self._wait(
                lambda: self._state.status is not OrderStatus.PENDING_OVERRIDE,
                timeouts.approval_expire_after,
            )
            if not overridden:
                self._transition(
                    OrderEvent.APPROVAL_EXPIRED, reason="no compliance override in time"
                )
                await self._project()
            return self._state.status is OrderStatus.PENDING_APPROVAL
        self._transition(OrderEvent.COMPLIANCE_PASSED)
        self._complete_if_no_levels()
        await self._project()
        return True

    async def _collect_approvals(self) -> None:
        """Wait for every level; escalate once when it waits too long, expire in the end."""
        timeouts = self._input.timeouts

        def decided() -> bool:
            return self._state.status is not OrderStatus.PENDING_APPROVAL

        if await self._wait(decided, timeouts.approval_escalate_after):
            return
        level = self._state.approvals.current_level
        self._state.flags.append(f"approval_escalated:{level}")
        self._touch()
        await self._project()
        remaining = timeouts.approval_expire_after - timeouts.approval_escalate_after
        if remaining > timedelta(0) and await self._wait(decided, remaining):
            return
        self._transition(OrderEvent.APPROVAL_EXPIRED, reason=f"approval at level {level} expired")
        await self._project()

    def _complete_if_no_levels(self) -> None:
        if (
            self._state.status is OrderStatus.PENDING_APPROVAL
            and self._state.approvals.current_level is None
        ):
            self._transition(OrderEvent.APPROVALS_COMPLETE, actor=self._state.status_actor)

    async def _allocate(self) -> None:
        assert self._instrument is not None
        state = self._state
        assert state.average_price is not None
        state.allocations = allocate(
            state.requested_allocations,
            state.filled_quantity,
            state.average_price,
            self._instrument.lot_size,
        )
        self._transition(OrderEvent.ALLOCATED)
        await workflow.execute_activity_method(
            ProjectionActivities.book_allocations,
            BookAllocationsInput(
                state=state, allocations=state.allocations, booked_at=workflow.now()
            ),
            **_LOCAL_IO,
        )
        await self._project()

    async def _settle(self) -> None:
        """Instruct the back office per allocation, then wait for every confirmation."""
        assert self._instrument is not None
        state = self._state
        trade_day = max(e.transact_time for e in state.executions if e.last_quantity > 0).date()
        settle_on = settlement_date(trade_day, self._instrument.asset_class)
        state.settlements = [
            SettlementInstruction(
                settlement_id=settlement_id_for(state.order_id, a.account),
                order_id=state.order_id,
                fund=state.fund,
                account=a.account,
                symbol=state.symbol,
                side=state.side,
                quantity=a.quantity,
                price=a.price,
                gross_amount=(a.quantity * a.price).quantize(Decimal("0.01")),
                currency=self._instrument.currency,
                trade_date=trade_day,
                settlement_date=settle_on,
            )
            for a in state.allocations
        ]
        for instruction in state.settlements:
            await workflow.execute_activity_method(
                BackOfficeActivities.instruct_settlement,
                InstructSettlementInput(instruction=instruction),
                task_queue=self._input.back_office_task_queue,
                **_EXTERNAL,
            )
        self._transition(OrderEvent.SETTLEMENT_INSTRUCTED)
        await self._project()

        def all_confirmed() -> bool:
            return all(s.status is SettlementStatus.CONFIRMED for s in self._state.settlements)

        def any_failed() -> bool:
            return any(s.status is SettlementStatus.FAILED for s in self._state.settlements)

        # The back office has until the end of the settlement date (UTC).
        deadline = datetime.combine(settle_on + timedelta(days=1), time(0), tzinfo=UTC)
        await self._wait(
            lambda: all_confirmed() or any_failed(),
            max(deadline - workflow.now(), timedelta(seconds=1)),
        )
        if not all_confirmed():
            if not any_failed():
                state.flags.append("settlement_not_confirmed_by_settlement_date")
            self._transition(OrderEvent.SETTLEMENT_FAILED, reason="settlement not confirmed")
            await self._project()
            if not await self._wait(all_confirmed, self._input.timeouts.late_settlement_grace):
                return
        self._transition(OrderEvent.SETTLED)
        await self._project()

    # ---- updates: human actions ---------------------------------------------------------------

    @workflow.update
    async def approve(self, input: ApproveInput) -> OrderState:
        """Approve the order's current level."""
        level = self._state.approvals.current_level
        assert level is not None
        grant = next(g for g in input.grants if g.permission == level)
        self._state.approvals.given.append(
            ApprovalGiven(
                level=level,
                user=input.user,
                at=workflow.now(),
                comment=input.comment,
                policy=grant.policy,
            )
        )
        if self._state.approvals.current_level is None:
            self._transition(OrderEvent.APPROVALS_COMPLETE, actor=input.user)
        else:
            self._touch()
        await self._project()
        return self._state

    @approve.validator
    def _validate_approve(self, input: ApproveInput) -> None:
        self._require_status(OrderStatus.PENDING_APPROVAL, "approve")
        self._require_decider(input.user, input.grants, "approve it")
        if any(g.user == input.user for g in self._state.approvals.given):
            raise _refuse(
                f"{input.user} already approved a level of this order", RefusalType.FORBIDDEN
            )

    @workflow.update
    async def reject(self, input: RejectInput) -> OrderState:
        """Reject the order at its current level; it ends as approval_rejected."""
        self._transition(OrderEvent.APPROVAL_REJECTED, reason=input.reason, actor=input.user)
        await self._project()
        return self._state

    @reject.validator
    def _validate_reject(self, input: RejectInput) -> None:
        self._require_status(OrderStatus.PENDING_APPROVAL, "reject")
        if not input.reason.strip():
            raise _refuse("a rejection needs a reason", RefusalType.INVALID_INPUT)
        self._require_decider(input.user, input.grants, "reject it (cancel it instead)")

    @workflow.update
    async def override(self, input: OverrideInput) -> OrderState:
        """Accept the order's soft compliance breaches, with a written justification."""
        self._state.override = {
            "user": input.user,
            "justification": input.justification,
            "at": workflow.now().isoformat(),
            "policy": input.policy,
        }
        self._transition(OrderEvent.OVERRIDDEN, actor=input.user)
        self._complete_if_no_levels()
        await self._project()
        return self._state

    @override.validator
    def _validate_override(self, input: OverrideInput) -> None:
        self._require_status(OrderStatus.PENDING_OVERRIDE, "override")
        if not input.justification.strip():
            raise _refuse("an override needs a justification", RefusalType.INVALID_INPUT)
        if input.user == self._state.created_by:
            raise _refuse("the order's creator cannot override its breaches", RefusalType.FORBIDDEN)

    @workflow.update
    async def release(self, input: ReleaseInput) -> OrderState:
        """Send the approved order to a venue."""
        state = self._state
        state.venue = input.venue
        self._transition(OrderEvent.RELEASED, actor=input.user)
        await self._project()
        order = VenueOrder(
            order_id=state.order_id,
            fund=state.fund,
            symbol=state.symbol,
            side=state.side,
            quantity=state.quantity,
            order_type=state.order_type,
            limit_price=state.limit_price,
            time_in_force=state.time_in_force,
        )
        try:
            await workflow.execute_activity_method(
                VenueActivities.submit_order,
                SubmitOrderInput(venue=input.venue, order=order),
                **_EXTERNAL,
            )
        except ActivityError as err:
            # The venue never took the order: record why, and end it as rejected by the venue.
            if state.status is OrderStatus.RELEASED:
                self._transition(
                    OrderEvent.VENUE_REJECTED,
                    reason=f"venue did not accept the order: {_cause(err)}",
                )
                await self._project()
        return self._state

    @release.validator
    def _validate_release(self, input: ReleaseInput) -> None:
        self._require_status(OrderStatus.APPROVED, "release")

    @workflow.update
    async def cancel(self, input: CancelInput) -> OrderState:
        """Cancel the order: at once before release, through pending_cancel after."""
        state = self._state
        if state.status in PRE_RELEASE:
            self._transition(
                OrderEvent.CANCELED_BEFORE_RELEASE, reason=input.reason, actor=input.user
            )
            await self._project()
            return state
        self._transition(OrderEvent.CANCEL_REQUESTED, reason=input.reason, actor=input.user)
        await self._project()
        assert state.venue is not None
        try:
            await workflow.execute_activity_method(
                VenueActivities.cancel_at_venue,
                CancelAtVenueInput(venue=state.venue, order_id=state.order_id),
                **_EXTERNAL,
            )
        except ActivityError as err:
            # The request never reached the venue: the order is still working there.
            if state.status is OrderStatus.PENDING_CANCEL:
                state.flags.append(f"cancel_not_sent:{_cause(err)}")
                rejected = (
                    OrderEvent.CANCEL_REJECTED_AFTER_FILLS
                    if state.filled_quantity > 0
                    else OrderEvent.CANCEL_REJECTED
                )
                self._transition(rejected, actor="system")
                await self._project()
        return self._state

    @cancel.validator
    def _validate_cancel(self, input: CancelInput) -> None:
        status = self._state.status
        if allows(status, OrderEvent.CANCELED_BEFORE_RELEASE) or allows(
            status, OrderEvent.CANCEL_REQUESTED
        ):
            return
        raise _refuse(
            f"an order that is {status.value} cannot be canceled", RefusalType.INVALID_STATE
        )

    @workflow.update
    async def await_compliance(self, input: AwaitComplianceInput) -> OrderState:
        """Return the order once pre-trade compliance has decided (used with update-with-start).

        It answers only once the read model shows the decision too, so the creator's next
        list or inbox query finds the order as the response describes it.
        """
        await workflow.wait_condition(
            lambda: self._state.status is not OrderStatus.PENDING_COMPLIANCE
        )
        if workflow.patched(_PATCH_CREATE_ANSWERS_AFTER_PROJECTION):
            decided = self._state.version
            await workflow.wait_condition(lambda: self._projected_version >= decided)
        return self._state

    # ---- signals: machine events --------------------------------------------------------------

    @workflow.signal
    async def execution_report(self, input: ExecutionReportInput) -> None:
        """Apply a venue's execution report; duplicates are ignored, impossible ones flagged."""
        state = self._state
        outcome = apply_report_to(state, input.report, input.reported_by, workflow.now())
        if outcome.verdict is ReportVerdict.DUPLICATE:
            return
        if outcome.verdict is ReportVerdict.REFUSED:
            state.flags.append(f"execution_refused:{input.report.exec_id}:{outcome.reason}")
            self._touch()
            await self._project()
            return
        execution = outcome.execution
        assert execution is not None
        state.executions.append(execution)
        state.filled_quantity = execution.cumulative_quantity
        state.leaves_quantity = execution.leaves_quantity
        state.average_price = execution.average_price
        if outcome.event is not None:
            # Closing reports give the venue's text; without one, a requested cancel keeps its reason.
            reason = (
                (input.report.text or state.status_reason)
                if outcome.event in CLOSED_BY_VENUE
                else ""
            )
            self._transition(outcome.event, reason=reason, actor=input.reported_by)
        else:
            self._touch()
        await self._project()

    @workflow.signal
    async def settlement_update(self, input: SettlementUpdateInput) -> None:
        """Record the back office's confirmation or failure of one instruction."""
        for index, instruction in enumerate(self._state.settlements):
            if instruction.settlement_id != input.settlement_id:
                continue
            if instruction.status is SettlementStatus.CONFIRMED:
                return  # confirmed is final; repeats change nothing
            self._state.settlements[index] = instruction.model_copy(
                update={
                    "status": input.status,
                    "status_reason": input.reason,
                    "status_at": input.at,
                }
            )
            self._touch()
            await workflow.execute_activity_method(
                ProjectionActivities.record_settlement_status,
                RecordSettlementStatusInput(
                    settlement_id=input.settlement_id,
                    status=input.status,
                    reason=input.reason,
                    at=input.at,
                ),
                **_LOCAL_IO,
            )
            await self._project()
            return

    # ---- queries ------------------------------------------------------------------------------

    @workflow.query
    def state(self) -> OrderState:
        """Return the live order."""
        return self._state

    # ---- helpers ------------------------------------------------------------------------------

    def _require_status(self, status: OrderStatus, action: str) -> None:
        if self._state.status is not status:
            raise _refuse(
                f"cannot {action} an order that is {self._state.status.value} (needs {status.value})",
                RefusalType.INVALID_STATE,
            )

    def _require_decider(self, user: str, grants: list[PolicyGrant], action: str) -> None:
        """Refuse the order's creator, and anyone not granted the level now pending."""
        level = self._state.approvals.current_level
        if user == self._state.created_by:
            raise _refuse(f"the order's creator cannot {action}", RefusalType.FORBIDDEN)
        if not any(g.permission == level for g in grants):
            raise _refuse(
                f"{user} may not decide level {level} in {self._state.fund}", RefusalType.FORBIDDEN
            )

    def _transition(self, event: OrderEvent, *, reason: str = "", actor: str = "system") -> None:
        self._state.status = next_status(self._state.status, event)
        self._state.status_actor = actor
        self._state.status_reason = reason
        self._touch()

    def _touch(self) -> None:
        self._state.version += 1
        self._state.updated_at = workflow.now()

    async def _project(self) -> None:
        snapshot = self._state.model_copy(deep=True)
        await workflow.execute_activity_method(
            ProjectionActivities.project_order, ProjectOrderInput(state=snapshot), **_LOCAL_IO
        )
        self._projected_version = max(self._projected_version, snapshot.version)

    @staticmethod
    async def _wait(condition: Callable[[], bool], within: timedelta) -> bool:
        """Wait for `condition` up to `within`; return whether it came true."""
        try:
            await workflow.wait_condition(condition, timeout=within)
        except TimeoutError:
            return False
        return True
