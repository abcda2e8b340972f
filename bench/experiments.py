"""Proposed changes to the OMS, monkeypatched into the benchmark's own processes, to measure them.

Nothing here is the OMS: each experiment replaces something at run time so that
`python -m bench.lifecycle --experiment NAME` shows what a change would save before anyone edits
workflows/, api/ or worker.py. A run that uses one prints EXPERIMENT and its name, and the
summary says so. They approximate the change (enough to measure its cost), not implement it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from temporalio.converter import DataConverter
from temporalio.worker import UnsandboxedWorkflowRunner, WorkflowRunner


@dataclass(frozen=True)
class Experiment:
    describe: str
    apply: Callable[[], None]


def use_runner(name: str, converter: DataConverter) -> WorkflowRunner:
    """Return the workflow runner `name`, and make OMS workers built in this process use it.

    `sandbox` is `workflow_runner.workflow_runner(converter)` (the sandbox, our modules passed
    through, serialization contexts answered outside it); `unsandboxed` is
    `UnsandboxedWorkflowRunner`.
    """
    import worker
    import workflow_runner

    if name == "unsandboxed":
        runner: WorkflowRunner = UnsandboxedWorkflowRunner()
        _replace(worker, "workflow_runner", lambda _converter: runner)
        return runner
    return workflow_runner.workflow_runner(converter)


def apply(names: list[str]) -> None:
    """Apply the experiments `names`, in order."""
    for name in names:
        EXPERIMENTS[name].apply()


def _replace(owner: object, name: str, value: object) -> Any:
    """Set `owner.name` to `value` and return what it was (attributes mypy cannot see as public)."""
    before = getattr(owner, name)
    setattr(owner, name, value)
    return before


def _long_poll_from_read_model() -> None:
    # GET /orders/{id}?wait_for=... waits on the read model, then Queries the workflow. When
    # the order has closed (settled closes it), the worker has evicted it, and the Query replays
    # the whole history in a new instance. Answer from the read model row instead (here only
    # the row's fields, with the rest empty: enough to measure the replay it saves).
    from api import deps
    from api.order_access import query_order as queried
    from api.routers import orders
    from api.schemas import OrderPublic
    from db.tables import OrderRow
    from domain.models import ApprovalState

    async def from_row(services: deps.Services, order_id: str, workflow_type: str) -> OrderPublic:
        row = await deps.run_db(services, lambda session: session.get(OrderRow, order_id))
        if row is None:
            return await queried(services, order_id, workflow_type)
        # Lists empty, optional fields None, the rest from the row.
        fields: dict[str, Any] = {
            name: [] if "list[" in str(info.annotation) else None
            for name, info in OrderPublic.model_fields.items()
        }
        fields.update(
            {name: getattr(row, name) for name in OrderRow.model_fields if name in fields},
            notes="",
            status_actor="",
            status_reason="",
            approvals=ApprovalState(),
            leaves_quantity=row.quantity - (row.filled_quantity or Decimal(0)),
        )
        return OrderPublic.model_validate(fields)

    _replace(orders, "query_order", from_row)


def _simulator_keepalive() -> None:
    # The simulators share one httpx client with the default pool (20 kept-alive connections);
    # with more reports and confirmations in flight, connections are closed and opened again,
    # and httpcore scans its pool on every request. Keep as many as may be in flight.
    import types

    import httpx

    import worker

    def client(*args: Any, **kwargs: Any) -> httpx.AsyncClient:
        kwargs.setdefault(
            "limits", httpx.Limits(max_connections=200, max_keepalive_connections=200)
        )
        return httpx.AsyncClient(*args, **kwargs)

    _replace(worker, "httpx", types.SimpleNamespace(AsyncClient=client))


def _no_http_middleware() -> None:
    # The metrics middleware is a BaseHTTPMiddleware (`app.middleware("http")`), which runs
    # each request through an extra task, memory stream and response wrapper. Remove it to
    # measure that (a pure ASGI middleware would keep the metrics for a fraction).
    from starlette.middleware.base import BaseHTTPMiddleware

    import devserver
    from api.app import create_app as create

    def create_app(*args: Any, **kwargs: Any) -> Any:
        app = create(*args, **kwargs)
        app.user_middleware = [
            m for m in app.user_middleware if getattr(m, "cls", None) is not BaseHTTPMiddleware
        ]
        return app

    _replace(devserver, "create_app", create_app)


def _short_gil_switch() -> None:
    # A thread that waits for the GIL (after a database round trip, an activity finishing)
    # waits up to the switch interval (5 ms) while another thread computes; a transaction of
    # several round trips pays it each time, and holds its row or SQLite locks meanwhile.
    sys.setswitchinterval(0.0005)


EXPERIMENTS: dict[str, Experiment] = {
    "gil-switch-0.5ms": Experiment(
        "sys.setswitchinterval(0.0005) instead of 5 ms: threads waiting for the GIL get it sooner",
        _short_gil_switch,
    ),
    "long-poll-read-model": Experiment(
        "GET /orders/{id}?wait_for= answers from the read-model row, not a Query (which replays"
        " a closed order's whole history)",
        _long_poll_from_read_model,
    ),
    "simulator-keepalive": Experiment(
        "the simulators' httpx client keeps up to 200 connections alive (default 20)",
        _simulator_keepalive,
    ),
    "no-http-middleware": Experiment(
        "the API's BaseHTTPMiddleware (metrics) removed", _no_http_middleware
    ),
}
