"""The order as the v2 workflow holds it: the request as sent, current terms, status, and its event log.

Every change to an order appends an `OrderEventRecord` (sequence number, time, kind, actor,
reason, details); the status follows from the transition table in `domain.status`. The event
log is what the read model projects and what the audit timeline shows.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from domain.authority import Authority
from domain.compliance import worst_outcome
from domain.models import (
    Allocation,
    AllocationRequest,
    ApprovalGiven,
    ApprovalState,
    ComplianceOutcome,
    ComplianceResult,
    Execution,
    Instrument,
    OrderRequest,
    OrderState,
    OrderStatus,
    OrderType,
    SettlementInstruction,
    Side,
    TimeInForce,
)
from domain.status import INFORMATIONAL, OrderEvent, is_final, next_status

# A long-lived order carries only its newest executions into a new run (continue-as-new); the
# read model keeps them all, and the exec ids seen are always carried for duplicate detection.
EXECUTIONS_CARRIED = 50


class FlagKind(StrEnum):
    """Why an order needs a person's attention."""

    APPROVAL_ESCALATED = "approval_escalated"
    EXECUTION_REFUSED = "execution_refused"
    VENUE_UNCONFIRMED = "venue_unconfirmed"
    VENUE_ACK_OVERDUE = "venue_ack_overdue"
    CANCEL_NOT_SENT = "cancel_not_sent"
    REPLACE_NOT_SENT = "replace_not_sent"
    VENUE_MISMATCH = "venue_mismatch"
    TRADE_CHANGED_AFTER_ALLOCATION = "trade_changed_after_allocation"
    SETTLEMENT_NOT_CONFIRMED = "settlement_not_confirmed"


class Flag(BaseModel):
    """Something about the order a trader or compliance should look at."""

    model_config = ConfigDict(frozen=True)

    kind: FlagKind
    message: str
    at: datetime
    ref: str = Field(default="", description="What the flag is about: a level, an exec id, ...")


class Override(BaseModel):
    """A compliance officer's acceptance of the order's soft breaches."""

    model_config = ConfigDict(frozen=True)

    user: str
    justification: str
    at: datetime
    policy: list[str] = Field(default_factory=list)
    rules: list[str] = Field(default_factory=list, description="The warned rules it accepts.")


class OrderEventRecord(BaseModel):
    """One entry of the order's event log."""

    model_config = ConfigDict(frozen=True)

    seq: int = Field(ge=1)
    at: datetime
    kind: OrderEvent
    actor: str
    status: OrderStatus = Field(description="The order's status after this event.")
    reason: str = ""
    details: dict[str, JsonValue] = Field(default_factory=dict)


class Terms(BaseModel):
    """What the order currently asks of the venue, and the ClOrdID chain that carried it there."""

    quantity: Decimal
    limit_price: Decimal | None
    cl_ord_id: str
    previous_cl_ord_ids: list[str] = Field(default_factory=list)
    allocations: list[AllocationRequest] | None = Field(
        default=None,
        description="The accounts' shares of an amended quantity (None: as the request asked).",
    )


class PendingAmendment(BaseModel):
    """An amend of an order working at a venue, waiting for approval levels the order never had.

    The order works on at the venue on its current terms meanwhile; once every level approves
    (and compliance agrees again) the venue is asked to replace it with `terms`.
    """

    terms: Terms
    requested_by: str
    requested_at: datetime
    reason: str = ""
    attestation: dict[str, JsonValue] = Field(
        default_factory=dict, description="The amend's signed statement, for the replace request."
    )
    approvals: ApprovalState = Field(description="`required`: the levels the new terms add.")
    notional: Decimal | None = None
    currency: str | None = None
    escalate_at: datetime | None = None
    expire_at: datetime | None = None
    escalated: bool = False
    compliance: list[ComplianceResult] = Field(
        default_factory=list, description="Compliance's results on the new terms."
    )

    @property
    def waiting_since(self) -> datetime:
        """Return when the pending level started waiting: the request, or the last approval."""
        return max([self.requested_at, *(g.at for g in self.approvals.given)])


def amendment_subject(quantity: Decimal | None, limit_price: Decimal | None) -> str:
    """Return what an amend's signed statement names: the new terms, so it covers no others."""
    return f"quantity={'' if quantity is None else quantity};limit_price={'' if limit_price is None else limit_price}"


