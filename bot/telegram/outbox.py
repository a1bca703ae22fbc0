"""Telegram's side of the outbox: payloads in, messages out, exactly one copy.

``TelegramOutbox`` turns an ``Outgoing`` into a Bot API payload row. ``OutboxSender`` claims
due rows and calls the Bot API: a 429 puts the row back for at least ``retry_after``
seconds, HTML that Telegram refuses is sent again as plain text, 5xx and network errors are
retried with backoff up to a limit and then recorded as failed with the reason, and
permanent refusals (blocked by the user, chat not found) fail at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from aiogram import Bot
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.types import InlineKeyboardMarkup, ReplyKeyboardMarkup, ReplyKeyboardRemove, ReplyParameters
from sqlalchemy.engine import Connection

from bot.outgoing import Outgoing
from bot.storage.database import Database
from bot.storage.outbox import NewOutboxMessage, OutboxRepository, OutboxRow
from bot.usage import UsageLog

log = logging.getLogger(__name__)

CHANNEL = "telegram"


def _markup(message: Outgoing) -> dict[str, Any] | None:
    if message.contact_request:
        return {"keyboard": [[{"text": message.contact_request, "request_contact": True}]],
                "one_time_keyboard": True, "resize_keyboard": True}
    if message.remove_keyboard:
        return {"remove_keyboard": True}
    if not message.buttons:
        return None
    return {"inline_keyboard": [[{"text": b.text, "callback_data": b.data} for b in row] for row in message.buttons]}


def _keyboard(markup: dict[str, Any] | None) -> InlineKeyboardMarkup | ReplyKeyboardMarkup | ReplyKeyboardRemove | None:
    if not markup:
        return None
    if "inline_keyboard" in markup:
        return InlineKeyboardMarkup.model_validate(markup)
    if "keyboard" in markup:
        return ReplyKeyboardMarkup.model_validate(markup)
    return ReplyKeyboardRemove.model_validate(markup)


class TelegramOutbox:
    """The ``OutgoingQueue`` for Telegram."""

    def queue(self, conn: Connection, message: Outgoing, now: datetime) -> int | None:
        payload: dict[str, Any] = {"text": message.html, "plain": message.plain, "reply_markup": _markup(message)}
        if message.edit_of is not None:
            method = "editMessageText"
        else:
            method = "sendMessage"
            if message.reply_to_message_id is not None:
                payload["reply_to_message_id"] = message.reply_to_message_id
            if message.thread_id is not None:
                payload["message_thread_id"] = message.thread_id
        return OutboxRepository(conn).add(
            NewOutboxMessage(
                channel=CHANNEL, chat_id=message.chat_id, method=method, payload=payload, kind=message.kind,
                dedupe_key=message.dedupe_key, ticket_id=message.ticket_id, answer_id=message.answer_id,
                ref_outbox_id=message.edit_of,
            ),
            now,
        )


class _RateGate:
    """Spaces calls to at most ``rate`` a second in this process (Telegram's global limit)."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self._lock:
            now = time.monotonic()
            if self._next > now:
                await asyncio.sleep(self._next - now)
            self._next = max(now, self._next) + self._interval


class OutboxSender:
    def __init__(
        self, bot: Bot, db: Database, *, clock: Callable[[], datetime], per_chat_interval_s: float = 1.0,
        global_rate_per_s: float = 25.0, max_attempts: int = 8, lease_s: float = 60.0, batch: int = 20,
        usage: UsageLog | None = None,
    ) -> None:
        self._usage = usage or UsageLog()
        self._bot, self._db, self._clock = bot, db, clock
        self._per_chat, self._max_attempts, self._lease_s, self._batch = (
            per_chat_interval_s, max_attempts, lease_s, batch
        )
        self._gate = _RateGate(global_rate_per_s)
        self._wake = asyncio.Event()

    def notify(self) -> None:
        """New rows were queued: look now instead of at the next poll."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                sent = await self.send_due()
            except Exception:  # the database may be briefly gone: keep the loop alive
                log.exception("outbox pass failed")
                sent = 0
            if sent:
                continue
            self._wake.clear()
            wake, stopping = asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())
            await asyncio.wait({wake, stopping}, timeout=0.25, return_when=asyncio.FIRST_COMPLETED)
            wake.cancel()
            stopping.cancel()

    async def send_due(self) -> int:
        """One pass: claim what is due and send it; returns how many rows were handled."""
        rows = await self._db.tx(lambda c: OutboxRepository(c).claim_due(
            self._clock(), lease_s=self._lease_s, per_chat_interval_s=self._per_chat, limit=self._batch
        ))
        if rows:
            await asyncio.gather(*(self._send(row) for row in rows))
        return len(rows)

    async def _send(self, row: OutboxRow) -> None:
        try:
            await self._deliver(row)
        except Exception as exc:  # a bug must not lose the row: it is retried, then failed with the reason
            log.exception("outbox row %s: unexpected error", row.id)
            await self._retry_or_fail(row, f"{type(exc).__name__}: {exc}", backoff=True)

    async def _deliver(self, row: OutboxRow) -> None:
        p = row.payload
        markup = p.get("reply_markup")
        message_id: int | None = None
        if row.method == "editMessageText":
            ref = row.ref_outbox_id
            assert ref is not None
            status, message_id = await self._db.tx(lambda c: OutboxRepository(c).sent_message_id(ref))
            if status == "failed" or (status == "sent" and message_id is None):
                await self._finish(row, None, error="the message to edit was never sent")
                return
            if message_id is None:  # the original is not sent yet: edit after it
                await self._reschedule(row, 1.0, "waiting for the message to edit", count=False)
                return
        plain = False
        for _ in range(2):
            await self._gate.wait()
            try:
                result = await self._call(row, p, markup, message_id, plain=plain)
            except TelegramRetryAfter as exc:
                await self._reschedule(row, float(exc.retry_after), f"429 retry after {exc.retry_after}s", count=False)
                return
            except TelegramBadRequest as exc:
                text = str(exc).lower()
                if "can't parse entities" in text and not plain:
                    log.warning("outbox row %s: Telegram refused the HTML, sending plain text", row.id)
                    plain = True
                    continue
                if "message is not modified" in text:
                    await self._finish(row, message_id)
                    return
                await self._finish(row, None, error=f"refused: {exc}")
                return
            except (TelegramForbiddenError, TelegramNotFound, TelegramUnauthorizedError) as exc:
                await self._finish(row, None, error=f"refused: {exc}")
                return
            except (TelegramServerError, TelegramNetworkError, TimeoutError) as exc:
                await self._retry_or_fail(row, f"{type(exc).__name__}: {exc}", backoff=True)
                return
            await self._finish(row, result)
            return

    async def _call(self, row: OutboxRow, p: dict[str, Any], markup: dict[str, Any] | None, message_id: int | None,
                    *, plain: bool) -> int | None:
        text = p["plain"] if plain else p["text"]
        parse_mode = None if plain else "HTML"
        keyboard = _keyboard(markup)
        if row.method == "editMessageText":
            await self._bot.edit_message_text(
                text=text, chat_id=row.chat_id, message_id=message_id, parse_mode=parse_mode,
                reply_markup=keyboard if isinstance(keyboard, InlineKeyboardMarkup) else None,
            )
            return message_id
        reply_to = p.get("reply_to_message_id")
        sent = await self._bot.send_message(
            chat_id=row.chat_id, text=text, parse_mode=parse_mode, reply_markup=keyboard,
            reply_parameters=ReplyParameters(message_id=reply_to, allow_sending_without_reply=True)
            if reply_to else None,
            message_thread_id=p.get("message_thread_id"),
        )
        return sent.message_id

    async def _finish(self, row: OutboxRow, message_id: int | None, *, error: str | None = None) -> None:
        now = self._clock()
        if error is None:
            answer_id = row.answer_id if row.kind == "answer" else None

            def sent(c: Connection) -> None:
                OutboxRepository(c).mark_sent(row.id, message_id, now)
                if answer_id is not None:
                    self._usage.delivered(c, answer_id, now)

            await self._db.tx(sent)
        else:
            log.warning("outbox row %s (%s to %s) failed: %s", row.id, row.kind, row.chat_id, error)
            await self._db.tx(lambda c: OutboxRepository(c).mark_failed(row.id, error, now))

    async def _retry_or_fail(self, row: OutboxRow, error: str, *, backoff: bool) -> None:
        if row.attempts + 1 >= self._max_attempts:
            await self._finish(row, None, error=f"gave up after {row.attempts + 1} attempts: {error}")
            return
        delay = min(300.0, 2.0 ** row.attempts) if backoff else 0.0
        await self._reschedule(row, delay, error, count=True)

    async def _reschedule(self, row: OutboxRow, delay_s: float, error: str, *, count: bool) -> None:
        not_before = self._clock() + timedelta(seconds=delay_s)
        await self._db.tx(lambda c: OutboxRepository(c).reschedule(row.id, not_before, error, count_attempt=count))
