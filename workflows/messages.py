"""Inputs and results of the order workflow, its signals, updates and queries.

One model per message, so fields can be added without breaking orders already running.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, Field

from domain.executions import ExecutionReport
from domain.models import OrderRequest, OrderStatus, SettlementStatus


class OrderTimeouts(BaseModel):
    """How long human steps may wait; fixed at creation so a running order keeps its terms."""

    approval_escalate_after: timedelta = timedelta(hours=4)
    approval_expire_after: timedelta = timedelta(hours=24)
    # After the settlement date passes unconfirmed the order is flagged failed; it still waits
    # this long for a late confirmation before it closes.
    late_settlement_grace: timedelta = timedelta(days=30)


class OrderWorkflowInput(BaseModel):
    order_id: str
    request: OrderRequest
    created_by: str
    back_office_task_queue: str = "back-office"
    timeouts: OrderTimeouts = Field(default_factory=OrderTimeouts)


class OrderWorkflowResult(BaseModel):
    order_id: str
    status: OrderStatus


class PolicyGrant(BaseModel):
    """A permission Casbin granted the caller, and the policy rule that granted it (for the audit)."""

    permission: str
    policy: list[str] = Field(default_factory=list)


class AwaitComplianceInput(BaseModel):
    """No fields yet; a model so fields can be added without breaking running orders."""


class ApproveInput(BaseModel):
    user: str
    comment: str = ""
    grants: list[PolicyGrant] = Field(
        default_factory=list, description="Approval levels the caller holds in the fund."
    )


class RejectInput(BaseModel):
    user: str
    reason: str
    grants: list[PolicyGrant] = Field(default_factory=list)


class OverrideInput(BaseModel):
    user: str
    justification: str
    policy: list[str] = Field(default_factory=list)


class ReleaseInput(BaseModel):
    user: str
    venue: str
    policy: list[str] = Field(default_factory=list)


class CancelInput(BaseModel):
    user: str
    reason: str = ""
    policy: list[str] = Field(default_factory=list)


class ExecutionReportInput(BaseModel):
    report: ExecutionReport
    reported_by: str


class SettlementUpdateInput(BaseModel):
    settlement_id: str
    status: SettlementStatus
    reason: str = ""
    user: str
    at: datetime
