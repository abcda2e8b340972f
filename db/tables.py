"""SQLModel tables of the read model and the reference data."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Dialect, Numeric, String
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, Session, SQLModel


class ExactDecimal(TypeDecorator[Decimal]):
    """Decimals that come back exactly as written, on every backend.

    PostgreSQL keeps NUMERIC(38, 12) exactly: 38 digits, 12 after the point, enough for crypto
    fractions and large blocks. SQLite has no decimal type and would store a float
    (230665.275 -> 230665.274999999994), so there the value is kept as its decimal text.
    """

    impl = Numeric(38, 12)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(64))
        return dialect.type_descriptor(Numeric(38, 12))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return format(Decimal(value), "f")
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return Decimal(str(value))


_NUMERIC = ExactDecimal()


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend (SQLite keeps no offset, so restore it)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Field() is typed Any, like the attribute default it stands for; so are these.
def _decimal(nullable: bool = False, default: Decimal | None = None) -> Any:
    """A column of exact decimals."""
    return Field(default=default, sa_column=Column(_NUMERIC, nullable=nullable))


def _timestamp(nullable: bool = False) -> Any:
    """A column of timezone-aware UTC timestamps."""
    return Field(default=None, sa_column=Column(UtcDateTime(), nullable=nullable))


def dialect_insert(session: Session, table: type[SQLModel]) -> Any:
    """Return an INSERT for the session's backend: both know ON CONFLICT (typed Any, like it)."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(table)


def core_insert(dialect: str, table: type[SQLModel]) -> Any:
    """Return a Core INSERT of `table` for the backend `dialect`, to build once and reuse.

    Executed with its values as parameters (not `.values()`), one statement compiles once per
    process and skips the ORM's bulk path: the projection writes through these on every event.
    """
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(table.__table__)  # type: ignore[attr-defined]


class FundRow(SQLModel, table=True):
    __tablename__ = "funds"

    fund: str = Field(primary_key=True, max_length=64)
    name: str
    base_currency: str = "USD"
    default_account: str = Field(max_length=64)
    # In the base currency. Nullable so that an older read model gains them in place; a fund
    # without them cannot be checked (PortfolioActivities refuses its orders).
    nav: Decimal | None = _decimal(nullable=True)
    cash: Decimal | None = _decimal(nullable=True)


class AccountRow(SQLModel, table=True):
    __tablename__ = "accounts"

    account: str = Field(primary_key=True, max_length=64)
    fund: str = Field(foreign_key="funds.fund", index=True, max_length=64)
    name: str


class InstrumentRow(SQLModel, table=True):
    __tablename__ = "instruments"

    symbol: str = Field(primary_key=True, max_length=32)
    name: str
    asset_class: str = Field(max_length=16)
    currency: str = Field(max_length=8)
    reference_price: Decimal = _decimal()
    lot_size: Decimal = _decimal(default=Decimal(1))
    # Added later: defaults (or nullable) so that an older read model gains them in place.
    issuer: str = Field(default="", max_length=128)
    sector: str = Field(default="", max_length=64)
    # A `markets.market`; None: hours unknown. No foreign key, so the column can be added to an
    # existing table on SQLite.
    market: str | None = Field(default=None, max_length=16)
    # The smallest price step a limit may take (None: any price the amount bounds allow).
    tick_size: Decimal | None = _decimal(nullable=True)


class MarketRow(SQLModel, table=True):
    """When a market trades: local opening hours on its trading days (holidays are not kept)."""

    __tablename__ = "markets"

    market: str = Field(primary_key=True, max_length=16)
    timezone: str = Field(max_length=64, description="IANA time zone, e.g. America/New_York.")
    opens: time
    closes: time
    weekdays: list[int] = Field(
        default_factory=lambda: [0, 1, 2, 3, 4],
        sa_column=Column(JSON, nullable=False),
        description="Trading days, Monday 0.",
    )
    always_open: bool = False


class HoldingSodRow(SQLModel, table=True):
    """What an account held at the start of the day, before any allocation the OMS has booked.

    A fund's holdings are these plus its positions (the fold of the allocations): see
    `db.queries.fund_holdings`.
    """

    __tablename__ = "holdings_sod"

    account: str = Field(primary_key=True, max_length=64)
    symbol: str = Field(primary_key=True, max_length=32)
    fund: str = Field(index=True, max_length=64)
    quantity: Decimal = _decimal()


