"""aiogram handlers: who is writing, what they want, which service does it. Nothing else.

Three audiences share the bot: customers in private chats, operators in the operator chat
(a group, optionally a forum topic), and operators in their own private chat with the bot.
Replies are never sent from here directly but queued by the services (the outbox sends
them exactly once); only the ephemeral bits — the typing indicator and the answer to a
button press — go straight to the Bot API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from aiogram import Bot, F, Router
from aiogram.enums import ChatType
from aiogram.exceptions import TelegramAPIError
from aiogram.filters import Command, CommandObject
from aiogram.types import CallbackQuery, Message, User

from bot.conversations import ConversationService, Sender
from bot.i18n import pick_language, t
from bot.operators import OperatorService
from bot.tickets import Operator

log = logging.getLogger(__name__)

CUSTOMER_COMMANDS = ("start", "help", "lang", "new", "operator")


def sender_of(user: User, chat_id: int) -> Sender:
    return Sender(channel="telegram", external_id=str(user.id), chat_id=chat_id, display_name=user.full_name,
                  username=user.username, language_code=user.language_code)


def sender_from_payload(payload: dict[str, Any]) -> Sender | None:
    """The customer behind a raw update (for the failure path, where aiogram may not have parsed it)."""
    message = payload.get("message") or payload.get("edited_message") or {}
    user, chat = message.get("from") or {}, message.get("chat") or {}
    if not user or chat.get("type") != "private":
        callback = payload.get("callback_query") or {}
        user = callback.get("from") or {}
        chat = {"id": user.get("id")} if user else {}
    if "id" not in user or chat.get("id") is None:
        return None
    name = " ".join(p for p in (user.get("first_name"), user.get("last_name")) if p) or str(user["id"])
    return Sender(channel="telegram", external_id=str(user["id"]), chat_id=int(chat["id"]), display_name=name,
                  username=user.get("username"), language_code=user.get("language_code"))


def operator_of(user: User) -> Operator:
    return Operator(id=str(user.id), name=user.full_name)


def typing_indicator(bot: Bot, chat_id: int, thread_id: int | None = None) -> Callable[
        [], AbstractAsyncContextManager[None]]:
    """«печатает…» every 4.5 s while the model works; failures to show it are ignored."""

    @contextlib.asynccontextmanager
    async def typing() -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                with contextlib.suppress(TelegramAPIError, OSError, asyncio.TimeoutError):
                    await bot.send_chat_action(chat_id=chat_id, action="typing", message_thread_id=thread_id)
                await asyncio.sleep(4.5)

        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            task.cancel()

    return typing


async def _answer_callback(query: CallbackQuery, text: str | None = None, *, alert: bool = False) -> None:
    # A re-processed update may answer a query Telegram already considers old: that is fine.
    with contextlib.suppress(TelegramAPIError):
        await query.answer(text=text, show_alert=alert)


def build_router(customers: ConversationService, operators: OperatorService) -> Router:
    router = Router(name="perimeter")
    desk = operators.desk

    def in_operator_chat(message: Message) -> bool:
        return desk.chat_id is not None and message.chat.id == desk.chat_id

    def from_operator(user: User | None) -> bool:
        return user is not None and desk.is_operator(user.id)

    # --- the operator chat ---------------------------------------------------------------------
    @router.message(F.chat.func(lambda chat: desk.chat_id is not None and chat.id == desk.chat_id))
    async def operator_chat(message: Message, bot: Bot, event_id: int) -> None:
        if not from_operator(message.from_user) or not message.text:
            return  # other people or service messages in the group: not ours to answer
        await _operator_message(message, bot, event_id)

    # --- operators in their private chat --------------------------------------------------------
    @router.message(F.chat.type == ChatType.PRIVATE, F.from_user.func(lambda u: desk.is_operator(u.id)))
    async def operator_private(message: Message, bot: Bot, event_id: int) -> None:
        if not message.text:
            return
        await _operator_message(message, bot, event_id)

    async def _operator_message(message: Message, bot: Bot, event_id: int) -> None:
        assert message.from_user is not None and message.text is not None
        chat_id, thread = message.chat.id, message.message_thread_id if message.is_topic_message else None
        text = message.text.strip()
        op = operator_of(message.from_user)
        lang = desk.language
        command, _, rest = text.partition(" ")
        command = command.split("@", 1)[0].lower()
        if command == "/queue":
            await operators.notify(event_id, chat_id, await operators.queue_listing(), thread_id=thread)
            return
        if command in ("/start", "/help"):
            await operators.notify(event_id, chat_id, t(lang, "operator_help"), thread_id=thread)
            return
        replied = message.reply_to_message
        if replied is not None and replied.from_user is not None and replied.from_user.id == bot.id:
            outcome = await operators.reply(event_id, chat_id, replied.message_id, op, message.text)
            if outcome is None:
                await operators.notify(event_id, chat_id, t(lang, "reply_to_unknown"), thread_id=thread,
                                       reply_to=message.message_id)
            elif not outcome.sent:
                await operators.notify(event_id, chat_id, outcome.refusal or "", thread_id=thread,
                                       reply_to=message.message_id)
            else:
                assert outcome.ticket is not None
                await operators.notify(event_id, chat_id, t(lang, "reply_sent", ticket_id=outcome.ticket.id),
                                       thread_id=thread, reply_to=message.message_id)
            return
        if command == "/ask" or (message.chat.type == ChatType.PRIVATE and not text.startswith("/")):
            question = rest if command == "/ask" else text
            if question.strip():
                await operators.ask(event_id, chat_id, question, thread_id=thread, reply_to=message.message_id,
                                    typing=typing_indicator(bot, chat_id, thread))
            return
        if in_operator_chat(message):
            return  # ordinary chatter among operators

    # --- customers -------------------------------------------------------------------------------
    @router.message(F.chat.type == ChatType.PRIVATE, Command(*CUSTOMER_COMMANDS))
    async def customer_command(message: Message, command: CommandObject, event_id: int) -> None:
        assert message.from_user is not None
        await customers.command(event_id, sender_of(message.from_user, message.chat.id), command.command.lower(),
                                command.args or "")

    @router.message(F.chat.type == ChatType.PRIVATE, F.text)
    async def customer_text(message: Message, bot: Bot, event_id: int, received: float | None = None) -> None:
        assert message.from_user is not None and message.text is not None
        await customers.handle_text(event_id, sender_of(message.from_user, message.chat.id), message.text,
                                    typing=typing_indicator(bot, message.chat.id), received=received)

    @router.message(F.chat.type == ChatType.PRIVATE, F.contact)
    async def customer_contact(message: Message, event_id: int) -> None:
        """A shared contact: verification. Telegram sets contact.user_id only for a real contact
        card; the number must also be the sender's own (the button shares exactly that)."""
        assert message.from_user is not None and message.contact is not None
        contact = message.contact
        await customers.verify_contact(event_id, sender_of(message.from_user, message.chat.id), contact.phone_number,
                                       str(contact.user_id) if contact.user_id is not None else None)

    @router.message(F.chat.type == ChatType.PRIVATE)
    async def customer_other(message: Message, event_id: int) -> None:
        """Photos, stickers, voice…: say what the bot understands."""
        assert message.from_user is not None
        await customers.command(event_id, sender_of(message.from_user, message.chat.id), "unsupported")

    # --- buttons ---------------------------------------------------------------------------------
    # Ids are at most 18 ASCII digits (\d would also take '٣'): a longer one cannot be a row's id and
    # overflows the database's BIGINT, so such data falls through to stale_button like any stale button.
    @router.callback_query(F.data.regexp(r"^(claim|resolve|draft):[0-9]{1,18}$"))
    async def operator_button(query: CallbackQuery, event_id: int) -> None:
        assert query.data is not None
        if not from_operator(query.from_user):
            await _answer_callback(query, t(desk.language, "not_an_operator"), alert=True)
            return
        action, ticket_id = query.data.split(":")[0], int(query.data.split(":")[1])
        op, lang = operator_of(query.from_user), desk.language
        if action == "claim":
            claim = await operators.claim(ticket_id, op, private_chat=query.from_user.id)
            if claim.won:
                await _answer_callback(query, t(lang, "claimed_by", name=op.name, ticket_id=ticket_id))
            else:
                await _answer_callback(query, t(lang, "claim_lost", ticket_id=ticket_id, name=claim.holder or "?"),
                                       alert=True)
            return
        outcome = (await operators.resolve(ticket_id, op) if action == "resolve"
                   else await operators.send_draft(event_id, ticket_id, op))
        if outcome.sent:
            key = "ticket_closed" if action == "resolve" else "reply_sent"
            await _answer_callback(query, t(lang, key, ticket_id=ticket_id, name=op.name))
        else:
            await _answer_callback(query, outcome.refusal, alert=True)

    @router.callback_query(F.data.regexp(r"^(fb:[0-9]{1,18}:-?1|op:[0-9]{1,18}|help:[0-9]{1,18})$"))
    async def customer_button(query: CallbackQuery, event_id: int) -> None:
        assert query.data is not None
        chat_id = query.message.chat.id if query.message is not None else query.from_user.id
        sender = sender_of(query.from_user, chat_id)
        parts = query.data.split(":")
        lang = pick_language(query.from_user.language_code)
        if parts[0] == "fb":
            value = int(parts[2])
            ok = await customers.feedback(event_id, sender, int(parts[1]), value)
            await _answer_callback(query, t(lang, "feedback_thanks_up") if ok and value > 0 else None)
            return
        await customers.request_person(event_id, sender, int(parts[1]), after_negative=parts[0] == "help")
        await _answer_callback(query)

    @router.callback_query()
    async def stale_button(query: CallbackQuery) -> None:
        await _answer_callback(query)

    return router

