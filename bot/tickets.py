"""The escalation queue: tickets opened, announced to operators, claimed, answered, resolved.

Channel-neutral: it decides what happens and queues the messages (cards in the operator
chat, the operator's reply to the customer) in the caller's transaction; the channel's
sender delivers them. Every method takes the caller's connection (one unit of work) and
never commits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection

from bot.i18n import format_waiting, reason_label, status_label, t
from bot.outgoing import Button, Outgoing, OutgoingQueue
from bot.storage.conversations import ConversationRepository, UserRecord
from bot.storage.events import use_nonce
from bot.storage.outbox import OutboxRepository
from bot.storage.tickets import NewTicket, TicketRecord, TicketRepository
from bot.telegram.render import escape_html, html_to_plain, split_message

CARD = "ticket_card"


@dataclass(frozen=True)
class Operator:
    id: str
    name: str


@dataclass(frozen=True)
class OperatorDesk:
    """Where tickets are announced: a group (optionally one forum topic), else each operator's own chat."""

    chat_id: int | None
    topic_id: int | None
    operator_ids: tuple[int, ...]
    language: str = "ru"

    def destinations(self) -> list[tuple[int, int | None]]:
        if self.chat_id is not None:
            return [(self.chat_id, self.topic_id)]
        return [(op, None) for op in self.operator_ids]

    def is_operator(self, user_id: int) -> bool:
        return user_id in self.operator_ids


@dataclass(frozen=True)
class ClaimOutcome:
    won: bool
    holder: str | None  # who has the ticket when the claim lost
    ticket: TicketRecord | None


@dataclass(frozen=True)
class ReplyOutcome:
    sent: bool
    refusal: str | None  # why not, in the operator's language
    ticket: TicketRecord | None


