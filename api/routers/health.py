"""Liveness of the API and what it depends on (metrics: `api.metrics`, on a listener of their own)."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import anyio
import anyio.to_thread
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import Services, ServicesDep

router = APIRouter(tags=["health"])
logger = logging.getLogger(__name__)

# Each check answers within this, so /healthz answers within it too (the checks run at once).
CHECK_SECONDS = 2.0


async def _check_temporal(services: Services) -> str:
    try:
        with anyio.fail_after(CHECK_SECONDS):
            await services.temporal.service_client.check_health(
                timeout=timedelta(seconds=CHECK_SECONDS)
            )
    except TimeoutError:
        return "timeout"
    except Exception as exc:
        logger.warning("health check: Temporal unreachable: %s", exc)
        return "unreachable"
    return "ok"


async def _check_database(services: Services) -> str:
    def ping() -> None:
        with services.sessions() as session:
            session.connection().execute(text("SELECT 1"))

    try:
        with anyio.fail_after(CHECK_SECONDS):
            # A thread and a pooled connection kept for this check (see DatabaseGate), not the
            # request slots: under a burst the check must not queue behind the requests. A ping
            # that hangs is abandoned; the next check waits for its thread and reports it.
            await anyio.to_thread.run_sync(
                ping, limiter=services.db.health_threads, abandon_on_cancel=True
            )
    except TimeoutError:
        return "timeout"
    except Exception as exc:
        logger.warning("health check: database unreachable: %s", exc)
        return "unreachable"
    return "ok"


@router.get(
    "/healthz",
    responses={503: {"description": "Temporal or the database does not answer (same body)."}},
)
async def healthz(services: ServicesDep) -> JSONResponse:
    """200 when Temporal and the database both answer within two seconds; 503 naming what does not.

    Failures are named (`unreachable`, `timeout`) without their detail, which goes to the log:
    this endpoint is public.
    """
    temporal, database = await asyncio.gather(_check_temporal(services), _check_database(services))
    checks = {"temporal": temporal, "database": database}
    healthy = all(value == "ok" for value in checks.values())
    return JSONResponse(
        status_code=200 if healthy else 503,
        content={"status": "ok" if healthy else "degraded", **checks},
    )
