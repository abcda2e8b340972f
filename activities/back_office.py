"""Settlement activities, run on the back office's own task queue, and the simulated back office.

The activities only record instructions in the back office's books (the `settlements` table).
The simulated back office finds them there, so an instruction recorded before a worker died is
still confirmed by the next one.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Protocol

from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError
from temporalio import activity

from db import queries, simulators
from db.engine import SessionFactory
from db.tables import SettlementRow
from domain.models import SettlementInstruction

log = logging.getLogger(__name__)

_BATCH = 500  # instructions taken per poll; the rest come on later polls
_CONCURRENT_CONFIRMATIONS = 8


class InstructSettlementInput(BaseModel):
    instruction: SettlementInstruction


class InstructSettlementsInput(BaseModel):
    instructions: list[SettlementInstruction]


class SettlementConfirmations(Protocol):
    """The back office's way back to the OMS (the API's `POST /settlements/{id}/confirm`)."""

    async def settlement_confirmed(self, settlement_id: str, order_id: str, user: str) -> None:
        """Confirm one settlement; raises when the OMS could not be told."""


class SimulatedBackOffice:
    """Confirm every settlement instruction `delay_seconds` after it was recorded, as a desk would.

    `run` polls the back office's books for instructions still "instructed". A confirmation is
    not repeated for `repost_after_seconds` (the order may take a moment to record it; the OMS
    ignores a repeat), and one that could not be delivered is tried again on a later poll.

    Args:
        confirmations: Where the confirmations go.
        sessions: The database holding the back office's books.
        user: The OMS user the confirmations come from.
        delay_seconds: How long an instruction waits before it is confirmed.
        repost_after_seconds: How long before a confirmation still unrecorded is sent again.
    """

    def __init__(
        self,
        confirmations: SettlementConfirmations,
        sessions: SessionFactory,
        *,
        user: str,
        delay_seconds: float,
        repost_after_seconds: float = 30.0,
    ) -> None:
        self._confirmations = confirmations
        self._sessions = sessions
        self._user = user
        self._delay = timedelta(seconds=delay_seconds)
        self._repost_after = repost_after_seconds
        self._poll = min(max(delay_seconds / 2, 0.02), 1.0)
        # settlement id -> loop time before which it is not sent again (in memory: after a
        # restart the worst case is one early repeat, which the OMS ignores).
        self._not_before: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._limit = asyncio.Semaphore(_CONCURRENT_CONFIRMATIONS)
        self._runner: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Confirm instructions as they fall due, until cancelled.

        Start it as a task (`asyncio.create_task(back_office.run())`) and cancel it to stop.
        """
        self._runner = asyncio.current_task()
        try:
            while True:
                await self.confirm_due()
                await asyncio.sleep(self._poll)
        finally:
            self._runner = None

    async def confirm_due(self) -> None:
        """Confirm every instruction that is due and not sent recently (one poll of `run`)."""
        instructed_before = datetime.now(UTC) - self._delay
        try:
            due = await asyncio.to_thread(self._awaiting, instructed_before)
        except Exception:  # the database may be briefly unreachable: poll again later
            log.exception("simulated back office could not read its instructions")
            return
        now = asyncio.get_running_loop().time()
        waiting = {settlement_id for settlement_id, _ in due}
        for settlement_id in [
            s for s, t in self._not_before.items() if s not in waiting or t <= now
        ]:
            if settlement_id not in waiting:
                self._failures.pop(settlement_id, None)
            del self._not_before[settlement_id]
        await asyncio.gather(
            *(
                self._confirm(settlement_id, order_id)
                for settlement_id, order_id in due
                if settlement_id not in self._not_before
            )
        )

    async def close(self) -> None:
        """Stop the loop if it is running; instructions left are confirmed at the next start."""
        runner = self._runner
        if runner is not None and runner is not asyncio.current_task():
            runner.cancel()
            await asyncio.wait({runner})

    async def _confirm(self, settlement_id: str, order_id: str) -> None:
        loop = asyncio.get_running_loop()
        async with self._limit:
            try:
                await self._confirmations.settlement_confirmed(settlement_id, order_id, self._user)
            except Exception:
                failures = self._failures.get(settlement_id, 0) + 1
                self._failures[settlement_id] = failures
                wait = min(self._poll * 2 ** (failures - 1), self._repost_after)
                self._not_before[settlement_id] = loop.time() + wait
                log.exception(
                    "simulated back office could not confirm %s (attempt %d); retrying in %.1f s",
                    settlement_id,
                    failures,
                    wait,
                )
                return
        self._failures.pop(settlement_id, None)
        self._not_before[settlement_id] = loop.time() + self._repost_after

    def _awaiting(self, instructed_before: datetime) -> list[tuple[str, str]]:
        with self._sessions() as session:
            return simulators.instructions_awaiting_confirmation(session, instructed_before, _BATCH)


class BackOfficeActivities:
    """Hand settlement instructions to the back office: record them in its books, once each.

    Args:
        sessions: The database holding the back office's books.
        simulator: Ignored; the simulated back office finds instructions in the books itself.
            Kept so existing wiring still works.
    """

    def __init__(
        self, sessions: SessionFactory, simulator: SimulatedBackOffice | None = None
    ) -> None:
        self._sessions = sessions

    @activity.defn
    async def instruct_settlement(self, input: InstructSettlementInput) -> None:
        """Record one instruction for the back office (once; a repeat changes nothing).

        Kept for orders that started before `instruct_settlements`.
        """
        await asyncio.to_thread(self._record, [input.instruction])

    @activity.defn
    async def instruct_settlements(self, input: InstructSettlementsInput) -> None:
        """Record an order's instructions for the back office, each once by its settlement id."""
        await asyncio.to_thread(self._record, input.instructions)

    def _record(self, instructions: list[SettlementInstruction]) -> None:
        instructed_at = datetime.now(UTC)
        with self._sessions() as session:
            for instruction in instructions:
                try:
                    queries.record_instruction(session, instruction, instructed_at)
                except IntegrityError:
                    # A concurrent attempt (a retried activity still running) recorded it first.
                    session.rollback()
                    if session.get(SettlementRow, instruction.settlement_id) is None:
                        raise
