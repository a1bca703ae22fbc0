"""User-facing texts: both languages complete, placeholders consistent, values escaped."""

from __future__ import annotations

import math
import string

import pytest

from bot.i18n import (
    REASONS,
    STATUSES,
    TEXTS,
    SafeHtml,
    format_waiting,
    pick_language,
    reason_label,
    status_label,
    t,
)
from tests.unit.test_render import assert_valid_telegram_html

# The keys the bot uses and the values each needs: the contract with the channel code.
EXPECTED_PLACEHOLDERS: dict[str, set[str]] = {
    "start": set(),
    "help": set(),
    "lang_switched": set(),
    "new_conversation": set(),
    "rate_limited": {"seconds"},
    "escalated": {"ticket_id"},
    "already_escalated": set(),
    "model_unavailable": set(),
    "operator_reply_prefix": {"name"},
    "ticket_resolved": set(),
    "feedback_thanks_up": set(),
    "feedback_down_offer": set(),
    "button_up": set(),
    "button_down": set(),
    "button_operator": set(),
    "button_still_need_help": set(),
    "processing_error": set(),
    "unsupported_message": set(),
    "empty_message": set(),
    "verify_offer": set(),
    "reason_answer_withheld": set(),
    "sla_breached": {"ticket_id", "waiting", "status"},
    "customer_card_title": {"name"},
    "button_share_contact": set(),
    "verify_done": set(),
    "verify_not_own": set(),
    "verify_not_found": set(),
    "verify_ambiguous": set(),
    "verify_unavailable": set(),
    "verify_no_crm": set(),
    "crm_unavailable_note": set(),
    "message_too_long_cut": {"chars"},
    "sources_heading": set(),
    "extractive_note": set(),
    "ticket_card": {"ticket_id", "reason_label", "customer", "waiting", "summary", "transcript"},
    **{f"reason_{r}": set() for r in (*REASONS, "other")},
    **{f"status_{s}": set() for s in STATUSES},
    "button_claim": set(),
    "button_resolve": set(),
    "button_send_draft": set(),
    "claimed_by": {"name", "ticket_id"},
    "claim_lost": {"name", "ticket_id"},
    "not_an_operator": set(),
    "operator_help": set(),
    "draft_card": {"ticket_id", "draft", "sources"},
    "queue_empty": set(),
    "queue_header": set(),
    "queue_line": {"ticket_id", "status", "waiting", "customer", "reason"},
    "reannounce": {"ticket_id", "waiting"},
    "customer_message_forward": {"ticket_id", "text"},
    "reply_sent": {"ticket_id"},
    "ticket_closed": {"ticket_id", "name"},
    "reply_to_unknown": set(),
    "ticket_not_claimed_by_you": {"ticket_id"},
}

HOSTILE = "<script>alert('x')</script> & &foo; \"q\""
HOSTILE_ESCAPED = "&lt;script&gt;alert('x')&lt;/script&gt; &amp; &amp;foo; \"q\""


def _placeholders(template: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}


def test_both_languages_have_exactly_the_expected_keys() -> None:
    assert set(TEXTS) == {"ru", "en"}
    assert set(TEXTS["ru"]) == set(EXPECTED_PLACEHOLDERS)
    assert set(TEXTS["en"]) == set(EXPECTED_PLACEHOLDERS)


@pytest.mark.parametrize("key", sorted(EXPECTED_PLACEHOLDERS))
def test_placeholders_match_across_languages(key: str) -> None:
    assert _placeholders(TEXTS["ru"][key]) == EXPECTED_PLACEHOLDERS[key]
    assert _placeholders(TEXTS["en"][key]) == EXPECTED_PLACEHOLDERS[key]


@pytest.mark.parametrize("lang", ["ru", "en"])
@pytest.mark.parametrize("key", sorted(EXPECTED_PLACEHOLDERS))
def test_every_text_is_valid_html_with_hostile_values(lang: str, key: str) -> None:
    text = t(lang, key, **{name: HOSTILE for name in EXPECTED_PLACEHOLDERS[key]})
    assert text.strip()
    assert_valid_telegram_html(text)
    assert "<script>" not in text
    if EXPECTED_PLACEHOLDERS[key]:
        assert HOSTILE_ESCAPED in text


def test_kwargs_are_escaped_exactly() -> None:
    assert t("ru", "claimed_by", name="<b>Ева</b> & Co", ticket_id=7) == (
        "&lt;b&gt;Ева&lt;/b&gt; &amp; Co взял(а) обращение #7."
    )
    assert t("en", "claim_lost", name="a<b", ticket_id=12) == "Ticket #12 is already taken by a&lt;b."
    assert t("en", "rate_limited", seconds=30) == (
        "You're sending messages a little too fast. Please wait 30 s and try again."
    )


def test_safe_html_values_are_inserted_as_is() -> None:
    draft = t("en", "draft_card", ticket_id=3, draft="1 < 2", sources=SafeHtml('<a href="https://b.example">T</a>'))
    assert "1 &lt; 2" in draft
    assert '<a href="https://b.example">T</a>' in draft
    assert_valid_telegram_html(draft)


