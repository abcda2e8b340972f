"""The order as it stood at an instant, folded from its event log: it is the live order of then.

A life is played on the domain's `Order` as the workflow plays it (the same mutations, the same
event details), keeping a copy of the order after every event; folding the log, as the read
model stores it (a JSON round trip), at each event's instant must give that copy back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import JsonValue

from domain.as_of import (
    BeforeCreationError,
    LoggedEvent,
    NoCreationEventError,
    order_as_of,
)
from domain.models import (
    Allocation,
    AllocationRequest,
    ApprovalGiven,
    ComplianceOutcome,
    ComplianceResult,
    ExecType,
    Execution,
    OrderRequest,
    OrderStatus,
    OrderType,
    SettlementInstruction,
    SettlementStatus,
    Side,
    TimeInForce,
)
from domain.order import FlagKind, Order, Override
from domain.status import OrderEvent as E

T0 = datetime(2026, 3, 2, 14, 30, tzinfo=UTC)
ORDER_ID = "ord_" + "a" * 20
# What the public view shows of the order (api.schemas.OrderPublic.from_order reads these).
PUBLIC_FIELDS = {
    "order_id",
    "request",
    "created_by",
    "created_at",
    "updated_at",
    "terms",
    "status",
    "status_actor",
    "status_reason",
    "venue",
    "notional",
    "currency",
    "compliance",
    "override",
    "approvals",
    "filled_quantity",
    "leaves_quantity",
    "average_price",
    "executions",
    "flags",
    "allocations",
    "settlements",
    "last_seq",
}

REQUEST = OrderRequest(
    client_order_id="c-1",
    fund="fund-alpha",
    symbol="AAPL",
    side=Side.BUY,
    quantity=Decimal("1000"),
    order_type=OrderType.LIMIT,
    limit_price=Decimal("231"),
    time_in_force=TimeInForce.GTC,
    allocations=[
        AllocationRequest(account="alpha-main", quantity=Decimal(600)),
        AllocationRequest(account="alpha-growth", quantity=Decimal(400)),
    ],
    notes="rebalance",
)


@dataclass
class Life:
    """An order played event by event, with a copy of it after each (the live order of then)."""

    order: Order = field(default_factory=lambda: Order.new(ORDER_ID, REQUEST, "alice", T0))
    clock: datetime = T0
    seen: list[Order] = field(default_factory=list)
    settlements: list[SettlementInstruction] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.seen.append(self.order.model_copy(deep=True))

    def tick(self, seconds: float = 1) -> datetime:
        self.clock += timedelta(seconds=seconds)
        return self.clock

    def record(
        self,
        kind: E,
        *,
        actor: str = "system",
        reason: str = "",
        details: dict[str, JsonValue] | None = None,
        same_instant: bool = False,
    ) -> None:
        at = self.clock if same_instant else self.tick()
        self.order.record(kind, at=at, actor=actor, reason=reason, details=details)
        self.seen.append(self.order.model_copy(deep=True))

    def log(self) -> list[LoggedEvent]:
        """The log as the read model gives it back: JSON in, JSON out."""
        return [LoggedEvent.model_validate(e.model_dump(mode="json")) for e in self.order.events]

    # ---- the workflow's steps, with the details it records --------------------------------------

    def compliance(
        self, outcome: ComplianceOutcome, required: list[str], *, at_release: bool = False
    ) -> None:
        order = self.order
        order.compliance = [
            ComplianceResult(rule="kill_switch", outcome=ComplianceOutcome.PASS, message="off"),
            ComplianceResult(
                rule="alpha-soft-notional",
                outcome=outcome,
                message="notional against the soft limit",
                observed="231000",
                limit="200000",
            ),
        ]
        order.notional, order.currency = Decimal("231000.00"), "USD"
        approvals = order.approvals
        approvals.notional, approvals.currency = order.notional, order.currency
        approvals.rules, approvals.matrix_version = ["alpha-large"], "b" * 64
        details: dict[str, JsonValue] = {
            "results": [r.model_dump(mode="json") for r in order.compliance],
            "rules_version": "c" * 64,
            "exposure": "231000.00",
            "notional": str(order.notional),
            "currency": order.currency,
            "approval_rules": list(approvals.rules),
            "approval_matrix": f"funds.fund-alpha@{'b' * 64}",
            "data_taken_at": self.clock.isoformat(),
        }
        if outcome is ComplianceOutcome.FAIL:
            self.record(E.COMPLIANCE_FAILED, reason="too large", details=details)
            return
        if not at_release:
            approvals.required = required
            details["approvals_required"] = list(required)
        if outcome is ComplianceOutcome.WARN:
            order.override = None
            self.record(
                E.COMPLIANCE_WARNED, reason="notional above the soft limit", details=details
            )
        else:
            self.record(E.COMPLIANCE_PASSED, details=details)

    def override(self, user: str) -> None:
        order = self.order
        order.override = Override(
            user=user,
            justification="agreed with the CIO",
            at=self.tick(),
            policy=["compliance", "*", "orders", "override"],
            rules=["alpha-soft-notional"],
        )
        details: dict[str, JsonValue] = {
            **order.override.model_dump(mode="json"),
            "roles": ["compliance"],
            "policy_version": "d" * 64,
            "authority": {"statement": "x", "signature": "y"},
        }
        self.record(
            E.OVERRIDDEN,
            actor=user,
            reason=order.override.justification,
            details=details,
            same_instant=True,
        )

    def approve(self, user: str) -> None:
        order = self.order
        level = order.approvals.current_level
        assert level is not None
        given = ApprovalGiven(
            level=level,
            user=user,
            at=self.tick(),
            comment=f"fine by {user}",
            policy=[level, "*", "approvals", level],
            roles=[level],
            policy_version="d" * 64,
        )
        order.approvals.given.append(given)
        kind = E.APPROVALS_COMPLETE if order.approvals.current_level is None else E.APPROVAL_GIVEN
        details = {**given.model_dump(mode="json"), "authority": {"statement": "x"}}
        self.record(kind, actor=user, details=details, same_instant=True)

    def approve_by_policy(self) -> None:
        approvals = self.order.approvals
        approvals.by_policy = True
        self.record(
            E.APPROVALS_COMPLETE,
            actor="policy",
            reason="approved by policy (small)",
            details={
                "by_policy": True,
                "approval_rules": ["small"],
                "matrix_version": approvals.matrix_version,
            },
            same_instant=True,
        )

    def release(self, user: str, venue: str = "sim") -> None:
        self.order.venue = venue
        details: dict[str, JsonValue] = {
            "venue": venue,
            "cl_ord_id": self.order.terms.cl_ord_id,
            "roles": ["trader"],
            "policy": ["trader", "*", "orders", "release"],
        }
        self.record(E.RELEASED, actor=user, details=details)
        self.record(E.SENT_TO_VENUE, details={"venue": venue, "cl_ord_id": ORDER_ID})

    def report(self, kind: E | None, exec_type: ExecType, last: int, price: str | None) -> None:
        order = self.order
        filled = order.filled_quantity + last
        average = order.average_price
        if last:
            cost = (average or Decimal(0)) * order.filled_quantity + Decimal(price or 0) * last
            average = cost / filled
        at = self.tick()
        execution = Execution(
            exec_id=f"x-{order.execution_count + 1}",
            exec_type=exec_type,
            last_quantity=Decimal(last),
            last_price=Decimal(price) if price else None,
            cumulative_quantity=filled,
            leaves_quantity=order.terms.quantity - filled,
            average_price=average,
            transact_time=at - timedelta(milliseconds=5),
            received_at=at,
            reported_by="sim-venue",
        )
        order.add_execution(execution)
        details: dict[str, JsonValue] = execution.model_dump(mode="json")
        self.record(
            kind or E.EXECUTION_APPLIED, actor="sim-venue", details=details, same_instant=True
        )

    def allocate_and_settle(self) -> None:
        order = self.order
        price = order.average_price
        assert price is not None
        order.allocations = [
            Allocation(
                account=a.account, requested_quantity=a.quantity, quantity=a.quantity, price=price
            )
            for a in REQUEST.allocations
        ]
        allocations: list[JsonValue] = [a.model_dump(mode="json") for a in order.allocations]
        self.record(E.ALLOCATED, details={"allocations": allocations})
        order.settlements = [
            SettlementInstruction(
                settlement_id=f"set_{a.account}",
                order_id=ORDER_ID,
                fund="fund-alpha",
                account=a.account,
                symbol="AAPL",
                side=Side.BUY,
                quantity=a.quantity,
                price=a.price,
                gross_amount=(a.quantity * a.price).quantize(Decimal("0.01")),
                currency="USD",
                trade_date=date(2026, 3, 2),
                settlement_date=date(2026, 3, 3),
            )
            for a in order.allocations
        ]
        ids: list[JsonValue] = [s.settlement_id for s in order.settlements]
        self.record(
            E.SETTLEMENT_INSTRUCTED,
            details={
                "settlement_ids": ids,
                "trade_date": "2026-03-02",
                "settlement_date": "2026-03-03",
            },
        )
        for index, instruction in enumerate(order.settlements):
            answered_at = self.tick() - timedelta(milliseconds=20)  # the back office's clock
            order.settlements[index] = instruction.model_copy(
                update={"status": SettlementStatus.CONFIRMED, "status_at": answered_at}
            )
            self.record(
                E.SETTLEMENT_ANSWERED,
                actor="betty",
                details={"settlement_id": instruction.settlement_id, "status": "confirmed"},
                same_instant=True,
            )
        self.record(E.SETTLED)
        # The rows, each as last answered, in the order the read model keeps them (by id).
        self.settlements = sorted(order.settlements, key=lambda s: s.settlement_id)
        self.record(E.ORDER_CLOSED, details={"status": order.status.value}, same_instant=True)
        order.closed = True
        self.seen[-1] = order.model_copy(deep=True)


def public(order: Order) -> dict[str, Any]:
    return order.model_dump(mode="json", include=PUBLIC_FIELDS)


def full_life() -> Life:
    """Compliance, two approvals, release, a flag, fills in three reports, allocation, settled."""
    life = Life()
    life.compliance(ComplianceOutcome.PASS, ["desk_head", "cio"])
    life.approve("dana")
    life.approve("carl")
    life.release("tom")
    life.report(E.VENUE_ACCEPTED, ExecType.NEW, 0, None)
    life.order.raise_flag(
        FlagKind.VENUE_ACK_OVERDUE, "sim has not acknowledged", at=life.tick(), ref=ORDER_ID
    )
    life.seen.append(life.order.model_copy(deep=True))
    life.report(E.PARTIAL_FILL, ExecType.TRADE, 400, "230")
    life.report(E.PARTIAL_FILL, ExecType.TRADE, 100, "231")
    life.report(E.FILL, ExecType.TRADE, 500, "230.5")
    life.allocate_and_settle()
    return life


def warned_life() -> Life:
    """A soft breach overridden, approved by policy, then a new breach at release."""
    life = Life()
    life.compliance(ComplianceOutcome.WARN, [])
    life.override("cora")
    life.approve_by_policy()
    life.compliance(ComplianceOutcome.WARN, [], at_release=True)
    return life


@pytest.mark.parametrize("build", [full_life, warned_life], ids=["full", "warned"])
def test_at_each_event_the_fold_is_the_live_order_of_then(build: Any) -> None:
    life = build()
    log = life.log()
    assert len(life.seen) == len(log)
    for event, then in zip(log, life.seen, strict=True):
        folded = order_as_of(ORDER_ID, log, event.at, life.settlements)
        # Events recorded in one instant (one workflow task) are seen together.
        last_at_instant = max(i for i, e in enumerate(log) if e.at == event.at)
        assert public(folded) == public(life.seen[last_at_instant]), event.kind
        if event is log[-1]:
            assert public(folded) == public(then)


def test_what_the_approver_saw_and_what_came_after() -> None:
    life = full_life()
    log = life.log()
    approved_at = next(e.at for e in log if e.kind == E.APPROVAL_GIVEN)
    before = order_as_of(ORDER_ID, log, approved_at - timedelta(microseconds=1), life.settlements)
    assert before.status is OrderStatus.PENDING_APPROVAL
    assert before.approvals.current_level == "desk_head" and before.approvals.given == []
    assert [r.rule for r in before.compliance] == ["kill_switch", "alpha-soft-notional"]
    assert before.notional == Decimal("231000.00") and before.venue is None

    after = order_as_of(ORDER_ID, log, approved_at, life.settlements)
    assert [(g.level, g.user, g.comment) for g in after.approvals.given] == [
        ("desk_head", "dana", "fine by dana")
    ]
    assert after.approvals.current_level == "cio"

    partly = next(e for e in log if e.kind == E.PARTIAL_FILL)
    filled = order_as_of(ORDER_ID, log, partly.at, life.settlements)
    assert filled.status is OrderStatus.PARTIALLY_FILLED
    assert (filled.filled_quantity, filled.leaves_quantity) == (Decimal(400), Decimal(600))
    assert filled.average_price == Decimal(230)
    assert [f.kind for f in filled.flags] == [FlagKind.VENUE_ACK_OVERDUE]
    assert filled.settlements == [] and filled.allocations == []

    instructed = next(e for e in log if e.kind == E.SETTLEMENT_INSTRUCTED)
    pending = order_as_of(ORDER_ID, log, instructed.at, life.settlements)
    assert {s.status for s in pending.settlements} == {SettlementStatus.INSTRUCTED}
    assert all(s.status_at is None for s in pending.settlements)


def test_an_instant_after_the_last_event_is_the_current_view() -> None:
    life = full_life()
    log = life.log()
    later = order_as_of(ORDER_ID, log, log[-1].at + timedelta(days=400), life.settlements)
    assert public(later) == public(life.seen[-1])
    assert later.closed


def test_the_instant_of_creation_is_the_order_as_created() -> None:
    life = full_life()
    created = order_as_of(ORDER_ID, life.log(), T0, life.settlements)
    assert created.status is OrderStatus.PENDING_COMPLIANCE
    assert created.request == REQUEST and created.last_seq == 1
    assert (created.status_actor, created.compliance) == ("", [])


def test_the_log_is_folded_in_sequence_whatever_order_it_comes_in() -> None:
    life = full_life()
    log = life.log()
    shuffled = log[1::2] + log[::2]
    assert public(order_as_of(ORDER_ID, shuffled, log[-1].at, life.settlements)) == public(
        life.seen[-1]
    )


def test_an_instant_in_another_offset_is_the_same_instant() -> None:
    life = full_life()
    log = life.log()
    instant = log[3].at
    elsewhere = instant.astimezone(datetime.fromisoformat("2026-01-01T00:00:00+09:00").tzinfo)
    assert public(order_as_of(ORDER_ID, log, elsewhere)) == public(
        order_as_of(ORDER_ID, log, instant)
    )


@pytest.mark.parametrize(
    ("instant", "error"),
    [
        (T0 - timedelta(microseconds=1), BeforeCreationError),
        (T0.replace(tzinfo=None), ValueError),  # no offset
    ],
    ids=["before-creation", "naive"],
)
def test_an_instant_it_cannot_answer_is_refused(instant: datetime, error: type[Exception]) -> None:
    with pytest.raises(error):
        order_as_of(ORDER_ID, full_life().log(), instant)


def test_a_log_without_its_creation_is_refused() -> None:
    log = full_life().log()
    with pytest.raises(NoCreationEventError):
        order_as_of(ORDER_ID, log[1:], log[-1].at)
    with pytest.raises(NoCreationEventError):
        order_as_of(ORDER_ID, [], T0)


def event(seq: int, at: datetime, kind: str, status: str, **details: Any) -> LoggedEvent:
    return LoggedEvent(seq=seq, at=at, kind=kind, actor="alice", status=status, details=details)


def test_an_amendment_before_release_gives_new_terms_and_starts_approvals_over() -> None:
    life = Life()
    life.compliance(ComplianceOutcome.WARN, ["desk_head"])
    life.override("cora")
    log = life.log()
    amended = event(len(log) + 1, life.tick(), "amended", "pending_compliance", quantity="800")
    amended = amended.model_copy(
        update={"details": {"quantity": "800", "limit_price": "230.5", "previous": {}}}
    )
    folded = order_as_of(ORDER_ID, [*log, amended], amended.at)
    assert (folded.terms.quantity, folded.terms.limit_price) == (Decimal(800), Decimal("230.5"))
    assert folded.leaves_quantity == Decimal(800)
    assert (folded.status, folded.status_actor) == (OrderStatus.PENDING_COMPLIANCE, "alice")
    assert folded.override is None and folded.approvals.required == []
    assert folded.request.quantity == Decimal(1000)  # the request stays as sent
    # What compliance then decides on the new terms is folded as ever.
    life.order = folded
    life.seen = [folded.model_copy(deep=True)]
    life.compliance(ComplianceOutcome.PASS, ["desk_head"])
    log = [*log, amended, *life.log()[-1:]]
    again = order_as_of(ORDER_ID, log, log[-1].at)
    assert again.approvals.required == ["desk_head"] and again.terms.quantity == Decimal(800)


def test_a_replace_at_the_venue_gives_the_new_terms_and_clordid() -> None:
    life = full_life()
    log = life.log()
    first_fill = next(i for i, e in enumerate(log) if e.kind == E.PARTIAL_FILL)
    working = log[: first_fill + 1]  # through the first partial fill: 400 of 1000
    seq, at = working[-1].seq, working[-1].at
    requested = event(
        seq + 1,
        at + timedelta(seconds=1),
        "replace_requested",
        "pending_replace",
        quantity="900",
        limit_price="232",
        cl_ord_id=f"{ORDER_ID}-R1",
        orig_cl_ord_id=ORDER_ID,
    )
    execution = working[-1].details | {
        "exec_id": "x-r",
        "exec_type": "replaced",
        "last_quantity": "0",
        "last_price": None,
        "leaves_quantity": "500",
    }
    replaced = event(
        seq + 2,
        at + timedelta(seconds=2),
        "replaced_after_fills",
        "partially_filled",
        **execution,
        quantity="900",
        limit_price="232",
        previous={"quantity": "1000", "limit_price": "231"},
    )
    pending = order_as_of(ORDER_ID, [*working, requested], requested.at)
    assert pending.status is OrderStatus.PENDING_REPLACE
    assert (pending.terms.quantity, pending.terms.cl_ord_id) == (Decimal(1000), ORDER_ID)
    done = order_as_of(ORDER_ID, [*working, requested, replaced], replaced.at)
    assert (done.terms.quantity, done.terms.limit_price) == (Decimal(900), Decimal(232))
    assert (done.terms.cl_ord_id, done.terms.previous_cl_ord_ids) == (f"{ORDER_ID}-R1", [ORDER_ID])
    assert (done.filled_quantity, done.leaves_quantity) == (Decimal(400), Decimal(500))
    rejected = replaced.model_copy(update={"kind": "replace_rejected_after_fills"})
    kept = order_as_of(ORDER_ID, [*working, requested, rejected], rejected.at)
    assert (kept.terms.quantity, kept.terms.cl_ord_id) == (Decimal(1000), ORDER_ID)


def test_an_event_this_code_does_not_know_moves_only_status_and_version() -> None:
    life = Life()
    life.compliance(ComplianceOutcome.PASS, ["desk_head"])
    log = life.log()
    unknown = LoggedEvent(
        seq=len(log) + 1,
        at=life.tick(),
        kind="something_new",
        actor="system",
        status="pending_approval",
        reason="why not",
        details={"anything": [1, 2]},
    )
    folded = order_as_of(ORDER_ID, [*log, unknown], unknown.at)
    expected = public(life.seen[-1]) | {
        "last_seq": unknown.seq,
        "updated_at": unknown.at.isoformat().replace("+00:00", "Z"),
        "status_actor": "system",
        "status_reason": "why not",
    }
    assert public(folded) == expected


FULL = full_life()
FULL_LOG = FULL.log()


@settings(max_examples=200, deadline=None)
@given(
    offset=st.timedeltas(
        min_value=-timedelta(minutes=1),
        max_value=FULL_LOG[-1].at - T0 + timedelta(minutes=1),
    )
)
def test_any_instant_is_the_order_after_the_last_event_by_then(offset: timedelta) -> None:
    instant = T0 + offset
    if instant < T0:
        with pytest.raises(BeforeCreationError):
            order_as_of(ORDER_ID, FULL_LOG, instant, FULL.settlements)
        return
    folded = order_as_of(ORDER_ID, FULL_LOG, instant, FULL.settlements)
    index = max(i for i, e in enumerate(FULL_LOG) if e.at <= instant)
    assert public(folded) == public(FULL.seen[index])
    assert folded.version == FULL_LOG[index].seq
