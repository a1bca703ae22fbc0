"""A real HTTP server on 127.0.0.1 that speaks the Telegram Bot API methods Perimeter's bot uses.

The bot is tested against actual sockets rather than mocks of aiogram: point aiogram at this
server through its configurable API server and the production code path runs unchanged — form
encoding, JSON decoding, and the mapping of Telegram's errors onto ``TelegramBadRequest``,
``TelegramRetryAfter`` and friends::

    server = FakeTelegram().start()
    session = AiohttpSession(api=TelegramAPIServer.from_base(server.url))
    bot = Bot(server.token, session=session)

What it answers, the way Telegram does (``{"ok": true, "result": ...}`` or
``{"ok": false, "error_code": N, "description": "...", "parameters": {...}}``):

- ``getMe``; ``getUpdates`` (offset confirms, long polling with ``timeout``, ``limit``,
  ``allowed_updates``, 409 when a second poller or a webhook is active); ``setWebhook``,
  ``deleteWebhook``, ``getWebhookInfo``;
- ``sendMessage`` and ``editMessageText``, which parse ``parse_mode=HTML`` with TDLib's rules and
  error messages (see ``parse_html``), enforce the 4096-character limit after parsing, validate inline
  keyboards and return full ``Message`` objects; ``editMessageReplyMarkup``; ``sendChatAction``;
  ``answerCallbackQuery``; ``createForumTopic``.

Requests may be multipart/form-data, application/x-www-form-urlencoded (what aiogram's
``AiohttpSession`` sends when no file is attached) or application/json, with parameters in the query
string too; method names are case-insensitive, as on Telegram.

Script failures with ``fail_next`` and slowness with ``hang_next``; feed updates with ``queue_update``
and the module-level builders (``message_update``, ``callback_update``, ``contact_update``); read
``sent``, ``calls`` and ``callback_answers``, or wait for them with ``wait_for`` (blocking, for
synchronous tests) and ``await_for`` (for tests whose bot runs on the same event loop).

Deliberate differences from Telegram, each to keep tests honest or simple:

- ``strict_entities`` (default on): a ``&`` that does not start ``&lt;``, ``&gt;``, ``&amp;``,
  ``&quot;`` or a numeric reference is refused with "can't parse entities". Telegram shows such text
  literally, but it means the bot forgot to escape, and the same bug breaks on the next ``<``.
- A reply to a message the server never saw gets a minimal ``reply_to_message`` stub unless
  ``strict_replies`` is set (Telegram: "message to be replied not found"); tests often feed updates to
  the dispatcher directly rather than through ``queue_update``.
- Markdown parse modes are accepted but not parsed; URLs, mentions and commands in outgoing text
  do not become entities; webhooks are recorded, never called.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import email.policy
import json
import re
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import collapse_rfc2231_value
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

DEFAULT_TOKEN = "123456:TEST-TOKEN"
MAX_MESSAGE_LENGTH = 4096  # characters of the text after entity parsing and trimming
MAX_CALLBACK_DATA_BYTES = 64
DEFAULT_TOPIC_ICON_COLOR = 0x6FB9F0
CHAT_ACTIONS = frozenset(
    {
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    }
)
INLINE_BUTTON_ACTIONS = (
    "url",
    "callback_data",
    "web_app",
    "login_url",
    "switch_inline_query",
    "switch_inline_query_current_chat",
    "switch_inline_query_chosen_chat",
    "copy_text",
    "callback_game",
    "pay",
)
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are exactly the same "
    "as a current content and reply markup of the message"
)
NGINX_BAD_GATEWAY = (
    "<html>\r\n<head><title>{status} {phrase}</title></head>\r\n<body>\r\n<center><h1>{status} {phrase}</h1></center>"
    "\r\n<hr><center>nginx/1.18.0</center>\r\n</body>\r\n</html>\r\n"
)

T = TypeVar("T")


# --- records ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SentMessage:
    """A message the bot sent or edited successfully, as the user would now see it.

    ``text`` is the plain text after HTML parsing and trimming; ``source_text`` is what the bot sent.
    ``reply_markup`` is the parsed markup as sent (reply keyboards included, though Telegram echoes only
    inline keyboards back in the ``Message``).
    """

    chat_id: int
    message_id: int
    text: str
    parse_mode: str | None
    reply_markup: dict[str, Any] | None
    message_thread_id: int | None
    reply_to_message_id: int | None
    at: float  # time.monotonic()
    method: str  # "sendMessage" or "editMessageText"
    source_text: str = ""
    entities: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class ApiCall:
    """One request as the server saw it. ``params`` are raw: form values are strings (JSON for objects)."""

    method: str  # canonical name ("sendMessage") when known, else as requested
    params: dict[str, Any]
    at: float  # time.monotonic() when the request arrived
    status: int  # 0 while the call is in progress (a long poll, a hang), or if the server stopped first
    description: str | None = None  # the error description, for failed calls
    http_method: str = "POST"
    content_type: str = ""


@dataclass(frozen=True)
class CallbackAnswer:
    """An ``answerCallbackQuery``: what the user saw as a toast or an alert."""

    callback_query_id: str
    text: str | None
    show_alert: bool
    url: str | None
    cache_time: int
    at: float


@dataclass(frozen=True)
class WebhookConfig:
    """The webhook the bot registered; Telegram never reports ``secret_token`` back, this record does."""

    url: str
    secret_token: str | None
    allowed_updates: list[str] | None
    drop_pending_updates: bool
    max_connections: int | None
    ip_address: str | None


@dataclass(frozen=True)
class UploadedFile:
    """A multipart part with a filename: the server keeps its bytes so a test can inspect them."""

    filename: str
    content_type: str
    data: bytes


@dataclass
class _Fault:
    status: int
    description: str | None
    retry_after: int | None


@dataclass
class _Hang:
    seconds: float | None  # None: until the server stops


@dataclass
class _Described:
    """A successful result that Telegram sends with a ``description`` (the webhook methods)."""

    result: Any
    description: str


class TelegramApiError(Exception):
    """An error answer: raised by method handlers, turned into Telegram's JSON error body."""

    def __init__(self, status: int, description: str, *, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.retry_after = retry_after

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ok": False, "error_code": self.status, "description": self.description}
        if self.retry_after is not None:
            body["parameters"] = {"retry_after": self.retry_after}
        return body


class HtmlParseError(ValueError):
    """Telegram's reason for refusing HTML, without the "Bad Request: can't parse entities: " prefix."""


class _Stopped(Exception):
    """The server is shutting down; a handler abandons its reply."""


class _BadBody(Exception):
    """The request body does not parse; answered with 400."""


# --- HTML, the way TDLib parses it ----------------------------------------------------------------

_SUPPORTED_TAGS = frozenset(
    {
        "a",
        "b",
        "strong",
        "i",
        "em",
        "u",
        "ins",
        "s",
        "strike",
        "del",
        "tg-spoiler",
        "tg-emoji",
        "span",
        "pre",
        "code",
        "blockquote",
    }
)
_SPACES = frozenset(b" \t\r\n\x0b\x00")  # TDLib's is_space; the NUL is the end of its C string
_TRIMMED = " \t\r\n\x0b\x0c"
_SIMPLE_ENTITY_TYPES = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "tg-spoiler": "spoiler",
    "span": "spoiler",
}


