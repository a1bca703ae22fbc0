"""Hybrid retrieval over the active collection: query embedding + BM25, fused in Qdrant."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Engine

from rag.embedders.base import Embedder
from rag.errors import ConfigError, InputError
from rag.manifest import CollectionRecord, ManifestRepository
from rag.sparse import Bm25Encoder
from rag.store import Fusion, Hit, Mode, QdrantStore, SearchFilter


@dataclass(frozen=True)
class Retrieval:
    hits: list[Hit]
    collection: str
    index_version: int
    query_vector: np.ndarray
    embed_s: float
    search_s: float


class Retriever:
    """``active`` names the collection to search (the manifest's active one for the service,
    a fixed one for an evaluation index) and is asked on every search, so a finished
    re-index or model switch takes effect without a restart."""

    def __init__(
        self, *, store: QdrantStore, embedder: Embedder, active: Callable[[], CollectionRecord],
        prefetch_k: int = 40, fusion: Fusion = "dbsf",
    ) -> None:
        self._store, self._embedder, self._active = store, embedder, active
        self._prefetch, self._fusion = prefetch_k, fusion
        self._bm25: tuple[str, float, Bm25Encoder] | None = None

    @property
    def embedder(self) -> Embedder:
        return self._embedder

    def active_collection(self) -> CollectionRecord:
        return self._active()

    def embed_query(self, question: str) -> np.ndarray:
        return np.asarray(self._embedder.embed_queries([question])[0], dtype=np.float32)

    def search(
        self, question: str, *, limit: int, flt: SearchFilter | None = None, mode: Mode = "hybrid",
        query_vector: np.ndarray | None = None,
    ) -> Retrieval:
        active = self._active()
        t0 = time.perf_counter()
        qvec = self.embed_query(question) if query_vector is None else query_vector
        t1 = time.perf_counter()
        sparse = self._encoder(active).encode_query(question)
        hits = self._store.search(
            active.name, dense=qvec, sparse=sparse if sparse.indices else None, limit=limit,
            prefetch=max(self._prefetch, limit), flt=flt,
            mode=_effective_mode(mode, bool(sparse.indices)), fusion=self._fusion,
        )
        return Retrieval(hits, active.name, active.index_version, qvec, t1 - t0, time.perf_counter() - t1)

    def _encoder(self, active: CollectionRecord) -> Bm25Encoder:
        if self._bm25 is None or self._bm25[:2] != (active.name, active.avg_len):
            self._bm25 = (active.name, active.avg_len, Bm25Encoder(avg_len=active.avg_len))
        return self._bm25[2]


def _effective_mode(mode: Mode, has_terms: bool) -> Mode:
    """A question of stop words only has no BM25 terms: search it densely instead of failing."""
    return "dense" if mode in ("hybrid", "sparse") and not has_terms else mode


def manifest_collection(engine: Engine, embedder_id: str) -> Callable[[], CollectionRecord]:
    """The service's collection lookup: the manifest's active collection, checked against the embedder."""

    def active() -> CollectionRecord:
        with engine.connect() as conn:
            record = ManifestRepository(conn).active_collection()
        if record is None:
            raise InputError("the knowledge base is empty: run `perimeter index FOLDER` first")
        if record.embedder_id != embedder_id:
            raise ConfigError(
                f"PERIMETER_EMBED_MODEL: the index was built with {record.embedder_id}, the configured "
                f"embedder is {embedder_id}; run `perimeter index` to rebuild it"
            )
        return record

    return active
