"""HttpCallbacks: how the simulators reach the OMS's HTTP API, against a stand-in of its two routes.

The stand-in is a bare ASGI app served in-process (no network): it answers with the statuses a
test gives it and records what it was sent. The real API is exercised end to end in tests/e2e.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest

from domain.executions import ExecutionReport
from domain.models import ExecType
from venues.sinks import HttpCallbacks

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


class StandInOms:
    """An ASGI app that answers every request with the next status given, recording requests."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.requests: list[tuple[str, str, str, object]] = []

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = dict(scope["headers"])
        self.requests.append(
            (
                scope["method"],
                scope["raw_path"].decode(),
                headers[b"authorization"].decode(),
                json.loads(body),
            )
        )
        status = self.statuses.pop(0) if self.statuses else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


@pytest.fixture
async def http() -> AsyncIterator[Callable[[StandInOms], HttpCallbacks]]:
    clients: list[httpx.AsyncClient] = []

    def callbacks_for(oms: StandInOms) -> HttpCallbacks:
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=oms))
        clients.append(client)
        return HttpCallbacks(client, "http://oms.test/", lambda user: f"token-of-{user}")

    yield callbacks_for
    for client in clients:
        await client.aclose()


REPORT = ExecutionReport(
    order_id="ord_1",
    exec_id="SIM-ord_1-1-2",
    exec_type=ExecType.TRADE,
    last_quantity=Decimal(500),
    last_price=Decimal("229.75"),
    transact_time=datetime(2025, 3, 7, 14, 30, tzinfo=UTC),
)


async def test_a_report_is_posted_to_executions_as_the_venue(
    http: Callable[[StandInOms], HttpCallbacks],
) -> None:
    oms = StandInOms(202)

    await http(oms).report(REPORT, "sim-venue")

    [(method, path, authorization, body)] = oms.requests
    assert (method, path, authorization) == ("POST", "/executions", "Bearer token-of-sim-venue")
    assert body == REPORT.model_dump(mode="json")


async def test_a_refusal_is_an_answer_and_a_blip_is_ridden_out(
    http: Callable[[StandInOms], HttpCallbacks],
) -> None:
    refusing, blipping = StandInOms(409), StandInOms(503, 202)

    await http(refusing).report(REPORT, "sim-venue")
    await http(blipping).report(REPORT, "sim-venue")

    assert (len(refusing.requests), len(blipping.requests)) == (1, 2)


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_an_oms_that_keeps_failing_raises_after_a_few_attempts(
    http: Callable[[StandInOms], HttpCallbacks], status: int
) -> None:
    oms = StandInOms(status, status, status, status, status)

    with pytest.raises(httpx.HTTPStatusError):
        await http(oms).report(REPORT, "sim-venue")

    assert len(oms.requests) == 3  # bounded: the simulator sends it again later


async def test_a_settlement_is_confirmed_by_its_id_as_the_desk_user(
    http: Callable[[StandInOms], HttpCallbacks],
) -> None:
    oms = StandInOms(202)

    await http(oms).settlement_confirmed("ord_1.alpha-main", "ord_1", "bo-sim")

    assert oms.requests == [
        ("POST", "/settlements/ord_1.alpha-main/confirm", "Bearer token-of-bo-sim", {})
    ]
