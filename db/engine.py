"""Engine and session factory for the read model (SQLite by default, PostgreSQL in production)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine, event
from sqlalchemy.engine.url import make_url
from sqlmodel import Session, SQLModel, create_engine

import db.tables  # noqa: F401  - registers the tables on SQLModel.metadata

SessionFactory = Callable[[], Session]


def make_engine(url: str) -> Engine:
    """Create an engine; for SQLite, make the file's folder and allow use from worker threads."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            # WAL lets the API read while workers write.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def create_schema(engine: Engine) -> None:
    """Create every table that does not exist yet."""
    SQLModel.metadata.create_all(engine)


def session_factory(engine: Engine) -> SessionFactory:
    """Return a callable that opens a new session on `engine`."""

    def open_session() -> Session:
        return Session(engine, expire_on_commit=False)

    return open_session
