"""Bitrix24Crm against a local server speaking Bitrix24's REST API, over real sockets.

The fake (``tests/support/fake_bitrix24.py``) parses what the adapter sends the way Bitrix24 does —
JSON bodies, ``batch`` commands in PHP's array syntax — and answers with Bitrix24's shapes, statuses
and error codes, so these tests check the wire format as much as the mapping.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import httpx
import pytest

from crm_adapters.base import (
    AmbiguousCustomer,
    CrmError,
    CrmNotSent,
    CrmReader,
    CrmUnavailable,
    CrmWriter,
    CustomerRef,
    Lookup,
    NewTask,
)
from crm_adapters.bitrix24 import (
    Bitrix24Crm,
    Bitrix24Error,
    Bitrix24OAuth,
    Bitrix24Webhook,
    FieldSpec,
    php_query,
)
from rag.errors import ConfigError
from tests.support.fake_bitrix24 import FakeBitrix24, OAuthTokens, parse_php_query

FIELD_MAP = {
    "UF_CRM_BALANCE": FieldSpec("Баланс", "financial"),
    "UF_CRM_NEXT_PAYMENT": FieldSpec("Следующий платёж", "financial"),
    "UF_CRM_PASSPORT": FieldSpec("Паспорт", "secret"),
}
TELEGRAM_FIELD = "UF_CRM_TELEGRAM_ID"
MSK = timezone(timedelta(hours=3))


@pytest.fixture
def bitrix() -> Iterator[FakeBitrix24]:
    with FakeBitrix24() as fake:
        yield fake


def webhook_crm(bitrix: FakeBitrix24, *, timeout: float = 5.0, url: str | None = None) -> Bitrix24Crm:
    return Bitrix24Crm(
        httpx.AsyncClient(timeout=timeout),
        Bitrix24Webhook(url or bitrix.webhook_url),
        field_map=FIELD_MAP,
        telegram_field=TELEGRAM_FIELD,
    )


@pytest.fixture
async def crm(bitrix: FakeBitrix24) -> AsyncIterator[Bitrix24Crm]:
    adapter = webhook_crm(bitrix)
    yield adapter
    await adapter.aclose()


class TokenStore:
    """What a deployment's ``on_tokens`` would persist."""

    def __init__(self) -> None:
        self.saved: list[tuple[str, str]] = []

    def __call__(self, access_token: str, refresh_token: str) -> None:
        self.saved.append((access_token, refresh_token))


def oauth_crm(bitrix: FakeBitrix24, tokens: OAuthTokens, store: TokenStore | None = None) -> Bitrix24Crm:
    auth = Bitrix24OAuth(
        portal_url=bitrix.url,
        access_token=tokens.access_token,
        refresh_token=tokens.refresh_token,
        client_id=bitrix.client_id,
        client_secret=bitrix.client_secret,
        oauth_url=bitrix.oauth_url,
        on_tokens=store,
    )
    return Bitrix24Crm(httpx.AsyncClient(timeout=5), auth, field_map=FIELD_MAP, telegram_field=TELEGRAM_FIELD)


def ref(contact_id: int) -> CustomerRef:
    return CustomerRef("bitrix24", str(contact_id))


# --- the port ---------------------------------------------------------------------------------------


async def test_is_a_crm_reader_and_writer(crm: Bitrix24Crm) -> None:
    assert isinstance(crm, CrmReader)
    assert isinstance(crm, CrmWriter)
    assert crm.name == "bitrix24"


# --- find_customer ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stored", "asked"),
    [
        ("+7 (916) 123-45-67", "79161234567"),
        ("+7 (916) 123-45-67", "8 916 123 45 67"),
        ("8 (916) 123-45-67", "+7 916 123-45-67"),
        ("8 (916) 123-45-67", "79161234567"),
        ("916 123 45 67", "+79161234567"),
        ("79161234567", "(916) 123-45-67"),
    ],
)
async def test_finds_a_contact_by_phone_whatever_form_either_side_uses(
    crm: Bitrix24Crm, bitrix: FakeBitrix24, stored: str, asked: str
) -> None:
    bitrix.add_contact(name="Пётр", last_name="Другой", phones=["+7 (903) 000-00-00"])
    wanted = bitrix.add_contact(name="Иван", last_name="Петров", phones=[stored])

    found = await crm.find_customer(Lookup(phone=asked))

    assert found == CustomerRef("bitrix24", str(wanted), "contact")
    (request,) = bitrix.requests_of("crm.duplicate.findbycomm")  # every form in one call
    assert request.auth_style == "webhook"
    assert request.params["entity_type"] == "CONTACT"
    assert request.params["type"] == "PHONE"
    assert set(request.params["values"]) == {"79161234567", "+79161234567", "89161234567", "9161234567"}


