"""The order's vocabulary: enums and pydantic types shared by API, workflow and activities."""

from __future__ import annotations

import re
from datetime import date, datetime
from decimal import Decimal, getcontext
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

CLIENT_ORDER_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _aware_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("must carry a timezone offset (UTC)")
    return value


# Quantities and prices the read model stores exactly (NUMERIC(38, 12)), with room to multiply
# one by the other; far beyond any real order.
MAX_AMOUNT = Decimal("1e15")
MAX_PLACES = 12


def amount_problem(value: Decimal) -> str | None:
    """Return why `value` cannot be a quantity or price, or None when it can (zero allowed)."""
    if not value.is_finite() or value < 0:
        return "must be a number, not negative"
    if value >= MAX_AMOUNT:
        return f"must be below {MAX_AMOUNT:,.0f}"
    # Trailing zeros are not places: 100.000000000000000 is 100.
    exponent = value.normalize().as_tuple().exponent
    if isinstance(exponent, int) and -exponent > MAX_PLACES:
        return f"must have at most {MAX_PLACES} decimal places"
    return None


def _positive(value: Decimal) -> Decimal:
    if not value.is_finite() or value <= 0:
        raise ValueError("must be greater than zero")
    problem = amount_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _non_negative(value: Decimal) -> Decimal:
    if not value.is_finite() or value < 0:
        raise ValueError("must not be negative")
    problem = amount_problem(value)
    if problem:
        raise ValueError(problem)
    return value


AwareDatetime = Annotated[datetime, AfterValidator(_aware_utc)]
PositiveDecimal = Annotated[Decimal, AfterValidator(_positive)]
NonNegativeDecimal = Annotated[Decimal, AfterValidator(_non_negative)]


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"
    SELL_SHORT = "sell_short"

    @property
    def sign(self) -> int:
        """Return +1 for buys and -1 for sells: the direction of the position change."""
        return 1 if self is Side.BUY else -1


class OrderType(StrEnum):
    MARKET = "market"
    LIMIT = "limit"


class TimeInForce(StrEnum):
    DAY = "day"
    GTC = "gtc"
    GTD = "gtd"
    IOC = "ioc"
    FOK = "fok"


class AssetClass(StrEnum):
    EQUITY = "equity"
    FX_SPOT = "fx_spot"
    CRYPTO = "crypto"


class OrderStatus(StrEnum):
    PENDING_COMPLIANCE = "pending_compliance"
    COMPLIANCE_REJECTED = "compliance_rejected"
    PENDING_OVERRIDE = "pending_override"
    PENDING_APPROVAL = "pending_approval"
    APPROVAL_REJECTED = "approval_rejected"
    APPROVAL_EXPIRED = "approval_expired"
    APPROVED = "approved"
    RELEASED = "released"
    WORKING = "working"
    PARTIALLY_FILLED = "partially_filled"
    PENDING_CANCEL = "pending_cancel"
    PENDING_REPLACE = "pending_replace"
    FILLED = "filled"
    CANCELED = "canceled"
    EXPIRED = "expired"
    VENUE_REJECTED = "venue_rejected"
    ALLOCATED = "allocated"
    SETTLEMENT_PENDING = "settlement_pending"
    SETTLED = "settled"
    SETTLEMENT_FAILED = "settlement_failed"


