"""The approval matrix: the first firm-wide one, and the matrix as data per fund.

The per-fund tables run against the real policies/approvals.toml; the parser's rules and the
matrix's shapes that the demo data does not use run against small files written here.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from domain.approvals import (
    ApprovalLevel,
    ApprovalMatrix,
    ApprovalPolicies,
    ApprovalPolicyError,
    ApprovalRequirement,
    ApprovalRule,
    FundApprovalPolicy,
    parse_approval_policies,
    required_approvals,
    required_levels,
)
from domain.compliance import FxRate, approval_currency, approval_notional, fx_rate
from domain.models import (
    ApprovalGiven,
    ApprovalState,
    AssetClass,
    ComplianceOutcome,
    ComplianceResult,
    ComplianceSnapshot,
    Instrument,
)
from tests.domain.conftest import InstrumentFactory, OrderFactory, SnapshotFactory

POLICIES = Path(__file__).resolve().parents[2] / "policies"
FILE = (POLICIES / "approvals.toml").read_bytes()
POLICY_SET = parse_approval_policies(FILE)
ALPHA = POLICY_SET.for_fund("fund-alpha")
BETA = POLICY_SET.for_fund("fund-beta")
UNLISTED = POLICY_SET.for_fund("fund-zeta")
MATRIX = POLICY_SET.firm_default.as_matrix()

EQUITY = AssetClass.EQUITY


def _result(outcome: ComplianceOutcome, rule: str = "max_order_notional") -> ComplianceResult:
    return ComplianceResult(rule=rule, outcome=outcome, message="m")


PASSED = [_result(ComplianceOutcome.PASS, "restricted_list"), _result(ComplianceOutcome.PASS)]
WARNED = [_result(ComplianceOutcome.PASS, "restricted_list"), _result(ComplianceOutcome.WARN)]
FAILED = [_result(ComplianceOutcome.FAIL)]
BOTH = ["desk_head", "cio"]


# ---- the first matrix (v1 orders and recorded histories decide with it) ----------------------


def test_the_firm_default_in_the_first_matrix_shape_is_todays_matrix() -> None:
    expected = ApprovalMatrix(
        levels=[
            ApprovalLevel(level="desk_head", min_notional=Decimal(0)),
            ApprovalLevel(level="cio", min_notional=Decimal(10_000_000), on_warning=True),
        ]
    )
    assert expected == MATRIX
    assert ALPHA.as_matrix() == MATRIX
    assert UNLISTED.as_matrix() == MATRIX


@pytest.mark.parametrize(
    ("notional", "compliance", "levels"),
    [
        pytest.param(Decimal("0.01"), PASSED, ["desk_head"], id="tiny"),
        pytest.param(Decimal(20_000), PASSED, ["desk_head"], id="small"),
        pytest.param(Decimal(20_000), [], ["desk_head"], id="no-results"),
        pytest.param(Decimal("9999999.99"), PASSED, ["desk_head"], id="just-below-cio"),
        pytest.param(Decimal(10_000_000), PASSED, ["desk_head"], id="exactly-cio-threshold"),
        pytest.param(Decimal("10000000.00"), PASSED, ["desk_head"], id="exactly-cio-2dp"),
        pytest.param(Decimal("10000000.01"), PASSED, BOTH, id="cent-above-cio"),
        pytest.param(Decimal(45_000_000), PASSED, BOTH, id="large"),
        pytest.param(Decimal(20_000), WARNED, BOTH, id="warned-small"),
        pytest.param(Decimal(45_000_000), WARNED, BOTH, id="warned-large"),
    ],
)
def test_required_levels(
    notional: Decimal, compliance: list[ComplianceResult], levels: list[str]
) -> None:
    assert required_levels(MATRIX, notional, compliance) == levels


def test_fail_result_does_not_count_as_a_warning() -> None:
    assert required_levels(MATRIX, Decimal(20_000), FAILED) == ["desk_head"]


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


def test_fund_beta_in_the_first_matrix_shape() -> None:
    # Exact but at the bounds themselves: the first matrix needs a level *above* its notional.
    assert BETA.as_matrix() == ApprovalMatrix(
        levels=[
            ApprovalLevel(level="desk_head", min_notional=Decimal(250_000), on_warning=True),
            ApprovalLevel(level="cio", min_notional=Decimal(5_000_000), on_warning=True),
        ]
    )
    assert required_levels(BETA.as_matrix(), Decimal(1000), PASSED) == []
    assert required_levels(BETA.as_matrix(), Decimal(1000), WARNED) == BOTH


def test_a_level_needed_only_on_a_warning_is_never_needed_for_its_notional() -> None:
    policy = _policy(
        ApprovalRule(name="all", levels=["desk_head"]),
        ApprovalRule(name="soft", on_warning=True, levels=["cio"]),
    )
    matrix = policy.as_matrix()
    assert [(lvl.level, lvl.on_warning) for lvl in matrix.levels] == [
        ("desk_head", False),
        ("cio", True),
    ]
    assert required_levels(matrix, Decimal("999999999999999e15"), PASSED) == ["desk_head"]
    assert required_levels(matrix, Decimal(1), WARNED) == BOTH


def test_approval_state_current_level() -> None:
    at = ApprovalGiven(level="desk_head", user="dana", at=_aware_now())
    state = ApprovalState(required=BOTH)
    assert state.current_level == "desk_head"
    state.given.append(at)
    assert state.current_level == "cio"
    state.given.append(at.model_copy(update={"level": "cio", "user": "carl"}))
    assert state.current_level is None
    assert ApprovalState().current_level is None


def _aware_now() -> datetime:
    return datetime(2025, 3, 14, 15, 0, tzinfo=UTC)


# ---- the real policy file --------------------------------------------------------------------


def test_the_policy_file_version_is_the_sha256_of_its_bytes() -> None:
    version = hashlib.sha256(FILE).hexdigest()
    assert POLICY_SET.version == version
    assert {ALPHA.version, BETA.version, UNLISTED.version} == {version}
    changed = parse_approval_policies(FILE + b"\n# a comment\n")
    assert changed.version != version
    assert changed.for_fund("fund-beta").rules == BETA.rules


def test_the_policy_file_sections() -> None:
    assert POLICY_SET.levels == BOTH
    assert sorted(POLICY_SET.funds) == ["fund-alpha", "fund-beta"]
    assert (ALPHA.fund, ALPHA.section, ALPHA.currency) == ("fund-alpha", "funds.fund-alpha", "USD")
    assert (BETA.fund, BETA.section, BETA.currency) == ("fund-beta", "funds.fund-beta", "USD")
    assert (UNLISTED.fund, UNLISTED.section, UNLISTED.currency) == ("fund-zeta", "default", None)
    assert POLICY_SET.firm_default.fund == "*"
    assert [lvl for p in (ALPHA, BETA, UNLISTED) for lvl in p.levels_in_order] == BOTH * 3
    # fund-alpha keeps the firm default's matrix; only where it is written differs.
    assert ALPHA.rules == UNLISTED.rules
    assert [r.name for r in BETA.rules] == ["small", "medium", "large", "soft_breach"]


@pytest.mark.parametrize(
    ("policy", "escalate", "expire"),
    [
        pytest.param(ALPHA, timedelta(hours=4), timedelta(hours=24), id="fund-alpha"),
        pytest.param(BETA, timedelta(hours=2), timedelta(hours=8), id="fund-beta"),
        pytest.param(UNLISTED, timedelta(hours=4), timedelta(hours=24), id="firm-default"),
    ],
)
def test_escalation_and_expiry_per_fund(
    policy: FundApprovalPolicy, escalate: timedelta, expire: timedelta
) -> None:
    assert (policy.escalate_after, policy.expire_after) == (escalate, expire)


def test_policies_survive_the_data_converter_round_trip() -> None:
    # They travel in activity results (pydantic JSON) and are decoded again on replay.
    assert ApprovalPolicies.model_validate_json(POLICY_SET.model_dump_json()) == POLICY_SET
    assert FundApprovalPolicy.model_validate_json(BETA.model_dump_json()) == BETA


# Both edges of every bound, for both funds and the firm default, with and without a soft breach.
EDGES = [
    "0.01",
    "249999.99",
    "250000",
    "4999999.99",
    "5000000",
    "9999999.99",
    "10000000",
    "45000000",
]
ALPHA_PASSED = [["desk_head"]] * 6 + [BOTH] * 2
ALPHA_RULES = [["standard"]] * 6 + [["large"]] * 2
BETA_PASSED: list[list[str]] = [[]] * 2 + [["desk_head"]] * 2 + [BOTH] * 4
BETA_RULES = [["small"]] * 2 + [["medium"]] * 2 + [["large"]] * 4


def _cases(
    policy: FundApprovalPolicy, levels: list[list[str]], rules: list[list[str]]
) -> list[object]:
    cases: list[object] = []
    for notional, want, matched in zip(EDGES, levels, rules, strict=True):
        name = f"{policy.fund}-{notional}"
        cases.append(pytest.param(policy, notional, PASSED, want, matched, id=f"{name}-pass"))
        cases.append(pytest.param(policy, notional, FAILED, want, matched, id=f"{name}-fail"))
        warned = [*matched, "soft_breach"]
        cases.append(pytest.param(policy, notional, WARNED, BOTH, warned, id=f"{name}-warn"))
    return cases


@pytest.mark.parametrize(
    ("policy", "notional", "compliance", "levels", "rules"),
    _cases(ALPHA, ALPHA_PASSED, ALPHA_RULES)
    + _cases(BETA, BETA_PASSED, BETA_RULES)
    + _cases(UNLISTED, ALPHA_PASSED, ALPHA_RULES),
)
def test_required_approvals(
    policy: FundApprovalPolicy,
    notional: str,
    compliance: list[ComplianceResult],
    levels: list[str],
    rules: list[str],
) -> None:
    for asset_class in AssetClass:  # the demo rules treat every asset class alike
        requirement = required_approvals(policy, Decimal(notional), asset_class, compliance)
        assert requirement == ApprovalRequirement(
            levels=levels,
            rules=rules,
            matrix_version=POLICY_SET.version,
            straight_through=not levels,
        )


def test_a_soft_breach_in_fund_beta_is_never_straight_through() -> None:
    small = required_approvals(BETA, Decimal(100), EQUITY, PASSED)
    warned = required_approvals(BETA, Decimal(100), EQUITY, [_result(ComplianceOutcome.WARN)])
    assert (small.levels, small.straight_through) == ([], True)
    assert (warned.levels, warned.straight_through) == (BOTH, False)
    assert warned.rules == ["small", "soft_breach"]


# ---- shapes the demo data does not use -------------------------------------------------------


def _policy(
    *rules: ApprovalRule, levels: tuple[str, ...] = ("desk_head", "cio")
) -> FundApprovalPolicy:
    return FundApprovalPolicy(
        fund="fund-x",
        section="funds.fund-x",
        version="v",
        levels_in_order=list(levels),
        rules=list(rules),
        escalate_after=timedelta(hours=1),
        expire_after=timedelta(hours=2),
    )


ASSET_CLASS_FILE = b"""
[firm]
levels = ["desk_head", "risk", "cio"]

