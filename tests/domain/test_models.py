"""The order vocabulary: request validation, same-order comparison, ids and decimal tidying."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from domain.ids import (
    order_id_for,
    order_id_from_workflow_id,
    order_workflow_id,
    settlement_id_for,
)
from domain.models import (
    AllocationRequest,
    OrderRequest,
    OrderType,
    Side,
    TimeInForce,
    amount_problem,
    tidy,
)

OrderFactory = Callable[..., OrderRequest]

EXPIRY = datetime(2025, 3, 15, 16, 0, tzinfo=UTC)


def _errors(fields: dict[str, Any]) -> list[dict[str, Any]]:
    base: dict[str, Any] = {
        "client_order_id": "c-1",
        "fund": "fund-alpha",
        "symbol": "AAPL",
        "side": "buy",
        "quantity": "100",
    }
    with pytest.raises(ValidationError) as caught:
        OrderRequest.model_validate({**base, **fields})
    return [dict(e) for e in caught.value.errors()]


# ---- OrderRequest: what is accepted ---------------------------------------------------------


def test_minimal_request_defaults() -> None:
    order = OrderRequest.model_validate(
        {"client_order_id": "c-1", "fund": "f", "symbol": "AAPL", "side": "buy", "quantity": "1"}
    )
    assert order.order_type is OrderType.MARKET
    assert order.time_in_force is TimeInForce.DAY
    assert order.limit_price is None
    assert order.expire_at is None
    assert order.allocations == []
    assert order.notes == ""
    assert order.quantity == Decimal(1)


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"order_type": "limit", "limit_price": "10.5"}, id="limit"),
        pytest.param({"time_in_force": "gtd", "expire_at": EXPIRY}, id="gtd"),
        pytest.param({"time_in_force": "gtd", "expire_at": "2025-03-15T16:00:00Z"}, id="gtd-str"),
        pytest.param(
            {
                "expire_at": datetime(2025, 3, 15, 17, tzinfo=timezone(timedelta(hours=1))),
                "time_in_force": "gtd",
            },
            id="gtd-offset",
        ),
        pytest.param({"time_in_force": "ioc"}, id="ioc"),
        pytest.param({"side": "sell_short"}, id="short"),
        pytest.param({"quantity": "0.0001"}, id="fractional"),
        pytest.param(
            {
                "allocations": [
                    {"account": "a", "quantity": "60"},
                    {"account": "b", "quantity": "40"},
                ]
            },
            id="allocations",
        ),
        pytest.param({"client_order_id": "A" + "x" * 63}, id="coid-64-chars"),
        pytest.param({"client_order_id": "9.a_b-c"}, id="coid-punctuation"),
    ],
)
def test_valid_requests(make_order: OrderFactory, fields: dict[str, Any]) -> None:
    order = make_order(**fields)
    assert isinstance(order, OrderRequest)


# ---- OrderRequest: what is refused, and the field named -------------------------------------


@pytest.mark.parametrize(
    ("fields", "loc", "message"),
    [
        pytest.param({"quantity": "0"}, "quantity", "greater than zero", id="zero-quantity"),
        pytest.param({"quantity": "-5"}, "quantity", "greater than zero", id="negative-quantity"),
        pytest.param({"quantity": "NaN"}, "quantity", "", id="nan-quantity"),
        pytest.param({"quantity": "Infinity"}, "quantity", "", id="infinite-quantity"),
        pytest.param({"quantity": "1e30"}, "quantity", "below 1,000,000,000,000,000", id="huge"),
        pytest.param({"quantity": "1e15"}, "quantity", "below", id="quantity-at-the-bound"),
        pytest.param(
            {"quantity": "0.0000000000001"}, "quantity", "at most 12 decimal places", id="13-places"
        ),
        pytest.param(
            {"order_type": "limit", "limit_price": "1e-13"},
            "limit_price",
            "at most 12 decimal places",
            id="price-13-places",
        ),
        pytest.param(
            {"order_type": "limit"}, "limit_price", "needs a limit_price", id="limit-no-price"
        ),
        pytest.param(
            {"order_type": "limit", "limit_price": "0"},
            "limit_price",
            "greater than zero",
            id="limit-zero-price",
        ),
        pytest.param(
            {"order_type": "market", "limit_price": "10"},
            "limit_price",
            "takes no limit_price",
            id="market-with-price",
        ),
        pytest.param(
            {"limit_price": "10"},
            "limit_price",
            "takes no limit_price",
            id="default-market-with-price",
        ),
        pytest.param({"time_in_force": "gtd"}, "expire_at", "needs expire_at", id="gtd-no-expiry"),
        pytest.param({"expire_at": EXPIRY}, "expire_at", "only gtd orders", id="day-with-expiry"),
        pytest.param(
            {"time_in_force": "gtd", "expire_at": datetime(2025, 3, 15, 16)},  # noqa: DTZ001
            "expire_at",
            "timezone",
            id="naive-expiry",
        ),
        pytest.param(
            {"time_in_force": "gtd", "expire_at": "2025-03-15T16:00:00"},
            "expire_at",
            "timezone",
            id="naive-expiry-str",
        ),
        pytest.param(
            {
                "allocations": [
                    {"account": "a", "quantity": "60"},
                    {"account": "b", "quantity": "30"},
                ]
            },
            "allocations",
            "sum to 90",
            id="allocations-short",
        ),
        pytest.param(
            {
                "allocations": [
                    {"account": "a", "quantity": "60"},
                    {"account": "b", "quantity": "50"},
                ]
            },
            "allocations",
            "sum to 110",
            id="allocations-over",
        ),
        pytest.param(
            {
                "allocations": [
                    {"account": "a", "quantity": "50"},
                    {"account": "a", "quantity": "50"},
                ]
            },
            "allocations",
            "more than once",
            id="duplicate-accounts",
        ),
        pytest.param(
            {
                "allocations": [
                    {"account": "a", "quantity": "100"},
                    {"account": "b", "quantity": "0"},
                ]
            },
            "allocations",
            "greater than zero",
            id="zero-allocation",
        ),
        pytest.param(
            {"allocations": [{"account": "", "quantity": "100"}]},
            "allocations",
            "",
            id="empty-account",
        ),
        pytest.param({"client_order_id": ""}, "client_order_id", "", id="coid-empty"),
        pytest.param({"client_order_id": "-abc"}, "client_order_id", "", id="coid-leading-dash"),
        pytest.param({"client_order_id": "a b"}, "client_order_id", "", id="coid-space"),
        pytest.param({"client_order_id": "a/b"}, "client_order_id", "", id="coid-slash"),
        pytest.param({"client_order_id": "x" * 65}, "client_order_id", "", id="coid-65-chars"),
        pytest.param({"side": "short"}, "side", "", id="bad-side"),
        pytest.param({"order_type": "stop"}, "order_type", "", id="bad-order-type"),
        pytest.param({"time_in_force": "gtx"}, "time_in_force", "", id="bad-tif"),
        pytest.param({"fund": ""}, "fund", "", id="empty-fund"),
        pytest.param({"symbol": ""}, "symbol", "", id="empty-symbol"),
        pytest.param({"notes": "x" * 2001}, "notes", "", id="notes-too-long"),
        pytest.param({"venue": "XNYS"}, "venue", "extra", id="extra-field"),
    ],
)
def test_invalid_requests_name_the_field(fields: dict[str, Any], loc: str, message: str) -> None:
    errors = _errors(fields)
    assert any(e["loc"][0] == loc for e in errors), errors
    assert any(message.lower() in e["msg"].lower() for e in errors if e["loc"][0] == loc), errors


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("999999999999999.999999999999", None),  # the largest amount: 15 digits, 12 places
        ("100.000000000000000000", None),  # trailing zeros are not places
        ("0", None),
        ("1e15", "must be below 1,000,000,000,000,000"),
        ("0.0000000000001", "must have at most 12 decimal places"),
        ("-1", "must be a number, not negative"),
        ("NaN", "must be a number, not negative"),
    ],
)
def test_amount_bounds(value: str, problem: str | None) -> None:
    assert amount_problem(Decimal(value)) == problem


def test_missing_required_fields() -> None:
    with pytest.raises(ValidationError) as caught:
        OrderRequest.model_validate({})
    missing = {e["loc"][0] for e in caught.value.errors() if e["type"] == "missing"}
    assert missing == {"client_order_id", "fund", "symbol", "side", "quantity"}


def test_allocation_request_refuses_extra_fields() -> None:
    with pytest.raises(ValidationError):
        AllocationRequest.model_validate({"account": "a", "quantity": "1", "price": "2"})


def test_request_is_frozen(make_order: OrderFactory) -> None:
    order = make_order()
    with pytest.raises(ValidationError):
        order.quantity = Decimal(5)  # type: ignore[misc]


def test_side_sign() -> None:
    assert Side.BUY.sign == 1
    assert Side.SELL.sign == -1
    assert Side.SELL_SHORT.sign == -1


# ---- same_order_as --------------------------------------------------------------------------


def test_same_order_as_itself_and_an_equal_request(make_order: OrderFactory) -> None:
    a = make_order(order_type="limit", limit_price="10.5", notes="n")
    b = make_order(order_type="limit", limit_price=Decimal("10.5"), notes="n")
    assert a.same_order_as(a)
    assert a.same_order_as(b)
    assert b.same_order_as(a)


def test_same_order_as_after_a_json_round_trip(make_order: OrderFactory) -> None:
    a = make_order(
        time_in_force="gtd",
        expire_at=EXPIRY,
        allocations=[{"account": "a", "quantity": "60"}, {"account": "b", "quantity": "40"}],
    )
    b = OrderRequest.model_validate_json(a.model_dump_json())
    assert a.same_order_as(b)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"quantity": Decimal(101)}, id="quantity"),
        pytest.param({"side": "sell"}, id="side"),
        pytest.param({"symbol": "MSFT"}, id="symbol"),
        pytest.param({"fund": "fund-beta"}, id="fund"),
        pytest.param({"client_order_id": "c-2"}, id="client-order-id"),
        pytest.param({"order_type": "limit", "limit_price": "10"}, id="order-type"),
        pytest.param({"time_in_force": "gtc"}, id="tif"),
        pytest.param({"notes": "other"}, id="notes"),
        pytest.param({"allocations": [{"account": "a", "quantity": "100"}]}, id="allocations"),
    ],
)
def test_different_orders(make_order: OrderFactory, change: dict[str, Any]) -> None:
    assert not make_order().same_order_as(make_order(**change))


@pytest.mark.parametrize(
    ("first", "again"),
    [
        pytest.param({"quantity": "100"}, {"quantity": "100.0"}, id="quantity-exponent"),
        pytest.param(
            {"order_type": "limit", "limit_price": "10.5"},
            {"order_type": "limit", "limit_price": "10.50"},
            id="price-exponent",
        ),
        pytest.param(
            {"time_in_force": "gtd", "expire_at": "2025-03-15T16:00:00Z"},
            {"time_in_force": "gtd", "expire_at": "2025-03-15T17:00:00+01:00"},
            id="same-instant-other-offset",
        ),
    ],
)
def test_same_order_ignores_representation(
    make_order: OrderFactory, first: dict[str, Any], again: dict[str, Any]
) -> None:
    assert make_order(**first).same_order_as(make_order(**again))


# ---- ids ------------------------------------------------------------------------------------


def test_order_id_is_deterministic() -> None:
    assert order_id_for("fund-alpha", "c-1") == order_id_for("fund-alpha", "c-1")


def test_order_id_shape() -> None:
    order_id = order_id_for("fund-alpha", "c-1")
    assert order_id.startswith("ord_")
    assert len(order_id) == 24
    assert all(c in "0123456789abcdef" for c in order_id.removeprefix("ord_"))


def test_order_id_is_stable_across_releases() -> None:
    # Pinned values: changing the namespace or the derivation would give existing orders new ids.
    assert order_id_for("fund-alpha", "c-1") == "ord_d0a44019838c55ee9066"
    assert order_id_for("fund-alpha", "ORD-0001") == "ord_33ce155adba35c5ca252"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("fund-alpha", "c-1"), ("fund-beta", "c-1")),
        (("fund-alpha", "c-1"), ("fund-alpha", "c-2")),
        (("fund-alpha", "c-1"), ("fund-alpha", "C-1")),
    ],
)
def test_order_ids_differ(a: tuple[str, str], b: tuple[str, str]) -> None:
    assert order_id_for(*a) != order_id_for(*b)


def test_workflow_id_round_trip() -> None:
    order_id = order_id_for("fund-alpha", "c-1")
    workflow_id = order_workflow_id(order_id)
    assert workflow_id == f"order:{order_id}"
    assert order_id_from_workflow_id(workflow_id) == order_id


@pytest.mark.parametrize("workflow_id", ["", "ord_123", "orders:ord_1", "Order:ord_1", "x:order:1"])
def test_foreign_workflow_id_is_refused(workflow_id: str) -> None:
    with pytest.raises(ValueError, match="not an order workflow id"):
        order_id_from_workflow_id(workflow_id)


def test_settlement_id() -> None:
    assert settlement_id_for("ord_1", "acct-a") == "ord_1.acct-a"


# ---- tidy -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("1.000000", "1"),
        ("100", "100"),
        ("100.000000000000", "100"),
        ("1E+2", "100"),
        ("12345678900.0000", "12345678900"),
        ("1.500000", "1.5"),
        ("0.000100000000", "0.0001"),
        ("64000.000000000000", "64000"),
        ("1.0850", "1.085"),
        ("0", "0"),
        ("0.000000", "0"),
    ],
)
def test_tidy(value: str, text: str) -> None:
    tidied = tidy(Decimal(value))
    assert tidied == Decimal(value)
    assert str(tidied) == text


@given(
    st.decimals(allow_nan=False, allow_infinity=False, places=None)
    | st.builds(
        lambda digits, places: Decimal(digits).scaleb(-places),
        st.integers(-(10**20), 10**20),
        st.integers(-5, 14),
    )
)
def test_tidy_gives_what_normalising_and_formatting_gives(value: Decimal) -> None:
    # Its shortcut for values already tidy must answer exactly as the full formula would.
    tidied, formula = tidy(value), Decimal(format(value.normalize(), "f"))
    assert tidied.as_tuple() == formula.as_tuple()


@pytest.mark.parametrize(
    ("value", "text"),
    [("0.000000010000", "0.00000001"), ("0.000000123400", "0.0000001234")],
)
def test_tidy_small_values_keep_their_digits(value: str, text: str) -> None:
    # str() of any Decimal below 1e-6 is exponent form; what tidy owes is the trimmed digits.
    assert format(tidy(Decimal(value)), "f") == text
