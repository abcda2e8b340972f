"""Wiring only: settings -> Temporal client -> workers (orders queue, back-office queue)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import gc
from collections.abc import Coroutine, Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any, TypeVar

import httpx
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter
from temporalio.worker import Worker

from activities.assessment import AssessmentActivities
from activities.back_office import BackOfficeActivities, SimulatedBackOffice
from activities.compliance import ComplianceActivities, load_approval_policies
from activities.notifications import ChatNotifications, load_chat_users
from activities.portfolio import PortfolioActivities, ReadModelPrices
from activities.projection import ProjectionActivities
from activities.venue import VenueActivities
from api.auth import Authorizer
from api.tokens import token_for as signed_token
from config import Settings
from db import queries
from db.engine import SessionFactory, create_schema, make_engine, session_factory
from domain.authority import TRUSTED_KEYS
from venues.base import ExecutionSink
from venues.manual import ManualVenue
from venues.reconcile import reconcile_orders_at
from venues.simulator import PriceSource, SimulatedVenue
from venues.sinks import HttpCallbacks
from workflow_runner import workflow_runner
from workflows.order import OrderWorkflow
from workflows.order_v1 import OrderWorkflowV1

QUEUES = ("orders", "back-office")

T = TypeVar("T")


# Young objects collected every this many allocations (Python's default is 700): an order
# allocates tens of thousands (payloads, models, rows), and each collection walks them all.
GC_YOUNG_THRESHOLD = 10_000


def settle_garbage_collector() -> None:
    """Make the garbage collector cheaper for a long-running OMS process; call once it has started.

    What start-up loaded (modules, the SDK, pydantic's and SQLAlchemy's caches: about 220,000
    objects) lives as long as the process, yet each full collection walked all of it again
    (about 190 ms, twice an order's worth of CPU). Frozen, it is left out of every collection.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on uvloop where it is installed (a dependency, but on Windows).

    Every OMS process spends much of its CPU in the event loop (HTTP, Temporal's polling, thread
    hand-offs); uvloop's does the same work for about a tenth less CPU an order (`make bench`).
    The garbage collector is settled first (`settle_garbage_collector`).
    """
    settle_garbage_collector()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def data_converter(settings: Settings) -> DataConverter:
    """Return the data converter of every Temporal client the OMS builds (API, workers, dev).

    Pydantic models as JSON, then, unless payload encryption is off and no key was ever set,
    the AES-GCM codec (domain.payload_codec): order contents reach Temporal's database encrypted.

    Raises:
        UnsafeSettingsError: encryption is on without a key, or a key is malformed.
    """
    codec = settings.payload_codec()
    if codec is None:
        return pydantic_data_converter
    return dataclasses.replace(pydantic_data_converter, payload_codec=codec)


async def connect(settings: Settings) -> Client:
    """Connect to Temporal with the OMS data converter (the API and workers must agree)."""
    converter = data_converter(settings)  # refuses bad key settings before connecting
    return await Client.connect(
        settings.resolved_temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=converter,
    )


def price_source(sessions: SessionFactory) -> PriceSource:
    """Return the simulator's price lookup: reference price and lot size from the read model."""

    def lookup(symbol: str) -> tuple[Decimal, Decimal] | None:
        with sessions() as session:
            instrument = queries.get_instrument(session, symbol)
        return None if instrument is None else (instrument.reference_price, instrument.lot_size)

    return lookup


def build_simulated_venue(
    settings: Settings, sessions: SessionFactory, sink: ExecutionSink
) -> SimulatedVenue:
    """Return the simulated venue: its book is in the database, so any process can drive it."""
    return SimulatedVenue(
        sink,
        price_source(sessions),
        sessions,
        delay_seconds=settings.simulator_fill_delay_seconds,
        identity=settings.simulator_identity,
        lease_seconds=settings.simulator_lease_seconds,
    )


def build_orders_worker(
    client: Client,
    settings: Settings,
    sessions: SessionFactory,
    sink: ExecutionSink,
    executor: concurrent.futures.Executor,
    http: httpx.AsyncClient | None = None,
) -> tuple[Worker, SimulatedVenue]:
    """Return the worker of the orders queue (both order workflows, their activities) and the venue.

    The simulated venue's driver loop (`SimulatedVenue.run`) is the caller's to run. `http`
    posts chat notifications (a client of their own when None).
    """
    # The orders' validators accept only actions the API signed with one of these keys.
    TRUSTED_KEYS.trust(settings.verify_keys())
    simulator = build_simulated_venue(settings, sessions, sink)
    projection = ProjectionActivities(sessions)
    compliance = ComplianceActivities(sessions, settings.policies_dir)
    portfolio = PortfolioActivities(sessions, ReadModelPrices(sessions))
    assessment = AssessmentActivities(portfolio, settings.policies_dir)
    manual = ManualVenue()
    venues = VenueActivities({simulator.name: simulator, manual.name: manual})
    notifications = ChatNotifications(
        http or httpx.AsyncClient(),
        settings.chat_webhook_url,
        Authorizer(settings.policies_dir),
        load_chat_users(settings.policies_dir).chat_ids,
        # Read when a notice escalates, so it follows the policy file as orders do.
        levels_in_order=lambda fund: (
            load_approval_policies(settings.policies_dir).for_fund(fund).levels_in_order
        ),
        timeout_seconds=settings.chat_timeout_seconds,
    )
    worker = Worker(
        client,
        task_queue=settings.orders_task_queue,
        workflows=[OrderWorkflow, OrderWorkflowV1],
        activities=[
            projection.project_events,
            compliance.pre_trade_data,
            portfolio.portfolio_snapshot,
            assessment.assess_order,
            venues.submit_order,
            venues.cancel_at_venue,
            venues.venue_order_status,
            venues.replace_at_venue,
            notifications.notify_approval_needed,
            notifications.notify_decided,
            # v1 orders still running use these.
            projection.project_order,
            projection.book_allocations,
            projection.record_settlement_status,
            compliance.compliance_snapshot,
            compliance.approval_matrix,
        ],
        activity_executor=executor,
        workflow_runner=workflow_runner(client.data_converter),
        max_concurrent_activities=settings.worker_max_concurrent_activities,
        max_concurrent_local_activities=settings.worker_max_concurrent_activities,
    )
    return worker, simulator


def build_back_office_worker(
    client: Client, settings: Settings, sessions: SessionFactory
) -> Worker:
    """Return the worker of the back office's queue: settlement instructions."""
    activities = BackOfficeActivities(sessions)
    return Worker(
        client,
        task_queue=settings.back_office_task_queue,
        activities=[activities.instruct_settlements, activities.instruct_settlement],
    )


async def run_workers(
    settings: Settings, queues: Sequence[str] = QUEUES, *, simulate: bool | None = None
) -> None:
    """Run the workers of `queues` until cancelled, with the simulators of those queues.

    The simulated venue (orders) and back office report through the HTTP API. `simulate`
    (default: the `run_simulators` setting) says whether their loops run here; `oms simulators`
    runs them in a process of their own (no queues, simulate=True).
    """
    # Production refuses the published development secrets before anything starts.
    settings.refuse_development_secrets("worker")
    simulate = settings.run_simulators if simulate is None else simulate
    simulated = queues or QUEUES
    # One connection per activity thread, and a few for the simulators' loops.
    engine = make_engine(
        settings.resolved_database_url,
        pool_size=settings.worker_max_concurrent_activities + 4,
        max_overflow=4,
        pool_timeout=settings.db_pool_timeout_seconds,
    )
    create_schema(engine)
    sessions = session_factory(engine)
    client = await connect(settings)
    ttl = timedelta(seconds=settings.jwt_default_ttl_seconds)

    def token_for(user: str) -> str:
        return signed_token(settings, user, min(ttl, settings.jwt_max_ttl))

    async with httpx.AsyncClient(timeout=10) as http:
        callbacks = HttpCallbacks(http, settings.resolved_api_url, token_for)
        workers: list[Worker] = []
        loops: list[Coroutine[Any, Any, object]] = []
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.worker_max_concurrent_activities
        ) as executor:
            if "orders" in queues:
                orders_worker, _ = build_orders_worker(
                    client, settings, sessions, callbacks, executor, http
                )
                workers.append(orders_worker)
            if "back-office" in queues:
                workers.append(build_back_office_worker(client, settings, sessions))
            if simulate and "orders" in simulated:
                loops.append(build_simulated_venue(settings, sessions, callbacks).run())
                # The adapter (re)starts: what the OMS has working there is compared with it.
                loops.append(reconcile_orders_at(client, sessions, SimulatedVenue.name))
            if simulate and "back-office" in simulated and settings.back_office_simulator:
                back_office = SimulatedBackOffice(
                    callbacks,
                    sessions,
                    user=settings.back_office_identity,
                    delay_seconds=settings.back_office_confirm_delay_seconds,
                )
                loops.append(back_office.run())
            # The simulators' pending work is in the database: cancelling their loops loses none.
            await asyncio.gather(*(w.run() for w in workers), *loops)
        engine.dispose()
