"""Bearer tokens: HS256 JWTs whose `sub` is the OMS user id, verified strictly.

A token must be signed with the configured secret using HS256, or, when a JWKS URL is
configured, with one of the identity provider's keys using RS256 (no other algorithm, `none`
included, is tried), name the configured issuer and audience, carry an expiry, not be used
before its `nbf`, and live no longer than the configured maximum (`exp - iat`, or `exp - now`
for a token without `iat`).
"""

from __future__ import annotations

import functools
import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import jwt

if TYPE_CHECKING:
    from config import Settings

logger = logging.getLogger(__name__)

ALGORITHM = "HS256"
# Tokens of a company identity provider, verified with the keys of its JWKS URL.
PROVIDER_ALGORITHM = "RS256"
# config.Settings' defaults: tokens issued without settings carry these.
DEFAULT_ISSUER = "oms"
DEFAULT_AUDIENCE = "oms-api"
DEFAULT_MAX_TTL = timedelta(hours=12)
# Clock skew allowed between the issuer and this API for `exp`, `nbf` and `iat`.
LEEWAY = timedelta(seconds=10)


class InvalidTokenError(Exception):
    """The token is missing, malformed, expired or not signed with our secret."""


def issue_token(
    user: str,
    secret: str,
    ttl: timedelta,
    *,
    issuer: str = DEFAULT_ISSUER,
    audience: str = DEFAULT_AUDIENCE,
) -> str:
    """Return a signed token for `user`, valid for `ttl`."""
    now = datetime.now(UTC)
    claims = {"sub": user, "iss": issuer, "aud": audience, "iat": now, "exp": now + ttl}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def token_for(settings: Settings, user: str, ttl: timedelta) -> str:
    """Return a token for `user` that an API with `settings` accepts.

    Raises:
        ValueError: `ttl` is longer than the settings' maximum lifetime.
    """
    if ttl > settings.jwt_max_ttl:
        raise ValueError(f"a token may live at most {settings.jwt_max_ttl} (OMS_JWT_MAX_TTL)")
    return issue_token(
        user,
        settings.jwt_secret,
        ttl,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )


@functools.cache
def jwks_client(url: str) -> jwt.PyJWKClient:
    """Return the (key-caching) client of one JWKS URL."""
    return jwt.PyJWKClient(url, cache_keys=True, lifespan=300, timeout=5)


def uses_provider_key(token: str) -> bool:
    """Say whether the token claims an identity provider's algorithm (RS256)."""
    try:
        return bool(jwt.get_unverified_header(token).get("alg") == PROVIDER_ALGORITHM)
    except jwt.PyJWTError:
        return False


def user_from_token(
    token: str,
    secret: str,
    *,
    issuer: str = DEFAULT_ISSUER,
    audience: str = DEFAULT_AUDIENCE,
    max_ttl: timedelta = DEFAULT_MAX_TTL,
    jwks_url: str | None = None,
) -> str:
    """Return the user a valid token names.

    With `jwks_url`, an RS256 token is verified with the provider's key its `kid` names (this
    may fetch the key set: call it off the event loop then, see `uses_provider_key`).

    Raises:
        InvalidTokenError: the token fails any check; the message says which, for the caller.
    """
    key: Any = secret
    algorithm = ALGORITHM
    try:
        if jwks_url and uses_provider_key(token):
            key = jwks_client(jwks_url).get_signing_key_from_jwt(token).key
            algorithm = PROVIDER_ALGORITHM
        claims = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            issuer=issuer,
            audience=audience,
            leeway=LEEWAY,
            options={
                "require": ["sub", "exp", "iss", "aud"],
                "verify_signature": True,
                "verify_exp": True,
                "verify_nbf": True,
                "verify_iat": True,
                "verify_iss": True,
                "verify_aud": True,
            },
        )
    except jwt.PyJWKClientError as exc:
        # No key for the token's `kid`, or the provider did not answer: the detail (its URL,
        # the network error) goes to the log, not to the caller.
        logger.warning("identity provider keys: %s", exc)
        raise InvalidTokenError("no identity provider key verifies the token") from exc
    except jwt.PyJWTError as exc:
        raise InvalidTokenError(str(exc)) from exc
    expires = claims["exp"]
    issued = claims.get("iat")
    start = issued if isinstance(issued, int | float) else datetime.now(UTC).timestamp()
    if not isinstance(expires, int | float) or expires - start > max_ttl.total_seconds():
        raise InvalidTokenError(f"token lives longer than the maximum of {max_ttl}")
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise InvalidTokenError("token has no subject")
    return subject
