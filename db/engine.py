"""Engine and session factory for the read model (SQLite by default, PostgreSQL in production)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event, inspect, text
from sqlalchemy.engine.url import make_url
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, SQLModel, create_engine

# Importing these registers their tables on SQLModel.metadata, so create_schema makes them.
import db.simulators
import db.tables  # noqa: F401

SessionFactory = Callable[[], Session]


def make_engine(
    url: str,
    *,
    pool_size: int | None = None,
    max_overflow: int | None = None,
    pool_timeout: float | None = None,
) -> Engine:
    """Create an engine; for SQLite, make the file's folder and allow use from worker threads.

    Args:
        url: the SQLAlchemy URL.
        pool_size: connections the pool keeps open.
        max_overflow: more connections it may open in a burst.
        pool_timeout: seconds taking a connection waits before `sqlalchemy.exc.TimeoutError`.

    A pool setting left None keeps the backend's default (for an in-memory SQLite database,
    whose single connection is not pooled, they are ignored).
    """
    parsed = make_url(url)
    pool: dict[str, Any] = {
        key: value
        for key, value in (
            ("pool_size", pool_size),
            ("max_overflow", max_overflow),
            ("pool_timeout", pool_timeout),
        )
        if value is not None
    }
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ":memory:"
        in_memory = database == ":memory:"
        if not in_memory:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            **({} if in_memory else pool),
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            # WAL lets the API read while workers write.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # With WAL, NORMAL loses no committed transaction on a process crash (only on power
            # loss), and spares an fsync per commit: projections commit often.
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, **({"pool_size": 10, "max_overflow": 20} | pool))


def create_schema(engine: Engine) -> None:
    """Create every table that does not exist yet, and add columns that newer code added."""
    SQLModel.metadata.create_all(engine)
    _add_missing_columns(engine)


def _add_missing_columns(engine: Engine) -> None:
    """Add the columns a table gained since the database was made (a read model kept by `oms dev`).

    Only additive changes are made this way: a new column with its scalar default, or nullable.
    """
    inspector = inspect(engine)
    preparer = engine.dialect.identifier_preparer
    with engine.begin() as connection:
        for table in SQLModel.metadata.sorted_tables:
            present = {c["name"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name in present:
                    continue
                # Processes starting together may race to add it: PostgreSQL can say so in the
                # statement; SQLite serialises writers, and a loser's error is caught below.
                guard = "IF NOT EXISTS " if engine.dialect.name == "postgresql" else ""
                ddl = (
                    f"ALTER TABLE {preparer.format_table(table)} "
                    f"ADD COLUMN {guard}{preparer.format_column(column)} "
                    f"{column.type.compile(dialect=engine.dialect)}"
                )
                default = getattr(column.default, "arg", None)
                if isinstance(default, bool):
                    # TRUE/FALSE: PostgreSQL's boolean literals, which SQLite (3.23+) takes too.
                    ddl += f" NOT NULL DEFAULT {'TRUE' if default else 'FALSE'}"
                elif isinstance(default, str | int):
                    literal = f"'{default}'" if isinstance(default, str) else str(default)
                    ddl += f" NOT NULL DEFAULT {literal}"
                try:
                    with connection.begin_nested():
                        connection.execute(text(ddl))
                except OperationalError as exc:
                    if "duplicate column" not in str(exc).lower():
                        raise


def session_factory(engine: Engine) -> SessionFactory:
    """Return a callable that opens a new session on `engine`."""

    def open_session() -> Session:
        return Session(engine, expire_on_commit=False)

    return open_session
