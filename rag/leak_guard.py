"""The last line of defence on the model's output: an answer that leaks is not sent.

The first line is the prompt (``rag.prompts``): documents, history and customer data enter it
as quoted data the model is told never to obey, and "secret" CRM values never enter it at
all. A model can still be talked into repeating its instructions, or into writing out data
that must not reach the person asking. ``check_answer`` looks at the finished answer and
blocks it when it

1. **reproduces a system prompt** — a long stretch of any of ``system_prompts``;
2. **contains a canary** — a random marker planted where only a leak can carry it out (the
   system prompt, a document the asker may not read, a secret field);
3. **contains a foreign value** — data the asker must not see (another customer's phone, a
   secret field of this one).

Everything is compared on a *folded* form of the text, so that layout and cheap disguises do
not hide a copy: NFKC; invisible characters (zero-width, bidi marks, soft hyphen, variation
selectors) dropped; Unicode "tag" characters (ASCII smuggling) read as the ASCII they hide;
case folded, «ё» read as «е»; Cyrillic, Greek and Latin look-alikes mapped to one letter
(homoglyphs); then only letters and digits kept, so whitespace, punctuation, line breaks,
letter-spacing and markup make no difference. Each check runs on several *views* of the
answer: as written, reversed, ROT13, transliterated (Cyrillic ↔ Latin), without vowels, and
the text hidden in base64, hex or %-encoded runs (decoded twice at most). Translation into another language
or a paraphrase is not detected: that is the prompt's job, and the reason the system prompt
holds nothing that would hurt if paraphrased.

Thresholds (chosen so that ordinary bank answers never trigger; see
``tests/unit/test_leak_guard.py``):

- ``SYSTEM_RUN_CHARS`` = 40: a run of 40 folded letters/digits (about six to eight words)
  copied from a system prompt blocks. Genuine answers share phrases such as «данные других
  клиентов» or "using only the sources" (about 20); the closest answer in the unit tests, a
  sentence built on purpose from the rules' own words («…кратко и по делу»), shares 31.
- ``SYSTEM_COVERAGE`` = 0.3 with ``COVERAGE_SHINGLE`` = 14: the answer also blocks when
  together its 14-character pieces reproduce 30 % of a system prompt (a copy cut into short
  fragments, or with every sixth word changed). The ordinary answers in the unit tests cover
  at most 7 %.
- Canaries shorter than ``MIN_CANARY_CHARS`` = 8 folded characters are refused
  (``ValueError``): a short canary would match innocent text.
- Foreign values: a value with letters matches when its folded form (at least
  ``MIN_FOREIGN_CHARS`` = 4 letters/digits) occurs in the answer — pass full names and
  e-mails, not a bare surname that is also a street. A value made of digits (a phone, a
  balance, a passport number; at least ``MIN_FOREIGN_DIGITS`` = 4 digits) matches a number
  in the answer written with any separators: "+7 (911) 560-32-14" = "8 911 560 32 14"
  (phones compare their last ten digits), "1240000.00" = "1 240 000 ₽" = "1,240,000.00".

``reason`` names the check (and the view that caught it), never the leaked text: it is meant
for logs.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote_plus

SYSTEM_RUN_CHARS = 40
COVERAGE_SHINGLE = 14
SYSTEM_COVERAGE = 0.3
MIN_CANARY_CHARS = 8
MIN_FOREIGN_CHARS = 4
MIN_FOREIGN_DIGITS = 4
_PHONE_DIGITS = 10
_MAX_DECODE_DEPTH = 2


@dataclass(frozen=True)
class LeakCheck:
    blocked: bool
    reason: str | None = None


PASSED = LeakCheck(False, None)

# --- folding --------------------------------------------------------------------------------

_INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f"
    "\u3164\ufe00-\ufe0f\ufeff\uffa0\U000e0001\U000e007f\U000e0100-\U000e01ef]"
)
# Unicode tag characters U+E0020..U+E007E mirror printable ASCII and render as nothing.
_TAG_CHARS = re.compile("[\U000e0020-\U000e007e]")

# Look-alikes, after case folding, mapped to one Latin letter. Applied to both sides of every
# comparison, so mapping a real Cyrillic letter (в → b) loses nothing.
_HOMOGLYPHS = str.maketrans({
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
    "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "ԁ": "d", "ӏ": "l", "һ": "h",
    "ԛ": "q", "ԝ": "w", "ɡ": "g", "ı": "i", "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k",
    "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ω": "w", "ѵ": "v", "ԍ": "g", "ғ": "f",
})
# Digits written for letters ("l33t"), used only where numbers carry no meaning of their own
# (system prompts and canaries are compared with both sides mapped).
_LEET = str.maketrans({"0": "o", "1": "l", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})

_TRANSLIT = str.maketrans({
    "а": "a", "б": "b", "в": "v", "г": "g", "д": "d", "е": "e", "ё": "e", "ж": "zh", "з": "z", "и": "i",
    "й": "i", "к": "k", "л": "l", "м": "m", "н": "n", "о": "o", "п": "p", "р": "r", "с": "s", "т": "t",
    "у": "u", "ф": "f", "х": "kh", "ц": "ts", "ч": "ch", "ш": "sh", "щ": "shch", "ъ": "", "ы": "y", "ь": "",
    "э": "e", "ю": "iu", "я": "ia",
})
# Common alternatives folded to the spelling above, so "Ivanova Marina Sergeyevna" and
# "Ivanova Marina Sergeevna" are one string.
_TRANSLIT_VARIANTS = (("yu", "iu"), ("ya", "ia"), ("yo", "e"), ("ye", "e"), ("x", "ks"), ("j", "i"),
                      ("ts", "c"), ("kh", "h"), ("w", "v"), ("y", "i"))


def _clean(text: str) -> str:
    """NFKC, hidden ASCII revealed, invisible characters dropped, case folded."""
    text = _TAG_CHARS.sub(lambda m: chr(ord(m.group(0)) - 0xE0000), text)
    text = unicodedata.normalize("NFKC", text)
    return _INVISIBLE.sub("", text).casefold()


def _alnum(text: str) -> str:
    return "".join(ch for ch in text if ch.isalnum())


def _skeleton(text: str, *, leet: bool) -> str:
    """Letters and digits only, homoglyphs merged (and digits read as letters when ``leet``)."""
    text = _clean(text)
    if leet:
        text = text.translate(_LEET)
    return _alnum(text.translate(_HOMOGLYPHS))


def _translit(text: str) -> str:
    text = _alnum(_clean(text).translate(_TRANSLIT))
    for variant, canonical in _TRANSLIT_VARIANTS:
        text = text.replace(variant, canonical)
    return text


# --- views of the answer -----------------------------------------------------------------------

_BASE64_RUN = re.compile(r"(?:[A-Za-z0-9+/_-][ \t\r\n]?){16,}={0,2}")
_HEX_RUN = re.compile(r"(?:[0-9A-Fa-f]{2}[ :\t\r\n-]?){8,}")
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")


def _printable_share(text: str) -> float:
    if not text:
        return 0.0
    return sum(1 for ch in text if ch.isprintable() or ch in "\n\t") / len(text)


def _utf8(raw: bytes) -> str | None:
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return decoded if _printable_share(decoded) >= 0.9 and _alnum(decoded) else None


def _from_base64(run: str) -> str | None:
    compact = re.sub(r"\s+", "", run)
    for alphabet in (None, b"-_"):
        padded = compact.rstrip("=")
        padded += "=" * (-len(padded) % 4)
        try:
            raw = base64.b64decode(padded, altchars=alphabet, validate=True)
        except (binascii.Error, ValueError):
            continue
        if text := _utf8(raw):
            return text
    return None


def _from_hex(run: str) -> str | None:
    digits = re.sub(r"[^0-9A-Fa-f]", "", run)
    if len(digits) % 2:
        digits = digits[:-1]
    try:
        return _utf8(bytes.fromhex(digits))
    except ValueError:
        return None


def _decoded(text: str) -> list[str]:
    """Text hidden in the answer: %-encoding, base64 runs and hex runs, decoded."""
    found: list[str] = []
    if _PERCENT.search(text):
        unquoted = unquote_plus(text)
        if unquoted != text:
            found.append(unquoted)
    for match in _BASE64_RUN.finditer(text):
        if decoded := _from_base64(match.group(0)):
            found.append(decoded)
    for match in _HEX_RUN.finditer(text):
        if decoded := _from_hex(match.group(0)):
            found.append(decoded)
    return found


def _views(text: str) -> list[tuple[str, str]]:
    """(name, text) pairs: the answer as written, reversed, ROT13, and whatever it hides."""
    views = [("plain", text), ("reversed", text[::-1]), ("rot13", codecs.encode(text, "rot13"))]
    frontier = [("", text)]
    for _ in range(_MAX_DECODE_DEPTH):
        deeper: list[tuple[str, str]] = []
        for prefix, chunk in frontier:
            for decoded in _decoded(chunk):
                name = f"{prefix}decoded"
                views.append((name, decoded))
                views.append((f"{name}+reversed", decoded[::-1]))
                deeper.append((f"{name}+", decoded))
        frontier = deeper
    return views


# --- system prompts ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Prompt:
    runs: frozenset[str]
    stream: str


_VOWELS = re.compile("[aeiouyиыэюя]")  # after folding: а, е, ё, о, у are Latin already


def _consonants(stream: str) -> str:
    return _VOWELS.sub("", stream)


@lru_cache(maxsize=64)
def _prompt_forms(prompt: str) -> tuple[_Prompt, _Prompt, _Prompt]:
    """The prompt's folded stream and its 40-character runs: as written, transliterated, and
    without vowels ("replace all vowels with *")."""
    forms = []
    skeleton = _skeleton(prompt, leet=True)
    for stream in (skeleton, _translit(prompt), _consonants(skeleton)):
        runs = frozenset(stream[i : i + SYSTEM_RUN_CHARS] for i in range(len(stream) - SYSTEM_RUN_CHARS + 1))
        forms.append(_Prompt(runs, stream))
    return forms[0], forms[1], forms[2]


def _reproduces(answer: str, prompt: _Prompt) -> bool:
    if len(answer) >= SYSTEM_RUN_CHARS and any(
        answer[i : i + SYSTEM_RUN_CHARS] in prompt.runs for i in range(len(answer) - SYSTEM_RUN_CHARS + 1)
    ):
        return True
    return _coverage(answer, prompt.stream) >= SYSTEM_COVERAGE


def _coverage(answer: str, prompt: str) -> float:
    """The share of ``prompt`` covered by its 14-character pieces that also occur in ``answer``."""
    k = COVERAGE_SHINGLE
    if len(prompt) < k or len(answer) < k:
        return 0.0
    pieces = {answer[i : i + k] for i in range(len(answer) - k + 1)}
    covered = [False] * len(prompt)
    for i in range(len(prompt) - k + 1):
        if prompt[i : i + k] in pieces:
            covered[i : i + k] = [True] * k
    return sum(covered) / len(prompt)


# --- foreign values ----------------------------------------------------------------------------

_NUMBER = re.compile(r"\d(?:[\d \u00a0\u202f\u2009'’.,()\-]*\d)?")
_DECIMALS = re.compile(r"[.,]\d{1,2}$")


def _number_forms(token: str) -> set[str]:
    """A written number as digit strings: all its digits, without kopecks, a phone's last ten."""
    digits = re.sub(r"\D", "", token)
    forms = {digits}
    if _DECIMALS.search(token.strip()):
        forms.add(re.sub(r"\D", "", _DECIMALS.sub("", token.strip())))
    if len(digits) >= 11:
        forms.add(digits[-_PHONE_DIGITS:])
    return {f for f in forms if len(f) >= MIN_FOREIGN_DIGITS}


