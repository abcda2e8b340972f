"""Request counters and latency per route, in `prometheus_client`, served on a listener of their own.

The API port never serves them: `serve_metrics` starts prometheus_client's HTTP server on
`OMS_METRICS_HOST:OMS_METRICS_PORT` (loopback unless configured) in the process that runs the
API (`oms api`, `oms dev`). Each app has its own registry, so apps built side by side (tests)
count apart.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import start_http_server
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from config import Settings

logger = logging.getLogger(__name__)

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LABELS = ("method", "route", "status")


class MetricsPortInUseError(RuntimeError):
    """The metrics listener's port is taken."""


class Metrics:
    """A request counter and a latency histogram per (method, route template, status)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "oms_http_requests",
            "HTTP requests by method, route and status.",
            _LABELS,
            registry=self.registry,
        )
        self.latency = Histogram(
            "oms_http_request_seconds",
            "HTTP request latency by method, route and status.",
            _LABELS,
            buckets=_BUCKETS,
            registry=self.registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        labels = (method, route, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

    def render(self) -> str:
        """Return the Prometheus text exposition of this registry."""
        return generate_latest(self.registry).decode()


def route_template(scope: MutableMapping[str, Any]) -> str:
    """Return the matched route's path template, so ids do not explode the label set."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"


class MetricsMiddleware:
    """Count and time every HTTP answer by method, route template and status.

    A plain ASGI middleware: it watches the answer's status go by, where an `@app.middleware`
    function would run each request through an extra task, stream and response wrapper.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, watched)
        except Exception:
            # Unhandled: the server answers 500 outside this middleware; count it here.
            status = 500
            raise
        finally:
            self._metrics.observe(
                scope["method"], route_template(scope), status, time.perf_counter() - started
            )


@contextlib.contextmanager
def serve_metrics(settings: Settings, metrics: Metrics) -> Iterator[str | None]:
    """Serve `metrics` on `OMS_METRICS_HOST:OMS_METRICS_PORT` until the block exits.

    Yields the listener's URL, or None when `OMS_METRICS_PORT` is 0 (no listener).

    Raises:
        MetricsPortInUseError: the port is taken, naming the setting that moves it.
    """
    if not settings.metrics_port:
        yield None
        return
    try:
        server, thread = start_http_server(
            settings.metrics_port, settings.metrics_host, registry=metrics.registry
        )
    except OSError as exc:
        raise MetricsPortInUseError(
            f"cannot listen on port {settings.metrics_port} on {settings.metrics_host} "
            f"({exc.strerror or exc}); set OMS_METRICS_PORT to another port "
            "(0 turns the metrics listener off)"
        ) from exc
    host, port = server.server_address[:2]
    url = f"http://{host!s}:{port}/metrics"
    logger.info("metrics served on %s", url)
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
