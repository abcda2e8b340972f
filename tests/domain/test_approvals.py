"""The approval matrix, as the real policies/approvals.toml defines it."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from domain.approvals import ApprovalLevel, ApprovalMatrix, required_levels
from domain.models import ApprovalGiven, ApprovalState, ComplianceOutcome, ComplianceResult

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def _load_matrix() -> ApprovalMatrix:
    with (POLICIES / "approvals.toml").open("rb") as f:
        data = tomllib.load(f)
    return ApprovalMatrix(levels=[ApprovalLevel.model_validate(lvl) for lvl in data["levels"]])


MATRIX = _load_matrix()


def _result(outcome: ComplianceOutcome, rule: str = "max_order_notional") -> ComplianceResult:
    return ComplianceResult(rule=rule, outcome=outcome, message="m")


PASSED = [_result(ComplianceOutcome.PASS, "restricted_list"), _result(ComplianceOutcome.PASS)]
WARNED = [_result(ComplianceOutcome.PASS, "restricted_list"), _result(ComplianceOutcome.WARN)]


def test_matrix_file_loads_as_expected() -> None:
    expected = ApprovalMatrix(
        levels=[
            ApprovalLevel(level="desk_head", min_notional=Decimal(0)),
            ApprovalLevel(level="cio", min_notional=Decimal(10_000_000), on_warning=True),
        ]
    )
    assert expected == MATRIX
    assert ApprovalMatrix.model_validate(tomllib.loads((POLICIES / "approvals.toml").read_text()))


@pytest.mark.parametrize(
    ("notional", "compliance", "levels"),
    [
        pytest.param(Decimal("0.01"), PASSED, ["desk_head"], id="tiny"),
        pytest.param(Decimal(20_000), PASSED, ["desk_head"], id="small"),
        pytest.param(Decimal(20_000), [], ["desk_head"], id="no-results"),
        pytest.param(Decimal("9999999.99"), PASSED, ["desk_head"], id="just-below-cio"),
        pytest.param(Decimal(10_000_000), PASSED, ["desk_head"], id="exactly-cio-threshold"),
        pytest.param(Decimal("10000000.00"), PASSED, ["desk_head"], id="exactly-cio-2dp"),
        pytest.param(Decimal("10000000.01"), PASSED, ["desk_head", "cio"], id="cent-above-cio"),
        pytest.param(Decimal(45_000_000), PASSED, ["desk_head", "cio"], id="large"),
        pytest.param(Decimal(20_000), WARNED, ["desk_head", "cio"], id="warned-small"),
        pytest.param(Decimal(45_000_000), WARNED, ["desk_head", "cio"], id="warned-large"),
    ],
)
def test_required_levels(
    notional: Decimal, compliance: list[ComplianceResult], levels: list[str]
) -> None:
    assert required_levels(MATRIX, notional, compliance) == levels


def test_fail_result_does_not_count_as_a_warning() -> None:
    failed = [_result(ComplianceOutcome.FAIL)]
    assert required_levels(MATRIX, Decimal(20_000), failed) == ["desk_head"]


def test_levels_keep_matrix_order() -> None:
    matrix = ApprovalMatrix(
        levels=[
            ApprovalLevel(level="b", min_notional=Decimal(100)),
            ApprovalLevel(level="a", min_notional=Decimal(0)),
            ApprovalLevel(level="c", on_warning=True, min_notional=Decimal(10**9)),
        ]
    )
    assert required_levels(matrix, Decimal(50), []) == ["a"]
    assert required_levels(matrix, Decimal(500), WARNED) == ["b", "a", "c"]


def test_approval_state_current_level() -> None:
    at = ApprovalGiven(level="desk_head", user="dana", at=_aware_now())
    state = ApprovalState(required=["desk_head", "cio"])
    assert state.current_level == "desk_head"
    state.given.append(at)
    assert state.current_level == "cio"
    state.given.append(at.model_copy(update={"level": "cio", "user": "carl"}))
    assert state.current_level is None
    assert ApprovalState().current_level is None


def _aware_now() -> datetime:
    return datetime(2025, 3, 14, 15, 0, tzinfo=UTC)
