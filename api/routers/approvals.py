"""The approver's inbox: `GET /approvals`, from the read model (see api.inbox)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import ServicesDep, UserDep
from api.inbox import DEFAULT_LIMIT, MAX_LIMIT, inbox
from api.schemas import ApprovalPage

router = APIRouter(prefix="/approvals", tags=["approvals"])


@router.get("", response_model=ApprovalPage)
async def list_approvals(
    services: ServicesDep,
    user: UserDep,
    fund: Annotated[str | None, Query(max_length=64)] = None,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> ApprovalPage:
    """Orders waiting on a level the caller may decide, longest waiting first; cursor-paged.

    Not those the caller created or already approved a level of. An escalated order also shows
    to the next approvers up, with `may_decide` false. A caller who may decide nothing gets an
    empty page.
    """
    return await inbox(services, user, cursor, limit, fund)
