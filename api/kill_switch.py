"""The kill switch, per fund or firm-wide: no order in its scope is created or released while it is
engaged, and engaging it cancels at the venue every order in scope that is there.

A switch is a durable row of the read model (`kill_switches`), with every change in
`kill_switch_events`, rather than a control workflow:

- the API reads it on every create and release, so the check must be a cheap read: one indexed
  query on a table of a few rows, not a Query to a workflow (a workflow task on a worker each);
- it must survive a restart of everything, Temporal included: a row in the database does, and it
  holds even while Temporal is unreachable (a create refused 423 needs no Temporal at all);
- the sweep of orders is the API's work anyway: it reads the orders at the venue from the read
  model and sends each a cancel Update carrying the compliance officer's signed authority, as a
  person's cancel does. A control workflow would add a second source of truth and nothing the
  orders need: each order's own history records who canceled it and why.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from sqlmodel import Session
from temporalio.client import RPCTimeoutOrCancelledError
from temporalio.service import RPCError

from api.authority import attest
from api.deps import Services, run_db
from api.errors import (
    ApiError,
    forbidden,
    from_rpc_error,
    invalid,
    not_found,
    temporal_busy,
)
from api.order_access import OrderRef, refusals_recorded, run_update
from api.schemas import (
    KillSwitchAnswer,
    KillSwitchBody,
    KillSwitchCancelFailure,
    KillSwitchEvent,
    KillSwitchSweep,
    KillSwitchView,
)
from db import queries
from db.tables import FIRM_WIDE_SCOPE, KillSwitchRow
from domain.authority import Action
from domain.models import OrderStatus
from workflows.messages import CancelInput

logger = logging.getLogger(__name__)

KILL_SWITCH_ENGAGED = "kill_switch_engaged"
"""The error code of a create or release refused (423) while a kill switch covers the fund."""

# Where an order is at the venue and a cancel stops it; one already pending cancel is on its way
# out, and one not yet released stays (it cannot be released while the switch is engaged).
SWEPT_STATUSES = frozenset(
    {
        OrderStatus.RELEASED,
        OrderStatus.WORKING,
        OrderStatus.PARTIALLY_FILLED,
        OrderStatus.PENDING_REPLACE,
    }
)
# Cancels in flight at once: enough to sweep a fund's book in seconds, few enough that Temporal
# and the workers serve the rest of the desk meanwhile.
SWEEP_CONCURRENCY = 16
# The permission by which compliance cancels orders that it may not cancel otherwise.
SWEEP_PERMISSION = ("orders", "kill_switch_cancel")


def scope_label(scope: str) -> str:
    return "the firm" if scope == FIRM_WIDE_SCOPE else scope


def engaged_refusal(switch: KillSwitchRow) -> ApiError:
    """Return the 423 that a create or release in the switch's scope answers."""
    at = switch.engaged_at.isoformat(timespec="seconds")
    return ApiError(
        423,
        KILL_SWITCH_ENGAGED,
        f"{switch.engaged_by} engaged the kill switch for {scope_label(switch.scope)} at {at}: "
        f"{switch.reason}",
    )


def refuse_if_engaged(session: Session, fund: str) -> None:
    """Refuse (423 `kill_switch_engaged`) when a kill switch covers `fund`: its own or the firm's.

    For work that already runs in `run_db`; otherwise use `ensure_not_engaged`.
    """
    engaged = queries.engaged_kill_switches(session, fund)
    if engaged:
        raise engaged_refusal(engaged[0])


async def ensure_not_engaged(services: Services, fund: str) -> None:
    """Refuse (423 `kill_switch_engaged`) a create or release in `fund` while a switch covers it.

    Raises:
        ApiError: 423 naming who engaged which switch, when and why (the firm's first).
    """
    await run_db(services, lambda session: refuse_if_engaged(session, fund))


