"""The tamper-evident audit log: every order event, chained by hash, one chain per fund.

Rows are only ever appended (in the projection's transaction, for the events it inserts), never
updated or deleted by the application. A row's hash covers its content and the previous row's
hash; the head of each chain is kept in a table of its own. `verify` recomputes every chain and
names the first row that does not match, and a head that does not match the chain's end (rows
removed from the end).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from db.tables import AuditHeadRow, AuditRow, dialect_insert

GENESIS = "0" * 64


@dataclass(frozen=True)
class AuditEntry:
    """An order event as the audit chain records it."""

    order_id: str
    seq: int
    kind: str
    actor: str
    at: datetime
    status: str
    reason: str
    details: dict[str, Any]


def _content(fund: str, position: int, entry: AuditEntry | AuditRow) -> str:
    """Return the canonical text a row's hash covers (stable across database round trips)."""
    return json.dumps(
        {
            "fund": fund,
            "position": position,
            "order_id": entry.order_id,
            "seq": entry.seq,
            "kind": entry.kind,
            "actor": entry.actor,
            "at": entry.at.isoformat(timespec="microseconds"),
            "status": entry.status,
            "reason": entry.reason,
            "details": entry.details,
        },
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )


def chain_hash(prev_hash: str, fund: str, position: int, entry: AuditEntry | AuditRow) -> str:
    return hashlib.sha256((prev_hash + _content(fund, position, entry)).encode()).hexdigest()


def _locked_head(session: Session, fund: str) -> AuditHeadRow:
    """Return the fund's chain head, locked for this transaction (created at the genesis)."""
    session.execute(
        dialect_insert(session, AuditHeadRow)
        .values(fund=fund, position=0, hash=GENESIS)
        .on_conflict_do_nothing()
    )
    query = sa_select(AuditHeadRow).where(col(AuditHeadRow.fund) == fund)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    head: AuditHeadRow = session.execute(query).scalar_one()
    return head


def append(session: Session, fund: str, entries: Sequence[AuditEntry]) -> None:
    """Append `entries` to the fund's chain, in this transaction (the caller commits).

    Two writers of one fund are serialised by the head's row lock (PostgreSQL) or by SQLite's
    single writer; a stale position fails on the primary key and the caller's retry appends
    after the real head.
    """
    if not entries:
        return
    head = _locked_head(session, fund)
    position, previous = head.position, head.hash
    rows = []
    for entry in entries:
        position += 1
        digest = chain_hash(previous, fund, position, entry)
        rows.append(
            AuditRow(
                fund=fund,
                position=position,
                order_id=entry.order_id,
                seq=entry.seq,
                kind=entry.kind,
                actor=entry.actor,
                at=entry.at,
                status=entry.status,
                reason=entry.reason,
                details=entry.details,
                prev_hash=previous,
                hash=digest,
            )
        )
        previous = digest
    session.add_all(rows)
    head.position, head.hash = position, previous
    session.add(head)


@dataclass(frozen=True)
class ChainProblem:
    """Where a fund's chain stops matching, and how."""

    fund: str
    position: int
    problem: str


def verify(session: Session, funds: Iterable[str] | None = None) -> list[ChainProblem]:
    """Recompute each fund's chain; return the first problem of each chain that has one."""
    heads = {h.fund: h for h in session.exec(select(AuditHeadRow))}
    wanted = sorted(heads if funds is None else funds)
    problems = []
    for fund in wanted:
        problem = _verify_chain(session, fund, heads.get(fund))
        if problem is not None:
            problems.append(problem)
    return problems


def _verify_chain(session: Session, fund: str, head: AuditHeadRow | None) -> ChainProblem | None:
    rows = session.exec(
        select(AuditRow).where(AuditRow.fund == fund).order_by(col(AuditRow.position))
    )
    previous, expected = GENESIS, 1
    for row in rows:
        if row.position != expected:
            return ChainProblem(fund, expected, f"row {expected} is missing")
        if row.prev_hash != previous:
            return ChainProblem(fund, row.position, "it does not follow the row before it")
        if chain_hash(previous, fund, row.position, row) != row.hash:
            return ChainProblem(fund, row.position, "its content does not match its hash")
        previous, expected = row.hash, expected + 1
    last = expected - 1
    if head is None:
        return ChainProblem(fund, last, "the chain has no recorded head") if last else None
    if (head.position, head.hash) != (last, previous):
        return ChainProblem(
            fund,
            last + 1 if head.position > last else head.position,
            f"the recorded head is row {head.position}; the chain ends at row {last}",
        )
    return None
