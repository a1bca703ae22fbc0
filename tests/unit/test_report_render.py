"""The report's views without a database: parsing ``--since``, the operators' chat text, the HTML page."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from rich.console import Console

from bot.reports import (
    CacheStats,
    Cost,
    CostInputs,
    DayCounts,
    Escalations,
    FeedbackCounts,
    Period,
    ReasonCount,
    Report,
    StageLatency,
    TicketStats,
    Tokens,
    Totals,
    nearest_rank,
    parse_since,
    render_html,
    render_table,
    short_text,
)
from rag.errors import InputError
from tests.unit.test_render import assert_valid_telegram_html

EVIL = '<script>alert("x")</script>&<img src=x onerror=alert(1)>'


def make_report(*, reasons: tuple[ReasonCount, ...] | None = None, currency: str = "₽",
                cloud_name: str = "GPT-4o", **changes: Any) -> Report:
    """A week of figures as compute_report would give them (the numbers need not add up here)."""
    since = datetime(2025, 3, 3, tzinfo=UTC)
    outcomes = {"answered": 700, "cached": 150, "extractive": 20, "escalated": 120, "failed": 10}
    reasons = reasons if reasons is not None else (
        ReasonCount("customer_request", 60, 0.5), ReasonCount("no_relevant_documents", 40, 1 / 3),
        ReasonCount("low_confidence", 15, 0.125), ReasonCount("processing_error", 5, 5 / 120))
    inputs = CostInputs(currency=currency, hourly=16.47, hourly_from="hardware", hardware_price=350_000,
                        hardware_life_years=3, power_kw=0.45, electricity_per_kwh=7, tokens_per_second_configured=None,
                        cloud_name=cloud_name, cloud_input_per_1k=0.25, cloud_output_per_1k=1.0, period_hours=168,
                        model_seconds=5400, prompt_tokens=2_000_000, completion_tokens=180_000, answers=870)
    report = Report(
        period=Period(since, since + timedelta(days=7), 168.0),
        totals=Totals(1000, outcomes, {"telegram": 880, "widget": 120}, {"customer": 880, "operator": 120}, 870, 880,
                      750, 750 / 880),
        per_day=tuple(DayCounts(date(2025, 3, 3 + i), {**outcomes, "answered": 100 + i}, 400) for i in range(7)),
        latency=tuple(StageLatency(s, 10, 0.1 * (i + 1), 0.2 * (i + 1), 0.3 * (i + 1)) for i, s in enumerate(
            ("retrieval", "crm", "model_queue", "model_ttft", "model_total", "delivery", "total"))),
        escalations=Escalations(sum(r.count for r in reasons), reasons),
        feedback=FeedbackCounts(90, 10, 0.9),
        cache=CacheStats(150, 870, 150 / 870),
        tokens=Tokens(2_000_000, 180_000, 800, 2500.0, 225.0),
        tickets=TicketStats(100, 95, 90, 5, 300.0, 5400.0),
        cost=Cost(inputs=inputs, tokens_per_second=33.3, tokens_per_second_from="measured",
                  local_per_1k_tokens=0.137, local_time_used=24.7, local_time_used_per_answer=0.028, fixed=2766.96,
                  fixed_per_answer=3.18, cloud=680.0, cloud_per_answer=0.78, saving_time_used=655.3,
                  saving_fixed=-2086.96, notes={"tokens_per_second": "t", "local_per_1k_tokens": "l",
                                                "local_time_used": "u", "fixed": "f", "cloud": "c",
                                                "saving_time_used": "s", "saving_fixed": "sf"}),
    )
    return dataclasses.replace(report, **changes)


# --- --since -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "span"), [
    ("7d", timedelta(days=7)), ("24h", timedelta(hours=24)), ("30m", timedelta(minutes=30)),
    ("2w", timedelta(weeks=2)), (" 1d ", timedelta(days=1)), ("3660d", timedelta(days=3660)),
])
def test_parse_since_accepts(text: str, span: timedelta) -> None:
    assert parse_since(text) == span


@pytest.mark.parametrize("text", ["", "7", "d", "7x", "7D", "1mo", "1y", "-7d", "1.5d", "7 days", "0d", "3661d",
                                  "99999999999999d", "7d1h"])
def test_parse_since_refuses(text: str) -> None:
    with pytest.raises(InputError, match="--since"):
        parse_since(text)


# --- percentiles -----------------------------------------------------------------------------------


def test_nearest_rank() -> None:
    values = [float(v) for v in range(1, 21)]  # 1..20
    assert nearest_rank(values, 50) == 10.0  # rank ⌈10⌉
    assert nearest_rank(values, 95) == 19.0  # rank ⌈19⌉
    assert nearest_rank(values, 99) == 20.0  # rank ⌈19.8⌉
    assert nearest_rank([4.0], 99) == 4.0
    assert nearest_rank([], 50) is None
    assert nearest_rank([1.0, 2.0], 1) == 1.0  # rank never below 1


# --- the operators' chat -------------------------------------------------------------------------


def test_short_text_content() -> None:
    text = short_text(make_report())
    assert_valid_telegram_html(text)
    assert set(re.findall(r"</?([a-z]+)", text)) <= {"b", "i"}
    assert len(text) <= 1500
    for expected in ("03.03–09.03.2025", "Вопросов: <b>1\u00a0000</b>", "без оператора: <b>85\u00a0%</b>",
                     "p95 <b>1,4\u00a0с</b>", "👍 90 · 👎 10", "клиент попросил оператора — 60",
                     "нет ответа в документах — 40", "ответ под сомнением — 15", "2\u00a0766,96\u00a0₽",
                     "GPT-4o: 680,00\u00a0₽", "<b>−2\u00a0086,96\u00a0₽</b>", "+655,30\u00a0₽"):
        assert expected in text, expected
    assert "ошибка обработки" not in text  # only the top three reasons


def test_short_text_in_english_and_empty() -> None:
    text = short_text(make_report(), lang="en")
    assert "Questions: <b>1,000</b>" in text and "closed without an operator: <b>85%</b>" in text
    assert "the customer asked for a person — 60" in text
    empty = make_report(totals=Totals(0, dict.fromkeys(("answered", "escalated"), 0), {}, {}, 0, 0, 0, None),
                        escalations=Escalations(0, ()), feedback=FeedbackCounts(0, 0, None),
                        latency=tuple(StageLatency("total", 0, None, None, None) for _ in range(1)))
    assert "За период вопросов не было" in short_text(empty) and "Оценок нет" in short_text(empty)


def test_short_text_escapes_and_stays_short() -> None:
    huge = tuple(ReasonCount(EVIL + str(i) * 40, 1, 0.01) for i in range(50))
    text = short_text(make_report(reasons=huge, currency="<" * 500, cloud_name=EVIL * 50))
    assert len(text) <= 1500
    assert_valid_telegram_html(text)
    assert "<script" not in text and "&lt;script&gt;" in text


# --- the HTML page ----------------------------------------------------------------------------------


def test_html_escapes_data_strings() -> None:
    evil = make_report(reasons=(ReasonCount(EVIL, 3, 1.0),), cloud_name=EVIL, currency="<b>₽</b>",
                       totals=dataclasses.replace(make_report().totals, by_channel={EVIL: 5},
                                                  by_audience={EVIL: 5}))
    page = render_html(evil)
    assert "<script" not in page and "<img" not in page and "<b>₽" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&lt;img" in page
    assert 'onerror=alert(1)>' not in page


def test_html_is_one_self_contained_page_with_a_chart_each() -> None:
    page = render_html(make_report())
    assert page.startswith("<!doctype html>") and '<html lang="ru">' in page
    # daily outcomes, latency, escalations, feedback, cost
    assert page.count("<svg") == page.count("</svg>") == 5
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page and "@import" not in page and "url(" not in page
    for heading in ("Ответы по дням", "Задержка по этапам", "Передано оператору по причинам", "Оценки ответов",
                    "Токены", "Стоимость: свой GPU и облако"):
        assert heading in page
    assert page.count('<div class="kpi ') == 6
    assert 'lang="en"' in page


def test_html_of_an_empty_period_has_no_empty_charts() -> None:
    empty = make_report(reasons=(), feedback=FeedbackCounts(0, 0, None),
                        latency=tuple(StageLatency(s, 0, None, None, None) for s in ("total",)))
    page = render_html(empty)
    assert page.count("<svg") == 2  # the days and the cost; no empty latency, escalation or feedback chart
    assert "Оценок за период нет" in page and "Ни один вопрос не передан оператору" in page


def test_terminal_tables_show_figures_and_no_markup() -> None:
    console = Console(record=True, width=160)
    console.print(render_table(make_report(reasons=(ReasonCount("[red]boom[/red]", 3, 1.0),))))
    text = console.export_text().replace("\u00a0", " ")
    for expected in ("questions", "1,000", "85.2%", "Latency, ms", "1,400", "Escalations to an operator",
                     "[red]boom[/red]", "Cost, ₽", "2,766.96 ₽", "680.00 ₽", "−2,086.96 ₽"):
        assert expected in text, expected
