"""Execution-report guards over HTTP with the real stack: 202 taken, 200 duplicate, 409 refused
with the reason (recorded on the order once), 422 for an impossible transact_time, and 404 for a
report from a venue other than the one the order was released to."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.api.conftest import Stack
from tests.api.test_orders_api import create

# Each order a size of its own: the duplicate-order rule warns on the same fund, symbol, side
# and quantity twice within a minute (and would hold the order for an override).
_sizes = itertools.count(611)


async def released(stack: Stack, venue: str = "manual", **overrides: Any) -> str:
    """Create a fund-alpha order, approve it as needed, and release it to `venue`."""
    if "quantity" not in overrides:
        overrides["quantity"] = next(_sizes)
    overrides.setdefault(
        "allocations", [{"account": "alpha-main", "quantity": overrides["quantity"]}]
    )
    order_id: str = (await create(stack, **overrides))["order_id"]
    order = await stack.wait_for_status("alice", order_id, "pending_approval", "approved")
    if order["status"] == "pending_approval":
        approved = await stack.call("dana", "POST", f"/orders/{order_id}/approve", {})
        assert approved.status_code == 200, approved.text
        await stack.wait_for_status("alice", order_id, "approved")
    answer = await stack.call("tom", "POST", f"/orders/{order_id}/release", {"venue": venue})
    assert answer.status_code == 200 and answer.json()["status"] == "released", answer.text
    return order_id


def report(
    order_id: str,
    exec_id: str,
    exec_type: str = "trade",
    qty: str = "0",
    price: str | None = None,
    at: datetime | None = None,
) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "exec_id": exec_id,
        "exec_type": exec_type,
        "last_quantity": qty,
        "last_price": price,
        "transact_time": (at or datetime.now(UTC)).isoformat(),
    }


async def send(stack: Stack, body: dict[str, Any], user: str = "sim-venue") -> httpx.Response:
    return await stack.call(user, "POST", "/executions", body)


def refused(answer: httpx.Response, field: str, *words: str) -> None:
    assert answer.status_code == 409, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["field"]) == ("execution_refused", field), error
    for word in words:
        assert word in error["message"], error


async def refused_flags(stack: Stack, order_id: str) -> list[str]:
    order = (await stack.call("alice", "GET", f"/orders/{order_id}")).json()
    return [f["ref"] for f in order["flags"] if f["kind"] == "execution_refused"]


async def test_a_buy_cannot_fill_above_its_limit(stack: Stack) -> None:
    order_id = await released(stack, limit_price="231")
    through = await send(stack, report(order_id, "lim-b-1", qty="10", price="999"))
    refused(through, "last_price", "999", "231", "through the limit")
    tick = await send(stack, report(order_id, "lim-b-2", qty="10", price="231.01"))
    refused(tick, "last_price", "231.01")
    at_limit = await send(stack, report(order_id, "lim-b-3", qty="10", price="231"))
    assert at_limit.status_code == 202, at_limit.text
    assert at_limit.json()["filled_quantity"] == "10"
    assert sorted(await refused_flags(stack, order_id)) == ["lim-b-1", "lim-b-2"]


async def test_a_sell_cannot_fill_below_its_limit(stack: Stack) -> None:
    order_id = await released(stack, side="sell", limit_price="231")
    refused(await send(stack, report(order_id, "lim-s-1", qty="10", price="1")), "last_price")
    refused(await send(stack, report(order_id, "lim-s-2", qty="10", price="230.99")), "last_price")
    at_limit = await send(stack, report(order_id, "lim-s-3", qty="10", price="231"))
    assert at_limit.status_code == 202, at_limit.text


async def test_an_fx_fill_must_be_whole_lots(stack: Stack) -> None:
    quantity = 1000 * next(_sizes)
    order_id = await released(stack, symbol="EURUSD", quantity=quantity, limit_price="1.09")
    half = await send(stack, report(order_id, "lot-1", qty="0.5", price="1.085"))
    refused(half, "last_quantity", "0.5", "whole number of lots", "1000")
    odd = await send(stack, report(order_id, "lot-2", qty="1500", price="1.085"))
    refused(odd, "last_quantity", "1500")
    whole = await send(stack, report(order_id, "lot-3", qty="1000", price="1.085"))
    assert whole.status_code == 202 and whole.json()["filled_quantity"] == "1000", whole.text


async def test_a_fill_more_than_half_away_from_the_reference_price_is_refused(
    stack: Stack,
) -> None:
    # AAPL's reference price is 230.50: the band is [115.25, 345.75], its edges included.
    order_id = await released(stack, order_type="market", limit_price=None)
    above = await send(stack, report(order_id, "band-1", qty="1", price="345.76"))
    refused(above, "last_price", "345.76", "50%", "230.5", "115.25 to 345.75")
    below = await send(stack, report(order_id, "band-2", qty="1", price="115.24"))
    refused(below, "last_price", "115.24")
    for n, edge in enumerate(["345.75", "115.25"]):
        taken = await send(stack, report(order_id, f"band-ok-{n}", qty="1", price=edge))
        assert taken.status_code == 202, taken.text


async def test_an_overfill_is_refused(stack: Stack) -> None:
    order_id = await released(stack)
    quantity = (await stack.call("alice", "GET", f"/orders/{order_id}")).json()["quantity"]
    over = await send(stack, report(order_id, "over-1", qty=str(int(quantity) + 1), price="230"))
    refused(over, "last_quantity", "overfill")


@pytest.mark.parametrize("exec_type", ["done_for_day", "replaced", "pending_replace", "new"])
async def test_no_report_is_taken_on_an_order_never_released(stack: Stack, exec_type: str) -> None:
    order_id = (await create(stack, quantity=next(_sizes), allocations=[]))["order_id"]
    before = await stack.wait_for_status("alice", order_id, "pending_approval", "approved")
    answer = await send(stack, report(order_id, f"pre-{exec_type}", exec_type))
    assert answer.status_code == 409, answer.text
    assert "not at a venue" in answer.json()["error"]["message"]
    after = (await stack.call("alice", "GET", f"/orders/{order_id}")).json()
    assert (after["status"], after["executions"]) == (before["status"], [])


async def test_a_refused_report_sent_three_times_leaves_one_flag(stack: Stack) -> None:
    order_id = await released(stack, limit_price="231")
    answers = [
        await send(stack, report(order_id, "thrice-1", qty="10", price="999")) for _ in range(3)
    ]
    refused(answers[0], "last_price", "through the limit")
    # Again: the order's first decision, read back before the order's state (the field at fault
    # is then the exec_id: the order keeps why it refused, not which field).
    for answer in answers[1:]:
        refused(answer, "exec_id", "through the limit")
    assert len({a.json()["error"]["message"] for a in answers}) == 1
    assert await refused_flags(stack, order_id) == ["thrice-1"]
    history = (await stack.call("cora", "GET", f"/orders/{order_id}/history")).json()
    flagged = [e for e in history if e["event"] == "flag_raised" and "thrice-1" in str(e)]
    assert len(flagged) == 1, flagged


async def test_a_duplicate_report_answers_200_and_changes_nothing(stack: Stack) -> None:
    order_id = await released(stack)
    fill = report(order_id, "dup-1", qty="10", price="230")
    assert (await send(stack, fill)).status_code == 202
    again = await send(stack, fill)
    assert (again.status_code, again.json()["status"]) == (200, "duplicate")
    order = (await stack.call("alice", "GET", f"/orders/{order_id}")).json()
    assert order["filled_quantity"] == "10"


async def test_transact_time_between_the_release_and_a_day_ahead(stack: Stack) -> None:
    before_release = datetime.now(UTC) - timedelta(minutes=1)
    order_id = await released(stack)
    early = await send(stack, report(order_id, "tt-1", "new", at=before_release))
    assert (early.status_code, early.json()["error"]["field"]) == (422, "transact_time")
    assert "before the order was released" in early.json()["error"]["message"]
    ahead = datetime.now(UTC) + timedelta(days=1, minutes=5)
    late = await send(stack, report(order_id, "tt-2", "new", at=ahead))
    assert (late.status_code, late.json()["error"]["field"]) == (422, "transact_time")
    assert "more than a day" in late.json()["error"]["message"]
    within = datetime.now(UTC) + timedelta(hours=23)
    assert (await send(stack, report(order_id, "tt-3", "new", at=within))).status_code == 202
    # Refused as impossible input, before the order's state: nothing is flagged.
    assert await refused_flags(stack, order_id) == []


async def test_a_report_from_another_venue_is_not_found(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    order_id = await released(stack, venue="manual")
    monkeypatch.setattr(
        stack.settings, "venue_reporters", {"simulator": ["sim-venue"], "manual": ["keyer"]}
    )
    answer = await send(stack, report(order_id, "wv-1", "new"))
    assert (answer.status_code, answer.json()["error"]["code"]) == (404, "not_found")
    # An order the venue cannot see answers the same.
    unknown = await send(stack, report("ord_ffffffffffffffffffff", "wv-2", "new"))
    assert unknown.json() == answer.json()
    order = (await stack.call("alice", "GET", f"/orders/{order_id}")).json()
    assert (order["status"], order["executions"], order["flags"]) == ("released", [], [])
    monkeypatch.undo()
    assert (await send(stack, report(order_id, "wv-1", "new"))).status_code == 202


async def test_a_venue_busts_a_trade_through_the_api(stack: Stack) -> None:
    order_id = await released(stack, quantity=100)
    assert (await send(stack, report(order_id, f"{order_id}-n", "new"))).status_code == 202
    fill = await send(stack, report(order_id, f"{order_id}-f", "trade", "40", "230"))
    assert fill.status_code == 202, fill.text
    bust = {**report(order_id, f"{order_id}-b", "trade_cancel"), "exec_ref_id": f"{order_id}-f"}
    answer = await send(stack, bust)
    assert answer.status_code == 202, answer.text
    assert (answer.json()["order_status"], answer.json()["filled_quantity"]) == ("working", "0")
    unknown = {**bust, "exec_id": f"{order_id}-b2", "exec_ref_id": "nothing-like-it"}
    refused(await send(stack, unknown), "exec_ref_id", "names no trade")
    canceled = await send(stack, report(order_id, f"{order_id}-c", "canceled"))
    assert canceled.status_code == 202 and canceled.json()["order_status"] == "canceled"
