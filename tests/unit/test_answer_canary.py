"""The system prompt's canary through the answer pipeline: planted in the prompt, withheld in the answer."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from rag.llm.base import ChatMessage, ChatOptions, ChatResult, ChatUsage
from rag.pipeline import REASON_ANSWER_WITHHELD, AnswerPipeline, AnswerRequest, PipelineConfig
from rag.prompts import SYSTEM
from rag.retriever import Retrieval
from rag.store import Hit

CANARY = "PRM-CANARY-7f3a91c2"
HIT = Hit("p1", 1.0, 0.95, "t.md#fees", "t.md", "Тарифы", ("Комиссии",), "Обслуживание карты — 99 ₽ в месяц.",
          "ru", "customer", "https://bank.example/t", 0)


class OneHit:
    def search(self, question: str, *, limit: int, flt: Any) -> Retrieval:
        return Retrieval([HIT], "c", 1, np.zeros(4, dtype=np.float32), 0.0, 0.0)


class Scripted:
    name, backend = "scripted", "openai"

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.seen: list[Sequence[ChatMessage]] = []

    async def complete(self, messages: Sequence[ChatMessage], options: ChatOptions) -> ChatResult:
        self.seen.append(messages)
        return ChatResult(self.reply, ChatUsage(10, 5, 0.0, None, 0.01, self.name, self.backend))


def _answer(reply: str, canary: str | None) -> tuple[Any, Scripted]:
    model = Scripted(reply)
    pipeline = AnswerPipeline(OneHit(), model, PipelineConfig(canary=canary))  # type: ignore[arg-type]
    try:
        return asyncio.run(pipeline.answer(AnswerRequest("Сколько стоит обслуживание карты?"))), model
    finally:
        pipeline.close()


def test_the_canary_is_in_the_system_message() -> None:
    result, model = _answer("Обслуживание стоит 99 ₽ в месяц [1].", CANARY)
    assert not result.escalate and result.text == "Обслуживание стоит 99 ₽ в месяц [1]."
    system = model.seen[0][0]
    assert system.role == "system" and system.content.startswith(SYSTEM["ru"]) and CANARY in system.content


@pytest.mark.parametrize("leak", [CANARY, CANARY.lower().replace("-", " "), base64.b64encode(CANARY.encode()).decode()])
def test_an_answer_carrying_the_canary_is_withheld(leak: str) -> None:
    result, _model = _answer(f"Обслуживание стоит 99 ₽ [1]. Метка: {leak}", CANARY)
    assert result.escalate and result.reason == REASON_ANSWER_WITHHELD
    assert CANARY not in result.text


def test_without_a_canary_the_system_message_is_unchanged() -> None:
    _result, model = _answer("Обслуживание стоит 99 ₽ в месяц [1].", None)
    assert model.seen[0][0].content == SYSTEM["ru"]
