"""The built-in venue simulator: a small market that reports back like a venue, with FIX semantics.

A marketable order is acknowledged, then filled at the reference price in parts; a limit order
that is not marketable rests, working, until the reference price comes to it or it is canceled;
ioc and fok orders are dealt with at once. An order's notes can ask for a scenario
(`sim:partial=3`, `sim:reject`, ...: see `parse_scenario`), so a test or a demo can play the
venue's less happy paths.

Its orders live in the database (`db.simulators`), not in the worker's memory, and a loop
(`SimulatedVenue.run`) drives them: a worker killed at any point is replaced by one that carries
on where it stopped. Each step's effect is recorded only after the OMS has the report, so a
report is delivered at least once; exec ids are deterministic, so the OMS drops the repeats.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal, InvalidOperation

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
REJECTED = "rejected"
BUSTED = "busted"  # filled, then its last trade busted (sim:bust)

# Exec ids are f"SIM-{cl_ord_id}-{n}" and at most 128 characters.
MAX_CL_ORD_ID_LENGTH = 100
_DUE_BATCH = 200  # orders taken per poll; the rest come on the next one
_MAX_RETRY_SECONDS = 5.0
_MAX_PARTS = 100
_DEFAULT_PARTS = 2
_DEFAULT_IOC_REMAINDER = Decimal(50)
_IMMEDIATE = (TimeInForce.IOC.value, TimeInForce.FOK.value)

# "sim:name" or "sim:name=value", anywhere in the notes, not glued to a word before it.
_SCENARIO_TOKEN = re.compile(r"(?<![\w:/-])sim:([a-z][a-z-]*)(?:=(\S+))?")
_FLAGS = (
    "reject",
    "cancel-reject",
    "never-ack",
    "late-fill-after-cancel",
    "replace-reject",
    "bust",
)
# The answers to a replace request, as `simulators.record_venue_step` takes them.
REPLACED = "replaced"
REPLACE_REFUSED = "rejected"


@dataclass(frozen=True)
class Scenario:
    """What an order asked the simulator to play (all off: a plain market).

    Attributes:
        parts: How many fills a marketable order is filled in, `delay_seconds` apart.
        reject: Reject the order instead of acknowledging it.
        cancel_reject: Refuse every cancel request (`cancel_rejected`); the order carries on.
        never_ack: Say nothing at all, ever (not even to a cancel request).
        late_fill_after_cancel: Rest after the acknowledgement; when a cancel request comes,
            report one fill first, then the cancel of the rest.
        replace_reject: Refuse every replace request (`replace_rejected`); the order carries on.
        bust: Once the order is filled, bust its last trade (`trade_cancel`).
        ioc_remainder: Percent of an ioc order left unfilled (and canceled); a fok order
            that cannot fill completely is canceled whole. None: the market takes it all.
    """

    parts: int = _DEFAULT_PARTS
    reject: bool = False
    cancel_reject: bool = False
    never_ack: bool = False
    late_fill_after_cancel: bool = False
    ioc_remainder: Decimal | None = None
    replace_reject: bool = False
    bust: bool = False

    def canonical(self) -> str:
        """Return the scenario as `sim:` tokens (empty for the plain market); parses back alike."""
        tokens = [f"sim:partial={self.parts}"] if self.parts != _DEFAULT_PARTS else []
        flags = (
            self.reject,
            self.cancel_reject,
            self.never_ack,
            self.late_fill_after_cancel,
            self.replace_reject,
            self.bust,
        )
        tokens += [f"sim:{name}" for name, on in zip(_FLAGS, flags, strict=True) if on]
        if self.ioc_remainder is not None:
            tokens.append(f"sim:ioc-remainder={tidy(self.ioc_remainder)}%")
        return " ".join(tokens)


def parse_scenario(notes: str) -> Scenario:
    """Read the `sim:` tokens of an order's notes; the rest of the notes is ignored.

    Tokens: `sim:partial=N` (1 to 100 fills), `sim:reject`, `sim:cancel-reject`,
    `sim:never-ack`, `sim:late-fill-after-cancel`, `sim:replace-reject`, `sim:bust`,
    `sim:ioc-remainder=P%`
    (0 < P < 100; 50 if no value). They combine: `"sim:partial=3 sim:cancel-reject"`.

    Raises:
        VenueRefusedError: A `sim:` token the simulator does not know, or a bad value.
    """
    parts, remainder, flags = _DEFAULT_PARTS, None, set()
    for name, value in _SCENARIO_TOKEN.findall(notes):
        if name == "partial":
            if not value.isdigit() or not 1 <= int(value) <= _MAX_PARTS:
                raise VenueRefusedError(
                    f"sim:partial needs a whole number of fills from 1 to {_MAX_PARTS}"
                )
            parts = int(value)
        elif name == "ioc-remainder":
            remainder = _percent(value)
        elif name in _FLAGS and not value:
            flags.add(name)
        else:
            known = ", ".join(["partial=N", *_FLAGS, "ioc-remainder=P%"])
            raise VenueRefusedError(f"unknown simulator scenario sim:{name}; known: {known}")
    return Scenario(
        parts=parts,
        reject="reject" in flags,
        cancel_reject="cancel-reject" in flags,
        never_ack="never-ack" in flags,
        late_fill_after_cancel="late-fill-after-cancel" in flags,
        ioc_remainder=remainder,
        replace_reject="replace-reject" in flags,
        bust="bust" in flags,
    )


def _percent(value: str) -> Decimal:
    if not value:
        return _DEFAULT_IOC_REMAINDER
    try:
        percent = Decimal(value.removesuffix("%"))
    except InvalidOperation:
        percent = Decimal(-1)
    if not (percent.is_finite() and 0 < percent < 100):
        raise VenueRefusedError("sim:ioc-remainder needs a percent between 0 and 100, e.g. 40%")
    return percent


def is_marketable(order: VenueOrder, reference_price: Decimal) -> bool:
    """Return whether the order trades at the reference price (a market order always does)."""
    if order.order_type is not OrderType.LIMIT or order.limit_price is None:
        return True
    if order.side is Side.BUY:
        return order.limit_price >= reference_price
    return order.limit_price <= reference_price


def fill_price(order: VenueOrder, reference_price: Decimal) -> Decimal:
    """Return where the simulator fills: the market (reference) price, never worse than the limit.

    A marketable limit order gets the market price; one that is not marketable (only a late
    fill after a cancel request trades one) is filled at its limit, as if the market came to it.
    """
    if order.order_type is not OrderType.LIMIT or order.limit_price is None:
        return reference_price
    if order.side is Side.BUY:
        return min(order.limit_price, reference_price)
    return max(order.limit_price, reference_price)


def _whole_lots(quantity: Decimal, lot_size: Decimal) -> Decimal:
    return (quantity / lot_size).to_integral_value(rounding=ROUND_FLOOR) * lot_size


def first_fill(quantity: Decimal, lot_size: Decimal) -> Decimal:
    """Return the first of the two fills: half the order, rounded down to whole lots."""
    return _whole_lots(quantity / 2, lot_size)


def next_part(quantity: Decimal, filled: Decimal, lot_size: Decimal, parts: int) -> Decimal:
    """Return the next fill when `quantity` is filled in `parts` parts of whole lots.

    After part k of n the order has `floor(quantity * k / n)` in whole lots, the last part
    takes the rest; a part that would be empty (an order of few lots) is skipped.
    """
    for k in range(1, parts):
        target = _whole_lots(quantity * k / parts, lot_size)
        if target > filled:
            return target - filled
    return quantity - filled


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
    reference_price: Decimal | None = None  # a new reference price to keep; None: unchanged
    replace_answer: str | None = None  # REPLACED or REPLACE_REFUSED: the pending replace's answer
    exec_ref_id: str | None = None  # a bust: the trade it cancels


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


def _rests(row: SimVenueOrderRow) -> bool:
    """Whether the order is working, unfilled in part, and waits for the market (a limit order)."""
    return (
        row.state == WORKING
        and row.quantity > row.filled
        and row.order_type == OrderType.LIMIT.value
        and row.time_in_force not in _IMMEDIATE
        and not (row.cancel_requested and not row.cancel_answered)
    )


def _trade(
    row: SimVenueOrderRow,
    quantity: Decimal,
    then_in: float | None,
    text: str = "",
    *,
    more_after_done: bool = False,
) -> _Step:
    filled = row.filled + quantity
    done = filled >= row.quantity
    return _Step(
        ExecType.TRADE,
        FILLED if done else WORKING,
        filled,
        row.cancel_answered,
        then_in=None if done and not more_after_done else then_in,
        last_quantity=quantity,
        last_price=fill_price(_venue_order(row), row.reference_price),
        text=text,
    )


def _answer_cancel(row: SimVenueOrderRow, scenario: Scenario, delay: float) -> _Step:
    if row.state in (FILLED, CANCELED, REJECTED, BUSTED):
        return _Step(
            ExecType.CANCEL_REJECTED,
            row.state,
            row.filled,
            cancel_answered=True,
            then_in=None,
            text="too late to cancel: order is done",
        )
    if scenario.cancel_reject:
        return _Step(
            ExecType.CANCEL_REJECTED,
            row.state,
            row.filled,
            cancel_answered=True,
            then_in=delay,  # the order carries on where it was
            text="cancel refused (sim:cancel-reject)",
        )
    if scenario.late_fill_after_cancel and row.state == WORKING and row.filled == 0:
        # The cancel stays unanswered, so it is due again as soon as this fill is recorded.
        part = next_part(row.quantity, row.filled, row.lot_size, scenario.parts)
        return _trade(row, part, then_in=0, text="filled before the cancel (sim:late-fill)")
    return _Step(
        ExecType.CANCELED,
        CANCELED,
        row.filled,
        cancel_answered=True,
        then_in=None,
        text="canceled on request",
    )


def _answer_replace(row: SimVenueOrderRow, scenario: Scenario, delay: float) -> _Step:
    """Take or refuse the pending replace request; a taken one gives the order its new terms."""
    if row.state in (FILLED, CANCELED, REJECTED, BUSTED) or scenario.replace_reject:
        done = row.state in (FILLED, CANCELED, REJECTED, BUSTED)
        return _Step(
            ExecType.REPLACE_REJECTED,
            row.state,
            row.filled,
            row.cancel_answered,
            then_in=None if done else delay,
            text="too late to replace: order is done"
            if done
            else "replace refused (sim:replace-reject)",
            replace_answer=REPLACE_REFUSED,
        )
    assert row.replace_quantity is not None
    filled = row.filled >= row.replace_quantity
    return _Step(
        ExecType.REPLACED,
        FILLED if filled else WORKING,
        row.filled,
        row.cancel_answered,
        then_in=None if filled else delay,
        text="replaced",
        replace_answer=REPLACED,
    )


def _immediate(row: SimVenueOrderRow, scenario: Scenario) -> _Step:
    """Deal with an acknowledged ioc or fok order at once: fill what the market has, cancel the rest."""
    tif = row.time_in_force
    if not is_marketable(_venue_order(row), row.reference_price):
        return _Step(
            ExecType.CANCELED,
            CANCELED,
            row.filled,
            row.cancel_answered,
            then_in=None,
            text=f"{tif}: not marketable at {tidy(row.reference_price)}; canceled",
        )
    available = row.quantity
    if scenario.ioc_remainder is not None:
        share = (100 - scenario.ioc_remainder) / 100
        available = _whole_lots(row.quantity * share, row.lot_size)
    if tif == TimeInForce.FOK.value and available < row.quantity:
        return _Step(
            ExecType.CANCELED,
            CANCELED,
            row.filled,
            row.cancel_answered,
            then_in=None,
            text=f"fok: only {tidy(available)} of {tidy(row.quantity)} available; canceled",
        )
    if row.filled < available:
        return _trade(row, available - row.filled, then_in=0)
    return _Step(
        ExecType.CANCELED,
        CANCELED,
        row.filled,
        row.cancel_answered,
        then_in=None,
        text=f"{tif}: remainder {tidy(row.quantity - row.filled)} canceled",
    )


def _next_step(
    row: SimVenueOrderRow,
    delay: float,
    *,
    market: Decimal | None = None,
    recheck: float | None = None,
) -> _Step:
    """Decide what the order's next step is, from its row alone (so any simulator decides alike).

    Args:
        row: The order as it stands.
        delay: Seconds between the steps of an order.
        market: The reference price now, for an order resting on the book (`_rests`).
        recheck: Seconds until a resting order looks at the market again.
    """
    scenario = parse_scenario(row.scenario)
    if scenario.never_ack and row.state == RECEIVED:
        # Silence, even to a cancel request (answered, so it is not due again).
        return _Step(None, RECEIVED, row.filled, row.cancel_requested, then_in=None)
    if row.replace_cl_ord_id is not None and row.state != RECEIVED:
        return _answer_replace(row, scenario, delay)
    if row.cancel_requested and not row.cancel_answered:
        return _answer_cancel(row, scenario, delay)
    if row.state == RECEIVED:
        if scenario.reject:
            return _Step(
                ExecType.REJECTED,
                REJECTED,
                row.filled,
                row.cancel_answered,
                then_in=None,
                text="rejected by the venue (sim:reject)",
            )
        immediate = row.time_in_force in _IMMEDIATE
        then_in = 0 if immediate else delay
        return _Step(
            ExecType.NEW, WORKING, row.filled, row.cancel_answered, then_in, text="accepted"
        )
    if scenario.bust and row.state == FILLED:
        # The last report was the trade that filled it: bust that one.
        last = _last_part(row.quantity, row.lot_size, scenario.parts)
        return _Step(
            ExecType.TRADE_CANCEL,
            BUSTED,
            row.filled - last,
            row.cancel_answered,
            then_in=None,
            text="trade busted (sim:bust)",
            exec_ref_id=f"SIM-{row.cl_ord_id}-{row.next_exec - 1}",
        )
    leaves = row.quantity - row.filled
    if row.state != WORKING or leaves <= 0:
        done = FILLED if row.state == WORKING else row.state
        return _Step(None, done, row.filled, row.cancel_answered, then_in=None)
    if row.time_in_force in _IMMEDIATE:
        return _immediate(row, scenario)
    if scenario.late_fill_after_cancel:
        # Rests until the cancel request it is waiting for (which makes it due).
        return _Step(None, WORKING, row.filled, row.cancel_answered, then_in=None)
    if _rests(row):
        price = row.reference_price if market is None else market
        if not is_marketable(_venue_order(row), price):
            return _Step(
                None,
                WORKING,
                row.filled,
                row.cancel_answered,
                then_in=delay if recheck is None else recheck,
                reference_price=price,
            )
        if price != row.reference_price:
            # Keep the new price before filling at it, so a resent fill has the same price.
            return _Step(
                None, WORKING, row.filled, row.cancel_answered, then_in=0, reference_price=price
            )
    part = next_part(row.quantity, row.filled, row.lot_size, scenario.parts)
    return _trade(row, part, then_in=delay, more_after_done=scenario.bust)


def _last_part(quantity: Decimal, lot_size: Decimal, parts: int) -> Decimal:
    """Return the last fill of an order filled in `parts` parts (`next_part`'s sequence)."""
    filled = last = Decimal(0)
    while filled < quantity:
        last = next_part(quantity, filled, lot_size, parts)
        filled += last
    return last


class SimulatedVenue:
    """A small market: orders are acknowledged, then filled in parts, `delay_seconds` apart.

    A market order, or a marketable limit order, fills at the reference price (in two parts,
    or as its scenario says). A limit order that is not marketable rests, working, and looks at
    the market every `recheck_seconds` until it becomes marketable or is canceled. An ioc order
    fills what it can at once and the remainder is canceled; a fok order fills whole at once or
    is canceled. An unfilled ioc or fok remainder is reported `canceled` (FIX ExecType=4). `submit`,
    `cancel` and `order_status` only read and write the simulator's table; `run` is the loop
    that sends the reports, and must be running (one per worker) for orders to move.

    Args:
        sink: Where the execution reports go.
        prices: The listing of a symbol: looked up when an order arrives, and again while a
            limit order rests or fills.
        sessions: The database the simulator keeps its orders in.
        delay_seconds: Time from receipt to acknowledgement, and between the steps after it.
        identity: Who the reports are from (the OMS user of the venue).
        lease_seconds: How long a simulator may hold an order while reporting on it. Another
            simulator (a restarted worker) takes over an order held this long.
        recheck_seconds: How often a resting limit order looks at the reference price.
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
        recheck_seconds: float = 1.0,
    ) -> None:
        self._sink = sink
        self._prices = prices
        self._sessions = sessions
        self._delay = delay_seconds
        self._recheck = recheck_seconds
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
            VenueRefusedError: The symbol is not listed, the ClOrdID is too long, or the notes
                ask for a scenario the simulator does not know (`parse_scenario`).
        """
        if await asyncio.to_thread(self._count_resubmission, order.cl_ord_id):
            return
        if len(order.cl_ord_id) > MAX_CL_ORD_ID_LENGTH:
            raise VenueRefusedError(
                f"ClOrdID {order.cl_ord_id!r} is longer than {MAX_CL_ORD_ID_LENGTH} characters"
            )
        scenario = parse_scenario(order.notes)
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
            scenario=scenario.canonical(),
            next_step_at=now + timedelta(seconds=self._delay),
            received_at=now,
        )
        await asyncio.to_thread(self._record_submission, row)
        self._wake.set()

    async def cancel(self, order_id: str, cl_ord_id: str, orig_cl_ord_id: str = "") -> None:
        """Record a request to cancel the order that goes by `orig_cl_ord_id`; the loop answers it.

        A repeated request (its ClOrdID again) is answered OK and sends no second answer; a new
        one after a rejection is answered again.

        Raises:
            VenueRefusedError: The venue never received the order's ClOrdID for this order.
        """
        target = orig_cl_ord_id or cl_ord_id
        row = await asyncio.to_thread(self._request_cancel, order_id, cl_ord_id, target)
        if row is None:
            raise VenueRefusedError(f"order {order_id} ({target}) is unknown to the simulator")
        self._wake.set()

    async def replace(self, order: VenueOrder, orig_cl_ord_id: str) -> None:
        """Record a request to replace the order sent as `orig_cl_ord_id`; the loop answers it.

        A resend of the request (its new ClOrdID) is answered OK and sends no second answer.

        Raises:
            VenueRefusedError: The venue does not have the order under `orig_cl_ord_id`, or a
                replace of it is already pending.
        """
        if len(order.cl_ord_id) > MAX_CL_ORD_ID_LENGTH:
            raise VenueRefusedError(
                f"ClOrdID {order.cl_ord_id!r} is longer than {MAX_CL_ORD_ID_LENGTH} characters"
            )
        taken = await asyncio.to_thread(self._request_replace, order, orig_cl_ord_id)
        if not taken:
            raise VenueRefusedError(
                f"order {order.order_id} ({orig_cl_ord_id}) is unknown to the simulator, or a "
                "replace of it is pending"
            )
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
            market = None
            if _rests(row):
                listing = await asyncio.to_thread(self._prices, row.symbol)
                market = None if listing is None else listing[0]
            step = _next_step(row, self._delay, market=market, recheck=self._recheck)
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
                    exec_ref_id=step.exec_ref_id,
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

    def _request_cancel(
        self, order_id: str, cl_ord_id: str, orig_cl_ord_id: str
    ) -> SimVenueOrderRow | None:
        with self._sessions() as session:
            return simulators.request_cancel(
                session, order_id, cl_ord_id, orig_cl_ord_id, datetime.now(UTC)
            )

    def _request_replace(self, order: VenueOrder, orig_cl_ord_id: str) -> bool:
        with self._sessions() as session:
            return simulators.request_replace(
                session,
                order.order_id,
                orig_cl_ord_id,
                order.cl_ord_id,
                order.quantity,
                order.limit_price,
                datetime.now(UTC),
            )

    def _venue_order(self, cl_ord_id: str) -> SimVenueOrderRow | None:
        with self._sessions() as session:
            return simulators.venue_order_by_any_id(session, cl_ord_id)

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
                reference_price=step.reference_price,
                replace_answer=step.replace_answer,
                next_step_at=None
                if step.then_in is None
                else now + timedelta(seconds=step.then_in),
                now=now,
            )
