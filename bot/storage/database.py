"""Engine creation and the schema-version check that start-up runs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection

from rag.errors import ConfigError

T = TypeVar("T")

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def create_db_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # WAL lets the CLI read while a scheduled index run writes.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision(url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(url: str) -> None:
    command.upgrade(alembic_config(url), "head")


def ensure_schema(engine: Engine, url: str, *, auto_upgrade: bool) -> None:
    """Refuse a database whose schema is not at the head revision.

    The embedded SQLite database is ours alone, so it is brought up to date in place; a
    shared production database is migrated by the operator, on purpose.
    """
    head, current = head_revision(url), current_revision(engine)
    if current == head:
        return
    if auto_upgrade:
        upgrade(url)
        return
    raise ConfigError(
        f"PERIMETER_DB_URL: database schema is at revision {current or 'none'}, the code needs {head}; "
        "run `perimeter db upgrade`"
    )


class Database:
    """Units of work for the async service: each ``tx`` is one transaction, committed when the
    function returns and rolled back when it raises, run in a worker thread so the event loop
    (webhook acknowledgements, the outbox) never waits on the database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def tx_sync(self, fn: Callable[[Connection], T]) -> T:
        with self.engine.begin() as conn:
            return fn(conn)

    async def tx(self, fn: Callable[[Connection], T]) -> T:
        return await asyncio.to_thread(self.tx_sync, fn)
