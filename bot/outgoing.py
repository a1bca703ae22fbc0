"""What the services want to send, independent of how a channel sends it.

Services describe a message (``Outgoing``) and queue it with an ``OutgoingQueue`` inside
their own transaction; the channel adapter (``bot.telegram.outbox``) turns it into the
channel's payload and its sender delivers it later, exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy.engine import Connection


@dataclass(frozen=True)
class Button:
    text: str
    data: str  # callback data, at most 64 bytes


@dataclass(frozen=True)
class Outgoing:
    """One message. ``html`` is sent first; ``plain`` is the fallback when the channel
    refuses the markup. ``edit_of`` makes this an edit of the message an earlier outbox row
    sent (its id), e.g. a ticket card whose status changed."""

    chat_id: int
    html: str
    plain: str
    kind: str
    buttons: tuple[tuple[Button, ...], ...] = ()
    dedupe_key: str | None = None
    ticket_id: int | None = None
    answer_id: int | None = None
    reply_to_message_id: int | None = None
    thread_id: int | None = None
    edit_of: int | None = None
    # A one-time keyboard with a button that shares the user's own phone number (verification),
    # or True to take such a keyboard away again.
    contact_request: str | None = None
    remove_keyboard: bool = False


class OutgoingQueue(Protocol):
    """Queues messages in the caller's transaction; returns the outbox row id, or None when
    the dedupe key was queued before."""

    def queue(self, conn: Connection, message: Outgoing, now: datetime) -> int | None: ...
