"""Runs an evaluation set against retrieval (and, optionally, the whole answer pipeline).

JSONL sets are asked of the service's own index. XQuAD / XQuAD-R carry their own corpus:
it is embedded once into an evaluation collection under the data directory (reused while
the dataset and the embedder stay the same), with the same treatment the knowledge base
gets: title-prefixed text for the dense and BM25 vectors.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from qdrant_client import QdrantClient

from rag.embedders.base import Embedder
from rag.eval.datasets import Candidate, EvalQuestion, EvalSet
from rag.eval.metrics import RetrievalReport, dedupe_sources, first_hit_rank, percentiles, token_f1
from rag.manifest import CollectionRecord
from rag.models import Chunk
from rag.pipeline import AnswerPipeline, AnswerRequest
from rag.retriever import Retriever
from rag.sparse import ENCODER_VERSION, Bm25Encoder, average_length
from rag.store import Fusion, Mode, QdrantStore, SearchFilter

ProgressFn = Callable[[str, int, int], None]
RETRIEVE_K = 30  # chunks fetched per question; merged per source before ranking


@dataclass
class QuestionOutcome:
    question: str
    golds: tuple[str, ...]
    ranked: list[str]
    rank: int | None
    escalated: bool
    expected_escalate: bool
    f1: float | None = None
    answer: str | None = None


@dataclass
class EvalRun:
    name: str
    report: RetrievalReport
    outcomes: list[QuestionOutcome] = field(default_factory=list)


def _chunk(c: Candidate) -> Chunk:
    return Chunk(
        source_id=c.source_id, doc_id=c.source_id.split("#")[0], title=c.title, heading_path=(),
        text=c.text, language=c.language, embed_text=f"{c.title}\n{c.text}" if c.title else c.text,
    )


def candidate_index(
    evalset: EvalSet, *, embedder: Embedder, data_dir: Path, progress: ProgressFn | None = None,
) -> tuple[QdrantClient, CollectionRecord]:
    """Embedded Qdrant collection of the set's candidates, built once per dataset and embedder."""
    assert evalset.candidates is not None
    chunks = [_chunk(c) for c in evalset.candidates]
    # The BM25 encoder version is part of the key: vectors of an older tokeniser must not be reused.
    keyed = [ENCODER_VERSION, *(c.content_hash for c in chunks)]
    digest = hashlib.sha256("\x00".join(keyed).encode()).hexdigest()[:16]
    slug = "".join(ch if ch.isalnum() else "_" for ch in f"{evalset.name}_{embedder.model_id}")
    where = data_dir / "eval" / slug
    where.mkdir(parents=True, exist_ok=True)
    marker = where / "index.json"
    client = QdrantClient(path=str(where / "qdrant"))
    store = QdrantStore(client)
    name = "candidates"
    meta = json.loads(marker.read_text()) if marker.exists() else {}
    if meta.get("digest") != digest or not store.collection_exists(name) or store.count(name) != len(chunks):
        store.drop_collection(name)
        avg_len = average_length([c.embed_text for c in chunks])
        store.ensure_collection(name, embedder.dim)
        bm25 = Bm25Encoder(avg_len=avg_len)
        for start in range(0, len(chunks), 64):
            batch = chunks[start : start + 64]
            texts = [c.embed_text for c in batch]
            store.upsert(name, batch, embedder.embed_passages(texts), [bm25.encode_document(t) for t in texts])
            if progress:
                progress("embed", min(start + 64, len(chunks)), len(chunks))
        meta = {"digest": digest, "avg_len": avg_len, "count": len(chunks), "embedder": embedder.model_id}
        marker.write_text(json.dumps(meta))
    record = CollectionRecord(
        name=name, embedder_id=embedder.model_id, dim=embedder.dim, avg_len=float(meta["avg_len"]),
        status="active", index_version=1, roots=[],
    )
    return client, record


def _audiences(q: EvalQuestion) -> tuple[str, ...]:
    return ("customer", "operator") if q.audience == "operator" else ("customer",)


async def run_eval(
    evalset: EvalSet,
    retriever: Retriever,
    *,
    pipeline: AnswerPipeline | None = None,
    mode: Mode = "hybrid",
    progress: ProgressFn | None = None,
) -> EvalRun:
    """Ranks of the gold sources for every question; with a pipeline, the gate's escalation
    decision for every question and, where a model answers, token F1 against the reference."""
    outcomes: list[QuestionOutcome] = []
    embed_s: list[float] = []
    search_s: list[float] = []
    model_s: list[float] = []
    ttft_s: list[float] = []
    for i, q in enumerate(evalset.questions):
        got = retriever.search(q.question, limit=RETRIEVE_K, flt=SearchFilter(audiences=_audiences(q)), mode=mode)
        embed_s.append(got.embed_s)
        search_s.append(got.search_s)
        ranked = dedupe_sources([h.source_id for h in got.hits])
        expected_escalate = q.expected == "escalate"
        outcome = QuestionOutcome(
            question=q.question, golds=q.sources, ranked=ranked[:10],
            rank=first_hit_rank(q.sources, ranked) if q.sources else None,
            escalated=False, expected_escalate=expected_escalate,
        )
        if pipeline is not None:
            result = await pipeline.answer(AnswerRequest(q.question, audience=q.audience))
            outcome.escalated = result.escalate
            outcome.answer = result.text
            if result.usage is not None:
                model_s.append(result.usage.total_s)
                if result.usage.time_to_first_token_s is not None:
                    ttft_s.append(result.usage.time_to_first_token_s)
                if q.answer and result.mode == "generated":
                    outcome.f1 = token_f1(result.text, q.answer)
        outcomes.append(outcome)
        if progress:
            progress("ask", i + 1, len(evalset.questions))
    answerable = [o for o in outcomes if o.golds]
    unanswerable = [o for o in outcomes if o.expected_escalate]
    extras: dict[str, object] = {
        "dataset": evalset.name,
        "mode": mode,
        "latency_s": {
            "embed": percentiles(embed_s, (50, 95)),
            "search": percentiles(search_s, (50, 95)),
        },
    }
    if model_s:
        extras["latency_s"]["model_total"] = percentiles(model_s, (50, 95))  # type: ignore[index]
        extras["latency_s"]["model_ttft"] = percentiles(ttft_s, (50, 95))  # type: ignore[index]
    if pipeline is not None:
        extras["unanswerable"] = len(unanswerable)
        extras["unanswerable_escalated"] = sum(o.escalated for o in unanswerable)
        extras["answerable_escalated"] = sum(o.escalated for o in answerable)
        f1s = [o.f1 for o in answerable if o.f1 is not None]
        if f1s:
            extras["answer_f1"] = sum(f1s) / len(f1s)
            extras["answer_f1_n"] = len(f1s)
    report = RetrievalReport.from_ranks([o.rank for o in answerable], extras)
    return EvalRun(evalset.name, report, outcomes)


def fixed_collection(record: CollectionRecord) -> Callable[[], CollectionRecord]:
    return lambda: record


def eval_retriever(
    client: QdrantClient, record: CollectionRecord, embedder: Embedder, *, fusion: Fusion, prefetch_k: int = 40
) -> Retriever:
    return Retriever(
        store=QdrantStore(client), embedder=embedder, active=fixed_collection(record),
        prefetch_k=prefetch_k, fusion=fusion,
    )

