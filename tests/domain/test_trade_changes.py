"""Busts (trade_cancel) and corrections (trade_correct) of a trade, by the pure report function."""

from __future__ import annotations

from decimal import Decimal

import pytest

from domain.executions import ReportOutcome, ReportVerdict, apply_report, live_fill
from domain.models import ExecType, Execution, OrderStatus
from domain.status import OrderEvent, next_status
from tests.domain.test_execution_guards import GUARDS, QUANTITY, RECEIVED, _report

S = OrderStatus


class Book:
    """An order at the venue, applying reports as the workflow does (guards and all)."""

    def __init__(self) -> None:
        self.status = S.WORKING
        self.filled = Decimal(0)
        self.average: Decimal | None = None
        self.executions: list[Execution] = []

    def send(self, exec_type: ExecType, exec_id: str, **fields: object) -> ReportVerdict:
        outcome = apply_report(
            status=self.status,
            quantity=QUANTITY,
            filled_quantity=self.filled,
            average_price=self.average,
            seen_exec_ids={e.exec_id for e in self.executions},
            report=_report(exec_type, exec_id, **fields),
            reported_by="sim-venue",
            received_at=RECEIVED,
            guards=GUARDS,
            executions=self.executions,
        )
        self.reason = outcome.reason
        if outcome.execution is not None:
            self.executions.append(outcome.execution)
            self.filled = outcome.execution.cumulative_quantity
            self.average = outcome.execution.average_price
            self.leaves = outcome.execution.leaves_quantity
        if outcome.event is not None:
            self.event = outcome.event
            self.status = next_status(self.status, outcome.event)
        return outcome.verdict

    def fill(self, exec_id: str, quantity: str, price: str) -> None:
        verdict = self.send(
            ExecType.TRADE, exec_id, last_quantity=Decimal(quantity), last_price=Decimal(price)
        )
        assert verdict is ReportVerdict.APPLIED, self.reason


def test_a_bust_takes_the_trade_back_and_the_average_follows() -> None:
    book = Book()
    book.fill("f-1", "50", "100")
    book.fill("f-2", "50", "104")
    assert (book.status, book.average) == (S.PARTIALLY_FILLED, Decimal(102))
    assert book.send(ExecType.TRADE_CANCEL, "b-1", exec_ref_id="f-2") is ReportVerdict.APPLIED
    assert (book.event, book.status) == (OrderEvent.TRADE_BUSTED_AFTER_FILLS, S.PARTIALLY_FILLED)
    assert (book.filled, book.leaves, book.average) == (Decimal(50), Decimal(150), Decimal(100))
    # The last fill busted too: the order is working again with nothing filled.
    assert book.send(ExecType.TRADE_CANCEL, "b-2", exec_ref_id="f-1") is ReportVerdict.APPLIED
    assert (book.status, book.filled, book.average) == (S.WORKING, Decimal(0), None)


def test_a_correction_changes_the_trade_and_can_fill_the_order() -> None:
    book = Book()
    book.fill("f-1", "100", "100")
    assert (
        book.send(
            ExecType.TRADE_CORRECT,
            "c-1",
            exec_ref_id="f-1",
            last_quantity=Decimal(200),
            last_price=Decimal(101),
        )
        is ReportVerdict.APPLIED
    )
    assert (book.event, book.status) == (OrderEvent.TRADE_CORRECTED_TO_FILLED, S.FILLED)
    assert (book.filled, book.average) == (Decimal(200), Decimal(101))
    assert live_fill(book.executions, "f-1") == (Decimal(200), Decimal(101))


