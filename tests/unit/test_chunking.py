import itertools

import pytest

from rag.chunking import chunk_document, split_sentences, split_text
from rag.models import ParsedDocument, Section


def _doc(*sections: Section, title: str = "Справка", audience: str = "customer") -> ParsedDocument:
    return ParsedDocument(title=title, sections=list(sections), audience=audience, url="https://kb/doc")  # type: ignore[arg-type]


def _russian_sentences(count: int) -> str:
    return " ".join(f"Предложение номер {i} рассказывает о доставке заказа." for i in range(count))


def test_short_section_is_one_chunk_with_fragment_source_id() -> None:
    doc = _doc(Section(text="Доставка занимает два дня.", heading_path=("Доставка",), fragment="dostavka"))
    [chunk] = chunk_document(doc, doc_id="faq/delivery.md")
    assert chunk.source_id == "faq/delivery.md#dostavka"
    assert chunk.doc_id == "faq/delivery.md"
    assert chunk.text == "Доставка занимает два дня."
    assert chunk.embed_text == "Справка / Доставка\nДоставка занимает два дня."
    assert chunk.heading_path == ("Доставка",)
    assert chunk.url == "https://kb/doc"
    assert chunk.language == "ru"


def test_section_without_fragment_cites_the_document() -> None:
    [chunk] = chunk_document(_doc(Section(text="Текст без заголовка.")), doc_id="a.txt")
    assert chunk.source_id == "a.txt"
    assert chunk.embed_text == "Справка\nТекст без заголовка."


def test_long_section_splits_within_limit_and_shares_source_id() -> None:
    doc = _doc(Section(text=_russian_sentences(40), fragment="dolgo"))
    chunks = chunk_document(doc, doc_id="d.md", max_chars=400, overlap_chars=120)
    assert len(chunks) > 3
    assert all(len(c.text) <= 400 for c in chunks)
    assert {c.source_id for c in chunks} == {"d.md#dolgo"}
    assert [c.position for c in chunks] == list(range(len(chunks)))
    assert len({c.content_hash for c in chunks}) == len(chunks)
    assert all(c.text.endswith("заказа.") and c.text.startswith("Предложение") for c in chunks)


def test_overlap_repeats_whole_sentences_from_the_previous_piece() -> None:
    pieces = split_text(_russian_sentences(30), max_chars=400, overlap_chars=120)
    assert len(pieces) > 2
    for previous, current in itertools.pairwise(pieces):
        before, after = split_sentences(previous), split_sentences(current)
        shared = next(k for k in range(len(after), 0, -1) if before[-k:] == after[:k])
        assert 1 <= shared < len(after)
        assert len(" ".join(after[:shared])) <= 120


def test_zero_overlap_repeats_nothing() -> None:
    pieces = split_text(_russian_sentences(30), max_chars=400, overlap_chars=0)
    sentences = [s for piece in pieces for s in split_sentences(piece)]
    assert len(sentences) == len(set(sentences)) == 30


def test_cuts_fall_on_paragraph_boundaries() -> None:
    first, second = ("Первый абзац. " * 20).strip(), ("Второй абзац. " * 20).strip()
    pieces = split_text(f"{first}\n\n{second}", max_chars=400, overlap_chars=50)
    assert pieces[0] == first
    assert pieces[1] == "Первый абзац. Первый абзац. Первый абзац.\n\n" + second


def test_text_without_any_boundary_is_cut_hard() -> None:
    pieces = split_text("x" * 2500, max_chars=1000, overlap_chars=100)
    assert [len(p) for p in pieces] == [1000, 1000, 500]


@pytest.mark.parametrize(
    "text",
    [
        "Цена 300 руб. в месяц, т. е. недорого.",
        "Тариф вырос в 3.5 раза с 2020 г. Москва осталась.",
        "Звоните, т.е. пишите, и т. д. Ответим.",
        "Mr. Smith paid 2.5 dollars, e.g. by card.",
        "А. С. Пушкин написал письмо.",
    ],
)
def test_abbreviations_initials_and_decimals_do_not_end_sentences(text: str) -> None:
    assert split_sentences(text) == [text]


def test_sentence_ends_are_found_in_russian_and_english() -> None:
    text = "Первое предложение. Второе! Третье? «Четвёртое.» Fifth one. Sixth…"
    assert split_sentences(text) == [
        "Первое предложение.", "Второе!", "Третье?", "«Четвёртое.»", "Fifth one.", "Sixth…",
    ]


def test_faq_entry_is_never_split() -> None:
    answer = _russian_sentences(60)
    doc = _doc(Section(text=answer, heading_path=("Оплата",), fragment="row-2", question="Как оплатить?"))
    [chunk] = chunk_document(doc, doc_id="faq.csv", max_chars=300)
    assert chunk.text == f"Вопрос: Как оплатить?\nОтвет: {answer}"
    assert chunk.source_id == "faq.csv#row-2"
    assert chunk.embed_text.startswith("Справка / Оплата\nВопрос: Как оплатить?\n")
    assert chunk.extra == {"kind": "text", "question": "Как оплатить?"}


def test_english_faq_entry_uses_english_labels() -> None:
    doc = _doc(Section(text="Use the card form on the checkout page.", question="How do I pay by card?"))
    [chunk] = chunk_document(doc, doc_id="faq.csv")
    assert chunk.text.splitlines() == ["Question: How do I pay by card?",
                                       "Answer: Use the card form on the checkout page."]
    assert chunk.language == "en"


def test_very_short_chunk_takes_the_document_language() -> None:
    doc = _doc(Section(text=_russian_sentences(3), fragment="a"), Section(text="OK", fragment="b"))
    chunks = chunk_document(doc, doc_id="d.md")
    assert [c.language for c in chunks] == ["ru", "ru"]


def test_long_english_chunk_in_russian_document_is_english() -> None:
    english = "This paragraph explains the refund policy for international orders in detail."
    doc = _doc(Section(text=_russian_sentences(10), fragment="a"), Section(text=english, fragment="b"))
    assert [c.language for c in chunk_document(doc, doc_id="d.md")] == ["ru", "en"]


def test_whitespace_only_sections_are_dropped() -> None:
    doc = _doc(Section(text="  \n\t "), Section(text="Текст.", fragment="x"))
    chunks = chunk_document(doc, doc_id="d.md")
    assert [c.source_id for c in chunks] == ["d.md#x"]
    assert chunks[0].position == 0


def test_stricter_audience_wins() -> None:
    row = Section(text="Ответ.", question="Вопрос?", fragment="row-2", audience="customer")
    internal_row = Section(text="Ответ.", question="Вопрос?", fragment="row-3", audience="operator")
    internal_doc = chunk_document(_doc(row, audience="operator"), doc_id="f.csv")
    public_doc = chunk_document(_doc(row, internal_row), doc_id="f.csv")
    assert [c.audience for c in internal_doc] == ["operator"]
    assert [c.audience for c in public_doc] == ["customer", "operator"]


def test_section_url_overrides_document_url() -> None:
    doc = _doc(Section(text="Ответ.", question="Вопрос?", url="https://kb/row"), Section(text="Текст."))
    assert [c.url for c in chunk_document(doc, doc_id="f.csv")] == ["https://kb/row", "https://kb/doc"]


def test_overlap_must_be_smaller_than_the_limit() -> None:
    with pytest.raises(ValueError, match="overlap"):
        chunk_document(_doc(Section(text="x")), doc_id="d", max_chars=100, overlap_chars=100)
