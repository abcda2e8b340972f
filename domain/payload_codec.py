"""Payload encryption: what the order workflows send through Temporal is stored as AES-GCM ciphertext.

Temporal keeps every workflow's inputs, results, activity arguments, Update and Signal arguments
and Query answers in its database, in the clear unless a payload codec encodes them on the way
in. `EncryptionCodec` encrypts each payload, whole (the serialized `Payload`, metadata and data,
as Temporal's encryption sample does), with AES-256-GCM under the active key, and records that
key's id in the new payload's metadata, so a key can be rotated: decoding picks the key by the
id the payload carries, and any key still configured reads what it encrypted.

Pure like the rest of domain/: no environment, no I/O; the keys are given by config.Settings.
It lives here (as `domain.authority`'s signatures do) because every Temporal client the OMS
builds (workers, API, dev runner) and the API's codec server use it.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

ENCODING = b"binary/encrypted"
"""The `encoding` metadata of an encrypted payload."""
KEY_ID_METADATA = "encryption-key-id"
"""The metadata entry naming the key a payload was encrypted with."""
KEY_BYTES = 32
"""AES-256."""
NONCE_BYTES = 12
"""96 bits, random per payload: GCM's recommended nonce size."""
_AAD_PREFIX = b"oms-payload-v1:"


class PayloadCodecError(ValueError):
    """A payload that cannot be decrypted: an unknown key id, or ciphertext that fails its tag."""


class PayloadKeyError(ValueError):
    """Payload keys that cannot be used (not base64, not 32 bytes, no active key)."""


def parse_payload_keys(text: str) -> dict[str, bytes]:
    """Parse keys given as JSON (`{"id": "base64"}`) or as `id:base64,id:base64`.

    Raises:
        PayloadKeyError: a malformed entry, a key that is not base64 of 32 bytes, or an id twice.
    """
    text = text.strip()
    if not text:
        return {}
    entries: list[tuple[str, str]] = []
    if text.startswith("{"):
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PayloadKeyError(f"not valid JSON ({exc.msg})") from None
        if not isinstance(loaded, dict) or not all(isinstance(v, str) for v in loaded.values()):
            raise PayloadKeyError('expected a JSON object {"key id": "base64 key"}')
        entries = [(str(k), v) for k, v in loaded.items()]
    else:
        for item in text.split(","):
            key_id, sep, encoded = item.strip().partition(":")
            if not sep:
                raise PayloadKeyError("expected key-id:base64-key entries separated by commas")
            entries.append((key_id, encoded))
    keys: dict[str, bytes] = {}
    for key_id, encoded in entries:
        key_id = key_id.strip()
        if not key_id:
            raise PayloadKeyError("a key has an empty id")
        if key_id in keys:
            raise PayloadKeyError(f"key id {key_id!r} is given twice")
        keys[key_id] = decode_key(key_id, encoded)
    return keys


def decode_key(key_id: str, encoded: str) -> bytes:
    """Return the 32 bytes of a base64 key.

    Raises:
        PayloadKeyError: naming the key id (never the key).
    """
    try:
        key = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise PayloadKeyError(f"key {key_id!r} is not valid base64") from None
    if len(key) != KEY_BYTES:
        raise PayloadKeyError(
            f"key {key_id!r} is {len(key)} bytes; AES-256 needs {KEY_BYTES} "
            "(generate one with: python -c 'import base64, os; "
            "print(base64.b64encode(os.urandom(32)).decode())')"
        )
    return key


def _aad(key_id: str) -> bytes:
    # The key id is authenticated too: a payload relabelled with another id fails its tag.
    return _AAD_PREFIX + key_id.encode()


class EncryptionCodec(PayloadCodec):
    """Encrypt every payload with AES-256-GCM under the active key; decrypt by the key id it names.

    Args:
        keys: Every key that may have encrypted a stored payload, by id.
        active_key_id: The key new payloads are encrypted with; None: encode leaves payloads as
            they are (encryption off) while decode still reads those encrypted before.

    Raises:
        PayloadKeyError: `active_key_id` is not among `keys`, or a key is not 32 bytes.
    """

    def __init__(self, keys: Mapping[str, bytes], active_key_id: str | None) -> None:
        for key_id, key in keys.items():
            if len(key) != KEY_BYTES:
                raise PayloadKeyError(f"key {key_id!r} is {len(key)} bytes, not {KEY_BYTES}")
        if active_key_id is not None and active_key_id not in keys:
            raise PayloadKeyError(f"the active key id {active_key_id!r} is not among the keys")
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self.active_key_id = active_key_id

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._ciphers)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Encrypt each payload (as its serialized bytes) under the active key."""
        if self.active_key_id is None:
            return list(payloads)
        key_id = self.active_key_id
        cipher = self._ciphers[key_id]
        encoded = []
        for payload in payloads:
            nonce = os.urandom(NONCE_BYTES)
            sealed = cipher.encrypt(nonce, payload.SerializeToString(), _aad(key_id))
            encoded.append(
                Payload(
                    metadata={"encoding": ENCODING, KEY_ID_METADATA: key_id.encode()},
                    data=nonce + sealed,
                )
            )
        return encoded

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Decrypt encrypted payloads; return the others (recorded before encryption) as they are.

        Raises:
            PayloadCodecError: a key id that is not configured, or a payload whose
                authentication tag does not verify (changed, or encrypted under another key).
        """
        return [self.decode_one(payload) for payload in payloads]

    def decode_one(self, payload: Payload) -> Payload:
        """Decrypt one payload (see `decode`)."""
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        raw_id = payload.metadata.get(KEY_ID_METADATA)
        if raw_id is None:
            raise PayloadCodecError(f"an encrypted payload has no {KEY_ID_METADATA} metadata")
        key_id = raw_id.decode(errors="replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            known = ", ".join(self.key_ids) or "none"
            raise PayloadCodecError(
                f"a payload is encrypted with key id {key_id!r}, which is not configured "
                f"(OMS_PAYLOAD_KEYS has: {known}); add that key to decrypt it"
            )
        data = payload.data
        if len(data) <= NONCE_BYTES:
            raise PayloadCodecError(f"an encrypted payload (key id {key_id!r}) is truncated")
        try:
            plain = cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], _aad(key_id))
        except InvalidTag:
            raise PayloadCodecError(
                f"a payload encrypted with key id {key_id!r} fails authentication: it was "
                "altered, or that id names a different key than the one that encrypted it"
            ) from None
        decoded = Payload()
        decoded.ParseFromString(plain)
        return decoded
