"""RedactingChat in front of OpenAICompatibleChat, against a real OpenAI-compatible server on loopback.

What the server records is what would have left the network: none of the customer's values
may be in it, in any spelling; what the caller gets back has them restored.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing

import httpx
import pytest

from crm_adapters.base import CustomerContext, CustomerRef, Value
from rag.errors import BackendUnavailable
from rag.llm.base import ChatMessage, ChatModel, ChatOptions, ChatResult, StreamEvent
from rag.llm.limiter import ConcurrencyLimiter
from rag.llm.openai_chat import OpenAICompatibleChat
from rag.perimeter import PLACEHOLDER_INSTRUCTIONS, RedactingChat
from tests.support.fake_llm_servers import FakeLLMServer, RecordedRequest

FAST = ChatOptions(max_tokens=512, timeout_s=5)


def with_luhn(body: str) -> str:
    total = 0
    for index, char in enumerate(reversed(body)):
        value = int(char) * (2 if index % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return body + str((10 - total % 10) % 10)


CARD = with_luhn("427638001234567")
CARD_SPACED = " ".join(CARD[i : i + 4] for i in range(0, 16, 4))
NAME = "Петров Пётр Сергеевич"
PHONE = "+7 (916) 123-45-67"
EMAIL = "petr.petrov@example.ru"
INN = "500100732259"
SNILS = "112-233-445 95"
PASSPORT = "45 06 123456"
ACCOUNT = "40817810099910004312"

CONTEXT = CustomerContext(
    customer=CustomerRef("demo", "42"),
    name=Value("name", "ФИО", NAME, "personal"),
    phones=(Value("phone", "Телефон", PHONE, "personal"),),
    emails=(Value("email", "E-mail", EMAIL, "personal"),),
    values=(Value("segment", "Сегмент", "премиум", "public"),),
)

SYSTEM = (
    "Ты — помощник банка. " + PLACEHOLDER_INSTRUCTIONS["ru"] + "\n"
    f"Клиент: {NAME}, телефон {PHONE}, e-mail {EMAIL}, сегмент: премиум."
)
QUESTION = (
    f"Здравствуйте, это Петров. Карта {CARD_SPACED} не работает, перезвоните на 8-916-123-45-67. "
    f"Мой ИНН {INN}, СНИЛС {SNILS}, паспорт {PASSPORT}, счёт {ACCOUNT}. "
    "Hi, it's Mr. Petrov again: my card number is " + CARD + "."
)
MESSAGES = [
    ChatMessage("system", SYSTEM),
    ChatMessage("user", "Сколько стоит обслуживание?"),
    ChatMessage("assistant", f"Для вас, {NAME}, обслуживание бесплатно."),
    ChatMessage("user", QUESTION),
]

RAW_VALUES = [NAME, "Петров", "Пётр", "Petrov", PHONE, "8-916-123-45-67", EMAIL, CARD, CARD_SPACED, INN, SNILS]
RAW_VALUES += [PASSPORT, ACCOUNT]
DIGIT_FORMS = ["79161234567", "9161234567", CARD, INN, "11223344595", "4506123456", ACCOUNT]

REPLY = (
    "Уважаемый [NAME_1]! Карта [CARD_1] заблокирована по вашему звонку. Мы перезвоним на [PHONE_1] "
    "и напишем на [EMAIL_1]. Данные: ИНН [INN_1], СНИЛС [SNILS_1], паспорт [PASSPORT_1], счёт [ACCOUNT_1]."
)
RESTORED = (
    f"Уважаемый {NAME}! Карта {CARD_SPACED} заблокирована по вашему звонку. Мы перезвоним на {PHONE} "
    f"и напишем на {EMAIL}. Данные: ИНН {INN}, СНИЛС {SNILS}, паспорт {PASSPORT}, счёт {ACCOUNT}."
)


def known_values() -> list[str]:
    """What the caller knows to be personal: every non-public value of the customer's context."""
    return [v.value for v in CONTEXT.all_values() if v.sensitivity != "public"]


def make_chat(server: FakeLLMServer) -> OpenAICompatibleChat:
    return OpenAICompatibleChat(httpx.AsyncClient(base_url=server.url), "fake-model", ConcurrencyLimiter(2, 4))


@pytest.fixture
async def chat(fake_llm_server: FakeLLMServer) -> AsyncIterator[RedactingChat]:
    fake_llm_server.behaviour.reply = REPLY
    model = RedactingChat(make_chat(fake_llm_server), known_values=known_values)
    yield model
    await model.aclose()


def sent_contents(server: FakeLLMServer) -> tuple[RecordedRequest, str, list[str]]:
    (request,) = server.generation_requests()
    body = json.dumps(request.body, ensure_ascii=False)
    return request, body, [m["content"] for m in request.body["messages"]]


def assert_nothing_personal_left(server: FakeLLMServer) -> None:
    request, body, contents = sent_contents(server)
    lowered = body.lower()
    for value in RAW_VALUES:
        assert value.lower() not in lowered, value
        assert value.lower().replace("ё", "е") not in lowered.replace("ё", "е"), value
    all_digits = re.sub(r"\D", "", "".join(contents))
    for digits in DIGIT_FORMS:
        assert digits not in body, digits
        assert digits not in all_digits, digits
    # what the model does get: placeholders, one per value, the same across all messages
    for token in ("[NAME_1]", "[PHONE_1]", "[EMAIL_1]", "[CARD_1]", "[INN_1]", "[SNILS_1]", "[PASSPORT_1]"):
        assert token in body, token
    assert "[ACCOUNT_1]" in contents[3]
    assert "[PHONE_2]" not in body and "[NAME_2]" not in body and "[CARD_2]" not in body
    assert contents[2] == "Для вас, [NAME_1], обслуживание бесплатно."
    assert "сегмент: премиум" in contents[0]  # public values are not redacted
    assert [m["role"] for m in request.body["messages"]] == ["system", "user", "assistant", "user"]


