"""The compliance rules file: its format, its checks, and who answers to which rule."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from domain.assessment import RULE_TYPES
from domain.compliance_policy import (
    PARAMS_BY_TYPE,
    CompliancePolicy,
    CompliancePolicyError,
    MaxOrderNotionalParams,
    RuleSpec,
    Scope,
    Severity,
    parse_compliance_policy,
)

POLICY_FILE = Path(__file__).resolve().parents[2] / "policies" / "compliance.toml"


def parse(text: str) -> CompliancePolicy:
    return parse_compliance_policy(text.encode(), source="rules.toml")


RULE = """
[[rules]]
id = "r1"
type = "max_order_notional"
severity = "fail"
scope = "fund"
fund = "fund-alpha"
params = { max_notional = "50000000" }
"""


def test_the_policy_file_parses_and_is_versioned_by_its_bytes() -> None:
    content = POLICY_FILE.read_bytes()
    policy = parse_compliance_policy(content)

    assert policy.version == hashlib.sha256(content).hexdigest()
    assert len({rule.id for rule in policy.rules}) == len(policy.rules)


def test_the_policy_file_exercises_every_rule_type() -> None:
    policy = parse_compliance_policy(POLICY_FILE.read_bytes())

    # Trading hours is there, commented out (see the file): desks stage orders at any hour.
    assert {rule.type for rule in policy.rules} == set(RULE_TYPES) - {"trading_hours"}
    assert 'type = "trading_hours"' in POLICY_FILE.read_text()
    assert {rule.scope for rule in policy.rules} == set(Scope)
    assert {rule.severity for rule in policy.rules} == set(Severity)


def test_the_policy_file_keeps_todays_limits() -> None:
    policy = parse_compliance_policy(POLICY_FILE.read_bytes())

    def notional_limits(fund: str) -> dict[Severity, str]:
        return {
            rule.severity: rule.params["max_notional"]
            for rule in policy.rules_for(fund)
            if rule.type == "max_order_notional"
        }

    assert notional_limits("fund-alpha") == {Severity.FAIL: "50000000", Severity.WARN: "20000000"}
    assert notional_limits("fund-beta") == {Severity.FAIL: "25000000", Severity.WARN: "10000000"}
    restricted = [r for r in policy.rules_for("fund-alpha") if r.type == "restricted_list"]
    assert [(r.scope, r.severity, r.params["symbols"]) for r in restricted] == [
        (Scope.FIRM, Severity.FAIL, ["GME"])
    ]


def test_every_rule_type_has_a_function_and_a_params_model() -> None:
    assert set(RULE_TYPES) == set(PARAMS_BY_TYPE)
    for name, rule_type in RULE_TYPES.items():
        assert rule_type.name == name
        assert rule_type.params is PARAMS_BY_TYPE[name]
        assert rule_type.summary
        # The what-if endpoint lists rules with their parameters' schema.
        assert rule_type.params.model_json_schema()["type"] == "object"


def test_a_rule_is_read_whole_with_params_normalised() -> None:
    [rule] = parse(RULE + 'description = "the biggest order"\n').rules

    assert rule == RuleSpec(
        id="r1",
        type="max_order_notional",
        severity=Severity.FAIL,
        scope=Scope.FUND,
        fund="fund-alpha",
        params={"symbols": None, "asset_classes": None, "max_notional": "50000000"},
        description="the biggest order",
    )
    assert isinstance(rule.typed_params, MaxOrderNotionalParams)
    # What the parser keeps survives a round trip through JSON (activity results, histories).
    assert RuleSpec.model_validate_json(rule.model_dump_json()) == rule


def test_rules_for_takes_the_firms_then_the_funds_then_the_accounts() -> None:
    policy = parse(
        """
[[rules]]
id = "acct"
type = "short_sale"
severity = "fail"
scope = "account"
account = "alpha-growth"

[[rules]]
id = "alpha"
type = "short_sale"
severity = "fail"
scope = "fund"
fund = "fund-alpha"

[[rules]]
id = "firm"
type = "short_sale"
severity = "warn"
scope = "firm"

[[rules]]
id = "beta"
type = "short_sale"
severity = "fail"
scope = "fund"
fund = "fund-beta"