def _numbers_in(text: str) -> set[str]:
    found: set[str] = set()
    for match in _NUMBER.finditer(_clean(text)):
        found |= _number_forms(match.group(0))
    return found


@dataclass(frozen=True)
class _Foreign:
    texts: tuple[str, ...]  # folded forms to find as substrings
    numbers: frozenset[str]  # digit forms to find as whole numbers


def _foreign(values: Iterable[str]) -> _Foreign:
    texts: list[str] = []
    numbers: set[str] = set()
    for value in values:
        cleaned = _clean(value)
        if any(ch.isalpha() for ch in cleaned):
            for folded in (_skeleton(value, leet=False), _translit(value)):
                if len(folded) >= MIN_FOREIGN_CHARS:
                    texts.append(folded)
        digits = re.sub(r"\D", "", cleaned)
        if len(digits) >= MIN_FOREIGN_DIGITS:
            numbers |= _number_forms(cleaned.strip())
    return _Foreign(tuple(dict.fromkeys(texts)), frozenset(numbers))


def _contains_foreign(text: str, foreign: _Foreign) -> bool:
    if foreign.texts:
        streams = (_skeleton(text, leet=False), _translit(text))
        if any(value in stream for value in foreign.texts for stream in streams):
            return True
    return bool(foreign.numbers and foreign.numbers & _numbers_in(text))


