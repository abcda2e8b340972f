"""The order status table: every legal transition, every illegal one, and the terminal statuses."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from domain.models import OrderStatus
from domain.status import (
    INFORMATIONAL,
    TRANSITIONS,
    IllegalTransitionError,
    OrderEvent,
    allows,
    has_reached,
    is_final,
    next_status,
)

S = OrderStatus
E = OrderEvent
# Events that move the status (the rest are recorded on the order and change no status).
MOVES = [event for event in E if event not in INFORMATIONAL]

LEGAL = sorted(TRANSITIONS.items())
ILLEGAL = [pair for pair in itertools.product(S, MOVES) if pair not in TRANSITIONS]

TERMINAL = [
    S.COMPLIANCE_REJECTED,
    S.APPROVAL_REJECTED,
    S.APPROVAL_EXPIRED,
    S.VENUE_REJECTED,
    S.SETTLED,
]

# The table as the product describes it, written out by hand so a change to TRANSITIONS shows.
EXPECTED: dict[tuple[OrderStatus, OrderEvent], OrderStatus] = {
    (S.PENDING_COMPLIANCE, E.COMPLIANCE_PASSED): S.PENDING_APPROVAL,
    (S.PENDING_COMPLIANCE, E.COMPLIANCE_WARNED): S.PENDING_OVERRIDE,
    (S.PENDING_COMPLIANCE, E.COMPLIANCE_FAILED): S.COMPLIANCE_REJECTED,
    (S.PENDING_COMPLIANCE, E.CANCELED_BEFORE_RELEASE): S.CANCELED,
    (S.PENDING_OVERRIDE, E.OVERRIDDEN): S.PENDING_APPROVAL,
    (S.PENDING_OVERRIDE, E.APPROVAL_EXPIRED): S.APPROVAL_EXPIRED,
    (S.PENDING_OVERRIDE, E.CANCELED_BEFORE_RELEASE): S.CANCELED,
    (S.PENDING_APPROVAL, E.APPROVALS_COMPLETE): S.APPROVED,
    (S.PENDING_APPROVAL, E.APPROVAL_REJECTED): S.APPROVAL_REJECTED,
    (S.PENDING_APPROVAL, E.APPROVAL_EXPIRED): S.APPROVAL_EXPIRED,
    (S.PENDING_APPROVAL, E.CANCELED_BEFORE_RELEASE): S.CANCELED,
    (S.APPROVED, E.RELEASED): S.RELEASED,
    (S.APPROVED, E.COMPLIANCE_FAILED): S.COMPLIANCE_REJECTED,
    (S.APPROVED, E.COMPLIANCE_WARNED): S.PENDING_OVERRIDE,
    (S.PENDING_OVERRIDE, E.EXPIRED_BEFORE_RELEASE): S.EXPIRED,
    (S.PENDING_APPROVAL, E.EXPIRED_BEFORE_RELEASE): S.EXPIRED,
    (S.APPROVED, E.EXPIRED_BEFORE_RELEASE): S.EXPIRED,
    (S.APPROVED, E.CANCELED_BEFORE_RELEASE): S.CANCELED,
    (S.RELEASED, E.VENUE_ACCEPTED): S.WORKING,
    (S.RELEASED, E.VENUE_REJECTED): S.VENUE_REJECTED,
    **{
        (status, event): target
        for status in (S.RELEASED, S.WORKING, S.PARTIALLY_FILLED)
        for event, target in (
            (E.PARTIAL_FILL, S.PARTIALLY_FILLED),
            (E.FILL, S.FILLED),
            (E.CANCEL_REQUESTED, S.PENDING_CANCEL),
            (E.VENUE_CANCELED, S.CANCELED),
            (E.VENUE_EXPIRED, S.EXPIRED),
        )
    },
    (S.PENDING_OVERRIDE, E.AMENDED): S.PENDING_COMPLIANCE,
    (S.PENDING_APPROVAL, E.AMENDED): S.PENDING_COMPLIANCE,
    (S.APPROVED, E.AMENDED): S.PENDING_COMPLIANCE,
    (S.WORKING, E.REPLACE_REQUESTED): S.PENDING_REPLACE,
    (S.PARTIALLY_FILLED, E.REPLACE_REQUESTED): S.PENDING_REPLACE,
    (S.PENDING_REPLACE, E.PARTIAL_FILL): S.PENDING_REPLACE,
    (S.PENDING_REPLACE, E.FILL): S.FILLED,
    (S.PENDING_REPLACE, E.CANCEL_REQUESTED): S.PENDING_CANCEL,
    (S.PENDING_REPLACE, E.VENUE_CANCELED): S.CANCELED,
    (S.PENDING_REPLACE, E.VENUE_EXPIRED): S.EXPIRED,
    **{
        (status, event): target
        for status in (S.WORKING, S.PARTIALLY_FILLED, S.PENDING_REPLACE)
        for event, target in (
            (E.REPLACED, S.WORKING),
            (E.REPLACED_AFTER_FILLS, S.PARTIALLY_FILLED),
            (E.REPLACED_TO_FILLED, S.FILLED),
            (E.REPLACE_REJECTED, S.WORKING),
            (E.REPLACE_REJECTED_AFTER_FILLS, S.PARTIALLY_FILLED),
        )
    },
    (S.PARTIALLY_FILLED, E.TRADE_BUSTED): S.WORKING,
    (S.PARTIALLY_FILLED, E.TRADE_BUSTED_AFTER_FILLS): S.PARTIALLY_FILLED,
    (S.PARTIALLY_FILLED, E.TRADE_CORRECTED): S.PARTIALLY_FILLED,
    (S.PARTIALLY_FILLED, E.TRADE_CORRECTED_TO_FILLED): S.FILLED,
    **{
        (status, event): target
        for status in (S.PENDING_CANCEL, S.PENDING_REPLACE)
        for event, target in (
            (E.TRADE_BUSTED, status),
            (E.TRADE_BUSTED_AFTER_FILLS, status),
            (E.TRADE_CORRECTED, status),
            (E.TRADE_CORRECTED_TO_FILLED, S.FILLED),
        )
    },
    (S.PENDING_CANCEL, E.REPLACED): S.PENDING_CANCEL,
    (S.PENDING_CANCEL, E.REPLACED_AFTER_FILLS): S.PENDING_CANCEL,
    (S.PENDING_CANCEL, E.REPLACED_TO_FILLED): S.FILLED,
    (S.PENDING_CANCEL, E.REPLACE_REJECTED): S.PENDING_CANCEL,
    (S.PENDING_CANCEL, E.REPLACE_REJECTED_AFTER_FILLS): S.PENDING_CANCEL,
    (S.PENDING_CANCEL, E.PARTIAL_FILL): S.PENDING_CANCEL,
    (S.PENDING_CANCEL, E.FILL): S.FILLED,
    (S.PENDING_CANCEL, E.VENUE_CANCELED): S.CANCELED,
    (S.PENDING_CANCEL, E.VENUE_EXPIRED): S.EXPIRED,
    (S.PENDING_CANCEL, E.CANCEL_REJECTED): S.WORKING,
    (S.PENDING_CANCEL, E.CANCEL_REJECTED_AFTER_FILLS): S.PARTIALLY_FILLED,
    (S.PENDING_CANCEL, E.VENUE_REJECTED): S.VENUE_REJECTED,
    (S.FILLED, E.ALLOCATED): S.ALLOCATED,
    (S.CANCELED, E.ALLOCATED): S.ALLOCATED,
    (S.EXPIRED, E.ALLOCATED): S.ALLOCATED,
    (S.ALLOCATED, E.SETTLEMENT_INSTRUCTED): S.SETTLEMENT_PENDING,
    (S.SETTLEMENT_PENDING, E.SETTLED): S.SETTLED,
    (S.SETTLEMENT_PENDING, E.SETTLEMENT_FAILED): S.SETTLEMENT_FAILED,
    (S.SETTLEMENT_FAILED, E.SETTLED): S.SETTLED,
}


def _pair_id(pair: tuple[OrderStatus, OrderEvent]) -> str:
    return f"{pair[0].value}+{pair[1].value}"


def test_table_is_the_expected_table() -> None:
    assert dict(TRANSITIONS) == EXPECTED


@pytest.mark.parametrize(
    ("status", "event", "target"),
    [(s, e, t) for (s, e), t in LEGAL],
    ids=[_pair_id(pair) for pair, _ in LEGAL],
)
def test_legal_transition(status: OrderStatus, event: OrderEvent, target: OrderStatus) -> None:
    assert allows(status, event)
    assert next_status(status, event) is target
    assert EXPECTED[(status, event)] is target


@pytest.mark.parametrize(("status", "event"), ILLEGAL, ids=[_pair_id(p) for p in ILLEGAL])
def test_illegal_transition(status: OrderStatus, event: OrderEvent) -> None:
    assert not allows(status, event)
    with pytest.raises(IllegalTransitionError) as caught:
        next_status(status, event)
    assert caught.value.status is status
    assert caught.value.event is event
    assert status.value in str(caught.value)
    assert event.value in str(caught.value)


def test_illegal_transition_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not allowed in status 'settled'"):
        next_status(S.SETTLED, E.FILL)


def test_every_pair_is_legal_or_illegal() -> None:
    assert len(LEGAL) + len(ILLEGAL) == len(S) * len(MOVES)
    assert ILLEGAL  # the generated table is not empty
    assert not any(event in INFORMATIONAL for _, event in TRANSITIONS)


@pytest.mark.parametrize("status", list(S), ids=lambda s: s.value)
def test_informational_events_keep_the_status(status: OrderStatus) -> None:
    for event in INFORMATIONAL:
        assert allows(status, event)
        assert next_status(status, event) is status


@pytest.mark.parametrize("status", TERMINAL, ids=lambda s: s.value)
def test_terminal_status_accepts_no_event(status: OrderStatus) -> None:
    for event in MOVES:
        assert not allows(status, event)
        with pytest.raises(IllegalTransitionError):
            next_status(status, event)


def test_terminal_statuses_are_only_targets() -> None:
    sources = {status for status, _ in TRANSITIONS}
    targets = set(TRANSITIONS.values())
    for status in TERMINAL:
        assert status not in sources
        assert status in targets


@pytest.mark.parametrize(
    ("status", "filled", "final"),
    [
        (S.SETTLED, True, True),
        (S.COMPLIANCE_REJECTED, False, True),
        (S.VENUE_REJECTED, False, True),
        (S.CANCELED, False, True),
        (S.CANCELED, True, False),  # canceled with fills: allocation follows
        (S.EXPIRED, True, False),
        (S.SETTLEMENT_FAILED, True, False),  # a late confirmation may still settle it
        (S.WORKING, False, False),
    ],
)
def test_final_statuses(status: OrderStatus, filled: bool, final: bool) -> None:
    assert is_final(status, filled=filled) is final


@pytest.mark.parametrize(
    ("status", "wanted", "filled", "reached"),
    [
        (S.APPROVED, {S.APPROVED}, False, True),
        (S.WORKING, {S.APPROVED}, False, True),  # a later status counts
        (S.PENDING_APPROVAL, {S.APPROVED}, False, False),
        (S.SETTLED, {S.FILLED}, True, True),
        (S.APPROVAL_REJECTED, {S.SETTLED}, False, True),  # final: nothing more will come
        (S.CANCELED, {S.SETTLED}, False, True),
        (S.CANCELED, {S.SETTLED}, True, False),  # canceled with fills goes on to settle
        (S.PARTIALLY_FILLED, {S.FILLED, S.CANCELED}, True, False),
    ],
)
def test_has_reached(
    status: OrderStatus, wanted: set[OrderStatus], filled: bool, reached: bool
) -> None:
    assert has_reached(status, wanted, filled=filled) is reached


def test_the_readme_draws_every_transition() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    diagram = readme.split("```mermaid", 1)[1].split("```", 1)[0]
    drawn = {line.strip() for line in diagram.splitlines()}
    for (status, event), target in TRANSITIONS.items():
        assert f"{status.value} --> {target.value}: {event.value}" in drawn
