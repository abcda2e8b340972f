"""Signing as the API signs, for tests that drive orders straight through Temporal.

The API attests every action it lets through (`api.authority`); workflow tests have no API, so
their client signs in its place with the development key, and a test that plays an intruder
uses a client that does not.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from temporalio.client import (
    Client,
    Interceptor,
    OutboundInterceptor,
    StartWorkflowUpdateInput,
    WorkflowUpdateHandle,
)

from config import Settings
from domain.authority import Action, Authority, SignedAuthority, key_id, sign
from domain.ids import order_id_from_workflow_id
from domain.order import amendment_subject
from workflows.messages import (
    AmendInput,
    ApproveInput,
    AwaitComplianceInput,
    CancelInput,
    OverrideInput,
    RejectInput,
    ReleaseInput,
)

SIGNING_KEY = Settings().signing_key()


def statement(
    order_id: str,
    action: Action,
    user: str,
    *,
    level: str | None = None,
    subject: str = "",
    policy: list[str] | None = None,
    roles: list[str] | None = None,
    issued_at: datetime | None = None,
    nonce: str | None = None,
    permission: list[str] | None = None,
) -> SignedAuthority:
    """Return the statement the API would sign for this action, signed with the development key."""
    authority = Authority(
        order_id=order_id,
        action=action,
        user=user,
        level=level,
        subject=subject,
        roles=roles or [],
        permission=permission or (["approvals", level] if level else ["orders", action.value]),
        policy=policy or [],
        policy_version="test-policy",
        issued_at=issued_at or datetime.now(UTC),
        nonce=nonce or uuid.uuid4().hex,
        key_id=key_id(SIGNING_KEY.public_key()),
    )
    return sign(authority, SIGNING_KEY)


def _signed(order_id: str, arg: Any, now: datetime) -> Any:
    """Return `arg` with the statements the API would have added, unless it carries some."""
    if isinstance(arg, ApproveInput | RejectInput) and not arg.authorities:
        action = Action.APPROVE if isinstance(arg, ApproveInput) else Action.REJECT
        authorities = [
            statement(
                order_id, action, arg.user, level=g.permission, policy=g.policy, issued_at=now
            )
            for g in arg.grants
        ]
        return arg.model_copy(update={"authorities": authorities})
    if isinstance(arg, OverrideInput | ReleaseInput | CancelInput) and arg.authority is None:
        action = (
            Action.OVERRIDE
            if isinstance(arg, OverrideInput)
            else Action.RELEASE
            if isinstance(arg, ReleaseInput)
            else Action.CANCEL
        )
        subject = arg.venue if isinstance(arg, ReleaseInput) else ""
        signed = statement(
            order_id, action, arg.user, subject=subject, policy=arg.policy, issued_at=now
        )
        return arg.model_copy(update={"authority": signed})
    if isinstance(arg, AmendInput) and arg.authority is None:
        subject = amendment_subject(arg.quantity, arg.limit_price)
        signed = statement(
            order_id, Action.AMEND, arg.user, subject=subject, policy=arg.policy, issued_at=now
        )
        return arg.model_copy(update={"authority": signed})
    return arg


Clock = Callable[[], Awaitable[datetime]]


async def wall_clock() -> datetime:
    return datetime.now(UTC)


class _SigningOutbound(OutboundInterceptor):
    def __init__(self, next: OutboundInterceptor, clock: Clock) -> None:
        super().__init__(next)
        self._clock = clock

    async def start_workflow_update(
        self, input: StartWorkflowUpdateInput
    ) -> WorkflowUpdateHandle[Any]:
        if input.id.startswith("order:"):
            order_id = order_id_from_workflow_id(input.id)
            now = await self._clock()
            input = replace(input, args=[_signed(order_id, arg, now) for arg in input.args])
        return await super().start_workflow_update(input)


class SigningInterceptor(Interceptor):
    """Sign human actions sent to orders, as the API does; leave signed ones alone.

    `clock` says when a statement is issued: on the time-skipping server, the server's time.
    """

    def __init__(self, clock: Clock = wall_clock) -> None:
        self._clock = clock

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        return _SigningOutbound(next, self._clock)


def signing_client(client: Client, clock: Clock = wall_clock) -> Client:
    """Return `client` (time skipping and all) that signs human actions as the API would."""
    config = client.config()
    config["interceptors"] = [*config["interceptors"], SigningInterceptor(clock)]
    return Client(**config)


def creation(order_id: str, user: str, issued_at: datetime) -> AwaitComplianceInput:
    return AwaitComplianceInput(
        authority=statement(order_id, Action.CREATE, user, issued_at=issued_at)
    )
