"""The tamper-evident audit log: chains verify, and any alteration is found and named."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlmodel import select

from db import audit, queries
from db.engine import SessionFactory
from db.tables import AuditRow
from domain.models import OrderStatus, Side
from domain.order import OrderEventRecord, OrderProjection, OrderSummary
from domain.status import OrderEvent


def entries(order_id: str, count: int) -> list[audit.AuditEntry]:
    start = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
    return [
        audit.AuditEntry(
            order_id=order_id,
            seq=seq,
            kind="approval_given",
            actor=f"user-{seq}",
            at=start + timedelta(milliseconds=seq * 1001),
            status="pending_approval",
            reason="",
            details={"level": "desk_head", "n": seq, "nested": {"b": [1, 2], "a": "x"}},
        )
        for seq in range(1, count + 1)
    ]


def chain_of(sessions: SessionFactory, rows: int = 6) -> str:
    """Append `rows` entries to a fund of its own, over two transactions; return the fund."""
    fund = f"fund-audit-{uuid.uuid4().hex[:8]}"
    with sessions() as session:
        audit.append(session, fund, entries("ord_a", rows // 2))
        session.commit()
    with sessions() as session:
        audit.append(session, fund, entries("ord_b", rows - rows // 2))
        session.commit()
    return fund


def problems(sessions: SessionFactory, fund: str) -> list[tuple[int, str]]:
    with sessions() as session:
        return [(p.position, p.problem) for p in audit.verify(session, [fund])]


def execute(sessions: SessionFactory, sql: str, **params: object) -> None:
    with sessions() as session:
        session.execute(text(sql), params)
        session.commit()


def test_a_chain_verifies(sessions: SessionFactory) -> None:
    fund = chain_of(sessions)
    assert problems(sessions, fund) == []


def test_an_altered_row_is_named(sessions: SessionFactory) -> None:
    fund = chain_of(sessions)
    execute(
        sessions,
        "UPDATE audit_log SET actor = 'mallory' WHERE fund = :fund AND position = 4",
        fund=fund,
    )
    assert problems(sessions, fund) == [(4, "its content does not match its hash")]


def test_an_altered_row_with_its_hash_recomputed_breaks_the_next(sessions: SessionFactory) -> None:
    fund = chain_of(sessions)
    with sessions() as session:
        row = session.get(AuditRow, (fund, 2))
        assert row is not None
        row.reason = "rewritten"
        row.hash = audit.chain_hash(row.prev_hash, fund, 2, row)
        session.add(row)
        session.commit()
    assert problems(sessions, fund) == [(3, "it does not follow the row before it")]


def test_a_deleted_row_is_named(sessions: SessionFactory) -> None:
    fund = chain_of(sessions)
    execute(sessions, "DELETE FROM audit_log WHERE fund = :fund AND position = 3", fund=fund)
    assert problems(sessions, fund) == [(3, "row 3 is missing")]


def test_removing_the_last_rows_is_detected_by_the_head(sessions: SessionFactory) -> None:
    fund = chain_of(sessions)
    execute(sessions, "DELETE FROM audit_log WHERE fund = :fund AND position >= 5", fund=fund)
    assert problems(sessions, fund) == [(5, "the recorded head is row 6; the chain ends at row 4")]


def test_reordered_rows_are_detected(sessions: SessionFactory) -> None:
    fund = chain_of(sessions)
    execute(
        sessions,
        "UPDATE audit_log SET position = 100 WHERE fund = :fund AND position = 2",
        fund=fund,
    )
    execute(
        sessions, "UPDATE audit_log SET position = 2 WHERE fund = :fund AND position = 3", fund=fund
    )
    execute(
        sessions,
        "UPDATE audit_log SET position = 3 WHERE fund = :fund AND position = 100",
        fund=fund,
    )
    found = problems(sessions, fund)
    assert found and found[0][0] == 2


def test_a_projection_repeated_appends_nothing(sessions: SessionFactory) -> None:
    order_id = f"ord_{uuid.uuid4().hex[:20]}"
    fund = f"fund-audit-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    events = [
        OrderEventRecord(
            seq=1,
            at=now,
            kind=OrderEvent.ORDER_CREATED,
            actor="alice",
            status=OrderStatus.PENDING_COMPLIANCE,
            details={"x": 1},
        ),
        OrderEventRecord(
            seq=2,
            at=now,
            kind=OrderEvent.COMPLIANCE_PASSED,
            actor="system",
            status=OrderStatus.PENDING_APPROVAL,
        ),
    ]
    summary = OrderSummary(
        order_id=order_id,
        client_order_id="c",
        fund=fund,
        symbol="AAPL",
        side=Side.BUY,
        quantity=1,
        order_type="market",
        limit_price=None,
        time_in_force="gtc",
        status=OrderStatus.PENDING_APPROVAL,
        created_by="alice",
        created_at=now,
        updated_at=now,
        notional=None,
        currency=None,
        approval_level=None,
        approved_by="",
        filled_quantity=0,
        average_price=None,
        venue=None,
        version=2,
        workflow_type="OrderWorkflowV2",
    )
    projection = OrderProjection(summary=summary, events=events)
    for _ in range(2):
        with sessions() as session:
            queries.project_order(session, projection)
    with sessions() as session:
        rows = session.exec(select(AuditRow).where(AuditRow.fund == fund)).all()
    assert [(r.order_id, r.seq, r.kind) for r in rows] == [
        (order_id, 1, "order_created"),
        (order_id, 2, "compliance_passed"),
    ]
    assert problems(sessions, fund) == []
