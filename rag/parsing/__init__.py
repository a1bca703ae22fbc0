"""Files to ``ParsedDocument``: one parser per format, chosen by the file suffix.

Every failure to read a file is a ``DocumentError`` so the indexer can skip the file,
report why, and carry on with the rest of the knowledge base.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from rag.errors import DocumentError
from rag.models import ParsedDocument
from rag.parsing.docx import parse_docx
from rag.parsing.html import parse_html
from rag.parsing.markdown import parse_markdown
from rag.parsing.pdf import parse_pdf
from rag.parsing.plain import parse_plain
from rag.parsing.spreadsheet import parse_csv, parse_xlsx

_PARSERS: dict[str, Callable[[bytes, Path], ParsedDocument]] = {
    ".md": parse_markdown,
    ".markdown": parse_markdown,
    ".txt": parse_plain,
    ".html": parse_html,
    ".htm": parse_html,
    ".pdf": parse_pdf,
    ".docx": parse_docx,
    ".csv": parse_csv,
    ".xlsx": parse_xlsx,
}
SUPPORTED_SUFFIXES: frozenset[str] = frozenset(_PARSERS)

__all__ = ["SUPPORTED_SUFFIXES", "parse_file"]


def parse_file(path: Path, *, max_bytes: int) -> ParsedDocument:
    """Parse one knowledge-base file; raises DocumentError when it cannot be used."""
    parser = _PARSERS.get(path.suffix.lower())
    if parser is None:
        raise DocumentError(f"unsupported file type {path.suffix or '(none)'}: {path.name}")
    try:
        # The size is checked before reading so a huge file never reaches memory.
        size = path.stat().st_size
        if size > max_bytes:
            raise _too_large(path, f"{size} bytes", max_bytes)
        with path.open("rb") as file:
            data = file.read(max_bytes + 1)  # bounded: the file may have grown since stat()
    except OSError as exc:
        raise DocumentError(f"cannot read {path.name}: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        raise _too_large(path, f"over {max_bytes} bytes", max_bytes)
    if not data.strip():
        raise DocumentError(f"empty file {path.name}")

    document = parser(data, path)
    sections = [section for section in document.sections if section.text.strip()]
    if not sections:
        raise DocumentError(f"empty document {path.name}: no text found")
    return replace(document, sections=sections)


def _too_large(path: Path, size: str, max_bytes: int) -> DocumentError:
    return DocumentError(f"{path.name} is too large: {size}, the limit is {max_bytes} bytes")
