"""Pre-trade compliance rules as data: the model of `policies/compliance.toml` and its parser.

A rule is a `RuleSpec`: an id, a rule type (`restricted_list`, `max_order_notional`, ...), a
severity (`fail` rejects the order, `warn` needs a compliance officer's override), a scope (the
firm, one fund, or one account) and the type's parameters. `CompliancePolicy` is one version of
the file (the sha256 digest of its bytes) and `rules_for` picks the rules an order answers to.

The parameters of each rule type are a pydantic model (`PARAMS_BY_TYPE`); the rule functions
that read them live in `domain.assessment`, whose `RULE_TYPES` registry pairs each type with its
function. The file's format is described in the file itself.
"""

from __future__ import annotations

import functools
import hashlib
import re
import tomllib
from collections.abc import Collection, Iterable
from decimal import Decimal
from enum import StrEnum
from functools import cached_property
from typing import Annotated, Any, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from domain.models import AssetClass, ComplianceOutcome
from domain.policy_files import check_keys

# ---- what a rule is ----------------------------------------------------------------------------


class Severity(StrEnum):
    """What a breach of the rule does to the order."""

    FAIL = "fail"
    WARN = "warn"

    @property
    def outcome(self) -> ComplianceOutcome:
        """Return the outcome a breach of a rule of this severity gives."""
        return ComplianceOutcome.FAIL if self is Severity.FAIL else ComplianceOutcome.WARN


class Scope(StrEnum):
    """Whose orders a rule applies to."""

    FIRM = "firm"
    FUND = "fund"
    ACCOUNT = "account"


# ---- the parameters of each rule type ----------------------------------------------------------
#
# Amounts and percentages are decimals, written in the file as strings ("2.5") or integers; the
# parser refuses floats before these models see them (0.1 in TOML is a binary float).

Quantity = Annotated[Decimal, Field(gt=0)]
Amount = Annotated[Decimal, Field(ge=0)]
Percent = Annotated[Decimal, Field(ge=0, description="Percent: 10 is 10%.")]
Seconds = Annotated[int, Field(gt=0, le=86_400)]


class RuleParams(BaseModel):
    """The parameters of one rule type; each type has its own subclass."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class InstrumentFilter(RuleParams):
    """Limits a rule to some instruments: both left out, it applies to every instrument."""

    symbols: list[str] | None = Field(
        default=None, description="Only orders in these symbols (left out: any symbol)."
    )
    asset_classes: list[AssetClass] | None = Field(
        default=None, description="Only orders in these asset classes (left out: any)."
    )

    def applies_to(self, symbol: str, asset_class: AssetClass | None) -> bool:
        """Tell whether an order in `symbol` (of `asset_class`, None if unknown) is checked.

        An instrument of unknown asset class is checked when the rule names no asset class,
        and also when it does: not knowing the class must not let an order slip past a limit.
        """
        if self.symbols is not None and symbol not in self.symbols:
            return False
        return not (
            self.asset_classes is not None
            and asset_class is not None
            and asset_class not in self.asset_classes
        )


class RestrictedListParams(RuleParams):
    """Instruments no order may trade: by symbol, or by issuer (compared ignoring case)."""

    symbols: list[str] = Field(default_factory=list)
    issuers: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _names_something(self) -> Self:
        if not self.symbols and not self.issuers:
            raise ValueError("name at least one symbol or issuer")
        return self

    @cached_property
    def issuer_keys(self) -> frozenset[str]:
        """Return the restricted issuers, case-folded."""
        return frozenset(issuer.casefold() for issuer in self.issuers)


class MaxOrderQuantityParams(InstrumentFilter):
    """The most one order may ask for, in units of the instrument."""

    max_quantity: Quantity


class MaxOrderNotionalParams(InstrumentFilter):
    """The most one order may be worth, at the reference price, in the fund's base currency."""

    max_notional: Amount


class PriceCollarParams(InstrumentFilter):
    """How far through the reference price a limit may be: a buy above, a sell below it."""

    max_deviation_pct: Percent


class PositionLimitParams(InstrumentFilter):
    """The largest position per instrument after the order and the fund's open orders."""

    max_long: Amount | None = Field(default=None, description="In units; left out: no limit.")
    max_short: Amount | None = Field(default=None, description="In units; left out: no limit.")

    @model_validator(mode="after")
    def _limits_something(self) -> Self:
        if self.max_long is None and self.max_short is None:
            raise ValueError("give max_long, max_short or both")
        return self


