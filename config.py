"""Settings for the OMS processes (API, workers, dev runner), read from OMS_* environment variables."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from domain.authority import private_key_from_text, public_key_from_text
from domain.payload_codec import EncryptionCodec, PayloadKeyError, parse_payload_keys

PROJECT_ROOT = Path(__file__).resolve().parent
POLICIES_DIR = PROJECT_ROOT / "policies"

ORDERS_TASK_QUEUE = "orders"
BACK_OFFICE_TASK_QUEUE = "back-office"
# Published with the code (sha256 of "oms development authority key"): for development only.
DEV_AUTHORITY_SIGNING_KEY = "RpOW432L1oIRwR3DDeLjK6JRPCKzENKfCDXgw9BSv4g="
# Published with the code as well: accepted only when OMS_ENV=development (`oms dev`).
DEV_JWT_SECRET = "dev-only-secret-change-me-in-production-please"
DEV_SLACK_SIGNING_SECRET = "dev-only-slack-signing-secret-change-me"

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """Parse '90s', '15m', '8h' or '2d'.

    Raises:
        ValueError: the text is not such a duration.
    """
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30m, 8h, 2d)")
    return timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])


class UnsafeSettingsError(RuntimeError):
    """Production settings that still hold a published development secret."""


class Settings(BaseSettings):
    """Every knob of the OMS; the defaults are the embedded development setup."""

    model_config = SettingsConfigDict(env_prefix="OMS_", env_file=".env", extra="ignore")

    # `oms dev` runs as development; everything else is production unless OMS_ENV says so.
    # Production refuses the published development secrets and serves no API docs by default.
    env: Literal["development", "production"] = Field(
        default="production", description="development (oms dev) or production."
    )
    api_docs: bool | None = Field(
        default=None,
        description="Serve /docs, /redoc and /openapi.json; unset: only in development.",
    )
    api_max_body_bytes: int = Field(
        default=1024 * 1024, ge=1, description="Largest request body the API reads (then 413)."
    )
    # /metrics shows live order flow: never on the API port, but on a listener of its own that
    # only the monitoring system reaches (loopback unless configured). Port 0: no listener.
    metrics_host: str = Field(
        default="127.0.0.1", description="Where the Prometheus metrics listener binds."
    )
    metrics_port: int = Field(
        default=9464, ge=0, le=65535, description="Prometheus metrics listener port; 0: off."
    )

    data_dir: Path = Field(
        default=Path(".oms"), description="Where the dev server and SQLite keep state."
    )
    database_url: str = Field(
        default="", description="SQLAlchemy URL; empty means SQLite in data_dir."
    )

    temporal_address: str = ""
    temporal_host: str = "127.0.0.1"
    temporal_port: int = 7233
    temporal_ui_port: int = 8233
    temporal_namespace: str = "default"
    orders_task_queue: str = ORDERS_TASK_QUEUE
    back_office_task_queue: str = BACK_OFFICE_TASK_QUEUE

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_url: str = Field(
        default="", description="Where simulators post back; empty means api_host:api_port."
    )
    # The API's read-model connections. Requests take one of api_db_concurrency slots before
    # they touch the database (the rest wait up to api_db_wait_seconds, then get a 503), and
    # there are fewer slots than pooled connections, so a request never waits for the pool.
    db_pool_size: int = Field(default=20, ge=1, description="Connections the API keeps open.")
    db_max_overflow: int = Field(
        default=10, ge=0, description="More connections the API may open in a burst."
    )
    db_pool_timeout_seconds: float = Field(
        default=5.0, gt=0, description="How long taking a pooled connection waits (then 503)."
    )
    api_db_concurrency: int = Field(
        default=16, ge=1, description="Requests that use the database at once."
    )
    api_db_wait_seconds: float = Field(
        default=5.0, ge=0, description="How long a request waits for its turn (then 503)."
    )
    api_threads: int = Field(
        default=40, ge=1, description="Threads for the API's sync endpoints and dependencies."
    )

    jwt_secret: str = DEV_JWT_SECRET
    jwt_default_ttl_seconds: int = 8 * 3600
    # Tokens are HS256 with jwt_secret; they must name this issuer and audience, carry an
    # expiry, and live no longer than jwt_max_ttl (a number of seconds, or 30m, 12h, 1d).
    jwt_issuer: str = Field(default="oms", min_length=1)
    jwt_audience: str = Field(default="oms-api", min_length=1)
    jwt_max_ttl: timedelta = Field(default=timedelta(hours=12))
    # A company identity provider: RS256 tokens verified with the public keys it publishes
    # there (a JWKS document), with the same issuer, audience and lifetime checks.
    jwt_jwks_url: str | None = Field(
        default=None, description="JWKS URL for RS256 tokens; unset: HS256 tokens only."
    )

    # Chat-ops (Slack-compatible). No webhook: approval notifications are not sent at all.
    chat_webhook_url: str | None = Field(
        default=None, description="Incoming webhook for approval notices; unset sends nothing."
    )
    chat_timeout_seconds: float = Field(
        default=5.0, gt=0, description="How long one post to the chat webhook may take."
    )
    # Slack signs every request with it; the default only suits `oms dev` (it is public).
    slack_signing_secret: str = Field(
        default=DEV_SLACK_SIGNING_SECRET,
        min_length=1,
        description="Verifies /chat/slack/* requests (the Slack app's Signing Secret).",
    )
    # The API signs each decision it lets through (Ed25519; base64 of the 32-byte private key)
    # and the order workflow verifies it, so nobody can act as someone else straight on
    # Temporal. The default is a published development key: set your own outside development.
    authority_signing_key: str = DEV_AUTHORITY_SIGNING_KEY
    # Public keys (base64, a JSON list) the workers trust; empty: the signing key's own. List
    # the old key as well as the new while rotating, until no order waits on a statement of it.
    authority_verify_keys: list[str] = Field(default_factory=list)

    # --- Payload encryption (domain.payload_codec; README "Payload encryption") -------------
    # What orders send through Temporal is stored there as AES-256-GCM ciphertext. Keys are
    # base64 of 32 bytes, by id: every key that encrypted a stored payload stays listed (old
    # histories decode by the id they carry); the active one encrypts new payloads.
    payload_encryption: bool | None = Field(
        default=None,
        description="Encrypt payloads stored in Temporal; unset: on in production, off in dev.",
    )
    payload_keys: SecretStr = Field(
        default=SecretStr(""),
        description='Payload keys by id: {"id": "base64"} or id:base64,id:base64.',
    )
    payload_key_id: str | None = Field(
        default=None, description="The key id that encrypts new payloads; unset: the only key."
    )
    # Browsers allowed to call /codec/* (the Temporal UI's origin); only those routes send CORS.
    codec_cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["http://localhost:8233"],
        description="Origins (JSON list or comma-separated) that may call the codec server.",
    )

    @field_validator("codec_cors_origins", mode="before")
    @classmethod
    def _origins_text(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [origin.strip() for origin in text.split(",") if origin.strip()]
        return value

    @property
    def payload_encryption_enabled(self) -> bool:
        if self.payload_encryption is not None:
            return self.payload_encryption
        return not self.is_development

    def payload_key_map(self) -> dict[str, bytes]:
        """Return the payload keys by id.

        Raises:
            UnsafeSettingsError: naming OMS_PAYLOAD_KEYS and the key id at fault (checked here,
                at start-up, rather than by a validator, whose error would quote the keys).
        """
        try:
            return parse_payload_keys(self.payload_keys.get_secret_value())
        except PayloadKeyError as exc:
            raise UnsafeSettingsError(f"OMS_PAYLOAD_KEYS: {exc}") from None

    def payload_codec(self) -> EncryptionCodec | None:
        """Return the codec every Temporal client uses; None when nothing is (or was) encrypted.

        With encryption off but keys configured, the codec still decrypts what was encrypted
        before and encrypts nothing new.

        Raises:
            UnsafeSettingsError: encryption is on and no key (or no single active key) is set,
                or a key or the active key id is malformed.
        """
        keys = self.payload_key_map()
        active = self.payload_key_id or None  # empty (compose's unset variable): the only key
        if active is not None and active not in keys:
            raise UnsafeSettingsError(
                f"OMS_PAYLOAD_KEY_ID: {active!r} is not an id in OMS_PAYLOAD_KEYS"
            )
        if not self.payload_encryption_enabled:
            return EncryptionCodec(keys, None) if keys else None
        if not keys:
            raise UnsafeSettingsError(
                f"refusing to start with payload encryption on (OMS_ENV={self.env}, "
                "OMS_PAYLOAD_ENCRYPTION unset or true) and no key: set OMS_PAYLOAD_KEYS "
                "(e.g. 'k1:<base64 of 32 random bytes>', see README 'Payload encryption'), or "
                "OMS_PAYLOAD_ENCRYPTION=false to store order contents in Temporal in the clear"
            )
        if active is None:
            if len(keys) > 1:
                raise UnsafeSettingsError(
                    "OMS_PAYLOAD_KEYS holds several keys: set OMS_PAYLOAD_KEY_ID to the one "
                    "that encrypts new payloads"
                )
            active = next(iter(keys))
        return EncryptionCodec(keys, active)

    policies_dir: Path = POLICIES_DIR

    default_venue: str = "simulator"
    known_venues: list[str] = Field(default_factory=lambda: ["simulator", "manual"])
    simulator_fill_delay_seconds: float = 0.2
    simulator_identity: str = "sim-venue"
    # Who reports executions for each venue (JSON: venue -> users). "*" lets anyone holding
    # ("executions", "create") in the order's fund report, as people do for the manual venue.
    # A report on an order released to another venue, or to a venue with no entry, answers 404.
    venue_reporters: dict[str, list[str]] = Field(
        default_factory=lambda: {"simulator": ["sim-venue"], "manual": ["*"]}
    )
    # How long the simulated venue holds an order while reporting on it; after a worker dies,
    # its successor waits this long before it takes the dead one's orders over.
    # The simulated venue's and back office's loops run in the worker of their queue; false when
    # `oms simulators` runs them in a process of their own.
    run_simulators: bool = True
    simulator_lease_seconds: float = Field(default=10.0, gt=0)
    back_office_simulator: bool = True
    back_office_identity: str = "betty"
    back_office_confirm_delay_seconds: float = 0.2

    # Each fund's approval times are in policies/approvals.toml; these, when set, override
    # them for every order created from then on (a test, a drill).
    approval_escalate_after_seconds: int | None = Field(default=None, gt=0)
    approval_expire_after_seconds: int | None = Field(default=None, gt=0)
    venue_ack_timeout_seconds: int = 60
    # Activities (and local activities) one worker runs at once; also its thread pool's size.
    worker_max_concurrent_activities: int = 32

    @field_validator("jwt_max_ttl", mode="before")
    @classmethod
    def _duration_text(cls, value: object) -> object:
        if isinstance(value, str) and value.strip() and value.strip()[-1] in _UNIT_SECONDS:
            return parse_duration(value)
        return value

    @field_validator("jwt_max_ttl")
    @classmethod
    def _positive_ttl(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("jwt_max_ttl must be positive")
        return value

    @model_validator(mode="after")
    def _slots_leave_a_connection_for_healthz(self) -> Settings:
        if self.api_db_concurrency >= self.db_pool_size + self.db_max_overflow:
            raise ValueError(
                "api_db_concurrency must be below db_pool_size + db_max_overflow: "
                "one connection is kept for /healthz"
            )
        return self

    @property
    def is_development(self) -> bool:
        return self.env == "development"

    @property
    def docs_enabled(self) -> bool:
        return self.api_docs if self.api_docs is not None else self.is_development

    @property
    def chat_uses_default_secret(self) -> bool:
        return self.slack_signing_secret == DEV_SLACK_SIGNING_SECRET

    def development_secrets(self, process: Literal["api", "worker"]) -> list[str]:
        """Return the variables still holding a published development secret that `process` uses."""
        found = []
        if self.jwt_secret == DEV_JWT_SECRET:
            found.append("OMS_JWT_SECRET")
        if process == "api" and self.authority_signing_key == DEV_AUTHORITY_SIGNING_KEY:
            found.append("OMS_AUTHORITY_SIGNING_KEY")
        if process == "worker":
            dev_key = (
                private_key_from_text(DEV_AUTHORITY_SIGNING_KEY).public_key().public_bytes_raw()
            )
            if any(key.public_bytes_raw() == dev_key for key in self.verify_keys()):
                found.append(
                    "OMS_AUTHORITY_VERIFY_KEYS"
                    if self.authority_verify_keys
                    else "OMS_AUTHORITY_SIGNING_KEY (or OMS_AUTHORITY_VERIFY_KEYS)"
                )
        # Chat is in use once notifications go out: Slack's answers must then be verifiable.
        if self.chat_webhook_url and self.chat_uses_default_secret:
            found.append("OMS_SLACK_SIGNING_SECRET")
        return found

    def refuse_development_secrets(self, process: Literal["api", "worker"]) -> None:
        """Refuse to run `process` in production with a published development secret.

        Raises:
            UnsafeSettingsError: naming each variable to set.
        """
        if self.is_development:
            return
        found = self.development_secrets(process)
        if found:
            raise UnsafeSettingsError(
                f"refusing to start the {process} in production (OMS_ENV={self.env}) with the "
                f"published development value of {', '.join(found)}: set "
                f"{'it' if len(found) == 1 else 'them'} to your own secret, or run `oms dev` "
                "(OMS_ENV=development) for development"
            )

    def signing_key(self) -> Ed25519PrivateKey:
        return private_key_from_text(self.authority_signing_key)

    def verify_keys(self) -> list[Ed25519PublicKey]:
        if not self.authority_verify_keys:
            return [self.signing_key().public_key()]
        return [public_key_from_text(key) for key in self.authority_verify_keys]

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'oms.db'}"

    @property
    def resolved_temporal_address(self) -> str:
        return self.temporal_address or f"{self.temporal_host}:{self.temporal_port}"

    @property
    def resolved_api_url(self) -> str:
        return self.api_url or f"http://{self.api_host}:{self.api_port}"
