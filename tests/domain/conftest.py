"""Builders shared by the domain tests, as fixtures: orders, instruments, compliance snapshots."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from domain.models import AssetClass, ComplianceSnapshot, Instrument, OrderRequest, OrderType

NOW = datetime(2025, 3, 14, 14, 30, tzinfo=UTC)

OrderFactory = Callable[..., OrderRequest]
InstrumentFactory = Callable[..., Instrument]
SnapshotFactory = Callable[..., ComplianceSnapshot]


def _order(**overrides: Any) -> OrderRequest:
    """Return a valid order request (a market buy of 100 AAPL for fund-alpha), with overrides.

    Giving a `limit_price` without an `order_type` makes it a limit order.
    """
    fields: dict[str, Any] = {
        "client_order_id": "c-1",
        "fund": "fund-alpha",
        "symbol": "AAPL",
        "side": "buy",
        "quantity": Decimal(100),
    }
    fields.update(overrides)
    if overrides.get("limit_price") is not None and "order_type" not in overrides:
        fields["order_type"] = OrderType.LIMIT
    return OrderRequest.model_validate(fields)


def _instrument(**overrides: Any) -> Instrument:
    fields: dict[str, Any] = {
        "symbol": "AAPL",
        "asset_class": AssetClass.EQUITY,
        "currency": "USD",
        "reference_price": Decimal("200.00"),
    }
    fields.update(overrides)
    return Instrument.model_validate(fields)


def _snapshot(
    *,
    instrument: Instrument | None = None,
    restricted: list[str] | None = None,
    hard: Decimal | None = None,
    soft: Decimal | None = None,
) -> ComplianceSnapshot:
    return ComplianceSnapshot(
        fund="fund-alpha",
        instrument=instrument or _instrument(),
        restricted_symbols=restricted or [],
        max_order_notional=hard,
        warn_order_notional=soft,
        taken_at=NOW,
    )


@pytest.fixture
def make_order() -> OrderFactory:
    return _order


@pytest.fixture
def make_instrument() -> InstrumentFactory:
    return _instrument


@pytest.fixture
def make_snapshot() -> SnapshotFactory:
    return _snapshot
