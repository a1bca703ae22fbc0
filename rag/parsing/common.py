"""Pieces every parser shares: heading-based sections, unique fragments, audience, titles."""

from __future__ import annotations

from rag.errors import DocumentError
from rag.models import Audience, Section
from rag.text import normalize_text, slugify

_CUSTOMER_WORDS = {"customer", "customers", "public", "all", "everyone", "клиент", "клиенты", "все"}
# Plain-text and PDF titles come from the first line only when it looks like a title.
MAX_FIRST_LINE_TITLE = 100


def parse_audience(value: str | None) -> Audience | None:
    """Map a front-matter, meta or spreadsheet value to an audience; None when absent.

    An unrecognised value fails closed to "operator": a typo must not publish internal notes.
    """
    word = (value or "").strip().casefold()
    if not word:
        return None
    return "customer" if word in _CUSTOMER_WORDS else "operator"


def title_from_first_line(text: str, fallback: str) -> str:
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line if len(line) < MAX_FIRST_LINE_TITLE else fallback
    return fallback


def library_failure(kind: str, name: str, exc: BaseException) -> DocumentError:
    """A short DocumentError for a file a third-party reader choked on."""
    reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return DocumentError(f"corrupt {kind} {name}: {reason}")


class FragmentNames:
    """Hands out fragment ids that are unique within one file (``faq``, ``faq-2``...)."""

    def __init__(self) -> None:
        self._used: set[str] = set()

    def claim(self, wanted: str) -> str:
        name, n = wanted, 1
        while name in self._used:
            n += 1
            name = f"{wanted}-{n}"
        self._used.add(name)
        return name


class SectionBuilder:
    """Collects text blocks under the headings seen so far (Markdown, HTML, DOCX).

    The first level-1 heading equal to the document title is the title itself: it is left
    out of heading paths, and text under it joins the text before any heading (fragment "").
    """

    def __init__(self, title: str) -> None:
        self._title_key = title.casefold()
        self._title_seen = False
        self._stack: list[tuple[int, str]] = []
        self._fragments = FragmentNames()
        self._done: list[Section] = []
        self._path: tuple[str, ...] = ()
        self._fragment = ""
        self._lines: list[str] = []

    def heading(self, level: int, text: str) -> None:
        text = normalize_text(text)
        if not text:
            return
        if level == 1 and not self._title_seen and text.casefold() == self._title_key:
            self._title_seen = True
            self._stack.clear()
            if self._path or self._fragment:
                self._start((), "")
            return
        while self._stack and self._stack[-1][0] >= level:
            self._stack.pop()
        self._stack.append((level, text))
        fragment = self._fragments.claim(slugify(text) or "section")
        self._start(tuple(t for _, t in self._stack), fragment)

    def add_line(self, line: str) -> None:
        self._lines.append(line)

    def end_paragraph(self) -> None:
        self._lines.append("")

    def sections(self) -> list[Section]:
        self._flush()
        return self._done

    def _start(self, path: tuple[str, ...], fragment: str) -> None:
        self._flush()
        self._path, self._fragment = path, fragment

    def _flush(self) -> None:
        text = normalize_text("\n".join(self._lines))
        if text:
            self._done.append(Section(text=text, heading_path=self._path, fragment=self._fragment))
        self._lines = []
