"""Rendering answers for Telegram: escaping, sources, limits as Telegram counts them, splitting."""

from __future__ import annotations

import dataclasses
import re

import pytest

from bot.telegram.render import (
    HTML_SOURCE_LIMIT,
    TELEGRAM_LIMIT,
    RenderedPart,
    escape_html,
    html_to_plain,
    render_answer,
    split_message,
    telegram_length,
)
from rag.answer import AnswerResult, Mode, SourceRef

# --- a tiny validator of Telegram HTML (there is no Telegram here) ------------------------

_ALLOWED_TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "code", "pre", "a", "blockquote"}
_TAG_TOKEN = re.compile(r"(<[^<>]*>)")
_TAG_SHAPE = re.compile(r'<(/?)([a-z]+)((?: href="[^"<>]*")?)>')
# Telegram knows only these named entities, plus numeric ones.
_ENTITY = re.compile(r"&(?:amp|lt|gt|quot|#[0-9]{1,7}|#x[0-9a-fA-F]{1,6});")


def _assert_entities_valid(text: str) -> None:
    bare = _ENTITY.sub("", text)
    assert "&" not in bare, f"an ampersand that is not a known entity in {text!r}"


def assert_valid_telegram_html(html: str) -> None:
    """Only allowed tags, balanced and properly nested; only <a> has an attribute (href);
    text has no raw < or > and every & starts a known entity."""
    stack: list[str] = []
    for token in _TAG_TOKEN.split(html):
        if token.startswith("<") and token.endswith(">"):
            match = _TAG_SHAPE.fullmatch(token)
            assert match, f"malformed or unexpected tag {token!r}"
            closing, name, attrs = match.groups()
            assert name in _ALLOWED_TAGS, f"tag {name!r} is not allowed"
            if closing:
                assert not attrs, f"attributes on a closing tag {token!r}"
                assert stack and stack[-1] == name, f"unbalanced {token!r} (open: {stack})"
                stack.pop()
            else:
                assert bool(attrs) == (name == "a"), f"wrong attributes in {token!r}"
                _assert_entities_valid(attrs)
                stack.append(name)
        else:
            assert "<" not in token and ">" not in token, f"raw angle bracket in {token!r}"
            _assert_entities_valid(token)
    assert not stack, f"unclosed tags {stack}"


def test_validator_itself_rejects_bad_html() -> None:
    assert_valid_telegram_html('<b>a</b> <a href="https://x.example/?a=1&amp;b=2">l</a> &lt;&#39;')
    for bad in ("<b>a", "<b>a</i>", "<script>x</script>", "a < b", "&foo;", '<b class="x">a</b>', "<a>x</a>"):
        with pytest.raises(AssertionError):
            assert_valid_telegram_html(bad)


# --- helpers ------------------------------------------------------------------------------


def _source(n: int = 1, *, title: str = "Тарифы", url: str | None = "https://bank.example/t",
            heading: str = "Комиссии") -> SourceRef:
    return SourceRef(n=n, source_id=f"doc{n}.md#s", title=title, url=url, heading=heading, similarity=0.9)


def _result(text: str, sources: list[SourceRef] | None = None, mode: Mode = "generated") -> AnswerResult:
    return AnswerResult(
        text=text, sources=[_source()] if sources is None else sources, confidence=0.9,
        escalate=mode == "none", reason="no_relevant_documents" if mode == "none" else None,
        mode=mode, language="ru",
    )


def _check_parts(parts: list[RenderedPart]) -> None:
    assert parts
    for part in parts:
        assert telegram_length(part.plain) <= TELEGRAM_LIMIT
        assert len(part.html) <= HTML_SOURCE_LIMIT
        assert part.plain.strip()
        assert html_to_plain(part.html) == part.plain
        assert_valid_telegram_html(part.html)


def _squash(text: str) -> str:
    return " ".join(text.split())


# --- primitives ---------------------------------------------------------------------------


