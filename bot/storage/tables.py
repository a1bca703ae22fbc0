"""The service's tables: people, conversations, answers, tickets, inbound events and the outbox.

SQLAlchemy Core tables in the one ``metadata`` the knowledge-base manifest uses, so Alembic
sees a single schema. Everything the service must not forget across a restart or share
between replicas lives here, not in process memory.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect

from rag.manifest import metadata


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp that always comes back timezone-aware in UTC.

    SQLite stores no zone and returns naive values while PostgreSQL returns aware ones;
    comparing the two raises, so every read is normalised here once.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UtcDateTime column")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # SQLite in raw queries
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("channel", String(20), nullable=False),  # telegram | web | bitrix24 | amocrm
    Column("external_id", String(64), nullable=False),  # the channel's own user id
    Column("chat_id", BigInteger, nullable=True),  # where replies go (the private chat)
    Column("display_name", String(200), nullable=False, default=""),
    Column("username", String(100), nullable=True),
    Column("language", String(5), nullable=False, default="ru"),
    Column("language_pinned", Boolean, nullable=False, default=False),  # chosen with /lang
    Column("created_at", UtcDateTime, nullable=False),
    Column("last_seen_at", UtcDateTime, nullable=False),
    UniqueConstraint("channel", "external_id", name="uq_users_channel_external"),
)

# A channel user proven to be a CRM customer: they shared their own contact through
# Telegram's button and the phone matched exactly one customer. Only then is their CRM data used.
customer_links = Table(
    "customer_links",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id"), primary_key=True),
    Column("crm", String(20), nullable=False),
    Column("crm_customer_id", String(64), nullable=False),
    Column("crm_kind", String(20), nullable=False, default="contact"),
    Column("phone_last4", String(4), nullable=False),  # for operators' eyes; the number stays in the CRM
    Column("verified_at", UtcDateTime, nullable=False),
)

# Single-use values: a Kommo JWT's jti, a CRM event's fingerprint. Kept until they expire.
used_nonces = Table(
    "used_nonces",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("scope", String(40), nullable=False),
    Column("nonce", String(200), nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    UniqueConstraint("scope", "nonce", name="uq_used_nonces"),
)

# OAuth tokens a CRM rotated (Bitrix24 apps, amoCRM integrations): the refresh token in the
# configuration stops working after the first renewal, so the current pair lives here.
crm_credentials = Table(
    "crm_credentials",
    metadata,
    Column("crm", String(20), primary_key=True),
    Column("access_token", Text, nullable=False),
    Column("refresh_token", Text, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

conversations = Table(
    "conversations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False, index=True),
    Column("channel", String(20), nullable=False),
    Column("started_at", UtcDateTime, nullable=False),
    Column("last_activity_at", UtcDateTime, nullable=False),
    Column("closed_at", UtcDateTime, nullable=True),
)

messages = Table(
    "messages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("conversation_id", Integer, ForeignKey("conversations.id"), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("role", String(16), nullable=False),  # customer | assistant | operator
    Column("text", Text, nullable=False),
    # How an inbound customer message ended, set once: answered | escalated | forwarded |
    # rate_limited | failed. NULL for what we sent.
    Column("outcome", String(20), nullable=True),
    Column("outcome_detail", Text, nullable=True),
    # The inbound event it came from: unique, so a re-processed event finds its message.
    Column("event_id", Integer, nullable=True, unique=True),
    Column("created_at", UtcDateTime, nullable=False),
    Index("ix_messages_conversation", "conversation_id", "id"),
    Index("ix_messages_user_created", "user_id", "created_at"),
)

answers = Table(
    "answers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("conversation_id", Integer, ForeignKey("conversations.id"), nullable=False),
    Column("question_message_id", Integer, ForeignKey("messages.id"), nullable=False),
    Column("answer_message_id", Integer, ForeignKey("messages.id"), nullable=True),
    Column("channel", String(20), nullable=False),
    Column("audience", String(16), nullable=False),
    Column("mode", String(16), nullable=False),  # generated | extractive | cached | none
    Column("escalate", Boolean, nullable=False),
    Column("reason", String(40), nullable=True),
    Column("confidence", Float, nullable=False),
    Column("language", String(5), nullable=False),
    Column("degraded", Text, nullable=True),
    Column("sources", JSON, nullable=False),
    Column("usage", JSON, nullable=True),
    Column("timings", JSON, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("answer_id", Integer, ForeignKey("answers.id"), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("value", SmallInteger, nullable=False),  # +1 | -1
    Column("created_at", UtcDateTime, nullable=False),
    UniqueConstraint("answer_id", "user_id", name="uq_feedback_answer_user"),
)

tickets = Table(
    "tickets",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("conversation_id", Integer, ForeignKey("conversations.id"), nullable=False),
    Column("channel", String(20), nullable=False),
    Column("reason", String(40), nullable=False),
    Column("status", String(16), nullable=False),  # open | claimed | answered | resolved
    # Equals user_id while the ticket is not resolved, NULL after: a unique column that
    # allows one active ticket per customer on SQLite and PostgreSQL alike (NULLs never clash).
    Column("active_user_id", Integer, nullable=True, unique=True),
    Column("language", String(5), nullable=False),
    Column("summary", Text, nullable=False, default=""),
    Column("summary_mode", String(20), nullable=False, default="last_messages"),
    Column("transcript", JSON, nullable=False),
    Column("operator_id", String(64), nullable=True),
    Column("operator_name", String(200), nullable=True),
    Column("draft_text", Text, nullable=True),
    Column("draft_sources", JSON, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("claimed_at", UtcDateTime, nullable=True),
    Column("answered_at", UtcDateTime, nullable=True),
    Column("resolved_at", UtcDateTime, nullable=True),
    Column("last_announced_at", UtcDateTime, nullable=True),
    Index("ix_tickets_status_created", "status", "created_at"),
)

ticket_events = Table(
    "ticket_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ticket_id", Integer, ForeignKey("tickets.id"), nullable=False, index=True),
    Column("kind", String(30), nullable=False),  # opened | claimed | replied | customer_message | resolved | ...
    Column("actor", String(200), nullable=True),
    Column("data", JSON, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)

# One row per question the service handled, for reports and cost: how it ended, how long each
# stage took, what the model used. ``delivery_s`` is filled in when the reply has been sent.
usage_records = Table(
    "usage_records",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("channel", String(20), nullable=False),  # telegram | widget | crm | demo
    Column("audience", String(16), nullable=False),  # customer | operator
    # answered | cached | extractive | escalated | failed
    Column("outcome", String(20), nullable=False),
    Column("reason", String(40), nullable=True),  # why it was escalated
    Column("language", String(5), nullable=False),
    Column("model", String(200), nullable=True),
    Column("backend", String(20), nullable=True),
    Column("prompt_tokens", Integer, nullable=False, default=0),
    Column("completion_tokens", Integer, nullable=False, default=0),
    Column("used_customer_data", Boolean, nullable=False, default=False),
    Column("retrieval_s", Float, nullable=True),
    Column("crm_s", Float, nullable=True),
    Column("model_queue_s", Float, nullable=True),
    Column("model_ttft_s", Float, nullable=True),
    Column("model_total_s", Float, nullable=True),
    Column("total_s", Float, nullable=False),
    Column("delivery_s", Float, nullable=True),
    Column("answer_id", Integer, nullable=True, index=True),
    Index("ix_usage_created", "created_at"),
)

# Leases of scheduled jobs: with several replicas each job runs once per scheduled time; a job
# whose holder died is taken over when its lease runs out; a slow run is never overlapped.
job_leases = Table(
    "job_leases",
    metadata,
    Column("name", String(60), primary_key=True),
    Column("holder", String(100), nullable=True),
    Column("lease_until", UtcDateTime, nullable=True),
    Column("last_slot", UtcDateTime, nullable=True),  # the scheduled time of the last run taken
    Column("last_started_at", UtcDateTime, nullable=True),
    Column("last_finished_at", UtcDateTime, nullable=True),
    Column("last_status", String(20), nullable=True),  # ok | failed
    Column("last_detail", JSON, nullable=True),
)

# Every inbound event (a Telegram update, later CRM webhooks) is stored under its source's
# idempotency key before it is acknowledged, then processed by a worker holding a lease.
inbound_events = Table(
    "inbound_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source", String(32), nullable=False),  # telegram | ...
    Column("key", String(128), nullable=False),  # telegram: the update_id
    Column("chat_key", String(64), nullable=True),  # events of one chat are handled in order
    Column("payload", JSON, nullable=False),
    Column("status", String(16), nullable=False),  # pending | processing | done | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("lease_until", UtcDateTime, nullable=True),
    Column("error", Text, nullable=True),
    Column("result", JSON, nullable=True),  # what handling produced (a CRM event's suggested reply)
    Column("received_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime, nullable=True),
    UniqueConstraint("source", "key", name="uq_inbound_source_key"),
    Index("ix_inbound_status_id", "status", "id"),
    Index("ix_inbound_chat_status", "chat_key", "status"),
)

# What we send goes through here: written in the same transaction as the state change that
# caused it, sent by the outbox sender with 429/backoff handling; ``dedupe_key`` makes a
# re-processed event produce no second copy.
outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("channel", String(20), nullable=False),
    Column("chat_id", BigInteger, nullable=False),
    Column("method", String(32), nullable=False),  # sendMessage | editMessageText
    Column("payload", JSON, nullable=False),
    Column("kind", String(32), nullable=False),  # answer | notice | ticket_card | draft | forward | reply | ...
    Column("dedupe_key", String(160), nullable=True, unique=True),
    Column("ticket_id", Integer, nullable=True),
    Column("answer_id", Integer, nullable=True),
    Column("ref_outbox_id", Integer, nullable=True),  # an edit of the message this row sent
    Column("status", String(16), nullable=False),  # pending | sending | sent | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("not_before", UtcDateTime, nullable=False),
    Column("lease_until", UtcDateTime, nullable=True),
    Column("error", Text, nullable=True),
    Column("sent_message_id", BigInteger, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("sent_at", UtcDateTime, nullable=True),
    Index("ix_outbox_status_due", "status", "not_before"),
    Index("ix_outbox_chat_message", "chat_id", "sent_message_id"),
    Index("ix_outbox_chat_sent", "chat_id", "sent_at"),
)


def utcnow() -> datetime:
    return datetime.now(UTC)
