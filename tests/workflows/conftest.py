"""Workers on the time-skipping server, with the real activities, simulators and a SQLite read model."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateStage
from temporalio.testing import WorkflowEnvironment

from activities.back_office import SimulatedBackOffice
from config import Settings
from db.engine import SessionFactory, create_schema, make_engine, session_factory
from db.tables import KillSwitchRow
from domain.executions import ExecutionReport
from domain.ids import order_id_for, order_workflow_id
from domain.models import AllocationRequest, OrderRequest, OrderStatus, SettlementStatus
from domain.order import Order
from domain.status import OrderEvent
from tests.authority import creation, signing_client
from venues.sinks import TemporalCallbacks
from worker import build_back_office_worker, build_orders_worker
from workflows.messages import OrderTimeouts, OrderWorkflowInput, SettlementUpdateInput
from workflows.order import OrderWorkflow

OrderHandle = WorkflowHandle[OrderWorkflow, Any]


@dataclass
class Desk:
    """What a workflow test drives: the client, and the queues its workers listen on."""

    client: Client
    env: WorkflowEnvironment
    settings: Settings
    manual_back_office_queue: str

    async def start(
        self,
        *,
        symbol: str = "AAPL",
        quantity: str = "1000",
        created_by: str = "alice",
        fund: str = "fund-alpha",
        manual_back_office: bool = False,
        timeouts: OrderTimeouts | None = None,
        workflow_fields: dict[str, Any] | None = None,
        task_queue: str | None = None,
        back_office_queue: str | None = None,
        task_timeout: timedelta | None = None,
        attest_creation: bool = True,
        **fields: Any,
    ) -> OrderHandle:
        """Start an order as the API does: the start, then the creator's attested word.

        `attest_creation=False` starts it the way only someone with Temporal access could.
        """
        allocations = fields.pop(
            "allocations",
            [AllocationRequest(account="alpha-main", quantity=Decimal(quantity))],
        )
        # Good till canceled unless a test says otherwise: a day order would expire at the next
        # close, which depends on when the suite runs, within the hours tests skip.
        fields.setdefault("time_in_force", "gtc")
        request = OrderRequest(
            client_order_id=f"t-{uuid.uuid4().hex[:10]}",
            fund=fund,
            symbol=symbol,
            side=fields.pop("side", "buy"),
            quantity=Decimal(quantity),
            allocations=allocations,
            **fields,
        )
        order_id = order_id_for(fund, request.client_order_id)
        queue = back_office_queue or (
            self.manual_back_office_queue
            if manual_back_office
            else self.settings.back_office_task_queue
        )
        handle = await self.client.start_workflow(
            OrderWorkflow.run,
            OrderWorkflowInput(
                order_id=order_id,
                request=request,
                created_by=created_by,
                back_office_task_queue=queue,
                timeouts=timeouts or OrderTimeouts(),
                **(workflow_fields or {}),
            ),
            id=order_workflow_id(order_id),
            task_queue=task_queue or self.settings.orders_task_queue,
            task_timeout=task_timeout,
        )
        if attest_creation:
            await handle.start_update(
                OrderWorkflow.await_compliance,
                creation(order_id, created_by, await self.env.get_current_time()),
                wait_for_stage=WorkflowUpdateStage.ACCEPTED,
            )
        return handle


async def wait_for_status(handle: OrderHandle, *statuses: OrderStatus, within: float = 15) -> Order:
    """Poll the live state (without skipping time) until the order reaches one of `statuses`."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        state = await handle.query(OrderWorkflow.state)
        if state.status in statuses:
            return state
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"order stayed {state.status}; wanted one of {statuses}")
        await asyncio.sleep(0.05)


@contextlib.contextmanager
def kill_switch_engaged(sessions: SessionFactory, scope: str, reason: str) -> Iterator[None]:
    """Engage cora's kill switch on `scope` (a fund, or the firm) while the block runs."""
    now = datetime.now(UTC)
    with sessions() as session:
        session.add(
            KillSwitchRow(
                scope=scope,
                engaged=True,
                engaged_by="cora",
                reason=reason,
                engaged_at=now,
                updated_at=now,
            )
        )
        session.commit()
    try:
        yield
    finally:
        with sessions() as session:
            switch = session.get(KillSwitchRow, scope)
            if switch is not None:
                session.delete(switch)
            session.commit()


