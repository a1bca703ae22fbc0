"""DemoCrm: the sample bank's customers in SQLite, read through SqlCrm and the example mapping.

Every customer of ``examples/crm/customers.json`` must be found the way the bot finds them
(the phone of a shared Telegram contact, "+" and digits) and show their products and next
payment; the database is built once and keeps what Perimeter wrote.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from crm_adapters.base import CrmError, CrmReader, CrmWriter, CustomerRef, Lookup, NewTask, normalize_phone
from crm_adapters.demo import DEFAULT_CUSTOMERS, DemoCrm, build_demo_database

CUSTOMERS: list[dict[str, Any]] = json.loads(DEFAULT_CUSTOMERS.read_text(encoding="utf-8"))["customers"]


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[DemoCrm]:
    crm = DemoCrm(tmp_path / "demo-crm.db")
    yield crm
    await crm.aclose()


def _values(values: Any) -> dict[str, str]:
    return {v.key: v.value for v in values}


def test_the_sample_customers_are_what_the_demo_needs() -> None:
    assert 6 <= len(CUSTOMERS) <= 8
    assert "fictional" in json.loads(DEFAULT_CUSTOMERS.read_text(encoding="utf-8"))["_note"].lower()
    assert any(c["language"] == "en" for c in CUSTOMERS)
    assert sum(1 for c in CUSTOMERS if c.get("telegram_id")) >= 4
    assert len({normalize_phone(p) for c in CUSTOMERS for p in c["phones"]}) == sum(len(c["phones"]) for c in CUSTOMERS)
    kinds = {p["type"] for c in CUSTOMERS for p in c["products"]}
    assert {"debit_card", "credit_card", "deposit", "mortgage", "consumer_loan"} <= kinds


async def test_it_is_both_ports(demo: DemoCrm) -> None:
    assert isinstance(demo, CrmReader) and isinstance(demo, CrmWriter)
    assert demo.name == "demo"


@pytest.mark.parametrize("customer", CUSTOMERS, ids=[str(c["id"]) for c in CUSTOMERS])
async def test_every_customer_is_found_by_a_shared_contacts_phone_with_products_and_next_payment(
    demo: DemoCrm, customer: dict[str, Any]
) -> None:
    expected = CustomerRef("demo", str(customer["id"]), "customer")
    for phone in customer["phones"]:
        shared = "+" + str(normalize_phone(phone))  # what Telegram's contact button gives
        assert await demo.find_customer(Lookup(phone=shared)) == expected, phone
    if customer.get("telegram_id"):
        assert await demo.find_customer(Lookup(telegram_id=customer["telegram_id"])) == expected
    for email in customer["emails"]:
        assert await demo.find_customer(Lookup(email=email.upper())) == expected

    ctx = await demo.context(expected)
    assert ctx.name.value == customer["name"]
    assert [p.value for p in ctx.phones] == customer["phones"]
    values = _values(ctx.values)
    assert values["language"] == customer["language"]
    assert "passport" not in values and customer["passport"] not in " ".join(v.value for v in ctx.all_values())

    deals = {d.id: d for d in ctx.deals}
    assert set(deals) == {str(p["id"]) for p in customer["products"]}
    today = date.today()
    for product in customer["products"]:
        deal = deals[str(product["id"])]
        assert deal.title == product["title"]
        assert deal.amount == Decimal(str(product["amount"]))
        assert deal.currency == "RUB"
        assert deal.closed is bool(product.get("closed"))
        dv = {v.key: v for v in deal.values}
        if "payment_day" in product:
            due = date.fromisoformat(dv["next_payment_date"].value)
            assert due.day == product["payment_day"]
            assert today <= due < today + timedelta(days=32)
            assert Decimal(dv["next_payment_amount"].value) == Decimal(str(product["monthly_payment"]))
            assert dv["next_payment_date"].sensitivity == "financial"
        else:
            assert "next_payment_date" not in dv
        if "card_last4" in product:
            assert dv["card"].value.endswith(product["card_last4"])
    assert [t.title for t in ctx.tasks] == [t["title"] for t in customer["tasks"]]


async def test_a_security_note_is_tagged_secret(demo: DemoCrm) -> None:
    ref = await demo.find_customer(Lookup(phone="79095671122"))
    assert ref is not None
    (note,) = [v for v in (await demo.context(ref)).values if v.key == "security_note"]
    assert note.sensitivity == "secret"


async def test_notes_and_tasks_written_are_read_back(demo: DemoCrm) -> None:
    ref = await demo.find_customer(Lookup(phone="+79212451807"))
    assert ref is not None
    note_id = await demo.add_note(ref, "Клиентка спросила о частичном досрочном погашении", deal_id="50103")
    second = await demo.add_note(ref, "Передано в Кредиты-L3")
    notes = await demo.notes(ref)
    assert [(n.id, n.text, n.deal_id, n.author) for n in notes] == [
        (note_id, "Клиентка спросила о частичном досрочном погашении", "50103", "Perimeter"),
        (second, "Передано в Кредиты-L3", None, "Perimeter"),
    ]

    deadline = datetime(2026, 12, 1, 10, 0)
    task_id = await demo.add_task(ref, NewTask("Перезвонить клиентке", "из Telegram", deadline, "Кредиты-L3"))
    tasks = {t.id: t for t in (await demo.context(ref)).tasks}
    assert (tasks[task_id].title, tasks[task_id].deadline, tasks[task_id].responsible) == (
        "Перезвонить клиентке", deadline, "Кредиты-L3")
    assert len(tasks) == 2  # with the one from the JSON

    with pytest.raises(CrmError, match="no deal"):
        await demo.add_note(ref, "чужой продукт", deal_id="50201")
    with pytest.raises(CrmError, match="CRM bitrix24"):
        await demo.add_note(CustomerRef("bitrix24", "1001"), "не та CRM")
    with pytest.raises(CrmError, match="no customer"):
        await demo.add_task(CustomerRef("demo", "9999"), NewTask("никому"))
    with pytest.raises(CrmError, match="empty"):
        await demo.add_note(ref, "   ")


async def test_the_database_is_built_once_and_keeps_what_perimeter_wrote(tmp_path: Path) -> None:
    path = tmp_path / "demo-crm.db"
    first = DemoCrm(path)
    assert first.seeded
    ref = CustomerRef("demo", "1002", "customer")
    await first.add_note(ref, "Клиент подтвердил продление страховки")
    await first.add_task(ref, NewTask("Проверить полис"))
    await first.aclose()

    again = DemoCrm(path)
    try:
        assert not again.seeded  # same seed: nothing rebuilt
        assert [n.text for n in await again.notes(ref)] == ["Клиент подтвердил продление страховки"]
        assert len((await again.context(ref)).tasks) == 2
    finally:
        await again.aclose()

    # a changed seed rebuilds the customers; Perimeter's notes and tasks stay
    customers = tmp_path / "customers.json"
    shutil.copy(DEFAULT_CUSTOMERS, customers)
    data = json.loads(customers.read_text(encoding="utf-8"))
    data["customers"][1]["name"] = "Петров Алексей Викторович (VIP)"
    customers.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    assert build_demo_database(path, customers) is True
    assert build_demo_database(path, customers) is False
    changed = DemoCrm(path, customers=customers)
    try:
        ctx = await changed.context(ref)
        assert ctx.name.value.endswith("(VIP)")
        assert [t.title for t in ctx.tasks] == ["Напомнить о продлении страхования залога по ипотеке",
                                                "Проверить полис"]
        assert len(await changed.notes(ref)) == 1
    finally:
        await changed.aclose()
