"""Evaluation sets: our own JSONL question files and the public XQuAD / XQuAD-R corpora.

``load_dataset`` picks the format from the file itself:

* ``*.jsonl`` (or any file that is not one SQuAD-style JSON document): one question per line,
  ``{"question": str, "sources": [str, ...], "answer"?: str, "expected"?: "escalate",
  "audience"?: "customer" | "operator", "id"?: str}``. Blank lines and lines starting with
  ``//`` are skipped. Questions are scored against the existing index (``candidates`` is None).
* SQuAD-style JSON whose paragraphs carry ``sentences`` and ``sentence_breaks``: XQuAD-R.
  Candidates are sentences, ``{article}/p{i}#s{j}``; the gold is the sentence holding the
  start of the first answer.
* SQuAD-style JSON without them: XQuAD. Candidates are paragraphs, ``{article}/p{i}``.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from rag.errors import InputError
from rag.models import Audience


@dataclass(frozen=True)
class EvalQuestion:
    question: str
    sources: tuple[str, ...]  # gold source ids; see rag.eval.metrics.gold_matches
    answer: str | None = None  # reference answer text for EM / token F1
    expected: str | None = None  # "escalate" for questions the knowledge base cannot answer
    audience: str = "customer"
    id: str = ""
    language: str | None = None  # None: the harness detects it


@dataclass(frozen=True)
class Candidate:
    source_id: str
    text: str
    title: str
    context: str  # surrounding text (the paragraph a sentence belongs to); "" when text is the paragraph
    language: str


@dataclass(frozen=True)
class EvalSet:
    name: str
    questions: list[EvalQuestion]
    # None: evaluate against the existing index; XQuAD/XQuAD-R carry their own corpus.
    candidates: list[Candidate] | None


ESCALATE = "escalate"
_JSONL_FIELDS = ("question", "sources", "answer", "expected", "audience", "id")
_AUDIENCES: tuple[str, ...] = get_args(Audience)
_BOM = "\ufeff"


def load_dataset(path: Path, *, limit: int | None = None) -> EvalSet:
    """Load an evaluation set; ``limit`` keeps the first N questions but the whole corpus.

    Raises InputError when the file cannot be read or does not fit its format; for JSONL the
    message names the line number.
    """
    if limit is not None and limit < 0:
        raise InputError(f"limit must be >= 0, got {limit}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the dataset: {exc}") from exc

    document = _squad_document(path, text)
    dataset = _load_jsonl(path, text) if document is None else _load_squad(path, document)
    if limit is None:
        return dataset
    return EvalSet(dataset.name, dataset.questions[:limit], dataset.candidates)


def _squad_document(path: Path, text: str) -> dict[str, Any] | None:
    """The parsed document if the file is SQuAD-style JSON, None if it should be read as JSONL."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return None
    is_json = suffix == ".json"
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        if is_json:
            raise InputError(
                f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
            ) from None
        return None
    if isinstance(document, dict) and isinstance(document.get("data"), list):
        return document
    if is_json:
        raise InputError(
            f"{path}: a .json dataset must be SQuAD-style with a top-level 'data' list; "
            "write one question per line to a .jsonl file instead"
        )
    return None


# --- JSONL --------------------------------------------------------------------------------------


def _load_jsonl(path: Path, text: str) -> EvalSet:
    questions = []
    # split("\n") rather than splitlines(): JSON strings may hold U+2028 and friends, and line
    # numbers must match what an editor shows.
    for lineno, line in enumerate(text.split("\n"), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("//"):
            continue
        try:
            questions.append(_jsonl_question(stripped, default_id=f"{path.stem}:{lineno}"))
        except ValueError as exc:
            raise InputError(f"{path}, line {lineno}: {exc}") from None
    return EvalSet(name=path.stem, questions=questions, candidates=None)


def _jsonl_question(line: str, *, default_id: str) -> EvalQuestion:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON at column {exc.colno}: {exc.msg}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(_JSONL_FIELDS))
    if unknown:
        # Strict on purpose: a misspelt "answr" or "source" would otherwise be dropped silently.
        names = ", ".join(map(repr, unknown))
        raise ValueError(f"unknown field(s) {names}; allowed: {', '.join(_JSONL_FIELDS)}")

    question = obj.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ValueError("'question' must be a non-empty string")
    expected = _optional_str(obj, "expected")
    if expected is not None and expected != ESCALATE:
        raise ValueError(
            f"'expected' may only be {ESCALATE!r} (omit it for answerable questions), got {expected!r}"
        )
    sources = obj.get("sources", [])
    if not isinstance(sources, list) or not all(isinstance(s, str) and s.strip() for s in sources):
        raise ValueError("'sources' must be a list of non-empty source id strings")
    if not sources and expected != ESCALATE:
        raise ValueError(f"'sources' must name at least one source id unless 'expected' is {ESCALATE!r}")
    audience = obj.get("audience", "customer")
    if audience not in _AUDIENCES:
        raise ValueError(f"'audience' must be one of {', '.join(_AUDIENCES)}, got {audience!r}")

    return EvalQuestion(
        question=question.strip(),
        sources=tuple(sources),
        answer=_optional_str(obj, "answer"),
        expected=expected,
        audience=audience,
        id=_optional_str(obj, "id") or default_id,
    )