class IssuerConcentrationParams(RuleParams):
    """The most the fund may hold of one issuer, long or short, as a percentage of NAV."""

    max_pct: Percent


class _Band(RuleParams):
    min_pct: Percent | None = Field(default=None, description="Floor, % of NAV; left out: none.")
    max_pct: Percent | None = Field(default=None, description="Ceiling, % of NAV; left out: none.")

    @model_validator(mode="after")
    def _bounds_something(self) -> Self:
        if self.min_pct is None and self.max_pct is None:
            raise ValueError("give min_pct, max_pct or both")
        if self.min_pct is not None and self.max_pct is not None and self.min_pct > self.max_pct:
            raise ValueError(f"min_pct {self.min_pct} is above max_pct {self.max_pct}")
        return self


class AssetClassBandParams(_Band):
    """The fund's net exposure to one asset class must stay within a band, as % of NAV."""

    asset_class: AssetClass | None = Field(
        default=None, description="Left out: the asset class of the order's instrument."
    )


class SectorBandParams(_Band):
    """The fund's net exposure to one sector must stay within a band, as % of NAV."""

    sector: str | None = Field(
        default=None, min_length=1, description="Left out: the sector of the order's instrument."
    )


class CashAvailableParams(RuleParams):
    """A buy must be paid from cash the fund's other open buys have not already reserved."""

    min_cash_after: Amount = Field(
        default=Decimal(0), description="Cash to keep back, in the fund's base currency."
    )


class ShortSaleParams(RuleParams):
    """A sell beyond the long position must be a `sell_short`, with a locate."""

    require_locate: bool = True


class DuplicateOrderParams(RuleParams):
    """The same fund, symbol, side and quantity again within `window_seconds`."""

    window_seconds: Seconds


class OrderRateParams(RuleParams):
    """The most orders one user may send within `window_seconds` (this order included)."""

    max_orders: Annotated[int, Field(ge=1)]
    window_seconds: Seconds = 60


class TradingHoursParams(RuleParams):
    """The instrument's market must be open (exchange holidays are not known)."""


PARAMS_BY_TYPE: dict[str, type[RuleParams]] = {
    "restricted_list": RestrictedListParams,
    "max_order_quantity": MaxOrderQuantityParams,
    "max_order_notional": MaxOrderNotionalParams,
    "price_collar": PriceCollarParams,
    "position_limit": PositionLimitParams,
    "issuer_concentration": IssuerConcentrationParams,
    "asset_class_band": AssetClassBandParams,
    "sector_band": SectorBandParams,
    "cash_available": CashAvailableParams,
    "short_sale": ShortSaleParams,
    "duplicate_order": DuplicateOrderParams,
    "order_rate": OrderRateParams,
    "trading_hours": TradingHoursParams,
}


# ---- the rules and the policy ------------------------------------------------------------------
#
# These models travel in activity results and are decoded again when a history replays, so
# they check types only: what a rules file must satisfy is checked once, by
# `parse_compliance_policy`, and a check added later can never stop an old history decoding.