# --- the check -------------------------------------------------------------------------------


def check_answer(
    text: str,
    *,
    system_prompts: Iterable[str],
    canaries: Iterable[str] = (),
    foreign_values: Iterable[str] = (),
) -> LeakCheck:
    """Whether ``text`` (the model's answer, after ``postprocess``) may be shown; see the module docs.

    Raises ``ValueError`` for a canary too short to be told from ordinary text.
    """
    if not text or not text.strip():
        return PASSED
    prompts = [_prompt_forms(p) for p in system_prompts if p and p.strip()]
    marks: list[str] = []
    for canary in canaries:
        folded = _skeleton(canary, leet=True)
        if len(folded) < MIN_CANARY_CHARS:
            raise ValueError(f"a canary needs at least {MIN_CANARY_CHARS} letters or digits")
        marks.append(folded)
    foreign = _foreign(foreign_values)

    for view, shown in _views(text):
        skeleton = _skeleton(shown, leet=True)
        translit = _translit(shown)
        for plain_form, translit_form, consonant_form in prompts:
            if (_reproduces(skeleton, plain_form) or _reproduces(translit, translit_form)
                    or _reproduces(_consonants(skeleton), consonant_form)):
                return LeakCheck(True, _reason("system_prompt", view))
        if any(mark in skeleton for mark in marks):
            return LeakCheck(True, _reason("canary", view))
        numbers_matter = view in ("plain", "rot13") or view.endswith("decoded")  # not reversed
        if numbers_matter and _contains_foreign(shown, foreign):
            return LeakCheck(True, _reason("foreign_value", view))
    return PASSED


def _reason(check: str, view: str) -> str:
    return check if view == "plain" else f"{check} ({view})"
