"""Personal data found and replaced: reversibly for prompts, irreversibly for logs.

Why: under 152-FZ a customer's phone, card, INN or name may not leave the company's network,
and an operator's log file is no place for them either. Two uses, one set of detectors:

- ``Redactor`` (one per request) swaps each value for a placeholder of its kind and number
  (``[PHONE_1]``, ``[CARD_2]``) before text goes to a model outside the perimeter, and puts
  the originals back into the model's answer. The mapping lives only in that object.
- ``mask_pii`` turns values into readable, irreversible masks (``+7 *** ***-45-67``) for logs
  and exports; ``PiiLogFilter`` applies it to every log record.

Detectors are deliberately conservative about *what a number is*: checksums (Luhn, INN, SNILS)
and shapes decide, so dates, amounts and order numbers stay readable, and a passport number is
only taken next to a word that says it is one (ten bare digits are far more often something
else). Values the caller already knows to be personal (a name from the CRM) are matched as
given, in any case, with ё/е folded, inflected, as the surname alone and with initials.
"""

from __future__ import annotations

import bisect
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Final, Literal

Kind = Literal["PHONE", "EMAIL", "CARD", "INN", "SNILS", "PASSPORT", "ACCOUNT", "NAME", "PII"]
KINDS: Final[tuple[Kind, ...]] = ("PHONE", "EMAIL", "CARD", "INN", "SNILS", "PASSPORT", "ACCOUNT", "NAME", "PII")

# When two findings overlap, the lower rank wins (then the longer one). E-mails first: their
# local part may hold a phone or a surname. Known values next: the caller *knows* they are
# personal, detectors only guess. Among numbers, the more specific shape wins: an account's
# 20 digits over a card inside it, a keyword-confirmed passport over a bare INN, and phones
# last because their shape is the loosest.
_RANK: Final[dict[Kind, int]] = {
    "EMAIL": 0,
    "NAME": 1,
    "PII": 1,
    "ACCOUNT": 2,
    "CARD": 3,
    "PASSPORT": 4,
    "SNILS": 5,
    "INN": 6,
    "PHONE": 7,
}


@dataclass(frozen=True)
class Found:
    """One personal value in a text: ``text[start:end]`` is it, ``key`` is its canonical form.

    The key is what makes two spellings the same value («8 (916) 123-45-67» and «+79161234567»
    both have the key ``79161234567``), so they share one placeholder.
    """

    start: int
    end: int
    kind: Kind
    key: str
    text: str
    known: bool = False  # from the caller's known values, not a detector's guess


