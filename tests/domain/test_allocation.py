"""Allocation of an executed block: pro-rata, lot-rounded, deterministic remainder."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.allocation import allocate
from domain.models import Allocation, AllocationRequest

PRICE = Decimal("101.25")


def _requests(*pairs: tuple[str, str]) -> list[AllocationRequest]:
    return [AllocationRequest(account=a, quantity=Decimal(q)) for a, q in pairs]


def _split(allocations: list[Allocation]) -> dict[str, Decimal]:
    return {a.account: a.quantity for a in allocations}


# (requests, executed, lot size) -> {account: quantity}; accounts that get nothing are left out.
CASES = [
    pytest.param([("A", "500"), ("B", "500")], "1000", "1", {"A": 500, "B": 500}, id="full"),
    pytest.param([("A", "500"), ("B", "500")], "600", "1", {"A": 300, "B": 300}, id="even"),
    pytest.param([("A", "600"), ("B", "400")], "333", "1", {"A": 200, "B": 133}, id="600-400-333"),
    pytest.param([("A", "600"), ("B", "400")], "1000", "1", {"A": 600, "B": 400}, id="600-400-all"),
    pytest.param(
        [("A", "600"), ("B", "400")], "500", "100", {"A": 300, "B": 200}, id="lot-100-exact"
    ),
    pytest.param(
        # ideal 420 / 280: floors 400 / 200 (remainders 20 / 80), one lot left goes to B
        [("A", "600"), ("B", "400")],
        "700",
        "100",
        {"A": 400, "B": 300},
        id="lot-100-remainder",
    ),
    pytest.param(
        # ideal 450 / 300 / 150: floors 400 / 300 / 100, remainders 50 / 0 / 50: tie -> A
        [("A", "900"), ("B", "600"), ("C", "300")],
        "900",
        "100",
        {"A": 500, "B": 300, "C": 100},
        id="lot-100-tie-first-listed",
    ),
    pytest.param([("A", "100"), ("B", "100")], "3", "1", {"A": 2, "B": 1}, id="tie-goes-first"),
    pytest.param([("B", "100"), ("A", "100")], "3", "1", {"B": 2, "A": 1}, id="tie-order-not-name"),
    pytest.param(
        [("A", "1"), ("B", "1"), ("C", "1")], "2", "1", {"A": 1, "B": 1}, id="three-way-tie"
    ),
    pytest.param(
        # ideal 0.3333.. / 0.6666..: floors 0.3333 / 0.6666, the last 0.0001 goes to B
        [("A", "1"), ("B", "2")],
        "1",
        "0.0001",
        {"A": "0.3333", "B": "0.6667"},
        id="lot-0.0001",
    ),
    pytest.param(
        [("A", "0.5"), ("B", "0.5")],
        "0.0003",
        "0.0001",
        {"A": "0.0002", "B": "0.0001"},
        id="lot-0.0001-tiny",
    ),
    pytest.param([("A", "600"), ("B", "400")], "50", "100", {"A": 50}, id="less-than-one-lot"),
    pytest.param(
        # more executed than the accounts asked for: an error, not an allocation
        [("A", "600"), ("B", "400")],
        "1050",
        "100",
        None,
        id="over-requested",
    ),
    pytest.param(
        # ideal 150 / 100: floors 100 / 100, remainders 50 / 0: odd lot goes to A
        [("A", "300"), ("B", "200")],
        "250",
        "100",
        {"A": 150, "B": 100},
        id="odd-lot",
    ),
    pytest.param([("A", "600"), ("B", "400")], "0", "100", {}, id="zero-executed"),
    pytest.param([], "0", "1", {}, id="no-requests"),
]


@pytest.mark.parametrize(("pairs", "executed", "lot", "expected"), CASES)
def test_allocation_table(
    pairs: list[tuple[str, str]],
    executed: str,
    lot: str,
    expected: dict[str, int | str] | None,
) -> None:
    requests = _requests(*pairs)
    if expected is None:
        with pytest.raises(ValueError, match="cannot allocate"):
            allocate(requests, Decimal(executed), PRICE, Decimal(lot))
        return
    allocations = allocate(requests, Decimal(executed), PRICE, Decimal(lot))
    assert _split(allocations) == {k: Decimal(v) for k, v in expected.items()}
    # In the order the accounts were listed, each at the block price with its requested quantity.
    requested = {r.account: r.quantity for r in requests}
    assert [a.account for a in allocations] == [p[0] for p in pairs if p[0] in expected]
    for a in allocations:
        assert a.price == PRICE
        assert a.requested_quantity == requested[a.account]


def test_zero_executed_is_empty() -> None:
    assert allocate(_requests(("A", "10")), Decimal(0), PRICE) == []


def test_executed_more_than_requested_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"cannot allocate 1001: accounts asked for only 1000"):
        allocate(_requests(("A", "600"), ("B", "400")), Decimal(1001), PRICE)


@pytest.mark.parametrize("lot", ["0", "-1"])
def test_non_positive_lot_size_is_an_error(lot: str) -> None:
    with pytest.raises(ValueError, match="lot_size"):
        allocate(_requests(("A", "10")), Decimal(5), PRICE, Decimal(lot))


def test_default_lot_size_is_one() -> None:
    assert _split(allocate(_requests(("A", "2"), ("B", "1")), Decimal(2), PRICE)) == {
        "A": Decimal(1),
        "B": Decimal(1),
    }


# ---- properties -----------------------------------------------------------------------------

LOTS = [Decimal(1), Decimal(10), Decimal(100), Decimal("0.01"), Decimal("0.0001")]


@st.composite
def _scenario(draw: st.DrawFn) -> tuple[list[AllocationRequest], Decimal, Decimal]:
    """Requests in whole lots, and an executed quantity on a grid ten times finer than a lot."""
    lot = draw(st.sampled_from(LOTS))
    lots = draw(st.lists(st.integers(min_value=1, max_value=500), min_size=1, max_size=6))
    requests = [
        AllocationRequest(account=f"acct-{i}", quantity=n * lot) for i, n in enumerate(lots)
    ]
    tenths = draw(st.integers(min_value=0, max_value=sum(lots) * 10))
    executed = tenths * lot / 10
    return requests, executed, lot


@st.composite
def _any_scenario(draw: st.DrawFn) -> tuple[list[AllocationRequest], Decimal, Decimal]:
    """Requests and executed quantities on any two-decimal grid, lots that need not divide them."""
    lot = draw(st.sampled_from(LOTS))
    cents = draw(st.lists(st.integers(min_value=1, max_value=100_000), min_size=1, max_size=6))
    requests = [
        AllocationRequest(account=f"acct-{i}", quantity=Decimal(c) / 100)
        for i, c in enumerate(cents)
    ]
    executed = Decimal(draw(st.integers(min_value=0, max_value=sum(cents)))) / 100
    return requests, executed, lot


def _ideal(
    request: AllocationRequest, requests: list[AllocationRequest], executed: Decimal
) -> Decimal:
    total = sum((r.quantity for r in requests), Decimal(0))
    return executed * request.quantity / total


@settings(max_examples=200, deadline=None)
@given(_scenario())
def test_property_whole_lot_requests(
    scenario: tuple[list[AllocationRequest], Decimal, Decimal],
) -> None:
    requests, executed, lot = scenario
    allocations = allocate(requests, executed, PRICE, lot)
    got = _split(allocations)

    # Sums to the executed quantity, nobody over what they asked for, nobody booked at zero.
    assert sum(got.values(), Decimal(0)) == executed
    for r in requests:
        assert got.get(r.account, Decimal(0)) <= r.quantity
    assert all(a.quantity > 0 for a in allocations)
    assert all(a.price == PRICE for a in allocations)

    # Whole lots, except one odd lot when the executed quantity is not a lot multiple.
    odd = [q for q in got.values() if q % lot != 0]
    if executed % lot == 0:
        assert odd == []
    else:
        assert len(odd) == 1

    # Every account within one lot of its ideal pro-rata share.
    for r in requests:
        assert abs(got.get(r.account, Decimal(0)) - _ideal(r, requests, executed)) <= lot

    # Deterministic.
    assert allocate(requests, executed, PRICE, lot) == allocations


@settings(max_examples=200, deadline=None)
@given(_any_scenario())
def test_property_any_requests(
    scenario: tuple[list[AllocationRequest], Decimal, Decimal],
) -> None:
    requests, executed, lot = scenario
    allocations = allocate(requests, executed, PRICE, lot)
    got = _split(allocations)
    assert sum(got.values(), Decimal(0)) == executed
    for r in requests:
        share = got.get(r.account, Decimal(0))
        assert share <= r.quantity
        assert abs(share - _ideal(r, requests, executed)) <= lot
    assert [a.account for a in allocations] == [r.account for r in requests if r.account in got]
    assert allocate(requests, executed, PRICE, lot) == allocations
