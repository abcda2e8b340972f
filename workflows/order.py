"""OrderWorkflow (v2): one order as a phase machine over its event log, with one projector.

Handlers (Updates, Signals) validate, record an event and, where the venue must be told, queue a
command; they do no I/O. `run()` picks the phase from the status and runs it until the order
closes. One projector coroutine writes the events not yet projected, with the slim order row,
through one local activity per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Generic, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, FailureError

with workflow.unsafe.imports_passed_through():
    from pydantic import JsonValue

    from activities.assessment import AssessmentActivities, AssessOrderInput, AssessOrderResult
    from activities.back_office import BackOfficeActivities, InstructSettlementsInput
    from activities.compliance import ComplianceActivities, PreTradeDataInput
    from activities.notifications import (
        ApprovalDecidedInput,
        ApprovalNeededInput,
        ChatNotifications,
        Decision,
    )
    from activities.projection import ProjectEventsInput, ProjectionActivities
    from activities.venue import (
        CancelAtVenueInput,
        ReplaceAtVenueInput,
        SubmitOrderInput,
        VenueActivities,
        VenueOrderStatusInput,
    )
    from domain.allocation import allocate, rescaled
    from domain.approvals import required_approvals, required_levels
    from domain.assessment import KILL_SWITCH_RULE
    from domain.authority import (
        TRUSTED_KEYS,
        Action,
        Authority,
        AuthorityRefusedError,
        SignedAuthority,
        verify,
    )
    from domain.compliance import (
        approval_currency,
        approval_notional,
        evaluate,
        order_notional,
        worst_outcome,
    )
    from domain.errors import RefusalType
    from domain.executions import (
        WRONG_VENUE,
        ReportGuards,
        ReportOutcome,
        ReportVerdict,
        apply_report,
        transact_time_problem,
    )
    from domain.ids import settlement_id_for
    from domain.models import (
        ApprovalGiven,
        ApprovalState,
        ComplianceOutcome,
        ComplianceResult,
        ExecType,
        Instrument,
        OrderRequest,
        OrderStatus,
        SettlementInstruction,
        SettlementStatus,
        TimeInForce,
        tidy,
    )
    from domain.order import (
        FlagKind,
        Order,
        OrderProjection,
        Override,
        PendingAmendment,
        Terms,
        amendment_subject,
        summarise,
    )
    from domain.settlement import settlement_date
    from domain.status import (
        AT_VENUE,
        CLOSED_BY_VENUE,
        PRE_RELEASE,
        REPLACED_EVENTS,
        OrderEvent,
        allows,
    )
    from venues.base import VenueOrder, VenueOrderStatus
    from workflows.messages import (
        AmendInput,
        ApproveInput,
        AwaitComplianceInput,
        CancelInput,
        CarriedOrder,
        ExecutionReportInput,
        ExecutionReportResult,
        OrderWorkflowInput,
        OrderWorkflowResult,
        OverrideInput,
        PolicyGrant,
        ReconcileInput,
        RejectInput,
        ReleaseInput,
        SettlementUpdateInput,
        VenueCommand,
        VenueCommandKind,
    )

WORKFLOW_TYPE = "OrderWorkflowV2"

# Read-model writes and reference reads: local, retried until the database is back.
_LOCAL_IO: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=30)),
}
# A venue call: a few quick attempts; then the order is flagged and the venue asked for status.
_VENUE_CALL: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=10),
    "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=2), maximum_attempts=3),
}
# Settlement instructions: retried until the back office takes them (idempotent by settlement id).
# One short transaction: a worker killed mid-call is noticed after this long, not the usual 30 s.
_BACK_OFFICE: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=10),
    "retry_policy": RetryPolicy(maximum_interval=timedelta(minutes=1)),
}
# A chat notice: retried for a while, then given up (an order never waits on chat).
_CHAT: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=10),
    "schedule_to_close_timeout": timedelta(minutes=10),
    "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=30)),
}
_STATUS_CHECK_BACKOFF_MAX = timedelta(minutes=5)
# Orders started after this patch wait for the API's signed word that their creator may create
# them (it comes with the start, as an Update); orders started before it never got one.
_SIGNED_AUTHORITY = "signed-authority"
# Compliance on the fund's portfolio after the trade (rules as data, open orders reserved), and
# again at release.
_PORTFOLIO_COMPLIANCE = "portfolio-compliance"
# Day and gtd orders not released in time expire (a day order at its market's close).
_TIME_IN_FORCE = "time-in-force"
_WORKING_AT_VENUE = frozenset(
    {OrderStatus.RELEASED, OrderStatus.WORKING, OrderStatus.PARTIALLY_FILLED}
)
_WAITING_FOR_RELEASE = frozenset(
    {OrderStatus.PENDING_OVERRIDE, OrderStatus.PENDING_APPROVAL, OrderStatus.APPROVED}
)
# Approval levels and deadlines from the fund's section of the approval matrix.
_FUND_APPROVAL_MATRIX = "fund-approval-matrix"
# Each approval level waits (and is notified) on its own.
_PER_LEVEL_NOTICES = "per-level-approval-notices"
# A start with no attested creation (someone started the workflow straight on Temporal) is
# refused after this long: the API delivers its attestation with the start itself.
_CREATION_ATTESTATION_WAIT = timedelta(minutes=1)
# Statements of authority kept per order to refuse a replayed one (beyond, they are stale anyway).
_NONCES_KEPT = 200
# Fills are checked against the order's limit, lots and the reference price's band, and no
# report is taken on an order not at a venue (histories from before applied them unchecked).
_EXECUTION_GUARDS = "execution-report-guards"
# Amend: replace reports answer a replace request (histories from before took them as no-ops).
_AMEND = "amend"
# An amend at the venue that needs an approval level the order never had waits for it (refused
# before).
_AMENDMENT_APPROVAL = "amendment-approval"
# A cancel request carries its own ClOrdID and names the order's as OrigClOrdID (FIX); before,
# it went under the order's ClOrdID.
_CANCEL_CL_ORD_ID = "cancel-cl-ord-id"
# The venue busts or corrects trades (trade_cancel, trade_correct; refused before).
_TRADE_CORRECTIONS = "trade-corrections"
# The projector writes once the run loop waits (or an Update waits for its answer), so that the
# events of one step go in one write; before, it wrote as soon as anything was unprojected.
_COALESCED_PROJECTION = "coalesced-projection"
# An order started under this baseline follows every patch in it, recorded by this one marker
# rather than by a marker of its own per patch (each is two history events: the marker and the
# search attribute Temporal keeps of it). Runs started before it consult each patch as before.
# A patch added later is not in it: it gets a marker of its own, or goes in a new baseline.
_BASELINE = "v2-baseline-1"
_BASELINE_PATCHES = frozenset(
    {
        _SIGNED_AUTHORITY,
        _PORTFOLIO_COMPLIANCE,
        _TIME_IN_FORCE,
        _FUND_APPROVAL_MATRIX,
        _PER_LEVEL_NOTICES,
        _EXECUTION_GUARDS,
        _AMEND,
        _AMENDMENT_APPROVAL,
        _CANCEL_CL_ORD_ID,
        _TRADE_CORRECTIONS,
        _COALESCED_PROJECTION,
    }
)
# Busts and corrections once the fills are booked: recorded, and flagged for middle office.
_AFTER_ALLOCATION = frozenset(
    {OrderEvent.TRADE_BUSTED_AFTER_ALLOCATION, OrderEvent.TRADE_CORRECTED_AFTER_ALLOCATION}
)
# Where an order may be amended: before release (compliance and approvals run again), or
# working at the venue (cancel/replace).
_AMENDABLE_BEFORE_RELEASE = frozenset(
    {OrderStatus.PENDING_OVERRIDE, OrderStatus.PENDING_APPROVAL, OrderStatus.APPROVED}
)
_REPLACEABLE = frozenset({OrderStatus.WORKING, OrderStatus.PARTIALLY_FILLED})
# Reports by which the venue answers a replace request (a cancel reject while only a replace is
# pending means the replace's rejection, as FIX's CxlRejResponseTo=2 says).
_REPLACE_ANSWERS = frozenset({ExecType.REPLACE_REJECTED, ExecType.CANCEL_REJECTED})
# A venue's words (VenueOrderStatus.state) for an order it has finished with.
_VENUE_DONE_STATES = frozenset({"filled", "canceled", "rejected", "expired"})
# The permission that lets a trader amend only what works at a venue (a PM amends at any stage).
AMEND_AT_VENUE = ("orders", "amend_at_venue")


def _inner(err: FailureError) -> BaseException | None:
    # A failed activity arrives as ActivityError(cause=...); a failed local activity may arrive
    # as its cause itself (an ApplicationError, a TimeoutError).
    return err.cause if isinstance(err, ActivityError) else err


def _cause(err: FailureError) -> str:
    """Return the message of what made an activity fail, for people."""
    inner = _inner(err)
    return inner.message if isinstance(inner, FailureError) else str(err)


def _refused_by_venue(err: FailureError) -> bool:
    inner = _inner(err)
    return isinstance(inner, ApplicationError) and inner.type == RefusalType.VENUE_REFUSED


def _not_cancellation(err: FailureError) -> None:
    """Let the workflow's own cancellation through an `except FailureError`."""
    if isinstance(err, CancelledError):
        raise err


def _refuse(message: str, refusal: RefusalType, field: str | None = None) -> ApplicationError:
    details = (field,) if field else ()
    return ApplicationError(message, *details, type=refusal, non_retryable=True)


def _json_list(values: list[str]) -> list[JsonValue]:
    return [value for value in values]


def _attested(signed: SignedAuthority | None, policy: list[str]) -> dict[str, JsonValue]:
    """Return the event details that keep the API's signed statement for compliance.

    `policy` is what an action from before decisions were signed carried instead.
    """
    if signed is None:
        return {"policy": _json_list(policy)}
    authority = signed.authority()
    return {
        "roles": _json_list(authority.roles),
        "policy": _json_list(authority.policy),
        "policy_version": authority.policy_version,
        "authority": signed.model_dump(),
    }


def _kill_switch_failure(results: list[ComplianceResult]) -> ComplianceResult | None:
    """Return the kill switch's failed result among `results`, if a switch is engaged."""
    return next(
        (r for r in results if r.rule == KILL_SWITCH_RULE and r.outcome is ComplianceOutcome.FAIL),
        None,
    )


def _worded(results: list[ComplianceResult], outcome: ComplianceOutcome) -> str:
    return "; ".join(r.message for r in results if r.outcome is outcome)


_InputT = TypeVar("_InputT")


class _PhaseRequest(Generic[_InputT]):
    """An action the running phase decides (after compliance's re-check); the Update waits."""

    def __init__(self, input: _InputT) -> None:
        self.input = input
        self.decided = False
        self.refusal: str | None = None
        self.refusal_type = RefusalType.COMPLIANCE_REFUSED

    def accept(self) -> None:
        self.decided = True

    def refuse(self, reason: str, refusal_type: RefusalType) -> None:
        self.refusal, self.refusal_type, self.decided = reason, refusal_type, True


