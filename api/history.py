"""The audit timeline of v1 orders rendered from their Temporal history, and any v2 order as it stood."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from sqlmodel import Session
from temporalio.api.common.v1 import Payloads
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHistory
from temporalio.converter import DataConverter

from activities.back_office import InstructSettlementInput
from activities.projection import BookAllocationsInput, ProjectOrderInput
from activities.venue import CancelAtVenueInput, SubmitOrderInput
from api.deps import Services, run_db
from api.errors import ApiError, invalid
from api.order_access import OrderRef
from api.schemas import HistoryEntry, OrderPublic
from db import queries
from domain.as_of import BeforeCreationError, LoggedEvent, NoCreationEventError, parse_events
from domain.as_of import order_as_of as fold_order_as_of
from domain.models import ComplianceSnapshot, OrderState, SettlementInstruction, tidy
from workflows.messages import (
    ApproveInput,
    CancelInput,
    ExecutionReportInput,
    OrderWorkflowInput,
    OrderWorkflowResult,
    OverrideInput,
    RejectInput,
    ReleaseInput,
    SettlementUpdateInput,
)

_UPDATES: dict[str, tuple[type[BaseModel], str]] = {
    "approve": (ApproveInput, "approved"),
    "reject": (RejectInput, "rejected"),
    "override": (OverrideInput, "compliance_overridden"),
    "release": (ReleaseInput, "released"),
    "cancel": (CancelInput, "cancel_requested"),
}


class _Timeline:
    """Builds the audit timeline one history event at a time (see `render_history`)."""

    def __init__(self, converter: DataConverter) -> None:
        self.entries: list[HistoryEntry] = []
        self._converter = converter
        self._scheduled: dict[int, str] = {}  # activity scheduled event id -> activity name
        self._last_status: str | None = None
        self._compliance_shown = False

    async def _decode(self, payloads: Payloads, kind: type[BaseModel]) -> Any:
        values = await self._converter.decode(payloads.payloads, [kind])
        return values[0] if values else None

    def _add(
        self, event: HistoryEvent, name: str, actor: str | None, details: dict[str, Any]
    ) -> None:
        at = event.event_time.ToDatetime(tzinfo=UTC)
        self.entries.append(HistoryEntry(at=at, event=name, actor=actor, details=details))

    async def started(self, event: HistoryEvent) -> None:
        started = await self._decode(
            event.workflow_execution_started_event_attributes.input, OrderWorkflowInput
        )
        details = {"order_id": started.order_id, "request": started.request.model_dump(mode="json")}
        self._add(event, "order_created", started.created_by, details)

    async def activity_scheduled(self, event: HistoryEvent) -> None:
        attrs = event.activity_task_scheduled_event_attributes
        name = attrs.activity_type.name
        self._scheduled[event.event_id] = name
        if name == "project_order":
            self._projected(event, (await self._decode(attrs.input, ProjectOrderInput)).state)
        elif name == "submit_order":
            sent = await self._decode(attrs.input, SubmitOrderInput)
            self._add(
                event,
                "sent_to_venue",
                "system",
                {"venue": sent.venue, "order": sent.order.model_dump(mode="json")},
            )
        elif name == "cancel_at_venue":
            cancel = await self._decode(attrs.input, CancelAtVenueInput)
            self._add(event, "cancel_sent_to_venue", "system", {"venue": cancel.venue})
        elif name == "book_allocations":
            booked = await self._decode(attrs.input, BookAllocationsInput)
            allocations = [a.model_dump(mode="json") for a in booked.allocations]
            self._add(event, "allocated", "system", {"allocations": allocations})
        elif name == "instruct_settlement":
            instructed = await self._decode(attrs.input, InstructSettlementInput)
            self._add(
                event,
                "settlement_instructed",
                "system",
                instructed.instruction.model_dump(mode="json"),
            )

    def _projected(self, event: HistoryEvent, state: OrderState) -> None:
        """A projection carries the order as it stood: show its first compliance and each new status."""
        if state.compliance and not self._compliance_shown:
            self._compliance_shown = True
            compliance: dict[str, Any] = {
                "results": [r.model_dump(mode="json") for r in state.compliance],
                "notional": str(state.notional),
                "approvals_required": state.approvals.required,
            }
            self._add(event, "compliance_evaluated", "system", compliance)
        if state.status.value != self._last_status:
            self._last_status = state.status.value
            details = {
                "status": self._last_status,
                "version": state.version,
                "reason": state.status_reason,
            }
            self._add(event, "status_changed", state.status_actor or "system", details)

    async def activity_completed(self, event: HistoryEvent) -> None:
        attrs = event.activity_task_completed_event_attributes
        if self._scheduled.get(attrs.scheduled_event_id) == "compliance_snapshot":
            snapshot = await self._decode(attrs.result, ComplianceSnapshot)
            self._add(event, "compliance_data_captured", "system", snapshot.model_dump(mode="json"))

    async def activity_failed(self, event: HistoryEvent) -> None:
        attrs = event.activity_task_failed_event_attributes
        activity = self._scheduled.get(attrs.scheduled_event_id, "?")
        self._add(
            event,
            "activity_failed",
            "system",
            {"activity": activity, "message": attrs.failure.message},
        )

    async def update_accepted(self, event: HistoryEvent) -> None:
        request = event.workflow_execution_update_accepted_event_attributes.accepted_request
        known = _UPDATES.get(request.input.name)
        if known is not None:
            model, label = known
            update = await self._decode(request.input.args, model)
            self._add(event, label, update.user, update.model_dump(mode="json", exclude={"user"}))

    async def signaled(self, event: HistoryEvent) -> None:
        attrs = event.workflow_execution_signaled_event_attributes
        if attrs.signal_name == "execution_report":
            report = await self._decode(attrs.input, ExecutionReportInput)
            self._add(
                event, "execution_report", report.reported_by, report.report.model_dump(mode="json")
            )
        elif attrs.signal_name == "settlement_update":
            answer = await self._decode(attrs.input, SettlementUpdateInput)
            self._add(
                event,
                "settlement_update",
                answer.user,
                answer.model_dump(mode="json", exclude={"user"}),
            )

    async def timer_fired(self, event: HistoryEvent) -> None:
        self._add(
            event,
            "timer_fired",
            "system",
            {"timer_id": event.timer_fired_event_attributes.timer_id},
        )

    async def completed(self, event: HistoryEvent) -> None:
        result = await self._decode(
            event.workflow_execution_completed_event_attributes.result, OrderWorkflowResult
        )
        self._add(
            event, "order_closed", "system", {"status": result.status.value if result else None}
        )


_RENDERERS: dict[int, Callable[[_Timeline, HistoryEvent], Awaitable[None]]] = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED: _Timeline.started,
    EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED: _Timeline.activity_scheduled,
    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: _Timeline.activity_completed,
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: _Timeline.activity_failed,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED: _Timeline.update_accepted,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED: _Timeline.signaled,
    EventType.EVENT_TYPE_TIMER_FIRED: _Timeline.timer_fired,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED: _Timeline.completed,
}


async def render_history(history: WorkflowHistory, converter: DataConverter) -> list[HistoryEntry]:
    """Turn raw history events into the audit timeline: state changes, decisions, reports, actors."""
    timeline = _Timeline(converter)
    for event in history.events:
        renderer = _RENDERERS.get(event.event_type)
        if renderer is not None:
            await renderer(timeline, event)
    return timeline.entries


# ---- the order as it stood: `?as_of=` -----------------------------------------------------------


def _parse_log(
    order_id: str, session: Session
) -> tuple[list[LoggedEvent], list[SettlementInstruction]]:
    events, settlements = queries.order_log(session, order_id)
    instructions = [
        SettlementInstruction.model_validate(row, from_attributes=True) for row in settlements
    ]
    # PostgreSQL's NUMERIC(38, 12) gives 600.000000000000: show amounts as the order keeps them.
    return parse_events(events), [
        s.model_copy(
            update={
                "quantity": tidy(s.quantity),
                "price": tidy(s.price),
                "gross_amount": tidy(s.gross_amount),
            }
        )
        for s in instructions
    ]


async def order_as_of(services: Services, ref: OrderRef, as_of: datetime) -> OrderPublic:
    """Return the order's public view as it stood at `as_of`, from the read model alone.

    Folded from the order's event log (`domain.as_of`), so it answers after Temporal's retention
    has removed the workflow's history. An instant after the last event gives the order as the
    log last shows it: the current view.
    """
    if as_of.tzinfo is None or as_of.utcoffset() is None:
        raise invalid("as_of", "as_of must carry a timezone offset (e.g. 2026-01-02T15:04:05Z)")
    if ref.is_v1:
        raise invalid(
            "as_of",
            "as_of is not available for orders on the first workflow (v1): they keep no event "
            "log; read their timeline instead",
        )
    events, settlements = await run_db(services, lambda s: _parse_log(ref.order_id, s))
    try:
        order = fold_order_as_of(ref.order_id, events, as_of, settlements)
    except BeforeCreationError as err:
        raise invalid("as_of", f"as_of is before the order's creation: {err}") from err
    except NoCreationEventError as err:
        raise ApiError(
            404, "not_found", "the read model holds no event log for this order"
        ) from err
    return OrderPublic.from_order(order)