def test_texts_in_the_two_languages_differ() -> None:
    same = {k for k in EXPECTED_PLACEHOLDERS if TEXTS["ru"][k] == TEXTS["en"][k]}
    assert same == {"button_up", "button_down"}


def test_buttons_are_exact_and_plain() -> None:
    # Button labels are not parsed as HTML by Telegram: no markup, no entities.
    assert t("ru", "button_up") == t("en", "button_up") == "👍"
    assert t("ru", "button_down") == t("en", "button_down") == "👎"
    assert (t("ru", "button_operator"), t("en", "button_operator")) == ("Позвать оператора", "Talk to a person")
    assert (t("ru", "button_still_need_help"), t("en", "button_still_need_help")) == (
        "Да, позвать оператора", "Yes, talk to a person"
    )
    assert (t("ru", "button_claim"), t("en", "button_claim")) == ("Взять", "Claim")
    assert (t("ru", "button_resolve"), t("en", "button_resolve")) == ("Решено", "Resolved")
    assert (t("ru", "button_send_draft"), t("en", "button_send_draft")) == ("Отправить черновик", "Send draft")
    for lang in ("ru", "en"):
        for key in EXPECTED_PLACEHOLDERS:
            if key.startswith("button_"):
                assert not set(t(lang, key)) & set("<>&"), key


def test_customer_texts_mention_what_they_must() -> None:
    for lang in ("ru", "en"):
        assert "/help" in t(lang, "start")
        help_text = t(lang, "help")
        assert all(cmd in help_text for cmd in ("/operator", "/lang", "/new"))
    assert t("ru", "operator_reply_prefix", name="Анна") == "👤 <b>Оператор Анна:</b>"
    assert t("en", "operator_reply_prefix", name="Anna") == "👤 <b>Operator Anna:</b>"
    assert "#42" in t("ru", "escalated", ticket_id=42) and "#42" in t("en", "escalated", ticket_id=42)
    assert "500" in t("ru", "message_too_long_cut", chars=500)
    for lang in ("ru", "en"):
        assert "/queue" in t(lang, "operator_help") and "/ask" in t(lang, "operator_help")


def test_extra_kwargs_are_ignored() -> None:
    assert t("en", "model_unavailable", ticket_id=5) == t("en", "model_unavailable")


def test_unknown_language_falls_back_to_russian_and_regional_tags_resolve() -> None:
    assert t("de", "button_operator") == "Позвать оператора"
    assert t("", "button_operator") == "Позвать оператора"
    assert t("en-US", "button_operator") == "Talk to a person"
    assert t("RU", "button_operator") == "Позвать оператора"


def test_unknown_key_raises_key_error_naming_it() -> None:
    with pytest.raises(KeyError, match="no_such_key"):
        t("ru", "no_such_key")
    with pytest.raises(KeyError, match="no_such_key"):
        t("en", "no_such_key", name="x")


def test_missing_value_raises_key_error_naming_the_placeholder() -> None:
    with pytest.raises(KeyError, match="ticket_id"):
        t("ru", "escalated")


@pytest.mark.parametrize(
    ("code", "lang"),
    [
        ("ru", "ru"), ("ru-RU", "ru"), ("RU", "ru"), ("uk", "ru"), ("be", "ru"), ("kk", "ru"), ("kk_KZ", "ru"),
        ("uz", "ru"), ("ky", "ru"), ("tt", "ru"), ("hy", "ru"),
        ("en", "en"), ("en-US", "en"), ("de", "en"), ("fr", "en"), ("pt-br", "en"), ("zh-hans", "en"),
        ("rus", "en"), (None, "en"), ("", "en"), ("  ", "en"),
    ],
)
def test_pick_language(code: str | None, lang: str) -> None:
    assert pick_language(code) == lang


@pytest.mark.parametrize(
    ("seconds", "ru", "en"),
    [
        (0, "меньше минуты", "under a minute"),
        (59.9, "меньше минуты", "under a minute"),
        (60, "1 мин", "1 min"),
        (300, "5 мин", "5 min"),
        (359, "5 мин", "5 min"),  # rounded down: a reminder never overstates the wait
        (3600, "1 ч", "1 h"),
        (4800, "1 ч 20 мин", "1 h 20 min"),
        (86_400, "1 д", "1 d"),
        (2 * 86_400 + 3 * 3600 + 59 * 60, "2 д 3 ч", "2 d 3 h"),
        (-5, "меньше минуты", "under a minute"),
        (math.nan, "меньше минуты", "under a minute"),
    ],
)
def test_format_waiting(seconds: float, ru: str, en: str) -> None:
    assert format_waiting(seconds, "ru") == ru
    assert format_waiting(seconds, "en") == en


def test_format_waiting_unknown_language_is_russian() -> None:
    assert format_waiting(300, "xx") == "5 мин"


def test_reason_and_status_labels() -> None:
    labels = {reason_label("ru", r) for r in REASONS}
    assert len(labels) == len(REASONS)
    assert reason_label("en", "customer_request") == "the customer asked for a person"
    assert reason_label("en", "something_new") == reason_label("en", None) == "other reason"
    assert status_label("ru", "claimed") == "в работе"
    assert status_label("en", "<weird>") == "&lt;weird&gt;"
