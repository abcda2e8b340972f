"""The order status machine as a table: (status, event) -> next status. Illegal transitions raise."""

from __future__ import annotations

from enum import StrEnum
from types import MappingProxyType

from domain.models import OrderStatus as S


class OrderEvent(StrEnum):
    COMPLIANCE_PASSED = "compliance_passed"
    COMPLIANCE_WARNED = "compliance_warned"
    COMPLIANCE_FAILED = "compliance_failed"
    OVERRIDDEN = "overridden"
    APPROVALS_COMPLETE = "approvals_complete"
    APPROVAL_REJECTED = "approval_rejected"
    APPROVAL_EXPIRED = "approval_expired"
    CANCELED_BEFORE_RELEASE = "canceled_before_release"
    EXPIRED_BEFORE_RELEASE = "expired_before_release"  # a day or gtd order's time came first
    RELEASED = "released"
    VENUE_ACCEPTED = "venue_accepted"
    VENUE_REJECTED = "venue_rejected"
    PARTIAL_FILL = "partial_fill"
    FILL = "fill"
    CANCEL_REQUESTED = "cancel_requested"
    CANCEL_REJECTED = "cancel_rejected"
    CANCEL_REJECTED_AFTER_FILLS = "cancel_rejected_after_fills"
    # Amend: before release the new terms go through compliance and approvals again; after
    # release the venue is asked to replace the order (FIX cancel/replace).
    AMENDED = "amended"
    REPLACE_REQUESTED = "replace_requested"
    REPLACED = "replaced"
    REPLACED_AFTER_FILLS = "replaced_after_fills"
    REPLACED_TO_FILLED = "replaced_to_filled"  # the new quantity is no more than the filled
    REPLACE_REJECTED = "replace_rejected"
    REPLACE_REJECTED_AFTER_FILLS = "replace_rejected_after_fills"
    # An amend of a working order that needs an approval level the order never had waits for
    # it, while the order works on at the venue on its current terms (no status change).
    AMENDMENT_AWAITS_APPROVAL = "amendment_awaits_approval"
    AMENDMENT_APPROVAL_GIVEN = "amendment_approval_given"
    AMENDMENT_APPROVED = "amendment_approved"
    AMENDMENT_REJECTED = "amendment_rejected"
    AMENDMENT_EXPIRED = "amendment_expired"
    AMENDMENT_WITHDRAWN = "amendment_withdrawn"
    # The venue busts or corrects a trade while the order is at the venue: its fills change.
    TRADE_BUSTED = "trade_busted"
    TRADE_BUSTED_AFTER_FILLS = "trade_busted_after_fills"
    TRADE_CORRECTED = "trade_corrected"
    TRADE_CORRECTED_TO_FILLED = "trade_corrected_to_filled"
    VENUE_CANCELED = "venue_canceled"
    VENUE_EXPIRED = "venue_expired"
    ALLOCATED = "allocated"
    SETTLEMENT_INSTRUCTED = "settlement_instructed"
    SETTLED = "settled"
    SETTLEMENT_FAILED = "settlement_failed"
    # Events that are recorded on the order without changing its status.
    ORDER_CREATED = "order_created"
    APPROVAL_GIVEN = "approval_given"
    APPROVAL_ESCALATED = "approval_escalated"
    FLAG_RAISED = "flag_raised"
    EXECUTION_APPLIED = "execution_applied"
    EXECUTION_REFUSED = "execution_refused"
    SENT_TO_VENUE = "sent_to_venue"
    CANCEL_SENT_TO_VENUE = "cancel_sent_to_venue"
    REPLACE_SENT_TO_VENUE = "replace_sent_to_venue"
    # After allocation a bust or correction changes nothing booked: middle office is flagged.
    TRADE_BUSTED_AFTER_ALLOCATION = "trade_busted_after_allocation"
    TRADE_CORRECTED_AFTER_ALLOCATION = "trade_corrected_after_allocation"
    VENUE_STATUS_CHECKED = "venue_status_checked"
    SETTLEMENT_ANSWERED = "settlement_answered"
    ORDER_CLOSED = "order_closed"


