"""Job leases: which replica runs a scheduled job, and when it last ran. Never commits.

``acquire`` is one conditional UPDATE, so of several schedulers firing the same job at once
exactly one wins; it wins only if nobody holds an unexpired lease (no overlap with a slow or
still-running run, a dead holder's lease runs out) and the last run started at least
``min_gap_s`` ago (replicas whose timers fire a little apart run the job once per period).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.engine import Connection

from bot.storage.events import insert_ignoring_duplicates
from bot.storage.tables import job_leases


@dataclass(frozen=True)
class JobState:
    name: str
    holder: str | None
    lease_until: datetime | None
    last_started_at: datetime | None
    last_finished_at: datetime | None
    last_status: str | None
    last_detail: dict[str, Any] | None


class JobLeaseRepository:
    def __init__(self, conn: Connection) -> None:
        self._c = conn

    def acquire(self, name: str, holder: str, now: datetime, *, lease_s: float, min_gap_s: float) -> bool:
        insert_ignoring_duplicates(self._c, job_leases, {"name": name}, ["name"])
        t = job_leases
        free = or_(t.c.lease_until.is_(None), t.c.lease_until < now)
        due = or_(t.c.last_started_at.is_(None), t.c.last_started_at <= now - timedelta(seconds=min_gap_s))
        return bool(self._c.execute(
            update(t).where(and_(t.c.name == name, free, due))
            .values(holder=holder, lease_until=now + timedelta(seconds=lease_s), last_started_at=now, last_slot=now)
        ).rowcount)

    def renew(self, name: str, holder: str, until: datetime) -> bool:
        t = job_leases
        return bool(self._c.execute(
            update(t).where(t.c.name == name, t.c.holder == holder).values(lease_until=until)
        ).rowcount)

    def release(self, name: str, holder: str, now: datetime, status: str, detail: dict[str, Any]) -> None:
        t = job_leases
        self._c.execute(update(t).where(t.c.name == name, t.c.holder == holder).values(
            lease_until=None, last_finished_at=now, last_status=status, last_detail=detail))

    def states(self) -> list[JobState]:
        rows = self._c.execute(select(job_leases).order_by(job_leases.c.name)).mappings()
        return [JobState(r["name"], r["holder"], r["lease_until"], r["last_started_at"], r["last_finished_at"],
                         r["last_status"], r["last_detail"]) for r in rows]
