"""An order as it stood at an instant, folded from its event log (what an approver saw then).

The read model keeps every event of an order's life with the details the workflow recorded: the
request at creation, compliance's results and the approvals they require, each approval with its
statement, the override, the venue released to, every execution with the order's cumulative and
average after it, flags, allocations and settlement answers. Folding the events up to an instant
rebuilds the order as the workflow held it then, without Temporal (whose history retention may
have removed it) and without the order's later changes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from domain.models import (
    Allocation,
    AllocationRequest,
    ApprovalGiven,
    ApprovalState,
    ComplianceResult,
    Execution,
    OrderRequest,
    OrderStatus,
    SettlementInstruction,
    SettlementStatus,
)
from domain.order import Flag, FlagKind, Order, Override, PendingAmendment, Terms
from domain.status import AT_VENUE, INFORMATIONAL
from domain.status import OrderEvent as E

# Text, not OrderEvent members, so this module does not depend on a workflow that records them.
AMENDED = "amended"  # new terms before release: compliance and approvals start over
REPLACE_REQUESTED = "replace_requested"  # details: the new terms and the new ClOrdID
# The venue took a replace: the order has the new terms (in the details) and ClOrdID.
REPLACED = frozenset({"replaced", "replaced_after_fills", "replaced_to_filled"})
REPLACE_REJECTED = frozenset({"replace_rejected", "replace_rejected_after_fills"})
# An amend at the venue waiting for approval levels, and how that wait ends.
_AMENDMENT_APPROVALS = frozenset({E.AMENDMENT_APPROVAL_GIVEN, E.AMENDMENT_APPROVED})
_AMENDMENT_ENDED = frozenset({E.AMENDMENT_REJECTED, E.AMENDMENT_EXPIRED, E.AMENDMENT_WITHDRAWN})
_COMPLIANCE_EVENTS = frozenset({E.COMPLIANCE_PASSED, E.COMPLIANCE_WARNED, E.COMPLIANCE_FAILED})
_APPROVAL_EVENTS = frozenset({E.APPROVAL_GIVEN, E.APPROVALS_COMPLETE})


class LoggedEvent(BaseModel):
    """One entry of an order's event log as the read model keeps it.

    `kind` and `status` stay text, so that events added after this code (or by a newer
    workflow) are folded as far as they are understood rather than refused.
    """

    model_config = ConfigDict(frozen=True)

    seq: int
    at: datetime
    kind: str
    actor: str
    status: str
    reason: str = ""
    details: dict[str, Any] = Field(default_factory=dict)


class NoCreationEventError(ValueError):
    """The log does not start with the order's creation, so there is nothing to fold from."""


class BeforeCreationError(ValueError):
    """The instant asked for is before the order was created."""

    def __init__(self, created_at: datetime) -> None:
        super().__init__(f"the order did not exist yet; it was created at {created_at.isoformat()}")
        self.created_at = created_at


def order_as_of(
    order_id: str,
    events: Iterable[LoggedEvent],
    as_of: datetime,
    settlements: Sequence[SettlementInstruction] = (),
) -> Order:
    """Return the order as it stood at `as_of`: its log folded up to that instant.

    Args:
        order_id: The order's id.
        events: Its event log (any order; folded by sequence number).
        as_of: The instant, timezone-aware. Events at exactly this instant count; an instant
            after the last event gives the order as the log last shows it.
        settlements: The order's settlement instructions as instructed (their terms); which
            exist at `as_of`, and their status then, come from the log.

    Raises:
        ValueError: `as_of` carries no timezone.
        NoCreationEventError: the log does not begin with `order_created`.
        BeforeCreationError: `as_of` is before the order's creation.
    """
    if as_of.tzinfo is None or as_of.utcoffset() is None:
        raise ValueError("as_of must carry a timezone offset")
    log = sorted(events, key=lambda e: e.seq)
    if not log or log[0].kind != E.ORDER_CREATED:
        raise NoCreationEventError("the order's event log does not begin with its creation")
    created = log[0]
    if as_of < created.at:
        raise BeforeCreationError(created.at)
    fold = _Fold(_created(order_id, created), settlements)
    # The log is a sequence: the order at an instant is a prefix of it.
    for event in itertools.takewhile(lambda e: e.at <= as_of, log[1:]):
        fold.apply(event)
    return fold.order


def _created(order_id: str, event: LoggedEvent) -> Order:
    request = OrderRequest.model_validate(event.details["request"])
    return Order(
        order_id=order_id,
        request=request,
        created_by=event.actor,
        created_at=event.at,
        updated_at=event.at,
        terms=Terms(quantity=request.quantity, limit_price=request.limit_price, cl_ord_id=order_id),
        status=OrderStatus(event.status),
        leaves_quantity=request.quantity,
        last_seq=event.seq,
    )


