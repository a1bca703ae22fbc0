"""Reports for the people who pay for the GPU: what the assistant handled, how fast, how often a
person had to step in, what customers thought of the answers, and what the local model costs
against a cloud API answering the same questions.

Everything comes from ``usage_records`` (one row per handled question, written in the same
transaction as the answer or ticket it describes), ``feedback`` and ``tickets``. Counts and sums
are aggregated in SQL; percentiles are computed in Python with the nearest-rank rule so SQLite and
PostgreSQL give the same figures to the digit (``percentile_cont`` exists on one of them only, and
interpolates values nobody observed).

The period is half-open, ``since <= created_at < until``, and days are UTC days. One ``Report``
feeds every view: the terminal tables (``render_table``), one self-contained HTML page with SVG
charts drawn here (``render_html``), a short message for the operators' chat (``short_text``) and
JSON (``Report.to_json``).
"""

from __future__ import annotations

import dataclasses
import html
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from sqlalchemy import ColumnElement, and_, func, literal_column, or_, select
from sqlalchemy.engine import Connection

from bot.i18n import REASONS, reason_label
from bot.settings import CostSettings
from bot.storage.tables import feedback, tickets, usage_records
from bot.usage import OUTCOMES
from rag.errors import InputError

# Outcomes where the bot itself gave the answer (no person involved).
BOT_ANSWER_OUTCOMES = ("answered", "cached", "extractive")
# Outcomes that hand the question to a person.
OPERATOR_OUTCOMES = ("escalated", "failed")
PERCENTILES = (50, 95, 99)
STAGES = ("retrieval", "crm", "model_queue", "model_ttft", "model_total", "delivery", "total")
SHORT_TEXT_LIMIT = 1500

_U = usage_records.c
_STAGE_COLUMNS = {
    "retrieval": _U.retrieval_s, "crm": _U.crm_s, "model_queue": _U.model_queue_s, "model_ttft": _U.model_ttft_s,
    "model_total": _U.model_total_s, "delivery": _U.delivery_s, "total": _U.total_s,
}

COST_NOTES = {
    "tokens_per_second": "Generated tokens per second of model time: Σ completion tokens ÷ Σ model time (a configured "
                         "value wins). Model time includes reading the prompt, so this is the effective speed.",
    "local_per_1k_tokens": "What 1,000 generated tokens cost on the GPU at that speed: hourly cost ÷ (tokens/s × 3600) "
                           "× 1000.",
    "local_time_used": "Hourly cost × the hours the model was busy on these questions: the marginal cost when the GPU "
                       "also does other work (an upper bound when it serves several requests at once).",
    "fixed": "Hourly cost × every hour of the period, busy or idle: what owning the GPU really costs.",
    "cloud": "The same prompt and completion tokens at the cloud API's prices per 1,000 tokens.",
    "saving_time_used": "Cloud − local model time: the saving on the questions actually answered.",
    "saving_fixed": "Cloud − the GPU's fixed cost: negative means the GPU is not busy enough yet to beat the cloud.",
}
_COST_NOTES_RU = {
    "tokens_per_second": "Сгенерированных токенов в секунду работы модели: Σ токенов ответа ÷ Σ времени модели "
                         "(или значение из настроек). Время модели включает чтение промпта — это реальная скорость.",
    "local_per_1k_tokens": "Сколько стоят 1000 сгенерированных токенов на своём GPU при этой скорости.",
    "local_time_used": "Стоимость часа × часы, когда модель была занята этими вопросами: предельная стоимость, "
                       "если GPU занят и другой работой.",
    "fixed": "Стоимость часа × все часы периода, с работой и без: во что на самом деле обходится свой GPU.",
    "cloud": "Те же токены запроса и ответа по ценам облачного API за 1000 токенов.",
    "saving_time_used": "Облако − время модели: экономия на фактически отвеченных вопросах.",
    "saving_fixed": "Облако − фиксированная стоимость GPU: отрицательная — GPU пока загружен слишком мало, "
                    "чтобы обойти облако.",
}


# --- the report ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    """The half-open interval ``[since, until)`` in UTC."""

    since: datetime
    until: datetime
    hours: float


@dataclass(frozen=True)
class Totals:
    """Counts of usage rows (one per handled question) in the period.

    ``bot_answers`` — rows the bot answered itself: outcome answered, cached or extractive, any
    audience. ``customer_questions`` — rows with audience ``customer`` (every channel).
    ``closed_without_operator`` — those of them whose outcome is not escalated or failed.
    ``closed_without_operator_share`` — closed_without_operator ÷ customer_questions, None when
    there were none. Rows, not conversations: an answer followed by «Позвать оператора» is one
    closed row and one escalated row (the button press is a row of its own).
    """

    questions: int
    by_outcome: dict[str, int]
    by_channel: dict[str, int]
    by_audience: dict[str, int]
    bot_answers: int
    customer_questions: int
    closed_without_operator: int
    closed_without_operator_share: float | None


@dataclass(frozen=True)
class DayCounts:
    """Rows created on one UTC day, by outcome (every outcome present, zeros included)."""

    day: date
    by_outcome: dict[str, int]
    total: int


@dataclass(frozen=True)
class StageLatency:
    """Nearest-rank percentiles of one stage, in seconds, over the rows where it was measured.

    ``total`` covers rows the answer pipeline handled (a retrieval time is recorded): a button press
    for a person or a failed event has no latency worth ranking and would only drag p50 to zero.
    """

    stage: str
    n: int
    p50: float | None
    p95: float | None
    p99: float | None


@dataclass(frozen=True)
class ReasonCount:
    reason: str
    count: int
    share: float  # of all escalations in the period


@dataclass(frozen=True)
class Escalations:
    """Customer rows handed to a person (outcome escalated or failed), by reason; a row without a
    reason counts as ``unknown``. ``total`` = customer_questions − closed_without_operator."""

    total: int
    by_reason: tuple[ReasonCount, ...]


@dataclass(frozen=True)
class FeedbackCounts:
    """Votes cast in the period (``feedback.created_at``); ``up_share`` = up ÷ (up + down)."""

    up: int
    down: int
    up_share: float | None


@dataclass(frozen=True)
class CacheStats:
    """``hit_rate`` = cached ÷ bot answers (answered + cached + extractive): the cache is consulted
    before the model or the extractive fallback, so every answer the bot gave was a lookup."""

    hits: int
    answers: int
    hit_rate: float | None


@dataclass(frozen=True)
class Tokens:
    """Token sums over the period; ``per_model_call`` divides by the rows where the model was
    called (a model time is recorded: generated answers and the ones it declined)."""

    prompt: int
    completion: int
    model_calls: int
    prompt_per_model_call: float | None
    completion_per_model_call: float | None


@dataclass(frozen=True)
class TicketStats:
    """Each figure is counted when its event happens inside the period, so a closed period's
    figures never change: ``opened`` — created in it; ``claimed``/``resolved`` — claimed/resolved in
    it (whenever opened), with the nearest-rank median of created→claimed and created→resolved;
    ``open_at_end`` — created before ``until`` and not resolved by then."""

    opened: int
    claimed: int
    resolved: int
    open_at_end: int
    median_time_to_claim_s: float | None
    median_time_to_resolve_s: float | None


