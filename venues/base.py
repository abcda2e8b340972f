"""The one interface every venue adapter implements, and what travels across it."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from domain.executions import ExecutionReport
from domain.models import OrderType, Side, TimeInForce


class VenueOrder(BaseModel):
    """An order as sent to a venue.

    `cl_ord_id` (FIX ClOrdID) names this submission: the venue recognises a resend by it.
    `order_id` is the OMS order id; the venue's execution reports carry it back.
    """

    model_config = ConfigDict(frozen=True)

    order_id: str
    cl_ord_id: str = Field(
        default="", description="Empty from v1 orders: their ClOrdID is the order id."
    )
    fund: str
    symbol: str
    side: Side
    quantity: Decimal
    order_type: OrderType
    limit_price: Decimal | None
    time_in_force: TimeInForce
    notes: str = Field(
        default="",
        description=(
            "The order's notes (`OrderRequest.notes`), for the simulator's `sim:` scenarios. "
            "Internal: an adapter to an outside venue must not send them."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _v1_cl_ord_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("cl_ord_id"):
            return {**data, "cl_ord_id": data.get("order_id", "")}
        return data


class VenueOrderStatus(BaseModel):
    """What a venue knows of a ClOrdID (FIX Order Status Request, answered at once)."""

    cl_ord_id: str
    known: bool
    """False: the venue never received this ClOrdID (it is safe to send it)."""
    state: str = ""
    """The venue's own word for where the order is, e.g. "new", "working", "filled", "canceled"."""
    filled_quantity: Decimal = Decimal(0)


class VenueRefusedError(Exception):
    """The venue will not take the order (a business answer, not an outage: do not retry)."""


class Venue(Protocol):
    """A place orders are sent to; execution reports come back through the OMS API.

    Any exception other than `VenueRefusedError` means the venue could not be reached: the
    caller retries.
    """

    name: str

    async def submit(self, order: VenueOrder) -> None:
        """Send a new order; a resend of a known ClOrdID is answered OK and creates nothing."""

    async def cancel(self, order_id: str, cl_ord_id: str, orig_cl_ord_id: str = "") -> None:
        """Ask the venue to cancel the order that goes by `orig_cl_ord_id` (empty: `cl_ord_id`).

        `cl_ord_id` is the cancel request's own ClOrdID (FIX OrderCancelRequest: ClOrdID and
        OrigClOrdID): a resend of it is answered OK, and a new one after a `cancel_rejected` is
        a new request. The answer (canceled, or cancel_rejected) comes as a report.
        """

    async def replace(self, order: VenueOrder, orig_cl_ord_id: str) -> None:
        """Ask the venue to replace the order sent as `orig_cl_ord_id` with `order`'s terms.

        `order.cl_ord_id` is the new ClOrdID (FIX OrigClOrdID chaining); a resend of it is
        answered OK. The answer (replaced, or replace_rejected) comes as a report.
        """

    async def order_status(self, cl_ord_id: str) -> VenueOrderStatus:
        """Return what the venue knows of `cl_ord_id`."""
        ...


class ExecutionSink(Protocol):
    """Where a venue's execution reports go: the OMS API over HTTP, or straight to the workflow."""

    async def report(self, report: ExecutionReport, reported_by: str) -> None:
        """Deliver one report.

        Returns once the OMS answered, whether it took the report or refused it (a refusal is
        final); raises when the report may not have arrived, so the venue sends it again.
        """
