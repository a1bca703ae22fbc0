"""Embeddings from an Ollama server's `/api/embed`."""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from rag.embedders.base import Vectors, normalize_rows
from rag.embedders.st_embedder import default_prefixes
from rag.errors import BackendUnavailable


class OllamaEmbedder:
    """Talks to `/api/embed` with batches; learns the dimension from the first answer."""

    def __init__(
        self,
        http: httpx.Client,
        model: str,
        *,
        batch_size: int = 32,
        query_prefix: str | None = None,
        passage_prefix: str | None = None,
    ) -> None:
        self._http, self._model, self._batch = http, model, batch_size
        qp, pp = default_prefixes(model)
        self._qp = qp if query_prefix is None else query_prefix
        self._pp = pp if passage_prefix is None else passage_prefix
        self.model_id = "ollama-" + model.replace(":", "-").replace("/", "-")
        self.dim = int(self._post(["dimension probe"]).shape[1])

    def _post(self, texts: list[str]) -> Vectors:
        try:
            resp = self._http.post("/api/embed", json={"model": self._model, "input": texts})
        except httpx.HTTPError as exc:
            raise BackendUnavailable(f"Ollama embeddings at {self._http.base_url}: {exc}") from exc
        if resp.status_code != 200:
            try:
                detail = resp.json().get("error", resp.text)
            except ValueError:
                detail = resp.text
            hint = f" (run `ollama pull {self._model}`)" if resp.status_code == 404 else ""
            raise BackendUnavailable(f"Ollama /api/embed answered {resp.status_code}: {detail}{hint}")
        data = resp.json().get("embeddings")
        if not isinstance(data, list) or len(data) != len(texts):
            raise BackendUnavailable("Ollama /api/embed returned a malformed body")
        return normalize_rows(data)

    def _run(self, texts: Sequence[str], prefix: str) -> Vectors:
        import numpy as np

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [
            self._post([prefix + t for t in texts[i : i + self._batch]])
            for i in range(0, len(texts), self._batch)
        ]
        return np.vstack(parts)

    def embed_passages(self, texts: Sequence[str]) -> Vectors:
        return self._run(texts, self._pp)

    def embed_queries(self, texts: Sequence[str]) -> Vectors:
        return self._run(texts, self._qp)