@dataclass
class _Fold:
    """The order being folded, and what the log said that the order does not show yet."""

    order: Order
    settlements: Sequence[SettlementInstruction]
    replacing_cl_ord_id: str | None = None  # a replace asked of the venue, not yet answered

    def apply(self, event: LoggedEvent) -> None:
        kind, details = event.kind, event.details
        order = self.order
        if kind == AMENDED:
            _amended(order, details)
        elif kind == E.AMENDMENT_AWAITS_APPROVAL:
            order.amendment = _amendment(order, event)
        elif kind in _AMENDMENT_APPROVALS and order.amendment is not None:
            order.amendment.approvals.given.append(ApprovalGiven.model_validate(details))
        elif kind in _AMENDMENT_ENDED:
            order.amendment = None
        elif kind == REPLACE_REQUESTED:
            amendment, order.amendment = order.amendment, None
            if amendment is not None:  # approved: its levels are the order's now
                order.approvals.required += amendment.approvals.required
                order.approvals.given += amendment.approvals.given
            self.replacing_cl_ord_id = _text(details.get("cl_ord_id"))
            order.replacing = _replacing(order, details)
        elif kind in REPLACED:
            _replaced(order, details, self.replacing_cl_ord_id)
            self.replacing_cl_ord_id = order.replacing = None
        elif kind in REPLACE_REJECTED:
            self.replacing_cl_ord_id = order.replacing = None
        _apply(order, event, self.settlements)
        if order.status not in AT_VENUE:
            order.replacing = None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _apply(order: Order, event: LoggedEvent, settlements: Sequence[SettlementInstruction]) -> None:
    """Apply one event to the order, as the workflow did when it recorded it."""
    order.last_seq = event.seq
    order.updated_at = event.at
    order.status = OrderStatus(event.status)
    if event.kind not in INFORMATIONAL:
        order.status_actor, order.status_reason = event.actor, event.reason
    details = event.details
    kind = event.kind
    if kind in _COMPLIANCE_EVENTS:
        _compliance(order, kind, details)
    elif kind in _APPROVAL_EVENTS:
        if "level" in details and "user" in details:
            order.approvals.given.append(ApprovalGiven.model_validate(details))
        if details.get("by_policy"):
            order.approvals.by_policy = True
    elif kind == E.OVERRIDDEN:
        order.override = Override.model_validate(details)
    elif kind == E.RELEASED:
        if details.get("venue"):
            order.venue = str(details["venue"])
        _cl_ord_id(order, details)
    elif kind == E.FLAG_RAISED:
        _flag(order, event)
    elif kind == E.ALLOCATED:
        order.allocations = [Allocation.model_validate(a) for a in details.get("allocations", [])]
    elif kind == E.SETTLEMENT_INSTRUCTED:
        # In the order the workflow instructed them (its allocations' order).
        by_id = {s.settlement_id: s for s in settlements}
        order.settlements = [
            by_id[str(settlement_id)].model_copy(
                update={
                    "status": SettlementStatus.INSTRUCTED,
                    "status_reason": "",
                    "status_at": None,
                }
            )
            for settlement_id in details.get("settlement_ids", [])
            if str(settlement_id) in by_id
        ]
    elif kind == E.SETTLEMENT_ANSWERED:
        _settlement_answer(order, event, settlements)
    elif kind == E.ORDER_CLOSED:
        order.closed = True
    if "exec_id" in details and "exec_type" in details:
        # Every applied execution report records the execution, the order's cumulative and
        # average after it, whichever event it caused.
        order.add_execution(Execution.model_validate(details))


