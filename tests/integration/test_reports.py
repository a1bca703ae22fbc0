"""The report's figures on SQLite and PostgreSQL, from a known set of rows, checked exactly.

Every expected value below is worked out by hand in the comments. Percentiles use the
nearest-rank rule: sort the n values, take the one at 1-based rank ⌈p·n/100⌉ (so with 8 values
p50 is the 4th and p95 and p99 the 8th). Money is checked to the cent (and exactly).
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import Connection

from bot.reports import compute_report, render_html, render_table, short_text
from bot.settings import CostSettings
from bot.storage.tables import answers, conversations, feedback, messages, tickets, usage_records, users
from rag.errors import InputError

SINCE = datetime(2025, 3, 3, tzinfo=UTC)
UNTIL = datetime(2025, 3, 5, tzinfo=UTC)  # 48 hours, two UTC days


def at(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2025, 3, day, hour, minute, second, tzinfo=UTC)


class ReportData:
    """Writes the rows a report reads — users, conversations, answers, votes, tickets, usage
    records — with only the columns that matter to it set and the rest given plain defaults."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._users = 0

    def _id(self, stmt: object) -> int:
        return int(self.conn.execute(stmt).inserted_primary_key[0])  # type: ignore[call-overload,index]

    def user(self, when: datetime = SINCE) -> int:
        self._users += 1
        return self._id(users.insert().values(
            channel="telegram", external_id=f"u{self._users}", chat_id=1000 + self._users, display_name="",
            language="ru", language_pinned=False, created_at=when, last_seen_at=when))

    def conversation(self, user_id: int, when: datetime) -> int:
        return self._id(conversations.insert().values(
            user_id=user_id, channel="telegram", started_at=when, last_activity_at=when))

    def answer(self, when: datetime) -> int:
        """An answer to a customer's question (conversation and message included)."""
        user_id = self.user(when)
        conversation_id = self.conversation(user_id, when)
        question = self._id(messages.insert().values(
            conversation_id=conversation_id, user_id=user_id, role="customer", text="?", created_at=when))
        return self._id(answers.insert().values(
            conversation_id=conversation_id, question_message_id=question, channel="telegram", audience="customer",
            mode="generated", escalate=False, confidence=0.9, language="ru", sources=[], timings={},
            created_at=when))

    def vote(self, answer_id: int, value: int, when: datetime) -> None:
        self.conn.execute(feedback.insert().values(answer_id=answer_id, user_id=self.user(when), value=value,
                                                   created_at=when))

    def ticket(self, created: datetime, *, claimed: datetime | None = None, resolved: datetime | None = None,
               reason: str = "customer_request") -> int:
        user_id = self.user(created)
        status = "resolved" if resolved else "claimed" if claimed else "open"
        return self._id(tickets.insert().values(
            user_id=user_id, conversation_id=self.conversation(user_id, created), channel="telegram", reason=reason,
            status=status, active_user_id=None if resolved else user_id, language="ru", transcript=[],
            created_at=created, claimed_at=claimed, resolved_at=resolved))

    def usage(self, when: datetime, outcome: str, *, audience: str = "customer", channel: str = "telegram",
              reason: str | None = None, prompt: int = 0, completion: int = 0, retrieval: float | None = None,
              crm: float | None = None, queue: float | None = None, ttft: float | None = None,
              model: float | None = None, total: float = 0.0, delivery: float | None = None,
              answer_id: int | None = None) -> int:
        return self._id(usage_records.insert().values(
            created_at=when, channel=channel, audience=audience, outcome=outcome, reason=reason, language="ru",
            model="qwen3:8b" if model is not None else None, backend="ollama" if model is not None else None,
            prompt_tokens=prompt, completion_tokens=completion, used_customer_data=False, retrieval_s=retrieval,
            crm_s=crm, model_queue_s=queue, model_ttft_s=ttft, model_total_s=model, total_s=total,
            delivery_s=delivery, answer_id=answer_id))


