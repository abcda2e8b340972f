"""The FastAPI application: routers, error handlers, and the services built at start-up."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from temporalio.client import Client

from api.auth import Authorizer
from api.deps import DatabaseGate, Services
from api.errors import (
    ERROR_RESPONSES,
    LOCKED_RESPONSES,
    BodySizeLimit,
    install_error_handlers,
)
from api.metrics import Metrics, MetricsMiddleware
from api.routers import approvals, compliance, executions, health, orders, settlements, views
from api.routers import audit as audit_router
from api.routers import chat as chat_router
from api.routers import codec as codec_router
from api.routers import kill_switch as kill_switch_router
from config import Settings
from db.changes import PostgresChangeListener
from db.engine import create_schema, make_engine, session_factory
from domain.payload_codec import EncryptionCodec


def create_app(settings: Settings | None = None, temporal: Client | None = None) -> FastAPI:
    """Build the app. Without `temporal`, it connects at start-up using `settings`.

    Raises:
        UnsafeSettingsError: production settings that hold a published development secret.
    """
    settings = settings or Settings()
    settings.refuse_development_secrets("api")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from worker import connect

        # The codec server's keys (and, when not given a client, connect's): bad or missing
        # payload keys refuse to start here (UnsafeSettingsError), before anything is served.
        app.state.payload_codec = settings.payload_codec() or EncryptionCodec({}, None)
        engine = make_engine(
            settings.resolved_database_url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_timeout=settings.db_pool_timeout_seconds,
        )
        create_schema(engine)
        client = temporal or await connect(settings)
        # Sync endpoints and dependencies run on AnyIO's default thread pool (one per loop).
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        app.state.services = Services(
            settings=settings,
            temporal=client,
            sessions=session_factory(engine),
            authorizer=Authorizer(settings.policies_dir),
            db=DatabaseGate(settings.api_db_concurrency, settings.api_db_wait_seconds),
        )
        # On PostgreSQL every process's projections are heard here, for the long-polls.
        listener = (
            asyncio.create_task(PostgresChangeListener(settings.resolved_database_url).run())
            if engine.dialect.name == "postgresql"
            else None
        )
        try:
            yield
        finally:
            try:
                if listener is not None:
                    listener.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await listener
            finally:
                engine.dispose()

    title, version = "OMS", "1"
    summary = (
        "Order management for institutional trading desks; every order is a Temporal workflow."
    )
    if settings.docs_enabled:
        # Swagger UI and ReDoc from the assets fastapi-offline installs, never from a CDN: the
        # page works on a desk without internet and runs no third-party script next to tokens.
        app = FastAPIOffline(title=title, version=version, summary=summary, lifespan=lifespan)
    else:
        # Production: no /docs, /redoc or /openapi.json unless OMS_API_DOCS=true.
        app = FastAPI(
            title=title,
            version=version,
            summary=summary,
            lifespan=lifespan,
            docs_url=None,
            redoc_url=None,
            openapi_url=None,
        )
    app.state.metrics = Metrics()
    # The last added runs first: the metrics see every answer, the size limit's 413s included.
    app.add_middleware(BodySizeLimit, max_bytes=settings.api_max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    install_error_handlers(app)
    # approvals before views: the first route for a path answers it, and the paged inbox
    # replaces the list views.py served at the same path.
    for module in (orders, approvals, compliance, executions, settlements, views):
        # The refusals each route may answer, in the schema (tests/api/test_schemathesis.py).
        extra = LOCKED_RESPONSES if module is orders else {}
        app.include_router(module.router, responses={**ERROR_RESPONSES, **extra})
    app.include_router(health.router)
    # Chat-ops: verified by the Slack signing secret, not by a bearer token. In production with
    # the published development secret anyone could sign a request: chat is not served then
    # (with notifications on, refuse_development_secrets has already refused to start).
    if settings.is_development or not settings.chat_uses_default_secret:
        app.include_router(chat_router.router)
    app.include_router(kill_switch_router.router, responses=ERROR_RESPONSES)
    app.include_router(audit_router.router, responses=ERROR_RESPONSES)
    # The codec server (Temporal UI and CLI), with CORS for the UI's origin on its routes only;
    # added last, so it runs first and even a 401 reaches the UI as a readable answer.
    app.include_router(codec_router.router, responses=ERROR_RESPONSES)
    app.add_middleware(codec_router.CodecCors, origins=settings.codec_cors_origins)
    return app
