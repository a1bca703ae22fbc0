"""conversations, tickets, inbound events, outbox

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table("inbound_events",
    sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
    sa.Column("source", sa.String(length=32), nullable=False),
    sa.Column("key", sa.String(length=128), nullable=False),
    sa.Column("chat_key", sa.String(length=64), nullable=True),
    sa.Column("payload", sa.JSON(), nullable=False),
    sa.Column("status", sa.String(length=16), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("source", "key", name="uq_inbound_source_key")
    )
    with op.batch_alter_table("inbound_events", schema=None) as batch_op:
        batch_op.create_index("ix_inbound_chat_status", ["chat_key", "status"], unique=False)
        batch_op.create_index("ix_inbound_status_id", ["status", "id"], unique=False)

    op.create_table("outbox",
    sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
    sa.Column("channel", sa.String(length=20), nullable=False),
    sa.Column("chat_id", sa.BigInteger(), nullable=False),
    sa.Column("method", sa.String(length=32), nullable=False),
    sa.Column("payload", sa.JSON(), nullable=False),
    sa.Column("kind", sa.String(length=32), nullable=False),
    sa.Column("dedupe_key", sa.String(length=160), nullable=True),
    sa.Column("ticket_id", sa.Integer(), nullable=True),
    sa.Column("answer_id", sa.Integer(), nullable=True),
    sa.Column("ref_outbox_id", sa.Integer(), nullable=True),
    sa.Column("status", sa.String(length=16), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
    sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("sent_message_id", sa.BigInteger(), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("dedupe_key")
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_chat_message", ["chat_id", "sent_message_id"], unique=False)
        batch_op.create_index("ix_outbox_chat_sent", ["chat_id", "sent_at"], unique=False)
        batch_op.create_index("ix_outbox_status_due", ["status", "not_before"], unique=False)

    op.create_table("users",
    sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
    sa.Column("channel", sa.String(length=20), nullable=False),
    sa.Column("external_id", sa.String(length=64), nullable=False),
    sa.Column("chat_id", sa.BigInteger(), nullable=True),
    sa.Column("display_name", sa.String(length=200), nullable=False),
    sa.Column("username", sa.String(length=100), nullable=True),
    sa.Column("language", sa.String(length=5), nullable=False),
    sa.Column("language_pinned", sa.Boolean(), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("channel", "external_id", name="uq_users_channel_external")
    )
    op.create_table("conversations",
    sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
    sa.Column("user_id", sa.Integer(), nullable=False),
    sa.Column("channel", sa.String(length=20), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_activity_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(["user_id"], ["users.id"], ),
    sa.PrimaryKeyConstraint("id")
    )
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_conversations_user_id"), ["user_id"], unique=False)

    op.create_table("messages",
    sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
    sa.Column("conversation_id", sa.Integer(), nullable=False),
    sa.Column("user_id", sa.Integer(), nullable=False),
    sa.Column("role", sa.String(length=16), nullable=False),
    sa.Column("text", sa.Text(), nullable=False),
    sa.Column("outcome", sa.String(length=20), nullable=True),
    sa.Column("outcome_detail", sa.Text(), nullable=True),
    sa.Column("event_id", sa.Integer(), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(["conversation_id"], ["conversations.id"], ),
    sa.ForeignKeyConstraint(["user_id"], ["users.id"], ),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("event_id")
    )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index("ix_messages_conversation", ["conversation_id", "id"], unique=False)
        batch_op.create_index("ix_messages_user_created", ["user_id", "created_at"], unique=False)

    op.create_table("tickets",
    sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
    sa.Column("user_id", sa.Integer(), nullable=False),
    sa.Column("conversation_id", sa.Integer(), nullable=False),
    sa.Column("channel", sa.String(length=20), nullable=False),
    sa.Column("reason", sa.String(length=40), nullable=False),
    sa.Column("status", sa.String(length=16), nullable=False),
    sa.Column("active_user_id", sa.Integer(), nullable=True),
    sa.Column("language", sa.String(length=5), nullable=False),
    sa.Column("summary", sa.Text(), nullable=False),
    sa.Column("summary_mode", sa.String(length=20), nullable=False),
    sa.Column("transcript", sa.JSON(), nullable=False),
    sa.Column("operator_id", sa.String(length=64), nullable=True),
    sa.Column("operator_name", sa.String(length=200), nullable=True),
    sa.Column("draft_text", sa.Text(), nullable=True),
    sa.Column("draft_sources", sa.JSON(), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("answered_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_announced_at", sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(["conversation_id"], ["conversations.id"], ),
    sa.ForeignKeyConstraint(["user_id"], ["users.id"], ),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("active_user_id")
    )
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.create_index("ix_tickets_status_created", ["status", "created_at"], unique=False)

    op.create_table("answers",
    sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
    sa.Column("conversation_id", sa.Integer(), nullable=False),
    sa.Column("question_message_id", sa.Integer(), nullable=False),
    sa.Column("answer_message_id", sa.Integer(), nullable=True),
    sa.Column("channel", sa.String(length=20), nullable=False),
    sa.Column("audience", sa.String(length=16), nullable=False),
    sa.Column("mode", sa.String(length=16), nullable=False),
    sa.Column("escalate", sa.Boolean(), nullable=False),
    sa.Column("reason", sa.String(length=40), nullable=True),
    sa.Column("confidence", sa.Float(), nullable=False),
    sa.Column("language", sa.String(length=5), nullable=False),
    sa.Column("degraded", sa.Text(), nullable=True),
    sa.Column("sources", sa.JSON(), nullable=False),
    sa.Column("usage", sa.JSON(), nullable=True),
    sa.Column("timings", sa.JSON(), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(["answer_message_id"], ["messages.id"], ),
    sa.ForeignKeyConstraint(["conversation_id"], ["conversations.id"], ),
    sa.ForeignKeyConstraint(["question_message_id"], ["messages.id"], ),
    sa.PrimaryKeyConstraint("id")
    )
    op.create_table("ticket_events",
    sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
    sa.Column("ticket_id", sa.Integer(), nullable=False),
    sa.Column("kind", sa.String(length=30), nullable=False),
    sa.Column("actor", sa.String(length=200), nullable=True),
    sa.Column("data", sa.JSON(), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"], ),
    sa.PrimaryKeyConstraint("id")
    )
    with op.batch_alter_table("ticket_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ticket_events_ticket_id"), ["ticket_id"], unique=False)

    op.create_table("feedback",
    sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
    sa.Column("answer_id", sa.Integer(), nullable=False),
    sa.Column("user_id", sa.Integer(), nullable=False),
    sa.Column("value", sa.SmallInteger(), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(["answer_id"], ["answers.id"], ),
    sa.ForeignKeyConstraint(["user_id"], ["users.id"], ),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("answer_id", "user_id", name="uq_feedback_answer_user")
    )



def downgrade() -> None:

    op.drop_table("feedback")
    with op.batch_alter_table("ticket_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ticket_events_ticket_id"))

    op.drop_table("ticket_events")
    op.drop_table("answers")
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.drop_index("ix_tickets_status_created")

    op.drop_table("tickets")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_user_created")
        batch_op.drop_index("ix_messages_conversation")

    op.drop_table("messages")
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_conversations_user_id"))

    op.drop_table("conversations")
    op.drop_table("users")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_status_due")
        batch_op.drop_index("ix_outbox_chat_sent")
        batch_op.drop_index("ix_outbox_chat_message")

    op.drop_table("outbox")
    with op.batch_alter_table("inbound_events", schema=None) as batch_op:
        batch_op.drop_index("ix_inbound_status_id")
        batch_op.drop_index("ix_inbound_chat_status")

    op.drop_table("inbound_events")