# Events that change nothing but the order's record: allowed in every status.
INFORMATIONAL = frozenset(
    {
        OrderEvent.ORDER_CREATED,
        OrderEvent.APPROVAL_GIVEN,
        OrderEvent.APPROVAL_ESCALATED,
        OrderEvent.FLAG_RAISED,
        OrderEvent.EXECUTION_APPLIED,
        OrderEvent.EXECUTION_REFUSED,
        OrderEvent.SENT_TO_VENUE,
        OrderEvent.CANCEL_SENT_TO_VENUE,
        OrderEvent.REPLACE_SENT_TO_VENUE,
        OrderEvent.AMENDMENT_AWAITS_APPROVAL,
        OrderEvent.AMENDMENT_APPROVAL_GIVEN,
        OrderEvent.AMENDMENT_APPROVED,
        OrderEvent.AMENDMENT_REJECTED,
        OrderEvent.AMENDMENT_EXPIRED,
        OrderEvent.AMENDMENT_WITHDRAWN,
        OrderEvent.TRADE_BUSTED_AFTER_ALLOCATION,
        OrderEvent.TRADE_CORRECTED_AFTER_ALLOCATION,
        OrderEvent.VENUE_STATUS_CHECKED,
        OrderEvent.SETTLEMENT_ANSWERED,
        OrderEvent.ORDER_CLOSED,
    }
)


class IllegalTransitionError(ValueError):
    """Raised when an event does not apply to an order in its current status."""

    def __init__(self, status: S, event: OrderEvent) -> None:
        super().__init__(f"event {event.value!r} is not allowed in status {status.value!r}")
        self.status = status
        self.event = event


E = OrderEvent

# Where the venue may still report on a released order: each of these accepts the same reports.
_AT_VENUE: dict[OrderEvent, S] = {
    E.PARTIAL_FILL: S.PARTIALLY_FILLED,
    E.FILL: S.FILLED,
    E.CANCEL_REQUESTED: S.PENDING_CANCEL,
    E.VENUE_CANCELED: S.CANCELED,
    E.VENUE_EXPIRED: S.EXPIRED,
}

# The venue's answer to a replace request, where it may come: the order works on (with or
# without fills), or its new quantity is already filled. A cancel requested while the replace
# was pending stays pending whatever the answer, unless the order is now filled.
_REPLACE_ANSWERS: dict[OrderEvent, S] = {
    E.REPLACED: S.WORKING,
    E.REPLACED_AFTER_FILLS: S.PARTIALLY_FILLED,
    E.REPLACED_TO_FILLED: S.FILLED,
    E.REPLACE_REJECTED: S.WORKING,
    E.REPLACE_REJECTED_AFTER_FILLS: S.PARTIALLY_FILLED,
}
_AMENDABLE_BEFORE_RELEASE = (S.PENDING_OVERRIDE, S.PENDING_APPROVAL, S.APPROVED)

