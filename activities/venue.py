"""Activities that talk to venues through their adapters (run as local activities)."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, Field, model_validator
from temporalio import activity
from temporalio.exceptions import ApplicationError

from domain.errors import RefusalType
from venues.base import Venue, VenueOrder, VenueOrderStatus, VenueRefusedError


class SubmitOrderInput(BaseModel):
    venue: str
    order: VenueOrder


class CancelAtVenueInput(BaseModel):
    venue: str
    order_id: str
    cl_ord_id: str = Field(
        default="", description="Empty from v1 orders: their ClOrdID is the order id."
    )
    orig_cl_ord_id: str = Field(
        default="",
        description="The ClOrdID of the order to cancel, when the request has its own "
        "`cl_ord_id` (empty: orders from before cancel requests had one).",
    )

    @model_validator(mode="after")
    def _v1_cl_ord_id(self) -> CancelAtVenueInput:
        if not self.cl_ord_id:
            self.cl_ord_id = self.order_id
        return self


class ReplaceAtVenueInput(BaseModel):
    venue: str
    order: VenueOrder = Field(description="The new terms, under the new ClOrdID.")
    orig_cl_ord_id: str


class VenueOrderStatusInput(BaseModel):
    venue: str
    cl_ord_id: str


def _refused(exc: VenueRefusedError) -> ApplicationError:
    return ApplicationError(str(exc), type=RefusalType.VENUE_REFUSED, non_retryable=True)


class VenueActivities:
    """Send orders and cancels to the venue adapters by name, and ask them about orders.

    A venue's refusal is final (a non-retryable `VenueRefused` error); anything else it raises
    is an outage, and the activity is retried.
    """

    def __init__(self, venues: Mapping[str, Venue]) -> None:
        self._venues = venues

    def _venue(self, name: str) -> Venue:
        venue = self._venues.get(name)
        if venue is None:
            raise ApplicationError(
                f"unknown venue {name!r}", type=RefusalType.VENUE_REFUSED, non_retryable=True
            )
        return venue

    @activity.defn
    async def submit_order(self, input: SubmitOrderInput) -> None:
        """Send the order; the venue recognises a resend by its ClOrdID and answers it OK."""
        try:
            await self._venue(input.venue).submit(input.order)
        except VenueRefusedError as exc:
            raise _refused(exc) from exc

    @activity.defn
    async def cancel_at_venue(self, input: CancelAtVenueInput) -> None:
        """Ask the venue to cancel the order sent as `cl_ord_id`; the answer comes as a report."""
        try:
            await self._venue(input.venue).cancel(
                input.order_id, input.cl_ord_id, input.orig_cl_ord_id
            )
        except VenueRefusedError as exc:
            raise _refused(exc) from exc

    @activity.defn
    async def replace_at_venue(self, input: ReplaceAtVenueInput) -> None:
        """Ask the venue to replace the order; the answer comes as a report."""
        try:
            await self._venue(input.venue).replace(input.order, input.orig_cl_ord_id)
        except VenueRefusedError as exc:
            raise _refused(exc) from exc

    @activity.defn
    async def venue_order_status(self, input: VenueOrderStatusInput) -> VenueOrderStatus:
        """Return what the venue knows of `cl_ord_id` (whether it ever received it, and its state)."""
        try:
            return await self._venue(input.venue).order_status(input.cl_ord_id)
        except VenueRefusedError as exc:
            raise _refused(exc) from exc
