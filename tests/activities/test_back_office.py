"""BackOfficeActivities record instructions once; the simulated desk confirms them from the books."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from sqlmodel import select
from temporalio.testing import ActivityEnvironment

from activities.back_office import (
    BackOfficeActivities,
    InstructSettlementInput,
    InstructSettlementsInput,
    SimulatedBackOffice,
)
from db.engine import SessionFactory
from db.tables import SettlementRow
from domain.ids import settlement_id_for
from domain.models import SettlementInstruction, Side

USER = "bo-sim"


class RecordingConfirmations:
    """The back office's way back to the OMS (its HTTP side), recording what it is told.

    The first `failures` calls raise, as an unreachable OMS would.
    """

    def __init__(self, failures: int = 0) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.called_at: dict[str, datetime] = {}
        self.attempts = 0
        self.failures = failures

    async def settlement_confirmed(self, settlement_id: str, order_id: str, user: str) -> None:
        self.attempts += 1
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("OMS unreachable")
        self.calls.append((settlement_id, order_id, user))
        self.called_at.setdefault(settlement_id, datetime.now(UTC))

    def of(self, *instructions: SettlementInstruction) -> list[tuple[str, str, str]]:
        """The confirmations of `instructions` (the shared database holds other tests' too)."""
        ids = {i.settlement_id for i in instructions}
        return [call for call in self.calls if call[0] in ids]


def instruction_for(
    account: str = "alpha-main", order_id: str | None = None
) -> SettlementInstruction:
    order_id = order_id or f"ord_t{uuid.uuid4().hex[:16]}"
    return SettlementInstruction(
        settlement_id=settlement_id_for(order_id, account),
        order_id=order_id,
        fund="fund-alpha",
        account=account,
        symbol="MSFT",
        side=Side.SELL,
        quantity=Decimal(250),
        price=Decimal("415.2"),
        gross_amount=Decimal(103800),
        currency="USD",
        trade_date=date(2025, 3, 7),
        settlement_date=date(2025, 3, 10),
    )


def confirmed(instruction: SettlementInstruction) -> tuple[str, str, str]:
    return (instruction.settlement_id, instruction.order_id, USER)


def settlement_rows(sessions: SessionFactory, *settlement_ids: str) -> list[SettlementRow]:
    with sessions() as session:
        query = (
            select(SettlementRow)
            .where(SettlementRow.settlement_id.in_(settlement_ids))  # type: ignore[attr-defined]
            .order_by(SettlementRow.settlement_id)
        )
        return list(session.exec(query))


async def instruct(sessions: SessionFactory, *instructions: SettlementInstruction) -> None:
    await ActivityEnvironment().run(
        BackOfficeActivities(sessions).instruct_settlements,
        InstructSettlementsInput(instructions=list(instructions)),
    )


async def eventually(condition: Callable[[], bool], within: float = 10) -> None:
    """Wait for `condition`, however slow the machine (a hang guard, not a timing assertion)."""
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never came true"
        await asyncio.sleep(0.01)


@asynccontextmanager
async def running(desk: SimulatedBackOffice) -> AsyncIterator[asyncio.Task[None]]:
    """Run the desk's loop for the block, and stop it as a worker shutting down would."""
    task = asyncio.create_task(desk.run())
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.wait({task})


async def test_instruct_settlements_twice_records_each_instruction_once(
    sessions: SessionFactory,
) -> None:
    order_id = f"ord_t{uuid.uuid4().hex[:16]}"
    main, growth = (
        instruction_for("alpha-main", order_id),
        instruction_for("alpha-growth", order_id),
    )
    before = datetime.now(UTC)

    await instruct(sessions, main, growth)
    first = settlement_rows(sessions, main.settlement_id, growth.settlement_id)
    await instruct(sessions, main, growth)  # a retried activity
    rows = settlement_rows(sessions, main.settlement_id, growth.settlement_id)

    assert [r.account for r in rows] == ["alpha-growth", "alpha-main"]
    assert rows == first  # the repeat did not rewrite them
    row = rows[1]
    assert (row.status, row.status_reason, row.status_at) == ("instructed", "", None)
    assert (row.order_id, row.fund, row.account, row.symbol, row.side) == (
        order_id,
        "fund-alpha",
        "alpha-main",
        "MSFT",
        "sell",
    )
    assert (row.quantity, row.price, row.gross_amount, row.currency) == (
        Decimal(250),
        Decimal("415.2"),
        Decimal(103800),
        "USD",
    )
    assert (row.trade_date, row.settlement_date) == (date(2025, 3, 7), date(2025, 3, 10))
    assert row.instructed_at.utcoffset() == timedelta(0)
    assert before <= row.instructed_at <= datetime.now(UTC)


async def test_concurrent_instructions_of_one_settlement_record_it_once(
    sessions: SessionFactory,
) -> None:
    instruction = instruction_for()

    await asyncio.gather(*(instruct(sessions, instruction) for _ in range(4)))

    assert len(settlement_rows(sessions, instruction.settlement_id)) == 1


async def test_instruct_settlement_of_older_orders_still_records_once(
    sessions: SessionFactory,
) -> None:
    env, back_office = ActivityEnvironment(), BackOfficeActivities(sessions)
    instruction = instruction_for()

    for _ in range(2):
        await env.run(
            back_office.instruct_settlement, InstructSettlementInput(instruction=instruction)
        )

    [row] = settlement_rows(sessions, instruction.settlement_id)
    assert (row.order_id, row.status) == (instruction.order_id, "instructed")


async def test_the_simulated_back_office_confirms_after_its_delay(
    sessions: SessionFactory,
) -> None:
    delay = 0.3
    confirmations = RecordingConfirmations()
    desk = SimulatedBackOffice(confirmations, sessions, user=USER, delay_seconds=delay)
    instruction = instruction_for("alpha-growth")

    async with running(desk):
        await instruct(sessions, instruction)
        await eventually(lambda: bool(confirmations.of(instruction)))

    assert confirmations.of(instruction) == [confirmed(instruction)]
    [row] = settlement_rows(sessions, instruction.settlement_id)
    waited = confirmations.called_at[instruction.settlement_id] - row.instructed_at
    assert waited >= timedelta(seconds=delay)
    assert row.status == "instructed"  # the desk answers the order, not the read model


async def test_a_confirmation_is_not_sent_again_until_the_repost_time(
    sessions: SessionFactory,
) -> None:
    confirmations = RecordingConfirmations()
    desk = SimulatedBackOffice(
        confirmations, sessions, user=USER, delay_seconds=0, repost_after_seconds=30
    )
    instruction = instruction_for()
    await instruct(sessions, instruction)

    for _ in range(5):  # five polls in a row, as the loop would make them
        await desk.confirm_due()

    assert confirmations.of(instruction) == [confirmed(instruction)]


async def test_a_confirmation_still_unrecorded_after_the_repost_time_is_sent_again(
    sessions: SessionFactory,
) -> None:
    confirmations = RecordingConfirmations()
    desk = SimulatedBackOffice(
        confirmations, sessions, user=USER, delay_seconds=0, repost_after_seconds=0.1
    )
    instruction = instruction_for()
    await instruct(sessions, instruction)

    async with running(desk):
        await eventually(lambda: len(confirmations.of(instruction)) >= 2)

    assert set(confirmations.of(instruction)) == {confirmed(instruction)}


async def test_an_instruction_outlives_the_desk_that_saw_it(sessions: SessionFactory) -> None:
    instruction = instruction_for()
    first_confirmations = RecordingConfirmations()
    first = SimulatedBackOffice(first_confirmations, sessions, user=USER, delay_seconds=60)
    async with running(first):
        await instruct(sessions, instruction)
        await first.confirm_due()  # it has seen the instruction, not yet due
    assert first_confirmations.of(instruction) == []

    # The worker is replaced; the new desk finds the instruction in the books.
    confirmations = RecordingConfirmations()
    second = SimulatedBackOffice(confirmations, sessions, user=USER, delay_seconds=0.05)
    async with running(second):
        await eventually(lambda: bool(confirmations.of(instruction)))

    assert confirmations.of(instruction) == [confirmed(instruction)]


async def test_a_confirmation_that_cannot_be_delivered_is_logged_and_tried_again(
    sessions: SessionFactory, caplog: pytest.LogCaptureFixture
) -> None:
    instruction = instruction_for()
    await instruct(sessions, instruction)
    confirmations = RecordingConfirmations(failures=2)
    desk = SimulatedBackOffice(confirmations, sessions, user=USER, delay_seconds=0.05)

    with caplog.at_level(logging.ERROR, logger="activities.back_office"):
        async with running(desk) as loop:
            await eventually(lambda: bool(confirmations.of(instruction)))
            assert not loop.done()  # the failures did not end the loop

    assert confirmations.of(instruction) == [confirmed(instruction)]
    assert "could not confirm" in caplog.text
    assert [r.status for r in settlement_rows(sessions, instruction.settlement_id)] == [
        "instructed"
    ]


async def test_close_stops_the_loop(sessions: SessionFactory) -> None:
    desk = SimulatedBackOffice(RecordingConfirmations(), sessions, user=USER, delay_seconds=1)
    task = asyncio.create_task(desk.run())
    await asyncio.sleep(0)  # let the loop start

    await desk.close()

    assert task.cancelled()
