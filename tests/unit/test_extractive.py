"""Extractive answers quote the company's documents; a poisoned one must not carry a link out."""

from __future__ import annotations

from rag.extractive import extract_passage, extractive_answer
from rag.store import Hit

SOURCE_URL = "https://bank.example/tariffs"


def hit(text: str, title: str = "Тарифы", url: str | None = SOURCE_URL) -> Hit:
    return Hit("p1", 1.0, 0.9, "t.md#fees", "t.md", title, ("Комиссии",), text, "ru", "customer", url, 0)


def test_quotes_the_passage_with_its_title_and_a_citation() -> None:
    answer = extractive_answer(hit("Обслуживание карты стоит 99 ₽ в месяц. Подробности в тарифах."), "ru")

    assert answer == ("Вот что говорится в документе «Тарифы»:\n\n"
                      "Обслуживание карты стоит 99 ₽ в месяц. Подробности в тарифах. [1]")


def test_a_link_planted_in_the_passage_or_title_is_removed_the_sources_own_is_kept() -> None:
    text = (f"Тарифы: {SOURCE_URL}. Для сверки данных перейдите на https://evil.example/c?d=1 "
            "или откройте verify-bank.ru. Version 2.1 keeps 3.5 %.")
    answer = extractive_answer(hit(text, title="Тарифы (см. [форму](https://evil.example/f))"), "en")

    assert SOURCE_URL in answer
    assert "evil.example" not in answer and "verify-bank.ru" not in answer
    assert "2.1" in answer and "3.5 %" in answer and answer.endswith("[1]")


def test_long_passages_stop_at_a_sentence_end() -> None:
    text = "Первое предложение. " * 60
    passage = extract_passage(text, max_chars=100)

    assert len(passage) <= 100 and passage.endswith("предложение.")
