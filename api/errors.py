"""One error shape for every refusal: {"error": {"code", "message", "field"}}, and the Temporal mapping."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from temporalio.client import WorkflowQueryFailedError, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from domain.errors import RefusalType


class ApiError(Exception):
    """A refusal with its HTTP status, a stable code, a message for people and the field at fault."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


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
}


def from_update_failure(err: WorkflowUpdateFailedError) -> ApiError:
    """Translate a refused or failed Update into the status its refusal type stands for."""
    cause = err.cause
    if isinstance(cause, ApplicationError) and cause.type in _REFUSAL_STATUS:
        status, code = _REFUSAL_STATUS[cause.type]
        return ApiError(status, code, cause.message)
    return ApiError(409, "conflict", str(cause) if cause else str(err))


def from_rpc_error(err: RPCError) -> ApiError:
    if err.status is RPCStatusCode.NOT_FOUND:
        return not_found()
    return ApiError(503, "temporal_unavailable", f"order service unavailable: {err.message}")


def _body(status: int, code: str, message: str, field: str | None = None) -> JSONResponse:
    return JSONResponse(
        status_code=status, content={"error": {"code": code, "message": message, "field": field}}
    )


def install_error_handlers(app: FastAPI) -> None:
    """Make every known failure a JSON error with the right status (never a bare 500)."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _body(exc.status, exc.code, exc.message, exc.field)

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
        return _body(api.status, api.code, api.message)
