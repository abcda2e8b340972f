"""Ways back into the OMS for the simulators: over the HTTP API, or straight to the workflow."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import quote

import httpx
from temporalio.client import Client, WorkflowUpdateFailedError

from domain.executions import ExecutionReport
from domain.ids import order_workflow_id
from domain.models import SettlementStatus
from workflows.messages import ExecutionReportInput, SettlementUpdateInput
from workflows.order import OrderWorkflow

log = logging.getLogger(__name__)

TokenFactory = Callable[[str], str]

# A few quick attempts ride out a blip; a longer outage is the caller's to retry (the
# simulators keep what they have not delivered and send it again later).
_ATTEMPTS = 3
_FIRST_PAUSE_SECONDS = 0.1
# Answers that say "not now" rather than "no": the request may succeed if sent again.
_TRANSIENT_STATUSES = frozenset({408, 429})


async def _post_with_retry(
    http: httpx.AsyncClient, url: str, token: str, body: dict[str, object]
) -> None:
    """POST `body`; return once the OMS answered 2xx or 4xx (a refusal is final, and logged).

    Raises:
        httpx.TransportError: The OMS could not be reached on the last attempt.
        httpx.HTTPStatusError: The OMS answered 5xx (or 408, 429) on the last attempt.
    """
    pause = _FIRST_PAUSE_SECONDS
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            response = await http.post(url, json=body, headers={"Authorization": f"Bearer {token}"})
        except httpx.TransportError:
            if attempt == _ATTEMPTS:
                raise
        else:
            if response.status_code < 500 and response.status_code not in _TRANSIENT_STATUSES:
                if response.status_code >= 400:
                    log.warning("OMS refused %s: %s %s", url, response.status_code, response.text)
                return
            if attempt == _ATTEMPTS:
                response.raise_for_status()
        await asyncio.sleep(pause)
        pause *= 2


class HttpCallbacks:
    """Report to the OMS the way an external venue or back office would: its public HTTP API.

    Each call returns once the OMS answered (accepted or refused) and raises when it could not
    be reached or failed (5xx), so the caller sends it again later.
    """

    def __init__(self, http: httpx.AsyncClient, base_url: str, token_for: TokenFactory) -> None:
        self._http = http
        self._base_url = base_url.rstrip("/")
        self._token_for = token_for

    async def report(self, report: ExecutionReport, reported_by: str) -> None:
        """Post an execution report to `/executions` as `reported_by`."""
        await _post_with_retry(
            self._http,
            f"{self._base_url}/executions",
            self._token_for(reported_by),
            report.model_dump(mode="json"),
        )

    async def settlement_confirmed(self, settlement_id: str, order_id: str, user: str) -> None:
        """Confirm a settlement (`/settlements/{id}/confirm`) as `user`."""
        await _post_with_retry(
            self._http,
            f"{self._base_url}/settlements/{quote(settlement_id, safe='')}/confirm",
            self._token_for(user),
            {},
        )


class TemporalCallbacks:
    """Report straight to the order workflow (tests, or an adapter running beside the workers).

    Execution reports are the order's Update, so a duplicate or a refusal is an answer, not an
    outage: only a failure to reach Temporal raises (and the simulator sends again later).
    """

    def __init__(self, client: Client) -> None:
        self._client = client

    async def report(self, report: ExecutionReport, reported_by: str) -> None:
        handle = self._client.get_workflow_handle_for(
            OrderWorkflow.run, order_workflow_id(report.order_id)
        )
        try:
            await handle.execute_update(
                OrderWorkflow.execution_report,
                ExecutionReportInput(report=report, reported_by=reported_by),
            )
        except WorkflowUpdateFailedError as err:
            log.info("order refused report %s: %s", report.exec_id, err.cause)

    async def settlement_confirmed(self, settlement_id: str, order_id: str, user: str) -> None:
        handle = self._client.get_workflow_handle_for(
            OrderWorkflow.run, order_workflow_id(order_id)
        )
        await handle.signal(
            OrderWorkflow.settlement_update,
            SettlementUpdateInput(
                settlement_id=settlement_id,
                status=SettlementStatus.CONFIRMED,
                user=user,
                at=datetime.now(UTC),
            ),
        )
