"""Request and response bodies of the HTTP API that are not domain types themselves."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from domain.models import (
    Allocation,
    AllocationRequest,
    ApprovalState,
    ComplianceOutcome,
    ComplianceResult,
    Execution,
    OrderState,
    OrderStatus,
    OrderType,
    PositiveDecimal,
    SettlementInstruction,
    Side,
    TimeInForce,
    tidy,
)
from domain.order import AmendmentSummary, Order, Override, PendingAmendment, Terms

# Stored decimals carry the column's scale (1000.000000000000); show them as entered (1000).
Amount = Annotated[Decimal, AfterValidator(tidy)]


class ApproveBody(BaseModel):
    comment: str = Field(default="", max_length=2000)


class RejectBody(BaseModel):
    reason: str = Field(min_length=1, max_length=2000)


class OverrideBody(BaseModel):
    justification: str = Field(min_length=1, max_length=4000)
    rules: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        min_length=1, max_length=100, description="Every warned rule the override accepts."
    )


class ReleaseBody(BaseModel):
    venue: str | None = Field(default=None, max_length=32)


class CancelBody(BaseModel):
    reason: str = Field(default="", max_length=2000)


class AmendBody(BaseModel):
    """New terms: a quantity, a limit price, or both; what is left out stays as it is."""

    model_config = ConfigDict(extra="forbid")

    quantity: PositiveDecimal | None = None
    limit_price: PositiveDecimal | None = None
    reason: str = Field(default="", max_length=2000)


class SettlementFailBody(BaseModel):
    reason: str = Field(min_length=1, max_length=2000)


class OrderSummary(BaseModel):
    order_id: str
    client_order_id: str
    fund: str
    symbol: str
    side: str
    quantity: Amount
    order_type: str
    limit_price: Amount | None
    time_in_force: str
    status: str
    created_by: str
    created_at: datetime
    updated_at: datetime
    notional: Amount | None
    currency: str | None
    approval_level: str | None
    filled_quantity: Amount
    average_price: Amount | None


class OrderPage(BaseModel):
    items: list[OrderSummary]
    next_cursor: str | None


class ApprovalGivenView(BaseModel):
    """One level already approved: by whom, when, with what comment."""

    level: str
    user: str
    at: datetime
    comment: str = ""


class ApprovalItem(BaseModel):
    """One order waiting on an approval level, as the approver's inbox (`GET /approvals`) shows it."""

    order_id: str
    client_order_id: str
    fund: str
    symbol: str
    side: Side
    quantity: Amount
    order_type: OrderType
    limit_price: Amount | None
    time_in_force: TimeInForce
    notional: Amount | None
    currency: str | None
    created_by: str
    created_at: datetime
    approval_level: str = Field(description="The level the order waits on.")
    approvals_required: list[str] = Field(description="Every level it needs, in approval order.")
    approvals_given: list[ApprovalGivenView] = Field(description="The levels approved so far.")
    waiting_since: datetime = Field(description="When the pending level started waiting.")
    waiting_seconds: int = Field(ge=0, description="How long it has waited, as of the answer.")
    escalated: bool = Field(description="The approval is past its escalation time.")
    expire_at: datetime | None = Field(description="When the approval expires, where known.")
    may_decide: bool = Field(
        description="The caller may approve or reject the pending level; false for an order "
        "escalated to the caller as the next approver up, shown for information."
    )
    compliance_outcome: ComplianceOutcome | None = Field(
        description="The worst rule result: pass or warn (a warned order was overridden)."
    )
    compliance: list[ComplianceResult]
    version: int
    amendment: AmendmentSummary | None = Field(
        default=None,
        description="The level decides an amend of a working order: its terms beside the "
        "working ones (`quantity` and `limit_price` above are the working terms).",
    )


class ApprovalPage(BaseModel):
    items: list[ApprovalItem]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: last.")


class HistoryEntry(BaseModel):
    """One entry of the audit timeline; `seq`, `status` and `reason` come from the order's event log."""

    at: datetime
    event: str
    actor: str | None
    details: dict[str, Any]
    seq: int | None = None
    status: str | None = None
    reason: str = ""


class RefusedAction(BaseModel):
    """An action on the order that was refused, and why (the audit of refused attempts)."""

    at: datetime
    user: str
    action: str
    status: int
    code: str
    message: str
    via: str


class PositionView(BaseModel):
    fund: str
    account: str
    symbol: str
    quantity: Amount
    average_cost: Amount
    reference_price: Amount | None
    market_value: Amount | None
    cash_flow: Amount