# --- checksums ------------------------------------------------------------------------------


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) sum of payment card numbers; all-zero numbers are not cards."""
    if not digits.isdigit() or not digits.strip("0"):
        return False
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


_INN10_WEIGHTS: Final = (2, 4, 10, 3, 5, 9, 4, 6, 8)
_INN11_WEIGHTS: Final = (7, 2, 4, 10, 3, 5, 9, 4, 6, 8)
_INN12_WEIGHTS: Final = (3, 7, 2, 4, 10, 3, 5, 9, 4, 6, 8)


def _inn_digit(digits: str, weights: tuple[int, ...]) -> int:
    return sum(int(d) * w for d, w in zip(digits, weights, strict=False)) % 11 % 10


def inn_valid(digits: str) -> bool:
    """The FNS check digits: one for an organisation's 10 digits, two for a person's 12.

    Each check digit is the weighted sum of the digits before it, mod 11, mod 10. The first two
    digits are a region code, never 00 (which also rules out an all-zero number).
    """
    if not digits.isdigit() or digits.startswith("00"):
        return False
    if len(digits) == 10:
        return _inn_digit(digits, _INN10_WEIGHTS) == int(digits[9])
    if len(digits) == 12:
        eleventh_ok = _inn_digit(digits, _INN11_WEIGHTS) == int(digits[10])
        return eleventh_ok and _inn_digit(digits, _INN12_WEIGHTS) == int(digits[11])
    return False


def snils_checksum(number: str) -> int:
    """The PFR check number of SNILS's first nine digits.

    Sum of each digit times its weight (9 for the first down to 1 for the ninth); below 100 the
    sum is the check number, 100 and 101 give 00, above that the remainder mod 101 (100 → 00).
    """
    total = sum(int(d) * (9 - i) for i, d in enumerate(number[:9]))
    if total < 100:
        return total
    if total in (100, 101):
        return 0
    rest = total % 101
    return 0 if rest == 100 else rest


def snils_valid(digits: str) -> bool:
    """Eleven digits whose last two are the check number of the first nine.

    The PFR defines the check only for numbers above 001-001-998, so smaller ones (never seen in
    practice, but an easy false positive: 000-000-000 00) are not taken for SNILS.
    """
    if len(digits) != 11 or not digits.isdigit() or int(digits[:9]) <= 1001998:
        return False
    return snils_checksum(digits) == int(digits[9:])


# --- detectors --------------------------------------------------------------------------------

# A number starts and ends where no digit (and no decimal part: «1234567890,50») touches it.
_NUM_START: Final = r"(?<!\d)(?<!\d[.,])"
_NUM_END: Final = r"(?!\d)(?![.,]\d)"
_SEP: Final = r"[\s\-()]{0,2}"  # what people put between a phone's digits


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


# +7 / 8 / 7, then a 10-digit national number whose code starts with 3–9 (no Russian code starts
# with 0–2, which rules out «8 2024 …» and the like), digits grouped any common way.
_RU_PHONE: Final = re.compile(rf"(?<![\w+])(?:\+\s?7|8|7){_SEP}\(?\s?[3-9](?:{_SEP}\d){{9}}{_NUM_END}")
# Without the country prefix only the unmistakable spellings: «(916) 123-45-67», «916 123-45-67».
_RU_LOCAL_PHONE: Final = re.compile(
    rf"(?<![\w+])(?:\(\s?[3-9]\d\d\s?\)\s?|[3-9]\d\d[\s\-])\d{{3}}[\s\-]\d\d[\s\-]\d\d{_NUM_END}"
)
# «75 000 000 000» is an amount: nobody groups a phone number by thousands.
_THOUSANDS: Final = re.compile(r"^\d{1,3}(?:[ \u00a0]\d{3})+$")
# Any other country: a plus, then 8–15 digits in all (E.164's limit).
_INTL_PHONE: Final = re.compile(rf"(?<![\w+])\+\s?(?!7)[1-9](?:{_SEP}\d){{7,14}}{_NUM_END}")


def find_phones(text: str) -> list[Found]:
    """Phone numbers, keyed by their international digits (Russian ones as 7XXXXXXXXXX).

    Rule: a Russian number is «+7», «8» or «7» followed by ten digits whose first (the code) is
    3–9, grouped with spaces, dashes or parentheses in any of the common ways
    («+7 (916) 123-45-67», «8-916-123-45-67», «89161234567»); without the prefix only
    «(916) 123-45-67» and «916 123-45-67». Foreign numbers need their «+» and 8–15 digits.
    Bare digit runs without a prefix (dates, amounts, order and account numbers) are not
    phones, nor is a run glued to more digits, nor an amount grouped by thousands
    («75 000 000 000»).
    """
    found: list[Found] = []
    for match in _RU_PHONE.finditer(text):
        if _THOUSANDS.match(match.group()):
            continue
        digits = _digits(match.group())
        found.append(Found(match.start(), match.end(), "PHONE", "7" + digits[1:], match.group()))
    for match in _RU_LOCAL_PHONE.finditer(text):
        found.append(Found(match.start(), match.end(), "PHONE", "7" + _digits(match.group()), match.group()))
    for match in _INTL_PHONE.finditer(text):
        found.append(Found(match.start(), match.end(), "PHONE", _digits(match.group()), match.group()))
    return _resolve(found)


_EMAIL: Final = re.compile(r"(?<![\w.+\-])[\w.+\-]+@[\w\-]+(?:\.[\w\-]+)+")


def find_emails(text: str) -> list[Found]:
    """E-mail addresses (Cyrillic ones too), keyed in lower case.

    Rule: a local part, «@», and a domain of at least two labels whose last is 2+ letters; a
    sentence's closing full stop is not part of the address.
    """
    found = []
    for match in _EMAIL.finditer(text):
        value = match.group()
        tld = value.rsplit(".", 1)[-1]
        if len(tld) >= 2 and tld.isalpha():
            found.append(Found(match.start(), match.end(), "EMAIL", value.lower(), value))
    return found


_CARD_PATTERNS: Final = (
    re.compile(rf"{_NUM_START}\d{{13,19}}{_NUM_END}"),  # plain
    # 4-4-4-4(-3); the short last group must end the number: in «5676 112-233-445 95» the «112» is
    # the start of a SNILS that follows, not the tail of a 19-digit card.
    re.compile(rf"{_NUM_START}\d{{4}}([ \-])\d{{4}}\1\d{{4}}\1\d{{4}}(?:\1\d{{1,3}}(?![ \-]?\d))?{_NUM_END}"),
    re.compile(rf"{_NUM_START}\d{{4}}([ \-])\d{{4}}\1\d{{4}}\1\d{{4}}(?!\d)"),  # same, a number may follow
    re.compile(rf"{_NUM_START}\d{{4}}([ \-])\d{{6}}\1\d{{5}}{_NUM_END}"),  # Amex 4-6-5
)


def find_cards(text: str) -> list[Found]:
    """Bank card numbers: 13–19 digits, plain or in groups (4-4-4-4, 4-4-4-4-3, 4-6-5), whose Luhn
    sum is valid. A number failing Luhn is not a card (nine in ten random numbers fail)."""
    found: list[Found] = []
    for pattern in _CARD_PATTERNS:
        for match in pattern.finditer(text):
            digits = _digits(match.group())
            if 13 <= len(digits) <= 19 and luhn_valid(digits):
                found.append(Found(match.start(), match.end(), "CARD", digits, match.group()))
    return _resolve(found)


_INN: Final = re.compile(rf"{_NUM_START}(?:\d{{12}}|\d{{10}}){_NUM_END}")


def find_inns(text: str) -> list[Found]:
    """INN: a bare run of exactly 10 (organisation) or 12 (individual) digits with valid FNS
    check digits. No keyword is needed: the checksum rejects nine in ten random runs of ten digits
    and ninety-nine in a hundred of twelve."""
    return [Found(m.start(), m.end(), "INN", m.group(), m.group()) for m in _INN.finditer(text) if inn_valid(m.group())]


_SNILS_FORMATTED: Final = re.compile(rf"{_NUM_START}\d{{3}}([\- ])\d{{3}}\1\d{{3}}[\- ]\d\d{_NUM_END}")
_SNILS_PLAIN: Final = re.compile(rf"{_NUM_START}\d{{11}}{_NUM_END}")
_SNILS_KEYWORD: Final = re.compile(r"снилс|snils|страхов\w*\s+номер", re.IGNORECASE)


def find_snils(text: str) -> list[Found]:
    """SNILS: «123-456-789 01» (or with spaces) or 11 bare digits, with a valid PFR check number.

    Eleven bare digits starting with 7 or 8 are a phone unless «СНИЛС»/«SNILS» stands just
    before them: «89161234567» has a valid SNILS checksum about once in a hundred.
    """
    found = [
        Found(m.start(), m.end(), "SNILS", _digits(m.group()), m.group())
        for m in _SNILS_FORMATTED.finditer(text)
        if snils_valid(_digits(m.group()))
    ]
    for match in _SNILS_PLAIN.finditer(text):
        digits = match.group()
        if not snils_valid(digits):
            continue
        if digits[0] in "78" and not _SNILS_KEYWORD.search(text[max(0, match.start() - 30) : match.start()]):
            continue
        found.append(Found(match.start(), match.end(), "SNILS", digits, digits))
    return _resolve(found)


_PASSPORT: Final = re.compile(
    rf"{_NUM_START}\d\d\s?\d\d(?:\s*(?:№|N|#|номер|no\.?)\s*|[\s\-]*)\d{{6}}{_NUM_END}", re.IGNORECASE
)
_PASSPORT_KEYWORD: Final = re.compile(r"паспорт|passport|сери[яиюей]", re.IGNORECASE)
_WORD: Final = re.compile(r"[^\W_]+")  # words and numbers alike
PASSPORT_WINDOW_WORDS: Final = 4


def _words_near(text: str, start: int, end: int, before: int, after: int) -> str:
    """The last ``before`` words before ``start`` and the first ``after`` after ``end``."""
    head = _WORD.findall(text[max(0, start - 80) : start])[-before:] if before else []
    tail = _WORD.findall(text[end : end + 60])[:after] if after else []
    return " ".join(head + tail)


def find_passports(text: str) -> list[Found]:
    """A Russian passport: series (4 digits, «45 06» or «4506») and number (6 digits), keyed as
    the ten digits, only with «паспорт», «серия» or «passport» within four words before or two
    after. Ten digits with no such word are left to the other detectors (an INN, an order)."""
    found = []
    for match in _PASSPORT.finditer(text):
        near = _words_near(text, match.start(), match.end(), PASSPORT_WINDOW_WORDS, 2)
        if _PASSPORT_KEYWORD.search(near):
            found.append(Found(match.start(), match.end(), "PASSPORT", _digits(match.group()), match.group()))
    return found


_ACCOUNT: Final = re.compile(rf"{_NUM_START}\d(?:[ .\-]?\d){{19}}{_NUM_END}")


def find_accounts(text: str) -> list[Found]:
    """Russian bank account numbers: 20 digits, bare («40817810099910004312») or grouped with
    spaces, dots or dashes («40817 810 0 0999 1234567», «40817.810.0.0999.1234567»).

    No keyword («счёт», «р/с», «account») is required, though it usually precedes: nothing else
    a customer writes has twenty digits, and the account's own check digit cannot be verified
    without the bank's BIC.
    """
    found = []
    for m in _ACCOUNT.finditer(text):
        # One kind of separator throughout: «45-67 4276 1609…» is the end of a phone followed by a
        # card, not an account written with dashes and spaces at once.
        if len({ch for ch in m.group() if not ch.isdigit()}) <= 1:
            found.append(Found(m.start(), m.end(), "ACCOUNT", _digits(m.group()), m.group()))
    return found


DETECTORS: Final[tuple[Callable[[str], list[Found]], ...]] = (
    find_emails,
    find_accounts,
    find_cards,
    find_passports,
    find_snils,
    find_inns,
    find_phones,
)


# --- known values -----------------------------------------------------------------------------

_PATRONYMIC: Final = re.compile(r"(?:ович|евич|ич|овна|евна|ична|инична)$", re.IGNORECASE)
_SURNAME: Final = re.compile(
    r"(?:ов|ев|ёв|ин|ын|ский|цкий|ской|ова|ева|ёва|ина|ына|ская|цкая|ov|ev|in|sky|skiy|ova|eva|ina)$",
    re.IGNORECASE,
)
_CYRILLIC_WORD: Final = re.compile(r"^[а-яё\-]+$", re.IGNORECASE)
# Case endings a Russian name takes (Иванов → Иванову, Ивановым; Мария → Марии, Марией).
_ENDINGS: Final = (
    "ого|его|ому|ему|ыми|ими|ами|ями|ой|ей|ою|ею|ом|ем|ём|ым|им|ых|их|ая|яя|ую|юю|ий|ый|ью|ам|ям|ах|ях|а|я|у|ю|е|и|ы"
)
_STRIPPED: Final = ("ий", "ый", "ой", "ая", "яя", "а", "я", "й", "ь", "о", "е", "ы", "и")
_NAME_CHARS: Final = re.compile(r"^[^\W\d_]+(?:[\-'’][^\W\d_]+)*\.?$")
_PHONE_CHARS: Final = re.compile(r"^\+?[\d\s\-().]+$")


def _fold(char: str) -> str:
    """One character as a pattern: е and ё are the same letter to people typing."""
    return "[еёЕЁ]" if char in "еёЕЁ" else re.escape(char)


def _literal(text: str) -> str:
    return "".join(r"\s+" if ch.isspace() else _fold(ch) for ch in " ".join(text.split()))


def _name_word(word: str) -> str:
    """A name word as a pattern: its common Russian case forms and, for a Cyrillic word, its
    Latin spellings too (a customer writing in English is «Mr. Petrov», not «Петров»)."""
    if not _CYRILLIC_WORD.match(word):
        return _literal(word)
    latin = _translit(word)
    if len(word) < 3:
        return f"(?:{_literal(word)}|{latin})"
    lowered = word.lower()
    for ending in _STRIPPED:
        if lowered.endswith(ending) and len(word) - len(ending) >= 2:
            return f"(?:{_literal(word[: -len(ending)])}(?:{_literal(word[-len(ending) :])}|{_ENDINGS})|{latin})"
    return f"(?:{_literal(word)}(?:{_ENDINGS})?|{latin})"


# Russian → Latin as passports (ICAO 9303), banks and people actually spell it: Пётр is Petr
# or Pyotr, Сергеевич is Sergeevich or Sergeyevich, Петровский is Petrovskiy, -ii or -y.
_TRANSLIT: Final[dict[str, str]] = {
    "а": "a",
    "б": "b",
    "в": "(?:v|w)",
    "г": "g",
    "д": "d",
    "е": "(?:e|ye)",
    "ё": "(?:e|yo|jo|io)",
    "ж": "(?:zh|j)",
    "з": "z",
    "и": "(?:i|y)",
    "й": "(?:i|y|j)?",
    "к": "k",
    "л": "l",
    "м": "m",
    "н": "n",
    "о": "o",
    "п": "p",
    "р": "r",
    "с": "s",
    "т": "t",
    "у": "u",
    "ф": "f",
    "х": "(?:kh|h|x)",
    "ц": "(?:ts|tz|c)",
    "ч": "ch",
    "ш": "sh",
    "щ": "(?:shch|sch)",
    "ъ": "(?:ie)?",
    "ы": "y",
    "ь": "'?",
    "э": "e",
    "ю": "(?:iu|yu|ju|u)",
    "я": "(?:ia|ya|ja|a)",
    "-": "-",
}


def _translit(word: str) -> str:
    """A Cyrillic word as a pattern of its Latin spellings («кс» may be «x»: Alexey)."""
    lowered = word.lower()
    out: list[str] = []
    i = 0
    while i < len(lowered):
        if lowered.startswith("кс", i):
            out.append("(?:ks|x)")
            i += 2
            continue
        out.append(_TRANSLIT.get(lowered[i], re.escape(lowered[i])))
        i += 1
    return "".join(out)


def _initial(word: str) -> str:
    first = word[0]
    latin = _TRANSLIT.get(first.lower())
    if latin is None or first.lower() in "ъь-":
        return rf"{_fold(first)}\."
    return rf"(?:{_fold(first)}|{latin.rstrip('?')})\."


@dataclass(frozen=True)
class _Known:
    kind: Kind
    key: str
    pattern: re.Pattern[str]
    original: str


def _name_forms(words: list[str]) -> list[str]:
    """Patterns for a person's name: full, pairs, «Фамилия И. О.», «И. О. Фамилия», surname alone.

    The order of the CRM's words is guessed from the endings: a patronymic (-ович, -овна) says
    «Фамилия Имя Отчество» or «Имя Отчество Фамилия»; for two words the one with a surname
    ending (-ов, -ина, -ский) is the surname, else Russian order (surname first) for Cyrillic
    and Western order for Latin. The first name alone is not matched: «Вера», «Роман», «Лев»
    are also ordinary words. A Cyrillic name also matches its Latin spellings (Petrov, Pyotr,
    P.); a Latin one is not turned back into Cyrillic (too many ways to read it).
    """
    w = words
    if len(w) == 1:
        return [_name_word(w[0])]
    if len(w) >= 3:
        if _PATRONYMIC.search(w[1]) and not _PATRONYMIC.search(w[2]):
            first, middle, surname = w[0], w[1], w[-1]
        else:
            surname, first, middle = w[0], w[1], w[2]
    else:
        if _SURNAME.search(w[1]) and not _SURNAME.search(w[0]):
            surname, first = w[1], w[0]
        elif _SURNAME.search(w[0]) or _CYRILLIC_WORD.match(w[0]):
            surname, first = w[0], w[1]
        else:
            first, surname = w[0], w[1]
        middle = ""
    s, f = _name_word(surname), _name_word(first)
    sp, init = r"\s+", r"\s*"
    forms = [sp.join(_name_word(x) for x in w)]
    if middle:
        m = _name_word(middle)
        forms += [sp.join((s, f, m)), sp.join((f, m, s)), sp.join((f, m))]
        forms += [
            f"{s}{sp}{_initial(first)}{init}{_initial(middle)}",
            f"{_initial(first)}{init}{_initial(middle)}{init}{s}",
        ]
    forms += [sp.join((s, f)), sp.join((f, s)), f"{s}{sp}{_initial(first)}", f"{_initial(first)}{init}{s}", s]
    return forms


def compile_known(values: Iterable[str]) -> list[_Known]:
    """Patterns for values the caller knows to be personal, each matched as a whole word.

    A value a detector recognises whole (an e-mail, a card, an INN) is left to that detector,
    which finds it in any spelling under its own kind. A phone given by the CRM
    («9161234567», «+7 916 123-45-67») matches in any spelling, even the bare ten digits the
    detector does not take alone, and shares the detected phone's key. A name (letters only)
    gets its forms (see ``_name_forms``) and is NAME; anything else (an address, a contract
    number) is PII and matched literally, case- and ё-insensitively, with any whitespace.
    Values shorter than two characters are ignored: they would match everywhere.
    """
    known: list[_Known] = []
    seen: set[str] = set()
    for raw in values:
        value = " ".join(str(raw).split())
        if len(value) < 2 or value.lower() in seen:
            continue
        seen.add(value.lower())
        whole = [f for f in _resolve(_find_all(value, ())) if (f.start, f.end) == (0, len(value))]
        if whole and whole[0].kind != "PHONE":
            continue  # an INN, a card, an e-mail...: its detector finds it in any text, under its kind
        digits = _digits(value)
        if _PHONE_CHARS.match(value) and 10 <= len(digits) <= 15:
            national = digits
            if len(digits) == 11 and digits[0] in "78":
                national = digits[1:]
            if len(national) == 10:
                body = _SEP.join(national)
                pattern = rf"(?<![\w+])(?:(?:\+\s?7|8|7){_SEP})?\(?\s?{body}{_NUM_END}"
                key = "7" + national
            else:
                pattern = rf"(?<![\w+])\+?\s?{_SEP.join(digits)}{_NUM_END}"
                key = digits
            known.append(_Known("PHONE", key, re.compile(pattern), value))
            continue
        words = value.split()
        if all(_NAME_CHARS.match(word) for word in words):
            words = [word.rstrip(".") for word in words]
            alternatives = "|".join(f"(?:{form})" for form in _name_forms(words))
            pattern = rf"(?<!\w)(?:{alternatives})(?!\w)"
            known.append(_Known("NAME", value.lower(), re.compile(pattern, re.IGNORECASE), value))
            continue
        pattern = rf"(?<!\w){_literal(value)}(?!\w)"
        known.append(_Known("PII", value.lower(), re.compile(pattern, re.IGNORECASE), value))
    return known


def _find_known(text: str, known: Iterable[_Known]) -> list[Found]:
    return [
        Found(m.start(), m.end(), k.kind, k.key, m.group(), known=True) for k in known for m in k.pattern.finditer(text)
    ]


def find_pii(text: str, known_values: Iterable[str] = ()) -> list[Found]:
    """Every personal value in ``text``, in order, without overlaps (see ``_RANK``)."""
    return _resolve(_find_all(text, compile_known(known_values)))


def _find_all(text: str, known: Iterable[_Known]) -> list[Found]:
    found = _find_known(text, known)
    for detector in DETECTORS:
        found.extend(detector(text))
    return found


def _resolve(found: list[Found]) -> list[Found]:
    """Overlapping findings: the better rank wins, then the longer, then the earlier.

    Kept findings never overlap, so a newcomer only needs checking against its neighbours in
    start order (a text full of phone-shaped runs must not make this quadratic).
    """
    starts: list[int] = []
    kept: list[Found] = []
    for item in sorted(found, key=lambda f: (1 if f.known else _RANK[f.kind], -(f.end - f.start), f.start)):
        index = bisect.bisect_left(starts, item.start)
        if index < len(kept) and kept[index].start < item.end:
            continue
        if index > 0 and kept[index - 1].end > item.start:
            continue
        starts.insert(index, item.start)
        kept.insert(index, item)
    return kept


# --- placeholders -----------------------------------------------------------------------------

_KIND_ALT: Final = "|".join(KINDS)
# Models do not always copy a placeholder exactly: they double its brackets, escape them for
# Markdown («\[PHONE_1\]»), pad them with a space, change its case or drop the brackets.
_PLACEHOLDER: Final = re.compile(
    rf"\[\[[ \t]{{0,2}}(?P<k1>(?i:{_KIND_ALT}))_(?P<n1>\d{{1,6}})[ \t]{{0,2}}\]\]"
    rf"|\\?\[[ \t]{{0,2}}(?P<k2>(?i:{_KIND_ALT}))_(?P<n2>\d{{1,6}})[ \t]{{0,2}}\\?\]"
    rf"|(?<![\w\[])(?P<k3>{_KIND_ALT})_(?P<n3>\d{{1,6}})(?!\w)"
)
_MAX_PLACEHOLDER: Final = 40


def placeholder(kind: Kind, number: int) -> str:
    return f"[{kind}_{number}]"


def _viable(tail: str) -> bool:
    """Whether ``tail`` is an unfinished placeholder that more text could still complete.

    A stream must not print «[PHO» or «[PHONE_1» (nor a bare «PHONE_1», which could become
    PHONE_12) before it knows what it becomes. A complete bracketed placeholder is finished,
    except «[[X_1]» waiting for its second bracket. Mirrors ``_PLACEHOLDER``; when in doubt it
    says yes, which only delays a few characters.
    """
    n = len(tail)
    if tail == "\\":
        return True  # may become «\[»
    if tail.startswith("[["):
        i, opens = 2, 2
    elif tail.startswith("\\["):
        i, opens = 2, 1
    elif tail.startswith("["):
        i, opens = 1, 1
    else:
        i, opens = 0, 0
    i = _skip_spaces(tail, i) if opens else i
    j = i
    while j < n and tail[j].isascii() and tail[j].isalpha():
        j += 1
    word = tail[i:j] if not opens else tail[i:j].upper()
    if j == n:
        return any(kind.startswith(word) for kind in KINDS) and (bool(word) or opens > 0)
    if word not in KINDS or tail[j] != "_":
        return False
    j += 1
    digits_start = j
    while j < n and tail[j].isdigit():
        j += 1
    if j == n:
        return True  # more digits may follow
    if not opens or j == digits_start:
        return False
    j = _skip_spaces(tail, j)
    closes = 0
    while j < n and closes < opens:
        if tail.startswith("\\]", j):
            j += 2
        elif tail[j] == "]":
            j += 1
        else:
            return tail[j] == "\\" and j == n - 1  # may become «\\]»
        closes += 1
    return j == n and closes < opens


def _skip_spaces(text: str, i: int) -> int:
    for _ in range(2):
        if i < len(text) and text[i] in " \t":
            i += 1
    return i


# The personal values of the customer a request is about (their name from the CRM...): set by
# the conversation service around a pipeline call, read by ``RedactingChat`` and the log filter.
KNOWN_VALUES: ContextVar[tuple[str, ...]] = ContextVar("perimeter_known_values", default=())


class Redactor:
    """Replaces personal data in the texts of one request with placeholders, and back.

    Contract:

    - ``redact(text)`` replaces each value found (see the ``find_*`` detectors and
      ``compile_known``) with ``[KIND_N]``. The same value gets the same placeholder in every
      text this object redacts, whatever its spelling («8 916 123-45-67» and «+79161234567»
      are one ``[PHONE_1]``; «Иванов И. И.», «Иванову» and «Ivanov» are the known name's
      ``[NAME_1]``).
    - ``restore(text)`` puts the originals back: the known value as the caller gave it for
      names, the first spelling seen for everything else. Placeholders the model wrapped in
      other punctuation, doubled or escaped brackets, or lower case are restored too;
      placeholders this object never issued are left as they are.
    - ``mapping`` (placeholder → original) is for tests; it is never logged or stored.

    Use one per request and drop it afterwards: the mapping is the personal data. A user who
    types «[PHONE_1]» can at most get back values of their own request.
    """

    def __init__(self, known_values: Iterable[str] = ()) -> None:
        self._known = compile_known(known_values)
        self._by_key: dict[tuple[Kind, str], str] = {}
        self._originals: dict[str, str] = {}
        self._counts: dict[Kind, int] = {}
        self._known_originals: dict[tuple[Kind, str], str] = {
            (k.kind, k.key): k.original for k in self._known if k.kind == "NAME"
        }

    @property
    def mapping(self) -> Mapping[str, str]:
        return dict(self._originals)

    def redact(self, text: str) -> str:
        out: list[str] = []
        last = 0
        for item in _resolve(_find_all(text, self._known)):
            out.append(text[last : item.start])
            out.append(self._placeholder_for(item))
            last = item.end
        out.append(text[last:])
        return "".join(out)

    def _placeholder_for(self, item: Found) -> str:
        ident = (item.kind, item.key)
        existing = self._by_key.get(ident)
        if existing is not None:
            return existing
        number = self._counts.get(item.kind, 0) + 1
        self._counts[item.kind] = number
        token = placeholder(item.kind, number)
        self._by_key[ident] = token
        self._originals[token] = self._known_originals.get(ident, item.text)
        return token

    def restore(self, text: str) -> str:
        return self._restore(text, 0, len(text))

    def _restore(self, text: str, start: int, end: int) -> str:
        """``text[start:end]`` restored, matching as if the text ended at ``end`` but seeing what
        precedes ``start`` (so a stream restored piece by piece equals the whole restored)."""
        out: list[str] = []
        last = start
        for match in _PLACEHOLDER.finditer(text, start, end):
            kind = match.group("k1") or match.group("k2") or match.group("k3")
            number = match.group("n1") or match.group("n2") or match.group("n3")
            original = self._originals.get(f"[{kind.upper()}_{int(number)}]")
            if original is None:
                continue
            out.append(text[last : match.start()])
            out.append(original)
            last = match.end()
        out.append(text[last:end])
        return "".join(out)

    def stream_restorer(self) -> StreamRestorer:
        return StreamRestorer(self)


class StreamRestorer:
    """Restores a streamed answer piece by piece without ever printing half a placeholder.

    ``feed(delta)`` returns the text that is safe to show now: everything except an unfinished
    placeholder at the end («[PHO», «[PHONE_1», «[[PHONE_1]»), which waits for the next
    delta. ``flush()`` returns the rest at the end of the stream. The pieces joined equal
    ``redactor.restore`` of the whole answer.
    """

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._raw = ""
        self._done = 0

    def feed(self, delta: str) -> str:
        self._raw += delta
        safe = self._safe_end()
        out = self._redactor._restore(self._raw, self._done, safe)
        self._done = safe
        if self._done > 2 * _MAX_PLACEHOLDER:
            # Only the character before the unsent text matters from here on (a bare
            # placeholder must not be glued to a word): forget the rest.
            self._raw = self._raw[self._done - 1 :]
            self._done = 1
        return out

    def flush(self) -> str:
        out = self._redactor._restore(self._raw, self._done, len(self._raw))
        self._done = len(self._raw)
        return out

    def _safe_end(self) -> int:
        raw = self._raw
        for p in range(max(self._done, len(raw) - _MAX_PLACEHOLDER), len(raw)):
            char = raw[p]
            bare_start = (
                char.isascii() and char.isupper() and (p == 0 or not (raw[p - 1].isalnum() or raw[p - 1] in "_["))
            )
            if (char in "[\\" or bare_start) and _viable(raw[p:]):
                return p
        return len(raw)


# --- masks for logs ---------------------------------------------------------------------------

# A mask says what was there; when the text does not already say it, the mask carries a label.
_LABELS: Final[dict[Kind, tuple[str, re.Pattern[str]]]] = {
    "INN": ("ИНН", re.compile(r"инн|inn", re.IGNORECASE)),
    "SNILS": ("СНИЛС", re.compile(r"снилс|snils", re.IGNORECASE)),
    "PASSPORT": ("паспорт", re.compile(r"паспорт|passport|сери|номер", re.IGNORECASE)),
    "ACCOUNT": ("счёт", re.compile(r"сч[её]т|р/с|к/с|account|acc", re.IGNORECASE)),
}


def _mask(item: Found) -> str:
    d = item.key
    if item.kind == "PHONE":
        if len(d) == 11 and d[0] == "7":
            return f"+7 *** ***-{d[7:9]}-{d[9:]}"
        return f"+{'*' * (len(d) - 4)}{d[-4:]}"
    if item.kind == "EMAIL":
        local, _, domain = item.text.rpartition("@")
        return f"{local[:1]}***@{domain}"
    if item.kind == "CARD":
        return f"**** **** **** {d[-4:]}"
    if item.kind == "INN":
        return "*" * (len(d) - 2) + d[-2:]
    if item.kind == "SNILS":
        return f"***-***-*** {d[-2:]}"
    if item.kind == "PASSPORT":
        return "** ** ******"
    if item.kind == "ACCOUNT":
        return f"{d[:5]}{'*' * 11}{d[-4:]}"
    if item.kind == "NAME":
        return " ".join(f"{w[0]}***" if len(w.rstrip(".")) > 1 else w for w in item.text.split())
    return "***"


def mask_pii(text: str, *, known_values: Iterable[str] = ()) -> str:
    """``text`` with every personal value replaced by an irreversible, readable mask.

    For logs and exports, where nobody needs the value back: a phone keeps its last four digits
    («+7 *** ***-45-67»), an e-mail its first letter and domain («i***@example.ru»), a card its
    last four («**** **** **** 1234»), an INN and a SNILS their check digits, an account its
    balance-account prefix (the kind of account, not the person) and last four; passports keep
    nothing. INN, SNILS, passport and account masks say what they were («ИНН ********12»)
    unless the text says so just before. Names are masked only when given in ``known_values``.
    No mapping is kept anywhere.
    """
    out: list[str] = []
    last = 0
    for item in find_pii(text, known_values):
        out.append(text[last : item.start])
        mask = _mask(item)
        label = _LABELS.get(item.kind)
        if label is not None and not label[1].search(text[max(0, item.start - 20) : item.start]):
            mask = f"{label[0]} {mask}"
        out.append(mask)
        last = item.end
    out.append(text[last:])
    return "".join(out)


class PiiLogFilter(logging.Filter):
    """Masks personal data in every record it sees, so an operator's log never holds it raw.

    The record's message is formatted first (``msg % args``, as a handler would) and masked,
    then stored back with no args; exception and stack text are formatted and masked too, and
    ``exc_info`` is dropped so no later formatter renders the raw exception again (its
    message may quote the customer). Attach it to *handlers*: a logger's filters do not see
    records propagated from child loggers. ``known_values`` may return the names of the
    customer being served (e.g. from a context variable), which detectors cannot find alone.
    """

    def __init__(self, name: str = "", *, known_values: Callable[[], Iterable[str]] | None = None) -> None:
        super().__init__(name)
        self._known_values = known_values

    def filter(self, record: logging.LogRecord) -> bool:
        if not super().filter(record):
            return False
        known = list(self._known_values()) if self._known_values is not None else []
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: log what we have, masked, rather than nothing
            message = f"{record.msg!s} {record.args!r}"
        record.msg = mask_pii(message, known_values=known)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.exc_info = None
        if record.exc_text:
            record.exc_text = mask_pii(record.exc_text, known_values=known)
        if record.stack_info:
            record.stack_info = mask_pii(record.stack_info, known_values=known)
        return True
