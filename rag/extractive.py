"""Extractive answers: the best matching passage, quoted with its source.

Used when no model is configured or the model failed; the pipeline marks the result as
extractive so no channel presents it as a generated answer.
"""

from __future__ import annotations

import re

from rag.prompts import strip_links
from rag.store import Hit

_HEADER = {
    "ru": "Вот что говорится в документе «{title}»:",
    "en": 'Here is what the document "{title}" says:',
}
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")


def extract_passage(text: str, max_chars: int = 700) -> str:
    """The passage cut at a sentence end so a quote never stops mid-word."""
    text = text.strip()
    if len(text) <= max_chars:
        return text
    out = ""
    for sentence in _SENTENCE_END.split(text):
        if out and len(out) + len(sentence) + 1 > max_chars:
            break
        out = f"{out} {sentence}".strip()
    return out if out else text[:max_chars].rsplit(" ", 1)[0] + "…"


def extractive_answer(hit: Hit, language: str, max_chars: int = 700) -> str:
    header = _HEADER.get(language, _HEADER["ru"]).format(title=hit.title)
    # A quoted passage or title may carry a link a poisoned document planted: the same filter
    # as the model's answers, only the source's own address kept.
    allowed = [hit.url] if hit.url else []
    return strip_links(f"{header}\n\n{extract_passage(hit.text, max_chars)} [1]", allowed)
