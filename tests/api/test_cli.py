"""The `oms` command for scripts and people: tokens, and the order commands against the real stack."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import jwt
import pytest

import cli
from tests.api.conftest import Stack


def test_token_is_signed_for_a_known_user_with_the_asked_lifetime(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMS_JWT_SECRET", "cli-test-secret-long-enough-for-hs256-signing")
    assert cli.main(["token", "alice", "--ttl", "30m"]) == 0
    token = capsys.readouterr().out.strip()
    claims = jwt.decode(
        token,
        "cli-test-secret-long-enough-for-hs256-signing",
        algorithms=["HS256"],
        audience="oms-api",
        issuer="oms",
    )
    assert claims["sub"] == "alice"
    lifetime = datetime.fromtimestamp(claims["exp"], UTC) - datetime.now(UTC)
    assert timedelta(minutes=29) < lifetime <= timedelta(minutes=30)


def test_token_refuses_a_user_the_policy_does_not_know(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["token", "mallory"]) == 2
    assert "mallory is not a user known to the policy" in capsys.readouterr().err


@pytest.mark.parametrize("ttl", ["8", "8x", "-1h", "h"])
def test_token_refuses_a_lifetime_it_cannot_read(ttl: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["token", "alice", "--ttl", ttl])
    assert exit_.value.code == 2


async def test_order_commands_drive_the_story(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OMS_API_URL", str(stack.http.base_url))
    monkeypatch.setenv("OMS_JWT_SECRET", stack.settings.jwt_secret)

    async def oms(*argv: str) -> tuple[int, object]:
        # The API runs on this event loop, so the blocking CLI call goes to a thread.
        code = await asyncio.to_thread(cli.main, list(argv))
        return code, json.loads(capsys.readouterr().out)

    code, created = await oms(
        "order", "new", "--as", "alice", "--fund", "fund-alpha", "--symbol", "MSFT",
        "--side", "buy", "--quantity", "25", "--limit", "416",
    )  # fmt: skip
    assert code == 0
    assert isinstance(created, dict)
    order_id = created["order_id"]
    assert (created["status"], created["limit_price"]) == ("pending_approval", "416")

    code, refused = await oms("order", "approve", order_id, "--as", "alice")
    assert code == 1
    assert isinstance(refused, dict) and refused["error"]["code"] == "forbidden"
    assert (await oms("order", "approve", order_id, "looks fine", "--as", "dana"))[0] == 0
    code, released = await oms("order", "release", order_id, "--as", "tom")
    assert code == 0 and isinstance(released, dict)
    code, waited = await oms("order", "wait", order_id, "--for", "settled", "--as", "alice")
    assert code == 0 and isinstance(waited, dict) and waited["status"] == "settled"
    code, unknown = await oms("order", "wait", order_id, "--for", "done", "--as", "alice")
    assert code == 1 and isinstance(unknown, dict) and unknown["error"]["field"] == "wait_for"
    code, shown = await oms("order", "show", order_id, "--as", "alice")
    assert isinstance(shown, dict) and shown["status"] == "settled"
    assert shown["approvals"]["given"][0]["comment"] == "looks fine"
    code, history = await oms("order", "history", order_id, "--as", "cora")
    assert code == 0 and isinstance(history, list)
    assert ("released", "tom") in [(h["event"], h["actor"]) for h in history]
