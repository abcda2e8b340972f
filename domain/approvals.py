"""The approval matrix: which levels an order needs, decided by its notional and compliance results.

Two generations live here. `ApprovalMatrix` and `required_levels` are the first: one firm-wide
list of levels, each needed above a notional. Orders of the first workflow and recorded histories
replay through them, so they stay exactly as they were.

`ApprovalPolicies` is the matrix as data, per fund, parsed from `policies/approvals.toml` by
`parse_approval_policies`, and `required_approvals` decides with it. The file's format and its
rules are described in the file itself.
"""

from __future__ import annotations

import functools
import hashlib
import re
import tomllib
from collections.abc import Iterable
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from domain.models import MAX_AMOUNT, AssetClass, ComplianceOutcome, ComplianceResult
from domain.policy_files import check_keys


class ApprovalLevel(BaseModel):
    """One level of the matrix: orders whose notional is above `min_notional` need it."""

    model_config = ConfigDict(frozen=True)

    level: str
    min_notional: Decimal = Decimal(0)
    on_warning: bool = Field(default=False, description="Also required whenever a rule warned.")


class ApprovalMatrix(BaseModel):
    """Levels in the order they must approve."""

    model_config = ConfigDict(frozen=True)

    levels: list[ApprovalLevel]


def required_levels(
    matrix: ApprovalMatrix, notional: Decimal, compliance: list[ComplianceResult]
) -> list[str]:
    """Return the levels an order must pass, in approval order."""
    warned = any(r.outcome is ComplianceOutcome.WARN for r in compliance)
    return [
        lvl.level
        for lvl in matrix.levels
        if notional > lvl.min_notional or (warned and lvl.on_warning)
    ]


# ---- the matrix as data, per fund ------------------------------------------------------------
#
# The models below travel in activity results and so are decoded again when a history replays.
# They therefore check types only: the rules a policy file must follow are checked once, by
# `parse_approval_policies`, so a check added later can never stop an old history decoding.


class ApprovalRule(BaseModel):
    """One row of a fund's matrix: the orders it matches need its levels.

    A rule matches an order whose approval notional N has `min_notional <= N < max_notional`
    (no `max_notional`: no upper bound), whose asset class is in `asset_classes` (None: any),
    and, for an `on_warning` rule, only when a compliance rule warned (a soft breach).
    """

    model_config = ConfigDict(frozen=True)

    name: str
    min_notional: Decimal = Decimal(0)
    max_notional: Decimal | None = None
    asset_classes: list[AssetClass] | None = None
    on_warning: bool = False
    levels: list[str] = Field(
        default_factory=list, description="Empty: the orders it matches need no person."
    )

    def applies_to(self, asset_class: AssetClass) -> bool:
        """Tell whether the rule looks at orders in `asset_class`."""
        return self.asset_classes is None or asset_class in self.asset_classes

    def covers(self, notional: Decimal) -> bool:
        """Tell whether `notional` is within the bounds (lower inclusive, upper exclusive)."""
        return self.min_notional <= notional and (
            self.max_notional is None or notional < self.max_notional
        )

    def matches(self, notional: Decimal, asset_class: AssetClass, warned: bool) -> bool:
        """Tell whether an order with this notional, asset class and outcome needs the levels."""
        return (
            (warned or not self.on_warning)
            and self.applies_to(asset_class)
            and self.covers(notional)
        )


