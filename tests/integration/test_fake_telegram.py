"""The fake Telegram speaks the Bot API as aiogram expects it: a real ``Bot`` talks to it over HTTP.

Bot tests build on this contract, so it is checked with aiogram's own session, models and error
mapping rather than with hand-written requests (except where the wire format itself is the point).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from aiogram import Bot, Dispatcher
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramBadRequest,
    TelegramConflictError,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.filters import CommandStart
from aiogram.methods import GetMe
from aiogram.types import (
    CallbackQuery,
    ForumTopic,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    KeyboardButton,
    Message,
    ReplyKeyboardMarkup,
    ReplyParameters,
    Update,
)

from tests.support.fake_telegram import (
    FakeTelegram,
    SentMessage,
    callback_update,
    contact_update,
    message_update,
    parse_html,
)

USER = 5001


@pytest.fixture
def telegram() -> Iterator[FakeTelegram]:
    with FakeTelegram() as server:
        yield server


def _bot(server: FakeTelegram, token: str | None = None) -> Bot:
    session = AiohttpSession(api=TelegramAPIServer.from_base(server.url))
    return Bot(token or server.token, session=session)


@pytest.fixture
async def bot(telegram: FakeTelegram) -> AsyncIterator[Bot]:
    bot = _bot(telegram)
    yield bot
    await bot.session.close()


def _keyboard() -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        inline_keyboard=[
            [
                InlineKeyboardButton(text="Да", callback_data="yes"),
                InlineKeyboardButton(text="Нет", callback_data="no"),
            ],
            [InlineKeyboardButton(text="Сайт банка", url="https://bank.example/")],
        ]
    )


# --- basics ---------------------------------------------------------------------------------------


async def test_get_me_is_the_bot_user(telegram: FakeTelegram, bot: Bot) -> None:
    me = await bot.get_me()

    assert (me.id, me.is_bot, me.username) == (bot.id, True, "perimeter_test_bot")
    assert me.first_name == telegram.bot_user["first_name"]
    assert [(c.method, c.status) for c in telegram.calls] == [("getMe", 200)]


async def test_unknown_token_is_401_and_unknown_method_404(telegram: FakeTelegram) -> None:
    stranger = _bot(telegram, token="999:WRONG-TOKEN")
    with pytest.raises(TelegramUnauthorizedError, match="Unauthorized"):
        await stranger.get_me()
    await stranger.session.close()

    async with httpx.AsyncClient(base_url=telegram.url) as http:
        missing = await http.post(f"/bot{telegram.token}/sendSticker", data={"chat_id": "1"})
        wrong_token = await http.get("/bot1:nope/getMe")
    assert (missing.status_code, missing.json()) == (
        404,
        {"ok": False, "error_code": 404, "description": "Not Found: method not found"},
    )
    assert (wrong_token.status_code, wrong_token.json()) == (
        401,
        {"ok": False, "error_code": 401, "description": "Unauthorized"},
    )


async def test_json_urlencoded_multipart_and_query_parameters_are_all_read(telegram: FakeTelegram) -> None:
    url = f"/bot{telegram.token}/sendMessage"
    markup = '{"inline_keyboard": [[{"text": "Ок", "callback_data": "ok"}]]}'
    async with httpx.AsyncClient(base_url=telegram.url) as http:
        as_json = await http.post(url, json={"chat_id": 7, "text": "json", "reply_markup": {"inline_keyboard": []}})
        as_form = await http.post(url, data={"chat_id": "7", "text": "форма\r\nстрока 2", "reply_markup": markup})
        as_multipart = await http.post(
            url,
            data={"chat_id": "7", "text": "мультипарт\nстрока 2", "reply_markup": markup},
            files={"document": ("a.txt", b"\x00\x01binary\r\n", "text/plain")},
        )
        as_query = await http.get(f"/bot{telegram.token}/SENDMESSAGE", params={"chat_id": 7, "text": "query"})

    assert all(r.json()["ok"] for r in (as_json, as_form, as_multipart, as_query))
    assert [m.text for m in telegram.messages_to(7)] == ["json", "форма\r\nстрока 2", "мультипарт\nстрока 2", "query"]
    assert telegram.sent[1].reply_markup == {"inline_keyboard": [[{"text": "Ок", "callback_data": "ok"}]]}
    assert as_multipart.json()["result"]["reply_markup"] == telegram.sent[2].reply_markup
    multipart_call = telegram.calls_of("sendMessage")[2]
    assert multipart_call.content_type == "multipart/form-data"
    assert multipart_call.params["document"].data == b"\x00\x01binary\r\n"
    assert [c.http_method for c in telegram.calls] == ["POST", "POST", "POST", "GET"]


# --- sendMessage ----------------------------------------------------------------------------------


async def test_send_message_with_html_and_keyboard_round_trips(telegram: FakeTelegram, bot: Bot) -> None:
    first = await bot.send_message(USER, "Здравствуйте!")
    message = await bot.send_message(
        USER, "<b>Карта</b> &amp; <i>вклад</i> 😀 <code>x&lt;y</code>\n", parse_mode="HTML", reply_markup=_keyboard()
    )

    assert message.message_id == first.message_id + 1
    assert (message.chat.id, message.chat.type, message.from_user and message.from_user.id) == (USER, "private", bot.id)
    assert message.text == "Карта & вклад 😀 x<y"  # tags stripped, entities decoded, trailing newline trimmed
    assert [(e.type, e.offset, e.length) for e in message.entities or []] == [
        ("bold", 0, 5),
        ("italic", 8, 5),
        ("code", 17, 3),  # the emoji is two UTF-16 code units
    ]
    assert message.reply_markup is not None
    assert message.reply_markup.model_dump() == _keyboard().model_dump()  # == would also compare the bound bot
    sent = telegram.sent[-1]
    assert (sent.chat_id, sent.message_id, sent.text, sent.parse_mode) == (
        USER,
        message.message_id,
        message.text,
        "HTML",
    )
    assert sent.reply_markup == _keyboard().model_dump(exclude_none=True)
    assert sent.source_text.startswith("<b>Карта</b>")
    assert telegram.stored_message(USER, message.message_id) == message.model_dump(
        mode="json", exclude_none=True, by_alias=True
    ) | {"date": int(message.date.timestamp())}


async def test_reply_keyboards_are_recorded_but_not_echoed(telegram: FakeTelegram, bot: Bot) -> None:
    keyboard = ReplyKeyboardMarkup(keyboard=[[KeyboardButton(text="Поделиться номером", request_contact=True)]])

    message = await bot.send_message(USER, "Нужен ваш номер", reply_markup=keyboard)

    assert message.reply_markup is None  # Telegram returns only inline keyboards in a Message
    assert telegram.sent[0].reply_markup == {"keyboard": [[{"text": "Поделиться номером", "request_contact": True}]]}


@pytest.mark.parametrize(
    ("html", "reason"),
    [
        ("Привет<br>мир", 'Unsupported start tag "br" at byte offset 12'),
        ("a < b", 'Unsupported start tag "" at byte offset 2'),
        ("<b>жирный", 'Can\'t find end tag corresponding to start tag "b"'),
        ("<b><i>x</b></i>", 'Unmatched end tag at byte offset 7, expected "</i>", found "</b>"'),
        ("<span>x</span>", 'Tag "span" must have class "tg-spoiler" at byte offset 0'),
        ("Tom & Jerry", 'Unsupported HTML entity "&" at byte offset 4'),
        ("a&nbsp;b", 'Unsupported HTML entity "&nbsp;" at byte offset 1'),
    ],
)
async def test_invalid_html_is_refused_like_telegram(telegram: FakeTelegram, bot: Bot, html: str, reason: str) -> None:
    with pytest.raises(TelegramBadRequest, match="can't parse entities") as caught:
        await bot.send_message(USER, html, parse_mode="HTML")

    assert caught.value.message == f"Bad Request: can't parse entities: {reason}"
    assert telegram.sent == []
    assert telegram.calls[-1].status == 400


async def test_the_4096_character_limit_counts_the_parsed_text(bot: Bot) -> None:
    await bot.send_message(USER, "я" * 4096)
    await bot.send_message(USER, "<b>" + "я" * 4096 + "</b>", parse_mode="HTML")  # tags do not count

    with pytest.raises(TelegramBadRequest, match="message is too long"):
        await bot.send_message(USER, "я" * 4097)
    with pytest.raises(TelegramBadRequest, match="message text is empty"):
        await bot.send_message(USER, " \n ")


async def test_keyboard_mistakes_are_refused(bot: Bot) -> None:
    too_long = InlineKeyboardMarkup(inline_keyboard=[[InlineKeyboardButton(text="x", callback_data="д" * 33)]])
    bare = InlineKeyboardMarkup(inline_keyboard=[[InlineKeyboardButton(text="x")]])

    with pytest.raises(TelegramBadRequest, match="BUTTON_DATA_INVALID"):
        await bot.send_message(USER, "x", reply_markup=too_long)  # 66 bytes of UTF-8
    with pytest.raises(TelegramBadRequest, match="Text buttons are unallowed"):
        await bot.send_message(USER, "x", reply_markup=bare)


async def test_replies_and_topics_are_echoed(telegram: FakeTelegram, bot: Bot) -> None:
    question = telegram.queue_update(message_update(10, user_id=USER, text="Сколько стоит карта?"))["message"]

    reply = await bot.send_message(USER, "Бесплатно.", reply_parameters=ReplyParameters(message_id=10))
    legacy = await bot.send_message(USER, "Ещё раз.", reply_to_message_id=10)
    topic = await bot.create_forum_topic(chat_id=-1001234567890, name="Тикет #1 — Иван")
    in_topic = await bot.send_message(-1001234567890, "Новый тикет", message_thread_id=topic.message_thread_id)

    assert reply.reply_to_message is not None and reply.reply_to_message.text == question["text"]
    assert reply.message_id > question["message_id"]  # the chat's ids go on from the user's message
    assert legacy.reply_to_message is not None and legacy.reply_to_message.message_id == 10
    assert isinstance(topic, ForumTopic)
    assert (topic.name, topic.icon_color) == ("Тикет #1 — Иван", 0x6FB9F0)
    assert (in_topic.message_thread_id, in_topic.is_topic_message) == (topic.message_thread_id, True)
    assert in_topic.message_id > topic.message_thread_id
    assert [(s.reply_to_message_id, s.message_thread_id) for s in telegram.sent] == [
        (10, None),
        (10, None),
        (None, topic.message_thread_id),
    ]


# --- scripted faults ------------------------------------------------------------------------------


async def test_retry_after_reaches_aiogram(telegram: FakeTelegram, bot: Bot) -> None:
    telegram.fail_next("sendMessage", 429, retry_after=3)

    with pytest.raises(TelegramRetryAfter) as caught:
        await bot.send_message(USER, "раз")
    again = await bot.send_message(USER, "два")  # only the next call fails

    assert caught.value.retry_after == 3
    assert "Original description: Too Many Requests: retry after 3" in caught.value.message  # aiogram's wording
    assert again.text == "два"
    assert [(c.status, c.description) for c in telegram.calls] == [
        (429, "Too Many Requests: retry after 3"),
        (200, None),
    ]


async def test_other_faults_map_to_aiogram_errors(telegram: FakeTelegram, bot: Bot) -> None:
    telegram.fail_next("sendMessage", 500, times=2)
    telegram.fail_next("sendMessage", 502)
    telegram.fail_next("sendMessage", 400, "Bad Request: chat not found")
    telegram.fail_next("*", 403)

    for _ in range(2):
        with pytest.raises(TelegramServerError, match="Internal Server Error"):
            await bot.send_message(USER, "x")
    with pytest.raises(ClientDecodeError):  # nginx's HTML page, not JSON
        await bot.send_message(USER, "x")
    with pytest.raises(TelegramBadRequest, match="chat not found"):
        await bot.send_message(USER, "x")
    with pytest.raises(TelegramForbiddenError, match="bot was blocked by the user"):
        await bot.send_chat_action(USER, "typing")
    assert (await bot.send_message(USER, "x")).text == "x"
    assert [c.status for c in telegram.calls] == [500, 500, 502, 400, 403, 200]


async def test_hang_next_delays_until_the_client_gives_up(telegram: FakeTelegram, bot: Bot) -> None:
    telegram.hang_next("getMe", 5)

    started = time.monotonic()
    with pytest.raises(TelegramNetworkError, match="timeout"):
        await bot(GetMe(), request_timeout=1)

    assert time.monotonic() - started < 3
    assert (await bot.get_me()).id == bot.id


async def test_blocked_chats_answer_403(telegram: FakeTelegram, bot: Bot) -> None:
    telegram.blocked_chats.add(USER)

    with pytest.raises(TelegramForbiddenError, match="Forbidden: bot was blocked by the user"):
        await bot.send_message(USER, "Вы тут?")


# --- getUpdates and webhooks ----------------------------------------------------------------------


async def test_long_polling_returns_a_queued_update_at_once_and_offset_confirms_it(
    telegram: FakeTelegram, bot: Bot
) -> None:
    poll = asyncio.create_task(bot.get_updates(offset=0, timeout=10))
    (waiting,) = await telegram.await_call(lambda c: c.method == "getUpdates", timeout=5)
    await asyncio.sleep(0.1)
    assert not poll.done()  # long polling waits for an update...
    assert waiting.status == 0 and waiting.params["timeout"] == "10"  # ...and is visible in calls meanwhile

    started = time.monotonic()
    telegram.queue_update(message_update(41, user_id=USER, text="/start"))
    updates = await asyncio.wait_for(poll, timeout=5)

    assert time.monotonic() - started < 2
    assert [type(u) for u in updates] == [Update]
    assert updates[0].update_id == 41
    assert updates[0].message is not None and updates[0].message.text == "/start"
    assert len(await bot.get_updates(offset=0, timeout=0)) == 1  # not confirmed yet: delivered again
    assert await bot.get_updates(offset=42, timeout=0) == []
    assert telegram.pending_updates() == []


async def test_get_updates_honours_limit_timeout_and_negative_offset(telegram: FakeTelegram, bot: Bot) -> None:
    for update_id in (1, 2, 3):
        telegram.queue_update(message_update(update_id, user_id=USER, text=f"#{update_id}"))

    assert [u.update_id for u in await bot.get_updates(limit=2)] == [1, 2]
    assert [u.update_id for u in await bot.get_updates(offset=-1)] == [3]
    assert [u["update_id"] for u in telegram.pending_updates()] == [3]

    started = time.monotonic()
    assert await bot.get_updates(offset=4, timeout=1) == []
    assert 0.9 < time.monotonic() - started < 3


async def test_a_second_poller_terminates_the_first(telegram: FakeTelegram, bot: Bot) -> None:
    first = asyncio.create_task(bot.get_updates(timeout=10))
    await asyncio.sleep(0.2)
    second = asyncio.create_task(bot.get_updates(timeout=1))

    with pytest.raises(TelegramConflictError, match="terminated by other getUpdates request"):
        await asyncio.wait_for(first, timeout=5)
    assert await second == []


async def test_webhook_is_recorded_and_blocks_get_updates(telegram: FakeTelegram, bot: Bot) -> None:
    telegram.queue_update(message_update(1, user_id=USER, text="старое"))

    assert await bot.set_webhook(
        "https://bot.bank.example/telegram/webhook",
        secret_token="s3cr3t_token-1",
        allowed_updates=["message", "callback_query"],
        drop_pending_updates=True,
    )
    info = await bot.get_webhook_info()
    with pytest.raises(TelegramConflictError, match="webhook is active"):
        await bot.get_updates()
    with pytest.raises(TelegramBadRequest, match="An HTTPS URL must be provided"):
        await bot.set_webhook("http://127.0.0.1:8080/telegram/webhook")
    with pytest.raises(TelegramBadRequest, match="secret token contains unallowed characters"):
        await bot.set_webhook("https://bot.bank.example/hook", secret_token="base64+/=")
    assert await bot.delete_webhook()

    assert telegram.webhook is None
    assert (info.url, info.pending_update_count, info.allowed_updates) == (
        "https://bot.bank.example/telegram/webhook",
        0,  # drop_pending_updates dropped the queued update
        ["message", "callback_query"],
    )
    set_call = telegram.calls_of("setWebhook")[0]
    assert set_call.params["secret_token"] == "s3cr3t_token-1"
    assert set_call.params["drop_pending_updates"] == "true"
    assert (await bot.get_webhook_info()).url == ""


# --- edits, actions, callbacks --------------------------------------------------------------------


async def test_edit_message_text(telegram: FakeTelegram, bot: Bot) -> None:
    sent = await bot.send_message(USER, "Ищу ответ…", reply_markup=_keyboard())

    edited = await bot.edit_message_text(
        "<b>Ответ</b>: бесплатно", chat_id=USER, message_id=sent.message_id, parse_mode="HTML"
    )

    assert not isinstance(edited, bool)
    assert (edited.message_id, edited.text, edited.reply_markup) == (sent.message_id, "Ответ: бесплатно", None)
    assert edited.edit_date is not None
    assert [(s.method, s.text) for s in telegram.messages_to(USER)] == [
        ("sendMessage", "Ищу ответ…"),
        ("editMessageText", "Ответ: бесплатно"),
    ]
    with pytest.raises(TelegramBadRequest, match="message is not modified"):
        await bot.edit_message_text(
            "<b>Ответ</b>: бесплатно", chat_id=USER, message_id=sent.message_id, parse_mode="HTML"
        )
    with pytest.raises(TelegramBadRequest, match="message to edit not found"):
        await bot.edit_message_text("x", chat_id=USER, message_id=999)
    with pytest.raises(TelegramBadRequest, match="can't parse entities"):
        await bot.edit_message_text("<p>x</p>", chat_id=USER, message_id=sent.message_id, parse_mode="HTML")


async def test_edit_reply_markup_and_user_messages_cannot_be_edited(telegram: FakeTelegram, bot: Bot) -> None:
    sent = await bot.send_message(USER, "Оцените ответ", reply_markup=_keyboard())
    telegram.queue_update(message_update(50, user_id=USER, text="Спасибо"))

    edited = await bot.edit_message_reply_markup(chat_id=USER, message_id=sent.message_id)

    assert not isinstance(edited, bool) and edited.reply_markup is None
    with pytest.raises(TelegramBadRequest, match="message is not modified"):
        await bot.edit_message_reply_markup(chat_id=USER, message_id=sent.message_id)
    with pytest.raises(TelegramBadRequest, match="message can't be edited"):
        await bot.edit_message_text("x", chat_id=USER, message_id=50)


async def test_send_chat_action(telegram: FakeTelegram, bot: Bot) -> None:
    assert await bot.send_chat_action(USER, "typing") is True
    with pytest.raises(TelegramBadRequest, match="wrong parameter action"):
        await bot.send_chat_action(USER, "thinking")

    assert telegram.calls_of("sendChatAction")[0].params == {"chat_id": str(USER), "action": "typing"}


async def test_answer_callback_query_is_recorded_once(telegram: FakeTelegram, bot: Bot) -> None:
    message = await bot.send_message(USER, "Помогло?", reply_markup=_keyboard())
    stored = telegram.stored_message(USER, message.message_id)
    assert stored is not None
    update = telegram.queue_update(callback_update(60, user_id=USER, data="yes", message=stored))
    query_id = update["callback_query"]["id"]

    assert await bot.answer_callback_query(query_id, text="Спасибо за оценку!", show_alert=True) is True
    with pytest.raises(TelegramBadRequest, match="query is too old"):
        await bot.answer_callback_query(query_id)

    answer = telegram.callback_answers[0]
    assert (answer.callback_query_id, answer.text, answer.show_alert) == (query_id, "Спасибо за оценку!", True)


# --- waiting --------------------------------------------------------------------------------------


async def test_await_for_sees_messages_sent_meanwhile(telegram: FakeTelegram, bot: Bot) -> None:
    async def later() -> None:
        await asyncio.sleep(0.2)
        await bot.send_message(USER, "первое")
        await bot.send_message(USER, "второе")

    task = asyncio.create_task(later())
    found = await telegram.await_for(lambda m: m.chat_id == USER, timeout=5, count=2)
    await task

    assert [m.text for m in found] == ["первое", "второе"]
    with pytest.raises(AssertionError, match="первое"):  # the failure shows what was seen
        await telegram.await_for(lambda m: m.text == "третье", timeout=0.1)


def test_wait_for_blocks_until_a_thread_sends(telegram: FakeTelegram) -> None:
    def send() -> None:
        time.sleep(0.2)
        httpx.post(f"{telegram.url}/bot{telegram.token}/sendMessage", data={"chat_id": "3", "text": "из потока"})

    threading.Thread(target=send, daemon=True).start()
    found = telegram.wait_for(lambda m: m.text == "из потока", timeout=5)

    assert isinstance(found[0], SentMessage) and found[0].chat_id == 3
    with pytest.raises(AssertionError, match="no 1 matching sent message"):
        telegram.wait_for(lambda m: m.chat_id == 4, timeout=0.1)


# --- update builders ------------------------------------------------------------------------------


async def test_builders_produce_updates_aiogram_accepts(telegram: FakeTelegram, bot: Bot) -> None:
    command = Update.model_validate(
        message_update(1, user_id=USER, text="/start@perimeter_test_bot ref", username="ivan"), context={"bot": bot}
    )
    group = Update.model_validate(
        message_update(
            2,
            user_id=USER,
            text="Вопрос",
            chat_id=-100555,
            chat_type="supergroup",
            message_thread_id=17,
            language_code="en",
        ),
        context={"bot": bot},
    )
    bot_message = await bot.send_message(USER, "Помогло?", reply_markup=_keyboard())
    stored = telegram.stored_message(USER, bot_message.message_id)
    assert stored is not None
    press = Update.model_validate(callback_update(3, user_id=USER, data="no", message=stored), context={"bot": bot})
    own_contact = Update.model_validate(
        contact_update(4, user_id=USER, phone_number="+79161234567"), context={"bot": bot}
    )
    typed_contact = Update.model_validate(
        contact_update(5, user_id=USER, phone_number="79160000000", with_user_id=False), context={"bot": bot}
    )
    reply = Update.model_validate(message_update(6, user_id=USER, text="Нет", reply_to=stored), context={"bot": bot})

    assert command.message is not None and command.message.from_user is not None
    assert (command.message.chat.type, command.message.chat.id, command.message.from_user.language_code) == (
        "private",
        USER,
        "ru",
    )
    assert [(e.type, e.offset, e.length) for e in command.message.entities or []] == [("bot_command", 0, 25)]
    assert group.message is not None
    assert (group.message.chat.type, group.message.chat.is_forum, group.message.message_thread_id) == (
        "supergroup",
        True,
        17,
    )
    assert group.message.is_topic_message is True
    assert press.callback_query is not None and press.callback_query.data == "no"
    assert (
        press.callback_query.message is not None and press.callback_query.message.message_id == bot_message.message_id
    )
    assert own_contact.message is not None and own_contact.message.contact is not None
    assert (own_contact.message.contact.phone_number, own_contact.message.contact.user_id) == ("+79161234567", USER)
    assert typed_contact.message is not None and typed_contact.message.contact is not None
    assert typed_contact.message.contact.user_id is None
    assert reply.message is not None and reply.message.reply_to_message is not None
    assert reply.message.reply_to_message.message_id == bot_message.message_id


async def test_queued_updates_arrive_through_aiogram_polling(telegram: FakeTelegram, bot: Bot) -> None:
    telegram.queue_update(message_update(telegram.next_update_id(), user_id=USER, text="привет"))
    telegram.queue_update(contact_update(telegram.next_update_id(), user_id=USER, phone_number="+79161234567"))

    updates = await bot.get_updates(timeout=1)

    assert [u.update_id for u in updates] == [1, 2]
    assert updates[1].message is not None and updates[1].message.contact is not None


async def test_a_dispatcher_polls_answers_and_stops(telegram: FakeTelegram, bot: Bot) -> None:
    dispatcher = Dispatcher()

    @dispatcher.message(CommandStart())
    async def greet(message: Message) -> None:
        await message.answer("<b>Здравствуйте!</b> Чем помочь?", parse_mode="HTML", reply_markup=_keyboard())

    @dispatcher.callback_query()
    async def pressed(query: CallbackQuery) -> None:
        await query.answer("Принято")

    polling = asyncio.create_task(
        dispatcher.start_polling(bot, polling_timeout=1, handle_signals=False, close_bot_session=False)
    )
    telegram.queue_update(message_update(telegram.next_update_id(), user_id=USER, text="/start"))
    (greeting,) = await telegram.await_for(lambda m: m.chat_id == USER)
    greeting_message = telegram.stored_message(USER, greeting.message_id)
    assert greeting_message is not None
    press = callback_update(telegram.next_update_id(), user_id=USER, data="yes", message=greeting_message)
    telegram.queue_update(press)
    await telegram.await_call(lambda c: c.method == "answerCallbackQuery" and c.status == 200)
    await dispatcher.stop_polling()
    await asyncio.wait_for(polling, timeout=5)

    assert (greeting.text, greeting.parse_mode) == ("Здравствуйте! Чем помочь?", "HTML")
    assert [a.text for a in telegram.callback_answers] == ["Принято"]
    assert telegram.calls_of("getMe")  # aiogram's polling starts by asking who it is


# --- the HTML parser itself -----------------------------------------------------------------------


def test_parse_html_entities_follow_telegram() -> None:
    text, entities = parse_html(
        '<pre><code class="language-python">x = 1</code></pre>\n<a href="https://bank.example/?a=1&amp;b=2">тарифы</a> '
        "<blockquote expandable>длинная цитата</blockquote><tg-spoiler>секрет</tg-spoiler>"
    )

    assert text == "x = 1\nтарифы длинная цитатасекрет"
    assert entities == [
        {"type": "pre", "offset": 0, "length": 5, "language": "python"},
        {"type": "text_link", "offset": 6, "length": 6, "url": "https://bank.example/?a=1&b=2"},
        {"type": "expandable_blockquote", "offset": 13, "length": 14},
        {"type": "spoiler", "offset": 27, "length": 6},
    ]
    assert parse_html("&lt;&gt;&amp;&quot;&#1071;&#x44F;") == ('<>&"Яя', [])
    assert parse_html("Tom & Jerry &nbsp;", strict_entities=False) == ("Tom & Jerry &nbsp;", [])


async def test_non_strict_entities_behave_like_telegram(telegram: FakeTelegram, bot: Bot) -> None:
    telegram.strict_entities = False

    message = await bot.send_message(USER, "AT&T <b>&nbsp;ok</b>", parse_mode="HTML")

    assert message.text == "AT&T &nbsp;ok"


async def test_unsupported_parse_mode(bot: Bot) -> None:
    with pytest.raises(TelegramBadRequest, match="unsupported parse_mode"):
        await bot.send_message(USER, "x", parse_mode="Textile")


async def test_unknown_method_through_aiogram_is_not_found(telegram: FakeTelegram, bot: Bot) -> None:
    with pytest.raises(TelegramNotFound, match="method not found"):
        await bot.send_dice(USER)
    assert telegram.calls[-1].method == "sendDice"
