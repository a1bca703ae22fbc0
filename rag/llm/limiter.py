"""A bounded, first-come-first-served queue in front of a model.

A local GPU serves a handful of generations at once; more callers only slow everyone down
and exhaust memory. Callers past ``max_concurrent`` wait in order, and past ``max_queue``
waiting ones they are turned away at once so an overloaded service answers "busy" instead
of stacking requests it will never finish.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from rag.errors import QueueFull


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

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @asynccontextmanager
    async def slot(self, deadline_s: float | None = None) -> AsyncIterator[float]:
        """Hold a slot for the body; yields the seconds spent waiting for it.

        Raises ``QueueFull`` at once when the queue is full, or when no slot freed up
        within ``deadline_s`` (``None`` waits as long as it takes).
        """
        waited = await self._acquire(deadline_s)
        try:
            yield waited
        finally:
            self._release()

    async def _acquire(self, deadline_s: float | None) -> float:
        started = time.perf_counter()
        if self._in_flight < self.max_concurrent and not self._waiters:
            self._in_flight += 1
            return 0.0
        if len(self._waiters) >= self.max_queue:
            raise QueueFull(f"model queue is full: {self._in_flight} running, {len(self._waiters)} waiting")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(deadline_s):
                await waiter
        except BaseException as exc:
            # The slot may have been handed over in the same loop turn the wait was
            # cancelled or timed out; then it is ours and must be passed on, not lost.
            if waiter.done() and not waiter.cancelled():
                self._release()
            elif waiter in self._waiters:  # a release may already have dropped it
                self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise QueueFull(
                    f"no model slot freed up within {deadline_s:g}s "
                    f"({self._in_flight} running, {len(self._waiters)} waiting)"
                ) from None
            raise
        return time.perf_counter() - started

    def _release(self) -> None:
        # Hand the slot straight to the oldest waiter: ``in_flight`` stays the same.
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._in_flight -= 1
