"""Inputs and results of the order workflow, its signals, updates and queries.

One model per message, so fields can be added without breaking orders already running.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel, Field

from domain.authority import SignedAuthority
from domain.executions import ExecutionReport, ReportVerdict
from domain.models import OrderRequest, OrderStatus, SettlementStatus
from domain.order import Order


class OrderTimeouts(BaseModel):
    """How long human steps may wait; fixed at creation so a running order keeps its terms."""

    approval_escalate_after: timedelta = timedelta(hours=4)
    approval_expire_after: timedelta = timedelta(hours=24)
    # The two above, or (false) the fund's own times in the approval matrix. Orders from before
    # the matrix had times always used the two above.
    override_approval_deadlines: bool = False
    # After the settlement date passes unconfirmed the order is flagged failed; it still waits
    # this long for a late confirmation before it closes.
    late_settlement_grace: timedelta = timedelta(days=30)
    # A released order the venue has not acknowledged in this time is flagged, and the venue is
    # asked for the order's status (v2).
    venue_ack_timeout: timedelta = timedelta(seconds=60)


class VenueCommandKind(StrEnum):
    SUBMIT = "submit"
    CANCEL = "cancel"
    STATUS = "status"
    REPLACE = "replace"
    RECONCILE = "reconcile"


class VenueCommand(BaseModel):
    """Something the venue phase must send, one at a time and in order (v2)."""

    kind: VenueCommandKind
    venue: str
    cl_ord_id: str
    requested_by: str = "system"
    orig_cl_ord_id: str = Field(
        default="", description="A replace or cancel request: the ClOrdID of the order it names."
    )


class CarriedOrder(BaseModel):
    """What a long-lived order takes into its next run (continue-as-new, v2)."""

    order: Order
    commands: list[VenueCommand] = Field(default_factory=list)
    projected_executions: int = 0
    allocations_projected: bool = False
    settlement_statuses_projected: dict[str, SettlementStatus] = Field(default_factory=dict)


class OrderWorkflowInput(BaseModel):
    order_id: str
    request: OrderRequest
    created_by: str
    back_office_task_queue: str = "back-office"
    timeouts: OrderTimeouts = Field(default_factory=OrderTimeouts)
    carried: CarriedOrder | None = None
    notify_approvers: bool = Field(
        default=False,
        description="Post approval notices to chat (set when the OMS has a chat webhook).",
    )
    # Temporal caps a run at 2,000 Updates; a long-lived order continues as new well before.
    updates_before_continue_as_new: int = 1500


class OrderWorkflowResult(BaseModel):
    order_id: str
    status: OrderStatus


class PolicyGrant(BaseModel):
    """A permission Casbin granted the caller, and the policy rule that granted it (for the audit)."""

    permission: str
    policy: list[str] = Field(default_factory=list)


class AwaitComplianceInput(BaseModel):
    """The creator's word, signed by the API: an order no API attested never trades."""

    authority: SignedAuthority | None = None


class ApproveInput(BaseModel):
    user: str
    comment: str = ""
    grants: list[PolicyGrant] = Field(
        default_factory=list, description="v1 only: approval levels the caller holds in the fund."
    )
    authorities: list[SignedAuthority] = Field(
        default_factory=list,
        description="One signed statement per level the caller holds; the order takes the one "
        "for the level pending.",
    )


class RejectInput(BaseModel):
    user: str
    reason: str
    grants: list[PolicyGrant] = Field(default_factory=list)
    authorities: list[SignedAuthority] = Field(default_factory=list)


class OverrideInput(BaseModel):
    user: str
    justification: str
    rules: list[str] = Field(
        default_factory=list, description="Every warned rule the override accepts, by name."
    )
    policy: list[str] = Field(default_factory=list)
    authority: SignedAuthority | None = None


class ReleaseInput(BaseModel):
    user: str
    venue: str
    policy: list[str] = Field(default_factory=list)
    authority: SignedAuthority | None = None


class CancelInput(BaseModel):
    user: str
    reason: str = ""
    policy: list[str] = Field(default_factory=list)
    authority: SignedAuthority | None = None


class AmendInput(BaseModel):
    """New terms for the order: a quantity, a limit price, or both (None: unchanged)."""

    user: str
    quantity: Decimal | None = None
    limit_price: Decimal | None = None
    reason: str = ""
    policy: list[str] = Field(default_factory=list)
    authority: SignedAuthority | None = None


class ReconcileInput(BaseModel):
    """Compare the order with its venue's view (the venue adapter restarted, or ops asked)."""

    venue: str
    requested_by: str = "system"


class ExecutionReportInput(BaseModel):
    report: ExecutionReport
    reported_by: str
    venues: list[str] | None = Field(
        default=None,
        description="The venues the reporter speaks for, as the API knows them (None: not "
        "checked, e.g. the in-process simulator's own reports).",
    )


class ExecutionReportResult(BaseModel):
    """The order's one decision about an execution report, as the venue learns it (v2)."""

    verdict: ReportVerdict
    reason: str = ""
    field: str | None = None
    status: OrderStatus
    filled_quantity: Decimal
    leaves_quantity: Decimal
    average_price: Decimal | None
    version: int


class SettlementUpdateInput(BaseModel):
    settlement_id: str
    status: SettlementStatus
    reason: str = ""
    user: str
    at: datetime
