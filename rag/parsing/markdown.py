"""Markdown: ``key: value`` front matter, sections by ATX headings, code fences kept as text."""

from __future__ import annotations

import re
from pathlib import Path

from rag.models import ParsedDocument
from rag.parsing.common import SectionBuilder, parse_audience
from rag.parsing.decoding import decode_text
from rag.text import normalize_text

_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_CLOSING_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})[ \t]*$")
_FRONT_MATTER_KEY = re.compile(r"^([A-Za-z_][\w-]*)\s*:\s*(.*)$")
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_INLINE_MARKS = re.compile(r"[*`]+")


def parse_markdown(data: bytes, path: Path) -> ParsedDocument:
    lines = normalize_text(decode_text(data, path.name)).split("\n")
    meta, lines = _split_front_matter(lines)
    headings = _headings(lines)
    first_h1 = next((text for level, text, _ in headings if level == 1), None)
    title = meta.get("title") or first_h1 or path.stem

    builder = SectionBuilder(title)
    heading_at = {index: (level, text) for level, text, index in headings}
    for index, line in enumerate(lines):
        if index in heading_at:
            builder.heading(*heading_at[index])
        else:
            builder.add_line(line)
    return ParsedDocument(
        title=title,
        sections=builder.sections(),
        url=meta.get("url") or None,
        audience=parse_audience(meta.get("audience")) or "customer",
        kind="markdown",
    )


def _split_front_matter(lines: list[str]) -> tuple[dict[str, str], list[str]]:
    """Simple ``key: value`` pairs between ``---`` lines at the very top; no YAML library."""
    if not lines or lines[0].strip() != "---":
        return {}, lines
    for end in range(1, len(lines)):
        if lines[end].strip() in ("---", "..."):
            break
    else:
        return {}, lines  # no closing line: the "---" is a thematic break, not front matter
    meta: dict[str, str] = {}
    for line in lines[1:end]:
        match = _FRONT_MATTER_KEY.match(line.strip())
        if match:
            meta[match.group(1).lower()] = match.group(2).strip().strip("\"'").strip()
    return meta, lines[end + 1:]


def _headings(lines: list[str]) -> list[tuple[int, str, int]]:
    """(level, text, line index) of every ATX heading outside fenced code blocks."""
    found: list[tuple[int, str, int]] = []
    fence: str | None = None
    for index, line in enumerate(lines):
        if fence is not None:
            closing = _CLOSING_FENCE.match(line)
            if closing and closing.group(1)[0] == fence[0] and len(closing.group(1)) >= len(fence):
                fence = None
            continue
        opening = _FENCE.match(line)
        if opening:
            fence = opening.group(1)
            continue
        match = _HEADING.match(line)
        if match:
            found.append((len(match.group(1)), _plain(match.group(2) or ""), index))
    return found


def _plain(heading: str) -> str:
    """Heading text without link targets and emphasis/code marks, as a reader sees it."""
    return _INLINE_MARKS.sub("", _LINK.sub(r"\1", heading)).strip()
