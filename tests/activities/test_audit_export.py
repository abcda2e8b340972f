"""`oms audit export`: JSON Lines of a period's audit rows that match the rows and verify alone."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

import cli
from db import audit
from db.engine import SessionFactory
from db.tables import AuditRow

START = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
# Seconds after START of each position's event: projections of two orders interleave, so a
# fund's chain is not in time order (rows 3, 5 and 7 are in [3 s, 6 s); 4 and 6 are not).
SECONDS = [0, 1, 3, 2, 4, 6, 5, 7]


def chain(sessions: SessionFactory) -> str:
    """Append one row per entry of SECONDS to a fund of its own; return the fund."""
    fund = f"fund-export-{uuid.uuid4().hex[:8]}"
    for position, seconds in enumerate(SECONDS, start=1):
        entry = audit.AuditEntry(
            order_id=f"ord_{'ab'[position % 2] * 20}",
            seq=position,
            kind="approval_given",
            actor=f"user-{position}",
            at=START + timedelta(seconds=seconds, microseconds=position),
            status="pending_approval",
            reason="why not" if position == 4 else "",
            details={"level": "desk_head", "amount": "1000.50", "nested": {"b": [1, 2], "a": None}},
        )
        with sessions() as session:
            audit.append(session, fund, [entry])
            session.commit()
    return fund


def export(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    database_url: str,
    *args: str,
) -> tuple[int, list[dict[str, Any]]]:
    monkeypatch.setenv("OMS_DATABASE_URL", database_url)
    code = cli.main(["audit", "export", *args])
    out = capsys.readouterr().out
    return code, [json.loads(line) for line in out.splitlines()]


def window(seconds_from: int, seconds_to: int) -> list[str]:
    return [
        "--from",
        (START + timedelta(seconds=seconds_from)).isoformat(),
        "--to",
        (START + timedelta(seconds=seconds_to)).isoformat(),
    ]


def test_an_export_round_trips_and_verifies_from_its_lines_alone(
    sessions: SessionFactory,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fund = chain(sessions)
    code, lines = export(monkeypatch, capsys, database_url, *window(3, 6), "--fund", fund)
    assert code == 0
    # The stretch from the period's first row to its last: whole, so it verifies alone.
    assert [line["position"] for line in lines] == [3, 4, 5, 6, 7]
    with sessions() as session:
        rows = session.exec(
            select(AuditRow)
            .where(AuditRow.fund == fund, col(AuditRow.position).between(3, 7))
            .order_by(col(AuditRow.position))
        ).all()
        assert lines == [json.loads(json.dumps(audit.row_to_json(row))) for row in rows]
        parsed = [audit.row_from_json(line) for line in lines]
        assert [(r.hash, r.prev_hash, r.at, r.details) for r in parsed] == [
            (r.hash, r.prev_hash, r.at, r.details) for r in rows
        ]
    assert audit.verify_archive(parsed) == []
    # Its first row's prev_hash is the last hash of the stretch before it.
    code, earlier = export(monkeypatch, capsys, database_url, *window(0, 3), "--fund", fund)
    assert [line["position"] for line in earlier] == [1, 2, 3, 4]
    assert earlier[1]["hash"] == lines[0]["prev_hash"]
    assert audit.verify_archive(audit.row_from_json(line) for line in earlier) == []


def test_an_altered_or_incomplete_export_is_found_and_named(
    sessions: SessionFactory,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fund = chain(sessions)
    _, lines = export(monkeypatch, capsys, database_url, *window(0, 60), "--fund", fund)
    assert len(lines) == len(SECONDS)

    def problems(edited: list[dict[str, Any]]) -> list[tuple[int, str]]:
        rows = [audit.row_from_json(line) for line in edited]
        return [(p.position, p.problem) for p in audit.verify_archive(rows)]

    assert problems(lines) == []
    altered = [dict(line) for line in lines]
    altered[4]["actor"] = "mallory"
    assert problems(altered) == [(5, "its content does not match its hash")]
    assert problems(lines[:3] + lines[4:]) == [(4, "row 4 is missing")]
    rehashed = [dict(line) for line in lines]
    rehashed[0]["details"] = {"level": "cio"}
    rehashed[0]["hash"] = audit.chain_hash(audit.GENESIS, fund, 1, audit.row_from_json(rehashed[0]))
    assert problems(rehashed) == [(2, "it does not follow the row before it")]
    assert problems([{**lines[0], "prev_hash": "f" * 64}]) == [
        (1, "the chain's first row does not follow the genesis")
    ]


def test_export_writes_a_file_and_refuses_a_period_it_cannot_read(
    sessions: SessionFactory,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    fund = chain(sessions)
    out = tmp_path / "audit.jsonl"
    code, printed = export(
        monkeypatch, capsys, database_url, *window(0, 60), "--fund", fund, "--out", str(out)
    )
    assert (code, printed) == (0, [])
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["position"] for line in written] == list(range(1, len(SECONDS) + 1))
    assert audit.verify_archive(audit.row_from_json(line) for line in written) == []
    assert cli.main(["audit", "verify", "--archive", str(out)]) == 0
    assert capsys.readouterr().out == f"{len(SECONDS)} rows of 1 fund(s) verify\n"
    lines = out.read_text().splitlines()
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("\n".join(lines[:2] + lines[3:]) + "\n")
    assert cli.main(["audit", "verify", "--archive", str(tampered)]) == 1
    assert capsys.readouterr().out == f"{fund}: row 3: row 3 is missing\n"
    tampered.write_text("not json\n")
    assert cli.main(["audit", "verify", "--archive", str(tampered)]) == 2

    assert export(monkeypatch, capsys, database_url, *window(6, 3), "--fund", fund)[0] == 2
    with pytest.raises(SystemExit) as naive:
        cli.main(["audit", "export", "--from", "2026-11-20T09:00:00", "--to", "2026-11-21T00:00Z"])
    assert naive.value.code == 2
    with pytest.raises(ValueError, match="not an audit row"):
        audit.row_from_json({"fund": fund})
