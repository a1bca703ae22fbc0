"""CircuitBreakerChat's state machine, driven by a scripted inner model and a hand-moved clock."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing

import pytest

from rag.errors import BackendUnavailable, ModelCircuitOpen, ModelTimeout, QueueFull
from rag.llm.base import ChatMessage, ChatModel, ChatOptions, ChatResult, ChatUsage, StreamEvent
from rag.llm.breaker import CircuitBreakerChat

MESSAGES = [ChatMessage("user", "Сколько стоит карта?")]
OPTIONS = ChatOptions(timeout_s=5)
USAGE = ChatUsage(3, 2, 0.0, 0.01, 0.02, "scripted", "scripted")

# What the next call of the scripted model does: return text, raise, or break off mid-stream.
Step = str | BaseException | tuple[str, BaseException]


class ScriptedChat:
    """Stand-in for the *inner* model port: each call takes the next step of its script.

    With ``gate`` set, calls wait for it first, so a test can hold several in flight.
    """

    name = "scripted-model"
    backend = "scripted"

    def __init__(self, *steps: Step) -> None:
        self.steps: deque[Step] = deque(steps)
        self.calls = 0
        self.closed = False
        self.gate: asyncio.Event | None = None

    def script(self, *steps: Step) -> None:
        self.steps.extend(steps)

    async def _next(self) -> Step:
        self.calls += 1
        step = self.steps.popleft() if self.steps else "ok"
        if self.gate is not None:
            await self.gate.wait()
        return step

    async def complete(self, messages: Sequence[ChatMessage], options: ChatOptions) -> ChatResult:
        step = await self._next()
        if isinstance(step, BaseException):
            raise step
        if isinstance(step, tuple):
            raise step[1]
        return ChatResult(step, USAGE)

    async def stream(self, messages: Sequence[ChatMessage], options: ChatOptions) -> AsyncGenerator[StreamEvent, None]:
        step = await self._next()
        if isinstance(step, BaseException):
            raise step
        text, error = step if isinstance(step, tuple) else (step, None)
        for word in text.split():
            yield StreamEvent(delta=word)
        if error is not None:
            raise error
        yield StreamEvent(done=True, result=ChatResult(text, USAGE))

    async def health(self) -> bool:
        return True

    async def aclose(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def down(n: int = 1) -> list[Step]:
    return [BackendUnavailable("HTTP 503: engine is down") for _ in range(n)]


def breaker(inner: ScriptedChat, clock: Clock, threshold: int = 3, reset: float = 30.0) -> CircuitBreakerChat:
    return CircuitBreakerChat(inner, failure_threshold=threshold, reset_after_s=reset, clock=clock)


async def fail(chat: CircuitBreakerChat, times: int) -> None:
    for _ in range(times):
        with pytest.raises(BackendUnavailable) as caught:
            await chat.complete(MESSAGES, OPTIONS)
        assert not isinstance(caught.value, ModelCircuitOpen)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_it_is_a_chat_model_that_delegates() -> None:
    inner = ScriptedChat("Карта бесплатна")
    chat = breaker(inner, Clock())

    assert isinstance(chat, ChatModel)
    assert (chat.name, chat.backend) == ("scripted-model", "scripted")
    assert (await chat.complete(MESSAGES, OPTIONS)).text == "Карта бесплатна"
    assert await chat.health()
    await chat.aclose()
    assert inner.closed
    assert (chat.state, chat.consecutive_failures) == ("closed", 0)


async def test_opens_after_threshold_consecutive_failures_and_then_fails_fast(caplog: pytest.LogCaptureFixture) -> None:
    inner = ScriptedChat(*down(3))
    clock = Clock()
    chat = breaker(inner, clock)

    with caplog.at_level(logging.INFO, logger="rag.llm.breaker"):
        await fail(chat, 2)
        assert (chat.state, chat.consecutive_failures) == ("closed", 2)
        await fail(chat, 1)
        assert (chat.state, chat.consecutive_failures) == ("open", 3)

        clock.now += 12
        for _ in range(5):
            with pytest.raises(ModelCircuitOpen, match=r"for another 18\.0s") as caught:
                await chat.complete(MESSAGES, OPTIONS)
            with pytest.raises(ModelCircuitOpen):
                async for _event in chat.stream(MESSAGES, OPTIONS):
                    pass

    assert inner.calls == 3  # nothing reached the inner model while open
    assert caught.value.code == "model_circuit_open"
    assert caught.value.retryable
    assert "engine is down" in caught.value.message
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # the opening, not one line per refused call
    assert "circuit open" in warnings[0].getMessage()


async def test_a_success_resets_the_count() -> None:
    inner = ScriptedChat(*down(2), "ok", *down(2))
    chat = breaker(inner, Clock())

    await fail(chat, 2)
    await chat.complete(MESSAGES, OPTIONS)
    await fail(chat, 2)

    assert (chat.state, chat.consecutive_failures) == ("closed", 2)


async def test_timeouts_count_queue_full_does_not() -> None:
    inner = ScriptedChat(
        ModelTimeout("no answer within 5s"),
        QueueFull("model queue is full"),
        QueueFull("model queue is full"),
        ModelTimeout("no answer within 5s"),
    )
    chat = breaker(inner, Clock(), threshold=2)

    await fail(chat, 3)
    assert (chat.state, chat.consecutive_failures) == ("closed", 1)
    await fail(chat, 1)
    assert chat.state == "open"


async def test_non_retryable_errors_do_not_count() -> None:
    # The server answered: the request or configuration is wrong, and the caller should see why.
    inner = ScriptedChat(*[BackendUnavailable("has no model x", retryable=False) for _ in range(5)])
    chat = breaker(inner, Clock(), threshold=2)

    await fail(chat, 5)

    assert (chat.state, chat.consecutive_failures) == ("closed", 0)


async def test_half_open_admits_exactly_one_probe_among_concurrent_callers() -> None:
    inner = ScriptedChat(*down(3))
    clock = Clock()
    chat = breaker(inner, clock)
    await fail(chat, 3)
    clock.now += 30
    assert chat.state == "half_open"

    inner.gate = asyncio.Event()
    calls = [asyncio.create_task(chat.complete(MESSAGES, OPTIONS)) for _ in range(5)]
    await settle()
    refused = [t for t in calls if t.done()]
    assert len(refused) == 4
    for task in refused:
        with pytest.raises(ModelCircuitOpen, match="probe"):
            task.result()
    assert inner.calls == 4  # three failures and the one probe

    inner.gate.set()
    (probe,) = [t for t in calls if t not in refused]
    assert (await probe).text == "ok"
    assert (chat.state, chat.consecutive_failures) == ("closed", 0)
    assert (await chat.complete(MESSAGES, OPTIONS)).text == "ok"


async def test_a_failed_probe_opens_the_circuit_again() -> None:
    inner = ScriptedChat(*down(4))
    clock = Clock()
    chat = breaker(inner, clock)
    await fail(chat, 3)
    clock.now += 31

    await fail(chat, 1)  # the probe

    assert chat.state == "open"
    clock.now += 29
    with pytest.raises(ModelCircuitOpen, match=r"for another 1\.0s"):
        await chat.complete(MESSAGES, OPTIONS)
    clock.now += 1
    assert (await chat.complete(MESSAGES, OPTIONS)).text == "ok"
    assert chat.state == "closed"
    assert inner.calls == 5


async def test_a_cancelled_probe_hands_the_probe_to_the_next_caller() -> None:
    inner = ScriptedChat(*down(3))
    clock = Clock()
    chat = breaker(inner, clock)
    await fail(chat, 3)
    clock.now += 30
    inner.gate = asyncio.Event()
    probe = asyncio.create_task(chat.complete(MESSAGES, OPTIONS))
    await settle()

    probe.cancel()
    await settle()
    inner.gate.set()

    assert chat.state == "half_open"
    assert (await chat.complete(MESSAGES, OPTIONS)).text == "ok"
    assert chat.state == "closed"


async def test_a_queue_full_probe_does_not_decide() -> None:
    inner = ScriptedChat(*down(3), QueueFull("model queue is full"))
    clock = Clock()
    chat = breaker(inner, clock)
    await fail(chat, 3)
    clock.now += 30

    await fail(chat, 1)

    assert chat.state == "half_open"
    assert (await chat.complete(MESSAGES, OPTIONS)).text == "ok"
    assert chat.state == "closed"


async def test_late_outcomes_of_calls_started_before_opening_are_ignored() -> None:
    inner = ScriptedChat(*down(3), "ok")
    clock = Clock()
    chat = breaker(inner, clock)
    inner.gate = asyncio.Event()
    calls = [asyncio.create_task(chat.complete(MESSAGES, OPTIONS)) for _ in range(4)]
    await settle()
    inner.gate.set()
    results = await asyncio.gather(*calls, return_exceptions=True)

    assert [type(r).__name__ for r in results] == ["BackendUnavailable"] * 3 + ["ChatResult"]
    # The slow success was admitted while closed; it does not close what three failures opened.
    assert (chat.state, chat.consecutive_failures) == ("open", 3)


async def test_stream_success_and_mid_stream_failure() -> None:
    inner = ScriptedChat(
        "Карта бесплатна",
        ("Карта стоит", BackendUnavailable("stopped answering mid-stream")),
        ("Карта", ModelTimeout("did not finish within 5s")),
    )
    chat = breaker(inner, Clock(), threshold=2)

    events = [e async for e in chat.stream(MESSAGES, OPTIONS)]
    assert [e.delta for e in events] == ["Карта", "бесплатна", ""]
    assert events[-1].result is not None

    for _ in range(2):
        received: list[str] = []
        with pytest.raises(BackendUnavailable):
            async for event in chat.stream(MESSAGES, OPTIONS):
                received.append(event.delta)
        assert received and received[0] == "Карта"  # the failure came after text had been sent

    assert (chat.state, chat.consecutive_failures) == ("open", 2)
    with pytest.raises(ModelCircuitOpen):
        await anext(chat.stream(MESSAGES, OPTIONS))
    assert inner.calls == 3


async def test_a_stream_probe_succeeds_when_the_caller_stops_at_done() -> None:
    inner = ScriptedChat(*down(1), "Карта бесплатна")
    clock = Clock()
    chat = breaker(inner, clock, threshold=1, reset=5)
    await fail(chat, 1)
    clock.now += 5

    async with aclosing(chat.stream(MESSAGES, OPTIONS)) as events:
        async for event in events:
            if event.done:
                break

    assert chat.state == "closed"


async def test_a_stream_closed_early_decides_nothing() -> None:
    inner = ScriptedChat(*down(1), "Карта бесплатна", "ok")
    clock = Clock()
    chat = breaker(inner, clock, threshold=1, reset=5)
    await fail(chat, 1)
    clock.now += 5

    async with aclosing(chat.stream(MESSAGES, OPTIONS)) as events:
        async for _event in events:
            break

    assert chat.state == "half_open"  # the probe slot is free again
    assert (await chat.complete(MESSAGES, OPTIONS)).text == "ok"
    assert chat.state == "closed"


def test_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreakerChat(ScriptedChat(), failure_threshold=0)
    with pytest.raises(ValueError, match="reset_after_s"):
        CircuitBreakerChat(ScriptedChat(), reset_after_s=-1)


def timeout(server_s: float, typical_s: float | None) -> ModelTimeout:
    error = ModelTimeout("did not finish within 5s")
    error.server_s, error.typical_s = server_s, typical_s
    return error


async def test_a_timeout_cut_short_by_our_own_queue_does_not_count() -> None:
    # The server had less than three typical calls' time: the queue spent the deadline.
    inner = ScriptedChat(*[timeout(server_s=1.0, typical_s=2.0) for _ in range(4)])
    chat = breaker(inner, Clock(), threshold=2)

    await fail(chat, 4)
    assert (chat.state, chat.consecutive_failures) == ("closed", 0)


async def test_a_timeout_with_a_fair_chance_or_no_history_counts() -> None:
    inner = ScriptedChat(timeout(server_s=6.5, typical_s=2.0), timeout(server_s=0.5, typical_s=None))
    chat = breaker(inner, Clock(), threshold=2)

    await fail(chat, 2)
    assert chat.state == "open"