@dataclass
class _OpenTag:
    tag: str
    argument: str
    utf16_offset: int
    result_position: int


def _is_space(c: int) -> bool:
    return c in _SPACES


def _is_alnum(c: int) -> bool:
    return 0x30 <= c <= 0x39 or 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A


def _decode_entity(data: bytes, pos: int) -> tuple[int, int]:
    """TDLib's ``decode_html_entity``: (code point, position after it), or (0, pos) if none starts here.

    ``&lt;`` ``&gt;`` ``&amp;`` ``&quot;`` and numeric references, the ``;`` optional.
    """

    def at(i: int) -> int:
        return data[i] if i < len(data) else 0

    end = pos + 1
    code = 0
    if at(end) == ord("#"):
        end += 1
        if at(end) == ord("x"):
            end += 1
            while chr(at(end)) in "0123456789abcdefABCDEF" and at(end):
                code = code * 16 + int(chr(at(end)), 16)
                end += 1
        else:
            while 0x30 <= at(end) <= 0x39:
                code = code * 10 + at(end) - 0x30
                end += 1
        if code == 0 or code >= 0x10FFFF or end - pos >= 10:
            return 0, pos
    else:
        while 0x41 <= at(end) <= 0x5A or 0x61 <= at(end) <= 0x7A:
            end += 1
        code = {b"lt": 0x3C, b"gt": 0x3E, b"amp": 0x26, b"quot": 0x22}.get(data[pos + 1 : end], 0)
        if code == 0:
            return 0, pos
    return code, end + 1 if at(end) == ord(";") else end


def _utf8(code: int) -> bytes:
    return chr(code).encode("utf-8", "surrogatepass")  # a lone surrogate is refused after parsing


def parse_html(source: str, *, strict_entities: bool = True) -> tuple[str, list[dict[str, Any]]]:
    """Plain text and Bot API ``MessageEntity`` dicts from Telegram-HTML, or ``HtmlParseError``.

    A port of TDLib's ``parse_html`` — the parser behind ``parse_mode=HTML`` — with its error messages
    and byte offsets, so a test sees the refusal production would. Entity offsets and lengths are in
    UTF-16 code units, as Telegram counts them. With ``strict_entities`` an unknown ``&...`` is refused
    (see the module docstring); without it it stays literal, as on Telegram.
    """
    data = source.encode("utf-8")
    n = len(data)

    def at(i: int) -> int:
        return data[i] if i < n else 0

    def text(begin: int, end: int) -> str:
        return data[begin:end].decode("utf-8", "replace")

    result = bytearray()
    entities: list[dict[str, Any]] = []
    stack: list[_OpenTag] = []
    utf16 = 0
    i = 0
    while i < n:
        c = data[i]
        if c == ord("&"):
            code, end = _decode_entity(data, i)
            if code:
                result += _utf8(code)
                utf16 += 2 if code > 0xFFFF else 1
                i = end
                continue
            if strict_entities:
                name = re.match(rb"&#?\w*;?", data[i:])
                shown = name.group().decode("utf-8", "replace") if name else "&"
                raise HtmlParseError(f'Unsupported HTML entity "{shown}" at byte offset {i}')
        if c != ord("<"):
            if c & 0xC0 != 0x80:  # the first byte of a character
                utf16 += 2 if c >= 0xF0 else 1
            result.append(c)
            i += 1
            continue

        begin = i
        i += 1
        if at(i) != ord("/"):
            tag, i = _read_start_tag(data, begin, i, utf16, len(result))
            stack.append(tag)
            i += 1  # past '>'
            continue

        if not stack:
            raise HtmlParseError(f"Unexpected end tag at byte offset {begin}")
        while not _is_space(at(i)) and at(i) != ord(">"):
            i += 1
        end_tag = text(begin + 2, i).lower()
        while _is_space(at(i)) and at(i) != 0:
            i += 1
        if at(i) != ord(">"):
            raise HtmlParseError(f"Unclosed end tag at byte offset {begin}")
        opened = stack[-1]
        if end_tag and end_tag != opened.tag:
            raise HtmlParseError(
                f'Unmatched end tag at byte offset {begin}, expected "</{opened.tag}>", found "</{end_tag}>"'
            )
        if utf16 > opened.utf16_offset:
            _add_entity(entities, opened, utf16 - opened.utf16_offset, bytes(result))
        stack.pop()
        i += 1

    if stack:
        raise HtmlParseError(f'Can\'t find end tag corresponding to start tag "{stack[-1].tag}"')
    try:
        plain = result.decode("utf-8")
    except UnicodeDecodeError:
        raise HtmlParseError(
            "Text contains invalid Unicode characters after decoding HTML entities, check for unmatched "
            "surrogate code units"
        ) from None
    for entity in entities:
        if entity["type"] == "code":
            entity.pop("language", None)  # a language counts only on <pre><code>
    entities.sort(key=lambda e: (e["offset"], -e["length"]))
    return plain, entities


def _read_start_tag(data: bytes, begin: int, i: int, utf16: int, position: int) -> tuple[_OpenTag, int]:
    """Reads ``<tag attr=...>`` from after ``<``; returns the tag and the index of its ``>``."""

    def at(k: int) -> int:
        return data[k] if k < len(data) else 0

    while not _is_space(at(i)) and at(i) != ord(">"):
        i += 1
    if at(i) == 0:
        raise HtmlParseError(f"Unclosed start tag at byte offset {begin}")
    tag = data[begin + 1 : i].decode("utf-8", "replace").lower()
    if tag not in _SUPPORTED_TAGS:
        raise HtmlParseError(f'Unsupported start tag "{tag}" at byte offset {begin}')

    argument = ""
    while at(i) != ord(">"):
        while at(i) != 0 and _is_space(at(i)):
            i += 1
        if at(i) == ord(">"):
            break
        attribute_begin = i
        while not _is_space(at(i)) and at(i) not in b"=>/\"'":
            i += 1
        attribute = data[attribute_begin:i].decode("utf-8", "replace")
        if not attribute:
            raise HtmlParseError(f'Empty attribute name in the tag "{tag}" at byte offset {begin}')
        while at(i) != 0 and _is_space(at(i)):
            i += 1
        if at(i) != ord("="):
            if at(i) == 0:
                raise HtmlParseError(f'Unclosed start tag "{tag}" at byte offset {begin}')
            if tag == "blockquote" and attribute == "expandable":
                argument = "1"
            continue
        i += 1
        while at(i) != 0 and _is_space(at(i)):
            i += 1
        if at(i) == 0:
            raise HtmlParseError(f'Unclosed start tag "{tag}" at byte offset {begin}')

        if at(i) not in b"'\"":  # a name token: letters, digits, '.' and '-', case-insensitive
            token_begin = i
            while _is_alnum(at(i)) or at(i) in b".-":
                i += 1
            value = data[token_begin:i].decode("ascii").lower()
            if not _is_space(at(i)) and at(i) != ord(">"):
                raise HtmlParseError(f"Unexpected end of name token at byte offset {token_begin}")
        else:  # a quoted string, with character references decoded
            quote = at(i)
            i += 1
            raw = bytearray()
            while at(i) != quote and at(i) != 0:
                if at(i) == ord("&"):
                    code, end = _decode_entity(data, i)
                    if code:
                        raw += _utf8(code)
                        i = end
                        continue
                raw.append(at(i))
                i += 1
            if at(i) == quote:
                i += 1
            value = raw.decode("utf-8", "replace")
        if at(i) == 0:
            raise HtmlParseError(f"Unclosed start tag at byte offset {begin}")

        if (tag, attribute) in {("a", "href"), ("tg-emoji", "emoji-id")}:
            argument = value
        elif tag == "code" and attribute == "class" and value.startswith("language-"):
            argument = value.removeprefix("language-")
        elif tag == "span" and attribute == "class" and value.startswith("tg-"):
            argument = value.removeprefix("tg-")
        elif tag == "blockquote" and attribute == "expandable":
            argument = "1"

    if tag == "span" and argument != "spoiler":
        raise HtmlParseError(f'Tag "span" must have class "tg-spoiler" at byte offset {begin}')
    return _OpenTag(tag, argument, utf16, position), i


