"""Does a customer ask for a human? Plain-word detection, Russian and English.

The rule (:func:`wants_person`):

1. The text is normalized: NFKC, lower case, «ё» → «е», punctuation → spaces (apostrophes
   inside words stay: "don't"). Phrases where "operator" is not a person — «оператор связи»,
   «мобильный оператор», «оператор персональных данных», "telecom operator", "tour operator"… —
   are blanked out first, so they can never count.
2. **Any length**: an explicit request — a request verb and a person noun in the right
   grammatical shape, with at most a few filler words between them: «позовите (пожалуйста)
   оператора», «соедините меня с оператором», «можно с сотрудником поговорить», «переключи на
   оператора», «мне нужен живой человек», "talk to a human", "connect me to an agent",
   "get me a person", "I need a real person". The noun's case matters: «как сотруднику банка
   оформить карту» (dative, no request) does not count. A request negated right before it
   («не надо оператора», "I don't want to talk to a human") does not count either.
3. **Short messages** (at most 6 words): the message counts if it names a person («оператор»,
   "agent", "human") and every other word is request vocabulary — verbs, pronouns, politeness,
   prepositions («оператор!», «оператора пожалуйста», «есть кто живой», "human please",
   "real person please"). One word outside that vocabulary («человек потерял карту», "operator
   fee") means the message is about something else.

Stems and word lists, not a model: it must be predictable, instant and testable; an ordinary
question that merely mentions an operator must keep going to the knowledge base.
"""

from __future__ import annotations

import re
import unicodedata

_MAX_SHORT_WORDS = 6

# Characters that are not letters, digits, whitespace or apostrophes become spaces; "_" too,
# because \w includes it.
_PUNCTUATION = re.compile(r"[^\w\s']+|_")
_STRAY_APOSTROPHE = re.compile(r"(?<!\w)'|'(?!\w)")

# "Operator" that is a company or a role, never someone to talk to.
_NOT_A_PERSON = re.compile(
    r"\b(?:сотов\w*|мобильн\w*|платежн\w*|туристическ\w*|турист\w*|фискальн\w*|виртуальн\w*|интернет|телеком\w*)"
    r" оператор\w*"
    r"|\bоператор\w* (?:сотов\w* |мобильн\w* )?(?:связи|фискальн\w*|эдо|платежн\w*|персональн\w*|по переводу\w*)"
    r"|\b(?:telecom|telco|mobile|cell|cellular|network|phone|wireless|tour|payment|sms|machine|crane|forklift|"
    r"system|data|satellite|cable|carrier|fiscal) operators?\b"
)

# --- Russian -------------------------------------------------------------------------------
_RU_ADJ_ACC = r"(?:(?:живого|реального|настоящего|кого нибудь|кого то|какого нибудь) )?"
_RU_ADJ_INS = r"(?:(?:живым|реальным|настоящим|кем нибудь|кем то|каким нибудь) )?"
_RU_ADJ_NOM = r"(?:(?:живой|реальный|настоящий) )?"
_RU_ADJ_DAT = r"(?:(?:живому|реальному|настоящему) )?"
_RU_NOUNS = r"(?:человек|оператор|сотрудник|специалист|консультант|менеджер)"
_RU_ACC = rf"{_RU_ADJ_ACC}(?:{_RU_NOUNS}а|живого|людей)"
_RU_INS = rf"{_RU_ADJ_INS}(?:{_RU_NOUNS}ом|живым|людьми)"
_RU_NOM = rf"{_RU_ADJ_NOM}{_RU_NOUNS}"
_RU_DAT = rf"{_RU_ADJ_DAT}{_RU_NOUNS}у"
# Words that may stand between a request verb and its noun without changing the meaning.
_RU_FILL = (
    r"(?:(?:пожалуйста|плиз|мне|меня|нам|нас|сюда|срочно|скорее|быстрее|уже|же|ну|бы|все таки|"
    r"вашего|вашим|вашему|вашей|ваших|вашими|из|банка|поддержки|службы|техподдержки|тех) ){0,3}"
)
# Verbs that take the person in the accusative (or nominative, «нужен специалист»).
_RU_CALL = (
    r"(?:позови|позовите|позвать|позовешь|позовете|зови|зовите|звать|вызови|вызовите|вызвать|пригласи|"
    r"пригласите|пригласить|подключи|подключите|подключить|дай|дайте|давай|давайте|нужен|нужна|нужно|надо|"
    r"хочу|хотим|хотел|хотела|требуется|верните|вернуть)"
)
# Verbs of talking or connecting, used with «с» + instrumental.
_RU_TALK = (
    r"(?:соедин\w*|свяж\w*|связат\w*|связыва\w*|поговор\w*|говорить|пообща\w*|общать\w*|общаться|побесед\w*|"
    r"переписыва\w*|переписать\w*|пообщаться)"
)
_RU_SWITCH = r"(?:переключ\w*|перевед\w*|переадрес\w*|перенаправ\w*)"
_RU_PASS = r"(?:передай|передайте|перешли|перешлите|отправь|отправьте)"

