"""Hardening: modes and start-up refusals, exposure, input that must never reach a 5xx."""

from __future__ import annotations

import base64
import gc
import json
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

import cli
from api.app import create_app
from api.metrics import Metrics, MetricsPortInUseError, serve_metrics
from config import DEV_AUTHORITY_SIGNING_KEY, Settings, UnsafeSettingsError
from tests.api.conftest import Stack, free_port
from worker import run_workers

OWN_SECRET = "a-production-secret-of-at-least-thirty-two-bytes"
# Any 32 bytes other than the development key's (base64).
OWN_SIGNING_KEY = base64.b64encode(b"\x07" * 32).decode()


def production(**overrides: Any) -> Settings:
    """Production settings with nothing from the environment's OMS_ENV."""
    return Settings(env="production", **overrides)


def order_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "client_order_id": f"hard-{uuid.uuid4().hex[:10]}",
        "fund": "fund-alpha",
        "symbol": "AAPL",
        "side": "buy",
        "quantity": 100,
        "order_type": "limit",
        "limit_price": "230.25",
        "time_in_force": "gtc",
    }
    body.update(overrides)
    return body


def assert_error_shape(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"code", "message", "field"}
    return error


@asynccontextmanager
async def another_api(
    stack: Stack, app_hook: Any = None, **overrides: Any
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """An API on the stack's database and Temporal, with some settings changed, in-process."""
    settings = stack.settings.model_copy(update=overrides)
    app = create_app(settings, stack.env.client)
    if app_hook is not None:
        app_hook(app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
            base_url="http://other",
        ) as http,
    ):
        yield app, http


# -- Modes -------------------------------------------------------------------------------------


@pytest.fixture
def no_oms_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMS_ENV", raising=False)


def test_production_is_the_default_outside_oms_dev(no_oms_env: None) -> None:
    assert Settings(_env_file=None).env == "production"


def test_oms_dev_runs_as_development(no_oms_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def fake_dev(_: object, settings: Settings) -> int:
        seen.append(settings.env)
        return 0

    monkeypatch.setattr(cli, "_cmd_dev", fake_dev)
    assert cli.main(["dev"]) == 0
    monkeypatch.setenv("OMS_ENV", "production")
    assert cli.main(["dev"]) == 0
    assert seen == ["development", "production"]


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"authority_signing_key": OWN_SIGNING_KEY}, "OMS_JWT_SECRET"),
        ({"jwt_secret": OWN_SECRET}, "OMS_AUTHORITY_SIGNING_KEY"),
        (
            {
                "jwt_secret": OWN_SECRET,
                "authority_signing_key": OWN_SIGNING_KEY,
                "chat_webhook_url": "http://chat.invalid/hook",
            },
            "OMS_SLACK_SIGNING_SECRET",
        ),
    ],
)
def test_production_api_refuses_development_secrets(
    overrides: dict[str, Any], variable: str
) -> None:
    with pytest.raises(UnsafeSettingsError, match=variable):
        create_app(production(**overrides))


async def test_production_workers_refuse_development_secrets() -> None:
    with pytest.raises(UnsafeSettingsError, match="OMS_JWT_SECRET"):
        await run_workers(production(authority_signing_key=OWN_SIGNING_KEY))
    with pytest.raises(UnsafeSettingsError, match="OMS_AUTHORITY_SIGNING_KEY"):
        await run_workers(production(jwt_secret=OWN_SECRET))
    # Trusting the development key alongside one's own is refused too.
    dev_public = (
        Settings(authority_signing_key=DEV_AUTHORITY_SIGNING_KEY)
        .verify_keys()[0]
        .public_bytes_raw()
    )
    trusted = [base64.b64encode(dev_public).decode()]
    with pytest.raises(UnsafeSettingsError, match="OMS_AUTHORITY_VERIFY_KEYS"):
        await run_workers(
            production(
                jwt_secret=OWN_SECRET,
                authority_signing_key=OWN_SIGNING_KEY,
                authority_verify_keys=trusted,
            )
        )


def test_oms_api_in_production_names_the_variable(
    no_oms_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["api"]) == 2
    err = capsys.readouterr().err
    assert "OMS_JWT_SECRET" in err and "OMS_AUTHORITY_SIGNING_KEY" in err


