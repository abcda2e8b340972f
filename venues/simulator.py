"""The built-in venue simulator: acknowledges, then fills in two parts, reporting back like a venue.

Its orders live in the database (`db.simulators`), not in the worker's memory, and a loop
(`SimulatedVenue.run`) drives them: a worker killed at any point is replaced by one that carries
on where it stopped. Each step's effect is recorded only after the OMS has the report, so a
report is delivered at least once; exec ids are deterministic, so the OMS drops the repeats.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal

from db import simulators
from db.engine import SessionFactory
from db.simulators import SimVenueOrderRow
from domain.executions import ExecutionReport
from domain.models import ExecType, OrderType, Side, TimeInForce, tidy
from venues.base import ExecutionSink, VenueOrder, VenueOrderStatus, VenueRefusedError

log = logging.getLogger(__name__)

PriceSource = Callable[[str], tuple[Decimal, Decimal] | None]
"""symbol -> (reference price, lot size), or None for an instrument the venue does not list."""

# The venue's words for where an order is (VenueOrderStatus.state).
RECEIVED = "new"  # received, not acknowledged yet
WORKING = "working"  # acknowledged; filled_quantity says how much is done
FILLED = "filled"
CANCELED = "canceled"

# Exec ids are f"SIM-{cl_ord_id}-{n}" and at most 128 characters.
MAX_CL_ORD_ID_LENGTH = 100
_DUE_BATCH = 200  # orders taken per poll; the rest come on the next one
_MAX_RETRY_SECONDS = 5.0


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


def first_fill(quantity: Decimal, lot_size: Decimal) -> Decimal:
    """Return the first of the two fills: half the order, rounded down to whole lots."""
    return (quantity / 2 / lot_size).to_integral_value(rounding=ROUND_FLOOR) * lot_size


@dataclass(frozen=True)
class _Step:
    """The next thing the simulator does to an order: a report, and the order's state after it."""

    exec_type: ExecType | None  # None: nothing to report, only the state to record
    state: str
    filled: Decimal
    cancel_answered: bool
    then_in: float | None  # seconds until the step after this one; None: nothing more
    last_quantity: Decimal = Decimal(0)
    last_price: Decimal | None = None
    text: str = ""


def _venue_order(row: SimVenueOrderRow) -> VenueOrder:
    return VenueOrder(
        order_id=row.order_id,
        cl_ord_id=row.cl_ord_id,
        fund=row.fund,
        symbol=row.symbol,
        side=Side(row.side),
        quantity=row.quantity,
        order_type=OrderType(row.order_type),
        limit_price=row.limit_price,
        time_in_force=TimeInForce(row.time_in_force),
    )


def _next_step(row: SimVenueOrderRow, delay: float) -> _Step:
    """Decide what the order's next step is, from its row alone (so any simulator decides alike)."""
    if row.cancel_requested and not row.cancel_answered:
        if row.state in (FILLED, CANCELED):
            return _Step(
                ExecType.CANCEL_REJECTED,
                row.state,
                row.filled,
                cancel_answered=True,
                then_in=None,
                text="too late to cancel: order is done",
            )
        return _Step(
            ExecType.CANCELED,
            CANCELED,
            row.filled,
            cancel_answered=True,
            then_in=None,
            text="canceled on request",
        )
    if row.state == RECEIVED:
        return _Step(ExecType.NEW, WORKING, row.filled, row.cancel_answered, delay, text="accepted")
    leaves = row.quantity - row.filled
    if row.state != WORKING or leaves <= 0:
        done = FILLED if row.state == WORKING else row.state
        return _Step(None, done, row.filled, row.cancel_answered, then_in=None)
    first = first_fill(row.quantity, row.lot_size)
    quantity = first - row.filled if row.filled < first else leaves
    filled = row.filled + quantity
    return _Step(
        ExecType.TRADE,
        FILLED if filled >= row.quantity else WORKING,
        filled,
        row.cancel_answered,
        then_in=None if filled >= row.quantity else delay,
        last_quantity=quantity,
        last_price=fill_price(_venue_order(row), row.reference_price),
    )


