"""Telegram updates in: validated and stored under their ``update_id`` before they are
acknowledged (by the webhook route or the polling loop); ``bot.worker.EventWorker`` works
them off, feeding each to aiogram's dispatcher through ``telegram_handler``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from aiogram import Bot, Dispatcher
from aiogram.types import Update
from sqlalchemy.engine import Connection

from bot.storage.database import Database
from bot.storage.events import InboundEvent, InboundEventRepository
from rag.errors import InputError

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


def telegram_handler(dispatcher: Dispatcher, bot: Bot) -> Callable[[InboundEvent], Awaitable[None]]:
    async def handle(event: InboundEvent) -> None:
        update = Update.model_validate(event.payload, context={"bot": bot})
        await dispatcher.feed_update(bot, update, event_id=event.id)

    return handle