class SettlementView(BaseModel):
    settlement_id: str
    order_id: str
    fund: str
    account: str
    symbol: str
    side: str
    quantity: Amount
    price: Amount
    gross_amount: Amount
    currency: str
    trade_date: date
    settlement_date: date
    status: str
    status_reason: str
    instructed_at: datetime
    status_at: datetime | None


class Accepted(BaseModel):
    status: str
    detail: str = ""


class FlagView(BaseModel):
    """Something about the order that needs a person's attention."""

    kind: str
    message: str
    at: datetime | None = None
    ref: str = ""


class PendingAmendmentView(BaseModel):
    """An amend of a working order that waits for approval levels the order never had.

    The order works on at the venue on its current terms until every level approves; then the
    venue is asked to replace it (`pending_replace`).
    """

    quantity: Decimal
    limit_price: Decimal | None
    requested_by: str
    requested_at: datetime
    reason: str
    approvals: ApprovalState = Field(description="`required`: the levels the new terms add.")
    notional: Decimal | None
    currency: str | None
    escalated: bool
    expire_at: datetime | None
    compliance: list[ComplianceResult] = Field(description="Compliance's results on the new terms.")

    @classmethod
    def of(cls, amendment: PendingAmendment) -> PendingAmendmentView:
        return cls(
            quantity=amendment.terms.quantity,
            limit_price=amendment.terms.limit_price,
            approvals=amendment.approvals,
            **amendment.model_dump(
                include={
                    "requested_by",
                    "requested_at",
                    "reason",
                    "notional",
                    "currency",
                    "escalated",
                    "expire_at",
                    "compliance",
                }
            ),
        )


class ReplacePendingView(BaseModel):
    """The terms a replace request asks the venue for, under a new ClOrdID."""

    quantity: Decimal
    limit_price: Decimal | None
    cl_ord_id: str
    orig_cl_ord_id: str | None

    @classmethod
    def of(cls, terms: Terms) -> ReplacePendingView:
        previous = terms.previous_cl_ord_ids
        return cls(
            quantity=terms.quantity,
            limit_price=terms.limit_price,
            cl_ord_id=terms.cl_ord_id,
            orig_cl_ord_id=previous[-1] if previous else None,
        )


class OrderPublic(BaseModel):
    """The live order as `GET /orders/{id}` and every action on an order answer with it."""

    order_id: str
    client_order_id: str
    fund: str
    symbol: str
    side: Side
    quantity: Decimal
    order_type: OrderType
    limit_price: Decimal | None
    time_in_force: TimeInForce
    expire_at: datetime | None
    notes: str
    requested_allocations: list[AllocationRequest]
    status: OrderStatus
    status_actor: str
    status_reason: str
    created_by: str
    created_at: datetime
    updated_at: datetime
    venue: str | None
    cl_ord_id: str | None
    notional: Decimal | None
    currency: str | None
    compliance: list[ComplianceResult]
    override: Override | None
    approvals: ApprovalState
    filled_quantity: Decimal
    leaves_quantity: Decimal
    average_price: Decimal | None
    executions: list[Execution]
    flags: list[FlagView]
    allocations: list[Allocation]
    settlements: list[SettlementInstruction]
    version: int
    amendment: PendingAmendmentView | None = Field(
        default=None, description="An amend waiting for approval while the order works on."
    )
    replace_pending: ReplacePendingView | None = Field(
        default=None, description="The terms a replace request sent to the venue asks for."
    )

    @classmethod
    def from_order(cls, order: Order) -> OrderPublic:
        """Map the v2 workflow's order to the public view."""
        request = order.request
        return cls(
            order_id=order.order_id,
            client_order_id=request.client_order_id,
            fund=request.fund,
            symbol=request.symbol,
            side=request.side,
            quantity=order.terms.quantity,
            order_type=request.order_type,
            limit_price=order.terms.limit_price,
            time_in_force=request.time_in_force,
            expire_at=request.expire_at,
            notes=request.notes,
            requested_allocations=list(order.current_request().allocations),
            status=order.status,
            status_actor=order.status_actor,
            status_reason=order.status_reason,
            created_by=order.created_by,
            created_at=order.created_at,
            updated_at=order.updated_at,
            venue=order.venue,
            cl_ord_id=order.terms.cl_ord_id,
            notional=order.notional,
            currency=order.currency,
            compliance=order.compliance,
            override=order.override,
            approvals=order.approvals,
            filled_quantity=order.filled_quantity,
            leaves_quantity=order.leaves_quantity,
            average_price=order.average_price,
            executions=order.executions,
            flags=[
                FlagView(kind=f.kind.value, message=f.message, at=f.at, ref=f.ref)
                for f in order.flags
            ],
            allocations=order.allocations,
            settlements=order.settlements,
            version=order.version,
            amendment=None if order.amendment is None else PendingAmendmentView.of(order.amendment),
            replace_pending=None
            if order.replacing is None
            else ReplacePendingView.of(order.replacing),
        )

    @classmethod
    def from_v1(cls, state: OrderState) -> OrderPublic:
        """Map a v1 order (still running on the first workflow) to the public view."""
        override = None
        if state.override is not None:
            override = Override(
                user=str(state.override.get("user", "")),
                justification=str(state.override.get("justification", "")),
                at=datetime.fromisoformat(str(state.override["at"])),
                policy=list(state.override.get("policy", [])),
            )
        return cls(
            **state.model_dump(
                include={
                    "order_id",
                    "client_order_id",
                    "fund",
                    "symbol",
                    "side",
                    "quantity",
                    "order_type",
                    "limit_price",
                    "time_in_force",
                    "expire_at",
                    "notes",
                    "status",
                    "status_actor",
                    "status_reason",
                    "created_by",
                    "created_at",
                    "updated_at",
                    "venue",
                    "notional",
                    "currency",
                    "compliance",
                    "approvals",
                    "filled_quantity",
                    "leaves_quantity",
                    "average_price",
                    "executions",
                    "allocations",
                    "settlements",
                    "version",
                }
            ),
            requested_allocations=state.requested_allocations,
            cl_ord_id=state.order_id if state.venue else None,
            override=override,
            flags=[FlagView(kind=f.split(":", 1)[0], message=f) for f in state.flags],
        )


