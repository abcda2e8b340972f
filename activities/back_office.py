"""Settlement activities, run on the back office's own task queue, and the simulated back office."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Protocol

from pydantic import BaseModel
from temporalio import activity

from db import queries
from db.engine import SessionFactory
from domain.models import SettlementInstruction

log = logging.getLogger(__name__)


class InstructSettlementInput(BaseModel):
    instruction: SettlementInstruction


class SettlementConfirmations(Protocol):
    async def settlement_confirmed(self, instruction: SettlementInstruction, user: str) -> None: ...


class SimulatedBackOffice:
    """Confirms every instruction shortly after it arrives, as the back office's user would."""

    def __init__(
        self, confirmations: SettlementConfirmations, *, user: str, delay_seconds: float
    ) -> None:
        self._confirmations = confirmations
        self._user = user
        self._delay = delay_seconds
        self._tasks: set[asyncio.Task[None]] = set()

    def received(self, instruction: SettlementInstruction) -> None:
        task = asyncio.get_running_loop().create_task(self._confirm_later(instruction))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _confirm_later(self, instruction: SettlementInstruction) -> None:
        await asyncio.sleep(self._delay)
        try:
            await self._confirmations.settlement_confirmed(instruction, self._user)
        except Exception:
            log.exception("simulated back office could not confirm %s", instruction.settlement_id)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()


class BackOfficeActivities:
    """Hand settlement instructions to the back office: its books, and its desk when simulated."""

    def __init__(
        self, sessions: SessionFactory, simulator: SimulatedBackOffice | None = None
    ) -> None:
        self._sessions = sessions
        self._simulator = simulator

    @activity.defn
    async def instruct_settlement(self, input: InstructSettlementInput) -> None:
        """Record the instruction for the back office (once) and, when simulated, have it confirmed."""
        instruction = input.instruction
        await asyncio.to_thread(self._record, instruction)
        # Confirming twice is harmless (the order ignores a repeat), so a retried activity
        # re-notifies rather than risk an instruction nobody confirms.
        if self._simulator is not None:
            self._simulator.received(instruction)

    def _record(self, instruction: SettlementInstruction) -> None:
        with self._sessions() as session:
            queries.record_instruction(session, instruction, datetime.now(UTC))
