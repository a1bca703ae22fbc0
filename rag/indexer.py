"""Incremental indexing of knowledge-base folders into the active Qdrant collection.

A file whose size and modification time match the manifest is skipped without being read;
one whose bytes hash the same is skipped without being parsed. A changed file re-embeds
only the chunks that are new (a chunk's point id is derived from its content), and a file
that disappeared loses its points. A new embedding model gets a new collection that is
filled completely — every folder the old one held plus the ones given now — before it
becomes active, so vectors of two models are never searched together.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from sqlalchemy import Engine

from rag.chunking import chunk_document
from rag.embedders.base import Embedder
from rag.errors import DocumentError, InputError
from rag.manifest import FileRecord, ManifestRepository, utcnow
from rag.models import Chunk
from rag.parsing import SUPPORTED_SUFFIXES, parse_file
from rag.sparse import Bm25Encoder, average_length
from rag.store import QdrantStore, point_id

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int, str], None]  # (phase, done, total, item)


@dataclass
class IndexSummary:
    collection: str
    index_version: int = 0
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    ignored: int = 0  # files of formats we do not index (images, archives...)
    chunks_embedded: int = 0
    chunks_reused: int = 0
    chunks_total: int = 0
    duration_s: float = 0.0
    switched_from: list[str] = field(default_factory=list)
    roots: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "collection": self.collection,
            "index_version": self.index_version,
            "added": self.added,
            "changed": self.changed,
            "deleted": self.deleted,
            "unchanged": self.unchanged,
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
            "ignored": self.ignored,
            "chunks_embedded": self.chunks_embedded,
            "chunks_reused": self.chunks_reused,
            "chunks_total": self.chunks_total,
            "duration_s": round(self.duration_s, 3),
            "switched_from": self.switched_from,
            "roots": self.roots,
        }


@dataclass(frozen=True)
class _Pending:
    root: str
    doc_id: str
    sha256: str
    size: int
    mtime_ns: int
    chunks: list[Chunk]
    is_new: bool


def collection_name(prefix: str, embedder_id: str) -> str:
    return f"{prefix}_kb_" + re.sub(r"[^a-z0-9]+", "_", embedder_id.lower()).strip("_")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Indexer:
    def __init__(
        self,
        *,
        engine: Engine,
        store: QdrantStore,
        embedder: Embedder,
        collection_prefix: str,
        max_file_bytes: int,
        chunk_max_chars: int = 1200,
        chunk_overlap_chars: int = 200,
        operator_dirs: Sequence[str] = ("internal", "operator"),
        batch_size: int = 64,
    ) -> None:
        self._engine, self._store, self._embedder = engine, store, embedder
        self._prefix = collection_prefix
        self._max_bytes = max_file_bytes
        self._chunk_max, self._chunk_overlap = chunk_max_chars, chunk_overlap_chars
        self._operator_dirs = {d.lower() for d in operator_dirs}
        self._batch = batch_size

    def index(self, roots: Sequence[Path], *, progress: ProgressFn | None = None) -> IndexSummary:
        started, t0 = utcnow(), time.perf_counter()
        report = progress or (lambda *_: None)
        name = collection_name(self._prefix, self._embedder.model_id)
        summary = IndexSummary(collection=name)
        with self._engine.begin() as conn:
            repo = ManifestRepository(conn)
            active, target = repo.active_collection(), repo.get_collection(name)
        switching = active is not None and active.name != name
        root_paths = [self._check_root(r) for r in roots]
        if switching and active is not None:
            # The new collection must hold everything the old one answered from.
            root_paths += [Path(r) for r in active.roots if Path(r).is_dir()]
        root_paths = sorted(set(root_paths))
        if not root_paths:
            raise InputError("nothing to index: give at least one folder")
        summary.roots = [str(r) for r in root_paths]

        pending, seen = self._scan(name, root_paths, summary, report)
        if target is None:
            avg_len = average_length([c.embed_text or c.text for p in pending for c in p.chunks])
            self._store.ensure_collection(name, self._embedder.dim)
            with self._engine.begin() as conn:
                ManifestRepository(conn).add_collection(name, self._embedder.model_id, self._embedder.dim, avg_len)
        else:
            avg_len = target.avg_len
            self._store.ensure_collection(name, self._embedder.dim)
        sparse = Bm25Encoder(avg_len=avg_len)

        self._write(name, pending, sparse, summary, report)
        self._delete_missing(name, root_paths, seen, summary)

        with self._engine.begin() as conn:
            repo = ManifestRepository(conn)
            record = repo.get_collection(name)
            assert record is not None
            if summary.added or summary.changed or summary.deleted or record.status != "active":
                summary.index_version = repo.bump_version(name, summary.roots)
            else:
                repo.add_roots(name, summary.roots)
                summary.index_version = record.index_version
            if record.status != "active":
                summary.switched_from = repo.activate(name)
            summary.duration_s = time.perf_counter() - t0
            repo.record_run(name, started, summary.to_json())
        for old in summary.switched_from:
            self._retire(old)
        summary.chunks_total = self._store.count(name)
        return summary

    def _check_root(self, root: Path) -> Path:
        if not root.exists():
            raise InputError(f"{root}: no such folder")
        if not root.is_dir():
            raise InputError(f"{root}: not a folder (give the folder that holds the documents)")
        return root.resolve()

    def _audience_for(self, doc_id: str) -> str | None:
        parts = {p.lower() for p in Path(doc_id).parts[:-1]}
        return "operator" if parts & self._operator_dirs else None

    def _scan(
        self, name: str, roots: list[Path], summary: IndexSummary, report: ProgressFn
    ) -> tuple[list[_Pending], dict[str, set[str]]]:
        files: list[tuple[Path, Path]] = []
        for root in roots:
            for path in sorted(root.rglob("*")):
                rel = path.relative_to(root)
                if any(part.startswith(".") for part in rel.parts) or not path.is_file():
                    continue
                if path.suffix.lower() not in SUPPORTED_SUFFIXES:
                    summary.ignored += 1
                    continue
                files.append((root, path))
        with self._engine.connect() as conn:
            known = {str(r): ManifestRepository(conn).files(name, str(r)) for r in roots}
        seen: dict[str, set[str]] = {str(r): set() for r in roots}
        pending: list[_Pending] = []
        for i, (root, path) in enumerate(files):
            doc_id = path.relative_to(root).as_posix()
            report("scan", i, len(files), doc_id)
            seen[str(root)].add(doc_id)
            old = known[str(root)].get(doc_id)
            try:
                st = path.stat()
                if old and old.size == st.st_size and old.mtime_ns == st.st_mtime_ns:
                    summary.unchanged += 1
                    continue
                digest = _sha256(path)
                if old and old.sha256 == digest:
                    summary.unchanged += 1
                    pending.append(_Pending(str(root), doc_id, digest, st.st_size, st.st_mtime_ns, [], False))
                    continue
                doc = parse_file(path, max_bytes=self._max_bytes)
                audience = self._audience_for(doc_id)
                if audience:
                    doc = replace(doc, audience="operator")
                chunks = chunk_document(
                    doc, doc_id=doc_id, max_chars=self._chunk_max, overlap_chars=self._chunk_overlap
                )
                if not chunks:
                    raise DocumentError("no text to index")
            except DocumentError as exc:
                summary.skipped.append((doc_id, str(exc)))
                continue
            except OSError as exc:
                summary.skipped.append((doc_id, f"cannot read: {exc.strerror or exc}"))
                continue
            except Exception as exc:  # a parser bug must not stop the run; it is reported
                log.exception("parser failed on %s", doc_id)
                summary.skipped.append((doc_id, f"parser error: {type(exc).__name__}: {exc}"))
                continue
            pending.append(_Pending(str(root), doc_id, digest, st.st_size, st.st_mtime_ns, chunks, old is None))
        report("scan", len(files), len(files), "")
        return pending, seen

    def _write(
        self, name: str, pending: list[_Pending], sparse: Bm25Encoder, summary: IndexSummary,
        report: ProgressFn,
    ) -> None:
        with self._engine.connect() as conn:
            known = {r: ManifestRepository(conn).files(name, r) for r in {p.root for p in pending}}
        total = sum(len(p.chunks) for p in pending)
        done = 0
        for item in pending:
            old = known[item.root].get(item.doc_id)
            old_ids = set(old.point_ids) if old else set()
            if not item.chunks:  # same bytes, new mtime: remember the mtime only
                rec = FileRecord(item.root, item.doc_id, item.sha256, item.size, item.mtime_ns, sorted(old_ids))
                with self._engine.begin() as conn:
                    ManifestRepository(conn).save_file(name, rec)
                continue
            ids = [point_id(c) for c in item.chunks]
            fresh = [c for c, pid in zip(item.chunks, ids, strict=True) if pid not in old_ids]
            for start in range(0, len(fresh), self._batch):
                batch = fresh[start : start + self._batch]
                texts = [c.embed_text or c.text for c in batch]
                dense = self._embedder.embed_passages(texts)
                self._store.upsert(name, batch, dense, [sparse.encode_document(t) for t in texts])
                done += len(batch)
                report("embed", done, total, item.doc_id)
            done += len(item.chunks) - len(fresh)
            stale = old_ids - set(ids)
            self._store.delete(name, stale)
            rec = FileRecord(item.root, item.doc_id, item.sha256, item.size, item.mtime_ns, ids)
            with self._engine.begin() as conn:
                ManifestRepository(conn).save_file(name, rec)
            summary.chunks_embedded += len(fresh)
            summary.chunks_reused += len(item.chunks) - len(fresh)
            (summary.added if item.is_new else summary.changed).append(item.doc_id)
        report("embed", total, total, "")

    def _delete_missing(
        self, name: str, roots: list[Path], seen: dict[str, set[str]], summary: IndexSummary
    ) -> None:
        for root in roots:
            with self._engine.begin() as conn:
                repo = ManifestRepository(conn)
                for doc_id, rec in repo.files(name, str(root)).items():
                    if doc_id in seen[str(root)]:
                        continue
                    self._store.delete(name, rec.point_ids)
                    repo.delete_file(name, str(root), doc_id)
                    summary.deleted.append(doc_id)

    def _retire(self, old: str) -> None:
        self._store.drop_collection(old)
        with self._engine.begin() as conn:
            ManifestRepository(conn).forget_collection(old)
