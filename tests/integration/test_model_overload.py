"""Overload is not an outage: the model queue keeps time for generation and the breaker tells a
long line from a stuck server.

A real OpenAI-compatible HTTP server stand-in (one slow generation at a time), the real
adapter, limiter and circuit breaker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from rag.errors import ModelTimeout, QueueFull
from rag.llm.base import ChatMessage, ChatOptions
from rag.llm.breaker import CircuitBreakerChat
from rag.llm.limiter import ConcurrencyLimiter
from rag.llm.openai_chat import OpenAICompatibleChat
from tests.support.fake_llm_servers import FakeLLMServer

MESSAGES = [ChatMessage("user", "Сколько стоит обслуживание карты?")]
GENERATION_S = 0.3


@pytest.fixture
async def chat(fake_llm_server: FakeLLMServer) -> AsyncIterator[tuple[CircuitBreakerChat, float]]:
    limiter = ConcurrencyLimiter(max_concurrent=1, max_queue=16)
    inner = OpenAICompatibleChat(httpx.AsyncClient(base_url=fake_llm_server.url), "fake-model", limiter)
    breaker = CircuitBreakerChat(inner, failure_threshold=1, reset_after_s=60)
    fake_llm_server.behaviour.first_token_delay_s = GENERATION_S
    # One answer teaches the limiter how long a generation holds the slot.
    await breaker.complete(MESSAGES, ChatOptions(timeout_s=5))
    typical = limiter.typical_hold_s
    assert typical is not None and typical >= GENERATION_S
    yield breaker, typical
    await breaker.aclose()


async def test_a_burst_beyond_capacity_is_refused_on_arrival_and_leaves_the_circuit_closed(
    chat: tuple[CircuitBreakerChat, float],
) -> None:
    breaker, typical = chat

    # Eight questions at once, each with time for about three generations in a row.
    options = ChatOptions(timeout_s=3.2 * typical)
    outcomes = await asyncio.gather(*(breaker.complete(MESSAGES, options) for _ in range(8)),
                                    return_exceptions=True)

    answered = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, QueueFull)]
    timed_out = [o for o in outcomes if isinstance(o, ModelTimeout)]
    # Those whose turn comes in time are answered; the rest are told at once, none waits out
    # its deadline in line only to be cut off mid-generation.
    assert 2 <= len(answered) <= 3
    assert len(refused) == 8 - len(answered)
    assert not timed_out
    assert all(r.queue_wait_s == 0.0 and "in time" in str(r) for r in refused)
    assert breaker.state == "closed"  # an overloaded queue says nothing about the server


async def test_a_deadline_spent_in_the_queue_does_not_count_against_the_server(
    chat: tuple[CircuitBreakerChat, float], fake_llm_server: FakeLLMServer,
) -> None:
    breaker, typical = chat
    # One call is generating when a second arrives with time for its wait and about one
    # generation; then the server slows down, and the second is cut off mid-generation.
    first = asyncio.create_task(breaker.complete(MESSAGES, ChatOptions(timeout_s=10)))
    await asyncio.sleep(GENERATION_S / 3)
    fake_llm_server.behaviour.first_token_delay_s = 2 * GENERATION_S
    with pytest.raises(ModelTimeout) as caught:
        await breaker.complete(MESSAGES, ChatOptions(timeout_s=2.2 * typical))
    await first

    assert caught.value.cut_short
    assert caught.value.queue_wait_s is not None and caught.value.queue_wait_s > 0
    assert breaker.state == "closed"


async def test_a_stuck_server_still_opens_the_circuit(
    chat: tuple[CircuitBreakerChat, float], fake_llm_server: FakeLLMServer,
) -> None:
    breaker, typical = chat
    fake_llm_server.behaviour.hang = True

    with pytest.raises(ModelTimeout) as caught:
        await breaker.complete(MESSAGES, ChatOptions(timeout_s=4 * typical))

    assert caught.value.queue_wait_s == 0.0
    assert not caught.value.cut_short  # it had the whole deadline to itself
    assert breaker.state == "open"
