"""The conversation service: what happens to a customer's message, whatever the channel.

For each inbound message, exactly one outcome is recorded on it — ``answered``,
``escalated``, ``forwarded`` (to the operator of an open ticket), ``rate_limited`` or
``failed`` — and every reply is queued in the same transaction as that outcome, under a
dedupe key derived from the inbound event, so processing an event again after a crash
neither loses nor repeats anything.

Order of decisions: rate limit → an active ticket takes the message → the customer asks for
a person → the answer pipeline (answer, or escalate when it does not know or the model failed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection

from bot.customers import CustomerDirectory, context_for_prompt, personal_values
from bot.i18n import pick_language, t
from bot.intents import asks_personal_data, wants_person
from bot.outgoing import Button, Outgoing, OutgoingQueue
from bot.settings import ConversationSettings
from bot.storage.conversations import ConversationRepository, MessageRecord, UserRecord
from bot.storage.database import Database
from bot.storage.tickets import TicketRepository
from bot.telegram.render import html_to_plain, render_answer
from bot.tickets import TicketService
from bot.usage import UsageLog
from rag.answer import AnswerResult
from rag.errors import AppError, InputError
from rag.llm.base import ChatModel
from rag.pipeline import REASON_MODEL_UNAVAILABLE, AnswerPipeline, AnswerRequest
from rag.prompts import Turn
from rag.redaction import KNOWN_VALUES
from rag.summary import summarize_conversation

log = logging.getLogger(__name__)

REASON_CUSTOMER_REQUEST = "customer_request"
REASON_NEGATIVE_FEEDBACK = "negative_feedback"
REASON_PROCESSING_ERROR = "processing_error"

Typing = Callable[[], AbstractAsyncContextManager[Any]]


@dataclass(frozen=True)
class Sender:
    """Who wrote, as the channel identifies them."""

    channel: str
    external_id: str
    chat_id: int | None  # None: a channel we do not reply into (the demo's seeded customer)
    display_name: str
    username: str | None
    language_code: str | None


@dataclass(frozen=True)
class _Turn:
    """The state step one of handling a message leaves for the (slow) answering step."""

    user: UserRecord
    conversation_id: int
    message_id: int
    history: list[Turn]


class ConversationService:
    def __init__(
        self, db: Database, pipeline: AnswerPipeline, tickets: TicketService, out: OutgoingQueue,
        settings: ConversationSettings, *, clock: Callable[[], datetime], history_turns: int = 6,
        summary_model: ChatModel | None = None, on_queued: Callable[[], None] = lambda: None,
        customers: CustomerDirectory | None = None, usage: UsageLog | None = None,
    ) -> None:
        self._db, self._pipeline, self.tickets, self._out = db, pipeline, tickets, out
        self._cfg, self._clock, self._history_turns = settings, clock, history_turns
        self._summary_model, self._on_queued = summary_model, on_queued
        self.customers = customers
        self._usage = usage or UsageLog()

    # the customer's free text ------------------------------------------------------------------
    async def handle_text(self, event_id: int, sender: Sender, text: str, *, typing: Typing | None = None,
                          received: float | None = None) -> None:
        """``received``: when the message arrived (``time.monotonic()``), None for now; the
        question's deadline counts from then, the wait in the inbox and the CRM lookup included."""
        deadline = self._pipeline.deadline_from(received)
        turn = await self._tx(lambda c: self._receive(c, event_id, sender, text))
        if turn is None:
            return
        if wants_person(text):
            await self._escalate(turn, REASON_CUSTOMER_REQUEST, dedupe=f"ev{event_id}", question=text)
            return
        personal = asks_personal_data(text)
        context_text, crm_note, crm_s = None, False, None
        if self.customers is not None and self.customers.enabled:
            started = time.perf_counter()
            found = await self.customers.context_for(turn.user.id)
            crm_s = time.perf_counter() - started
            if personal and not found.linked:
                # No personal data without proof of identity: offer the contact button instead.
                await self._tx(lambda c: self._notice(c, turn, "verify_offer", f"ev{event_id}:verify", "answered",
                                                      contact_request=t(turn.user.language, "button_share_contact")))
                return
            if found.context is not None:
                context_text = context_for_prompt(found.context, turn.user.language)
                KNOWN_VALUES.set(personal_values(found.context))  # for redaction, in this task only
            crm_note = personal and found.problem == "unavailable"
        request = AnswerRequest(text, history=turn.history, audience="customer", customer_context=context_text,
                                deadline=deadline)
        try:
            async with (typing or nullcontext)():
                result = await self._pipeline.answer(request)
        except InputError:
            await self._tx(lambda c: self._notice(c, turn, "empty_message", f"ev{event_id}:empty", "answered"))
            return
        if result.failure:
            await self._escalate(turn, REASON_MODEL_UNAVAILABLE, dedupe=f"ev{event_id}", question=text,
                                 answer=result, notice="model_unavailable", crm_s=crm_s)
        elif result.escalate:
            await self._escalate(turn, result.reason or "low_confidence", dedupe=f"ev{event_id}", question=text,
                                 answer=result, crm_s=crm_s)
        else:
            await self._tx(lambda c: self._deliver_answer(c, turn, result, dedupe=f"ev{event_id}", crm_note=crm_note,
                                                          crm_s=crm_s))

    def _receive(self, conn: Connection, event_id: int, sender: Sender, text: str) -> _Turn | None:
        """Step one: store the message, then rate limit / forward to an open ticket, or hand on."""
        now = self._clock()
        repo = ConversationRepository(conn)
        user = self._upsert(repo, sender, now)
        existing = repo.message_for_event(event_id)
        if existing is not None and existing.outcome is not None:
            return None  # handled before a crash; its replies are in the outbox already
        conversation_id = repo.current_conversation(user, now, self._cfg.idle_timeout_s)
        if existing is None:
            message_id = repo.add_message(conversation_id, user.id, "customer", text, now, event_id=event_id)
        else:
            message_id, conversation_id = existing.id, existing.conversation_id
        turn = _Turn(user, conversation_id, message_id, [])
        window = timedelta(seconds=self._cfg.rate_limit_window_s)
        if repo.customer_messages_since(user.id, now - window, exclude_id=message_id) >= self._cfg.rate_limit_messages:
            # One polite notice per window, not one per message: the flood is not echoed back.
            bucket = int(now.timestamp() // self._cfg.rate_limit_window_s)
            self._notice(conn, turn, "rate_limited", f"ratelimit:{user.id}:{bucket}", "rate_limited",
                         seconds=int(self._cfg.rate_limit_window_s))
            return None
        ticket = TicketRepository(conn).active_for_user(user.id)
        if ticket is not None:
            self.tickets.forward(conn, ticket, text, dedupe=f"ev{event_id}:fwd")
            previous = repo.previous_customer_outcome(conversation_id, message_id)
            if previous != "forwarded":  # tell the customer once, not after every line
                self._notice(conn, turn, "already_escalated", f"ev{event_id}:fwd-notice", "forwarded")
            else:
                repo.set_outcome(message_id, "forwarded", f"ticket {ticket.id}")
            self._on_queued()
            return None
        history = [
            Turn("user" if m.role == "customer" else "assistant", m.text)
            for m in repo.history(conversation_id, before_id=message_id, limit=2 * self._history_turns)
        ]
        return _Turn(user, conversation_id, message_id, history)

    def _deliver_answer(self, conn: Connection, turn: _Turn, result: AnswerResult, *, dedupe: str,
                        crm_note: bool = False, crm_s: float | None = None) -> None:
        now = self._clock()
        repo = ConversationRepository(conn)
        answer_message = repo.add_message(turn.conversation_id, turn.user.id, "assistant", result.text, now)
        answer_id = repo.add_answer(turn.conversation_id, turn.message_id, answer_message, result,
                                    channel=turn.user.channel, audience="customer", now=now)
        self._usage.record(conn, now=now, channel=turn.user.channel, audience="customer", result=result, crm_s=crm_s,
                     answer_id=answer_id)
        lang = turn.user.language
        parts = render_answer(result, lang=lang)
        buttons = (
            (Button(t(lang, "button_up"), f"fb:{answer_id}:1"), Button(t(lang, "button_down"), f"fb:{answer_id}:-1")),
            (Button(t(lang, "button_operator"), f"op:{answer_id}"),),
        )
        for n, part in enumerate(parts):
            self._queue(conn, turn.user, part.html, part.plain, "answer", f"{dedupe}:answer:{n}",
                        buttons=buttons if n == len(parts) - 1 else (), answer_id=answer_id)
        if crm_note:  # the customer asked about their own data and the CRM could not be asked
            html = t(lang, "crm_unavailable_note")
            self._queue(conn, turn.user, html, html_to_plain(html), "notice", f"{dedupe}:crm-note")
        repo.set_outcome(turn.message_id, "answered", result.mode)

    # escalation ----------------------------------------------------------------------------------
    async def _escalate(
        self, turn: _Turn, reason: str, *, dedupe: str, question: str | None, answer: AnswerResult | None = None,
        notice: str = "escalated", crm_s: float | None = None, usage_outcome: str = "escalated",
    ) -> None:
        """Open a ticket with a summary and a draft for the operator; tell the customer."""
        transcript_rows = await self._tx(
            lambda c: ConversationRepository(c).history(turn.conversation_id, before_id=None, limit=12)
        )
        transcript = [_transcript_row(m) for m in transcript_rows]
        turns = [Turn("user" if m.role == "customer" else "assistant", m.text) for m in transcript_rows]
        lang = turn.user.language
        model_ok = reason != REASON_MODEL_UNAVAILABLE  # a failed model will not write a summary either
        summary = await summarize_conversation(self._summary_model if model_ok else None, turns, language=lang)
        draft = await self._draft(question, turn.history) if question and model_ok else None

        def commit(conn: Connection) -> None:
            now = self._clock()
            repo = ConversationRepository(conn)
            answer_id = None
            if answer is not None:
                answer_id = repo.add_answer(turn.conversation_id, turn.message_id, None, answer,
                                            channel=turn.user.channel, audience="customer", now=now)
            self._usage.record(conn, now=now, channel=turn.user.channel, audience="customer", result=answer,
                         outcome=usage_outcome, reason=reason, language=lang, crm_s=crm_s, answer_id=answer_id)
            ticket, _created = self.tickets.open(
                conn, user=turn.user, conversation_id=turn.conversation_id, reason=reason, language=lang,
                summary=summary.text, summary_mode=summary.mode, transcript=transcript,
                draft_text=draft.text if draft else None,
                draft_sources=[s.__dict__ for s in draft.sources] if draft else None,
            )
            self._notice(conn, turn, notice, f"{dedupe}:escalated", "escalated", ticket_id=ticket.id)
            repo.set_outcome(turn.message_id, "escalated", reason)

        await self._tx(commit)

    async def _draft(self, question: str, history: list[Turn]) -> AnswerResult | None:
        """The knowledge base's answer for the operator (operator-only documents allowed)."""
        try:
            result = await self._pipeline.answer(AnswerRequest(question, history=history, audience="operator"))
        except AppError as exc:
            log.warning("no draft for the operator: %s", exc)
            return None
        return None if result.escalate or result.failure else result

    # commands and buttons --------------------------------------------------------------------------
    async def command(self, event_id: int, sender: Sender, name: str, arg: str = "") -> None:
        """/start, /help, /lang, /new, /operator."""
        if name == "operator":
            turn = await self._tx(lambda c: self._command_turn(c, event_id, sender, "/operator"))
            if turn is not None:
                await self._escalate(turn, REASON_CUSTOMER_REQUEST, dedupe=f"ev{event_id}", question=None)
            return

        def run(conn: Connection) -> None:
            now = self._clock()
            repo = ConversationRepository(conn)
            user = self._upsert(repo, sender, now)
            key, kwargs = name, dict[str, Any]()
            if name == "lang":
                choice = arg.strip().lower()[:2]
                lang = choice if choice in ("ru", "en") else ("en" if user.language == "ru" else "ru")
                repo.set_language(user.id, lang)
                user = repo.user_by_id(user.id)
                key = "lang_switched"
            elif name == "new":
                repo.close_open_conversations(user.id, now)
                key = "new_conversation"
            elif name == "unsupported":
                key = "unsupported_message"
            elif name not in ("start", "help"):
                key = "help"
            html = t(user.language, key, **kwargs)
            self._queue(conn, user, html, html_to_plain(html), "notice", f"ev{event_id}:cmd")

        await self._tx(run)

    def _command_turn(self, conn: Connection, event_id: int, sender: Sender, text: str) -> _Turn | None:
        now = self._clock()
        repo = ConversationRepository(conn)
        user = self._upsert(repo, sender, now)
        existing = repo.message_for_event(event_id)
        if existing is not None and existing.outcome is not None:
            return None
        conversation_id = repo.current_conversation(user, now, self._cfg.idle_timeout_s)
        message_id = existing.id if existing else repo.add_message(
            conversation_id, user.id, "customer", text, now, event_id=event_id
        )
        turn = _Turn(user, conversation_id, message_id, [])
        ticket = TicketRepository(conn).active_for_user(user.id)
        if ticket is not None:
            self._notice(conn, turn, "already_escalated", f"ev{event_id}:already", "forwarded")
            return None
        return turn

    async def feedback(self, event_id: int, sender: Sender, answer_id: int, value: int) -> bool:
        """A 👍/👎 on an answer; 👎 offers a person. False when the answer is not this user's."""

        def run(conn: Connection) -> bool:
            now = self._clock()
            repo = ConversationRepository(conn)
            user = self._upsert(repo, sender, now)
            owner = repo.answer_owner(answer_id)
            if owner is None or owner[0] != user.id:
                return False
            repo.set_feedback(answer_id, user.id, 1 if value > 0 else -1, now)
            if value < 0:
                html = t(user.language, "feedback_down_offer")
                self._queue(conn, user, html, html_to_plain(html), "notice", f"ev{event_id}:fb",
                            buttons=((Button(t(user.language, "button_still_need_help"), f"help:{answer_id}"),),))
            return True

        return await self._tx(run)

    async def request_person(self, event_id: int, sender: Sender, answer_id: int, *, after_negative: bool) -> bool:
        """The «Позвать оператора» button under an answer, or «still need help» after a 👎."""

        def prepare(conn: Connection) -> _Turn | None:
            now = self._clock()
            repo = ConversationRepository(conn)
            user = self._upsert(repo, sender, now)
            owner = repo.answer_owner(answer_id)
            if owner is None or owner[0] != user.id:
                return None
            conversation_id = repo.current_conversation(user, now, self._cfg.idle_timeout_s)
            message_id = repo.add_message(conversation_id, user.id, "customer", "[button: operator]", now,
                                          event_id=event_id)
            turn = _Turn(user, conversation_id, message_id, [])
            if TicketRepository(conn).active_for_user(user.id) is not None:
                self._notice(conn, turn, "already_escalated", f"ev{event_id}:already", "forwarded")
                return None
            return turn

        turn = await self._tx(prepare)
        if turn is None:
            return False
        reason = REASON_NEGATIVE_FEEDBACK if after_negative else REASON_CUSTOMER_REQUEST
        await self._escalate(turn, reason, dedupe=f"ev{event_id}", question=None)
        return True

    async def record_sender(self, sender: Sender) -> int:
        """The user id of a sender, created on first contact."""
        user: UserRecord = await self._tx(lambda c: self._upsert(ConversationRepository(c), sender, self._clock()))
        return user.id

    async def verify_contact(self, event_id: int, sender: Sender, phone: str, contact_user_id: str | None) -> None:
        """A shared contact: link the user to the CRM customer when it is their own and matches."""

        def user_of(conn: Connection) -> UserRecord:
            return self._upsert(ConversationRepository(conn), sender, self._clock())

        user = await self._tx(user_of)
        if self.customers is None:
            result = "no_crm"
        else:
            result = await self.customers.verify_contact(user.id, sender.external_id, phone, contact_user_id)
        key = {"verified": "verify_done", "not_own_contact": "verify_not_own", "not_found": "verify_not_found",
               "ambiguous": "verify_ambiguous", "unavailable": "verify_unavailable", "no_crm": "verify_no_crm"}[result]

        def reply(conn: Connection) -> None:
            html = t(user.language, key)
            if user.chat_id is not None:
                self._out.queue(conn, Outgoing(chat_id=user.chat_id, html=html, plain=html_to_plain(html),
                                               kind="notice", dedupe_key=f"ev{event_id}:verify",
                                               remove_keyboard=result == "verified"), self._clock())

        await self._tx(reply)

    async def record_failure(self, event_id: int, sender: Sender | None, error: str) -> None:
        """The last attempt at an event failed: record it on the message, tell the customer,
        and open a ticket so a person looks at the question."""
        if sender is None:
            return

        def prepare(conn: Connection) -> _Turn | None:
            repo = ConversationRepository(conn)
            message = repo.message_for_event(event_id)
            user = repo.user(sender.channel, sender.external_id)
            if message is None or user is None or message.outcome is not None:
                return None
            repo.set_outcome(message.id, "failed", error)
            return _Turn(user, message.conversation_id, message.id, [])

        turn = await self._tx(prepare)
        if turn is None:
            return
        try:
            await self._escalate(turn, REASON_PROCESSING_ERROR, dedupe=f"ev{event_id}:failed", question=None,
                                 notice="processing_error", usage_outcome="failed")
        except Exception:
            log.exception("could not open a ticket for failed event %s", event_id)

    # helpers ---------------------------------------------------------------------------------------
    async def _tx(self, fn: Callable[[Connection], Any]) -> Any:
        result = await self._db.tx(fn)
        self._on_queued()
        return result

    def _upsert(self, repo: ConversationRepository, sender: Sender, now: datetime) -> UserRecord:
        return repo.upsert_user(
            sender.channel, sender.external_id, chat_id=sender.chat_id, display_name=sender.display_name,
            username=sender.username, language=pick_language(sender.language_code), now=now,
        )

    def _notice(self, conn: Connection, turn: _Turn, key: str, dedupe: str, outcome: str, *,
                contact_request: str | None = None, **kwargs: Any) -> None:
        html = t(turn.user.language, key, **kwargs)
        self._queue(conn, turn.user, html, html_to_plain(html), "notice", dedupe, contact_request=contact_request)
        ConversationRepository(conn).set_outcome(turn.message_id, outcome, key)

    def _queue(
        self, conn: Connection, user: UserRecord, html: str, plain: str, kind: str, dedupe: str, *,
        buttons: tuple[tuple[Button, ...], ...] = (), answer_id: int | None = None,
        contact_request: str | None = None,
    ) -> None:
        if user.chat_id is None:
            return
        self._out.queue(conn, Outgoing(chat_id=user.chat_id, html=html, plain=plain, kind=kind, buttons=buttons,
                                       dedupe_key=dedupe, answer_id=answer_id, contact_request=contact_request),
                        self._clock())


def _transcript_row(m: MessageRecord) -> dict[str, Any]:
    return {"role": m.role, "text": m.text[:2000], "at": m.created_at.isoformat()}