class Order(BaseModel):
    """The live order: request as sent, current terms, status, and the event log."""

    order_id: str
    request: OrderRequest
    created_by: str
    created_at: datetime
    updated_at: datetime
    terms: Terms
    status: OrderStatus = OrderStatus.PENDING_COMPLIANCE
    status_actor: str = ""
    status_reason: str = ""
    venue: str | None = None
    instrument: Instrument | None = None
    notional: Decimal | None = None
    currency: str | None = None
    compliance: list[ComplianceResult] = Field(default_factory=list)
    override: Override | None = None
    approvals: ApprovalState = Field(default_factory=ApprovalState)
    time_in_force_ends_at: datetime | None = Field(
        default=None,
        description="When a day order's session closes (or a gtd order's expire_at): an order "
        "not released by then expires.",
    )
    expiring: bool = Field(
        default=False,
        description="Its time in force ended at the venue: the cancel sent for it ends it expired.",
    )
    approval_escalate_at: datetime | None = None
    approval_expire_at: datetime | None = None
    filled_quantity: Decimal = Decimal(0)
    leaves_quantity: Decimal = Decimal(0)
    average_price: Decimal | None = None
    executions: list[Execution] = Field(default_factory=list)
    execution_count: int = 0
    last_fill_at: datetime | None = Field(default=None, description="When the last fill arrived.")
    exec_ids_seen: list[str] = Field(default_factory=list)
    refused_reports: dict[str, str] = Field(
        default_factory=dict, description="exec_id -> why the report was refused (once each)."
    )
    flags: list[Flag] = Field(default_factory=list)
    allocations: list[Allocation] = Field(default_factory=list)
    settlements: list[SettlementInstruction] = Field(default_factory=list)
    venue_ack_due_at: datetime | None = None
    replacing: Terms | None = Field(
        default=None, description="The terms a replace request sent to the venue asks for."
    )
    amendment: PendingAmendment | None = Field(
        default=None, description="An amend at the venue waiting for approval levels."
    )
    cl_ord_ids_issued: int = Field(
        default=0,
        description="ClOrdIDs issued for replace (`-R{n}`) and cancel (`-C{n}`) requests.",
    )
    settlement_grace_until: datetime | None = None
    closed: bool = Field(default=False, description="Nothing more will happen to the order.")
    creation: Authority | None = Field(
        default=None, description="The API's signed word that the creator may create it."
    )
    approvals_notified: list[str] = Field(
        default_factory=list,
        description="Approval notices sent to chat: a level, or `level:escalated`.",
    )
    authority_nonces: list[str] = Field(
        default_factory=list, description="Statements of authority used (each is used once)."
    )
    events: list[OrderEventRecord] = Field(
        default_factory=list, description="The log, or after continue-as-new its unprojected tail."
    )
    last_seq: int = 0

    @classmethod
    def new(cls, order_id: str, request: OrderRequest, created_by: str, at: datetime) -> Order:
        """Return a just-created order, its creation recorded as the first event."""
        order = cls(
            order_id=order_id,
            request=request,
            created_by=created_by,
            created_at=at,
            updated_at=at,
            terms=Terms(
                quantity=request.quantity, limit_price=request.limit_price, cl_ord_id=order_id
            ),
            leaves_quantity=request.quantity,
        )
        order.record(
            OrderEvent.ORDER_CREATED,
            at=at,
            actor=created_by,
            details={"request": request.model_dump(mode="json")},
        )
        return order

    @property
    def version(self) -> int:
        """Return the order's version: the sequence number of its latest event."""
        return self.last_seq

    @property
    def fund(self) -> str:
        return self.request.fund

    @property
    def is_done(self) -> bool:
        """Tell whether the order's status leaves nothing more to do but close it."""
        return is_final(self.status, filled=self.filled_quantity > 0)

    def current_request(self, terms: Terms | None = None) -> OrderRequest:
        """Return the request as amended: its current (or `terms`') quantity, price and shares."""
        terms, request = terms or self.terms, self.request
        if terms.quantity == request.quantity and terms.limit_price == request.limit_price:
            return request
        allocations = request.allocations if terms.allocations is None else terms.allocations
        return OrderRequest.model_validate(
            {
                **request.model_dump(),
                "quantity": terms.quantity,
                "limit_price": terms.limit_price,
                "allocations": [a.model_dump() for a in allocations],
            }
        )

    def without_events(self) -> Order:
        """Return a copy without the event log (an answer to a person need not carry it)."""
        return self.model_copy(update={"events": []})

    def record(
        self,
        kind: OrderEvent,
        *,
        at: datetime,
        actor: str = "system",
        reason: str = "",
        details: dict[str, JsonValue] | None = None,
    ) -> OrderEventRecord:
        """Append an event and apply it to the status.

        Raises:
            IllegalTransitionError: the event is not allowed in the order's status.
        """
        status = next_status(self.status, kind)
        event = OrderEventRecord(
            seq=self.last_seq + 1,
            at=at,
            kind=kind,
            actor=actor,
            status=status,
            reason=reason,
            details=details or {},
        )
        self.events.append(event)
        self.last_seq = event.seq
        self.updated_at = at
        if kind not in INFORMATIONAL:
            self.status, self.status_actor, self.status_reason = status, actor, reason
        return event

    def raise_flag(self, kind: FlagKind, message: str, *, at: datetime, ref: str = "") -> Flag:
        """Flag the order for attention and record that as an event."""
        flag = Flag(kind=kind, message=message, at=at, ref=ref)
        self.flags.append(flag)
        self.record(
            OrderEvent.FLAG_RAISED,
            at=at,
            reason=message,
            details={"flag": kind.value, "ref": ref},
        )
        return flag

    def add_execution(self, execution: Execution) -> None:
        """Keep an applied execution and the order's filled, leaves and average price from it."""
        self.executions.append(execution)
        self.execution_count += 1
        self.exec_ids_seen.append(execution.exec_id)
        self.filled_quantity = execution.cumulative_quantity
        self.leaves_quantity = execution.leaves_quantity
        self.average_price = execution.average_price
        if execution.last_quantity > 0:
            self.last_fill_at = execution.received_at

    def carried(self, projected_seq: int) -> Order:
        """Return the order as a new run carries it: the unprojected events, the newest executions."""
        return self.model_copy(
            update={
                "events": [e for e in self.events if e.seq > projected_seq],
                "executions": self.executions[-EXECUTIONS_CARRIED:],
            },
            deep=True,
        )


