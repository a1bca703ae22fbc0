"""Personal-data detectors, the reversible Redactor, irreversible masks and the log filter.

Valid card, INN and SNILS numbers are computed here with the published algorithms (written
out again, independently of ``rag.redaction``) and cross-checked against well-known values.
"""

from __future__ import annotations

import io
import logging
import random
import re

import pytest

from rag.redaction import (
    Found,
    PiiLogFilter,
    Redactor,
    find_accounts,
    find_cards,
    find_emails,
    find_inns,
    find_passports,
    find_phones,
    find_pii,
    find_snils,
    inn_valid,
    luhn_valid,
    mask_pii,
    snils_checksum,
    snils_valid,
)

# --- the algorithms, written out for the tests ----------------------------------------------


def luhn_check_digit(body: str) -> str:
    """The digit that makes ``body + digit`` pass Luhn."""
    total = 0
    for index, char in enumerate(reversed(body)):
        value = int(char) * (2 if index % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return str((10 - total % 10) % 10)


def with_luhn(body: str) -> str:
    return body + luhn_check_digit(body)


def inn_check(digits: str, weights: list[int]) -> str:
    return str(sum(int(d) * w for d, w in zip(digits, weights, strict=False)) % 11 % 10)


def make_inn10(first9: str) -> str:
    return first9 + inn_check(first9, [2, 4, 10, 3, 5, 9, 4, 6, 8])


def make_inn12(first10: str) -> str:
    eleventh = inn_check(first10, [7, 2, 4, 10, 3, 5, 9, 4, 6, 8])
    return first10 + eleventh + inn_check(first10 + eleventh, [3, 7, 2, 4, 10, 3, 5, 9, 4, 6, 8])


def make_snils(first9: str) -> str:
    total = sum(int(d) * w for d, w in zip(first9, range(9, 0, -1), strict=True))
    check = total if total < 100 else 0 if total in (100, 101) else total % 101
    return first9 + f"{0 if check == 100 else check:02d}"


def broken(number: str) -> str:
    """The same number with its last digit changed, so its checksum fails."""
    return number[:-1] + str((int(number[-1]) + 1) % 10)


def spans(found: list[Found]) -> list[str]:
    return [f.text for f in found]


def kinds(text: str, known: tuple[str, ...] = ()) -> list[str]:
    return [f.kind for f in find_pii(text, known)]


RNG = random.Random(152)

# Well-known valid values: payment-system test cards, Sberbank's and Yandex's INN, a common
# example INN of an individual, example SNILS from the PFR's documentation.
KNOWN_CARDS = ["4111111111111111", "5555555555554444", "378282246310005", "6011111111111117", "2200000000000004"]
KNOWN_INN10 = ["7707083893", "7736207543", "7830002293"]
KNOWN_INN12 = ["500100732259"]
KNOWN_SNILS = ["11223344595", "12345678964", "08765430300"]


# --- checksums --------------------------------------------------------------------------------


def test_the_test_algorithms_agree_with_well_known_values() -> None:
    for card in KNOWN_CARDS:
        assert with_luhn(card[:-1]) == card
    for inn in KNOWN_INN10:
        assert make_inn10(inn[:9]) == inn
    for inn in KNOWN_INN12:
        assert make_inn12(inn[:10]) == inn
    for snils in KNOWN_SNILS:
        assert make_snils(snils[:9]) == snils


def test_luhn() -> None:
    for card in KNOWN_CARDS:
        assert luhn_valid(card)
        assert not luhn_valid(broken(card))
    for _ in range(200):
        card = with_luhn("".join(RNG.choice("0123456789") for _ in range(RNG.randint(12, 18))))
        assert luhn_valid(card)
        assert not luhn_valid(broken(card))
    assert not luhn_valid("0000000000000000")  # passes the sum, but is no card
    assert not luhn_valid("4111-1111-1111-1111")  # digits only


def test_inn_checksums() -> None:
    for inn in KNOWN_INN10 + KNOWN_INN12:
        assert inn_valid(inn)
        assert not inn_valid(broken(inn))
    for _ in range(200):
        inn10 = make_inn10(f"{RNG.randint(1, 99):02d}" + "".join(RNG.choice("0123456789") for _ in range(7)))
        inn12 = make_inn12(f"{RNG.randint(1, 99):02d}" + "".join(RNG.choice("0123456789") for _ in range(8)))
        assert inn_valid(inn10) and inn_valid(inn12)
        assert not inn_valid(broken(inn10)) and not inn_valid(broken(inn12))
        # the 11th digit of an INN-12 is checked too, not only the last
        assert not inn_valid(inn12[:10] + str((int(inn12[10]) + 1) % 10) + inn12[11])
    assert not inn_valid("0000000000")  # region 00
    assert not inn_valid("770708389")  # 9 digits
    assert not inn_valid("77070838931")  # 11 digits


def snils_sum(first9: str) -> int:
    return sum(int(d) * w for d, w in zip(first9, range(9, 0, -1), strict=True))


def test_snils_checksum_special_cases() -> None:
    assert snils_checksum("112233445") == 95  # below 100: the sum itself
    by_sum: dict[int, str] = {}
    for i in range(100_000, 999_999_999, 7_919):
        by_sum.setdefault(snils_sum(f"{i:09d}"), f"{i:09d}")
    # 100 and 101 give 00; above 101 the remainder mod 101, where a remainder of 100 gives 00 too
    assert snils_checksum(by_sum[100]) == 0
    assert snils_checksum(by_sum[101]) == 0
    assert snils_checksum(by_sum[150]) == 49
    assert snils_checksum(by_sum[201]) == 0
    assert snils_checksum(by_sum[202]) == 0
    for _ in range(2000):
        first9 = "".join(RNG.choice("0123456789") for _ in range(9))
        assert snils_checksum(first9) == int(make_snils(first9)[9:])


def test_snils_validity() -> None:
    for snils in KNOWN_SNILS:
        assert snils_valid(snils)
        assert not snils_valid(broken(snils))
    assert not snils_valid("00100199800")  # at or below 001-001-998 the check is not defined
    assert not snils_valid("1122334459")  # 10 digits


# --- phones -----------------------------------------------------------------------------------

RU_SPELLINGS = [
    "+7 (916) 123-45-67",
    "+7 916 123 45 67",
    "+7-916-123-45-67",
    "+7(916)1234567",
    "+79161234567",
    "8 (916) 123-45-67",
    "8-916-123-45-67",
    "8 916 123-45-67",
    "8 916 1234567",
    "89161234567",
    "7 916 123-45-67",
    "79161234567",
    "(916) 123-45-67",
    "916 123-45-67",
]


@pytest.mark.parametrize("spelling", RU_SPELLINGS)
@pytest.mark.parametrize(
    "template",
    ["Мой номер {}, звоните после 18:00.", "Call me at {} please", "тел.{}", "({})", "Номер: {}; спасибо"],
)
def test_russian_phone_spellings(spelling: str, template: str) -> None:
    text = template.format(spelling)
    (found,) = find_phones(text)
    assert found.text == spelling
    assert found.key == "79161234567"
    assert kinds(text) == ["PHONE"]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("городской +7 (495) 123-45-67", "74951234567"),
        ("Калининград 8 (4012) 12-34-56", "74012123456"),
        ("горячая линия 8 800 555-35-35", "78005553535"),
        ("UK office +44 20 7946 0958.", "442079460958"),
        ("US: +1 (212) 555-0123", "12125550123"),
        ("Киев +380 44 123 4567", "380441234567"),
        ("Berlin +49 30 12345678", "493012345678"),
    ],
)
def test_other_phones(text: str, key: str) -> None:
    (found,) = find_phones(text)
    assert found.key == key


