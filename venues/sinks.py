"""Ways back into the OMS for the simulators: over the HTTP API, or straight to the workflow."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
from temporalio.client import Client

from domain.executions import ExecutionReport
from domain.ids import order_workflow_id
from domain.models import SettlementInstruction, SettlementStatus
from workflows.messages import ExecutionReportInput, SettlementUpdateInput
from workflows.order import OrderWorkflow

log = logging.getLogger(__name__)

TokenFactory = Callable[[str], str]

_ATTEMPTS = 5


async def _post_with_retry(
    http: httpx.AsyncClient, url: str, token: str, body: dict[str, object]
) -> None:
    delay = 0.2
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            response = await http.post(url, json=body, headers={"Authorization": f"Bearer {token}"})
        except httpx.TransportError:
            if attempt == _ATTEMPTS:
                raise
        else:
            if response.status_code < 500:
                if response.status_code >= 400:
                    log.warning("OMS refused %s: %s %s", url, response.status_code, response.text)
                return
            if attempt == _ATTEMPTS:
                response.raise_for_status()
        await asyncio.sleep(delay)
        delay *= 2


class HttpCallbacks:
    """Report to the OMS the way an external venue or back office would: its public HTTP API."""

    def __init__(self, http: httpx.AsyncClient, base_url: str, token_for: TokenFactory) -> None:
        self._http = http
        self._base_url = base_url.rstrip("/")
        self._token_for = token_for

    async def report(self, report: ExecutionReport, reported_by: str) -> None:
        await _post_with_retry(
            self._http,
            f"{self._base_url}/executions",
            self._token_for(reported_by),
            report.model_dump(mode="json"),
        )

    async def settlement_confirmed(self, instruction: SettlementInstruction, user: str) -> None:
        await _post_with_retry(
            self._http,
            f"{self._base_url}/settlements/{instruction.settlement_id}/confirm",
            self._token_for(user),
            {},
        )


class TemporalCallbacks:
    """Report straight to the order workflow by Temporal signal (tests, or a co-located adapter)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    async def report(self, report: ExecutionReport, reported_by: str) -> None:
        handle = self._client.get_workflow_handle(order_workflow_id(report.order_id))
        await handle.signal(
            OrderWorkflow.execution_report,
            ExecutionReportInput(report=report, reported_by=reported_by),
        )

    async def settlement_confirmed(self, instruction: SettlementInstruction, user: str) -> None:
        handle = self._client.get_workflow_handle(order_workflow_id(instruction.order_id))
        await handle.signal(
            OrderWorkflow.settlement_update,
            SettlementUpdateInput(
                settlement_id=instruction.settlement_id,
                status=SettlementStatus.CONFIRMED,
                user=user,
                at=datetime.now(UTC),
            ),
        )
