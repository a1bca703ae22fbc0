"""The amoCRM adapter against a local server speaking amo's API v4 over real sockets.

Every lookup goes through amo's fuzzy ``query`` search, so the seeded data holds near misses the
search returns and the adapter must drop: a US number ending in the same ten digits, an e-mail that
contains the customer's, a Telegram id that starts with theirs.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from crm_adapters.amocrm import AmoCrm, AmoTokens, FieldSpec, parse_amo_webhook
from crm_adapters.base import (
    AmbiguousCustomer,
    CrmError,
    CrmReader,
    CrmUnavailable,
    CrmWriter,
    CustomerRef,
    Lookup,
    NewTask,
)
from rag.errors import InputError
from tests.support.fake_amocrm import WON_STATUS_ID, FakeAmoCrm, FakePipeline

MSK = timezone(timedelta(hours=3), "MSK")
IVAN_PHONE_DIGITS = "9161234567"


@dataclass
class Bank:
    """What ``seed`` put into the fake account."""

    ivan: int
    us_client: int
    other: int
    balance_field: int
    passport_field: int
    payment_date_field: int
    telegram_field: int
    rate_field: int
    credits: FakePipeline
    cards: FakePipeline
    leads: dict[str, int]
    ivan_tasks: list[int]


def seed(amo: FakeAmoCrm) -> Bank:
    balance = amo.define_field("contacts", "Баланс", field_type="numeric")
    passport = amo.define_field("contacts", "Паспорт", field_type="text")
    payment_date = amo.define_field("contacts", "Дата платежа", field_type="date")
    telegram = amo.define_field("contacts", "Telegram ID", code="TELEGRAM_ID")
    rate = amo.define_field("leads", "Ставка, %", field_type="numeric")
    credits = amo.add_pipeline("Кредиты", ["Заявка", "Проверка документов", "Одобрено"], is_main=True)
    cards = amo.add_pipeline("Карты", ["Выпуск", "Доставка"])
    ivan = amo.add_contact(
        "Иван Петров",
        phones=[("+7 (495) 000-00-00", "WORK"), ("8 916 123-45-67", "MOB")],
        emails=[("Ivan.Petrov@mail.ru", "PRIV")],
        fields={
            balance: "152300.50",
            passport: "4510 123456",
            payment_date: int(datetime(2025, 3, 15, tzinfo=MSK).timestamp()),
            telegram: "123456789",
        },
    )
    # Near misses amo's fuzzy query returns for Ivan's phone, e-mail and Telegram id.
    us_client = amo.add_contact(
        "John Smith",
        phones=["+1 916 123 4567"],
        emails=["old.ivan.petrov@mail.ru"],
        fields={telegram: "1234567890"},
    )
    other = amo.add_contact("Ольга Смирнова", phones=["+7 903 555-44-33"], emails=["olga@example.ru"])
    leads = {
        "Ипотека": amo.add_lead(
            "Ипотека", pipeline=credits, status="Одобрено", price=4_500_000, contacts=[ivan], fields={rate: "11.5"}
        ),
        "Кредитная карта": amo.add_lead("Кредитная карта", pipeline=cards, status="Доставка", contacts=[ivan]),
        "Автокредит": amo.add_lead(
            "Автокредит", pipeline=credits, status=WON_STATUS_ID, price=900_000, contacts=[ivan]
        ),
        "Потребкредит": amo.add_lead(
            "Потребкредит", pipeline=credits, status="Закрыто и не реализовано", price=300_000, contacts=[ivan]
        ),
        "Рефинансирование": amo.add_lead(
            "Рефинансирование", pipeline=credits, status="Заявка", price=1_200_000, contacts=[ivan]
        ),
        "Чужая ипотека": amo.add_lead("Чужая ипотека", pipeline=credits, status="Заявка", price=1, contacts=[other]),
    }
    due = int(datetime(2025, 6, 2, 12, 0, tzinfo=MSK).timestamp())
    ivan_tasks = [
        amo.add_task("contacts", ivan, "Перезвонить по ипотеке", complete_till=due + 3600),
        amo.add_task("contacts", ivan, "Отправить график платежей", complete_till=due),
        amo.add_task("contacts", ivan, "Проверить документы", complete_till=due - 86400, is_completed=True),
    ]
    amo.add_task("contacts", other, "Чужая задача", complete_till=due)
    amo.add_task("leads", leads["Ипотека"], "Задача по сделке", complete_till=due)
    return Bank(
        ivan=ivan,
        us_client=us_client,
        other=other,
        balance_field=balance,
        passport_field=passport,
        payment_date_field=payment_date,
        telegram_field=telegram,
        rate_field=rate,
        credits=credits,
        cards=cards,
        leads=leads,
        ivan_tasks=ivan_tasks,
    )


@pytest.fixture
def amo() -> Iterator[FakeAmoCrm]:
    with FakeAmoCrm() as server:
        yield server


@pytest.fixture
def bank(amo: FakeAmoCrm) -> Bank:
    return seed(amo)


MakeCrm = Callable[..., AmoCrm]


@pytest.fixture
async def make_crm(amo: FakeAmoCrm, bank: Bank) -> AsyncIterator[MakeCrm]:
    """Adapters on the fake account; pacing off unless a test asks for it."""
    made: list[AmoCrm] = []

    def factory(*, timeout: float = 5.0, base_url: str | None = None, **overrides: Any) -> AmoCrm:
        options: dict[str, Any] = {
            "client_id": amo.client_id,
            "client_secret": amo.client_secret,
            "redirect_uri": amo.redirect_uri,
            "field_map": {
                bank.balance_field: FieldSpec("Баланс", "financial"),
                bank.passport_field: FieldSpec("Паспорт", "secret", key="passport"),
                str(bank.payment_date_field): FieldSpec("Дата платежа", "financial", key="next_payment"),
                bank.rate_field: FieldSpec("Ставка", "public", key="rate"),
            },
            "telegram_field": bank.telegram_field,
            "currency": "RUB",
            "timezone": MSK,
            "max_requests_per_second": None,
        }
        options.update(overrides)
        tokens = options.pop("tokens", AmoTokens(amo.access_token, amo.refresh_token))
        crm = AmoCrm(httpx.AsyncClient(timeout=timeout), base_url or amo.url, tokens, **options)
        made.append(crm)
        return crm

    yield factory
    for crm in made:
        await crm.aclose()


def secrets_of(amo: FakeAmoCrm, *extra: str) -> list[str]:
    return [amo.access_token, amo.refresh_token, amo.client_secret, *extra]


def assert_no_secrets(error: BaseException, secrets: list[str]) -> None:
    texts = [str(error), repr(error), "".join(traceback.format_exception(error))]
    for secret in secrets:
        for text in texts:
            assert secret not in text


# --- the port -----------------------------------------------------------------------------------


async def test_implements_the_crm_port(make_crm: MakeCrm) -> None:
    crm = make_crm()
    assert isinstance(crm, CrmReader)
    assert isinstance(crm, CrmWriter)
    assert crm.name == "amocrm"


def test_constructor_refuses_a_page_size_amo_would_refuse() -> None:
    with pytest.raises(ValueError, match="250"):
        AmoCrm(
            httpx.AsyncClient(),
            "https://bank.amocrm.ru",
            AmoTokens("a", "r"),
            client_id="c",
            client_secret="s",
            redirect_uri="https://x",
            page_size=251,
        )


def test_tokens_do_not_show_in_their_repr() -> None:
    tokens = AmoTokens("eyJ-access-secret", "def502-refresh-secret")
    assert "secret" not in repr(tokens)


# --- find_customer --------------------------------------------------------------------------------


@pytest.mark.parametrize("phone", ["79161234567", "+7 916 123-45-67", "8 (916) 123-45-67", "9161234567"])
async def test_finds_by_phone_in_any_format_and_drops_the_fuzzy_near_miss(
    amo: FakeAmoCrm, bank: Bank, make_crm: MakeCrm, phone: str
) -> None:
    crm = make_crm()
    assert await crm.find_customer(Lookup(phone=phone)) == CustomerRef("amocrm", str(bank.ivan))
    search = amo.calls("GET", "/api/v4/contacts")[-1]
    assert search.param("query") == IVAN_PHONE_DIGITS
    # amo's query really returned the US number ending in the same ten digits: the adapter dropped it.
    assert set(amo.search(IVAN_PHONE_DIGITS)) == {bank.ivan, bank.us_client}


async def test_the_near_miss_is_found_by_its_own_number(bank: Bank, make_crm: MakeCrm) -> None:
    crm = make_crm()
    assert await crm.find_customer(Lookup(phone="+1 (916) 123-4567")) == CustomerRef("amocrm", str(bank.us_client))


async def test_finds_by_email_exactly_ignoring_case(amo: FakeAmoCrm, bank: Bank, make_crm: MakeCrm) -> None:
    crm = make_crm()
    assert await crm.find_customer(Lookup(email=" ivan.petrov@MAIL.ru ")) == CustomerRef("amocrm", str(bank.ivan))
    assert set(amo.search("ivan.petrov@MAIL.ru")) == {bank.ivan, bank.us_client}  # old.ivan.petrov@… too


@pytest.mark.parametrize("field_key", ["id", "code"])
async def test_finds_by_telegram_field_before_phone(
    amo: FakeAmoCrm, bank: Bank, make_crm: MakeCrm, field_key: str
) -> None:
    crm = make_crm(telegram_field=bank.telegram_field if field_key == "id" else "telegram_id")
    lookup = Lookup(telegram_id="123456789", phone="+7 903 555-44-33")  # the phone is Olga's: not used
    assert await crm.find_customer(lookup) == CustomerRef("amocrm", str(bank.ivan))
    assert amo.calls("GET", "/api/v4/contacts")[-1].param("query") == "123456789"
    assert set(amo.search("123456789")) == {bank.ivan, bank.us_client}  # …and 1234567890


async def test_without_a_telegram_field_the_next_key_is_used(bank: Bank, make_crm: MakeCrm) -> None:
    crm = make_crm(telegram_field=None)
    lookup = Lookup(telegram_id="123456789", phone="+7 903 555-44-33")
    assert await crm.find_customer(lookup) == CustomerRef("amocrm", str(bank.other))


async def test_finds_by_crm_id(bank: Bank, make_crm: MakeCrm) -> None:
    crm = make_crm()
    assert await crm.find_customer(Lookup(crm_id=str(bank.other))) == CustomerRef("amocrm", str(bank.other))


async def test_several_real_matches_are_ambiguous(amo: FakeAmoCrm, make_crm: MakeCrm) -> None:
    amo.add_contact("Мария Петрова", phones=["+7 916 123 45 67"])  # the family shares one number
    crm = make_crm()
    with pytest.raises(AmbiguousCustomer) as caught:
        await crm.find_customer(Lookup(phone="+79161234567"))
    assert IVAN_PHONE_DIGITS not in str(caught.value)  # personal data stays out of the message
    assert not caught.value.retryable


async def test_nobody_is_none_and_amo_said_204(amo: FakeAmoCrm, make_crm: MakeCrm) -> None:
    crm = make_crm()
    assert await crm.find_customer(Lookup(phone="+7 900 111-22-33")) is None
    assert amo.requests[-1].status == 204
    assert await crm.find_customer(Lookup(email="nobody@example.ru")) is None
    assert amo.requests[-1].status == 204
    assert await crm.find_customer(Lookup(crm_id="999")) is None
    assert (amo.requests[-1].path, amo.requests[-1].status) == ("/api/v4/contacts/999", 204)


async def test_lookups_that_cannot_match_send_nothing(amo: FakeAmoCrm, make_crm: MakeCrm) -> None:
    crm = make_crm()
    for lookup in [Lookup(), Lookup(crm_id="12/../account"), Lookup(phone="12-34"), Lookup(email="not an address")]:
        assert await crm.find_customer(lookup) is None
    assert amo.requests == []


# --- context --------------------------------------------------------------------------------------


async def test_context_reads_leads_over_pages_with_stage_names_closed_flags_fields_and_tasks(
    amo: FakeAmoCrm, bank: Bank, make_crm: MakeCrm
) -> None:
    crm = make_crm(page_size=2)
    context = await crm.context(CustomerRef("amocrm", str(bank.ivan)))

    assert context.customer == CustomerRef("amocrm", str(bank.ivan))
    assert (context.name.value, context.name.sensitivity) == ("Иван Петров", "personal")
    assert [(p.value, p.label, p.sensitivity) for p in context.phones] == [
        ("+7 (495) 000-00-00", "Телефон", "personal"),
        ("8 916 123-45-67", "Телефон", "personal"),
    ]
    assert [(e.value, e.sensitivity) for e in context.emails] == [("Ivan.Petrov@mail.ru", "personal")]
    assert {(v.key, v.label, v.value, v.sensitivity) for v in context.values} == {
        (str(bank.balance_field), "Баланс", "152300.50", "financial"),
        ("passport", "Паспорт", "4510 123456", "secret"),
        ("next_payment", "Дата платежа", "2025-03-15", "financial"),  # a timestamp, shown in the account's zone
    }

    deals = {deal.title: deal for deal in context.deals}
    assert set(deals) == {"Ипотека", "Кредитная карта", "Автокредит", "Потребкредит", "Рефинансирование"}
    assert {title: (d.stage, d.closed) for title, d in deals.items()} == {
        "Ипотека": ("Одобрено", False),
        "Кредитная карта": ("Доставка", False),
        "Автокредит": ("Успешно реализовано", True),
        "Потребкредит": ("Закрыто и не реализовано", True),
        "Рефинансирование": ("Заявка", False),
    }
    assert deals["Ипотека"].amount == Decimal("4500000")
    assert deals["Ипотека"].currency == "RUB"
    assert deals["Кредитная карта"].amount is None
    assert {(v.key, v.value, v.sensitivity) for v in deals["Ипотека"].values} == {
        ("pipeline", "Кредиты", "public"),
        ("rate", "11.5", "public"),
    }
    assert [v.value for v in deals["Кредитная карта"].values] == ["Карты"]

    # Open tasks first, by deadline; the other contact's and the lead's tasks are not the contact's.
    assert [(t.title, t.done) for t in context.tasks] == [
        ("Отправить график платежей", False),
        ("Перезвонить по ипотеке", False),
        ("Проверить документы", True),
    ]
    assert context.tasks[0].deadline == datetime(2025, 6, 2, 12, 0, tzinfo=MSK)
    assert context.tasks[0].responsible == "8375357"
    assert context.fetched_at is not None
    assert {v.sensitivity for v in context.all_values()} == {"personal", "financial", "secret", "public"}

    # Five leads two to a page: three requests, the later ones by following _links.next.
    lead_pages = amo.calls("GET", "/api/v4/leads")
    lead_pages = [r for r in lead_pages if r.path == "/api/v4/leads"]
    assert [(r.param("page"), r.param("limit")) for r in lead_pages] == [(None, "2"), ("2", "2"), ("3", "2")]
    assert all(sorted(map(int, r.params("filter[id][]"))) == sorted(context_ids(context)) for r in lead_pages)
    task_pages = amo.calls("GET", "/api/v4/tasks")
    assert len(task_pages) == 2
    assert task_pages[0].param("filter[entity_type]") == "contacts"
    assert task_pages[0].params("filter[entity_id][]") == [str(bank.ivan)]
    assert amo.calls("GET", "/api/v4/contacts")[0].param("with") == "leads"


def context_ids(context: Any) -> list[int]:
    return [int(deal.id) for deal in context.deals]


async def test_pipelines_are_cached_until_a_lead_sits_in_an_unknown_stage(
    amo: FakeAmoCrm, bank: Bank, make_crm: MakeCrm
) -> None:
    crm = make_crm()
    ref = CustomerRef("amocrm", str(bank.ivan))
    await crm.context(ref)
    await crm.context(ref)
    assert len(amo.calls("GET", "/api/v4/leads/pipelines")) == 1

    issuing = amo.add_status(bank.credits.id, "Выдача")  # an administrator added a stage meanwhile
    amo.move_lead(bank.leads["Рефинансирование"], issuing)
    context = await crm.context(ref)
    assert {d.title: d.stage for d in context.deals}["Рефинансирование"] == "Выдача"
    assert len(amo.calls("GET", "/api/v4/leads/pipelines")) == 2
    await crm.context(ref)
    assert len(amo.calls("GET", "/api/v4/leads/pipelines")) == 2


async def test_a_contact_without_leads_needs_no_pipelines(amo: FakeAmoCrm, bank: Bank, make_crm: MakeCrm) -> None:
    crm = make_crm()
    context = await crm.context(CustomerRef("amocrm", str(bank.us_client)))
    assert context.deals == () and context.tasks == ()
    assert amo.calls("GET", "/api/v4/leads") == []
    assert amo.calls("GET", "/api/v4/tasks")[0].status == 204  # no tasks: amo's empty list


async def test_context_of_a_deleted_contact_is_an_error(make_crm: MakeCrm) -> None:
    crm = make_crm()
    with pytest.raises(CrmError, match="does not exist"):
        await crm.context(CustomerRef("amocrm", "424242"))
    with pytest.raises(CrmError, match="not an amoCRM contact"):
        await crm.context(CustomerRef("bitrix24", "1"))


async def test_a_pagination_link_to_another_host_is_not_followed(
    amo: FakeAmoCrm, bank: Bank, make_crm: MakeCrm
) -> None:
    amo.links_base = "http://attacker.example"
    crm = make_crm(page_size=2)
    with pytest.raises(CrmError, match="another host"):
        await crm.context(CustomerRef("amocrm", str(bank.ivan)))


# --- writing --------------------------------------------------------------------------------------


async def test_note_on_the_contact_and_on_its_lead(amo: FakeAmoCrm, bank: Bank, make_crm: MakeCrm) -> None:
    crm = make_crm()
    ref = CustomerRef("amocrm", str(bank.ivan))
    note_id = await crm.add_note(ref, "Клиент спросил про досрочное погашение. Ответ бота: …")
    deal_note_id = await crm.add_note(ref, "Передано оператору", deal_id=str(bank.leads["Ипотека"]))

    assert [(n["id"], n["entity_type"], n["entity_id"], n["note_type"]) for n in amo.notes] == [
        (int(note_id), "contacts", bank.ivan, "common"),
        (int(deal_note_id), "leads", bank.leads["Ипотека"], "common"),
    ]
    assert amo.notes[0]["params"] == {"text": "Клиент спросил про досрочное погашение. Ответ бота: …"}
    posts = amo.calls("POST")
    assert [r.path for r in posts] == [
        f"/api/v4/contacts/{bank.ivan}/notes",
        f"/api/v4/leads/{bank.leads['Ипотека']}/notes",
    ]


async def test_notes_that_cannot_be_written_fail_before_any_request(
    amo: FakeAmoCrm, bank: Bank, make_crm: MakeCrm
) -> None:
    crm = make_crm()
    ref = CustomerRef("amocrm", str(bank.ivan))
    with pytest.raises(CrmError):
        await crm.add_note(ref, "   ")
    with pytest.raises(CrmError):
        await crm.add_note(ref, "text", deal_id="../contacts/1")
    assert amo.requests == []
    with pytest.raises(CrmError, match="entity_id: NotFound"):
        await crm.add_note(ref, "text", deal_id="999")  # amo's validation error, named


async def test_task_bound_to_the_contact_with_deadline_and_responsible(
    amo: FakeAmoCrm, bank: Bank, make_crm: MakeCrm
) -> None:
    crm = make_crm()
    ref = CustomerRef("amocrm", str(bank.ivan))
    deadline = datetime(2025, 6, 3, 15, 30, tzinfo=MSK)
    task_id = await crm.add_task(
        ref,
        NewTask("Перезвонить клиенту", "Спрашивал про досрочное погашение", deadline=deadline, responsible_id="555"),
    )
    task = amo.tasks[int(task_id)]
    assert (task["entity_type"], task["entity_id"]) == ("contacts", bank.ivan)
    assert task["complete_till"] == int(deadline.timestamp())
    assert task["responsible_user_id"] == 555
    assert task["text"] == "Перезвонить клиенту\n\nСпрашивал про досрочное погашение"

    # A date is «весь день»: 23:59 that day in the account's zone; no deadline: a day from now.
    all_day = await crm.add_task(ref, NewTask("Выслать справку", deadline=date(2025, 6, 4)))
    assert amo.tasks[int(all_day)]["complete_till"] == int(datetime(2025, 6, 4, 23, 59, tzinfo=MSK).timestamp())
    assert "responsible_user_id" not in amo.calls("POST", "/api/v4/tasks")[-1].body[0]
    someday = await crm.add_task(ref, NewTask("Уточнить адрес"))
    assert abs(amo.tasks[int(someday)]["complete_till"] - (time.time() + 86400)) < 60

    titles = {t.title for t in (await crm.context(ref)).tasks}
    assert {"Выслать справку", "Уточнить адрес"} <= titles


# --- tokens -----------------------------------------------------------------------------------------


async def test_an_expired_token_is_refreshed_once_and_the_request_repeated(
    amo: FakeAmoCrm, bank: Bank, make_crm: MakeCrm
) -> None:
    persisted: list[AmoTokens] = []
    crm = make_crm(on_tokens=persisted.append)
    old_access, old_refresh = amo.access_token, amo.refresh_token
    amo.expire_access_token()

    assert await crm.find_customer(Lookup(phone="+79161234567")) == CustomerRef("amocrm", str(bank.ivan))

    assert [(r.method, r.path, r.status) for r in amo.requests] == [
        ("GET", "/api/v4/contacts", 401),
        ("POST", "/oauth2/access_token", 200),
        ("GET", "/api/v4/contacts", 200),
    ]
    assert amo.requests[1].body == {
        "client_id": amo.client_id,
        "client_secret": amo.client_secret,
        "grant_type": "refresh_token",
        "refresh_token": old_refresh,
        "redirect_uri": amo.redirect_uri,
    }
    assert amo.requests[2].headers["authorization"] == f"Bearer {amo.access_token}"
    assert len(persisted) == 1 and persisted[0] == crm.tokens
    assert (persisted[0].access_token, persisted[0].refresh_token) == (amo.access_token, amo.refresh_token)
    assert amo.access_token != old_access and amo.refresh_token != old_refresh  # both rotated
    assert persisted[0].expires_at is not None
    assert abs((persisted[0].expires_at - datetime.now(UTC)).total_seconds() - 86400) < 60

    # A second process still holding the old pair cannot refresh: amo's refresh tokens are single-use.
    stale = make_crm(tokens=AmoTokens(old_access, old_refresh))
    with pytest.raises(CrmError, match="authorised again") as caught:
        await stale.find_customer(Lookup(phone="+79161234567"))
    assert not isinstance(caught.value, CrmUnavailable)


async def test_concurrent_requests_share_one_refresh(amo: FakeAmoCrm, bank: Bank, make_crm: MakeCrm) -> None:
    persisted: list[AmoTokens] = []
    crm = make_crm(on_tokens=persisted.append)
    amo.expire_access_token()
    refs = await asyncio.gather(*(crm.find_customer(Lookup(phone="+79161234567")) for _ in range(4)))
    assert refs == [CustomerRef("amocrm", str(bank.ivan))] * 4
    assert amo.token_refreshes == 1
    assert len(persisted) == 1


async def test_a_refused_refresh_is_a_crm_error(amo: FakeAmoCrm, make_crm: MakeCrm) -> None:
    persisted: list[AmoTokens] = []
    crm = make_crm(on_tokens=persisted.append)
    secrets = secrets_of(amo)
    amo.revoke_refresh_token()
    amo.expire_access_token()
    with pytest.raises(CrmError, match="refused to refresh") as caught:
        await crm.find_customer(Lookup(email="ivan.petrov@mail.ru"))
    assert not isinstance(caught.value, CrmUnavailable)
    assert "Token has been revoked" in str(caught.value)
    assert persisted == []
    assert_no_secrets(caught.value, secrets)


async def test_a_wrong_client_secret_is_a_crm_error(amo: FakeAmoCrm, make_crm: MakeCrm) -> None:
    crm = make_crm(client_secret="not-the-secret")
    amo.expire_access_token()
    with pytest.raises(CrmError, match="HTTP 401") as caught:
        await crm.find_customer(Lookup(email="ivan.petrov@mail.ru"))
    assert_no_secrets(caught.value, [*secrets_of(amo), "not-the-secret"])


async def test_the_token_endpoint_being_down_is_retryable(amo: FakeAmoCrm, make_crm: MakeCrm) -> None:
    crm = make_crm()
    amo.expire_access_token()
    amo.fail_next("/oauth2/access_token", 503)
    with pytest.raises(CrmUnavailable):
        await crm.find_customer(Lookup(email="ivan.petrov@mail.ru"))


async def test_401_after_a_refresh_is_not_refreshed_again(amo: FakeAmoCrm, make_crm: MakeCrm) -> None:
    crm = make_crm()
    amo.fail_next("/api/v4/contacts", 401, times=2)
    with pytest.raises(CrmError, match="freshly refreshed"):
        await crm.find_customer(Lookup(email="ivan.petrov@mail.ru"))
    assert amo.token_refreshes == 1
    assert len(amo.calls("GET", "/api/v4/contacts")) == 2


async def test_a_failing_token_store_does_not_fail_the_request(
    amo: FakeAmoCrm, bank: Bank, make_crm: MakeCrm, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_store(tokens: AmoTokens) -> None:
        raise OSError(f"disk full while writing {tokens.refresh_token}")

    crm = make_crm(on_tokens=broken_store)
    amo.expire_access_token()
    with caplog.at_level(logging.DEBUG, logger="crm_adapters.amocrm"):
        assert await crm.find_customer(Lookup(crm_id=str(bank.ivan))) is not None
    assert "persisting the refreshed tokens failed (OSError)" in caplog.text
    for secret in secrets_of(amo):
        assert secret not in caplog.text


# --- failures ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [({}, 1.0), ({"Retry-After": "7"}, 7.0)],
)
async def test_429_is_unavailable_with_retry_after(
    amo: FakeAmoCrm, make_crm: MakeCrm, headers: dict[str, str], expected: float
) -> None:
    crm = make_crm()
    amo.fail_next("/api/v4/contacts", 429, headers=headers)
    with pytest.raises(CrmUnavailable) as caught:
        await crm.find_customer(Lookup(phone="+79161234567"))
    assert caught.value.retry_after_s == expected
    assert caught.value.retryable


async def test_retry_after_as_an_http_date(amo: FakeAmoCrm, make_crm: MakeCrm) -> None:
    crm = make_crm()
    amo.fail_next(
        "/api/v4/contacts",
        429,
        headers={"Retry-After": format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)},
    )
    with pytest.raises(CrmUnavailable) as caught:
        await crm.find_customer(Lookup(phone="+79161234567"))
    assert caught.value.retry_after_s is not None and 25 <= caught.value.retry_after_s <= 31


async def test_amos_rate_limit_answers_429_and_pacing_stays_under_it(
    amo: FakeAmoCrm, bank: Bank, make_crm: MakeCrm
) -> None:
    amo.rate_limit(3, per_seconds=1.0)
    unpaced = make_crm()
    for _ in range(3):
        await unpaced.find_customer(Lookup(crm_id=str(bank.ivan)))
    with pytest.raises(CrmUnavailable, match="rate limit") as caught:
        await unpaced.find_customer(Lookup(crm_id=str(bank.ivan)))
    assert caught.value.retry_after_s == 1.0

    amo.rate_limit(4, per_seconds=0.5)  # the pacer starts at most 3 requests in any half second
    paced = make_crm(max_requests_per_second=6)
    started = time.monotonic()
    for _ in range(8):
        assert await paced.find_customer(Lookup(crm_id=str(bank.ivan))) is not None
    assert time.monotonic() - started >= 7 / 6 - 0.05


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_server_errors_are_unavailable(amo: FakeAmoCrm, make_crm: MakeCrm, status: int) -> None:
    crm = make_crm()
    amo.fail_next("/api/v4/contacts", status)
    with pytest.raises(CrmUnavailable, match=f"HTTP {status}") as caught:
        await crm.find_customer(Lookup(phone="+79161234567"))
    assert IVAN_PHONE_DIGITS not in str(caught.value)  # the query string never reaches a message


async def test_a_hung_request_is_unavailable_within_the_client_timeout(amo: FakeAmoCrm, make_crm: MakeCrm) -> None:
    crm = make_crm(timeout=0.3)
    amo.slow_next(None, "/api/v4/contacts")
    started = time.monotonic()
    with pytest.raises(CrmUnavailable, match="in time"):
        await crm.find_customer(Lookup(phone="+79161234567"))
    assert time.monotonic() - started < 2


async def test_a_refused_connection_is_unavailable(make_crm: MakeCrm) -> None:
    with FakeAmoCrm() as gone:
        url = gone.url  # a port nobody listens on once the server stops
    crm = make_crm(base_url=url)
    with pytest.raises(CrmUnavailable, match="ConnectError"):
        await crm.find_customer(Lookup(phone="+79161234567"))


@pytest.mark.parametrize(
    ("status", "words"),
    [
        (402, "subscription has expired"),
        (403, "account blocked"),
        (400, "custom_fields_values.0.field_id: NotSupportedChoice"),
        (404, "HTTP 404"),
    ],
)
async def test_client_errors_are_not_retryable(
    amo: FakeAmoCrm, bank: Bank, make_crm: MakeCrm, status: int, words: str
) -> None:
    crm = make_crm()
    amo.fail_next("/api/v4/tasks", status)
    with pytest.raises(CrmError) as caught:
        await crm.add_task(CustomerRef("amocrm", str(bank.ivan)), NewTask("Перезвонить"))
    assert words in str(caught.value)
    assert not isinstance(caught.value, CrmUnavailable) and not caught.value.retryable


async def test_tokens_never_appear_in_errors_or_logs(
    amo: FakeAmoCrm, bank: Bank, make_crm: MakeCrm, caplog: pytest.LogCaptureFixture
) -> None:
    crm = make_crm(timeout=0.3)
    seen = secrets_of(amo)
    errors: list[BaseException] = []
    caplog.set_level(logging.DEBUG)

    async def failing(call: Any) -> None:
        try:
            await call
        except (CrmError, CrmUnavailable) as error:
            errors.append(error)
        else:
            raise AssertionError("expected a failure")

    # amo echoing the token back in an error body is scrubbed too.
    amo.fail_next("/api/v4/contacts", 400, body={"title": "Bad Request", "detail": f"bad token {amo.access_token}"})
    await failing(crm.find_customer(Lookup(phone="+79161234567")))
    amo.fail_next("/api/v4/contacts", 429)
    await failing(crm.find_customer(Lookup(phone="+79161234567")))
    amo.fail_next("/api/v4/contacts", 500)
    await failing(crm.find_customer(Lookup(phone="+79161234567")))
    amo.slow_next(None, "/api/v4/contacts")
    await failing(crm.find_customer(Lookup(phone="+79161234567")))
    amo.expire_access_token()  # a successful refresh, logged…
    await crm.find_customer(Lookup(crm_id=str(bank.ivan)))
    seen += secrets_of(amo)
    amo.expire_access_token()  # …and a refused one whose hint quotes the refresh token
    amo.fail_next("/oauth2/access_token", 400, body={"hint": f"Token {amo.refresh_token} has been revoked"})
    await failing(crm.find_customer(Lookup(crm_id=str(bank.ivan))))

    assert len(errors) == 5
    assert "***" in str(errors[0]) and "***" in str(errors[-1])
    for error in errors:
        assert_no_secrets(error, seen)
    assert "access token refreshed" in caplog.text
    for secret in seen:
        assert secret not in caplog.text


# --- account and webhooks ---------------------------------------------------------------------------

LEAD_STATUS_BODY = (
    "leads%5Bstatus%5D%5B0%5D%5Bid%5D=31926520&leads%5Bstatus%5D%5B0%5D%5Bname%5D=%D0%98%D0%BF%D0%BE%D1%82"
    "%D0%B5%D0%BA%D0%B0&leads%5Bstatus%5D%5B0%5D%5Bstatus_id%5D=142&leads%5Bstatus%5D%5B0%5D%5Bold_status_id"
    "%5D=10216995&leads%5Bstatus%5D%5B0%5D%5Bprice%5D=4500000&leads%5Bstatus%5D%5B0%5D%5Bresponsible_user_id"
    "%5D=8375357&leads%5Bstatus%5D%5B0%5D%5Blast_modified%5D=1717400000&leads%5Bstatus%5D%5B0%5D%5Bpipeline_id"
    "%5D=2116&leads%5Bstatus%5D%5B0%5D%5Baccount_id%5D=30123456&leads%5Bstatus%5D%5B0%5D%5Bcustom_fields%5D%5B0"
    "%5D%5Bid%5D=1119321&leads%5Bstatus%5D%5B0%5D%5Bcustom_fields%5D%5B0%5D%5Bname%5D=%D0%A1%D1%82%D0%B0%D0%B2"
    "%D0%BA%D0%B0&leads%5Bstatus%5D%5B0%5D%5Bcustom_fields%5D%5B0%5D%5Bvalues%5D%5B0%5D%5Bvalue%5D=11.5"
    "&leads%5Bstatus%5D%5B1%5D%5Bid%5D=31926521&leads%5Bstatus%5D%5B1%5D%5Bstatus_id%5D=143"
    "&account%5Bsubdomain%5D=severny-kredit&account%5Bid%5D=30123456"
    "&account%5B_links%5D%5Bself%5D=https%3A%2F%2Fsevernykredit.amocrm.ru"
)


def test_webhook_lead_status_change() -> None:
    parsed = parse_amo_webhook(urllib.parse.parse_qsl(LEAD_STATUS_BODY, keep_blank_values=True))
    assert parsed == {
        "leads": {
            "status": [
                {
                    "id": "31926520",
                    "name": "Ипотека",
                    "status_id": "142",
                    "old_status_id": "10216995",
                    "price": "4500000",
                    "responsible_user_id": "8375357",
                    "last_modified": "1717400000",
                    "pipeline_id": "2116",
                    "account_id": "30123456",
                    "custom_fields": [{"id": "1119321", "name": "Ставка", "values": [{"value": "11.5"}]}],
                },
                {"id": "31926521", "status_id": "143"},
            ]
        },
        "account": {
            "subdomain": "severny-kredit",
            "id": "30123456",
            "_links": {"self": "https://severnykredit.amocrm.ru"},
        },
    }


def test_webhook_incoming_chat_message() -> None:
    form = {
        "account[subdomain]": "severny-kredit",
        "account[id]": "30123456",
        "account[_links][self]": "https://severny-kredit.amocrm.ru",
        "message[add][0][id]": "b26bbe6d-a691-4a8b-b269-29df5fb9dbea",
        "message[add][0][chat_id]": "f7432b58-39ed-4ee3-a39a-9bae88989406",
        "message[add][0][talk_id]": "166",
        "message[add][0][contact_id]": "13311307",
        "message[add][0][text]": "Здравствуйте! Где моя карта?",
        "message[add][0][created_at]": "1711548814",
        "message[add][0][element_type]": "2",
        "message[add][0][entity_type]": "lead",
        "message[add][0][element_id]": "28455849",
        "message[add][0][entity_id]": "28455849",
        "message[add][0][type]": "incoming",
        "message[add][0][author][id]": "aaac520b-1d81-49e1-bdd3-f43d34341544",
        "message[add][0][author][type]": "external",
        "message[add][0][author][name]": "Иван",
        "message[add][0][origin]": "telegram",
    }
    body = urllib.parse.urlencode(form)
    parsed = parse_amo_webhook(urllib.parse.parse_qsl(body, keep_blank_values=True))
    message = parsed["message"]["add"][0]
    assert message["text"] == "Здравствуйте! Где моя карта?"
    assert message["author"] == {"id": "aaac520b-1d81-49e1-bdd3-f43d34341544", "type": "external", "name": "Иван"}
    assert (message["contact_id"], message["talk_id"], message["origin"]) == ("13311307", "166", "telegram")
    assert parsed["account"] == {
        "subdomain": "severny-kredit",
        "id": "30123456",
        "_links": {"self": "https://severny-kredit.amocrm.ru"},
    }


def test_webhook_parsing_follows_php_rules() -> None:
    pairs = [
        ("tags[]", "vip"),
        ("tags[]", "ипотека"),
        ("a[2]", "third"),
        ("a[0]", "first"),  # sparse and out of order: a list in index order
        ("plain", "1"),
        ("plain", "2"),  # repeated: the last wins
        ("odd]key[", "x"),  # brackets PHP would not nest: a plain name
        ("map[x][0]", "1"),
        ("map[y]", "2"),  # mixed keys stay a dict
        ("empty", ""),
    ]
    assert parse_amo_webhook(pairs) == {
        "tags": ["vip", "ипотека"],
        "a": ["first", "third"],
        "plain": "2",
        "odd]key[": "x",
        "map": {"x": ["1"], "y": "2"},
        "empty": "",
    }


@pytest.mark.parametrize(
    "pairs",
    [
        [("a", "1"), ("a[b]", "2")],
        [("a[b]", "2"), ("a", "1")],
        [("a" + "[x]" * 20, "deep")],
    ],
)
def test_webhook_that_cannot_be_nested_is_bad_input(pairs: list[tuple[str, str]]) -> None:
    with pytest.raises(InputError):
        parse_amo_webhook(pairs)


async def test_current_account_confirms_a_webhooks_account(amo: FakeAmoCrm, make_crm: MakeCrm) -> None:
    crm = make_crm()
    account = await crm.current_account()
    assert (account["id"], account["subdomain"]) == (amo.account_id, amo.subdomain)
    hook = parse_amo_webhook(urllib.parse.parse_qsl(LEAD_STATUS_BODY))
    assert hook["account"]["id"] == str(account["id"])
    assert hook["account"]["subdomain"] == account["subdomain"]