@pytest.mark.parametrize(
    "text",
    [
        "Дата платежа 15.03.2024, следующий 2024-04-15.",
        "с 8 по 15 марта, в 18:30",
        "Сумма 1 250 000,00 ₽ спишется 8.09.2024",
        "кредит на 75 000 000 000 рублей",  # grouped by thousands: an amount
        "перевёл 8 000 000 руб.",
        "Заказ № 2024-001234 от 12.01.2024",
        "order #123456789 shipped",
        "номер заявки 123-456-789",
        "версия 8.9.16.1234",
        "сервер 192.168.10.20",
        "трек 80012345678901",  # 14 digits
        "89161234567890",  # a phone glued to more digits is not a phone
        "ставка 7,9% годовых, 8 лет",
        "Balance: 7 916.12 USD",
    ],
)
def test_digit_runs_that_are_not_phones(text: str) -> None:
    assert find_phones(text) == []
    assert "PHONE" not in kinds(text)


def test_cards_and_accounts_are_not_taken_for_phones() -> None:
    card = with_luhn("789161234567890")  # a 16-digit card that starts like a phone
    assert kinds(f"карта {card}") == ["CARD"]
    assert kinds(f"карта {card[:4]} {card[4:8]} {card[8:12]} {card[12:]}") == ["CARD"]
    assert kinds("р/с 40817810099910004312") == ["ACCOUNT"]
    assert kinds("счёт 40817 810 0 9916 1234567") == ["ACCOUNT"]


