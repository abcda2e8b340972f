"""Activities that write the read model. Each is idempotent: keyed by order id, version and step."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from temporalio import activity

from db import queries
from db.changes import ORDER_CHANGES, OrderChanges
from db.engine import SessionFactory
from domain.models import Allocation, OrderState, SettlementStatus
from domain.order import OrderProjection


class ProjectOrderInput(BaseModel):
    state: OrderState


class ProjectEventsInput(BaseModel):
    projection: OrderProjection


class BookAllocationsInput(BaseModel):
    state: OrderState
    allocations: list[Allocation]
    booked_at: datetime


class RecordSettlementStatusInput(BaseModel):
    settlement_id: str
    status: SettlementStatus
    reason: str = ""
    at: datetime


class ProjectionActivities:
    """Keep the read model (orders, executions, allocations, positions, settlements) in step.

    Args:
        sessions: The read model.
        changes: Told of each order projection once it is committed, for this process's
            long-polls.
    """

    def __init__(self, sessions: SessionFactory, changes: OrderChanges = ORDER_CHANGES) -> None:
        self._sessions = sessions
        self._changes = changes
        changes.add_projector()

    @activity.defn
    def project_events(self, input: ProjectEventsInput) -> None:
        """Write an order's new events, its slim row and what they booked, in one transaction."""
        with self._sessions() as session:
            moved = queries.project_order(session, input.projection)
        # A repeat or an older projection has nothing new to tell.
        if moved:
            summary = input.projection.summary
            self._changes.committed(summary.order_id, summary.status, summary.filled_quantity > 0)

    @activity.defn
    def project_order(self, input: ProjectOrderInput) -> bool:
        """Upsert the order's row and executions; an older version never overwrites a newer one."""
        with self._sessions() as session:
            return queries.upsert_order(session, input.state)

    @activity.defn
    def book_allocations(self, input: BookAllocationsInput) -> None:
        """Record the order's allocations and move the positions of the accounts they touch."""
        with self._sessions() as session:
            queries.book_allocations(session, input.state, input.allocations, input.booked_at)

    @activity.defn
    def record_settlement_status(self, input: RecordSettlementStatusInput) -> None:
        """Record the back office's confirmation or failure of one settlement instruction."""
        with self._sessions() as session:
            queries.set_settlement_status(
                session, input.settlement_id, input.status, input.reason, input.at
            )
