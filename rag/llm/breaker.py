"""A circuit breaker in front of a chat model: a dead model server is not hammered by every caller.

Without it, each question during an outage waits for its own connection error or, worse, its
full deadline, and every channel keeps sending requests to a server that is restarting or out
of memory. The breaker counts consecutive failures, fails fast for a while once the server is
clearly down, then lets a single probe call find out whether it is back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence

from rag.circuit import CircuitBreaker, CircuitRefused, CircuitState, Ticket
from rag.errors import BackendUnavailable, ModelCircuitOpen, ModelTimeout, QueueFull
from rag.llm.base import ChatMessage, ChatModel, ChatOptions, ChatResult, StreamEvent

log = logging.getLogger(__name__)



class CircuitBreakerChat:
    """A ``ChatModel`` that wraps another one and stops a retry storm while it is down.

    Contract:

    - **closed** (normal): calls go to ``inner``. ``failure_threshold`` consecutive failures
      open the circuit; a success resets the count.
    - **open**: ``complete`` and ``stream`` raise ``ModelCircuitOpen`` at once, without calling
      ``inner``; the message says when the next attempt will be made.
    - **half_open**: once ``reset_after_s`` have passed, exactly one caller goes through as a
      probe while concurrent callers keep failing fast. The probe's success closes the
      circuit, its failure opens it again for another ``reset_after_s``.

    A failure is a *retryable* ``BackendUnavailable`` (connection error, 5xx, ``ModelTimeout``,
    a stream that breaks off midway). Neutral, neither failure nor success:

    - ``QueueFull``: our own queue is overloaded, the server is not broken;
    - a ``ModelTimeout`` that is ``cut_short``: the deadline ran out while the server had
      less than a fair share of it, because the wait for a slot took the rest;
    - a non-retryable ``BackendUnavailable`` (missing model, refused key, prompt too long): the
      server answered, the request or the configuration is wrong, and failing fast would only
      hide that precise message behind "circuit open";
    - cancellation or any other exception, and a stream the caller closes before its end.

    A neutral probe hands the probe slot to the next caller. Outcomes of calls that started
    before the last state change are ignored: a slow call admitted while closed says nothing
    about a server that has since been given up on, or has since recovered.

    A ``stream`` call counts as a success when its final ``done`` event arrives (before it is
    handed on, so a caller that stops reading there is counted) and as a failure when it
    raises midway. ``name``, ``backend`` and ``health()`` are the inner model's; ``aclose()``
    closes it. ``state`` and ``consecutive_failures`` are for metrics; each state change is
    logged once (opening at WARNING).
    """

    def __init__(
        self,
        inner: ChatModel,
        *,
        failure_threshold: int = 3,
        reset_after_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner = inner
        # Copied rather than read through properties: the port declares them as plain
        # attributes, and an adapter's model name and kind do not change after construction.
        self.name = inner.name
        self.backend = inner.backend
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self._circuit = CircuitBreaker(f"{inner.backend} model {inner.name}", failure_threshold=failure_threshold,
                                       reset_after_s=reset_after_s, clock=clock)

    @property
    def state(self) -> CircuitState:
        """``half_open`` as soon as the wait is over, even before a call arrives to probe."""
        return self._circuit.state

    @property
    def consecutive_failures(self) -> int:
        return self._circuit.consecutive_failures

    async def complete(self, messages: Sequence[ChatMessage], options: ChatOptions) -> ChatResult:
        ticket = self._admit()
        try:
            result = await self._inner.complete(messages, options)
        except BackendUnavailable as exc:
            self._failed(ticket, exc)
            raise
        except BaseException:
            self._neutral(ticket)
            raise
        self._succeeded(ticket)
        return result

    async def stream(self, messages: Sequence[ChatMessage], options: ChatOptions) -> AsyncGenerator[StreamEvent, None]:
        ticket = self._admit()
        settled = False
        events: AsyncIterator[StreamEvent] | None = None
        try:
            events = self._inner.stream(messages, options)
            async for event in events:
                if event.done and not settled:
                    settled = True
                    self._succeeded(ticket)
                yield event
        except BackendUnavailable as exc:
            if not settled:
                settled = True
                self._failed(ticket, exc)
            raise
        finally:
            # Closed early by the caller, cancelled, or a stream that ended without ``done``.
            if not settled:
                self._neutral(ticket)
            # The port only promises an async iterator, but the adapters' generators hold a
            # queue slot and a connection until closed: close whatever can be closed.
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()

    async def health(self) -> bool:
        return await self._inner.health()

    async def aclose(self) -> None:
        await self._inner.aclose()

    # --- the shared state machine ---------------------------------------------------------

    def _admit(self) -> Ticket:
        try:
            return self._circuit.admit()
        except CircuitRefused as refused:
            raise ModelCircuitOpen(str(refused)) from None

    def _succeeded(self, ticket: Ticket) -> None:
        self._circuit.succeeded(ticket)

    def _failed(self, ticket: Ticket, exc: BackendUnavailable) -> None:
        if isinstance(exc, QueueFull) or not exc.retryable or (isinstance(exc, ModelTimeout) and exc.cut_short):
            self._circuit.release(ticket)  # neutral: see the contract
            return
        self._circuit.failed(ticket, f"{exc.code}: {exc}")

    def _neutral(self, ticket: Ticket) -> None:
        self._circuit.release(ticket)
