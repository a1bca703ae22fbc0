"""Retries within a time budget and a circuit breaker around any CRM adapter.

Adapters make one attempt and report what happened (``CrmUnavailable`` or ``CrmError``); this
wrapper decides whether to try again. Keeping the policy here means every CRM behaves the same
under trouble, and the customer-facing path has one bound on how long a CRM may delay a reply:
``budget_s`` for the whole call, whatever the adapter does.

Writes are the delicate part. A note sent to a CRM that timed out may well have been created
— the request was on the wire — so retrying it could give the customer's card two identical
notes. ``add_note`` and ``add_task`` are therefore retried only when the adapter says the
request was certainly **not sent**: it raises ``CrmNotSent`` (connection refused, DNS failure,
connect timeout, a pool that never handed out a connection, a 429 that refused the request
before doing anything). Every other ``CrmUnavailable`` on a write — a timeout, a 5xx, a
connection reset mid-request — ends the call at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from crm_adapters.base import (
    CrmError,
    CrmNotSent,
    CrmReader,
    CrmUnavailable,
    CrmWriter,
    CustomerContext,
    CustomerRef,
    Lookup,
    NewTask,
)
from rag.circuit import CircuitBreaker, CircuitRefused, CircuitState, Ticket

log = logging.getLogger(__name__)

T = TypeVar("T")

class CrmCircuitOpen(CrmUnavailable):
    """The CRM failed repeatedly; calls fail fast until the breaker lets a probe through."""

    code = "crm_circuit_open"


class CrmTimeout(CrmUnavailable):
    """One attempt took longer than ``attempt_timeout_s`` (the request may have been processed)."""

    code = "crm_timeout"


@dataclass
class ResilienceStats:
    """Counters since start, for metrics. Attempts, not calls, feed the breaker."""

    calls: int = 0  # find_customer / context / add_note / add_task calls
    attempts: int = 0  # requests handed to the inner adapter
    retries: int = 0  # attempts after the first of a call
    failures: int = 0  # attempts that ended in CrmUnavailable (timeouts included)
    timeouts: int = 0  # attempts cut off by attempt_timeout_s
    gave_up: int = 0  # calls that ended in CrmUnavailable
    short_circuited: int = 0  # attempts refused at once because the circuit was open
    circuit_opened: int = 0  # times the circuit went to "open"


class ResilientCrm:
    """A ``CrmReader`` and ``CrmWriter`` that wraps an adapter with retries and a circuit breaker.

    Contract:

    - **Attempts.** Each attempt is bounded by ``attempt_timeout_s`` (``CrmTimeout``, a
      ``CrmUnavailable``). Only ``CrmUnavailable`` is retried, at most ``max_attempts`` attempts
      in all; ``CrmError`` (``AmbiguousCustomer`` included) and anything else pass through at once.
    - **Backoff.** Exponential from ``base_delay_s`` (doubling, capped at ``max_delay_s``) with
      equal jitter (half fixed, half random), so callers that failed together do not come back
      together; a CRM's ``retry_after_s`` is a floor for the wait.
    - **Budget.** The whole call, waits included, stays within ``budget_s`` of its start: the
      last attempt's timeout is shortened to what is left, and when the next wait would end at
      or past the budget the call gives up at once rather than sleep for nothing. Giving up
      raises ``CrmUnavailable`` naming the attempts and the last error (chained to it), with the
      last ``retry_after_s``; an open circuit raises its ``CrmCircuitOpen`` as it is.
    - **Writes.** ``add_note`` / ``add_task`` are retried only after ``CrmNotSent``: see the
      module docstring. Without a writer inside, they raise ``CrmError`` (``writable`` is False).
    - **Breaker**, as ``rag.llm.breaker.CircuitBreakerChat`` does for the model, counted per
      attempt: ``breaker_threshold`` consecutive failed attempts open it; while open, attempts
      fail fast with ``CrmCircuitOpen`` (a ``CrmUnavailable``; not retried) without calling the
      CRM; after ``breaker_reset_s`` one attempt goes through as a probe (others keep failing
      fast), and its success closes the circuit, its failure opens it again. A ``CrmError`` or a
      cancellation is neutral: the CRM answered, or nobody knows. Outcomes of attempts admitted
      before the last state change are ignored.

    ``state``, ``consecutive_failures`` and ``stats`` are for metrics; each state change is
    logged once (opening at WARNING). ``clock`` (the budget and the breaker), ``sleep`` and
    ``rand`` are injectable for tests; the per-attempt timeout uses the event loop's clock.
    """

    def __init__(
        self,
        inner: CrmReader,
        *,
        attempt_timeout_s: float = 3.0,
        budget_s: float = 8.0,
        max_attempts: int = 4,
        breaker_threshold: int = 5,
        breaker_reset_s: float = 30.0,
        base_delay_s: float = 0.2,
        max_delay_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if attempt_timeout_s <= 0 or budget_s <= 0:
            raise ValueError("attempt_timeout_s and budget_s must be positive")
        if max_attempts < 1 or breaker_threshold < 1:
            raise ValueError("max_attempts and breaker_threshold must be at least 1")
        if breaker_reset_s < 0 or base_delay_s < 0 or max_delay_s < 0:
            raise ValueError("breaker_reset_s, base_delay_s and max_delay_s must not be negative")
        self._inner = inner
        self.name = inner.name
        self.attempt_timeout_s = attempt_timeout_s
        self.budget_s = budget_s
        self.max_attempts = max_attempts
        self.breaker_threshold = breaker_threshold
        self.breaker_reset_s = breaker_reset_s
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self._clock = clock
        self._sleep = sleep
        self._rand = rand
        self._stats = ResilienceStats()
        self._circuit = CircuitBreaker(f"CRM {self.name}", failure_threshold=breaker_threshold,
                                       reset_after_s=breaker_reset_s, clock=clock)

    # --- the ports ---------------------------------------------------------------------------

    @property
    def writable(self) -> bool:
        """Whether the wrapped adapter writes back (a company's own database does not)."""
        return isinstance(self._inner, CrmWriter)

    async def find_customer(self, lookup: Lookup) -> CustomerRef | None:
        return await self._call("find_customer", lambda: self._inner.find_customer(lookup), write=False)

    async def context(self, ref: CustomerRef) -> CustomerContext:
        return await self._call("context", lambda: self._inner.context(ref), write=False)

    async def add_note(self, ref: CustomerRef, text: str, *, deal_id: str | None = None) -> str:
        writer = self._writer()
        return await self._call("add_note", lambda: writer.add_note(ref, text, deal_id=deal_id), write=True)

    async def add_task(self, ref: CustomerRef, task: NewTask) -> str:
        writer = self._writer()
        return await self._call("add_task", lambda: writer.add_task(ref, task), write=True)

    async def aclose(self) -> None:
        await self._inner.aclose()

    # --- metrics -----------------------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """``half_open`` as soon as the wait is over, even before a call arrives to probe."""
        return self._circuit.state

    @property
    def consecutive_failures(self) -> int:
        return self._circuit.consecutive_failures

    @property
    def stats(self) -> ResilienceStats:
        """A copy: the counters at this moment."""
        return dataclasses.replace(self._stats, circuit_opened=self._circuit.opened_count)

    # --- retries -----------------------------------------------------------------------------

    def _writer(self) -> CrmWriter:
        if not isinstance(self._inner, CrmWriter):
            raise CrmError(f"CRM {self.name} is read-only: it takes no notes or tasks")
        return self._inner

    async def _call(self, op: str, attempt: Callable[[], Awaitable[T]], *, write: bool) -> T:
        self._stats.calls += 1
        started = self._clock()
        deadline = started + self.budget_s
        number = 0
        while True:
            number += 1
            if number > 1:
                self._stats.retries += 1
            try:
                return await self._attempt(op, attempt, deadline)
            except CrmUnavailable as exc:
                if isinstance(exc, CrmCircuitOpen):
                    # Failing fast is the point: the message already says why and for how long.
                    self._stats.gave_up += 1
                    raise
                reason = self._should_stop(exc, number, write, deadline)
                if reason is None:
                    delay = self._delay(number, exc.retry_after_s)
                    if self._clock() + delay < deadline:
                        log.info("CRM %s %s failed (%s: %s); attempt %d in %.2fs",
                                 self.name, op, exc.code, exc, number + 1, delay)
                        await self._sleep(delay)
                        continue
                    reason = f"the next attempt would start past the {self.budget_s:g}s budget"
                self._stats.gave_up += 1
                spent = self._clock() - started
                raise CrmUnavailable(
                    f"CRM {self.name}: {op} gave up after {number} attempt(s) in {spent:.1f}s ({reason}); "
                    f"last error: {exc.code}: {exc}",
                    retry_after_s=exc.retry_after_s,
                ) from exc

    def _should_stop(self, exc: CrmUnavailable, number: int, write: bool, deadline: float) -> str | None:
        """Why this call ends with ``exc`` rather than another attempt; None to try again."""
        if write and not isinstance(exc, CrmNotSent):
            return "a write that may have reached the CRM is not repeated"
        if number >= self.max_attempts:
            return f"{self.max_attempts} attempts made"
        if self._clock() >= deadline:
            return f"the {self.budget_s:g}s budget is spent"
        return None

    def _delay(self, failed_attempts: int, retry_after_s: float | None) -> float:
        cap = min(self.max_delay_s, self.base_delay_s * 2 ** (failed_attempts - 1))
        delay = cap / 2 + self._rand() * cap / 2
        if retry_after_s is not None:
            delay = max(delay, retry_after_s)
        return delay

    async def _attempt(self, op: str, attempt: Callable[[], Awaitable[T]], deadline: float) -> T:
        timeout = min(self.attempt_timeout_s, deadline - self._clock())
        if timeout <= 0:
            raise CrmUnavailable(f"CRM {self.name}: no time left in the {self.budget_s:g}s budget")
        try:
            ticket = self._circuit.admit()
        except CircuitRefused as refused:
            self._stats.short_circuited += 1
            raise CrmCircuitOpen(str(refused), retry_after_s=refused.retry_in) from None
        self._stats.attempts += 1
        try:
            async with asyncio.timeout(timeout):
                result = await attempt()
        except TimeoutError as exc:
            self._stats.timeouts += 1
            error = CrmTimeout(f"CRM {self.name}: {op} did not answer within {timeout:.2f}s")
            self._failed(ticket, error)
            raise error from exc
        except CrmUnavailable as exc:
            self._failed(ticket, exc)
            raise
        except BaseException:
            self._circuit.release(ticket)  # neutral: a CrmError or a cancellation says nothing of health
            raise
        self._circuit.succeeded(ticket)
        return result

    def _failed(self, ticket: Ticket, exc: CrmUnavailable) -> None:
        self._stats.failures += 1
        self._circuit.failed(ticket, f"{exc.code}: {exc}")