class ComplianceReservationRow(SQLModel, table=True):
    """What an order reserved when its pre-trade check passed its fund's lock.

    Counted against the fund's limits while the order is open and not yet in the positions
    (`domain.portfolio.reserved_quantity`), so two orders cannot jointly breach a limit.
    `exposure` is in the fund's base currency.
    """

    __tablename__ = "compliance_reservations"

    order_id: str = Field(primary_key=True, max_length=64)
    fund: str = Field(index=True, max_length=64)
    symbol: str = Field(max_length=32)
    side: str = Field(max_length=16)
    quantity: Decimal = _decimal()
    exposure: Decimal = _decimal()
    created_by: str = Field(max_length=64)
    created_at: datetime = _timestamp()


class OrderRow(SQLModel, table=True):
    """The order as lists and searches see it; the live truth is the workflow."""

    __tablename__ = "orders"

    order_id: str = Field(primary_key=True, max_length=64)
    client_order_id: str = Field(max_length=64)
    fund: str = Field(index=True, max_length=64)
    symbol: str = Field(index=True, max_length=32)
    side: str = Field(max_length=16)
    quantity: Decimal = _decimal()
    order_type: str = Field(max_length=16)
    limit_price: Decimal | None = _decimal(nullable=True)
    time_in_force: str = Field(max_length=8)
    status: str = Field(index=True, max_length=32)
    created_by: str = Field(index=True, max_length=64)
    created_at: datetime = _timestamp()
    updated_at: datetime = _timestamp()
    notional: Decimal | None = _decimal(nullable=True)
    currency: str | None = Field(default=None, max_length=8)
    approval_level: str | None = Field(default=None, index=True, max_length=32)
    approved_by: str = Field(default="", description="Comma-separated users who approved a level.")
    filled_quantity: Decimal = _decimal(default=Decimal(0))
    average_price: Decimal | None = _decimal(nullable=True)
    venue: str | None = Field(default=None, max_length=32)
    version: int = 0
    # The Temporal workflow type that runs the order, so the API routes without asking Temporal.
    workflow_type: str = Field(default="OrderWorkflow", max_length=32)
    # The order as it closed (v2): what `GET /orders/{id}` answers from then on.
    final_state: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    # What the approvals inbox shows. Nullable (or with a default) so that an older read model
    # gains them in place (db.engine._add_missing_columns); rows written since fill them all.
    approvals_required: list[str] | None = Field(
        default=None, sa_column=Column(JSON, nullable=True)
    )
    approvals_given: list[dict[str, Any]] | None = Field(
        default=None, sa_column=Column(JSON, nullable=True)
    )
    approval_waiting_since: datetime | None = _timestamp(nullable=True)
    approval_escalated: bool = False
    approval_expire_at: datetime | None = _timestamp(nullable=True)
    compliance_outcome: str | None = Field(default=None, max_length=8)
    compliance_results: list[dict[str, Any]] | None = Field(
        default=None, sa_column=Column(JSON, nullable=True)
    )
    # An amend of a working order that waits on `approval_level`: its terms beside the current.
    amendment: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))


class RefusedActionRow(SQLModel, table=True):
    """An action on an order that was refused: by the API's policy check or by the order itself.

    A refused Update leaves no workflow history (its validator refused it), so compliance reads
    refused attempts here.
    """

    __tablename__ = "refused_actions"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = _timestamp()
    order_id: str = Field(index=True, max_length=64)
    fund: str = Field(max_length=64)
    user: str = Field(max_length=64)
    action: str = Field(max_length=32)
    status: int
    code: str = Field(max_length=32)
    message: str = Field(max_length=500)
    via: str = Field(default="api", max_length=16)


class OrderEventRow(SQLModel, table=True):
    """One entry of an order's event log: the audit timeline reads these."""

    __tablename__ = "order_events"

    order_id: str = Field(primary_key=True, max_length=64)
    seq: int = Field(primary_key=True)
    fund: str = Field(index=True, max_length=64)
    at: datetime = _timestamp()
    kind: str = Field(max_length=32)
    actor: str = Field(max_length=64)
    status: str = Field(max_length=32)
    reason: str = ""
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class ExecutionRow(SQLModel, table=True):
    __tablename__ = "executions"

    order_id: str = Field(primary_key=True, max_length=64)
    exec_id: str = Field(primary_key=True, max_length=128)
    fund: str = Field(index=True, max_length=64)
    exec_type: str = Field(max_length=32)
    last_quantity: Decimal = _decimal()
    last_price: Decimal | None = _decimal(nullable=True)
    cumulative_quantity: Decimal = _decimal()
    average_price: Decimal | None = _decimal(nullable=True)
    transact_time: datetime = _timestamp()
    # A bust or correction (trade_cancel, trade_correct): the exec_id of the trade it changes.
    exec_ref_id: str | None = Field(default=None, max_length=128)


