"""The benchmark's references give the histories they claim to: their rates are ceilings only then.

`make bench` divides the order's rate by these workflows' rates, and reads the order shape's as
the ceiling of the order's design; a reference that quietly did less (a timer or a local
activity lost in a refactor) would flatter that ceiling.
"""

from __future__ import annotations

import collections
import json
import uuid

from temporalio.api.enums.v1 import EventType
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from bench.measure import history_counts
from bench.reference import InteractionWorkflow, OrderShapeWorkflow, drive_interaction, order_step
from workflow_runner import workflow_runner


async def _drive_one(env: WorkflowEnvironment, workflow_type: str) -> tuple[dict[str, int], str]:
    queue = f"bench-test-{uuid.uuid4().hex[:8]}"
    workflow_id = f"{queue}-{workflow_type}"
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=[InteractionWorkflow, OrderShapeWorkflow],
        activities=[order_step],
        workflow_runner=workflow_runner(env.client.data_converter),
    ):
        await drive_interaction(env.client, queue, workflow_id, workflow_type)
        return await history_counts(env.client, workflow_id), workflow_id


async def _markers(env: WorkflowEnvironment, workflow_id: str) -> collections.Counter[str]:
    """Count the history's markers: patches, and local activities by type."""
    history = await env.client.get_workflow_handle(workflow_id).fetch_history()
    kinds: collections.Counter[str] = collections.Counter()
    for event in history.events:
        if event.event_type != EventType.EVENT_TYPE_MARKER_RECORDED:
            continue
        marker = event.marker_recorded_event_attributes
        if marker.marker_name == "core_local_activity":
            [data] = marker.details["data"].payloads
            kinds[json.loads(data.data)["activity_type"]] += 1
        else:
            kinds[marker.marker_name] += 1
    return kinds


async def test_the_order_shape_gives_an_orders_commands_each_a_no_op(
    dev_env: WorkflowEnvironment,
) -> None:
    counts, workflow_id = await _drive_one(dev_env, "OrderShapeWorkflow")

    # The order's messages: update-with-start, approve, release, three reports; two Signals.
    assert counts["updates"] == 6
    assert counts["signals"] == 2
    # Its commands: the baseline patch marker; two checks and the submission as local
    # activities, and the projector's: one for each human Update's answer and the closing
    # flush at least, one per change (13) at most; as many between as the messages' timing
    # lets it coalesce to, as an order's (9.3 on average in `make bench`). The back office's
    # activity; the approval, day-end (twice) and acknowledgement timers (creation's and the
    # settlement deadline's are dropped within the task that started them when their messages
    # are already there).
    markers = await _markers(dev_env, workflow_id)
    assert markers["core_patch"] == 1
    assert 3 + 4 <= markers["order_step"] <= 3 + 13
    assert counts["activities"] == 1
    assert counts["timers"] >= 4


async def test_the_same_interaction_reference_takes_the_messages_and_does_nothing(
    dev_env: WorkflowEnvironment,
) -> None:
    counts, _ = await _drive_one(dev_env, "InteractionWorkflow")

    assert counts["updates"] == 6
    assert counts["signals"] == 2
    assert counts["local activities"] == counts["activities"] == counts["timers"] == 0
