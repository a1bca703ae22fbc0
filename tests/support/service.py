"""The whole service running in the test's event loop, wired by the real composition root.

The HTTP app is served by uvicorn on 127.0.0.1, aiogram talks to ``FakeTelegram`` (a real Bot
API server on loopback) through its configurable API server, the chat model is the real
OpenAI-compatible adapter talking to ``FakeLLMServer``, and the knowledge base is the sample
bank indexed with the bundled e5 embedder into embedded Qdrant. The database is SQLite or
PostgreSQL. Tests post real Bot API update JSON to the webhook and read what the bot sent
from the fake server.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from bot.composition import Container
from bot.service import ServiceRuntime
from bot.settings import Settings, load_settings
from bot.web.app import SECRET_HEADER, WEBHOOK_PATH, create_app
from rag.embedders.base import Embedder
from tests.support.fake_llm_servers import FakeLLMServer
from tests.support.fake_telegram import FakeTelegram
from tests.support.sample_kb import write_sample_kb

SECRET = "test-webhook-secret-0123456789"
OPERATOR_CHAT = -100777
OPERATORS = (7001, 7002)
CUSTOMER = 5001


@dataclass
class SteppedClock:
    """Real time plus an offset the test can move forward (re-announce, SLA, idle timeout)."""

    offset: timedelta = field(default_factory=timedelta)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


@dataclass
class RunningService:
    container: Container
    runtime: ServiceRuntime
    telegram: FakeTelegram
    llm: FakeLLMServer
    http: httpx.AsyncClient
    clock: SteppedClock

    async def post_update(self, update: dict[str, Any], *, secret: str | None = SECRET,
                          headers: dict[str, str] | None = None) -> httpx.Response:
        sent_headers = dict(headers or {})
        if secret is not None:
            sent_headers[SECRET_HEADER] = secret
        return await self.http.post(WEBHOOK_PATH, json=update, headers=sent_headers)

    async def wait_idle(self, timeout_s: float = 20.0) -> None:
        """Until every stored update is finished and the outbox has nothing due."""
        from bot.storage.events import InboundEventRepository
        from bot.storage.outbox import OutboxRepository

        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            events, outbox = await self.container.db.tx(
                lambda c: (InboundEventRepository(c).counts(), OutboxRepository(c).counts())
            )
            if not events.get("pending") and not events.get("processing") and not outbox.get("pending") \
                    and not outbox.get("sending"):
                return
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"service not idle after {timeout_s}s: events {events}, outbox {outbox}")
            await asyncio.sleep(0.05)


def service_settings(data_dir: Path, bot_api: FakeTelegram, model_server: FakeLLMServer, *,
                     db_url: str | None = None, webhook: bool = True, **sections: dict[str, Any]) -> Settings:
    """Settings for the service against the fakes; ``sections`` override per section
    (``telegram={...}``, ``chat={...}``, ``llm={...}``...)."""
    tg: dict[str, Any] = dict(
        token=bot_api.token, api_url=bot_api.url, operator_chat_id=OPERATOR_CHAT, operator_ids=list(OPERATORS),
        per_chat_interval_s=0.0, global_rate_per_s=1000.0,
    )
    if webhook:
        tg.update(webhook_url="https://bot.example.test/telegram/webhook", webhook_secret=SECRET)
    tg.update(sections.pop("telegram", {}))
    # The deadline covers retrieval too, which a loaded two-core CI machine can make slow.
    llm_cfg = dict(backend="openai", openai_url=model_server.url, model="fake-model", timeout_s=10.0)
    llm_cfg.update(sections.pop("llm", {}))
    chat = dict(lease_s=5.0)
    chat.update(sections.pop("chat", {}))
    rag = dict(cache_enabled=False)
    rag.update(sections.pop("rag", {}))
    return load_settings(
        data_dir=data_dir, telegram=tg, llm=llm_cfg, chat=chat, rag=rag, db={"url": db_url}, **sections
    )


def index_sample_kb(settings: Settings, embedder: Embedder, kb_root: Path) -> None:
    """Index the sample knowledge base into the data dir (and database) of ``settings``."""
    container = Container(settings)
    container.__dict__["embedder"] = embedder  # the already loaded real e5, not a second copy
    try:
        if settings.db.url is not None:
            from bot.storage.database import upgrade

            upgrade(settings.database_url)
        container.indexer.index([write_sample_kb(kb_root)])
    finally:
        container.close()


def copy_data_dir(template: Path, target: Path) -> Path:
    shutil.copytree(template, target)
    return target


def copy_manifest(from_sqlite: Path, to_url: str) -> None:
    """Move the knowledge-base manifest of an indexed data dir into another (migrated) database,
    so a PostgreSQL test uses the same embedded Qdrant index without indexing again."""
    from bot.storage.database import create_db_engine
    from rag.manifest import kb_collections, kb_files

    source, target = create_db_engine(f"sqlite:///{from_sqlite}"), create_db_engine(to_url)
    try:
        with source.connect() as src, target.begin() as dst:
            for table in (kb_collections, kb_files):
                # Without the serial ids: PostgreSQL's sequence must hand out the next ones.
                rows = [{k: v for k, v in r.items() if k != "id"} for r in src.execute(table.select()).mappings()]
                if rows:
                    dst.execute(table.insert(), rows)
    finally:
        source.dispose()
        target.dispose()


@asynccontextmanager
async def running_service(settings: Settings, embedder: Embedder, telegram: FakeTelegram, llm: FakeLLMServer,
                          *, clock: SteppedClock | None = None) -> AsyncIterator[RunningService]:
    """Start the service as `perimeter serve` does; stop it (and everything it opened) after."""
    clock = clock or SteppedClock()
    container = Container(settings, clock=clock)
    container.__dict__["embedder"] = embedder
    ingress = container.webhook_ingress()
    runtime = ServiceRuntime(container, "webhook" if ingress else "polling")
    await runtime.start()
    app = create_app(webhook=ingress, on_shutdown=runtime.stop, routers=container.web_routers(),
                     readiness=container.readiness, metrics=container.metrics)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False,
                                           lifespan="on"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            serving.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10.0)
    try:
        yield RunningService(container, runtime, telegram, llm, http, clock)
    finally:
        await http.aclose()
        server.should_exit = True
        await serving
        await runtime.stop()