@dataclass(frozen=True)
class CostInputs:
    """What the cost model was given and measured, so a reader can redo the arithmetic."""

    currency: str
    hourly: float
    hourly_from: str  # gpu_hourly | hardware
    hardware_price: float
    hardware_life_years: float
    power_kw: float
    electricity_per_kwh: float
    tokens_per_second_configured: float | None
    cloud_name: str
    cloud_input_per_1k: float
    cloud_output_per_1k: float
    period_hours: float
    model_seconds: float
    prompt_tokens: int
    completion_tokens: int
    answers: int  # the bot's own answers: the "per answer" divisor


@dataclass(frozen=True)
class Cost:
    """Local GPU against a cloud API, in ``inputs.currency``. ``*_per_answer`` divides by the bot's
    own answers (answered + cached + extractive), None when there were none; ``notes`` says what
    each figure means."""

    inputs: CostInputs
    tokens_per_second: float | None
    tokens_per_second_from: str | None  # configured | measured | None (no model time)
    local_per_1k_tokens: float | None
    local_time_used: float
    local_time_used_per_answer: float | None
    fixed: float
    fixed_per_answer: float | None
    cloud: float
    cloud_per_answer: float | None
    saving_time_used: float
    saving_fixed: float
    notes: dict[str, str]


@dataclass(frozen=True)
class Report:
    period: Period
    totals: Totals
    per_day: tuple[DayCounts, ...]
    latency: tuple[StageLatency, ...]
    escalations: Escalations
    feedback: FeedbackCounts
    cache: CacheStats
    tokens: Tokens
    tickets: TicketStats
    cost: Cost

    def stage(self, name: str) -> StageLatency:
        return next(s for s in self.latency if s.stage == name)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types: dates as ISO strings, seconds and money as floats (unrounded)."""
        data: dict[str, Any] = _jsonable(self)
        return data


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


# --- computing it ----------------------------------------------------------------------------


def nearest_rank(sorted_values: Sequence[float], p: int) -> float | None:
    """The p-th percentile by the nearest-rank rule: the value at 1-based rank ⌈p·n/100⌉ of the
    sorted values. Always an observed value (no interpolation), identical on every database."""
    n = len(sorted_values)
    if not n:
        return None
    rank = max(1, -(-p * n // 100))  # integer ceil: no float surprises at 0.95 · 20
    return sorted_values[rank - 1]


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _per(total: float, n: int) -> float | None:
    return total / n if n else None


def _day_key(conn: Connection, column: Any) -> ColumnElement[Any]:
    """The UTC calendar day of a timestamp as 'YYYY-MM-DD', in SQL the dialect understands. The
    constants are inlined, not bound: PostgreSQL must see the GROUP BY expression as the selected one."""
    if conn.dialect.name == "postgresql":
        return func.to_char(func.timezone(literal_column("'UTC'"), column), literal_column("'YYYY-MM-DD'"))
    # SQLite keeps UTC text: 'YYYY-MM-DD HH:MM:SS.ffffff'.
    return func.strftime(literal_column("'%Y-%m-%d'"), column)


def _days(since: datetime, until: datetime) -> list[date]:
    first, last = since.astimezone(UTC).date(), (until.astimezone(UTC) - timedelta(microseconds=1)).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _durations(rows: Iterable[Any]) -> list[float]:
    return sorted((end - start).total_seconds() for start, end in rows)


def compute_report(conn: Connection, *, since: datetime, until: datetime, cost: CostSettings) -> Report:
    """The report for ``since <= t < until`` (timezone-aware datetimes). An empty period gives
    zeros, None for every share, percentile and per-answer figure, and still the GPU's fixed cost."""
    if since.tzinfo is None or until.tzinfo is None:
        raise InputError("the report period needs timezone-aware datetimes")
    if until <= since:
        raise InputError(f"the report period is empty: until ({until.isoformat()}) is not after since")
    period = Period(since.astimezone(UTC), until.astimezone(UTC), (until - since).total_seconds() / 3600)
    in_period = and_(_U.created_at >= since, _U.created_at < until)

    by_outcome = dict.fromkeys(OUTCOMES, 0)
    by_channel: dict[str, int] = {}
    by_audience: dict[str, int] = {}
    customer = closed = 0
    grouped = conn.execute(
        select(_U.outcome, _U.channel, _U.audience, func.count()).where(in_period)
        .group_by(_U.outcome, _U.channel, _U.audience)
    ).all()
    for outcome, channel, audience, n in grouped:
        by_outcome[outcome] = by_outcome.get(outcome, 0) + n
        by_channel[channel] = by_channel.get(channel, 0) + n
        by_audience[audience] = by_audience.get(audience, 0) + n
        if audience == "customer":
            customer += n
            if outcome not in OPERATOR_OUTCOMES:
                closed += n
    questions = sum(by_outcome.values())
    bot_answers = sum(by_outcome[o] for o in BOT_ANSWER_OUTCOMES)
    totals = Totals(
        questions=questions, by_outcome=by_outcome,
        by_channel=dict(sorted(by_channel.items(), key=lambda kv: (-kv[1], kv[0]))),
        by_audience=dict(sorted(by_audience.items(), key=lambda kv: (-kv[1], kv[0]))),
        bot_answers=bot_answers, customer_questions=customer, closed_without_operator=closed,
        closed_without_operator_share=_share(closed, customer),
    )

    day = _day_key(conn, _U.created_at).label("day")
    per_day_counts: dict[str, dict[str, int]] = {}
    for key, outcome, n in conn.execute(
        select(day, _U.outcome, func.count()).where(in_period).group_by(day, _U.outcome)
    ).all():
        per_day_counts.setdefault(str(key), dict.fromkeys(OUTCOMES, 0))[outcome] = n
    per_day = tuple(
        DayCounts(d, counts, sum(counts.values()))
        for d in _days(since, until)
        for counts in [per_day_counts.get(d.isoformat(), dict.fromkeys(OUTCOMES, 0))]
    )

    latency = []
    for stage in STAGES:
        column = _STAGE_COLUMNS[stage]
        measured = _U.retrieval_s.is_not(None) if stage == "total" else column.is_not(None)
        values = sorted(float(v) for v in conn.execute(select(column).where(in_period, measured)).scalars())
        p50, p95, p99 = (nearest_rank(values, p) for p in PERCENTILES)
        latency.append(StageLatency(stage, len(values), p50, p95, p99))

    reasons: dict[str, int] = {}
    for reason, n in conn.execute(
        select(_U.reason, func.count())
        .where(in_period, _U.audience == "customer", _U.outcome.in_(OPERATOR_OUTCOMES)).group_by(_U.reason)
    ).all():
        reasons[reason or "unknown"] = reasons.get(reason or "unknown", 0) + n
    escalated = sum(reasons.values())
    escalations = Escalations(escalated, tuple(
        ReasonCount(r, n, n / escalated) for r, n in sorted(reasons.items(), key=lambda rn: (-rn[1], rn[0]))
    ))

    votes: dict[int, int] = dict(conn.execute(
        select(feedback.c.value, func.count())
        .where(feedback.c.created_at >= since, feedback.c.created_at < until).group_by(feedback.c.value)
    ).all())
    up, down = int(votes.get(1, 0)), int(votes.get(-1, 0))
    fb = FeedbackCounts(up, down, _share(up, up + down))

    cache = CacheStats(by_outcome["cached"], bot_answers, _share(by_outcome["cached"], bot_answers))

    prompt, completion, model_calls, model_seconds = conn.execute(
        select(func.coalesce(func.sum(_U.prompt_tokens), 0), func.coalesce(func.sum(_U.completion_tokens), 0),
               func.count(_U.model_total_s), func.coalesce(func.sum(_U.model_total_s), 0.0)).where(in_period)
    ).one()
    prompt, completion, model_calls, model_seconds = int(prompt), int(completion), int(model_calls), float(
        model_seconds)
    tokens = Tokens(prompt, completion, model_calls, _per(prompt, model_calls), _per(completion, model_calls))

    tc = tickets.c
    opened = conn.execute(
        select(func.count()).select_from(tickets).where(tc.created_at >= since, tc.created_at < until)
    ).scalar_one()
    to_claim = _durations(conn.execute(
        select(tc.created_at, tc.claimed_at).where(tc.claimed_at >= since, tc.claimed_at < until)).all())
    to_resolve = _durations(conn.execute(
        select(tc.created_at, tc.resolved_at).where(tc.resolved_at >= since, tc.resolved_at < until)).all())
    open_at_end = conn.execute(
        select(func.count()).select_from(tickets)
        .where(tc.created_at < until, or_(tc.resolved_at.is_(None), tc.resolved_at >= until))
    ).scalar_one()
    ticket_stats = TicketStats(int(opened), len(to_claim), len(to_resolve), int(open_at_end),
                               nearest_rank(to_claim, 50), nearest_rank(to_resolve, 50))

    return Report(period, totals, per_day, tuple(latency), escalations, fb, cache, tokens, ticket_stats,
                  _cost(cost, period, prompt, completion, model_seconds, bot_answers))


