"""Signed authority: the API's attestation that a person may take one action on one order.

Only the API authenticates people and evaluates the Casbin policy, so it attests each decision
it lets through: who, which action on which order (and which approval level or venue), the roles
the person holds in the order's fund, the policy rule that allowed it and the policy's version.
It signs that statement with Ed25519; the order workflow verifies the signature against the
public keys in its worker's configuration before it accepts the action.

Why a signature rather than a check in the workflow alone: whoever can reach Temporal can send
an Update with any user name in it, so the workflow must learn *who* is acting from something a
Temporal client cannot make. A public key proves that without a secret: the signature and the
statement are in the order's history for compliance to re-verify, and knowing them lets nobody
sign another. An HMAC would put a shared secret in every worker, and the statement's verifier
could then forge.

Validators verify (they do not run on replay), so rotating keys never changes how a recorded
history replays.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from enum import StrEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

# A statement older (or newer) than this is refused: a captured one cannot be replayed later.
MAX_AGE = timedelta(minutes=5)


class Action(StrEnum):
    """What a person does to an order that needs the API's word for it."""

    CREATE = "create"
    APPROVE = "approve"
    REJECT = "reject"
    OVERRIDE = "override"
    RELEASE = "release"
    CANCEL = "cancel"
    AMEND = "amend"


class Authority(BaseModel):
    """The API's statement: `user` may take `action` on `order_id`, allowed by `policy`."""

    model_config = ConfigDict(frozen=True)

    order_id: str
    action: Action
    user: str
    level: str | None = Field(default=None, description="The approval level decided.")
    subject: str = Field(default="", description="What the action names, e.g. the venue.")
    roles: list[str] = Field(default_factory=list, description="The user's roles in the fund.")
    permission: list[str] = Field(description="The Casbin (object, action) that was checked.")
    policy: list[str] = Field(description="The policy rule that allowed it.")
    policy_version: str = Field(description="sha256 of the policy files in force.")
    issued_at: datetime
    nonce: str = Field(description="Unique per statement: each is used at most once.")
    key_id: str


class SignedAuthority(BaseModel):
    """An `Authority` exactly as signed (its JSON text) and its Ed25519 signature."""

    model_config = ConfigDict(frozen=True)

    statement: str
    signature: str

    def authority(self) -> Authority:
        return Authority.model_validate_json(self.statement)


class AuthorityRefusedError(Exception):
    """The statement is missing, forged, stale, reused or says something else."""


def key_id(public_key: Ed25519PublicKey) -> str:
    """Return a short, stable name of `public_key` (so a verifier picks the key at once)."""
    return hashlib.sha256(public_key.public_bytes_raw()).hexdigest()[:16]


def private_key_from_text(text: str) -> Ed25519PrivateKey:
    """Return the private key written as base64 of its 32 raw bytes."""
    return Ed25519PrivateKey.from_private_bytes(base64.b64decode(text, validate=True))


def public_key_from_text(text: str) -> Ed25519PublicKey:
    """Return the public key written as base64 of its 32 raw bytes."""
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))


def public_key_text(public_key: Ed25519PublicKey) -> str:
    return base64.b64encode(public_key.public_bytes_raw()).decode()


def sign(authority: Authority, private_key: Ed25519PrivateKey) -> SignedAuthority:
    """Sign `authority` (its key_id must name `private_key`'s public half)."""
    statement = authority.model_dump_json()
    signature = private_key.sign(statement.encode())
    return SignedAuthority(statement=statement, signature=base64.b64encode(signature).decode())


class TrustedKeys:
    """The public keys whose statements this process accepts, set by the worker at start-up.

    Orders' validators read it; they run only when an action first arrives, never on replay,
    so the set may change (a key rotated in, an old one retired) without touching histories.
    """

    def __init__(self) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._lock = threading.Lock()

    def trust(self, keys: Iterable[Ed25519PublicKey]) -> None:
        """Trust `keys` (in addition to those trusted already)."""
        with self._lock:
            self._keys = {**self._keys, **{key_id(k): k for k in keys}}

    def keys(self) -> Mapping[str, Ed25519PublicKey]:
        return self._keys


TRUSTED_KEYS = TrustedKeys()


def verify(
    signed: SignedAuthority | None,
    *,
    now: datetime,
    keys: Mapping[str, Ed25519PublicKey],
    max_age: timedelta = MAX_AGE,
) -> Authority:
    """Return the statement when its signature holds and it is fresh; else raise AuthorityRefusedError."""
    if signed is None:
        raise AuthorityRefusedError("the action carries no authority signed by the OMS API")
    try:
        authority = signed.authority()
        signature = base64.b64decode(signed.signature, validate=True)
    except (ValidationError, ValueError) as err:
        raise AuthorityRefusedError("the action's authority is malformed") from err
    key = keys.get(authority.key_id)
    if key is None:
        raise AuthorityRefusedError(
            "the action's authority is signed by a key this OMS does not trust"
        )
    try:
        key.verify(signature, signed.statement.encode())
    except InvalidSignature as err:
        raise AuthorityRefusedError("the action's authority signature is not valid") from err
    if abs(now - authority.issued_at) > max_age:
        raise AuthorityRefusedError(
            f"the action's authority was issued at {authority.issued_at.isoformat()}, "
            f"more than {int(max_age.total_seconds())} s from now"
        )
    return authority
