"""What operators do from their chat: claim, reply, send the draft, resolve, list, ask.

Each call is one unit of work around ``TicketService``; the messages it causes (edited
cards, the reply to the customer) are queued in the same transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any

from sqlalchemy.engine import Connection

from bot.customers import CustomerDirectory, WidgetPolicy, customer_json
from bot.i18n import t
from bot.outgoing import Outgoing, OutgoingQueue
from bot.storage.database import Database
from bot.storage.outbox import OutboxRepository
from bot.telegram.render import escape_html, html_to_plain, render_answer
from bot.tickets import ClaimOutcome, Operator, ReplyOutcome, TicketService
from bot.usage import UsageLog
from rag.errors import AppError
from rag.pipeline import AnswerPipeline, AnswerRequest

log = logging.getLogger(__name__)


class OperatorService:
    def __init__(
        self, db: Database, tickets: TicketService, pipeline: AnswerPipeline, out: OutgoingQueue, *,
        clock: Callable[[], Any], on_queued: Callable[[], None] = lambda: None,
        customers: CustomerDirectory | None = None, show_financial: bool = True, usage: UsageLog | None = None,
    ) -> None:
        self._db, self._tickets, self._pipeline, self._out = db, tickets, pipeline, out
        self._clock, self._on_queued = clock, on_queued
        self._customers, self._show_financial = customers, show_financial
        self._usage = usage or UsageLog()

    @property
    def desk(self) -> Any:
        return self._tickets.desk

    async def _tx(self, fn: Callable[[Connection], Any]) -> Any:
        result = await self._db.tx(fn)
        self._on_queued()
        return result

    async def claim(self, ticket_id: int, operator: Operator, *, private_chat: int | None = None) -> ClaimOutcome:
        """Claim a ticket; the winner gets the customer's CRM summary in ``private_chat`` when the
        customer is verified — operators see the customers of the tickets they work on."""
        outcome: ClaimOutcome = await self._tx(lambda c: self._tickets.claim(c, ticket_id, operator))
        if outcome.won and outcome.ticket is not None and private_chat is not None:
            card = await self._customer_card(outcome.ticket.user_id)
            if card:
                await self.notify(0, private_chat, card, suffix=f":claim:{ticket_id}:{operator.id}")
        return outcome

    async def _customer_card(self, user_id: int) -> str | None:
        if self._customers is None or not self._customers.enabled:
            return None
        link = await self._customers.link_of(user_id)
        context = await self._customers.context_of(link.ref) if link else None
        if context is None:
            return None
        data = customer_json(context, WidgetPolicy(show_financial=self._show_financial))
        lines = [t(self.desk.language, "customer_card_title", name=data["name"])]
        lines += [f"{escape_html(c['label'])}: {escape_html(c['value'])}" for c in data["contacts"] + data["values"]]
        lines += [f"• {escape_html(d['title'])} — {escape_html(d['stage'])}" for d in data["deals"] if not d["closed"]]
        return "\n".join(lines)

    async def resolve(self, ticket_id: int, operator: Operator) -> ReplyOutcome:
        outcome: ReplyOutcome = await self._tx(lambda c: self._tickets.resolve(c, ticket_id, operator))
        return outcome

    async def send_draft(self, event_id: int, ticket_id: int, operator: Operator) -> ReplyOutcome:
        outcome: ReplyOutcome = await self._tx(
            lambda c: self._tickets.send_draft(c, ticket_id, operator, dedupe=f"ev{event_id}:draft")
        )
        return outcome

    async def reply(self, event_id: int, chat_id: int, reply_to_message_id: int, operator: Operator,
                    text: str) -> ReplyOutcome | None:
        """An operator's reply to one of the bot's ticket messages; None when the replied-to
        message belongs to no ticket."""

        def run(conn: Connection) -> ReplyOutcome | None:
            row = OutboxRepository(conn).find_sent(chat_id, reply_to_message_id)
            if row is None or row.ticket_id is None:
                return None
            return self._tickets.reply(conn, row.ticket_id, operator, text, dedupe=f"ev{event_id}:reply")

        outcome: ReplyOutcome | None = await self._tx(run)
        return outcome

    async def reply_to_ticket(self, dedupe: str, ticket_id: int, operator: Operator, text: str) -> ReplyOutcome:
        """An operator's reply to a ticket from any desk (the widget); ``dedupe`` makes a retry harmless."""
        outcome: ReplyOutcome = await self._tx(
            lambda c: self._tickets.reply(c, ticket_id, operator, text, dedupe=dedupe)
        )
        return outcome

    async def queue_listing(self) -> str:
        listing: str = await self._db.tx(self._tickets.queue_listing)
        return listing

    async def notify(self, event_id: int, chat_id: int, html: str, *, thread_id: int | None = None,
                     reply_to: int | None = None, suffix: str = "") -> None:
        """A short message into an operator's chat (exactly once per event)."""

        def run(conn: Connection) -> None:
            self._out.queue(conn, Outgoing(
                chat_id=chat_id, html=html, plain=html_to_plain(html),
                dedupe_key=f"ev{event_id}:opnote{suffix}", thread_id=thread_id, reply_to_message_id=reply_to,
                kind="operator_private" if suffix.startswith(":claim") else "operator_notice",
            ), self._clock())

        await self._tx(run)

    async def ask(
        self, event_id: int, chat_id: int, question: str, *, thread_id: int | None = None,
        reply_to: int | None = None, typing: Callable[[], AbstractAsyncContextManager[Any]] | None = None,
    ) -> None:
        """An operator's own question: answered with operator-only documents allowed."""
        lang = self.desk.language
        try:
            async with (typing or nullcontext)():
                result = await self._pipeline.answer(AnswerRequest(question, audience="operator"))
        except AppError as exc:
            await self.notify(event_id, chat_id, t(lang, "processing_error"), thread_id=thread_id, reply_to=reply_to)
            log.warning("operator question failed: %s", exc)
            return
        parts = render_answer(result, lang=result.language)

        def run(conn: Connection) -> None:
            self._usage.record(conn, now=self._clock(), channel="telegram", audience="operator", result=result)
            for n, part in enumerate(parts):
                self._out.queue(conn, Outgoing(
                    chat_id=chat_id, html=part.html, plain=part.plain, kind="operator_answer",
                    dedupe_key=f"ev{event_id}:ask:{n}", thread_id=thread_id,
                    reply_to_message_id=reply_to if n == 0 else None,
                ), self._clock())

        await self._tx(run)

    async def reannounce_due(self, after_s: float) -> int:
        count: int = await self._tx(lambda c: self._tickets.reannounce_due(c, after_s))
        return count
