"""Detecting a request for a human: plain requests fire, questions that mention people do not."""

from __future__ import annotations

import pytest

from bot.intents import wants_person

RU_POSITIVE = [
    "позовите человека",
    "позови оператора",
    "соедините с оператором",
    "хочу поговорить с живым человеком",
    "оператор!",
    "нужен специалист",
    "можно с сотрудником поговорить?",
    "переключи на оператора",
    "ОПЕРАТОРА ПОЖАЛУЙСТА",
    "Позовите, пожалуйста, живого человека",
    "Соедините меня с консультантом!!!",
    "Бот ничего не понимает, хочу пообщаться с оператором",
    "Переведите меня на оператора",
    "мне нужен живой человек",
    "дайте оператора",
    "Можно оператора?",
    "Не могу разобраться с тарифами, позовите специалиста",
    "свяжите меня с сотрудником банка",
    "есть кто живой?",
    "нет, позовите оператора",
    "передайте мой вопрос оператору",
    "Хочу с человеком поговорить",
    "Позовите живого человека, ещё раз прошу",  # ё
    "мне бы с живым человеком пообщаться",
    "Позовёте оператора?",
]

RU_NEGATIVE = [
    "какой номер телефона у оператора связи для смс",
    "как сотруднику банка оформить карту",
    "человек потерял карту, что делать",
    "сколько стоит обслуживание карты",
    "может ли человек открыть два счёта",
    "оператор персональных данных — кто это в вашем банке?",
    "как связаться с оператором сотовой связи",
    "какая комиссия за перевод другому человеку",
    "нужно ли сотруднику компании предоставлять справку о доходах",
    "сколько человек может быть в семейном тарифе",
    "как зовут вашего оператора",
    "не надо оператора, я сам разберусь",
    "перевод денег на карту другого человека",
    "мобильный оператор списывает деньги за смс-информирование",
    "консультант в отделении посоветовал вклад, он выгодный?",
    "менеджер не перезвонил по кредиту",
    "как передать доверенность сотруднику банка",
    "хочу открыть вклад на другого человека",
    "нужен ли менеджер для открытия счёта",
]

EN_POSITIVE = [
    "talk to a human",
    "I want to speak to a person",
    "real person please",
    "agent",
    "operator",
    "human please",
    "Can I talk to someone?",
    "connect me to an operator",
    "transfer me to a live agent",
    "get me a human",
    "I need a real person",
    "Speak with a representative, please.",
    "OPERATOR!!!",
    "representative",
    "live agent",
    "This bot is useless, I want to talk to a human being",
    "Could you put me through to a manager?",
    "is there a real person here?",
    "I’d like to speak to someone about my card",  # curly apostrophe
    "Let me chat with one of your staff",
]

EN_NEGATIVE = [
    "what does a telecom operator charge",
    "is a person allowed to open two accounts",
    "how much is the card maintenance fee",
    "can a person under 18 open a deposit",
    "how do I transfer money to another person",
    "my mobile operator charges for sms notifications",
    "what is a payment agent",
    "do I need an agent to buy insurance?",
    "Can someone else use my card?",
    "I don't want to talk to a human",
    "no operator",
    "who is the operator of this website",
    "how do I add an authorized person to my account",
    "my manager needs a salary certificate",
    "a person called me pretending to be from the bank",
    "how do I speak to the tax office about my deposit",
    "what is the personal data operator of your bank",
    "operator fee",
]


@pytest.mark.parametrize("text", RU_POSITIVE + EN_POSITIVE)
def test_requests_for_a_person_fire(text: str) -> None:
    assert wants_person(text), text


@pytest.mark.parametrize("text", RU_NEGATIVE + EN_NEGATIVE)
def test_questions_mentioning_people_do_not_fire(text: str) -> None:
    assert not wants_person(text), text


def test_lists_are_big_enough() -> None:
    assert len(RU_POSITIVE) >= 15 and len(EN_POSITIVE) >= 15
    assert len(RU_NEGATIVE) >= 15 and len(EN_NEGATIVE) >= 15


def test_a_bare_person_noun_counts() -> None:
    assert wants_person("человек")
    assert wants_person("Оператор?")
    assert wants_person("HUMAN")


def test_long_question_needs_an_explicit_request() -> None:
    # The same nouns in a long question: only the explicit request verb makes it fire.
    assert not wants_person("скажите, пожалуйста, сколько дней оператор рассматривает заявку на кредит")
    assert wants_person("скажите, пожалуйста, сколько дней рассматривают заявку, и соедините меня с оператором")
    assert not wants_person("how many days does an agent need to review a loan application")
    assert wants_person("how many days does it take to review a loan application, let me talk to an agent")


@pytest.mark.parametrize("text", ["", "   ", "!!!", "👍", "?"])
def test_empty_and_punctuation_only(text: str) -> None:
    assert not wants_person(text)


def test_case_yo_and_punctuation_do_not_matter() -> None:
    variants = ["ПОЗОВИТЕ ОПЕРАТОРА", "позовите... оператора!!!", "Позовите — оператора", "позовите\nоператора"]
    assert all(wants_person(v) for v in variants)
    assert wants_person("Позовёте специалиста?") and wants_person("позовете специалиста")


def test_the_short_rule_stops_at_six_words() -> None:
    # Only request vocabulary and a person noun, no explicit request pattern: the short rule alone.
    assert wants_person("ну пожалуйста ну пожалуйста ну оператор")
    assert not wants_person("ну пожалуйста ну пожалуйста ну ну оператор")