def known_rows(conn: Connection) -> None:
    """Eleven usage rows in the period, two just outside it, three votes (one outside), seven tickets."""
    d = ReportData(conn)
    a1, a2, a3 = d.answer(SINCE), d.answer(at(3, 9)), d.answer(at(3, 10))
    # 3 March
    d.usage(SINCE, "answered", prompt=1000, completion=200, retrieval=0.1, crm=0.2, queue=0.0, ttft=0.5, model=4.0,
            total=4.5, delivery=0.3, answer_id=a1)  # exactly at `since`: inside (half-open period)
    d.usage(at(3, 9), "answered", prompt=1200, completion=300, retrieval=0.2, queue=0.1, ttft=0.6, model=6.0,
            total=6.5, delivery=0.5, answer_id=a2)
    d.usage(at(3, 10), "cached", retrieval=0.05, total=0.1, delivery=0.2, answer_id=a3)
    d.usage(at(3, 11), "extractive", retrieval=0.3, total=0.4)
    d.usage(at(3, 12), "escalated", reason="low_confidence", retrieval=0.15, total=0.2)
    d.usage(at(3, 23, 59, 59), "escalated", reason="customer_request")  # the button: no pipeline, total 0
    # 4 March
    d.usage(at(4, 0), "answered", audience="operator", channel="widget", prompt=800, completion=100, retrieval=0.25,
            queue=0.2, ttft=0.4, model=2.0, total=2.4)
    d.usage(at(4, 8), "escalated", reason="model_declined", prompt=900, completion=10, retrieval=0.12, queue=0.05,
            ttft=0.3, model=1.0, total=1.3)
    d.usage(at(4, 9), "failed", reason="processing_error")
    d.usage(at(4, 10), "cached", audience="operator", channel="widget", retrieval=0.07, total=0.09)
    d.usage(at(4, 23, 59, 59), "escalated", reason="customer_request")
    # outside: a second before, and exactly at `until` (excluded)
    for when in (SINCE - timedelta(seconds=1), UNTIL):
        d.usage(when, "answered", prompt=99_000, completion=99_000, retrieval=9.0, queue=9.0, ttft=9.0, model=90.0,
                total=99.0, delivery=9.0)
    # votes: two 👍 and one 👎 in the period; a 👍 the day before is ignored
    d.vote(a1, 1, at(3, 1))
    d.vote(a2, -1, at(3, 9, 5))
    d.vote(a3, 1, at(4, 12))
    d.vote(a1, 1, SINCE - timedelta(hours=1))
    # tickets
    d.ticket(at(3, 10), claimed=at(3, 10, 5), resolved=at(3, 11))  # claim 300 s, resolve 3600 s
    d.ticket(at(3, 12), claimed=at(3, 12, 1), resolved=at(4, 12))  # claim 60 s, resolve 86400 s
    d.ticket(at(4, 9), claimed=at(4, 9, 20))  # claim 1200 s, still open at the end
    d.ticket(at(4, 20))  # never claimed, open at the end
    d.ticket(at(2, 23), claimed=at(3, 0, 30), resolved=at(3, 1))  # opened before: claim 5400 s, resolve 7200 s
    d.ticket(at(1, 10), claimed=at(1, 11), resolved=at(2, 10))  # all before the period
    d.ticket(at(4, 23), resolved=at(5, 1))  # resolved after `until`: open at the end


COST = CostSettings(gpu_hourly=36.0, tokens_per_second=None, cloud_input_per_1k=0.3, cloud_output_per_1k=1.2,
                    currency="₽", cloud_name="GPT-4o")


def report_of(engine: Engine, cost: CostSettings = COST, since: datetime = SINCE, until: datetime = UNTIL):  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return compute_report(conn, since=since, until=until, cost=cost)


@pytest.fixture
def engine(migrated_engine: Engine) -> Engine:
    with migrated_engine.begin() as conn:
        known_rows(conn)
    return migrated_engine