def _add_entity(entities: list[dict[str, Any]], opened: _OpenTag, length: int, result: bytes) -> None:
    offset = opened.utf16_offset
    last = entities[-1] if entities else None
    same_span = last is not None and last["offset"] == offset and last["length"] == length
    if opened.tag in _SIMPLE_ENTITY_TYPES:
        entities.append({"type": _SIMPLE_ENTITY_TYPES[opened.tag], "offset": offset, "length": length})
    elif opened.tag == "a":
        url = opened.argument or result[opened.result_position :].decode("utf-8", "replace")
        if url:
            entities.append({"type": "text_link", "offset": offset, "length": length, "url": url})
    elif opened.tag == "tg-emoji":
        if not opened.argument.isdigit() or int(opened.argument) <= 0:
            raise HtmlParseError("Invalid custom emoji identifier specified")
        entities.append(
            {"type": "custom_emoji", "offset": offset, "length": length, "custom_emoji_id": opened.argument}
        )
    elif opened.tag == "pre":
        if last is not None and same_span and last["type"] == "code" and "language" in last:
            last["type"] = "pre"
        else:
            entities.append({"type": "pre", "offset": offset, "length": length})
    elif opened.tag == "code":
        if last is not None and same_span and last["type"] == "pre" and opened.argument:
            last["language"] = opened.argument
        else:
            code: dict[str, Any] = {"type": "code", "offset": offset, "length": length}
            if opened.argument:
                code["language"] = opened.argument
            entities.append(code)
    elif opened.tag == "blockquote":
        kind = "expandable_blockquote" if opened.argument else "blockquote"
        entities.append({"type": kind, "offset": offset, "length": length})


