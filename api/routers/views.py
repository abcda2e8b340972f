"""Read-model views: the approver's inbox and positions."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import ServicesDep, SessionDep, UserDep
from api.order_access import readable_funds
from api.schemas import OrderSummary, PositionView
from db import queries
from domain.models import OrderStatus

router = APIRouter(tags=["views"])


@router.get("/approvals", response_model=list[OrderSummary])
def approvals_inbox(
    services: ServicesDep, session: SessionDep, user: UserDep
) -> list[OrderSummary]:
    """Orders waiting at a level the caller may approve, not created or already approved by them."""
    levels = queries.approval_levels_in_use(session)
    inbox: list[OrderSummary] = []
    for fund in queries.all_funds(session):
        mine = [
            lvl
            for lvl in levels
            if services.authorizer.check(user, fund.fund, "approvals", lvl) is not None
        ]
        if not mine:
            continue
        flt = queries.OrderFilter(
            funds=[fund.fund], status=OrderStatus.PENDING_APPROVAL.value, approval_levels=mine
        )
        for row in queries.list_orders(session, flt, limit=500):
            if row.created_by != user and user not in row.approved_by.split(","):
                inbox.append(OrderSummary.model_validate(row, from_attributes=True))
    inbox.sort(key=lambda o: o.created_at, reverse=True)
    return inbox


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
