"""Bearer tokens: HS256 JWTs whose `sub` is the OMS user id."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt

ALGORITHM = "HS256"


class InvalidTokenError(Exception):
    """The token is missing, malformed, expired or not signed with our secret."""


def issue_token(user: str, secret: str, ttl: timedelta) -> str:
    """Return a signed token for `user`, valid for `ttl`."""
    now = datetime.now(UTC)
    return jwt.encode({"sub": user, "iat": now, "exp": now + ttl}, secret, algorithm=ALGORITHM)


def user_from_token(token: str, secret: str) -> str:
    """Return the user a valid token names."""
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["sub", "exp"]}
        )
    except jwt.PyJWTError as exc:
        raise InvalidTokenError(str(exc)) from exc
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise InvalidTokenError("token has no subject")
    return subject