def _optional_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"'{key}' must be a string, got {type(value).__name__}")
    return value


# --- XQuAD / XQuAD-R ----------------------------------------------------------------------------


def _load_squad(path: Path, document: dict[str, Any]) -> EvalSet:
    language = _language_from_name(path)
    articles = document["data"]
    try:
        # The format is decided by the first paragraph; every other one must then follow it.
        sentence_level = "sentences" in articles[0]["paragraphs"][0]
    except (KeyError, TypeError, IndexError):
        raise InputError(f"{path}: no paragraphs under data[0].paragraphs") from None

    questions: list[EvalQuestion] = []
    candidates: list[Candidate] = []
    slugs: set[str] = set()
    for a_idx, article in enumerate(articles):
        where = f"{path}: article {a_idx}"
        try:
            raw_title: str = article["title"]
            slug = _slug(raw_title) or f"article-{a_idx}"
            if slug in slugs:
                slug = f"{slug}-{a_idx}"
            slugs.add(slug)
            title = raw_title.replace("_", " ")
            for p_idx, paragraph in enumerate(article["paragraphs"]):
                where = f"{path}: article {a_idx} ({raw_title}), paragraph {p_idx}"
                base_id = f"{slug}/p{p_idx}"
                if sentence_level:
                    _add_sentences(paragraph, base_id, title, language, questions, candidates)
                else:
                    _add_paragraph(paragraph, base_id, title, language, questions, candidates)
        except (KeyError, TypeError, IndexError, AttributeError) as exc:
            raise InputError(f"{where}: missing or malformed field ({exc!r})") from None
        except ValueError as exc:
            raise InputError(f"{where}: {exc}") from None

    name = f"{'xquad-r' if sentence_level else 'xquad'}-{language}"
    return EvalSet(name=name, questions=questions, candidates=candidates)


def _add_paragraph(
    paragraph: dict[str, Any],
    base_id: str,
    title: str,
    language: str,
    questions: list[EvalQuestion],
    candidates: list[Candidate],
) -> None:
    candidates.append(Candidate(base_id, _clean(paragraph["context"]), title, "", language))
    for qa in paragraph["qas"]:
        questions.append(_squad_question(qa, base_id, language))


def _add_sentences(
    paragraph: dict[str, Any],
    base_id: str,
    title: str,
    language: str,
    questions: list[EvalQuestion],
    candidates: list[Candidate],
) -> None:
    sentences: list[str] = paragraph["sentences"]
    breaks: list[list[int]] = paragraph["sentence_breaks"]
    if len(sentences) != len(breaks):
        raise ValueError(f"{len(sentences)} sentences but {len(breaks)} sentence_breaks")
    context = _clean(paragraph["context"])
    for s_idx, sentence in enumerate(sentences):
        candidates.append(Candidate(f"{base_id}#s{s_idx}", _clean(sentence), title, context, language))
    for qa in paragraph["qas"]:
        start = _first_answer(qa)["answer_start"]
        # Breaks are [start, end) offsets into the raw context, leading BOM included, the same
        # coordinates as answer_start; so the lookup runs before any cleaning.
        hits = [i for i, (lo, hi) in enumerate(breaks) if lo <= start < hi]
        if len(hits) != 1:
            raise ValueError(
                f"question {qa.get('id')!r}: answer_start {start} falls in {len(hits)} sentences, "
                "expected exactly one"
            )
        questions.append(_squad_question(qa, f"{base_id}#s{hits[0]}", language))


def _squad_question(qa: dict[str, Any], gold: str, language: str) -> EvalQuestion:
    return EvalQuestion(
        question=qa["question"].strip(),
        sources=(gold,),
        answer=_clean(_first_answer(qa)["text"]),
        id=str(qa.get("id", "")),
        language=language,
    )


def _first_answer(qa: dict[str, Any]) -> dict[str, Any]:
    answers = qa["answers"]
    if not answers:
        raise ValueError(f"question {qa.get('id')!r} has no answers")
    first: dict[str, Any] = answers[0]
    return first


def _clean(text: str) -> str:
    # A few XQuAD ru contexts start with a BOM; it is noise for tokenisers and embedders.
    return text.replace(_BOM, "").strip()


def _slug(title: str) -> str:
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]+", "-", ascii_title.lower()).strip("-")


def _language_from_name(path: Path) -> str:
    match = re.search(r"(?:^|[._-])([a-z]{2})$", path.stem.lower())
    if match is None:
        raise InputError(
            f"{path}: cannot tell the language from the file name; name it like ru.json or xquad.ru.json"
        )
    return match.group(1)
