"""Read-model views: the approver's inbox and positions."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import ServicesDep, SessionDep, UserDep
from api.order_access import readable_funds
from api.schemas import PositionView
from db import queries

router = APIRouter(tags=["views"])


@router.get("/positions", response_model=list[PositionView])
def list_positions(
    services: ServicesDep, session: SessionDep, user: UserDep, fund: str | None = None
) -> list[PositionView]:
    """Positions per account and instrument, valued at reference prices."""
    funds = readable_funds(services, session, user, "positions", fund)
    prices = queries.reference_prices(session)
    views = []
    for row in queries.positions(session, funds):
        price = prices.get(row.symbol)
        views.append(
            PositionView(
                fund=row.fund,
                account=row.account,
                symbol=row.symbol,
                quantity=row.quantity,
                average_cost=row.average_cost,
                reference_price=price,
                market_value=None if price is None else row.quantity * price,
                cash_flow=row.cash_flow,
            )
        )
    return views