async def cancel_if_engaged(services: Services, ref: OrderRef) -> None:
    """Call after a release was taken: if a switch covering the fund was engaged meanwhile, cancel.

    Closes the race between a release and an engage: a release checked before the switch was
    stored can reach the order after the engage's sweep read the orders at the venue. The
    release's Update answers once the read model shows it released, so after it either this
    check sees the switch, or the sweep (which reads after storing it) sees the order. The
    cancel is sent as whoever engaged the switch, for its reason, like the sweep's.

    Raises:
        ApiError: 423 `kill_switch_engaged` when a switch covers the fund (the cancel was asked).
    """
    engaged = await run_db(
        services, lambda session: queries.engaged_kill_switches(session, ref.fund)
    )
    if not engaged:
        return
    switch = engaged[0]
    try:
        await _cancel_one(
            services, switch.engaged_by, ref, sweep_reason(switch.engaged_by, switch.reason)
        )
    except (ApiError, RPCError, RPCTimeoutOrCancelledError) as err:
        # An order that filled at once refuses; the refusal is in its refused actions.
        logger.warning("kill switch: cancel of %s after its release failed: %s", ref.order_id, err)
    raise engaged_refusal(switch)


def sweep_reason(user: str, reason: str) -> str:
    """Return the reason each canceled order records."""
    return f"kill switch engaged by {user}: {reason}"


def _require_write(services: Services, user: str, scope: str) -> None:
    # Checked before the fund is looked up: whoever may not pull the switch learns nothing of
    # which funds exist (403 for every scope), like an order id in a fund one cannot see.
    if services.authorizer.check(user, scope, "kill_switch", "write") is None:
        raise forbidden(f"{user} may not set the kill switch for {scope_label(scope)}")


async def set_kill_switch(
    services: Services, user: str, scope: str, body: KillSwitchBody
) -> KillSwitchAnswer:
    """Engage (again) or lift the kill switch of `scope`; engaging sweeps the orders at the venue.

    The switch is stored before the sweep starts, so nothing in scope is released from then on.
    Engaging an engaged switch sweeps again: orders released meanwhile are canceled too.

    Raises:
        ApiError: 403 without `kill_switch, write` for the scope; 404 for a fund that does not
            exist (to a caller who may set switches there).
    """
    _require_write(services, user, scope)
    now = datetime.now(UTC)

    def store(session: Session) -> KillSwitchRow | None:
        if scope != FIRM_WIDE_SCOPE and queries.get_fund(session, scope) is None:
            raise not_found("fund")
        return queries.set_kill_switch(
            session, scope, engaged=body.engaged, by=user, reason=body.reason, at=now
        )

    switch = await run_db(services, store)
    logger.warning(
        "kill switch for %s %s by %s: %s",
        scope_label(scope),
        "engaged" if body.engaged else "lifted",
        user,
        body.reason,
    )
    sweep = await sweep_orders(services, user, scope, body.reason) if body.engaged else None
    engaged = switch is not None and switch.engaged
    return KillSwitchAnswer(
        scope=scope,
        engaged=engaged,
        by=user,
        reason=body.reason,
        at=now,
        engaged_by=switch.engaged_by if switch is not None and engaged else None,
        engaged_at=switch.engaged_at if switch is not None and engaged else None,
        sweep=sweep,
    )