def test_production_serves_no_docs_and_no_chat_with_the_development_secret() -> None:
    safe = {"jwt_secret": OWN_SECRET, "authority_signing_key": OWN_SIGNING_KEY}
    closed = create_app(production(**safe))
    assert (closed.docs_url, closed.redoc_url, closed.openapi_url) == (None, None, None)
    opened = create_app(production(api_docs=True, **safe))
    paths = opened.openapi()["paths"]
    assert "/orders" in paths
    assert not any(p.startswith("/chat/") for p in paths)
    own_chat = create_app(
        production(api_docs=True, slack_signing_secret="own-slack-secret", **safe)
    )
    assert "/chat/slack/commands" in own_chat.openapi()["paths"]


async def test_docs_are_served_without_a_cdn(stack: Stack) -> None:
    for page in ("/docs", "/redoc"):
        html = (await stack.http.get(page)).text
        assert "cdn" not in html.lower() and "https://" not in html, html
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
            if asset in html:
                src = html.split(asset)[0].rsplit('"', 1)[1] + asset
                assert (await stack.http.get(src)).status_code == 200, src
    assert (await stack.http.get("/openapi.json")).status_code == 200


# -- Exposure ----------------------------------------------------------------------------------


async def test_metrics_leave_on_their_own_listener_and_count_500s(stack: Stack) -> None:
    def add_failing_route(app: FastAPI) -> None:
        @app.get("/boom")
        async def boom() -> None:
            raise RuntimeError("secret internals at /srv/oms/db.py")

    settings = stack.settings.model_copy(update={"metrics_port": free_port()})
    url = f"http://127.0.0.1:{settings.metrics_port}/metrics"
    async with another_api(stack, add_failing_route) as (app, http):
        # Not on the API port, in any mode: the route does not exist there.
        assert (await http.get("/metrics")).status_code == 404
        assert (await http.get("/metrics", headers=stack.auth("cora"))).status_code == 404
        failed = await http.get("/boom")
        error = assert_error_shape(failed, 500)
        assert "internals" not in failed.text and error["code"] == "internal_error"
        assert (await http.get("/orders", headers=stack.auth("alice"))).status_code == 200
        with serve_metrics(settings, app.state.metrics) as served:
            assert served == url
            async with httpx.AsyncClient() as scraper:
                scraped = await scraper.get(url)
        assert scraped.status_code == 200
        assert scraped.headers["content-type"].startswith("text/plain")
        text = scraped.text
        assert 'oms_http_requests_total{method="GET",route="/boom",status="500"} 1.0' in text
        assert 'oms_http_requests_total{method="GET",route="/orders",status="200"} 1.0' in text
        assert 'route="unmatched",status="404"' in text  # /metrics itself, unmatched
        assert 'oms_http_request_seconds_count{method="GET",route="/boom",status="500"} 1.0' in text
    # The listener is gone with its block.
    async with httpx.AsyncClient(timeout=2) as scraper:
        with pytest.raises(httpx.ConnectError):
            await scraper.get(url)


async def test_metrics_listener_is_off_at_port_0_and_names_a_taken_port(stack: Stack) -> None:
    metrics = Metrics()
    with serve_metrics(stack.settings.model_copy(update={"metrics_port": 0}), metrics) as url:
        assert url is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = stack.settings.model_copy(update={"metrics_port": taken.getsockname()[1]})
        with (
            pytest.raises(MetricsPortInUseError, match="OMS_METRICS_PORT"),
            serve_metrics(settings, metrics),
        ):
            pass


def test_each_app_counts_in_a_registry_of_its_own(stack: Stack) -> None:
    first, second = (create_app(stack.settings, stack.env.client) for _ in range(2))
    first.state.metrics.observe("GET", "/orders", 200, 0.01)
    assert 'route="/orders"' in first.state.metrics.render()
    assert 'route="/orders"' not in second.state.metrics.render()


async def test_healthz_names_no_internals(stack: Stack) -> None:
    health = (await stack.http.get("/healthz")).json()
    assert set(health) == {"status", "temporal", "database"}
    assert set(health.values()) <= {"ok", "degraded", "unreachable", "timeout"}


