"""The CRM sidebar widget's service: what an operator sees beside a customer's CRM card.

The customer's summary (masked as configured), their conversation with the bot and its open
ticket, a suggested reply with sources, answers to the operator's own questions, and the
escalation queue — the same tickets the Telegram operators work. Every call is made on behalf
of an authenticated ``WidgetSession``; the session names the one customer it may show.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from bot.customers import CustomerDirectory, WidgetPolicy, customer_json
from bot.i18n import format_waiting, reason_label, status_label, t
from bot.operators import OperatorService
from bot.storage.conversations import ConversationRepository
from bot.storage.database import Database
from bot.storage.tables import conversations, customer_links, tickets, users
from bot.storage.tickets import ACTIVE, TicketRepository
from bot.telegram.render import html_to_plain
from bot.tickets import Operator, ReplyOutcome
from bot.usage import UsageLog
from bot.web.auth import AuthError, WidgetSession
from crm_adapters.base import CrmError, CrmUnavailable, CrmWriter, CustomerRef
from rag.answer import AnswerResult
from rag.pipeline import AnswerPipeline, AnswerRequest

Authenticator = Callable[[Mapping[str, str]], Awaitable[WidgetSession]]


def answer_json(result: AnswerResult) -> dict[str, Any]:
    return {
        "text": result.text, "mode": result.mode, "escalate": result.escalate, "reason": result.reason,
        "confidence": round(result.confidence, 3), "degraded": result.degraded,
        "sources": [{"n": s.n, "title": s.title, "url": s.url, "heading": s.heading, "source_id": s.source_id}
                    for s in result.sources],
    }


class WidgetService:
    def __init__(
        self, db: Database, pipeline: AnswerPipeline, operators: OperatorService, customers: CustomerDirectory,
        writer: CrmWriter | None, *, policy: WidgetPolicy, language: str, usage: UsageLog | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._clock = clock
        self._db, self._pipeline, self._operators, self._customers = db, pipeline, operators, customers
        self._writer, self._policy, self.language = writer, policy, language
        self._usage = usage or UsageLog()

    @staticmethod
    def operator(session: WidgetSession) -> Operator:
        return Operator(id=session.operator_id, name=session.operator_name)

    def _ref(self, session: WidgetSession) -> CustomerRef:
        if session.customer_id is None:
            raise AuthError("this widget session is not about a customer")
        return CustomerRef(session.vendor, session.customer_id, session.customer_kind)

    async def summary(self, session: WidgetSession) -> dict[str, Any]:
        """The customer, their conversation with the bot and its ticket (if they wrote to it)."""
        out: dict[str, Any] = {"operator": session.operator_name, "customer": None, "crm_problem": None,
                               "conversation": [], "ticket": None}
        if session.customer_id is None:
            return out
        ref = self._ref(session)
        context = await self._customers.context_of(ref)
        if context is None:
            out["crm_problem"] = "unavailable"
        else:
            out["customer"] = customer_json(context, self._policy)
        out.update(await self._db.tx(lambda c: self._conversation(c, ref)))
        return out

    def _conversation(self, conn: Connection, ref: CustomerRef) -> dict[str, Any]:
        user_id = conn.execute(
            select(customer_links.c.user_id).where(customer_links.c.crm == ref.crm,
                                                   customer_links.c.crm_customer_id == ref.id)
        ).scalar()
        if user_id is None:
            return {"conversation": [], "ticket": None}
        repo = ConversationRepository(conn)
        ticket = TicketRepository(conn).active_for_user(user_id)
        # The ticket's conversation while one is open, else the customer's latest one.
        conversation_id = ticket.conversation_id if ticket else conn.execute(
            select(conversations.c.id).where(conversations.c.user_id == user_id)
            .order_by(conversations.c.id.desc()).limit(1)
        ).scalar()
        messages = repo.history(conversation_id, before_id=None, limit=30) if conversation_id else []
        return {
            "conversation": [{"role": m.role, "text": m.text, "at": m.created_at.isoformat()} for m in messages],
            "ticket": self._ticket_json(ticket, None) if ticket else None,
        }

    def _ticket_json(self, ticket: Any, customer: str | None) -> dict[str, Any]:
        waited = (self._clock() - ticket.created_at).total_seconds()
        return {
            "id": ticket.id, "status": ticket.status, "status_label": status_label(self.language, ticket.status),
            "reason": ticket.reason, "reason_label": reason_label(self.language, ticket.reason),
            "summary": ticket.summary, "operator": ticket.operator_name, "customer": customer,
            "waiting": format_waiting(waited, self.language), "draft": ticket.draft_text,
            "draft_sources": ticket.draft_sources or [],
        }

    async def suggestion(self, session: WidgetSession) -> dict[str, Any] | None:
        """A reply to the customer's last message, from the knowledge base (operator documents allowed)."""
        summary = await self.summary(session)
        last = next((m["text"] for m in reversed(summary["conversation"]) if m["role"] == "customer"), None)
        if not last:
            return None
        result = await self._pipeline.answer(AnswerRequest(last, audience="operator"))
        return {"question": last, "answer": answer_json(result)}

    async def ask(self, question: str) -> dict[str, Any]:
        result = await self._pipeline.answer(AnswerRequest(question, audience="operator"))
        await self._db.tx(lambda c: self._usage.record(c, now=self._clock(), channel="widget", audience="operator",
                                                 result=result))
        return answer_json(result)

    async def queue(self) -> list[dict[str, Any]]:
        def run(conn: Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                select(tickets, users.c.display_name).join(users, users.c.id == tickets.c.user_id)
                .where(tickets.c.status.in_(ACTIVE)).order_by(tickets.c.created_at, tickets.c.id)
            )
            repo = TicketRepository(conn)
            out = []
            for row in rows:
                ticket = repo.get(row.id)
                if ticket is not None:
                    out.append(self._ticket_json(ticket, row.display_name))
            return out

        result: list[dict[str, Any]] = await self._db.tx(run)
        return result

    async def claim(self, session: WidgetSession, ticket_id: int) -> dict[str, Any]:
        outcome = await self._operators.claim(ticket_id, self.operator(session))
        refusal = None if outcome.won else t(self.language, "claim_lost", ticket_id=ticket_id,
                                                 name=outcome.holder or "?")
        return {"ok": outcome.won, "holder": outcome.holder, "error": html_to_plain(refusal) if refusal else None}

    async def reply(self, session: WidgetSession, ticket_id: int, text: str, request_id: str | None) -> dict[str, Any]:
        key = request_id or uuid.uuid4().hex
        outcome = await self._operators.reply_to_ticket(f"widget:{key}", ticket_id, self.operator(session), text)
        return _outcome(outcome)

    async def resolve(self, session: WidgetSession, ticket_id: int) -> dict[str, Any]:
        return _outcome(await self._operators.resolve(ticket_id, self.operator(session)))

    async def report(self, days: float, cost: Any) -> dict[str, Any]:
        """The admin view: the same figures as `perimeter report`, for the last ``days``."""
        from bot.reports import compute_report

        until = self._clock()
        report = await self._db.tx(lambda c: compute_report(c, since=until - timedelta(days=days), until=until,
                                                            cost=cost))
        data: dict[str, Any] = report.to_json()
        for item in data["escalations"]["by_reason"]:
            item["label"] = reason_label(self.language, item["reason"])
        return data

    async def write_note(self, session: WidgetSession, text: str) -> dict[str, Any]:
        """«Вставить»: the suggested reply goes into the CRM card as a note."""
        if self._writer is None:
            return {"ok": False, "error": "this CRM connection is read-only"}
        try:
            note_id = await self._writer.add_note(self._ref(session), text)
        except (CrmUnavailable, CrmError) as exc:
            return {"ok": False, "error": exc.code}
        return {"ok": True, "id": note_id}


def _outcome(outcome: ReplyOutcome) -> dict[str, Any]:
    # Refusals are Telegram HTML (escaped names); the widget shows text.
    return {"ok": outcome.sent, "error": html_to_plain(outcome.refusal) if outcome.refusal else None}
