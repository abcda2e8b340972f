"""The audit log searched across orders: `GET /audit`, newest first, paged like the orders list."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import ServicesDep, SessionDep, UserDep
from api.errors import forbidden, invalid
from api.schemas import AuditPage, AuditRecord
from db import audit, queries

router = APIRouter(prefix="/audit", tags=["audit"])

MAX_PAGE = 200


def _aware(name: str, value: datetime | None) -> datetime | None:
    if value is not None and value.utcoffset() is None:
        raise invalid(name, f"{name} must carry a timezone offset (e.g. 2026-01-02T15:04:05Z)")
    return value


@router.get("", response_model=AuditPage)
def search_audit(
    services: ServicesDep,
    session: SessionDep,
    user: UserDep,
    fund: Annotated[str | None, Query(max_length=64)] = None,
    start: Annotated[
        datetime | None, Query(alias="from", description="Events at or after this instant.")
    ] = None,
    end: Annotated[
        datetime | None, Query(alias="to", description="Events before this instant.")
    ] = None,
    actor: Annotated[str | None, Query(max_length=64)] = None,
    order_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
) -> AuditPage:
    """Search the audit chains of the funds whose audit the caller may read, newest first.

    Who: ("audit", "read") in the fund; compliance holds it firm-wide. A fund the caller may not
    read is a 403, the same as a fund that does not exist, so fund names cannot be probed.
    """
    start, end = _aware("from", start), _aware("to", end)
    if start is not None and end is not None and end <= start:
        raise invalid("to", "to must be after from")
    known = [f.fund for f in queries.all_funds(session)]
    allowed = services.authorizer.funds_allowed(user, known, "audit", "read")
    if fund is not None:
        if fund not in allowed:
            raise forbidden(f"{user} may not read audit in {fund}")
        allowed = [fund]
    elif not allowed:
        raise forbidden(f"{user} may not read audit in any fund")
    flt = audit.AuditFilter(funds=allowed, start=start, end=end, actor=actor, order_id=order_id)
    try:
        rows = audit.search(session, flt, limit + 1, cursor)
    except ValueError as exc:
        raise invalid("cursor", str(exc)) from exc
    page = rows[:limit]
    return AuditPage(
        items=[AuditRecord.model_validate(row, from_attributes=True) for row in page],
        next_cursor=audit.encode_cursor(page[-1]) if len(rows) > limit else None,
    )
