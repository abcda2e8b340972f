"""Bearer tokens are verified strictly: each refusal is a 401 in the contract's error shape."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, generate_private_key

import cli
from api.app import create_app
from api.tokens import token_for
from config import Settings
from tests.api.conftest import Stack


def _claims(stack: Stack, **overrides: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": "alice",
        "iss": stack.settings.jwt_issuer,
        "aud": stack.settings.jwt_audience,
        "iat": now,
        "exp": now + timedelta(minutes=5),
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _signed(stack: Stack, **overrides: Any) -> str:
    return jwt.encode(_claims(stack, **overrides), stack.settings.jwt_secret, algorithm="HS256")


def _unsigned(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        text = json.dumps(value, default=lambda d: int(d.timestamp())).encode()
        return base64.urlsafe_b64encode(text).decode().rstrip("=")

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


async def _get_orders(stack: Stack, token: str) -> Any:
    return await stack.http.get("/orders", headers={"Authorization": f"Bearer {token}"})


async def test_a_valid_token_is_accepted(stack: Stack) -> None:
    assert (await _get_orders(stack, _signed(stack))).status_code == 200
    token = token_for(stack.settings, "alice", timedelta(hours=1))
    assert (await _get_orders(stack, token)).status_code == 200


def _refusals(stack: Stack) -> dict[str, str]:
    now = datetime.now(UTC)
    rsa = generate_private_key(public_exponent=65537, key_size=2048)
    return {
        "expired": _signed(stack, iat=now - timedelta(hours=2), exp=now - timedelta(hours=1)),
        "wrong signature": jwt.encode(
            _claims(stack), "another-secret-of-at-least-thirty-two-bytes", algorithm="HS256"
        ),
        "alg none": _unsigned(_claims(stack)),
        "another algorithm": jwt.encode(
            _claims(stack), stack.settings.jwt_secret, algorithm="HS512"
        ),
        "RS256 without a JWKS": jwt.encode(_claims(stack), rsa, algorithm="RS256"),
        "wrong audience": _signed(stack, aud="another-api"),
        "wrong issuer": _signed(stack, iss="someone-else"),
        "no audience": _signed(stack, aud=None),
        "no issuer": _signed(stack, iss=None),
        "no expiry": _signed(stack, exp=None),
        "not yet valid": _signed(stack, nbf=now + timedelta(minutes=10)),
        "over-long lifetime": _signed(stack, exp=now + timedelta(days=365 * 31)),
        "over-long without iat": _signed(stack, iat=None, exp=now + timedelta(hours=13)),
        "unknown user": _signed(stack, sub="mallory"),
        "no subject": _signed(stack, sub=None),
        "garbage": "not-a-token",
    }


@pytest.mark.parametrize(
    "case",
    [
        "expired",
        "wrong signature",
        "alg none",
        "another algorithm",
        "RS256 without a JWKS",
        "wrong audience",
        "wrong issuer",
        "no audience",
        "no issuer",
        "no expiry",
        "not yet valid",
        "over-long lifetime",
        "over-long without iat",
        "unknown user",
        "no subject",
        "garbage",
    ],
)
async def test_a_bad_token_is_refused_with_401(stack: Stack, case: str) -> None:
    response = await _get_orders(stack, _refusals(stack)[case])
    assert response.status_code == 401, (case, response.text)
    error = response.json()["error"]
    assert set(error) == {"code", "message", "field"}
    assert error["code"] == "unauthenticated"


async def test_a_missing_token_is_refused_with_401(stack: Stack) -> None:
    response = await stack.http.get("/orders")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"


def test_oms_token_refuses_a_lifetime_over_the_maximum(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["token", "alice", "--ttl", "9999d"]) == 2
    assert "OMS_JWT_MAX_TTL" in capsys.readouterr().err
    assert cli.main(["token", "alice", "--ttl", "2h"]) == 0
    token = capsys.readouterr().out.strip()
    claims = jwt.decode(
        token, Settings().jwt_secret, algorithms=["HS256"], audience="oms-api", issuer="oms"
    )
    assert claims["sub"] == "alice" and claims["exp"] - claims["iat"] == 7200


def test_token_for_refuses_a_lifetime_over_the_maximum() -> None:
    settings = Settings(jwt_max_ttl="1h")
    assert settings.jwt_max_ttl == timedelta(hours=1)
    with pytest.raises(ValueError, match="OMS_JWT_MAX_TTL"):
        token_for(settings, "alice", timedelta(hours=2))


# -- RS256 with a company identity provider's JWKS --------------------------------------------


@pytest.fixture(scope="module")
def provider_key() -> RSAPrivateKey:
    return generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def jwks_url(provider_key: RSAPrivateKey) -> Iterator[str]:
    """A local identity provider publishing one RS256 key (kid "k1")."""
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(provider_key.public_key()))
    document = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(document)))
            self.end_headers()
            self.wfile.write(document)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    server.shutdown()
    server.server_close()


async def test_rs256_tokens_of_the_identity_provider(
    stack: Stack, provider_key: RSAPrivateKey, jwks_url: str
) -> None:
    settings = stack.settings.model_copy(update={"jwt_jwks_url": jwks_url})
    app = create_app(settings, stack.env.client)
    other = generate_private_key(public_exponent=65537, key_size=2048)

    def rs256(key: RSAPrivateKey, kid: str = "k1", **overrides: Any) -> str:
        return jwt.encode(_claims(stack, **overrides), key, algorithm="RS256", headers={"kid": kid})

    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://idp") as http,
    ):

        async def status(token: str) -> int:
            response = await http.get("/orders", headers={"Authorization": f"Bearer {token}"})
            if response.status_code == 401:
                assert response.json()["error"]["code"] == "unauthenticated"
                assert "127.0.0.1" not in response.text
            return response.status_code

        assert await status(rs256(provider_key)) == 200
        assert await status(_signed(stack)) == 200  # HS256 still accepted
        assert await status(rs256(other)) == 401  # signed by someone else
        assert await status(rs256(provider_key, kid="nope")) == 401
        assert await status(rs256(provider_key, aud="another-api")) == 401
        assert await status(rs256(provider_key, exp=datetime.now(UTC) + timedelta(days=2))) == 401
