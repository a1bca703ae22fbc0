"""User-facing texts in Russian and English, for customers and for operators.

Every text goes out in Telegram's HTML parse mode, so the templates are HTML: they may use
our own ``<b>``/``<i>`` markup, and :func:`t` escapes every value put into a placeholder (a
customer's name or message is untrusted text). Values we rendered ourselves as HTML can be
passed wrapped in :class:`SafeHtml` to skip the escaping.
"""

from __future__ import annotations

import html
import math
import re

DEFAULT_LANGUAGE = "ru"
LANGUAGES = ("ru", "en")

# Telegram's language_code is an IETF tag ("ru", "uk", "pt-br"). A bank in Russia serves
# customers across the CIS and from Russia's republics: for them Russian is a far likelier
# second language than English, so these primary subtags get Russian.
_RUSSIAN_READERS = frozenset(
    {
        "ru", "uk", "be", "kk", "ky", "uz", "tg", "tk", "hy", "az", "mo",  # CIS and neighbours
        "tt", "ba", "cv", "ce", "os", "sah", "ab", "kbd", "av", "udm", "mhr", "koi", "kv",  # Russia's republics
    }
)
_TAG_SEPARATOR = re.compile(r"[-_]")


class SafeHtml(str):
    """A value that is already valid Telegram HTML (made by us, never by a customer or a model).

    :func:`t` inserts it as is instead of escaping it.
    """

    __slots__ = ()


