"""Pre-trade compliance on the real rules file, each test on a fresh demo book of its own.

The rest of the suite runs on a copy of policies/ without the portfolio and pace rules (see
tests/conftest.py); here they run as shipped, on a read model holding only what each test adds.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from activities.assessment import AssessmentActivities, AssessOrderInput, AssessOrderResult
from activities.portfolio import PortfolioActivities, ReadModelPrices
from config import POLICIES_DIR
from db.demo import load_demo_data
from db.engine import create_schema, make_engine, session_factory
from domain.models import AllocationRequest, ComplianceOutcome, OrderRequest


@pytest.fixture
def compliance(tmp_path: Path) -> Iterator[AssessmentActivities]:
    engine = make_engine(f"sqlite:///{tmp_path / 'oms.db'}")
    create_schema(engine)
    sessions = session_factory(engine)
    with sessions() as session:
        load_demo_data(session)
    yield AssessmentActivities(
        PortfolioActivities(sessions, ReadModelPrices(sessions)), POLICIES_DIR
    )
    engine.dispose()


def order(number: int, quantity: str, *, side: str = "buy", **fields: Any) -> AssessOrderInput:
    request = OrderRequest(
        client_order_id=f"a-{number}",
        fund="fund-alpha",
        symbol="AAPL",
        side=side,
        quantity=Decimal(quantity),
        allocations=[AllocationRequest(account="alpha-main", quantity=Decimal(quantity))],
        **fields,
    )
    return AssessOrderInput(order_id=f"ord_{number:020x}", order=request, created_by="alice")


def outcome_of(judged: AssessOrderResult, rule: str) -> ComplianceOutcome:
    return next(r.outcome for r in judged.assessment.results if r.rule == rule)


def test_two_orders_each_within_a_limit_together_over_it_the_second_breaches(
    compliance: AssessmentActivities,
) -> None:
    """fund-alpha holds 220,000 AAPL (50.7M of a 500M NAV); Apple may be at most 25% (125M)."""
    alone = compliance.judge(order(2, "170000").model_copy(update={"reserve": False}))
    assert outcome_of(alone, "firm-issuer-concentration-hard") is ComplianceOutcome.PASS
    first = compliance.judge(order(1, "170000"))  # 39.2M: 89.9M, 18% of NAV
    assert outcome_of(first, "firm-issuer-concentration-hard") is ComplianceOutcome.PASS
    second = compliance.judge(order(3, "170000"))  # with the first reserved: 129.1M, 25.8%
    assert outcome_of(second, "firm-issuer-concentration-hard") is ComplianceOutcome.FAIL
    assert second.assessment.outcome is ComplianceOutcome.FAIL
    fourth = compliance.judge(order(4, "1000"))  # the rejected one reserved nothing
    assert outcome_of(fourth, "firm-issuer-concentration-hard") is ComplianceOutcome.PASS


def test_a_far_off_limit_does_not_hide_an_orders_size(compliance: AssessmentActivities) -> None:
    """alice's sale of 1,000,000 AAPL limited at 0.01 is 230.5M at the reference price."""
    judged = compliance.judge(
        order(1, "1000000", side="sell", order_type="limit", limit_price=Decimal("0.01"))
    )
    assert judged.assessment.size_notional == Decimal("230500000")
    assert judged.assessment.exposure == Decimal("10000")
    assert outcome_of(judged, "alpha-max-order-notional") is ComplianceOutcome.FAIL
    assert judged.assessment.outcome is ComplianceOutcome.FAIL


def test_the_same_order_again_within_a_minute_warns(compliance: AssessmentActivities) -> None:
    compliance.judge(order(1, "100"))
    again = compliance.judge(order(2, "100"))
    assert outcome_of(again, "firm-duplicate-order") is ComplianceOutcome.WARN
    other = compliance.judge(order(3, "101"))
    assert outcome_of(other, "firm-duplicate-order") is ComplianceOutcome.PASS


def test_more_than_thirty_orders_a_minute_by_one_person_fail(
    compliance: AssessmentActivities,
) -> None:
    for number in range(1, 31):
        judged = compliance.judge(order(number, str(number)))
        assert outcome_of(judged, "firm-order-rate") is ComplianceOutcome.PASS
    assert (
        outcome_of(compliance.judge(order(31, "31")), "firm-order-rate") is ComplianceOutcome.FAIL
    )


def test_what_if_answers_what_the_real_check_answers(compliance: AssessmentActivities) -> None:
    compliance.judge(order(1, "50000"))  # an open order the fund already has
    what_if = compliance.judge(order(2, "60000").model_copy(update={"reserve": False}))
    real = compliance.judge(order(2, "60000"))
    assert what_if.assessment == real.assessment
