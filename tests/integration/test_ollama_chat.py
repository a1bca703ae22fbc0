"""OllamaChat with the official client against a real HTTP server speaking Ollama's API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import ollama
import pytest

from rag.errors import BackendUnavailable, ModelTimeout, QueueFull
from rag.llm.base import ChatMessage, ChatModel, ChatOptions
from rag.llm.limiter import ConcurrencyLimiter
from rag.llm.ollama_chat import OllamaChat
from tests.support.fake_llm_servers import FakeLLMServer

MESSAGES = [ChatMessage("system", "Answer briefly."), ChatMessage("user", "Say hello please")]
FAST = ChatOptions(max_tokens=64, timeout_s=5)


@pytest.fixture
async def model(fake_llm_server: FakeLLMServer) -> AsyncIterator[OllamaChat]:
    chat = OllamaChat(
        ollama.AsyncClient(host=fake_llm_server.url),
        "fake-model",
        ConcurrencyLimiter(max_concurrent=1, max_queue=4),
        keep_alive="10m",
    )
    yield chat
    await chat.aclose()


async def test_streams_text_then_a_result_with_the_servers_token_counts(
    model: OllamaChat, fake_llm_server: FakeLLMServer
) -> None:
    assert isinstance(model, ChatModel)
    events = [event async for event in model.stream(MESSAGES, FAST)]

    deltas = [e.delta for e in events if not e.done]
    assert deltas == ["Hello", " from", " the", " fake", " model."]
    assert [e.done for e in events] == [False] * 5 + [True]
    result = events[-1].result
    assert result is not None
    assert result.text == "Hello from the fake model."
    assert result.finish_reason == "stop"
    usage = result.usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (5, 5)  # words, as the fake counts
    assert (usage.model, usage.backend) == ("fake-model", "ollama")
    assert usage.queue_wait_s == 0.0
    assert usage.time_to_first_token_s is not None
    assert 0 < usage.time_to_first_token_s <= usage.total_s


async def test_sends_messages_and_options_the_ollama_way(model: OllamaChat, fake_llm_server: FakeLLMServer) -> None:
    await model.complete(MESSAGES, ChatOptions(max_tokens=7, temperature=0.3, stop=("\n\n",)))

    (request,) = fake_llm_server.generation_requests()
    assert request.body["model"] == "fake-model"
    assert request.body["stream"] is True
    assert request.body["keep_alive"] == "10m"
    assert request.body["messages"] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Say hello please"},
    ]
    assert request.body["options"] == {"num_predict": 7, "temperature": 0.3, "stop": ["\n\n"]}


async def test_time_to_first_token_counts_from_the_call(model: OllamaChat, fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.behaviour.first_token_delay_s = 0.2
    fake_llm_server.behaviour.tokens_per_second = 50

    result = await model.complete(MESSAGES, FAST)

    ttft = result.usage.time_to_first_token_s
    assert ttft is not None and 0.2 <= ttft < 1.0
    assert result.usage.total_s - ttft > 0.05  # the four later tokens came 20 ms apart


async def test_max_tokens_cuts_with_finish_reason_length(model: OllamaChat) -> None:
    result = await model.complete(MESSAGES, ChatOptions(max_tokens=2, timeout_s=5))

    assert result.text == "Hello from"
    assert result.finish_reason == "length"
    assert result.usage.completion_tokens == 2


async def test_server_error_is_backend_unavailable(model: OllamaChat, fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.behaviour.status = 503
    fake_llm_server.behaviour.error_message = "server busy loading"

    with pytest.raises(BackendUnavailable, match="server busy loading") as caught:
        await model.complete(MESSAGES, FAST)
    assert caught.value.retryable
    assert "503" in caught.value.message


async def test_missing_model_says_how_to_pull_it(fake_llm_server: FakeLLMServer) -> None:
    chat = OllamaChat(ollama.AsyncClient(host=fake_llm_server.url), "qwen2.5:7b", ConcurrencyLimiter(1, 1))

    with pytest.raises(BackendUnavailable, match=r"has no model qwen2.5:7b: run `ollama pull qwen2.5:7b`"):
        await chat.complete(MESSAGES, FAST)
    assert not await chat.health()
    await chat.aclose()


async def test_hanging_server_times_out_on_time(model: OllamaChat, fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.behaviour.hang = True
    started = time.perf_counter()

    with pytest.raises(ModelTimeout, match=r"within 0\.2s"):
        await model.complete(MESSAGES, ChatOptions(timeout_s=0.2))
    assert time.perf_counter() - started < 1.0
    assert model._limiter.in_flight == 0


async def test_slow_generation_times_out_mid_stream(model: OllamaChat, fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.behaviour.tokens_per_second = 10
    received: list[str] = []
    started = time.perf_counter()

    with pytest.raises(ModelTimeout):
        async for event in model.stream(MESSAGES, ChatOptions(timeout_s=0.25)):
            received.append(event.delta)
    assert 0 < len(received) < 5
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("drop", ["before", "mid"])
async def test_dropped_connection_is_backend_unavailable(
    model: OllamaChat, fake_llm_server: FakeLLMServer, drop: str
) -> None:
    fake_llm_server.behaviour.drop = drop  # type: ignore[assignment]

    with pytest.raises(BackendUnavailable) as caught:
        await model.complete(MESSAGES, FAST)
    assert not isinstance(caught.value, ModelTimeout)
    assert model._limiter.in_flight == 0


async def test_nothing_listening_is_backend_unavailable() -> None:
    with FakeLLMServer() as stopped:
        url = stopped.url
    chat = OllamaChat(ollama.AsyncClient(host=url), "fake-model", ConcurrencyLimiter(1, 1))

    with pytest.raises(BackendUnavailable, match="cannot reach Ollama"):
        await chat.complete(MESSAGES, FAST)
    assert not await chat.health()
    await chat.aclose()


async def test_health_checks_the_model_is_pulled(model: OllamaChat, fake_llm_server: FakeLLMServer) -> None:
    assert await model.health()
    fake_llm_server.behaviour.models = ["fake-model:latest"]  # Ollama's name for an untagged pull
    assert await model.health()
    fake_llm_server.behaviour.models = ["other"]
    assert not await model.health()


async def test_concurrency_limit_holds_on_the_server(model: OllamaChat, fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.behaviour.first_token_delay_s = 0.1

    results = await asyncio.gather(*(model.complete(MESSAGES, FAST) for _ in range(3)))

    assert len(fake_llm_server.generation_requests()) == 3
    assert fake_llm_server.max_in_flight == 1
    waits = sorted(r.usage.queue_wait_s for r in results)
    assert waits[0] == 0.0 and waits[1] >= 0.08 and waits[2] >= 0.16
    assert all(r.usage.time_to_first_token_s >= r.usage.queue_wait_s for r in results)  # type: ignore[operator]


async def test_full_queue_refuses_at_once(fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.behaviour.first_token_delay_s = 0.15
    chat = OllamaChat(ollama.AsyncClient(host=fake_llm_server.url), "fake-model", ConcurrencyLimiter(1, 1))
    running = [asyncio.create_task(chat.complete(MESSAGES, FAST)) for _ in range(2)]
    await asyncio.sleep(0.05)
    started = time.perf_counter()

    with pytest.raises(QueueFull):
        await chat.complete(MESSAGES, FAST)
    assert time.perf_counter() - started < 0.1
    assert all(r.text for r in await asyncio.gather(*running))
    assert fake_llm_server.max_in_flight == 1
    await chat.aclose()


async def test_queue_wait_past_the_timeout_is_queue_full(model: OllamaChat, fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.behaviour.first_token_delay_s = 0.3
    running = asyncio.create_task(model.complete(MESSAGES, FAST))
    await asyncio.sleep(0.05)

    with pytest.raises(QueueFull, match=r"within 0\.1s"):
        await model.complete(MESSAGES, ChatOptions(timeout_s=0.1))
    await running
    assert len(fake_llm_server.generation_requests()) == 1
