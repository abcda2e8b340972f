"""Order projections committed in this process, told at once to whoever waits on the order.

A long-poll (`GET /orders/{id}?wait_for=`) reads the read model, and would otherwise only learn
of a change at its next read. When the projector that writes the order runs in the same process
(`oms dev`, `make run`, the API tests), the commit wakes the waiter with the status it wrote.
The read model stays the truth: a waiter still reads it on a schedule of its own, so a
projection written by another process (a worker elsewhere) is seen too, only later.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator


class OrderWatch:
    """One waiter's view of an order's commits: the latest one not yet taken."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._arrived = asyncio.Event()
        self._latest: tuple[str, bool] | None = None

    def tell(self, status: str, filled: bool) -> None:
        """Hand a commit to the waiter's event loop; safe from any thread."""
        # A waiter whose loop has closed is gone: nobody is left to tell.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._arrive, status, filled)

    def _arrive(self, status: str, filled: bool) -> None:
        self._latest = (status, filled)
        self._arrived.set()

    async def next(self, within: float) -> tuple[str, bool] | None:
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

    @property
    def projected_here(self) -> bool:
        """Whether a projector runs in this process, so that its commits are told here."""
        return self._projectors > 0

    def add_projector(self) -> None:
        """Say that a projector runs in this process (its waiters may read the model less often)."""
        with self._lock:
            self._projectors += 1

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

    def committed(self, order_id: str, status: str, filled: bool) -> None:
        """Tell this process's waiters on `order_id` what a projection just committed."""
        with self._lock:
            watches = list(self._watches.get(order_id, ()))
        for watch in watches:
            watch.tell(status, filled)


ORDER_CHANGES = OrderChanges()