async def sweep_orders(services: Services, user: str, scope: str, reason: str) -> KillSwitchSweep:
    """Ask every order of `scope` at the venue to cancel, as `user`, `SWEEP_CONCURRENCY` at a time.

    Each cancel is the order's own decision: one that filled meanwhile refuses it, and is reported
    in `failed` (and in the order's refused actions) rather than failing the sweep.
    """
    found = await run_db(
        services,
        lambda session: queries.orders_at_venue(session, scope, [s.value for s in SWEPT_STATUSES]),
    )
    text = sweep_reason(user, reason)
    limiter = asyncio.Semaphore(SWEEP_CONCURRENCY)

    async def cancel(ref: OrderRef) -> KillSwitchCancelFailure | None:
        async with limiter:
            try:
                await _cancel_one(services, user, ref, text)
            except ApiError as err:
                failure = err
            except RPCTimeoutOrCancelledError:
                failure = temporal_busy()
            except RPCError as err:
                failure = from_rpc_error(err)
            except Exception:
                # One order's surprise must not cost the others their cancel, nor the caller
                # the report of what was done.
                logger.exception("kill switch: cancel of %s failed", ref.order_id)
                failure = ApiError(503, "cancel_failed", "the cancel could not be sent")
            else:
                return None
        return KillSwitchCancelFailure(
            order_id=ref.order_id,
            fund=ref.fund,
            status=failure.status,
            code=failure.code,
            message=failure.message,
        )

    refs = [OrderRef(order_id, fund, workflow_type) for order_id, fund, workflow_type in found]
    outcomes = await asyncio.gather(*(cancel(ref) for ref in refs))
    failed = [outcome for outcome in outcomes if outcome is not None]
    failed_ids = {failure.order_id for failure in failed}
    if failed:
        logger.warning(
            "kill switch for %s: %d of %d cancels refused or not sent",
            scope_label(scope),
            len(failed),
            len(refs),
        )
    return KillSwitchSweep(
        orders_at_venue=len(refs),
        cancel_requested=[ref.order_id for ref in refs if ref.order_id not in failed_ids],
        failed=failed,
    )


async def _cancel_one(services: Services, user: str, ref: OrderRef, reason: str) -> None:
    async with refusals_recorded(services, ref, user, "kill_switch_cancel", via="kill_switch"):
        authority = attest(
            services,
            user,
            order_id=ref.order_id,
            fund=ref.fund,
            action=Action.CANCEL,
            permission=SWEEP_PERMISSION,
        )
        update = CancelInput(
            user=user, reason=reason, policy=authority.authority().policy, authority=authority
        )
        await run_update(services, ref, "cancel", update)


def _visible_scopes(services: Services, session: Session, user: str) -> list[str]:
    """Return the scopes whose switches `user` may see: the firm's, and the funds they may read.

    403 for a caller who may read kill switches in no fund at all.
    """
    funds = [row.fund for row in queries.all_funds(session)]
    readable = services.authorizer.funds_allowed(user, funds, "kill_switch", "read")
    if (
        not readable
        and services.authorizer.check(user, FIRM_WIDE_SCOPE, "kill_switch", "read") is None
    ):
        raise forbidden(f"{user} may not read kill switches in any fund")
    return [FIRM_WIDE_SCOPE, *readable]


async def engaged_switches(
    services: Services, user: str, fund: str | None = None
) -> list[KillSwitchView]:
    """Return the engaged switches `user` may see (those covering `fund`, when one is asked for).

    Raises:
        ApiError: 403 for a caller who may read kill switches nowhere; 422 naming `fund` for a
            fund the caller may not read them in (or that does not exist), as `GET /orders` does.
    """

    def read(session: Session) -> list[KillSwitchRow]:
        visible = _visible_scopes(services, session, user)
        if fund is None:
            rows = queries.all_engaged_kill_switches(session)
        elif fund in visible:
            rows = queries.engaged_kill_switches(session, fund)
        else:
            raise invalid("fund", f"{fund} is not a fund whose kill switches you may read")
        return [row for row in rows if row.scope in visible]

    rows = await run_db(services, read)
    return [KillSwitchView.model_validate(row, from_attributes=True) for row in rows]


async def switch_events(
    services: Services, user: str, scope: str | None, limit: int
) -> list[KillSwitchEvent]:
    """Return the latest changes of the switches `user` may see (of `scope`, if given), newest first."""

    def read(session: Session) -> list[KillSwitchEvent]:
        visible = _visible_scopes(services, session, user)
        if scope is not None and scope not in visible:
            raise invalid("scope", f"{scope} is not a scope whose kill switches you may read")
        rows = queries.kill_switch_events(session, [scope] if scope else visible, limit)
        return [KillSwitchEvent.model_validate(row, from_attributes=True) for row in rows]

    return await run_db(services, read)
