"""HTML: visible text by h1-h6 sections; page chrome (scripts, styles, nav, footer) dropped."""

from __future__ import annotations

import re
from pathlib import Path

from selectolax.lexbor import LexborHTMLParser, LexborNode

from rag.models import ParsedDocument
from rag.parsing.common import SectionBuilder, parse_audience
from rag.parsing.decoding import decode_text
from rag.text import normalize_text

_DECLARED_CHARSET = re.compile(rb"<meta[^>]+charset\s*=\s*[\"']?([\w.:-]+)", re.IGNORECASE)
_DROPPED = {"script", "style", "noscript", "template", "nav", "footer", "svg", "iframe", "object"}
_HEADING_LEVELS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
# Elements whose edges are paragraph breaks, and those whose edges are only line breaks.
_PARAGRAPHS = {"p", "blockquote", "ul", "ol", "dl", "table", "section", "article", "main", "aside",
               "header", "figure", "form", "fieldset", "details", "address", "hr"}
_LINES = {"div", "li", "tr", "dt", "dd", "caption", "figcaption", "summary", "br"}
_CELLS = {"td", "th"}


def parse_html(data: bytes, path: Path) -> ParsedDocument:
    declared = _DECLARED_CHARSET.search(data[:4096])
    text = decode_text(data, path.name, declared=declared.group(1).decode("ascii") if declared else None)
    tree = LexborHTMLParser(text)

    title = _node_text(tree.css_first("title")) or _node_text(tree.css_first("h1")) or path.stem
    builder = SectionBuilder(title)
    if tree.body is not None:
        _Walker(builder).run(tree.body)
    return ParsedDocument(
        title=title,
        sections=builder.sections(),
        url=_canonical_url(tree),
        audience=parse_audience(_meta(tree, "audience")) or "customer",
        kind="html",
    )


def _node_text(node: LexborNode | None) -> str:
    return normalize_text(" ".join((node.text() or "").split())) if node is not None else ""


def _meta(tree: LexborHTMLParser, name: str) -> str | None:
    for node in tree.css("meta[name]"):
        if (node.attributes.get("name") or "").strip().lower() == name:
            return node.attributes.get("content")
    return None


def _canonical_url(tree: LexborHTMLParser) -> str | None:
    for node in tree.css("link[rel][href]"):
        if "canonical" in (node.attributes.get("rel") or "").lower().split():
            return (node.attributes.get("href") or "").strip() or None
    return None


class _Walker:
    """Depth-first walk with an explicit stack: deeply nested pages must not hit recursion limits."""

    def __init__(self, builder: SectionBuilder) -> None:
        self._builder = builder
        self._inline: list[str] = []

    def run(self, root: LexborNode) -> None:
        stack: list[tuple[LexborNode, bool]] = [(root, False)]
        while stack:
            node, leaving = stack.pop()
            tag = node.tag or ""
            if leaving:
                self._boundary(tag)
            elif tag == "-text":
                self._inline.append(node.text(deep=False) or "")
            elif tag.startswith("-") or tag in _DROPPED:
                continue  # comments, doctype and page chrome
            elif tag in _HEADING_LEVELS:
                self._flush()
                self._builder.heading(_HEADING_LEVELS[tag], _node_text(node))
            elif tag == "pre":
                # Preformatted text keeps its line breaks and indentation.
                self._boundary("p")
                self._builder.add_line(node.text() or "")
                self._boundary("p")
            else:
                if tag in _CELLS and "".join(self._inline).strip():
                    self._inline.append(" | ")
                self._boundary(tag)
                stack.append((node, True))
                stack.extend((child, False) for child in reversed(list(node.iter(include_text=True))))
        self._flush()

    def _boundary(self, tag: str) -> None:
        if tag in _PARAGRAPHS:
            self._flush()
            self._builder.end_paragraph()
        elif tag in _LINES:
            self._flush()

    def _flush(self) -> None:
        line = " ".join("".join(self._inline).split())
        if line:
            self._builder.add_line(line)
        self._inline.clear()