async def test_finds_a_contact_by_email_case_insensitively(crm: Bitrix24Crm, bitrix: FakeBitrix24) -> None:
    wanted = bitrix.add_contact(name="Ольга", emails=["Olga.Sidorova@Mail.RU"])
    bitrix.add_contact(name="Кто-то", emails=["someone@mail.ru"])

    assert await crm.find_customer(Lookup(email=" olga.sidorova@mail.ru ")) == ref(wanted)
    (request,) = bitrix.requests_of("crm.duplicate.findbycomm")
    assert request.params["type"] == "EMAIL"


async def test_finds_a_contact_by_the_telegram_field(crm: Bitrix24Crm, bitrix: FakeBitrix24) -> None:
    bitrix.add_contact(name="Не тот", fields={TELEGRAM_FIELD: "7001"})
    wanted = bitrix.add_contact(name="Тот", fields={TELEGRAM_FIELD: "5001"})

    assert await crm.find_customer(Lookup(telegram_id="5001")) == ref(wanted)
    (request,) = bitrix.requests_of("crm.contact.list")
    assert request.params["filter"] == {TELEGRAM_FIELD: "5001"}


async def test_finds_by_crm_id_first_and_by_phone_when_no_telegram_field_is_configured(
    bitrix: FakeBitrix24,
) -> None:
    by_id = bitrix.add_contact(name="По номеру карточки")
    by_phone = bitrix.add_contact(name="По телефону", phones=["+79160000001"])
    adapter = Bitrix24Crm(httpx.AsyncClient(timeout=5), Bitrix24Webhook(bitrix.webhook_url))  # no telegram_field
    try:
        assert await adapter.find_customer(Lookup(crm_id=str(by_id), phone="79160000001")) == ref(by_id)
        assert await adapter.find_customer(Lookup(telegram_id="5001", phone="79160000001")) == ref(by_phone)
    finally:
        await adapter.aclose()
    assert [r.method for r in bitrix.requests] == ["crm.contact.get", "crm.duplicate.findbycomm"]


async def test_several_matching_contacts_are_ambiguous_and_never_guessed(
    crm: Bitrix24Crm, bitrix: FakeBitrix24
) -> None:
    bitrix.add_contact(name="Муж", phones=["+7 916 111-22-33"])
    bitrix.add_contact(name="Жена", phones=["8 916 111 22 33"])  # the same number, typed differently
    bitrix.add_contact(name="Двойник 1", fields={TELEGRAM_FIELD: "42"})
    bitrix.add_contact(name="Двойник 2", fields={TELEGRAM_FIELD: "42"})

    with pytest.raises(AmbiguousCustomer) as phone_error:
        await crm.find_customer(Lookup(phone="79161112233"))
    with pytest.raises(AmbiguousCustomer):
        await crm.find_customer(Lookup(telegram_id="42"))
    assert "9161112233" not in str(phone_error.value)  # the message carries no personal data


async def test_nobody_matching_is_none(crm: Bitrix24Crm, bitrix: FakeBitrix24) -> None:
    bitrix.add_contact(name="Иван", phones=["+79161234567"], emails=["ivan@example.ru"])

    assert await crm.find_customer(Lookup(phone="+7 999 000-00-00")) is None
    assert await crm.find_customer(Lookup(email="nobody@example.ru")) is None
    assert await crm.find_customer(Lookup(telegram_id="123")) is None
    assert await crm.find_customer(Lookup(crm_id="999")) is None  # 400 "Not found" from crm.contact.get
    requests = len(bitrix.requests)
    assert await crm.find_customer(Lookup(crm_id="abc")) is None  # not an id: not asked
    assert await crm.find_customer(Lookup(phone="12")) is None  # not a phone: not asked
    assert await crm.find_customer(Lookup()) is None
    assert len(bitrix.requests) == requests