def _cost(cfg: CostSettings, period: Period, prompt: int, completion: int, model_seconds: float,
          answers: int) -> Cost:
    hourly = cfg.hourly
    if cfg.tokens_per_second is not None:
        tps: float | None = cfg.tokens_per_second
        tps_from: str | None = "configured"
    elif model_seconds > 0 and completion > 0:
        tps, tps_from = completion / model_seconds, "measured"
    else:
        tps, tps_from = None, None
    local_used = hourly * model_seconds / 3600
    fixed = hourly * period.hours
    cloud = prompt / 1000 * cfg.cloud_input_per_1k + completion / 1000 * cfg.cloud_output_per_1k
    inputs = CostInputs(
        currency=cfg.currency, hourly=hourly, hourly_from="gpu_hourly" if cfg.gpu_hourly is not None else "hardware",
        hardware_price=cfg.hardware_price, hardware_life_years=cfg.hardware_life_years, power_kw=cfg.power_kw,
        electricity_per_kwh=cfg.electricity_per_kwh, tokens_per_second_configured=cfg.tokens_per_second,
        cloud_name=cfg.cloud_name, cloud_input_per_1k=cfg.cloud_input_per_1k,
        cloud_output_per_1k=cfg.cloud_output_per_1k, period_hours=period.hours, model_seconds=model_seconds,
        prompt_tokens=prompt, completion_tokens=completion, answers=answers,
    )
    return Cost(
        inputs=inputs, tokens_per_second=tps, tokens_per_second_from=tps_from,
        local_per_1k_tokens=hourly / (tps * 3600) * 1000 if tps else None,
        local_time_used=local_used, local_time_used_per_answer=_per(local_used, answers),
        fixed=fixed, fixed_per_answer=_per(fixed, answers), cloud=cloud, cloud_per_answer=_per(cloud, answers),
        saving_time_used=cloud - local_used, saving_fixed=cloud - fixed, notes=dict(COST_NOTES),
    )


# --- parsing the period --------------------------------------------------------------------

_SINCE = re.compile(r"\s*(\d{1,6})\s*([mhdw])\s*")
_UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}
_MAX_SPAN = timedelta(days=3660)


def parse_since(text: str) -> timedelta:
    """"30m", "24h", "7d", "2w" → a timedelta; anything else (no unit, zero, months, over ten
    years) is an InputError that shows the accepted forms."""
    match = _SINCE.fullmatch(text or "")
    if not match:
        raise InputError(f"--since {text!r}: give a number and a unit m, h, d or w (30m, 24h, 7d, 2w)")
    span = int(match.group(1)) * _UNITS[match.group(2)]
    if not span:
        raise InputError(f"--since {text!r}: the period must be longer than zero")
    if span > _MAX_SPAN:
        raise InputError(f"--since {text!r}: at most ten years")
    return span


# --- formatting --------------------------------------------------------------------------------

NBSP = "\u00a0"
MINUS = "−"

OUTCOME_LABELS = {
    "answered": ("Ответ модели", "model answer"),
    "cached": ("Из кэша", "cached"),
    "extractive": ("Цитата без модели", "extractive"),
    "escalated": ("Оператору", "escalated"),
    "failed": ("Ошибка", "failed"),
}
OUTCOME_COLORS = {
    "answered": "#2563eb", "cached": "#7dd3fc", "extractive": "#8b5cf6", "escalated": "#f59e0b", "failed": "#dc2626",
}
STAGE_LABELS = {
    "retrieval": ("Поиск по базе знаний", "retrieval"),
    "crm": ("Запрос в CRM", "CRM"),
    "model_queue": ("Очередь к модели", "model queue"),
    "model_ttft": ("Первый токен", "time to first token"),
    "model_total": ("Генерация целиком", "model total"),
    "delivery": ("Доставка ответа", "delivery"),
    "total": ("Всего на вопрос", "total"),
}
PCT_COLORS = {50: "#93c5fd", 95: "#3b82f6", 99: "#1e3a8a"}


def _num(x: float, digits: int = 0, lang: str = "ru") -> str:
    """Thousands grouped, Russian with a non-breaking space and a decimal comma; a real minus sign,
    and none for a value that rounds to zero."""
    text = f"{abs(x):,.{digits}f}"
    negative = x < 0 and any(ch not in "0,." for ch in text)
    if lang == "ru":
        text = text.replace(",", "\0").replace(".", ",").replace("\0", NBSP)
    return (MINUS if negative else "") + text


def _pct(share: float | None, lang: str = "ru", digits: int = 0) -> str:
    if share is None:
        return "—"
    return _num(share * 100, digits, lang) + (f"{NBSP}%" if lang == "ru" else "%")


def _money(x: float | None, currency: str, lang: str = "ru", digits: int = 2) -> str:
    return "—" if x is None else f"{_num(x, digits, lang)}{NBSP}{currency}"


def _signed_money(x: float, currency: str, lang: str = "ru", digits: int = 2) -> str:
    return ("+" if x > 0 and round(x, digits) else "") + _money(x, currency, lang, digits)


def _ms(seconds: float | None, lang: str = "ru") -> str:
    if seconds is None:
        return "—"
    ms = seconds * 1000
    return _num(ms, 1 if ms < 10 else 0, lang) + (f"{NBSP}мс" if lang == "ru" else " ms")


def _secs(seconds: float | None, lang: str = "ru") -> str:
    """A latency for a headline: "850 мс", "3,4 с"."""
    if seconds is None:
        return "—"
    if seconds < 1:
        return _ms(seconds, lang)
    return _num(seconds, 1, lang) + (f"{NBSP}с" if lang == "ru" else " s")


