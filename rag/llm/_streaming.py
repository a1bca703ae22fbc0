"""What all chat adapters share: the queue, the deadline, the clock and ``complete``.

An adapter only turns a request into text pieces and a closing ``Finish``; this base holds
the slot, bounds the call by ``options.timeout_s`` and measures it, so every backend
reports the same figures the same way.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass

from rag.errors import BackendUnavailable, ModelTimeout
from rag.llm.base import ChatMessage, ChatOptions, ChatResult, ChatUsage, StreamEvent
from rag.llm.limiter import ConcurrencyLimiter


@dataclass(frozen=True)
class Finish:
    """The backend's closing figures, yielded once after the last text piece."""

    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"


class StreamingChat(ABC):
    """Base of the adapters; satisfies ``rag.llm.base.ChatModel``.

    Consume ``stream`` to its end or close it (``contextlib.aclosing``): the queue slot is
    held while the stream is open.
    """

    backend: str

    def __init__(self, name: str, limiter: ConcurrencyLimiter) -> None:
        self.name = name
        self._limiter = limiter

    @abstractmethod
    def _generate(
        self, messages: Sequence[ChatMessage], options: ChatOptions, deadline: float
    ) -> AsyncGenerator[str | Finish, None]:
        """Text pieces then one ``Finish``; ``deadline`` is a ``time.monotonic()`` instant.

        Raises ``BackendUnavailable`` (or ``ModelTimeout``) with a message naming the backend.
        """

    async def complete(self, messages: Sequence[ChatMessage], options: ChatOptions) -> ChatResult:
        async with aclosing(self.stream(messages, options)) as events:
            async for event in events:
                if event.result is not None:
                    return event.result
        raise AssertionError("stream ended without a result")  # stream() always ends with one

    async def stream(self, messages: Sequence[ChatMessage], options: ChatOptions) -> AsyncGenerator[StreamEvent, None]:
        started = time.perf_counter()
        deadline = time.monotonic() + options.timeout_s
        parts: list[str] = []
        ttft: float | None = None
        finish: Finish | None = None
        queue_wait = 0.0
        try:
            async with (
                self._limiter.slot(options.timeout_s) as queue_wait,
                aclosing(self._generate(messages, options, deadline)) as pieces,
            ):
                while True:
                    try:
                        # Only the wait for the backend is bounded, never the consumer's work
                        # between events: a timeout spanning a ``yield`` would cancel the caller.
                        async with asyncio.timeout(deadline - time.monotonic()):
                            piece = await anext(pieces)
                    except StopAsyncIteration:
                        break
                    except TimeoutError:
                        raise ModelTimeout(
                            f"{self.backend} model {self.name} did not finish within {options.timeout_s:g}s"
                        ) from None
                    if isinstance(piece, Finish):
                        finish = piece
                    elif piece:
                        if ttft is None:
                            ttft = time.perf_counter() - started
                        parts.append(piece)
                        yield StreamEvent(delta=piece)
        except ModelTimeout as exc:
            # What the breaker needs to tell an overloaded queue from a stuck server.
            exc.queue_wait_s = queue_wait
            exc.server_s = time.perf_counter() - started - queue_wait
            exc.typical_s = self._limiter.typical_hold_s
            raise
        if finish is None:
            raise BackendUnavailable(f"{self.backend} model {self.name} stopped answering mid-stream")
        # The slot is released before the last event, so a caller that stops reading at
        # ``done`` does not keep others waiting.
        usage = ChatUsage(
            prompt_tokens=finish.prompt_tokens,
            completion_tokens=finish.completion_tokens,
            queue_wait_s=queue_wait,
            time_to_first_token_s=ttft,
            total_s=time.perf_counter() - started,
            model=self.name,
            backend=self.backend,
        )
        yield StreamEvent(done=True, result=ChatResult("".join(parts), usage, finish.finish_reason))

    @abstractmethod
    async def health(self) -> bool:
        """True when the backend answers and has the model; never raises."""

    @abstractmethod
    async def aclose(self) -> None: ...