@pytest.mark.parametrize(
    ("exec_type", "fields", "field", "words"),
    [
        (ExecType.TRADE_CANCEL, {}, "exec_ref_id", "names the trade"),
        (ExecType.TRADE_CANCEL, {"exec_ref_id": "nope"}, "exec_ref_id", "names no trade"),
        (ExecType.TRADE_CANCEL, {"exec_ref_id": "n-1"}, "exec_ref_id", "not a trade"),
        (
            ExecType.TRADE_CANCEL,
            {"exec_ref_id": "f-1", "last_quantity": Decimal(10)},
            "last_quantity",
            "carries no last_quantity",
        ),
        (ExecType.TRADE_CORRECT, {"exec_ref_id": "f-1"}, "last_quantity", "corrected"),
        (
            ExecType.TRADE_CORRECT,
            {"exec_ref_id": "f-1", "last_quantity": Decimal(250), "last_price": Decimal(100)},
            "last_quantity",
            "overfill",
        ),
        (
            ExecType.TRADE_CORRECT,
            {"exec_ref_id": "f-1", "last_quantity": Decimal(50), "last_price": Decimal(106)},
            "last_price",
            "through the limit",
        ),
    ],
)
def test_bad_busts_and_corrections_are_refused_naming_the_field(
    exec_type: ExecType, fields: dict[str, object], field: str, words: str
) -> None:
    book = Book()
    book.status = S.RELEASED
    assert book.send(ExecType.NEW, "n-1") is ReportVerdict.APPLIED, book.reason
    book.fill("f-1", "50", "100")
    outcome = apply_report(
        status=book.status,
        quantity=QUANTITY,
        filled_quantity=book.filled,
        average_price=book.average,
        seen_exec_ids={e.exec_id for e in book.executions},
        report=_report(exec_type, "x-9", **fields),
        reported_by="sim-venue",
        received_at=RECEIVED,
        guards=GUARDS,
        executions=book.executions,
    )
    assert outcome.verdict is ReportVerdict.REFUSED
    assert outcome.field == field and words in outcome.reason, outcome


def test_a_trade_busted_once_cannot_be_busted_or_corrected_again() -> None:
    book = Book()
    book.fill("f-1", "50", "100")
    book.fill("f-2", "50", "100")
    assert book.send(ExecType.TRADE_CANCEL, "b-1", exec_ref_id="f-1") is ReportVerdict.APPLIED
    assert book.send(ExecType.TRADE_CANCEL, "b-2", exec_ref_id="f-1") is ReportVerdict.REFUSED
    assert "busted already" in book.reason


def test_after_allocation_a_bust_changes_nothing_booked() -> None:
    book = Book()
    book.fill("f-1", "200", "100")
    assert book.status is S.FILLED
    book.status = S.ALLOCATED  # the workflow allocates a filled order at once
    assert book.send(ExecType.TRADE_CANCEL, "b-1", exec_ref_id="f-1") is ReportVerdict.APPLIED
    assert (book.event, book.status) == (OrderEvent.TRADE_BUSTED_AFTER_ALLOCATION, S.ALLOCATED)
    assert (book.filled, book.average) == (Decimal(200), Decimal(100))


def test_without_the_executions_busts_are_not_understood() -> None:
    outcome = apply_report(
        status=S.PARTIALLY_FILLED,
        quantity=QUANTITY,
        filled_quantity=Decimal(50),
        average_price=Decimal(100),
        seen_exec_ids=set(),
        report=_report(ExecType.TRADE_CANCEL, "b-1", exec_ref_id="f-1"),
        reported_by="sim-venue",
        received_at=RECEIVED,
        guards=GUARDS,
    )
    assert outcome.verdict is ReportVerdict.REFUSED and "not understood" in outcome.reason


@pytest.mark.parametrize(
    ("exec_type", "before"),
    [
        (ExecType.REPLACED, ReportVerdict.APPLIED),  # as histories from before amend took it
        (ExecType.PENDING_REPLACE, ReportVerdict.APPLIED),
        (ExecType.REPLACE_REJECTED, ReportVerdict.REFUSED),  # an exec type they never knew
    ],
)
def test_orders_from_before_amend_keep_their_replace_rules(
    exec_type: ExecType, before: ReportVerdict
) -> None:
    def applied(replace_semantics: bool) -> ReportOutcome:
        return apply_report(
            status=S.WORKING,
            quantity=QUANTITY,
            filled_quantity=Decimal(0),
            average_price=None,
            seen_exec_ids=set(),
            report=_report(exec_type, "r-1"),
            reported_by="sim-venue",
            received_at=RECEIVED,
            guards=GUARDS,
            replace_semantics=replace_semantics,
        )

    outcome = applied(replace_semantics=False)
    assert outcome.verdict is before
    assert outcome.event is None
    # With amend, none of them is taken without a replace pending.
    now = applied(replace_semantics=True)
    assert now.verdict is ReportVerdict.REFUSED and "none is pending" in now.reason