# --- e-mails ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("пишите на ivan.petrov@example.ru.", "ivan.petrov@example.ru"),
        ("Ivan_P+tag@Mail.Example.com, thanks", "Ivan_P+tag@Mail.Example.com"),
        ("почта: иван@почта.рф", "иван@почта.рф"),
        ("<anna-maria@bank-client.co.uk>", "anna-maria@bank-client.co.uk"),
    ],
)
def test_emails(text: str, address: str) -> None:
    (found,) = find_emails(text)
    assert found.text == address
    assert found.key == address.lower()


@pytest.mark.parametrize("text", ["telegram @ivan_petrov", "user@localhost", "price 5@10.00", "a @ b.ru", "x@y.z"])
def test_not_emails(text: str) -> None:
    assert find_emails(text) == []


def test_email_wins_over_the_phone_and_name_inside_it() -> None:
    assert kinds("79161234567@mail.ru") == ["EMAIL"]
    assert kinds("ivanov@mail.ru", ("Иванов Иван", "Ivanov")) == ["EMAIL"]


# --- cards ------------------------------------------------------------------------------------


def card_spellings(card: str) -> list[str]:
    groups = [card[i : i + 4] for i in range(0, len(card), 4)]
    return [card, " ".join(groups), "-".join(groups)]


@pytest.mark.parametrize("card", [*KNOWN_CARDS[:2], with_luhn("220220" + "1234567890"), with_luhn("427638001234567")])
def test_valid_cards_in_every_spelling(card: str) -> None:
    for spelling in card_spellings(card):
        for text in (f"Карта {spelling} заблокирована?", f"card number: {spelling}."):
            (found,) = find_cards(text)
            assert found.text == spelling
            assert found.key == card
            assert kinds(text) == ["CARD"]


def test_other_card_lengths() -> None:
    amex = "378282246310005"
    assert spans(find_cards(f"Amex {amex[:4]} {amex[4:10]} {amex[10:]}")) == ["3782 822463 10005"]
    visa13 = "4222222222222"
    assert luhn_valid(visa13)
    assert spans(find_cards(f"old visa {visa13}")) == [visa13]
    maestro19 = with_luhn("676770" + "123456789012")
    grouped = " ".join([maestro19[0:4], maestro19[4:8], maestro19[8:12], maestro19[12:16], maestro19[16:]])
    assert spans(find_cards(f"Maestro {grouped}")) == [grouped]


def test_invalid_luhn_is_not_a_card() -> None:
    for card in [*KNOWN_CARDS, with_luhn("427638001234567")]:
        for spelling in card_spellings(broken(card)):
            assert find_cards(f"карта {spelling}") == [], spelling
    assert find_cards("0000 0000 0000 0000") == []
    assert find_cards("12 digits 123456789012 and 20 digits 40817810099910004312") == []


def test_a_card_followed_by_another_number() -> None:
    card = "4111 1111 1111 1111"
    assert spans(find_cards(f"{card} 2 шт.")) == [card]
    assert kinds(f"{card} 2 шт.") == ["CARD"]


# --- INN --------------------------------------------------------------------------------------


def random_inns(count: int) -> list[str]:
    out = []
    for _ in range(count):
        region = f"{RNG.randint(1, 99):02d}"
        out.append(make_inn10(region + "".join(RNG.choice("0123456789") for _ in range(7))))
        out.append(make_inn12(region + "".join(RNG.choice("0123456789") for _ in range(8))))
    return out


