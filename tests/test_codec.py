"""Payload encryption: the AES-GCM codec, its key settings, and the converter every client uses."""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest
from pydantic import BaseModel
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter

import cli
from api.app import create_app
from config import Settings, UnsafeSettingsError
from domain.payload_codec import (
    ENCODING,
    KEY_ID_METADATA,
    EncryptionCodec,
    PayloadCodecError,
    PayloadKeyError,
    parse_payload_keys,
)
from worker import connect, data_converter

OLD_KEY = os.urandom(32)
NEW_KEY = os.urandom(32)
SECRET_TEXT = "fund-secret-AAPL-client-order-4711"


class Ticket(BaseModel):
    symbol: str
    note: str


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def settings(**overrides: Any) -> Settings:
    """Settings from the arguments alone: nothing from OMS_* or a .env file."""
    return Settings(_env_file=None, **overrides)


async def plain_payloads() -> list[Payload]:
    return pydantic_data_converter.payload_converter.to_payloads(
        [Ticket(symbol="AAPL", note=SECRET_TEXT), "just text", 42]
    )


async def test_round_trip_restores_each_payload_exactly() -> None:
    codec = EncryptionCodec({"k1": OLD_KEY}, "k1")
    originals = await plain_payloads()
    encrypted = await codec.encode(originals)
    assert len(encrypted) == len(originals)
    for payload in encrypted:
        assert payload.metadata["encoding"] == ENCODING
        assert payload.metadata[KEY_ID_METADATA] == b"k1"
        assert SECRET_TEXT.encode() not in payload.data
        assert b"AAPL" not in payload.SerializeToString()
    assert await codec.decode(encrypted) == originals


async def test_each_encryption_uses_a_fresh_nonce() -> None:
    codec = EncryptionCodec({"k1": OLD_KEY}, "k1")
    original = (await plain_payloads())[:1]
    first, second = await codec.encode(original), await codec.encode(original)
    assert first[0].data != second[0].data
    assert await codec.decode(first) == await codec.decode(second) == original


async def test_a_rotated_codec_still_reads_what_the_old_key_encrypted() -> None:
    before = EncryptionCodec({"2025": OLD_KEY}, "2025")
    stored = await before.encode(await plain_payloads())
    after = EncryptionCodec({"2025": OLD_KEY, "2026": NEW_KEY}, "2026")
    assert await after.decode(stored) == await plain_payloads()
    fresh = await after.encode(await plain_payloads())
    assert {p.metadata[KEY_ID_METADATA] for p in fresh} == {b"2026"}
    # Without the old key, the old payloads are refused by name.
    retired = EncryptionCodec({"2026": NEW_KEY}, "2026")
    with pytest.raises(PayloadCodecError, match="'2025', which is not configured"):
        await retired.decode(stored)
    assert await retired.decode(fresh) == await plain_payloads()


async def test_an_unknown_key_id_is_refused_clearly() -> None:
    stored = await EncryptionCodec({"elsewhere": OLD_KEY}, "elsewhere").encode(
        await plain_payloads()
    )
    with pytest.raises(PayloadCodecError, match=r"key id 'elsewhere'.*OMS_PAYLOAD_KEYS has: k1"):
        await EncryptionCodec({"k1": NEW_KEY}, "k1").decode(stored)


async def test_tampering_is_detected() -> None:
    codec = EncryptionCodec({"k1": OLD_KEY, "k2": NEW_KEY}, "k1")
    payload = (await codec.encode(await plain_payloads()))[0]
    for index in (0, 12, len(payload.data) - 1):  # the nonce, the ciphertext, the tag
        changed = bytearray(payload.data)
        changed[index] ^= 0x01
        tampered = Payload(metadata=dict(payload.metadata), data=bytes(changed))
        with pytest.raises(PayloadCodecError, match="fails authentication"):
            await codec.decode([tampered])
    # Relabelled with another configured key's id: the id is authenticated too.
    relabelled = Payload(metadata={**payload.metadata, KEY_ID_METADATA: b"k2"}, data=payload.data)
    with pytest.raises(PayloadCodecError, match="fails authentication"):
        await codec.decode([relabelled])
    truncated = Payload(metadata=dict(payload.metadata), data=payload.data[:5])
    with pytest.raises(PayloadCodecError, match="truncated"):
        await codec.decode([truncated])


async def test_payloads_recorded_before_encryption_read_as_they_are() -> None:
    codec = EncryptionCodec({"k1": OLD_KEY}, "k1")
    plain = await plain_payloads()
    assert await codec.decode(plain) == plain
    # Encryption off (no active key): nothing new is encrypted, old ciphertext still reads.
    reader = EncryptionCodec({"k1": OLD_KEY}, None)
    assert await reader.encode(plain) == plain
    assert await reader.decode(await codec.encode(plain)) == plain


def test_keys_parse_from_json_or_pairs_and_bad_keys_are_named() -> None:
    assert parse_payload_keys(f"a:{b64(OLD_KEY)}, b:{b64(NEW_KEY)}") == {"a": OLD_KEY, "b": NEW_KEY}
    assert parse_payload_keys(f'{{"a": "{b64(OLD_KEY)}"}}') == {"a": OLD_KEY}
    assert parse_payload_keys("  ") == {}
    for text, message in [
        ("a:not base64!", "key 'a' is not valid base64"),
        (f"a:{b64(os.urandom(16))}", "key 'a' is 16 bytes; AES-256 needs 32"),
        (b64(OLD_KEY), "key-id:base64-key"),
        (f"a:{b64(OLD_KEY)},a:{b64(NEW_KEY)}", "'a' is given twice"),
        ("{not json", "not valid JSON"),
        ('{"a": 1}', "JSON object"),
    ]:
        with pytest.raises(PayloadKeyError, match=message):
            parse_payload_keys(text)
    with pytest.raises(PayloadKeyError, match="not among the keys"):
        EncryptionCodec({"a": OLD_KEY}, "b")


