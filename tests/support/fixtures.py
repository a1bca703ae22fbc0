"""Shared pytest fixtures; ``tests/conftest.py`` loads them with ``pytest_plugins``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.fake_llm_servers import FakeLLMServer


@pytest.fixture
def fake_llm_server() -> Iterator[FakeLLMServer]:
    """A fresh fake Ollama + OpenAI-compatible server per test; see ``FakeBehaviour``."""
    with FakeLLMServer() as server:
        yield server
