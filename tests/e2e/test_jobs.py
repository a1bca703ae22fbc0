"""The scheduled jobs' work against the running service: re-indexing with a broken file, the
ticket clock (re-announce, SLA), and the report posted to the operators' chat."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from bot.jobs import post_report, reindex, ticket_clock
from bot.storage.tables import ticket_events
from rag.manifest import kb_runs
from tests.support.fake_telegram import message_update
from tests.support.service import CUSTOMER, OPERATOR_CHAT, RunningService


async def test_reindex_reports_a_broken_file_and_completes(service: RunningService, tmp_path: Path) -> None:
    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "hours.md").write_text("# Часы работы\n\nОтделения работают с 9 до 20 без выходных.\n", encoding="utf-8")
    (kb / "broken.pdf").write_bytes(b"%PDF-1.7 this is not really a pdf")
    (kb / "empty.txt").write_text("", encoding="utf-8")
    service.container.settings.kb.sources = [kb]
    summary = await reindex(service.container)
    assert summary["added"] == ["hours.md"]
    assert sorted(s["file"] for s in summary["skipped"]) == ["broken.pdf", "empty.txt"]
    assert all(s["reason"] for s in summary["skipped"])
    runs = await service.container.db.tx(lambda c: c.execute(select(kb_runs)).mappings().all())
    (run,) = [r for r in runs if str(kb) in r["summary"]["roots"]]  # the run is recorded with its summary
    assert len(run["summary"]["skipped"]) == 2
    again = await reindex(service.container)
    assert again["added"] == [] and again["unchanged"] == 1


async def test_the_ticket_clock_flags_a_ticket_past_its_sla_once(service: RunningService) -> None:
    await service.post_update(message_update(1, user_id=CUSTOMER, text="Какая погода завтра в Архангельске?"))
    await service.telegram.await_for(lambda m: m.chat_id == OPERATOR_CHAT)
    assert (await ticket_clock(service.container))["sla_breached"] == 0
    service.clock.advance(service.container.settings.schedule.ticket_sla_minutes * 60 + 1)
    first = await ticket_clock(service.container)
    assert first["sla_breached"] == 1 and first["reannounced"] == 1
    assert (await ticket_clock(service.container))["sla_breached"] == 0
    (alert,) = await service.telegram.await_for(lambda m: m.chat_id == OPERATOR_CHAT and "⏰" in m.text)
    assert "#1" in alert.text
    kinds = await service.container.db.tx(lambda c: c.execute(select(ticket_events.c.kind)).scalars().all())
    assert kinds.count("sla_breached") == 1


async def test_the_report_goes_to_the_operator_chat(service: RunningService) -> None:
    service.llm.behaviour.reply = "Обслуживание карты «Классик» стоит 99 ₽ в месяц [1]."
    await service.post_update(message_update(1, user_id=CUSTOMER, text="Сколько стоит обслуживание карты «Классик»?"))
    await service.telegram.await_for(lambda m: m.chat_id == CUSTOMER)
    await service.wait_idle()
    result = await post_report(service.container)
    assert result["posted_to"] == 1
    (report,) = await service.telegram.await_for(lambda m: m.chat_id == OPERATOR_CHAT)
    assert len(report.text) <= 1500 and "1" in report.text