def test_counts_shares_and_days(engine: Engine) -> None:
    r = report_of(engine)
    assert (r.period.since, r.period.until, r.period.hours) == (SINCE, UNTIL, 48.0)
    t = r.totals
    assert t.questions == 11
    assert t.by_outcome == {"answered": 3, "cached": 2, "extractive": 1, "escalated": 4, "failed": 1}
    assert t.by_channel == {"telegram": 9, "widget": 2}
    assert t.by_audience == {"customer": 9, "operator": 2}
    # closed without an operator: customer rows not escalated/failed = rows 1-4 of 9 customer rows
    assert (t.customer_questions, t.closed_without_operator) == (9, 4)
    assert t.closed_without_operator_share == pytest.approx(4 / 9)
    assert t.bot_answers == 6  # answered 3 + cached 2 + extractive 1
    assert [(d.day, d.by_outcome, d.total) for d in r.per_day] == [
        (date(2025, 3, 3), {"answered": 2, "cached": 1, "extractive": 1, "escalated": 2, "failed": 0}, 6),
        (date(2025, 3, 4), {"answered": 1, "cached": 1, "extractive": 0, "escalated": 2, "failed": 1}, 5),
    ]
    # escalations: customer rows escalated or failed, by count then name
    assert r.escalations.total == 5 == t.customer_questions - t.closed_without_operator
    assert [(e.reason, e.count) for e in r.escalations.by_reason] == [
        ("customer_request", 2), ("low_confidence", 1), ("model_declined", 1), ("processing_error", 1)]
    assert r.escalations.by_reason[0].share == pytest.approx(0.4)
    assert (r.feedback.up, r.feedback.down) == (2, 1)
    assert r.feedback.up_share == pytest.approx(2 / 3)
    assert (r.cache.hits, r.cache.answers) == (2, 6)
    assert r.cache.hit_rate == pytest.approx(1 / 3)
    # tokens: prompt 1000+1200+800+900, completion 200+300+100+10, over the 4 rows with a model time
    assert (r.tokens.prompt, r.tokens.completion, r.tokens.model_calls) == (3900, 610, 4)
    assert (r.tokens.prompt_per_model_call, r.tokens.completion_per_model_call) == (975.0, 152.5)


def test_percentiles_by_nearest_rank(engine: Engine) -> None:
    r = report_of(engine)
    got = {s.stage: (s.n, s.p50, s.p95, s.p99) for s in r.latency}
    assert got == {
        # .05 .07 .1 .12 .15 .2 .25 .3 → rank 4 = .12; rank ⌈7.6⌉ = 8 = .3; rank ⌈7.92⌉ = 8
        "retrieval": (8, 0.12, 0.3, 0.3),
        "crm": (1, 0.2, 0.2, 0.2),
        "model_queue": (4, 0.05, 0.2, 0.2),  # 0 .05 .1 .2 → rank 2; rank 4
        "model_ttft": (4, 0.4, 0.6, 0.6),  # .3 .4 .5 .6
        "model_total": (4, 2.0, 6.0, 6.0),  # 1 2 4 6
        "delivery": (3, 0.3, 0.5, 0.5),  # .2 .3 .5 → rank ⌈1.5⌉ = 2; rank 3
        # rows with a retrieval time only (the two button presses and the failure are left out):
        # .09 .1 .2 .4 1.3 2.4 4.5 6.5 → rank 4 = .4; rank 8 = 6.5
        "total": (8, 0.4, 6.5, 6.5),
    }


def test_tickets(engine: Engine) -> None:
    t = report_of(engine).tickets
    assert (t.opened, t.claimed, t.resolved, t.open_at_end) == (5, 4, 3, 3)
    assert t.median_time_to_claim_s == 300.0  # 60 300 1200 5400 → rank 2
    assert t.median_time_to_resolve_s == 7200.0  # 3600 7200 86400 → rank 2


def test_cost_to_the_cent(engine: Engine) -> None:
    c = report_of(engine).cost
    # 36 ₽/h; Σ model time 4+6+2+1 = 13 s; Σ completion 610; Σ prompt 3900; 6 bot answers; 48 h
    assert c.tokens_per_second == pytest.approx(610 / 13) and c.tokens_per_second_from == "measured"
    assert c.local_per_1k_tokens == pytest.approx(36 / (610 / 13 * 3600) * 1000)
    assert round(c.local_per_1k_tokens or 0, 2) == 0.21
    assert c.local_time_used == pytest.approx(0.13)  # 36 × 13 / 3600
    assert round(c.local_time_used_per_answer or 0, 2) == 0.02  # 0.13 / 6 = 0.0217
    assert c.fixed == pytest.approx(1728.0)  # 36 × 48
    assert c.fixed_per_answer == pytest.approx(288.0)
    assert c.cloud == pytest.approx(1.902)  # 3.9 × 0.3 + 0.61 × 1.2 = 1.17 + 0.732
    assert round(c.cloud, 2) == 1.90
    assert round(c.cloud_per_answer or 0, 2) == 0.32  # 0.317
    assert round(c.saving_time_used, 2) == 1.77  # 1.902 − 0.13
    assert round(c.saving_fixed, 2) == -1726.10  # 1.902 − 1728
    assert (c.inputs.hourly, c.inputs.hourly_from, c.inputs.model_seconds, c.inputs.answers) == (36.0, "gpu_hourly",
                                                                                                 13.0, 6)
    assert set(c.notes) == {"tokens_per_second", "local_per_1k_tokens", "local_time_used", "fixed", "cloud",
                            "saving_time_used", "saving_fixed"}


