"""Two `perimeter serve` processes sharing PostgreSQL behind the same webhook: a burst split
between them gets exactly one reply per update, and a scheduled job runs once per period.

(Each replica has its own copy of the embedded Qdrant index here — there is no Qdrant server on
the test machines; in production the replicas share a Qdrant server.)
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.storage.database import upgrade
from tests.support.fake_llm_servers import FakeLLMServer
from tests.support.fake_telegram import FakeTelegram, message_update
from tests.support.service import OPERATOR_CHAT, OPERATORS, SECRET, copy_data_dir, copy_manifest

pytestmark = pytest.mark.slow

USERS = 40
PER_USER = 2
TICK_S = 5


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(data: Path, db_url: str, telegram: FakeTelegram, llm: FakeLLMServer, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERIMETER_")}
    env.update({
        "PERIMETER_DATA_DIR": str(data), "PERIMETER_DB_URL": db_url, "PERIMETER_HTTP_PORT": str(port),
        "PERIMETER_TELEGRAM_TOKEN": telegram.token, "PERIMETER_TELEGRAM_API_URL": telegram.url,
        "PERIMETER_TELEGRAM_WEBHOOK_URL": "https://bot.example.test/telegram/webhook",
        "PERIMETER_TELEGRAM_WEBHOOK_SECRET": SECRET, "PERIMETER_TELEGRAM_OPERATOR_CHAT_ID": str(OPERATOR_CHAT),
        "PERIMETER_TELEGRAM_OPERATOR_IDS": f"[{OPERATORS[0]}]", "PERIMETER_TELEGRAM_PER_CHAT_INTERVAL_S": "0",
        "PERIMETER_TELEGRAM_GLOBAL_RATE_PER_S": "1000",
        "PERIMETER_LLM_BACKEND": "openai", "PERIMETER_LLM_OPENAI_URL": llm.url, "PERIMETER_LLM_MODEL": "fake-model",
        "PERIMETER_RAG_CACHE_ENABLED": "false", "PERIMETER_CHAT_RATE_LIMIT_MESSAGES": "100",
        "PERIMETER_SCHEDULE_TICKETS_EVERY_S": str(TICK_S), "PERIMETER_SCHEDULE_REINDEX_MINUTES": "0",
        "PERIMETER_SCHEDULE_REPORT_CRON": "",
    })
    return env


def _serve(cwd: Path, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "bot.cli", "serve"], cwd=cwd, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, env=env)


def _job_runs(text: str) -> Counter[str]:
    runs: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "perimeter_job_runs_total" and s.labels.get("job") == "tickets":
                runs[s.labels["status"]] += int(s.value)
    return runs


async def test_two_replicas_answer_each_update_once_and_run_each_job_once(
    kb_template: Path, tmp_path: Path, telegram: FakeTelegram, fake_llm_server: FakeLLMServer, db_url: str,
) -> None:
    if db_url.startswith("sqlite"):
        pytest.skip("replicas share a database server: PostgreSQL only")
    upgrade(db_url)
    copy_manifest(kb_template / "perimeter.db", db_url)
    fake_llm_server.behaviour.reply = "Обслуживание карты «Классик» стоит 99 ₽ в месяц [1]."
    ports = [_port(), _port()]
    procs, logs = [], []
    for n, port in enumerate(ports):
        data = copy_data_dir(kb_template, tmp_path / f"replica{n}")
        log = tmp_path / f"replica{n}.log"
        logs.append(log)
        procs.append(_serve(tmp_path, log, _env(data, db_url, telegram, fake_llm_server, port)))
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            deadline = time.monotonic() + 90
            for port, proc, log in zip(ports, procs, logs, strict=True):
                while True:
                    assert proc.poll() is None, log.read_text()
                    assert time.monotonic() < deadline, log.read_text()
                    try:
                        if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        await asyncio.sleep(0.2)
            started = time.monotonic()
            updates = [message_update(1000 + i, user_id=20_000 + i % USERS, text="Сколько стоит обслуживание карты?")
                       for i in range(USERS * PER_USER)]

            async def post(update: dict[str, object], port: int) -> int:
                r = await http.post(f"http://127.0.0.1:{port}/telegram/webhook", json=update,
                                    headers={"X-Telegram-Bot-Api-Secret-Token": SECRET})
                return r.status_code

            statuses = await asyncio.gather(*(post(u, ports[i % 2]) for i, u in enumerate(updates)))
            # Telegram retrying a delivery on the other replica: the same update_id again.
            statuses += await asyncio.gather(*(post(u, ports[(i + 1) % 2]) for i, u in enumerate(updates[:10])))
            assert set(statuses) == {200}
            await telegram.await_for(lambda m: m.chat_id >= 20_000 and "99 ₽" in m.text, count=len(updates),
                                     timeout=240)
            await asyncio.sleep(max(0.0, 3 * TICK_S + 1 - (time.monotonic() - started)))
            elapsed = time.monotonic() - started
            runs = Counter[str]()
            for port in ports:
                runs += _job_runs((await http.get(f"http://127.0.0.1:{port}/metrics")).text)
        await asyncio.sleep(1.0)
        answers = Counter(m.chat_id for m in telegram.sent if m.chat_id >= 20_000 and "99 ₽" in m.text)
        assert len(answers) == USERS and set(answers.values()) == {PER_USER}, answers  # none lost, none doubled
        # Both replicas fire the job every TICK_S; across them it ran about once per period.
        assert runs["ok"] >= 2 and runs["ok"] <= elapsed / (0.8 * TICK_S) + 1, (runs, elapsed)
        assert runs["skipped"] >= 1, runs  # the other replica's fire found the job taken
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
