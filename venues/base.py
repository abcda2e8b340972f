"""The one interface every venue adapter implements, and what travels across it."""

from __future__ import annotations

from decimal import Decimal
from typing import Protocol

from pydantic import BaseModel, ConfigDict

from domain.executions import ExecutionReport
from domain.models import OrderType, Side, TimeInForce


class VenueOrder(BaseModel):
    """An order as sent to a venue; `order_id` is the ClOrdID, so a resend is recognised."""

    model_config = ConfigDict(frozen=True)

    order_id: str
    fund: str
    symbol: str
    side: Side
    quantity: Decimal
    order_type: OrderType
    limit_price: Decimal | None
    time_in_force: TimeInForce


class VenueRefusedError(Exception):
    """The venue will not take the order (a business answer, not an outage: do not retry)."""


class Venue(Protocol):
    """A place orders are sent to; execution reports come back through the OMS API."""

    name: str

    async def submit(self, order: VenueOrder) -> None:
        """Send a new order; sending the same order id again must not create a second order."""

    async def cancel(self, order_id: str) -> None:
        """Ask the venue to cancel a working order; the answer comes as an execution report."""


class ExecutionSink(Protocol):
    """Where a venue's execution reports go: the OMS API over HTTP, or straight to the workflow."""

    async def report(self, report: ExecutionReport, reported_by: str) -> None: ...
