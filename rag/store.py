"""Qdrant store: one collection per embedding model, a named dense vector and a BM25 sparse
vector per chunk, hybrid retrieval fused inside Qdrant through the Query API.

Works the same on embedded Qdrant (`QdrantClient(path=...)`) and on a server; the client
is built by the composition root and passed in.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from rag.embedders.base import Vectors
from rag.errors import BackendUnavailable
from rag.models import Chunk
from rag.sparse import SparseVector

DENSE = "dense"
SPARSE = "bm25"
Mode = Literal["hybrid", "dense", "sparse"]
Fusion = Literal["rrf", "dbsf"]

_POINT_NS = uuid.UUID("6f1b7e8e-3c0d-4a55-9a7e-0d6b7b1f2c11")


def point_id(chunk: Chunk) -> str:
    """Stable id: the same chunk content at the same place keeps its point across runs."""
    return str(uuid.uuid5(_POINT_NS, f"{chunk.content_hash}:{chunk.position}"))


@dataclass(frozen=True)
class SearchFilter:
    audiences: tuple[str, ...] | None = ("customer",)
    languages: tuple[str, ...] | None = None
    doc_ids: tuple[str, ...] | None = None

    def to_qdrant(self) -> qm.Filter | None:
        must: list[qm.Condition] = []
        if self.audiences:
            must.append(qm.FieldCondition(key="audience", match=qm.MatchAny(any=list(self.audiences))))
        if self.languages:
            must.append(qm.FieldCondition(key="language", match=qm.MatchAny(any=list(self.languages))))
        if self.doc_ids:
            must.append(qm.FieldCondition(key="doc_id", match=qm.MatchAny(any=list(self.doc_ids))))
        return qm.Filter(must=must) if must else None

    def allows(self, hit: Hit) -> bool:
        return (
            (not self.audiences or hit.audience in self.audiences)
            and (not self.languages or hit.language in self.languages)
            and (not self.doc_ids or hit.doc_id in self.doc_ids)
        )


@dataclass(frozen=True)
class Hit:
    """A retrieved chunk. ``score`` is the fused rank score, ``similarity`` the dense cosine
    between the query and the chunk (comparable across queries; the confidence gate uses it)."""

    point_id: str
    score: float
    similarity: float
    source_id: str
    doc_id: str
    title: str
    heading_path: tuple[str, ...]
    text: str
    language: str
    audience: str
    url: str | None
    position: int


def _payload(chunk: Chunk) -> dict[str, Any]:
    return {
        "source_id": chunk.source_id,
        "doc_id": chunk.doc_id,
        "title": chunk.title,
        "heading_path": list(chunk.heading_path),
        "text": chunk.text,
        "language": chunk.language,
        "audience": chunk.audience,
        "url": chunk.url,
        "position": chunk.position,
        "content_hash": chunk.content_hash,
    }


def _is_embedded(client: QdrantClient) -> bool:
    from qdrant_client.local.qdrant_local import QdrantLocal

    return isinstance(getattr(client, "_client", None), QdrantLocal)


def _sparse(v: SparseVector) -> qm.SparseVector:
    return qm.SparseVector(indices=v.indices, values=v.values)


class QdrantStore:
    """Collections, points and hybrid search. Errors from Qdrant become BackendUnavailable."""

    def __init__(self, client: QdrantClient, *, post_filter: bool | None = None) -> None:
        """``post_filter``: check filters on the hits in Python instead of inside Qdrant.

        Embedded Qdrant evaluates a payload filter point by point in Python (about 30 µs a
        point: 300 ms at 10k chunks), while its unfiltered search is vectorised. There, an
        over-fetched unfiltered search whose hits are then checked is far faster, and a
        filtered search runs only when too few allowed hits come back. A server has payload
        indexes and filters natively. Default: on for embedded clients. (Fusion then sees
        the unfiltered candidates, so the allowed hits keep the order of the full ranking.)
        """
        self._client = client
        self._post_filter = _is_embedded(client) if post_filter is None else post_filter

    @property
    def client(self) -> QdrantClient:
        return self._client

    def ensure_collection(self, name: str, dim: int) -> None:
        try:
            if self._client.collection_exists(name):
                return
            self._client.create_collection(
                name,
                vectors_config={DENSE: qm.VectorParams(size=dim, distance=qm.Distance.COSINE)},
                sparse_vectors_config={SPARSE: qm.SparseVectorParams(modifier=qm.Modifier.IDF)},
            )
            with warnings.catch_warnings():
                # Embedded mode ignores payload indexes (and warns); servers need them for fast filters.
                warnings.simplefilter("ignore")
                for key in ("audience", "language", "doc_id"):
                    self._client.create_payload_index(name, key, qm.PayloadSchemaType.KEYWORD)
        except (UnexpectedResponse, ResponseHandlingException, OSError) as exc:
            raise BackendUnavailable(f"Qdrant: cannot create collection {name}: {exc}") from exc

    def collection_exists(self, name: str) -> bool:
        return bool(self._client.collection_exists(name))

    def drop_collection(self, name: str) -> None:
        if self._client.collection_exists(name):
            self._client.delete_collection(name)

    def count(self, name: str) -> int:
        return int(self._client.count(name, exact=True).count)

    def upsert(
        self, name: str, chunks: Sequence[Chunk], dense: Vectors, sparse: Sequence[SparseVector]
    ) -> list[str]:
        if not (len(chunks) == len(dense) == len(sparse)):
            raise ValueError("chunks, dense and sparse vectors must have the same length")
        ids = [point_id(c) for c in chunks]
        points = [
            qm.PointStruct(
                id=pid,
                vector={DENSE: d.tolist(), SPARSE: _sparse(s)},
                payload=_payload(c),
            )
            for pid, c, d, s in zip(ids, chunks, dense, sparse, strict=True)
        ]
        self._call(lambda: self._client.upsert(name, points=points, wait=True))
        return ids

    def delete(self, name: str, ids: Iterable[str]) -> None:
        id_list: list[int | str | uuid.UUID] = list(ids)
        if id_list:
            self._call(
                lambda: self._client.delete(name, points_selector=qm.PointIdsList(points=id_list), wait=True)
            )

    def search(
        self,
        name: str,
        *,
        dense: np.ndarray | None,
        sparse: SparseVector | None,
        limit: int,
        prefetch: int,
        flt: SearchFilter | None = None,
        mode: Mode = "hybrid",
        fusion: Fusion = "dbsf",
    ) -> list[Hit]:
        if flt is not None and flt.to_qdrant() is not None and self._post_filter:
            wide = max(limit * 4, 20)
            hits = self._search(name, dense, sparse, wide, max(prefetch, wide), None, mode, fusion)
            allowed = [h for h in hits if flt.allows(h)]
            if len(allowed) >= limit or len(hits) < wide:  # enough, or the whole collection was seen
                return allowed[:limit]
        return self._search(name, dense, sparse, limit, prefetch, flt, mode, fusion)

    def _search(
        self, name: str, dense: np.ndarray | None, sparse: SparseVector | None, limit: int, prefetch: int,
        flt: SearchFilter | None, mode: Mode, fusion: Fusion,
    ) -> list[Hit]:
        qfilter = flt.to_qdrant() if flt else None
        if mode == "dense" or (mode == "hybrid" and not sparse):
            if dense is None:
                raise ValueError("dense search needs a dense query vector")
            kwargs: dict[str, Any] = {"query": dense.tolist(), "using": DENSE}
        elif mode == "sparse":
            if sparse is None:
                raise ValueError("sparse search needs a sparse query vector")
            kwargs = {"query": _sparse(sparse), "using": SPARSE}
        else:
            if dense is None or sparse is None:
                raise ValueError("hybrid search needs both query vectors")
            # The filter goes into each prefetch (fusion then only sees allowed candidates);
            # repeating it on the fused query would only evaluate it a third time.
            kwargs = {
                "prefetch": [
                    qm.Prefetch(query=dense.tolist(), using=DENSE, limit=prefetch, filter=qfilter),
                    qm.Prefetch(query=_sparse(sparse), using=SPARSE, limit=prefetch, filter=qfilter),
                ],
                "query": qm.FusionQuery(fusion=qm.Fusion.DBSF if fusion == "dbsf" else qm.Fusion.RRF),
            }
            qfilter = None
        response = self._call(
            lambda: self._client.query_points(
                name, query_filter=qfilter, limit=limit, with_payload=True, with_vectors=[DENSE], **kwargs
            )
        )
        return [self._hit(p, dense) for p in response.points]

    @staticmethod
    def _hit(p: qm.ScoredPoint, dense: np.ndarray | None) -> Hit:
        pl = p.payload or {}
        similarity = 0.0
        vec = p.vector.get(DENSE) if isinstance(p.vector, dict) else None
        if dense is not None and vec is not None:
            similarity = float(np.dot(np.asarray(vec, dtype=np.float32), dense))
        return Hit(
            point_id=str(p.id),
            score=float(p.score),
            similarity=similarity,
            source_id=str(pl.get("source_id", "")),
            doc_id=str(pl.get("doc_id", "")),
            title=str(pl.get("title", "")),
            heading_path=tuple(pl.get("heading_path") or ()),
            text=str(pl.get("text", "")),
            language=str(pl.get("language", "")),
            audience=str(pl.get("audience", "customer")),
            url=pl.get("url"),
            position=int(pl.get("position", 0)),
        )

    @staticmethod
    def _call(fn: Any) -> Any:
        try:
            return fn()
        except (UnexpectedResponse, ResponseHandlingException, OSError) as exc:
            raise BackendUnavailable(f"Qdrant request failed: {exc}") from exc
