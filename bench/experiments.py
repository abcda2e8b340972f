"""Proposed changes to the OMS, monkeypatched into the benchmark's process only, to measure them.

Nothing here is the OMS: each experiment replaces something at run time so that
`python -m bench.lifecycle --experiment NAME` shows what a change would save before anyone edits
workflows/, api/ or worker.py. A run that uses one prints EXPERIMENT and its name, and the
summary says so. They approximate the change (enough to measure its cost), not implement it.
"""

from __future__ import annotations

import functools
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class Experiment:
    describe: str
    apply: Callable[[], None]


def _replace(owner: object, name: str, value: object) -> Any:
    """Set `owner.name` to `value` and return what it was (attributes mypy cannot see as public)."""
    before = getattr(owner, name)
    setattr(owner, name, value)
    return before


def _bytecode_cache() -> None:
    # The sandbox re-imports workflows.order (and what it imports that is not passed through)
    # for each new workflow instance. With PYTHONDONTWRITEBYTECODE and no __pycache__ (an
    # editable install here), that is a compile() of the source each time; an installed wheel
    # has .pyc files. Cache bytecode in a private folder, as an installed package would have it.
    sys.dont_write_bytecode = False
    sys.pycache_prefix = tempfile.mkdtemp(prefix="oms-bench-pycache-")


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
        fields: dict[str, Any] = {
            name: getattr(row, name)
            for name in OrderRow.model_fields
            if name in OrderPublic.model_fields
        }
        fields.update(
            approvals=ApprovalState(),
            leaves_quantity=row.quantity - (row.filled_quantity or Decimal(0)),
        )
        return OrderPublic.model_construct(**fields)

    _replace(orders, "query_order", from_row)


def _cache_authorisation() -> None:
    # Casbin's enforce re-parses its matcher (simpleeval over ast) on every call, under a lock;
    # the policy is loaded once at start-up, so a decision can be remembered.
    from api.auth import Authorizer

    Authorizer.check = functools.lru_cache(maxsize=4096)(Authorizer.check)  # type: ignore[method-assign]


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
    "bytecode-cache": Experiment(
        "bytecode cached in a temp folder (as an installed wheel has it), despite"
        " PYTHONDONTWRITEBYTECODE: the sandbox's per-workflow re-import stops compiling source",
        _bytecode_cache,
    ),
    "long-poll-read-model": Experiment(
        "GET /orders/{id}?wait_for= answers from the read-model row, not a Query (which replays"
        " a closed order's whole history)",
        _long_poll_from_read_model,
    ),
    "authz-cache": Experiment(
        "Authorizer.check memoised (the policy is static while the API runs)", _cache_authorisation
    ),
    "no-http-middleware": Experiment(
        "the API's BaseHTTPMiddleware (metrics) removed", _no_http_middleware
    ),
}
