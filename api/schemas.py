"""Request and response bodies of the HTTP API that are not domain types themselves."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field

from domain.models import tidy

# Stored decimals carry the column's scale (1000.000000000000); show them as entered (1000).
Amount = Annotated[Decimal, AfterValidator(tidy)]


class ApproveBody(BaseModel):
    comment: str = Field(default="", max_length=2000)


class RejectBody(BaseModel):
    reason: str = Field(min_length=1, max_length=2000)


class OverrideBody(BaseModel):
    justification: str = Field(min_length=1, max_length=4000)


class ReleaseBody(BaseModel):
    venue: str | None = Field(default=None, max_length=32)


class CancelBody(BaseModel):
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


class HistoryEntry(BaseModel):
    at: datetime
    event: str
    actor: str | None
    details: dict[str, Any]


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
