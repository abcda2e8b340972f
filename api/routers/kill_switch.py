"""Kill switches: engage or lift one (compliance), list those engaged, read their audit trail."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from api import kill_switch
from api.deps import ServicesDep, UserDep
from api.schemas import KillSwitchAnswer, KillSwitchBody, KillSwitchEvent, KillSwitchView

router = APIRouter(prefix="/kill-switch", tags=["kill switch"])


@router.get("", response_model=list[KillSwitchView])
async def list_engaged(
    services: ServicesDep,
    user: UserDep,
    fund: Annotated[str | None, Query(max_length=64)] = None,
) -> list[KillSwitchView]:
    """The engaged kill switches the caller may see (`fund`: those covering it), the firm's first."""
    return await kill_switch.engaged_switches(services, user, fund)


@router.get("/events", response_model=list[KillSwitchEvent])
async def list_events(
    services: ServicesDep,
    user: UserDep,
    scope: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[KillSwitchEvent]:
    """Who engaged or lifted which kill switch, when and why, newest first."""
    return await kill_switch.switch_events(services, user, scope, limit)


@router.put("/{fund}", response_model=KillSwitchAnswer)
async def set_switch(
    fund: Annotated[str, Path(min_length=1, max_length=64)],
    body: KillSwitchBody,
    services: ServicesDep,
    user: UserDep,
) -> KillSwitchAnswer:
    """Engage or lift the kill switch of a fund (`*`: the firm); engaging cancels at the venue
    every order in scope that is there, and answers what it canceled and what refused."""
    return await kill_switch.set_kill_switch(services, user, fund, body)