class FundApprovalPolicy(BaseModel):
    """One fund's approval matrix, and how long an approval may wait.

    Attributes:
        fund: the fund it applies to.
        section: where in the policy file it was written ("funds.fund-beta", or "default" for
            a fund without a section of its own).
        version: the sha256 digest (hex) of the policy file it came from.
        currency: the currency the bounds are written in, when the file says; the bounds are
            always compared with the notional in the fund's base currency, so they must agree.
        levels_in_order: the levels the fund uses, in the order they approve.
        rules: the rows of the matrix, as written.
        escalate_after: an approval still waiting this long after compliance is escalated.
        expire_after: an order not approved this long after compliance expires.
    """

    model_config = ConfigDict(frozen=True)

    fund: str
    section: str
    version: str
    currency: str | None = None
    levels_in_order: list[str]
    rules: list[ApprovalRule]
    escalate_after: timedelta
    expire_after: timedelta

    def as_matrix(self) -> ApprovalMatrix:
        """Return the policy in the first matrix's shape, for code not yet on `required_approvals`.

        The firm default's shape (a level from some notional up, or on a warning) comes out
        exactly. Other shapes come out erring towards more approval: a level counts from the
        lowest bound of any rule that needs it, whatever its upper bound and asset classes.
        The first matrix needs a level *above* its notional while bounds here are inclusive,
        so an order worth exactly a bound can need one level fewer there.
        """
        levels = []
        for level in self.levels_in_order:
            bounds = [r.min_notional for r in self.rules if level in r.levels and not r.on_warning]
            # Every order is worth more than 0, so a level needed from 0 needs no warning flag.
            on_warning = any(level in r.levels and r.on_warning for r in self.rules) and not (
                bounds and min(bounds) == 0
            )
            if bounds or on_warning:
                # A level needed only on a warning gets a bound no order reaches (quantity and
                # price are each below MAX_AMOUNT).
                min_notional = min(bounds) if bounds else MAX_AMOUNT * MAX_AMOUNT
                levels.append(
                    ApprovalLevel(level=level, min_notional=min_notional, on_warning=on_warning)
                )
        return ApprovalMatrix(levels=levels)


class ApprovalPolicies(BaseModel):
    """Every fund's approval matrix, as one version of the policy file defines them.

    Attributes:
        version: the sha256 digest (hex) of the file's bytes: each order records it.
        levels: every approval level there is (each a Casbin permission "approvals", LEVEL).
        firm_default: the policy of a fund without a section of its own (its `fund` is "*").
        funds: fund -> its own policy.
    """

    model_config = ConfigDict(frozen=True)

    version: str
    levels: list[str]
    firm_default: FundApprovalPolicy
    funds: dict[str, FundApprovalPolicy] = Field(default_factory=dict)

    def for_fund(self, fund: str) -> FundApprovalPolicy:
        """Return `fund`'s policy: its own section, else the firm default."""
        own = self.funds.get(fund)
        if own is not None:
            return own
        return self.firm_default.model_copy(update={"fund": fund})


class ApprovalRequirement(BaseModel):
    """What one order needs before it may be released, and why.

    Attributes:
        levels: the levels to approve, in approval order, each once.
        rules: the names of the rules that matched, in the file's order.
        matrix_version: the version of the policy file that decided it.
        straight_through: no person needs to approve: the order is approved by policy.
    """

    model_config = ConfigDict(frozen=True)

    levels: list[str]
    rules: list[str]
    matrix_version: str
    straight_through: bool


def required_approvals(
    policy: FundApprovalPolicy,
    notional_in_fund_currency: Decimal,
    asset_class: AssetClass,
    compliance_results: list[ComplianceResult],
) -> ApprovalRequirement:
    """Decide which levels an order needs under its fund's policy.

    Args:
        policy: the fund's policy (`ApprovalPolicies.for_fund`).
        notional_in_fund_currency: the order valued in the fund's base currency at the
            instrument's reference price (`domain.compliance.approval_notional`).
        asset_class: the instrument's asset class.
        compliance_results: the pre-trade results; any warning is a soft breach. A failure
            rejects the order before approvals, so it adds nothing here.

    Returns:
        The levels (the union of the matched rules' levels, in the fund's approval order), the
        names of the rules that matched, the policy's version, and whether the order goes
        straight through.
    """
    warned = any(r.outcome is ComplianceOutcome.WARN for r in compliance_results)
    matched = [
        rule
        for rule in policy.rules
        if rule.matches(notional_in_fund_currency, asset_class, warned)
    ]
    wanted = {level for rule in matched for level in rule.levels}
    levels = [level for level in policy.levels_in_order if level in wanted]
    if not levels and (warned or not matched):
        # Only a rule that says so lets an order through, and never a soft breach. The parser
        # guarantees both; a policy built some other way fails safe, to every level.
        levels = list(policy.levels_in_order)
    return ApprovalRequirement(
        levels=levels,
        rules=[rule.name for rule in matched],
        matrix_version=policy.version,
        straight_through=not levels,
    )