def _utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def trim_formatted(text: str, entities: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Telegram strips leading and trailing whitespace from a message; entities shift and shrink with it."""
    stripped = text.strip(_TRIMMED)
    if stripped == text:
        return text, entities
    head = _utf16_length(text[: len(text) - len(text.lstrip(_TRIMMED))])
    size = _utf16_length(stripped)
    kept = []
    for entity in entities:
        start = max(entity["offset"] - head, 0)
        end = min(entity["offset"] + entity["length"] - head, size)
        if end > start:
            kept.append({**entity, "offset": start, "length": end - start})
    return stripped, kept


# --- values as the Bot API reads them ---------------------------------------------------------------


def _int_param(params: dict[str, Any], name: str) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise TelegramApiError(400, f'Bad Request: field "{name}" must be of type Integer') from None


def _bool_param(params: dict[str, Any], name: str) -> bool:
    value = params.get(name)
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in {"true", "1"} if value is not None else False


def _str_param(params: dict[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else json.dumps(value)


def _json_param(params: dict[str, Any], name: str, error: str | None = None) -> Any:
    """An object parameter: a JSON string in forms, a JSON value in JSON bodies."""
    value = params.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        raise TelegramApiError(400, error or f"Bad Request: can't parse {name} JSON object") from None


def _parse_content_type(header: str) -> EmailMessage:
    message = EmailMessage()
    message["Content-Type"] = header or "application/octet-stream"
    return message


def parse_request_body(content_type: str, raw: bytes) -> dict[str, Any]:
    """Parameters from a JSON, urlencoded or multipart body; other content types carry none (as on Telegram)."""
    if not raw:
        return {}
    header = _parse_content_type(content_type)
    kind = header.get_content_type()
    charset = header.get_content_charset() or "utf-8"
    if kind == "application/json":
        try:
            body = json.loads(raw.decode(charset))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _BadBody("Bad Request: can't parse JSON object") from exc
        if not isinstance(body, dict):
            raise _BadBody("Bad Request: JSON object expected")
        return body
    if kind == "application/x-www-form-urlencoded":
        return dict(urllib.parse.parse_qsl(raw.decode(charset, "replace"), keep_blank_values=True))
    if kind == "multipart/form-data":
        return _parse_multipart(content_type, raw)
    return {}


def _parse_multipart(content_type: str, raw: bytes) -> dict[str, Any]:
    """multipart/form-data through the stdlib e-mail parser, behind a synthetic header block."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    if not isinstance(message, EmailMessage) or not message.is_multipart():
        raise _BadBody("Bad Request: can't parse multipart/form-data body")
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        if filename is not None:
            fields[collapse_rfc2231_value(name)] = UploadedFile(filename, part.get_content_type(), data)
        else:
            fields[collapse_rfc2231_value(name)] = data.decode(part.get_content_charset() or "utf-8", "replace")
    return fields


# --- update builders ------------------------------------------------------------------------------


def user_dict(
    user_id: int, *, first_name: str = "Иван", username: str | None = None, language_code: str | None = "ru"
) -> dict[str, Any]:
    """A human ``User`` as Telegram sends it in updates."""
    user: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": first_name}
    if username:
        user["username"] = username
    if language_code:
        user["language_code"] = language_code
    return user


def chat_dict(
    chat_id: int,
    chat_type: str = "private",
    *,
    first_name: str = "Иван",
    username: str | None = None,
    title: str = "Поддержка",
    is_forum: bool = False,
) -> dict[str, Any]:
    """A ``Chat``: private chats carry the user's names, groups a title, forum supergroups ``is_forum``."""
    if chat_type == "private":
        chat: dict[str, Any] = {"id": chat_id, "first_name": first_name}
        if username:
            chat["username"] = username
        chat["type"] = "private"
        return chat
    chat = {"id": chat_id, "title": title, "type": chat_type}
    if is_forum:
        chat["is_forum"] = True
    return chat


def _command_entities(text: str) -> list[dict[str, Any]]:
    match = re.match(r"/[A-Za-z0-9_]{1,64}(?:@[A-Za-z0-9_]{3,32})?(?=\s|$)", text)
    return [{"offset": 0, "length": len(match.group()), "type": "bot_command"}] if match else []


def _user_message(
    *,
    user_id: int,
    chat_id: int | None,
    chat_type: str,
    language_code: str | None,
    first_name: str,
    username: str | None,
    message_id: int,
    message_thread_id: int | None,
    date: int | None,
    chat_title: str,
) -> dict[str, Any]:
    is_topic = message_thread_id is not None and chat_type == "supergroup"
    message: dict[str, Any] = {"message_id": message_id}
    if message_thread_id is not None:
        message["message_thread_id"] = message_thread_id
    message["from"] = user_dict(user_id, first_name=first_name, username=username, language_code=language_code)
    message["chat"] = chat_dict(
        user_id if chat_id is None else chat_id,
        chat_type,
        first_name=first_name,
        username=username,
        title=chat_title,
        is_forum=is_topic,
    )
    message["date"] = int(time.time()) if date is None else date
    if is_topic:
        message["is_topic_message"] = True
    return message


def message_update(
    update_id: int,
    *,
    user_id: int,
    text: str,
    chat_id: int | None = None,
    chat_type: str = "private",
    language_code: str | None = "ru",
    first_name: str = "Иван",
    username: str | None = None,
    message_id: int | None = None,
    reply_to: dict[str, Any] | None = None,
    message_thread_id: int | None = None,
    date: int | None = None,
    chat_title: str = "Поддержка",
) -> dict[str, Any]:
    """An ``Update`` with a text ``message`` from a user, as Telegram delivers it.

    ``chat_id`` defaults to the user's id (a private chat); ``message_id`` to ``update_id``. A leading
    ``/command`` gets its ``bot_command`` entity; ``reply_to`` is the replied message's dict; a
    ``message_thread_id`` in a supergroup marks a forum topic message.
    """
    if chat_type != "private" and chat_id is None:
        raise ValueError(f"a {chat_type} message needs its chat_id")
    message = _user_message(
        user_id=user_id,
        chat_id=chat_id,
        chat_type=chat_type,
        language_code=language_code,
        first_name=first_name,
        username=username,
        message_id=update_id if message_id is None else message_id,
        message_thread_id=message_thread_id,
        date=date,
        chat_title=chat_title,
    )
    if reply_to is not None:
        message["reply_to_message"] = {k: v for k, v in reply_to.items() if k != "reply_to_message"}
    message["text"] = text
    if entities := _command_entities(text):
        message["entities"] = entities
    return {"update_id": update_id, "message": message}


def callback_update(
    update_id: int,
    *,
    user_id: int,
    data: str,
    message: dict[str, Any],
    language_code: str | None = "ru",
    first_name: str = "Иван",
    username: str | None = None,
    callback_query_id: str | None = None,
) -> dict[str, Any]:
    """An ``Update`` with a ``callback_query``: the user pressed a button under ``message``."""
    chat_id = int(message.get("chat", {}).get("id", user_id))
    query = {
        "id": callback_query_id or f"{user_id}{update_id:08d}",
        "from": user_dict(user_id, first_name=first_name, username=username, language_code=language_code),
        "message": message,
        "chat_instance": str(-(abs(chat_id) * 7919 + 13)),  # stable per chat, opaque like Telegram's
        "data": data,
    }
    return {"update_id": update_id, "callback_query": query}


def contact_update(
    update_id: int,
    *,
    user_id: int,
    phone_number: str,
    contact_user_id: int | None = None,
    with_user_id: bool = True,
    first_name: str = "Иван",
    last_name: str | None = None,
    language_code: str | None = "ru",
    username: str | None = None,
    message_id: int | None = None,
    date: int | None = None,
) -> dict[str, Any]:
    """An ``Update`` with a shared ``contact`` in a private chat.

    By default it is the sender's own contact, as a ``request_contact`` button sends it
    (``contact.user_id`` = ``user_id``); pass ``contact_user_id`` for someone else's contact, or
    ``with_user_id=False`` for a contact typed by hand, which carries no ``user_id``.
    """
    message = _user_message(
        user_id=user_id,
        chat_id=None,
        chat_type="private",
        language_code=language_code,
        first_name=first_name,
        username=username,
        message_id=update_id if message_id is None else message_id,
        message_thread_id=None,
        date=date,
        chat_title="",
    )
    contact: dict[str, Any] = {"phone_number": phone_number, "first_name": first_name}
    if last_name:
        contact["last_name"] = last_name
    if with_user_id:
        contact["user_id"] = user_id if contact_user_id is None else contact_user_id
    message["contact"] = contact
    return {"update_id": update_id, "message": message}


def _update_type(update: dict[str, Any]) -> str:
    return next((key for key in update if key != "update_id"), "")


# --- the server -----------------------------------------------------------------------------------


class FakeTelegram:
    """One bot's Bot API on 127.0.0.1 (random port): a ThreadingHTTPServer in a daemon thread.

    Every attribute that tests read (``sent``, ``calls``, ``callback_answers``, ``webhook``) is
    written under one lock by the handler threads; copy lists before iterating while the bot runs,
    or use the ``wait_for``/``await_for`` helpers.
    """

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        *,
        bot_username: str = "perimeter_test_bot",
        bot_first_name: str = "Perimeter",
    ) -> None:
        self.token = token
        prefix = token.split(":", 1)[0]
        self.bot_user: dict[str, Any] = {
            "id": int(prefix) if prefix.isdigit() else 123456,
            "is_bot": True,
            "first_name": bot_first_name,
            "username": bot_username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }
        self.strict_entities = True
        self.strict_replies = False
        self.blocked_chats: set[int] = set()  # sends to these answer 403 "bot was blocked by the user"
        self.sent: list[SentMessage] = []
        self.calls: list[ApiCall] = []
        self.callback_answers: list[CallbackAnswer] = []
        self.webhook: WebhookConfig | None = None
        self.topics: dict[int, list[dict[str, Any]]] = {}  # chat id -> ForumTopic dicts created
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._closing = threading.Event()
        self._updates: list[dict[str, Any]] = []
        self._next_update_id = 1
        self._poll_generation = 0
        self._messages: dict[tuple[int, int], dict[str, Any]] = {}
        self._last_message_id: dict[int, int] = {}
        self._chats: dict[int, dict[str, Any]] = {}
        self._answered_queries: set[str] = set()
        self._queued_queries: set[str] = set()
        self._faults: dict[str, deque[_Fault]] = {}
        self._hangs: dict[str, deque[_Hang]] = {}
        self._methods: dict[str, tuple[str, Callable[[dict[str, Any]], Any]]] = {
            name.lower(): (name, handler)
            for name, handler in {
                "getMe": self._get_me,
                "getUpdates": self._get_updates,
                "setWebhook": self._set_webhook,
                "deleteWebhook": self._delete_webhook,
                "getWebhookInfo": self._get_webhook_info,
                "sendMessage": self._send_message,
                "editMessageText": self._edit_message_text,
                "editMessageReplyMarkup": self._edit_message_reply_markup,
                "sendChatAction": self._send_chat_action,
                "answerCallbackQuery": self._answer_callback_query,
                "createForumTopic": self._create_forum_topic,
            }.items()
        }
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.block_on_close = False  # long polls and hangs are released via _closing instead
        self._httpd.fake = self
        self._thread = threading.Thread(target=self._serve, name="fake-telegram", daemon=True)

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL for ``TelegramAPIServer.from_base``; the API itself is under ``/bot<token>/``."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeTelegram:
        self._thread.start()
        return self

    def _serve(self) -> None:
        # A short poll so that stop() returns quickly: tests start and stop many servers.
        self._httpd.serve_forever(poll_interval=0.02)

    def stop(self) -> None:
        self._closing.set()
        with self._changed:
            self._changed.notify_all()  # long polls see _closing and give up
        if self._thread.is_alive():  # shutdown() would wait forever for a loop that never ran
            self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeTelegram:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- scripting ---------------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        status: int,
        description: str | None = None,
        retry_after: int | None = None,
        times: int = 1,
    ) -> None:
        """Make the next ``times`` calls of ``method`` ("*": any method) fail the way Telegram fails.

        Without a ``description``: 429 says "Too Many Requests: retry after N" with
        ``parameters.retry_after`` (``retry_after`` defaults to 1), 500 "Internal Server Error",
        403 "Forbidden: bot was blocked by the user", and 502/504 answer nginx's HTML error page — not
        JSON — as Telegram's front end does when the Bot API server is away.
        """
        name = self._canonical(method)
        if status == 429 and retry_after is None:
            retry_after = 1
        with self._lock:
            queue = self._faults.setdefault(name, deque())
            queue.extend(_Fault(status, description, retry_after) for _ in range(times))

    def hang_next(self, method: str, seconds: float | None, times: int = 1) -> None:
        """Delay the next ``times`` calls of ``method`` ("*": any) by ``seconds`` (None: until ``stop()``).

        The call is answered normally afterwards, unless the client gave up meanwhile.
        """
        name = self._canonical(method)
        with self._lock:
            self._hangs.setdefault(name, deque()).extend(_Hang(seconds) for _ in range(times))

    def next_update_id(self) -> int:
        """An update id greater than every one queued so far."""
        with self._lock:
            update_id = self._next_update_id
            self._next_update_id += 1
            return update_id

    def queue_update(self, update: dict[str, Any]) -> dict[str, Any]:
        """Queue an update for ``getUpdates`` (an ``update_id`` is assigned if missing) and wake a long poll.

        The server also remembers the update's chat and messages, so the bot can reply to them and
        answer their callback queries the way it would on Telegram.
        """
        update = copy.deepcopy(update)  # the test may go on changing its dict
        with self._changed:
            if "update_id" not in update:
                update = {"update_id": self._next_update_id, **update}
            self._next_update_id = max(self._next_update_id, int(update["update_id"]) + 1)
            self._remember_update(update)
            self._updates.append(update)
            self._changed.notify_all()
        return copy.deepcopy(update)

    def remember_message(self, message: dict[str, Any]) -> None:
        """Let the server know a message exists (e.g. one fed to the dispatcher directly): replies find it."""
        with self._lock:
            self._remember_message(message)

    # --- reading -----------------------------------------------------------------------------

    def messages_to(self, chat_id: int) -> list[SentMessage]:
        """Every sent or edited message in ``chat_id``, in order."""
        with self._lock:
            return [m for m in self.sent if m.chat_id == chat_id]

    def calls_of(self, method: str) -> list[ApiCall]:
        """Every call of ``method`` (any letter case for the implemented ones), in order."""
        entry = self._methods.get(method.lower())
        name = entry[0] if entry else method
        with self._lock:
            return [c for c in self.calls if c.method == name]

    def pending_updates(self) -> list[dict[str, Any]]:
        """Updates queued and not yet confirmed by a ``getUpdates`` offset."""
        with self._lock:
            return list(self._updates)

    def stored_message(self, chat_id: int, message_id: int) -> dict[str, Any] | None:
        """The ``Message`` dict as it now stands (after edits), e.g. for ``callback_update(message=...)``."""
        with self._lock:
            message = self._messages.get((chat_id, message_id))
            return copy.deepcopy(message) if message is not None else None

    def wait_for(
        self, predicate: Callable[[SentMessage], bool], timeout: float = 10.0, *, count: int = 1
    ) -> list[SentMessage]:
        """Block until ``count`` sent messages match; returns all matches, or raises AssertionError.

        Blocking: for tests whose bot runs in another thread. On the bot's own event loop use
        ``await_for``, or the loop (and so the bot) stands still while this waits.
        """
        return self._wait(lambda: self.sent, predicate, timeout, count, "sent message")

    def wait_for_call(
        self, predicate: Callable[[ApiCall], bool], timeout: float = 10.0, *, count: int = 1
    ) -> list[ApiCall]:
        """``wait_for`` over ``calls``: e.g. the bot's n-th ``getUpdates`` or a ``sendChatAction``.

        Calls are visible from their arrival with ``status`` 0; match on ``status`` to wait for the answer.
        """
        return self._wait(lambda: self.calls, predicate, timeout, count, "call")

    async def await_for(
        self,
        predicate: Callable[[SentMessage], bool],
        timeout: float = 10.0,  # noqa: ASYNC109 - wait_for's call shape: a deadline, not a cancel scope
        *,
        count: int = 1,
    ) -> list[SentMessage]:
        """``wait_for`` that polls without blocking the event loop the bot under test may be running on."""
        return await self._await(lambda: self.sent, predicate, timeout, count, "sent message")

    async def await_call(
        self,
        predicate: Callable[[ApiCall], bool],
        timeout: float = 10.0,  # noqa: ASYNC109 - as await_for
        *,
        count: int = 1,
    ) -> list[ApiCall]:
        """``await_for`` over ``calls``."""
        return await self._await(lambda: self.calls, predicate, timeout, count, "call")

    def _wait(
        self, items: Callable[[], list[T]], predicate: Callable[[T], bool], timeout: float, count: int, what: str
    ) -> list[T]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                seen = list(items())
                matches = [item for item in seen if predicate(item)]
                if len(matches) >= count:
                    return matches
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(_timeout_message(what, timeout, count, matches, seen))
                self._changed.wait(remaining)

    async def _await(
        self, items: Callable[[], list[T]], predicate: Callable[[T], bool], seconds: float, count: int, what: str
    ) -> list[T]:
        deadline = time.monotonic() + seconds
        while True:
            with self._lock:
                seen = list(items())
            matches = [item for item in seen if predicate(item)]
            if len(matches) >= count:
                return matches
            if time.monotonic() >= deadline:
                raise AssertionError(_timeout_message(what, seconds, count, matches, seen))
            await asyncio.sleep(0.01)

    # --- request handling (called by the handler threads) ----------------------------------------

    def _canonical(self, method: str) -> str:
        if method == "*":
            return method
        entry = self._methods.get(method.lower())
        if entry is None:
            raise ValueError(f"FakeTelegram does not implement {method!r}")
        return entry[0]

    def sleep(self, seconds: float | None) -> None:
        """Wait ``seconds`` (``None``: until the server stops), cut short by ``stop()``."""
        if self._closing.wait(seconds):
            raise _Stopped

    def handle(
        self, token: str, method: str, params: dict[str, Any], *, http_method: str = "POST", content_type: str = ""
    ) -> tuple[int, dict[str, Any] | str]:
        """One Bot API call: (HTTP status, JSON body or raw text).

        The call enters ``calls`` on arrival with status 0 and gets its status when answered, so a test
        can see a long poll in progress (e.g. the bot now polling with the next offset).
        """
        entry = self._methods.get(method.lower())
        call = ApiCall(
            entry[0] if entry else method,
            dict(params),
            time.monotonic(),
            0,
            http_method=http_method,
            content_type=content_type.split(";")[0].strip(),
        )
        with self._changed:
            index = len(self.calls)
            self.calls.append(call)
            self._changed.notify_all()
        body: dict[str, Any] | str
        try:
            if token != self.token:
                raise TelegramApiError(401, "Unauthorized")
            if entry is None:
                raise TelegramApiError(404, "Not Found: method not found")
            name, handler = entry
            hang, fault = self._take_scripted(name)
            if hang is not None:
                self.sleep(hang.seconds)
            if fault is not None:
                status, body = _fault_response(fault)
            else:
                result = handler(params)
                status = 200
                if isinstance(result, _Described):
                    body = {"ok": True, "result": result.result, "description": result.description}
                else:
                    body = {"ok": True, "result": result}
        except TelegramApiError as error:
            status, body = error.status, error.payload()
        if isinstance(body, str):
            description: str | None = HTTPStatus(status).phrase
        else:
            description = body.get("description") if status != 200 else None
        with self._changed:
            self.calls[index] = dataclasses.replace(call, status=status, description=description)
            self._changed.notify_all()
        return status, body

    def _take_scripted(self, name: str) -> tuple[_Hang | None, _Fault | None]:
        """The next scripted delay and failure for ``name``; the method's own script wins over "*"."""
        with self._lock:
            hangs = self._hangs.get(name) or self._hangs.get("*")
            faults = self._faults.get(name) or self._faults.get("*")
            return (hangs.popleft() if hangs else None), (faults.popleft() if faults else None)

    # --- methods -----------------------------------------------------------------------------

    def _get_me(self, _params: dict[str, Any]) -> dict[str, Any]:
        return dict(self.bot_user)

    def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = _int_param(params, "offset") or 0
        limit = min(max(_int_param(params, "limit") or 100, 1), 100)
        timeout = max(_int_param(params, "timeout") or 0, 0)
        allowed = _json_param(params, "allowed_updates")
        deadline = time.monotonic() + timeout
        with self._changed:
            if self.webhook is not None:
                raise TelegramApiError(
                    409,
                    "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete "
                    "the webhook first",
                )
            self._poll_generation += 1
            generation = self._poll_generation
            self._changed.notify_all()  # an older long poll is terminated, as on Telegram
            while True:
                if offset < 0:
                    del self._updates[: max(len(self._updates) + offset, 0)]
                elif offset > 0:
                    self._updates = [u for u in self._updates if int(u["update_id"]) >= offset]
                ready = [u for u in self._updates if not allowed or _update_type(u) in allowed][:limit]
                remaining = deadline - time.monotonic()
                if ready or remaining <= 0 or self._closing.is_set():
                    if self._closing.is_set() and not ready:
                        raise _Stopped
                    return copy.deepcopy(ready)
                if generation != self._poll_generation:
                    raise TelegramApiError(
                        409,
                        "Conflict: terminated by other getUpdates request; make sure that only one bot instance "
                        "is running",
                    )
                self._changed.wait(remaining)

    def _set_webhook(self, params: dict[str, Any]) -> _Described:
        url = _str_param(params, "url") or ""
        if not url:
            return self._delete_webhook(params)
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme.lower() != "https" or not parsed.hostname:
            raise TelegramApiError(400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook")
        if (parsed.port or 443) not in {80, 88, 443, 8443}:
            raise TelegramApiError(
                400, "Bad Request: bad webhook: Webhook can be set up only on ports 80, 88, 443 or 8443"
            )
        secret = _str_param(params, "secret_token")
        if secret is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", secret):
            raise TelegramApiError(400, "Bad Request: secret token contains unallowed characters")
        allowed = _json_param(params, "allowed_updates")
        config = WebhookConfig(
            url=url,
            secret_token=secret,
            allowed_updates=list(allowed) if isinstance(allowed, list) else None,
            drop_pending_updates=_bool_param(params, "drop_pending_updates"),
            max_connections=_int_param(params, "max_connections"),
            ip_address=_str_param(params, "ip_address"),
        )
        with self._changed:
            unchanged = self.webhook == config
            self.webhook = config
            if config.drop_pending_updates:
                self._updates.clear()
            self._changed.notify_all()
        return _Described(True, "Webhook is already set" if unchanged else "Webhook was set")

    def _delete_webhook(self, params: dict[str, Any]) -> _Described:
        with self._changed:
            existed = self.webhook is not None
            self.webhook = None
            if _bool_param(params, "drop_pending_updates"):
                self._updates.clear()
        return _Described(True, "Webhook was deleted" if existed else "Webhook is already deleted")

    def _get_webhook_info(self, _params: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            info: dict[str, Any] = {
                "url": self.webhook.url if self.webhook else "",
                "has_custom_certificate": False,
                "pending_update_count": len(self._updates),
            }
            if self.webhook is not None:
                if self.webhook.ip_address:
                    info["ip_address"] = self.webhook.ip_address
                info["max_connections"] = self.webhook.max_connections or 40
                if self.webhook.allowed_updates:
                    info["allowed_updates"] = self.webhook.allowed_updates
            return info

    def _send_message(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = self._chat_id(params)
        text, entities = self._formatted_text(params)
        markup = self._reply_markup(params)
        thread_id = _int_param(params, "message_thread_id")
        with self._changed:
            self._check_not_blocked(chat_id)
            reply_to_id, reply_to = self._reply_target(chat_id, params)
            message_id = self._allocate_message_id(chat_id)
            chat = self._chat(chat_id)
            message: dict[str, Any] = {"message_id": message_id}
            if thread_id is not None:
                message["message_thread_id"] = thread_id
            message["from"] = self._bot_from()
            message["chat"] = chat
            message["date"] = int(time.time())
            if thread_id is not None and chat["type"] == "supergroup":
                message["is_topic_message"] = True
            if reply_to is not None:
                message["reply_to_message"] = reply_to
            message["text"] = text
            if entities:
                message["entities"] = entities
            if _is_inline(markup):
                message["reply_markup"] = markup
            self._messages[(chat_id, message_id)] = message
            self.sent.append(
                SentMessage(
                    chat_id=chat_id,
                    message_id=message_id,
                    text=text,
                    parse_mode=_str_param(params, "parse_mode"),
                    reply_markup=markup,
                    message_thread_id=thread_id,
                    reply_to_message_id=reply_to_id,
                    at=time.monotonic(),
                    method="sendMessage",
                    source_text=str(params.get("text")),
                    entities=entities,
                )
            )
            self._changed.notify_all()
            return copy.deepcopy(message)

    def _edit_message_text(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id, message_id = self._edited_message_key(params)
        text, entities = self._formatted_text(params)
        markup = self._reply_markup(params)
        inline = markup if _is_inline(markup) else None
        with self._changed:
            message = self._editable_message(chat_id, message_id)
            if (
                message.get("text") == text
                and message.get("entities", []) == entities
                and (message.get("reply_markup") == inline)
            ):
                raise TelegramApiError(400, NOT_MODIFIED)
            message["text"] = text
            _set_or_drop(message, "entities", entities or None)
            _set_or_drop(message, "reply_markup", inline)  # an edit without markup removes the keyboard
            message["edit_date"] = int(time.time())
            reply_to = message.get("reply_to_message")
            self.sent.append(
                SentMessage(
                    chat_id=chat_id,
                    message_id=message_id,
                    text=text,
                    parse_mode=_str_param(params, "parse_mode"),
                    reply_markup=markup,
                    message_thread_id=message.get("message_thread_id"),
                    reply_to_message_id=reply_to["message_id"] if reply_to else None,
                    at=time.monotonic(),
                    method="editMessageText",
                    source_text=str(params.get("text")),
                    entities=entities,
                )
            )
            self._changed.notify_all()
            return copy.deepcopy(message)

    def _edit_message_reply_markup(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id, message_id = self._edited_message_key(params)
        markup = self._reply_markup(params)
        inline = markup if _is_inline(markup) else None
        with self._changed:
            message = self._editable_message(chat_id, message_id)
            if message.get("reply_markup") == inline:
                raise TelegramApiError(400, NOT_MODIFIED)
            _set_or_drop(message, "reply_markup", inline)
            message["edit_date"] = int(time.time())
            self._changed.notify_all()
            return copy.deepcopy(message)

    def _send_chat_action(self, params: dict[str, Any]) -> bool:
        chat_id = self._chat_id(params)
        action = _str_param(params, "action")
        if action is None:
            raise TelegramApiError(400, 'Bad Request: parameter "action" is required')
        if action not in CHAT_ACTIONS:
            raise TelegramApiError(400, "Bad Request: wrong parameter action in request")
        with self._lock:
            self._check_not_blocked(chat_id)
        return True

    def _answer_callback_query(self, params: dict[str, Any]) -> bool:
        query_id = _str_param(params, "callback_query_id")
        if query_id is None:
            raise TelegramApiError(400, 'Bad Request: parameter "callback_query_id" is required')
        with self._changed:
            # A query Telegram delivered can be answered once; unknown ids pass (tests may feed the dispatcher).
            if query_id in self._answered_queries:
                raise TelegramApiError(
                    400, "Bad Request: query is too old and response timeout expired or query ID is invalid"
                )
            if query_id in self._queued_queries:
                self._answered_queries.add(query_id)
            self.callback_answers.append(
                CallbackAnswer(
                    callback_query_id=query_id,
                    text=_str_param(params, "text"),
                    show_alert=_bool_param(params, "show_alert"),
                    url=_str_param(params, "url"),
                    cache_time=_int_param(params, "cache_time") or 0,
                    at=time.monotonic(),
                )
            )
            self._changed.notify_all()
        return True

    def _create_forum_topic(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = self._chat_id(params)
        name = _str_param(params, "name")
        if name is None:
            raise TelegramApiError(400, 'Bad Request: parameter "name" is required')
        if len(name) > 128:
            raise TelegramApiError(400, "Bad Request: TOPIC_TITLE_INVALID")
        topic: dict[str, Any] = {
            "name": name,
            "icon_color": _int_param(params, "icon_color") or DEFAULT_TOPIC_ICON_COLOR,
        }
        if emoji := _str_param(params, "icon_custom_emoji_id"):
            topic["icon_custom_emoji_id"] = emoji
        with self._lock:
            if chat_id < 0:  # only a forum supergroup has topics: the chat is one from now on
                self._chats[chat_id] = {**self._chat(chat_id), "type": "supergroup", "is_forum": True}
            # The topic is opened by a service message whose id becomes the thread id, as on Telegram.
            thread_id = self._allocate_message_id(chat_id)
            topic = {"message_thread_id": thread_id, **topic}
            self._messages[(chat_id, thread_id)] = {
                "message_id": thread_id,
                "message_thread_id": thread_id,
                "from": self._bot_from(),
                "chat": self._chat(chat_id),
                "date": int(time.time()),
                "forum_topic_created": {k: v for k, v in topic.items() if k != "message_thread_id"},
                "is_topic_message": True,
            }
            self.topics.setdefault(chat_id, []).append(topic)
        return dict(topic)

    # --- helpers (those touching state run under the lock) ----------------------------------------

    def _chat_id(self, params: dict[str, Any]) -> int:
        value = params.get("chat_id")
        if value is None or value == "":
            raise TelegramApiError(400, "Bad Request: chat_id is empty")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise TelegramApiError(400, "Bad Request: chat not found") from None  # e.g. an unknown @channel

    def _formatted_text(self, params: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
        raw = params.get("text")
        if raw is None or raw == "":
            raise TelegramApiError(400, "Bad Request: message text is empty")
        raw = str(raw)
        parse_mode = (_str_param(params, "parse_mode") or "").lower()
        if parse_mode == "html":
            try:
                text, entities = parse_html(raw, strict_entities=self.strict_entities)
            except HtmlParseError as error:
                raise TelegramApiError(400, f"Bad Request: can't parse entities: {error}") from None
        elif parse_mode in {"markdown", "markdownv2"}:
            text, entities = raw, []  # accepted, not parsed: see the module docstring
        elif parse_mode:
            raise TelegramApiError(400, "Bad Request: unsupported parse_mode")
        else:
            given = _json_param(params, "entities")
            text, entities = raw, list(given) if isinstance(given, list) else []
        text, entities = trim_formatted(text, entities)
        if not text:
            raise TelegramApiError(400, "Bad Request: message text is empty")
        if len(text) > MAX_MESSAGE_LENGTH:
            raise TelegramApiError(400, "Bad Request: message is too long")
        return text, entities

    def _reply_markup(self, params: dict[str, Any]) -> dict[str, Any] | None:
        error = "Bad Request: can't parse reply keyboard markup JSON object"
        markup = _json_param(params, "reply_markup", error)
        if markup is None:
            return None
        if not isinstance(markup, dict):
            raise TelegramApiError(400, error)
        if "inline_keyboard" in markup:
            _check_inline_keyboard(markup["inline_keyboard"])
        return markup

    def _reply_target(self, chat_id: int, params: dict[str, Any]) -> tuple[int | None, dict[str, Any] | None]:
        """(the replied message id, the ``reply_to_message`` to return) from reply_parameters or the legacy field."""
        reply = _json_param(params, "reply_parameters")
        allow_without = _bool_param(params, "allow_sending_without_reply")
        if isinstance(reply, dict) and reply.get("message_id") is not None:
            message_id = int(reply["message_id"])
            allow_without = bool(reply.get("allow_sending_without_reply", allow_without))
        elif (legacy := _int_param(params, "reply_to_message_id")) is not None:
            message_id = legacy
        else:
            return None, None
        stored = self._messages.get((chat_id, message_id))
        if stored is not None:
            return message_id, {k: copy.deepcopy(v) for k, v in stored.items() if k != "reply_to_message"}
        if allow_without:
            return None, None
        if self.strict_replies:
            raise TelegramApiError(400, "Bad Request: message to be replied not found")
        return message_id, {"message_id": message_id, "date": int(time.time()), "chat": self._chat(chat_id)}

    def _edited_message_key(self, params: dict[str, Any]) -> tuple[int, int]:
        if _str_param(params, "inline_message_id") is not None:
            raise TelegramApiError(400, "Bad Request: MESSAGE_ID_INVALID")  # this bot never sends inline messages
        chat_id = self._chat_id(params)
        message_id = _int_param(params, "message_id")
        if message_id is None:
            raise TelegramApiError(400, "Bad Request: message identifier is not specified")
        return chat_id, message_id

    def _editable_message(self, chat_id: int, message_id: int) -> dict[str, Any]:
        message = self._messages.get((chat_id, message_id))
        if message is None or "forum_topic_created" in message:
            raise TelegramApiError(400, "Bad Request: message to edit not found")
        if message.get("from", {}).get("id") != self.bot_user["id"]:
            raise TelegramApiError(400, "Bad Request: message can't be edited")
        return message

    def _check_not_blocked(self, chat_id: int) -> None:
        if chat_id in self.blocked_chats:
            raise TelegramApiError(403, "Forbidden: bot was blocked by the user")

    def _allocate_message_id(self, chat_id: int) -> int:
        message_id = self._last_message_id.get(chat_id, 0) + 1
        self._last_message_id[chat_id] = message_id
        return message_id

    def _bot_from(self) -> dict[str, Any]:
        return {key: self.bot_user[key] for key in ("id", "is_bot", "first_name", "username")}

    def _chat(self, chat_id: int) -> dict[str, Any]:
        known = self._chats.get(chat_id)
        if known is not None:
            return dict(known)
        if chat_id > 0:
            return {"id": chat_id, "type": "private"}
        if chat_id < -1_000_000_000_000:
            return {"id": chat_id, "title": "Поддержка", "type": "supergroup"}
        return {"id": chat_id, "title": "Поддержка", "type": "group"}

    def _remember_update(self, update: dict[str, Any]) -> None:
        for key in ("message", "edited_message", "channel_post", "edited_channel_post"):
            if isinstance(update.get(key), dict):
                self._remember_message(update[key])
        query = update.get("callback_query")
        if isinstance(query, dict):
            self._queued_queries.add(str(query.get("id")))
            if isinstance(query.get("message"), dict) and query["message"].get("date"):
                self._remember_message(query["message"], overwrite=False)

    def _remember_message(self, message: dict[str, Any], *, overwrite: bool = True) -> None:
        chat = message.get("chat")
        if not isinstance(chat, dict) or "id" not in chat or "message_id" not in message:
            return
        chat_id, message_id = int(chat["id"]), int(message["message_id"])
        self._chats[chat_id] = {**self._chats.get(chat_id, {}), **chat}
        if overwrite or (chat_id, message_id) not in self._messages:
            self._messages[(chat_id, message_id)] = copy.deepcopy(message)
        # The bot's next message in this chat gets a later id than anything the chat has seen.
        self._last_message_id[chat_id] = max(self._last_message_id.get(chat_id, 0), message_id)
        if isinstance(message.get("reply_to_message"), dict):
            self._remember_message(message["reply_to_message"], overwrite=False)


def _is_inline(markup: dict[str, Any] | None) -> bool:
    """Telegram echoes only a non-empty inline keyboard back in the ``Message``; reply keyboards are not."""
    return bool(markup and markup.get("inline_keyboard") and any(markup["inline_keyboard"]))


def _set_or_drop(target: dict[str, Any], key: str, value: Any) -> None:
    if value is None:
        target.pop(key, None)
    else:
        target[key] = value


def _check_inline_keyboard(rows: Any) -> None:
    """The refusals a buggy keyboard gets from Telegram: no action, or callback data over 64 bytes."""
    prefix = "Bad Request: can't parse inline keyboard button: "
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise TelegramApiError(
            400, 'Bad Request: field "inline_keyboard" of the InlineKeyboardMarkup should be an Array of Arrays'
        )
    for row in rows:
        for button in row:
            if not isinstance(button, dict):
                raise TelegramApiError(400, prefix + "InlineKeyboardButton must be an Object")
            if not isinstance(button.get("text"), str):
                raise TelegramApiError(400, prefix + 'Field "text" must be of type String')
            actions = [key for key in INLINE_BUTTON_ACTIONS if button.get(key) not in (None, "")]
            if not actions:
                raise TelegramApiError(400, prefix + "Text buttons are unallowed in the inline keyboard")
            data = button.get("callback_data")
            if isinstance(data, str) and len(data.encode()) > MAX_CALLBACK_DATA_BYTES:
                raise TelegramApiError(400, "Bad Request: BUTTON_DATA_INVALID")


def _fault_response(fault: _Fault) -> tuple[int, dict[str, Any] | str]:
    status = fault.status
    if fault.description is None and status in {502, 504}:
        phrase = HTTPStatus(status).phrase
        return status, NGINX_BAD_GATEWAY.format(status=status, phrase=phrase)
    defaults = {
        400: "Bad Request",
        401: "Unauthorized",
        403: "Forbidden: bot was blocked by the user",
        404: "Not Found",
        409: "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running",
        429: f"Too Many Requests: retry after {fault.retry_after}",
        500: "Internal Server Error",
    }
    description = fault.description or defaults.get(status) or HTTPStatus(status).phrase
    return status, TelegramApiError(status, description, retry_after=fault.retry_after).payload()


def _timeout_message(what: str, timeout: float, count: int, matches: list[Any], seen: Iterable[Any]) -> str:
    lines = "\n".join(f"  {item!r}" for item in seen) or "  (nothing)"
    return f"no {count} matching {what}(s) within {timeout}s ({len(matches)} matched); saw:\n{lines}"


class _Server(ThreadingHTTPServer):
    """The HTTP server, holding the ``FakeTelegram`` its handlers answer for."""

    fake: FakeTelegram


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as aiohttp expects of Telegram
    server: _Server

    @property
    def fake(self) -> FakeTelegram:
        return self.server.fake

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: test output is not the place for an access log."""

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        try:
            raw = self._read_body()
            split = urllib.parse.urlsplit(self.path)
            content_type = self.headers.get("Content-Type", "")
            match = re.fullmatch(r"/bot([^/]*)/([^/]*)", split.path)
            if match is None:
                self._send(404, {"ok": False, "error_code": 404, "description": "Not Found"})
                return
            try:
                params: dict[str, Any] = dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True))
                params.update(parse_request_body(content_type, raw))
            except _BadBody as error:
                self._send(400, {"ok": False, "error_code": 400, "description": str(error)})
                return
            token, method = urllib.parse.unquote(match.group(1)), match.group(2)
            status, body = self.fake.handle(token, method, params, http_method=self.command, content_type=content_type)
            self._send(status, body)
        except (_Stopped, BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away, or the test is over

    def _send(self, status: int, body: dict[str, Any] | str) -> None:
        if isinstance(body, str):
            raw, content_type = body.encode(), "text/html"
        else:
            raw, content_type = json.dumps(body, ensure_ascii=False).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)
        self.wfile.flush()
