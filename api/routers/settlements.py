"""Settlement instructions for the back office, and its confirmations (Signals to the order)."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Response
from temporalio.service import RPCError, RPCStatusCode

from api.deps import Services, ServicesDep, SessionDep, UserDep, run_db
from api.errors import ApiError, not_found
from api.order_access import order_handle, readable_funds, require
from api.schemas import Accepted, SettlementFailBody, SettlementView
from db import queries
from domain.models import SettlementStatus
from workflows.messages import SettlementUpdateInput

router = APIRouter(prefix="/settlements", tags=["settlements"])


@router.get("", response_model=list[SettlementView])
def list_settlements(
    services: ServicesDep,
    session: SessionDep,
    user: UserDep,
    fund: str | None = None,
    status: SettlementStatus | None = None,
) -> list[SettlementView]:
    """Settlement instructions in the funds the caller may read them in."""
    funds = readable_funds(services, session, user, "settlements", fund)
    rows = queries.list_settlements(session, funds, status.value if status else None)
    return [SettlementView.model_validate(row, from_attributes=True) for row in rows]


async def _answer(
    settlement_id: str,
    status: SettlementStatus,
    reason: str,
    services: Services,
    user: str,
    response: Response,
) -> Accepted:
    row = await run_db(services, lambda session: queries.get_settlement(session, settlement_id))
    if row is None or services.authorizer.check(user, row.fund, "settlements", "read") is None:
        raise not_found("settlement instruction")
    require(services, user, row.fund, "settlements", "confirm")
    if row.status == SettlementStatus.CONFIRMED:
        if status is SettlementStatus.CONFIRMED:
            response.status_code = 200
            return Accepted(status="duplicate", detail="already confirmed")
        raise ApiError(409, "conflict", "a confirmed settlement cannot fail")
    update = SettlementUpdateInput(
        settlement_id=settlement_id, status=status, reason=reason, user=user, at=datetime.now(UTC)
    )
    try:
        # v1 and v2 orders both take the answer as the signal "settlement_update".
        await order_handle(services, row.order_id).signal("settlement_update", update)
    except RPCError as err:
        if err.status is RPCStatusCode.NOT_FOUND:  # the order has closed
            raise ApiError(
                409, "conflict", "the order is closed and takes no more answers"
            ) from err
        raise
    return Accepted(status="accepted")


@router.post(
    "/{settlement_id}/confirm",
    status_code=202,
    response_model=Accepted,
    responses={200: {"model": Accepted, "description": "Confirmed before: nothing changes."}},
)
async def confirm_settlement(
    settlement_id: str, response: Response, services: ServicesDep, user: UserDep
) -> Accepted:
    """The back office confirms that an instruction settled; confirming again is a 200 no-op."""
    return await _answer(settlement_id, SettlementStatus.CONFIRMED, "", services, user, response)


@router.post("/{settlement_id}/fail", status_code=202, response_model=Accepted)
async def fail_settlement(
    settlement_id: str,
    body: SettlementFailBody,
    response: Response,
    services: ServicesDep,
    user: UserDep,
) -> Accepted:
    """The back office reports that an instruction failed to settle."""
    return await _answer(
        settlement_id, SettlementStatus.FAILED, body.reason, services, user, response
    )
