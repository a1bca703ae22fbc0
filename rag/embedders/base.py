"""The embedder port."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]


@runtime_checkable
class Embedder(Protocol):
    """Turns text into L2-normalised dense vectors.

    ``model_id`` identifies the vector space: two embedders with the same id produce
    comparable vectors, and the store keeps one collection per id so spaces never mix.
    Implementations load their model once and embed in batches.
    """

    model_id: str
    dim: int

    def embed_passages(self, texts: Sequence[str]) -> Vectors:
        """(len(texts), dim) float32 matrix for documents."""
        ...

    def embed_queries(self, texts: Sequence[str]) -> Vectors:
        """(len(texts), dim) float32 matrix for search queries."""
        ...


def normalize_rows(m: npt.ArrayLike) -> Vectors:
    arr = np.asarray(m, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (arr / norms).astype(np.float32)