# --- context ----------------------------------------------------------------------------------------


def seed_customer(bitrix: FakeBitrix24) -> int:
    contact = bitrix.add_contact(
        name="Иван",
        second_name="Сергеевич",
        last_name="Петров",
        phones=[("+7 (916) 123-45-67", "MOBILE"), "8 495 100-20-30"],
        emails=["ivan.petrov@example.ru"],
        fields={
            "UF_CRM_BALANCE": "152000.50|RUB",
            "UF_CRM_NEXT_PAYMENT": "2024-07-15",
            "UF_CRM_PASSPORT": "4510 123456",
            "UF_CRM_INTERNAL_SCORE": "B-",  # not in the field map: must not leave the adapter
            TELEGRAM_FIELD: "5001",
        },
    )
    other = bitrix.add_contact(name="Чужой")
    approved = bitrix.add_stage("APPROVED", "Кредит одобрен", category_id=1)
    bitrix.add_deal(
        contact_id=contact,
        title="Ипотека",
        stage_id=approved,
        category_id=1,
        opportunity="4500000.00",
        fields={"UF_CRM_NEXT_PAYMENT": "2024-07-20"},
    )
    bitrix.add_deal(contact_id=contact, title="Кредитная карта", stage_id="WON", opportunity="150000.00", closed=True)
    bitrix.add_deal(contact_id=other, title="Чужая сделка")
    bitrix.add_user(7, name="Мария", last_name="Кузнецова")
    bitrix.add_task(
        title="Перезвонить клиенту", crm=[f"C_{contact}"], deadline="2024-07-01T18:00:00+03:00", responsible_id=7
    )
    bitrix.add_task(title="Проверить документы", crm=[f"C_{contact}", "D_1"], status=5)
    bitrix.add_task(title="Чужая задача", crm=[f"C_{other}"])
    return contact


async def test_context_comes_in_one_batch_call(crm: Bitrix24Crm, bitrix: FakeBitrix24) -> None:
    contact = seed_customer(bitrix)

    await crm.context(ref(contact))

    (request,) = bitrix.requests  # one HTTP request for contact, deals, tasks and stage names
    assert request.method == "batch"
    commands = {key: value.partition("?") for key, value in request.params["cmd"].items()}
    assert {key: method for key, (method, _, _) in commands.items()} == {
        "contact": "crm.contact.get",
        "deals": "crm.deal.list",
        "tasks": "tasks.task.list",
        "stages": "crm.status.list",
    }
    deals = parse_php_query(commands["deals"][2])  # read back the way Bitrix24's PHP reads it
    assert deals["filter"] == {"CONTACT_ID": str(contact)}
    assert {"ID", "TITLE", "STAGE_ID", "OPPORTUNITY", "CURRENCY_ID", "CLOSED"} <= set(deals["select"])
    assert {"UF_CRM_BALANCE", "UF_CRM_NEXT_PAYMENT", "UF_CRM_PASSPORT"} <= set(deals["select"])
    tasks = parse_php_query(commands["tasks"][2])
    assert tasks["filter"] == {"UF_CRM_TASK": f"C_{contact}"}
    assert [c.method for c in bitrix.calls if c.in_batch] == [
        "crm.contact.get",
        "crm.deal.list",
        "tasks.task.list",
        "crm.status.list",
    ]
    assert all(c.error is None for c in bitrix.calls)


async def test_context_maps_names_contacts_and_custom_fields_with_their_sensitivity(
    crm: Bitrix24Crm, bitrix: FakeBitrix24
) -> None:
    contact = seed_customer(bitrix)

    context = await crm.context(ref(contact))

    assert context.customer == ref(contact)
    assert (context.name.value, context.name.sensitivity) == ("Иван Сергеевич Петров", "personal")
    assert [(v.value, v.sensitivity) for v in context.phones] == [
        ("+7 (916) 123-45-67", "personal"),
        ("8 495 100-20-30", "personal"),
    ]
    assert [(v.value, v.sensitivity) for v in context.emails] == [("ivan.petrov@example.ru", "personal")]
    assert [(v.key, v.label, v.value, v.sensitivity) for v in context.values] == [
        ("UF_CRM_BALANCE", "Баланс", "152000.50 RUB", "financial"),
        ("UF_CRM_NEXT_PAYMENT", "Следующий платёж", "2024-07-15", "financial"),
        ("UF_CRM_PASSPORT", "Паспорт", "4510 123456", "secret"),
    ]
    every_value = " ".join(v.value for v in context.all_values())
    assert "B-" not in every_value and "5001" not in every_value  # unmapped fields stay in the CRM
    assert context.fetched_at is not None and context.fetched_at.tzinfo is not None


