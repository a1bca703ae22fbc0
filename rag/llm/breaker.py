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
from dataclasses import dataclass
from typing import Literal

from rag.errors import BackendUnavailable, ModelCircuitOpen, QueueFull
from rag.llm.base import ChatMessage, ChatModel, ChatOptions, ChatResult, StreamEvent

log = logging.getLogger(__name__)

CircuitState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True)
class _Ticket:
    """What a call was admitted as: its outcome only counts for the state it started in."""

    generation: int
    probe: bool


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
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if reset_after_s < 0:
            raise ValueError("reset_after_s must not be negative")
        self._inner = inner
        # Copied rather than read through properties: the port declares them as plain
        # attributes, and an adapter's model name and kind do not change after construction.
        self.name = inner.name
        self.backend = inner.backend
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self._clock = clock
        self._state: CircuitState = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False
        self._generation = 0  # bumped on every state change
        self._last_error = ""

    @property
    def state(self) -> CircuitState:
        """``half_open`` as soon as the wait is over, even before a call arrives to probe."""
        if self._state == "open" and self._retry_in() <= 0:
            return "half_open"
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

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

    # --- state machine; no awaits below, so each step is atomic on the event loop ----------

    def _admit(self) -> _Ticket:
        if self._state == "open":
            if self._retry_in() > 0:
                raise ModelCircuitOpen(
                    f"{self._who()} failed {self._failures} times in a row (last: {self._last_error}); "
                    f"not calling it for another {self._retry_in():.1f}s"
                )
            self._change("half_open")
            log.info("%s: %.1fs passed, one probe call goes through", self._who(), self.reset_after_s)
        if self._state == "half_open":
            if self._probe_in_flight:
                raise ModelCircuitOpen(
                    f"{self._who()} failed {self._failures} times in a row (last: {self._last_error}); "
                    "a probe call is checking whether it is back, retry once it finishes"
                )
            self._probe_in_flight = True
            return _Ticket(self._generation, probe=True)
        return _Ticket(self._generation, probe=False)

    def _succeeded(self, ticket: _Ticket) -> None:
        self._release(ticket)
        if ticket.generation != self._generation:
            return
        if self._state == "half_open":
            self._change("closed")
            log.info("%s answers again: circuit closed", self._who())
        self._failures = 0

    def _failed(self, ticket: _Ticket, exc: BackendUnavailable) -> None:
        if isinstance(exc, QueueFull) or not exc.retryable:
            self._neutral(ticket)
            return
        self._release(ticket)
        if ticket.generation != self._generation:
            return
        self._failures += 1
        self._last_error = f"{exc.code}: {exc}"[:300]
        if self._state == "half_open":
            self._open()
            log.warning(
                "%s is still failing (%s): circuit open again for %.1fs",
                self._who(),
                self._last_error,
                self.reset_after_s,
            )
        elif self._failures >= self.failure_threshold:
            self._open()
            log.warning(
                "%s failed %d times in a row (last: %s): circuit open, failing fast for %.1fs",
                self._who(),
                self._failures,
                self._last_error,
                self.reset_after_s,
            )

    def _neutral(self, ticket: _Ticket) -> None:
        self._release(ticket)

    def _release(self, ticket: _Ticket) -> None:
        # Only the probe of the current half-open state holds the slot; a probe cancelled or
        # neutral leaves the circuit half-open and the next caller becomes the probe.
        if ticket.probe and ticket.generation == self._generation:
            self._probe_in_flight = False

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._change("open")

    def _change(self, state: CircuitState) -> None:
        self._state = state
        self._generation += 1
        self._probe_in_flight = False

    def _retry_in(self) -> float:
        return self._opened_at + self.reset_after_s - self._clock()

    def _who(self) -> str:
        return f"{self.backend} model {self.name}"
