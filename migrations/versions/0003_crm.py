"""CRM: customer links, credentials, single-use nonces, event results

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table("crm_credentials",
    sa.Column("crm", sa.String(length=20), nullable=False),
    sa.Column("access_token", sa.Text(), nullable=False),
    sa.Column("refresh_token", sa.Text(), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("crm")
    )
    op.create_table("used_nonces",
    sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
    sa.Column("scope", sa.String(length=40), nullable=False),
    sa.Column("nonce", sa.String(length=200), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("scope", "nonce", name="uq_used_nonces")
    )
    op.create_table("customer_links",
    sa.Column("user_id", sa.Integer(), nullable=False),
    sa.Column("crm", sa.String(length=20), nullable=False),
    sa.Column("crm_customer_id", sa.String(length=64), nullable=False),
    sa.Column("crm_kind", sa.String(length=20), nullable=False),
    sa.Column("phone_last4", sa.String(length=4), nullable=False),
    sa.Column("verified_at", sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(["user_id"], ["users.id"], ),
    sa.PrimaryKeyConstraint("user_id")
    )
    with op.batch_alter_table("inbound_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("result", sa.JSON(), nullable=True))




def downgrade() -> None:

    with op.batch_alter_table("inbound_events", schema=None) as batch_op:
        batch_op.drop_column("result")

    op.drop_table("customer_links")
    op.drop_table("used_nonces")
    op.drop_table("crm_credentials")

