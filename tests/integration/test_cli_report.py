"""`perimeter report` through typer's CliRunner, on a fresh data directory (see tests/integration/test_cli.py
for the isolation: no inherited PERIMETER_* variable, no `.env`, all state under a temporary data dir)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bot.cli import app
from tests.integration.test_cli import _isolate, flat, ok

runner = CliRunner()


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    _isolate(monkeypatch, tmp_path)
    data = tmp_path / "var"
    monkeypatch.setenv("PERIMETER_DATA_DIR", str(data))
    return data


def test_report_on_a_fresh_data_dir_writes_json_and_html(tmp_path: Path, isolated: Path) -> None:
    result = ok(runner.invoke(app, ["report", "--since", "7d", "--json", "r.json", "--html", "out/r.html"]))
    text = flat(result.output)
    assert "Perimeter report" in text and "questions" in text and "Cost" in text
    json_path, html_path = tmp_path / "r.json", tmp_path / "out" / "r.html"
    assert f"wrote {json_path}" in text and f"wrote {html_path}" in text
    data = json.loads(json_path.read_text(encoding="utf-8"))
    assert data["totals"]["questions"] == 0 and data["period"]["hours"] == pytest.approx(168.0)
    assert data["cost"]["inputs"]["currency"] == "₽"
    page = html_path.read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and "Отчёт Perimeter" in page
    assert (isolated / "perimeter.db").exists()  # the embedded database was created and migrated


def test_report_only_prints_without_files(tmp_path: Path) -> None:
    result = ok(runner.invoke(app, ["report", "--since", "24h"]))
    assert "Latency, ms" in result.output and "wrote" not in result.output
    assert not list(tmp_path.glob("*.json")) and not list(tmp_path.glob("*.html"))


@pytest.mark.parametrize("since", ["7", "1y", "0d", "week"])
def test_a_bad_since_exits_2(since: str, isolated: Path) -> None:
    result = runner.invoke(app, ["report", "--since", since, "--json", "r.json"])
    assert result.exit_code == 2, result.output
    assert "--since" in flat(result.output)
    assert not isolated.exists()  # refused before anything was opened


def test_an_unwritable_file_exits_2(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file, not a folder")
    result = runner.invoke(app, ["report", "--html", str(tmp_path / "blocker" / "r.html")])
    assert result.exit_code == 2, result.output
    assert "cannot write" in flat(result.output)
