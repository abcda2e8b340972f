"""Identifiers: an order id is derived from (fund, client order id), so a repeated POST finds the same order."""

from __future__ import annotations

import uuid

# Fixed namespace: changing it would give existing orders new ids.
_ORDER_ID_NAMESPACE = uuid.UUID("6f1c9d52-8a53-4a8e-9a63-0f5c2d1f7e11")
_WORKFLOW_ID_PREFIX = "order:"


def order_id_for(fund: str, client_order_id: str) -> str:
    """Return the OMS order id for a fund's client order id (stable, URL-safe, not guessable across funds)."""
    digest = uuid.uuid5(_ORDER_ID_NAMESPACE, f"{fund}/{client_order_id}").hex
    return f"ord_{digest[:20]}"


def order_workflow_id(order_id: str) -> str:
    """Return the Temporal workflow id of an order."""
    return f"{_WORKFLOW_ID_PREFIX}{order_id}"


def order_id_from_workflow_id(workflow_id: str) -> str:
    """Return the order id of an order workflow id; the inverse of `order_workflow_id`."""
    if not workflow_id.startswith(_WORKFLOW_ID_PREFIX):
        raise ValueError(f"not an order workflow id: {workflow_id!r}")
    return workflow_id.removeprefix(_WORKFLOW_ID_PREFIX)


def settlement_id_for(order_id: str, account: str) -> str:
    """Return the id of the settlement instruction for one account's allocation of an order."""
    return f"{order_id}.{account}"
