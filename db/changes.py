"""Order projections, told at once to whoever waits on the order in this process.

A long-poll (`GET /orders/{id}?wait_for=`) reads the read model, and would otherwise only learn
of a change at its next read. Two ways tell it sooner, with the status written:

- the projector of this process (`oms dev`, `make run`) tells its commits to `ORDER_CHANGES`;
- on PostgreSQL, every projection's transaction NOTIFYs `CHANNEL` at commit, and a
  `PostgresChangeListener` (the API runs one) hears every process's.

The read model stays the truth: a waiter still reads it on a schedule of its own, so a commit
nobody told (a listener reconnecting, a projector in another process on SQLite) is seen too,
only later.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from typing import Final

import psycopg
from psycopg import sql
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlmodel import Session

from domain.models import OrderStatus

log = logging.getLogger(__name__)

CHANNEL: Final = "oms_order_changes"
# A listener that cannot connect tries again at most this far apart (the long-polls read the
# read model meanwhile).
_MAX_RETRY_SECONDS = 30.0
_NOTIFY = text(f"SELECT pg_notify('{CHANNEL}', :payload)")


class OrderWatch:
    """One waiter's view of an order's commits: the latest one not yet taken."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._arrived = asyncio.Event()
        self._latest: tuple[OrderStatus, bool] | None = None

    def tell(self, status: OrderStatus, filled: bool) -> None:
        """Hand a commit to the waiter's event loop; safe from any thread."""
        # A waiter whose loop has closed is gone: nobody is left to tell.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._arrive, status, filled)

    def _arrive(self, status: OrderStatus, filled: bool) -> None:
        self._latest = (status, filled)
        self._arrived.set()

    async def next(self, within: float) -> tuple[OrderStatus, bool] | None:
        """Return the latest commit's (status, anything filled), waiting up to `within` seconds.

        None: nothing was committed in this process meanwhile.
        """
        if not self._arrived.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    await self._arrived.wait()
        self._arrived.clear()
        latest, self._latest = self._latest, None
        return latest


class OrderChanges:
    """Who waits on which order in this process, and whether orders are projected here."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watches: dict[str, list[OrderWatch]] = {}
        self._projectors = 0
        self._listeners = 0

    @property
    def commits_told_here(self) -> bool:
        """Whether commits are told in this process: a projector runs here, or a listener hears all."""
        return self._projectors > 0 or self._listeners > 0

    def add_projector(self) -> None:
        """Say that a projector runs in this process (its waiters may read the model less often).

        For the life of the process: a worker's activities are built once, at its start.
        """
        with self._lock:
            self._projectors += 1

    def watchers(self, order_id: str) -> int:
        """Return how many waiters of this process watch `order_id` now."""
        with self._lock:
            return len(self._watches.get(order_id, ()))

    @contextlib.contextmanager
    def listening(self) -> Iterator[None]:
        """Say that every process's commits are heard here while the block runs."""
        with self._lock:
            self._listeners += 1
        try:
            yield
        finally:
            with self._lock:
                self._listeners -= 1

    @contextlib.contextmanager
    def watch(self, order_id: str) -> Iterator[OrderWatch]:
        """Be told of `order_id`'s commits in this process while the block runs (in a loop)."""
        watch = OrderWatch(asyncio.get_running_loop())
        with self._lock:
            self._watches.setdefault(order_id, []).append(watch)
        try:
            yield watch
        finally:
            with self._lock:
                watches = self._watches[order_id]
                watches.remove(watch)
                if not watches:
                    del self._watches[order_id]

    def committed(self, order_id: str, status: OrderStatus, filled: bool) -> None:
        """Tell this process's waiters on `order_id` what a projection just committed."""
        with self._lock:
            watches = list(self._watches.get(order_id, ()))
        for watch in watches:
            watch.tell(status, filled)


ORDER_CHANGES = OrderChanges()


def notify_at_commit(session: Session, order_id: str, status: OrderStatus, filled: bool) -> None:
    """On PostgreSQL, have this transaction tell every listening process of the order at commit.

    PostgreSQL delivers the notification only if the transaction commits, after it has.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_NOTIFY, {"payload": json.dumps([order_id, status.value, filled])})


class PostgresChangeListener:
    """Hears every process's order commits on PostgreSQL (LISTEN) and tells them to `changes`.

    Args:
        database_url: The read model's SQLAlchemy URL (postgresql+psycopg://...).
        changes: Whom to tell.
        retry_seconds: How long to wait before the first retry after the connection was lost.
    """

    def __init__(
        self,
        database_url: str,
        changes: OrderChanges = ORDER_CHANGES,
        *,
        retry_seconds: float = 1.0,
        application_name: str = "oms-order-changes",
    ) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        self._conninfo = url.render_as_string(hide_password=False)
        self._changes = changes
        self._retry = retry_seconds
        self._application_name = application_name
        self.listening = asyncio.Event()

    async def run(self) -> None:
        """Listen until cancelled; a lost connection is made again, less often while it fails.

        The first retry comes after `retry_seconds`, each next one after twice as long (up to
        `_MAX_RETRY_SECONDS`), and a connection that listened starts the count again.
        """
        wait = self._retry
        while True:
            try:
                await self._listen()
                problem = "the connection closed"
            except (psycopg.Error, OSError) as exc:
                problem = str(exc) or type(exc).__name__
            except Exception as exc:  # never let the long-polls' wake-up die unseen
                log.exception("order changes: the listener failed")
                problem = repr(exc)
            if self.listening.is_set():
                wait = self._retry
            self.listening.clear()
            log.warning("order changes: not listening (%s); again in %.3g s", problem, wait)
            await asyncio.sleep(wait)
            wait = min(wait * 2, _MAX_RETRY_SECONDS)

    async def _listen(self) -> None:
        async with await psycopg.AsyncConnection.connect(
            self._conninfo,
            autocommit=True,
            application_name=self._application_name,
            # A connection that went away without a word (a failover, a partition) is noticed
            # within about a minute, not after the operating system's two hours.
            connect_timeout=10,
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
        ) as connection:
            await connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
            with self._changes.listening():
                self.listening.set()
                async for note in connection.notifies():
                    self._tell(note.payload)

    def _tell(self, payload: str) -> None:
        try:
            order_id, status, filled = json.loads(payload)
            if not (isinstance(order_id, str) and isinstance(filled, bool)):
                raise ValueError("the order id must be a string and filled a boolean")
            told = OrderStatus(status)
        except (ValueError, TypeError) as exc:  # anyone who may connect can NOTIFY: drop a bad one
            log.warning("order changes: ignored a notification %r (%s)", payload[:200], exc)
            return
        self._changes.committed(order_id, told, filled)
