"""The worker that handles stored inbound events: Telegram updates, CRM events.

It claims events with a lease (``InboundEventRepository.claim``: in order per chat, never two
workers on one event), hands each to the handler of its source, and records the end: done,
or — after the last of ``max_attempts`` with backoff — failed with its reason, then
``on_failure`` (which tells the customer and opens a ticket). The lease is renewed while a
handler runs, so a slow model answer is not taken over by another worker; a crashed process's
events are taken over once their lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime, timedelta

from bot.storage.database import Database
from bot.storage.events import InboundEvent, InboundEventRepository

log = logging.getLogger(__name__)

Handler = Callable[[InboundEvent], Awaitable[None]]


class EventWorker:
    def __init__(
        self, db: Database, handlers: Mapping[str, Handler], *, clock: Callable[[], datetime], concurrency: int = 4,
        lease_s: float = 30.0, max_attempts: int = 3, poll_s: float = 0.5,
        on_failure: Callable[[InboundEvent, str], Awaitable[None]] | None = None,
    ) -> None:
        self._db, self._handlers, self._clock = db, dict(handlers), clock
        self._concurrency, self._lease_s, self._max_attempts, self._poll_s = concurrency, lease_s, max_attempts, poll_s
        self._on_failure = on_failure
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def notify(self) -> None:
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            free = self._concurrency - len(self._tasks)
            claimed: list[InboundEvent] = []
            if free > 0:
                try:
                    claimed = await self._db.tx(
                        lambda c, n=free: InboundEventRepository(c).claim(self._clock(), self._lease_s, n)  # type: ignore[misc]
                    )
                except Exception:  # the database may be briefly gone: keep going
                    log.exception("could not claim inbound events")
            for event in claimed:
                task = asyncio.create_task(self._process(event), name=f"{event.source}-{event.key}")
                self._tasks.add(task)
                task.add_done_callback(self._done)
            if claimed and len(self._tasks) < self._concurrency:
                continue
            self._wake.clear()
            waits = {asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())}
            await asyncio.wait(waits, timeout=self._poll_s, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
        await self.drain(timeout_s=10.0)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wake.set()  # a slot is free, and the chat's next update may be claimable now

    async def drain(self, timeout_s: float) -> None:
        """Let in-flight updates finish; what does not is taken again after its lease."""
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            for task in pending:
                task.cancel()

    async def _process(self, event: InboundEvent) -> None:
        try:
            handler = self._handlers.get(event.source)
            if handler is None:
                raise LookupError(f"no handler for {event.source} events")
            async with self._lease(event):
                await handler(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.exception("%s event %s failed (attempt %s of %s)", event.source, event.key, event.attempts,
                          self._max_attempts)
            await self._after_failure(event, error)
            return
        await self._db.tx(lambda c: InboundEventRepository(c).finish(event.id, self._clock()))

    async def _after_failure(self, event: InboundEvent, error: str) -> None:
        if event.attempts < self._max_attempts:
            not_before = self._clock() + timedelta(seconds=min(60.0, 2.0 ** event.attempts))
            await self._db.tx(lambda c: InboundEventRepository(c).retry_later(event.id, error, not_before))
            return
        await self._db.tx(lambda c: InboundEventRepository(c).fail(event.id, error, self._clock()))
        if self._on_failure is not None:
            try:
                await self._on_failure(event, error)
            except Exception:
                log.exception("failure handler for %s event %s raised", event.source, event.key)

    @contextlib.asynccontextmanager
    async def _lease(self, event: InboundEvent) -> AsyncIterator[None]:
        """Keep extending the lease while the update is handled: a slow model answer must not
        let another worker take the same update."""

        async def heartbeat() -> None:
            while True:
                await asyncio.sleep(self._lease_s / 3)
                until = self._clock() + timedelta(seconds=self._lease_s)
                with contextlib.suppress(Exception):
                    await self._db.tx(lambda c, u=until: InboundEventRepository(c).extend_lease(event.id, u))  # type: ignore[misc]

        beat = asyncio.create_task(heartbeat())
        try:
            yield
        finally:
            beat.cancel()