[[rules]]
id = "acct-beta-only"
type = "short_sale"
severity = "fail"
scope = "account"
fund = "fund-beta"
account = "alpha-growth"
"""
    )

    def ids(fund: str, accounts: list[str]) -> list[str]:
        return [rule.id for rule in policy.rules_for(fund, accounts)]

    assert ids("fund-alpha", []) == ["firm", "alpha"]
    assert ids("fund-alpha", ["alpha-main", "alpha-growth"]) == ["firm", "alpha", "acct"]
    assert ids("fund-beta", ["alpha-growth"]) == ["firm", "beta", "acct", "acct-beta-only"]
    assert ids("fund-gamma", []) == ["firm"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rules = [", r"rules\.toml: not valid TOML"),
        ("", r"rules\.toml: no \[\[rules\]\]; write `rules = \[\]`"),
        (
            '[firm]\nrestricted_symbols = ["GME"]\n',
            r"rules\.toml: this is the first format .* \[\[rules\]\] table",
        ),
        ("rules = []\nextra = 1\n", r"rules\.toml: the top level: unknown key 'extra'"),
        ("rules = 3\n", r"rules\.toml: rules must be an array of tables"),
        (RULE.replace('id = "r1"', 'id = "R 1"'), r"#1 id: must be lower-case .* not 'R 1'"),
        (RULE.replace('id = "r1"\n', ""), r"#1 id: must be lower-case .* not None"),
        (RULE + RULE, r"#2 id: 'r1' is already the id of #1"),
        (
            RULE.replace("max_order_notional", "max_notinal"),
            r"#1 \(r1\) type: unknown rule type 'max_notinal' \(expected: asset_class_band, ",
        ),
        (RULE.replace('"fail"', '"hard"'), r"#1 \(r1\) severity: 'hard' is not one of fail, warn"),
        (RULE.replace('severity = "fail"\n', ""), r"#1 \(r1\): severity is missing"),
        (
            RULE.replace('scope = "fund"', 'scope = "desk"'),
            r"#1 \(r1\) scope: 'desk' is not one of firm, fund, account",
        ),
        (RULE.replace('fund = "fund-alpha"\n', ""), r"#1 \(r1\): a fund rule names its fund"),
        (RULE.replace('scope = "fund"', 'scope = "firm"'), r"#1 \(r1\): a firm rule names no fund"),
        (
            RULE.replace('scope = "fund"', 'scope = "account"'),
            r"#1 \(r1\): an account rule names its account",
        ),
        (
            RULE.replace('fund = "fund-alpha"', 'fund = ""'),
            r"#1 \(r1\) fund: must be a non-empty string",
        ),
        (RULE + "sevrity = 1\n", r"#1 \(r1\): unknown key 'sevrity'"),
        (RULE + "description = 3\n", r"#1 \(r1\) description: must be a string"),
        (
            RULE.replace('max_notional = "50000000"', "max_notinal = 5"),
            r"#1 \(r1\) params: unknown parameter 'max_notinal' \(expected: asset_classes, max_notional, symbols\)",
        ),
        (
            RULE.replace('params = { max_notional = "50000000" }', "params = {}"),
            r"#1 \(r1\) params\.max_notional: is missing",
        ),
        (
            RULE.replace('params = { max_notional = "50000000" }', "params = 3"),
            r"#1 \(r1\) params: must be a table",
        ),
        (
            RULE.replace('"50000000"', "5.5e7"),
            r'#1 \(r1\) params\.max_notional: write the number as a string \("55000000\.0"\)',
        ),
        (
            RULE.replace('"50000000"', '"lots"'),
            r"#1 \(r1\) params\.max_notional: Input should be a valid decimal \(got 'lots'\)",
        ),
        (
            RULE.replace('"50000000"', '"-1"'),
            r"#1 \(r1\) params\.max_notional: Input should be greater than or equal to 0",
        ),
        (
            RULE.replace('"50000000"', '"NaN"'),
            r"#1 \(r1\) params\.max_notional: Input should be a finite number",
        ),
        (
            RULE.replace(
                'max_notional = "50000000"', 'max_notional = "1", asset_classes = ["bonds"]'
            ),
            r"#1 \(r1\) params\.asset_classes\[0\]: Input should be 'equity', 'fx_spot' or 'crypto'",
        ),
        (
            RULE.replace("max_order_notional", "position_limit").replace(
                'max_notional = "50000000"', 'symbols = ["AAPL"]'
            ),
            r"#1 \(r1\) params: give max_long, max_short or both",
        ),
        (
            RULE.replace("max_order_notional", "sector_band").replace(
                'max_notional = "50000000"', 'min_pct = "20", max_pct = "10"'
            ),
            r"#1 \(r1\) params: min_pct 20 is above max_pct 10",
        ),
        (
            RULE.replace("max_order_notional", "restricted_list").replace(
                'max_notional = "50000000"', "symbols = []"
            ),
            r"#1 \(r1\) params: name at least one symbol or issuer",
        ),
        (
            RULE.replace("max_order_notional", "duplicate_order").replace(
                'max_notional = "50000000"', "window_seconds = 0"
            ),
            r"#1 \(r1\) params\.window_seconds: Input should be greater than 0",
        ),
        (
            RULE.replace("max_order_notional", "short_sale").replace(
                'max_notional = "50000000"', 'require_locate = "yes please"'
            ),
            r"#1 \(r1\) params\.require_locate: Input should be a valid boolean",
        ),
    ],
)
def test_a_broken_file_is_refused_naming_the_place(text: str, message: str) -> None:
    with pytest.raises(CompliancePolicyError, match=message):
        parse(text)


def test_no_rules_on_purpose_is_allowed() -> None:
    assert parse("rules = []\n").rules == []


def test_a_spec_built_by_hand_with_an_unknown_type_says_so_when_used() -> None:
    spec = RuleSpec(id="x", type="astrology", severity=Severity.FAIL, scope=Scope.FIRM)

    with pytest.raises(ValueError, match="unknown rule type 'astrology'"):
        _ = spec.typed_params
