"""FAQ sheets (CSV, XLSX): one Section per row that has both a question and an answer.

Columns are found by their header names in Russian or English, so the column order and
any extra columns do not matter. Fragments carry the row number a person sees in Excel.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import openpyxl

from rag.errors import DocumentError
from rag.models import ParsedDocument, Section
from rag.parsing.common import FragmentNames, library_failure, parse_audience
from rag.parsing.decoding import decode_text
from rag.text import normalize_text, slugify

_HEADER_NAMES = {
    "question": {"вопрос", "вопросы", "question", "questions", "q"},
    "answer": {"ответ", "ответы", "answer", "answers", "a"},
    "category": {"категория", "раздел", "тема", "category", "section", "topic"},
    "url": {"url", "ссылка", "link"},
    "audience": {"аудитория", "audience"},
}
# The header is usually row 1, but sheets often start with a title line or blank rows.
_HEADER_SEARCH_ROWS = 10
_DELIMITERS = [",", ";", "\t"]
_NOT_WORD = re.compile(r"[\W_]+")

Row = Sequence[object]


@dataclass(frozen=True)
class _Columns:
    header_row: int  # 0-based index into the rows
    indexes: dict[str, int]

    def value(self, row: Row, name: str) -> str:
        index = self.indexes.get(name)
        return _cell(row[index]) if index is not None and index < len(row) else ""


def parse_csv(data: bytes, path: Path) -> ParsedDocument:
    text = decode_text(data, path.name)
    for delimiter in _delimiter_candidates(text):
        try:
            rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
        except csv.Error as exc:
            raise DocumentError(f"malformed CSV {path.name}: {exc}") from exc
        sections = _faq_sections(rows, fragment_prefix="")
        if sections is not None:
            return ParsedDocument(title=path.stem, sections=sections, kind="faq")
    raise _no_columns(path)


def parse_xlsx(data: bytes, path: Path) -> ParsedDocument:
    try:
        workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
        try:
            sheets = [(sheet.title, list(sheet.iter_rows(values_only=True))) for sheet in workbook.worksheets]
            title = normalize_text(workbook.properties.title or "")
        finally:
            workbook.close()
    except Exception as exc:  # openpyxl and zipfile raise many types on damaged files
        raise library_failure("XLSX", path.name, exc) from exc

    prefixes = FragmentNames()
    sections: list[Section] = []
    found = False
    for number, (sheet_title, rows) in enumerate(sheets, start=1):
        # Several sheets need the sheet name to tell their rows apart; one keeps the short "row-N".
        prefix = f"{prefixes.claim(slugify(sheet_title) or f'sheet-{number}')}-" if len(sheets) > 1 else ""
        sheet_sections = _faq_sections(rows, fragment_prefix=prefix)
        if sheet_sections is not None:
            found = True
            sections.extend(sheet_sections)
    if not found:
        raise _no_columns(path)
    return ParsedDocument(title=title or path.stem, sections=sections, kind="faq")


def _delimiter_candidates(text: str) -> list[str]:
    """The sniffed delimiter first, then the others: the header check decides."""
    try:
        sniffed = csv.Sniffer().sniff(text[:8192], delimiters="".join(_DELIMITERS)).delimiter
    except csv.Error:
        return _DELIMITERS
    return [sniffed, *(d for d in _DELIMITERS if d != sniffed)]


def _faq_sections(rows: Sequence[Row], *, fragment_prefix: str) -> list[Section] | None:
    """Sections of one sheet, or None when it has no question and answer columns."""
    columns = _find_columns(rows)
    if columns is None:
        return None
    sections = []
    for index in range(columns.header_row + 1, len(rows)):
        row = rows[index]
        question, answer = columns.value(row, "question"), columns.value(row, "answer")
        if not (question and answer):
            continue
        category = columns.value(row, "category")
        sections.append(Section(
            text=answer,
            heading_path=(category,) if category else (),
            fragment=f"{fragment_prefix}row-{index + 1}",
            question=question,
            url=columns.value(row, "url") or None,
            audience=parse_audience(columns.value(row, "audience")),
        ))
    return sections


def _find_columns(rows: Sequence[Row]) -> _Columns | None:
    for row_index, row in enumerate(rows[:_HEADER_SEARCH_ROWS]):
        indexes: dict[str, int] = {}
        for column, value in enumerate(row):
            key = _NOT_WORD.sub(" ", _cell(value).casefold()).strip()
            for name, synonyms in _HEADER_NAMES.items():
                if key in synonyms:
                    indexes.setdefault(name, column)
        if "question" in indexes and "answer" in indexes:
            return _Columns(header_row=row_index, indexes=indexes)
    return None


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # Excel stores every number as a float; "3.0" reads wrong in an answer
    return normalize_text(str(value))


def _no_columns(path: Path) -> DocumentError:
    return DocumentError(
        f"no FAQ columns in {path.name}: expected headers such as 'Вопрос' and 'Ответ' "
        "(or 'Question' and 'Answer')"
    )