[default]
levels_in_order = ["desk_head", "risk", "cio"]
escalate_after = "PT1H"
expire_after = "P1D"

[[default.rules]]
name = "equity"
asset_classes = ["equity"]
max_notional = 1000
levels = ["desk_head"]

[[default.rules]]
name = "equity_large"
asset_classes = ["equity"]
min_notional = "1000"
levels = ["cio", "desk_head"]

[[default.rules]]
name = "fx_hedge"
asset_classes = ["fx_spot"]
levels = []

[[default.rules]]
name = "crypto"
asset_classes = ["crypto"]
levels = ["risk"]

[[default.rules]]
name = "soft_breach_crypto"
on_warning = true
asset_classes = ["crypto"]
levels = ["cio"]

[[default.rules]]
name = "soft_breach"
on_warning = true
asset_classes = ["equity", "fx_spot"]
levels = ["cio", "desk_head"]
"""


@pytest.mark.parametrize(
    ("asset_class", "notional", "compliance", "levels", "rules"),
    [
        (AssetClass.EQUITY, "999.99", PASSED, ["desk_head"], ["equity"]),
        (AssetClass.EQUITY, "1000", PASSED, ["desk_head", "cio"], ["equity_large"]),
        (AssetClass.EQUITY, "1", WARNED, ["desk_head", "cio"], ["equity", "soft_breach"]),
        (AssetClass.FX_SPOT, "1000000000", PASSED, [], ["fx_hedge"]),
        (AssetClass.FX_SPOT, "1", WARNED, ["desk_head", "cio"], ["fx_hedge", "soft_breach"]),
        (AssetClass.CRYPTO, "0.01", PASSED, ["risk"], ["crypto"]),
        (AssetClass.CRYPTO, "5000", WARNED, ["risk", "cio"], ["crypto", "soft_breach_crypto"]),
    ],
)
def test_asset_class_rules_and_levels_in_the_funds_order(
    asset_class: AssetClass,
    notional: str,
    compliance: list[ComplianceResult],
    levels: list[str],
    rules: list[str],
) -> None:
    policy = parse_approval_policies(ASSET_CLASS_FILE).for_fund("fund-x")
    requirement = required_approvals(policy, Decimal(notional), asset_class, compliance)
    assert (requirement.levels, requirement.rules) == (levels, rules)
    assert requirement.straight_through is (not levels)
    assert (policy.escalate_after, policy.expire_after) == (timedelta(hours=1), timedelta(days=1))


def test_a_policy_built_without_the_parser_fails_safe_to_every_level() -> None:
    # A gap, and a soft breach with nothing to approve: never approved by default.
    gappy = _policy(
        ApprovalRule(name="small", max_notional=Decimal(100), levels=[]),
        ApprovalRule(name="soft", on_warning=True, max_notional=Decimal(100), levels=[]),
    )
    assert required_approvals(gappy, Decimal(50), EQUITY, PASSED).straight_through is True
    unmatched = required_approvals(gappy, Decimal(500), EQUITY, PASSED)
    assert (unmatched.levels, unmatched.rules, unmatched.straight_through) == (BOTH, [], False)
    warned = required_approvals(gappy, Decimal(50), EQUITY, WARNED)
    assert (warned.levels, warned.rules) == (BOTH, ["small", "soft"])


# ---- every way the file can be wrong ---------------------------------------------------------

VALID = """\
[firm]
levels = ["desk_head", "cio"]

