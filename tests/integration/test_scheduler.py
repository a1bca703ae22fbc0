"""Scheduled jobs under leases, on SQLite and PostgreSQL: once across schedulers, no overlap,
a dead holder's job taken over, every run recorded."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine

from bot.metrics import Metrics
from bot.scheduler import Job, LeasedScheduler, period_of
from bot.storage.database import Database
from bot.storage.jobs import JobLeaseRepository


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def job(name: str, body: Any, *, min_gap_s: float = 60, lease_s: float = 30) -> Job:
    return Job(name, IntervalTrigger(seconds=60), body, min_gap_s=min_gap_s, lease_s=lease_s)


async def test_two_schedulers_firing_together_run_the_job_once(migrated_engine: Engine) -> None:
    db, clock, runs = Database(migrated_engine), Clock(), []

    async def body() -> dict[str, Any]:
        runs.append(1)
        await asyncio.sleep(0.05)
        return {"done": True}

    metrics = Metrics()
    a = LeasedScheduler(db, clock=clock, holder="replica-a", metrics=metrics)
    b = LeasedScheduler(db, clock=clock, holder="replica-b", metrics=metrics)
    for s in (a, b):
        s.add(job("reindex", body))
    statuses = await asyncio.gather(a.run_once("reindex"), b.run_once("reindex"))
    assert sorted(statuses) == ["ok", "skipped"] and len(runs) == 1
    # The next period: one of them runs it again, once.
    clock.now += timedelta(seconds=61)
    statuses = await asyncio.gather(b.run_once("reindex"), a.run_once("reindex"))
    assert sorted(statuses) == ["ok", "skipped"] and len(runs) == 2
    (state,) = await db.tx(lambda c: JobLeaseRepository(c).states())
    assert state.last_status == "ok" and state.last_detail == {"done": True} and state.lease_until is None
    assert metrics.job_runs.labels(job="reindex", status="ok")._value.get() == 2


async def test_a_slow_run_is_not_overlapped_even_after_its_period(migrated_engine: Engine) -> None:
    db, clock = Database(migrated_engine), Clock()
    release, started = asyncio.Event(), asyncio.Event()

    async def slow() -> dict[str, Any]:
        started.set()
        await release.wait()
        return {}

    s1 = LeasedScheduler(db, clock=clock, holder="a")
    s2 = LeasedScheduler(db, clock=clock, holder="b")
    for s in (s1, s2):
        s.add(job("report", slow, min_gap_s=10, lease_s=300))
    first = asyncio.create_task(s1.run_once("report"))
    await started.wait()
    clock.now += timedelta(seconds=20)  # past the period, within the lease
    assert await s2.run_once("report") == "skipped"
    release.set()
    assert await first == "ok"


async def test_a_job_whose_holder_died_is_taken_over_after_the_lease(migrated_engine: Engine) -> None:
    db, clock = Database(migrated_engine), Clock()
    # A replica took the lease and died: no release ever comes.
    assert await db.tx(lambda c: JobLeaseRepository(c).acquire("tickets", "dead", clock(), lease_s=30, min_gap_s=5))
    runs: list[int] = []

    async def body() -> dict[str, Any]:
        runs.append(1)
        return {}

    alive = LeasedScheduler(db, clock=clock, holder="alive")
    alive.add(job("tickets", body, min_gap_s=5, lease_s=30))
    clock.now += timedelta(seconds=10)
    assert await alive.run_once("tickets") == "skipped" and runs == []
    clock.now += timedelta(seconds=25)  # the dead holder's lease ran out
    assert await alive.run_once("tickets") == "ok" and runs == [1]


async def test_a_failing_run_is_recorded_with_its_error_and_runs_again_next_time(migrated_engine: Engine) -> None:
    db, clock, calls = Database(migrated_engine), Clock(), []

    async def flaky() -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("the knowledge-base share is not mounted")
        return {"added": 3}

    s = LeasedScheduler(db, clock=clock, holder="a")
    s.add(job("reindex", flaky, min_gap_s=60))
    assert await s.run_once("reindex") == "failed"
    (state,) = await db.tx(lambda c: JobLeaseRepository(c).states())
    assert state.last_status == "failed" and "not mounted" in state.last_detail["error"]  # type: ignore[index]
    clock.now += timedelta(seconds=60)
    assert await s.run_once("reindex") == "ok"


def test_the_period_of_a_trigger() -> None:
    from apscheduler.triggers.cron import CronTrigger

    now = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
    assert period_of(IntervalTrigger(minutes=15), now) == 900
    assert period_of(CronTrigger.from_crontab("0 9 * * mon", timezone="UTC"), now) == 7 * 86400