async def wait_for_event(handle: OrderHandle, kind: OrderEvent, within: float = 15) -> Order:
    """Poll the live order (without skipping time) until its log has an event of `kind`."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        state = await handle.query(OrderWorkflow.state)
        if any(e.kind is kind for e in state.events):
            return state
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no {kind} event; log: {[e.kind for e in state.events]}")
        await asyncio.sleep(0.05)


class ServerClockCallbacks:
    """The simulators' way back, stamping reports with the test server's (skipped) clock.

    A venue's clock agrees with ours; on the time-skipping server "ours" runs years ahead, and
    the order refuses reports from too far in its past.
    """

    def __init__(self, inner: TemporalCallbacks, env: WorkflowEnvironment) -> None:
        self._inner = inner
        self._env = env

    async def report(self, report: ExecutionReport, reported_by: str) -> None:
        now = await self._env.get_current_time()
        await self._inner.report(report.model_copy(update={"transact_time": now}), reported_by)

    async def settlement_confirmed(self, settlement_id: str, order_id: str, user: str) -> None:
        await self._inner.settlement_confirmed(settlement_id, order_id, user)


@pytest.fixture(scope="session")
async def desk(
    time_skipping_env: WorkflowEnvironment,
    layer_sessions: SessionFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Desk]:
    suffix = uuid.uuid4().hex[:8]
    settings = Settings(
        orders_task_queue=f"orders-{suffix}",
        back_office_task_queue=f"back-office-{suffix}",
        simulator_fill_delay_seconds=0.05,
        worker_max_concurrent_activities=8,
    )
    client = signing_client(time_skipping_env.client, time_skipping_env.get_current_time)
    callbacks = ServerClockCallbacks(TemporalCallbacks(client), time_skipping_env)
    back_office = SimulatedBackOffice(callbacks, layer_sessions, user="betty", delay_seconds=0.05)
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as executor:
        orders_worker, simulator = build_orders_worker(
            client, settings, layer_sessions, callbacks, executor
        )
        simulated_bo = build_back_office_worker(client, settings, layer_sessions)
        # Instructions on this queue go to books the simulated back office does not read, so
        # nobody confirms them: tests answer by hand.
        manual_books = make_engine(f"sqlite:///{tmp_path_factory.mktemp('manual-bo') / 'bo.db'}")
        create_schema(manual_books)
        manual_settings = settings.model_copy(
            update={"back_office_task_queue": f"manual-bo-{suffix}"}
        )
        manual_bo = build_back_office_worker(client, manual_settings, session_factory(manual_books))
        loops = [
            asyncio.create_task(simulator.run()),
            asyncio.create_task(back_office.run()),
        ]
        async with orders_worker, simulated_bo, manual_bo:
            yield Desk(client, time_skipping_env, settings, manual_settings.back_office_task_queue)
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        manual_books.dispose()


async def confirm_settlement(handle: OrderHandle, settlement_id: str) -> None:
    """Answer one instruction as the back office's user (betty) would: confirmed."""
    await handle.signal(
        OrderWorkflow.settlement_update,
        SettlementUpdateInput(
            settlement_id=settlement_id,
            status=SettlementStatus.CONFIRMED,
            user="betty",
            at=datetime.now(UTC),
        ),
    )


async def settle_all(handle: OrderHandle) -> None:
    """Confirm every instruction of an order waiting on the manual back office, and let it close.

    An order left open keeps timers that every later skip of the shared server's clock fires.
    """
    state = await wait_for_status(handle, OrderStatus.SETTLEMENT_PENDING, OrderStatus.SETTLED)
    for instruction in state.settlements:
        await confirm_settlement(handle, instruction.settlement_id)
    assert (await handle.result()).status is OrderStatus.SETTLED


SHORT_APPROVALS = OrderTimeouts(
    approval_escalate_after=timedelta(hours=1),
    approval_expire_after=timedelta(hours=2),
    override_approval_deadlines=True,
)