async def test_context_deals_have_stage_names_amounts_and_their_own_fields(
    crm: Bitrix24Crm, bitrix: FakeBitrix24
) -> None:
    contact = seed_customer(bitrix)

    context = await crm.context(ref(contact))

    mortgage, card = context.deals  # the other contact's deal is not here
    assert (mortgage.title, mortgage.stage) == ("Ипотека", "Кредит одобрен")  # pipeline 1: DEAL_STAGE_1, "C1:APPROVED"
    assert mortgage.amount == Decimal("4500000.00") and isinstance(mortgage.amount, Decimal)
    assert (mortgage.currency, mortgage.closed) == ("RUB", False)
    assert [(v.label, v.value, v.sensitivity) for v in mortgage.values] == [
        ("Следующий платёж", "2024-07-20", "financial")
    ]
    assert (card.stage, card.amount, card.closed) == ("Сделка успешна", Decimal("150000.00"), True)
    assert any(v.value == "2024-07-20" for v in context.all_values())


async def test_context_tasks_have_deadlines_responsible_people_and_done_flags(
    crm: Bitrix24Crm, bitrix: FakeBitrix24
) -> None:
    contact = seed_customer(bitrix)

    context = await crm.context(ref(contact))

    call_back, check_documents = context.tasks  # the other contact's task is not here
    assert call_back.title == "Перезвонить клиенту"
    assert call_back.deadline == datetime(2024, 7, 1, 18, 0, tzinfo=MSK)
    assert call_back.responsible == "Мария Кузнецова"
    assert call_back.done is False
    assert (check_documents.title, check_documents.done, check_documents.deadline) == (
        "Проверить документы",
        True,
        None,
    )


async def test_context_follows_pagination_beyond_fifty_in_one_more_batch(
    crm: Bitrix24Crm, bitrix: FakeBitrix24
) -> None:
    contact = bitrix.add_contact(name="Оптовый клиент")
    deal_ids = [bitrix.add_deal(contact_id=contact, title=f"Сделка {n}", opportunity=f"{n}.00") for n in range(1, 121)]
    for n in range(1, 56):
        bitrix.add_task(title=f"Задача {n}", crm=[f"C_{contact}"])

    context = await crm.context(ref(contact))

    assert [d.id for d in context.deals] == [str(i) for i in deal_ids]
    assert context.deals[-1].amount == Decimal("120.00")
    assert len(context.tasks) == 55 and len({t.id for t in context.tasks}) == 55
    first, more = bitrix.requests
    assert (first.method, more.method) == ("batch", "batch")
    starts = {key: parse_php_query(cmd.partition("?")[2])["start"] for key, cmd in more.params["cmd"].items()}
    assert starts == {"deals_50": "50", "deals_100": "100", "tasks_50": "50"}


async def test_context_of_an_unknown_contact_is_a_crm_error(crm: Bitrix24Crm) -> None:
    with pytest.raises(CrmError, match="no contact 404"):
        await crm.context(ref(404))
    with pytest.raises(CrmError):
        await crm.context(CustomerRef("amocrm", "1"))


# --- writes -----------------------------------------------------------------------------------------


async def test_a_note_lands_in_the_contact_or_deal_timeline(crm: Bitrix24Crm, bitrix: FakeBitrix24) -> None:
    contact = bitrix.add_contact(name="Иван")
    deal = bitrix.add_deal(contact_id=contact, title="Вклад")
    text = "Клиент спросил про досрочное погашение & проценты — перезвонить <завтра>"

    note_id = await crm.add_note(ref(contact), text)
    deal_note_id = await crm.add_note(ref(contact), "По сделке", deal_id=str(deal))

    on_contact, on_deal = bitrix.comments
    assert note_id == on_contact["ID"] and deal_note_id == on_deal["ID"]
    assert (on_contact["ENTITY_TYPE"], on_contact["ENTITY_ID"], on_contact["COMMENT"]) == (
        "contact",
        str(contact),
        text,
    )
    assert (on_deal["ENTITY_TYPE"], on_deal["ENTITY_ID"], on_deal["COMMENT"]) == ("deal", str(deal), "По сделке")
    assert on_contact["AUTHOR_ID"] == str(bitrix.webhook_user_id)


