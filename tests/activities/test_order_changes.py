"""Projections committed in this process wake the long-polls waiting on their order (`db.changes`).

The projector runs in an activity thread and the long-poll on the API's event loop: a commit is
handed over between them, and only once it is in the read model.
"""

from __future__ import annotations

import asyncio
import threading

from temporalio.testing import ActivityEnvironment

from activities.projection import ProjectEventsInput, ProjectionActivities
from db import queries
from db.changes import OrderChanges
from db.engine import SessionFactory
from domain.status import OrderEvent
from tests.activities.test_read_model import new_order, projection, step, to_working, trade


async def test_a_commit_in_another_thread_wakes_the_orders_waiter_with_its_status() -> None:
    changes = OrderChanges()
    with changes.watch("ord-1") as watch:
        teller = threading.Thread(target=changes.committed, args=("ord-1", "filled", True))
        teller.start()
        told = await watch.next(within=30)
        teller.join()

    assert told == ("filled", True)


async def test_a_waiter_is_told_only_of_its_own_order_and_only_while_it_watches() -> None:
    changes = OrderChanges()
    with changes.watch("ord-1") as mine, changes.watch("ord-2") as other:
        changes.committed("ord-2", "working", False)
        assert await mine.next(within=0.01) is None
        assert await other.next(within=0.01) == ("working", False)
        # Taken: the next wait hears nothing until another commit.
        assert await other.next(within=0.01) is None
    changes.committed("ord-1", "canceled", False)  # nobody watches now: nothing to tell

    assert changes._watches == {}


async def test_the_latest_of_several_commits_is_what_the_waiter_sees() -> None:
    changes = OrderChanges()
    with changes.watch("ord-1") as watch:
        for status in ("working", "partially_filled", "filled"):
            changes.committed("ord-1", status, status != "working")
        await asyncio.sleep(0)  # let the loop run the hand-overs

        assert await watch.next(within=0.01) == ("filled", True)


async def test_the_projection_activity_tells_its_waiters_once_the_read_model_has_it(
    sessions: SessionFactory,
) -> None:
    changes = OrderChanges()
    activities = ProjectionActivities(sessions, changes)
    order = new_order("100")
    to_working(order)
    trade(order, "100", "230.10")
    step(order, OrderEvent.ALLOCATED)
    seen_in_the_read_model: list[tuple[str, bool] | None] = []

    def read_when_told(order_id: str, status: str, filled: bool) -> None:
        with sessions() as session:
            seen_in_the_read_model.append(queries.order_status(session, order_id))
        OrderChanges.committed(changes, order_id, status, filled)

    changes.committed = read_when_told  # type: ignore[method-assign]
    assert changes.projected_here
    with changes.watch(order.order_id) as watch:
        await asyncio.to_thread(
            ActivityEnvironment().run,
            activities.project_events,
            ProjectEventsInput(projection=projection(order)),
        )
        told = await watch.next(within=30)

    assert told == (order.status.value, True)
    assert seen_in_the_read_model == [(order.status.value, True)]
