"""The approvals inbox: the orders waiting on a level the caller may decide, longest waiting first.

`GET /approvals` and chat-ops ("/oms inbox") both answer with `inbox`, so they list the same
orders. The list comes from the read model, filtered in SQL: the caller's Casbin permissions
("approvals", LEVEL) per fund become (level, funds) pairs the query matches.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from itertools import pairwise

from sqlmodel import Session

from activities.compliance import load_approval_policies
from api.deps import Services, run_db
from api.errors import RETRY_UNAVAILABLE, ApiError, invalid
from api.schemas import ApprovalGivenView, ApprovalItem, ApprovalPage
from db import queries
from db.tables import OrderRow
from domain.approvals import ApprovalPolicies, ApprovalPolicyError
from domain.models import ComplianceOutcome, ComplianceResult, OrderType, Side, TimeInForce
from domain.order import AmendmentSummary

logger = logging.getLogger(__name__)

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


async def inbox(
    services: Services, user: str, cursor: str | None, limit: int, fund: str | None = None
) -> ApprovalPage:
    """Return one page of `user`'s approvals inbox, longest waiting first.

    It holds every order pending approval at a level `user` may decide in the order's fund,
    except orders `user` created or already approved a level of (one person decides one level).
    An order whose approval has escalated also shows to the next approvers up (the level after
    the pending one in the fund's approval order), with `may_decide` false. A caller who may
    decide no level anywhere gets an empty page.

    Args:
        services: the app's services.
        user: the approver.
        cursor: `next_cursor` of the previous page, or None for the first.
        limit: items per page, 1 to `MAX_LIMIT`.
        fund: only this fund's orders.

    Raises:
        ApiError: 422 naming `limit` or `cursor` when one is not valid.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise invalid("limit", f"limit must be between 1 and {MAX_LIMIT}")
    if cursor is not None:
        try:
            queries.decode_inbox_cursor(cursor)
        except ValueError as exc:
            raise invalid("cursor", str(exc)) from exc

    def read(session: Session) -> tuple[list[OrderRow], queries.InboxScope]:
        funds = [f.fund for f in queries.all_funds(session)]
        if fund is not None:
            # A fund that does not exist is as empty as one the caller decides nothing in: an
            # error would tell anyone with a token which funds exist.
            funds = [fund] if fund in funds else []
        scope = inbox_scope(services, user, funds, approval_policies(services))
        return queries.approval_inbox(session, scope, limit + 1, cursor), scope

    rows, scope = await run_db(services, read)
    page = rows[:limit]
    now = datetime.now(UTC)
    return ApprovalPage(
        items=[_item(row, scope, now) for row in page],
        next_cursor=queries.encode_inbox_cursor(page[-1]) if len(rows) > limit else None,
    )


def inbox_scope(
    services: Services, user: str, funds: Sequence[str], policies: ApprovalPolicies
) -> queries.InboxScope:
    """Return what `user`'s inbox holds: the levels they may decide per fund, and above whom they sit.

    In each fund, the next level up from a level is the one after it in the fund's approval
    order; its holders see an order escalated at the lower level (unless they hold that too).
    """
    decide: dict[str, list[str]] = {}
    escalated: dict[str, list[str]] = {}
    for fund in funds:
        held = {
            level
            for level in policies.levels
            if services.authorizer.check(user, fund, "approvals", level) is not None
        }
        for level in sorted(held):
            decide.setdefault(level, []).append(fund)
        for lower, upper in pairwise(policies.for_fund(fund).levels_in_order):
            if upper in held and lower not in held:
                escalated.setdefault(lower, []).append(fund)
    return queries.InboxScope(user=user, decide=decide, escalated=escalated)


def approval_policies(services: Services) -> ApprovalPolicies:
    """Return the approval matrix in force; a policy file broken by an edit is a 503, not a 500."""
    try:
        return load_approval_policies(services.settings.policies_dir)
    except ApprovalPolicyError as exc:
        logger.error("the approval policy cannot be read: %s", exc)
        raise ApiError(
            503,
            "policy_unavailable",
            "the approval policy cannot be read; try again once it is fixed",
            headers={"Retry-After": RETRY_UNAVAILABLE},
        ) from exc


def _item(row: OrderRow, scope: queries.InboxScope, now: datetime) -> ApprovalItem:
    since = queries.inbox_waiting_since(row)
    level = row.approval_level or ""
    return ApprovalItem(
        order_id=row.order_id,
        client_order_id=row.client_order_id,
        fund=row.fund,
        symbol=row.symbol,
        side=Side(row.side),
        quantity=row.quantity,
        order_type=OrderType(row.order_type),
        limit_price=row.limit_price,
        time_in_force=TimeInForce(row.time_in_force),
        notional=row.notional,
        currency=row.currency,
        created_by=row.created_by,
        created_at=row.created_at,
        approval_level=level,
        approvals_required=row.approvals_required or [level],
        approvals_given=[ApprovalGivenView.model_validate(g) for g in row.approvals_given or []],
        waiting_since=since,
        waiting_seconds=max(0, int((now - since).total_seconds())),
        escalated=bool(row.approval_escalated),
        expire_at=row.approval_expire_at,
        may_decide=row.fund in scope.decide.get(level, ()),
        compliance_outcome=ComplianceOutcome(row.compliance_outcome)
        if row.compliance_outcome
        else None,
        compliance=[ComplianceResult.model_validate(r) for r in row.compliance_results or []],
        version=row.version,
        amendment=None if row.amendment is None else AmendmentSummary.model_validate(row.amendment),
    )