_RU: dict[str, str] = {
    # --- customers -------------------------------------------------------------------------
    "start": (
        "Здравствуйте! Я виртуальный помощник службы поддержки банка. Отвечаю на вопросы "
        "по документам банка — тарифам, картам, вкладам, кредитам — и показываю, откуда взят ответ. "
        "Если понадобится, позову оператора.\n\n"
        "Просто напишите вопрос своими словами. Что ещё я умею — /help."
    ),
    "help": (
        "<b>Что я умею</b>\n"
        "• Отвечаю на вопросы по документам банка — пишите обычным текстом, как человеку.\n"
        "• /operator — позвать оператора, он ответит здесь же.\n"
        "• /lang — сменить язык (русский / English).\n"
        "• /new — начать новый разговор.\n"
        "• Под ответами есть кнопки: 👍 / 👎 — оценить ответ, «Позвать оператора» — передать вопрос человеку."
    ),
    "lang_switched": "Готово, теперь я пишу по-русски.",
    "new_conversation": "Начинаем новый разговор. Чем могу помочь?",
    "rate_limited": "Вы отправляете сообщения слишком часто. Пожалуйста, подождите {seconds} с и напишите снова.",
    "escalated": (
        "Я передал ваш вопрос оператору — он ответит прямо в этом чате. Номер обращения: <b>#{ticket_id}</b>."
    ),
    "already_escalated": "Вашим обращением уже занимается оператор. Я передал ему это сообщение.",
    "model_unavailable": "Сейчас я не могу ответить сам. Ваш вопрос передан оператору — он ответит здесь.",
    "operator_reply_prefix": "👤 <b>Оператор {name}:</b>",
    "ticket_resolved": "Оператор завершил обращение. Если появятся вопросы — просто напишите, я на связи.",
    "feedback_thanks_up": "Спасибо за оценку! Рад, что смог помочь.",
    "feedback_down_offer": "Жаль, что ответ не помог. Вам ещё нужна помощь? Могу позвать оператора.",
    "button_up": "👍",
    "button_down": "👎",
    "button_operator": "Позвать оператора",
    "button_still_need_help": "Да, позвать оператора",
    "processing_error": "Что-то пошло не так. Я передал ваше сообщение оператору — он разберётся и ответит здесь.",
    "unsupported_message": "Я понимаю только текстовые сообщения. Пожалуйста, напишите вопрос текстом.",
    "empty_message": "Кажется, сообщение пустое. Напишите, пожалуйста, ваш вопрос.",
    "message_too_long_cut": "Ваше сообщение очень длинное, поэтому я ответил на его первые {chars} символов.",
    "sources_heading": "Источники",
    "sla_breached": "⏰ <b>Обращение #{ticket_id}</b> ждёт ответа {waiting} ({status}) — срок ответа истёк.",
    "customer_card_title": "👤 <b>Клиент по CRM: {name}</b> (номер подтверждён)",
    "verify_offer": (
        "Чтобы я мог ответить по вашим счетам и продуктам, подтвердите, что это вы: нажмите кнопку "
        "«Поделиться номером» ниже. Номер, набранный текстом, не подходит — только ваш собственный контакт."
    ),
    "button_share_contact": "📱 Поделиться номером",
    "verify_done": "Спасибо, номер подтверждён. Теперь я могу отвечать с учётом ваших продуктов в банке.",
    "verify_not_own": "Можно подтвердить только свой собственный номер — кнопкой «Поделиться номером».",
    "verify_not_found": (
        "Не нашёл клиента банка с этим номером. Если номер в банке другой, обратитесь к оператору: /operator"
    ),
    "verify_ambiguous": "С этим номером связано несколько клиентов. Оператор поможет разобраться: /operator",
    "verify_unavailable": "Сейчас не получается проверить номер. Попробуйте, пожалуйста, через несколько минут.",
    "verify_no_crm": "Подтверждение номера в этом боте не используется.",
    "crm_unavailable_note": (
        "<i>Сейчас нет доступа к данным о ваших продуктах, поэтому ответ общий. "
        "Для точных цифр напишите позже или позовите оператора: /operator</i>"
    ),
    "extractive_note": "Это дословная цитата из документов банка.",
    # --- operators -------------------------------------------------------------------------
    "operator_help": (
        "<b>Памятка оператора</b>\n"
        "• Новые обращения приходят карточками: «Взять» — закрепить за собой, «Решено» — закрыть.\n"
        "• Чтобы ответить клиенту, ответьте (Reply) на сообщение обращения — ответ уйдёт клиенту.\n"
        "• /queue — обращения, которые ждут ответа.\n"
        "• /ask вопрос — спросить базу знаний (в личном чате со мной можно просто написать вопрос)."
    ),
    "ticket_card": (
        "🆕 <b>Обращение #{ticket_id}</b> · {reason_label}\n"
        "Клиент: {customer}\n"
        "Ждёт: {waiting}\n\n"
        "<b>Кратко:</b> {summary}\n\n"
        "<b>Последние сообщения:</b>\n{transcript}"
    ),
    "reason_no_relevant_documents": "нет ответа в документах",
    "reason_low_confidence": "ответ под сомнением",
    "reason_answer_withheld": "ответ модели задержан проверкой",
    "reason_model_declined": "модель не нашла ответа в источниках",
    "reason_customer_request": "клиент попросил оператора",
    "reason_model_unavailable": "модель недоступна",
    "reason_negative_feedback": "клиенту не помог ответ",
    "reason_processing_error": "ошибка обработки",
    "reason_other": "другая причина",
    "status_open": "ждёт оператора",
    "status_claimed": "в работе",
    "status_answered": "отвечено",
    "status_resolved": "решено",
    "button_claim": "Взять",
    "button_resolve": "Решено",
    "button_send_draft": "Отправить черновик",
    "claimed_by": "{name} взял(а) обращение #{ticket_id}.",
    "claim_lost": "Обращение #{ticket_id} уже взял(а) {name}.",
    "not_an_operator": "Эта команда доступна только операторам.",
    "draft_card": (
        "📝 <b>Черновик ответа по обращению #{ticket_id}</b>\n"
        "<i>Составлен по базе знаний — проверьте перед отправкой.</i>\n\n"
        "{draft}\n\n"
        "<b>Источники:</b>\n{sources}"
    ),
    "queue_empty": "Очередь пуста — все обращения разобраны.",
    "queue_header": "<b>Очередь обращений:</b>",
    "queue_line": "#{ticket_id} · {status} · ждёт {waiting} · {customer} · {reason}",
    "reannounce": "⏰ Обращение #{ticket_id} ждёт ответа уже {waiting}.",
    "customer_message_forward": "💬 Обращение #{ticket_id} · клиент пишет:\n{text}",
    "reply_sent": "✅ Ответ отправлен клиенту по обращению #{ticket_id}.",
    "ticket_closed": "Обращение #{ticket_id} решено: закрыл(а) {name}.",
    "reply_to_unknown": "Чтобы ответить клиенту, ответьте (Reply) на сообщение этого обращения.",
    "ticket_not_claimed_by_you": (
        "Обращение #{ticket_id} не закреплено за вами: отвечать и закрывать его может оператор, который его взял."
    ),
}

