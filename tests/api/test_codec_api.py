"""Payload encryption end to end: an OMS with the codec on, on the shared dev server.

An order runs to settled through the API with every client (API and workers) encrypting; its
history, read with a plain client, holds no plaintext of the order, and replays with the codec's
converter. The codec server (`/codec/decode`, `/codec/encode`) decrypts that history for those
allowed to, and for no one else.
"""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from config import Settings
from db.demo import load_demo_data
from db.engine import create_schema, make_engine, session_factory
from devserver import running_oms
from domain.ids import order_workflow_id
from domain.payload_codec import ENCODING, KEY_ID_METADATA, EncryptionCodec
from tests.api.conftest import Stack, free_port
from worker import data_converter
from workflows.order import OrderWorkflow
from workflows.order_v1 import OrderWorkflowV1

OLD_KEY = os.urandom(32)
NEW_KEY = os.urandom(32)
UI_ORIGIN = "http://localhost:8233"


@dataclass
class Sealed:
    """An OMS whose API and workers encrypt payloads; `client` decrypts, `stack.env.client` not."""

    stack: Stack
    client: Client


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
async def sealed(
    dev_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Sealed]:
    suffix = uuid.uuid4().hex[:8]
    data_dir = tmp_path_factory.mktemp("sealed")
    port = free_port()
    settings = Settings(
        data_dir=data_dir,
        database_url=f"sqlite:///{data_dir / 'oms.db'}",
        temporal_address=dev_env.client.service_client.config.target_host,
        api_port=port,
        orders_task_queue=f"sealed-orders-{suffix}",
        back_office_task_queue=f"sealed-back-office-{suffix}",
        simulator_fill_delay_seconds=0.05,
        back_office_confirm_delay_seconds=0.05,
        jwt_secret=f"test-secret-{suffix}-long-enough-for-hs256",
        payload_encryption=True,
        payload_keys=f"old:{b64(OLD_KEY)},new:{b64(NEW_KEY)}",
        payload_key_id="new",
        codec_cors_origins=[UI_ORIGIN],
    )
    engine = make_engine(settings.resolved_database_url)
    create_schema(engine)
    with session_factory(engine)() as session:
        load_demo_data(session)
    engine.dispose()
    # The same connection as the shared dev server's client, with the OMS's converter.
    client = Client(
        dev_env.client.service_client,
        namespace=dev_env.client.namespace,
        data_converter=data_converter(settings),
    )
    async with (
        running_oms(settings, client),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http,
    ):
        yield Sealed(Stack(settings, http, dev_env), client)


def payloads_in(message: Message) -> Iterator[Payload]:
    """Yield every Payload anywhere in a protobuf message (history events nest them deeply)."""
    if isinstance(message, Payload):
        yield message
        return
    for field, value in message.ListFields():
        kind = field.message_type
        if field.type != FieldDescriptor.TYPE_MESSAGE or kind is None:
            continue
        if kind.GetOptions().map_entry:
            if kind.fields_by_name["value"].type == FieldDescriptor.TYPE_MESSAGE:
                for item in value.values():
                    yield from payloads_in(item)
        elif field.is_repeated:
            for item in value:
                yield from payloads_in(item)
        else:
            yield from payloads_in(value)


def written_by_core(event: HistoryEvent) -> list[Payload]:
    """Return the payloads of the event that the SDK's core writes itself, past the codec.

    A `workflow.patched` marker and the `TemporalChangeVersion` search attribute it upserts
    (search attributes must stay readable to be indexed) name the patch; a local activity's
    marker data names the activity, its attempt and times (its result is encrypted). None of
    them carries anything of an order.
    """
    if event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
        marker = event.marker_recorded_event_attributes
        if marker.marker_name == "core_patch":
            return [p for details in marker.details.values() for p in details.payloads]
        if marker.marker_name == "core_local_activity":
            # Read through items(): indexing a message map would add the key.
            return [p for k, v in marker.details.items() if k == "data" for p in v.payloads]
    if event.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
        fields = event.upsert_workflow_search_attributes_event_attributes.search_attributes
        return [v for k, v in fields.indexed_fields.items() if k == "TemporalChangeVersion"]
    return []


def as_json(payloads: list[Payload]) -> dict[str, Any]:
    answer: dict[str, Any] = json_format.MessageToDict(Payloads(payloads=payloads))
    return answer


def from_json(body: dict[str, Any]) -> list[Payload]:
    return list(json_format.ParseDict(body, Payloads()).payloads)


