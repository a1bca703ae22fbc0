"""Inbound events: stored under their idempotency key before acknowledging, then worked off.

The rules that make "nothing lost, nothing twice" hold:

- ``add`` is insert-if-absent on ``(source, key)``: a duplicate delivery changes nothing.
- ``claim`` takes an event with a lease, by a conditional UPDATE, so two workers (or two
  replicas) never hold the same event; a crashed worker's lease runs out and the event is
  taken again. An event is only claimable when no earlier event of the same chat is
  unfinished, so one customer's messages are handled in the order they were sent.
- An event ends ``done`` or ``failed`` with its error, once.

Repositories never commit: the caller's transaction does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, CursorResult

from bot.storage.tables import inbound_events, used_nonces

UNFINISHED = ("pending", "processing")


@dataclass(frozen=True)
class InboundEvent:
    id: int
    source: str
    key: str
    chat_key: str | None
    payload: dict[str, Any]
    attempts: int


def new_id(result: CursorResult[Any]) -> int:
    """The primary key an INSERT created."""
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def insert_ignoring_duplicates(conn: Connection, table: Any, values: dict[str, Any], keys: list[str]) -> bool:
    """INSERT … ON CONFLICT DO NOTHING on SQLite and PostgreSQL; True when a row was added.

    An IntegrityError would abort a PostgreSQL transaction, so the conflict is handled by the
    database instead of by catching it.
    """
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = (dialect.insert(table).values(**values).on_conflict_do_nothing(index_elements=keys)
            .returning(*table.primary_key.columns))
    # rowcount is not reliable with RETURNING on every driver; a returned row is.
    return conn.execute(stmt).first() is not None


class InboundEventRepository:
    def __init__(self, conn: Connection) -> None:
        self._c = conn

    def add(self, source: str, key: str, chat_key: str | None, payload: dict[str, Any], now: datetime) -> bool:
        """Store an event once; False when this key was stored before (a duplicate delivery)."""
        return insert_ignoring_duplicates(
            self._c, inbound_events,
            dict(source=source, key=key, chat_key=chat_key, payload=payload, status="pending", attempts=0,
                 received_at=now),
            ["source", "key"],
        )

    def claim(self, now: datetime, lease_s: float, limit: int) -> list[InboundEvent]:
        """Take up to ``limit`` claimable events, oldest first, each with a lease until now + lease_s."""
        t = inbound_events
        earlier = t.alias("earlier")
        claimable = and_(
            t.c.status.in_(UNFINISHED),
            or_(t.c.lease_until.is_(None), t.c.lease_until <= now),
            ~exists().where(
                earlier.c.chat_key == t.c.chat_key, earlier.c.id < t.c.id, earlier.c.status.in_(UNFINISHED)
            ),
        )
        candidates = self._c.execute(select(t.c.id).where(claimable).order_by(t.c.id).limit(limit)).scalars().all()
        claimed: list[InboundEvent] = []
        until = now + timedelta(seconds=lease_s)
        for event_id in candidates:
            won = self._c.execute(
                update(t).where(t.c.id == event_id, claimable)
                .values(status="processing", lease_until=until, attempts=t.c.attempts + 1)
            ).rowcount
            if won:
                row = self._c.execute(select(t).where(t.c.id == event_id)).one()._mapping
                claimed.append(InboundEvent(row["id"], row["source"], row["key"], row["chat_key"],
                                            dict(row["payload"]), row["attempts"]))
        return claimed

    def extend_lease(self, event_id: int, until: datetime) -> None:
        t = inbound_events
        self._c.execute(update(t).where(t.c.id == event_id, t.c.status == "processing").values(lease_until=until))

    def finish(self, event_id: int, now: datetime) -> None:
        self._set_final(event_id, "done", None, now)

    def fail(self, event_id: int, error: str, now: datetime) -> None:
        self._set_final(event_id, "failed", error, now)

    def retry_later(self, event_id: int, error: str, not_before: datetime) -> None:
        """Back to pending, not claimable before ``not_before``; the error is kept for the record."""
        t = inbound_events
        self._c.execute(
            update(t).where(t.c.id == event_id).values(status="pending", lease_until=not_before, error=error[:2000])
        )

    def _set_final(self, event_id: int, status: str, error: str | None, now: datetime) -> None:
        t = inbound_events
        self._c.execute(
            update(t).where(t.c.id == event_id, t.c.status.in_(UNFINISHED))
            .values(status=status, error=error[:2000] if error else None, finished_at=now, lease_until=None)
        )

    def counts(self) -> dict[str, int]:
        t = inbound_events
        rows = self._c.execute(select(t.c.status, func.count()).group_by(t.c.status))
        return {status: n for status, n in rows}

    def next_due(self) -> datetime | None:
        """When the earliest waiting event becomes claimable (for the worker's sleep)."""
        t = inbound_events
        return self._c.execute(
            select(t.c.lease_until).where(t.c.status.in_(UNFINISHED), t.c.lease_until.is_not(None))
            .order_by(t.c.lease_until).limit(1)
        ).scalar()


def use_nonce(conn: Connection, scope: str, nonce: str, expires_at: float) -> bool:
    """Record a single-use value (a JWT's jti); False when it was used before. Old ones are purged."""
    now = datetime.now(UTC)
    conn.execute(delete(used_nonces).where(used_nonces.c.expires_at < now))
    return insert_ignoring_duplicates(
        conn, used_nonces,
        dict(scope=scope, nonce=nonce[:200], expires_at=datetime.fromtimestamp(expires_at, UTC)),
        ["scope", "nonce"],
    )