async def test_a_task_is_bound_to_the_contact_and_shows_in_its_context(crm: Bitrix24Crm, bitrix: FakeBitrix24) -> None:
    contact = bitrix.add_contact(name="Иван")
    deadline = datetime(2025, 1, 31, 18, 0, tzinfo=MSK)

    task_id = await crm.add_task(ref(contact), NewTask("Перезвонить по вкладу", "Клиент ждёт звонка", deadline))

    stored = bitrix.task(task_id)
    assert stored["VIA_REST"] is True
    assert (stored["TITLE"], stored["DESCRIPTION"]) == ("Перезвонить по вкладу", "Клиент ждёт звонка")
    assert stored["UF_CRM_TASK"] == [f"C_{contact}"]
    assert stored["DEADLINE"] == "2025-01-31T18:00:00+03:00"
    assert stored["RESPONSIBLE_ID"] == str(bitrix.webhook_user_id)  # Bitrix24 requires one: the webhook's user
    (task,) = (await crm.context(ref(contact))).tasks
    assert (task.id, task.title, task.deadline, task.done) == (task_id, "Перезвонить по вкладу", deadline, False)


async def test_a_task_for_someone_with_a_bare_date_deadline(crm: Bitrix24Crm, bitrix: FakeBitrix24) -> None:
    contact = bitrix.add_contact(name="Иван")
    bitrix.add_user(9, name="Олег", last_name="Операторов")

    task_id = await crm.add_task(
        ref(contact), NewTask("Выслать выписку", deadline=date(2025, 2, 3), responsible_id="9")
    )

    stored = bitrix.task(task_id)
    assert (stored["RESPONSIBLE_ID"], stored["DEADLINE"]) == ("9", "2025-02-03T23:59:59+03:00")


async def test_a_task_bitrix_refuses_is_a_crm_error(crm: Bitrix24Crm, bitrix: FakeBitrix24) -> None:
    contact = bitrix.add_contact(name="Иван")

    with pytest.raises(Bitrix24Error) as error:
        await crm.add_task(ref(contact), NewTask("Кому?", responsible_id="777"))  # no such user

    assert (error.value.status, error.value.error) == (400, "ERROR_CORE")
    assert not isinstance(error.value, CrmUnavailable)


# --- failures ---------------------------------------------------------------------------------------


async def test_query_limit_exceeded_is_unavailable_with_bitrix_hint(crm: Bitrix24Crm, bitrix: FakeBitrix24) -> None:
    bitrix.set_rate_limit(2)

    await crm.find_customer(Lookup(phone="79160000001"))
    await crm.find_customer(Lookup(phone="79160000002"))
    with pytest.raises(CrmUnavailable) as error:
        await crm.find_customer(Lookup(phone="79160000003"))

    assert error.value.retry_after_s == 1
    assert error.value.retryable is True
    assert "QUERY_LIMIT_EXCEEDED" in str(error.value)
    assert bitrix.requests[-1].status == 503


async def test_a_rate_limited_batch_is_unavailable(crm: Bitrix24Crm, bitrix: FakeBitrix24) -> None:
    contact = bitrix.add_contact(name="Иван")
    bitrix.fail_next("batch", 503, "QUERY_LIMIT_EXCEEDED", description="Too many requests")

    with pytest.raises(CrmUnavailable) as error:
        await crm.context(ref(contact))

    assert error.value.retry_after_s == 1
    assert (await crm.context(ref(contact))).name.value == "Иван"  # no retry here: the next call just works


@pytest.mark.parametrize(("status", "error"), [(500, "INTERNAL_SERVER_ERROR"), (502, "ERROR_UNEXPECTED_ANSWER")])
async def test_server_errors_are_unavailable(crm: Bitrix24Crm, bitrix: FakeBitrix24, status: int, error: str) -> None:
    bitrix.fail_next("crm.duplicate.findbycomm", status, error)

    with pytest.raises(CrmUnavailable, match=str(status)):
        await crm.find_customer(Lookup(phone="79161234567"))