def _duration(seconds: float | None, lang: str = "ru") -> str:
    """A waiting time: "45 с", "12 мин", "1 ч 20 мин", "2 д 3 ч"."""
    if seconds is None:
        return "—"
    d, h, m, s = ("д", "ч", "мин", "с") if lang == "ru" else ("d", "h", "min", "s")
    total = round(seconds)
    if total < 60:
        return f"{total}{NBSP}{s}"
    days, rest = divmod(total // 60, 24 * 60)
    hours, minutes = divmod(rest, 60)
    if days:
        return f"{days}{NBSP}{d} {hours}{NBSP}{h}" if hours else f"{days}{NBSP}{d}"
    if hours:
        return f"{hours}{NBSP}{h} {minutes}{NBSP}{m}" if minutes else f"{hours}{NBSP}{h}"
    return f"{minutes}{NBSP}{m}"


def _whole_days(p: Period) -> bool:
    return p.since.time() == p.until.time() == datetime.min.time()


def _period_text(p: Period, *, short: bool = False) -> str:
    """"01.03.2025 00:00 — 01.04.2025 00:00 UTC"; short: "01.03–31.03.2025" for whole UTC days (the
    last day inclusive), "30.03 14:37 – 31.03 14:37 UTC" for a rolling period."""
    if not short:
        return f"{p.since:%d.%m.%Y %H:%M} — {p.until:%d.%m.%Y %H:%M} UTC"
    if not _whole_days(p):
        return f"{p.since:%d.%m %H:%M} – {p.until:%d.%m.%Y %H:%M} UTC"
    last = p.until - timedelta(days=1)
    if last.date() == p.since.date():
        return f"{last:%d.%m.%Y}"
    start = f"{p.since:%d.%m}" if p.since.year == last.year else f"{p.since:%d.%m.%Y}"
    return f"{start}–{last:%d.%m.%Y}"


def _reason_ru(reason: str) -> str:
    """The Russian label of a reason; an unknown one keeps its (cut) code so it stays traceable."""
    if reason in REASONS:
        return reason_label("ru", reason)
    return f"{reason_label('ru', None)}: {reason[:40]}"


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _reason_en(reason: str) -> str:
    return reason_label("en", reason) if reason in REASONS else f"{reason_label('en', None)}: {reason[:40]}"


# --- the terminal --------------------------------------------------------------------------


def render_table(report: Report) -> RenderableType:
    """Tables for the terminal: overview, latency percentiles in ms, escalations, cost. Every data
    string goes in as ``Text`` so a reason or channel name is never read as Rich markup."""
    r, en = report, "en"
    overview = Table(title=f"Perimeter report · {_period_text(r.period)} · {_num(r.period.hours, 1, en)} h",
                     title_justify="left")
    overview.add_column("figure")
    overview.add_column("value", justify="right")
    overview.add_column("", style="dim")
    q = r.totals.questions
    overview.add_row("questions", _num(q, 0, en), "one row per handled question")
    for outcome, n in r.totals.by_outcome.items():
        overview.add_row(f"  {outcome}", _num(n, 0, en), _pct(_share(n, q), en))
    for channel, n in r.totals.by_channel.items():
        overview.add_row(Text(f"  channel {channel}"), _num(n, 0, en), _pct(_share(n, q), en))
    for audience, n in r.totals.by_audience.items():
        overview.add_row(Text(f"  audience {audience}"), _num(n, 0, en), _pct(_share(n, q), en))
    overview.add_row("closed without an operator", _pct(r.totals.closed_without_operator_share, en, 1),
                     f"{r.totals.closed_without_operator} of {r.totals.customer_questions} customer questions")
    overview.add_row("cache hit rate", _pct(r.cache.hit_rate, en, 1), f"{r.cache.hits} of {r.cache.answers} answers")
    overview.add_row("feedback up / down", f"{r.feedback.up} / {r.feedback.down}", _pct(r.feedback.up_share, en, 1))
    overview.add_row("tokens in / out", f"{_num(r.tokens.prompt, 0, en)} / {_num(r.tokens.completion, 0, en)}",
                     f"{r.tokens.model_calls} model calls")
    per = r.tokens
    per_call = ("—" if per.prompt_per_model_call is None else
                f"{_num(per.prompt_per_model_call, 0, en)} / {_num(per.completion_per_model_call or 0, 0, en)}")
    overview.add_row("tokens per model call in / out", per_call, "")
    t = r.tickets
    overview.add_row("tickets opened / resolved", f"{t.opened} / {t.resolved}", f"{t.open_at_end} open at the end")
    overview.add_row("median time to claim / resolve",
                     f"{_duration(t.median_time_to_claim_s, en)} / {_duration(t.median_time_to_resolve_s, en)}", "")

    latency = Table(title="Latency, ms (nearest-rank percentiles)", title_justify="left")
    for name, justify in (("stage", "left"), ("n", "right"), ("p50", "right"), ("p95", "right"), ("p99", "right")):
        latency.add_column(name, justify=justify)  # type: ignore[arg-type]
    for s in r.latency:
        latency.add_row(s.stage, str(s.n), *(_ms(v, en).removesuffix(" ms") for v in (s.p50, s.p95, s.p99)))

    escalations = Table(title=f"Escalations to an operator: {r.escalations.total}", title_justify="left")
    escalations.add_column("reason")
    escalations.add_column("")
    escalations.add_column("count", justify="right")
    escalations.add_column("share", justify="right")
    for rc in r.escalations.by_reason:
        escalations.add_row(Text(rc.reason), Text(_reason_en(rc.reason), style="dim"), str(rc.count),
                            _pct(rc.share, en, 1))
    if not r.escalations.by_reason:
        escalations.add_row("none", "", "0", "—")

    c, cur = r.cost, r.cost.inputs.currency
    cost = Table(title=Text(f"Cost, {cur} · GPU {_num(c.inputs.hourly, 2, en)} {cur}/h · vs {c.inputs.cloud_name}"),
                 title_justify="left")
    cost.add_column("figure")
    cost.add_column("total", justify="right")
    cost.add_column("per answer", justify="right")
    cost.add_column("what it means", style="dim", overflow="fold")
    tps = "—" if c.tokens_per_second is None else f"{_num(c.tokens_per_second, 1, en)} ({c.tokens_per_second_from})"
    cost.add_row("tokens/s", tps, "", Text(c.notes["tokens_per_second"]))
    cost.add_row("local per 1k generated tokens", Text(_money(c.local_per_1k_tokens, cur, en, 4)), "",
                 Text(c.notes["local_per_1k_tokens"]))
    for label, total, each, note in (
        ("local, model time used", c.local_time_used, c.local_time_used_per_answer, "local_time_used"),
        ("local, GPU fixed cost", c.fixed, c.fixed_per_answer, "fixed"),
        ("cloud equivalent", c.cloud, c.cloud_per_answer, "cloud"),
    ):
        cost.add_row(label, Text(_money(total, cur, en)), Text(_money(each, cur, en, 4)), Text(c.notes[note]))
    cost.add_row("saving vs time used", Text(_signed_money(c.saving_time_used, cur, en)), "",
                 Text(c.notes["saving_time_used"]), style="green" if c.saving_time_used >= 0 else "red")
    cost.add_row("saving vs fixed cost", Text(_signed_money(c.saving_fixed, cur, en)), "",
                 Text(c.notes["saving_fixed"]), style="green" if c.saving_fixed >= 0 else "red")
    return Group(overview, latency, escalations, cost)


# --- the operators' chat -------------------------------------------------------------------

_SHORT = {
    "ru": {
        "title": "Perimeter · отчёт за {period}",
        "questions": "Вопросов: <b>{n}</b> · без оператора: <b>{closed}</b>",
        "latency": "Время ответа: p95 <b>{p95}</b> (p50 {p50})",
        "feedback": "👍 {up} · 👎 {down} ({share} полезно)",
        "no_feedback": "Оценок нет",
        "reasons": "Передано оператору: {n}",
        "cost": "Свой GPU: {fixed} за период, из них {used} — время модели",
        "cloud": "Облако, {cloud_name}: {cloud}",
        "saving": "Экономия: <b>{fixed}</b> к GPU за период, {used} к времени модели",
        "empty": "<i>За период вопросов не было.</i>",
    },
    "en": {
        "title": "Perimeter · report for {period}",
        "questions": "Questions: <b>{n}</b> · closed without an operator: <b>{closed}</b>",
        "latency": "Response time: p95 <b>{p95}</b> (p50 {p50})",
        "feedback": "👍 {up} · 👎 {down} ({share} helpful)",
        "no_feedback": "No votes",
        "reasons": "Handed to an operator: {n}",
        "cost": "Own GPU: {fixed} for the period, {used} of it model time",
        "cloud": "Cloud, {cloud_name}: {cloud}",
        "saving": "Saving: <b>{fixed}</b> against the GPU for the period, {used} against model time",
        "empty": "<i>No questions in this period.</i>",
    },
}


def _tg(value: object) -> str:
    return html.escape(str(value), quote=False)


def short_text(report: Report, lang: str = "ru") -> str:
    """The report for the operators' chat in Telegram HTML (only <b> and <i>), at most 1,500
    characters: the top three escalation reasons and a cloud name cut to fit, every data string
    escaped. The figures are the same as in the full report."""
    lang = lang if lang in _SHORT else "ru"
    s, r = _SHORT[lang], report
    cur = r.cost.inputs.currency[:10]
    total = r.stage("total")
    lines = [f"<b>{_tg(s['title'].format(period=_period_text(r.period, short=True)))}</b>"]
    if not r.totals.questions:
        lines.append(s["empty"])
    lines.append(s["questions"].format(n=_tg(_num(r.totals.questions, 0, lang)),
                                       closed=_tg(_pct(r.totals.closed_without_operator_share, lang))))
    lines.append(s["latency"].format(p95=_tg(_secs(total.p95, lang)), p50=_tg(_secs(total.p50, lang))))
    if r.feedback.up or r.feedback.down:
        lines.append(s["feedback"].format(up=r.feedback.up, down=r.feedback.down,
                                          share=_tg(_pct(r.feedback.up_share, lang))))
    else:
        lines.append(s["no_feedback"])
    if r.escalations.total:
        lines.append(s["reasons"].format(n=r.escalations.total))
        label = _reason_ru if lang == "ru" else _reason_en
        for rc in r.escalations.by_reason[:3]:
            lines.append(f"• {_tg(label(rc.reason))} — {rc.count} ({_tg(_pct(rc.share, lang))})")
    c = r.cost
    lines.append(_tg(s["cost"].format(fixed=_money(c.fixed, cur, lang), used=_money(c.local_time_used, cur, lang))))
    lines.append(_tg(s["cloud"].format(cloud_name=_cut(c.inputs.cloud_name, 60), cloud=_money(c.cloud, cur, lang))))
    lines.append(s["saving"].format(fixed=_tg(_signed_money(c.saving_fixed, cur, lang)),
                                    used=_tg(_signed_money(c.saving_time_used, cur, lang))))
    text = "\n".join(lines)
    while len(text) > SHORT_TEXT_LIMIT and len(lines) > 1:  # only a pathological currency gets here
        lines.pop(-2)
        text = "\n".join(lines)
    return text[:SHORT_TEXT_LIMIT]


# --- the HTML page -------------------------------------------------------------------------


def _e(value: object) -> str:
    """Every data string in the page goes through here (quotes too: some land in attributes)."""
    return html.escape(str(value), quote=True)


def _nice_step(top: float, ticks: int = 4, *, integer: bool = False) -> float:
    """A 1-2-2.5-5 step so that ``ticks`` steps cover ``top``; whole numbers for counts."""
    if top <= 0:
        return 1.0
    raw = top / ticks
    mag = 10 ** math.floor(math.log10(raw))
    step = next((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw and not (integer and (m * mag) % 1)), 1.0)
    return max(1.0, step) if integer else step


def _tick(x: float, scale: float) -> str:
    """An axis label; one style per axis (thousands only when the axis reaches 100,000)."""
    if scale >= 100_000:
        return _num(x / 1000, 0 if not (x / 1000) % 1 else 1) + NBSP + "тыс."
    return _num(x, 0 if x == int(x) else 1)


def _text_on(fill: str) -> str:
    """Black or white text, whichever reads better on ``fill`` (#rrggbb)."""
    r, g, b = (int(fill[i:i + 2], 16) for i in (1, 3, 5))
    return "#111827" if 0.299 * r + 0.587 * g + 0.114 * b > 150 else "#ffffff"


def _f(x: float) -> str:
    return f"{x:.3f}".rstrip("0").rstrip(".")


def _svg(height: float, label: str, body: Iterable[str]) -> str:
    """One chart. No viewBox: x is in percent of the page's width and y in pixels, so bars stretch
    with the page while text keeps its size at 390 px and at 1024 px alike."""
    return (f'<svg class="chart" width="100%" height="{_f(height)}" role="img" aria-label="{_e(label)}" '
            f'xmlns="http://www.w3.org/2000/svg">' + "".join(body) + "</svg>")


def _bar_value(x_pct: float, w_pct: float, y: float, h: float, text: str, fill: str) -> str:
    """A value label at the end of a horizontal bar: inside it when the bar is long, after it otherwise."""
    if w_pct >= 55:
        return (f'<text x="{_f(x_pct + w_pct)}%" dx="-6" y="{_f(y + h / 2)}" dy="0.35em" text-anchor="end" '
                f'class="v" fill="{_text_on(fill)}">{_e(text)}</text>')
    return (f'<text x="{_f(x_pct + w_pct)}%" dx="6" y="{_f(y + h / 2)}" dy="0.35em" class="v" '
            f'fill="#111827">{_e(text)}</text>')


def _hbar_rows(rows: Sequence[tuple[str, str, Sequence[tuple[float, str, str, str]]]], top: float,
               *, bar_h: float = 16, axis: str | None = None, integer: bool = False) -> tuple[list[str], float]:
    """Horizontal bars on one shared scale. Each row: a label line (Russian, then English in grey)
    and one or more bars ``(value, value text, colour, tooltip)``. Returns the parts and the height."""
    parts: list[str] = []
    step = _nice_step(top, integer=integer)
    scale = step * max(1, math.ceil(top / step)) if top > 0 else 1.0
    y = 0.0
    grid_top = 22.0
    for label, label_en, bars in rows:
        y += 18
        en = f'<tspan class="en" lang="en"> · {_e(label_en)}</tspan>' if label_en else ""
        parts.append(f'<text x="0" y="{_f(y)}" class="l">{_e(label)}{en}</text>')
        y += 6
        for value, text, fill, tip in bars:
            w = 0.0 if value <= 0 else max(0.4, min(100.0, value / scale * 100))
            parts.append(f'<rect x="0%" y="{_f(y)}" width="{_f(w)}%" height="{_f(bar_h)}" rx="2" fill="{fill}">'
                         f"<title>{_e(tip)}</title></rect>")
            parts.append(_bar_value(0.0, w, y, bar_h, text, fill))
            y += bar_h + 3
        y += 8
    grid_bottom = y
    if axis is not None:
        grid = []
        for i in range(round(scale / step) + 1):
            x = i * step / scale * 100
            anchor = "start" if i == 0 else "end" if x >= 99.9 else "middle"
            grid.append(f'<line x1="{_f(x)}%" x2="{_f(x)}%" y1="{_f(grid_top)}" y2="{_f(grid_bottom)}" class="g"/>')
            tick = _tick(i * step, scale) + (f"{NBSP}{axis}" if x >= 99.9 and axis else "")
            grid.append(f'<text x="{_f(x)}%" y="{_f(grid_bottom + 14)}" text-anchor="{anchor}" class="t">'
                        f"{_e(tick)}</text>")
        parts = grid + parts
        y = grid_bottom + 20
    return parts, y


def _daily_chart(report: Report) -> str:
    days = report.per_day
    height, top, bottom, gutter = 250.0, 14.0, 218.0, 10.0
    peak = max((d.total for d in days), default=0)
    step = _nice_step(max(peak, 1), integer=True)
    scale = step * max(1, math.ceil(peak / step))
    parts: list[str] = []
    ticks = round(scale / step) if peak else 0  # an empty period: the baseline only
    for i in range(ticks + 1):
        value = i * step
        y = bottom - value / scale * (bottom - top)
        base = " b" if i == 0 else ""
        parts.append(f'<line x1="{_f(gutter)}%" x2="100%" y1="{_f(y)}" y2="{_f(y)}" class="g{base}"/>')
        parts.append(f'<text x="{_f(gutter)}%" dx="-6" y="{_f(y)}" dy="0.35em" text-anchor="end" class="t">'
                     f"{_e(_tick(value, scale))}</text>")
    n = max(1, len(days))
    slot = (100 - gutter) / n
    # Day labels that fit a phone: each day up to 8 days, every other day up to two weeks, then weekly.
    label_every = 1 if n <= 8 else 2 if n <= 14 else 7 if n <= 49 else math.ceil(n / 7)
    for i, d in enumerate(days):
        x = gutter + i * slot + slot * 0.15
        w = slot * 0.7
        y = bottom
        tip = f"{d.day:%d.%m.%Y}: " + ", ".join(
            f"{OUTCOME_LABELS[o][0].lower()} {c}" for o, c in d.by_outcome.items() if c and o in OUTCOME_LABELS)
        for outcome in OUTCOMES:
            count = d.by_outcome.get(outcome, 0)
            if not count:
                continue
            h = count / scale * (bottom - top)
            y -= h
            parts.append(f'<rect x="{_f(x)}%" y="{_f(y)}" width="{_f(w)}%" height="{_f(h)}" '
                         f'fill="{OUTCOME_COLORS[outcome]}"><title>{_e(tip or d.day.isoformat())}</title></rect>')
        if i % label_every == 0 or (i == n - 1 and n <= 8):
            cx = gutter + (i + 0.5) * slot
            anchor = "end" if i == n - 1 and n > 8 else "middle"
            cx = gutter + (i + 1) * slot if anchor == "end" else cx
            parts.append(f'<text x="{_f(cx)}%" y="{_f(bottom + 18)}" text-anchor="{anchor}" class="t">'
                         f"{_e(f'{d.day:%d.%m}')}</text>")
    if not peak:
        parts.append(f'<text x="55%" y="{_f((top + bottom) / 2)}" text-anchor="middle" class="t">'
                     "нет вопросов за период</text>")
    return _svg(height, "Вопросов в день по исходу", parts)


def _legend(items: Iterable[tuple[str, str, str]]) -> str:
    return '<ul class="legend">' + "".join(
        f'<li><span class="sw" style="background:{color}"></span>{_e(ru)} <span class="en" lang="en">{_e(en)}</span>'
        "</li>" for ru, en, color in items) + "</ul>"


def _latency_chart(report: Report) -> str:
    top = max((s.p99 or 0.0 for s in report.latency), default=0.0) * 1000
    rows = []
    for s in report.latency:
        ru, en = STAGE_LABELS[s.stage]
        if s.n:
            bars = [((v or 0.0) * 1000, f"p{p} · {_ms(v)}", PCT_COLORS[p], f"{ru}: p{p} = {_ms(v)} (n = {s.n})")
                    for p, v in zip(PERCENTILES, (s.p50, s.p95, s.p99), strict=True)]
        else:
            bars = [(0.0, "нет данных", "#e5e7eb", f"{ru}: нет данных")]
        rows.append((ru, en, bars))
    parts, height = _hbar_rows(rows, top, bar_h=15, axis="мс")
    return _svg(height, "Задержка по этапам, p50/p95/p99, мс", parts)


def _escalation_chart(report: Report) -> str:
    by = report.escalations.by_reason
    top = max((rc.count for rc in by), default=0)
    # A reason the product does not know is shown as its code, cut to fit a phone (whole in the tooltip).
    rows = [(_reason_ru(rc.reason) if rc.reason in REASONS else _cut(rc.reason, 28), "",
             [(float(rc.count), f"{rc.count} · {_pct(rc.share)}", "#f59e0b", f"{_reason_en(rc.reason)}: {rc.count}")])
            for rc in by]
    parts, height = _hbar_rows(rows, top, bar_h=18, axis="", integer=True)
    return _svg(height, "Передано оператору по причинам", parts)


def _feedback_chart(report: Report) -> str:
    fb = report.feedback
    total = fb.up + fb.down
    up_w = fb.up / total * 100 if total else 0.0
    parts = [
        f'<rect x="0%" y="4" width="{_f(up_w)}%" height="26" fill="#16a34a"><title>+1: {fb.up}</title></rect>',
        f'<rect x="{_f(up_w)}%" y="4" width="{_f(100 - up_w)}%" height="26" fill="#dc2626">'
        f"<title>−1: {fb.down}</title></rect>",
        f'<text x="0" y="50" class="v">Помог: {fb.up} ({_e(_pct(fb.up_share))})</text>',
        f'<text x="100%" y="50" text-anchor="end" class="v">Не помог: {fb.down} '
        f"({_e(_pct(1 - fb.up_share if fb.up_share is not None else None))})</text>",
    ]
    return _svg(58, "Оценки ответов", parts)


def _cost_chart(report: Report) -> str:
    c, cur = report.cost, report.cost.inputs.currency
    rows = [
        ("Свой GPU: время модели", "local, model time used",
         [(c.local_time_used, _money(c.local_time_used, cur), "#22c55e", "local, model time used")]),
        ("Свой GPU: весь период", "local, fixed cost",
         [(c.fixed, _money(c.fixed, cur), "#166534", "local, GPU fixed cost over the period")]),
        (f"Облако: {c.inputs.cloud_name[:40]}", "cloud equivalent",
         [(c.cloud, _money(c.cloud, cur), "#f97316", f"cloud equivalent: {c.inputs.cloud_name}")]),
    ]
    parts, height = _hbar_rows(rows, max(c.local_time_used, c.fixed, c.cloud), bar_h=22, axis=cur[:6])
    return _svg(height, "Стоимость: свой GPU и облако", parts)


_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f3f4f6; color: #111827; line-height: 1.4;
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "Liberation Sans",
  "DejaVu Sans", sans-serif; -webkit-print-color-adjust: exact; print-color-adjust: exact; }