def test_production_encrypts_by_default_and_refuses_to_run_without_a_key() -> None:
    with pytest.raises(UnsafeSettingsError, match="no key: set OMS_PAYLOAD_KEYS"):
        settings(env="production").payload_codec()
    assert settings(env="production", payload_encryption=False).payload_codec() is None
    codec = settings(env="production", payload_keys=f"k1:{b64(OLD_KEY)}").payload_codec()
    assert codec is not None and codec.active_key_id == "k1"


def test_development_does_not_encrypt_unless_asked() -> None:
    assert settings(env="development").payload_codec() is None
    # Keys still decrypt what was encrypted before, and nothing new is encrypted.
    reader = settings(env="development", payload_keys=f"k1:{b64(OLD_KEY)}").payload_codec()
    assert reader is not None and reader.active_key_id is None
    on = settings(
        env="development", payload_encryption=True, payload_keys=f"k1:{b64(OLD_KEY)}"
    ).payload_codec()
    assert on is not None and on.active_key_id == "k1"
    with pytest.raises(UnsafeSettingsError, match="OMS_PAYLOAD_KEYS"):
        settings(env="development", payload_encryption=True).payload_codec()


def test_bad_key_settings_name_the_variable_and_never_echo_the_key() -> None:
    short = b64(os.urandom(16))
    with pytest.raises(UnsafeSettingsError, match="OMS_PAYLOAD_KEYS: key 'k1' is 16 bytes") as err:
        settings(payload_keys=f"k1:{short}").payload_codec()
    assert short not in str(err.value)
    with pytest.raises(UnsafeSettingsError, match="OMS_PAYLOAD_KEY_ID: 'k3' is not an id"):
        settings(payload_keys=f"k1:{b64(OLD_KEY)}", payload_key_id="k3").payload_codec()
    both = f"k1:{b64(OLD_KEY)},k2:{b64(NEW_KEY)}"
    with pytest.raises(UnsafeSettingsError, match="set OMS_PAYLOAD_KEY_ID"):
        settings(env="production", payload_keys=both).payload_codec()
    chosen = settings(env="production", payload_keys=both, payload_key_id="k2").payload_codec()
    assert chosen is not None and chosen.active_key_id == "k2"
    assert b64(OLD_KEY) not in repr(settings(payload_keys=both))


def test_the_keys_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMS_PAYLOAD_KEYS", f'{{"k1": "{b64(OLD_KEY)}", "k2": "{b64(NEW_KEY)}"}}')
    monkeypatch.setenv("OMS_PAYLOAD_KEY_ID", "k1")
    monkeypatch.setenv("OMS_PAYLOAD_ENCRYPTION", "true")
    monkeypatch.setenv("OMS_CODEC_CORS_ORIGINS", "https://temporal.example, http://localhost:8080")
    loaded = settings()
    codec = loaded.payload_codec()
    assert codec is not None and codec.active_key_id == "k1" and codec.key_ids == ["k1", "k2"]
    assert loaded.codec_cors_origins == ["https://temporal.example", "http://localhost:8080"]


async def test_every_client_converts_through_the_codec() -> None:
    converter = data_converter(settings(env="production", payload_keys=f"k1:{b64(OLD_KEY)}"))
    assert isinstance(converter.payload_codec, EncryptionCodec)
    ticket = Ticket(symbol="AAPL", note=SECRET_TEXT)
    encoded = await converter.encode([ticket])
    assert SECRET_TEXT.encode() not in encoded[0].SerializeToString()
    assert await converter.decode(encoded, [Ticket]) == [ticket]
    assert data_converter(settings(env="development")) is pydantic_data_converter


async def test_clients_and_the_api_refuse_to_start_without_a_key() -> None:
    production = settings(env="production")
    with pytest.raises(UnsafeSettingsError, match="OMS_PAYLOAD_KEYS"):
        await connect(production)  # before any connection is tried
    safe = {
        "jwt_secret": "a-production-secret-of-at-least-thirty-two-bytes",
        "authority_signing_key": base64.b64encode(b"\x07" * 32).decode(),
    }
    app = create_app(settings(env="production", **safe))
    with pytest.raises(UnsafeSettingsError, match="OMS_PAYLOAD_KEYS"):
        async with app.router.lifespan_context(app):
            pass  # pragma: no cover


def test_oms_api_names_the_missing_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OMS_ENV", "production")
    monkeypatch.setenv("OMS_JWT_SECRET", "a-production-secret-of-at-least-thirty-two-bytes")
    monkeypatch.setenv("OMS_AUTHORITY_SIGNING_KEY", base64.b64encode(b"\x07" * 32).decode())
    monkeypatch.delenv("OMS_PAYLOAD_KEYS", raising=False)
    monkeypatch.delenv("OMS_PAYLOAD_ENCRYPTION", raising=False)
    assert cli.main(["api"]) == 2
    assert "no key: set OMS_PAYLOAD_KEYS" in capsys.readouterr().err
