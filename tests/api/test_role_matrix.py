"""Who gets what: role x endpoint x fund, through the real API, each cell a test of its own.

The expectations are derived from the real policy (`policies/policy.csv`, read by Casbin's own
enforcer, not the API's index) with API.md's rules:

- a missing or bad token, or a user the policy does not know: 401;
- an order the caller may not see (no `orders, read` in its fund), or that does not exist: 404;
- an order the caller sees but may not act on: 403;
- a fund the caller may not use for a create, a what-if check, the rules or a kill switch:
  403, whether or not the fund exists;
- list filters (`?fund=` on orders, positions, settlements, the inbox) name a fund the caller
  may not read with a 422 naming `fund`, as the README documents (the same for a fund that does
  not exist, so funds cannot be probed); a caller who may read that list in no fund gets 403.

Nothing here changes an order: every order action runs on two settled orders (one per demo
fund), so a caller who passes authorisation gets the order's own refusal (409). Creating
repeats those orders' bodies (200, the same order), the kill switch is lifted (it is not
engaged), and a settlement confirmation is a repeat (200, duplicate).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import casbin
import pytest

from config import Settings
from tests.api.conftest import Stack
from tests.policies.reference import reference_enforcer

USERS = (
    "alice",  # pm, fund-alpha
    "bob",  # pm, fund-beta
    "tom",  # trader, both funds
    "dana",  # desk_head, both funds
    "carl",  # cio, both funds
    "hana",  # head_of_trading firm-wide (a desk_head everywhere)
    "cora",  # compliance, firm-wide
    "mike",  # middle_office, firm-wide
    "betty",  # back_office, firm-wide
    "sim-venue",  # venue service identity
    "prometheus",  # ops: metrics only
)
ALPHA, BETA, UNKNOWN = "fund-alpha", "fund-beta", "fund-nowhere"
FUNDS = {"alpha": ALPHA, "beta": BETA, "unknown": UNKNOWN}
# An order id that is well formed and exists nowhere.
UNKNOWN_ORDER = "ord_" + "f" * 20
APPROVAL_LEVELS = ("desk_head", "cio")

ENFORCER: casbin.Enforcer = reference_enforcer(Settings().policies_dir)


def may(user: str, fund: str, obj: str, action: str) -> bool:
    allowed: bool = ENFORCER.enforce(user, fund, obj, action)
    return allowed


def may_read_somewhere(user: str, obj: str) -> bool:
    return any(may(user, fund, obj, "read") for fund in (ALPHA, BETA))


# -- The world the matrix runs in ------------------------------------------------------------


@dataclass
class World:
    orders: dict[str, str]  # fund -> a settled order of that fund
    bodies: dict[str, dict[str, Any]]  # fund -> the body that created it
    settlements: dict[str, str]  # fund -> one of its settlement instructions
    paths: set[str]  # the API's paths (amend may not be built yet)


def order_body(fund: str, quantity: int) -> dict[str, Any]:
    return {
        "client_order_id": f"matrix-{uuid.uuid4().hex[:12]}",
        "fund": fund,
        "symbol": "AAPL",
        "side": "buy",
        "quantity": quantity,
        "order_type": "market",
        "time_in_force": "gtc",
    }


async def settled_order(stack: Stack, pm: str, body: dict[str, Any], approver: str | None) -> str:
    created = await stack.call(pm, "POST", "/orders", body)
    assert created.status_code == 201, created.text
    order_id: str = created.json()["order_id"]
    if approver is not None:
        approved = await stack.call(approver, "POST", f"/orders/{order_id}/approve", {})
        assert approved.status_code == 200, approved.text
    released = await stack.call("tom", "POST", f"/orders/{order_id}/release", {})
    assert released.status_code == 200, released.text
    await stack.wait_for_status(pm, order_id, "settled", within=30)
    return order_id


@pytest.fixture(scope="module")
async def world(stack: Stack) -> World:
    # fund-alpha needs a desk head for every order; fund-beta approves small orders by policy.
    bodies = {ALPHA: order_body(ALPHA, 100), BETA: order_body(BETA, 100)}
    orders = {
        ALPHA: await settled_order(stack, "alice", bodies[ALPHA], "dana"),
        BETA: await settled_order(stack, "bob", bodies[BETA], None),
    }
    settlements = {}
    for fund, order_id in orders.items():
        listed = await stack.call("betty", "GET", f"/settlements?fund={fund}")
        assert listed.status_code == 200, listed.text
        ids = [s["settlement_id"] for s in listed.json() if s["order_id"] == order_id]
        assert ids, listed.text
        settlements[fund] = ids[0]
    schema = (await stack.http.get("/openapi.json")).json()
    return World(orders, bodies, settlements, set(schema["paths"]))


# -- The cells -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One request and the status API.md says it gets."""

    endpoint: str
    user: str
    fund: str  # alpha, beta, unknown, or "-" for endpoints without a fund
    expected: int
    request: Callable[[World], tuple[str, str, Any]]  # -> method, path, body
    needs_path: str | None = None  # skipped until the API serves this path

    @property
    def id(self) -> str:
        return f"{self.endpoint}-{self.user}-{self.fund}"


