"""Customers, their conversations, messages, answers and feedback. Never commits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection

from bot.storage.events import insert_ignoring_duplicates, new_id
from bot.storage.tables import answers, conversations, feedback, messages, users
from rag.answer import AnswerResult


@dataclass(frozen=True)
class UserRecord:
    id: int
    channel: str
    external_id: str
    chat_id: int | None
    display_name: str
    username: str | None
    language: str
    language_pinned: bool


@dataclass(frozen=True)
class MessageRecord:
    id: int
    conversation_id: int
    role: str
    text: str
    outcome: str | None
    created_at: datetime


class ConversationRepository:
    def __init__(self, conn: Connection) -> None:
        self._c = conn

    # users -------------------------------------------------------------------------------------
    def upsert_user(
        self, channel: str, external_id: str, *, chat_id: int | None, display_name: str, username: str | None,
        language: str, now: datetime,
    ) -> UserRecord:
        """The user by channel id, created on first contact; name, chat and (unless the user
        chose one with /lang) language follow what the channel says now."""
        insert_ignoring_duplicates(
            self._c, users,
            dict(channel=channel, external_id=external_id, chat_id=chat_id, display_name=display_name[:200],
                 username=username, language=language, language_pinned=False, created_at=now, last_seen_at=now),
            ["channel", "external_id"],
        )
        user = self.user(channel, external_id)
        assert user is not None
        values: dict[str, Any] = dict(display_name=display_name[:200], username=username, last_seen_at=now)
        if chat_id is not None:
            values["chat_id"] = chat_id
        if not user.language_pinned:
            values["language"] = language
        self._c.execute(update(users).where(users.c.id == user.id).values(**values))
        return self.user_by_id(user.id)

    def user(self, channel: str, external_id: str) -> UserRecord | None:
        row = self._c.execute(
            select(users).where(users.c.channel == channel, users.c.external_id == external_id)
        ).first()
        return _user(row._mapping) if row else None

    def user_by_id(self, user_id: int) -> UserRecord:
        return _user(self._c.execute(select(users).where(users.c.id == user_id)).one()._mapping)

    def set_language(self, user_id: int, language: str) -> None:
        self._c.execute(update(users).where(users.c.id == user_id).values(language=language, language_pinned=True))

    # conversations -----------------------------------------------------------------------------
    def current_conversation(self, user: UserRecord, now: datetime, idle_timeout_s: float) -> int:
        """The user's open conversation, or a new one after ``idle_timeout_s`` of silence."""
        row = self._c.execute(
            select(conversations.c.id, conversations.c.last_activity_at)
            .where(conversations.c.user_id == user.id, conversations.c.closed_at.is_(None))
            .order_by(conversations.c.id.desc()).limit(1)
        ).first()
        if row is not None and now - row.last_activity_at <= timedelta(seconds=idle_timeout_s):
            self._c.execute(update(conversations).where(conversations.c.id == row.id).values(last_activity_at=now))
            return int(row.id)
        if row is not None:
            self.close_conversation(row.id, now)
        return new_id(self._c.execute(
            conversations.insert().values(user_id=user.id, channel=user.channel, started_at=now, last_activity_at=now)
        ))

    def close_conversation(self, conversation_id: int, now: datetime) -> None:
        self._c.execute(
            update(conversations).where(conversations.c.id == conversation_id, conversations.c.closed_at.is_(None))
            .values(closed_at=now)
        )

    def close_open_conversations(self, user_id: int, now: datetime) -> None:
        self._c.execute(
            update(conversations).where(conversations.c.user_id == user_id, conversations.c.closed_at.is_(None))
            .values(closed_at=now)
        )

    # messages ----------------------------------------------------------------------------------
    def add_message(
        self, conversation_id: int, user_id: int, role: str, text: str, now: datetime, *, event_id: int | None = None,
    ) -> int:
        return new_id(self._c.execute(
            messages.insert().values(
                conversation_id=conversation_id, user_id=user_id, role=role, text=text, event_id=event_id,
                created_at=now,
            )
        ))

    def message_for_event(self, event_id: int) -> MessageRecord | None:
        row = self._c.execute(select(messages).where(messages.c.event_id == event_id)).first()
        return _message(row._mapping) if row else None

    def set_outcome(self, message_id: int, outcome: str, detail: str | None = None) -> None:
        """Record how an inbound message ended; only the first outcome counts."""
        self._c.execute(
            update(messages).where(messages.c.id == message_id, messages.c.outcome.is_(None))
            .values(outcome=outcome, outcome_detail=detail[:2000] if detail else None)
        )

    def history(self, conversation_id: int, *, before_id: int | None, limit: int) -> list[MessageRecord]:
        """The last ``limit`` messages of a conversation (before one message, if given), oldest first."""
        query = select(messages).where(messages.c.conversation_id == conversation_id)
        if before_id is not None:
            query = query.where(messages.c.id < before_id)
        rows = self._c.execute(query.order_by(messages.c.id.desc()).limit(limit))
        return [_message(r._mapping) for r in rows][::-1]

    def customer_messages_since(self, user_id: int, since: datetime, *, exclude_id: int) -> int:
        return int(self._c.execute(
            select(func.count()).select_from(messages).where(
                messages.c.user_id == user_id, messages.c.role == "customer", messages.c.created_at > since,
                messages.c.id != exclude_id,
            )
        ).scalar_one())

    def previous_customer_outcome(self, conversation_id: int, before_id: int) -> str | None:
        return self._c.execute(
            select(messages.c.outcome).where(
                messages.c.conversation_id == conversation_id, messages.c.role == "customer",
                messages.c.id < before_id,
            ).order_by(messages.c.id.desc()).limit(1)
        ).scalar()

    # answers and feedback ----------------------------------------------------------------------
    def add_answer(
        self, conversation_id: int, question_message_id: int, answer_message_id: int | None, result: AnswerResult,
        *, channel: str, audience: str, now: datetime,
    ) -> int:
        data = result.to_json()
        return new_id(self._c.execute(
            answers.insert().values(
                conversation_id=conversation_id, question_message_id=question_message_id,
                answer_message_id=answer_message_id, channel=channel, audience=audience, mode=result.mode,
                escalate=result.escalate, reason=result.reason, confidence=float(result.confidence),
                language=result.language, degraded=result.degraded, sources=data["sources"], usage=data["usage"],
                timings=data["timings"], created_at=now,
            )
        ))

    def answer_owner(self, answer_id: int) -> tuple[int, int] | None:
        """(user id, conversation id) of the customer an answer was given to."""
        row = self._c.execute(
            select(conversations.c.user_id, answers.c.conversation_id)
            .join(conversations, conversations.c.id == answers.c.conversation_id)
            .where(answers.c.id == answer_id)
        ).first()
        return (int(row.user_id), int(row.conversation_id)) if row else None

    def set_feedback(self, answer_id: int, user_id: int, value: int, now: datetime) -> None:
        """One vote per user and answer; a changed mind replaces the vote."""
        if not insert_ignoring_duplicates(
            self._c, feedback, dict(answer_id=answer_id, user_id=user_id, value=value, created_at=now),
            ["answer_id", "user_id"],
        ):
            self._c.execute(
                update(feedback).where(feedback.c.answer_id == answer_id, feedback.c.user_id == user_id)
                .values(value=value, created_at=now)
            )


def _user(m: Any) -> UserRecord:
    return UserRecord(m["id"], m["channel"], m["external_id"], m["chat_id"], m["display_name"], m["username"],
                      m["language"], bool(m["language_pinned"]))


def _message(m: Any) -> MessageRecord:
    return MessageRecord(m["id"], m["conversation_id"], m["role"], m["text"], m["outcome"], m["created_at"])
