"""What the scheduler runs: re-indexing, the ticket clock, the periodic report.

Each job returns a small summary that is kept with its lease record (``job_leases``) and
shown in logs; a job that raises is recorded as failed and runs again at its next time.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.engine import Connection

from bot.composition import Container
from bot.outgoing import Outgoing
from bot.scheduler import Job, LeasedScheduler, period_of
from bot.telegram.render import html_to_plain


async def reindex(c: Container) -> dict[str, Any]:
    """Incremental, like `perimeter index`: a file that fails is reported, the run completes."""
    sources = c.settings.kb.sources
    if not sources:
        return {"skipped": "PERIMETER_KB_SOURCES is empty"}
    summary = await asyncio.to_thread(c.indexer.index, sources)
    await asyncio.to_thread(c.purge_stale_answers)
    data = summary.to_json()
    return {k: data[k] for k in ("added", "changed", "deleted", "skipped", "unchanged", "chunks_total",
                                 "duration_s", "index_version") if k in data}


async def ticket_clock(c: Container) -> dict[str, Any]:
    """Re-announce unclaimed tickets; flag those past their SLA, once each."""
    s = c.settings
    reannounced = await c.operators.reannounce_due(s.telegram.reannounce_after_s)
    overdue: int = await c.db.tx(lambda conn: c.tickets.flag_overdue(conn, s.schedule.ticket_sla_minutes * 60))
    if reannounced or overdue:
        c.notify_outbox()
    return {"reannounced": reannounced, "sla_breached": overdue}


async def post_report(c: Container) -> dict[str, Any]:
    """The short report of the last period, to the operators' chat."""
    from bot.reports import compute_report, short_text

    until = c.clock()
    since = until - timedelta(days=c.settings.schedule.report_days)
    report = await c.db.tx(lambda conn: compute_report(conn, since=since, until=until, cost=c.settings.cost))
    text = short_text(report, lang=c.tickets.desk.language)

    def queue(conn: Connection) -> int:
        sent = 0
        for chat_id, thread_id in c.tickets.desk.destinations():
            if c.outgoing.queue(conn, Outgoing(
                chat_id=chat_id, html=text, plain=html_to_plain(text), kind="report", thread_id=thread_id,
                dedupe_key=f"report:{until.date().isoformat()}:{chat_id}",
            ), until) is not None:
                sent += 1
        return sent

    sent = await c.db.tx(queue) if c.telegram_enabled else 0
    c.notify_outbox()
    return {"since": since.isoformat(), "until": until.isoformat(), "posted_to": sent}


def build_scheduler(c: Container) -> LeasedScheduler:
    s = c.settings.schedule
    scheduler = LeasedScheduler(c.db, clock=c.clock, metrics=c.metrics, timezone=s.timezone)
    now = c.clock()
    if s.reindex_cron or s.reindex_minutes > 0:
        trigger = (CronTrigger.from_crontab(s.reindex_cron, timezone=s.timezone) if s.reindex_cron
                   else IntervalTrigger(seconds=s.reindex_minutes * 60))
        scheduler.add(Job("reindex", trigger, lambda: reindex(c), min_gap_s=0.8 * period_of(trigger, now),
                          lease_s=1800))
    tick = IntervalTrigger(seconds=s.tickets_every_s)
    scheduler.add(Job("tickets", tick, lambda: ticket_clock(c), min_gap_s=0.8 * s.tickets_every_s, lease_s=120))
    if s.report_cron and c.telegram_enabled:
        trigger = CronTrigger.from_crontab(s.report_cron, timezone=s.timezone)
        scheduler.add(Job("report", trigger, lambda: post_report(c), min_gap_s=0.8 * period_of(trigger, now),
                          lease_s=300))
    return scheduler
