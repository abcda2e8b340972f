"""Projections committed in this process wake the long-polls waiting on their order (`db.changes`).

The projector runs in an activity thread and the long-poll on the API's event loop: a commit is
handed over between them, and only once it is in the read model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Iterator

import pytest
from sqlalchemy import text
from temporalio.testing import ActivityEnvironment

from activities.projection import ProjectEventsInput, ProjectionActivities
from db import queries
from db.changes import (
    CHANNEL,
    OrderChanges,
    OrderWatch,
    PostgresChangeListener,
    notify_at_commit,
)
from db.engine import SessionFactory, create_schema, make_engine, session_factory
from domain.models import OrderStatus
from domain.order import Order
from domain.status import OrderEvent
from tests.activities.test_read_model import new_order, projection, step, to_working, trade
from tests.conftest import POSTGRES_URL, _postgres_database


async def test_a_commit_in_another_thread_wakes_the_orders_waiter_with_its_status() -> None:
    changes = OrderChanges()
    with changes.watch("ord-1") as watch:
        teller = threading.Thread(
            target=changes.committed, args=("ord-1", OrderStatus.FILLED, True)
        )
        teller.start()
        told = await watch.next(within=30)
        teller.join()

    assert told == (OrderStatus.FILLED, True)


async def test_a_waiter_is_told_only_of_its_own_order_and_only_while_it_watches() -> None:
    changes = OrderChanges()
    with changes.watch("ord-1") as mine, changes.watch("ord-2") as other:
        changes.committed("ord-2", OrderStatus.WORKING, False)
        assert await mine.next(within=0.01) is None
        assert await other.next(within=0.01) == (OrderStatus.WORKING, False)
        # Taken: the next wait hears nothing until another commit.
        assert await other.next(within=0.01) is None
        assert (changes.watchers("ord-1"), changes.watchers("ord-2")) == (1, 1)
    changes.committed("ord-1", OrderStatus.CANCELED, False)  # nobody watches now: nothing to tell

    assert (changes.watchers("ord-1"), changes.watchers("ord-2")) == (0, 0)
    assert changes._watches == {}


async def test_the_latest_of_several_commits_is_what_the_waiter_sees() -> None:
    changes = OrderChanges()
    with changes.watch("ord-1") as watch:
        for status in (OrderStatus.WORKING, OrderStatus.PARTIALLY_FILLED, OrderStatus.FILLED):
            changes.committed("ord-1", status, status is not OrderStatus.WORKING)
        await asyncio.sleep(0)  # let the loop run the hand-overs

        assert await watch.next(within=0.01) == (OrderStatus.FILLED, True)


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

    def read_when_told(order_id: str, status: OrderStatus, filled: bool) -> None:
        with sessions() as session:
            seen_in_the_read_model.append(queries.order_status(session, order_id))
        OrderChanges.committed(changes, order_id, status, filled)

    changes.committed = read_when_told  # type: ignore[method-assign]
    assert changes.commits_told_here
    with changes.watch(order.order_id) as watch:
        await asyncio.to_thread(
            ActivityEnvironment().run,
            activities.project_events,
            ProjectEventsInput(projection=projection(order)),
        )
        told = await watch.next(within=30)
        # Written again, as a retried activity would: the row does not move, nothing is told.
        await asyncio.to_thread(
            ActivityEnvironment().run,
            activities.project_events,
            ProjectEventsInput(projection=projection(order)),
        )
        again = await watch.next(within=0.2)

    assert told == (order.status, True)
    assert seen_in_the_read_model == [(order.status.value, True)]
    assert again is None


# ---- every process's commits, heard on PostgreSQL ---------------------------------------------


@pytest.fixture
def postgres_sessions() -> Iterator[tuple[str, SessionFactory]]:
    """A read model of this test's own on PostgreSQL, and its URL."""
    if not POSTGRES_URL:
        pytest.skip("OMS_TEST_POSTGRES_URL is not set")
    for url in _postgres_database():
        engine = make_engine(url)
        create_schema(engine)
        try:
            yield url, session_factory(engine)
        finally:
            engine.dispose()


@contextlib.asynccontextmanager
async def listening(
    url: str, changes: OrderChanges, name: str
) -> AsyncIterator[PostgresChangeListener]:
    listener = PostgresChangeListener(url, changes, retry_seconds=0.05, application_name=name)
    task = asyncio.create_task(listener.run())
    try:
        await asyncio.wait_for(listener.listening.wait(), 30)
        yield listener
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.contextmanager
def recording(changes: OrderChanges) -> Iterator[list[tuple[str, OrderStatus, bool]]]:
    """Record every commit told to `changes` while the block runs."""
    told: list[tuple[str, OrderStatus, bool]] = []
    tell = changes.committed

    def record(order_id: str, status: OrderStatus, filled: bool) -> None:
        told.append((order_id, status, filled))
        tell(order_id, status, filled)

    changes.committed = record  # type: ignore[method-assign]
    try:
        yield told
    finally:
        changes.committed = tell  # type: ignore[method-assign]


