"""The llamacpp backend is an extra: without it, calls fail with the install command."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from rag.errors import ConfigError
from rag.llm.base import ChatMessage, ChatOptions
from rag.llm.llamacpp_chat import LlamaCppChat


async def test_missing_llama_cpp_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes ``import llama_cpp`` fail
    chat = LlamaCppChat(tmp_path / "model.gguf")

    with pytest.raises(ConfigError, match=r"pip install 'perimeter\[llamacpp\]'"):
        await chat.load()
    with pytest.raises(ConfigError, match="llama-cpp-python"):
        await chat.complete([ChatMessage("user", "hi")], ChatOptions(timeout_s=5))
    assert not await chat.health()
