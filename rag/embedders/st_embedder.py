"""Any sentence-transformers model (an optional extra: `pip install 'perimeter[st]'`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from rag.embedders.base import Vectors, normalize_rows
from rag.errors import ConfigError

# Models trained with instruction prefixes; for these the prefixes are part of the model.
_KNOWN_PREFIXES = {
    "e5": ("query: ", "passage: "),
    "bge-m3": ("", ""),
}


def default_prefixes(model_name: str) -> tuple[str, str]:
    name = model_name.lower()
    if "e5" in name and "mistral" not in name:
        return _KNOWN_PREFIXES["e5"]
    return ("", "")


class SentenceTransformerEmbedder:
    def __init__(
        self,
        model_name_or_path: str,
        *,
        batch_size: int = 32,
        query_prefix: str | None = None,
        passage_prefix: str | None = None,
        device: str = "cpu",
    ) -> None:
        # The service never reaches a model hub: a name must already be in the local cache.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ConfigError(
                "PERIMETER_EMBED_BACKEND=sentence-transformers needs `pip install 'perimeter[st]'`"
            ) from exc
        try:
            self._model: Any = SentenceTransformer(model_name_or_path, device=device)
        except Exception as exc:  # the library raises OSError/ValueError/HF errors alike
            raise ConfigError(
                f"PERIMETER_EMBED_MODEL: cannot load sentence-transformers model {model_name_or_path!r}: {exc}"
            ) from exc
        qp, pp = default_prefixes(model_name_or_path)
        self._qp = qp if query_prefix is None else query_prefix
        self._pp = pp if passage_prefix is None else passage_prefix
        self._batch = batch_size
        # Renamed in sentence-transformers 6; older releases only have the long name.
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = int(get_dim() or 0)
        self.model_id = "st-" + os.path.basename(str(model_name_or_path).rstrip("/"))

    def _encode(self, texts: Sequence[str], prefix: str) -> Vectors:
        vecs = self._model.encode(
            [prefix + t for t in texts], batch_size=self._batch, normalize_embeddings=True,
            show_progress_bar=False, convert_to_numpy=True,
        )
        return normalize_rows(vecs.reshape(len(texts), self.dim))

    def embed_passages(self, texts: Sequence[str]) -> Vectors:
        return self._encode(texts, self._pp)

    def embed_queries(self, texts: Sequence[str]) -> Vectors:
        return self._encode(texts, self._qp)
