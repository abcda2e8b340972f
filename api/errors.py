"""One error shape for every refusal: {"error": {"code", "message", "field"}}, and the Temporal mapping.

An overloaded or unreachable dependency (the database, Temporal) is a 503 with a `Retry-After`
header and a message that names no internals; the detail goes to the log.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from temporalio.client import (
    RPCTimeoutOrCancelledError,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from domain.errors import RefusalType


class ApiError(Exception):
    """A refusal with its HTTP status, a stable code, a message for people and the field at fault."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = dict(headers or {})


logger = logging.getLogger(__name__)

# Seconds a client should wait before trying again: a busy dependency frees up in moments, an
# unreachable one takes longer to come back.
RETRY_BUSY = "1"
RETRY_UNAVAILABLE = "5"


def not_found(what: str = "order") -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


def forbidden(message: str) -> ApiError:
    return ApiError(403, "forbidden", message)


def invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid", message, field)


_REFUSAL_STATUS: dict[str, tuple[int, str]] = {
    RefusalType.INVALID_STATE: (409, "conflict"),
    RefusalType.FORBIDDEN: (403, "forbidden"),
    RefusalType.INVALID_INPUT: (422, "invalid"),
    RefusalType.VENUE_REFUSED: (409, "venue_refused"),
    RefusalType.EXECUTION_REFUSED: (409, "execution_refused"),
    RefusalType.COMPLIANCE_REFUSED: (409, "compliance_refused"),
    RefusalType.KILL_SWITCH_ENGAGED: (423, "kill_switch_engaged"),
}


def from_update_failure(err: WorkflowUpdateFailedError) -> ApiError:
    """Translate a refused or failed Update into the status its refusal type stands for."""
    cause = err.cause
    if isinstance(cause, ApplicationError) and cause.type in _REFUSAL_STATUS:
        status, code = _REFUSAL_STATUS[cause.type]
        # A refusal may name the field at fault as its first detail (see workflows.order._refuse).
        field = cause.details[0] if cause.details and isinstance(cause.details[0], str) else None
        return ApiError(status, code, cause.message, field)
    return ApiError(409, "conflict", str(cause) if cause else str(err))


def temporal_busy() -> ApiError:
    return ApiError(
        503,
        "temporal_busy",
        "the order service is busy; try again shortly",
        headers={"Retry-After": RETRY_BUSY},
    )


def from_rpc_error(err: RPCError) -> ApiError:
    """Translate a failed Temporal call: 404 for no such order, otherwise a 503 to retry."""
    if err.status is RPCStatusCode.NOT_FOUND:
        return not_found()
    logger.warning("Temporal call failed: %s %s", err.status.name, err.message)
    if err.status is RPCStatusCode.RESOURCE_EXHAUSTED:
        return temporal_busy()
    return ApiError(
        503,
        "temporal_unavailable",
        "the order service is unavailable; try again shortly",
        headers={"Retry-After": RETRY_UNAVAILABLE},
    )


def database_busy() -> ApiError:
    return ApiError(
        503,
        "database_busy",
        "the database is busy; try again shortly",
        headers={"Retry-After": RETRY_BUSY},
    )


def database_unavailable() -> ApiError:
    return ApiError(
        503,
        "database_unavailable",
        "the database is unavailable; try again shortly",
        headers={"Retry-After": RETRY_UNAVAILABLE},
    )


# PostgreSQL states that mean "too much at once", not "down": too many connections, a lock or
# statement timeout, a deadlock or serialisation failure that a retry resolves.
_PG_BUSY_STATES = frozenset({"53300", "55P03", "57014", "40001", "40P01"})
_SQLITE_BUSY_MESSAGES = ("database is locked", "database table is locked", "database is busy")


def from_database_error(err: DBAPIError | PoolTimeoutError) -> ApiError:
    """Translate a pool timeout or a refused database call into a 503: busy or unavailable."""
    logger.warning("database call failed: %s", err)
    if isinstance(err, PoolTimeoutError):
        return database_busy()
    sqlstate = getattr(err.orig, "sqlstate", None)
    message = str(err.orig).lower()
    if sqlstate in _PG_BUSY_STATES or any(m in message for m in _SQLITE_BUSY_MESSAGES):
        return database_busy()
    return database_unavailable()


def _body(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={"error": {"code": code, "message": message, "field": field}},
        headers=dict(headers) if headers else None,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Make every known failure a JSON error with the right status (never a bare 500)."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _body(exc.status, exc.code, exc.message, exc.field, exc.headers)

    @app.exception_handler(WorkflowUpdateFailedError)
    async def _update_failed(_: Request, exc: WorkflowUpdateFailedError) -> JSONResponse:
        api = from_update_failure(exc)
        return _body(api.status, api.code, api.message, api.field)

    @app.exception_handler(WorkflowQueryFailedError)
    async def _query_failed(_: Request, exc: WorkflowQueryFailedError) -> JSONResponse:
        return _body(503, "query_failed", f"order could not be read: {exc.message}")

    @app.exception_handler(RPCError)
    async def _rpc_error(_: Request, exc: RPCError) -> JSONResponse:
        api = from_rpc_error(exc)
        return _body(api.status, api.code, api.message, headers=api.headers)

    @app.exception_handler(RPCTimeoutOrCancelledError)
    async def _rpc_timeout(_: Request, exc: RPCTimeoutOrCancelledError) -> JSONResponse:
        # Temporal did not answer within the call's deadline (an Update the workflow has not
        # taken yet, most often under load): the caller may try again.
        logger.warning("Temporal call timed out: %r", exc)
        api = temporal_busy()
        return _body(api.status, api.code, api.message, headers=api.headers)

    @app.exception_handler(PoolTimeoutError)
    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, DBAPIError | PoolTimeoutError)
        api = from_database_error(exc)
        return _body(api.status, api.code, api.message, headers=api.headers)
