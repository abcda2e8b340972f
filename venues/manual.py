"""The manual venue: orders worked by phone or chat (care orders); fills are entered by hand.

It accepts every order and every cancel request and reports nothing itself: the trader or broker
posts the execution reports (`POST /executions`) as the order is worked.
"""

from __future__ import annotations

from venues.base import VenueOrder, VenueOrderStatus


class ManualVenue:
    """A venue that keeps nothing: people work the order and report on it through the API."""

    name = "manual"

    async def submit(self, order: VenueOrder) -> None:
        """Accept the order for working by hand; there is nothing to send anywhere."""

    async def cancel(self, order_id: str, cl_ord_id: str, orig_cl_ord_id: str = "") -> None:
        """Accept the cancel request; the answer comes as a canceled or cancel_rejected report."""

    async def replace(self, order: VenueOrder, orig_cl_ord_id: str) -> None:
        """Accept the replace request; the answer comes as a replaced or replace_rejected report."""

    async def order_status(self, cl_ord_id: str) -> VenueOrderStatus:
        """Answer that the order is known and worked by hand: the people working it know more."""
        return VenueOrderStatus(cl_ord_id=cl_ord_id, known=True, state="manual")
