"""FastAPI dependencies: the services the app was built with, and the authenticated caller."""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, TypeVar

import anyio
import anyio.to_thread
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session
from temporalio.client import Client

from api.auth import Authorizer
from api.errors import ApiError, database_busy
from api.tokens import InvalidTokenError, user_from_token, uses_provider_key
from config import Settings
from db.engine import SessionFactory

logger = logging.getLogger(__name__)


class DatabaseGate:
    """Admit a bounded number of requests to the database at once; the rest wait their turn.

    A request takes a slot in the event loop *before* it takes a pooled connection or a thread
    for database work. Without that, a burst of sync endpoints filled the thread pool with
    requests waiting for a connection, while the requests holding the connections waited for a
    thread to finish their response: nothing moved until the pool timed out (500s, and
    /healthz stuck behind them). With fewer slots than pooled connections, a request that has
    a slot never waits for a connection, and one that waits longer than `wait_seconds` for a
    slot is answered 503 `database_busy` rather than left hanging.

    A request needs one slot at a time: an endpoint with a `SessionDep` must not also call
    `run_db`, which would wait for a second slot while holding the first.
    """

    def __init__(self, slots: int, wait_seconds: float) -> None:
        self._slots = anyio.Semaphore(slots)
        self._wait_seconds = wait_seconds
        # One thread per slot, apart from the default pool: work that holds a slot (and closing
        # a session, which gives its connection back) never queues behind other requests.
        self.threads = anyio.CapacityLimiter(slots)
        # /healthz pings on a thread and connection of its own, so it answers under any load.
        self.health_threads = anyio.CapacityLimiter(1)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the block.

        Raises:
            ApiError: 503 `database_busy` when no slot frees up within `wait_seconds`.
        """
        try:
            # A free slot is taken at once, even with no wait allowed (fail_after(0) would not).
            self._slots.acquire_nowait()
        except anyio.WouldBlock:
            try:
                with anyio.fail_after(self._wait_seconds):
                    await self._slots.acquire()
            except TimeoutError:
                raise database_busy() from None
        try:
            yield
        finally:
            self._slots.release()


class OrderRoutes:
    """Each order's fund and workflow type, as the read model gave them: neither ever changes.

    Every request on an order needs them (to authorise, and to route to its workflow); remembered,
    they cost no database slot, thread hop or query after the first. Bounded: the orders seen
    longest ago are forgotten first.
    """

    def __init__(self, size: int = 50_000) -> None:
        self._size = size
        self._routes: OrderedDict[str, tuple[str, str]] = OrderedDict()

    def get(self, order_id: str) -> tuple[str, str] | None:
        route = self._routes.get(order_id)
        if route is not None:
            self._routes.move_to_end(order_id)
        return route

    def remember(self, order_id: str, route: tuple[str, str]) -> None:
        self._routes[order_id] = route
        self._routes.move_to_end(order_id)
        if len(self._routes) > self._size:
            self._routes.popitem(last=False)


@dataclass
class Services:
    """What every request may use; built once at start-up (see api.app.create_app)."""

    settings: Settings
    temporal: Client
    sessions: SessionFactory
    authorizer: Authorizer
    db: DatabaseGate
    routes: OrderRoutes = field(default_factory=OrderRoutes)


# Async (though it does no I/O) so that FastAPI runs it on the event loop: a sync dependency
# takes a thread-pool thread, and under load /healthz would queue behind the burst for one.
async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


T = TypeVar("T")


def _close(session: Session) -> None:
    """Close a session; a failure to do so is logged, not raised.

    Closing only rolls back what the work left uncommitted, so its failure (the database went
    away meanwhile) loses nothing, and SQLAlchemy has already discarded the broken connection.
    Raised, it would replace the work's result, or, for a request-scoped session closed after
    the response started, break the HTTP connection instead of answering.
    """
    try:
        session.close()
    except SQLAlchemyError as exc:
        logger.warning("closing a read-model session failed: %s", exc)


async def run_db(services: Services, work: Callable[[Session], T]) -> T:
    """Run read-model work in a worker thread with a session of its own, once admitted.

    Async endpoints use this rather than a request-scoped session: blocking database calls on
    the event loop would stall every request (and, under `oms dev`, the workers too), and a
    session held across an await of Temporal would hold a pooled connection for that long.

    Raises:
        ApiError: 503 `database_busy` when the database is saturated for too long.
    """

    def call() -> T:
        session = services.sessions()
        try:
            return work(session)
        finally:
            _close(session)

    async with services.db.slot():
        return await anyio.to_thread.run_sync(call, limiter=services.db.threads)


async def get_session(
    services: Annotated[Services, Depends(get_services)],
) -> AsyncIterator[Session]:
    """Yield a session for a sync endpoint, holding a database slot until it is closed."""
    async with services.db.slot():
        session = services.sessions()
        try:
            yield session
        finally:
            # Closing gives the connection back (a rollback): do it even if the request was
            # cancelled, or the connection stays checked out until garbage collection.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_close, session, limiter=services.db.threads)


bearer = HTTPBearer(auto_error=False)


# Async for the same reason as get_services: decoding an HS256 token and looking the user up
# in the in-memory policy costs less than a hop to a thread and back.
async def current_user(
    services: Annotated[Services, Depends(get_services)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """Return the caller's user id from a valid bearer token; 401 otherwise."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ApiError(401, "unauthenticated", "missing bearer token")
    try:
        settings = services.settings
        verify = functools.partial(
            user_from_token,
            credentials.credentials,
            settings.jwt_secret,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            max_ttl=settings.jwt_max_ttl,
            jwks_url=settings.jwt_jwks_url,
        )
        if settings.jwt_jwks_url and uses_provider_key(credentials.credentials):
            # The provider's keys may have to be fetched: not on the event loop.
            user = await anyio.to_thread.run_sync(verify)
        else:
            user = verify()
    except InvalidTokenError as exc:
        raise ApiError(401, "unauthenticated", f"invalid token: {exc}") from exc
    if not services.authorizer.is_known_user(user):
        raise ApiError(401, "unauthenticated", f"user {user} is not known to the policy")
    return user


ServicesDep = Annotated[Services, Depends(get_services)]
SessionDep = Annotated[Session, Depends(get_session)]
UserDep = Annotated[str, Depends(current_user)]