# ---- parsing and checking the policy file ----------------------------------------------------


class ApprovalPolicyError(ValueError):
    """The approval policy file breaks a rule; the message names the place in the file."""


_TOP_KEYS = {"firm", "default", "funds"}
_FIRM_KEYS = {"levels"}
_SECTION_KEYS = {"currency", "levels_in_order", "escalate_after", "expire_after", "rules"}
_SECTION_REQUIRED = ("levels_in_order", "escalate_after", "expire_after", "rules")
_RULE_KEYS = {"name", "min_notional", "max_notional", "asset_classes", "on_warning", "levels"}
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_DURATION = TypeAdapter(timedelta)


# Parsed once per content: the file is re-read for every check (an edit applies at once), and
# reading it costs microseconds where parsing and checking it cost milliseconds. The result is
# immutable, so every caller may share it; a broken file is not cached and raises every time.
@functools.lru_cache(maxsize=8)
def parse_approval_policies(content: bytes, source: str = "approvals.toml") -> ApprovalPolicies:
    """Parse and check the approval policy file.

    Args:
        content: the file's bytes (TOML, UTF-8).
        source: the file's name, for error messages.

    Returns:
        Every fund's policy, each carrying the sha256 digest of `content` as its version.

    Raises:
        ApprovalPolicyError: the file is not TOML, or breaks one of the rules its header
            describes; the message names the table and key at fault.
    """
    version = hashlib.sha256(content).hexdigest()
    try:
        data = tomllib.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ApprovalPolicyError(f"{source}: not valid TOML: {err}") from err
    check_keys(
        data, _TOP_KEYS, ("firm", "default"), f"{source}: the top level", ApprovalPolicyError
    )
    firm = _table(data["firm"], f"{source}: [firm]")
    check_keys(firm, _FIRM_KEYS, ("levels",), f"{source}: [firm]", ApprovalPolicyError)
    levels = _names(firm["levels"], f"{source}: [firm] levels", allow_empty=False)
    default = _section(data["default"], "default", "*", levels, version, source)
    funds = {
        fund: _section(table, f"funds.{fund}", fund, levels, version, source)
        for fund, table in _table(data.get("funds", {}), f"{source}: [funds]").items()
    }
    return ApprovalPolicies(version=version, levels=levels, firm_default=default, funds=funds)


def _section(
    raw: object, section: str, fund: str, known_levels: list[str], version: str, source: str
) -> FundApprovalPolicy:
    where = f"{source}: [{section}]"
    table = _table(raw, where)
    check_keys(table, _SECTION_KEYS, _SECTION_REQUIRED, where, ApprovalPolicyError)
    order = _names(table["levels_in_order"], f"{where} levels_in_order", allow_empty=False)
    for level in order:
        if level not in known_levels:
            raise ApprovalPolicyError(
                f"{where} levels_in_order: unknown level {level!r} "
                f"(the levels are those of [firm] levels: {', '.join(known_levels)})"
            )
    currency = table.get("currency")
    if currency is not None and not (isinstance(currency, str) and _CURRENCY.match(currency)):
        raise ApprovalPolicyError(
            f"{where} currency: must be a three-letter ISO currency code, not {currency!r}"
        )
    escalate_after = _duration(table["escalate_after"], f"{where} escalate_after")
    expire_after = _duration(table["expire_after"], f"{where} expire_after")
    if expire_after <= escalate_after:
        raise ApprovalPolicyError(
            f"{where} expire_after: must be longer than escalate_after "
            f"({expire_after} is not longer than {escalate_after})"
        )
    raw_rules = table["rules"]
    if not isinstance(raw_rules, list) or not raw_rules:
        raise ApprovalPolicyError(f"{where} rules: must be a list of rules ([[{section}.rules]])")
    rules = [
        _rule(raw_rule, f"{source}: [[{section}.rules]] #{number}", known_levels, order)
        for number, raw_rule in enumerate(raw_rules, start=1)
    ]
    _check_rule_set(rules, section, source)
    return FundApprovalPolicy(
        fund=fund,
        section=section,
        version=version,
        currency=currency,
        levels_in_order=order,
        rules=rules,
        escalate_after=escalate_after,
        expire_after=expire_after,
    )


