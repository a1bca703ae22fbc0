"""Telegram updates in: validated, stored under their ``update_id``, then worked off in order.

``TelegramInbox.store`` is what the webhook route and the polling loop call before they
acknowledge an update. ``UpdateWorker`` claims stored updates and feeds them to aiogram's
dispatcher; an update whose handling raised is retried with backoff and, after the last
attempt, recorded as failed with its reason and handed to ``on_failure`` (which tells the
customer and opens a ticket).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from aiogram import Bot, Dispatcher
from aiogram.types import Update
from sqlalchemy.engine import Connection

from bot.storage.database import Database
from bot.storage.events import InboundEvent, InboundEventRepository
from rag.errors import InputError

log = logging.getLogger(__name__)

SOURCE = "telegram"


def validate_update(payload: Any) -> int:
    """The update_id of a Bot API update, or InputError: the ingress answers 400 for it."""
    if not isinstance(payload, dict):
        raise InputError("an update is a JSON object")
    update_id = payload.get("update_id")
    if not isinstance(update_id, int) or isinstance(update_id, bool) or update_id < 0:
        raise InputError("update_id must be a non-negative integer")
    return update_id


def chat_key(payload: dict[str, Any]) -> str | None:
    """The chat an update belongs to; updates of one chat are handled one at a time, in order."""
    for kind in ("message", "edited_message", "business_message"):
        chat = (payload.get(kind) or {}).get("chat") or {}
        if "id" in chat:
            return str(chat["id"])
    callback = payload.get("callback_query") or {}
    if callback:
        chat = ((callback.get("message") or {}).get("chat")) or {}
        if "id" in chat:
            return str(chat["id"])
        if "id" in (callback.get("from") or {}):
            return str(callback["from"]["id"])
    return None


class TelegramInbox:
    def __init__(self, db: Database, *, clock: Callable[[], datetime]) -> None:
        self._db, self._clock = db, clock

    def store_in(self, conn: Connection, payload: dict[str, Any]) -> bool:
        update_id = validate_update(payload)
        return InboundEventRepository(conn).add(SOURCE, str(update_id), chat_key(payload), payload, self._clock())

    def store(self, payload: Any) -> bool:
        """Store an update (blocking; call from a worker thread). False for a duplicate."""
        validate_update(payload)
        return self._db.tx_sync(lambda c: self.store_in(c, payload))


class UpdateWorker:
    def __init__(
        self, db: Database, dispatcher: Dispatcher, bot: Bot, *, clock: Callable[[], datetime], concurrency: int = 4,
        lease_s: float = 30.0, max_attempts: int = 3, poll_s: float = 0.5,
        on_failure: Callable[[InboundEvent, str], Awaitable[None]] | None = None,
    ) -> None:
        self._db, self._dp, self._bot, self._clock = db, dispatcher, bot, clock
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
                task = asyncio.create_task(self._process(event), name=f"update-{event.key}")
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
            async with self._lease(event):
                update = Update.model_validate(event.payload, context={"bot": self._bot})
                await self._dp.feed_update(self._bot, update, event_id=event.id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.exception("update %s failed (attempt %s of %s)", event.key, event.attempts, self._max_attempts)
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
                log.exception("failure handler for update %s raised", event.key)

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
