"""Text clean-up shared by every parser, and slugs for ``#fragment`` ids."""

from __future__ import annotations

import re
import unicodedata

# Invisible characters that survive NFKC: zero-width spaces/joiners, word joiner, BOM, bidi
# controls and the soft hyphen. They split words for BM25 and can hide text from a reviewer.
# (Regular expressions, not str.translate: translate is slow on non-ASCII text.)
_INVISIBLE = re.compile("[\u00ad\u200b-\u200f\u202a-\u202e\u2060\u2066-\u2069\ufeff]")
_LINE_BREAK = re.compile("\r\n?|[\u2028\x85\v\f]")
# Exactly the Unicode "Cc" category minus tab and line feed (CR is turned into LF first).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_INNER_SPACES = re.compile(r"(?<=\S) {2,}")
_BLANK_RUNS = re.compile(r"\n{3,}")
_SLUG_SEPARATORS = re.compile(r"[^\w]+|_+")


def normalize_text(s: str) -> str:
    """NFKC, no invisible or control characters, single spaces, at most one blank line.

    Leading indentation is kept because it carries the structure of code blocks and
    nested lists; runs of spaces inside a line are collapsed.
    """
    s = _LINE_BREAK.sub("\n", s).replace("\u2029", "\n\n")
    s = _INVISIBLE.sub("", unicodedata.normalize("NFKC", s))
    s = _CONTROL.sub("", s)
    lines = [_INNER_SPACES.sub(" ", line.rstrip()) for line in s.split("\n")]
    return _BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip()


def slugify(s: str) -> str:
    """Lowercase letters and digits of any script (Cyrillic stays Cyrillic) joined by '-'."""
    s = _INVISIBLE.sub("", unicodedata.normalize("NFKC", s)).lower()
    return _SLUG_SEPARATORS.sub("-", s).strip("-")
