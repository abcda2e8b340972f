"""Reconciliation: after a venue adapter (re)starts, each order working there compares itself
with the venue's view and flags every difference for the trader (`OrderWorkflow.reconcile`).
"""

from __future__ import annotations

import asyncio
import logging

from temporalio.client import Client
from temporalio.service import RPCError

from db import queries
from db.engine import SessionFactory
from domain.ids import order_workflow_id
from domain.status import AT_VENUE
from workflows.messages import ReconcileInput
from workflows.order import WORKFLOW_TYPE, OrderWorkflow

log = logging.getLogger(__name__)


async def reconcile_orders_at(client: Client, sessions: SessionFactory, venue: str) -> int:
    """Ask every order the read model has working at `venue` to reconcile; return how many.

    An order that closed meanwhile is passed over: it has nothing left at the venue.
    """

    def working() -> list[str]:
        with sessions() as session:
            statuses = [s.value for s in AT_VENUE]
            return queries.orders_working_at(session, venue, statuses, WORKFLOW_TYPE)

    order_ids = await asyncio.to_thread(working)
    for order_id in order_ids:
        handle = client.get_workflow_handle_for(OrderWorkflow.run, order_workflow_id(order_id))
        try:
            await handle.signal(OrderWorkflow.reconcile, ReconcileInput(venue=venue))
        except RPCError as err:  # closed since the read model saw it
            log.info("order %s not reconciled: %s", order_id, err.message)
    if order_ids:
        log.info("asked %d orders at %s to reconcile with it", len(order_ids), venue)
    return len(order_ids)
