"""Plain text: one section; the chunker does the splitting."""

from __future__ import annotations

from pathlib import Path

from rag.models import ParsedDocument, Section
from rag.parsing.common import title_from_first_line
from rag.parsing.decoding import decode_text
from rag.text import normalize_text


def parse_plain(data: bytes, path: Path) -> ParsedDocument:
    text = normalize_text(decode_text(data, path.name))
    return ParsedDocument(
        title=title_from_first_line(text, path.stem),
        sections=[Section(text=text)] if text else [],
        kind="text",
    )
