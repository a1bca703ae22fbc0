"""The HTML report in a real browser: a generated month of a bank's traffic, headless Chromium at a
laptop's 1024 px and a phone's 390 px.

The page must not scroll sideways, the KPI tiles must be on screen, no chart text may stick out
of its chart or overlap other text, and the page may load nothing but itself (no script, no
external URL). Full-page screenshots go to ``test-artifacts/report/report-<width>.png`` for a
person to look at.
"""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import async_playwright, expect
from sqlalchemy.engine import Connection

from bot.reports import compute_report, render_html
from bot.settings import CostSettings
from bot.storage.database import create_db_engine, ensure_schema
from bot.storage.tables import usage_records
from tests.integration.test_reports import ReportData

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "report"
SINCE = datetime(2025, 3, 1, tzinfo=UTC)
UNTIL = datetime(2025, 4, 1, tzinfo=UTC)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                       reason=f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)"),
]

REASONS = (("customer_request", 40), ("no_relevant_documents", 25), ("low_confidence", 18), ("model_declined", 9),
           ("negative_feedback", 5), ("model_unavailable", 3), ("<b>партнёрский API</b> & co", 1))


def generate_month(conn: Connection, seed: int = 7) -> None:
    """A plausible month: 120–420 questions a day (fewer at weekends), most answered by the model,
    a quarter handed to operators, realistic stage timings and token counts, votes under some
    answers, tickets claimed within minutes and resolved within hours."""
    rnd = random.Random(seed)
    d = ReportData(conn)
    rows: list[dict[str, Any]] = []
    day = SINCE
    while day < UNTIL:
        weekend = day.weekday() >= 5
        for _ in range(rnd.randint(60, 160) if weekend else rnd.randint(220, 420)):
            when = day + timedelta(seconds=rnd.randint(7 * 3600, 22 * 3600))
            operator = rnd.random() < 0.12
            outcome = rnd.choices(("answered", "cached", "extractive", "escalated", "failed"),
                                  (58, 15, 2, 24, 1))[0]
            reason = None
            if outcome == "escalated":
                reason = rnd.choices([r for r, _w in REASONS], [w for _r, w in REASONS])[0]
            elif outcome == "failed":
                reason = "processing_error"
            button = reason in ("customer_request", "negative_feedback") or outcome == "failed"
            model = outcome == "answered" or reason == "model_declined"
            retrieval = None if button else rnd.lognormvariate(-2.3, 0.4)
            crm = rnd.uniform(0.08, 0.9) if not operator and rnd.random() < 0.3 else None
            queue = rnd.expovariate(3.0) if model else None
            ttft = rnd.uniform(0.3, 1.4) if model else None
            model_total = (ttft or 0) + rnd.uniform(2.0, 11.0) if model else None
            total = (retrieval or 0) + (crm or 0) + (queue or 0) + (model_total or 0)
            answer_id = None
            if outcome in ("answered", "cached") and not operator and rnd.random() < 0.06:
                answer_id = d.answer(when)
                d.vote(answer_id, 1 if rnd.random() < 0.86 else -1, when + timedelta(minutes=2))
            if outcome in ("escalated", "failed") and not operator and rnd.random() < 0.3:
                claimed = when + timedelta(seconds=rnd.randint(20, 1800))
                resolved = claimed + timedelta(seconds=rnd.randint(300, 6 * 3600))
                d.ticket(when, claimed=claimed, resolved=resolved if resolved < UNTIL else None,
                         reason=reason or "processing_error")
            rows.append(dict(
                created_at=when, channel="widget" if operator else rnd.choice(("telegram",) * 9 + ("crm:bitrix24",)),
                audience="operator" if operator else "customer", outcome=outcome, reason=reason, language="ru",
                model="qwen3:8b" if model else None, backend="ollama" if model else None,
                prompt_tokens=rnd.randint(1400, 3600) if model else 0,
                completion_tokens=rnd.randint(60, 420) if model else 0, used_customer_data=crm is not None,
                retrieval_s=retrieval, crm_s=crm, model_queue_s=queue, model_ttft_s=ttft, model_total_s=model_total,
                total_s=total, delivery_s=rnd.uniform(0.15, 1.2) if not button and not operator else None,
                answer_id=answer_id,
            ))
        day += timedelta(days=1)
    conn.execute(usage_records.insert(), rows)


@pytest.fixture(scope="module")
def report_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("report")
    url = f"sqlite:///{base / 'month.db'}"
    engine = create_db_engine(url)
    ensure_schema(engine, url, auto_upgrade=True)
    with engine.begin() as conn:
        generate_month(conn)
    with engine.connect() as conn:
        report = compute_report(conn, since=SINCE, until=UNTIL, cost=CostSettings(
            gpu_hourly=None, tokens_per_second=None, currency="₽", cloud_name="GPT-4o (OpenAI API)"))
    engine.dispose()
    assert report.totals.questions > 5000
    page = base / "report.html"
    page.write_text(render_html(report), encoding="utf-8")
    return page


# For every chart: text sticking out of the chart, and pairs of text boxes that overlap.
_TEXT_PROBLEMS = """() => {
  const problems = [];
  const inter = (a, b) => a.left < b.right - 0.5 && b.left < a.right - 0.5
    && a.top < b.bottom - 0.5 && b.top < a.bottom - 0.5;
  document.querySelectorAll('svg.chart').forEach((svg, n) => {
    const box = svg.getBoundingClientRect();
    const texts = [...svg.querySelectorAll('text')].map(t => [t.textContent, t.getBoundingClientRect()]);
    for (const [s, r] of texts) {
      if (r.left < box.left - 0.5 || r.right > box.right + 0.5 || r.top < box.top - 0.5 || r.bottom > box.bottom + 0.5)
        problems.push(`chart ${n}: "${s}" sticks out`);
    }
    for (let i = 0; i < texts.length; i++)
      for (let j = i + 1; j < texts.length; j++)
        if (inter(texts[i][1], texts[j][1])) problems.push(`chart ${n}: "${texts[i][0]}" overlaps "${texts[j][0]}"`);
  });
  return problems;
}"""


@pytest.mark.parametrize("width", [1024, 390])
async def test_report_page_in_chromium(report_page: Path, width: int) -> None:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": width, "height": 900})
            requests: list[str] = []
            errors: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            await page.goto(report_page.as_uri())
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / f"report-{width}.png"), full_page=True)  # before any verdict

            assert requests == [report_page.as_uri()], "the page must load nothing but itself"
            assert not errors
            overflow = await page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 0, f"{overflow}px of horizontal overflow at {width}px"
            tiles = page.locator(".kpi")
            assert await tiles.count() == 6
            for i in range(6):
                await expect(tiles.nth(i)).to_be_visible()
                box = await tiles.nth(i).bounding_box()
                assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width
                assert await tiles.nth(i).evaluate("e => e.querySelector('.v').scrollWidth <= e.querySelector('.v')"
                                                   ".clientWidth"), "a KPI value is cut off"
            assert await page.locator("svg.chart").count() == 5
            assert await page.evaluate(_TEXT_PROBLEMS) == []
            assert await page.locator("script").count() == 0
        finally:
            await browser.close()