class OrderSummary(BaseModel):
    """The slim order row that lists, searches and inboxes read (the read model's `orders`)."""

    model_config = ConfigDict(frozen=True)

    order_id: str
    client_order_id: str
    fund: str
    symbol: str
    side: Side
    quantity: Decimal
    order_type: OrderType
    limit_price: Decimal | None
    time_in_force: TimeInForce
    status: OrderStatus
    created_by: str
    created_at: datetime
    updated_at: datetime
    notional: Decimal | None
    currency: str | None
    approval_level: str | None
    approved_by: str
    filled_quantity: Decimal
    average_price: Decimal | None
    venue: str | None
    version: int
    workflow_type: str
    # What the approvals inbox shows without asking the workflow.
    approvals_required: list[str] = Field(default_factory=list)
    approvals_given: list[ApprovalGiven] = Field(default_factory=list)
    approval_waiting_since: datetime | None = Field(
        default=None, description="When the pending level started waiting (None: none pending)."
    )
    approval_escalated: bool = Field(
        default=False, description="Pending approval, and past its escalation time."
    )
    approval_expire_at: datetime | None = None
    compliance_outcome: ComplianceOutcome | None = Field(
        default=None, description="The worst rule result; None before compliance has run."
    )
    compliance_results: list[ComplianceResult] = Field(default_factory=list)
    amendment: AmendmentSummary | None = Field(
        default=None, description="An amend at the venue that the pending level decides."
    )


class AmendmentSummary(BaseModel):
    """What an approver of an amend sees of it: the new terms beside the ones working now."""

    model_config = ConfigDict(frozen=True)

    quantity: Decimal
    limit_price: Decimal | None
    working_quantity: Decimal
    working_limit_price: Decimal | None
    notional: Decimal | None
    requested_by: str
    requested_at: datetime
    reason: str = ""


def summarise(order: Order, workflow_type: str) -> OrderSummary:
    """Return the slim row of `order` as the read model stores it."""
    request = order.request
    pending = order.status is OrderStatus.PENDING_APPROVAL
    amendment = order.amendment
    if amendment is not None:
        return summarise(order.model_copy(update={"amendment": None}), workflow_type).model_copy(
            update=_amendment_columns(order, amendment)
        )
    return OrderSummary(
        client_order_id=request.client_order_id,
        fund=request.fund,
        symbol=request.symbol,
        side=request.side,
        quantity=order.terms.quantity,
        order_type=request.order_type,
        limit_price=order.terms.limit_price,
        time_in_force=request.time_in_force,
        version=order.version,
        workflow_type=workflow_type,
        approval_expire_at=order.approval_expire_at if pending else None,
        **order.model_dump(include=_SUMMARISED),
        **_approval_columns(
            order.status,
            order.approvals,
            entered=_entered_approval(order) if pending else None,
            escalated=any(f.kind is FlagKind.APPROVAL_ESCALATED for f in order.flags),
        ),
        **_compliance_columns(order.compliance),
    )


