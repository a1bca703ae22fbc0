"""Sections to retrievable chunks: FAQ entries whole, long sections split at natural boundaries."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from rag.language import detect_language
from rag.models import Audience, Chunk, ParsedDocument, Section

# Below this many letters the script ratio says little, so the document's language wins.
_MIN_LETTERS_FOR_LANGUAGE = 40
# Enough text to tell the document's language without scanning a whole book.
_LANGUAGE_SAMPLE_CHARS = 20_000

# A sentence ends at . ! ? or … (maybe followed by closing quotes or brackets), whitespace,
# and a next sentence that does not start with a lowercase letter.
_SENTENCE_END = re.compile(r"[.!?…]+[»\"”’)\]]*(?=\s+\S)")
_NEXT_CHAR = re.compile(r"\s+(\S)")
_WORD_BEFORE = re.compile(r"(\w+)$")
# Abbreviations a period does not end a sentence after; one-letter words (initials,
# "т. е.", "и т. д.") are handled separately.
_ABBREVIATIONS = {
    "гг", "руб", "коп", "тыс", "млн", "млрд", "др", "пр", "стр", "рис", "ул", "кв", "им", "напр",
    "см", "мин", "макс", "прим", "тел", "доб", "eg", "etc", "vs", "mr", "mrs", "ms",
    "dr", "approx", "inc", "ltd", "st", "fig", "pp", "tel", "ext",
}


def chunk_document(
    doc: ParsedDocument, *, doc_id: str, max_chars: int = 1200, overlap_chars: int = 200
) -> list[Chunk]:
    """Chunks of one document in reading order; ``position`` numbers them from 0."""
    if not 0 <= overlap_chars < max_chars:
        raise ValueError("need 0 <= overlap_chars < max_chars")
    sample = " ".join(f"{s.question or ''} {s.text}" for s in doc.sections)[:_LANGUAGE_SAMPLE_CHARS]
    doc_language = detect_language(sample)
    chunks: list[Chunk] = []
    for section in doc.sections:
        if section.question is not None:
            texts = [_faq_text(section, doc_language)]
        else:
            texts = split_text(section.text, max_chars=max_chars, overlap_chars=overlap_chars)
        for text in texts:
            if text.strip():
                chunks.append(_chunk(doc, section, text, doc_id=doc_id, position=len(chunks),
                                     doc_language=doc_language))
    return chunks


def split_text(text: str, *, max_chars: int, overlap_chars: int) -> list[str]:
    """Pieces of at most ``max_chars``, cut at paragraph, line, then sentence boundaries.

    Each piece after the first starts with whole sentences from the end of the one before
    (up to ``overlap_chars``), so a fact that straddles a cut is still found in one piece.
    """
    text = text.strip()
    if len(text) <= max_chars:
        return [text] if text else []
    pieces: list[str] = []
    current = ""
    for separator, unit in _units(text, max_chars, level=0, separator=""):
        if not current:
            current = unit
        elif len(current) + len(separator) + len(unit) <= max_chars:
            current += separator + unit
        else:
            pieces.append(current)
            overlap = _overlap(current, overlap_chars)
            fits = overlap and len(overlap) + len(separator) + len(unit) <= max_chars
            current = overlap + separator + unit if fits else unit
    pieces.append(current)
    return pieces


def split_sentences(text: str) -> list[str]:
    """Russian and English sentences; abbreviations, initials and decimals do not end one."""
    sentences: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        if not _ends_sentence(text, match):
            continue
        sentences.append(text[start:match.end()].strip())
        start = match.end()
    sentences.append(text[start:].strip())
    return [s for s in sentences if s]


def _ends_sentence(text: str, match: re.Match[str]) -> bool:
    following = _NEXT_CHAR.match(text, match.end())
    if following is None or following.group(1).islower():
        return False
    if not match.group().startswith("."):
        return True
    word = _WORD_BEFORE.search(text, max(0, match.start() - 12), match.start())
    if word is None:
        return True
    before = word.group(1).casefold()
    return not ((len(before) == 1 and before.isalpha()) or before in _ABBREVIATIONS)


def _paragraphs(text: str, _max_chars: int) -> list[str]:
    return re.split(r"\n[ \t]*\n", text)


def _lines(text: str, _max_chars: int) -> list[str]:
    return text.split("\n")


def _sentences(text: str, _max_chars: int) -> list[str]:
    return split_sentences(text)


def _hard_cuts(text: str, max_chars: int) -> list[str]:
    """Last resort for a run of text with no sentence end (a huge table row): cut at spaces."""
    pieces = []
    while len(text) > max_chars:
        cut = text.rfind(" ", 0, max_chars + 1)
        cut = cut if cut > 0 else max_chars
        pieces.append(text[:cut].strip())
        text = text[cut:].strip()
    pieces.append(text)
    return pieces


# Ever finer ways to cut, with the string that joins the parts back together.
_LEVELS: list[tuple[str, Callable[[str, int], list[str]]]] = [
    ("\n\n", _paragraphs),
    ("\n", _lines),
    (" ", _sentences),
    (" ", _hard_cuts),
]


def _units(text: str, max_chars: int, *, level: int, separator: str) -> Iterator[tuple[str, str]]:
    """(separator before it, text) of the largest parts that fit in ``max_chars``."""
    if len(text) <= max_chars or level == len(_LEVELS):
        if text.strip():
            yield separator, text
        return
    joiner, cut = _LEVELS[level]
    first = True
    for part in cut(text, max_chars):
        if not part.strip():
            continue
        yield from _units(part, max_chars, level=level + 1, separator=separator if first else joiner)
        first = False


def _overlap(piece: str, overlap_chars: int) -> str:
    line = piece.rsplit("\n", 1)[-1]
    # Only the tail can fit; its first sentence is most likely cut, so it is never taken.
    start = max(0, len(line) - overlap_chars - 1)
    sentences = split_sentences(line[start:])[1 if start else 0:]
    taken: list[str] = []
    size = 0
    for sentence in reversed(sentences):
        if size + len(sentence) + 1 > overlap_chars:
            break
        taken.insert(0, sentence)
        size += len(sentence) + 1
    return " ".join(taken)


def _faq_text(section: Section, doc_language: str) -> str:
    question = section.question or ""
    language = _language(f"{question}\n{section.text}", doc_language)
    if language == "en":
        return f"Question: {question}\nAnswer: {section.text}"
    return f"Вопрос: {question}\nОтвет: {section.text}"


def _language(text: str, doc_language: str) -> str:
    language = detect_language(text, min_letters=_MIN_LETTERS_FOR_LANGUAGE)
    return doc_language if language == "unknown" else language


def _chunk(
    doc: ParsedDocument, section: Section, text: str, *, doc_id: str, position: int, doc_language: str
) -> Chunk:
    # The stricter audience wins: a row marked "customer" in a file the indexer or the
    # front matter marked internal must stay internal.
    audience: Audience = "operator" if "operator" in (doc.audience, section.audience) else "customer"
    header = " / ".join((doc.title, *section.heading_path))
    extra = {"kind": doc.kind}
    if section.question is not None:
        extra["question"] = section.question
    return Chunk(
        source_id=f"{doc_id}#{section.fragment}" if section.fragment else doc_id,
        doc_id=doc_id,
        title=doc.title,
        heading_path=section.heading_path,
        text=text,
        language=_language(text, doc_language),
        audience=audience,
        url=section.url or doc.url,
        embed_text=f"{header}\n{text}",
        position=position,
        extra=extra,
    )
