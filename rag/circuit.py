"""The circuit-breaker state machine the model and CRM wrappers share.

Contract: **closed** — calls pass; ``failure_threshold`` consecutive failures open the circuit,
a success resets the count. **open** — ``admit`` refuses at once (``CircuitRefused``, saying for
how long). **half_open** — once ``reset_after_s`` have passed, exactly one caller is admitted as
a probe while concurrent callers are refused; the probe's success closes the circuit, its
failure opens it again. Outcomes of calls admitted before the last state change are ignored: a
slow call admitted while closed says nothing about a server given up on since. A probe that
ends neutral (``release``) hands the probe slot to the next caller.

No awaits here: every step is atomic on the event loop. Each state change is logged once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger(__name__)

CircuitState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True)
class Ticket:
    """What a call was admitted as: its outcome only counts for the state it started in."""

    generation: int
    probe: bool


class CircuitRefused(Exception):
    """The circuit is open, or its one probe is in flight; ``retry_in`` seconds until a probe."""

    def __init__(self, message: str, retry_in: float | None) -> None:
        super().__init__(message)
        self.retry_in = retry_in


class CircuitBreaker:
    def __init__(self, who: str, *, failure_threshold: int, reset_after_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if reset_after_s < 0:
            raise ValueError("reset_after_s must not be negative")
        self.who, self.failure_threshold, self.reset_after_s, self._clock = who, failure_threshold, reset_after_s, clock
        self._state: CircuitState = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False
        self._generation = 0  # bumped on every state change
        self.last_error = ""
        self.opened_count = 0

    @property
    def state(self) -> CircuitState:
        """``half_open`` as soon as the wait is over, even before a call arrives to probe."""
        if self._state == "open" and self._retry_in() <= 0:
            return "half_open"
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def admit(self) -> Ticket:
        if self._state == "open":
            if self._retry_in() > 0:
                raise CircuitRefused(
                    f"{self.who} failed {self._failures} times in a row (last: {self.last_error}): "
                    f"circuit open, not calling it for another {self._retry_in():.1f}s", self._retry_in())
            self._change("half_open")
            log.info("%s: %.1fs passed, one probe call goes through", self.who, self.reset_after_s)
        if self._state == "half_open":
            if self._probe_in_flight:
                raise CircuitRefused(
                    f"{self.who} failed {self._failures} times in a row (last: {self.last_error}): "
                    "circuit open, a probe call is checking whether it is back; retry once it finishes", None)
            self._probe_in_flight = True
            return Ticket(self._generation, probe=True)
        return Ticket(self._generation, probe=False)

    def succeeded(self, ticket: Ticket) -> None:
        self.release(ticket)
        if ticket.generation != self._generation:
            return
        if self._state == "half_open":
            self._change("closed")
            log.info("%s answers again: circuit closed", self.who)
        self._failures = 0

    def failed(self, ticket: Ticket, error: str) -> None:
        self.release(ticket)
        if ticket.generation != self._generation:
            return
        self._failures += 1
        self.last_error = error[:300]
        if self._state == "half_open":
            self._open()
            log.warning("%s is still failing (%s): circuit open again for %.1fs",
                        self.who, self.last_error, self.reset_after_s)
        elif self._failures >= self.failure_threshold:
            self._open()
            log.warning("%s failed %d times in a row (last: %s): circuit open, failing fast for %.1fs",
                        self.who, self._failures, self.last_error, self.reset_after_s)

    def release(self, ticket: Ticket) -> None:
        """A call that ended neither failed nor succeeded: only the current probe holds the slot."""
        if ticket.probe and ticket.generation == self._generation:
            self._probe_in_flight = False

    def _open(self) -> None:
        self._opened_at = self._clock()
        self.opened_count += 1
        self._change("open")

    def _change(self, state: CircuitState) -> None:
        self._state = state
        self._generation += 1
        self._probe_in_flight = False

    def _retry_in(self) -> float:
        return self._opened_at + self.reset_after_s - self._clock()