class ComplianceOutcome(StrEnum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"


class ExecType(StrEnum):
    """FIX ExecType (tag 150) values the OMS understands."""

    NEW = "new"
    TRADE = "trade"
    CANCELED = "canceled"
    REPLACED = "replaced"
    REJECTED = "rejected"
    EXPIRED = "expired"
    PENDING_CANCEL = "pending_cancel"
    PENDING_REPLACE = "pending_replace"
    CANCEL_REJECTED = "cancel_rejected"
    # FIX answers a refused cancel/replace with an Order Cancel Reject (CxlRejResponseTo=2);
    # here a report of its own. `cancel_rejected` while only a replace is pending means the same.
    REPLACE_REJECTED = "replace_rejected"
    # FIX ExecType H and G: the venue busts (cancels) or corrects an earlier trade, named by
    # ExecRefID (`exec_ref_id`).
    TRADE_CANCEL = "trade_cancel"
    TRADE_CORRECT = "trade_correct"
    DONE_FOR_DAY = "done_for_day"


class SettlementStatus(StrEnum):
    INSTRUCTED = "instructed"
    CONFIRMED = "confirmed"
    FAILED = "failed"


class AllocationRequest(BaseModel):
    """How much of the block one account asked for."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    account: str = Field(min_length=1, max_length=64)
    quantity: PositiveDecimal


class OrderRequest(BaseModel):
    """What a portfolio manager asks for: the body of `POST /orders`, normalised.

    Cross-field rules are field validators (not one model validator) so that a refusal names
    the field at fault, as the API promises.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    client_order_id: str = Field(
        min_length=1, max_length=64, pattern=CLIENT_ORDER_ID_PATTERN.pattern
    )
    fund: str = Field(min_length=1, max_length=64)
    symbol: str = Field(min_length=1, max_length=32)
    side: Side
    quantity: PositiveDecimal
    order_type: OrderType = OrderType.MARKET
    limit_price: PositiveDecimal | None = Field(default=None, validate_default=True)
    time_in_force: TimeInForce = TimeInForce.DAY
    expire_at: AwareDatetime | None = Field(default=None, validate_default=True)
    allocations: list[AllocationRequest] = Field(default_factory=list, validate_default=True)
    notes: str = Field(default="", max_length=2000)
    # The broker's confirmation that shares can be borrowed for a short sale; the rules decide
    # when one is required. Same shape as an order id: a broker reference, not free text.
    locate_id: str | None = Field(
        default=None, min_length=1, max_length=64, pattern=CLIENT_ORDER_ID_PATTERN.pattern
    )

    @field_validator("limit_price")
    @classmethod
    def _price_matches_type(cls, value: Decimal | None, info: ValidationInfo) -> Decimal | None:
        order_type = info.data.get("order_type")
        if order_type is OrderType.LIMIT and value is None:
            raise ValueError("a limit order needs a limit_price")
        if order_type is OrderType.MARKET and value is not None:
            raise ValueError("a market order takes no limit_price")
        return value

    @field_validator("expire_at")
    @classmethod
    def _expiry_matches_tif(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        time_in_force = info.data.get("time_in_force")
        if time_in_force is TimeInForce.GTD and value is None:
            raise ValueError("a gtd order needs expire_at")
        if time_in_force is not None and time_in_force is not TimeInForce.GTD and value is not None:
            raise ValueError("only gtd orders take expire_at")
        return value

    @field_validator("allocations")
    @classmethod
    def _allocations_cover_quantity(
        cls, value: list[AllocationRequest], info: ValidationInfo
    ) -> list[AllocationRequest]:
        if not value:
            return value
        accounts = [a.account for a in value]
        if len(set(accounts)) != len(accounts):
            raise ValueError("an account appears more than once")
        quantity = info.data.get("quantity")
        total = sum((a.quantity for a in value), Decimal(0))
        if quantity is not None and total != quantity:
            raise ValueError(
                f"allocation quantities sum to {total}, not the order quantity {quantity}"
            )
        return value

    def same_order_as(self, other: OrderRequest) -> bool:
        """Tell whether two requests describe the same order (for idempotent creation).

        Values compare by value, so "100" and "100.0", or one instant in two offsets, are the same.
        """
        return self == other


class Instrument(BaseModel):
    """Reference data for one tradable instrument."""

    model_config = ConfigDict(frozen=True)

    symbol: str
    asset_class: AssetClass
    currency: str
    reference_price: PositiveDecimal
    lot_size: PositiveDecimal = Decimal(1)
    tick_size: PositiveDecimal | None = None


def step_problem(value: Decimal, step: Decimal | None, what: str) -> str | None:
    """Return why `value` is not a whole number of `step`s (a lot, a tick), or None if it is."""
    if step is None or value % step == 0:
        return None
    return f"{what} must be a multiple of {tidy(step)}"


class ComplianceResult(BaseModel):
    """One rule's verdict on one order, with the numbers that produced it."""

    model_config = ConfigDict(frozen=True)

    rule: str
    outcome: ComplianceOutcome
    message: str
    observed: str | None = None
    limit: str | None = None


class ComplianceSnapshot(BaseModel):
    """The data the rules look at, captured once by an activity so evaluation is deterministic."""

    model_config = ConfigDict(frozen=True)

    fund: str
    instrument: Instrument
    restricted_symbols: list[str] = Field(default_factory=list)
    max_order_notional: Decimal | None = None
    warn_order_notional: Decimal | None = None
    taken_at: datetime
    # Valuation for the approval matrix. Optional because snapshots recorded before they were
    # captured must still decode; those valued orders in the instrument's currency.
    fund_currency: str | None = Field(
        default=None, description="The fund's base currency: approval notionals are in it."
    )
    fx_rate: Decimal | None = Field(
        default=None, description="Instrument currency -> fund currency; 1 when they are equal."
    )
    fx_symbol: str | None = Field(
        default=None, description="The FX instrument whose reference price gave fx_rate, if any."
    )


class ApprovalGiven(BaseModel):
    """One level's approval: who gave it, when, and the policy rule that allowed it."""

    model_config = ConfigDict(frozen=True)

    level: str
    user: str
    at: datetime
    comment: str = ""
    policy: list[str] = Field(default_factory=list)
    roles: list[str] = Field(default_factory=list, description="The approver's roles in the fund.")
    policy_version: str = Field(default="", description="sha256 of the policy that allowed it.")


class ApprovalState(BaseModel):
    required: list[str] = Field(default_factory=list)
    given: list[ApprovalGiven] = Field(default_factory=list)
    rules: list[str] = Field(
        default_factory=list, description="The approval matrix's rules that decided `required`."
    )
    matrix_version: str = Field(default="", description="sha256 of the approval matrix used.")
    notional: Decimal | None = Field(
        default=None, description="What the matrix valued: at the reference price, in `currency`."
    )
    currency: str | None = None
    by_policy: bool = Field(
        default=False, description="No person needed: approved by the fund's matrix."
    )

    @property
    def current_level(self) -> str | None:
        """Return the next level still to approve, or None when every level has approved."""
        if len(self.given) < len(self.required):
            return self.required[len(self.given)]
        return None


class Execution(BaseModel):
    """One execution report as applied to the order."""

    model_config = ConfigDict(frozen=True)

    exec_id: str
    exec_type: ExecType
    last_quantity: Decimal = Decimal(0)
    last_price: Decimal | None = None
    cumulative_quantity: Decimal = Decimal(0)
    leaves_quantity: Decimal = Decimal(0)
    average_price: Decimal | None = None
    text: str = ""
    transact_time: datetime
    received_at: datetime
    reported_by: str = ""
    exec_ref_id: str | None = Field(
        default=None, description="A bust or correction: the exec_id of the trade it changes."
    )


class Allocation(BaseModel):
    """The share of the executed block booked to one account."""

    model_config = ConfigDict(frozen=True)

    account: str
    requested_quantity: Decimal
    quantity: Decimal
    price: Decimal


class SettlementInstruction(BaseModel):
    """What the back office is told to settle for one allocation."""

    model_config = ConfigDict(frozen=True)

    settlement_id: str
    order_id: str
    fund: str
    account: str
    symbol: str
    side: Side
    quantity: Decimal
    price: Decimal
    gross_amount: Decimal
    currency: str
    trade_date: date
    settlement_date: date
    status: SettlementStatus = SettlementStatus.INSTRUCTED
    status_reason: str = ""
    status_at: datetime | None = None


class OrderState(BaseModel):
    """The live order as the workflow holds it and `GET /orders/{id}` shows it."""

    order_id: str
    client_order_id: str
    fund: str
    symbol: str
    side: Side
    quantity: Decimal
    order_type: OrderType
    limit_price: Decimal | None
    time_in_force: TimeInForce
    expire_at: datetime | None = None
    notes: str = ""
    requested_allocations: list[AllocationRequest] = Field(default_factory=list)
    status: OrderStatus = OrderStatus.PENDING_COMPLIANCE
    status_actor: str = Field(default="", description="Who caused the latest status change.")
    created_by: str
    created_at: datetime
    updated_at: datetime
    venue: str | None = None
    notional: Decimal | None = None
    currency: str | None = None
    compliance: list[ComplianceResult] = Field(default_factory=list)
    override: dict[str, Any] | None = None
    approvals: ApprovalState = Field(default_factory=ApprovalState)
    filled_quantity: Decimal = Decimal(0)
    leaves_quantity: Decimal = Decimal(0)
    average_price: Decimal | None = None
    executions: list[Execution] = Field(default_factory=list)
    flags: list[str] = Field(default_factory=list)
    allocations: list[Allocation] = Field(default_factory=list)
    settlements: list[SettlementInstruction] = Field(default_factory=list)
    status_reason: str = Field(
        default="", description="Why the order has its current status, if said."
    )
    version: int = 1

    def request(self) -> OrderRequest:
        """Return the order request this order was created from."""
        return OrderRequest(
            client_order_id=self.client_order_id,
            fund=self.fund,
            symbol=self.symbol,
            side=self.side,
            quantity=self.quantity,
            order_type=self.order_type,
            limit_price=self.limit_price,
            time_in_force=self.time_in_force,
            expire_at=self.expire_at,
            allocations=self.requested_allocations,
            notes=self.notes,
        )


def tidy(value: Decimal) -> Decimal:
    """Drop trailing zeros that storage adds (1.000000 -> 1) without switching to exponent form."""
    _, digits, exponent = value.as_tuple()
    # Already tidy, as most values are (a big fund's check tidies tens of thousands): a whole
    # number without exponent, or a fraction whose last digit is not a zero, within the
    # context's precision (`normalize` rounds longer ones, and they keep that behaviour).
    if len(digits) <= getcontext().prec and (
        exponent == 0 or (isinstance(exponent, int) and exponent < 0 and digits[-1] != 0)
    ):
        return value
    return Decimal(format(value.normalize(), "f"))
