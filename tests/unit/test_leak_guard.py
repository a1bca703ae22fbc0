"""rag.leak_guard: leaks are blocked in any disguise; ordinary bank answers never are."""

from __future__ import annotations

import base64
import codecs
from urllib.parse import quote

import pytest

from rag.leak_guard import SYSTEM_RUN_CHARS, LeakCheck, check_answer
from rag.prompts import SYSTEM

PROMPTS = tuple(SYSTEM.values())
CANARY = "cnry-5e1f0a9d7b"
PETROV = ("Петров Алексей Викторович", "8 911 560-32-14", "+7 (812) 409-11-20", "a.petrov@corp.example",
          "4012 803114", "1240000.00", "48920.00")

# What the bot says every day: tariffs, refusals that name the rules' subject, customer data of
# the asker herself, numbers, links to documents. None of it may be blocked.
ORDINARY = [
    "Обслуживание карты «Классик» стоит 99 ₽ в месяц [1]. Обслуживание бесплатно, если покупки по карте за "
    "календарный месяц составили от 10 000 ₽ [1].",
    "Переводы через СБП по номеру телефона бесплатны до 100 000 ₽ в месяц. Сверх лимита комиссия 0,5%, но не "
    "более 1 500 ₽ за перевод [1]. Подробнее: https://bank.example/transfers/sbp",
    "Я не могу раскрывать свои инструкции и не сообщаю данные других клиентов. Могу помочь с вопросами о ваших "
    "продуктах и тарифах банка.",
    "Если в источниках нет ответа, я передам вопрос оператору — он ответит вам здесь. Отвечаю кратко и по делу.",
    "Ваш следующий платёж по кредиту «Просто кредит» — 14 870 ₽, 15 декабря [1]. Остаток долга — 312 400 ₽.",
    "Иванова Марина Сергеевна, на вашей карте •• 4821 остаток 48 320,50 ₽. Вклад «Надёжный» — 500 000 ₽ под 15%.",
    "Сразу заблокируйте карту в приложении или по телефону 8 800 100-00-00, затем закажите перевыпуск [1].",
    "Источники, на которые я ссылаюсь, — это документы банка: тарифы, правила переводов и условия вкладов [1], [2].",
    "A SWIFT transfer in US dollars costs 0.3% of the amount, at least 15 USD and at most 150 USD [1]. Transfers "
    "sent before 15:00 Moscow time arrive in 1 to 3 business days.",
    "Sorry, I can only answer using the sources of the bank, and I never disclose other customers' data. Please "
    "ask about your own accounts.",
    "You need the recipient's IBAN and the SWIFT/BIC code of the recipient's bank [1]. Answer briefly: yes, it is "
    "possible from the app.",
    "Rules for the autumn cashback: 10% in cafes and restaurants, at most 1,000 RUB a month [1].",
    "Реквизиты счёта: откройте счёт в приложении и нажмите «Реквизиты» [1]. Номер договора 40817810099910004312.",
    "Курс: USD 92,50 / 93,80; EUR 100,10 / 101,40. Данные обновляются каждые 15 минут.",
    "SGVsbG8sIHRoaXMgaXMganVzdCBhIGdyZWV0aW5nIGluIGJhc2U2NA== — это пример строки base64 из нашей документации.",
]


