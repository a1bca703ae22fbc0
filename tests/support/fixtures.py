"""Shared pytest fixtures; ``tests/conftest.py`` loads them with ``pytest_plugins``."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from bot.storage.database import create_db_engine, ensure_schema
from tests.support.fake_llm_servers import FakeLLMServer


@pytest.fixture
def fake_llm_server() -> Iterator[FakeLLMServer]:
    """A fresh fake Ollama + OpenAI-compatible server per test; see ``FakeBehaviour``."""
    with FakeLLMServer() as server:
        yield server


PG_URL = os.environ.get("PERIMETER_TEST_POSTGRES_URL")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test twice: on a SQLite file, and on PostgreSQL in a schema of its own (skipped,
    with the reason shown, when PERIMETER_TEST_POSTGRES_URL is unset)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    if not PG_URL:
        pytest.skip("PERIMETER_TEST_POSTGRES_URL is not set (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    schema = f"t_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    with admin.connect() as c:
        c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def migrated_engine(db_url: str) -> Iterator[Engine]:
    """An engine on a database migrated to the head revision."""
    engine = create_db_engine(db_url)
    ensure_schema(engine, db_url, auto_upgrade=True)
    yield engine
    engine.dispose()
