"""The built-in venue simulator: acknowledges, then fills in two parts, reporting back like a venue."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_FLOOR, Decimal

from domain.executions import ExecutionReport
from domain.models import ExecType, OrderType, Side
from venues.base import ExecutionSink, VenueOrder, VenueRefusedError

log = logging.getLogger(__name__)

PriceSource = Callable[[str], tuple[Decimal, Decimal] | None]
"""symbol -> (reference price, lot size), or None for an instrument the venue does not list."""


def fill_price(order: VenueOrder, reference_price: Decimal) -> Decimal:
    """Return where the simulator fills: the market (reference) price, never worse than the limit.

    A marketable limit order gets the market price; one that is not marketable is filled at its
    limit, as if the market came to it.
    """
    if order.order_type is not OrderType.LIMIT or order.limit_price is None:
        return reference_price
    if order.side is Side.BUY:
        return min(order.limit_price, reference_price)
    return max(order.limit_price, reference_price)


@dataclass
class _SimOrder:
    order: VenueOrder
    filled: Decimal = Decimal(0)
    done: bool = False
    cancel_requested: bool = False
    canceled: bool = False
    next_exec: int = 1
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class SimulatedVenue:
    """A venue in-process: every order is acknowledged, then filled in two parts.

    Fills are at the price `fill_price` gives (the reference price, or the limit). Exec
    ids are derived from the order id and a sequence, so a resent order or a restarted simulator
    produces the same ids and the OMS discards the repeats.
    """

    name = "simulator"

    def __init__(
        self,
        sink: ExecutionSink,
        prices: PriceSource,
        *,
        delay_seconds: float = 0.2,
        identity: str = "sim-venue",
    ) -> None:
        self._sink = sink
        self._prices = prices
        self._delay = delay_seconds
        self._identity = identity
        self._orders: dict[str, _SimOrder] = {}

    async def submit(self, order: VenueOrder) -> None:
        if order.order_id in self._orders:
            return
        # The price source may read a database: keep it off the event loop the workers share.
        listing = await asyncio.to_thread(self._prices, order.symbol)
        if listing is None:
            raise VenueRefusedError(f"{order.symbol} is not listed on the simulator")
        sim = _SimOrder(order)
        self._orders[order.order_id] = sim
        sim.task = asyncio.create_task(self._work(sim, *listing), name=f"sim-{order.order_id}")

    async def cancel(self, order_id: str) -> None:
        sim = self._orders.get(order_id)
        if sim is None:
            raise VenueRefusedError(f"order {order_id} is unknown to the simulator")
        if sim.canceled:
            return  # a resent cancel (a retried activity) was already answered
        sim.cancel_requested = True
        if sim.done:
            await self._send(
                sim, ExecType.CANCEL_REJECTED, text="too late to cancel: order is done"
            )
            return
        sim.done = sim.canceled = True
        if sim.task is not None:
            sim.task.cancel()
        await self._send(sim, ExecType.CANCELED, text="canceled on request")

    async def close(self) -> None:
        """Stop every order still being worked (on shutdown)."""
        for sim in self._orders.values():
            if sim.task is not None:
                sim.task.cancel()

    async def _work(self, sim: _SimOrder, reference_price: Decimal, lot_size: Decimal) -> None:
        order = sim.order
        price = fill_price(order, reference_price)
        try:
            await asyncio.sleep(self._delay)
            await self._send(sim, ExecType.NEW, text="accepted")
            first = (order.quantity / 2 / lot_size).to_integral_value(
                rounding=ROUND_FLOOR
            ) * lot_size
            for quantity in (first, order.quantity - first):
                if quantity <= 0:
                    continue
                await asyncio.sleep(self._delay)
                if sim.cancel_requested:
                    return
                sim.filled += quantity
                await self._send(sim, ExecType.TRADE, last_quantity=quantity, last_price=price)
            sim.done = True
        except asyncio.CancelledError:
            raise
        except Exception:  # the OMS may be briefly unreachable; a real venue would resend later
            log.exception("simulator could not report on %s", order.order_id)

    async def _send(
        self,
        sim: _SimOrder,
        exec_type: ExecType,
        *,
        last_quantity: Decimal = Decimal(0),
        last_price: Decimal | None = None,
        text: str = "",
    ) -> None:
        report = ExecutionReport(
            order_id=sim.order.order_id,
            exec_id=f"SIM-{sim.order.order_id}-{sim.next_exec}",
            exec_type=exec_type,
            last_quantity=last_quantity,
            last_price=last_price,
            text=text,
            transact_time=datetime.now(UTC),
        )
        sim.next_exec += 1
        await self._sink.report(report, self._identity)
