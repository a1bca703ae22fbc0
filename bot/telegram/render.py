"""Answers as Telegram messages: escaped HTML, a sources block, parts within Telegram's limits.

Telegram limits a message to 4096 characters *after* HTML parsing, counted in UTF-16 code
units (an emoji outside the BMP counts 2). Text is always split as plain text first and each
part escaped afterwards, so a split can never fall inside a tag or an entity; every part is
also kept within twice that many characters of HTML source, because escaping inflates text
(``&`` becomes five characters) and Telegram bounds the request as well.
"""

from __future__ import annotations

import html as _html
import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import urlsplit

from bot.i18n import t
from rag.answer import AnswerResult, SourceRef
from rag.prompts import strip_links

TELEGRAM_LIMIT = 4096
HTML_SOURCE_LIMIT = 2 * TELEGRAM_LIMIT
# A source line must fit in a message on its own whatever the documents' metadata holds.
_MAX_TITLE = 200
_MAX_HEADING = 200
_MAX_URL = 2048

_TAG = re.compile(r"<[^>]*>")
_LINE_BREAKS = re.compile(r"\r\n?")
# Boundaries from the most to the least natural; each consumes the whitespace around it, so
# dropping a separator at a split point loses whitespace only.
_SEPARATORS = (
    re.compile(r"[^\S\n]*\n[^\S\n]*\n\s*"),  # a blank line: paragraphs
    re.compile(r"[^\S\n]*\n\s*"),  # a line break
    # After ., !, ?, … optionally followed by one closing quote or bracket (fixed-width lookbehinds).
    re.compile(r"(?<=[.!?…])\s+|(?<=[.!?…][\"'»”)\]])\s+"),
    re.compile(r"\s+"),  # words
)
_ZWJ = "\u200d"


@dataclass(frozen=True)
class RenderedPart:
    """One Telegram message: ``html`` for parse_mode=HTML, ``plain`` the same text without markup.

    ``plain`` is what Telegram shows for ``html`` and the fallback when it refuses the HTML.
    """

    html: str
    plain: str