async def test_a_failing_command_inside_the_batch_is_reported(crm: Bitrix24Crm, bitrix: FakeBitrix24) -> None:
    contact = bitrix.add_contact(name="Иван")
    bitrix.fail_next("tasks.task.list", 500, "INTERNAL_SERVER_ERROR")
    with pytest.raises(CrmUnavailable, match=r"tasks\.task\.list"):
        await crm.context(ref(contact))

    bitrix.fail_next("crm.deal.list", 400, "ACCESS_DENIED")
    with pytest.raises(Bitrix24Error, match=r"crm\.deal\.list"):
        await crm.context(ref(contact))


async def test_a_hung_request_is_unavailable_after_the_client_timeout(bitrix: FakeBitrix24) -> None:
    adapter = webhook_crm(bitrix, timeout=0.3)
    bitrix.slow_next(5)
    started = time.monotonic()
    try:
        with pytest.raises(CrmUnavailable, match="in time"):
            await adapter.find_customer(Lookup(phone="79161234567"))
    finally:
        await adapter.aclose()
    assert time.monotonic() - started < 2


async def test_an_unreachable_portal_is_unavailable_and_nothing_was_sent() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    adapter = Bitrix24Crm(httpx.AsyncClient(timeout=2), Bitrix24Webhook(f"http://127.0.0.1:{port}/rest/1/abcdef123/"))
    try:
        with pytest.raises(CrmNotSent, match="cannot connect"):  # a CrmUnavailable a write may retry
            await adapter.find_customer(Lookup(phone="79161234567"))
    finally:
        await adapter.aclose()


async def test_a_wrong_webhook_code_is_a_crm_error(bitrix: FakeBitrix24) -> None:
    wrong = bitrix.webhook_url.replace(bitrix.webhook_code, "wr0ngc0de")
    adapter = webhook_crm(bitrix, url=wrong)
    try:
        with pytest.raises(Bitrix24Error) as error:
            await adapter.find_customer(Lookup(phone="79161234567"))
    finally:
        await adapter.aclose()

    assert (error.value.status, error.value.error) == (401, "NO_AUTH_FOUND")
    assert not isinstance(error.value, CrmUnavailable)
    assert bitrix.requests[0].status == 401


async def test_the_webhook_code_never_appears_in_errors_or_reprs(bitrix: FakeBitrix24) -> None:
    bitrix.add_contact(name="Иван")
    adapter = webhook_crm(bitrix, timeout=0.3)
    wrong_code = "wr0ngc0de"
    wrong = webhook_crm(bitrix, url=bitrix.webhook_url.replace(bitrix.webhook_code, wrong_code))
    errors: list[BaseException] = []
    try:
        for fault in [
            lambda: bitrix.fail_next("*", 500, "INTERNAL_SERVER_ERROR"),
            lambda: bitrix.fail_next("*", 503, "QUERY_LIMIT_EXCEEDED"),
            lambda: bitrix.fail_next("*", 403, "insufficient_scope"),
            lambda: bitrix.slow_next(2),
        ]:
            fault()
            with pytest.raises((CrmError, CrmUnavailable)) as failed:
                await adapter.context(ref(1))
            errors.append(failed.value)
        with pytest.raises(CrmError) as refused:
            await wrong.find_customer(Lookup(phone="79161234567"))
        errors.append(refused.value)
    finally:
        await adapter.aclose()
        await wrong.aclose()

    for raised in errors:
        text = f"{raised} {raised!r} {raised.args}"
        assert bitrix.webhook_code not in text and wrong_code not in text
        assert "127.0.0.1" in str(raised)  # where it failed is still said
    assert bitrix.webhook_code not in repr(Bitrix24Webhook(bitrix.webhook_url))
    with pytest.raises(ConfigError) as bad:
        Bitrix24Webhook(f"{bitrix.url}/rest/{bitrix.webhook_code}")  # user id missing
    assert bitrix.webhook_code not in str(bad.value)


# --- OAuth (an installed application) ------------------------------------------------------------


