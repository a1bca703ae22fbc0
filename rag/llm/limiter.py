"""A bounded, first-come-first-served queue in front of a model.

A local GPU serves a handful of generations at once; more callers only slow everyone down
and exhaust memory. Callers past ``max_concurrent`` wait in order, and past ``max_queue``
waiting ones they are turned away at once so an overloaded service answers "busy" instead
of stacking requests it will never finish.

A caller with a deadline also needs time for the generation itself, not only for the wait:
the limiter learns how long a call typically holds a slot and keeps that much of the
deadline for it. A caller whose turn would come too late to finish is turned away on
arrival instead of waiting out its whole deadline in a line it cannot leave in time.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from rag.errors import QueueFull

# Weight of the newest hold time in the running estimate: recent enough to follow a model
# that slows down under load, smooth enough that one long answer does not swing it.
HOLD_SMOOTHING = 0.2


class ConcurrencyLimiter:
    """At most ``max_concurrent`` holders of a slot, at most ``max_queue`` waiting for one.

    Written on a deque of futures rather than ``asyncio.Semaphore`` because the semaphore
    lets a newcomer overtake a woken waiter; here a freed slot is handed directly to the
    oldest waiter, so service order is arrival order.
    """

    def __init__(self, max_concurrent: int, max_queue: int) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        if max_queue < 0:
            raise ValueError("max_queue must not be negative")
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self._in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._typical_hold_s: float | None = None

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def typical_hold_s(self) -> float | None:
        """How long a successful call holds a slot (a running average), None before the first."""
        return self._typical_hold_s

    @asynccontextmanager
    async def slot(self, deadline_s: float | None = None) -> AsyncIterator[float]:
        """Hold a slot for the body; yields the seconds spent waiting for it.

        Raises ``QueueFull`` at once when the queue is full or the caller's turn would come
        too late to finish within ``deadline_s``, and after waiting when no slot freed up
        while a typical call's time was still left (``None`` waits as long as it takes).
        The error's ``queue_wait_s`` is the time spent waiting.
        """
        waited = await self._acquire(deadline_s)
        started = time.perf_counter()
        try:
            yield waited
        except BaseException:
            self._release()
            raise
        self._learn(time.perf_counter() - started)
        self._release()

    def _learn(self, held_s: float) -> None:
        old = self._typical_hold_s
        self._typical_hold_s = held_s if old is None else old + HOLD_SMOOTHING * (held_s - old)

    def expected_wait_s(self) -> float:
        """The estimated wait of a caller arriving now: the slots that must free up before its
        turn, a typical call each (0 with a free slot or no estimate yet)."""
        if self._typical_hold_s is None or (self._in_flight < self.max_concurrent and not self._waiters):
            return 0.0
        turns = math.ceil((len(self._waiters) + 1) / self.max_concurrent)
        return turns * self._typical_hold_s

    async def _acquire(self, deadline_s: float | None) -> float:
        started = time.perf_counter()
        if self._in_flight < self.max_concurrent and not self._waiters:
            self._in_flight += 1
            return 0.0
        if len(self._waiters) >= self.max_queue:
            raise self._refusal(f"model queue is full: {self._in_flight} running, {len(self._waiters)} waiting", 0.0)
        wait_s = None
        if deadline_s is not None:
            reserve = self._typical_hold_s or 0.0  # time kept for the generation itself
            wait_s = deadline_s - reserve
            expected = self.expected_wait_s()
            if wait_s <= 0 or expected > wait_s:
                raise self._refusal(
                    f"the model queue would not reach this request in time: about {expected:.1f}s to wait "
                    f"and {reserve:.1f}s to answer within {deadline_s:g}s "
                    f"({self._in_flight} running, {len(self._waiters)} waiting)", 0.0)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(wait_s):
                await waiter
        except BaseException as exc:
            # The slot may have been handed over in the same loop turn the wait was
            # cancelled or timed out; then it is ours and must be passed on, not lost.
            if waiter.done() and not waiter.cancelled():
                self._release()
            elif waiter in self._waiters:  # a release may already have dropped it
                self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise self._refusal(
                    f"no model slot freed up within {deadline_s:g}s, keeping time to answer "
                    f"({self._in_flight} running, {len(self._waiters)} waiting)",
                    time.perf_counter() - started,
                ) from None
            raise
        return time.perf_counter() - started

    @staticmethod
    def _refusal(message: str, waited_s: float) -> QueueFull:
        error = QueueFull(message)
        error.queue_wait_s = waited_s
        return error

    def _release(self) -> None:
        # Hand the slot straight to the oldest waiter: ``in_flight`` stays the same.
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._in_flight -= 1
