"""Cheap, deterministic language guess: Russian or English by the letters of the text."""

from __future__ import annotations

import re

# Links, e-mail addresses and inline code are Latin whatever the language of the prose
# around them; counting them would turn a Russian instruction full of URLs into "en".
_LATIN_NOISE = re.compile(r"\b(?:https?://|www\.)\S+|\S+@\S+\.\w+|`[^`\n]*`")
_CYRILLIC = re.compile(r"[\u0400-\u04FF]")
_LATIN = re.compile(r"[A-Za-z\u00C0-\u024F]")


def detect_language(text: str, *, min_letters: int = 1) -> str:
    """``"ru"``, ``"en"`` or ``"unknown"`` (fewer than ``min_letters`` letters).

    The majority script wins; a tie goes to Russian, the product's first language.
    """
    text = _LATIN_NOISE.sub(" ", text)
    cyrillic = len(_CYRILLIC.findall(text))
    latin = len(_LATIN.findall(text))
    if cyrillic + latin < max(min_letters, 1):
        return "unknown"
    return "ru" if cyrillic >= latin else "en"
