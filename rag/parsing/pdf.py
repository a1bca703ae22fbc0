"""PDF: one section per page with text (``page-N``), so a citation points at a page."""

from __future__ import annotations

import io
import re
from pathlib import Path

from pypdf import PdfReader

from rag.errors import DocumentError
from rag.models import ParsedDocument, Section
from rag.parsing.common import library_failure, title_from_first_line
from rag.text import normalize_text

# Titles PDF producers write when the author gave none; the first line of text is better.
_PLACEHOLDER_TITLE = re.compile(
    r"^(?:untitled|без названия|microsoft (?:word|powerpoint|excel) - .*|.*\.(?:docx?|odt|rtf|pdf))$",
    re.IGNORECASE,
)


def parse_pdf(data: bytes, path: Path) -> ParsedDocument:
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise DocumentError(f"encrypted PDF {path.name}: a password is required")
        metadata_title = normalize_text((reader.metadata.title if reader.metadata else None) or "")
        if _PLACEHOLDER_TITLE.match(metadata_title):
            metadata_title = ""
        sections = [
            Section(text=text, fragment=f"page-{number}")
            for number, page in enumerate(reader.pages, start=1)
            if (text := normalize_text(page.extract_text() or ""))
        ]
    except DocumentError:
        raise
    except Exception as exc:  # pypdf raises many unrelated types on damaged files
        raise library_failure("PDF", path.name, exc) from exc
    first_text = sections[0].text if sections else ""
    return ParsedDocument(
        title=metadata_title or title_from_first_line(first_text, path.stem),
        sections=sections,
        kind="pdf",
    )
