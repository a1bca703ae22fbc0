"""Scheduled jobs inside the service (APScheduler), each run under a lease in the database.

APScheduler decides *when* a job fires in this process (interval or cron, no overlap within
the process); ``JobLeaseRepository.acquire`` decides *whether* this process runs it — once per
period across replicas, never two runs at once, a dead holder's job taken over after its
lease. While a job runs its lease is renewed. Every run ends recorded: ok with the job's own
summary, failed with the error, or skipped (another replica has it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Literal

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from sqlalchemy.engine import Connection

from bot.metrics import Metrics
from bot.storage.database import Database
from bot.storage.jobs import JobLeaseRepository

log = logging.getLogger(__name__)

RunStatus = Literal["ok", "failed", "skipped"]


@dataclass(frozen=True)
class Job:
    name: str
    trigger: BaseTrigger
    run: Callable[[], Awaitable[dict[str, Any]]]  # returns the run's summary
    min_gap_s: float  # about the period: replicas firing within it run the job once
    lease_s: float = 600.0


def _renew_lease(conn: Connection, *, name: str, holder: str, until: datetime) -> bool:
    return JobLeaseRepository(conn).renew(name, holder, until)


def period_of(trigger: BaseTrigger, now: datetime) -> float:
    """Seconds between two fires of a trigger, measured from ``now``."""
    first = trigger.get_next_fire_time(None, now)
    second = trigger.get_next_fire_time(first, first + timedelta(microseconds=1)) if first else None
    return (second - first).total_seconds() if first and second else 3600.0


class LeasedScheduler:
    def __init__(self, db: Database, *, clock: Callable[[], datetime], metrics: Metrics | None = None,
                 holder: str | None = None, timezone: str = "UTC") -> None:
        self._db, self._clock, self._metrics = db, clock, metrics
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        self._jobs: dict[str, Job] = {}
        self._scheduler = AsyncIOScheduler(timezone=timezone)

    def add(self, job: Job) -> None:
        self._jobs[job.name] = job
        # max_instances=1: never two runs of one job in this process; coalesce: a backlog of
        # missed fires (the process was paused) is one run, not a burst.
        self._scheduler.add_job(self.run_once, job.trigger, args=[job.name], id=job.name, max_instances=1,
                                coalesce=True, misfire_grace_time=max(30, int(job.min_gap_s / 2)))

    @property
    def jobs(self) -> list[str]:
        return list(self._jobs)

    def start(self) -> None:
        self._scheduler.start()

    async def shutdown(self) -> None:
        self._scheduler.shutdown(wait=False)
        await asyncio.sleep(0)

    async def run_once(self, name: str) -> RunStatus:
        """Run the job now if this process gets its lease; record how it ended."""
        job = self._jobs[name]
        now = self._clock()
        won = await self._db.tx(lambda c: JobLeaseRepository(c).acquire(
            name, self.holder, now, lease_s=job.lease_s, min_gap_s=job.min_gap_s))
        if not won:
            self._count(name, "skipped")
            return "skipped"
        renewing = asyncio.create_task(self._renew(job))
        status: RunStatus = "ok"
        try:
            detail = await job.run()
        except Exception as exc:  # a failing job is recorded and retried at its next time
            log.exception("scheduled job %s failed", name)
            status, detail = "failed", {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        finally:
            renewing.cancel()
        finished = self._clock()
        await self._db.tx(lambda c: JobLeaseRepository(c).release(name, self.holder, finished, status, detail))
        self._count(name, status)
        return status

    async def _renew(self, job: Job) -> None:
        while True:
            await asyncio.sleep(job.lease_s / 3)
            until = self._clock() + timedelta(seconds=job.lease_s)
            try:
                await self._db.tx(partial(_renew_lease, name=job.name, holder=self.holder, until=until))
            except Exception:
                log.warning("could not renew the lease of job %s", job.name)

    def _count(self, name: str, status: RunStatus) -> None:
        if self._metrics is not None:
            self._metrics.job_runs.labels(job=name, status=status).inc()