async def settled_order(sealed: Sealed, client_order_id: str, notes: str) -> str:
    stack = sealed.stack
    body = {
        "client_order_id": client_order_id,
        "fund": "fund-alpha",
        "symbol": "AAPL",
        "side": "buy",
        "quantity": 100,
        "order_type": "limit",
        "limit_price": "231",
        "time_in_force": "gtc",
        "notes": notes,
    }
    created = await stack.call("alice", "POST", "/orders", body)
    assert created.status_code == 201, created.text
    order_id: str = created.json()["order_id"]
    approved = await stack.call("dana", "POST", f"/orders/{order_id}/approve", {"comment": "ok"})
    assert approved.status_code == 200, approved.text
    released = await stack.call("tom", "POST", f"/orders/{order_id}/release", {})
    assert released.status_code == 200, released.text
    settled = await stack.wait_for_status("alice", order_id, "settled")
    # Read back through the API's (decrypting) client: the order is whole.
    assert (settled["symbol"], settled["client_order_id"]) == ("AAPL", client_order_id)
    handle = sealed.client.get_workflow_handle(order_workflow_id(order_id))
    await asyncio.wait_for(handle.result(), timeout=30)
    return order_id


@pytest.fixture(scope="module")
async def sealed_order(sealed: Sealed) -> tuple[str, str, WorkflowHistory]:
    """A settled order of the encrypting OMS, and its history as Temporal stores it."""
    client_order_id = f"sealed-{uuid.uuid4().hex[:12]}"
    notes = f"confidential-note-{uuid.uuid4().hex}"
    order_id = await settled_order(sealed, client_order_id, notes)
    # A plain client, without the codec: what anyone reading Temporal's database sees.
    plain = sealed.stack.env.client.get_workflow_handle(order_workflow_id(order_id))
    return client_order_id, notes, await plain.fetch_history()


async def test_stored_payloads_hold_no_plaintext_of_the_order(
    sealed_order: tuple[str, str, WorkflowHistory],
) -> None:
    client_order_id, notes, history = sealed_order
    payloads = [(event, p) for event in history.events for p in payloads_in(event)]
    encrypted = [p for event, p in payloads if p not in written_by_core(event)]
    assert len(encrypted) > 10  # inputs, activity arguments and results, Updates, the result
    for payload in encrypted:
        assert payload.metadata["encoding"] == ENCODING, (payload.metadata, payload.data[:300])
        assert payload.metadata[KEY_ID_METADATA] == b"new"
    for _, payload in payloads:
        stored = payload.SerializeToString()
        for text in (client_order_id, notes, "AAPL", "fund-alpha", "alpha-main"):
            assert text.encode() not in stored, text
    # Nor anywhere else in the history (summaries, failure texts, ...).
    whole = b"".join(event.SerializeToString() for event in history.events)
    assert client_order_id.encode() not in whole
    assert notes.encode() not in whole


async def test_the_encrypted_history_replays_with_the_codec(
    sealed: Sealed, sealed_order: tuple[str, str, WorkflowHistory]
) -> None:
    _, _, history = sealed_order
    converter = data_converter(sealed.stack.settings)
    await Replayer(
        workflows=[OrderWorkflow, OrderWorkflowV1], data_converter=converter
    ).replay_workflow(history)
    # The same history read as JSON (as `temporal workflow show --output json` gives it).
    again = WorkflowHistory.from_json(history.workflow_id, history.to_json())
    await Replayer(
        workflows=[OrderWorkflow, OrderWorkflowV1], data_converter=converter
    ).replay_workflow(again)


async def test_the_codec_server_decrypts_the_stored_history_for_compliance(
    sealed: Sealed, sealed_order: tuple[str, str, WorkflowHistory]
) -> None:
    client_order_id, notes, history = sealed_order
    started = next(
        e for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED
    )
    stored = list(started.workflow_execution_started_event_attributes.input.payloads)
    answer = await sealed.stack.http.post(
        "/codec/decode",
        json=as_json(stored),
        headers={**sealed.stack.auth("cora"), "X-Namespace": "default"},
    )
    assert answer.status_code == 200, answer.text
    decoded = from_json(answer.json())
    assert decoded == await EncryptionCodec({"old": OLD_KEY, "new": NEW_KEY}, None).decode(stored)
    text = b"".join(p.data for p in decoded)
    assert client_order_id.encode() in text and notes.encode() in text