[default]
levels_in_order = ["desk_head", "cio"]
escalate_after = "PT4H"
expire_after = "PT24H"

[[default.rules]]
name = "standard"
max_notional = "1000"
levels = ["desk_head"]

[[default.rules]]
name = "large"
min_notional = "1000"
levels = ["desk_head", "cio"]

[[default.rules]]
name = "soft_breach"
on_warning = true
levels = ["desk_head", "cio"]
"""

SOFT = 'name = "soft_breach"\non_warning = true\n'
SOFT_RULE = SOFT + 'levels = ["desk_head", "cio"]\n'


def test_the_valid_file_parses() -> None:
    policies = parse_approval_policies(VALID.encode())
    assert policies.funds == {}
    assert [r.name for r in policies.for_fund("any").rules] == ["standard", "large", "soft_breach"]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        pytest.param("levels = [\"desk_head\", \"cio\"]\n\n[default]", "levels = [\n[default]", "approvals.toml: not valid TOML", id="not-toml"),
        pytest.param("[firm]\nlevels", "[firms]\nlevels", "approvals.toml: the top level: unknown key 'firms'", id="unknown-table"),
        pytest.param("[firm]\nlevels = [\"desk_head\", \"cio\"]\n", "", "approvals.toml: the top level: firm is missing", id="no-firm"),
        pytest.param("[firm]\nlevels = [\"desk_head\", \"cio\"]", "[firm]\nlevels = []", "[firm] levels: must name at least one level", id="no-levels"),
        pytest.param("[firm]\nlevels = [\"desk_head\", \"cio\"]", "[firm]\nlevels = [\"cio\", \"cio\"]", "[firm] levels: 'cio' appears more than once", id="level-twice"),
        pytest.param("levels_in_order = [\"desk_head\", \"cio\"]", "levels_in_order = [\"desk_head\", \"cfo\"]", "approvals.toml: [default] levels_in_order: unknown level 'cfo'", id="unknown-level-in-order"),
        pytest.param("levels_in_order = [\"desk_head\", \"cio\"]", "levels_in_order = [\"desk_head\"]", "[[default.rules]] #2 (large) levels: 'cio' is not in the section's levels_in_order", id="level-not-in-fund-order"),
        pytest.param("levels_in_order = [\"desk_head\", \"cio\"]", "levels_in_order = \"desk_head\"", "[default] levels_in_order: must be a list of level names", id="order-not-a-list"),
        pytest.param("levels = [\"desk_head\"]\n", "levels = [\"boss\"]\n", "[[default.rules]] #1 (standard) levels: unknown level 'boss'", id="unknown-level-in-rule"),
        pytest.param("levels = [\"desk_head\"]\n", "levels = [\"desk_head\", \"desk_head\"]\n", "#1 (standard) levels: 'desk_head' appears more than once", id="rule-level-twice"),
        pytest.param("min_notional = \"1000\"", "min_notional = \"-5\"", "[[default.rules]] #2 (large) min_notional: '-5' must be a number, not negative", id="negative-bound"),
        pytest.param("max_notional = \"1000\"", "max_notional = \"0\"", "#1 (standard) max_notional: 0 must be above min_notional 0", id="empty-band"),
        pytest.param("max_notional = \"1000\"", "max_notional = 1000.5", "#1 (standard) max_notional: write the amount as a string (\"250000\") or an integer", id="float-bound"),
        pytest.param("max_notional = \"1000\"", "max_notional = \"lots\"", "#1 (standard) max_notional: 'lots' is not a number", id="not-a-number"),
        pytest.param("max_notional = \"1000\"", "max_notional = \"Infinity\"", "#1 (standard) max_notional: 'Infinity' must be a number", id="infinite-bound"),
        pytest.param("min_notional = \"1000\"", "min_notional = \"900\"", "[[default.rules]] #1 (standard) and #2 (large) overlap: both match equity/fx_spot/crypto orders from 900 below 1,000", id="overlap"),
        pytest.param(SOFT_RULE, SOFT_RULE + '[[default.rules]]\nname = "soft_crypto"\non_warning = true\nasset_classes = ["crypto", "equity"]\nlevels = ["cio"]\n', "#3 (soft_breach) and #4 (soft_crypto) overlap: both match equity/crypto orders from 0", id="warning-overlap"),
        pytest.param("min_notional = \"1000\"", "min_notional = \"2000\"", "[[default.rules]]: no rule without on_warning matches equity orders from 1,000 (say levels = [] to let orders through on purpose)", id="gap"),
        pytest.param("max_notional = \"1000\"", "min_notional = \"10\"\nmax_notional = \"1000\"", "no rule without on_warning matches equity orders from 0", id="not-from-zero"),
        pytest.param("min_notional = \"1000\"\n", "min_notional = \"1000\"\nmax_notional = \"5000\"\n", "no rule without on_warning matches equity orders from 5,000", id="no-top"),
        pytest.param("max_notional = \"1000\"\n", "max_notional = \"1000\"\nasset_classes = [\"equity\", \"crypto\"]\n", "no rule without on_warning matches fx_spot orders from 0", id="asset-class-gap"),
        pytest.param(SOFT + "levels = [\"desk_head\", \"cio\"]", SOFT + "levels = []", "#3 (soft_breach) levels: a soft breach must never go straight through", id="straight-through-soft-breach"),
        pytest.param(SOFT, SOFT + "max_notional = \"1000000\"\n", "no on_warning rule matches equity orders from 1,000,000 (a soft breach must always need a person)", id="soft-breach-not-covered"),
        pytest.param(SOFT, SOFT + "asset_classes = [\"equity\"]\n", "no on_warning rule matches fx_spot orders from 0", id="soft-breach-asset-class"),
        pytest.param(SOFT, SOFT + "asset_classes = [\"bonds\"]\n", "#3 (soft_breach) asset_classes: unknown asset class 'bonds'", id="unknown-asset-class"),
        pytest.param(SOFT, SOFT + "asset_classes = []\n", "#3 (soft_breach) asset_classes: must be a non-empty list", id="no-asset-classes"),
        pytest.param(SOFT, SOFT + "asset_classes = [\"crypto\", \"crypto\"]\n", "asset_classes: 'crypto' appears more than once", id="asset-class-twice"),
        pytest.param("on_warning = true", "on_warning = \"yes\"", "#3 (soft_breach) on_warning: must be true or false", id="on-warning-not-bool"),
        pytest.param('escalate_after = "PT4H"', 'escalate_after = "PT0S"', "approvals.toml: [default] escalate_after: 'PT0S' must be longer than zero", id="zero-duration"),
        pytest.param('expire_after = "PT24H"', 'expire_after = "-PT24H"', "[default] expire_after: '-PT24H' must be longer than zero", id="negative-duration"),
        pytest.param('escalate_after = "PT4H"', "escalate_after = 14400", "[default] escalate_after: must be an ISO 8601 duration such as \"PT4H\", not 14400", id="duration-not-a-string"),
        pytest.param('escalate_after = "PT4H"', 'escalate_after = "PTxH"', "[default] escalate_after: 'PTxH' is not an ISO 8601 duration", id="bad-duration"),
        pytest.param('expire_after = "PT24H"', 'expire_after = "PT4H"', "[default] expire_after: must be longer than escalate_after", id="expires-before-escalating"),
        pytest.param('expire_after = "PT24H"\n', "", "approvals.toml: [default]: expire_after is missing", id="missing-key"),
        pytest.param('expire_after = "PT24H"\n', 'expire_after = "PT24H"\nexpires = "PT1H"\n', "[default]: unknown key 'expires'", id="unknown-section-key"),
        pytest.param('expire_after = "PT24H"\n', 'expire_after = "PT24H"\ncurrency = "usd"\n', "[default] currency: must be a three-letter ISO currency code, not 'usd'", id="bad-currency"),
        pytest.param("min_notional = \"1000\"", "min_notinal = \"1000\"", "[[default.rules]] #2: unknown key 'min_notinal'", id="misspelt-rule-key"),
        pytest.param("levels = [\"desk_head\"]\n", "", "[[default.rules]] #1: levels is missing", id="rule-without-levels"),
        pytest.param('name = "standard"', 'name = ""', "[[default.rules]] #1 name: must be a non-empty string", id="rule-without-name"),
        pytest.param('name = "standard"', 'name = "large"', "[[default.rules]] #2: the name 'large' is already that of #1", id="rule-name-twice"),
        pytest.param("[firm]", "funds = 3\n[firm]", "approvals.toml: [funds]: must be a table", id="funds-not-a-table"),
        pytest.param("[default]\n", "[funds.fund-x]\nlevels_in_order = [\"cio\"]\n\n[default]\n", "approvals.toml: [funds.fund-x]: escalate_after is missing", id="fund-section"),
    ],
)  # fmt: skip
def test_a_policy_file_error_names_its_place(old: str, new: str, message: str) -> None:
    assert old in VALID
    with pytest.raises(ApprovalPolicyError) as error:
        parse_approval_policies(VALID.replace(old, new, 1).encode())
    assert message in str(error.value)
    assert str(error.value).startswith("approvals.toml: ")


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ("", "approvals.toml: [default]: rules is missing"),
        (
            "rules = []\n",
            "approvals.toml: [default] rules: must be a list of rules ([[default.rules]])",
        ),
        ("rules = 3\n", "approvals.toml: [default] rules: must be a list of rules"),
        ("rules = [3]\n", "approvals.toml: [[default.rules]] #1: must be a table"),
    ],
)
def test_a_section_needs_a_list_of_rules(rules: str, message: str) -> None:
    head = VALID.split("[[default.rules]]")[0]
    with pytest.raises(ApprovalPolicyError) as error:
        parse_approval_policies((head.replace("[default]\n", "[default]\n" + rules)).encode())
    assert str(error.value).startswith(message)


def test_a_policy_file_that_is_not_utf8_is_an_error() -> None:
    with pytest.raises(ApprovalPolicyError, match=r"^policies/approvals\.toml: not valid TOML"):
        parse_approval_policies(b"\xff\xfe", source="policies/approvals.toml")


# ---- valuation: the notional the matrix looks at ---------------------------------------------


def _pair(symbol: str, price: str, currency: str = "USD") -> Instrument:
    return Instrument(
        symbol=symbol,
        asset_class=AssetClass.FX_SPOT,
        currency=currency,
        reference_price=Decimal(price),
    )


@pytest.mark.parametrize(
    ("source", "target", "pairs", "expected"),
    [
        pytest.param("USD", "USD", [], FxRate(Decimal(1), None), id="same-currency"),
        pytest.param("EUR", "USD", [_pair("EURUSD", "1.085")], FxRate(Decimal("1.085"), "EURUSD"), id="direct"),
        pytest.param("USD", "EUR", [_pair("EURUSD", "1.25")], FxRate(Decimal("0.8"), "EURUSD"), id="inverse"),
        pytest.param("USD", "EUR", [_pair("EURUSD", "1.085")], FxRate(Decimal("0.9216589861751152073732718894"), "EURUSD"), id="inverse-rounded"),
        pytest.param("EUR", "USD", [_pair("EURUSD", "1.085"), _pair("USDEUR", "0.9", "EUR")], FxRate(Decimal("1.085"), "EURUSD"), id="direct-preferred"),
        pytest.param("GBP", "USD", [_pair("EURUSD", "1.085")], None, id="missing"),
        pytest.param("EUR", "USD", [_pair("EURUSD", "1.085", currency="EUR")], None, id="pair-in-wrong-currency"),
        pytest.param("EUR", "USD", [_pair("EURUSD", "1.085").model_copy(update={"asset_class": AssetClass.EQUITY})], None, id="not-fx"),
    ],
)  # fmt: skip
def test_fx_rate(
    source: str, target: str, pairs: list[Instrument], expected: FxRate | None
) -> None:
    assert fx_rate(source, target, {p.symbol: p for p in pairs}) == expected


def _valued(
    make_snapshot: SnapshotFactory,
    instrument: Instrument,
    fund_currency: str | None,
    rate: str | None,
) -> ComplianceSnapshot:
    return make_snapshot(instrument=instrument).model_copy(
        update={"fund_currency": fund_currency, "fx_rate": None if rate is None else Decimal(rate)}
    )


@pytest.mark.parametrize(
    ("quantity", "price", "currency", "fund_currency", "rate", "expected"),
    [
        pytest.param("100", "2500", "USD", "USD", "1", "250000", id="same-currency"),
        pytest.param("1", "249999.99", "USD", "USD", "1", "249999.99", id="a-cent-below"),
        pytest.param("100", "2500", "EUR", "USD", "1.085", "271250", id="direct"),
        pytest.param("100", "2712.5", "USD", "EUR", str(Decimal(1) / Decimal("1.085")), "250000", id="inverse-lands-on-the-bound"),
        pytest.param("3", "1", "USD", "EUR", str(Decimal(1) / Decimal(3)), "1", id="inverse-thirds"),
        pytest.param("100", "2500", "USD", None, None, "250000", id="old-snapshot"),
        pytest.param("0.0001", "64000", "USD", "USD", "1", "6.4", id="crypto-fraction"),
    ],
)  # fmt: skip
def test_approval_notional(
    make_order: OrderFactory,
    make_instrument: InstrumentFactory,
    make_snapshot: SnapshotFactory,
    quantity: str,
    price: str,
    currency: str,
    fund_currency: str | None,
    rate: str | None,
    expected: str,
) -> None:
    instrument = make_instrument(reference_price=Decimal(price), currency=currency)
    snapshot = _valued(make_snapshot, instrument, fund_currency, rate)
    # Valued at the reference price, never the limit price.
    order = make_order(quantity=Decimal(quantity), limit_price=Decimal(price) * 2)
    assert approval_notional(order, snapshot) == Decimal(expected)
    assert str(approval_notional(order, snapshot)) == expected
    assert approval_currency(snapshot) == (fund_currency or currency)


def test_approval_notional_needs_a_rate_between_different_currencies(
    make_order: OrderFactory, make_instrument: InstrumentFactory, make_snapshot: SnapshotFactory
) -> None:
    snapshot = _valued(make_snapshot, make_instrument(currency="EUR"), "USD", None)
    with pytest.raises(ValueError, match="no FX rate from EUR to USD"):
        approval_notional(make_order(), snapshot)


def test_an_inverted_rate_keeps_an_order_worth_exactly_a_bound_on_it(
    make_order: OrderFactory, make_instrument: InstrumentFactory, make_snapshot: SnapshotFactory
) -> None:
    # 271,250 USD at EURUSD 1.085 is exactly 250,000 EUR: fund-beta's desk_head bound.
    rate = fx_rate("USD", "EUR", {"EURUSD": _pair("EURUSD", "1.085")})
    assert rate is not None
    snapshot = _valued(
        make_snapshot, make_instrument(reference_price=Decimal("2712.5")), "EUR", str(rate.rate)
    )
    notional = approval_notional(make_order(quantity=Decimal(100)), snapshot)
    assert required_approvals(BETA, notional, EQUITY, PASSED).levels == ["desk_head"]


def test_a_snapshot_recorded_before_valuation_still_decodes(make_snapshot: SnapshotFactory) -> None:
    recorded = make_snapshot().model_dump(mode="json")
    for field in ("fund_currency", "fx_rate", "fx_symbol"):
        del recorded[field]
    decoded = ComplianceSnapshot.model_validate(recorded)
    assert (decoded.fund_currency, decoded.fx_rate, decoded.fx_symbol) == (None, None, None)