async def test_an_expired_token_is_renewed_once_stored_and_the_call_repeated(bitrix: FakeBitrix24) -> None:
    wanted = bitrix.add_contact(name="Иван", phones=["+79161234567"])
    old = bitrix.issue_tokens(expired=True)
    store = TokenStore()
    adapter = oauth_crm(bitrix, old, store)
    try:
        assert await adapter.find_customer(Lookup(phone="79161234567")) == ref(wanted)
        assert await adapter.find_customer(Lookup(phone="79161234567")) == ref(wanted)  # the new token, no renewal
    finally:
        await adapter.aclose()

    assert [r.method for r in bitrix.requests] == [
        "crm.duplicate.findbycomm",  # 401 expired_token
        "oauth.token",
        "crm.duplicate.findbycomm",
        "crm.duplicate.findbycomm",
    ]
    assert [r.status for r in bitrix.requests] == [401, 200, 200, 200]
    assert bitrix.requests[0].error == "expired_token"
    (saved,) = store.saved
    assert saved != (old.access_token, old.refresh_token)
    assert bitrix.is_live(saved[0])
    renewal = bitrix.requests[1]
    assert renewal.params["grant_type"] == "refresh_token"
    assert renewal.params["refresh_token"] == old.refresh_token
    assert renewal.http_method == "POST" and "?" not in renewal.path  # the secrets are not in the URL
    assert all(r.auth_style == "oauth" for r in bitrix.requests if r.method != "oauth.token")


async def test_concurrent_calls_with_an_expired_token_renew_it_once(bitrix: FakeBitrix24) -> None:
    bitrix.add_contact(name="Иван", phones=["+79161234567"])
    store = TokenStore()
    adapter = oauth_crm(bitrix, bitrix.issue_tokens(expired=True), store)
    try:
        found = await asyncio.gather(*(adapter.find_customer(Lookup(phone="79161234567")) for _ in range(4)))
    finally:
        await adapter.aclose()

    assert all(f is not None for f in found)
    assert len(bitrix.requests_of("oauth.token")) == 1  # a second renewal would present a rotated refresh token
    assert len(store.saved) == 1


async def test_a_refused_renewal_is_a_crm_error_without_secrets(bitrix: FakeBitrix24) -> None:
    old = bitrix.issue_tokens(expired=True)
    bitrix.revoke_refresh_token(old.refresh_token)  # e.g. the application was uninstalled
    store = TokenStore()
    adapter = oauth_crm(bitrix, old, store)
    try:
        with pytest.raises(Bitrix24Error) as error:
            await adapter.find_customer(Lookup(phone="79161234567"))
    finally:
        await adapter.aclose()

    assert error.value.error == "invalid_grant"
    assert not isinstance(error.value, CrmUnavailable)
    assert store.saved == []
    text = f"{error.value} {error.value!r}"
    for secret in (old.access_token, old.refresh_token, bitrix.client_secret):
        assert secret not in text
    assert [r.method for r in bitrix.requests] == ["crm.duplicate.findbycomm", "oauth.token"]


async def test_an_oauth_server_failure_is_unavailable(bitrix: FakeBitrix24) -> None:
    bitrix.fail_next("oauth.token", 500, "INTERNAL_SERVER_ERROR")
    adapter = oauth_crm(bitrix, bitrix.issue_tokens(expired=True))
    try:
        with pytest.raises(CrmUnavailable):
            await adapter.find_customer(Lookup(phone="79161234567"))
    finally:
        await adapter.aclose()


async def test_oauth_writes_carry_the_token_in_the_body(bitrix: FakeBitrix24) -> None:
    contact = bitrix.add_contact(name="Иван")
    tokens = bitrix.issue_tokens()
    adapter = oauth_crm(bitrix, tokens)
    try:
        await adapter.add_note(ref(contact), "Заметка")
    finally:
        await adapter.aclose()

    (request,) = bitrix.requests
    assert (request.auth_style, request.path, request.content_type) == (
        "oauth",
        "/rest/crm.timeline.comment.add.json",
        "application/json",
    )
    assert tokens.access_token not in request.path


# --- the placement ----------------------------------------------------------------------------------