async def test_encode_then_decode_round_trips_and_old_keys_still_decode(sealed: Sealed) -> None:
    stack = sealed.stack
    plain = pydantic_data_converter.payload_converter.to_payloads(
        [{"symbol": "AAPL", "quantity": "100"}, "a note"]
    )
    encoded = await stack.http.post(
        "/codec/encode", json=as_json(plain), headers=stack.auth("cora")
    )
    assert encoded.status_code == 200, encoded.text
    sealed_payloads = from_json(encoded.json())
    assert [p.metadata[KEY_ID_METADATA] for p in sealed_payloads] == [b"new", b"new"]
    assert all(b"AAPL" not in p.data for p in sealed_payloads)
    decoded = await stack.http.post(
        "/codec/decode", json=encoded.json(), headers=stack.auth("cora")
    )
    assert decoded.status_code == 200, decoded.text
    assert from_json(decoded.json()) == plain
    # Encrypted under the retired key, before rotation: still readable.
    before = await EncryptionCodec({"old": OLD_KEY}, "old").encode(plain)
    old = await stack.http.post("/codec/decode", json=as_json(before), headers=stack.auth("cora"))
    assert from_json(old.json()) == plain
    # Payloads recorded before encryption come back as they are; an empty list is an answer.
    same = await stack.http.post("/codec/decode", json=as_json(plain), headers=stack.auth("cora"))
    assert from_json(same.json()) == plain
    empty = await stack.http.post(
        "/codec/decode", json={"payloads": []}, headers=stack.auth("cora")
    )
    assert empty.json() == {"payloads": []}


async def test_the_codec_server_needs_a_token_and_the_permission(sealed: Sealed) -> None:
    stack = sealed.stack
    body = as_json(await EncryptionCodec({"new": NEW_KEY}, "new").encode([Payload(data=b"x")]))
    for path in ("/codec/decode", "/codec/encode"):
        assert (await stack.http.post(path, json=body)).status_code == 401
        bad = {"Authorization": "Bearer not-a-token"}
        assert (await stack.http.post(path, json=body, headers=bad)).status_code == 401
        for user in ("alice", "tom", "dana", "mike", "betty", "prometheus"):
            refused = await stack.http.post(path, json=body, headers=stack.auth(user))
            assert refused.status_code == 403, (path, user, refused.text)
            assert refused.json()["error"]["code"] == "forbidden"
            assert "AAPL" not in refused.text


async def test_malformed_bodies_and_payloads_are_refused_in_the_error_shape(
    sealed: Sealed,
) -> None:
    stack = sealed.stack
    cora = stack.auth("cora")
    good = await EncryptionCodec({"new": NEW_KEY}, "new").encode([Payload(data=b"secret")])
    tampered = Payload(metadata=dict(good[0].metadata), data=good[0].data[:-1] + b"\x00")
    elsewhere = await EncryptionCodec({"gone": OLD_KEY}, "gone").encode([Payload(data=b"x")])
    cases: list[tuple[Any, int, str]] = [
        ({"payloads": "nope"}, 422, "invalid"),
        ({"payloads": [{"data": "!!not base64!!"}]}, 422, "invalid"),
        ({"payloads": [{"metadata": {"encoding": "%%%"}}]}, 422, "invalid"),
        ([1, 2], 422, "invalid"),
        (as_json([tampered]), 422, "undecodable_payload"),
        (as_json(elsewhere), 422, "undecodable_payload"),
    ]
    for body, status, code in cases:
        answer = await stack.http.post("/codec/decode", json=body, headers=cora)
        assert answer.status_code == status, (body, answer.text)
        assert answer.json()["error"]["code"] == code, answer.text
        assert set(answer.json()["error"]) == {"code", "message", "field"}
    not_json = await stack.http.post(
        "/codec/decode",
        content=b"{not json",
        headers={**cora, "Content-Type": "application/json"},
    )
    assert not_json.status_code == 422 and not_json.json()["error"]["code"] == "invalid"
    unknown = await stack.http.post("/codec/decode", json=as_json(elsewhere), headers=cora)
    assert "'gone', which is not configured" in unknown.json()["error"]["message"]
    other = await stack.http.post(
        "/codec/decode", json=as_json(good), headers={**cora, "X-Namespace": "elsewhere"}
    )
    assert other.status_code == 400 and other.json()["error"]["field"] == "X-Namespace"


async def test_cors_answers_the_temporal_ui_on_the_codec_routes_only(sealed: Sealed) -> None:
    http = sealed.stack.http
    preflight = {
        "Origin": UI_ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-namespace",
    }
    allowed = await http.options("/codec/decode", headers=preflight)
    assert allowed.status_code == 200, allowed.text
    assert allowed.headers["access-control-allow-origin"] == UI_ORIGIN
    assert "x-namespace" in allowed.headers["access-control-allow-headers"].lower()
    # A 401 reaches the UI readable, so it can say why.
    refused = await http.post("/codec/decode", json={"payloads": []}, headers={"Origin": UI_ORIGIN})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == UI_ORIGIN
    stranger = await http.options(
        "/codec/decode", headers={**preflight, "Origin": "https://evil.example"}
    )
    assert "access-control-allow-origin" not in stranger.headers
    elsewhere = await http.options("/orders", headers=preflight)
    assert "access-control-allow-origin" not in elsewhere.headers