def _rule(raw: object, where: str, known_levels: list[str], order: list[str]) -> ApprovalRule:
    table = _table(raw, where)
    check_keys(table, _RULE_KEYS, ("name", "levels"), where, ApprovalPolicyError)
    name = table["name"]
    if not isinstance(name, str) or not name.strip():
        raise ApprovalPolicyError(f"{where} name: must be a non-empty string")
    where = f"{where} ({name})"
    min_notional = _amount(table.get("min_notional", 0), f"{where} min_notional")
    max_notional = None
    if "max_notional" in table:
        max_notional = _amount(table["max_notional"], f"{where} max_notional")
        if max_notional <= min_notional:
            raise ApprovalPolicyError(
                f"{where} max_notional: {max_notional} must be above min_notional {min_notional}"
            )
    asset_classes = None
    if "asset_classes" in table:
        asset_classes = _asset_classes(table["asset_classes"], f"{where} asset_classes")
    on_warning = table.get("on_warning", False)
    if not isinstance(on_warning, bool):
        raise ApprovalPolicyError(f"{where} on_warning: must be true or false")
    levels = _names(table["levels"], f"{where} levels", allow_empty=True)
    for level in levels:
        if level not in known_levels:
            raise ApprovalPolicyError(
                f"{where} levels: unknown level {level!r} "
                f"(the levels are those of [firm] levels: {', '.join(known_levels)})"
            )
        if level not in order:
            raise ApprovalPolicyError(
                f"{where} levels: {level!r} is not in the section's levels_in_order "
                f"({', '.join(order)})"
            )
    if on_warning and not levels:
        raise ApprovalPolicyError(
            f"{where} levels: a soft breach must never go straight through; "
            "an on_warning rule needs at least one level"
        )
    return ApprovalRule(
        name=name,
        min_notional=min_notional,
        max_notional=max_notional,
        asset_classes=asset_classes,
        on_warning=on_warning,
        levels=levels,
    )


def _check_rule_set(rules: list[ApprovalRule], section: str, source: str) -> None:
    """Check that every order matches exactly one band, and every soft breach one warning rule.

    A gap would let an order through with no approval by accident; an overlap would make the
    answer depend on which of two contradicting rules was meant.
    """
    where = f"{source}: [[{section}.rules]]"
    seen: dict[str, int] = {}
    for number, rule in enumerate(rules, start=1):
        if rule.name in seen:
            raise ApprovalPolicyError(
                f"{where} #{number}: the name {rule.name!r} is already that of #{seen[rule.name]}"
            )
        seen[rule.name] = number
    numbered = list(enumerate(rules, start=1))
    for on_warning, kind in ((False, "rule without on_warning"), (True, "on_warning rule")):
        group = [(n, r) for n, r in numbered if r.on_warning is on_warning]
        for index, (n_a, a) in enumerate(group):
            for n_b, b in group[index + 1 :]:
                shared = _shared_asset_classes(a, b)
                low, high = max(a.min_notional, b.min_notional), _min_upper(a, b)
                if shared and (high is None or low < high):
                    raise ApprovalPolicyError(
                        f"{where} #{n_a} ({a.name}) and #{n_b} ({b.name}) overlap: both match "
                        f"{_classes(shared)} orders {_span(low, high)}"
                    )
        for asset_class in AssetClass:
            _check_covered(
                [r for _, r in group if r.applies_to(asset_class)], asset_class, kind, where
            )


