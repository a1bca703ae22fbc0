import json
from pathlib import Path

import pytest

from rag.errors import InputError
from rag.eval.datasets import EvalQuestion, EvalSet, load_dataset

SHARED = Path(__file__).resolve().parents[2].parent / "shared/datasets"


def _shared(relative: str) -> Path:
    path = SHARED / relative
    if not path.is_file():
        pytest.skip(f"shared dataset not found: {path}")
    return path


def _by_id(dataset: EvalSet) -> dict[str, str]:
    assert dataset.candidates is not None
    return {c.source_id: c.text for c in dataset.candidates}


# --- real data ----------------------------------------------------------------------------------


def test_xquad_r_ru_sentences_and_gold() -> None:
    dataset = load_dataset(_shared("xquad-r/ru.json"))
    assert dataset.name == "xquad-r-ru"
    assert len(dataset.questions) == 1190
    assert dataset.candidates is not None
    assert len(dataset.candidates) == 1219
    texts = _by_id(dataset)
    assert len(texts) == 1219, "candidate ids must be unique"
    assert all(q.sources[0] in texts for q in dataset.questions)
    assert {q.language for q in dataset.questions} == {"ru"}
    assert not any("\ufeff" in c.text or "\ufeff" in c.context for c in dataset.candidates)

    by_qid = {q.id: q for q in dataset.questions}
    # answer_start 495 lies in the 4th sentence break [320, 572) of the first paragraph
    assert by_qid["56beb4343aeaaa14008c925c"].sources == ("super-bowl-50/p0#s3",)
    assert by_qid["56beb4343aeaaa14008c925c"].answer == "136"
    # Only answers that run across a sentence break ("Джеймса O. | Маккинси") are not wholly
    # inside their gold sentence; an off-by-one in the break lookup would break hundreds.
    outside = [q.id for q in dataset.questions if q.answer not in texts[q.sources[0]]]
    assert len(outside) == 2


def test_xquad_r_candidate_context_is_its_paragraph() -> None:
    dataset = load_dataset(_shared("xquad-r/ru.json"))
    assert dataset.candidates is not None
    first = dataset.candidates[0]
    assert first.source_id == "super-bowl-50/p0#s0"
    assert first.title == "Super Bowl 50"
    assert first.text.startswith("Защита Пэнтерс")
    assert first.text in first.context
    assert first.context.endswith(dataset.candidates[6].text)  # the paragraph has 7 sentences
    assert dataset.candidates[7].source_id == "super-bowl-50/p1#s0"


def test_xquad_r_en() -> None:
    dataset = load_dataset(_shared("xquad-r/en.json"))
    assert (len(dataset.questions), len(_by_id(dataset))) == (1190, 1180)
    assert {q.language for q in dataset.questions} == {"en"}


def test_xquad_ru_paragraphs() -> None:
    dataset = load_dataset(_shared("xquad/ru.json"))
    assert dataset.name == "xquad-ru"
    assert len(dataset.questions) == 1190
    texts = _by_id(dataset)
    assert len(texts) == 240
    assert dataset.candidates is not None
    assert all(c.context == "" for c in dataset.candidates)
    assert all(q.answer and q.answer in texts[q.sources[0]] for q in dataset.questions)
    assert dataset.questions[0].sources == ("super-bowl-50/p0",)


def test_limit_keeps_whole_corpus() -> None:
    dataset = load_dataset(_shared("xquad/ru.json"), limit=5)
    assert len(dataset.questions) == 5
    assert len(_by_id(dataset)) == 240


# --- handcrafted XQuAD / XQuAD-R ----------------------------------------------------------------


def _squad(path: Path, paragraphs: list[dict[str, object]], title: str = "Café_(Paris)") -> Path:
    path.write_text(json.dumps({"data": [{"title": title, "paragraphs": paragraphs}]}), encoding="utf-8")
    return path


def test_xquad_r_offsets_count_the_bom(tmp_path: Path) -> None:
    context = "\ufeffOne two. Three four."
    paragraph = {
        "context": context,
        "sentences": ["\ufeffOne two.", "Three four."],
        "sentence_breaks": [[0, 9], [10, 21]],
        "qas": [
            {"id": "q1", "question": " Which? ", "answers": [{"answer_start": 10, "text": "Three"}]},
            {"id": "q2", "question": "Two?", "answers": [{"answer_start": 5, "text": "two"}]},
        ],
    }
    dataset = load_dataset(_squad(tmp_path / "tiny.en.json", [paragraph]))
    assert dataset.name == "xquad-r-en"
    assert dataset.questions == [
        EvalQuestion("Which?", ("cafe-paris/p0#s1",), answer="Three", id="q1", language="en"),
        EvalQuestion("Two?", ("cafe-paris/p0#s0",), answer="two", id="q2", language="en"),
    ]
    assert dataset.candidates is not None
    assert [c.text for c in dataset.candidates] == ["One two.", "Three four."]
    assert dataset.candidates[0].context == "One two. Three four."
    assert dataset.candidates[0].title == "Café (Paris)"