@workflow.defn(name=WORKFLOW_TYPE)
class OrderWorkflow:
    """One order: compliance, approvals, release, execution, allocation and settlement.

    Human actions and execution reports are Updates whose validators refuse what the order's
    state, segregation of duties or common sense forbid (leaving no history); settlement answers
    are Signals; `state` is the live view. Status changes go through the table in
    `domain.status`, each as an event in the order's log.
    """

    @workflow.init
    def __init__(self, input: OrderWorkflowInput) -> None:
        self._input = input
        # First, so that every handler and phase sees it (its marker is the run's first command).
        self._on_baseline = workflow.patched(_BASELINE)
        carried = input.carried
        if carried is None:
            self._order = Order.new(input.order_id, input.request, input.created_by, workflow.now())
            self._commands: list[VenueCommand] = []
            self._projected_seq = 0
            self._projected_executions = 0
            self._allocations_projected = False
            self._settlements_projected: dict[str, SettlementStatus] = {}
        else:
            self._order = carried.order
            self._commands = list(carried.commands)
            pending = [e.seq for e in carried.order.events]
            self._projected_seq = min(pending) - 1 if pending else carried.order.last_seq
            self._projected_executions = carried.projected_executions
            self._allocations_projected = carried.allocations_projected
            self._settlements_projected = dict(carried.settlement_statuses_projected)
        self._coalesced_projection = self._patched(_COALESCED_PROJECTION)
        # Updates waiting for their change to be projected: the projector writes at once.
        self._answers_awaited = 0
        # While compliance judges the order (a quick local step), the projector holds its write
        # for the events that step brings; what the run loop waits for, while it waits.
        self._judging = False
        self._run_loop_waits_for: Callable[[], bool] | None = None
        self._updates_this_run = 0
        self._status_checks = 0  # venue calls that brought no acknowledgement yet: the back-off
        self._projector_stopping = False
        self._notices: list[ApprovalNeededInput | ApprovalDecidedInput] = []
        # A release waiting for compliance's re-check, and the re-check's answer to it.
        self._release: _PhaseRequest[ReleaseInput] | None = None
        # An amend of an order at the venue, waiting for compliance before the replace goes.
        self._amend: _PhaseRequest[AmendInput] | None = None

    def _patched(self, patch_id: str) -> bool:
        """Return whether this run follows the code of patch `patch_id` (see `_BASELINE`)."""
        return (self._on_baseline and patch_id in _BASELINE_PATCHES) or workflow.patched(patch_id)

    # ---- the life of the order ----------------------------------------------------------------

    @workflow.run
    async def run(self, input: OrderWorkflowInput) -> OrderWorkflowResult:
        projector = asyncio.create_task(self._projector())
        notifier = asyncio.create_task(self._notifier())
        phases: dict[OrderStatus, Callable[[], Awaitable[None]]] = {
            OrderStatus.PENDING_COMPLIANCE: self._pre_trade,
            OrderStatus.PENDING_OVERRIDE: self._await_override,
            OrderStatus.PENDING_APPROVAL: self._await_approvals,
            OrderStatus.APPROVED: self._await_release,
            **{status: self._at_venue for status in AT_VENUE},
            OrderStatus.ALLOCATED: self._instruct_settlement,
            OrderStatus.SETTLEMENT_PENDING: self._await_settlement,
            OrderStatus.SETTLEMENT_FAILED: self._await_late_settlement,
        }
        while not self._order.closed:
            if self._amend is not None and self._order.status not in AT_VENUE:
                # A fill or the venue ended the order before the amend was looked at.
                self._amend.refuse(
                    f"the order is {self._order.status.value}: it can no longer be amended",
                    RefusalType.INVALID_STATE,
                )
                self._amend = None
            amendment = self._order.amendment
            if amendment is not None and self._order.status not in _REPLACEABLE:
                # Filled, canceled, ended or being canceled: the new terms no longer apply.
                status = self._order.status
                self._withdraw_amendment(
                    "a cancel was requested"
                    if status is OrderStatus.PENDING_CANCEL
                    else f"the order is {status.value}"
                )
            if self._should_continue_as_new():
                await self._continue_as_new(projector, notifier)
            if self._time_in_force_over():
                self._expire_before_release()
            elif self._order.is_done:
                self._close()
            elif self._order.status in phases:
                await phases[self._order.status]()
            else:  # done at the venue with something executed
                self._allocate()
        await workflow.wait_condition(workflow.all_handlers_finished)
        self._projector_stopping = True
        await asyncio.gather(projector, notifier)
        return OrderWorkflowResult(order_id=self._order.order_id, status=self._order.status)

    async def _pre_trade(self) -> None:
        """Check the order against the fund's rules; decide the approval levels it needs."""
        order = self._order
        if self._patched(_SIGNED_AUTHORITY) and order.creation is None:
            attested = await self._wait_until(
                lambda: (
                    order.creation is not None or order.status is not OrderStatus.PENDING_COMPLIANCE
                ),
                workflow.now() + _CREATION_ATTESTATION_WAIT,
            )
            if not attested:
                if order.status is OrderStatus.PENDING_COMPLIANCE:
                    self._record(
                        OrderEvent.COMPLIANCE_FAILED,
                        reason="no authority signed by the OMS API attests this order's creation",
                    )
                return
            if order.status is not OrderStatus.PENDING_COMPLIANCE:
                return
        if self._patched(_PORTFOLIO_COMPLIANCE):
            await self._pre_trade_on_portfolio()
            return
        try:
            data = await workflow.execute_local_activity_method(
                ComplianceActivities.pre_trade_data,
                PreTradeDataInput(order=order.request),
                **_LOCAL_IO,
            )
        except FailureError as err:
            _not_cancellation(err)
            # Only a non-retryable refusal gets here (an instrument unknown to reference data):
            # without the data the rules cannot pass, so the order fails compliance.
            if order.status is OrderStatus.PENDING_COMPLIANCE:
                self._record(
                    OrderEvent.COMPLIANCE_FAILED, reason=f"compliance could not run: {_cause(err)}"
                )
            return
        if order.status is not OrderStatus.PENDING_COMPLIANCE:
            return  # canceled while compliance ran: its results no longer matter
        snapshot = data.snapshot
        results = evaluate(order.request, snapshot)
        order.instrument = snapshot.instrument
        order.compliance = results
        order.notional = order_notional(order.request, snapshot)
        order.currency = snapshot.instrument.currency
        outcome = worst_outcome(results)
        details: dict[str, JsonValue] = {
            "results": [r.model_dump(mode="json") for r in results],
            "notional": str(order.notional),
            "currency": order.currency,
            "data_taken_at": snapshot.taken_at.isoformat(),
        }
        if outcome is ComplianceOutcome.FAIL:
            failed = "; ".join(r.message for r in results if r.outcome is ComplianceOutcome.FAIL)
            self._record(OrderEvent.COMPLIANCE_FAILED, reason=failed, details=details)
            return
        timeouts = self._input.timeouts
        escalate_after, expire_after = (
            timeouts.approval_escalate_after,
            timeouts.approval_expire_after,
        )
        policy = data.approval_policy
        if policy is not None and self._patched(_FUND_APPROVAL_MATRIX):
            approvals = order.approvals
            approvals.notional = approval_notional(order.request, snapshot)
            approvals.currency = approval_currency(snapshot)
            requirement = required_approvals(
                policy, approvals.notional, snapshot.instrument.asset_class, results
            )
            approvals.required = list(requirement.levels)
            approvals.rules = list(requirement.rules)
            approvals.matrix_version = requirement.matrix_version
            details |= {
                "approval_notional": str(approvals.notional),
                "approval_currency": approvals.currency,
                "approval_rules": _json_list(approvals.rules),
                "approval_matrix": f"{policy.section}@{policy.version}",
            }
            if not timeouts.override_approval_deadlines:
                escalate_after, expire_after = policy.escalate_after, policy.expire_after
        else:
            order.approvals.required = required_levels(data.matrix, order.notional, results)
        details["approvals_required"] = list(order.approvals.required)
        now = workflow.now()
        order.approval_escalate_at = now + escalate_after
        order.approval_expire_at = now + expire_after
        if outcome is ComplianceOutcome.WARN:
            warned = "; ".join(r.message for r in results if r.outcome is ComplianceOutcome.WARN)
            self._record(OrderEvent.COMPLIANCE_WARNED, reason=warned, details=details)
            return
        self._record(OrderEvent.COMPLIANCE_PASSED, details=details)
        self._complete_if_no_levels(actor="policy")

    async def _assess(self, request: OrderRequest | None = None) -> AssessOrderResult | str:
        """Judge the order (as `request`, else as it stands) on its fund after the trade.

        A string says why it could not be judged.
        """
        order = self._order
        self._judging = True
        try:
            return await workflow.execute_local_activity_method(
                AssessmentActivities.assess_order,
                AssessOrderInput(
                    order_id=order.order_id,
                    order=request or order.current_request(),
                    created_by=order.created_by,
                ),
                **_LOCAL_IO,
            )
        except FailureError as err:
            _not_cancellation(err)
            # Only a non-retryable refusal gets here (an unknown instrument or fund, no FX
            # rate): the order cannot be judged, so it cannot pass.
            return f"compliance could not run: {_cause(err)}"
        finally:
            self._judging = False

    def _compliance_details(self, judged: AssessOrderResult) -> dict[str, JsonValue]:
        """Keep what was judged on the order, and return the event's details for the history."""
        order = self._order
        assessment = judged.assessment
        instrument = judged.instrument
        order.compliance = list(assessment.results)
        order.currency = assessment.base_currency
        order.notional = assessment.size_notional
        price = instrument.reference_price or order.terms.limit_price
        if price is not None:
            order.instrument = Instrument(
                symbol=instrument.symbol,
                asset_class=instrument.asset_class,
                currency=instrument.currency,
                reference_price=price,
                lot_size=instrument.lot_size,
            )
        approvals = order.approvals
        approvals.notional = assessment.size_notional
        approvals.currency = assessment.base_currency
        approvals.rules = list(assessment.approval.rules)
        approvals.matrix_version = assessment.approval.matrix_version
        policy = judged.approval_policy
        return {
            "results": [r.model_dump(mode="json") for r in assessment.results],
            "rules_version": assessment.rules_version,
            "exposure": None if assessment.exposure is None else str(assessment.exposure),
            "notional": None if order.notional is None else str(order.notional),
            "currency": order.currency,
            "approval_rules": _json_list(approvals.rules),
            "approval_matrix": f"{policy.section}@{policy.version}",
            "data_taken_at": judged.taken_at.isoformat(),
        }

    async def _pre_trade_on_portfolio(self) -> None:
        order = self._order
        judged = await self._assess()
        if order.status is not OrderStatus.PENDING_COMPLIANCE:
            return  # canceled while compliance ran: its results no longer matter
        if isinstance(judged, str):
            self._record(OrderEvent.COMPLIANCE_FAILED, reason=judged)
            return
        details = self._compliance_details(judged)
        assessment = judged.assessment
        if assessment.outcome is ComplianceOutcome.FAIL:
            self._record(
                OrderEvent.COMPLIANCE_FAILED,
                reason=_worded(assessment.results, ComplianceOutcome.FAIL),
                details=details,
            )
            return
        order.approvals.required = list(assessment.approval.levels)
        details["approvals_required"] = list(order.approvals.required)
        if self._patched(_TIME_IN_FORCE):
            tif = order.request.time_in_force
            if tif is TimeInForce.DAY and judged.session_close is not None:
                # As long from now as the close was from the check: the worker's clock and
                # the order's may differ, and the order's is the one its timers keep.
                order.time_in_force_ends_at = workflow.now() + (
                    judged.session_close - judged.taken_at
                )
            elif tif is TimeInForce.GTD:
                order.time_in_force_ends_at = order.request.expire_at
            if order.time_in_force_ends_at is not None:
                details["time_in_force_ends_at"] = order.time_in_force_ends_at.isoformat()
        self._set_approval_deadlines(
            judged.approval_policy.escalate_after, judged.approval_policy.expire_after
        )
        if assessment.outcome is ComplianceOutcome.WARN:
            self._record(
                OrderEvent.COMPLIANCE_WARNED,
                reason=_worded(assessment.results, ComplianceOutcome.WARN),
                details=details,
            )
            return
        self._record(OrderEvent.COMPLIANCE_PASSED, details=details)
        self._complete_if_no_levels(actor="policy")

    def _time_in_force_over(self) -> bool:
        order = self._order
        return order.status in _WAITING_FOR_RELEASE and self._deadline_passed(
            order.time_in_force_ends_at
        )

    def _expire_before_release(self) -> None:
        """End a day or gtd order whose time came before it was released."""
        order = self._order
        assert order.time_in_force_ends_at is not None
        tif = order.request.time_in_force
        why = "its market closed" if tif is TimeInForce.DAY else "its expire_at passed"
        reason = (
            f"a {tif.value} order not released by {order.time_in_force_ends_at.isoformat()}: {why}"
        )
        self._record(OrderEvent.EXPIRED_BEFORE_RELEASE, reason=reason)
        if self._release is not None:
            self._release.refuse(f"the order expired: {why}", RefusalType.INVALID_STATE)
            self._release = None

    def _set_approval_deadlines(self, escalate_after: timedelta, expire_after: timedelta) -> None:
        order = self._order
        order.approval_escalate_at, order.approval_expire_at = self._approval_deadlines(
            escalate_after, expire_after
        )

    def _approval_deadlines(
        self, escalate_after: timedelta, expire_after: timedelta
    ) -> tuple[datetime, datetime]:
        """Return when an approval asked for now escalates and expires (tests may shorten both)."""
        timeouts = self._input.timeouts
        if timeouts.override_approval_deadlines:
            escalate_after, expire_after = (
                timeouts.approval_escalate_after,
                timeouts.approval_expire_after,
            )
        now = workflow.now()
        return now + escalate_after, now + expire_after

    async def _await_override(self) -> None:
        """Wait for compliance to override the soft breaches; expire when nobody does."""
        order = self._order
        if await self._wait_until(
            lambda: order.status is not OrderStatus.PENDING_OVERRIDE, order.approval_expire_at
        ):
            return
        if self._deadline_passed(order.approval_expire_at):
            self._record(OrderEvent.APPROVAL_EXPIRED, reason="no compliance override in time")

    async def _await_approvals(self) -> None:
        """Wait for every level; escalate once when it waits too long, expire in the end."""
        order = self._order

        pending = order.approvals.current_level
        # Orders from before this patch waited for the whole approval with one set of timers.
        per_level = self._patched(_PER_LEVEL_NOTICES)

        def decided() -> bool:
            # Decided, or this level decided and the next one waits (the phase starts over
            # to notify its approvers).
            return order.status is not OrderStatus.PENDING_APPROVAL or (
                per_level and order.approvals.current_level != pending
            )

        escalated = any(f.kind is FlagKind.APPROVAL_ESCALATED for f in order.flags)
        self._notify_waiting(escalated=escalated)
        if not escalated:
            if await self._wait_until(decided, order.approval_escalate_at):
                return
            if not self._deadline_passed(order.approval_escalate_at):
                return  # woken to continue as new
            level = order.approvals.current_level or ""
            order.raise_flag(
                FlagKind.APPROVAL_ESCALATED,
                f"approval at level {level} is overdue",
                at=workflow.now(),
                ref=level,
            )
            self._notify_waiting(escalated=True, again=True)
        if await self._wait_until(decided, order.approval_expire_at):
            return
        if self._deadline_passed(order.approval_expire_at):
            level = order.approvals.current_level or ""
            self._record(OrderEvent.APPROVAL_EXPIRED, reason=f"approval at level {level} expired")
            self._notify_decided(level, Decision.EXPIRED, None)

    async def _await_release(self) -> None:
        """Wait for a release; run compliance again on it before the order goes to the venue."""
        order = self._order
        await self._wait_until(
            lambda: order.status is not OrderStatus.APPROVED or self._release is not None, None
        )
        request = self._release
        if request is None:
            return
        if order.status is not OrderStatus.APPROVED:  # canceled before the re-check began
            request.refuse(
                f"the order is {order.status.value}, not approved", RefusalType.INVALID_STATE
            )
            self._release = None
            return
        judged = await self._assess()
        self._release = None
        if order.status is not OrderStatus.APPROVED:  # canceled while it ran
            request.refuse(
                f"the order is {order.status.value}, not approved", RefusalType.INVALID_STATE
            )
            return
        if isinstance(judged, str):
            request.refuse(judged, RefusalType.COMPLIANCE_REFUSED)
            return
        assessment = judged.assessment
        switch = _kill_switch_failure(assessment.results)
        if switch is not None:
            # The order stays approved: it may go once the switch is lifted.
            request.refuse(switch.message, RefusalType.KILL_SWITCH_ENGAGED)
            return
        new_warnings = self._warnings_not_overridden(assessment.results)
        if assessment.outcome is ComplianceOutcome.FAIL:
            reason = _worded(assessment.results, ComplianceOutcome.FAIL)
            details = self._compliance_details(judged)
            self._record(
                OrderEvent.COMPLIANCE_FAILED, reason=f"at release: {reason}", details=details
            )
            request.refuse(
                f"compliance refused the release: {reason}", RefusalType.COMPLIANCE_REFUSED
            )
            return
        if new_warnings:
            reason = "; ".join(r.message for r in new_warnings)
            details = self._compliance_details(judged)
            order.override = None
            policy = judged.approval_policy
            self._set_approval_deadlines(policy.escalate_after, policy.expire_after)
            self._record(
                OrderEvent.COMPLIANCE_WARNED, reason=f"at release: {reason}", details=details
            )
            request.refuse(
                f"compliance needs an override before release: {reason}",
                RefusalType.COMPLIANCE_REFUSED,
            )
            return
        self._released(request.input)
        request.accept()

    async def _at_venue(self) -> None:
        """Send queued venue commands one at a time; chase an acknowledgement that does not come."""
        order = self._order
        if self._amend is not None:
            request, self._amend = self._amend, None
            await self._decide_replace(request)
            return
        if self._commands:
            await self._execute(self._commands.pop(0))
            return
        amendment = order.amendment
        amendment_due = None
        if amendment is not None:
            if amendment.approvals.current_level is None:
                await self._replace_approved_amendment(amendment)
                return
            if self._deadline_passed(amendment.expire_at):
                self._expire_amendment(amendment)
                return
            if not amendment.escalated and self._deadline_passed(amendment.escalate_at):
                self._escalate_amendment(amendment)
                return
            amendment_due = amendment.expire_at if amendment.escalated else amendment.escalate_at
        ack_due = order.venue_ack_due_at
        ends = order.time_in_force_ends_at if self._may_expire_at_venue() else None
        deadlines = [d for d in (ack_due, ends, amendment_due) if d is not None]
        if await self._wait_until(
            lambda: (
                bool(self._commands)
                or self._amend is not None
                or order.status not in AT_VENUE
                or order.venue_ack_due_at != ack_due
                or order.amendment is not amendment
                or (
                    amendment is not None
                    and (
                        amendment.approvals.current_level is None
                        or order.status not in _REPLACEABLE
                    )
                )
            ),
            min(deadlines, default=None),
        ):
            return
        if self._may_expire_at_venue() and self._deadline_passed(ends):
            self._expire_at_venue()
            return
        if self._deadline_passed(amendment_due):
            return  # the next turn escalates or expires the amend's approval
        if not self._deadline_passed(order.venue_ack_due_at):
            return
        # Released, sent, and still no word from the venue: tell the trader (once), and ask the
        # venue; the next ask waits longer each time.
        order.venue_ack_due_at = None
        if order.status is OrderStatus.RELEASED and order.venue is not None:
            if not any(f.kind is FlagKind.VENUE_ACK_OVERDUE for f in order.flags):
                order.raise_flag(
                    FlagKind.VENUE_ACK_OVERDUE,
                    f"{order.venue} has not acknowledged the order; asking it for its status",
                    at=workflow.now(),
                    ref=order.terms.cl_ord_id,
                )
            self._commands.append(self._command(VenueCommandKind.STATUS))

    def _may_expire_at_venue(self) -> bool:
        order = self._order
        return (
            order.time_in_force_ends_at is not None
            and not order.expiring
            and order.status in _WORKING_AT_VENUE
        )

    def _expire_at_venue(self) -> None:
        """The order's time in force ended while it works at the venue: cancel it there.

        The venue's confirmation ends it `expired` (see `execution_report`).
        """
        order = self._order
        order.expiring = True
        why = (
            "its market closed"
            if order.request.time_in_force is TimeInForce.DAY
            else ("its expire_at passed")
        )
        command = self._cancel_command()
        self._record(
            OrderEvent.CANCEL_REQUESTED,
            reason=f"a {order.request.time_in_force.value} order: {why}",
            details=self._cancel_details(command),
        )
        self._commands.append(command)

    async def _execute(self, command: VenueCommand) -> None:
        handlers = {
            VenueCommandKind.SUBMIT: self._submit,
            VenueCommandKind.CANCEL: self._cancel_at_venue,
            VenueCommandKind.STATUS: self._ask_venue_status,
            VenueCommandKind.REPLACE: self._replace_at_venue,
            VenueCommandKind.RECONCILE: self._reconcile,
        }
        await handlers[command.kind](command)

    def _venue_order(self, terms: Terms) -> VenueOrder:
        order = self._order
        return VenueOrder(
            order_id=order.order_id,
            cl_ord_id=terms.cl_ord_id,
            fund=order.fund,
            symbol=order.request.symbol,
            side=order.request.side,
            quantity=terms.quantity,
            order_type=order.request.order_type,
            limit_price=terms.limit_price,
            time_in_force=order.request.time_in_force,
            notes=order.request.notes,
        )

    async def _submit(self, command: VenueCommand) -> None:
        order = self._order
        venue_order = self._venue_order(order.terms).model_copy(
            update={"cl_ord_id": command.cl_ord_id}
        )
        try:
            await workflow.execute_local_activity_method(
                VenueActivities.submit_order,
                SubmitOrderInput(venue=command.venue, order=venue_order),
                **_VENUE_CALL,
            )
        except FailureError as err:
            _not_cancellation(err)
            if _refused_by_venue(err):
                self._record_if_allowed(
                    OrderEvent.VENUE_REJECTED,
                    reason=f"venue did not accept the order: {_cause(err)}",
                )
            elif order.status in AT_VENUE:
                # It may have reached the venue: never take a timeout for a rejection.
                order.raise_flag(
                    FlagKind.VENUE_UNCONFIRMED,
                    f"{command.venue} did not confirm the submission ({_cause(err)}); "
                    "asking it for the order's status",
                    at=workflow.now(),
                    ref=command.cl_ord_id,
                )
                await self._back_off_then(self._command(VenueCommandKind.STATUS))
            return
        self._record(
            OrderEvent.SENT_TO_VENUE,
            details={"venue": command.venue, "cl_ord_id": command.cl_ord_id},
        )
        if order.status is OrderStatus.RELEASED:
            order.venue_ack_due_at = workflow.now() + self._input.timeouts.venue_ack_timeout

    async def _cancel_at_venue(self, command: VenueCommand) -> None:
        order = self._order
        if order.status is not OrderStatus.PENDING_CANCEL:
            return  # the venue ended the order before the cancel went out
        try:
            await workflow.execute_local_activity_method(
                VenueActivities.cancel_at_venue,
                CancelAtVenueInput(
                    venue=command.venue,
                    order_id=order.order_id,
                    cl_ord_id=command.cl_ord_id,
                    orig_cl_ord_id=command.orig_cl_ord_id,
                ),
                **_VENUE_CALL,
            )
        except FailureError as err:
            _not_cancellation(err)
            if order.status is not OrderStatus.PENDING_CANCEL:
                return
            if (
                _refused_by_venue(err)
                and order.execution_count == 0
                and not await self._venue_knows(command)
            ):
                # Its submission never got through (an outage): nothing is working there.
                self._record_if_allowed(
                    OrderEvent.VENUE_CANCELED, reason="canceled: the venue never received the order"
                )
            else:
                # The request never reached the venue: the order is still working there.
                order.raise_flag(
                    FlagKind.CANCEL_NOT_SENT,
                    f"cancel could not be sent to {command.venue}: {_cause(err)}",
                    at=workflow.now(),
                    ref=command.cl_ord_id,
                )
                rejected = (
                    OrderEvent.CANCEL_REJECTED_AFTER_FILLS
                    if order.filled_quantity > 0
                    else OrderEvent.CANCEL_REJECTED
                )
                self._record(rejected, reason="cancel not sent")
            return
        self._record(
            OrderEvent.CANCEL_SENT_TO_VENUE,
            actor=command.requested_by,
            details={"venue": command.venue, **self._cancel_details(command)},
        )

    async def _decide_replace(self, request: _PhaseRequest[AmendInput]) -> None:
        """Send an amend of a working order to the venue, once compliance agrees to its terms.

        New terms that raise the notional are judged again first; an amend that fails or warns
        on compliance, or needs an approval level the order did not have, is refused and the
        order works on as it was.
        """
        order = self._order
        if order.status not in _REPLACEABLE:
            request.refuse(
                f"the order is {order.status.value}: it can no longer be amended",
                RefusalType.INVALID_STATE,
            )
            return
        terms = self._amended_terms(request.input)
        judged: AssessOrderResult | None = None
        missing: list[str] = []
        if self._raises_notional(terms):
            judgement = await self._assess(order.current_request(terms))
            if order.status not in _REPLACEABLE:
                request.refuse(
                    f"the order is {order.status.value}: it can no longer be amended",
                    RefusalType.INVALID_STATE,
                )
                return
            refusal = self._amendment_refusal(judgement)
            if refusal is not None:
                request.refuse(*refusal)
                return
            assert not isinstance(judgement, str)
            judged, missing = judgement, self._levels_missing(judgement, with_pending=False)
            if missing and not self._patched(_AMENDMENT_APPROVAL):
                request.refuse(
                    f"the new terms need approval by {', '.join(missing)}, which this order did "
                    "not have: cancel it and create a new order for the larger size",
                    RefusalType.COMPLIANCE_REFUSED,
                )
                return
        input = request.input
        if order.amendment is not None:
            self._withdraw_amendment(f"{input.user} amended the order again")
        attestation = _attested(input.authority, input.policy)
        if judged is not None and missing:
            self._await_amendment_approval(input, terms, judged, missing)
        else:
            self._request_replace(
                terms, requested_by=input.user, reason=input.reason, attestation=attestation
            )
        request.accept()

    def _raises_notional(self, terms: Terms) -> bool:
        """Tell whether `terms` ask the market for more than the order's current terms."""
        current = self._order.terms
        if terms.quantity > current.quantity:
            return True
        if terms.limit_price is None or current.limit_price is None:
            return False
        return terms.quantity * terms.limit_price > current.quantity * current.limit_price

    def _amendment_refusal(self, judged: AssessOrderResult | str) -> tuple[str, RefusalType] | None:
        """Return why compliance's judgement of new terms refuses them, or None if it takes them."""
        if isinstance(judged, str):
            return judged, RefusalType.COMPLIANCE_REFUSED
        results = judged.assessment.results
        switch = _kill_switch_failure(results)
        if switch is not None:
            return switch.message, RefusalType.KILL_SWITCH_ENGAGED
        if judged.assessment.outcome is ComplianceOutcome.FAIL:
            return (
                "compliance refused the new terms: " + _worded(results, ComplianceOutcome.FAIL),
                RefusalType.COMPLIANCE_REFUSED,
            )
        warned = self._warnings_not_overridden(results)
        if warned:
            return (
                "compliance warns on the new terms ("
                + "; ".join(r.message for r in warned)
                + "): an order at the venue cannot be overridden again; cancel it and create "
                "a new order",
                RefusalType.COMPLIANCE_REFUSED,
            )
        return None

    def _levels_missing(self, judged: AssessOrderResult, *, with_pending: bool = True) -> list[str]:
        """Return the approval levels terms need that nobody has approved on this order.

        `with_pending`: the pending amend's approvals count (for its own terms; a new amend's
        terms were approved by nobody).
        """
        order = self._order
        given = [*order.approvals.given]
        if with_pending and order.amendment is not None:
            given += order.amendment.approvals.given
        approved = {g.level for g in given}
        return [level for level in judged.assessment.approval.levels if level not in approved]

    def _await_amendment_approval(
        self, input: AmendInput, terms: Terms, judged: AssessOrderResult, missing: list[str]
    ) -> None:
        """Hold an amend until the levels it adds approve; the order works on as it is meanwhile."""
        order = self._order
        assessment, policy = judged.assessment, judged.approval_policy
        escalate_at, expire_at = self._approval_deadlines(
            policy.escalate_after, policy.expire_after
        )
        attestation = _attested(input.authority, input.policy)
        order.amendment = PendingAmendment(
            terms=terms,
            requested_by=input.user,
            requested_at=workflow.now(),
            reason=input.reason,
            attestation=attestation,
            approvals=ApprovalState(
                required=missing,
                rules=list(assessment.approval.rules),
                matrix_version=assessment.approval.matrix_version,
                notional=assessment.size_notional,
                currency=assessment.base_currency,
            ),
            notional=assessment.size_notional,
            currency=assessment.base_currency,
            escalate_at=escalate_at,
            expire_at=expire_at,
            compliance=list(assessment.results),
        )
        self._record(
            OrderEvent.AMENDMENT_AWAITS_APPROVAL,
            actor=input.user,
            reason=input.reason,
            details={
                **self._terms_details(terms),
                "approvals_required": _json_list(missing),
                "approval_rules": _json_list(list(assessment.approval.rules)),
                "matrix_version": assessment.approval.matrix_version,
                "notional": None
                if assessment.size_notional is None
                else str(assessment.size_notional),
                "currency": assessment.base_currency,
                "expire_at": expire_at.isoformat(),
                "results": [r.model_dump(mode="json") for r in assessment.results],
                **attestation,
            },
        )
        self._notify_waiting(escalated=False)

    async def _replace_approved_amendment(self, amendment: PendingAmendment) -> None:
        """Every level approved the amend: judge its terms once more, then ask for the replace."""
        order = self._order
        judged = await self._assess(order.current_request(amendment.terms))
        if order.amendment is not amendment or order.status not in _REPLACEABLE:
            return  # withdrawn while compliance ran (the loop says why)
        refusal = self._amendment_refusal(judged)
        if refusal is None and not isinstance(judged, str):
            missing = self._levels_missing(judged)
            if missing:
                refusal = (
                    f"the new terms now need approval by {', '.join(missing)} as well",
                    RefusalType.COMPLIANCE_REFUSED,
                )
        if refusal is not None:
            self._withdraw_amendment(f"approved, but {refusal[0]}")
            return
        # The levels now approved are the order's: a later amend does not ask them again.
        order.approvals.required += amendment.approvals.required
        order.approvals.given += amendment.approvals.given
        order.amendment = None
        self._request_replace(
            amendment.terms,
            requested_by=amendment.requested_by,
            reason=amendment.reason,
            attestation=amendment.attestation,
        )

    def _expire_amendment(self, amendment: PendingAmendment) -> None:
        level = amendment.approvals.current_level or ""
        key = self._notice_key(level)
        self._order.amendment = None
        self._record(
            OrderEvent.AMENDMENT_EXPIRED,
            reason=f"approval of the amend at level {level} expired; the order works on as it was",
        )
        self._notify_decided(level, Decision.EXPIRED, None, key=key)

    def _escalate_amendment(self, amendment: PendingAmendment) -> None:
        level = amendment.approvals.current_level or ""
        amendment.escalated = True
        self._order.raise_flag(
            FlagKind.APPROVAL_ESCALATED,
            f"approval of the amend at level {level} is overdue",
            at=workflow.now(),
            ref=level,
        )
        self._notify_waiting(escalated=True, again=True)

    def _withdraw_amendment(self, reason: str) -> None:
        """Drop the amend waiting for approval; the order keeps its current terms."""
        order = self._order
        amendment = order.amendment
        assert amendment is not None
        level = amendment.approvals.current_level
        key = self._notice_key(level or "")
        order.amendment = None
        self._record(
            OrderEvent.AMENDMENT_WITHDRAWN,
            reason=reason,
            details={
                "quantity": str(amendment.terms.quantity),
                "limit_price": None
                if amendment.terms.limit_price is None
                else str(amendment.terms.limit_price),
            },
        )
        if level is not None:
            self._notify_decided(level, Decision.WITHDRAWN, None, reason, key=key)

    def _warnings_not_overridden(self, results: list[ComplianceResult]) -> list[ComplianceResult]:
        """Return the rules that warn now and that the order's override did not accept."""
        override = self._order.override
        accepted = set(override.rules) if override is not None else set()
        return [
            r for r in results if r.outcome is ComplianceOutcome.WARN and r.rule not in accepted
        ]

    def _request_replace(
        self,
        terms: Terms,
        *,
        requested_by: str,
        reason: str,
        attestation: dict[str, JsonValue],
    ) -> None:
        """Ask the venue to replace the order with `terms`, under a new ClOrdID."""
        order = self._order
        assert order.venue is not None
        order.cl_ord_ids_issued += 1
        current = order.terms
        new_cl_ord_id = f"{order.order_id}-R{order.cl_ord_ids_issued}"
        order.replacing = terms.model_copy(
            update={
                "cl_ord_id": new_cl_ord_id,
                "previous_cl_ord_ids": [*current.previous_cl_ord_ids, current.cl_ord_id],
            }
        )
        self._record(
            OrderEvent.REPLACE_REQUESTED,
            actor=requested_by,
            reason=reason,
            details={
                **self._terms_details(terms),
                "cl_ord_id": new_cl_ord_id,
                "orig_cl_ord_id": current.cl_ord_id,
                **attestation,
            },
        )
        self._commands.append(
            VenueCommand(
                kind=VenueCommandKind.REPLACE,
                venue=order.venue,
                cl_ord_id=new_cl_ord_id,
                orig_cl_ord_id=current.cl_ord_id,
                requested_by=requested_by,
            )
        )

    async def _replace_at_venue(self, command: VenueCommand) -> None:
        order = self._order
        replacing = order.replacing
        if replacing is None or replacing.cl_ord_id != command.cl_ord_id:
            return  # the venue answered (or the order ended) before the request went out
        try:
            await workflow.execute_local_activity_method(
                VenueActivities.replace_at_venue,
                ReplaceAtVenueInput(
                    venue=command.venue,
                    order=self._venue_order(replacing),
                    orig_cl_ord_id=command.orig_cl_ord_id,
                ),
                **_VENUE_CALL,
            )
        except FailureError as err:
            _not_cancellation(err)
            if order.replacing is None or order.status not in AT_VENUE:
                return
            if _refused_by_venue(err):
                reason = f"the venue refused the replace: {_cause(err)}"
            else:
                reason = f"the replace could not be sent to {command.venue}: {_cause(err)}"
                order.raise_flag(
                    FlagKind.REPLACE_NOT_SENT, reason, at=workflow.now(), ref=command.cl_ord_id
                )
            order.replacing = None
            self._record(
                OrderEvent.REPLACE_REJECTED_AFTER_FILLS
                if order.filled_quantity > 0
                else OrderEvent.REPLACE_REJECTED,
                reason=reason,
            )
            return
        self._record(
            OrderEvent.REPLACE_SENT_TO_VENUE,
            actor=command.requested_by,
            details={
                "venue": command.venue,
                "cl_ord_id": command.cl_ord_id,
                "orig_cl_ord_id": command.orig_cl_ord_id,
            },
        )

    async def _venue_status(self, command: VenueCommand) -> VenueOrderStatus | None:
        """Ask the venue what it knows of the order and record the answer; None: no answer."""
        try:
            status: VenueOrderStatus = await workflow.execute_local_activity_method(
                VenueActivities.venue_order_status,
                # A cancel or replace request names the order by its OrigClOrdID.
                VenueOrderStatusInput(
                    venue=command.venue, cl_ord_id=command.orig_cl_ord_id or command.cl_ord_id
                ),
                **_VENUE_CALL,
            )
        except FailureError as err:
            _not_cancellation(err)
            return None
        self._record(OrderEvent.VENUE_STATUS_CHECKED, details=status.model_dump(mode="json"))
        return status

    async def _venue_knows(self, command: VenueCommand) -> bool:
        """Tell whether the venue has the order; an unanswered question counts as yes."""
        status = await self._venue_status(command)
        return status is None or status.known

    async def _ask_venue_status(self, command: VenueCommand) -> None:
        order = self._order
        status = await self._venue_status(command)
        if status is None:
            if order.status in AT_VENUE:
                await self._back_off_then(command)
            return
        if order.status is not OrderStatus.RELEASED:
            return
        if status.known:
            # It has the order: wait for its acknowledgement again, a little longer each time.
            self._status_checks += 1
            order.venue_ack_due_at = workflow.now() + min(
                self._input.timeouts.venue_ack_timeout * 2 ** min(self._status_checks, 10),
                _STATUS_CHECK_BACKOFF_MAX,
            )
        else:
            # The venue never got it: send it again (the venue is idempotent by ClOrdID).
            self._commands.insert(0, self._command(VenueCommandKind.SUBMIT))

    async def _reconcile(self, command: VenueCommand) -> None:
        """Compare the order with what the venue says of it; flag each difference, change nothing.

        The venue's missing reports (or the OMS's) are for the trader to chase: a difference is
        never settled by guessing which side is right.
        """
        order = self._order
        if order.status not in AT_VENUE:
            return  # the venue's reports ended it meanwhile
        status = await self._venue_status(
            command.model_copy(update={"cl_ord_id": order.terms.cl_ord_id})
        )
        if order.status not in AT_VENUE:
            return
        differences: list[str] = []
        if status is None:
            differences.append(f"{command.venue} did not answer the reconciliation")
        elif not status.known:
            differences.append(f"{command.venue} does not know {order.terms.cl_ord_id}")
        else:
            if status.filled_quantity != order.filled_quantity:
                differences.append(
                    f"{command.venue} has {tidy(status.filled_quantity)} filled, the order "
                    f"{tidy(order.filled_quantity)}"
                )
            if status.state in _VENUE_DONE_STATES:
                differences.append(
                    f"{command.venue} says the order is {status.state}; it is "
                    f"{order.status.value} here"
                )
        for difference in differences:
            order.raise_flag(
                FlagKind.VENUE_MISMATCH, difference, at=workflow.now(), ref=order.terms.cl_ord_id
            )

    async def _back_off_then(self, command: VenueCommand) -> None:
        """Wait a growing while (less if the venue speaks or a command comes), then queue `command`."""
        self._status_checks += 1
        delay = min(
            timedelta(seconds=5 * 2 ** min(self._status_checks - 1, 10)),
            _STATUS_CHECK_BACKOFF_MAX,
        )
        order = self._order
        await self._wait_until(
            lambda: order.status is not OrderStatus.RELEASED or bool(self._commands),
            workflow.now() + delay,
        )
        if order.status is OrderStatus.RELEASED:
            self._commands.append(command)

    def _allocate(self) -> None:
        """Split what was executed across the order's accounts (the projector books it)."""
        order = self._order
        assert order.instrument is not None
        assert order.average_price is not None
        order.allocations = allocate(
            list(order.current_request().allocations),
            order.filled_quantity,
            order.average_price,
            order.instrument.lot_size,
        )
        self._record(
            OrderEvent.ALLOCATED,
            details={"allocations": [a.model_dump(mode="json") for a in order.allocations]},
        )

    async def _instruct_settlement(self) -> None:
        """Instruct the back office, per allocation, on its own task queue."""
        order = self._order
        instrument = order.instrument
        assert instrument is not None
        # The trade date is the day the order's last fill reached us: a venue's clock is bounded
        # by the report validator, but the OMS's own is the one every order agrees on.
        assert order.last_fill_at is not None
        trade_day = order.last_fill_at.date()
        settle_on = settlement_date(trade_day, instrument.asset_class)
        if not order.settlements:
            order.settlements = [
                SettlementInstruction(
                    settlement_id=settlement_id_for(order.order_id, a.account),
                    order_id=order.order_id,
                    fund=order.fund,
                    account=a.account,
                    symbol=order.request.symbol,
                    side=order.request.side,
                    quantity=a.quantity,
                    price=a.price,
                    gross_amount=(a.quantity * a.price).quantize(Decimal("0.01")),
                    currency=instrument.currency,
                    trade_date=trade_day,
                    settlement_date=settle_on,
                )
                for a in order.allocations
            ]
        await workflow.execute_activity_method(
            BackOfficeActivities.instruct_settlements,
            InstructSettlementsInput(instructions=order.settlements),
            task_queue=self._input.back_office_task_queue,
            **_BACK_OFFICE,
        )
        self._record(
            OrderEvent.SETTLEMENT_INSTRUCTED,
            details={
                "settlement_ids": [s.settlement_id for s in order.settlements],
                "trade_date": trade_day.isoformat(),
                "settlement_date": settle_on.isoformat(),
            },
        )

    async def _await_settlement(self) -> None:
        """Wait for the back office until the end of the settlement date (UTC)."""
        order = self._order
        settle_on = max(s.settlement_date for s in order.settlements)
        deadline = datetime.combine(settle_on + timedelta(days=1), time(0), tzinfo=UTC)
        if await self._wait_until(lambda: self._all_confirmed() or self._any_failed(), deadline):
            if self._all_confirmed():
                self._record(OrderEvent.SETTLED)
                return
        elif not self._deadline_passed(deadline):
            return  # woken to continue as new
        else:
            order.raise_flag(
                FlagKind.SETTLEMENT_NOT_CONFIRMED,
                f"settlement not confirmed by {settle_on.isoformat()}",
                at=workflow.now(),
            )
        order.settlement_grace_until = workflow.now() + self._input.timeouts.late_settlement_grace
        self._record(OrderEvent.SETTLEMENT_FAILED, reason="settlement not confirmed")

    async def _await_late_settlement(self) -> None:
        """A failed settlement still settles if every instruction is confirmed within the grace."""
        grace = self._order.settlement_grace_until
        if await self._wait_until(self._all_confirmed, grace):
            self._record(OrderEvent.SETTLED, reason="confirmed late")
        elif self._deadline_passed(grace):
            self._close(reason="settlement not confirmed within the grace period")

    def _all_confirmed(self) -> bool:
        return all(s.status is SettlementStatus.CONFIRMED for s in self._order.settlements)

    def _any_failed(self) -> bool:
        return any(s.status is SettlementStatus.FAILED for s in self._order.settlements)

    def _close(self, reason: str = "") -> None:
        self._record(OrderEvent.ORDER_CLOSED, reason=reason, details={"status": self._order.status})
        self._order.closed = True

    # ---- updates: human actions ---------------------------------------------------------------

    @workflow.update
    async def await_compliance(self, input: AwaitComplianceInput) -> Order:
        """Take the creator's attested word; return the order once pre-trade compliance decided."""
        order = self._order
        if input.authority is not None:
            authority = self._use(input.authority)
            if order.creation is None and authority.user == order.created_by:
                order.creation = authority
        await workflow.wait_condition(
            lambda: self._order.status is not OrderStatus.PENDING_COMPLIANCE
        )
        return await self._answer()

    @await_compliance.validator
    def _validate_await_compliance(self, input: AwaitComplianceInput) -> None:
        order = self._order
        # Whoever attested the creation first must be its creator; a repeated create (the same
        # client order id again) only needs its own caller's attested word.
        user = order.created_by if order.creation is None else None
        self._verified(input.authority, Action.CREATE, user)

    @workflow.update
    async def approve(self, input: ApproveInput) -> Order:
        """Approve the level pending: the order's, or that of an amend waiting at the venue."""
        order = self._order
        amendment = order.amendment
        approvals = self._approvals_pending()
        level = approvals.current_level
        assert level is not None
        signed = self._statement_for(level, input.authorities)
        if signed is None:  # an order approved before approvals were signed
            grant = next(g for g in input.grants if g.permission == level)
            given = ApprovalGiven(
                level=level,
                user=input.user,
                at=workflow.now(),
                comment=input.comment,
                policy=grant.policy,
            )
            details = given.model_dump(mode="json")
        else:
            authority = self._use(signed)
            given = ApprovalGiven(
                level=level,
                user=input.user,
                at=workflow.now(),
                comment=input.comment,
                policy=authority.policy,
                roles=authority.roles,
                policy_version=authority.policy_version,
            )
            details = {**given.model_dump(mode="json"), "authority": signed.model_dump()}
        key = self._notice_key(level)
        approvals.given.append(given)
        if amendment is not None:
            event = (
                OrderEvent.AMENDMENT_APPROVED
                if approvals.current_level is None
                else OrderEvent.AMENDMENT_APPROVAL_GIVEN
            )
        elif approvals.current_level is None:
            event = OrderEvent.APPROVALS_COMPLETE
        else:
            event = OrderEvent.APPROVAL_GIVEN
        self._record(event, actor=input.user, details=details)
        self._notify_decided(level, Decision.APPROVED, input.user, input.comment, key=key)
        if amendment is not None:
            self._notify_waiting(escalated=amendment.escalated)  # the amend's next level
        return await self._answer()

    @approve.validator
    def _validate_approve(self, input: ApproveInput) -> None:
        self._require_level_pending("approve")
        self._require_decider(input.user, input.authorities, Action.APPROVE, "approve it")
        order = self._order
        given = [*order.approvals.given]
        if order.amendment is not None:
            given += order.amendment.approvals.given
        if any(g.user == input.user for g in given):
            raise _refuse(
                f"{input.user} already approved a level of this order; one person decides "
                "at most one level",
                RefusalType.FORBIDDEN,
            )

    @workflow.update
    async def reject(self, input: RejectInput) -> Order:
        """Reject the level pending: the order ends approval_rejected, or the amend is dropped."""
        order = self._order
        amendment = order.amendment
        level = self._approvals_pending().current_level
        details: dict[str, JsonValue] = {"level": level}
        signed = self._statement_for(level, input.authorities)
        if signed is None:  # an order rejected before decisions were signed
            details["policy"] = self._policy_for(level, input.grants)
        else:
            authority = self._use(signed)
            details |= {
                "policy": _json_list(authority.policy),
                "roles": _json_list(authority.roles),
                "policy_version": authority.policy_version,
                "authority": signed.model_dump(),
            }
        key = self._notice_key(level or "")
        if amendment is not None:
            # The order works on at the venue on its current terms.
            order.amendment = None
            event = OrderEvent.AMENDMENT_REJECTED
        else:
            event = OrderEvent.APPROVAL_REJECTED
        self._record(event, reason=input.reason, actor=input.user, details=details)
        if level is not None:
            self._notify_decided(level, Decision.REJECTED, input.user, input.reason, key=key)
        return await self._answer()

    @reject.validator
    def _validate_reject(self, input: RejectInput) -> None:
        self._require_level_pending("reject")
        if not input.reason.strip():
            raise _refuse("a rejection needs a reason", RefusalType.INVALID_INPUT, "reason")
        self._require_decider(
            input.user, input.authorities, Action.REJECT, "reject it (cancel it instead)"
        )

    @workflow.update
    async def override(self, input: OverrideInput) -> Order:
        """Accept the order's soft compliance breaches, with a written justification."""
        order = self._order
        authority = self._use(input.authority) if input.authority is not None else None
        order.override = Override(
            user=input.user,
            justification=input.justification,
            at=workflow.now(),
            policy=authority.policy if authority is not None else input.policy,
            rules=list(input.rules),
        )
        self._record(
            OrderEvent.OVERRIDDEN,
            actor=input.user,
            reason=input.justification,
            details={
                **order.override.model_dump(mode="json"),
                **_attested(input.authority, input.policy),
            },
        )
        self._complete_if_no_levels(actor=input.user)
        return await self._answer()

    @override.validator
    def _validate_override(self, input: OverrideInput) -> None:
        self._require_status(OrderStatus.PENDING_OVERRIDE, "override")
        if not input.justification.strip():
            raise _refuse(
                "an override needs a justification", RefusalType.INVALID_INPUT, "justification"
            )
        if input.user == self._order.created_by:
            raise _refuse("the order's creator cannot override its breaches", RefusalType.FORBIDDEN)
        self._verified(input.authority, Action.OVERRIDE, input.user)
        warned = [r.rule for r in self._order.compliance if r.outcome is ComplianceOutcome.WARN]
        missing = [rule for rule in warned if rule not in input.rules]
        if missing:
            raise _refuse(
                "an override must name every warned rule it accepts; not named: "
                + ", ".join(missing),
                RefusalType.INVALID_INPUT,
                "rules",
            )
        unknown = [rule for rule in input.rules if rule not in warned]
        if unknown:
            raise _refuse(
                "these rules did not warn on this order: " + ", ".join(unknown),
                RefusalType.INVALID_INPUT,
                "rules",
            )

    @workflow.update
    async def release(self, input: ReleaseInput) -> Order:
        """Release the approved order to a venue once compliance, run again, still agrees.

        A new hard breach rejects the order, a new soft one returns it for an override; either
        way the release is refused with compliance's reasons.
        """
        if input.authority is not None:
            self._use(input.authority)
        if not self._patched(_PORTFOLIO_COMPLIANCE):  # released before the re-check existed
            self._released(input)
            return await self._answer()
        request = _PhaseRequest(input)
        self._release = request
        await workflow.wait_condition(lambda: request.decided)
        if request.refusal is not None:
            await self._answer()  # the read model shows what the re-check changed
            raise _refuse(request.refusal, request.refusal_type)
        return await self._answer()

    def _released(self, input: ReleaseInput) -> None:
        order = self._order
        order.venue = input.venue
        self._record(
            OrderEvent.RELEASED,
            actor=input.user,
            details={
                "venue": input.venue,
                "cl_ord_id": order.terms.cl_ord_id,
                **_attested(input.authority, input.policy),
            },
        )
        self._commands.append(self._command(VenueCommandKind.SUBMIT, input.user))

    @release.validator
    def _validate_release(self, input: ReleaseInput) -> None:
        self._require_status(OrderStatus.APPROVED, "release")
        if not input.venue.strip():
            raise _refuse("a release needs a venue", RefusalType.INVALID_INPUT, "venue")
        if input.user == self._order.created_by:
            raise _refuse("the order's creator cannot release it", RefusalType.FORBIDDEN)
        if self._release is not None:
            raise _refuse(
                "a release of this order is being checked by compliance", RefusalType.INVALID_STATE
            )
        self._verified(input.authority, Action.RELEASE, input.user, subject=input.venue)

    @workflow.update
    async def cancel(self, input: CancelInput) -> Order:
        """Cancel the order: at once before release, through pending_cancel after."""
        order = self._order
        if input.authority is not None:
            self._use(input.authority)
        details = _attested(input.authority, input.policy)
        if order.status in PRE_RELEASE:
            self._record(
                OrderEvent.CANCELED_BEFORE_RELEASE,
                reason=input.reason,
                actor=input.user,
                details=details,
            )
        else:
            command = self._cancel_command(input.user)
            self._record(
                OrderEvent.CANCEL_REQUESTED,
                reason=input.reason,
                actor=input.user,
                details={**self._cancel_details(command), **details},
            )
            self._commands.append(command)
        return await self._answer()

    @cancel.validator
    def _validate_cancel(self, input: CancelInput) -> None:
        status = self._order.status
        if self._order.closed or not (
            allows(status, OrderEvent.CANCELED_BEFORE_RELEASE)
            or allows(status, OrderEvent.CANCEL_REQUESTED)
        ):
            raise _refuse(
                f"an order that is {status.value} cannot be canceled", RefusalType.INVALID_STATE
            )
        self._verified(input.authority, Action.CANCEL, input.user)

    @workflow.update
    async def amend(self, input: AmendInput) -> Order:
        """Give the order new terms: checked again before release, replaced at the venue after."""
        order = self._order
        if input.authority is not None:
            self._use(input.authority)
        terms = self._amended_terms(input)
        if order.status in _AMENDABLE_BEFORE_RELEASE:
            # In place: compliance judges the new terms, and the approvals they need start over.
            details = {**self._terms_details(terms), **_attested(input.authority, input.policy)}
            order.terms = terms
            order.leaves_quantity = terms.quantity
            order.override = None
            order.approvals = ApprovalState()
            order.approvals_notified = []
            self._record(
                OrderEvent.AMENDED,
                actor=input.user,
                reason=input.reason,
                details=details,
            )
            await workflow.wait_condition(
                lambda: order.status is not OrderStatus.PENDING_COMPLIANCE
            )
            return await self._answer()
        request = _PhaseRequest(input)
        self._amend = request
        await workflow.wait_condition(lambda: request.decided)
        if request.refusal is not None:
            raise _refuse(request.refusal, request.refusal_type)
        return await self._answer()

    @amend.validator
    def _validate_amend(self, input: AmendInput) -> None:
        order = self._order
        status = order.status
        if order.closed or not (status in _AMENDABLE_BEFORE_RELEASE or status in _REPLACEABLE):
            why = {
                OrderStatus.PENDING_COMPLIANCE: "; compliance is still judging it",
                OrderStatus.RELEASED: "; the venue has not acknowledged it yet",
                OrderStatus.PENDING_CANCEL: "; a cancel is pending at the venue",
                OrderStatus.PENDING_REPLACE: "; an amend is pending at the venue",
            }.get(status, "")
            raise _refuse(
                f"an order that is {status.value} cannot be amended{why}",
                RefusalType.INVALID_STATE,
            )
        if self._release is not None or self._amend is not None:
            raise _refuse(
                "another action on this order is being checked by compliance; try again",
                RefusalType.INVALID_STATE,
            )
        if input.quantity is None and input.limit_price is None:
            raise _refuse("an amend needs a quantity or a limit_price", RefusalType.INVALID_INPUT)
        if input.limit_price is not None and order.terms.limit_price is None:
            raise _refuse(
                "a market order has no limit_price to amend",
                RefusalType.INVALID_INPUT,
                "limit_price",
            )
        if input.quantity is not None and input.quantity <= 0:
            raise _refuse("quantity must be positive", RefusalType.INVALID_INPUT, "quantity")
        if input.limit_price is not None and input.limit_price <= 0:
            raise _refuse("limit_price must be positive", RefusalType.INVALID_INPUT, "limit_price")
        lot_size = order.instrument.lot_size if order.instrument is not None else None
        if input.quantity is not None and lot_size is not None and input.quantity % lot_size:
            raise _refuse(
                f"quantity must be a multiple of the lot size {lot_size}",
                RefusalType.INVALID_INPUT,
                "quantity",
            )
        terms = self._amended_terms(input)
        if (terms.quantity, terms.limit_price) == (order.terms.quantity, order.terms.limit_price):
            raise _refuse(
                "the amend changes nothing: those are the order's terms already",
                RefusalType.INVALID_INPUT,
            )
        authority = self._verified(
            input.authority,
            Action.AMEND,
            input.user,
            subject=amendment_subject(input.quantity, input.limit_price),
        )
        if tuple(authority.permission) == AMEND_AT_VENUE and status not in _REPLACEABLE:
            raise _refuse(
                f"{input.user} may amend only orders working at a venue; this one is "
                f"{status.value}",
                RefusalType.FORBIDDEN,
            )

    def _amended_terms(self, input: AmendInput) -> Terms:
        """Return the order's terms as `input` changes them.

        A quantity below what is filled is taken as the filled quantity: the order is then
        filled. The accounts' shares follow the new quantity, pro-rata to the request's.
        """
        order = self._order
        current = order.terms
        quantity = max(
            current.quantity if input.quantity is None else input.quantity, order.filled_quantity
        )
        limit_price = current.limit_price if input.limit_price is None else input.limit_price
        lot_size = order.instrument.lot_size if order.instrument is not None else Decimal(1)
        allocations = (
            None
            if quantity == order.request.quantity
            else rescaled(list(order.request.allocations), quantity, lot_size)
        )
        return current.model_copy(
            update={"quantity": quantity, "limit_price": limit_price, "allocations": allocations}
        )

    def _terms_details(self, terms: Terms) -> dict[str, JsonValue]:
        current = self._order.terms
        return {
            "quantity": str(terms.quantity),
            "limit_price": None if terms.limit_price is None else str(terms.limit_price),
            "allocations": None
            if terms.allocations is None
            else [a.model_dump(mode="json") for a in terms.allocations],
            "previous": {
                "quantity": str(current.quantity),
                "limit_price": None if current.limit_price is None else str(current.limit_price),
            },
        }

    # ---- updates: the venue -------------------------------------------------------------------

    @workflow.update
    def execution_report(self, input: ExecutionReportInput) -> ExecutionReportResult:
        """Apply a venue's execution report and answer with the order's one decision about it."""
        self._updates_this_run += 1
        order = self._order
        report = input.report
        guards = None
        if self._patched(_EXECUTION_GUARDS):
            instrument = order.instrument
            guards = ReportGuards(
                side=order.request.side,
                limit_price=order.terms.limit_price,
                lot_size=instrument.lot_size if instrument is not None else None,
                reference_price=instrument.reference_price if instrument is not None else None,
            )
        # Two sends of one report can both pass the validator before either is handled: the
        # first decision stands, and a refusal is kept, and flagged, once.
        if guards is not None and report.exec_id in order.refused_reports:
            outcome = ReportOutcome(
                ReportVerdict.REFUSED, reason=order.refused_reports[report.exec_id], field="exec_id"
            )
            refused_before = True
        else:
            refused_before = False
            outcome = apply_report(
                status=order.status,
                quantity=order.terms.quantity,
                filled_quantity=order.filled_quantity,
                average_price=order.average_price,
                seen_exec_ids=set(order.exec_ids_seen),
                report=report,
                reported_by=input.reported_by,
                received_at=workflow.now(),
                guards=guards,
                replacing=None if order.replacing is None else order.replacing.quantity,
                replace_semantics=guards is not None and self._patched(_AMEND),
                executions=order.executions
                if report.exec_type in (ExecType.TRADE_CANCEL, ExecType.TRADE_CORRECT)
                and self._patched(_TRADE_CORRECTIONS)
                else None,
            )
        if outcome.verdict is ReportVerdict.REFUSED and not refused_before:
            order.refused_reports[report.exec_id] = outcome.reason
            order.raise_flag(
                FlagKind.EXECUTION_REFUSED,
                f"execution report {report.exec_id} refused: {outcome.reason}",
                at=workflow.now(),
                ref=report.exec_id,
            )
        elif outcome.verdict is ReportVerdict.APPLIED:
            execution = outcome.execution
            assert execution is not None
            order.add_execution(execution)
            details: dict[str, JsonValue] = execution.model_dump(mode="json")
            if outcome.event is OrderEvent.VENUE_CANCELED and order.expiring:
                # The cancel its time in force sent: as FIX reports it, the order expired.
                outcome = replace(outcome, event=OrderEvent.VENUE_EXPIRED)
            if outcome.event in REPLACED_EVENTS and order.replacing is not None:
                terms = order.replacing
                details |= self._terms_details(terms)
                order.terms = terms.model_copy(
                    update={"quantity": max(terms.quantity, order.filled_quantity)}
                )
                order.replacing = None
            elif report.exec_type in _REPLACE_ANSWERS and outcome.event is not None:
                order.replacing = None
            if outcome.event is None:
                self._record(OrderEvent.EXECUTION_APPLIED, actor=input.reported_by, details=details)
            else:
                # Closing reports give the venue's text; a requested cancel keeps its reason.
                reason = (
                    (report.text or order.status_reason) if outcome.event in CLOSED_BY_VENUE else ""
                )
                self._record(outcome.event, actor=input.reported_by, reason=reason, details=details)
            if order.status is not OrderStatus.RELEASED:
                order.venue_ack_due_at = None
            if order.status not in AT_VENUE:
                order.replacing = None
            if outcome.event in _AFTER_ALLOCATION:
                word = "busted" if report.exec_type is ExecType.TRADE_CANCEL else "corrected"
                order.raise_flag(
                    FlagKind.TRADE_CHANGED_AFTER_ALLOCATION,
                    f"{input.reported_by} {word} trade {report.exec_ref_id} after the order was "
                    "allocated: the allocations and settlement instructions stand as booked; "
                    "middle office must amend them",
                    at=workflow.now(),
                    ref=report.exec_id,
                )
        return ExecutionReportResult(
            verdict=outcome.verdict,
            reason=outcome.reason,
            field=outcome.field,
            status=order.status,
            filled_quantity=order.filled_quantity,
            leaves_quantity=order.leaves_quantity,
            average_price=order.average_price,
            version=order.version,
        )

    @execution_report.validator
    def _validate_execution_report(self, input: ExecutionReportInput) -> None:
        order = self._order
        report = input.report
        if report.exec_id in order.exec_ids_seen:
            raise _refuse(f"exec_id {report.exec_id} already applied", RefusalType.DUPLICATE)
        if report.exec_id in order.refused_reports:
            raise _refuse(
                order.refused_reports[report.exec_id], RefusalType.EXECUTION_REFUSED, "exec_id"
            )
        if order.closed or order.status in PRE_RELEASE or order.venue is None:
            raise _refuse(
                f"the order is {order.status.value}, not at a venue", RefusalType.INVALID_STATE
            )
        if input.venues is not None and order.venue not in input.venues:
            # As for an order this venue cannot see (the API answers 404).
            raise ApplicationError(
                f"{input.reported_by} does not report for {order.venue}",
                type=WRONG_VENUE,
                non_retryable=True,
            )
        # After continue-as-new the log may have lost the release; the creation bounds it then.
        released_at = next(
            (e.at for e in reversed(order.events) if e.kind is OrderEvent.RELEASED),
            order.created_at,
        )
        problem = transact_time_problem(
            report.transact_time, now=workflow.now(), released_at=released_at
        )
        if problem is not None:
            raise _refuse(problem, RefusalType.INVALID_INPUT, "transact_time")

    # ---- signals: the venue adapter ------------------------------------------------------------

    @workflow.signal
    def reconcile(self, input: ReconcileInput) -> None:
        """Queue a comparison with the venue's view of the order (once at a time)."""
        order = self._order
        if order.closed or order.status not in AT_VENUE or order.venue != input.venue:
            return
        if any(c.kind is VenueCommandKind.RECONCILE for c in self._commands):
            return
        self._commands.append(self._command(VenueCommandKind.RECONCILE, input.requested_by))

    # ---- signals: the back office -------------------------------------------------------------

    @workflow.signal
    def settlement_update(self, input: SettlementUpdateInput) -> None:
        """Record the back office's confirmation or failure of one instruction."""
        order = self._order
        for index, instruction in enumerate(order.settlements):
            if instruction.settlement_id != input.settlement_id:
                continue
            if instruction.status is SettlementStatus.CONFIRMED or order.closed:
                return  # confirmed is final; repeats change nothing
            order.settlements[index] = instruction.model_copy(
                update={
                    "status": input.status,
                    "status_reason": input.reason,
                    "status_at": input.at,
                }
            )
            self._record(
                OrderEvent.SETTLEMENT_ANSWERED,
                actor=input.user,
                reason=input.reason,
                details={"settlement_id": input.settlement_id, "status": input.status.value},
            )
            return

    # ---- queries ------------------------------------------------------------------------------

    @workflow.query
    def state(self) -> Order:
        """Return the live order."""
        return self._order

    # ---- the projector ------------------------------------------------------------------------

    async def _projector(self) -> None:
        """Write what is not yet projected, one batch at a time, until the order has closed."""
        while True:
            await workflow.wait_condition(self._projection_due)
            if not self._has_unprojected():
                return
            projection = self._pending_projection()
            await workflow.execute_local_activity_method(
                ProjectionActivities.project_events,
                ProjectEventsInput(projection=projection),
                **_LOCAL_IO,
            )
            self._projected_seq = max(self._projected_seq, projection.summary.version)
            self._projected_executions += len(projection.executions)
            self._allocations_projected |= bool(projection.allocations)
            for instruction in projection.settlements:
                self._settlements_projected[instruction.settlement_id] = instruction.status

    async def _notifier(self) -> None:
        """Post queued chat notices one at a time, until the order has closed.

        A notice that cannot be delivered is given up: approvers still have the inbox.
        """
        while True:
            await workflow.wait_condition(lambda: bool(self._notices) or self._projector_stopping)
            if not self._notices:
                return
            notice = self._notices.pop(0)
            try:
                if isinstance(notice, ApprovalNeededInput):
                    await workflow.execute_activity_method(
                        ChatNotifications.notify_approval_needed, notice, **_CHAT
                    )
                else:
                    await workflow.execute_activity_method(
                        ChatNotifications.notify_decided, notice, **_CHAT
                    )
            except FailureError as err:
                _not_cancellation(err)
                workflow.logger.warning("chat notice not delivered: %s", _cause(err))

    def _notify_waiting(self, *, escalated: bool, again: bool = False) -> None:
        """Tell the approvers of the pending level (once, and `again` when it escalates)."""
        order = self._order
        approvals = self._approvals_pending()
        level = approvals.current_level
        if not self._input.notify_approvers or level is None:
            return
        key = self._notice_key(level) + (":escalated" if again else "")
        if key in order.approvals_notified:
            return
        order.approvals_notified.append(key)
        given = approvals.given
        notice = ApprovalNeededInput(
            order_id=order.order_id,
            fund=order.fund,
            symbol=order.request.symbol,
            side=order.request.side,
            quantity=order.terms.quantity,
            notional=order.notional,
            currency=order.currency,
            created_by=order.created_by,
            level=level,
            levels_required=list(approvals.required),
            approved=list(given),
            escalated=escalated,
            waiting_since=given[-1].at if given else order.updated_at,
            compliance=list(order.compliance),
        )
        amendment = order.amendment
        if amendment is not None:
            notice = notice.model_copy(
                update={
                    "quantity": amendment.terms.quantity,
                    "notional": amendment.notional,
                    "currency": amendment.currency,
                    # Everyone who approved a level of the order stays out of this decision.
                    "approved": [*order.approvals.given, *given],
                    "waiting_since": amendment.waiting_since,
                    "amends_quantity": order.terms.quantity,
                    "compliance": list(amendment.compliance),
                    "amend_requested_by": amendment.requested_by,
                }
            )
        self._notices.append(notice)

    def _notice_key(self, level: str) -> str:
        """Return how a level's notice is remembered: an amend's levels apart from the order's."""
        amendment = self._order.amendment
        if amendment is None:
            return level
        return f"amend@{amendment.requested_at.isoformat()}:{level}"

    def _notify_decided(
        self,
        level: str,
        decision: Decision,
        by: str | None,
        reason: str = "",
        *,
        key: str | None = None,
    ) -> None:
        """Follow a notice (remembered as `key`, else `level`) up, so its stale buttons say who
        decided and when."""
        order = self._order
        if not self._input.notify_approvers or (key or level) not in order.approvals_notified:
            return
        self._notices.append(
            ApprovalDecidedInput(
                order_id=order.order_id,
                level=level,
                decision=decision,
                by=by,
                at=workflow.now(),
                reason=reason,
            )
        )

    def _has_unprojected(self) -> bool:
        return self._order.last_seq > self._projected_seq

    def _projection_due(self) -> bool:
        """Return whether the projector should write now (or, with nothing to write, stop)."""
        if not self._has_unprojected():
            return self._projector_stopping
        if not self._coalesced_projection or self._projector_stopping or self._answers_awaited:
            return True
        if self._judging:
            return False  # the judgement's events are a moment away: one write for both
        # A wait that is about to end brings the next step's events: write them together.
        waits_for = self._run_loop_waits_for
        return waits_for is None or not waits_for()

    def _pending_projection(self) -> OrderProjection:
        order = self._order
        new_executions = order.execution_count - self._projected_executions
        return OrderProjection(
            summary=summarise(order, WORKFLOW_TYPE),
            events=[e for e in order.events if e.seq > self._projected_seq],
            executions=order.executions[-new_executions:] if new_executions > 0 else [],
            allocations=order.allocations if not self._allocations_projected else [],
            settlements=[
                s
                for s in order.settlements
                if s.status is not SettlementStatus.INSTRUCTED
                and self._settlements_projected.get(s.settlement_id) is not s.status
            ],
            final=order.without_events() if order.closed else None,
        )

    async def _answer(self) -> Order:
        """Return the order to the caller once the read model shows this change."""
        self._updates_this_run += 1
        seq = self._order.last_seq
        self._answers_awaited += 1
        try:
            await workflow.wait_condition(lambda: self._projected_seq >= seq)
        finally:
            self._answers_awaited -= 1
        return self._order.without_events()

    # ---- continue-as-new ----------------------------------------------------------------------

    def _should_continue_as_new(self) -> bool:
        # A new run waits for every handler to finish, so never while a handler waits on this
        # run's phases: compliance judging the order, a release or an amend being checked.
        if (
            self._release is not None
            or self._amend is not None
            or self._order.status is OrderStatus.PENDING_COMPLIANCE
        ):
            return False
        return (
            workflow.info().is_continue_as_new_suggested()
            or self._updates_this_run >= self._input.updates_before_continue_as_new
        )

    async def _continue_as_new(
        self, projector: asyncio.Task[None], notifier: asyncio.Task[None]
    ) -> None:
        """Finish the handlers, flush the projector and notices, and go on in a new run."""
        await workflow.wait_condition(workflow.all_handlers_finished)
        self._projector_stopping = True
        await asyncio.gather(projector, notifier)
        carried = CarriedOrder(
            order=self._order.carried(self._projected_seq),
            commands=self._commands,
            projected_executions=self._projected_executions,
            allocations_projected=self._allocations_projected,
            settlement_statuses_projected=self._settlements_projected,
        )
        workflow.continue_as_new(self._input.model_copy(update={"carried": carried}))

    # ---- helpers ------------------------------------------------------------------------------

    def _record(
        self,
        event: OrderEvent,
        *,
        reason: str = "",
        actor: str = "system",
        details: dict[str, JsonValue] | None = None,
    ) -> None:
        self._order.record(event, at=workflow.now(), actor=actor, reason=reason, details=details)

    def _record_if_allowed(self, event: OrderEvent, *, reason: str = "") -> None:
        """Record a system event if the status still allows it (a person may have acted first)."""
        if allows(self._order.status, event):
            self._record(event, reason=reason)

    def _complete_if_no_levels(self, actor: str) -> None:
        """Approve by policy an order whose fund's matrix asks no person to approve it."""
        order = self._order
        approvals = order.approvals
        if order.status is OrderStatus.PENDING_APPROVAL and approvals.current_level is None:
            approvals.by_policy = True
            rules = ", ".join(approvals.rules) or "no level required"
            self._record(
                OrderEvent.APPROVALS_COMPLETE,
                actor=actor,
                reason=f"approved by policy ({rules})",
                details={
                    "by_policy": True,
                    "approval_rules": _json_list(approvals.rules),
                    "matrix_version": approvals.matrix_version,
                },
            )

    def _command(self, kind: VenueCommandKind, requested_by: str = "system") -> VenueCommand:
        order = self._order
        assert order.venue is not None
        return VenueCommand(
            kind=kind, venue=order.venue, cl_ord_id=order.terms.cl_ord_id, requested_by=requested_by
        )

    def _approvals_pending(self) -> ApprovalState:
        """Return the approvals being decided: an amend's while one waits, else the order's."""
        amendment = self._order.amendment
        return amendment.approvals if amendment is not None else self._order.approvals

    def _require_level_pending(self, action: str) -> None:
        """Refuse a decision unless a level waits: the order's, or an amend's at the venue."""
        order = self._order
        amendment = order.amendment
        if amendment is None or order.closed:
            self._require_status(OrderStatus.PENDING_APPROVAL, action)
        elif amendment.approvals.current_level is None:
            raise _refuse(
                f"cannot {action}: every level approved the amend; it is on its way to the venue",
                RefusalType.INVALID_STATE,
            )

    def _cancel_command(self, requested_by: str = "system") -> VenueCommand:
        """Return a cancel request: its own ClOrdID, naming the order's (FIX OrigClOrdID)."""
        command = self._command(VenueCommandKind.CANCEL, requested_by)
        if not self._patched(_CANCEL_CL_ORD_ID):
            return command
        order = self._order
        order.cl_ord_ids_issued += 1
        return command.model_copy(
            update={
                "cl_ord_id": f"{order.order_id}-C{order.cl_ord_ids_issued}",
                "orig_cl_ord_id": command.cl_ord_id,
            }
        )

    @staticmethod
    def _cancel_details(command: VenueCommand) -> dict[str, JsonValue]:
        details: dict[str, JsonValue] = {"cl_ord_id": command.cl_ord_id}
        if command.orig_cl_ord_id:
            details["orig_cl_ord_id"] = command.orig_cl_ord_id
        return details

    def _require_status(self, status: OrderStatus, action: str) -> None:
        if self._order.status is not status or self._order.closed:
            raise _refuse(
                f"cannot {action} an order that is {self._order.status.value} (needs {status.value})",
                RefusalType.INVALID_STATE,
            )

    def _require_decider(
        self, user: str, authorities: list[SignedAuthority], action: Action, doing: str
    ) -> None:
        """Refuse the order's creator, and anyone the API did not attest for the level pending.

        Levels go in order: the only level anyone can decide is the one pending.
        """
        level = self._approvals_pending().current_level
        if user == self._order.created_by:
            raise _refuse(f"the order's creator cannot {doing}", RefusalType.FORBIDDEN)
        amendment = self._order.amendment
        if amendment is not None and user == amendment.requested_by:
            raise _refuse(f"whoever asked for the amend cannot {doing}", RefusalType.FORBIDDEN)
        signed = self._statement_for(level, authorities)
        if signed is None:
            raise _refuse(
                f"{user} may not decide level {level} in {self._order.fund}", RefusalType.FORBIDDEN
            )
        self._verified(signed, action, user, level=level)

    def _verified(
        self,
        signed: SignedAuthority | None,
        action: Action,
        user: str | None,
        *,
        level: str | None = None,
        subject: str | None = None,
    ) -> Authority:
        """Return the API's statement for this action, or refuse one forged, stale or reused.

        Runs in validators only: they never run on replay, so the keys trusted may change.
        """
        try:
            authority = verify(signed, now=workflow.now(), keys=TRUSTED_KEYS.keys())
        except AuthorityRefusedError as err:
            raise _refuse(str(err), RefusalType.FORBIDDEN) from err
        mismatch = (
            authority.order_id != self._order.order_id
            or authority.action is not action
            or (user is not None and authority.user != user)
            or authority.level != level
            or (subject is not None and authority.subject != subject)
        )
        if mismatch:
            raise _refuse(
                "the action's authority was issued for another order, action or person",
                RefusalType.FORBIDDEN,
            )
        if authority.nonce in self._order.authority_nonces:
            raise _refuse("the action's authority has been used already", RefusalType.FORBIDDEN)
        return authority

    def _use(self, signed: SignedAuthority) -> Authority:
        """Return the (validated) statement and spend it: it is never accepted again."""
        authority = signed.authority()
        nonces = self._order.authority_nonces
        nonces.append(authority.nonce)
        del nonces[:-_NONCES_KEPT]
        return authority

    @staticmethod
    def _statement_for(
        level: str | None, authorities: list[SignedAuthority]
    ) -> SignedAuthority | None:
        """Return the statement among `authorities` that speaks for `level` (unverified)."""
        for signed in authorities:
            with contextlib.suppress(ValueError):
                if signed.authority().level == level:
                    return signed
        return None

    @staticmethod
    def _policy_for(level: str | None, grants: list[PolicyGrant]) -> list[JsonValue]:
        return next((_json_list(g.policy) for g in grants if g.permission == level), [])

    def _deadline_passed(self, deadline: datetime | None) -> bool:
        return deadline is not None and workflow.now() >= deadline

    async def _wait_until(self, condition: Callable[[], bool], deadline: datetime | None) -> bool:
        """Wait for `condition`, the deadline, or a reason to continue as new; return `condition()`.

        The condition is tested after the wait whatever woke it, so a timer that fires in the
        same workflow task as the Update that made it true still counts the Update.
        """

        def woken() -> bool:
            return condition() or self._should_continue_as_new()

        ends = self._order.time_in_force_ends_at
        if ends is not None and self._order.status in _WAITING_FOR_RELEASE:
            # Whatever an order waits for before release, its time in force may end first.
            deadline = ends if deadline is None else min(deadline, ends)

        self._run_loop_waits_for = woken
        try:
            if deadline is None:
                await workflow.wait_condition(woken)
            else:
                remaining = deadline - workflow.now()
                if remaining > timedelta(0):
                    with contextlib.suppress(TimeoutError):
                        await workflow.wait_condition(woken, timeout=remaining)
        finally:
            self._run_loop_waits_for = None
        return condition()
