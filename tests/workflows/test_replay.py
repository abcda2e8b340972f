"""Determinism: recorded order histories replay against today's workflow code.

Histories of both workflow types are kept: `order_*.json` were recorded on the first workflow
(v1, type `OrderWorkflow`), which orders started before v2 still run on; `v2_*.json` on v2.
`OMS_RECORD_HISTORIES=1 make test PYTEST_ARGS=tests/workflows/test_replay.py` (re)records the v2
histories from a fresh run; do that only for a deliberate, patched change.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from domain.models import AllocationRequest, OrderStatus
from tests.workflows.conftest import SHORT_APPROVALS, Desk, OrderHandle, wait_for_status
from tests.workflows.test_order_workflow import warned
from workflows.messages import ApproveInput, OverrideInput, PolicyGrant, ReleaseInput
from workflows.order import _BASELINE, OrderWorkflow
from workflows.order_v1 import OrderWorkflowV1

HISTORIES = Path(__file__).parent / "histories"
RECORDED = sorted(HISTORIES.glob("*.json"))


def replayer() -> Replayer:
    return Replayer(
        workflows=[OrderWorkflow, OrderWorkflowV1], data_converter=pydantic_data_converter
    )


@pytest.mark.parametrize("path", RECORDED, ids=[p.stem for p in RECORDED])
async def test_recorded_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    await replayer().replay_workflow(history)


def test_a_recorded_history_is_checked_in() -> None:
    assert RECORDED, f"no recorded histories in {HISTORIES}"


async def test_fresh_run_replays(desk: Desk) -> None:
    from decimal import Decimal

    handle = await desk.start(
        quantity="1000",
        allocations=[
            AllocationRequest(account="alpha-main", quantity=Decimal(700)),
            AllocationRequest(account="alpha-growth", quantity=Decimal(300)),
        ],
    )
    await wait_for_status(handle, OrderStatus.PENDING_APPROVAL)
    grant = PolicyGrant(permission="desk_head", policy=["desk_head", "*", "approvals", "desk_head"])
    await handle.execute_update(
        OrderWorkflow.approve, ApproveInput(user="dana", comment="ok", grants=[grant])
    )
    await handle.execute_update(OrderWorkflow.release, ReleaseInput(user="tom", venue="simulator"))
    await wait_for_status(handle, OrderStatus.SETTLED)
    await handle.result()
    history = await handle.fetch_history()
    await replayer().replay_workflow(history)
    # One patch marker, the baseline's, stands for every patch the order follows.
    assert patch_markers(history) == [_BASELINE]
    assert writes_without_a_reason_between(history) == 0
    record_if_asked("v2_order_settled_on_baseline", history)


async def test_fresh_override_escalation_and_expiry_replays(desk: Desk) -> None:
    handle = await desk.start(quantity="100000", timeouts=SHORT_APPROVALS)  # a soft breach
    state = await wait_for_status(handle, OrderStatus.PENDING_OVERRIDE)
    await handle.execute_update(
        OrderWorkflow.override,
        OverrideInput(user="cora", justification="pre-agreed rebalance", rules=warned(state)),
    )
    await desk.env.sleep(timedelta(hours=3))  # escalates, then expires
    assert (await handle.result()).status is OrderStatus.APPROVAL_EXPIRED
    history = await handle.fetch_history()
    await replayer().replay_workflow(history)
    record_if_asked("v2_order_overridden_escalated_expired", history)


async def replays(handle: OrderHandle, name: str) -> None:
    """Replay the order's history on today's code, and keep it as `name` when recording."""
    history = await handle.fetch_history()
    await replayer().replay_workflow(history)
    record_if_asked(name, history)


def patch_markers(history: WorkflowHistory) -> list[str]:
    """Return the patch ids that `history` recorded, in order."""
    return [
        json.loads(event.marker_recorded_event_attributes.details["patch-data"].payloads[0].data)[
            "id"
        ]
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
        and event.marker_recorded_event_attributes.marker_name == "core_patch"
    ]


def writes_without_a_reason_between(history: WorkflowHistory) -> int:
    """Count the projections that followed another with no workflow task and no Update's answer
    between them: a step's events went in two writes."""
    count, written = 0, False
    for event in history.events:
        if event.event_type in (
            EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED,
        ):
            written = False
        elif (
            event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
            and event.marker_recorded_event_attributes.marker_name == "core_local_activity"
            and b'"project_events"'
            in event.marker_recorded_event_attributes.details["data"].payloads[0].data
        ):
            count += written
            written = True
    return count


def test_the_projection_of_one_step_is_one_write() -> None:
    """Histories from before the coalesced projection wrote one step's events twice, at times."""
    before = WorkflowHistory.from_json(
        "before", (HISTORIES / "v2_order_settled_two_accounts.json").read_text()
    )
    assert writes_without_a_reason_between(before) == 2


def record_if_asked(name: str, history: WorkflowHistory) -> None:
    if os.environ.get("OMS_RECORD_HISTORIES"):
        (HISTORIES / f"{name}.json").write_text(history.to_json())
