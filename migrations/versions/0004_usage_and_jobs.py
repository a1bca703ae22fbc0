"""usage records and job leases

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table("job_leases",
    sa.Column("name", sa.String(length=60), nullable=False),
    sa.Column("holder", sa.String(length=100), nullable=True),
    sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_slot", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_started_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_finished_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_status", sa.String(length=20), nullable=True),
    sa.Column("last_detail", sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint("name")
    )
    op.create_table("usage_records",
    sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("channel", sa.String(length=20), nullable=False),
    sa.Column("audience", sa.String(length=16), nullable=False),
    sa.Column("outcome", sa.String(length=20), nullable=False),
    sa.Column("reason", sa.String(length=40), nullable=True),
    sa.Column("language", sa.String(length=5), nullable=False),
    sa.Column("model", sa.String(length=200), nullable=True),
    sa.Column("backend", sa.String(length=20), nullable=True),
    sa.Column("prompt_tokens", sa.Integer(), nullable=False),
    sa.Column("completion_tokens", sa.Integer(), nullable=False),
    sa.Column("used_customer_data", sa.Boolean(), nullable=False),
    sa.Column("retrieval_s", sa.Float(), nullable=True),
    sa.Column("crm_s", sa.Float(), nullable=True),
    sa.Column("model_queue_s", sa.Float(), nullable=True),
    sa.Column("model_ttft_s", sa.Float(), nullable=True),
    sa.Column("model_total_s", sa.Float(), nullable=True),
    sa.Column("total_s", sa.Float(), nullable=False),
    sa.Column("delivery_s", sa.Float(), nullable=True),
    sa.Column("answer_id", sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint("id")
    )
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.create_index("ix_usage_created", ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_usage_records_answer_id"), ["answer_id"], unique=False)




def downgrade() -> None:

    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_usage_records_answer_id"))
        batch_op.drop_index("ix_usage_created")

    op.drop_table("usage_records")
    op.drop_table("job_leases")