def summarise_v1(state: OrderState, workflow_type: str) -> OrderSummary:
    """Return the slim row of an order still running on the first workflow (v1).

    v1 keeps no event log and no expiry time: its level waits from the last approval, else the
    override, else the order's creation (its compliance check runs at once after it).
    """
    override_at = state.override.get("at") if state.override else None
    entered = datetime.fromisoformat(str(override_at)) if override_at else state.created_at
    return OrderSummary(
        workflow_type=workflow_type,
        **state.model_dump(include=_SUMMARISED | _V1_ONLY),
        **_approval_columns(
            state.status,
            state.approvals,
            entered=entered,
            escalated=any(f.startswith(FlagKind.APPROVAL_ESCALATED.value) for f in state.flags),
        ),
        **_compliance_columns(state.compliance),
    )


# Fields the live order (either workflow's) and its slim row share by name and meaning.
_SUMMARISED = {
    "order_id",
    "status",
    "created_by",
    "created_at",
    "updated_at",
    "notional",
    "currency",
    "filled_quantity",
    "average_price",
    "venue",
}
# v1 keeps the request's fields flat on the order, and its version as a field.
_V1_ONLY = {
    "version",
    "client_order_id",
    "fund",
    "symbol",
    "side",
    "quantity",
    "order_type",
    "limit_price",
    "time_in_force",
}


def _entered_approval(order: Order) -> datetime:
    """Return when the order last entered pending_approval: compliance passed, or the override.

    After continue-as-new the log holds only its unprojected tail; then the override's time,
    else the creation's (compliance runs at once after it).
    """
    for event in reversed(order.events):
        if event.status is OrderStatus.PENDING_APPROVAL and event.kind not in INFORMATIONAL:
            return event.at
    return order.override.at if order.override is not None else order.created_at


def _approval_columns(
    status: OrderStatus, approvals: ApprovalState, *, entered: datetime | None, escalated: bool
) -> dict[str, Any]:
    """Return the row's approval columns: the level waited at, since when, and who approved.

    The pending level waits from the last approval given, or else from when the order entered
    pending_approval (`entered`). Those are None, and `escalated` False, unless a level waits.
    """
    level = approvals.current_level if status is OrderStatus.PENDING_APPROVAL else None
    since = None
    if level is not None and entered is not None:
        since = max([entered, *(g.at for g in approvals.given)])
    return {
        "approval_level": level,
        "approved_by": ",".join(g.user for g in approvals.given),
        "approvals_required": list(approvals.required),
        "approvals_given": list(approvals.given),
        "approval_waiting_since": since,
        "approval_escalated": level is not None and escalated,
    }


def _amendment_columns(order: Order, amendment: PendingAmendment) -> dict[str, Any]:
    """Return the row's approval columns while an amend waits on a level (the inbox lists it)."""
    approvals = amendment.approvals
    level = approvals.current_level
    return {
        "approval_level": level,
        # Everyone who approved a level of the order: none of them decides another (the inbox
        # leaves the order out for them).
        "approved_by": ",".join(g.user for g in [*order.approvals.given, *approvals.given]),
        "approvals_required": list(approvals.required),
        "approvals_given": list(approvals.given),
        "approval_waiting_since": amendment.waiting_since if level is not None else None,
        "approval_escalated": level is not None and amendment.escalated,
        "approval_expire_at": amendment.expire_at if level is not None else None,
        # The approver judges the new terms: compliance's results on them.
        **_compliance_columns(amendment.compliance or order.compliance),
        "amendment": AmendmentSummary(
            quantity=amendment.terms.quantity,
            limit_price=amendment.terms.limit_price,
            working_quantity=order.terms.quantity,
            working_limit_price=order.terms.limit_price,
            notional=amendment.notional,
            requested_by=amendment.requested_by,
            requested_at=amendment.requested_at,
            reason=amendment.reason,
        ),
    }


def _compliance_columns(results: list[ComplianceResult]) -> dict[str, Any]:
    """Return the row's compliance columns: the worst outcome (None before any rule ran), each result."""
    return {
        "compliance_outcome": worst_outcome(results) if results else None,
        "compliance_results": list(results),
    }


class OrderProjection(BaseModel):
    """What one projection writes in one transaction: the slim row and what is new since the last."""

    summary: OrderSummary
    events: list[OrderEventRecord] = Field(default_factory=list)
    executions: list[Execution] = Field(default_factory=list)
    allocations: list[Allocation] = Field(
        default_factory=list, description="Booked (with positions) when present; idempotent."
    )
    settlements: list[SettlementInstruction] = Field(
        default_factory=list, description="Instructions whose status changed."
    )
    final: Order | None = Field(
        default=None,
        description="The order as it closed (without its log), so reads of a closed order need "
        "no Query (which would replay its whole history on a worker).",
    )
