"""The kill switch over HTTP: who may pull it, what it refuses, what it cancels, that it lasts.

The `stack` is shared with every API test of the session and fund-alpha and fund-beta are its only
funds: every test lifts what it engages in a `finally`, and ends its own orders.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import col

import cli
from api.app import create_app
from api.deps import Services, run_db
from api.errors import ApiError
from api.kill_switch import cancel_if_engaged
from api.order_access import locate
from db import queries
from db.engine import make_engine, session_factory
from db.tables import OrderRow
from tests.api.conftest import Stack, free_port
from tests.api.test_orders_api import create, order_body

# Each order of these tests a size of its own: the duplicate-order rule warns on the same fund,
# symbol, side and quantity twice within a minute (and would hold the order for an override).
_sizes = itertools.count(301)


def alpha_size() -> dict[str, Any]:
    quantity = next(_sizes)
    return {"quantity": quantity, "allocations": [{"account": "alpha-main", "quantity": quantity}]}


def canceled_report(order_id: str, exec_id: str) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "exec_id": exec_id,
        "exec_type": "canceled",
        "last_quantity": "0",
        "last_price": None,
        "transact_time": datetime.now(UTC).isoformat(),
    }


async def engage(stack: Stack, scope: str, reason: str) -> dict[str, Any]:
    response = await stack.call(
        "cora", "PUT", f"/kill-switch/{scope}", {"engaged": True, "reason": reason}
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def lift(stack: Stack, scope: str, reason: str = "all clear") -> dict[str, Any]:
    response = await stack.call(
        "cora", "PUT", f"/kill-switch/{scope}", {"engaged": False, "reason": reason}
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def alpha_order_at(stack: Stack, status: str) -> str:
    """Create a fund-alpha order and take it to `approved`, or `released` to the manual venue."""
    order = await create(stack, **alpha_size())
    order_id: str = order["order_id"]
    approved = await stack.call("dana", "POST", f"/orders/{order_id}/approve", {})
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "approved", approved.text
    if status == "released":
        released = await stack.call(
            "tom", "POST", f"/orders/{order_id}/release", {"venue": "manual"}
        )
        assert released.json()["status"] == "released", released.text
    return order_id


async def beta_order_released(stack: Stack) -> str:
    """A small fund-beta order (approved by policy) released to the manual venue."""
    order = await create(stack, "bob", fund="fund-beta", quantity=next(_sizes), allocations=[])
    order_id: str = order["order_id"]
    await stack.wait_for_status("bob", order_id, "approved")
    released = await stack.call("tom", "POST", f"/orders/{order_id}/release", {"venue": "manual"})
    assert released.json()["status"] == "released", released.text
    return order_id


async def venue_confirms_cancel(stack: Stack, order_id: str, user: str) -> dict[str, Any]:
    """The manual venue answers the pending cancel; return the order once canceled."""
    answer = await stack.call(
        "sim-venue", "POST", "/executions", canceled_report(order_id, f"ks-{order_id}")
    )
    assert answer.status_code == 202, answer.text
    return await stack.wait_for_status(user, order_id, "canceled")


def refused_by_switch(response: httpx.Response, scope_words: str, reason: str) -> None:
    assert response.status_code == 423, response.text
    error = response.json()["error"]
    assert error["code"] == "kill_switch_engaged"
    assert error["message"].startswith(f"cora engaged the kill switch for {scope_words} at ")
    assert error["message"].endswith(f": {reason}")


async def test_only_compliance_pulls_it_and_only_with_a_reason(stack: Stack) -> None:
    body = {"engaged": True, "reason": "test"}
    for user in ("alice", "tom", "dana", "carl", "mike", "sim-venue"):
        for scope in ("fund-alpha", "*", "fund-nowhere"):
            # The same 403 whether the fund exists or not: nothing is learnt about funds.
            refused = await stack.call(user, "PUT", f"/kill-switch/{scope}", body)
            assert refused.status_code == 403, (user, scope, refused.text)
            assert refused.json()["error"]["code"] == "forbidden"
    assert (await stack.call(None, "PUT", "/kill-switch/fund-alpha", body)).status_code == 401
    unknown = await stack.call("cora", "PUT", "/kill-switch/fund-nowhere", body)
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "not_found")
    for bad in (
        {"engaged": True},
        {"engaged": False},
        {"engaged": True, "reason": ""},
        {"engaged": False, "reason": "   "},
        {"reason": "no verdict"},
        {"engaged": "yes", "reason": "a string is not a verdict"},
    ):
        answer = await stack.call("cora", "PUT", "/kill-switch/fund-alpha", bad)
        assert answer.status_code == 422, (bad, answer.text)
    # Whoever may read switches nowhere may not list them either.
    assert (await stack.call("betty", "GET", "/kill-switch")).status_code == 403
    # None of the refusals engaged anything.
    listed = (await stack.call("cora", "GET", "/kill-switch")).json()
    assert "fund-alpha" not in [s["scope"] for s in listed]


async def test_a_fund_switch_refuses_creates_and_releases_and_cancels_at_the_venue(
    stack: Stack,
) -> None:
    at_venue = await alpha_order_at(stack, "released")
    waiting = await alpha_order_at(stack, "approved")
    reason = "runaway algo on the alpha desk"
    try:
        answer = await engage(stack, "fund-alpha", reason)
        assert (answer["scope"], answer["engaged"], answer["by"], answer["reason"]) == (
            "fund-alpha",
            True,
            "cora",
            reason,
        )
        assert answer["engaged_by"] == "cora" and answer["engaged_at"]
        sweep = answer["sweep"]
        assert at_venue in sweep["cancel_requested"]
        assert at_venue not in [f["order_id"] for f in sweep["failed"]]
        assert waiting not in sweep["cancel_requested"]
        assert sweep["orders_at_venue"] == len(sweep["cancel_requested"]) + len(sweep["failed"])

        # The order at the venue was asked to cancel, by cora, for the switch's reason.
        pending = await stack.wait_for_status("alice", at_venue, "pending_cancel")
        assert (pending["status_actor"], pending["status_reason"]) == (
            "cora",
            f"kill switch engaged by cora: {reason}",
        )
        history = (await stack.call("cora", "GET", f"/orders/{at_venue}/history")).json()
        (requested,) = [h for h in history if h["event"] == "cancel_requested"]
        assert (requested["actor"], requested["reason"]) == (
            "cora",
            f"kill switch engaged by cora: {reason}",
        )
        assert requested["details"]["policy"] == ["compliance", "*", "orders", "kill_switch_cancel"]
        canceled = await venue_confirms_cancel(stack, at_venue, "alice")
        assert canceled["status_reason"] == f"kill switch engaged by cora: {reason}"

        # The order not yet released stays as it was, and cannot be released.
        assert (await stack.call("alice", "GET", f"/orders/{waiting}")).json()[
            "status"
        ] == "approved"
        refused_by_switch(
            await stack.call("tom", "POST", f"/orders/{waiting}/release", {"venue": "manual"}),
            "fund-alpha",
            reason,
        )
        # No new order in the fund; the other fund trades on.
        refused_by_switch(
            await stack.call("alice", "POST", "/orders", _alpha_body()), "fund-alpha", reason
        )
        beta = await create(stack, "bob", fund="fund-beta", quantity=next(_sizes), allocations=[])
        assert beta["fund"] == "fund-beta"

        # What is engaged, by whom, why, since when: for compliance and the fund's people.
        (shown,) = [
            s
            for s in (await stack.call("cora", "GET", "/kill-switch")).json()
            if s["scope"] == "fund-alpha"
        ]
        assert (shown["engaged"], shown["engaged_by"], shown["reason"]) == (True, "cora", reason)
        assert shown["engaged_at"] == answer["engaged_at"]
        assert "fund-alpha" in [
            s["scope"] for s in (await stack.call("alice", "GET", "/kill-switch")).json()
        ]
        assert "fund-alpha" in [
            s["scope"]
            for s in (await stack.call("tom", "GET", "/kill-switch?fund=fund-alpha")).json()
        ]
        assert "fund-alpha" not in [
            s["scope"] for s in (await stack.call("bob", "GET", "/kill-switch")).json()
        ]
        assert (await stack.call("bob", "GET", "/kill-switch?fund=fund-alpha")).status_code == 422

        # Engaging again takes the new reason, keeps the time it was first engaged, and sweeps
        # again (the canceled order is no longer at the venue).
        again = await engage(stack, "fund-alpha", "still investigating")
        assert again["engaged_at"] == answer["engaged_at"]
        assert at_venue not in again["sweep"]["cancel_requested"]
        refused_by_switch(
            await stack.call("alice", "POST", "/orders", _alpha_body()),
            "fund-alpha",
            "still investigating",
        )
    finally:
        lifted = await lift(stack, "fund-alpha", "algo fixed")
    assert (lifted["engaged"], lifted["by"], lifted["reason"], lifted["sweep"]) == (
        False,
        "cora",
        "algo fixed",
        None,
    )
    assert "fund-alpha" not in [
        s["scope"] for s in (await stack.call("cora", "GET", "/kill-switch")).json()
    ]

    # Lifting restores service: the waiting order is released, and orders are created again.
    released = await stack.call("tom", "POST", f"/orders/{waiting}/release", {"venue": "manual"})
    assert (released.status_code, released.json()["status"]) == (200, "released"), released.text
    await create(stack, **alpha_size())
    # Leave nothing at the venue for the other tests.
    cancel = await stack.call("tom", "POST", f"/orders/{waiting}/cancel", {"reason": "test done"})
    assert cancel.json()["status"] == "pending_cancel", cancel.text
    await venue_confirms_cancel(stack, waiting, "alice")

    events = (
        await stack.call("cora", "GET", "/kill-switch/events?scope=fund-alpha&limit=3")
    ).json()
    assert [(e["engaged"], e["by"], e["reason"]) for e in events] == [
        (False, "cora", "algo fixed"),
        (True, "cora", "still investigating"),
        (True, "cora", reason),
    ]


def _alpha_body() -> dict[str, Any]:
    return order_body(**alpha_size())


async def test_the_firm_wide_switch_covers_every_fund(stack: Stack) -> None:
    alpha = await alpha_order_at(stack, "released")
    beta = await beta_order_released(stack)
    try:
        answer = await engage(stack, "*", "market-wide halt")
        assert {alpha, beta} <= set(answer["sweep"]["cancel_requested"])
        for user, order_id in (("alice", alpha), ("bob", beta)):
            await stack.wait_for_status(user, order_id, "pending_cancel")
        refused_by_switch(
            await stack.call("alice", "POST", "/orders", _alpha_body()),
            "the firm",
            "market-wide halt",
        )
        refused_by_switch(
            await stack.call(
                "bob",
                "POST",
                "/orders",
                {**_alpha_body(), "fund": "fund-beta", "allocations": []},
            ),
            "the firm",
            "market-wide halt",
        )
        # Everyone who may read switches in some fund sees the firm's.
        for user in ("alice", "bob", "tom", "cora"):
            scopes = [s["scope"] for s in (await stack.call(user, "GET", "/kill-switch")).json()]
            assert scopes[:1] == ["*"], (user, scopes)
        firm_only = (await stack.call("cora", "GET", "/kill-switch?fund=*")).json()
        assert [s["scope"] for s in firm_only] == ["*"]
    finally:
        await lift(stack, "*")
    await venue_confirms_cancel(stack, alpha, "alice")
    await venue_confirms_cancel(stack, beta, "bob")
    await create(stack, "bob", fund="fund-beta", quantity=next(_sizes), allocations=[])


@asynccontextmanager
async def restarted_api(stack: Stack) -> AsyncIterator[tuple[Services, httpx.AsyncClient]]:
    """Another API process on the same database and Temporal: new engine, new services."""
    settings = stack.settings.model_copy(update={"api_port": free_port()})
    app = create_app(settings, stack.env.client)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://restarted"
        ) as http,
    ):
        yield app.state.services, http


async def test_an_engaged_switch_outlives_a_restart(stack: Stack) -> None:
    reason = "beta custodian outage"
    try:
        await engage(stack, "fund-beta", reason)
        async with restarted_api(stack) as (_, http):
            shown = (await http.get("/kill-switch", headers=stack.auth("cora"))).json()
            (beta,) = [s for s in shown if s["scope"] == "fund-beta"]
            assert (beta["engaged_by"], beta["reason"]) == ("cora", reason)
            refused_by_switch(
                await http.post(
                    "/orders",
                    json={**_alpha_body(), "fund": "fund-beta", "allocations": []},
                    headers=stack.auth("bob"),
                ),
                "fund-beta",
                reason,
            )
            # Lifted through the restarted API: the first one sees it too (one durable row).
            lifted = await http.put(
                "/kill-switch/fund-beta",
                json={"engaged": False, "reason": "custodian back"},
                headers=stack.auth("cora"),
            )
            assert lifted.json()["engaged"] is False
        assert "fund-beta" not in [
            s["scope"] for s in (await stack.call("bob", "GET", "/kill-switch")).json()
        ]
    finally:
        await lift(stack, "fund-beta")
    await create(stack, "bob", fund="fund-beta", quantity=next(_sizes), allocations=[])


async def test_the_cli_engages_shows_and_lifts(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OMS_API_URL", str(stack.http.base_url))
    monkeypatch.setenv("OMS_JWT_SECRET", stack.settings.jwt_secret)

    async def oms(*argv: str) -> tuple[int, Any]:
        # The API runs on this event loop, so the blocking CLI call goes to a thread.
        code = await asyncio.to_thread(cli.main, list(argv))
        return code, json.loads(capsys.readouterr().out)

    try:
        code, engaged = await oms("kill-switch", "engage", "*", "--reason", "drill", "--as", "cora")
        assert code == 0
        assert (engaged["scope"], engaged["engaged"], engaged["by"]) == ("*", True, "cora")
        code, shown = await oms("kill-switch", "show", "fund-beta", "--as", "bob")
        assert (code, [(s["scope"], s["reason"]) for s in shown]) == (0, [("*", "drill")])
        code, refused = await oms(
            "kill-switch", "engage", "fund-beta", "--reason", "x", "--as", "bob"
        )
        assert (code, refused["error"]["code"]) == (1, "forbidden")
    finally:
        code, lifted = await oms(
            "kill-switch", "lift", "*", "--reason", "drill over", "--as", "cora"
        )
    assert (code, lifted["engaged"]) == (0, False)
    code, shown = await oms("kill-switch", "show", "--as", "cora")
    assert "*" not in [s["scope"] for s in shown]


async def test_a_release_that_crossed_the_engage_is_canceled_after_it(stack: Stack) -> None:
    order_id = await alpha_order_at(stack, "released")
    async with restarted_api(stack) as (services, _):
        ref = await locate(services, "cora", order_id)
        await cancel_if_engaged(services, ref)  # no switch: nothing happens
        assert (await stack.call("alice", "GET", f"/orders/{order_id}")).json()[
            "status"
        ] == "released"
        # The switch is stored and its sweep has not seen the order: the release crossed it.
        now = datetime.now(UTC)
        await run_db(
            services,
            lambda session: queries.set_kill_switch(
                session, "fund-alpha", engaged=True, by="cora", reason="crossed", at=now
            ),
        )
        try:
            with pytest.raises(ApiError) as refused:
                await cancel_if_engaged(services, ref)
            assert (refused.value.status, refused.value.code) == (423, "kill_switch_engaged")
            pending = await stack.wait_for_status("alice", order_id, "pending_cancel")
            assert (pending["status_actor"], pending["status_reason"]) == (
                "cora",
                "kill switch engaged by cora: crossed",
            )
        finally:
            await lift(stack, "fund-alpha")
    await venue_confirms_cancel(stack, order_id, "alice")


async def test_an_order_that_filled_before_its_cancel_is_reported_not_fatal(stack: Stack) -> None:
    order = await create(stack, **alpha_size())
    order_id = order["order_id"]
    await stack.call("dana", "POST", f"/orders/{order_id}/approve", {})
    await stack.call("tom", "POST", f"/orders/{order_id}/release", {"venue": "simulator"})
    await stack.wait_for_status("alice", order_id, "settled")
    # The read model a moment behind the venue: it still shows the order working.
    engine = make_engine(stack.settings.resolved_database_url)

    def show_status(status: str) -> None:
        with session_factory(engine)() as session:
            session.execute(
                update(OrderRow).where(col(OrderRow.order_id) == order_id).values(status=status)
            )
            session.commit()

    show_status("working")
    try:
        answer = await engage(stack, "fund-alpha", "fat finger")
        (failure,) = [f for f in answer["sweep"]["failed"] if f["order_id"] == order_id]
        assert (failure["fund"], failure["status"], failure["code"]) == (
            "fund-alpha",
            409,
            "conflict",
        )
        assert order_id not in answer["sweep"]["cancel_requested"]
    finally:
        await lift(stack, "fund-alpha")
        show_status("settled")
        engine.dispose()
    refusals = (await stack.call("cora", "GET", f"/orders/{order_id}/refusals")).json()
    assert [(r["user"], r["action"], r["via"], r["status"]) for r in refusals] == [
        ("cora", "kill_switch_cancel", "kill_switch", 409)
    ]
