"""The API's signed word for each action it lets through (see `domain.authority`).

The API authenticates the caller and evaluates Casbin; the statement it signs carries what the
order records for compliance: the caller's roles in the fund, the rule that allowed the action
and the policy's version. The workflow refuses any action without a valid, fresh, unused one.
"""

from __future__ import annotations

import functools
import uuid
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from api.deps import Services
from api.errors import forbidden
from api.order_access import OrderRef
from domain.authority import Action, Authority, SignedAuthority, key_id, private_key_from_text, sign


@functools.cache
def _signing_key(text: str) -> tuple[Ed25519PrivateKey, str]:
    private_key = private_key_from_text(text)
    return private_key, key_id(private_key.public_key())


def attest(
    services: Services,
    user: str,
    *,
    order_id: str,
    fund: str,
    action: Action,
    permission: tuple[str, str],
    level: str | None = None,
    subject: str = "",
) -> SignedAuthority:
    """Return the signed statement that `user` may take `action` on the order (403 if not)."""
    grant = services.authorizer.check(user, fund, *permission)
    if grant is None:
        raise forbidden(f"{user} may not {permission[1]} {permission[0]} in {fund}")
    private_key, signer = _signing_key(services.settings.authority_signing_key)
    authority = Authority(
        order_id=order_id,
        action=action,
        user=user,
        level=level,
        subject=subject,
        roles=list(grant.roles),
        permission=list(permission),
        policy=list(grant.policy),
        policy_version=grant.policy_version,
        issued_at=datetime.now(UTC),
        nonce=uuid.uuid4().hex,
        key_id=signer,
    )
    return sign(authority, private_key)


def attest_on(
    services: Services, user: str, ref: OrderRef, action: Action, *, subject: str = ""
) -> SignedAuthority:
    """Return the signed statement for a person's `action` on an order: ("orders", action)."""
    return attest(
        services,
        user,
        order_id=ref.order_id,
        fund=ref.fund,
        action=action,
        permission=("orders", action.value),
        subject=subject,
    )