class TicketService:
    def __init__(self, out: OutgoingQueue, desk: OperatorDesk, *, clock: Callable[[], datetime]) -> None:
        self._out, self.desk, self._clock = out, desk, clock

    # opening -----------------------------------------------------------------------------------
    def open(
        self, conn: Connection, *, user: UserRecord, conversation_id: int, reason: str, language: str, summary: str,
        summary_mode: str, transcript: list[dict[str, Any]], draft_text: str | None = None,
        draft_sources: list[dict[str, Any]] | None = None,
    ) -> tuple[TicketRecord, bool]:
        """Open a ticket and announce it, or return the customer's active ticket: (ticket, created)."""
        now = self._clock()
        ticket, created = TicketRepository(conn).open(
            NewTicket(user_id=user.id, conversation_id=conversation_id, channel=user.channel, reason=reason,
                      language=language, summary=summary, summary_mode=summary_mode, transcript=transcript,
                      draft_text=draft_text, draft_sources=draft_sources),
            now,
        )
        if created:
            self._announce(conn, ticket, user.display_name, now)
        return ticket, created

    def _announce(self, conn: Connection, ticket: TicketRecord, customer: str, now: datetime) -> None:
        lang = self.desk.language
        for chat_id, thread_id in self.desk.destinations():
            html, buttons = self._card(ticket, customer)
            self._out.queue(conn, Outgoing(
                chat_id=chat_id, html=html, plain=html_to_plain(html), kind=CARD, buttons=buttons,
                dedupe_key=f"ticket:{ticket.id}:card:{chat_id}", ticket_id=ticket.id, thread_id=thread_id,
            ), now)
            if ticket.draft_text:
                # Split the plain draft, then wrap each piece: a split never lands inside markup.
                for n, piece in enumerate(split_message(ticket.draft_text, limit=3500)):
                    part = t(lang, "draft_card", ticket_id=ticket.id, draft=piece,
                             sources=_sources_line(ticket.draft_sources or []))
                    self._out.queue(conn, Outgoing(
                        chat_id=chat_id, html=part, plain=html_to_plain(part), kind="draft",
                        buttons=((Button(t(lang, "button_send_draft"), f"draft:{ticket.id}"),),),
                        dedupe_key=f"ticket:{ticket.id}:draft:{chat_id}:{n}", ticket_id=ticket.id,
                        thread_id=thread_id,
                    ), now)

    def _card(self, ticket: TicketRecord, customer: str) -> tuple[str, tuple[tuple[Button, ...], ...]]:
        lang = self.desk.language
        transcript = "\n".join(
            f"{_role_label(m.get('role', ''), lang)}: {m.get('text', '')[:300]}" for m in ticket.transcript[-6:]
        )
        html = t(lang, "ticket_card", ticket_id=ticket.id, reason_label=reason_label(lang, ticket.reason),
                 customer=customer, waiting=format_waiting(self._waited(ticket), lang),
                 summary=ticket.summary or "—", transcript=transcript or "—")
        buttons: tuple[tuple[Button, ...], ...]
        if ticket.status == "open":
            buttons = ((Button(t(lang, "button_claim"), f"claim:{ticket.id}"),
                        Button(t(lang, "button_resolve"), f"resolve:{ticket.id}")),)
        elif ticket.status in ("claimed", "answered"):
            html += "\n\n" + t(lang, "claimed_by", name=ticket.operator_name or "?", ticket_id=ticket.id)
            buttons = ((Button(t(lang, "button_resolve"), f"resolve:{ticket.id}"),),)
        else:
            html += "\n\n" + t(lang, "ticket_closed", ticket_id=ticket.id, name=ticket.operator_name or "?")
            buttons = ()
        return html, buttons

    def _waited(self, ticket: TicketRecord) -> float:
        return max(0.0, (self._clock() - ticket.created_at).total_seconds())

    def _refresh_cards(self, conn: Connection, ticket: TicketRecord, now: datetime, tag: str) -> None:
        """Edit every posted card of the ticket to show its new state."""
        customer = ConversationRepository(conn).user_by_id(ticket.user_id).display_name
        html, buttons = self._card(ticket, customer)
        outbox = OutboxRepository(conn)
        for chat_id, _thread in self.desk.destinations():
            card_row = outbox.latest_for_ticket(ticket.id, CARD, chat_id)
            if card_row is None:
                continue
            self._out.queue(conn, Outgoing(
                chat_id=chat_id, html=html, plain=html_to_plain(html), kind="card_edit", buttons=buttons,
                dedupe_key=f"ticket:{ticket.id}:edit:{tag}:{chat_id}", ticket_id=ticket.id, edit_of=card_row,
            ), now)

    # operators' actions -------------------------------------------------------------------------
    def claim(self, conn: Connection, ticket_id: int, operator: Operator) -> ClaimOutcome:
        repo, now = TicketRepository(conn), self._clock()
        won = repo.claim(ticket_id, operator.id, operator.name, now)
        ticket = repo.get(ticket_id)
        if ticket is None:
            return ClaimOutcome(False, None, None)
        if won:
            self._refresh_cards(conn, ticket, now, f"claim:{operator.id}")
            return ClaimOutcome(True, operator.name, ticket)
        return ClaimOutcome(False, ticket.operator_name, ticket)

    def reply(self, conn: Connection, ticket_id: int, operator: Operator, text: str, *, dedupe: str) -> ReplyOutcome:
        """Send an operator's words to the customer; an unclaimed ticket is claimed on the way."""
        repo, now, lang = TicketRepository(conn), self._clock(), self.desk.language
        ticket = repo.get(ticket_id)
        if ticket is None or ticket.status == "resolved":
            return ReplyOutcome(False, t(lang, "ticket_closed", ticket_id=ticket_id, name="—"), ticket)
        if not use_nonce(conn, "ticket-reply", dedupe, (now + timedelta(days=7)).timestamp()):
            return ReplyOutcome(True, None, ticket)  # a retry of a reply already made: nothing twice
        if ticket.status == "open":
            self.claim(conn, ticket_id, operator)
        if not repo.mark_answered(ticket_id, operator.id, text, now):
            holder = (repo.get(ticket_id) or ticket).operator_name or "?"
            return ReplyOutcome(False, t(lang, "claim_lost", ticket_id=ticket_id, name=holder), ticket)
        conversations = ConversationRepository(conn)
        customer = conversations.user_by_id(ticket.user_id)
        conversations.add_message(ticket.conversation_id, customer.id, "operator", text, now)
        if customer.chat_id is not None:
            prefix = t(customer.language, "operator_reply_prefix", name=operator.name)
            for n, part in enumerate(split_message(text, limit=3900)):
                html = (prefix + "\n" if n == 0 else "") + escape_html(part)
                self._out.queue(conn, Outgoing(
                    chat_id=customer.chat_id, html=html, plain=html_to_plain(html), kind="operator_reply",
                    dedupe_key=f"{dedupe}:{n}", ticket_id=ticket_id,
                ), now)
        return ReplyOutcome(True, None, repo.get(ticket_id))

    def send_draft(self, conn: Connection, ticket_id: int, operator: Operator, *, dedupe: str) -> ReplyOutcome:
        ticket = TicketRepository(conn).get(ticket_id)
        if ticket is None or not ticket.draft_text:
            return ReplyOutcome(False, t(self.desk.language, "reply_to_unknown"), ticket)
        return self.reply(conn, ticket_id, operator, ticket.draft_text, dedupe=dedupe)

    def resolve(self, conn: Connection, ticket_id: int, operator: Operator) -> ReplyOutcome:
        repo, now, lang = TicketRepository(conn), self._clock(), self.desk.language
        if not repo.resolve(ticket_id, operator.id, operator.name, now):
            ticket = repo.get(ticket_id)
            if ticket is not None and ticket.status == "resolved":
                return ReplyOutcome(False, t(lang, "ticket_closed", ticket_id=ticket_id,
                                             name=ticket.operator_name or "?"), ticket)
            holder = ticket.operator_name if ticket else "?"
            return ReplyOutcome(False, t(lang, "claim_lost", ticket_id=ticket_id, name=holder or "?"), ticket)
        ticket = repo.get(ticket_id)
        assert ticket is not None
        conversations = ConversationRepository(conn)
        customer = conversations.user_by_id(ticket.user_id)
        # The next message starts a fresh conversation, answered by the bot again.
        conversations.close_conversation(ticket.conversation_id, now)
        if customer.chat_id is not None:
            html = t(customer.language, "ticket_resolved")
            self._out.queue(conn, Outgoing(
                chat_id=customer.chat_id, html=html, plain=html_to_plain(html), kind="notice",
                dedupe_key=f"ticket:{ticket_id}:resolved", ticket_id=ticket_id,
            ), now)
        self._refresh_cards(conn, ticket, now, "resolved")
        return ReplyOutcome(True, None, ticket)

    # customer side while a ticket is active ------------------------------------------------------
    def forward(self, conn: Connection, ticket: TicketRecord, text: str, *, dedupe: str) -> None:
        """A customer's new message goes to the ticket's operators (as a reply to the card)."""
        now, lang = self._clock(), self.desk.language
        TicketRepository(conn).log(ticket.id, "customer_message", None, {"text": text[:4000]}, now)
        outbox = OutboxRepository(conn)
        for chat_id, thread_id in self.desk.destinations():
            card_row = outbox.latest_for_ticket(ticket.id, CARD, chat_id)
            reply_to = outbox.sent_message_id(card_row)[1] if card_row is not None else None
            for n, part in enumerate(split_message(text, limit=3500)):
                html = t(lang, "customer_message_forward", ticket_id=ticket.id, text=part)
                self._out.queue(conn, Outgoing(
                    chat_id=chat_id, html=html, plain=html_to_plain(html), kind="forward",
                    dedupe_key=f"{dedupe}:{chat_id}:{n}", ticket_id=ticket.id, thread_id=thread_id,
                    reply_to_message_id=reply_to,
                ), now)

    # listings and the clock ---------------------------------------------------------------------
    def queue_listing(self, conn: Connection) -> str:
        lang = self.desk.language
        rows = TicketRepository(conn).queue()
        if not rows:
            return t(lang, "queue_empty")
        lines = [t(lang, "queue_header")]
        for ticket, customer in rows:
            lines.append(t(lang, "queue_line", ticket_id=ticket.id, status=status_label(lang, ticket.status),
                           waiting=format_waiting(self._waited(ticket), lang), customer=customer,
                           reason=reason_label(lang, ticket.reason)))
        return "\n".join(lines)

    def flag_overdue(self, conn: Connection, sla_s: float) -> int:
        """Tickets still waiting for an operator's answer past the SLA: said once in the operator chat."""
        repo, now, lang = TicketRepository(conn), self._clock(), self.desk.language
        count = 0
        for ticket in repo.overdue(now, sla_s):
            repo.log(ticket.id, "sla_breached", None, {"sla_s": sla_s}, now)
            for chat_id, thread_id in self.desk.destinations():
                html = t(lang, "sla_breached", ticket_id=ticket.id, waiting=format_waiting(self._waited(ticket), lang),
                         status=status_label(lang, ticket.status))
                self._out.queue(conn, Outgoing(
                    chat_id=chat_id, html=html, plain=html_to_plain(html), kind="sla", ticket_id=ticket.id,
                    dedupe_key=f"ticket:{ticket.id}:sla:{chat_id}", thread_id=thread_id,
                ), now)
            count += 1
        return count

    def reannounce_due(self, conn: Connection, after_s: float) -> int:
        """Post a reminder for each ticket nobody claimed within ``after_s``; once per period."""
        repo, now, lang = TicketRepository(conn), self._clock(), self.desk.language
        count = 0
        for ticket in repo.due_for_reannounce(now, after_s):
            if not repo.mark_announced(ticket.id, ticket.last_announced_at, now):
                continue  # another scheduler did it
            repo.log(ticket.id, "reannounced", None, {}, now)
            for chat_id, thread_id in self.desk.destinations():
                html = t(lang, "reannounce", ticket_id=ticket.id, waiting=format_waiting(self._waited(ticket), lang))
                self._out.queue(conn, Outgoing(
                    chat_id=chat_id, html=html, plain=html_to_plain(html), kind="reannounce",
                    buttons=((Button(t(lang, "button_claim"), f"claim:{ticket.id}"),),),
                    dedupe_key=f"ticket:{ticket.id}:reannounce:{now.isoformat()}:{chat_id}", ticket_id=ticket.id,
                    thread_id=thread_id,
                ), now)
            count += 1
        return count


def _role_label(role: str, lang: str) -> str:
    labels = {"ru": {"customer": "Клиент", "assistant": "Бот", "operator": "Оператор"},
              "en": {"customer": "Customer", "assistant": "Bot", "operator": "Operator"}}
    return labels.get(lang, labels["ru"]).get(role, role)


def _sources_line(sources: list[dict[str, Any]]) -> str:
    return "; ".join(f"[{s.get('n')}] {s.get('title', '')}" for s in sources[:5])
