"""`/metrics` scraped and parsed with prometheus-client's parser; `/readyz` naming what failed."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.support.fake_telegram import message_update
from tests.support.service import CUSTOMER, RunningService

CLASSIC = "Сколько стоит обслуживание карты «Классик»?"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_count_what_happened(service: RunningService) -> None:
    service.llm.behaviour.reply = "Обслуживание карты «Классик» стоит 99 ₽ в месяц [1]."
    await service.post_update(message_update(1, user_id=CUSTOMER, text=CLASSIC))
    await service.telegram.await_for(lambda m: m.chat_id == CUSTOMER and "99 ₽" in m.text)
    await service.post_update(message_update(2, user_id=CUSTOMER + 1, text="Какая погода завтра в Архангельске?"))
    await service.telegram.await_for(lambda m: m.chat_id == CUSTOMER + 1)
    await service.wait_idle()
    response = await service.http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    got = samples(response.text)
    assert got[("perimeter_answers_total", (("channel", "telegram"), ("outcome", "answered")))] == 1
    assert got[("perimeter_answers_total", (("channel", "telegram"), ("outcome", "escalated")))] == 1
    escalated = [v for (name, labels), v in got.items() if name == "perimeter_escalations_total"]
    assert sum(escalated) == 1
    assert got[("perimeter_stage_seconds_count", (("stage", "retrieval"),))] == 2
    assert got[("perimeter_stage_seconds_count", (("stage", "model_total"),))] >= 1
    assert got[("perimeter_stage_seconds_count", (("stage", "delivery"),))] == 1
    assert got[("perimeter_tokens_total", (("direction", "completion"),))] > 0
    assert got[("perimeter_inbound_events", (("status", "done"),))] == 2
    assert got[("perimeter_tickets_open", ())] == 1
    assert ("perimeter_model_queue_depth", ()) in got and got[("perimeter_model_circuit_state", ())] == 0


async def test_readyz_is_ready_then_names_the_failed_check(service: RunningService) -> None:
    ready = await service.http.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ready"
    assert set(ready.json()["checks"]) == {"database", "qdrant", "model", "crm"}
    service.llm.behaviour.status = 503  # the model server is down
    down = await service.http.get("/readyz")
    assert down.status_code == 503
    checks = down.json()["checks"]
    assert checks["model"]["ok"] is False and checks["database"]["ok"] is True
    service.llm.behaviour.status = None
    active = service.container.retriever.active_collection()
    service.container.qdrant.delete_collection(active.name)
    gone = (await service.http.get("/readyz")).json()["checks"]
    assert gone["qdrant"]["ok"] is False and "re-index" in gone["qdrant"]["detail"]
