"""FastAPI dependencies: the services the app was built with, and the authenticated caller."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session
from temporalio.client import Client

from api.auth import Authorizer
from api.errors import ApiError
from api.tokens import InvalidTokenError, user_from_token
from config import Settings
from db.engine import SessionFactory


@dataclass
class Services:
    """What every request may use; built once at start-up (see api.app.create_app)."""

    settings: Settings
    temporal: Client
    sessions: SessionFactory
    authorizer: Authorizer


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


T = TypeVar("T")


async def run_db(services: Services, work: Callable[[Session], T]) -> T:
    """Run read-model work in a worker thread with a session of its own.

    Async endpoints use this rather than a request-scoped session: blocking database calls on
    the event loop would stall every request (and, under `oms dev`, the workers too), and a
    session held across an await of Temporal would hold a pooled connection for that long.
    """

    def call() -> T:
        with services.sessions() as session:
            return work(session)

    return await run_in_threadpool(call)


def get_session(services: Annotated[Services, Depends(get_services)]) -> Iterator[Session]:
    with services.sessions() as session:
        yield session


_bearer = HTTPBearer(auto_error=False)


def current_user(
    services: Annotated[Services, Depends(get_services)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """Return the caller's user id from a valid bearer token; 401 otherwise."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ApiError(401, "unauthenticated", "missing bearer token")
    try:
        user = user_from_token(credentials.credentials, services.settings.jwt_secret)
    except InvalidTokenError as exc:
        raise ApiError(401, "unauthenticated", f"invalid token: {exc}") from exc
    if not services.authorizer.is_known_user(user):
        raise ApiError(401, "unauthenticated", f"user {user} is not known to the policy")
    return user


ServicesDep = Annotated[Services, Depends(get_services)]
SessionDep = Annotated[Session, Depends(get_session)]
UserDep = Annotated[str, Depends(current_user)]
