"""knowledge-base manifest: collections, files, index runs

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "kb_collections",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("embedder_id", sa.String(200), nullable=False),
        sa.Column("dim", sa.Integer, nullable=False),
        sa.Column("avg_len", sa.Float, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("index_version", sa.Integer, nullable=False),
        sa.Column("roots", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "kb_files",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("collection", sa.String(200), nullable=False),
        sa.Column("root", sa.Text, nullable=False),
        sa.Column("doc_id", sa.Text, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("mtime_ns", sa.BigInteger, nullable=False),
        sa.Column("point_ids", sa.JSON, nullable=False),
        sa.Column("indexed_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("collection", "root", "doc_id", name="uq_kb_files_doc"),
    )
    op.create_index("ix_kb_files_collection", "kb_files", ["collection"])
    op.create_table(
        "kb_runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("collection", sa.String(200), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("summary", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("kb_runs")
    op.drop_index("ix_kb_files_collection", table_name="kb_files")
    op.drop_table("kb_files")
    op.drop_table("kb_collections")