async def test_current_user_answers_for_a_valid_auth_id_and_none_otherwise(
    crm: Bitrix24Crm, bitrix: FakeBitrix24
) -> None:
    bitrix.add_user(7, name="Мария", last_name="Кузнецова")
    placement = bitrix.issue_tokens(user_id=7)
    stale = bitrix.issue_tokens(user_id=7, expired=True)

    user = await crm.current_user(placement.access_token)

    assert user is not None and (user["ID"], user["NAME"]) == ("7", "Мария")
    assert await crm.current_user("not-a-token") is None  # 401 invalid_token
    assert await crm.current_user(stale.access_token) is None  # 401 expired_token: not renewed here
    assert await crm.current_user("  ") is None
    asked = bitrix.requests_of("user.current")
    assert len(asked) == 3
    # The configured portal, with the placement's token — never the webhook's credentials.
    assert all(r.auth_style == "oauth" and r.path == "/rest/user.current.json" for r in asked)
    assert [r.user_id for r in asked] == [7, None, None]
    assert len(bitrix.requests_of("oauth.token")) == 0


async def test_current_user_on_a_failing_portal_is_unavailable(crm: Bitrix24Crm, bitrix: FakeBitrix24) -> None:
    bitrix.fail_next("user.current", 503, "QUERY_LIMIT_EXCEEDED")

    with pytest.raises(CrmUnavailable):
        await crm.current_user(bitrix.issue_tokens().access_token)


# --- the wire format ---------------------------------------------------------------------------------


def test_php_query_reads_back_as_php_parses_it() -> None:
    params = {
        "filter": {"CONTACT_ID": 5, "!STATUS": 6, "UF_CRM_TASK": ["C_5", "D_1"]},
        "select": ["ID", "TITLE", "UF_CRM_BALANCE"],
        "order": {"ID": "ASC"},
        "fields": {"COMMENT": "Иван & Мария = 100% «клиенты»?", "PHONE": [{"VALUE": "+7 916", "VALUE_TYPE": "WORK"}]},
        "start": 50,
        "flag": True,
        "skipped": None,
        "empty": [],
    }

    query = php_query(params)

    assert "select[]=ID&select[]=TITLE" in query
    assert "filter[CONTACT_ID]=5" in query
    assert parse_php_query(query) == {
        "filter": {"CONTACT_ID": "5", "!STATUS": "6", "UF_CRM_TASK": ["C_5", "D_1"]},
        "select": ["ID", "TITLE", "UF_CRM_BALANCE"],
        "order": {"ID": "ASC"},
        "fields": {"COMMENT": "Иван & Мария = 100% «клиенты»?", "PHONE": [{"VALUE": "+7 916", "VALUE_TYPE": "WORK"}]},
        "start": "50",
        "flag": "1",
    }


async def test_the_fake_batch_honours_halt(bitrix: FakeBitrix24) -> None:
    contact = bitrix.add_contact(name="Иван")
    cmd = {"missing": "crm.contact.get?id=999", "found": f"crm.contact.get?id={contact}"}
    async with httpx.AsyncClient() as http:
        go_on = (await http.post(f"{bitrix.webhook_url}batch.json", json={"halt": 0, "cmd": cmd})).json()["result"]
        halted = (await http.post(f"{bitrix.webhook_url}batch", json={"halt": 1, "cmd": cmd})).json()["result"]

    assert go_on["result_error"] == {"missing": {"error": "", "error_description": "Not found"}}
    assert go_on["result"]["found"]["NAME"] == "Иван"
    assert set(go_on["result_time"]) == {"found"}
    assert halted["result"] == [] and list(halted["result_error"]) == ["missing"]  # PHP's empty array
    assert halted["result_total"] == [] and halted["result_next"] == []


async def test_the_fake_pages_lists_by_fifty(bitrix: FakeBitrix24) -> None:
    contact = bitrix.add_contact(name="Иван")
    for n in range(60):
        bitrix.add_deal(contact_id=contact, title=f"Сделка {n}")
    async with httpx.AsyncClient() as http:
        first = (await http.post(f"{bitrix.webhook_url}crm.deal.list.json", json={"select": ["ID"]})).json()
        second = (await http.get(f"{bitrix.webhook_url}crm.deal.list.json?select[]=ID&start=50")).json()

    assert (len(first["result"]), first["total"], first["next"]) == (50, 60, 50)
    assert (len(second["result"]), second["total"], "next" in second) == (10, 60, False)
    assert first["result"][0] == {"ID": "1"}
    assert "time" in first and "duration" in first["time"]
