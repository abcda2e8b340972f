"""The approval decisions, shared by the HTTP endpoints and chat-ops, so both take one path.

A decision from chat goes through the very same authority check and workflow Update as one
from the API: these functions are the only place either is made.
"""

from __future__ import annotations

from api.authority import attest
from api.deps import Services
from api.errors import ApiError
from api.inbox import approval_policies
from api.order_access import OrderRef, locate, query_order, refusals_recorded, run_update
from api.schemas import OrderPublic
from domain.authority import Action, SignedAuthority
from workflows.messages import ApproveInput, PolicyGrant, RejectInput


async def approve(
    services: Services, user: str, order_id: str, comment: str = "", *, via: str = "api"
) -> OrderPublic:
    """Approve the order's pending level as `user`; refusals are ApiErrors (403, 404, 409, 422).

    A refusal is written to the audit table, with `via` (api, chat) saying where it came from.
    """
    ref = await locate(services, user, order_id)
    async with refusals_recorded(services, ref, user, "approve", via):
        grants = _approval_grants(services, user, ref)
        update = ApproveInput(
            user=user,
            comment=comment,
            grants=grants,
            authorities=_level_statements(services, user, ref, grants, Action.APPROVE),
        )
        return await run_update(services, ref, "approve", update)


async def reject(
    services: Services, user: str, order_id: str, reason: str, *, via: str = "api"
) -> OrderPublic:
    """Reject the order at its pending level as `user`; it ends approval_rejected."""
    ref = await locate(services, user, order_id)
    async with refusals_recorded(services, ref, user, "reject", via):
        grants = _approval_grants(services, user, ref)
        update = RejectInput(
            user=user,
            reason=reason,
            grants=grants,
            authorities=_level_statements(services, user, ref, grants, Action.REJECT),
        )
        return await run_update(services, ref, "reject", update)


async def show(services: Services, user: str, order_id: str) -> OrderPublic:
    """Return the order as `user` may see it (404 when they may not)."""
    ref = await locate(services, user, order_id)
    return await query_order(services, ref.order_id, ref.workflow_type)


def _level_statements(
    services: Services, user: str, ref: OrderRef, grants: list[PolicyGrant], action: Action
) -> list[SignedAuthority]:
    """Return a signed statement per level `user` holds: the order takes the one pending."""
    return [
        attest(
            services,
            user,
            order_id=ref.order_id,
            fund=ref.fund,
            action=action,
            permission=("approvals", grant.permission),
            level=grant.permission,
        )
        for grant in grants
    ]


def _approval_grants(services: Services, user: str, ref: OrderRef) -> list[PolicyGrant]:
    """Return the approval levels the caller holds in the order's fund, with the policy of each.

    The order decides which level is pending; the API only says which levels this person holds.
    """
    policy = approval_policies(services).for_fund(ref.fund)
    grants = []
    for level in policy.levels_in_order:
        grant = services.authorizer.check(user, ref.fund, "approvals", level)
        if grant is not None:
            grants.append(PolicyGrant(permission=level, policy=grant.policy))
    if not grants:
        raise ApiError(403, "forbidden", f"{user} may not approve orders in {ref.fund}")
    return grants