@pytest.mark.parametrize("inn", KNOWN_INN10 + KNOWN_INN12 + random_inns(10))
def test_valid_inn(inn: str) -> None:
    for text in (f"ИНН {inn}", f"ИНН:{inn}.", f"INN of the company is {inn}", f"инн {inn}, кпп 773601001"):
        found = find_inns(text)
        assert spans(found) == [inn]
        assert found[0].key == inn
        assert "INN" in kinds(text)


@pytest.mark.parametrize("inn", KNOWN_INN10 + KNOWN_INN12 + random_inns(10))
def test_invalid_inn_checksum(inn: str) -> None:
    assert find_inns(f"ИНН {broken(inn)}") == []


@pytest.mark.parametrize(
    "text",
    [
        "ИНН 0012345678",  # region 00
        "номер 77070838931",  # 11 digits
        "77070838930000",  # glued to more digits
        "сумма 7707083893,50 руб",  # a decimal amount
        "ИНН 770708389",  # 9 digits
    ],
)
def test_not_inn(text: str) -> None:
    assert find_inns(text) == []


# --- SNILS ------------------------------------------------------------------------------------


def snils_spellings(snils: str) -> list[str]:
    return [
        f"{snils[:3]}-{snils[3:6]}-{snils[6:9]} {snils[9:]}",
        f"{snils[:3]} {snils[3:6]} {snils[6:9]} {snils[9:]}",
        f"{snils[:3]}-{snils[3:6]}-{snils[6:9]}-{snils[9:]}",
        snils,
    ]


@pytest.mark.parametrize(
    "snils", KNOWN_SNILS + [make_snils(f"{RNG.randint(2000000, 699999999):09d}") for _ in range(6)]
)
def test_valid_snils(snils: str) -> None:
    for spelling in snils_spellings(snils):
        for text in (f"СНИЛС {spelling}", f"SNILS: {spelling}.", f"страховой номер {spelling}"):
            found = find_snils(text)
            assert spans(found) == [spelling], text
            assert found[0].key == snils
            assert kinds(text) == ["SNILS"]


@pytest.mark.parametrize("snils", KNOWN_SNILS)
def test_invalid_snils_checksum(snils: str) -> None:
    for spelling in snils_spellings(broken(snils)):
        assert find_snils(f"СНИЛС {spelling}") == []


def test_bare_snils_that_looks_like_a_phone_needs_its_keyword() -> None:
    snils = make_snils("891612345")
    assert snils.startswith("8")
    assert kinds(f"СНИЛС {snils}") == ["SNILS"]
    assert kinds(f"позвоните {snils}") == ["PHONE"]  # still hidden, as the phone it looks like
    formatted = f"{snils[:3]}-{snils[3:6]}-{snils[6:9]} {snils[9:]}"
    assert kinds(f"номер {formatted}") == ["SNILS"]  # the SNILS spelling needs no keyword


# --- passports --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("паспорт 45 06 123456", "45 06 123456"),
        ("Паспорт РФ: серия 4506 № 123456, выдан ОВД", "4506 № 123456"),
        ("серия 45 06 номер 123456", "45 06 номер 123456"),
        ("номер паспорта 4506123456", "4506123456"),
        ("паспортные данные: 4506 123456", "4506 123456"),
        ("мой паспорт, если нужно, 4506 123456", "4506 123456"),
        ("passport 4506 123456", "4506 123456"),
        ("Passport No. 4506 123456", "4506 123456"),
        ("4506 123456 (паспорт)", "4506 123456"),
    ],
)
def test_passport_next_to_a_keyword(text: str, number: str) -> None:
    (found,) = find_passports(text)
    assert found.text == number
    assert found.key == "4506123456"
    assert kinds(text) == ["PASSPORT"]


@pytest.mark.parametrize(
    "text",
    [
        "4506 123456",
        "заказ 45 06 123456 доставлен",
        "order 4506 123456",
        "паспорт я потерял вчера вечером, а номер заказа у меня 4506 123456",  # keyword too far
        "паспорт 4506 12345",  # five-digit number
        "паспорт 450 6123456",
    ],
)
def test_no_passport_without_a_keyword_nearby(text: str) -> None:
    assert find_passports(text) == []


def test_passport_wins_over_an_inn_shaped_number() -> None:
    inn = KNOWN_INN10[0]
    assert kinds(f"ИНН {inn}") == ["INN"]
    assert kinds(f"паспорт {inn}") == ["PASSPORT"]


