"""Tickets of the escalation queue and their event log. Never commits.

State changes are conditional UPDATEs (``WHERE status = …``): with two operators pressing
«Взять» at once, the database lets exactly one UPDATE change the row, on SQLite and
PostgreSQL alike, with no lock held across the network round trip to Telegram.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.engine import Connection

from bot.storage.events import insert_ignoring_duplicates
from bot.storage.tables import ticket_events, tickets, users

ACTIVE = ("open", "claimed", "answered")


@dataclass(frozen=True)
class TicketRecord:
    id: int
    user_id: int
    conversation_id: int
    channel: str
    reason: str
    status: str
    language: str
    summary: str
    summary_mode: str
    transcript: list[dict[str, Any]]
    operator_id: str | None
    operator_name: str | None
    draft_text: str | None
    draft_sources: list[dict[str, Any]] | None
    created_at: datetime
    claimed_at: datetime | None
    answered_at: datetime | None
    resolved_at: datetime | None
    last_announced_at: datetime | None


@dataclass(frozen=True)
class NewTicket:
    user_id: int
    conversation_id: int
    channel: str
    reason: str
    language: str
    summary: str
    summary_mode: str
    transcript: list[dict[str, Any]]
    draft_text: str | None = None
    draft_sources: list[dict[str, Any]] | None = None


class TicketRepository:
    def __init__(self, conn: Connection) -> None:
        self._c = conn

    def open(self, new: NewTicket, now: datetime) -> tuple[TicketRecord, bool]:
        """Open a ticket, or return the customer's active one: (ticket, created)."""
        created = insert_ignoring_duplicates(
            self._c, tickets,
            dict(user_id=new.user_id, conversation_id=new.conversation_id, channel=new.channel, reason=new.reason,
                 status="open", active_user_id=new.user_id, language=new.language, summary=new.summary,
                 summary_mode=new.summary_mode, transcript=new.transcript, draft_text=new.draft_text,
                 draft_sources=new.draft_sources, created_at=now, last_announced_at=now),
            ["active_user_id"],
        )
        ticket = self.active_for_user(new.user_id)
        assert ticket is not None
        if created:
            self.log(ticket.id, "opened", None, {"reason": new.reason}, now)
        return ticket, created

    def get(self, ticket_id: int) -> TicketRecord | None:
        row = self._c.execute(select(tickets).where(tickets.c.id == ticket_id)).first()
        return _ticket(row._mapping) if row else None

    def active_for_user(self, user_id: int) -> TicketRecord | None:
        row = self._c.execute(select(tickets).where(tickets.c.active_user_id == user_id)).first()
        return _ticket(row._mapping) if row else None

    def claim(self, ticket_id: int, operator_id: str, operator_name: str, now: datetime) -> bool:
        """True for the one operator whose claim changed the row."""
        won = self._c.execute(
            update(tickets).where(tickets.c.id == ticket_id, tickets.c.status == "open")
            .values(status="claimed", operator_id=operator_id, operator_name=operator_name, claimed_at=now)
        ).rowcount
        if won:
            self.log(ticket_id, "claimed", operator_name, {"operator_id": operator_id}, now)
        return bool(won)

    def mark_answered(self, ticket_id: int, operator_id: str, text: str, now: datetime) -> bool:
        """The operator holding the ticket replied; False if someone else holds it or it is closed."""
        done = self._c.execute(
            update(tickets).where(
                tickets.c.id == ticket_id, tickets.c.status.in_(("claimed", "answered")),
                tickets.c.operator_id == operator_id,
            ).values(status="answered", answered_at=now)
        ).rowcount
        if done:
            self.log(ticket_id, "replied", operator_id, {"text": text[:4000]}, now)
        return bool(done)

    def resolve(self, ticket_id: int, operator_id: str, operator_name: str, now: datetime) -> bool:
        """Close the ticket; an unclaimed one may be resolved by any operator, a claimed one by its holder."""
        done = self._c.execute(
            update(tickets).where(
                tickets.c.id == ticket_id,
                or_(tickets.c.status == "open",
                    (tickets.c.status.in_(("claimed", "answered"))) & (tickets.c.operator_id == operator_id)),
            ).values(status="resolved", resolved_at=now, active_user_id=None, operator_id=operator_id,
                     operator_name=operator_name)
        ).rowcount
        if done:
            self.log(ticket_id, "resolved", operator_name, {"operator_id": operator_id}, now)
        return bool(done)

    def log(self, ticket_id: int, kind: str, actor: str | None, data: dict[str, Any], now: datetime) -> None:
        self._c.execute(ticket_events.insert().values(
            ticket_id=ticket_id, kind=kind, actor=actor, data=data, created_at=now
        ))

    def events(self, ticket_id: int) -> list[tuple[str, str | None, dict[str, Any]]]:
        rows = self._c.execute(
            select(ticket_events.c.kind, ticket_events.c.actor, ticket_events.c.data)
            .where(ticket_events.c.ticket_id == ticket_id).order_by(ticket_events.c.id)
        )
        return [(r.kind, r.actor, dict(r.data)) for r in rows]

    def queue(self) -> list[tuple[TicketRecord, str]]:
        """Active tickets, longest waiting first, with the customer's display name."""
        rows = self._c.execute(
            select(tickets, users.c.display_name.label("customer_name"))
            .join(users, users.c.id == tickets.c.user_id)
            .where(tickets.c.status.in_(ACTIVE)).order_by(tickets.c.created_at, tickets.c.id)
        )
        return [(_ticket(r._mapping), r.customer_name) for r in rows]

    def due_for_reannounce(self, now: datetime, after_s: float) -> list[TicketRecord]:
        cutoff = now - timedelta(seconds=after_s)
        rows = self._c.execute(
            select(tickets).where(tickets.c.status == "open", tickets.c.last_announced_at <= cutoff)
            .order_by(tickets.c.id)
        )
        return [_ticket(r._mapping) for r in rows]

    def overdue(self, now: datetime, sla_s: float) -> list[TicketRecord]:
        """Open or claimed (nobody answered yet) past the SLA, not flagged before."""
        cutoff = now - timedelta(seconds=sla_s)
        flagged = select(ticket_events.c.ticket_id).where(ticket_events.c.kind == "sla_breached")
        rows = self._c.execute(
            select(tickets).where(tickets.c.status.in_(("open", "claimed")), tickets.c.created_at <= cutoff,
                                  tickets.c.id.not_in(flagged)).order_by(tickets.c.id)
        )
        return [_ticket(r._mapping) for r in rows]

    def mark_announced(self, ticket_id: int, previous: datetime | None, now: datetime) -> bool:
        """Conditional on the previous value, so two schedulers re-announce a ticket once."""
        cond = tickets.c.last_announced_at.is_(None) if previous is None else tickets.c.last_announced_at == previous
        return bool(self._c.execute(
            update(tickets).where(tickets.c.id == ticket_id, cond).values(last_announced_at=now)
        ).rowcount)


def _ticket(m: Any) -> TicketRecord:
    return TicketRecord(
        id=m["id"], user_id=m["user_id"], conversation_id=m["conversation_id"], channel=m["channel"],
        reason=m["reason"], status=m["status"], language=m["language"], summary=m["summary"],
        summary_mode=m["summary_mode"], transcript=list(m["transcript"] or []), operator_id=m["operator_id"],
        operator_name=m["operator_name"], draft_text=m["draft_text"],
        draft_sources=list(m["draft_sources"]) if m["draft_sources"] is not None else None,
        created_at=m["created_at"], claimed_at=m["claimed_at"], answered_at=m["answered_at"],
        resolved_at=m["resolved_at"], last_announced_at=m["last_announced_at"],
    )
