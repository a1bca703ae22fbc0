"""The outbox: every message we send is a row first, sent later by the outbox sender.

A row is written in the same transaction as the state change that caused it (an answer
stored, a ticket claimed), so a crash never leaves one without the other; its
``dedupe_key`` makes a re-processed event add no second copy. The sender claims due rows
with a lease, in order per chat, and at most one message per chat per pacing interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.engine import Connection

from bot.storage.events import insert_ignoring_duplicates, new_id
from bot.storage.tables import outbox

UNSENT = ("pending", "sending")


@dataclass(frozen=True)
class OutboxRow:
    id: int
    channel: str
    chat_id: int
    method: str
    payload: dict[str, Any]
    kind: str
    attempts: int
    ticket_id: int | None
    ref_outbox_id: int | None
    answer_id: int | None = None


@dataclass(frozen=True)
class NewOutboxMessage:
    channel: str
    chat_id: int
    method: str
    payload: dict[str, Any]
    kind: str
    dedupe_key: str | None = None
    ticket_id: int | None = None
    answer_id: int | None = None
    ref_outbox_id: int | None = None


class OutboxRepository:
    def __init__(self, conn: Connection) -> None:
        self._c = conn

    def add(self, msg: NewOutboxMessage, now: datetime) -> int | None:
        """Queue a message; None when a row with the same dedupe key exists already."""
        values = dict(
            channel=msg.channel, chat_id=msg.chat_id, method=msg.method, payload=msg.payload, kind=msg.kind,
            dedupe_key=msg.dedupe_key, ticket_id=msg.ticket_id, answer_id=msg.answer_id,
            ref_outbox_id=msg.ref_outbox_id, status="pending", attempts=0, not_before=now, created_at=now,
        )
        if msg.dedupe_key is None:
            return new_id(self._c.execute(outbox.insert().values(**values)))
        if not insert_ignoring_duplicates(self._c, outbox, values, ["dedupe_key"]):
            return None
        return int(self._c.execute(select(outbox.c.id).where(outbox.c.dedupe_key == msg.dedupe_key)).scalar_one())

    def claim_due(self, now: datetime, *, lease_s: float, per_chat_interval_s: float, limit: int,
                  channel: str = "telegram") -> list[OutboxRow]:
        t = outbox
        earlier = t.alias("earlier")
        recent = t.alias("recent")
        due = and_(
            t.c.channel == channel,
            or_(
                and_(t.c.status == "pending", t.c.not_before <= now),
                and_(t.c.status == "sending", t.c.lease_until <= now),  # a sender died holding it
            ),
            # In order per chat: nothing older for this chat is still unsent.
            ~exists().where(earlier.c.chat_id == t.c.chat_id, earlier.c.id < t.c.id, earlier.c.status.in_(UNSENT)),
            # About one message a second into one chat (Telegram's limit), across replicas.
            ~exists().where(
                recent.c.chat_id == t.c.chat_id, recent.c.status == "sent",
                recent.c.sent_at > now - timedelta(seconds=per_chat_interval_s),
            ),
        )
        ids = self._c.execute(select(t.c.id).where(due).order_by(t.c.id).limit(limit)).scalars().all()
        rows: list[OutboxRow] = []
        until = now + timedelta(seconds=lease_s)
        for row_id in ids:
            if self._c.execute(
                update(t).where(t.c.id == row_id, due).values(status="sending", lease_until=until)
            ).rowcount:
                rows.append(self.get(row_id))
        return rows

    def get(self, row_id: int) -> OutboxRow:
        m = self._c.execute(select(outbox).where(outbox.c.id == row_id)).one()._mapping
        return OutboxRow(m["id"], m["channel"], m["chat_id"], m["method"], dict(m["payload"]), m["kind"],
                         m["attempts"], m["ticket_id"], m["ref_outbox_id"], m["answer_id"])

    def sent_message_id(self, row_id: int) -> tuple[str, int | None]:
        """The status of a row and the message id it produced (for edits of that message)."""
        row = self._c.execute(select(outbox.c.status, outbox.c.sent_message_id).where(outbox.c.id == row_id)).one()
        return row.status, row.sent_message_id

    def mark_sent(self, row_id: int, message_id: int | None, now: datetime) -> None:
        self._c.execute(
            update(outbox).where(outbox.c.id == row_id).values(
                status="sent", sent_message_id=message_id, sent_at=now, lease_until=None, error=None,
                attempts=outbox.c.attempts + 1,
            )
        )

    def reschedule(self, row_id: int, not_before: datetime, error: str, *, count_attempt: bool = True) -> None:
        values: dict[str, Any] = dict(status="pending", not_before=not_before, lease_until=None, error=error[:2000])
        if count_attempt:
            values["attempts"] = outbox.c.attempts + 1
        self._c.execute(update(outbox).where(outbox.c.id == row_id).values(**values))

    def mark_failed(self, row_id: int, error: str, now: datetime) -> None:
        self._c.execute(
            update(outbox).where(outbox.c.id == row_id).values(
                status="failed", error=error[:2000], lease_until=None, sent_at=now, attempts=outbox.c.attempts + 1
            )
        )

    def find_sent(self, chat_id: int, message_id: int) -> OutboxRow | None:
        """The row that produced a message (to route an operator's reply to its ticket)."""
        row_id = self._c.execute(
            select(outbox.c.id).where(outbox.c.chat_id == chat_id, outbox.c.sent_message_id == message_id).limit(1)
        ).scalar()
        return self.get(row_id) if row_id is not None else None

    def latest_for_ticket(self, ticket_id: int, kind: str, chat_id: int) -> int | None:
        return self._c.execute(
            select(outbox.c.id).where(outbox.c.ticket_id == ticket_id, outbox.c.kind == kind,
                                      outbox.c.chat_id == chat_id)
            .order_by(outbox.c.id.desc()).limit(1)
        ).scalar()

    def counts(self) -> dict[str, int]:
        rows = self._c.execute(select(outbox.c.status, func.count()).group_by(outbox.c.status))
        return {status: n for status, n in rows}

    def next_due(self) -> datetime | None:
        return self._c.execute(
            select(outbox.c.not_before).where(outbox.c.status == "pending").order_by(outbox.c.not_before).limit(1)
        ).scalar()