def _check_covered(
    rules: list[ApprovalRule], asset_class: AssetClass, kind: str, where: str
) -> None:
    """Check that `rules` (which do not overlap) cover every notional from 0 up."""
    reach = Decimal(0)
    for rule in sorted(rules, key=lambda r: r.min_notional):
        if rule.min_notional > reach:
            break
        if rule.max_notional is None:
            return
        reach = rule.max_notional
    hint = (
        "a soft breach must always need a person"
        if kind == "on_warning rule"
        else "say levels = [] to let orders through on purpose"
    )
    raise ApprovalPolicyError(
        f"{where}: no {kind} matches {asset_class.value} orders from {reach:,} ({hint})"
    )


def _shared_asset_classes(a: ApprovalRule, b: ApprovalRule) -> list[AssetClass]:
    return [c for c in AssetClass if a.applies_to(c) and b.applies_to(c)]


def _min_upper(a: ApprovalRule, b: ApprovalRule) -> Decimal | None:
    uppers = [u for u in (a.max_notional, b.max_notional) if u is not None]
    return min(uppers) if uppers else None


def _classes(classes: Iterable[AssetClass]) -> str:
    return "/".join(c.value for c in classes)


def _span(low: Decimal, high: Decimal | None) -> str:
    return f"from {low:,}" + ("" if high is None else f" below {high:,}")


def _table(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ApprovalPolicyError(f"{where}: must be a table")
    return value


def _names(value: object, where: str, *, allow_empty: bool) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ApprovalPolicyError(f"{where}: must be a list of level names")
    if not value and not allow_empty:
        raise ApprovalPolicyError(f"{where}: must name at least one level")
    for name in value:
        if value.count(name) > 1:
            raise ApprovalPolicyError(f"{where}: {name!r} appears more than once")
    return list(value)


def _amount(value: object, where: str) -> Decimal:
    # Floats are refused: 0.1 in TOML is a binary float, not the decimal a reader sees.
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ApprovalPolicyError(
            f'{where}: write the amount as a string ("250000") or an integer, not {value!r}'
        )
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ApprovalPolicyError(f"{where}: {value!r} is not a number") from None
    if not amount.is_finite() or amount < 0:
        raise ApprovalPolicyError(f"{where}: {value!r} must be a number, not negative")
    return amount


def _asset_classes(value: object, where: str) -> list[AssetClass]:
    known = ", ".join(c.value for c in AssetClass)
    if not isinstance(value, list) or not value:
        raise ApprovalPolicyError(
            f"{where}: must be a non-empty list (leave it out for every asset class): {known}"
        )
    classes = []
    for item in value:
        try:
            asset_class = AssetClass(item)
        except ValueError:
            raise ApprovalPolicyError(
                f"{where}: unknown asset class {item!r} (expected: {known})"
            ) from None
        if asset_class in classes:
            raise ApprovalPolicyError(f"{where}: {item!r} appears more than once")
        classes.append(asset_class)
    return classes


def _duration(value: object, where: str) -> timedelta:
    if not isinstance(value, str) or not value.lstrip("-").startswith("P"):
        raise ApprovalPolicyError(
            f'{where}: must be an ISO 8601 duration such as "PT4H", not {value!r}'
        )
    try:
        duration = _DURATION.validate_python(value)
    except ValidationError:
        raise ApprovalPolicyError(
            f'{where}: {value!r} is not an ISO 8601 duration such as "PT4H"'
        ) from None
    if duration <= timedelta(0):
        raise ApprovalPolicyError(f"{where}: {value!r} must be longer than zero")
    return duration