def test_configured_speed_and_hardware_hourly(engine: Engine) -> None:
    # 262,800 ₽ over 3 years = 10 ₽/h, plus 0.5 kW × 8 ₽/kWh = 4 ₽/h
    cost = CostSettings(gpu_hourly=None, hardware_price=262_800, hardware_life_years=3, power_kw=0.5,
                        electricity_per_kwh=8, tokens_per_second=50, cloud_input_per_1k=0.3, cloud_output_per_1k=1.2)
    c = report_of(engine, cost).cost
    assert (c.inputs.hourly, c.inputs.hourly_from) == (pytest.approx(14.0), "hardware")
    assert (c.tokens_per_second, c.tokens_per_second_from) == (50, "configured")
    assert c.local_per_1k_tokens == pytest.approx(14 / (50 * 3600) * 1000)  # 0.0778 ₽
    assert c.fixed == pytest.approx(14 * 48)


def test_rows_outside_the_period_are_ignored(engine: Engine) -> None:
    day_before = report_of(engine, since=SINCE - timedelta(days=1), until=SINCE)
    assert day_before.totals.questions == 1  # the row one second before `since`
    assert day_before.tokens.prompt == 99_000
    assert day_before.feedback.up == 1 and day_before.feedback.down == 0
    # 2 March: one ticket opened (23:00), one resolved (the one opened on the 1st)
    assert (day_before.tickets.opened, day_before.tickets.resolved) == (1, 1)
    # one hour inside the period: only the row at `since`
    first_hour = report_of(engine, until=SINCE + timedelta(hours=1))
    assert first_hour.totals.questions == 1 and first_hour.tokens.completion == 200
    assert len(first_hour.per_day) == 1


def test_empty_period(migrated_engine: Engine) -> None:
    r = report_of(migrated_engine)
    assert r.totals.questions == 0 and r.totals.by_outcome == dict.fromkeys(r.totals.by_outcome, 0)
    assert r.totals.closed_without_operator_share is None
    assert [d.total for d in r.per_day] == [0, 0]
    assert all((s.n, s.p50, s.p95, s.p99) == (0, None, None, None) for s in r.latency)
    assert r.escalations.by_reason == () and r.feedback.up_share is None and r.cache.hit_rate is None
    assert r.tokens.prompt_per_model_call is None
    assert r.tickets.median_time_to_claim_s is None and r.tickets.opened == 0
    c = r.cost
    assert c.tokens_per_second is None and c.local_per_1k_tokens is None
    assert (c.local_time_used, c.cloud) == (0.0, 0.0) and c.local_time_used_per_answer is None
    assert c.fixed == pytest.approx(1728.0) and c.saving_fixed == pytest.approx(-1728.0)
    # every view copes
    json.dumps(r.to_json())
    assert "<svg" in render_html(r)
    assert short_text(r)
    render_table(r)


def test_json_round_trip(engine: Engine) -> None:
    data = json.loads(json.dumps(report_of(engine).to_json(), ensure_ascii=False))
    assert data["period"]["since"] == "2025-03-03T00:00:00+00:00"
    assert data["per_day"][0] == {"day": "2025-03-03", "by_outcome": {
        "answered": 2, "cached": 1, "extractive": 1, "escalated": 2, "failed": 0}, "total": 6}
    assert data["latency"][-1] == {"stage": "total", "n": 8, "p50": 0.4, "p95": 6.5, "p99": 6.5}
    assert data["cost"]["inputs"]["currency"] == "₽"


def test_a_bad_period_is_refused(migrated_engine: Engine) -> None:
    with pytest.raises(InputError):
        report_of(migrated_engine, since=UNTIL, until=SINCE)
    with pytest.raises(InputError):
        report_of(migrated_engine, since=SINCE.replace(tzinfo=None))