class AllocationRow(SQLModel, table=True):
    __tablename__ = "allocations"

    order_id: str = Field(primary_key=True, max_length=64)
    account: str = Field(primary_key=True, max_length=64)
    fund: str = Field(index=True, max_length=64)
    symbol: str = Field(max_length=32)
    side: str = Field(max_length=16)
    quantity: Decimal = _decimal()
    price: Decimal = _decimal()
    booked_at: datetime = _timestamp()


class PositionRow(SQLModel, table=True):
    """Net position per account and instrument: its allocations folded in booking-time order."""

    __tablename__ = "positions"

    fund: str = Field(index=True, max_length=64)
    account: str = Field(primary_key=True, max_length=64)
    symbol: str = Field(primary_key=True, max_length=32)
    quantity: Decimal = _decimal()
    average_cost: Decimal = _decimal()
    cash_flow: Decimal = _decimal(default=Decimal(0))
    updated_at: datetime = _timestamp()


class SettlementRow(SQLModel, table=True):
    __tablename__ = "settlements"

    settlement_id: str = Field(primary_key=True, max_length=160)
    order_id: str = Field(index=True, max_length=64)
    fund: str = Field(index=True, max_length=64)
    account: str = Field(max_length=64)
    symbol: str = Field(max_length=32)
    side: str = Field(max_length=16)
    quantity: Decimal = _decimal()
    price: Decimal = _decimal()
    gross_amount: Decimal = _decimal()
    currency: str = Field(max_length=8)
    trade_date: date
    settlement_date: date = Field(index=True)
    status: str = Field(index=True, max_length=16)
    status_reason: str = ""
    instructed_at: datetime = _timestamp()
    status_at: datetime | None = _timestamp(nullable=True)


# Scope of a kill switch that covers every fund.
FIRM_WIDE_SCOPE = "*"


class KillSwitchRow(SQLModel, table=True):
    """A kill switch for one fund, or for the firm (scope "*"), as it stands now.

    While engaged, no order in its scope is created or released. A durable row rather than a
    control workflow: the API reads it on every create and release (one primary-key lookup),
    and it outlives a restart of anything, Temporal included. Lifting keeps who engaged it last
    and why; `kill_switch_events` holds every change with its author.
    """

    __tablename__ = "kill_switches"

    scope: str = Field(primary_key=True, max_length=64)
    engaged: bool = Field(default=False, index=True)
    engaged_by: str = Field(max_length=64)
    reason: str = Field(max_length=2000)
    engaged_at: datetime = _timestamp()
    updated_at: datetime = _timestamp()


class KillSwitchEventRow(SQLModel, table=True):
    """One change of a kill switch (engaged, engaged again, lifted): the audit trail."""

    __tablename__ = "kill_switch_events"

    id: int | None = Field(default=None, primary_key=True)
    scope: str = Field(index=True, max_length=64)
    engaged: bool
    by: str = Field(max_length=64)
    reason: str = Field(max_length=2000)
    at: datetime = _timestamp()


class AuditRow(SQLModel, table=True):
    """One order event in the fund's tamper-evident audit chain (appended only, never changed).

    Each row carries the hash of the previous row of its fund's chain and its own hash over its
    content and that previous hash, so altering, deleting or reordering any row breaks the chain
    from there on; the chain's head is kept apart (`AuditHeadRow`), so removing the last rows is
    detected too.
    """

    __tablename__ = "audit_log"

    fund: str = Field(primary_key=True, max_length=64)
    position: int = Field(primary_key=True)
    order_id: str = Field(index=True, max_length=64)
    seq: int
    kind: str = Field(max_length=48)
    actor: str = Field(max_length=64)
    at: datetime = _timestamp()
    status: str = Field(max_length=32)
    reason: str = ""
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class AuditHeadRow(SQLModel, table=True):
    """Where each fund's audit chain ends: its last position and hash."""

    __tablename__ = "audit_heads"

    fund: str = Field(primary_key=True, max_length=64)
    position: int
    hash: str = Field(max_length=64)
