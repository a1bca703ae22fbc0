"""Value objects shared across the knowledge base: parsed documents and chunks."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

Audience = Literal["customer", "operator"]


@dataclass(frozen=True)
class Section:
    """A piece of a parsed document that belongs under one heading path.

    ``fragment`` names the piece inside its file (a heading slug, ``row-12``, ``page-3``);
    empty when the file is a single section. FAQ rows set ``question`` and ``text`` holds
    the answer; one FAQ entry becomes exactly one chunk. ``url`` and ``audience`` are set
    only where one section differs from its document (an FAQ row's own link or audience);
    None means "as the document".
    """

    text: str
    heading_path: tuple[str, ...] = ()
    fragment: str = ""
    question: str | None = None
    url: str | None = None
    audience: Audience | None = None


@dataclass(frozen=True)
class ParsedDocument:
    """What a parser returns for one file."""

    title: str
    sections: list[Section]
    url: str | None = None  # a link to the original, e.g. from Markdown front matter
    audience: Audience = "customer"
    kind: str = "text"  # markdown | text | html | pdf | docx | faq


@dataclass(frozen=True)
class Chunk:
    """One retrievable unit. ``source_id`` is ``relative/path.ext`` plus ``#fragment``.

    ``text`` is what the model and the user see; ``embed_text`` is what is embedded and
    indexed for BM25 (the text with its title and heading path, so a chunk that says "it
    costs 300 rubles" is still found by the name of the tariff in its heading).
    """

    source_id: str
    doc_id: str  # relative file path, the unit of incremental indexing
    title: str
    heading_path: tuple[str, ...]
    text: str
    language: str  # "ru" | "en" | other ISO code
    audience: Audience = "customer"
    url: str | None = None
    embed_text: str = ""
    position: int = 0  # order of the chunk inside its document
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        h = hashlib.sha256()
        for part in (self.source_id, self.title, "/".join(self.heading_path), self.text,
                     self.embed_text, self.audience, self.url or ""):
            h.update(part.encode("utf-8"))
            h.update(b"\x00")
        return h.hexdigest()
