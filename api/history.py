"""The audit timeline: an order's Temporal event history rendered as who did what, when."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from pydantic import BaseModel
from temporalio.api.common.v1 import Payloads
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.converter import DataConverter

from activities.back_office import InstructSettlementInput
from activities.projection import BookAllocationsInput, ProjectOrderInput
from activities.venue import CancelAtVenueInput, SubmitOrderInput
from api.schemas import HistoryEntry
from domain.models import ComplianceSnapshot
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
_SIGNALS: dict[str, tuple[type[BaseModel], str]] = {
    "execution_report": (ExecutionReportInput, "execution_report"),
    "settlement_update": (SettlementUpdateInput, "settlement_update"),
}


async def _decode(converter: DataConverter, payloads: Payloads, kind: type[BaseModel]) -> Any:
    values = await converter.decode(payloads.payloads, [kind])
    return values[0] if values else None


def _json(model: BaseModel, **exclude: Any) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude=set(exclude) or None)


async def render_history(history: WorkflowHistory, converter: DataConverter) -> list[HistoryEntry]:
    """Turn raw history events into the audit timeline: state changes, decisions, reports, actors."""
    entries: list[HistoryEntry] = []
    scheduled: dict[int, str] = {}
    last_status: str | None = None
    compliance_shown = False
    for event in history.events:
        at = event.event_time.ToDatetime(tzinfo=UTC)

        def add(name: str, actor: str | None, details: dict[str, Any], *, _at: Any = at) -> None:
            entries.append(HistoryEntry(at=_at, event=name, actor=actor, details=details))

        kind = event.event_type
        if kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            started = await _decode(
                converter,
                event.workflow_execution_started_event_attributes.input,
                OrderWorkflowInput,
            )
            add(
                "order_created",
                started.created_by,
                {"order_id": started.order_id, "request": _json(started.request)},
            )
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs = event.activity_task_scheduled_event_attributes
            name = attrs.activity_type.name
            scheduled[event.event_id] = name
            if name == "project_order":
                state = (await _decode(converter, attrs.input, ProjectOrderInput)).state
                if state.compliance and not compliance_shown:
                    compliance_shown = True
                    add(
                        "compliance_evaluated",
                        "system",
                        {
                            "results": [r.model_dump(mode="json") for r in state.compliance],
                            "notional": str(state.notional),
                            "approvals_required": state.approvals.required,
                        },
                    )
                if state.status.value != last_status:
                    last_status = state.status.value
                    add(
                        "status_changed",
                        state.status_actor or "system",
                        {
                            "status": last_status,
                            "version": state.version,
                            "reason": state.status_reason,
                        },
                    )
            elif name == "submit_order":
                sent = await _decode(converter, attrs.input, SubmitOrderInput)
                add("sent_to_venue", "system", {"venue": sent.venue, "order": _json(sent.order)})
            elif name == "cancel_at_venue":
                cancel = await _decode(converter, attrs.input, CancelAtVenueInput)
                add("cancel_sent_to_venue", "system", {"venue": cancel.venue})
            elif name == "book_allocations":
                booked = await _decode(converter, attrs.input, BookAllocationsInput)
                add(
                    "allocated",
                    "system",
                    {"allocations": [a.model_dump(mode="json") for a in booked.allocations]},
                )
            elif name == "instruct_settlement":
                instructed = await _decode(converter, attrs.input, InstructSettlementInput)
                add("settlement_instructed", "system", _json(instructed.instruction))
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            attrs_done = event.activity_task_completed_event_attributes
            if scheduled.get(attrs_done.scheduled_event_id) == "compliance_snapshot":
                snapshot = await _decode(converter, attrs_done.result, ComplianceSnapshot)
                add("compliance_data_captured", "system", _json(snapshot))
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED:
            failed = event.activity_task_failed_event_attributes
            add(
                "activity_failed",
                "system",
                {
                    "activity": scheduled.get(failed.scheduled_event_id, "?"),
                    "message": failed.failure.message,
                },
            )
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
            request = event.workflow_execution_update_accepted_event_attributes.accepted_request
            known = _UPDATES.get(request.input.name)
            if known is not None:
                model, label = known
                update = await _decode(converter, request.input.args, model)
                add(label, getattr(update, "user", None), _json(update, user=True))
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            signal = event.workflow_execution_signaled_event_attributes
            known = _SIGNALS.get(signal.signal_name)
            if known is not None:
                model, label = known
                message = await _decode(converter, signal.input, model)
                actor = getattr(message, "reported_by", None) or getattr(message, "user", None)
                details = (
                    _json(message.report)
                    if isinstance(message, ExecutionReportInput)
                    else _json(message, user=True)
                )
                add(label, actor, details)
        elif kind == EventType.EVENT_TYPE_TIMER_FIRED:
            add("timer_fired", "system", {"timer_id": event.timer_fired_event_attributes.timer_id})
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
            result = await _decode(
                converter,
                event.workflow_execution_completed_event_attributes.result,
                OrderWorkflowResult,
            )
            add("order_closed", "system", {"status": result.status.value if result else None})
    return entries