_RU_REQUESTS = (
    rf"\b{_RU_CALL} {_RU_FILL}(?:{_RU_ACC}|{_RU_NOM})\b",  # позовите оператора, нужен специалист
    rf"\b{_RU_TALK} {_RU_FILL}(?:с|со) {_RU_INS}\b",  # соедините меня с оператором
    rf"\b(?:с|со) {_RU_INS} {_RU_FILL}{_RU_TALK}",  # можно с сотрудником поговорить
    rf"\b{_RU_SWITCH} {_RU_FILL}на {_RU_ACC}\b",  # переключите на оператора
    rf"\b{_RU_PASS} (?:\w+ ){{0,3}}{_RU_DAT}\b",  # передайте мой вопрос оператору
    r"\b(?:живой|живого|живым) человек\w*",  # «живой человек» is never about anything else
)

# --- English -------------------------------------------------------------------------------
_EN_ADJ = r"(?:(?:real|live|actual|living|human|flesh and blood) )?"
_EN_NOUN = (
    r"(?:human beings?|humans?|persons?|agents?|operators?|representatives?|reps?|someone|somebody|managers?|"
    r"specialists?|staff(?: members?)?|employees?|consultants?|advis[eo]rs?|people)"
)
_EN_DET = r"(?:(?:a|an|the|some|one|your|of|any|real|live|actual) ){0,3}"
_EN_REQUESTS = (
    # talk to a human, speak with one of your agents, chat with someone
    rf"\b(?:talk|speak|chat|talking|speaking|chatting|communicate) (?:to|with) {_EN_DET}{_EN_ADJ}{_EN_NOUN}\b",
    # connect me to an operator, put me through to a manager, escalate this to a person
    rf"\b(?:connect|transfer|put|pass|forward|escalate|route|switch|redirect)\w* "
    rf"(?:(?:me|us|this|it|my (?:question|request|chat|call|case)) )?(?:through )?(?:to|with) "
    rf"{_EN_DET}{_EN_ADJ}{_EN_NOUN}\b",
    # get me a human, find me someone
    rf"\b(?:get|give|find|bring|fetch) (?:me|us) {_EN_DET}{_EN_ADJ}{_EN_NOUN}\b",
    # I need a real person / I want a live agent: the adjective makes the noun a person.
    rf"\b(?:want|need|like|prefer|request|requesting|demand|get|have) (?:(?:a|an|some|the) )?"
    rf"(?:real|live|actual|living) {_EN_NOUN}\b",
    # I want a human / need a representative: nouns that can only mean a person here.
    r"\b(?:want|need|like|prefer|request|requesting|demand) (?:(?:a|an|some|the) )?"
    r"(?:human beings?|humans?|representatives?)\b",
    r"\b(?:real|live|actual|living) (?:human|person|agent|operator|representative)s?\b",
)

_REQUESTS = tuple(re.compile(p) for p in (*_RU_REQUESTS, *_EN_REQUESTS))

# A negation right before a request, optionally with a desire word between: «не надо
# оператора», «не нужно звать оператора», "don't want to talk to a human". «не могу
# дозвониться, соедините…» is not negated: «могу» is not in the list.
_NEGATED = re.compile(
    r"\b(?:не|ни|not|don't|dont|do not|never|no need|without|без) "
    r"(?:(?:надо|нужно|нужен|нужна|хочу|хотим|стоит|зовите|звать|want|need|to|a|an|any) ){0,2}$"
)