def telegram_length(text: str) -> int:
    """The length Telegram counts: UTF-16 code units."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def escape_html(text: str, *, quote: bool = False) -> str:
    """Escape ``&``, ``<`` and ``>`` for Telegram's HTML; ``quote=True`` also escapes quotes (attributes).

    Everything is escaped, including things that look like entities (``&foo;``, ``&amp;``):
    the text shows exactly as written.
    """
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if quote:
        text = text.replace('"', "&quot;").replace("'", "&#39;")
    return text


def html_to_plain(html: str) -> str:
    """The text of HTML we generated ourselves: tags dropped, entities decoded.

    Not a sanitizer for foreign HTML — it relies on ours never having ``>`` inside a tag.
    """
    return _html.unescape(_TAG.sub("", html))


@dataclass(frozen=True)
class _Budget:
    """Limits for one part: UTF-16 units of the visible text and, if set, the escaped HTML length."""

    units: int
    html: int | None

    def cost(self, text: str) -> tuple[int, int]:
        return telegram_length(text), len(escape_html(text)) if self.html is not None else 0

    def fits(self, cost: tuple[int, int]) -> bool:
        return cost[0] <= self.units and (self.html is None or cost[1] <= self.html)


def _add(*costs: tuple[int, int]) -> tuple[int, int]:
    return sum(c[0] for c in costs), sum(c[1] for c in costs)


def split_message(text: str, limit: int = TELEGRAM_LIMIT) -> list[str]:
    """Plain text in parts of at most ``limit`` UTF-16 units.

    Splits at paragraph, then line, then sentence, then word boundaries; only a "word" longer
    than the limit is cut inside, and never inside a surrogate pair, before a combining mark or
    around a zero-width joiner. Whitespace at split points is dropped; empty text gives ``[]``.
    """
    if limit < 2:
        raise ValueError("limit must be at least 2 UTF-16 units (one emoji)")
    return _split(_LINE_BREAKS.sub("\n", text), _Budget(limit, None), 0)


def _split(text: str, budget: _Budget, level: int) -> list[str]:
    text = text.strip()
    if not text:
        return []
    if budget.fits(budget.cost(text)):
        return [text]
    if level >= len(_SEPARATORS):
        return _hard_cut(text, budget)
    pieces = _pieces(text, _SEPARATORS[level])
    if len(pieces) == 1:
        return _split(text, budget, level + 1)
    # Greedy packing: as many whole pieces per part as fit; a piece too big on its own is split
    # at the next level and its last fragment keeps collecting the following pieces.
    chunks: list[str] = []
    current, current_cost, gap = "", (0, 0), ""
    for content, separator in pieces:
        content_cost = budget.cost(content)
        if current:
            joined = _add(current_cost, budget.cost(gap), content_cost)
            if budget.fits(joined):
                current, current_cost, gap = current + gap + content, joined, separator
                continue
            chunks.append(current)
        if budget.fits(content_cost):
            current, current_cost = content, content_cost
        else:
            fragments = _split(content, budget, level + 1)
            chunks.extend(fragments[:-1])
            current = fragments[-1]
            current_cost = budget.cost(current)
        gap = separator
    if current:
        chunks.append(current)
    return chunks


def _pieces(text: str, separator: re.Pattern[str]) -> list[tuple[str, str]]:
    """``text`` as (content, the separator after it) pairs; contents are never empty."""
    out: list[tuple[str, str]] = []
    pos = 0
    for match in separator.finditer(text):
        if match.start() > pos:
            out.append((text[pos : match.start()], match.group()))
        pos = match.end()
    if pos < len(text):
        out.append((text[pos:], ""))
    return out


def _hard_cut(text: str, budget: _Budget) -> list[str]:
    """A run without whitespace, cut into the longest prefixes that fit."""
    out: list[str] = []
    start = 0
    while start < len(text):
        units = size = 0
        end = start
        while end < len(text):
            ch = text[end]
            units += 2 if ord(ch) > 0xFFFF else 1
            if budget.html is not None:
                size += len(escape_html(ch))
            if not budget.fits((units, size)):
                break
            end += 1
        if end == len(text):
            out.append(text[start:])
            break
        end = max(end, start + 1)  # always progress: a limit of 2 holds any single code point
        cut = _cluster_boundary(text, start, end)
        out.append(text[start:cut])
        start = cut
    return out


def _extends_cluster(ch: str) -> bool:
    """True for characters that attach to the previous one (so a cut before them splits a glyph)."""
    code = ord(ch)
    return (
        unicodedata.category(ch) in ("Mn", "Mc", "Me")
        or ch in (_ZWJ, "\ufe0e", "\ufe0f")
        or 0x1F3FB <= code <= 0x1F3FF  # skin tone modifiers
        or 0xE0020 <= code <= 0xE007F  # emoji tag sequences (subdivision flags)
    )


def _is_regional_indicator(ch: str) -> bool:
    return 0x1F1E6 <= ord(ch) <= 0x1F1FF


def _cluster_boundary(text: str, start: int, end: int) -> int:
    """The nearest cut at or before ``end`` that does not split an emoji or an accented letter.

    Falls back to ``end`` when the whole fragment is one huge cluster (say, a run of
    combining marks): the message must still go out.
    """
    cut = end
    while cut > start and (_extends_cluster(text[cut]) or text[cut - 1] == _ZWJ):
        cut -= 1
    # A flag is a pair of regional indicators; count the run to know whether cut is mid-pair.
    if cut > start and _is_regional_indicator(text[cut]) and _is_regional_indicator(text[cut - 1]):
        run = 0
        while cut - 1 - run >= start and _is_regional_indicator(text[cut - 1 - run]):
            run += 1
        if run % 2 and cut - 1 > start:
            cut -= 1
    return cut if cut > start else end


def _fits(part: RenderedPart) -> bool:
    return telegram_length(part.plain) <= TELEGRAM_LIMIT and len(part.html) <= HTML_SOURCE_LIMIT


def _join(a: RenderedPart, separator: str, b: RenderedPart) -> RenderedPart:
    return RenderedPart(a.html + separator + b.html, a.plain + separator + b.plain)


def _part(html: str) -> RenderedPart:
    return RenderedPart(html, html_to_plain(html))


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())  # a newline in a title would break the one-line-per-source layout
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _link_target(url: str | None) -> str | None:
    """``url`` if it is a plain http(s) link we may put into an href, else None."""
    if not url or len(url) > _MAX_URL or any(ch.isspace() or not ch.isprintable() for ch in url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return url if parts.scheme.lower() in ("http", "https") and parts.netloc else None


def _source_line(source: SourceRef) -> str:
    # Titles and headings are the documents' own text, which anyone who can edit a document
    # writes: Telegram would link an address in them («evil.example», a URL smuggled into a
    # heading). Only the source's own URL may appear, and only as the link target.
    own = [source.url] if source.url else []
    title = _shorten(strip_links(source.title, own), _MAX_TITLE) or _shorten(source.source_id, _MAX_TITLE) or "—"
    heading = _shorten(strip_links(source.heading, own), _MAX_HEADING)
    target = _link_target(source.url)
    shown = (
        f'<a href="{escape_html(target, quote=True)}">{escape_html(title)}</a>' if target else escape_html(title)
    )
    line = f"[{source.n}] {shown}"
    if heading and heading != title:
        line += f" — {escape_html(heading)}"
    return line


def _tail(result: AnswerResult, lang: str) -> list[RenderedPart]:
    """The note and the sources block, packed into as few parts as fit (usually one).

    Units are whole lines, so a part never ends inside a tag; the heading stays with the
    first source.
    """
    units: list[tuple[str, RenderedPart]] = []  # (separator before it, unit)
    if result.mode == "extractive":
        units.append(("", _part(f"<i>{t(lang, 'extractive_note')}</i>")))
    # An escalation ("none") carries sources only for the operator: they did not answer.
    sources = [] if result.mode == "none" else sorted(result.sources, key=lambda s: s.n)
    for i, source in enumerate(sources):
        line = _source_line(source)
        if i == 0:
            units.append(("\n\n", _part(f"<b>{t(lang, 'sources_heading')}</b>\n{line}")))
        else:
            units.append(("\n", _part(line)))
    parts: list[RenderedPart] = []
    for separator, unit in units:
        if parts:
            joined = _join(parts[-1], separator, unit)
            if _fits(joined):
                parts[-1] = joined
                continue
        parts.append(unit)
    return parts


def render_answer(result: AnswerResult, *, lang: str) -> list[RenderedPart]:
    """``result`` as Telegram messages, in order; ``[]`` when there is nothing to show.

    The model's text is untrusted and escaped whole: markup in it shows literally. The note
    (extractive answers) and the sources block go with the last part, or into their own part
    when they do not fit. Sources of an escalation (mode "none") are not shown to the customer.
    """
    body = _split(_LINE_BREAKS.sub("\n", result.text), _Budget(TELEGRAM_LIMIT, HTML_SOURCE_LIMIT), 0)
    parts = [RenderedPart(escape_html(chunk), chunk) for chunk in body]
    tail = _tail(result, lang)
    if tail and parts:
        joined = _join(parts[-1], "\n\n", tail[0])
        if _fits(joined):
            parts[-1] = joined
            tail = tail[1:]
    return parts + tail
