"""Orders booking into one position at the same moment: no booking is lost.

Each booking runs as the activity would, retried on a database refusal (a key clash, a stale
SQLite writer), as Temporal retries a failed activity.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

from sqlalchemy.exc import DBAPIError, IntegrityError

from activities.projection import BookAllocationsInput, ProjectionActivities
from db.engine import SessionFactory
from db.tables import PositionRow
from domain.models import Allocation, OrderStatus
from tests.activities.test_projection import T0, order_state, unique


def _book_with_retries(projection: ProjectionActivities, booking: BookAllocationsInput) -> None:
    for _ in range(50):
        try:
            projection.book_allocations(booking)
            return
        except (IntegrityError, DBAPIError):
            time.sleep(0.01)
    raise AssertionError("booking kept failing")


def test_concurrent_bookings_into_one_position_all_count(sessions: SessionFactory) -> None:
    projection = ProjectionActivities(sessions)
    account = unique("acct")
    bookings = [
        BookAllocationsInput(
            state=order_state(unique("ord"), status=OrderStatus.FILLED),
            allocations=[
                Allocation(
                    account=account,
                    requested_quantity=Decimal(10 + i),
                    quantity=Decimal(10 + i),
                    price=Decimal("230.55"),
                )
            ],
            booked_at=T0,
        )
        for i in range(12)
    ]
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(lambda b: _book_with_retries(projection, b), bookings))
    with sessions() as session:
        position = session.get(PositionRow, (account, "AAPL"))
    assert position is not None
    assert position.quantity == sum(Decimal(10 + i) for i in range(12))
    assert position.average_cost == Decimal("230.55")