async def until_working(watch: OrderWatch) -> None:
    """Return once the watched order is told it is working."""
    for _ in range(100):
        seen = await watch.next(within=0.3)
        if seen is not None and seen[0] is OrderStatus.WORKING:
            return
    raise AssertionError("never told the order is working")


def project_in_another_thread(sessions: SessionFactory, order: Order) -> Awaitable[None]:
    def write() -> None:
        with sessions() as session:
            queries.project_order(session, projection(order))

    return asyncio.to_thread(write)


async def test_a_commit_in_any_process_is_heard_by_a_listener(
    postgres_sessions: tuple[str, SessionFactory],
) -> None:
    url, sessions = postgres_sessions
    changes = OrderChanges()
    order = to_working(new_order())
    async with listening(url, changes, "oms-test-heard"):
        assert changes.commits_told_here
        with changes.watch(order.order_id) as watch:
            await project_in_another_thread(sessions, order)

            assert await watch.next(within=30) == (OrderStatus.WORKING, False)
    assert not changes.commits_told_here


async def test_a_rolled_back_projection_tells_nobody(
    postgres_sessions: tuple[str, SessionFactory],
) -> None:
    url, sessions = postgres_sessions
    changes = OrderChanges()
    order = to_working(new_order())
    async with listening(url, changes, "oms-test-rollback"):
        with changes.watch(order.order_id) as watch, recording(changes) as told:

            def notify_then_roll_back() -> None:
                with sessions() as session:
                    notify_at_commit(session, order.order_id, OrderStatus.CANCELED, False)
                    session.rollback()

            await asyncio.to_thread(notify_then_roll_back)
            # The commit after it is heard, and alone: the rolled-back one never was.
            await project_in_another_thread(sessions, order)
            await until_working(watch)

    assert told == [(order.order_id, OrderStatus.WORKING, False)]


async def test_a_forged_notification_is_dropped_and_the_listener_goes_on(
    postgres_sessions: tuple[str, SessionFactory],
) -> None:
    url, sessions = postgres_sessions
    changes = OrderChanges()
    order = to_working(new_order())
    async with listening(url, changes, "oms-test-forged"):
        with changes.watch(order.order_id) as watch, recording(changes) as told:
            forged = [
                "not json",
                "5",
                '["only", "two"]',
                f'[1, "{order.order_id}", false]',
                f'["{order.order_id}", "bogus", true]',
                f'["{order.order_id}", "settled", "false"]',
            ]
            with sessions() as session:
                for payload in forged:
                    session.execute(text(f"SELECT pg_notify('{CHANNEL}', :p)"), {"p": payload})
                session.commit()
            # Notifications arrive in commit order: the projection's comes after the forged ones.
            await project_in_another_thread(sessions, order)
            await until_working(watch)

    assert told == [(order.order_id, OrderStatus.WORKING, False)]


async def test_a_listener_whose_connection_is_killed_listens_again(
    postgres_sessions: tuple[str, SessionFactory],
) -> None:
    url, sessions = postgres_sessions
    changes = OrderChanges()
    order = to_working(new_order())
    async with listening(url, changes, "oms-test-killed") as listener:
        listener.listening.clear()
        with sessions() as session:
            [killed] = session.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = 'oms-test-killed'"
                )
            ).scalars()
        assert killed
        await asyncio.wait_for(listener.listening.wait(), 30)

        with changes.watch(order.order_id) as watch:
            await project_in_another_thread(sessions, order)
            assert await watch.next(within=30) == (OrderStatus.WORKING, False)


async def test_a_listener_that_cannot_connect_tries_again_less_and_less_often(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    listener = PostgresChangeListener(
        f"postgresql+psycopg://postgres@127.0.0.1:{port}/test", OrderChanges(), retry_seconds=0.01
    )
    with caplog.at_level(logging.WARNING, logger="db.changes"):
        task = asyncio.create_task(listener.run())
        for _ in range(500):
            if len(caplog.records) >= 4:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    waits = [record.args[1] for record in caplog.records[:4] if isinstance(record.args, tuple)]
    assert waits == [0.01, 0.02, 0.04, 0.08]
    assert not listener.listening.is_set()
