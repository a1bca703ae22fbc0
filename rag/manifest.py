"""What the knowledge-base index holds, kept in the service database.

`kb_collections` records one Qdrant collection per embedding model and which one is
active; `kb_files` remembers, per collection and file, the file's hash and its point ids so
an unchanged file is skipped without touching Qdrant; `kb_runs` keeps each indexing run's
summary. Repositories here never commit: the caller's transaction (a unit of work) does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection

metadata = MetaData()

kb_collections = Table(
    "kb_collections",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("embedder_id", String(200), nullable=False),
    Column("dim", Integer, nullable=False),
    Column("avg_len", Float, nullable=False),
    Column("status", String(20), nullable=False),  # building | active | retired
    Column("index_version", Integer, nullable=False, default=0),
    Column("roots", JSON, nullable=False, default=list),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

kb_files = Table(
    "kb_files",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("collection", String(200), nullable=False, index=True),
    Column("root", Text, nullable=False),
    Column("doc_id", Text, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("mtime_ns", BigInteger, nullable=False),
    Column("point_ids", JSON, nullable=False),
    Column("indexed_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("collection", "root", "doc_id", name="uq_kb_files_doc"),
)

kb_runs = Table(
    "kb_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("collection", String(200), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=False),
    Column("summary", JSON, nullable=False),
)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class CollectionRecord:
    name: str
    embedder_id: str
    dim: int
    avg_len: float
    status: str
    index_version: int
    roots: list[str]


@dataclass(frozen=True)
class FileRecord:
    root: str
    doc_id: str
    sha256: str
    size: int
    mtime_ns: int
    point_ids: list[str]


class ManifestRepository:
    """Reads and writes the manifest inside the caller's transaction."""

    def __init__(self, conn: Connection) -> None:
        self._c = conn

    # collections
    def active_collection(self) -> CollectionRecord | None:
        row = self._c.execute(select(kb_collections).where(kb_collections.c.status == "active")).first()
        return _collection(row._mapping) if row else None

    def get_collection(self, name: str) -> CollectionRecord | None:
        row = self._c.execute(select(kb_collections).where(kb_collections.c.name == name)).first()
        return _collection(row._mapping) if row else None

    def add_collection(self, name: str, embedder_id: str, dim: int, avg_len: float) -> None:
        now = utcnow()
        self._c.execute(
            insert(kb_collections).values(
                name=name, embedder_id=embedder_id, dim=dim, avg_len=avg_len, status="building",
                index_version=0, roots=[], created_at=now, updated_at=now,
            )
        )

    def activate(self, name: str) -> list[str]:
        """Make `name` the only active collection; returns the names it retired."""
        retired = [
            r.name
            for r in self._c.execute(
                select(kb_collections.c.name).where(
                    kb_collections.c.status == "active", kb_collections.c.name != name
                )
            )
        ]
        now = utcnow()
        if retired:
            self._c.execute(
                update(kb_collections).where(kb_collections.c.name.in_(retired)).values(
                    status="retired", updated_at=now
                )
            )
        self._c.execute(
            update(kb_collections).where(kb_collections.c.name == name).values(status="active", updated_at=now)
        )
        return retired

    def bump_version(self, name: str, roots: list[str]) -> int:
        current = self.get_collection(name)
        version = (current.index_version if current else 0) + 1
        merged = sorted(set(current.roots if current else []) | set(roots))
        self._c.execute(
            update(kb_collections).where(kb_collections.c.name == name).values(
                index_version=version, roots=merged, updated_at=utcnow()
            )
        )
        return version

    def add_roots(self, name: str, roots: list[str]) -> None:
        current = self.get_collection(name)
        merged = sorted(set(current.roots if current else []) | set(roots))
        self._c.execute(update(kb_collections).where(kb_collections.c.name == name).values(roots=merged))

    def forget_collection(self, name: str) -> None:
        self._c.execute(delete(kb_files).where(kb_files.c.collection == name))
        self._c.execute(delete(kb_collections).where(kb_collections.c.name == name))

    # files
    def files(self, collection: str, root: str) -> dict[str, FileRecord]:
        rows = self._c.execute(
            select(kb_files).where(kb_files.c.collection == collection, kb_files.c.root == root)
        )
        return {r.doc_id: _file(r._mapping) for r in rows}

    def save_file(self, collection: str, rec: FileRecord) -> None:
        self.delete_file(collection, rec.root, rec.doc_id)
        self._c.execute(
            insert(kb_files).values(
                collection=collection, root=rec.root, doc_id=rec.doc_id, sha256=rec.sha256, size=rec.size,
                mtime_ns=rec.mtime_ns, point_ids=rec.point_ids, indexed_at=utcnow(),
            )
        )

    def delete_file(self, collection: str, root: str, doc_id: str) -> None:
        self._c.execute(
            delete(kb_files).where(
                kb_files.c.collection == collection, kb_files.c.root == root, kb_files.c.doc_id == doc_id
            )
        )

    # runs
    def record_run(self, collection: str, started: datetime, summary: dict[str, Any]) -> None:
        self._c.execute(
            insert(kb_runs).values(
                collection=collection, started_at=started, finished_at=utcnow(),
                summary=json.loads(json.dumps(summary, default=str)),
            )
        )


def _collection(m: Any) -> CollectionRecord:
    return CollectionRecord(
        name=m["name"], embedder_id=m["embedder_id"], dim=m["dim"], avg_len=m["avg_len"],
        status=m["status"], index_version=m["index_version"], roots=list(m["roots"] or []),
    )


def _file(m: Any) -> FileRecord:
    return FileRecord(
        root=m["root"], doc_id=m["doc_id"], sha256=m["sha256"], size=m["size"],
        mtime_ns=m["mtime_ns"], point_ids=list(m["point_ids"] or []),
    )
