"""The tamper-evident audit log: every order event, chained by hash, one chain per fund.

Rows are only ever appended (in the projection's transaction, for the events it inserts), never
updated or deleted by the application. A row's hash covers its content and the previous row's
hash; the head of each chain is kept in a table of its own. `verify` recomputes every chain and
names the first row that does not match, and a head that does not match the chain's end (rows
removed from the end).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, Update, and_, bindparam, func, or_, update
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from db.tables import AuditHeadRow, AuditRow, core_insert

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


# The statements an append runs, built once per backend (Core: the projection appends often).
_HEADS = AuditHeadRow.__table__  # type: ignore[attr-defined]


@functools.cache
def _head_genesis(dialect: str) -> Any:
    return core_insert(dialect, AuditHeadRow).on_conflict_do_nothing()


@functools.cache
def _head_locked(dialect: str) -> Select[Any]:
    query = sa_select(_HEADS.c.position, _HEADS.c.hash).where(
        _HEADS.c.fund == bindparam("head_fund")
    )
    return query.with_for_update() if dialect == "postgresql" else query


_HEAD_MOVE: Update = (
    update(_HEADS)
    .where(_HEADS.c.fund == bindparam("head_fund"))
    .values(position=bindparam("new_position"), hash=bindparam("new_hash"))
)


@functools.cache
def _rows_insert(dialect: str) -> Any:
    return core_insert(dialect, AuditRow)


def _locked_head(session: Session, fund: str) -> tuple[int, str]:
    """Return the fund's chain head (position, hash), locked for this transaction.

    A fund's first append creates its head at the genesis.
    """
    dialect = session.get_bind().dialect.name
    session.execute(_head_genesis(dialect), {"fund": fund, "position": 0, "hash": GENESIS})
    position, digest = session.execute(_head_locked(dialect), {"head_fund": fund}).one()
    return int(position), str(digest)


def append(session: Session, fund: str, entries: Sequence[AuditEntry]) -> None:
    """Append `entries` to the fund's chain, in this transaction (the caller commits).

    Two writers of one fund are serialised by the head's row lock (PostgreSQL) or by SQLite's
    single writer; a stale position fails on the primary key and the caller's retry appends
    after the real head.
    """
    if not entries:
        return
    position, previous = _locked_head(session, fund)
    rows = []
    for entry in entries:
        position += 1
        digest = chain_hash(previous, fund, position, entry)
        rows.append(
            {
                "fund": fund,
                "position": position,
                "order_id": entry.order_id,
                "seq": entry.seq,
                "kind": entry.kind,
                "actor": entry.actor,
                "at": entry.at,
                "status": entry.status,
                "reason": entry.reason,
                "details": entry.details,
                "prev_hash": previous,
                "hash": digest,
            }
        )
        previous = digest
    session.execute(_rows_insert(session.get_bind().dialect.name), rows)
    session.execute(_HEAD_MOVE, {"head_fund": fund, "new_position": position, "new_hash": previous})


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
    walked = walk_chain(fund, rows)
    if isinstance(walked, ChainProblem):
        return walked
    last, previous = walked
    if head is None:
        return ChainProblem(fund, last, "the chain has no recorded head") if last else None
    if (head.position, head.hash) != (last, previous):
        return ChainProblem(
            fund,
            last + 1 if head.position > last else head.position,
            f"the recorded head is row {head.position}; the chain ends at row {last}",
        )
    return None


def walk_chain(
    fund: str, rows: Iterable[AuditRow], *, previous: str = GENESIS, first: int = 1
) -> ChainProblem | tuple[int, str]:
    """Recompute a stretch of one fund's chain (rows in position order); no database needed.

    The stretch starts at position `first`, after a row whose hash is `previous` (the genesis
    for a whole chain). Returns the first problem, or the stretch's last position and hash.
    """
    expected = first
    for row in rows:
        if row.position != expected:
            return ChainProblem(fund, expected, f"row {expected} is missing")
        if row.prev_hash != previous:
            return ChainProblem(fund, row.position, "it does not follow the row before it")
        if chain_hash(previous, fund, row.position, row) != row.hash:
            return ChainProblem(fund, row.position, "its content does not match its hash")
        previous, expected = row.hash, expected + 1
    return expected - 1, previous


# ---- archives: JSON Lines, one row a line, that verify on their own ----------------------------


def row_to_json(row: AuditRow) -> dict[str, Any]:
    """Return the row as one line of an archive: every field its hash covers, and the hashes."""
    return {
        "fund": row.fund,
        "position": row.position,
        "order_id": row.order_id,
        "seq": row.seq,
        "kind": row.kind,
        "actor": row.actor,
        "at": row.at.isoformat(timespec="microseconds"),
        "status": row.status,
        "reason": row.reason,
        "details": row.details,
        "prev_hash": row.prev_hash,
        "hash": row.hash,
    }


def row_from_json(line: dict[str, Any]) -> AuditRow:
    """Return the row an archive's line holds (the inverse of `row_to_json`).

    Raises:
        ValueError: the line is not an audit row (a field missing or of the wrong kind).
    """
    try:
        at = datetime.fromisoformat(str(line["at"]))
        row = AuditRow(
            fund=str(line["fund"]),
            position=int(line["position"]),
            order_id=str(line["order_id"]),
            seq=int(line["seq"]),
            kind=str(line["kind"]),
            actor=str(line["actor"]),
            at=at,
            status=str(line["status"]),
            reason=str(line["reason"]),
            details=dict(line["details"]),
            prev_hash=str(line["prev_hash"]),
            hash=str(line["hash"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not an audit row: {exc}") from exc
    if at.tzinfo is None:
        raise ValueError("not an audit row: its time carries no offset")
    return row


def verify_archive(rows: Iterable[AuditRow]) -> list[ChainProblem]:
    """Verify exported rows with nothing but themselves: each fund's stretch, in position order.

    A stretch must be whole (consecutive positions), each row must follow the one before it and
    match its own hash. Its first row's `prev_hash` anchors it: the genesis when it starts at
    row 1, else the last hash of the archive before it (or of the live chain), to compare.
    """
    by_fund: dict[str, list[AuditRow]] = {}
    for row in rows:
        by_fund.setdefault(row.fund, []).append(row)
    problems = []
    for fund in sorted(by_fund):
        stretch = sorted(by_fund[fund], key=lambda r: r.position)
        start = stretch[0]
        if start.position == 1 and start.prev_hash != GENESIS:
            problems.append(
                ChainProblem(fund, 1, "the chain's first row does not follow the genesis")
            )
            continue
        walked = walk_chain(fund, stretch, previous=start.prev_hash, first=start.position)
        if isinstance(walked, ChainProblem):
            problems.append(walked)
    return problems


def export_rows(
    session: Session, start: datetime, end: datetime, funds: Iterable[str] | None = None
) -> Iterator[AuditRow]:
    """Yield each fund's chain from its first row at or after `start` to its last before `end`.

    A fund's stretch is whole (every position between), so it verifies on its own; where
    projections of two orders interleaved, a row or two just outside the window comes along.
    """
    wanted = set(funds) if funds is not None else None
    in_window = and_(col(AuditRow.at) >= start, col(AuditRow.at) < end)
    bounds = session.execute(
        sa_select(
            col(AuditRow.fund), func.min(col(AuditRow.position)), func.max(col(AuditRow.position))
        )
        .where(in_window)
        .group_by(col(AuditRow.fund))
        .order_by(col(AuditRow.fund))
    ).all()
    for fund, first, last in bounds:
        if wanted is not None and fund not in wanted:
            continue
        yield from session.exec(
            select(AuditRow)
            .where(
                AuditRow.fund == fund,
                col(AuditRow.position) >= first,
                col(AuditRow.position) <= last,
            )
            .order_by(col(AuditRow.position))
        )


# ---- search: GET /audit ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditFilter:
    """What `search` looks for: rows of these funds, in [start, end), by an actor, of an order."""

    funds: Sequence[str]
    start: datetime | None = None
    end: datetime | None = None
    actor: str | None = None
    order_id: str | None = None


def encode_cursor(row: AuditRow) -> str:
    raw = json.dumps([row.at.isoformat(), row.fund, row.position]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str, int]:
    """Decode a paging cursor; raises ValueError when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at_text, fund, position = json.loads(raw)
        at = datetime.fromisoformat(at_text)
        if not isinstance(fund, str) or not isinstance(position, int):
            raise TypeError("not a fund and a position")
    except Exception as exc:
        raise ValueError("cursor is not valid") from exc
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("cursor is not valid")
    return at, fund, position