Request = tuple[str, str, Any]


def fixed(method: str, path: str, body: Any = None) -> Callable[[World], Request]:
    """A request that needs nothing from the world."""

    def request(_: World) -> Request:
        return method, path, body

    return request


def _order_id(world: World, fund: str) -> str:
    return world.orders[FUNDS[fund]] if fund != "unknown" else UNKNOWN_ORDER


# Order actions: (name, method, path suffix, body, the permission to act, status once allowed).
# Every allowed action but reading is a 409: the order is settled.
ORDER_ACTIONS: list[tuple[str, str, str, Any, Callable[[str, str], bool], int]] = [
    ("get", "GET", "", None, lambda u, f: True, 200),
    ("history", "GET", "/history", None, lambda u, f: may(u, f, "orders", "history"), 200),
    ("refusals", "GET", "/refusals", None, lambda u, f: may(u, f, "orders", "history"), 200),
    (
        "approve",
        "POST",
        "/approve",
        {"comment": "matrix"},
        lambda u, f: any(may(u, f, "approvals", level) for level in APPROVAL_LEVELS),
        409,
    ),
    (
        "reject",
        "POST",
        "/reject",
        {"reason": "matrix"},
        lambda u, f: any(may(u, f, "approvals", level) for level in APPROVAL_LEVELS),
        409,
    ),
    (
        "override",
        "POST",
        "/override",
        {"justification": "matrix", "rules": ["alpha-soft-order-notional"]},
        lambda u, f: may(u, f, "orders", "override"),
        409,
    ),
    (
        "release",
        "POST",
        "/release",
        {},
        lambda u, f: may(u, f, "orders", "release"),
        409,
    ),
    (
        "cancel",
        "POST",
        "/cancel",
        {"reason": "matrix"},
        lambda u, f: may(u, f, "orders", "cancel"),
        409,
    ),
    (
        "amend",
        "POST",
        "/amend",
        {"quantity": "50", "reason": "matrix"},
        # A pm amends at any stage; a trader what works at a venue (the order checks the stage).
        lambda u, f: may(u, f, "orders", "amend") or may(u, f, "orders", "amend_at_venue"),
        409,
    ),
]


def order_action_cells() -> list[Cell]:
    cells = []
    for name, method, suffix, body, permitted, allowed in ORDER_ACTIONS:
        for user in USERS:
            for fund_key, fund in FUNDS.items():
                if fund == UNKNOWN or not may(user, fund, "orders", "read"):
                    expected = 404
                elif not permitted(user, fund):
                    expected = 403
                else:
                    expected = allowed

                def request(
                    world: World,
                    fk: str = fund_key,
                    m: str = method,
                    p: str = suffix,
                    b: Any = body,
                ) -> tuple[str, str, Any]:
                    return m, f"/orders/{_order_id(world, fk)}{p}", b

                cells.append(
                    Cell(
                        name,
                        user,
                        fund_key,
                        expected,
                        request,
                        "/orders/{order_id}/amend" if name == "amend" else None,
                    )
                )
    return cells


def execution_cells() -> list[Cell]:
    """A venue sees orders through (executions, create); to anyone else a report is a 404."""
    cells = []
    for user in USERS:
        for fund_key, fund in FUNDS.items():
            sees = fund != UNKNOWN and may(user, fund, "executions", "create")

            def request(world: World, fk: str = fund_key) -> Any:
                report = {
                    "order_id": _order_id(world, fk),
                    "exec_id": f"matrix-{uuid.uuid4().hex[:12]}",
                    "exec_type": "new",
                    "transact_time": datetime.now(UTC).isoformat(),
                }
                return "POST", "/executions", report

            cells.append(Cell("execution", user, fund_key, 409 if sees else 404, request))
    return cells


