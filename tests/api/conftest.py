"""The whole OMS in-process on the shared dev server: real workers, the API over HTTP, SQLite."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from api.tokens import issue_token
from config import Settings
from db.demo import load_demo_data
from db.engine import create_schema, make_engine, session_factory
from devserver import running_oms


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Stack:
    settings: Settings
    http: httpx.AsyncClient
    env: WorkflowEnvironment

    def auth(self, user: str) -> dict[str, str]:
        token = issue_token(user, self.settings.jwt_secret, timedelta(minutes=30))
        return {"Authorization": f"Bearer {token}"}

    async def call(
        self, user: str | None, method: str, path: str, body: Any = None
    ) -> httpx.Response:
        headers = self.auth(user) if user else {}
        return await self.http.request(method, path, json=body, headers=headers)

    async def wait_for_status(
        self, user: str, order_id: str, *statuses: str, within: float = 20
    ) -> dict[str, Any]:
        """Long-poll the order until it reaches one of `statuses` (or later); fail otherwise."""
        path = f"/orders/{order_id}?wait_for={','.join(statuses)}&timeout={within}"
        response = await self.call(user, "GET", path)
        order: dict[str, Any] = response.json()
        if order.get("status") not in statuses:
            raise AssertionError(f"order is {order.get('status')}; wanted {statuses}")
        return order


@pytest.fixture(scope="session")
async def stack(
    dev_env: WorkflowEnvironment,
    tmp_path_factory: pytest.TempPathFactory,
    api_database_url: str,
) -> AsyncIterator[Stack]:
    suffix = uuid.uuid4().hex[:8]
    port = free_port()
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("oms"),
        database_url=api_database_url,
        temporal_address=dev_env.client.service_client.config.target_host,
        api_port=port,
        orders_task_queue=f"orders-{suffix}",
        back_office_task_queue=f"back-office-{suffix}",
        simulator_fill_delay_seconds=0.05,
        back_office_confirm_delay_seconds=0.05,
        jwt_secret=f"test-secret-{suffix}-long-enough-for-hs256",
    )
    engine = make_engine(settings.resolved_database_url)
    create_schema(engine)
    with session_factory(engine)() as session:
        load_demo_data(session)
    engine.dispose()
    async with (
        running_oms(settings, dev_env.client),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http,
    ):
        yield Stack(settings, http, dev_env)