TRANSITIONS: MappingProxyType[tuple[S, OrderEvent], S] = MappingProxyType(
    {
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
        # Compliance runs again at release: a new hard breach rejects the order, a new soft
        # one sends it back for an override.
        (S.APPROVED, E.COMPLIANCE_FAILED): S.COMPLIANCE_REJECTED,
        (S.APPROVED, E.COMPLIANCE_WARNED): S.PENDING_OVERRIDE,
        (S.APPROVED, E.CANCELED_BEFORE_RELEASE): S.CANCELED,
        (S.PENDING_OVERRIDE, E.EXPIRED_BEFORE_RELEASE): S.EXPIRED,
        (S.PENDING_APPROVAL, E.EXPIRED_BEFORE_RELEASE): S.EXPIRED,
        (S.APPROVED, E.EXPIRED_BEFORE_RELEASE): S.EXPIRED,
        (S.RELEASED, E.VENUE_ACCEPTED): S.WORKING,
        (S.RELEASED, E.VENUE_REJECTED): S.VENUE_REJECTED,
        **{(S.RELEASED, event): status for event, status in _AT_VENUE.items()},
        **{(S.WORKING, event): status for event, status in _AT_VENUE.items()},
        **{(S.PARTIALLY_FILLED, event): status for event, status in _AT_VENUE.items()},
        # New terms before release: compliance and the approvals they need, again.
        **{(status, E.AMENDED): S.PENDING_COMPLIANCE for status in _AMENDABLE_BEFORE_RELEASE},
        (S.WORKING, E.REPLACE_REQUESTED): S.PENDING_REPLACE,
        (S.PARTIALLY_FILLED, E.REPLACE_REQUESTED): S.PENDING_REPLACE,
        **{(S.PENDING_REPLACE, event): status for event, status in _AT_VENUE.items()},
        # A fill can cross a replace request on the wire; the order stays pending replace.
        (S.PENDING_REPLACE, E.PARTIAL_FILL): S.PENDING_REPLACE,
        # The answer may come after the order left pending_replace (a cancel request, or a
        # cancel's rejection, in between).
        **{
            (status, event): target
            for status in (S.WORKING, S.PARTIALLY_FILLED, S.PENDING_REPLACE)
            for event, target in _REPLACE_ANSWERS.items()
        },
        **{
            (S.PENDING_CANCEL, event): S.FILLED if target is S.FILLED else S.PENDING_CANCEL
            for event, target in _REPLACE_ANSWERS.items()
        },
        # Busts and corrections of a trade while the order works: it has what the fills say.
        (S.PARTIALLY_FILLED, E.TRADE_BUSTED): S.WORKING,
        (S.PARTIALLY_FILLED, E.TRADE_BUSTED_AFTER_FILLS): S.PARTIALLY_FILLED,
        (S.PARTIALLY_FILLED, E.TRADE_CORRECTED): S.PARTIALLY_FILLED,
        (S.PARTIALLY_FILLED, E.TRADE_CORRECTED_TO_FILLED): S.FILLED,
        # ... and while a cancel or replace is pending, it stays pending.
        **{
            (status, event): S.FILLED if event is E.TRADE_CORRECTED_TO_FILLED else status
            for status in (S.PENDING_CANCEL, S.PENDING_REPLACE)
            for event in (
                E.TRADE_BUSTED,
                E.TRADE_BUSTED_AFTER_FILLS,
                E.TRADE_CORRECTED,
                E.TRADE_CORRECTED_TO_FILLED,
            )
        },
        # A fill can cross a cancel request on the wire; the order stays pending cancel.
        (S.PENDING_CANCEL, E.PARTIAL_FILL): S.PENDING_CANCEL,
        (S.PENDING_CANCEL, E.FILL): S.FILLED,
        (S.PENDING_CANCEL, E.VENUE_CANCELED): S.CANCELED,
        (S.PENDING_CANCEL, E.VENUE_EXPIRED): S.EXPIRED,
        (S.PENDING_CANCEL, E.CANCEL_REJECTED): S.WORKING,
        (S.PENDING_CANCEL, E.CANCEL_REJECTED_AFTER_FILLS): S.PARTIALLY_FILLED,
        # The venue refused the order itself while a cancel of it was pending.
        (S.PENDING_CANCEL, E.VENUE_REJECTED): S.VENUE_REJECTED,
        # Done at the venue with something executed: book it.
        (S.FILLED, E.ALLOCATED): S.ALLOCATED,
        (S.CANCELED, E.ALLOCATED): S.ALLOCATED,
        (S.EXPIRED, E.ALLOCATED): S.ALLOCATED,
        (S.ALLOCATED, E.SETTLEMENT_INSTRUCTED): S.SETTLEMENT_PENDING,
        (S.SETTLEMENT_PENDING, E.SETTLED): S.SETTLED,
        (S.SETTLEMENT_PENDING, E.SETTLEMENT_FAILED): S.SETTLEMENT_FAILED,
        # A late confirmation still settles a failed instruction.
        (S.SETTLEMENT_FAILED, E.SETTLED): S.SETTLED,
    }
)