_EN: dict[str, str] = {
    # --- customers -------------------------------------------------------------------------
    "start": (
        "Hello! I'm the bank's virtual support assistant. I answer questions from the bank's "
        "documents — fees, cards, deposits, loans — and show where each answer comes from. "
        "Whenever you need, I can bring in an operator.\n\n"
        "Just type your question in your own words. To see what else I can do, send /help."
    ),
    "help": (
        "<b>What I can do</b>\n"
        "• Answer questions from the bank's documents — just write as you would to a person.\n"
        "• /operator — call an operator, who will reply right here.\n"
        "• /lang — switch the language (русский / English).\n"
        "• /new — start a new conversation.\n"
        "• Buttons under my answers: 👍 / 👎 to rate an answer, “Talk to a person” to pass your question on."
    ),
    "lang_switched": "Done — I'll reply in English from now on.",
    "new_conversation": "Let's start a new conversation. How can I help?",
    "rate_limited": "You're sending messages a little too fast. Please wait {seconds} s and try again.",
    "escalated": (
        "I've passed your question to an operator, who will reply right here in this chat. "
        "Your ticket number is <b>#{ticket_id}</b>."
    ),
    "already_escalated": "An operator is already handling your conversation. I've passed this message on.",
    "model_unavailable": "I can't answer right now. Your question has been passed to an operator, who will reply here.",
    "operator_reply_prefix": "👤 <b>Operator {name}:</b>",
    "ticket_resolved": "The operator has closed this conversation. If you need anything else, just write — I'm here.",
    "feedback_thanks_up": "Thank you for the feedback! Glad I could help.",
    "feedback_down_offer": "Sorry the answer didn't help. Do you still need help? I can bring in a person.",
    "button_up": "👍",
    "button_down": "👎",
    "button_operator": "Talk to a person",
    "button_still_need_help": "Yes, talk to a person",
    "processing_error": (
        "Something went wrong. I've passed your message to an operator, who will look into it and reply here."
    ),
    "unsupported_message": "I can only read text messages. Please send your question as text.",
    "empty_message": "Your message seems to be empty. Please type your question.",
    "message_too_long_cut": "Your message was very long, so I answered its first {chars} characters.",
    "sources_heading": "Sources",
    "sla_breached": "⏰ <b>Ticket #{ticket_id}</b> has waited {waiting} for an answer ({status}): past its SLA.",
    "customer_card_title": "👤 <b>CRM customer: {name}</b> (number verified)",
    "verify_offer": (
        "To answer about your accounts and products I need to know it's you: press «Share my number» below. "
        "A number typed as text won't do — only your own contact."
    ),
    "button_share_contact": "📱 Share my number",
    "verify_done": "Thank you, your number is confirmed. I can now answer with your products in mind.",
    "verify_not_own": "Only your own number can be confirmed — with the «Share my number» button.",
    "verify_not_found": (
        "I found no bank customer with this number. If the bank has another one, ask an operator: /operator"
    ),
    "verify_ambiguous": "Several customers share this number. An operator will sort it out: /operator",
    "verify_unavailable": "I can't check the number right now. Please try again in a few minutes.",
    "verify_no_crm": "This bot does not use number confirmation.",
    "crm_unavailable_note": (
        "<i>Your product data is unavailable right now, so this answer is general. "
        "For exact figures write again later or ask for a person: /operator</i>"
    ),
    "extractive_note": "This is a verbatim quote from the bank's documents.",
    # --- operators -------------------------------------------------------------------------
    "operator_help": (
        "<b>Operator's guide</b>\n"
        "• New tickets arrive as cards: “Claim” takes one, “Resolved” closes it.\n"
        "• To answer a customer, reply to a message of their ticket — your reply goes to the customer.\n"
        "• /queue — the tickets waiting for an answer.\n"
        "• /ask question — ask the knowledge base (in a private chat with me, just type the question)."
    ),
    "ticket_card": (
        "🆕 <b>Ticket #{ticket_id}</b> · {reason_label}\n"
        "Customer: {customer}\n"
        "Waiting: {waiting}\n\n"
        "<b>Summary:</b> {summary}\n\n"
        "<b>Last messages:</b>\n{transcript}"
    ),
    "reason_no_relevant_documents": "no answer in the documents",
    "reason_low_confidence": "low confidence",
    "reason_answer_withheld": "the model's answer was withheld by the output check",
    "reason_model_declined": "the model found no answer in the sources",
    "reason_customer_request": "the customer asked for a person",
    "reason_model_unavailable": "model unavailable",
    "reason_negative_feedback": "the answer didn't help the customer",
    "reason_processing_error": "processing error",
    "reason_other": "other reason",
    "status_open": "waiting",
    "status_claimed": "in progress",
    "status_answered": "answered",
    "status_resolved": "resolved",
    "button_claim": "Claim",
    "button_resolve": "Resolved",
    "button_send_draft": "Send draft",
    "claimed_by": "{name} took ticket #{ticket_id}.",
    "claim_lost": "Ticket #{ticket_id} is already taken by {name}.",
    "not_an_operator": "This is available to operators only.",
    "draft_card": (
        "📝 <b>Draft reply for ticket #{ticket_id}</b>\n"
        "<i>Made from the knowledge base — check it before sending.</i>\n\n"
        "{draft}\n\n"
        "<b>Sources:</b>\n{sources}"
    ),
    "queue_empty": "The queue is empty — every ticket is handled.",
    "queue_header": "<b>Ticket queue:</b>",
    "queue_line": "#{ticket_id} · {status} · waiting {waiting} · {customer} · {reason}",
    "reannounce": "⏰ Ticket #{ticket_id} has been waiting for {waiting}.",
    "customer_message_forward": "💬 Ticket #{ticket_id} · the customer writes:\n{text}",
    "reply_sent": "✅ Your reply was sent to the customer of ticket #{ticket_id}.",
    "ticket_closed": "Ticket #{ticket_id} was resolved by {name}.",
    "reply_to_unknown": "To answer a customer, reply to a message of their ticket.",
    "ticket_not_claimed_by_you": (
        "Ticket #{ticket_id} isn't claimed by you: only the operator who took it can reply to it or close it."
    ),
}