def search(
    session: Session, flt: AuditFilter, limit: int, cursor: str | None = None
) -> list[AuditRow]:
    """Return up to `limit` rows matching the filter, newest first, after `cursor`.

    Newest first by the event's time, then fund and position, so the order is total and a page
    boundary never drops or repeats a row.

    Raises:
        ValueError: the cursor is not one of ours.
    """
    if not flt.funds:
        return []
    query = select(AuditRow).where(col(AuditRow.fund).in_(list(flt.funds)))
    if flt.start is not None:
        query = query.where(col(AuditRow.at) >= flt.start)
    if flt.end is not None:
        query = query.where(col(AuditRow.at) < flt.end)
    if flt.actor:
        query = query.where(AuditRow.actor == flt.actor)
    if flt.order_id:
        query = query.where(AuditRow.order_id == flt.order_id)
    if cursor:
        at, fund, position = decode_cursor(cursor)
        query = query.where(
            or_(
                col(AuditRow.at) < at,
                and_(col(AuditRow.at) == at, col(AuditRow.fund) < fund),
                and_(
                    col(AuditRow.at) == at,
                    col(AuditRow.fund) == fund,
                    col(AuditRow.position) < position,
                ),
            )
        )
    query = query.order_by(
        col(AuditRow.at).desc(), col(AuditRow.fund).desc(), col(AuditRow.position).desc()
    ).limit(limit)
    return list(session.exec(query))