def fund_cells() -> list[Cell]:
    cells = []
    for user in USERS:
        for fund_key, fund in FUNDS.items():

            def create(world: World, f: str = fund) -> Any:
                body = dict(world.bodies[ALPHA if f == UNKNOWN else f], fund=f)
                return "POST", "/orders", body

            def check(world: World, f: str = fund) -> Any:
                body = dict(world.bodies[ALPHA if f == UNKNOWN else f], fund=f)
                return "POST", "/compliance/check", body

            # Creating again with the same body answers the same order: 200.
            cells.append(
                Cell(
                    "create",
                    user,
                    fund_key,
                    200 if may(user, fund, "orders", "create") else 403,
                    create,
                )
            )
            cells.append(
                Cell(
                    "compliance_check",
                    user,
                    fund_key,
                    200 if may(user, fund, "compliance", "check") and fund != UNKNOWN else 403,
                    check,
                )
            )
            rules_ok = may(user, fund, "compliance", "rules")
            cells.append(
                Cell(
                    "compliance_rules",
                    user,
                    fund_key,
                    (422 if fund == UNKNOWN else 200) if rules_ok else 403,
                    fixed("GET", f"/compliance/rules?fund={fund}"),
                )
            )
            for name, obj, path in (
                ("list_orders", "orders", "/orders"),
                ("positions", "positions", "/positions"),
                ("settlements", "settlements", "/settlements"),
            ):
                if not may_read_somewhere(user, obj):
                    expected = 403
                elif fund == UNKNOWN or not may(user, fund, obj, "read"):
                    expected = 422
                else:
                    expected = 200
                cells.append(
                    Cell(
                        name,
                        user,
                        fund_key,
                        expected,
                        fixed("GET", f"{path}?fund={fund}"),
                    )
                )
            # Anyone's inbox: empty when they decide nothing (200, not 403), and for a fund that
            # does not exist (an error would tell which funds exist).
            cells.append(
                Cell(
                    "inbox",
                    user,
                    fund_key,
                    200,
                    fixed("GET", f"/approvals?fund={fund}"),
                )
            )
            # Lifting a switch that is not engaged changes nothing; an unknown fund is a 404 to
            # whoever may set switches there, and the same 403 as any other fund to the rest.
            writes = may(user, fund, "kill_switch", "write")
            cells.append(
                Cell(
                    "kill_switch_set",
                    user,
                    fund_key,
                    (404 if fund == UNKNOWN else 200) if writes else 403,
                    fixed(
                        "PUT",
                        f"/kill-switch/{fund}",
                        {"engaged": False, "reason": "role matrix: lift"},
                    ),
                )
            )
            # Settlement instructions: unseen (no settlements read) or unknown is 404.
            for name, path, body, allowed in (
                ("settlement_confirm", "confirm", None, 200),
                ("settlement_fail", "fail", {"reason": "matrix"}, 409),
            ):
                if fund == UNKNOWN or not may(user, fund, "settlements", "read"):
                    expected = 404
                elif not may(user, fund, "settlements", "confirm"):
                    expected = 403
                else:
                    expected = allowed

                def settle(
                    world: World, f: str = fund, p: str = path, b: Any = body
                ) -> tuple[str, str, Any]:
                    sid = world.settlements.get(f, "set_unknown")
                    return "POST", f"/settlements/{sid}/{p}", b

                cells.append(Cell(name, user, fund_key, expected, settle))
    return cells


def firm_cells() -> list[Cell]:
    """Endpoints without a fund: the kill switches in force and their audit trail."""
    cells = []
    for user in USERS:
        reads = any(may(user, f, "kill_switch", "read") for f in (ALPHA, BETA, "*"))
        for name, path in (
            ("kill_switches", "/kill-switch"),
            ("kill_switch_events", "/kill-switch/events"),
        ):
            cells.append(Cell(name, user, "-", 200 if reads else 403, fixed("GET", path)))
        cells.append(
            Cell(
                "kill_switch_set",
                user,
                "firm",
                200 if may(user, "*", "kill_switch", "write") else 403,
                fixed("PUT", "/kill-switch/*", {"engaged": False, "reason": "role matrix: lift"}),
            )
        )
    return cells