async def test_raw_history_has_no_worker_identity_or_stack_trace(stack: Stack) -> None:
    created = await stack.call("alice", "POST", "/orders", order_body())
    assert created.status_code == 201, created.text
    order_id = created.json()["order_id"]
    raw = await stack.call("cora", "GET", f"/orders/{order_id}/history?format=temporal")
    assert raw.status_code == 200
    assert raw.json()["events"]
    assert '"identity"' not in raw.text and '"stackTrace"' not in raw.text
    assert f"{os.getpid()}@{socket.gethostname()}" not in raw.text


# -- No 5xx from input, errors without internals -----------------------------------------------


async def test_a_large_body_is_refused_with_413(stack: Stack) -> None:
    big = order_body(notes="x" * (2 * 1024 * 1024))
    response = await stack.http.post("/orders", json=big, headers=stack.auth("alice"))
    assert assert_error_shape(response, 413)["code"] == "payload_too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(40):
            yield b" " * 65536

    headers = {**stack.auth("alice"), "content-type": "application/json"}
    streamed = await stack.http.post("/orders", content=chunks(), headers=headers)
    assert_error_shape(streamed, 413)


async def test_validation_errors_use_the_contract_shape_without_the_input(stack: Stack) -> None:
    long = "Q" * 5000
    response = await stack.call("alice", "POST", "/orders", order_body(notes=long))
    error = assert_error_shape(response, 422)
    assert error["code"] == "invalid" and error["field"] == "notes"
    assert "QQQQQQQQ" not in response.text and "input" not in response.text


async def test_an_unknown_fund_is_refused_like_a_forbidden_one(stack: Stack) -> None:
    nope = await stack.call("bob", "POST", "/orders", order_body(fund="fund-nope"))
    alpha = await stack.call("bob", "POST", "/orders", order_body(fund="fund-alpha"))
    assert assert_error_shape(nope, 403)["code"] == assert_error_shape(alpha, 403)["code"]
    assert nope.json()["error"]["message"].replace("fund-nope", "F") == alpha.json()["error"][
        "message"
    ].replace("fund-alpha", "F")


async def test_a_cursor_without_an_offset_is_refused_with_422(stack: Stack) -> None:
    naive = json.dumps(["2026-01-02T03:04:05", "o-1"]).encode()
    cursor = base64.urlsafe_b64encode(naive).decode().rstrip("=")
    assert assert_error_shape(await stack.call("alice", "GET", f"/orders?cursor={cursor}"), 422)
    aware = json.dumps([datetime(2026, 1, 2, tzinfo=UTC).isoformat(), "o-1"]).encode()
    cursor = base64.urlsafe_b64encode(aware).decode().rstrip("=")
    assert (await stack.call("alice", "GET", f"/orders?cursor={cursor}")).status_code == 200


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": [value]}
    return value


HOSTILE_NUMBERS: list[Any] = [
    "1e400",
    "-1e400",
    "1e28",
    "1e24",
    "1e-30",
    "NaN",
    "Infinity",
    "-Infinity",
    "sNaN",
    "1" * 60,
    "0." + "1" * 60,
    10**40,
    1e300,
    -5,
    0,
    True,
    [],
    {},
    None,
    "x" * 10_000,
]


def _raw(body: dict[str, Any], key: str, literal: str) -> str:
    """The body as JSON with one value replaced by a literal json.dumps would not write."""
    text = json.dumps({**body, key: "__HOLE__"})
    return text.replace('"__HOLE__"', literal)


async def _assert_no_5xx(stack: Stack, user: str, path: str, content: str) -> None:
    headers = {**stack.auth(user), "content-type": "application/json"}
    response = await stack.http.post(path, content=content, headers=headers)
    assert response.status_code < 500, (path, content[:200], response.text)
    if response.status_code >= 400:
        assert "Traceback" not in response.text and "/work/" not in response.text


@pytest.mark.parametrize("field", ["quantity", "limit_price"])
async def test_fuzzed_orders_and_checks_never_answer_5xx(stack: Stack, field: str) -> None:
    for value in HOSTILE_NUMBERS:
        for path in ("/orders", "/compliance/check"):
            body = order_body(allocations=[])
            await _assert_no_5xx(stack, "alice", path, json.dumps({**body, field: value}))
    for literal in ("1e400", "1e28", "NaN", "Infinity", "-Infinity", "1" * 500):
        for path in ("/orders", "/compliance/check"):
            await _assert_no_5xx(stack, "alice", path, _raw(order_body(), field, literal))