# --- accounts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "account"),
    [
        ("р/с 40817810099910004312", "40817810099910004312"),
        ("Счёт № 40817 810 0 0999 1234567", "40817 810 0 0999 1234567"),
        ("счет 40817.810.0.0999.1234567", "40817.810.0.0999.1234567"),
        ("account 4081 7810 0999 1000 4312", "4081 7810 0999 1000 4312"),
        ("переведите на 42307810500001234567, спасибо", "42307810500001234567"),
    ],
)
def test_accounts(text: str, account: str) -> None:
    (found,) = find_accounts(text)
    assert found.text == account
    assert found.key == re.sub(r"\D", "", account)
    assert kinds(text) == ["ACCOUNT"]


@pytest.mark.parametrize(
    "text", ["4081781009991000431", "408178100999100043121", "сумма 40817810099910004312,50", "БИК 044525225"]
)
def test_not_accounts(text: str) -> None:
    assert find_accounts(text) == []


# --- known values -----------------------------------------------------------------------------

NAME = "Иванов Иван Иванович"


@pytest.mark.parametrize(
    "mention",
    [
        "Иванов Иван Иванович",
        "иванов иван иванович",
        "ИВАНОВ ИВАН ИВАНОВИЧ",
        "Иванов  Иван\nИванович",
        "Иван Иванович Иванов",
        "Иван Иванович",
        "Иванов Иван",
        "Иванов И. И.",
        "Иванов И.И.",
        "Иванов И.",
        "И. И. Иванов",
        "И.И. Иванов",
        "Иванов",
        "иванов",
        "Иванову",
        "Ивановым",
        "Иванова Ивана Ивановича",
        "Иванову И. И.",
    ],
)
def test_known_name_forms(mention: str) -> None:
    redactor = Redactor([NAME])
    assert redactor.redact(f"Клиент {mention} просит перезвонить") == "Клиент [NAME_1] просит перезвонить"
    assert redactor.mapping == {"[NAME_1]": NAME}


@pytest.mark.parametrize(
    ("known", "mention"),
    [
        ("Семёнова Алёна Петровна", "Семенова Алена Петровна"),
        ("Семёнова Алёна Петровна", "СЕМЕНОВОЙ"),
        ("Семёнова Алёна Петровна", "Семенову А. П."),
        ("Семенова Алена Петровна", "Семёнова Алёна"),
        ("Фёдоров Пётр", "Федорову"),
        ("Петровский Андрей Сергеевич", "Петровского А. С."),
        ("Мария Кузнецова", "Кузнецовой Марии"),
        ("Петров Пётр Сергеевич", "Mr. Petrov"),
        ("Петров Пётр Сергеевич", "Pyotr Sergeyevich"),
        ("Петров Пётр Сергеевич", "PETROV PETR"),
        ("Петров Пётр Сергеевич", "Petrov P. S."),
        ("Петровский Андрей", "Andrey Petrovskiy"),
        ("Петровский Андрей", "Petrovsky"),
        ("Алексеева Юлия", "Yulia Alexeeva"),
        ("Щукин Фёдор", "Fedor Shchukin"),
        ("John Smith", "JOHN SMITH"),
        ("John Smith", "Smith"),
        ("John Smith", "J. Smith"),
        ("Ivan Petrov", "Mr. Petrov"),
    ],
)
def test_known_names_with_case_yo_and_inflection(known: str, mention: str) -> None:
    redacted = Redactor([known]).redact(f"Добрый день, {mention}!")
    assert "[NAME_1]" in redacted
    assert re.sub(r"\[NAME_1\]", "", redacted).replace("Mr. ", "") == "Добрый день, !"


@pytest.mark.parametrize(
    "text",
    [
        "Иван Петров спрашивает",  # another Ivan
        "Иваново — город",  # a town, not the surname
        "Ивановка",
        "ПетровИванов",
        "Иван, добрый день",  # the first name alone is not matched
    ],
)
def test_known_name_does_not_take_other_words(text: str) -> None:
    assert "NAME" not in kinds(text, (NAME,))


def test_first_names_that_are_ordinary_words_are_not_taken_alone() -> None:
    redactor = Redactor(["Смирнова Надежда Павловна"])
    assert redactor.redact("Надежда есть всегда") == "Надежда есть всегда"
    assert redactor.redact("Надежда Павловна, здравствуйте") == "[NAME_1], здравствуйте"


