"""Settings for the OMS processes (API, workers, dev runner), read from OMS_* environment variables."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from domain.authority import private_key_from_text, public_key_from_text

PROJECT_ROOT = Path(__file__).resolve().parent
POLICIES_DIR = PROJECT_ROOT / "policies"

ORDERS_TASK_QUEUE = "orders"
BACK_OFFICE_TASK_QUEUE = "back-office"
# Published with the code (sha256 of "oms development authority key"): for development only.
DEV_AUTHORITY_SIGNING_KEY = "RpOW432L1oIRwR3DDeLjK6JRPCKzENKfCDXgw9BSv4g="


class Settings(BaseSettings):
    """Every knob of the OMS; the defaults are the embedded development setup."""

    model_config = SettingsConfigDict(env_prefix="OMS_", env_file=".env", extra="ignore")

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

    jwt_secret: str = "dev-only-secret-change-me-in-production-please"
    jwt_default_ttl_seconds: int = 8 * 3600

    # Chat-ops (Slack-compatible). No webhook: approval notifications are not sent at all.
    chat_webhook_url: str | None = Field(
        default=None, description="Incoming webhook for approval notices; unset sends nothing."
    )
    chat_timeout_seconds: float = Field(
        default=5.0, gt=0, description="How long one post to the chat webhook may take."
    )
    # Slack signs every request with it; the default only suits `oms dev` (it is public).
    slack_signing_secret: str = Field(
        default="dev-only-slack-signing-secret-change-me",
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

    policies_dir: Path = POLICIES_DIR

    default_venue: str = "simulator"
    known_venues: list[str] = Field(default_factory=lambda: ["simulator", "manual"])
    simulator_fill_delay_seconds: float = 0.2
    simulator_identity: str = "sim-venue"
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

    @model_validator(mode="after")
    def _slots_leave_a_connection_for_healthz(self) -> Settings:
        if self.api_db_concurrency >= self.db_pool_size + self.db_max_overflow:
            raise ValueError(
                "api_db_concurrency must be below db_pool_size + db_max_overflow: "
                "one connection is kept for /healthz"
            )
        return self

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
