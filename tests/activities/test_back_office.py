"""BackOfficeActivities: settlement instructions recorded once, confirmed by the simulated desk."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from sqlmodel import select
from temporalio.testing import ActivityEnvironment

from activities.back_office import (
    BackOfficeActivities,
    InstructSettlementInput,
    SimulatedBackOffice,
)
from db.engine import SessionFactory
from db.tables import SettlementRow
from domain.ids import settlement_id_for
from domain.models import SettlementInstruction, Side

DELAY = 0.5  # long enough that "not yet" right after the activity cannot race it


class RecordingConfirmations:
    """The back office's way back to the OMS (its HTTP side), recording what it is told."""

    def __init__(self) -> None:
        self.calls: list[tuple[SettlementInstruction, str]] = []

    async def settlement_confirmed(self, instruction: SettlementInstruction, user: str) -> None:
        self.calls.append((instruction, user))


def instruction_for(account: str = "alpha-main") -> SettlementInstruction:
    order_id = f"ord_t{uuid.uuid4().hex[:16]}"
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


def settlement_rows(sessions: SessionFactory, settlement_id: str) -> list[SettlementRow]:
    with sessions() as session:
        query = select(SettlementRow).where(SettlementRow.settlement_id == settlement_id)
        return list(session.exec(query))


async def test_instruct_settlement_twice_records_one_instruction(sessions: SessionFactory) -> None:
    env, back_office = ActivityEnvironment(), BackOfficeActivities(sessions)
    instruction = instruction_for()
    before = datetime.now(UTC)

    await env.run(back_office.instruct_settlement, InstructSettlementInput(instruction=instruction))
    [first] = settlement_rows(sessions, instruction.settlement_id)
    await env.run(back_office.instruct_settlement, InstructSettlementInput(instruction=instruction))
    [row] = settlement_rows(sessions, instruction.settlement_id)

    assert row.status == "instructed"
    assert row.status_reason == ""
    assert row.status_at is None
    assert (row.order_id, row.fund, row.account, row.symbol, row.side) == (
        instruction.order_id,
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
    assert row.instructed_at == first.instructed_at  # the repeat did not rewrite the row


async def eventually(condition: Callable[[], bool], within: float = 10) -> None:
    """Wait for `condition`, however slow the machine (a hang guard, not a timing assertion)."""
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never came true"
        await asyncio.sleep(0.01)


async def test_the_simulated_back_office_confirms_after_its_delay(
    sessions: SessionFactory,
) -> None:
    confirmations = RecordingConfirmations()
    desk = SimulatedBackOffice(confirmations, user="bo-sim", delay_seconds=DELAY)
    env, back_office = ActivityEnvironment(), BackOfficeActivities(sessions, desk)
    instruction = instruction_for("alpha-growth")
    try:
        for _ in range(2):
            await env.run(
                back_office.instruct_settlement, InstructSettlementInput(instruction=instruction)
            )
        assert confirmations.calls == []  # not before the desk's delay

        await eventually(lambda: len(confirmations.calls) >= 2)
        # A retried instruction re-notifies the desk; the order ignores the repeat confirmation.
        assert confirmations.calls == [(instruction, "bo-sim"), (instruction, "bo-sim")]
        [row] = settlement_rows(sessions, instruction.settlement_id)
        assert row.status == "instructed"  # the desk answers the order, not the read model
    finally:
        await desk.close()


async def test_closing_the_simulated_back_office_drops_pending_confirmations(
    sessions: SessionFactory,
) -> None:
    confirmations = RecordingConfirmations()
    desk = SimulatedBackOffice(confirmations, user="bo-sim", delay_seconds=DELAY)
    back_office = BackOfficeActivities(sessions, desk)
    instruction = instruction_for()

    await ActivityEnvironment().run(
        back_office.instruct_settlement, InstructSettlementInput(instruction=instruction)
    )
    await desk.close()
    await asyncio.sleep(DELAY * 1.5)

    assert confirmations.calls == []
    assert len(settlement_rows(sessions, instruction.settlement_id)) == 1


class FailingConfirmations:
    """An OMS that cannot be reached: the desk must log it, not crash the worker."""

    def __init__(self) -> None:
        self.attempts = 0

    async def settlement_confirmed(self, instruction: SettlementInstruction, user: str) -> None:
        self.attempts += 1
        raise ConnectionError("OMS unreachable")


async def test_a_confirmation_that_cannot_be_delivered_is_logged(
    sessions: SessionFactory, caplog: pytest.LogCaptureFixture
) -> None:
    confirmations = FailingConfirmations()
    desk = SimulatedBackOffice(confirmations, user="bo-sim", delay_seconds=DELAY / 2)
    back_office = BackOfficeActivities(sessions, desk)
    instruction = instruction_for()
    try:
        with caplog.at_level(logging.ERROR, logger="activities.back_office"):
            await ActivityEnvironment().run(
                back_office.instruct_settlement, InstructSettlementInput(instruction=instruction)
            )
            await eventually(lambda: confirmations.attempts >= 1)
            await asyncio.sleep(DELAY)  # room for a retry that must not come
        assert confirmations.attempts == 1
        assert f"could not confirm {instruction.settlement_id}" in caplog.text
        assert [r.status for r in settlement_rows(sessions, instruction.settlement_id)] == [
            "instructed"
        ]
    finally:
        await desk.close()