def test_other_known_values() -> None:
    redactor = Redactor(["9161234567", "г. Москва, ул. Ленина, д. 5", "7707083893", "x"])
    text = "Тел. 916 123 45 67 и +7 916 1234567; адрес: г. москва,  ул. Ленина, д. 5; ИНН 7707083893"
    assert redactor.redact(text) == "Тел. [PHONE_1] и [PHONE_1]; адрес: [PII_1]; ИНН [INN_1]"
    assert redactor.mapping["[PII_1]"] == "г. москва,  ул. Ленина, д. 5"  # first spelling seen


# --- the Redactor -----------------------------------------------------------------------------

SAMPLE = (
    "Клиент Петров Пётр Сергеевич, тел. +7 (916) 123-45-67, e-mail petrov@example.ru, "
    "карта 4111 1111 1111 1111, ИНН 500100732259, СНИЛС 112-233-445 95, "
    "паспорт 45 06 123456, р/с 40817810099910004312."
)


def test_redact_replaces_every_kind_with_numbered_placeholders() -> None:
    redactor = Redactor(["Петров Пётр Сергеевич"])
    assert redactor.redact(SAMPLE) == (
        "Клиент [NAME_1], тел. [PHONE_1], e-mail [EMAIL_1], карта [CARD_1], ИНН [INN_1], "
        "СНИЛС [SNILS_1], паспорт [PASSPORT_1], р/с [ACCOUNT_1]."
    )
    assert redactor.mapping == {
        "[NAME_1]": "Петров Пётр Сергеевич",
        "[PHONE_1]": "+7 (916) 123-45-67",
        "[EMAIL_1]": "petrov@example.ru",
        "[CARD_1]": "4111 1111 1111 1111",
        "[INN_1]": "500100732259",
        "[SNILS_1]": "112-233-445 95",
        "[PASSPORT_1]": "45 06 123456",
        "[ACCOUNT_1]": "40817810099910004312",
    }


def test_placeholders_are_stable_within_a_redactor_and_numbered_per_kind() -> None:
    redactor = Redactor()
    first = redactor.redact("a@example.ru, b@example.ru, +7 916 123-45-67")
    second = redactor.redact("B@EXAMPLE.RU then 8 (916) 123 45 67, then +7 903 000-00-00 and a@example.ru")
    assert first == "[EMAIL_1], [EMAIL_2], [PHONE_1]"
    assert second == "[EMAIL_2] then [PHONE_1], then [PHONE_2] and [EMAIL_1]"
    # a new Redactor starts again from 1: placeholders mean nothing across requests
    assert Redactor().redact("+7 903 000-00-00") == "[PHONE_1]"


def test_every_spelling_of_one_phone_is_one_placeholder() -> None:
    redactor = Redactor()
    redacted = redactor.redact(" | ".join(RU_SPELLINGS))
    assert redacted == " | ".join(["[PHONE_1]"] * len(RU_SPELLINGS))
    assert redactor.restore("[PHONE_1]") == RU_SPELLINGS[0]  # the first spelling seen


def test_restore_round_trip() -> None:
    redactor = Redactor(["Петров Пётр Сергеевич"])
    redacted = redactor.redact(SAMPLE)
    assert not re.search(r"\d{4}", redacted)
    assert redactor.restore(redacted) == SAMPLE


@pytest.mark.parametrize(
    ("reply", "restored"),
    [
        ("Позвоним на [PHONE_1].", "Позвоним на +7 (916) 123-45-67."),
        ("(на [PHONE_1])", "(на +7 (916) 123-45-67)"),
        ("«[NAME_1]»,", "«Петров Пётр Сергеевич»,"),
        ("**[CARD_1]**", "**4111 1111 1111 1111**"),
        ("[[PHONE_1]]", "+7 (916) 123-45-67"),
        ("\\[EMAIL_1\\]", "petrov@example.ru"),
        ("[ phone_1 ]", "+7 (916) 123-45-67"),
        ("[Email_1]", "petrov@example.ru"),
        ("карта CARD_1 заблокирована", "карта 4111 1111 1111 1111 заблокирована"),
        ("[NAME_1][PHONE_1]", "Петров Пётр Сергеевич+7 (916) 123-45-67"),
        ("[PHONE_2] and [CARD_7] stay", "[PHONE_2] and [CARD_7] stay"),
        *[(kept, kept) for kept in ("[SECRET_1], [PHONE_], [PHONE_1x]", "PHONE_1x, xPHONE_1, [PHONE_1234567]")],
        ("phone_1 in lower case without brackets", "phone_1 in lower case without brackets"),
    ],
)
def test_restore_tolerates_what_models_do_to_placeholders(reply: str, restored: str) -> None:
    redactor = Redactor(["Петров Пётр Сергеевич"])
    redactor.redact(SAMPLE)
    assert redactor.restore(reply) == restored