class ExecutionAnswer(BaseModel):
    """What the venue learns about its report: taken, a duplicate, and the order as it now stands."""

    status: str
    detail: str = ""
    order_status: OrderStatus | None = None
    filled_quantity: Decimal | None = None
    leaves_quantity: Decimal | None = None
    average_price: Decimal | None = None
    version: int | None = None


def _stated(text: str) -> str:
    """Refuse a text that says nothing (only spaces); keep it without its surrounding spaces."""
    text = text.strip()
    if not text:
        raise ValueError("must say something")
    return text


class KillSwitchBody(BaseModel):
    """`PUT /kill-switch/{fund}`: engage (true) or lift (false), and why (required both ways)."""

    engaged: bool = Field(strict=True)
    reason: Annotated[str, Field(min_length=1, max_length=2000), AfterValidator(_stated)]


class KillSwitchView(BaseModel):
    """An engaged kill switch, as `GET /kill-switch` lists it."""

    scope: str = Field(description='The fund it covers, or "*" for the whole firm.')
    engaged: bool
    engaged_by: str = Field(description="Who engaged it (last, if engaged again).")
    reason: str
    engaged_at: datetime = Field(description="Since when it has been engaged.")
    updated_at: datetime


class KillSwitchCancelFailure(BaseModel):
    """An order in scope whose cancel was refused (it filled meanwhile, say) or did not get through."""

    order_id: str
    fund: str
    status: int = Field(description="The HTTP status the cancel would have answered.")
    code: str
    message: str


class KillSwitchSweep(BaseModel):
    """What engaging did to the orders in scope at the venue."""

    orders_at_venue: int = Field(
        description="Orders in scope the read model showed released, working, partially filled "
        "or pending replace when the sweep looked."
    )
    cancel_requested: list[str] = Field(
        description="Orders whose cancel the order took: they are pending cancel (or canceled)."
    )
    failed: list[KillSwitchCancelFailure]


class KillSwitchAnswer(BaseModel):
    """The answer to `PUT /kill-switch/{fund}`: the switch as it now stands, and the sweep."""

    scope: str
    engaged: bool
    by: str = Field(description="Who made this change.")
    reason: str = Field(description="Why, as given with this change.")
    at: datetime
    engaged_by: str | None = Field(description="While engaged: who engaged it (last).")
    engaged_at: datetime | None = Field(description="While engaged: since when.")
    sweep: KillSwitchSweep | None = Field(description="Engaging only: the orders canceled.")


class KillSwitchEvent(BaseModel):
    """One change of a kill switch, from its audit trail."""

    scope: str
    engaged: bool
    by: str
    reason: str
    at: datetime


class AuditRecord(BaseModel):
    """One row of a fund's tamper-evident audit chain (`GET /audit`), with its chain hashes."""

    fund: str
    position: int = Field(description="The row's place in its fund's chain, from 1.")
    order_id: str
    seq: int = Field(description="The event's sequence number in the order's log.")
    kind: str = Field(description="The event, as the order's timeline names it.")
    actor: str
    at: datetime
    status: str = Field(description="The order's status after the event.")
    reason: str
    details: dict[str, Any]
    prev_hash: str
    hash: str


class AuditPage(BaseModel):
    items: list[AuditRecord] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: last.")