def test_escape_html_exact() -> None:
    assert escape_html("<script>alert(1)</script>") == "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert escape_html("&foo;") == "&amp;foo;"
    assert escape_html("&amp; &#99999999; a>b") == "&amp;amp; &amp;#99999999; a&gt;b"
    assert escape_html('say "hi"') == 'say "hi"'  # text nodes keep quotes
    assert escape_html("""a"b'c""", quote=True) == "a&quot;b&#39;c"


def test_telegram_length_counts_utf16_units() -> None:
    assert telegram_length("") == 0
    assert telegram_length("abc") == 3
    assert telegram_length("ёжик") == 4
    assert telegram_length("😀") == 2
    assert telegram_length("👨\u200d👩\u200d👧") == 8  # three astral emoji and two joiners
    assert telegram_length("₽") == 1


def test_html_to_plain_strips_tags_and_unescapes() -> None:
    html = '<b>Итог</b>: a &amp; b <a href="https://x.example/?a=1&amp;b=2">c&lt;d&gt;</a> &amp;foo;'
    assert html_to_plain(html) == "Итог: a & b c<d> &foo;"


def test_rendered_part_is_frozen() -> None:
    part = RenderedPart("a", "a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        part.html = "b"  # type: ignore[misc]


# --- render_answer ------------------------------------------------------------------------


def test_untrusted_markup_and_entities_show_literally() -> None:
    text = "<script>alert(1)</script> &foo; &#99999999; <b>жирный? &amp; <a href='x'>ссылка"
    [part] = render_answer(_result(text, sources=[]), lang="ru")
    assert part.html == (
        "&lt;script&gt;alert(1)&lt;/script&gt; &amp;foo; &amp;#99999999; &lt;b&gt;жирный? &amp;amp; "
        "&lt;a href='x'&gt;ссылка"
    )
    assert part.plain == text
    _check_parts([part])


def test_small_answer_exact_html_with_sources_block() -> None:
    result = _result("Обслуживание бесплатно [1].", sources=[
        _source(1),
        _source(2, title="Памятка", url=None, heading="Памятка"),
    ])
    [part] = render_answer(result, lang="ru")
    assert part.html == (
        "Обслуживание бесплатно [1].\n\n"
        "<b>Источники</b>\n"
        '[1] <a href="https://bank.example/t">Тарифы</a> — Комиссии\n'
        "[2] Памятка"  # heading equal to the title is not repeated
    )
    assert part.plain == "Обслуживание бесплатно [1].\n\nИсточники\n[1] Тарифы — Комиссии\n[2] Памятка"


def test_english_heading_and_escaped_titles() -> None:
    result = _result("Free [1].", sources=[_source(1, title="Fees <2024> & more", heading="A&B")])
    [part] = render_answer(result, lang="en")
    assert part.html == (
        'Free [1].\n\n<b>Sources</b>\n[1] <a href="https://bank.example/t">Fees &lt;2024&gt; &amp; more</a> — A&amp;B'
    )
    _check_parts([part])


@pytest.mark.parametrize(
    "url", [None, "", "javascript:alert(1)", "ftp://bank.example/f", "bank.example/t", "https://", "http://a b.example"]
)
def test_source_without_http_url_has_no_link(url: str | None) -> None:
    [part] = render_answer(_result("Ответ [1].", sources=[_source(1, url=url)]), lang="ru")
    assert "<a" not in part.html
    assert "[1] Тарифы — Комиссии" in part.html
    _check_parts([part])


def test_href_with_quotes_and_angle_brackets_is_escaped() -> None:
    url = 'https://bank.example/t?q="x"&y=<1>\'z'
    [part] = render_answer(_result("Ответ [1].", sources=[_source(1, url=url)]), lang="ru")
    assert '<a href="https://bank.example/t?q=&quot;x&quot;&amp;y=&lt;1&gt;&#39;z">Тарифы</a>' in part.html
    _check_parts([part])


@pytest.mark.parametrize(("title", "heading"), [
    ('Тарифы" url="https://evil.example/sticker?d=', "Комиссии"),
    ("Тарифы", 'Стикер" url="https://evil.example/sticker?d='),
    ("Тарифы — вопросы на client.evil-broker.com", "Пишите: evil.example/help"),
])
def test_addresses_in_titles_and_headings_are_not_shown(title: str, heading: str) -> None:
    # Titles and headings are document text: an address in them would be linked by Telegram.
    [part] = render_answer(_result("Ответ [1].", sources=[_source(1, title=title, heading=heading)]), lang="ru")
    assert "evil" not in part.plain
    assert '<a href="https://bank.example/t">Тарифы' in part.html  # the source's own URL stays its link
    _check_parts([part])


def test_the_sources_own_address_may_appear_in_its_title() -> None:
    [part] = render_answer(_result("Ответ [1].", sources=[_source(1, title="Тарифы bank.example, версия 2.1")]),
                           lang="ru")
    assert "Тарифы bank.example, версия 2.1" in part.plain


def test_extractive_answer_gets_an_italic_note() -> None:
    [ru] = render_answer(_result("Цитата [1].", mode="extractive"), lang="ru")
    assert "<i>Это дословная цитата из документов банка.</i>\n\n<b>Источники</b>" in ru.html
    [en] = render_answer(_result("Quote [1].", mode="extractive"), lang="en")
    assert "<i>This is a verbatim quote from the bank's documents.</i>\n\n<b>Sources</b>" in en.html
    _check_parts([ru, en])


@pytest.mark.parametrize("mode", ["cached", "generated"])
def test_cached_and_generated_answers_get_no_note(mode: Mode) -> None:
    [part] = render_answer(_result("Ответ [1].", mode=mode), lang="ru")
    assert "<i>" not in part.html
    assert "<b>Источники</b>" in part.html


def test_escalation_does_not_show_the_operators_sources() -> None:
    [part] = render_answer(_result("Передам оператору.", mode="none"), lang="ru")
    assert part.html == "Передам оператору."


def test_nothing_to_show_gives_no_parts() -> None:
    assert render_answer(_result("  \n ", sources=[], mode="none"), lang="ru") == []


def test_sources_alone_when_text_is_empty() -> None:
    [part] = render_answer(_result("", mode="generated"), lang="en")
    assert part.html.startswith("<b>Sources</b>\n[1]")


def _long_answer() -> str:
    paragraphs = []
    for i in range(60):
        sentences = " ".join(f"Предложение {j} абзаца {i} 💳 про карту «Мир» & <тариф> 👨‍👩‍👧." for j in range(6))
        paragraphs.append(f"Абзац {i}. {sentences}")
    text = "\n\n".join(paragraphs)
    assert len(text) > 20_000
    return text


def test_long_answer_parts_fit_telegram_and_rejoin() -> None:
    text = _long_answer()
    parts = render_answer(_result(text, sources=[_source(1), _source(2)]), lang="ru")
    assert len(parts) >= 6  # well over 4096 UTF-16 units, and escaping & < > inflates the HTML
    _check_parts(parts)
    # The sources go with the last part only; every part starts at a paragraph start.
    assert all("Источники" not in p.plain for p in parts[:-1])
    body_last, tail = parts[-1].plain.rsplit("\n\nИсточники\n", 1)
    assert tail == "[1] Тарифы — Комиссии\n[2] Тарифы — Комиссии"
    bodies = [p.plain for p in parts[:-1]] + [body_last]
    assert all(b.startswith("Абзац ") for b in bodies)
    assert _squash(" ".join(bodies)) == _squash(text)


def test_html_source_limit_binds_when_escaping_inflates() -> None:
    # 3000 visible characters, 15,000 characters of HTML: must be split although Telegram's
    # own count would allow one message.
    text = "&" * 3000
    parts = render_answer(_result(text, sources=[]), lang="ru")
    assert len(parts) == 2
    _check_parts(parts)
    assert "".join(p.plain for p in parts) == text


def test_one_giant_word_is_cut_and_rejoins_exactly() -> None:
    text = "ё😀" * 5000  # 15,000 UTF-16 units without a single space
    parts = render_answer(_result(text, sources=[]), lang="ru")
    _check_parts(parts)
    assert "".join(p.plain for p in parts) == text
    assert len(parts) == 4


def test_sources_get_their_own_part_when_the_last_part_is_full() -> None:
    text = ("слово " * 2000)[:4090].strip()
    parts = render_answer(_result(text), lang="ru")
    assert len(parts) == 2
    assert parts[0].plain == text
    assert parts[1].html.startswith("<b>Источники</b>\n[1] <a ")
    _check_parts(parts)


def test_a_huge_sources_list_is_split_by_lines() -> None:
    sources = [
        _source(n, title=f"Документ {n} " + "очень длинное название " * 20, url=f"https://bank.example/{n}?{'x' * 500}")
        for n in range(1, 61)
    ]
    parts = render_answer(_result("Ответ.", sources=sources), lang="ru")
    assert len(parts) > 1
    _check_parts(parts)
    joined = "\n".join(p.plain for p in parts)
    assert joined.count("Источники") == 1
    assert all(f"[{n}] Документ {n} " in joined for n in range(1, 61))
    assert all(len(line) < 500 for line in joined.splitlines())  # titles are shortened


def test_a_long_title_is_shortened_with_an_ellipsis() -> None:
    [part] = render_answer(_result("Ответ.", sources=[_source(1, title="Т" * 1000, heading="")]), lang="ru")
    line = part.plain.splitlines()[-1]
    assert line.startswith("[1] ТТТ") and line.endswith("…")
    assert len(line) < 250


# --- split_message ------------------------------------------------------------------------


def test_split_prefers_paragraphs() -> None:
    text = "Первый абзац.\nЕго строка.\n\nВторой абзац."
    assert split_message(text, limit=30) == ["Первый абзац.\nЕго строка.", "Второй абзац."]
    # Line by line, "аа\n\nбб" would fit in 6; by paragraphs the second paragraph stays whole.
    assert split_message("аа\n\nбб\nвв", limit=6) == ["аа", "бб\nвв"]


def test_split_falls_back_to_lines_sentences_words() -> None:
    assert split_message("строка один\nстрока два", limit=12) == ["строка один", "строка два"]
    assert split_message("Раз два. Три четыре! Пять?", limit=12) == ["Раз два.", "Три четыре!", "Пять?"]
    assert split_message("Он сказал «да». Потом ушёл.", limit=16) == ["Он сказал «да».", "Потом ушёл."]
    assert split_message("один два три четыре", limit=9) == ["один два", "три", "четыре"]


def test_split_hard_cuts_only_a_word_longer_than_the_limit() -> None:
    assert split_message("а" * 25, limit=10) == ["а" * 10, "а" * 10, "а" * 5]
    assert split_message("да " + "б" * 12 + " нет", limit=10) == ["да", "б" * 10, "бб нет"]


def test_split_exact_limits() -> None:
    assert split_message("a" * 4096) == ["a" * 4096]
    assert split_message("a" * 4097) == ["a" * 4096, "a"]
    assert split_message("😀" * 2048) == ["😀" * 2048]
    assert split_message("😀" * 2049) == ["😀" * 2048, "😀"]


def test_split_never_breaks_surrogates_joiners_flags_or_accents() -> None:
    assert split_message("😀" * 5, limit=3) == ["😀"] * 5
    family = "👨\u200d👩\u200d👧"
    parts = split_message(family * 10, limit=20)
    assert "".join(parts) == family * 10
    assert all(p == family * 2 for p in parts)
    flags = split_message("🇷🇺" * 10, limit=6)
    assert flags == ["🇷🇺"] * 10
    accented = split_message("е\u0301" * 10, limit=3)
    assert accented == ["е\u0301"] * 10


def test_split_whitespace_and_line_endings() -> None:
    assert split_message("") == []
    assert split_message(" \n\t ") == []
    assert split_message("  привет \r\n") == ["привет"]
    assert split_message("a\r\n\r\nb", limit=2) == ["a", "b"]


def test_split_long_mixed_text_fits_and_rejoins() -> None:
    text = _long_answer()
    parts = split_message(text)
    assert len(parts) >= 5
    assert all(telegram_length(p) <= TELEGRAM_LIMIT for p in parts)
    assert _squash(" ".join(parts)) == _squash(text)


def test_split_rejects_a_limit_too_small_for_an_emoji() -> None:
    with pytest.raises(ValueError):
        split_message("abc", limit=1)