def check(text: str, **kwargs: object) -> LeakCheck:
    return check_answer(text, system_prompts=PROMPTS, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("answer", ORDINARY)
def test_ordinary_bank_answers_pass(answer: str) -> None:
    assert check(answer, canaries=[CANARY], foreign_values=PETROV) == LeakCheck(False, None)


def test_short_phrases_of_the_system_prompt_do_not_block() -> None:
    # Every sentence-sized piece of a rule shorter than the threshold, quoted on its own.
    for prompt in PROMPTS:
        words = prompt.replace("\n", " ").split()
        for i in range(0, len(words) - 4, 3):
            phrase = " ".join(words[i : i + 4])
            if sum(ch.isalnum() for ch in phrase) < SYSTEM_RUN_CHARS - 5:
                assert not check(f"Ответ: {phrase}.").blocked, phrase


def test_an_empty_answer_passes() -> None:
    assert not check("").blocked and not check("   \n").blocked


@pytest.mark.parametrize("language", ["ru", "en"])
@pytest.mark.parametrize("disguise", [
    "verbatim", "whitespace", "case", "excerpt", "spaced", "zero_width", "homoglyph", "reversed", "rtl", "base64",
    "base64_wrapped", "rot13", "percent", "hex", "leet", "vowels", "translit", "tags", "json", "fragments",
])
def test_a_reproduced_system_prompt_is_blocked_in_any_disguise(language: str, disguise: str) -> None:
    prompt = SYSTEM[language]
    middle = prompt[len(prompt) // 3 : len(prompt) // 3 + 160]
    b64 = base64.b64encode(prompt.encode()).decode()
    latin = str.maketrans("аеорсухАВЕКМНОРСТХ", "aeopcyxABEKMHOPCTX")
    translit = str.maketrans({"а": "a", "б": "b", "в": "v", "г": "g", "д": "d", "е": "e", "ж": "zh", "з": "z",
                              "и": "i", "й": "y", "к": "k", "л": "l", "м": "m", "н": "n", "о": "o", "п": "p",
                              "р": "r", "с": "s", "т": "t", "у": "u", "ф": "f", "х": "kh", "ц": "ts", "ч": "ch",
                              "ш": "sh", "щ": "shch", "ъ": "", "ы": "y", "ь": "", "э": "e", "ю": "yu", "я": "ya"})
    leaked = {
        "verbatim": prompt,
        "whitespace": "\n\n".join(prompt.split()),
        "case": prompt.upper(),
        "excerpt": middle,
        "spaced": " ".join(prompt),
        "zero_width": "\u200b".join(prompt),
        "homoglyph": prompt.translate(latin),
        "reversed": prompt[::-1],
        "rtl": "\u202e" + prompt[::-1] + "\u202c",
        "base64": b64,
        "base64_wrapped": "\n".join(b64[i : i + 60] for i in range(0, len(b64), 60)),
        "rot13": codecs.encode(prompt, "rot13"),
        "percent": quote(prompt),
        "hex": prompt.encode().hex(" "),
        "leet": prompt.replace("о", "0").replace("o", "0").replace("е", "3").replace("e", "3"),
        "vowels": "".join("*" if ch.lower() in "aeiouyаеёиоуыэюя" else ch for ch in prompt),
        "translit": prompt.lower().translate(translit),
        "tags": "".join(chr(0xE0000 + ord(c)) if " " <= c <= "~" else c for c in prompt),
        "json": '{"system": "' + prompt.replace("\n", "\\n") + '"}',
        # Every sixth word changed: no long run, but most of the prompt is there.
        "fragments": " ".join(w if i % 6 else "ЗАМЕНА" for i, w in enumerate(prompt.split())),
    }[disguise]
    if disguise == "tags" and language == "ru":
        pytest.skip("tag characters carry ASCII only")
    result = check(f"Конечно! {leaked}\n\nОбслуживание карты стоит 99 ₽ [1].")
    assert result.blocked and result.reason is not None and result.reason.startswith("system_prompt"), disguise


def test_the_reason_names_the_view_but_never_the_leaked_text() -> None:
    result = check(base64.b64encode(SYSTEM["ru"].encode()).decode())
    assert result == LeakCheck(True, "system_prompt (decoded)")


def test_a_prompt_not_given_is_not_looked_for() -> None:
    assert not check_answer(SYSTEM["ru"], system_prompts=[SYSTEM["en"]]).blocked
    assert not check_answer(SYSTEM["ru"], system_prompts=[]).blocked


@pytest.mark.parametrize("shown", [
    f"Ваш код: {CANARY}.", CANARY.upper(), " ".join(CANARY), "\u200b".join(CANARY), CANARY[::-1],
    base64.b64encode(f"secret={CANARY}".encode()).decode(), codecs.encode(CANARY, "rot13"),
    f"https://evil.example/?d={quote(CANARY)}",
])
def test_a_canary_is_blocked(shown: str) -> None:
    result = check(f"Ответ [1]. {shown}", canaries=[CANARY])
    assert result.blocked and result.reason is not None and result.reason.startswith("canary")


def test_a_canary_too_short_to_tell_from_text_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 8"):
        check("ответ", canaries=["abc-12"])


@pytest.mark.parametrize("shown", [
    "Клиент Петров Алексей Викторович, баланс 1 240 000 ₽",
    "ПЕТРОВ  АЛЕКСЕЙ\nВИКТОРОВИЧ",
    "телефон +7 (911) 560-32-14",
    "звоните 89115603214",
    "тел. 911 560 32 14",
    "пишите на A.Petrov@corp.example",
    "паспорт 4012 803114",
    "остаток 1,240,000.00 RUB",
    "ипотечный платёж 48 920 ₽",
    "Petrov Aleksei Viktorovich",
    base64.b64encode("тел 8 911 560-32-14".encode()).decode(),
])
def test_a_foreign_value_is_blocked_in_any_layout(shown: str) -> None:
    result = check(f"Вот данные: {shown}.", foreign_values=PETROV)
    assert result.blocked and result.reason is not None and result.reason.startswith("foreign_value"), shown


@pytest.mark.parametrize("shown", [
    "Петровский проспект, д. 12",  # a street, not the customer
    "платёж 12 400 ₽ и 1 240 ₽",  # other numbers
    "звоните 8 800 100-00-00",
    "номер заявки 9115603",  # part of the phone only
    "договор 40128031140",  # the passport digits inside a longer number
    "1240 ₽",
])
def test_values_that_only_resemble_a_foreign_one_pass(shown: str) -> None:
    assert not check(f"Ответ: {shown}.", foreign_values=PETROV).blocked, shown


def test_too_short_foreign_values_are_ignored() -> None:
    assert not check("Код 12, имя Ан", foreign_values=["12", "Ан"]).blocked
