"""The Telegram channel end to end: webhook in, real aiogram, outbox out to a real Bot API server.

Nothing of ours is patched. Updates are real Bot API JSON posted to the running app's webhook;
what customers and operators see is read back from FakeTelegram; what the model was asked is
read back from FakeLLMServer; outcomes are read from the database.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from sqlalchemy import select

from bot.storage.tables import feedback, inbound_events, messages, tickets
from tests.support.fake_telegram import SentMessage, callback_update, message_update
from tests.support.service import CUSTOMER, OPERATOR_CHAT, OPERATORS, SECRET, RunningService

CLASSIC = "Сколько стоит обслуживание карты «Классик»?"
CLASSIC_REPLY = "Обслуживание карты «Классик» стоит 99 ₽ в месяц [1]."
WEATHER = "Какая погода завтра в Архангельске?"

pytestmark = pytest.mark.slow


def to(chat_id: int, contains: str = "") -> Any:
    return lambda m: m.chat_id == chat_id and contains in m.text


def buttons(message: SentMessage) -> list[str]:
    rows = (message.reply_markup or {}).get("inline_keyboard", [])
    return [b.get("callback_data", "") for row in rows for b in row]


async def ask(svc: RunningService, update_id: int, text: str, *, user_id: int = CUSTOMER, lang: str = "ru") -> None:
    response = await svc.post_update(message_update(update_id, user_id=user_id, text=text, language_code=lang))
    assert response.status_code == 200, response.text


async def rows(svc: RunningService, table: Any) -> list[Any]:
    result: list[Any] = await svc.container.db.tx(lambda c: list(c.execute(select(table)).mappings()))
    return result


async def open_ticket(svc: RunningService, update_id: int = 1) -> SentMessage:
    """The customer asks what the documents do not answer; returns the ticket card."""
    await ask(svc, update_id, WEATHER)
    (card,) = await svc.telegram.await_for(lambda m: m.chat_id == OPERATOR_CHAT and "claim:" in str(m.reply_markup))
    return card


# --- customers ---------------------------------------------------------------------------------


async def test_a_customer_question_gets_a_cited_answer_with_buttons(service: RunningService) -> None:
    service.llm.behaviour.reply = CLASSIC_REPLY
    await ask(service, 1, CLASSIC)
    (answer,) = await service.telegram.await_for(to(CUSTOMER, "99 ₽"))
    assert "Источники" in answer.text and "[1]" in answer.text
    assert "https://bank.example/tariffs/debit" in answer.source_text  # the document's own link
    data = buttons(answer)
    assert any(d.startswith("fb:") and d.endswith(":1") for d in data) and any(d.startswith("op:") for d in data)
    assert service.telegram.calls_of("sendChatAction"), "no typing indicator while the model worked"
    await service.wait_idle()
    (message,) = [m for m in await rows(service, messages) if m["role"] == "customer"]
    assert message["outcome"] == "answered"
    assert not await rows(service, tickets)


async def test_a_follow_up_question_carries_the_earlier_turns(service: RunningService) -> None:
    service.llm.behaviour.reply = CLASSIC_REPLY
    await ask(service, 1, CLASSIC)
    await service.telegram.await_for(to(CUSTOMER, "99 ₽"))
    await ask(service, 2, "А если покупок меньше, чем на 10 000 ₽ в месяц?")
    await service.telegram.await_for(to(CUSTOMER, "99 ₽"), count=2)
    last = service.llm.generation_requests()[-1].body["messages"]
    contents = " ".join(m["content"] for m in last)
    assert CLASSIC in contents and "10 000" in contents


async def test_an_unanswerable_question_opens_a_ticket_in_the_operator_chat(service: RunningService) -> None:
    service.llm.behaviour.reply = "Клиент спрашивает о погоде в Архангельске."
    card = await open_ticket(service)
    (notice,) = await service.telegram.await_for(to(CUSTOMER, "оператор"))
    (ticket,) = await rows(service, tickets)
    assert f"#{ticket['id']}" in notice.text and f"#{ticket['id']}" in card.text
    assert ticket["status"] == "open" and ticket["reason"] in ("low_confidence", "no_relevant_documents")
    assert WEATHER in card.text  # the transcript is on the card
    assert ticket["summary_mode"] == "model" and "погоде" in ticket["summary"]
    await service.wait_idle()
    (message,) = [m for m in await rows(service, messages) if m["role"] == "customer"]
    assert message["outcome"] == "escalated"


async def test_the_customer_asks_for_a_person_in_plain_words(service: RunningService) -> None:
    await ask(service, 1, "позовите живого человека пожалуйста")
    await service.telegram.await_for(lambda m: m.chat_id == OPERATOR_CHAT and "claim:" in str(m.reply_markup))
    (ticket,) = await rows(service, tickets)
    assert ticket["reason"] == "customer_request"
    assert not service.llm.generation_requests() or all(
        "позовите" not in json.dumps(r.body, ensure_ascii=False) or "<customer>" in json.dumps(r.body,
                                                                                             ensure_ascii=False)
        for r in service.llm.generation_requests()
    )  # the request is not answered from the knowledge base, only summarised


async def test_operator_claims_replies_and_resolves(service: RunningService) -> None:
    tg = service.telegram
    card = await open_ticket(service)
    (ticket,) = await rows(service, tickets)
    card_message = tg.stored_message(OPERATOR_CHAT, card.message_id)
    assert card_message is not None
    await service.post_update(callback_update(10, user_id=OPERATORS[0], data=f"claim:{ticket['id']}",
                                              message=card_message, first_name="Ольга"))
    edited = await tg.await_for(lambda m: m.method == "editMessageText" and m.message_id == card.message_id)
    assert "Ольга" in edited[-1].text
    await service.post_update(message_update(
        11, user_id=OPERATORS[0], first_name="Ольга", chat_id=OPERATOR_CHAT, chat_type="supergroup",
        text="Здравствуйте! Завтра в Архангельске +2 и снег.", reply_to=card_message,
    ))
    (reply,) = await tg.await_for(to(CUSTOMER, "+2 и снег"))
    assert "Ольга" in reply.text  # marked as from a person
    await service.wait_idle()
    (ticket,) = await rows(service, tickets)
    assert ticket["status"] == "answered" and ticket["operator_name"] == "Ольга"
    await service.post_update(callback_update(12, user_id=OPERATORS[0], data=f"resolve:{ticket['id']}",
                                              message=card_message, first_name="Ольга"))
    await tg.await_for(to(CUSTOMER, "обращение"))  # «оператор закрыл обращение…»
    await service.wait_idle()
    (ticket,) = await rows(service, tickets)
    assert ticket["status"] == "resolved" and ticket["resolved_at"] is not None


async def test_two_operators_press_claim_at_once_and_exactly_one_wins(service: RunningService) -> None:
    tg = service.telegram
    card = await open_ticket(service)
    (ticket,) = await rows(service, tickets)
    card_message = tg.stored_message(OPERATOR_CHAT, card.message_id)
    assert card_message is not None
    presses = [
        callback_update(20 + n, user_id=op, data=f"claim:{ticket['id']}", message=card_message,
                        first_name=name, callback_query_id=f"q{n}")
        for n, (op, name) in enumerate(zip(OPERATORS, ("Ольга", "Пётр"), strict=True))
    ]
    responses = await asyncio.gather(*(service.post_update(p) for p in presses))
    assert [r.status_code for r in responses] == [200, 200]
    await service.wait_idle()
    answers = {a.callback_query_id: a for a in tg.callback_answers}
    assert set(answers) == {"q0", "q1"}
    lost = [a for a in answers.values() if a.show_alert]
    assert len(lost) == 1, answers
    (ticket,) = await rows(service, tickets)
    assert ticket["operator_name"] in ("Ольга", "Пётр") and ticket["operator_name"] in (lost[0].text or "")


async def test_while_a_ticket_is_open_the_bot_forwards_instead_of_answering(service: RunningService) -> None:
    tg = service.telegram
    card = await open_ticket(service)
    service.llm.behaviour.reply = CLASSIC_REPLY
    generations = len(service.llm.generation_requests())
    await ask(service, 2, CLASSIC)
    (forward,) = await tg.await_for(lambda m: m.chat_id == OPERATOR_CHAT and CLASSIC in m.text
                                    and m.message_id != card.message_id)
    assert forward.reply_to_message_id == card.message_id
    await service.wait_idle()
    assert len(service.llm.generation_requests()) == generations  # the bot did not answer by itself
    assert not [m for m in tg.messages_to(CUSTOMER) if "99 ₽" in m.text]


async def test_the_draft_reply_can_be_sent_as_is(service: RunningService) -> None:
    tg = service.telegram
    service.llm.behaviour.reply = CLASSIC_REPLY
    await ask(service, 1, "позовите оператора, сколько стоит обслуживание карты Классик?")
    (draft,) = await tg.await_for(lambda m: m.chat_id == OPERATOR_CHAT and "draft:" in str(m.reply_markup))
    assert "99 ₽" in draft.text
    (ticket,) = await rows(service, tickets)
    message = tg.stored_message(OPERATOR_CHAT, draft.message_id)
    assert message is not None
    await service.post_update(callback_update(5, user_id=OPERATORS[1], data=f"draft:{ticket['id']}",
                                              message=message, first_name="Пётр"))
    (reply,) = await tg.await_for(lambda m: m.chat_id == CUSTOMER and "Пётр" in m.text)
    assert "99 ₽" in reply.text


async def test_thumbs_down_then_still_need_help_opens_a_ticket(service: RunningService) -> None:
    tg = service.telegram
    service.llm.behaviour.reply = CLASSIC_REPLY
    await ask(service, 1, CLASSIC)
    (answer,) = await tg.await_for(to(CUSTOMER, "99 ₽"))
    down = next(d for d in buttons(answer) if d.endswith(":-1"))
    shown = tg.stored_message(CUSTOMER, answer.message_id)
    assert shown is not None
    await service.post_update(callback_update(2, user_id=CUSTOMER, data=down, message=shown))
    (offer,) = await tg.await_for(lambda m: m.chat_id == CUSTOMER and "help:" in str(m.reply_markup))
    (vote,) = await rows(service, feedback)
    assert vote["value"] == -1
    offer_message = tg.stored_message(CUSTOMER, offer.message_id)
    assert offer_message is not None
    await service.post_update(callback_update(3, user_id=CUSTOMER, data=buttons(offer)[0], message=offer_message))
    await tg.await_for(lambda m: m.chat_id == OPERATOR_CHAT and "claim:" in str(m.reply_markup))
    (ticket,) = await rows(service, tickets)
    assert ticket["reason"] == "negative_feedback"


async def test_someone_elses_feedback_button_changes_nothing(service: RunningService) -> None:
    tg = service.telegram
    service.llm.behaviour.reply = CLASSIC_REPLY
    await ask(service, 1, CLASSIC)
    (answer,) = await tg.await_for(to(CUSTOMER, "99 ₽"))
    shown = tg.stored_message(CUSTOMER, answer.message_id)
    assert shown is not None
    up = next(d for d in buttons(answer) if d.startswith("fb:") and d.endswith(":1"))
    await service.post_update(callback_update(2, user_id=9999, data=up, message=shown))
    await service.wait_idle()
    assert await rows(service, feedback) == []


async def test_start_greets_in_the_users_language_and_lang_switches(service: RunningService) -> None:
    tg = service.telegram
    await ask(service, 1, "/start", lang="en")
    (hello,) = await tg.await_for(lambda m: m.chat_id == CUSTOMER)
    assert "/help" in hello.text and not any("а" <= ch <= "я" for ch in hello.text.lower())
    await ask(service, 2, "/lang ru", lang="en")
    await tg.await_for(lambda m: m.chat_id == CUSTOMER, count=2)
    await ask(service, 3, "/help", lang="en")  # pinned: language_code no longer decides
    (*_, help_text) = await tg.await_for(lambda m: m.chat_id == CUSTOMER, count=3)
    assert any("а" <= ch <= "я" for ch in help_text.text.lower())


async def test_a_flood_gets_one_polite_reply_and_every_message_an_outcome(service: RunningService) -> None:
    service.llm.behaviour.reply = CLASSIC_REPLY
    limit = service.container.settings.chat.rate_limit_messages
    for n in range(limit + 6):
        await ask(service, 100 + n, f"{CLASSIC} ({n})")
    await service.wait_idle(timeout_s=60)
    customer = [m for m in await rows(service, messages) if m["role"] == "customer"]
    assert len(customer) == limit + 6 and all(m["outcome"] for m in customer)
    assert sum(m["outcome"] == "rate_limited" for m in customer) == 6
    polite = [m for m in service.telegram.messages_to(CUSTOMER) if "подождите" in m.text.lower()
              or "слишком" in m.text.lower()]
    assert len(polite) == 1


async def test_an_operator_asks_the_bot_and_may_read_operator_only_documents(service: RunningService) -> None:
    service.llm.behaviour.reply = "Комиссию за SMS можно вернуть кодом WAIVE-03 [1]."
    await service.post_update(message_update(1, user_id=OPERATORS[0], text="Как вернуть клиенту комиссию за SMS?"))
    (answer,) = await service.telegram.await_for(to(OPERATORS[0], "WAIVE"))
    prompt = json.dumps(service.llm.generation_requests()[-1].body, ensure_ascii=False)
    assert "internal/fee-waiver.md" in prompt or "Возврат комиссий" in prompt
    assert "Источники" in answer.text


async def test_the_queue_lists_open_tickets(service: RunningService) -> None:
    await open_ticket(service)
    await service.post_update(message_update(5, user_id=OPERATORS[1], chat_id=OPERATOR_CHAT, chat_type="supergroup",
                                             text="/queue"))
    (listing,) = await service.telegram.await_for(lambda m: m.chat_id == OPERATOR_CHAT and "/queue" not in m.text
                                                  and "#1" in m.text and "claim:" not in str(m.reply_markup))
    assert "Иван" in listing.text


async def test_an_unclaimed_ticket_is_announced_again(service: RunningService) -> None:
    await open_ticket(service)
    after = service.container.settings.telegram.reannounce_after_s
    assert await service.container.operators.reannounce_due(after) == 0
    service.clock.advance(after + 1)
    assert await service.container.operators.reannounce_due(after) == 1
    assert await service.container.operators.reannounce_due(after) == 0  # once per period
    cards = await service.telegram.await_for(lambda m: m.chat_id == OPERATOR_CHAT and "claim:" in str(m.reply_markup),
                                             count=2)
    assert "#1" in cards[-1].text


# --- what must never happen --------------------------------------------------------------------


async def test_a_duplicate_update_is_acknowledged_and_answered_once(service: RunningService) -> None:
    service.llm.behaviour.reply = CLASSIC_REPLY
    update = message_update(1, user_id=CUSTOMER, text=CLASSIC)
    first = await service.post_update(update)
    concurrent = await asyncio.gather(*(service.post_update(update) for _ in range(5)))
    await service.telegram.await_for(to(CUSTOMER, "99 ₽"))
    later = await service.post_update(update)
    await service.wait_idle()
    assert first.json() == {"ok": True, "duplicate": False}
    assert all(r.status_code == 200 and r.json()["duplicate"] for r in [*concurrent, later])
    assert len([m for m in service.telegram.messages_to(CUSTOMER) if "99 ₽" in m.text]) == 1
    assert len(service.llm.generation_requests()) == 1


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"X-Forwarded-For": "149.154.167.220"}, 401),
        ({"X-Telegram-Bot-Api-Secret-Token": "wrong-secret-but-long-enough"}, 403),
        ({"X-Telegram-Bot-Api-Secret-Token": SECRET[:-1]}, 403),
    ],
)
async def test_a_webhook_without_the_right_secret_is_refused_and_not_stored(
    service: RunningService, headers: dict[str, str], status: int, caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("DEBUG"):
        response = await service.post_update(message_update(1, user_id=CUSTOMER, text=CLASSIC), secret=None,
                                             headers=headers)
    assert response.status_code == status
    assert await rows(service, inbound_events) == []
    for value in headers.values():  # a guessed secret is never written to the log
        assert value not in caplog.text


async def test_a_non_ascii_secret_header_is_403_not_500(service: RunningService) -> None:
    body = json.dumps(message_update(1, user_id=CUSTOMER, text=CLASSIC)).encode()
    response = await service.http.post("/telegram/webhook", content=body, headers=[
        (b"content-type", b"application/json"), (b"x-telegram-bot-api-secret-token", "секрет".encode())])
    assert response.status_code == 403


@pytest.mark.parametrize(
    ("body", "status"),
    [(b"{not json", 400), (b"[1, 2]", 400), (b'{"update_id": "7"}', 400), (b"x" * 1_100_000, 413)],
)
async def test_bad_bodies_get_4xx_and_nothing_is_stored(service: RunningService, body: bytes, status: int) -> None:
    response = await service.http.post("/telegram/webhook", content=body, headers={
        "content-type": "application/json", "X-Telegram-Bot-Api-Secret-Token": SECRET})
    assert response.status_code == status
    assert await rows(service, inbound_events) == []


async def test_a_429_delays_the_message_and_exactly_one_copy_arrives(service: RunningService) -> None:
    tg = service.telegram
    service.llm.behaviour.reply = CLASSIC_REPLY
    tg.fail_next("sendMessage", 429, retry_after=2)
    await ask(service, 1, CLASSIC)
    (answer,) = await tg.await_for(to(CUSTOMER, "99 ₽"), timeout=15)
    refused = [c for c in tg.calls_of("sendMessage") if c.status == 429]
    assert len(refused) == 1 and answer.at - refused[0].at >= 2.0
    await service.wait_idle()
    assert len([m for m in tg.messages_to(CUSTOMER) if "99 ₽" in m.text]) == 1


async def test_html_telegram_refuses_is_sent_again_as_plain_text(service: RunningService) -> None:
    tg = service.telegram
    service.llm.behaviour.reply = CLASSIC_REPLY
    tg.fail_next("sendMessage", 400, description="Bad Request: can't parse entities: unsupported start tag")
    await ask(service, 1, CLASSIC)
    (answer,) = await tg.await_for(to(CUSTOMER, "99 ₽"))
    assert answer.parse_mode is None


async def test_model_markup_and_long_answers_are_escaped_and_split(service: RunningService) -> None:
    tg = service.telegram
    # Long words: the fake model streams words as tokens and stops at max_tokens (512).
    long_word = "Обслуживание«Классик»стоит99₽вмесяц."
    service.llm.behaviour.reply = "<script>alert(1)</script> &bogus; " + " ".join([long_word] * 300) + " [1]"
    await ask(service, 1, CLASSIC)
    await service.wait_idle(timeout_s=30)
    parts = tg.messages_to(CUSTOMER)
    assert len(parts) >= 3 and all(len(p.text) <= 4096 for p in parts)
    assert "<script>alert(1)</script>" in parts[0].text and "&lt;script&gt;" in parts[0].source_text
    assert all(p.parse_mode == "HTML" for p in parts)
    assert buttons(parts[-1]) and not buttons(parts[0])  # the buttons go under the last part


async def test_a_failing_model_tells_the_customer_and_opens_exactly_one_ticket(service: RunningService) -> None:
    tg = service.telegram
    service.llm.behaviour.status = 503
    await ask(service, 1, CLASSIC)
    await tg.await_for(to(CUSTOMER, "оператор"))
    await ask(service, 2, "Алло, вы тут?")
    await service.wait_idle()
    (ticket,) = await rows(service, tickets)
    assert ticket["reason"] == "model_unavailable"
    outcomes = [m["outcome"] for m in await rows(service, messages) if m["role"] == "customer"]
    assert outcomes == ["escalated", "forwarded"]
    # No retry storm: the answer asked once; the summary and the draft did not ask a dead model again.
    assert len(service.llm.generation_requests()) <= 2


async def test_a_hanging_model_times_out_into_a_ticket(service: RunningService) -> None:
    service.llm.behaviour.hang = True
    await ask(service, 1, CLASSIC)
    (_notice,) = await service.telegram.await_for(to(CUSTOMER, "оператор"), timeout=20)
    await service.wait_idle()
    (ticket,) = await rows(service, tickets)
    assert ticket["reason"] == "model_unavailable"


async def test_a_50000_character_message_is_answered_with_the_prompt_bounded(service: RunningService) -> None:
    service.llm.behaviour.reply = CLASSIC_REPLY
    flood = CLASSIC + " " + ("очень " * 9000)
    assert len(flood) > 50_000
    await ask(service, 1, flood)
    await service.telegram.await_for(to(CUSTOMER, "99 ₽"))
    prompt = json.dumps(service.llm.generation_requests()[-1].body, ensure_ascii=False)
    assert len(prompt) < 20_000


async def test_zero_width_and_homoglyph_text_is_understood(service: RunningService) -> None:
    service.llm.behaviour.reply = CLASSIC_REPLY
    # Zero-width spaces inside words and a Latin «о»/«с» in Cyrillic words.
    tricky = "Ско\u200bлько стоит обслуживание карты «Кла\u200dссик»?".replace("о", "o", 1)
    await ask(service, 1, tricky)
    await service.telegram.await_for(to(CUSTOMER, "99 ₽"))
