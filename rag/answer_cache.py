"""Semantic answer cache in Qdrant.

A question close enough (cosine ≥ threshold) to one already answered, from the same
collection, index version, audience and language, gets the stored answer. Answers that used
customer data are never stored. A re-index bumps the index version, which makes every older
entry unreachable; `purge_stale` then deletes them.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import numpy as np
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from rag.answer import AnswerResult


def _equals(key: str, value: str | int) -> qm.FieldCondition:
    return qm.FieldCondition(key=key, match=qm.MatchValue(value=value))


class SemanticAnswerCache:
    def __init__(self, client: QdrantClient, name: str, dim: int, *, min_similarity: float = 0.95) -> None:
        self._client, self._name, self._dim, self._min = client, name, dim, min_similarity
        self._ready = False

    def _ensure(self) -> None:
        if self._ready:
            return
        if not self._client.collection_exists(self._name):
            self._client.create_collection(
                self._name, vectors_config=qm.VectorParams(size=self._dim, distance=qm.Distance.COSINE)
            )
        self._ready = True

    @staticmethod
    def _filter(collection: str, version: int, audience: str, language: str) -> qm.Filter:
        return qm.Filter(
            must=[
                _equals("collection", collection),
                _equals("index_version", version),
                _equals("audience", audience),
                _equals("language", language),
            ]
        )

    def lookup(
        self, vector: np.ndarray, *, collection: str, version: int, audience: str, language: str
    ) -> tuple[AnswerResult, float] | None:
        self._ensure()
        res = self._client.query_points(
            self._name, query=vector.tolist(), limit=1, with_payload=True,
            query_filter=self._filter(collection, version, audience, language),
        )
        if not res.points or res.points[0].score < self._min:
            return None
        payload: dict[str, Any] = res.points[0].payload or {}
        return AnswerResult.from_json(json.loads(payload["answer"])), float(res.points[0].score)

    def store(
        self, vector: np.ndarray, question: str, result: AnswerResult, *, collection: str, audience: str
    ) -> bool:
        if result.used_customer_context or result.escalate or result.mode != "generated":
            return False
        self._ensure()
        self._client.upsert(
            self._name,
            points=[
                qm.PointStruct(
                    id=str(uuid.uuid4()),
                    vector=vector.tolist(),
                    payload={
                        "collection": collection,
                        "index_version": result.index_version,
                        "audience": audience,
                        "language": result.language,
                        "question": question,
                        "answer": json.dumps(result.to_json(), ensure_ascii=False),
                    },
                )
            ],
        )
        return True

    def purge_stale(self, collection: str, version: int) -> None:
        """Delete entries from other collections or older index versions."""
        if not self._client.collection_exists(self._name):
            return
        self._client.delete(
            self._name,
            points_selector=qm.FilterSelector(
                filter=qm.Filter(
                    should=[
                        qm.Filter(must_not=[_equals("collection", collection)]),
                        qm.Filter(must_not=[_equals("index_version", version)]),
                    ]
                )
            ),
        )

    def count(self) -> int:
        if not self._client.collection_exists(self._name):
            return 0
        return int(self._client.count(self._name, exact=True).count)