async def test_fuzzed_executions_never_answer_5xx(stack: Stack) -> None:
    report = {
        "order_id": "o-does-not-exist",
        "exec_id": f"x-{uuid.uuid4().hex[:8]}",
        "exec_type": "trade",
        "last_quantity": "1",
        "last_price": "1",
        "transact_time": datetime.now(UTC).isoformat(),
    }
    for field in ("last_quantity", "last_price"):
        for value in HOSTILE_NUMBERS:
            await _assert_no_5xx(
                stack, "sim-venue", "/executions", json.dumps({**report, field: value})
            )
        for literal in ("1e400", "1e20", "NaN", "Infinity"):
            await _assert_no_5xx(stack, "sim-venue", "/executions", _raw(report, field, literal))
    for field in ("order_id", "exec_id", "text", "transact_time", "exec_type"):
        await _assert_no_5xx(
            stack, "sim-venue", "/executions", json.dumps({**report, field: "z" * 100_000})
        )


async def test_deeply_nested_and_malformed_json_never_answer_5xx(stack: Stack) -> None:
    for path, user in (
        ("/orders", "alice"),
        ("/compliance/check", "alice"),
        ("/executions", "sim-venue"),
    ):
        await _assert_no_5xx(stack, user, path, "[" * 10_000 + "]" * 10_000)
        await _assert_no_5xx(stack, user, path, '{"a":' * 5_000 + "1" + "}" * 5_000)
        await _assert_no_5xx(stack, user, path, json.dumps({"notes": _nested(200)}))
        await _assert_no_5xx(stack, user, path, '{"quantity": ')
        await _assert_no_5xx(stack, user, path, "\x00\xff")
        await _assert_no_5xx(stack, user, path, json.dumps([order_body()] * 50))


# -- Unanswered tracebacks ---------------------------------------------------------------------


async def test_an_idempotent_repeat_logs_no_unretrieved_future(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    body = order_body()
    first = await stack.call("alice", "POST", "/orders", body)
    assert first.status_code == 201, first.text
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        for _ in range(3):
            again = await stack.call("alice", "POST", "/orders", body)
            assert again.status_code == 200, again.text
        gc.collect()
    assert "never retrieved" not in caplog.text, caplog.text


@pytest.mark.parametrize(
    ("symbol", "price", "quantity"),
    [
        ("AAPL", "231.001", "10"),  # a tenth of a cent: the tick is 0.01
        ("AAPL", "230.123456789012", "10"),
        ("EURUSD", "1.085001", "1000"),  # the pair's tick is 0.00001
        ("BTC-USD", "64000.005", "0.5"),
    ],
)
async def test_a_limit_price_between_ticks_is_refused_naming_the_tick(
    stack: Stack, symbol: str, price: str, quantity: str
) -> None:
    body = order_body(
        symbol=symbol,
        quantity=quantity,
        limit_price=price,
        allocations=[{"account": "alpha-main", "quantity": quantity}],
    )
    for path in ("/orders", "/compliance/check"):
        response = await stack.call("alice", "POST", path, body)
        assert response.status_code == 422, (path, response.text)
        error = response.json()["error"]
        assert error["field"] == "limit_price" and "tick size" in error["message"], error
    listed = (await stack.call("alice", "GET", "/orders?limit=200")).json()["items"]
    assert body["client_order_id"] not in {o["client_order_id"] for o in listed}


async def test_an_amend_between_ticks_or_lots_is_refused_and_changes_nothing(stack: Stack) -> None:
    created = await stack.call("alice", "POST", "/orders", order_body(quantity=10, allocations=[]))
    assert created.status_code == 201, created.text
    order_id = created.json()["order_id"]
    for body, field in (
        ({"limit_price": "230.005"}, "limit_price"),
        ({"quantity": "0.5"}, "quantity"),
    ):
        response = await stack.call("alice", "POST", f"/orders/{order_id}/amend", body)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["field"] == field
    order = (await stack.call("alice", "GET", f"/orders/{order_id}")).json()
    assert (order["quantity"], order["limit_price"]) == ("10", "230.25")
    await stack.call("alice", "POST", f"/orders/{order_id}/cancel", {"reason": "done"})