def test_text_without_personal_data_is_unchanged() -> None:
    text = "Сколько стоит обслуживание карты? How much is the annual fee, 1 500 ₽ or 2 000 ₽ since 01.01.2025?"
    redactor = Redactor()
    assert redactor.redact(text) == text
    assert redactor.mapping == {}
    assert mask_pii(text) == text


# --- the stream restorer ----------------------------------------------------------------------


def test_stream_restorer_never_splits_a_value_and_equals_the_whole() -> None:
    redactor = Redactor(["Петров Пётр Сергеевич"])
    redactor.redact(SAMPLE)
    reply = (
        "Уважаемый [NAME_1]! Карта [CARD_1] заблокирована, мы позвоним на [[PHONE_1]] и напишем на "
        "\\[EMAIL_1\\]; ИНН INN_1, СНИЛС [ snils_1 ]. [PHONE_12] и [P] и [Ссылка] остаются. [ACCOUNT_1"
    )
    whole = redactor.restore(reply)
    values = list(redactor.mapping.values())
    for _ in range(300):
        cuts = sorted(RNG.sample(range(1, len(reply)), RNG.randint(1, len(reply) - 1)))
        pieces = [reply[a:b] for a, b in zip([0, *cuts], [*cuts, len(reply)], strict=True)]
        restorer = redactor.stream_restorer()
        out = [restorer.feed(piece) for piece in pieces] + [restorer.flush()]
        assert "".join(out) == whole
        for value in values:
            # each restored value arrives inside a single piece, never split across two
            assert sum(chunk.count(value) for chunk in out) == whole.count(value)


def test_stream_restorer_on_random_long_answers() -> None:
    redactor = Redactor(["Иванов Иван"])
    redactor.redact("Иванов Иван +7 916 123-45-67 ivan@example.ru 4111 1111 1111 1111")
    atoms = ["[NAME_1]", "[[PHONE_1]]", "\\[EMAIL_1\\]", "CARD_1", "xCARD_1", "[ card_1 ]", "[PHONE_9]", "[", "]"]
    atoms += ["\\", " ", "слово", "Word", "P", "PHONE_", "_1", "[[", "]]", "\n"]
    for _ in range(200):
        reply = "".join(RNG.choice(atoms) for _ in range(RNG.randint(50, 400)))
        cuts = sorted({RNG.randint(1, len(reply) - 1) for _ in range(RNG.randint(1, len(reply)))})
        restorer = redactor.stream_restorer()
        out = [restorer.feed(reply[a:b]) for a, b in zip([0, *cuts], [*cuts, len(reply)], strict=True)]
        assert "".join(out) + restorer.flush() == redactor.restore(reply)


def test_stream_restorer_holds_only_what_may_be_a_placeholder() -> None:
    redactor = Redactor()
    redactor.redact("+7 916 123-45-67")
    restorer = redactor.stream_restorer()
    assert restorer.feed("Звоните на ") == "Звоните на "
    assert restorer.feed("[PH") == ""
    assert restorer.feed("ONE_1") == ""
    assert restorer.feed("] сегодня [в 18:00]") == "+7 916 123-45-67 сегодня [в 18:00]"
    assert restorer.feed(" PHONE_1") == " "
    assert restorer.feed(".") == "+7 916 123-45-67."
    assert restorer.feed(" [PHONE_") == " "
    assert restorer.flush() == "[PHONE_"


