"""One error shape for every refusal: {"error": {"code", "message", "field"}}, and the Temporal mapping.

An overloaded or unreachable dependency (the database, Temporal) is a 503 with a `Retry-After`
header and a message that names no internals; the detail goes to the log.
"""

from __future__ import annotations

import decimal
import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
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


# A validation message may quote what was sent (a custom validator's text): cut it short.
_MAX_MESSAGE = 200


def _short(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def validation_body(exc: RequestValidationError) -> dict[str, Any]:
    """Return the contract's error shape for a refused request, without the values sent.

    FastAPI's own answer echoes each bad value back (`input`, `ctx`): a 5,000-character field
    came back whole. The first problem is the `error`; `detail` keeps FastAPI's list of every
    problem (`loc`, `msg`, `type`) for clients that read it, minus the values.
    """
    errors = list(exc.errors())
    detail = [
        {
            "loc": [_short(str(part)) if isinstance(part, str) else part for part in e["loc"]],
            "msg": _short(str(e["msg"])),
            "type": str(e["type"]),
        }
        for e in errors
    ]
    if not detail:
        return {"error": {"code": "invalid", "message": "invalid request", "field": None}}
    first = detail[0]
    # The location's first part says where (body, query, path, header): the field is the rest.
    parts = [str(part) for part in first["loc"]]
    field = ".".join(parts[1:]) if len(parts) > 1 else (parts[0] if parts else None)
    return {
        "error": {"code": "invalid", "message": first["msg"], "field": field or None},
        "detail": detail,
    }


class BodySizeLimit:
    """Answer 413 in the contract's shape to a request body longer than `max_bytes`.

    Looks at `Content-Length` first, and counts what a chunked body actually sends: once over
    the limit, the application reads an end of stream and its answer is replaced by the 413.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, send: Send) -> None:
        body = JSONResponse(
            status_code=413,
            content={
                "error": {
                    "code": "payload_too_large",
                    "message": f"request body is larger than {self.max_bytes} bytes",
                    "field": None,
                }
            },
        )
        await send({"type": "http.response.start", "status": 413, "headers": body.raw_headers})
        await send({"type": "http.response.body", "body": body.body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await self._refuse(send)
                    return
        received = 0
        too_large = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if too_large:
                return  # the application's answer to a cut-off body is replaced below
            started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not too_large:
                raise
        if too_large and not started:
            await self._refuse(send)


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None


class ErrorBody(BaseModel):
    """Every refusal's body: `{"error": {"code", "message", "field"}}`."""

    error: ErrorDetail


def _documented(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


# The refusals any authenticated route may answer, declared in the OpenAPI schema (422 is
# FastAPI's own, declared per route; validation answers carry `error` besides its `detail`).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _documented("No token, a bad token, or a user the policy does not know."),
    403: _documented("The caller may not do this (in this fund)."),
    404: _documented("Not found, or not visible to the caller."),
    409: _documented("The order's (or instruction's) state does not allow this now."),
    413: _documented("The request body is larger than OMS_API_MAX_BODY_BYTES."),
    503: _documented("The database or Temporal is busy or unreachable; see Retry-After."),
}
# Creating, releasing and amending in the scope of an engaged kill switch.
LOCKED_RESPONSES: dict[int | str, dict[str, Any]] = {
    423: _documented("A kill switch covers the order's fund (kill_switch_engaged)."),
}


# Starlette's own refusals (no route, wrong method), in the contract's shape.
_HTTP_CODES = {
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


def install_error_handlers(app: FastAPI) -> None:
    """Make every known failure a JSON error with the right status (never a bare 500)."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _body(exc.status, exc.code, exc.message, exc.field, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code in (204, 304):
            return Response(status_code=exc.status_code, headers=exc.headers)
        if exc.status_code == 400:
            # FastAPI could not read the body (not UTF-8, a form it cannot parse): the input is
            # at fault, as with malformed JSON, which FastAPI answers 422.
            return _body(422, "invalid", "the request body cannot be read", "body")
        code = _HTTP_CODES.get(exc.status_code, "error")
        return _body(exc.status_code, code, str(exc.detail), None, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content=validation_body(exc))

    @app.exception_handler(decimal.DecimalException)
    async def _decimal(_: Request, exc: decimal.DecimalException) -> JSONResponse:
        # A number beyond what decimal arithmetic can hold (1e28 against a lot size): the input
        # is at fault, not the server.
        logger.info("decimal arithmetic refused a number: %r", exc)
        return _body(422, "invalid", "a number is out of range")

    # The last resort: answered in the contract's shape, with no exception text; Starlette
    # still logs the traceback (and /metrics counts the 500, see api.metrics).
    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return _body(500, "internal_error", "the request failed; it has been logged")

    @app.exception_handler(WorkflowUpdateFailedError)
    async def _update_failed(_: Request, exc: WorkflowUpdateFailedError) -> JSONResponse:
        api = from_update_failure(exc)
        return _body(api.status, api.code, api.message, api.field)

    @app.exception_handler(WorkflowQueryFailedError)
    async def _query_failed(_: Request, exc: WorkflowQueryFailedError) -> JSONResponse:
        # The failure's text comes from the worker (it may carry paths): it goes to the log.
        logger.warning("order query failed: %s", exc.message)
        return _body(503, "query_failed", "the order could not be read; try again shortly")

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