async def test_complete_sends_no_personal_data_and_restores_the_answer(
    chat: RedactingChat, fake_llm_server: FakeLLMServer
) -> None:
    assert isinstance(chat, ChatModel)
    assert (chat.name, chat.backend) == ("fake-model", "openai")

    result = await chat.complete(MESSAGES, FAST)

    assert_nothing_personal_left(fake_llm_server)
    assert result.text == RESTORED
    assert result.usage.backend == "openai"
    assert result.finish_reason == "stop"


async def test_stream_restores_word_by_word_deltas(chat: RedactingChat, fake_llm_server: FakeLLMServer) -> None:
    events = [event async for event in chat.stream(MESSAGES, FAST)]

    assert_nothing_personal_left(fake_llm_server)
    deltas = [e.delta for e in events if not e.done]
    assert len(deltas) > 20
    assert "".join(deltas) == RESTORED
    assert events[-1].done and events[-1].result is not None
    assert events[-1].result.text == RESTORED
    assert not any("[" in d or "_1" in d for d in deltas)


async def test_stream_holds_placeholders_split_across_server_deltas(
    chat: RedactingChat, fake_llm_server: FakeLLMServer
) -> None:
    # The fake streams word by word, so padded placeholders arrive as «[», « PHONE_1», « ]».
    fake_llm_server.behaviour.reply = "Звоним на [ PHONE_1 ] и пишем на [[ EMAIL_1 ]] , карта \\[ CARD_1 \\] ."
    fake_llm_server.behaviour.tokens_per_second = 200

    events = [event async for event in chat.stream(MESSAGES, FAST)]

    deltas = [e.delta for e in events if not e.done]
    expected = f"Звоним на {PHONE} и пишем на {EMAIL} , карта {CARD_SPACED} ."
    assert "".join(deltas) == expected
    assert events[-1].result is not None and events[-1].result.text == expected
    for value in (PHONE, EMAIL, CARD_SPACED):
        assert any(value in d for d in deltas), value  # each value in one delta, whole
    assert not any(re.search(r"\[|PHONE|EMAIL|CARD", d) for d in deltas)


class Rechunked:
    """Passes a real model's stream on in pieces of 1–3 characters, as some servers send them."""

    def __init__(self, inner: ChatModel) -> None:
        self._inner = inner
        self.name = inner.name
        self.backend = inner.backend

    async def complete(self, messages: Sequence[ChatMessage], options: ChatOptions) -> ChatResult:
        return await self._inner.complete(messages, options)

    async def stream(self, messages: Sequence[ChatMessage], options: ChatOptions) -> AsyncGenerator[StreamEvent, None]:
        size = 0
        async with aclosing(self._inner.stream(messages, options)) as events:  # type: ignore[type-var]
            async for event in events:
                text = event.delta
                while text:
                    size = size % 3 + 1
                    yield StreamEvent(delta=text[:size])
                    text = text[size:]
                if event.done:
                    yield event

    async def health(self) -> bool:
        return await self._inner.health()

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_stream_with_tiny_deltas_never_prints_half_a_value(fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.behaviour.reply = REPLY
    chat = RedactingChat(Rechunked(make_chat(fake_llm_server)), known_values=known_values)

    events = [event async for event in chat.stream(MESSAGES, FAST)]
    await chat.aclose()

    assert_nothing_personal_left(fake_llm_server)
    deltas = [e.delta for e in events if not e.done]
    assert "".join(deltas) == RESTORED
    assert events[-1].result is not None and events[-1].result.text == RESTORED
    for value in (NAME, CARD_SPACED, PHONE, EMAIL, INN, SNILS, PASSPORT, ACCOUNT):
        assert sum(value in d for d in deltas) == 1, value
    # Outside placeholders the text still flows in small pieces: nothing waits for the end.
    assert sum(len(d) <= 3 for d in deltas) > 50
    assert not any(re.search(r"\[|_\d", d) for d in deltas)


async def test_each_call_has_its_own_placeholders(chat: RedactingChat, fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.behaviour.reply = "Номер [PHONE_1], второй [PHONE_2]."
    first = await chat.complete([ChatMessage("user", "мой номер +7 903 000-00-01 и +7 903 000-00-02")], FAST)
    second = await chat.complete([ChatMessage("user", "номер 8 903 000 00 02")], FAST)

    assert first.text == "Номер +7 903 000-00-01, второй +7 903 000-00-02."
    assert second.text == "Номер 8 903 000 00 02, второй [PHONE_2]."  # unknown to that call: left as is
    bodies = [r.body["messages"][0]["content"] for r in fake_llm_server.generation_requests()]
    assert bodies == ["мой номер [PHONE_1] и [PHONE_2]", "номер [PHONE_1]"]


async def test_errors_pass_through(chat: RedactingChat, fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.behaviour.status = 503
    with pytest.raises(BackendUnavailable, match="HTTP 503"):
        await chat.complete(MESSAGES, FAST)
    with pytest.raises(BackendUnavailable):
        async for _ in chat.stream(MESSAGES, FAST):
            pass
    assert not await chat.health()
    fake_llm_server.behaviour.status = None
    assert await chat.health()
