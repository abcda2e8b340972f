"""A small Prometheus text exposition: request counts and latency per route, without extra packages."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

from fastapi import Request, Response

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Counters and a latency histogram per (method, route, status)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.latency_buckets: dict[tuple[str, str], list[int]] = defaultdict(
            lambda: [0] * len(_BUCKETS)
        )
        self.latency_sum: dict[tuple[str, str], float] = defaultdict(float)
        self.latency_count: dict[tuple[str, str], int] = defaultdict(int)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests[(method, route, status)] += 1
        key = (method, route)
        self.latency_sum[key] += seconds
        self.latency_count[key] += 1
        for i, bound in enumerate(_BUCKETS):
            if seconds <= bound:
                self.latency_buckets[key][i] += 1

    def render(self) -> str:
        lines = [
            "# HELP oms_http_requests_total HTTP requests by method, route and status.",
            "# TYPE oms_http_requests_total counter",
        ]
        for (method, route, status), count in sorted(self.requests.items()):
            lines.append(
                f'oms_http_requests_total{{method="{method}",route="{route}",status="{status}"}} {count}'
            )
        lines += [
            "# HELP oms_http_request_seconds HTTP request latency.",
            "# TYPE oms_http_request_seconds histogram",
        ]
        for (method, route), buckets in sorted(self.latency_buckets.items()):
            labels = f'method="{method}",route="{route}"'
            for bound, count in zip(_BUCKETS, buckets, strict=True):
                lines.append(f'oms_http_request_seconds_bucket{{{labels},le="{bound}"}} {count}')
            total = self.latency_count[(method, route)]
            lines.append(f'oms_http_request_seconds_bucket{{{labels},le="+Inf"}} {total}')
            lines.append(
                f"oms_http_request_seconds_sum{{{labels}}} {self.latency_sum[(method, route)]:.6f}"
            )
            lines.append(f"oms_http_request_seconds_count{{{labels}}} {total}")
        return "\n".join(lines) + "\n"


def route_template(request: Request) -> str:
    """Return the matched route's path template, so ids do not explode the label set."""
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"


def metrics_middleware(
    metrics: Metrics,
) -> Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]:
    async def middleware(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:
            # Unhandled: the server answers 500 outside this middleware; count it here.
            metrics.observe(
                request.method, route_template(request), 500, time.perf_counter() - started
            )
            raise
        metrics.observe(
            request.method,
            route_template(request),
            response.status_code,
            time.perf_counter() - started,
        )
        return response

    return middleware