def test_xquad_r_answer_outside_every_sentence_is_an_error(tmp_path: Path) -> None:
    paragraph = {
        "context": "One two.  Three.",
        "sentences": ["One two.", "Three."],
        "sentence_breaks": [[0, 8], [10, 16]],
        "qas": [{"id": "gap", "question": "?", "answers": [{"answer_start": 9, "text": " "}]}],
    }
    with pytest.raises(InputError, match=r"paragraph 0.*'gap'.*answer_start 9 falls in 0 sentences"):
        load_dataset(_squad(tmp_path / "ru.json", [paragraph]))


def test_squad_missing_field_names_the_paragraph(tmp_path: Path) -> None:
    path = _squad(tmp_path / "ru.json", [{"context": "x", "qas": []}, {"context": "y"}])
    with pytest.raises(InputError, match=r"paragraph 1.*'qas'"):
        load_dataset(path)


def test_squad_needs_a_language_in_the_file_name(tmp_path: Path) -> None:
    path = _squad(tmp_path / "xquad.json", [{"context": "x", "qas": []}])
    with pytest.raises(InputError, match="language"):
        load_dataset(path)


def test_json_that_is_not_squad_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "set.json"
    path.write_text('{"question": "q", "sources": ["a.md"]}', encoding="utf-8")
    with pytest.raises(InputError, match=r"\.jsonl"):
        load_dataset(path)


# --- JSONL --------------------------------------------------------------------------------------


def test_jsonl_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "support.jsonl"
    path.write_text(
        "// tariffs\n"
        '{"question": "Сколько стоит тариф?", "sources": ["tariffs.md#prices"], "answer": "300 ₽"}\n'
        "\n"
        '  // unanswerable\n'
        '{"question": "Какая погода?", "expected": "escalate", "audience": "operator", "id": "w1"}\n',
        encoding="utf-8",
    )
    dataset = load_dataset(path)
    assert dataset.name == "support"
    assert dataset.candidates is None
    assert dataset.questions == [
        EvalQuestion("Сколько стоит тариф?", ("tariffs.md#prices",), answer="300 ₽", id="support:2"),
        EvalQuestion("Какая погода?", (), expected="escalate", audience="operator", id="w1"),
    ]
    assert dataset.questions[0].language is None
    assert len(load_dataset(path, limit=1).questions) == 1


def test_jsonl_broken_line_names_its_number(tmp_path: Path) -> None:
    path = tmp_path / "set.jsonl"
    path.write_text(
        '{"question": "ok", "sources": ["a.md"]}\n'
        "// comment\n"
        '{"question": "broken", "sources": ["a.md"]\n',
        encoding="utf-8",
    )
    with pytest.raises(InputError, match=r"line 3: invalid JSON"):
        load_dataset(path)


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ('["a list"]', "expected a JSON object"),
        ('{"sources": ["a.md"]}', "'question' must be a non-empty string"),
        ('{"question": "  ", "sources": ["a.md"]}', "'question' must be a non-empty string"),
        ('{"question": "q"}', "'sources' must name at least one"),
        ('{"question": "q", "sources": []}', "'sources' must name at least one"),
        ('{"question": "q", "sources": "a.md"}', "'sources' must be a list"),
        ('{"question": "q", "sources": ["a.md", 3]}', "'sources' must be a list"),
        ('{"question": "q", "sources": ["a.md"], "answr": "x"}', "unknown field.*'answr'"),
        ('{"question": "q", "expected": "escalte"}', "'expected' may only be 'escalate'"),
        ('{"question": "q", "sources": ["a.md"], "audience": "admin"}', "'audience' must be one of"),
        ('{"question": "q", "sources": ["a.md"], "answer": 5}', "'answer' must be a string"),
    ],
)
def test_jsonl_invalid_line(tmp_path: Path, line: str, complaint: str) -> None:
    path = tmp_path / "set.jsonl"
    path.write_text('{"question": "ok", "sources": ["a.md"]}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=rf"line 2: .*{complaint}"):
        load_dataset(path)


def test_unreadable_file_and_bad_limit(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        load_dataset(tmp_path / "missing.jsonl")
    with pytest.raises(InputError, match="limit"):
        load_dataset(tmp_path / "missing.jsonl", limit=-1)