# --- masks ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("тел. +7 (916) 123-45-67", "тел. +7 *** ***-45-67"),
        ("тел. 89161234567", "тел. +7 *** ***-45-67"),
        ("UK +44 20 7946 0958", "UK +********0958"),
        ("mail ivan.petrov@example.ru.", "mail i***@example.ru."),
        ("card 4111 1111 1111 1234".replace("1234", "1111"), "card **** **** **** 1111"),
        ("ИНН 7707083893", "ИНН ********93"),
        ("клиент 500100732259", "клиент ИНН **********59"),
        ("СНИЛС 112-233-445 95", "СНИЛС ***-***-*** 95"),
        ("id 112-233-445 95", "id СНИЛС ***-***-*** 95"),
        ("паспорт 45 06 123456", "паспорт ** ** ******"),
        ("р/с 40817810099910004312", "р/с 40817***********4312"),
        ("to 40817810099910004312", "to счёт 40817***********4312"),
    ],
)
def test_mask_pii(text: str, masked: str) -> None:
    assert mask_pii(text) == masked


def test_mask_pii_leaves_no_raw_value_and_is_stable() -> None:
    masked = mask_pii(SAMPLE, known_values=["Петров Пётр Сергеевич"])
    assert masked == (
        "Клиент П*** П*** С***, тел. +7 *** ***-45-67, e-mail p***@example.ru, "
        "карта **** **** **** 1111, ИНН **********59, СНИЛС ***-***-*** 95, "
        "паспорт ** ** ******, р/с 40817***********4312."
    )
    assert mask_pii(masked) == masked  # a mask is not mistaken for data
    for raw in ("916", "123-45-67", "petrov@", "4111 1111 1111 1111", "500100732259", "123456", "Петров"):
        assert raw not in masked
    assert mask_pii("Петров") == "Петров"  # names are masked only when known


# --- the log filter ---------------------------------------------------------------------------


@pytest.fixture
def captured() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(PiiLogFilter())
    parent = logging.getLogger("test_redaction.parent")
    parent.handlers[:] = [handler]
    parent.setLevel(logging.DEBUG)
    parent.propagate = False
    return parent, stream


def test_log_filter_masks_message_and_args(captured: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = captured
    log.info("customer %s called from %s about card %s", "ivan@example.ru", "+7 916 123-45-67", "4111111111111111")
    log.warning("ИНН %(inn)s, СНИЛС %(snils)s", {"inn": "7707083893", "snils": "112-233-445 95"})
    log.getChild("child").error("passport 4506 123456 of a child logger's record")  # propagated to the handler

    output = stream.getvalue()
    assert output.splitlines() == [
        "INFO test_redaction.parent: customer i***@example.ru called from +7 *** ***-45-67"
        " about card **** **** **** 1111",
        "WARNING test_redaction.parent: ИНН ********93, СНИЛС ***-***-*** 95",
        "ERROR test_redaction.parent.child: passport ** ** ****** of a child logger's record",
    ]


def test_log_filter_masks_exception_text(captured: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = captured
    try:
        raise ValueError("bad phone 89161234567 for ivan@example.ru")
    except ValueError:
        log.exception("lookup failed for %s", "+79161234567")

    output = stream.getvalue()
    assert "Traceback (most recent call last)" in output
    assert "ValueError: bad phone +7 *** ***-45-67 for i***@example.ru" in output
    assert "lookup failed for +7 *** ***-45-67" in output
    assert "9161234567" not in output
    assert "ivan@" not in output


def test_log_filter_with_known_names_and_stack_info(captured: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = captured
    handler = log.handlers[0]
    handler.filters[:] = [PiiLogFilter(known_values=lambda: ["Иванов Иван Иванович"])]
    log.info("answered Иванову И. И. (%s)", "ivan@example.ru", stack_info=True)

    output = stream.getvalue()
    assert "answered И*** И. И. (i***@example.ru)" in output
    assert "Иванов" not in output
    assert "Stack (most recent call last)" in output


def test_a_card_followed_by_a_snils_is_two_values_not_one_long_card() -> None:
    # «…5676 112-233-445 95»: the 19-digit run happens to pass Luhn, but «112» starts the SNILS.
    masked = mask_pii("данные: 4276 1609 1234 5676 112-233-445 95")
    assert "5676" in masked and "112-233-445" not in masked and "4276 1609" not in masked


def test_a_phone_then_a_card_are_not_read_as_one_account() -> None:
    masked = mask_pii("+7 916 123-45-67 4276 1609 1234 5676")
    assert masked.startswith("+7 *** ***-45-67") and masked.endswith("**** **** **** 5676")
