"""Usage records: one row per question handled, the raw material of reports, costs and SLAs.

Written in the same transaction as the answer or the ticket it describes, so the figures and
what customers saw never disagree. ``delivery_s`` is completed by the outbox sender when the
reply's first message has been sent.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import update
from sqlalchemy.engine import Connection

from bot.metrics import Metrics
from bot.storage.events import new_id
from bot.storage.tables import usage_records
from rag.answer import AnswerResult

OUTCOMES = ("answered", "cached", "extractive", "escalated", "failed")


def outcome_of(result: AnswerResult) -> str:
    if result.escalate:
        return "escalated"
    return {"cached": "cached", "extractive": "extractive"}.get(result.mode, "answered")


class UsageLog:
    """Writes usage records and feeds the same figures to the process's metrics."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._metrics = metrics

    def record(
        self, conn: Connection, *, now: datetime, channel: str, audience: str, result: AnswerResult | None = None,
        outcome: str | None = None, reason: str | None = None, language: str = "ru", crm_s: float | None = None,
        answer_id: int | None = None,
    ) -> int:
        """Record one handled question; without ``result`` (a customer asked for a person, or
        handling failed) only the outcome and reason are known."""
        timings = result.timings if result is not None else {}
        usage = result.usage if result is not None else None
        final = outcome or (outcome_of(result) if result is not None else "escalated")
        why = reason if reason is not None else (result.reason if result is not None else None)
        stages = {
            "retrieval": sum(timings.get(k, 0.0) for k in ("prepare", "embed", "search")) if timings else None,
            "crm": crm_s,
            # A failed model call has no usage, but its wait in the queue is in the timings.
            "model_queue": usage.queue_wait_s if usage else timings.get("model_queue"),
            "model_ttft": usage.time_to_first_token_s if usage else None,
            "model_total": usage.total_s if usage else None,
            "total": (timings.get("total", 0.0) + (crm_s or 0.0)) if timings else (crm_s or 0.0),
        }
        row_id = new_id(conn.execute(usage_records.insert().values(
            created_at=now, channel=channel, audience=audience, outcome=final, reason=why,
            language=result.language if result is not None else language,
            model=usage.model if usage else None, backend=usage.backend if usage else None,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            used_customer_data=bool(result and result.used_customer_context),
            retrieval_s=stages["retrieval"], crm_s=crm_s, model_queue_s=stages["model_queue"],
            model_ttft_s=stages["model_ttft"], model_total_s=stages["model_total"], total_s=stages["total"],
            answer_id=answer_id,
        )))
        if self._metrics is not None:
            self._metrics.observe_usage(channel=channel, outcome=final, reason=why, stages=stages,
                                        prompt_tokens=usage.prompt_tokens if usage else 0,
                                        completion_tokens=usage.completion_tokens if usage else 0)
        return row_id

    def delivered(self, conn: Connection, answer_id: int, sent_at: datetime) -> None:
        """The reply to a question reached the channel: how long after the question was answered."""
        rows = conn.execute(
            usage_records.select().where(usage_records.c.answer_id == answer_id,
                                         usage_records.c.delivery_s.is_(None))
        ).mappings().all()
        for row in rows:
            seconds = max(0.0, (sent_at - row["created_at"]).total_seconds())
            conn.execute(update(usage_records).where(usage_records.c.id == row["id"]).values(delivery_s=seconds))
            if self._metrics is not None:
                self._metrics.observe_delivery(seconds)
