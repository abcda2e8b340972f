"""Request and response bodies of the HTTP API that are not domain types themselves."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, Field


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
    quantity: Decimal
    order_type: str
    limit_price: Decimal | None
    time_in_force: str
    status: str
    created_by: str
    created_at: datetime
    updated_at: datetime
    notional: Decimal | None
    currency: str | None
    approval_level: str | None
    filled_quantity: Decimal
    average_price: Decimal | None


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
    quantity: Decimal
    average_cost: Decimal
    reference_price: Decimal | None
    market_value: Decimal | None
    cash_flow: Decimal


class SettlementView(BaseModel):
    settlement_id: str
    order_id: str
    fund: str
    account: str
    symbol: str
    side: str
    quantity: Decimal
    price: Decimal
    gross_amount: Decimal
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
