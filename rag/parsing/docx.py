"""Word documents: heading styles make the heading path, tables become ``a | b | c`` rows."""

from __future__ import annotations

import io
import re
from pathlib import Path

import docx
from docx.table import Table
from docx.text.paragraph import Paragraph

from rag.models import ParsedDocument
from rag.parsing.common import SectionBuilder, library_failure
from rag.text import normalize_text

# Word stores built-in style names in English, but documents made by a Russian Word or
# LibreOffice often carry localised names. Russian Word calls the Title style "Заголовок".
_HEADING_STYLE = re.compile(r"^(?:heading|заголовок)\s*([1-6])$", re.IGNORECASE)
_TITLE_STYLES = {"title", "название", "заголовок"}


def parse_docx(data: bytes, path: Path) -> ParsedDocument:
    try:
        document = docx.Document(io.BytesIO(data))
        blocks = [_block(item) for item in document.iter_inner_content()]
        core_title = normalize_text(document.core_properties.title or "")
    except Exception as exc:  # python-docx and zipfile raise many types on damaged files
        raise library_failure("DOCX", path.name, exc) from exc

    title = core_title or next((text for level, text in blocks if level == 1 and text), "") or path.stem
    builder = SectionBuilder(title)
    for level, text in blocks:
        if level:
            builder.heading(level, text)
        else:
            builder.add_line(text)
            builder.end_paragraph()
    return ParsedDocument(title=title, sections=builder.sections(), kind="docx")


def _block(item: Paragraph | Table) -> tuple[int, str]:
    """(heading level or 0, text) of one body element; a Title paragraph counts as level 1."""
    if isinstance(item, Table):
        return 0, _table_text(item)
    style = (item.style.name if item.style is not None else "") or ""
    style = style.strip()
    if style.casefold() in _TITLE_STYLES:
        return 1, item.text
    match = _HEADING_STYLE.match(style)
    return (int(match.group(1)) if match else 0), item.text


def _table_text(table: Table) -> str:
    rows = []
    for row in table.rows:
        cells = []
        previous = None
        for cell in row.cells:
            # A horizontally merged cell is returned once per grid column it spans.
            if previous is not None and cell._tc is previous._tc:
                continue
            previous = cell
            cells.append(" ".join(cell.text.split()))
        if any(cells):
            rows.append(" | ".join(cells))
    return "\n".join(rows)
