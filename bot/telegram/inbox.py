"""Telegram updates in: validated and stored under their ``update_id`` before they are
acknowledged (by the webhook route or the polling loop); ``bot.worker.EventWorker`` works
them off, feeding each to aiogram's dispatcher through ``telegram_handler``."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from aiogram import Bot, Dispatcher
from aiogram.types import Update
from sqlalchemy.engine import Connection

from bot.arrivals import Arrivals
from bot.storage.database import Database
from bot.storage.events import InboundEvent, InboundEventRepository
from rag.errors import InputError

SOURCE = "telegram"


# Telegram's ids fit a signed 64-bit integer (the Bot API promises at most 52 significant
# bits); anything longer is not from Telegram and would not fit the key columns either.
_MAX_ID = 2**63 - 1


def validate_update(payload: Any) -> int:
    """The update_id of a Bot API update, or InputError: the ingress answers 400 for it."""
    if not isinstance(payload, dict):
        raise InputError("an update is a JSON object")
    update_id = payload.get("update_id")
    if not isinstance(update_id, int) or not _is_id(update_id) or update_id < 0:
        raise InputError("update_id must be a non-negative 64-bit integer")
    return update_id


def chat_key(payload: dict[str, Any]) -> str | None:
    """The chat an update belongs to; updates of one chat are handled one at a time, in order.

    None when there is none or its id is not a Telegram id (aiogram then refuses the update
    when it is handled, and it is recorded as failed with that reason)."""
    for kind in ("message", "edited_message", "business_message"):
        chat = _obj(_obj(payload.get(kind)).get("chat"))
        if "id" in chat:
            return _key(chat["id"])
    callback = _obj(payload.get("callback_query"))
    if callback:
        chat = _obj(_obj(callback.get("message")).get("chat"))
        if "id" in chat:
            return _key(chat["id"])
        sender = _obj(callback.get("from"))
        if "id" in sender:
            return _key(sender["id"])
    return None


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -_MAX_ID <= value <= _MAX_ID


def _key(value: Any) -> str | None:
    return str(value) if _is_id(value) else None


_SURROGATE = re.compile("[\ud800-\udfff]")


def _clean(text: str) -> str:
    return _SURROGATE.sub("\ufffd", text.replace("\x00", ""))


def clean_strings(payload: Any) -> Any:
    """The update with every string (keys too) storable: NULs dropped, lone surrogates made U+FFFD.

    Both are valid in JSON (``\\u0000``, ``\\ud800``) but not in what is stored from an update:
    PostgreSQL's text cannot hold U+0000, and a lone surrogate cannot be encoded as UTF-8 at all,
    so a message or a name with one would fail every attempt and its customer never hear back.
    Changes the parsed update in place, without recursion (an update may nest as deep as JSON can).
    """
    if isinstance(payload, str):
        return _clean(payload)
    stack: list[Any] = [payload]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            items = list(node.items())
            node.clear()  # re-filled in order, under the cleaned keys
            for key, value in items:
                node[_clean(key) if isinstance(key, str) else key] = _clean_leaf(value, stack)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                node[i] = _clean_leaf(value, stack)
    return payload


def _clean_leaf(value: Any, stack: list[Any]) -> Any:
    """A string cleaned; a container queued for ``clean_strings`` to visit."""
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, dict | list):
        stack.append(value)
    return value


class TelegramInbox:
    def __init__(self, db: Database, *, clock: Callable[[], datetime], arrivals: Arrivals | None = None) -> None:
        self._db, self._clock, self._arrivals = db, clock, arrivals

    def store_in(self, conn: Connection, payload: dict[str, Any]) -> bool:
        update_id = validate_update(payload)
        payload = clean_strings(payload)
        return InboundEventRepository(conn).add(SOURCE, str(update_id), chat_key(payload), payload, self._clock())

    def store(self, payload: Any) -> bool:
        """Store an update (blocking; call from a worker thread). False for a duplicate."""
        update_id = validate_update(payload)
        added = self._db.tx_sync(lambda c: self.store_in(c, payload))
        if added and self._arrivals is not None:
            self._arrivals.received(SOURCE, str(update_id))
        return added


def telegram_handler(
    dispatcher: Dispatcher, bot: Bot, arrivals: Arrivals | None = None
) -> Callable[[InboundEvent], Awaitable[None]]:
    async def handle(event: InboundEvent) -> None:
        update = Update.model_validate(event.payload, context={"bot": bot})
        # ``received``: when this process stored the update (monotonic), for the question's deadline.
        received = arrivals.take(event.source, event.key) if arrivals is not None else None
        await dispatcher.feed_update(bot, update, event_id=event.id, received=received)

    return handle
