"""Activities that talk to venues through their adapters."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError

from domain.errors import RefusalType
from venues.base import Venue, VenueOrder, VenueRefusedError


class SubmitOrderInput(BaseModel):
    venue: str
    order: VenueOrder


class CancelAtVenueInput(BaseModel):
    venue: str
    order_id: str


class VenueActivities:
    """Send orders and cancels to the venue adapters by name."""

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
        """Send the order; the adapter recognises a resend by the order id (ClOrdID)."""
        try:
            await self._venue(input.venue).submit(input.order)
        except VenueRefusedError as exc:
            raise ApplicationError(
                str(exc), type=RefusalType.VENUE_REFUSED, non_retryable=True
            ) from exc

    @activity.defn
    async def cancel_at_venue(self, input: CancelAtVenueInput) -> None:
        """Ask the venue to cancel; its answer comes back as an execution report."""
        try:
            await self._venue(input.venue).cancel(input.order_id)
        except VenueRefusedError as exc:
            raise ApplicationError(
                str(exc), type=RefusalType.VENUE_REFUSED, non_retryable=True
            ) from exc