TEXTS: dict[str, dict[str, str]] = {"ru": _RU, "en": _EN}

REASONS = (
    "no_relevant_documents",
    "low_confidence",
    "model_declined",
    "answer_withheld",
    "customer_request",
    "model_unavailable",
    "negative_feedback",
    "processing_error",
)
STATUSES = ("open", "claimed", "answered", "resolved")

_WAITING_UNITS = {
    "ru": ("д", "ч", "мин", "меньше минуты"),
    "en": ("d", "h", "min", "under a minute"),
}


def pick_language(language_code: str | None) -> str:
    """The bot's language for a Telegram ``language_code``: "ru" for Russian and CIS codes, else "en"."""
    if not language_code:
        return "en"
    primary = _TAG_SEPARATOR.split(language_code.strip().lower(), maxsplit=1)[0]
    return "ru" if primary in _RUSSIAN_READERS else "en"


def _resolve(lang: str) -> str:
    """A supported language for ``lang``; "en-US" counts as "en", anything unknown as Russian."""
    if lang in TEXTS:
        return lang
    primary = _TAG_SEPARATOR.split((lang or "").strip().lower(), maxsplit=1)[0]
    return primary if primary in TEXTS else DEFAULT_LANGUAGE


def _escape(value: object) -> str:
    if isinstance(value, SafeHtml):
        return str(value)
    # Same rules as bot.telegram.render.escape_html (which imports this module, hence the
    # stdlib call): values land in text, not attributes, so quotes may stay as they are.
    return html.escape(str(value), quote=False)


def t(lang: str, key: str, **kwargs: object) -> str:
    """The text ``key`` in ``lang`` with ``kwargs`` HTML-escaped into its placeholders.

    An unknown language falls back to Russian; an unknown key raises ``KeyError(key)``; a
    placeholder without a value raises ``KeyError`` with the placeholder's name. Extra
    ``kwargs`` are ignored, so one call can serve texts that show more or less of the context.
    """
    texts = TEXTS[_resolve(lang)]
    try:
        template = texts[key]
    except KeyError:
        raise KeyError(key) from None
    return template.format_map({name: _escape(value) for name, value in kwargs.items()})


def reason_label(lang: str, reason: str | None) -> str:
    """The operator-facing label of an escalation reason; unknown reasons get a generic label."""
    key = f"reason_{reason}"
    return t(lang, key) if reason and key in _RU else t(lang, "reason_other")


def status_label(lang: str, status: str) -> str:
    """The operator-facing label of a ticket status; an unknown status is shown escaped as is."""
    key = f"status_{status}"
    return t(lang, key) if key in _RU else _escape(status)


def format_waiting(seconds: float, lang: str) -> str:
    """How long someone waits, rounded down to whole minutes: «5 мин», «1 ч 20 мин», "2 d 3 h".

    Rounded down so a reminder never overstates the wait; after a day minutes are noise and
    are dropped.
    """
    day, hour, minute, under_a_minute = _WAITING_UNITS[_resolve(lang)]
    if not math.isfinite(seconds) or seconds < 0:
        seconds = 0.0
    total_minutes = int(seconds // 60)
    if total_minutes < 1:
        return under_a_minute
    days, rest = divmod(total_minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    if days:
        return f"{days} {day} {hours} {hour}" if hours else f"{days} {day}"
    if hours:
        return f"{hours} {hour} {minutes} {minute}" if minutes else f"{hours} {hour}"
    return f"{minutes} {minute}"
