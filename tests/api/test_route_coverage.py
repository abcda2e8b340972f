"""Every route of the API is authorised: walked from the OpenAPI schema, so a new one is covered.

Without credentials every route answers 401, except the few that are public by design (listed
here, each with its reason); so does a valid token for a name the policy does not know. A user
who may only read gets 403, 404 (an order that user cannot see) or 422 from every write.
"""

from __future__ import annotations

from typing import Any

from tests.api.conftest import Stack

ORDER_ID = "ord_" + "0" * 20
PATH_VALUES = {"order_id": ORDER_ID, "settlement_id": "set_unknown", "fund": "fund-alpha"}

# Public by design, and why.
PUBLIC = {
    ("get", "/healthz"): "load balancers probe it; it names no internals",
    ("post", "/chat/slack/commands"): "authenticated by Slack's request signature instead",
    ("post", "/chat/slack/actions"): "authenticated by Slack's request signature instead",
}

BODIES: dict[str, Any] = {
    "/orders": {
        "client_order_id": "route-1",
        "fund": "fund-alpha",
        "symbol": "AAPL",
        "side": "buy",
        "quantity": "1",
        "order_type": "market",
    },
    "/compliance/check": {
        "client_order_id": "route-2",
        "fund": "fund-alpha",
        "symbol": "AAPL",
        "side": "buy",
        "quantity": "1",
        "order_type": "market",
    },
    "/executions": {
        "order_id": ORDER_ID,
        "exec_id": "x-1",
        "exec_type": "new",
        "transact_time": "2026-01-01T00:00:00Z",
    },
    "/kill-switch/{fund}": {"engaged": True, "reason": "route walk"},
    "/orders/{order_id}/override": {"justification": "x", "rules": ["x"]},
    "/orders/{order_id}/reject": {"reason": "x"},
    "/orders/{order_id}/approve": {},
}
QUERIES = {"/compliance/rules": "?fund=fund-alpha"}


def routes(stack: Stack, schema: dict[str, Any]) -> list[tuple[str, str]]:
    return [(method, path) for path, ops in schema["paths"].items() for method in ops]


async def call(stack: Stack, user: str | None, method: str, path: str) -> int:
    concrete = path.format(**PATH_VALUES) + QUERIES.get(path, "")
    body = BODIES.get(path) if method in ("post", "put") else None
    response = await stack.call(user, method.upper(), concrete, body)
    return response.status_code


async def test_every_route_needs_credentials_unless_public_by_design(stack: Stack) -> None:
    schema = (await stack.http.get("/openapi.json")).json()
    walked = routes(stack, schema)
    assert len(walked) >= 20
    for method, path in walked:
        status = await call(stack, None, method, path)
        if (method, path) in PUBLIC:
            assert status != 500, (method, path)
        else:
            assert status == 401, (method, path, status)


async def test_metrics_are_not_served_on_the_api_port(stack: Stack) -> None:
    """/metrics has a listener of its own (OMS_METRICS_PORT), in every mode."""
    schema = (await stack.http.get("/openapi.json")).json()
    assert "/metrics" not in schema["paths"]
    assert (await stack.http.get("/metrics")).status_code == 404


async def test_an_unknown_user_is_refused_on_every_route(stack: Stack) -> None:
    """A token signed right for a name the policy does not know is no one."""
    schema = (await stack.http.get("/openapi.json")).json()
    for method, path in routes(stack, schema):
        if (method, path) not in PUBLIC:
            assert await call(stack, "nobody", method, path) == 401, (method, path)


async def test_a_reader_changes_nothing_through_any_write_route(stack: Stack) -> None:
    """mike (middle office) reads orders and positions; every write refuses him."""
    schema = (await stack.http.get("/openapi.json")).json()
    for method, path in routes(stack, schema):
        if (method, path) in PUBLIC or method == "get":
            continue
        status = await call(stack, "mike", method, path)
        assert status in (403, 404, 422), (method, path, status)