main { max-width: 1040px; margin: 0 auto; padding: 24px 16px 40px; }
header h1 { font-size: 26px; margin: 0 0 4px; }
h1 .en, h2 .en { display: block; font-size: 13px; font-weight: 400; color: #6b7280; margin-top: 2px; }
.en { color: #6b7280; font-size: 0.85em; font-weight: 400; }
.period { margin: 0; color: #374151; }
section { background: #fff; border: 1px solid #e5e7eb; border-radius: 10px; padding: 16px 18px; margin-top: 16px;
  break-inside: avoid; page-break-inside: avoid; }
h2 { font-size: 18px; margin: 0 0 12px; }
h3 { font-size: 15px; margin: 20px 0 4px; }
.kpis { display: grid; grid-template-columns: repeat(3, minmax(0, 1fr)); gap: 12px;
  background: none; border: 0; padding: 0; }
.kpi { background: #fff; border: 1px solid #e5e7eb; border-radius: 10px; padding: 12px 14px; min-width: 0; }
.kpi .k { font-size: 13px; color: #374151; }
.kpi .k .en { display: block; font-size: 11px; }
.kpi .v { font-size: 26px; font-weight: 700; margin-top: 4px; white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; }
.kpi .s { font-size: 12px; color: #6b7280; overflow-wrap: anywhere; }
.kpi.bad .v { color: #b91c1c; }
.kpi.good .v { color: #15803d; }
.grid2 { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 300px), 1fr)); gap: 0 24px; }
.grid2 > * { align-self: start; min-width: 0; }
svg.chart { display: block; overflow: hidden; }
svg .g { stroke: #e5e7eb; stroke-width: 1; }
svg .g.b { stroke: #9ca3af; }
svg .t { font-size: 11px; fill: #6b7280; }
svg .l { font-size: 13px; font-weight: 600; fill: #111827; }
svg .l .en { font-size: 11px; font-weight: 400; fill: #6b7280; }
svg .v { font-size: 12px; font-weight: 600; }
figcaption, .note { font-size: 12px; color: #6b7280; margin-top: 6px; }
.legend { list-style: none; padding: 0; margin: 10px 0 0; display: flex; flex-wrap: wrap; gap: 6px 16px;
  font-size: 13px; }
.legend .sw { display: inline-block; width: 12px; height: 12px; border-radius: 2px; margin-right: 6px;
  vertical-align: -1px; }
table { width: 100%; border-collapse: collapse; font-size: 14px; }
th, td { text-align: left; padding: 6px 8px 6px 0; border-bottom: 1px solid #f3f4f6; vertical-align: top;
  overflow-wrap: anywhere; }
th { font-weight: 600; color: #374151; }
td.n { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
td.n.w { white-space: normal; }
td .sub { display: block; font-size: 12px; color: #6b7280; }
.neg { color: #b91c1c; }
.pos { color: #15803d; }
dl.notes { margin: 12px 0 0; font-size: 13px; }
dl.notes dt { font-weight: 600; margin-top: 8px; }
dl.notes dd { margin: 2px 0 0; color: #374151; }
.empty { color: #6b7280; margin: 4px 0; }
@media (max-width: 720px) {
  .kpis { grid-template-columns: repeat(2, minmax(0, 1fr)); }
}
@media (max-width: 480px) {
  main { padding: 16px 10px 32px; }
  section { padding: 12px; }
  .kpi .v { font-size: 22px; }
  header h1 { font-size: 22px; }
}
@media print {
  body { background: #fff; font-size: 12px; }
  main { max-width: none; padding: 0; }
  section, .kpi { border-color: #d1d5db; }
}
"""


def _h2(ru: str, en: str) -> str:
    return f'<h2>{_e(ru)}<span class="en" lang="en">{_e(en)}</span></h2>'


def _h3(ru: str, en: str) -> str:
    return f'<h3>{_e(ru)} <span class="en" lang="en">{_e(en)}</span></h3>'


def _kpi(ru: str, en: str, value: str, sub: str, tone: str = "") -> str:
    return (f'<div class="kpi {tone}"><div class="k">{_e(ru)}<span class="en" lang="en">{_e(en)}</span></div>'
            f'<div class="v">{_e(value)}</div><div class="s">{_e(sub)}</div></div>')


def _rows(rows: Iterable[tuple[str, ...]], *, wrap: bool = False) -> str:
    """Table rows of (label, English label, value[, a grey line under the value]): everything
    escaped; ``wrap`` lets long values (a cloud's name, a formula) wrap on a phone."""
    out = []
    for label, label_en, value, *sub in rows:
        under = f'<span class="sub">{_e(sub[0])}</span>' if sub and sub[0] else ""
        out.append(f'<tr><td>{_e(label)} <span class="en" lang="en">{_e(label_en)}</span></td>'
                   f'<td class="n{" w" if wrap else ""}">{_e(value)}{under}</td></tr>')
    return "".join(out)


def _hours(hours: float) -> str:
    return f"{_num(hours, 0 if hours == int(hours) else 1)}{NBSP}ч"


def render_html(report: Report) -> str:
    """One self-contained page: inline CSS and SVG, no script, no external URL; Russian headings
    with English subtitles. Every data string is escaped; the charts are drawn here in Python."""
    r = report
    t, c, cur = r.totals, r.cost, r.cost.inputs.currency
    total = r.stage("total")
    saving_tone = "good" if c.saving_fixed >= 0 else "bad"
    kpis = "".join((
        _kpi("Вопросов", "questions", _num(t.questions), f"клиентских: {_num(t.customer_questions)}"),
        _kpi("Без оператора", "closed without an operator", _pct(t.closed_without_operator_share),
             f"{_num(t.closed_without_operator)} из {_num(t.customer_questions)} вопросов клиентов"),
        _kpi("Время ответа, p95", "p95 total latency", _secs(total.p95), f"p50 {_secs(total.p50)}"),
        _kpi("Ответ помог", "thumbs-up share", _pct(r.feedback.up_share),
             f"{_num(r.feedback.up)} помог · {_num(r.feedback.down)} не помог"),
        _kpi("Из кэша", "cache hit rate", _pct(r.cache.hit_rate),
             f"{_num(r.cache.hits)} из {_num(r.cache.answers)} ответов бота"),
        _kpi("Экономия к облаку", "saving vs cloud (fixed GPU cost)", _signed_money(c.saving_fixed, cur, digits=0),
             f"по времени модели: {_signed_money(c.saving_time_used, cur)}", saving_tone),
    ))

    daily = (_daily_chart(r) + _legend((*OUTCOME_LABELS[o], OUTCOME_COLORS[o]) for o in OUTCOMES)
             + '<p class="note">Вопросов в день по исходу; дни по UTC'
             + ("" if _whole_days(r.period) else ", первый и последний — неполные")
             + '. <span class="en" lang="en">Questions per UTC day, stacked by outcome.</span></p>')
    q = t.questions
    outcome_rows = [(*OUTCOME_LABELS[o], f"{_num(n)} · {_pct(_share(n, q))}") for o, n in t.by_outcome.items()
                    if o in OUTCOME_LABELS]
    outcome_rows += [(o, "", f"{_num(n)} · {_pct(_share(n, q))}") for o, n in t.by_outcome.items()
                     if o not in OUTCOME_LABELS]
    channel_rows = [(f"Канал {ch}", "channel", f"{_num(n)} · {_pct(_share(n, q))}") for ch, n in t.by_channel.items()]
    audiences = {"customer": "Клиенты", "operator": "Операторы"}
    audience_rows = [(audiences.get(a, a), a, f"{_num(n)} · {_pct(_share(n, q))}") for a, n in t.by_audience.items()]
    overview = (f'<div class="grid2"><table>{_rows(outcome_rows)}</table>'
                f"<table>{_rows(channel_rows + audience_rows) or _rows([('Нет вопросов', 'none', '0')])}</table></div>")

    latency_note = ('<p class="note">Ранговые процентили (nearest-rank: значение с номером ⌈p·n/100⌉ по '
                    "возрастанию); общая шкала в миллисекундах. "
                    '<span class="en" lang="en">Nearest-rank percentiles on one millisecond scale; '
                    "“total” counts questions the answer pipeline handled.</span></p>")
    latency = _latency_chart(r) if any(s.n for s in r.latency) else '<p class="empty">Нет данных.</p>'

    esc = r.escalations
    escalations = (_escalation_chart(r) if esc.total else '<p class="empty">Ни один вопрос не передан оператору.</p>')
    esc_note = (f'<p class="note">Всего передано: {_num(esc.total)} из {_num(t.customer_questions)} вопросов клиентов. '
                '<span class="en" lang="en">Customer questions escalated or failed, by reason.</span></p>')

    fb = r.feedback
    feedback_part = (_feedback_chart(r) + "<table>" + _rows((
        ("Всего оценок", "votes", _num(fb.up + fb.down)),
        ("Доля «помог»", "thumbs-up share", _pct(fb.up_share, digits=1)))) + "</table>"
        if fb.up or fb.down else '<p class="empty">Оценок за период нет.</p>')
    tk, tc = r.tokens, r.tickets
    tokens_rows = _rows((
        ("Токенов запроса", "prompt tokens", _num(tk.prompt)),
        ("Токенов ответа", "completion tokens", _num(tk.completion)),
        ("Вызовов модели", "model calls", _num(tk.model_calls)),
        ("Запрос на вызов", "prompt per call",
         "—" if tk.prompt_per_model_call is None else _num(tk.prompt_per_model_call, 1)),
        ("Ответ на вызов", "completion per call",
         "—" if tk.completion_per_model_call is None else _num(tk.completion_per_model_call, 1)),
    ))
    ticket_rows = _rows((
        ("Открыто", "opened", _num(tc.opened)),
        ("Взято в работу", "claimed", _num(tc.claimed)),
        ("Решено", "resolved", _num(tc.resolved)),
        ("Открыто на конец периода", "open at the end", _num(tc.open_at_end)),
        ("Медиана до «Взять»", "median time to claim", _duration(tc.median_time_to_claim_s)),
        ("Медиана до «Решено»", "median time to resolve", _duration(tc.median_time_to_resolve_s)),
    ))

    i = c.inputs
    hourly_how = ("задана: PERIMETER_COST_GPU_HOURLY" if i.hourly_from == "gpu_hourly" else
                  f"{_num(i.hardware_price)} {cur} за {_num(i.hardware_life_years, 1)} г. + "
                  f"{_num(i.power_kw, 2)} кВт × {_num(i.electricity_per_kwh, 2)} {cur}/кВт·ч")
    tps_how = {"configured": "из настроек", "measured": "измерено"}.get(c.tokens_per_second_from or "", "нет данных")
    inputs_rows = _rows((
        ("GPU в час", "GPU hourly", _money(i.hourly, cur), hourly_how),
        ("Токенов в секунду", "tokens per second",
         "—" if c.tokens_per_second is None else _num(c.tokens_per_second, 1), tps_how),
        ("Облако", "cloud API", i.cloud_name),
        ("Облако, 1000 токенов запроса", "input per 1k", _money(i.cloud_input_per_1k, cur, digits=4)),
        ("Облако, 1000 токенов ответа", "output per 1k", _money(i.cloud_output_per_1k, cur, digits=4)),
        ("Часов в периоде", "period hours", _hours(i.period_hours)),
        ("Время модели", "model time", _hours(i.model_seconds / 3600) if i.model_seconds >= 36 else
         f"{_num(i.model_seconds, 1)}{NBSP}с"),
        ("Ответов бота", "bot answers", _num(i.answers), "делитель «на ответ» · per-answer divisor"),
    ), wrap=True)
    cost_rows = _rows((
        ("1000 токенов на своём GPU", "local per 1k generated tokens", _money(c.local_per_1k_tokens, cur, digits=4)),
        ("Время модели, на ответ", "local time used per answer", _money(c.local_time_used_per_answer, cur, digits=4)),
        ("GPU за период, на ответ", "fixed cost per answer", _money(c.fixed_per_answer, cur, digits=4)),
        ("Облако, на ответ", "cloud per answer", _money(c.cloud_per_answer, cur, digits=4)),
    ))
    savings = "".join(
        f'<tr><td>{_e(ru)} <span class="en" lang="en">{_e(en)}</span></td>'
        f'<td class="n {"pos" if v >= 0 else "neg"}">{_e(_signed_money(v, cur))}</td></tr>'
        for ru, en, v in (("Экономия к времени модели", "saving vs model time", c.saving_time_used),
                          ("Экономия к GPU за период", "saving vs fixed cost", c.saving_fixed)))
    note_names = {
        "tokens_per_second": ("Токенов в секунду", "tokens per second"),
        "local_per_1k_tokens": ("1000 токенов на своём GPU", "local per 1k tokens"),
        "local_time_used": ("Свой GPU: время модели", "local, model time used"),
        "fixed": ("Свой GPU: весь период", "local, fixed cost"),
        "cloud": ("Облако", "cloud equivalent"),
        "saving_time_used": ("Экономия к времени модели", "saving vs model time"),
        "saving_fixed": ("Экономия к GPU за период", "saving vs fixed cost"),
    }
    notes = "".join(
        f'<dt>{_e(note_names[k][0])} <span class="en" lang="en">{_e(note_names[k][1])}</span></dt>'
        f'<dd>{_e(_COST_NOTES_RU[k])}<br><span class="en" lang="en">{_e(c.notes[k])}</span></dd>'
        for k in note_names)

    title = f"Отчёт Perimeter · {_period_text(r.period, short=True)}"
    body = f"""<main>
<header><h1>Отчёт Perimeter<span class="en" lang="en">Perimeter usage and cost report</span></h1>
<p class="period">{_e(_period_text(r.period))} · {_e(_hours(r.period.hours))}</p></header>
<section class="kpis" aria-label="Главное">{kpis}</section>
<section>{_h2("Ответы по дням", "Answers per day by outcome")}{daily}</section>
<section>{_h2("Итоги", "Totals by outcome, channel and audience")}{overview}</section>
<section>{_h2("Задержка по этапам", "Latency per stage: p50 / p95 / p99")}{latency}{latency_note}</section>
<section>{_h2("Передано оператору по причинам", "Escalations by reason")}{escalations}{esc_note}</section>
<div class="grid2">
<section>{_h2("Оценки ответов", "Feedback")}{feedback_part}</section>
<section>{_h2("Токены", "Tokens")}<table>{tokens_rows}</table></section>
</div>
<section>{_h2("Обращения к операторам", "Operator tickets")}<table>{ticket_rows}</table></section>
<section>{_h2("Стоимость: свой GPU и облако", "Cost: local GPU vs cloud API")}{_cost_chart(r)}
<div class="grid2"><div>{_h3("На ответ и экономия", "Per answer and saving")}<table>{cost_rows}{savings}</table></div>
<div>{_h3("Из чего считали", "Cost model inputs")}<table>{inputs_rows}</table></div></div>
<dl class="notes">{notes}</dl></section>
</main>"""
    return (f'<!doctype html>\n<html lang="ru">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{_e(title)}</title>\n'
            f"<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")