def _decimal(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def _compliance(order: Order, kind: str, details: dict[str, Any]) -> None:
    """Keep what a compliance decision recorded: results, notional and the approvals required."""
    if kind == E.COMPLIANCE_WARNED:
        # A new soft breach (at release) needs a new override; at creation there was none yet.
        order.override = None
    if "results" not in details:
        return  # compliance could not run: nothing was judged
    order.compliance = [ComplianceResult.model_validate(r) for r in details["results"]]
    order.notional = _decimal(details.get("notional"))
    order.currency = details.get("currency")
    approvals = order.approvals
    matrix = str(details.get("approval_matrix", ""))
    if "rules_version" in details:
        # Judged on the fund: the approval matrix valued the order's size notional.
        approvals.notional, approvals.currency = order.notional, order.currency
    elif "approval_notional" in details:
        approvals.notional = _decimal(details["approval_notional"])
        approvals.currency = details.get("approval_currency")
    else:
        matrix = ""
    if matrix:
        approvals.rules = [str(r) for r in details.get("approval_rules", [])]
        approvals.matrix_version = matrix.rpartition("@")[2]
    if "approvals_required" in details:
        approvals.required = [str(level) for level in details["approvals_required"]]


def _cl_ord_id(order: Order, details: dict[str, Any]) -> None:
    cl_ord_id = details.get("cl_ord_id")
    if cl_ord_id and cl_ord_id != order.terms.cl_ord_id:
        order.terms.previous_cl_ord_ids.append(order.terms.cl_ord_id)
        order.terms.cl_ord_id = str(cl_ord_id)


def _new_terms(order: Order, details: dict[str, Any]) -> None:
    """Take the order's new quantity and limit from an event's details (absent: unchanged)."""
    _take_terms(order.terms, order.filled_quantity, details)


def _take_terms(terms: Terms, filled: Decimal, details: dict[str, Any]) -> None:
    if details.get("quantity") is not None:
        # Never below what is already filled, as the workflow keeps it.
        terms.quantity = max(Decimal(str(details["quantity"])), filled)
    if "limit_price" in details:
        terms.limit_price = _decimal(details["limit_price"])
    if "allocations" in details:
        shares = details["allocations"]
        terms.allocations = (
            None if shares is None else [AllocationRequest.model_validate(a) for a in shares]
        )


def _amended(order: Order, details: dict[str, Any]) -> None:
    """New terms before release: compliance judges them again, the approvals start over."""
    _new_terms(order, details)
    order.leaves_quantity = max(order.terms.quantity - order.filled_quantity, Decimal(0))
    order.override = None
    order.approvals = ApprovalState()


def _amendment(order: Order, event: LoggedEvent) -> PendingAmendment:
    """The amend the event says waits for approval: its terms, levels and deadline."""
    details = event.details
    terms = order.terms.model_copy(deep=True)
    _take_terms(terms, order.filled_quantity, details)
    expire_at = details.get("expire_at")
    notional, currency = _decimal(details.get("notional")), _text(details.get("currency"))
    return PendingAmendment(
        terms=terms,
        requested_by=event.actor,
        requested_at=event.at,
        reason=event.reason,
        approvals=ApprovalState(
            required=[str(level) for level in details.get("approvals_required", [])],
            rules=[str(rule) for rule in details.get("approval_rules", [])],
            matrix_version=str(details.get("matrix_version", "")),
            notional=notional,
            currency=currency,
        ),
        notional=notional,
        currency=currency,
        expire_at=None if expire_at is None else datetime.fromisoformat(str(expire_at)),
        compliance=[ComplianceResult.model_validate(r) for r in details.get("results", [])],
    )


def _replacing(order: Order, details: dict[str, Any]) -> Terms:
    """The terms a replace request asked the venue for, under its new ClOrdID."""
    terms = order.terms.model_copy(deep=True)
    _take_terms(terms, order.filled_quantity, details)
    cl_ord_id = _text(details.get("cl_ord_id"))
    if cl_ord_id:
        terms.previous_cl_ord_ids.append(terms.cl_ord_id)
        terms.cl_ord_id = cl_ord_id
    return terms


def _replaced(order: Order, details: dict[str, Any], cl_ord_id: str | None) -> None:
    """The venue replaced the order: the new terms, under the ClOrdID the request named.

    The report that says so carries the execution too (leaves and all), applied after this.
    """
    _new_terms(order, details)
    _cl_ord_id(order, {"cl_ord_id": details.get("cl_ord_id") or cl_ord_id})


def _flag(order: Order, event: LoggedEvent) -> None:
    if event.details.get("flag") == FlagKind.APPROVAL_ESCALATED and order.amendment is not None:
        order.amendment.escalated = True
    try:
        kind = FlagKind(str(event.details.get("flag")))
    except ValueError:
        return  # a flag of a kind this code does not know
    ref = str(event.details.get("ref") or "")
    order.flags.append(Flag(kind=kind, message=event.reason, at=event.at, ref=ref))


def _settlement_answer(
    order: Order, event: LoggedEvent, instructed: Sequence[SettlementInstruction]
) -> None:
    """Apply the back office's answer on one instruction.

    The answer's own time is kept on the instruction's row only for its latest answer; earlier
    answers show the time the order took them.
    """
    settlement_id = event.details.get("settlement_id")
    try:
        status = SettlementStatus(str(event.details.get("status")))
    except ValueError:
        return
    latest = {s.settlement_id: s for s in instructed}.get(str(settlement_id))
    at = event.at
    if latest is not None and (latest.status, latest.status_reason) == (status, event.reason):
        at = latest.status_at or at
    for index, instruction in enumerate(order.settlements):
        if instruction.settlement_id == settlement_id:
            order.settlements[index] = instruction.model_copy(
                update={"status": status, "status_reason": event.reason, "status_at": at}
            )


def parse_events(rows: Iterable[Any]) -> list[LoggedEvent]:
    """Return the read model's event rows (objects with the fields of `LoggedEvent`) as events."""
    return [LoggedEvent.model_validate(row, from_attributes=True) for row in rows]