AUTHORISED = order_action_cells() + execution_cells() + fund_cells() + firm_cells()

# Without a valid identity every endpoint answers 401, whatever the fund: one cell per endpoint.
CREDENTIALS = {
    "no-token": {},
    "bad-token": {"Authorization": "Bearer not-a-jwt"},
    "wrong-scheme": {"Authorization": "Basic YWxpY2U6YWxpY2U="},
}
UNAUTHENTICATED = [
    (name, cell)
    for name in (*CREDENTIALS, "unknown-user")
    for cell in AUTHORISED
    if cell.user == "alice" and cell.fund in ("alpha", "-", "firm")
]


def test_the_matrix_holds_every_cell_once() -> None:
    ids = [cell.id for cell in AUTHORISED]
    assert len(ids) == len(set(ids))
    assert {cell.endpoint for cell in AUTHORISED} >= {
        "create",
        "get",
        "list_orders",
        "history",
        "approve",
        "reject",
        "override",
        "release",
        "cancel",
        "amend",
        "execution",
        "inbox",
        "positions",
        "settlement_confirm",
        "settlement_fail",
        "kill_switch_set",
        "compliance_rules",
        "compliance_check",
    }


# The README's examples, read off the derived table: the derivation says what the docs say.
DOCUMENTED = {
    "approve-alice-alpha": 403,  # alice may not approve (she is a PM)
    "get-bob-alpha": 404,  # fund-beta's PM cannot see fund-alpha's order
    "create-bob-alpha": 403,  # bob creating in fund-alpha
    "create-bob-unknown": 403,  # a fund that does not exist: the same 403
    "release-alice-alpha": 403,  # alice releasing
    "settlements-alice-alpha": 403,  # a PM listing settlements
    "positions-tom-alpha": 403,  # a trader has no positions
    "list_orders-sim-venue-alpha": 403,  # the venue reads no orders
    "positions-alice-beta": 422,  # a list filter on a fund one may not read
    "inbox-sim-venue-alpha": 200,  # an empty inbox, not 403
    "override-cora-alpha": 409,  # compliance passes; the settled order refuses
    "release-tom-beta": 409,
    "approve-hana-beta": 409,  # head_of_trading holds desk_head in every fund
    "execution-alice-alpha": 404,  # not released to alice's venue
    "kill_switch_set-tom-alpha": 403,
    "kill_switch_set-cora-unknown": 404,
}


def test_the_derived_table_agrees_with_the_readme_examples() -> None:
    by_id = {cell.id: cell.expected for cell in AUTHORISED}
    assert {key: by_id[key] for key in DOCUMENTED} == DOCUMENTED


def _skip_unless_served(world: World, cell: Cell) -> None:
    if cell.needs_path is not None and cell.needs_path not in world.paths:
        pytest.skip(f"{cell.needs_path} is not served yet (amend is being built)")


@pytest.mark.parametrize("cell", AUTHORISED, ids=[cell.id for cell in AUTHORISED])
async def test_cell(stack: Stack, world: World, cell: Cell) -> None:
    _skip_unless_served(world, cell)
    method, path, body = cell.request(world)
    response = await stack.call(cell.user, method, path, body)
    assert response.status_code == cell.expected, (method, path, response.text)
    if cell.expected in (401, 403, 404):
        assert set(response.json()["error"]) == {"code", "message", "field"}


@pytest.mark.parametrize(
    ("credentials", "cell"),
    UNAUTHENTICATED,
    ids=[f"{cell.endpoint}-{name}" for name, cell in UNAUTHENTICATED],
)
async def test_without_a_valid_identity(
    stack: Stack, world: World, credentials: str, cell: Cell
) -> None:
    _skip_unless_served(world, cell)
    method, path, body = cell.request(world)
    # "unknown-user": a token signed right, for a name the policy does not know.
    headers = stack.auth("nobody") if credentials == "unknown-user" else CREDENTIALS[credentials]
    response = await stack.http.request(method, path, json=body, headers=headers)
    assert response.status_code == 401, (method, path, response.text)
    assert response.json()["error"]["code"] == "unauthenticated"
