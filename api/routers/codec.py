"""The codec server: the Temporal UI and CLI decrypt (and encrypt) payloads through the API.

Order contents are stored in Temporal encrypted (domain.payload_codec), so the Temporal UI and
`temporal workflow show` show ciphertext unless pointed at a codec server. These two routes
follow Temporal's codec-server protocol: `POST .../decode` and `POST .../encode` take and answer
a `Payloads` message as protobuf JSON, `{"payloads": [{"metadata": {k: base64}, "data": base64}]}`,
and may read the `X-Namespace` header the UI and CLI send. Unlike Temporal's samples they need
the caller's bearer token and a firm-wide Casbin permission, `(payloads, decode)` or
`(payloads, encode)`: decoding shows every order of every fund.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from google.protobuf import json_format
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send
from temporalio.api.common.v1 import Payloads

from api.deps import ServicesDep, UserDep
from api.errors import ApiError, ErrorBody
from api.order_access import require
from domain.payload_codec import EncryptionCodec, PayloadCodecError

logger = logging.getLogger(__name__)

PREFIX = "/codec"
# Firm-wide permissions are checked in the "*" domain (see policies/model.conf).
FIRM = "*"

router = APIRouter(prefix=PREFIX, tags=["codec server"])


_URL_SAFE = str.maketrans("-_", "+/")


def _base64(value: str) -> str:
    # Protobuf JSON takes standard or URL-safe base64, padded or not; its parser skips what is
    # not base64 ("%%%" reads as no bytes), so each value is checked strictly here.
    text = value.translate(_URL_SAFE)
    try:
        base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        raise ValueError("not base64") from None
    return value


Base64Text = Annotated[str, AfterValidator(_base64)]


class CodecPayload(BaseModel):
    """One `temporal.api.common.v1.Payload` as protobuf JSON (bytes are base64)."""

    # Fields of the message that this schema does not list pass through to the protobuf parser.
    model_config = ConfigDict(extra="allow")

    metadata: dict[str, Base64Text] = Field(
        default_factory=dict, description="Metadata entries, each value base64."
    )
    data: Base64Text = Field(default="", description="The payload's bytes, base64.")


class CodecPayloads(BaseModel):
    """A `temporal.api.common.v1.Payloads` message as protobuf JSON."""

    payloads: list[CodecPayload] = Field(default_factory=list)


def _permission(action: str) -> Callable[[ServicesDep, UserDep], Awaitable[str]]:
    # A dependency, so the permission is checked before the body: a caller without it learns
    # nothing, not even what a well-formed body looks like.
    async def allowed(services: ServicesDep, user: UserDep) -> str:
        require(services, user, FIRM, "payloads", action)
        return user

    return allowed


def _to_proto(body: CodecPayloads) -> Payloads:
    try:
        return json_format.ParseDict(
            body.model_dump(mode="json"), Payloads(), ignore_unknown_fields=True
        )
    except json_format.ParseError as exc:
        # The parser's message names the field (base64 that does not decode, most often).
        raise ApiError(422, "invalid", f"not a Payloads message: {exc}"[:200], "payloads") from None


def _check_namespace(services: ServicesDep, namespace: str | None) -> None:
    # The protocol lets a codec server tell namespaces apart by this header; this one serves the
    # OMS's namespace only, and says so rather than answer for another's keys.
    expected = services.settings.temporal_namespace
    if namespace is not None and namespace != expected:
        raise ApiError(
            400,
            "wrong_namespace",
            f"this codec server serves the {expected!r} namespace only",
            "X-Namespace",
        )


async def payload_codec(request: Request) -> EncryptionCodec:
    """Return the codec the app was built with (set at start-up, see api.app.create_app)."""
    codec: EncryptionCodec = request.app.state.payload_codec
    return codec


async def _run(
    services: ServicesDep,
    codec: EncryptionCodec,
    user: str,
    body: CodecPayloads,
    namespace: str | None,
    decode: bool,
) -> dict[str, Any]:
    _check_namespace(services, namespace)
    payloads = _to_proto(body)
    try:
        if decode:
            result = await codec.decode(payloads.payloads)
        else:
            result = await codec.encode(payloads.payloads)
    except PayloadCodecError as exc:
        raise ApiError(422, "undecodable_payload", str(exc), "payloads") from None
    # Who read what is worth knowing: decoding shows order contents.
    logger.info("codec: %s %s %d payload(s)", user, "decoded" if decode else "encoded", len(result))
    answer: dict[str, Any] = json_format.MessageToDict(Payloads(payloads=result))
    answer.setdefault("payloads", [])
    return answer


NamespaceHeader = Annotated[
    str | None, Header(alias="X-Namespace", description="The namespace the payloads are from.")
]


# The protocol's X-Namespace header naming another namespace than the OMS's.
_WRONG_NAMESPACE: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "X-Namespace names another namespace"}
}


@router.post("/decode", response_model=CodecPayloads, responses=_WRONG_NAMESPACE)
async def decode(
    body: CodecPayloads,
    services: ServicesDep,
    user: Annotated[str, Depends(_permission("decode"))],
    codec: Annotated[EncryptionCodec, Depends(payload_codec)],
    namespace: NamespaceHeader = None,
) -> dict[str, Any]:
    """Decrypt payloads (the Temporal UI's and CLI's codec endpoint); `(payloads, decode)`."""
    return await _run(services, codec, user, body, namespace, decode=True)


@router.post("/encode", response_model=CodecPayloads, responses=_WRONG_NAMESPACE)
async def encode(
    body: CodecPayloads,
    services: ServicesDep,
    user: Annotated[str, Depends(_permission("encode"))],
    codec: Annotated[EncryptionCodec, Depends(payload_codec)],
    namespace: NamespaceHeader = None,
) -> dict[str, Any]:
    """Encrypt payloads with the active key (sending a signal from the UI); `(payloads, encode)`."""
    return await _run(services, codec, user, body, namespace, decode=False)


class CodecCors:
    """CORS for the codec routes only: the Temporal UI calls them from its own origin.

    Every other route stays same-origin: a browser page elsewhere gets no CORS answer from it.
    """

    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=origins,
            allow_methods=["POST"],
            allow_headers=["Authorization", "Content-Type", "X-Namespace"],
            # The UI may send its cookies or the user's access token (TEMPORAL_CODEC_*).
            allow_credentials=True,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PREFIX + "/"):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)