PRE_RELEASE = frozenset({S.PENDING_COMPLIANCE, S.PENDING_OVERRIDE, S.PENDING_APPROVAL, S.APPROVED})
AT_VENUE = frozenset(
    {S.RELEASED, S.WORKING, S.PARTIALLY_FILLED, S.PENDING_CANCEL, S.PENDING_REPLACE}
)
# Events by which the venue ends an order: nothing is left working there after them.
CLOSED_BY_VENUE = frozenset({E.VENUE_CANCELED, E.VENUE_EXPIRED, E.VENUE_REJECTED})
# The venue took a replace request: the order has its new terms.
REPLACED_EVENTS = frozenset({E.REPLACED, E.REPLACED_AFTER_FILLS, E.REPLACED_TO_FILLED})
# Booked, not yet closed: a bust or correction is recorded and flagged for middle office.
ALLOCATED_OPEN = frozenset({S.ALLOCATED, S.SETTLEMENT_PENDING, S.SETTLEMENT_FAILED})
DONE_AT_VENUE = frozenset({S.FILLED, S.CANCELED, S.EXPIRED, S.VENUE_REJECTED})


def next_status(status: S, event: OrderEvent) -> S:
    """Return the status an order moves to when `event` happens in `status`.

    Informational events leave the status as it is.

    Raises:
        IllegalTransitionError: the event is not allowed in this status.
    """
    if event in INFORMATIONAL:
        return status
    try:
        return TRANSITIONS[(status, event)]
    except KeyError:
        raise IllegalTransitionError(status, event) from None


def allows(status: S, event: OrderEvent) -> bool:
    """Tell whether `event` is allowed in `status`."""
    return event in INFORMATIONAL or (status, event) in TRANSITIONS


# Statuses after which nothing more happens to an order, whatever was filled.
FINAL = frozenset(
    {
        S.COMPLIANCE_REJECTED,
        S.APPROVAL_REJECTED,
        S.APPROVAL_EXPIRED,
        S.VENUE_REJECTED,
        S.SETTLED,
    }
)
# Done at the venue: final when nothing was executed, otherwise allocation follows.
_FINAL_WHEN_UNFILLED = frozenset({S.CANCELED, S.EXPIRED})

# How far along its life an order is, for "has it reached this status or a later one?".
_STAGE: MappingProxyType[S, int] = MappingProxyType(
    {
        S.PENDING_COMPLIANCE: 0,
        S.PENDING_OVERRIDE: 1,
        S.PENDING_APPROVAL: 2,
        S.APPROVED: 3,
        S.RELEASED: 4,
        S.WORKING: 5,
        S.PARTIALLY_FILLED: 6,
        S.PENDING_CANCEL: 6,
        S.PENDING_REPLACE: 6,
        S.FILLED: 7,
        S.CANCELED: 7,
        S.EXPIRED: 7,
        S.ALLOCATED: 8,
        S.SETTLEMENT_PENDING: 9,
        S.SETTLEMENT_FAILED: 10,
        S.SETTLED: 10,
        S.COMPLIANCE_REJECTED: 11,
        S.APPROVAL_REJECTED: 11,
        S.APPROVAL_EXPIRED: 11,
        S.VENUE_REJECTED: 11,
    }
)


def is_final(status: S, *, filled: bool) -> bool:
    """Tell whether an order in `status` (with or without executions) has nothing more to do."""
    return status in FINAL or (status in _FINAL_WHEN_UNFILLED and not filled)


def has_reached(status: S, wanted: frozenset[S] | set[S], *, filled: bool) -> bool:
    """Tell whether `status` is one of `wanted`, later in the life of an order, or final."""
    if status in wanted or is_final(status, filled=filled):
        return True
    return bool(wanted) and _STAGE[status] >= min(_STAGE[w] for w in wanted)
