"""Execution-report guards at their edges, and properties over random sequences of reports.

The guards apply to the v2 order (`apply_report(..., guards=...)`): a fill through the limit, a
fill not in whole lots, a fill more than 50% from the reference price (exactly 50% passes), a
report on an order not at a venue, an overfill; and, checked before the order sees a report,
a transact_time more than a day ahead or before the release (5 s of clock skew allowed), and a
reporter who does not speak for the order's venue.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.executions import (
    ANY_REPORTER,
    AVERAGE_PRICE_PLACES,
    PRICE_BAND,
    RELEASE_CLOCK_SKEW,
    REPORT_TIME_AHEAD,
    ExecutionReport,
    ReportGuards,
    ReportOutcome,
    ReportVerdict,
    apply_report,
    may_report_for,
    transact_time_problem,
)
from domain.models import ExecType, OrderStatus, Side
from domain.status import (
    AT_VENUE,
    CLOSED_BY_VENUE,
    PRE_RELEASE,
    REPLACED_EVENTS,
    OrderEvent,
    next_status,
)

S = OrderStatus
T0 = datetime(2025, 3, 14, 14, 30, tzinfo=UTC)
RECEIVED = datetime(2025, 3, 14, 14, 30, 1, tzinfo=UTC)
BUY_231 = ReportGuards(
    side=Side.BUY, limit_price=Decimal(231), lot_size=Decimal(1), reference_price=Decimal(230)
)
SELL_231 = ReportGuards(
    side=Side.SELL, limit_price=Decimal(231), lot_size=Decimal(1), reference_price=Decimal(230)
)
EURUSD = ReportGuards(side=Side.BUY, lot_size=Decimal(1000), reference_price=Decimal("1.0850"))


def _report(exec_type: ExecType, exec_id: str = "x-1", **fields: Any) -> ExecutionReport:
    return ExecutionReport.model_validate(
        {"order_id": "ord_1", "exec_id": exec_id, "exec_type": exec_type, "transact_time": T0}
        | fields
    )


def _trade(qty: str, price: str, exec_id: str = "x-1") -> ExecutionReport:
    return _report(ExecType.TRADE, exec_id, last_quantity=Decimal(qty), last_price=Decimal(price))


def _apply(
    report: ExecutionReport,
    guards: ReportGuards | None = BUY_231,
    *,
    status: OrderStatus = S.WORKING,
    quantity: str = "100",
    filled: str = "0",
) -> ReportOutcome:
    return apply_report(
        status=status,
        quantity=Decimal(quantity),
        filled_quantity=Decimal(filled),
        average_price=None,
        seen_exec_ids=set(),
        report=report,
        reported_by="sim-venue",
        received_at=RECEIVED,
        guards=guards,
    )


def _refused(outcome: ReportOutcome, field: str, *words: str) -> None:
    assert outcome.verdict is ReportVerdict.REFUSED, outcome
    assert outcome.field == field
    assert outcome.event is None and outcome.execution is None
    for word in words:
        assert word in outcome.reason


# ---- the limit price --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("guards", "price", "applied"),
    [
        (BUY_231, "231", True),  # at the limit
        (BUY_231, "230.99", True),
        (BUY_231, "231.01", False),  # one tick through
        (BUY_231, "999", False),  # the buy limited at 231 filled at 999
        (SELL_231, "231", True),
        (SELL_231, "231.01", True),
        (SELL_231, "230.99", False),
        (SELL_231, "200", False),
        (ReportGuards(side=Side.SELL_SHORT, limit_price=Decimal(231)), "230.99", False),
        (ReportGuards(side=Side.SELL_SHORT, limit_price=Decimal(231)), "231", True),
    ],
)
def test_a_fill_through_the_limit_is_refused(
    guards: ReportGuards, price: str, applied: bool
) -> None:
    outcome = _apply(_trade("10", price), guards)
    if applied:
        assert outcome.verdict is ReportVerdict.APPLIED
    else:
        _refused(outcome, "last_price", price, "231", "through the limit", guards.side.value)


def test_a_sell_filled_at_1_is_refused_by_its_limit_before_the_band() -> None:
    outcome = _apply(_trade("10", "1"), SELL_231)
    _refused(outcome, "last_price", "through the limit")


def test_a_market_order_has_no_limit_to_break() -> None:
    market = ReportGuards(side=Side.BUY, reference_price=Decimal(230))
    assert _apply(_trade("10", "300"), market).verdict is ReportVerdict.APPLIED


# ---- whole lots -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("qty", "applied"),
    [("0.5", False), ("999", False), ("1000", True), ("1500", False), ("2000", True)],
)
def test_an_fx_fill_must_be_whole_lots_of_1000(qty: str, applied: bool) -> None:
    outcome = _apply(_trade(qty, "1.0850"), EURUSD, quantity="5000")
    if applied:
        assert outcome.verdict is ReportVerdict.APPLIED
    else:
        _refused(outcome, "last_quantity", qty, "whole number of lots", "1000")


def test_an_order_of_an_odd_lot_completes_with_its_odd_last_fill() -> None:
    # 2,500 can never fill in whole lots of 1,000: its last 500 is taken, and nothing else odd.
    assert (
        _apply(_trade("500", "1.0850"), EURUSD, quantity="2500", filled="2000").verdict
        is ReportVerdict.APPLIED
    )
    _refused(
        _apply(_trade("500", "1.0850"), EURUSD, quantity="2500", filled="1000"), "last_quantity"
    )


def test_a_fractional_lot_instrument_takes_its_fractions() -> None:
    btc = ReportGuards(side=Side.BUY, lot_size=Decimal("0.0001"), reference_price=Decimal(64000))
    assert _apply(_trade("0.0003", "64000"), btc, quantity="1").verdict is ReportVerdict.APPLIED
    _refused(_apply(_trade("0.00015", "64000"), btc, quantity="1"), "last_quantity")


# ---- the price band ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("price", "applied"),
    [
        ("100", True),
        ("150", True),  # exactly 50% above passes
        ("150.01", False),
        ("50", True),  # exactly 50% below passes
        ("49.99", False),
        ("0.01", False),
        ("10000", False),
    ],
)
def test_a_fill_more_than_half_away_from_the_reference_price_is_refused(
    price: str, applied: bool
) -> None:
    market = ReportGuards(side=Side.BUY, reference_price=Decimal(100))
    outcome = _apply(_trade("10", price), market)
    if applied:
        assert outcome.verdict is ReportVerdict.APPLIED
    else:
        _refused(outcome, "last_price", price, "50%", "reference price 100")


def test_the_band_is_a_half() -> None:
    assert Decimal("0.5") == PRICE_BAND


# ---- the order's status -----------------------------------------------------------------------

NOT_AT_VENUE = sorted(set(S) - AT_VENUE, key=str)


@pytest.mark.parametrize("status", NOT_AT_VENUE)
@pytest.mark.parametrize(
    "exec_type",
    [
        ExecType.DONE_FOR_DAY,
        ExecType.REPLACED,
        ExecType.PENDING_REPLACE,
        ExecType.PENDING_CANCEL,
        ExecType.NEW,
        ExecType.CANCELED,
    ],
)
def test_no_report_is_taken_on_an_order_not_at_a_venue(
    status: OrderStatus, exec_type: ExecType
) -> None:
    _refused(_apply(_report(exec_type), status=status), "exec_type", status.value, "not at a venue")


@pytest.mark.parametrize("status", sorted(PRE_RELEASE, key=str))
def test_a_fill_on_an_order_never_released_is_refused_for_its_status(status: OrderStatus) -> None:
    # The status is the reason, not the price (which happens to be fine).
    _refused(_apply(_trade("10", "230"), status=status), "exec_type", "not at a venue")


@pytest.mark.parametrize("exec_type", [ExecType.DONE_FOR_DAY, ExecType.REPLACED])
def test_reports_without_an_event_are_taken_at_a_venue(exec_type: ExecType) -> None:
    assert _apply(_report(exec_type)).verdict is ReportVerdict.APPLIED


def test_without_guards_the_first_workflow_keeps_its_rules() -> None:
    """Recorded v1 histories must replay as they ran: no guard applies without `guards`."""
    assert _apply(_trade("10", "999"), None).verdict is ReportVerdict.APPLIED
    assert (
        _apply(_report(ExecType.DONE_FOR_DAY), None, status=S.APPROVED).verdict
        is ReportVerdict.APPLIED
    )


def test_overfill_is_still_refused_with_guards() -> None:
    _refused(_apply(_trade("70", "230"), filled="40"), "last_quantity", "overfill", "110", "100")


def test_a_duplicate_is_a_duplicate_before_any_guard() -> None:
    outcome = apply_report(
        status=S.FILLED,
        quantity=Decimal(100),
        filled_quantity=Decimal(100),
        average_price=Decimal(230),
        seen_exec_ids={"x-1"},
        report=_trade("10", "999"),
        reported_by="sim-venue",
        received_at=RECEIVED,
        guards=BUY_231,
    )
    assert outcome.verdict is ReportVerdict.DUPLICATE


# ---- transact_time ----------------------------------------------------------------------------

NOW = datetime(2025, 3, 14, 15, 0, tzinfo=UTC)
RELEASED = datetime(2025, 3, 14, 14, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("at", "problem"),
    [
        (NOW, None),
        (NOW + REPORT_TIME_AHEAD, None),  # exactly a day ahead passes
        (NOW + REPORT_TIME_AHEAD + timedelta(seconds=1), "more than a day"),
        (datetime(9999, 12, 31, tzinfo=UTC), "more than a day"),
        (RELEASED, None),
        (RELEASED - RELEASE_CLOCK_SKEW, None),  # the venue's clock a little behind ours
        (RELEASED - RELEASE_CLOCK_SKEW - timedelta(microseconds=1), "before the order"),
        (RELEASED - timedelta(days=3), "before the order"),
    ],
)
def test_transact_time_between_the_release_and_a_day_ahead(
    at: datetime, problem: str | None
) -> None:
    found = transact_time_problem(at, now=NOW, released_at=RELEASED)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found and at.isoformat() in found


def test_transact_time_with_no_release_known_is_bounded_ahead_only() -> None:
    assert transact_time_problem(RELEASED - timedelta(days=30), now=NOW, released_at=None) is None


# ---- the venue's identity ---------------------------------------------------------------------

REPORTERS = {"simulator": ["sim-venue"], "manual": [ANY_REPORTER], "ems-x": ["ems-bot"]}


@pytest.mark.parametrize(
    ("venue", "reporter", "allowed"),
    [
        ("simulator", "sim-venue", True),
        ("simulator", "ems-bot", False),
        ("simulator", "tom", False),
        ("ems-x", "ems-bot", True),
        ("ems-x", "sim-venue", False),
        ("manual", "tom", True),
        ("manual", "sim-venue", True),
        ("unlisted", "sim-venue", False),
        (None, "sim-venue", False),
    ],
)
def test_who_reports_for_which_venue(venue: str | None, reporter: str, allowed: bool) -> None:
    assert may_report_for(venue, reporter, REPORTERS) is allowed


# ---- properties over random sequences ---------------------------------------------------------

LOT = Decimal(10)
LIMIT = Decimal(105)
REFERENCE = Decimal(100)
QUANTITY = Decimal(200)
GUARDS = ReportGuards(side=Side.BUY, limit_price=LIMIT, lot_size=LOT, reference_price=REFERENCE)


@st.composite
def _pool(draw: st.DrawFn) -> list[ExecutionReport]:
    """Distinct reports a venue might send, good and bad: fills, odd lots, wild prices, closes."""
    kinds = draw(
        st.lists(
            st.one_of(
                st.tuples(
                    st.just(ExecType.TRADE),
                    st.sampled_from(["5", "10", "20", "30", "50", "80", "200", "210"]),
                    st.sampled_from(
                        ["40", "49.99", "50", "90.5", "100", "104.99", "105", "105.01"]
                    ),
                ),
                st.tuples(
                    st.sampled_from(
                        [
                            ExecType.NEW,
                            ExecType.DONE_FOR_DAY,
                            ExecType.PENDING_CANCEL,
                            ExecType.CANCEL_REJECTED,
                            ExecType.CANCELED,
                            ExecType.EXPIRED,
                        ]
                    ),
                    st.just("0"),
                    st.none(),
                ),
            ),
            min_size=1,
            max_size=12,
        )
    )
    return [
        _report(
            kind,
            f"e-{n}",
            last_quantity=Decimal(qty),
            last_price=None if price is None else Decimal(price),
        )
        for n, (kind, qty, price) in enumerate(kinds)
    ]


@st.composite
def _sends(draw: st.DrawFn) -> list[ExecutionReport]:
    """The pool sent in any order, some reports more than once (duplicates, retries)."""
    pool = draw(_pool())
    return draw(st.lists(st.sampled_from(pool), min_size=1, max_size=30))


@settings(max_examples=300, deadline=None)
@given(_sends(), st.sampled_from([S.RELEASED, S.WORKING]))
def test_random_report_sequences_keep_the_order_consistent(
    sends: list[ExecutionReport], start: OrderStatus
) -> None:
    status, filled, average = start, Decimal(0), None
    leaves = QUANTITY
    seen: set[str] = set()
    refused: dict[str, str] = {}
    fills: list[tuple[Decimal, Decimal]] = []
    for report in sends:
        if report.exec_id in refused:  # the validator answers a refused exec_id again
            continue
        outcome = apply_report(
            status=status,
            quantity=QUANTITY,
            filled_quantity=filled,
            average_price=average,
            seen_exec_ids=seen,
            report=report,
            reported_by="sim-venue",
            received_at=RECEIVED,
            guards=GUARDS,
        )
        if outcome.verdict is ReportVerdict.DUPLICATE:
            assert report.exec_id in seen
            continue
        if outcome.verdict is ReportVerdict.REFUSED:
            assert report.exec_id not in refused and outcome.reason
            refused[report.exec_id] = outcome.reason
            continue
        execution = outcome.execution
        assert execution is not None and report.exec_id not in seen
        seen.add(report.exec_id)
        if outcome.event is not None:
            status = next_status(status, outcome.event)
        filled, leaves, average = (
            execution.cumulative_quantity,
            execution.leaves_quantity,
            execution.average_price,
        )
        if report.exec_type is ExecType.TRADE:
            assert report.last_price is not None
            fills.append((report.last_quantity, report.last_price))
            # Every applied fill respects the guards.
            assert report.last_quantity % LOT == 0
            assert report.last_price <= LIMIT
            assert abs(report.last_price - REFERENCE) <= PRICE_BAND * REFERENCE
        # Cumulative never exceeds the order's quantity, and it is what the fills add up to.
        assert filled <= QUANTITY
        assert filled == sum((q for q, _ in fills), Decimal(0))
        if status in AT_VENUE or status is S.FILLED:
            assert leaves == QUANTITY - filled
        elif outcome.event in CLOSED_BY_VENUE:
            assert leaves == 0
        # The average price is the quantity-weighted mean of the applied fills (each step keeps
        # AVERAGE_PRICE_PLACES, so it may differ from the exact mean by half a place per fill).
        if fills:
            assert average is not None
            mean = sum((q * p for q, p in fills), Decimal(0)) / filled
            assert abs(average - mean) <= AVERAGE_PRICE_PLACES * len(fills)
        else:
            assert average is None
    assert seen.isdisjoint(refused)


# With amend: between reports the order may ask the venue to replace it (a new quantity), as
# the workflow does for a working order; the venue's replace answers come in any order too.
_REPLACE_REPORTS = [ExecType.REPLACED, ExecType.PENDING_REPLACE, ExecType.REPLACE_REJECTED]


@st.composite
def _steps(draw: st.DrawFn) -> list[ExecutionReport | Decimal]:
    """Reports (some repeated) mixed with replace requests (the new quantity asked for)."""
    pool = draw(_pool())
    pool += [_report(kind, f"r-{n}") for n, kind in enumerate(_REPLACE_REPORTS * 2)]
    requests = st.sampled_from([Decimal(q) for q in ("50", "100", "150", "300")])
    return draw(st.lists(st.one_of(st.sampled_from(pool), requests), min_size=1, max_size=40))


@settings(max_examples=300, deadline=None)
@given(_steps())
def test_random_reports_and_replaces_keep_the_order_consistent(
    steps: list[ExecutionReport | Decimal],
) -> None:
    status, quantity, filled, average = S.WORKING, QUANTITY, Decimal(0), None
    replacing: Decimal | None = None
    seen: set[str] = set()
    refused: set[str] = set()
    fills: list[tuple[Decimal, Decimal]] = []
    for step in steps:
        if isinstance(step, Decimal):  # the order asks for a replace, as `amend` does
            if status in (S.WORKING, S.PARTIALLY_FILLED):
                replacing = max(step, filled)
                status = next_status(status, OrderEvent.REPLACE_REQUESTED)
            continue
        if step.exec_id in refused:
            continue
        outcome = apply_report(
            status=status,
            quantity=quantity,
            filled_quantity=filled,
            average_price=average,
            seen_exec_ids=seen,
            report=step,
            reported_by="sim-venue",
            received_at=RECEIVED,
            guards=GUARDS,
            replacing=replacing,
            replace_semantics=True,
        )
        if outcome.verdict is ReportVerdict.REFUSED:
            # At a venue, a replace answer with no replace pending is refused for that.
            if step.exec_type in _REPLACE_REPORTS and replacing is None and status in AT_VENUE:
                assert "none is pending" in outcome.reason
            refused.add(step.exec_id)
            continue
        if outcome.verdict is ReportVerdict.DUPLICATE:
            continue
        execution = outcome.execution
        assert execution is not None
        seen.add(step.exec_id)
        if outcome.event is not None:
            status = next_status(status, outcome.event)
        if outcome.event in REPLACED_EVENTS:
            assert replacing is not None
            quantity, replacing = max(replacing, execution.cumulative_quantity), None
        elif step.exec_type in (ExecType.REPLACE_REJECTED, ExecType.CANCEL_REJECTED) and (
            outcome.event in (OrderEvent.REPLACE_REJECTED, OrderEvent.REPLACE_REJECTED_AFTER_FILLS)
        ):
            replacing = None
        if status not in AT_VENUE:
            replacing = None
        filled, average = execution.cumulative_quantity, execution.average_price
        if step.exec_type is ExecType.TRADE:
            assert step.last_price is not None
            fills.append((step.last_quantity, step.last_price))
        # Never more than the order's current quantity; leaves follow the current quantity.
        assert filled <= quantity
        assert filled == sum((q for q, _ in fills), Decimal(0))
        if status in AT_VENUE or status is S.FILLED:
            assert execution.leaves_quantity == quantity - filled
        if status is S.FILLED:
            assert filled == quantity
        if status is S.PENDING_REPLACE:
            assert replacing is not None
    assert seen.isdisjoint(refused)
