"""OpenAICompatibleChat against a real HTTP server speaking the /v1 chat API with SSE."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing

import httpx
import pytest

from rag.errors import BackendUnavailable, ModelTimeout, QueueFull
from rag.llm.base import ChatMessage, ChatModel, ChatOptions
from rag.llm.limiter import ConcurrencyLimiter
from rag.llm.openai_chat import OpenAICompatibleChat
from tests.support.fake_llm_servers import FakeLLMServer

MESSAGES = [ChatMessage("system", "Answer briefly."), ChatMessage("user", "Say hello please")]
FAST = ChatOptions(max_tokens=64, timeout_s=5)


def make_chat(server: FakeLLMServer, model: str = "fake-model", **limits: int) -> OpenAICompatibleChat:
    limiter = ConcurrencyLimiter(limits.get("max_concurrent", 1), limits.get("max_queue", 4))
    return OpenAICompatibleChat(httpx.AsyncClient(base_url=server.url), model, limiter, api_key="sk-local")


@pytest.fixture
async def model(fake_llm_server: FakeLLMServer) -> AsyncIterator[OpenAICompatibleChat]:
    chat = make_chat(fake_llm_server)
    yield chat
    await chat.aclose()


async def test_streams_text_then_a_result_with_the_servers_usage(model: OpenAICompatibleChat) -> None:
    assert isinstance(model, ChatModel)
    events = [event async for event in model.stream(MESSAGES, FAST)]

    assert [e.delta for e in events[:-1]] == ["Hello", " from", " the", " fake", " model."]
    assert events[-1].done
    result = events[-1].result
    assert result is not None
    assert result.text == "Hello from the fake model."
    assert result.finish_reason == "stop"
    usage = result.usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (5, 5)  # words, as the fake counts
    assert (usage.model, usage.backend) == ("fake-model", "openai")
    assert usage.time_to_first_token_s is not None
    assert 0 < usage.time_to_first_token_s <= usage.total_s


async def test_sends_the_openai_request(model: OpenAICompatibleChat, fake_llm_server: FakeLLMServer) -> None:
    await model.complete(MESSAGES, ChatOptions(max_tokens=7, temperature=0.3, stop=("\n\n",)))

    (request,) = fake_llm_server.generation_requests()
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-local"
    assert request.body == {
        "model": "fake-model",
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Say hello please"},
        ],
        "max_tokens": 7,
        "temperature": 0.3,
        "stream": True,
        "stream_options": {"include_usage": True},
        "stop": ["\n\n"],
    }


async def test_without_server_usage_tokens_are_estimated(
    model: OpenAICompatibleChat, fake_llm_server: FakeLLMServer
) -> None:
    fake_llm_server.behaviour.send_usage = False

    usage = (await model.complete(MESSAGES, FAST)).usage

    assert usage.completion_tokens == 5  # one streamed piece each
    assert usage.prompt_tokens == len("Answer briefly.Say hello please") // 4


async def test_time_to_first_token_counts_from_the_call(
    model: OpenAICompatibleChat, fake_llm_server: FakeLLMServer
) -> None:
    fake_llm_server.behaviour.first_token_delay_s = 0.2
    fake_llm_server.behaviour.tokens_per_second = 50

    result = await model.complete(MESSAGES, FAST)

    ttft = result.usage.time_to_first_token_s
    assert ttft is not None and 0.2 <= ttft < 1.0
    assert result.usage.total_s - ttft > 0.05  # the four later tokens came 20 ms apart


async def test_max_tokens_cuts_with_finish_reason_length(model: OpenAICompatibleChat) -> None:
    result = await model.complete(MESSAGES, ChatOptions(max_tokens=3, timeout_s=5))

    assert result.text == "Hello from the"
    assert result.finish_reason == "length"
    assert result.usage.completion_tokens == 3


async def test_server_error_message_is_surfaced(model: OpenAICompatibleChat, fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.behaviour.status = 503
    fake_llm_server.behaviour.error_message = "engine is overloaded"

    with pytest.raises(BackendUnavailable, match="engine is overloaded") as caught:
        await model.complete(MESSAGES, FAST)
    assert caught.value.retryable
    assert "503" in caught.value.message


async def test_bad_request_is_not_retryable(model: OpenAICompatibleChat, fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.behaviour.status = 400
    fake_llm_server.behaviour.error_message = "prompt is longer than the context"

    with pytest.raises(BackendUnavailable, match="prompt is longer than the context") as caught:
        await model.complete(MESSAGES, FAST)
    assert not caught.value.retryable


async def test_missing_model_is_named(fake_llm_server: FakeLLMServer) -> None:
    chat = make_chat(fake_llm_server, "llama-3-70b")

    with pytest.raises(BackendUnavailable, match=r"has no model llama-3-70b.*does not exist") as caught:
        await chat.complete(MESSAGES, FAST)
    assert not caught.value.retryable
    assert not await chat.health()
    await chat.aclose()


async def test_hanging_server_times_out_on_time(model: OpenAICompatibleChat, fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.behaviour.hang = True
    started = time.perf_counter()

    with pytest.raises(ModelTimeout):
        await model.complete(MESSAGES, ChatOptions(timeout_s=0.2))
    assert time.perf_counter() - started < 1.0
    assert model._limiter.in_flight == 0


async def test_slow_generation_times_out_mid_stream(
    model: OpenAICompatibleChat, fake_llm_server: FakeLLMServer
) -> None:
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
    model: OpenAICompatibleChat, fake_llm_server: FakeLLMServer, drop: str
) -> None:
    fake_llm_server.behaviour.drop = drop  # type: ignore[assignment]

    with pytest.raises(BackendUnavailable) as caught:
        await model.complete(MESSAGES, FAST)
    assert not isinstance(caught.value, ModelTimeout)
    assert model._limiter.in_flight == 0


async def test_a_reader_that_stops_early_frees_the_slot(
    model: OpenAICompatibleChat, fake_llm_server: FakeLLMServer
) -> None:
    fake_llm_server.behaviour.tokens_per_second = 20
    async with aclosing(model.stream(MESSAGES, FAST)) as events:
        async for event in events:
            assert event.delta == "Hello"
            break

    assert model._limiter.in_flight == 0
    assert (await model.complete(MESSAGES, FAST)).text  # the connection pool is fine too


async def test_nothing_listening_is_backend_unavailable() -> None:
    with FakeLLMServer() as stopped:
        pass
    chat = make_chat(stopped)

    with pytest.raises(BackendUnavailable, match="cannot reach OpenAI-compatible server"):
        await chat.complete(MESSAGES, FAST)
    assert not await chat.health()
    await chat.aclose()


async def test_health_checks_the_model_is_served(model: OpenAICompatibleChat, fake_llm_server: FakeLLMServer) -> None:
    assert await model.health()
    fake_llm_server.behaviour.models = ["other"]
    assert not await model.health()
    fake_llm_server.behaviour.status = 500
    assert not await model.health()


async def test_concurrency_limit_holds_on_the_server(fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.behaviour.first_token_delay_s = 0.1
    chat = make_chat(fake_llm_server, max_concurrent=2, max_queue=4)

    results = await asyncio.gather(*(chat.complete(MESSAGES, FAST) for _ in range(5)))

    assert len(fake_llm_server.generation_requests()) == 5
    assert fake_llm_server.max_in_flight == 2
    assert sum(r.usage.queue_wait_s > 0 for r in results) == 3
    await chat.aclose()


async def test_full_queue_refuses_at_once(fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.behaviour.first_token_delay_s = 0.15
    chat = make_chat(fake_llm_server, max_concurrent=1, max_queue=1)
    running = [asyncio.create_task(chat.complete(MESSAGES, FAST)) for _ in range(2)]
    await asyncio.sleep(0.05)
    started = time.perf_counter()

    with pytest.raises(QueueFull):
        await chat.complete(MESSAGES, FAST)
    assert time.perf_counter() - started < 0.1
    assert all(r.text for r in await asyncio.gather(*running))
    assert fake_llm_server.max_in_flight == 1
    await chat.aclose()