class RuleSpec(BaseModel):
    """One rule of the policy file.

    Attributes:
        id: unique in the file; each result carries it as `rule`, and an override names it.
        type: the rule type, a key of `PARAMS_BY_TYPE` (and of `domain.assessment.RULE_TYPES`).
        severity: what a breach does: `fail` rejects the order, `warn` needs an override.
        scope: `firm` (every order), `fund` (the orders of `fund`), or `account` (orders that
            allocate to `account`, and only in `fund` when it is given).
        fund: the fund of a fund rule, optionally of an account rule.
        account: the account of an account rule.
        params: the type's parameters, as the parser normalised them (JSON values, defaults
            filled in), so the rules can be listed as they are in force.
        description: why the rule exists, in words, for people reading the rules.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    type: str
    severity: Severity
    scope: Scope
    fund: str | None = None
    account: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    description: str = ""

    @cached_property
    def typed_params(self) -> RuleParams:
        """Return the parameters as their type's model (validated once, then kept).

        Raises:
            ValueError: the type is unknown or the parameters do not fit it; the parser never
                lets either through, but a spec may be built some other way.
        """
        model = PARAMS_BY_TYPE.get(self.type)
        if model is None:
            raise ValueError(f"unknown rule type {self.type!r}")
        return model.model_validate(self.params)

    def applies_to(self, fund: str, accounts: Collection[str]) -> bool:
        """Tell whether an order of `fund` allocating to `accounts` answers to this rule."""
        if self.scope is Scope.FIRM:
            return True
        if self.scope is Scope.FUND:
            return self.fund == fund
        return (self.fund is None or self.fund == fund) and self.account in accounts


class CompliancePolicy(BaseModel):
    """Every pre-trade rule, as one version of the policy file defines them.

    Attributes:
        version: the sha256 digest (hex) of the file's bytes: every check records it.
        rules: the rules in the file's order.
    """

    model_config = ConfigDict(frozen=True)

    version: str
    rules: list[RuleSpec] = Field(default_factory=list)

    def rules_for(self, fund: str, accounts: Iterable[str] = ()) -> list[RuleSpec]:
        """Return the rules an order answers to: the firm's, the fund's, then its accounts'.

        Args:
            fund: the order's fund.
            accounts: the accounts the order allocates to.

        Returns:
            The matching rules, firm rules first, then the fund's, then the accounts', each
            group in the file's order.
        """
        wanted = set(accounts)
        return [
            rule
            for scope in (Scope.FIRM, Scope.FUND, Scope.ACCOUNT)
            for rule in self.rules
            if rule.scope is scope and rule.applies_to(fund, wanted)
        ]


# ---- parsing and checking the policy file ------------------------------------------------------


class CompliancePolicyError(ValueError):
    """The compliance policy file breaks a rule; the message names the place in the file."""


_TOP_KEYS = {"rules"}
_RULE_KEYS = {"id", "type", "severity", "scope", "fund", "account", "params", "description"}
_RULE_REQUIRED = ("id", "type", "severity", "scope")
_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_E = TypeVar("_E", bound=StrEnum)


# Parsed once per content: the file is re-read for every check (an edit applies at once), and
# reading it costs microseconds where parsing and checking it cost milliseconds. The result is
# immutable, so every caller may share it; a broken file is not cached and raises every time.
@functools.lru_cache(maxsize=8)
def parse_compliance_policy(content: bytes, source: str = "compliance.toml") -> CompliancePolicy:
    """Parse and check the compliance policy file.

    Args:
        content: the file's bytes (TOML, UTF-8).
        source: the file's name, for error messages.

    Returns:
        The rules, with the sha256 digest of `content` as the policy's version.

    Raises:
        CompliancePolicyError: the file is not TOML, or a rule is wrong: an unknown key, type,
            severity or scope, a missing or repeated id, a scope without its fund or account,
            parameters missing, unknown or of the wrong type. The message names the rule (its
            number and id) and the field.
    """
    version = hashlib.sha256(content).hexdigest()
    try:
        data = tomllib.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise CompliancePolicyError(f"{source}: not valid TOML: {err}") from err
    if "rules" not in data and {"firm", "funds"} & data.keys():
        raise CompliancePolicyError(
            f"{source}: this is the first format ([firm] restricted_symbols, [funds.NAME] "
            "max_order_notional); write each rule as a [[rules]] table instead, as the header "
            "of policies/compliance.toml describes"
        )
    check_keys(data, _TOP_KEYS, (), f"{source}: the top level", CompliancePolicyError)
    if "rules" not in data:
        # An empty file would otherwise check nothing in silence.
        raise CompliancePolicyError(
            f"{source}: no [[rules]]; write `rules = []` to run no rules on purpose"
        )
    raw_rules = data["rules"]
    if not isinstance(raw_rules, list):
        raise CompliancePolicyError(f"{source}: rules must be an array of tables ([[rules]])")
    rules: list[RuleSpec] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(raw_rules, start=1):
        rule = _rule(raw, f"{source}: [[rules]] #{number}")
        if rule.id in seen:
            raise CompliancePolicyError(
                f"{source}: [[rules]] #{number} id: {rule.id!r} is already the id of "
                f"#{seen[rule.id]} (results and overrides name rules by id)"
            )
        seen[rule.id] = number
        rules.append(rule)
    return CompliancePolicy(version=version, rules=rules)


def _rule(raw: object, where: str) -> RuleSpec:
    if not isinstance(raw, dict):
        raise CompliancePolicyError(f"{where}: must be a table")
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not _ID.match(rule_id):
        raise CompliancePolicyError(
            f"{where} id: must be lower-case letters, digits, '-', '_' or '.', at most 64, "
            f"not {rule_id!r}"
        )
    where = f"{where} ({rule_id})"
    check_keys(raw, _RULE_KEYS, _RULE_REQUIRED, where, CompliancePolicyError)
    rule_type = raw["type"]
    params_model = PARAMS_BY_TYPE.get(rule_type) if isinstance(rule_type, str) else None
    if params_model is None:
        raise CompliancePolicyError(
            f"{where} type: unknown rule type {rule_type!r} "
            f"(expected: {', '.join(sorted(PARAMS_BY_TYPE))})"
        )
    severity = _choice(raw["severity"], Severity, f"{where} severity")
    scope = _choice(raw["scope"], Scope, f"{where} scope")
    fund = _optional_name(raw.get("fund"), f"{where} fund")
    account = _optional_name(raw.get("account"), f"{where} account")
    if scope is Scope.FIRM and (fund is not None or account is not None):
        raise CompliancePolicyError(f"{where}: a firm rule names no fund or account")
    if scope is Scope.FUND and (fund is None or account is not None):
        raise CompliancePolicyError(f"{where}: a fund rule names its fund, and no account")
    if scope is Scope.ACCOUNT and account is None:
        raise CompliancePolicyError(f"{where}: an account rule names its account")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise CompliancePolicyError(f"{where} description: must be a string")
    params = _params(raw.get("params", {}), params_model, f"{where} params")
    return RuleSpec(
        id=rule_id,
        type=rule_type,
        severity=severity,
        scope=scope,
        fund=fund,
        account=account,
        params=params.model_dump(mode="json"),
        description=description,
    )


def _params(raw: object, model: type[RuleParams], where: str) -> RuleParams:
    if not isinstance(raw, dict):
        raise CompliancePolicyError(f"{where}: must be a table")
    known = model.model_fields
    for key in raw:
        # A misspelt parameter (max_notinal) would otherwise be refused with a less useful
        # message, or, were extras allowed, ignored in silence.
        if key not in known:
            expected = ", ".join(sorted(known)) or "none"
            raise CompliancePolicyError(
                f"{where}: unknown parameter {key!r} (expected: {expected})"
            )
    _refuse_floats(raw, where)
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        error = err.errors()[0]
        place = _place(error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "is missing"
        raise CompliancePolicyError(
            f"{where}{'.' + place if place else ''}: {message}"
            + (f" (got {error['input']!r})" if error["type"] != "missing" and place else "")
        ) from None


def _refuse_floats(value: object, where: str) -> None:
    # Floats are refused: 0.1 in TOML is a binary float, not the decimal a reader sees.
    if isinstance(value, float):
        raise CompliancePolicyError(
            f'{where}: write the number as a string ("{value}") or an integer, not a float'
        )
    if isinstance(value, dict):
        for key, item in value.items():
            _refuse_floats(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_floats(item, f"{where}[{index}]")


def _place(loc: tuple[int | str, ...]) -> str:
    place = ""
    for part in loc:
        place += f"[{part}]" if isinstance(part, int) else (f".{part}" if place else part)
    return place


def _choice(value: object, enum: type[_E], where: str) -> _E:
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return enum(value)
    except ValueError:
        expected = ", ".join(member.value for member in enum)
        raise CompliancePolicyError(f"{where}: {value!r} is not one of {expected}") from None


def _optional_name(value: object, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise CompliancePolicyError(f"{where}: must be a non-empty string")
    return value


def without_rule_types(compliance_toml: str, rule_types: tuple[str, ...]) -> str:
    """Return the rules file without its `[[rules]]` tables of the given types."""
    head, *tables = re.split(r"(?m)^\[\[rules\]\]\n", compliance_toml)
    kept = [t for t in tables if not any(f'type = "{kind}"' in t for kind in rule_types)]
    return head + "".join(f"[[rules]]\n{t}" for t in kept)