# --- Short messages ------------------------------------------------------------------------
_SHORT_PERSON = re.compile(
    r"(?:человек\w*|оператор\w*|сотрудник\w*|специалист\w*|консультант\w*|менеджер\w*|живой|живого|живым|людьми|"
    r"humans?|persons?|agents?|operators?|representatives?|reps?|staff|managers?|specialists?|consultants?|"
    r"advis[eo]rs?|employees?)"
)
_SHORT_REQUEST_WORDS = re.compile(
    r"(?:пожалуйста|плиз|мне|меня|нам|нас|сюда|срочно|скорее|быстрее|уже|же|ну|бы|вашего|вашим|вашему|вашей|"
    r"ваш|ваша|вас|из|банка|поддержки|службы|с|со|на|к|а|и|эй|алло|ау|где|есть|кто|нибудь|то|тут|здесь|там|"
    r"можно|могу|ли|да|нет|очень|просто|реальный|реального|реальным|настоящий|настоящего|настоящим|"
    rf"{_RU_CALL}|{_RU_TALK}|{_RU_SWITCH}|{_RU_PASS}|"
    r"please|pls|plz|a|an|the|i|i'd|i'm|me|my|us|we|to|with|want|need|would|like|talk|speak|chat|can|could|may|"
    r"let|get|give|some|someone|somebody|anyone|anybody|any|real|live|actual|living|human|now|just|hi|hello|hey|"
    r"connect|transfer|call|is|are|there|here|you|your|support|customer|service|one|of|yes|ok|okay|urgent|"
    r"asap|immediately|still|already|again)"
)
_SHORT_NEGATION = frozenset({"не", "ни", "not", "don't", "dont", "never", "without", "без", "no"})


def _normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower().replace("ё", "е").replace("’", "'").replace("`", "'")
    text = _PUNCTUATION.sub(" ", text)
    text = _STRAY_APOSTROPHE.sub(" ", text)
    return " ".join(text.split())


def wants_person(text: str) -> bool:
    """True when the customer asks for a human (an operator) in plain words; see the module docstring."""
    norm = _NOT_A_PERSON.sub("_", _normalize(text))  # "_" never matches a noun or a request word
    if not norm:
        return False
    for pattern in _REQUESTS:
        for match in pattern.finditer(norm):
            if not _NEGATED.search(norm, 0, match.start()):
                return True
    words = norm.split()
    return (
        len(words) <= _MAX_SHORT_WORDS
        and any(_SHORT_PERSON.fullmatch(w) for w in words)
        and all(_SHORT_PERSON.fullmatch(w) or _SHORT_REQUEST_WORDS.fullmatch(w) for w in words)
        and not _SHORT_NEGATION.intersection(words)
    )


# «мой баланс», «сколько у меня на карте», «когда следующий платёж по кредиту», "my balance":
# a possessive (or "у меня" / "I owe") next to a word for the customer's own money or product.
_PERSONAL_RU = re.compile(
    r"\b(?:мой|моя|мое|мои|моего|моей|моих|моему|моим|у меня|мне|я должен|я должна)\b"
    r"(?:\s+\w+){0,4}?\s+(?:баланс\w*|остат\w*|сч[её]т\w*|платеж\w*|плат[её]ж\w*|кредит\w*|долг\w*|"
    r"задолженност\w*|вклад\w*|депозит\w*|карт\w*|лимит\w*|выписк\w*|ипотек\w*|процент\w*|"
    r"деньг\w*|средств\w*|операци\w*|списани\w*|начислени\w*|договор\w*)"
    r"|\b(?:баланс\w*|остат\w*|задолженност\w*|платеж\w*)\b(?:\s+\w+){0,3}?\s+(?:мо\w+|у меня)\b"
    r"|\bсколько\s+(?:у меня|мне|я)\b"
    r"|\bкогда\s+(?:мне\s+)?(?:платить|плат[её]ж|следующий платеж|внести)\b"
)
_PERSONAL_EN = re.compile(
    r"\b(?:my|i owe|do i have|have i got)\b(?:\s+\w+){0,3}?\s*(?:balance|account|card|loan|mortgage|deposit|"
    r"payment|debt|limit|statement|transactions?|money|interest|contract)s?\b"
    r"|\bhow much (?:do i|i) (?:owe|have)\b|\bwhen (?:is|do i (?:have to )?pay) my\b"
)


def asks_personal_data(text: str) -> bool:
    """The customer asks about their own money or products (an answer would need CRM data).

    Used to offer verification to an unverified user instead of a generic answer; a false
    positive only costs an extra prompt to share the contact.
    """
    norm = _normalize(text)
    return bool(_PERSONAL_RU.search(norm) or _PERSONAL_EN.search(norm))
