"""The benchmark's references give the histories they claim to: their rates are ceilings only then.

`make bench` divides the order's rate by these workflows' rates, and reads the order shape's as
the ceiling of the order's design; a reference that quietly did less (a timer or a local
activity lost in a refactor) would flatter that ceiling.
"""

from __future__ import annotations

import uuid

from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from bench.measure import history_counts
from bench.reference import InteractionWorkflow, OrderShapeWorkflow, drive_interaction, order_step
from workflow_runner import workflow_runner


async def _drive_one(env: WorkflowEnvironment, workflow_type: str) -> dict[str, int]:
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
        return await history_counts(env.client, workflow_id)


async def test_the_order_shape_gives_an_orders_commands_each_a_no_op(
    dev_env: WorkflowEnvironment,
) -> None:
    counts = await _drive_one(dev_env, "OrderShapeWorkflow")

    # The order's messages: update-with-start, approve, release, three reports; two Signals.
    assert counts["updates"] == 6
    assert counts["signals"] == 2
    # Its commands: 2 checks, 1 submission and 9 projections as local activities, plus the
    # baseline patch marker; the back office's activity; the approval, day-end (twice) and
    # acknowledgement timers (creation's and the settlement deadline's are cancelled within
    # the task that started them when their messages are already there, as an order's are).
    assert counts["local activities"] == 13
    assert counts["activities"] == 1
    assert counts["timers"] >= 4


async def test_the_same_interaction_reference_takes_the_messages_and_does_nothing(
    dev_env: WorkflowEnvironment,
) -> None:
    counts = await _drive_one(dev_env, "InteractionWorkflow")

    assert counts["updates"] == 6
    assert counts["signals"] == 2
    assert counts["local activities"] == counts["activities"] == counts["timers"] == 0