class SimulatedVenue:
    """A venue whose orders are acknowledged, then filled in two parts, `delay_seconds` apart.

    Fills are at the price `fill_price` gives (the reference price, or the limit). `submit`,
    `cancel` and `order_status` only read and write the simulator's table; `run` is the loop
    that sends the reports, and must be running (one per worker) for orders to move.

    Args:
        sink: Where the execution reports go.
        prices: The listing of a symbol, looked up once when an order arrives.
        sessions: The database the simulator keeps its orders in.
        delay_seconds: Time from receipt to acknowledgement, and between the steps after it.
        identity: Who the reports are from (the OMS user of the venue).
        lease_seconds: How long a simulator may hold an order while reporting on it. Another
            simulator (a restarted worker) takes over an order held this long.
    """

    name = "simulator"

    def __init__(
        self,
        sink: ExecutionSink,
        prices: PriceSource,
        sessions: SessionFactory,
        *,
        delay_seconds: float = 0.2,
        identity: str = "sim-venue",
        lease_seconds: float = 10.0,
    ) -> None:
        self._sink = sink
        self._prices = prices
        self._sessions = sessions
        self._delay = delay_seconds
        self._identity = identity
        self._lease = timedelta(seconds=lease_seconds)
        # A report still unanswered at half the lease is given up on (and resent later), so
        # no other simulator takes the order over while this one may still be reporting.
        self._report_timeout = lease_seconds / 2
        self._poll = min(max(delay_seconds / 2, 0.02), 0.25)
        self._first_retry = max(delay_seconds, 0.05)
        self._owner = f"{identity}-{uuid.uuid4().hex[:12]}"
        self._wake = asyncio.Event()
        self._driving: set[str] = set()
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        self._runner: asyncio.Task[None] | None = None

    async def submit(self, order: VenueOrder) -> None:
        """Receive an order; a resend of a known ClOrdID is counted and answered OK.

        Raises:
            VenueRefusedError: The symbol is not listed, or the ClOrdID is too long.
        """
        if await asyncio.to_thread(self._count_resubmission, order.cl_ord_id):
            return
        if len(order.cl_ord_id) > MAX_CL_ORD_ID_LENGTH:
            raise VenueRefusedError(
                f"ClOrdID {order.cl_ord_id!r} is longer than {MAX_CL_ORD_ID_LENGTH} characters"
            )
        # The price source may read a database: keep it off the event loop the workers share.
        listing = await asyncio.to_thread(self._prices, order.symbol)
        if listing is None:
            raise VenueRefusedError(f"{order.symbol} is not listed on the simulator")
        reference_price, lot_size = listing
        now = datetime.now(UTC)
        row = SimVenueOrderRow(
            cl_ord_id=order.cl_ord_id,
            order_id=order.order_id,
            fund=order.fund,
            symbol=order.symbol,
            side=order.side.value,
            quantity=order.quantity,
            order_type=order.order_type.value,
            limit_price=order.limit_price,
            time_in_force=order.time_in_force.value,
            reference_price=reference_price,
            lot_size=lot_size,
            state=RECEIVED,
            next_step_at=now + timedelta(seconds=self._delay),
            received_at=now,
        )
        await asyncio.to_thread(self._record_submission, row)
        self._wake.set()

    async def cancel(self, order_id: str, cl_ord_id: str) -> None:
        """Record a request to cancel the order sent as `cl_ord_id`; the loop answers it.

        A repeated request is answered OK and sends no second answer.

        Raises:
            VenueRefusedError: The venue never received `cl_ord_id` for this order.
        """
        row = await asyncio.to_thread(self._request_cancel, order_id, cl_ord_id)
        if row is None:
            raise VenueRefusedError(f"order {order_id} ({cl_ord_id}) is unknown to the simulator")
        self._wake.set()

    async def order_status(self, cl_ord_id: str) -> VenueOrderStatus:
        """Return what the simulator knows of `cl_ord_id`."""
        row = await asyncio.to_thread(self._venue_order, cl_ord_id)
        if row is None:
            return VenueOrderStatus(cl_ord_id=cl_ord_id, known=False)
        return VenueOrderStatus(
            cl_ord_id=cl_ord_id, known=True, state=row.state, filled_quantity=row.filled
        )

    async def run(self) -> None:
        """Send the reports of every order whose next step is due, until cancelled.

        Orders are driven concurrently, each by one task at a time, so one order's reports go
        in sequence. Start it as a task (`asyncio.create_task(simulator.run())`) and cancel the
        task to stop; an order interrupted mid-step is taken up by the next run.
        """
        self._runner = asyncio.current_task()
        now = asyncio.get_running_loop().time
        try:
            async with asyncio.TaskGroup() as group:
                while True:
                    self._wake.clear()
                    for cl_ord_id in await self._due():
                        if cl_ord_id in self._driving or self._retry_at.get(cl_ord_id, 0) > now():
                            continue
                        self._driving.add(cl_ord_id)
                        group.create_task(self._drive(cl_ord_id), name=f"sim-{cl_ord_id}")
                    try:
                        async with asyncio.timeout(self._poll):
                            await self._wake.wait()
                    except TimeoutError:
                        pass
        finally:
            self._driving.clear()
            self._runner = None

    async def close(self) -> None:
        """Stop the loop if it is running (on shutdown); orders carry on at the next start."""
        runner = self._runner
        if runner is not None and runner is not asyncio.current_task():
            runner.cancel()
            await asyncio.wait({runner})

    async def _due(self) -> list[str]:
        try:
            return await asyncio.to_thread(self._due_now)
        except Exception:  # the database may be briefly unreachable: poll again later
            log.exception("simulator could not read its orders")
            return []

    async def _drive(self, cl_ord_id: str) -> None:
        """Take one step of an order: claim it, report, record the step once the OMS has it."""
        try:
            row = await asyncio.to_thread(self._claim, cl_ord_id)
            if row is None:
                return  # no longer due, or another simulator has it
            step = _next_step(row, self._delay)
            if step.exec_type is not None:
                report = ExecutionReport(
                    order_id=row.order_id,
                    exec_id=f"SIM-{row.cl_ord_id}-{row.next_exec}",
                    exec_type=step.exec_type,
                    # The book keeps NUMERIC(38, 12) on PostgreSQL: report as a venue writes them.
                    last_quantity=tidy(step.last_quantity),
                    last_price=None if step.last_price is None else tidy(step.last_price),
                    text=step.text,
                    transact_time=datetime.now(UTC),
                )
                try:
                    async with asyncio.timeout(self._report_timeout):
                        await self._sink.report(report, self._identity)
                except Exception as exc:
                    self._back_off(cl_ord_id, f"could not report {report.exec_id}: {exc!r}")
                    return
            reported = row.next_exec
            next_exec = reported if step.exec_type is None else reported + 1
            await asyncio.to_thread(self._record_step, row.cl_ord_id, reported, next_exec, step)
            self._failures.pop(cl_ord_id, None)
            self._retry_at.pop(cl_ord_id, None)
            # A cancel request that came in meanwhile is due now, and the poll that saw it
            # passed this order over while it was busy: look again at once.
            self._wake.set()
        except Exception as exc:  # the database: try again later, never end the loop
            self._back_off(cl_ord_id, f"could not work on {cl_ord_id}: {exc!r}")
        finally:
            self._driving.discard(cl_ord_id)

    def _back_off(self, cl_ord_id: str, problem: str) -> None:
        failures = self._failures.get(cl_ord_id, 0) + 1
        self._failures[cl_ord_id] = failures
        wait = min(self._first_retry * 2 ** (failures - 1), _MAX_RETRY_SECONDS)
        self._retry_at[cl_ord_id] = asyncio.get_running_loop().time() + wait
        log.warning("simulator %s (attempt %d); retrying in %.2f s", problem, failures, wait)

    # Database work, run in threads.

    def _count_resubmission(self, cl_ord_id: str) -> bool:
        with self._sessions() as session:
            return simulators.count_resubmission(session, cl_ord_id)

    def _record_submission(self, row: SimVenueOrderRow) -> None:
        with self._sessions() as session:
            simulators.record_submission(session, row)

    def _request_cancel(self, order_id: str, cl_ord_id: str) -> SimVenueOrderRow | None:
        with self._sessions() as session:
            return simulators.request_cancel(session, order_id, cl_ord_id, datetime.now(UTC))

    def _venue_order(self, cl_ord_id: str) -> SimVenueOrderRow | None:
        with self._sessions() as session:
            return simulators.venue_order(session, cl_ord_id)

    def _due_now(self) -> list[str]:
        with self._sessions() as session:
            return simulators.due_venue_orders(session, datetime.now(UTC), self._owner, _DUE_BATCH)

    def _claim(self, cl_ord_id: str) -> SimVenueOrderRow | None:
        now = datetime.now(UTC)
        with self._sessions() as session:
            return simulators.claim_venue_order(
                session, cl_ord_id, owner=self._owner, now=now, lease_until=now + self._lease
            )

    def _record_step(self, cl_ord_id: str, reported: int, next_exec: int, step: _Step) -> None:
        now = datetime.now(UTC)
        with self._sessions() as session:
            simulators.record_venue_step(
                session,
                cl_ord_id,
                reported_exec=reported,
                next_exec=next_exec,
                state=step.state,
                filled=step.filled,
                cancel_answered=step.cancel_answered,
                next_step_at=None
                if step.then_in is None
                else now + timedelta(seconds=step.then_in),
                now=now,
            )
