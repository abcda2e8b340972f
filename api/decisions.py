"""The approval decisions, shared by the HTTP endpoints and chat-ops, so both take one path.

A decision from chat goes through the very same authority check and workflow Update as one
from the API: these functions are the only place either is made.
"""

from __future__ import annotations

from activities.compliance import load_approval_matrix
from api.deps import Services
from api.errors import ApiError
from api.order_access import OrderRef, locate, query_order, run_update
from api.schemas import OrderPublic
from workflows.messages import ApproveInput, PolicyGrant, RejectInput


async def approve(services: Services, user: str, order_id: str, comment: str = "") -> OrderPublic:
    """Approve the order's pending level as `user`; refusals are ApiErrors (403, 404, 409, 422)."""
    ref = await locate(services, user, order_id)
    update = ApproveInput(user=user, comment=comment, grants=_approval_grants(services, user, ref))
    return await run_update(services, ref, "approve", update)


async def reject(services: Services, user: str, order_id: str, reason: str) -> OrderPublic:
    """Reject the order at its pending level as `user`; it ends approval_rejected."""
    ref = await locate(services, user, order_id)
    update = RejectInput(user=user, reason=reason, grants=_approval_grants(services, user, ref))
    return await run_update(services, ref, "reject", update)


async def show(services: Services, user: str, order_id: str) -> OrderPublic:
    """Return the order as `user` may see it (404 when they may not)."""
    ref = await locate(services, user, order_id)
    return await query_order(services, ref.order_id, ref.workflow_type)


def _approval_grants(services: Services, user: str, ref: OrderRef) -> list[PolicyGrant]:
    """Return the approval levels the caller holds in the order's fund, with the policy of each.

    The order decides which level is pending; the API only says which levels this person holds.
    """
    matrix = load_approval_matrix(services.settings.policies_dir)
    grants = []
    for level in dict.fromkeys(lvl.level for lvl in matrix.levels):
        grant = services.authorizer.check(user, ref.fund, "approvals", level)
        if grant is not None:
            grants.append(PolicyGrant(permission=level, policy=grant.policy))
    if not grants:
        raise ApiError(403, "forbidden", f"{user} may not approve orders in {ref.fund}")
    return grants
