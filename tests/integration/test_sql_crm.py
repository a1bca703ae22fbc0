"""SqlCrm on a real company schema, on SQLite and on PostgreSQL.

Each test creates its own "company database" (clients, phones as people typed them, a view
that exposes them as normalised digits, accounts, to-dos), loads a YAML mapping and reads it
through the adapter. The read-only rules are checked at both layers: the load-time check, and
the database's own read-only mode for statements that get past it.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import Engine, make_url, text

from bot.storage.database import create_db_engine
from crm_adapters.base import AmbiguousCustomer, CrmError, CrmUnavailable, CustomerRef, Lookup
from crm_adapters.sql import SqlCrm, SqlMapping, read_only_problem
from rag.errors import ConfigError

# The view a DBA writes so that phones compare as base.normalize_phone digits (README example).
PG_PHONE_VIEW = r"""
CREATE VIEW v_phones AS
SELECT client_id, phone,
       CASE WHEN length(d) = 11 AND left(d, 1) = '8' THEN '7' || substr(d, 2)
            WHEN length(d) = 10 AND left(d, 1) = '9' THEN '7' || d
            ELSE d END AS digits
FROM (SELECT client_id, phone, regexp_replace(phone, '\D', '', 'g') AS d FROM client_phones) p
"""
SQLITE_PHONE_VIEW = """
CREATE VIEW v_phones AS
SELECT client_id, phone,
       CASE WHEN length(d) = 11 AND substr(d, 1, 1) = '8' THEN '7' || substr(d, 2)
            WHEN length(d) = 10 AND substr(d, 1, 1) = '9' THEN '7' || d
            ELSE d END AS digits
FROM (SELECT client_id, phone,
             replace(replace(replace(replace(replace(phone, ' ', ''), '-', ''), '(', ''), ')', ''), '+', '') AS d
      FROM client_phones) p
"""

SCHEMA = [
    """CREATE TABLE clients (id INTEGER PRIMARY KEY, full_name TEXT NOT NULL, tg BIGINT, passport TEXT,
                             tier TEXT, birthday DATE)""",
    "CREATE TABLE client_phones (client_id INTEGER NOT NULL, phone TEXT NOT NULL)",
    "CREATE TABLE client_emails (client_id INTEGER NOT NULL, email TEXT NOT NULL)",
    """CREATE TABLE accounts (id INTEGER PRIMARY KEY, client_id INTEGER NOT NULL, product TEXT NOT NULL,
                              state TEXT NOT NULL, amount NUMERIC(14, 2), currency TEXT, is_closed BOOLEAN NOT NULL,
                              next_payment DATE, contract_no TEXT)""",
    """CREATE TABLE todo (id INTEGER PRIMARY KEY, client_id INTEGER NOT NULL, title TEXT NOT NULL,
                          due TIMESTAMP, owner TEXT, done BOOLEAN NOT NULL)""",
]

DATA: dict[str, list[dict[str, Any]]] = {
    "clients": [
        dict(id=1, full_name="Иванова Марина Сергеевна", tg=511204387, passport="1108 557310", tier="Массовый",
             birthday="1988-04-02"),
        dict(id=2, full_name="Петров Алексей Викторович", tg=None, passport="4012 803114", tier="Премиальный",
             birthday=None),
        dict(id=3, full_name="Петрова Ирина Олеговна", tg=None, passport=None, tier=None, birthday=None),
    ],
    "client_phones": [
        dict(client_id=1, phone="+7 (916) 123-45-67"),
        dict(client_id=1, phone="8 (8182) 65-40-90"),
        dict(client_id=2, phone="8 911 560-32-14"),
        dict(client_id=3, phone="+7 911 560 32 14"),  # the same family phone: ambiguous
    ],
    "client_emails": [
        dict(client_id=1, email="M.Ivanova@Mail.example"),
        dict(client_id=2, email="a.petrov@corp.example"),
    ],
    "accounts": [
        dict(id=11, client_id=1, product="Дебетовая карта «Север Классик»", state="Активна", amount="48320.50",
             currency="RUB", is_closed=False, next_payment=None, contract_no="К-2019-0001"),
        dict(id=12, client_id=1, product="Потребительский кредит «Просто кредит»", state="Активен",
             amount="312400.00", currency="RUB", is_closed=False, next_payment="2026-12-15", contract_no="ПК-7"),
        dict(id=13, client_id=1, product="Вклад «Пополняемый»", state="Закрыт", amount=None, currency=None,
             is_closed=True, next_payment=None, contract_no=None),
    ],
    "todo": [
        dict(id=21, client_id=1, title="Перезвонить по досрочному погашению", due="2026-12-02 12:00:00",
             owner="Коваленко Т.", done=False),
    ],
}

MAPPING: dict[str, Any] = {
    "kind": "client",
    "find_by_phone": "SELECT client_id AS id FROM v_phones WHERE digits = :phone",
    "find_by_email": "SELECT client_id FROM client_emails WHERE lower(email) = :email",
    "find_by_telegram": "SELECT id FROM clients WHERE CAST(tg AS TEXT) = :telegram_id",
    "find_by_id": "SELECT id FROM clients WHERE CAST(id AS TEXT) = :customer_id",
    # SELECT *: the passport comes back from the database but is not mapped, so never shown.
    "customer": "SELECT *, full_name AS name FROM clients WHERE CAST(id AS TEXT) = :customer_id",
    "phones": "SELECT phone FROM client_phones WHERE CAST(client_id AS TEXT) = :customer_id ORDER BY phone DESC",
    "emails": "SELECT email FROM client_emails WHERE CAST(client_id AS TEXT) = :customer_id",
    "deals": """
        SELECT id, product AS title, state AS stage, amount, currency, is_closed AS closed,
               next_payment, contract_no
        FROM accounts WHERE CAST(client_id AS TEXT) = :customer_id ORDER BY id""",
    "tasks": """
        -- open to-dos only; the word DELETE in a comment or 'UPDATE; DROP' in a string is harmless
        SELECT id, title, due AS deadline, owner AS responsible, done
        FROM todo WHERE CAST(client_id AS TEXT) = :customer_id AND title <> 'UPDATE; DROP'""",
    "values": {
        "TIER": {"label": "Сегмент", "sensitivity": "public"},
        "birthday": {"label": "Дата рождения", "sensitivity": "personal"},
        "next_payment": {"label": "Дата следующего платежа", "sensitivity": "financial"},
        "contract_no": {"label": "Номер договора", "sensitivity": "secret", "key": "contract"},
    },
}


def _is_pg(url: str) -> bool:
    return url.startswith("postgresql")


@pytest.fixture
def company_db(db_url: str) -> Iterator[Engine]:
    """The company's database with its schema and a few clients, on SQLite or PostgreSQL."""
    engine = create_db_engine(db_url)
    with engine.begin() as conn:
        for ddl in [*SCHEMA, PG_PHONE_VIEW if _is_pg(db_url) else SQLITE_PHONE_VIEW]:
            conn.exec_driver_sql(ddl)
        for table, rows in DATA.items():
            columns = ", ".join(rows[0])
            conn.execute(text(f"INSERT INTO {table} ({columns}) VALUES ({', '.join(':' + c for c in rows[0])})"),
                         rows)
    yield engine
    engine.dispose()


@pytest.fixture
def mapping_file(tmp_path: Path) -> Path:
    path = tmp_path / "mapping.yaml"
    path.write_text(yaml.safe_dump(MAPPING, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
async def crm(company_db: Engine, mapping_file: Path) -> AsyncIterator[SqlCrm]:
    adapter = SqlCrm(company_db, SqlMapping.from_yaml(mapping_file), timeout_s=5.0)
    yield adapter
    await adapter.aclose()


def _mapping(**changes: Any) -> SqlMapping:
    return SqlMapping.model_validate({**MAPPING, **changes})


def _unchecked(**changes: Any) -> SqlMapping:
    """A mapping that skips the load-time check: how a statement that got past it would run."""
    valid = _mapping()
    return SqlMapping.model_construct(**{**valid.model_dump(), "values": valid.values, **changes})


def _count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


# --- finding -----------------------------------------------------------------------------------


@pytest.mark.parametrize("phone", ["+7 (916) 123-45-67", "8 916 123 45 67", "9161234567", "+79161234567",
                                   "79161234567", "8 (8182) 65-40-90"])
async def test_a_customer_is_found_by_phone_in_any_format(crm: SqlCrm, phone: str) -> None:
    assert await crm.find_customer(Lookup(phone=phone)) == CustomerRef("sql", "1", "client")


async def test_a_customer_is_found_by_email_telegram_and_id(crm: SqlCrm) -> None:
    ivanova = CustomerRef("sql", "1", "client")
    assert await crm.find_customer(Lookup(email="  m.ivanova@MAIL.example ")) == ivanova
    assert await crm.find_customer(Lookup(telegram_id="511204387")) == ivanova
    assert await crm.find_customer(Lookup(crm_id="1")) == ivanova
    assert await crm.find_customer(Lookup(crm_id="2")) == CustomerRef("sql", "2", "client")


async def test_nobody_matches(crm: SqlCrm) -> None:
    assert await crm.find_customer(Lookup(phone="+7 999 000-00-00")) is None
    assert await crm.find_customer(Lookup(phone="12-34")) is None  # not a phone: never asked
    assert await crm.find_customer(Lookup(email="nobody@mail.example")) is None
    assert await crm.find_customer(Lookup(telegram_id="1")) is None
    assert await crm.find_customer(Lookup()) is None


async def test_only_the_most_trusted_key_of_a_lookup_is_used(crm: SqlCrm) -> None:
    # a Telegram id nobody has, and Ivanova's phone: the phone is not tried
    assert await crm.find_customer(Lookup(telegram_id="999", phone="79161234567")) is None
    assert (await crm.find_customer(Lookup(telegram_id="511204387", phone="79115603214"))) is not None


async def test_a_phone_of_two_customers_is_ambiguous(crm: SqlCrm) -> None:
    with pytest.raises(AmbiguousCustomer):
        await crm.find_customer(Lookup(phone="89115603214"))


async def test_a_lookup_the_mapping_has_no_query_for_finds_nobody(company_db: Engine) -> None:
    crm = SqlCrm(company_db, _mapping(find_by_email=None))
    try:
        assert await crm.find_customer(Lookup(email="m.ivanova@mail.example")) is None
    finally:
        await crm.aclose()


# --- context -----------------------------------------------------------------------------------


async def test_context_has_tagged_values_deals_and_tasks_and_nothing_unmapped(crm: SqlCrm) -> None:
    ref = await crm.find_customer(Lookup(phone="79161234567"))
    assert ref is not None
    ctx = await crm.context(ref)

    assert ctx.customer == ref
    assert (ctx.name.value, ctx.name.sensitivity) == ("Иванова Марина Сергеевна", "personal")
    assert [(p.key, p.value, p.sensitivity) for p in ctx.phones] == [
        ("phone", "8 (8182) 65-40-90", "personal"),
        ("phone_2", "+7 (916) 123-45-67", "personal"),
    ]
    assert [e.value for e in ctx.emails] == ["M.Ivanova@Mail.example"]
    # mapped extra columns, in the mapping's order, matched whatever the column's case
    assert [(v.key, v.label, v.value, v.sensitivity) for v in ctx.values] == [
        ("tier", "Сегмент", "Массовый", "public"),
        ("birthday", "Дата рождения", "1988-04-02", "personal"),
    ]
    everything = " ".join(v.value for v in ctx.all_values())
    assert "557310" not in everything  # the passport was selected, never mapped

    card, loan, deposit = ctx.deals
    assert (card.id, card.title, card.stage, card.amount, card.currency, card.closed) == (
        "11", "Дебетовая карта «Север Классик»", "Активна", Decimal("48320.50"), "RUB", False)
    assert [(v.key, v.value, v.sensitivity) for v in card.values] == [("contract", "К-2019-0001", "secret")]
    assert loan.amount == Decimal("312400.00")
    assert [(v.key, v.value, v.sensitivity) for v in loan.values] == [
        ("next_payment", "2026-12-15", "financial"), ("contract", "ПК-7", "secret")]
    assert (deposit.closed, deposit.amount, deposit.currency, deposit.values) == (True, None, None, ())

    (task,) = ctx.tasks
    assert (task.id, task.title, task.deadline, task.responsible, task.done) == (
        "21", "Перезвонить по досрочному погашению", datetime(2026, 12, 2, 12, 0), "Коваленко Т.", False)
    assert ctx.fetched_at is not None


async def test_a_customer_with_little_data_and_optional_queries_left_out(company_db: Engine) -> None:
    crm = SqlCrm(company_db, _mapping(phones=None, emails=None, deals=None, tasks=None), name="core")
    try:
        ctx = await crm.context(CustomerRef("core", "3", "client"))
        assert ctx.name.value == "Петрова Ирина Олеговна"
        assert (ctx.phones, ctx.emails, ctx.deals, ctx.tasks, ctx.values) == ((), (), (), (), ())
        with pytest.raises(CrmError, match="no customer 99"):
            await crm.context(CustomerRef("core", "99", "client"))
        with pytest.raises(CrmError, match="CRM bitrix24"):
            await crm.context(CustomerRef("bitrix24", "3"))
    finally:
        await crm.aclose()


async def test_sql_the_database_rejects_is_a_crm_error(company_db: Engine) -> None:
    crm = SqlCrm(company_db, _mapping(find_by_id="SELECT id FROM no_such_table WHERE id = :customer_id"))
    try:
        with pytest.raises(CrmError, match="query find_by_id") as caught:
            await crm.find_customer(Lookup(crm_id="1"))
        assert not isinstance(caught.value, CrmUnavailable)
    finally:
        await crm.aclose()


# --- read-only, at load ------------------------------------------------------------------------

REFUSED = {
    "chained": ("SELECT client_id AS id FROM v_phones WHERE digits = :phone; DELETE FROM clients", "several"),
    "chained after a string": ("SELECT 'a;b' AS id WHERE :phone = '1'; DROP TABLE clients", "several"),
    "delete": ("DELETE FROM clients WHERE CAST(id AS TEXT) = :phone RETURNING id", "DELETE"),
    "update": ("UPDATE clients SET tier = 'x' WHERE CAST(id AS TEXT) = :phone RETURNING id", "UPDATE"),
    "insert": ("INSERT INTO clients (id, full_name) VALUES (9, :phone) RETURNING id", "INSERT"),
    "ddl": ("CREATE TABLE x AS SELECT id FROM clients WHERE tier = :phone", "CREATE"),
    "drop": ("DROP TABLE clients", "DROP"),
    "pragma": ("PRAGMA query_only = OFF", "PRAGMA"),
    "select into": ("SELECT id INTO stolen FROM clients WHERE tier = :phone", "INTO"),
    "for update": ("SELECT id FROM clients WHERE tier = :phone FOR UPDATE", "FOR UPDATE"),
    "for share": ("SELECT id FROM clients WHERE tier = :phone FOR KEY SHARE", "FOR UPDATE"),
    "cte insert": ("WITH x AS (INSERT INTO clients (id, full_name) VALUES (9, :phone) RETURNING id) SELECT id FROM x",
                   "INSERT"),
    "hidden in parentheses": ("(SELECT 1 AS id WHERE :phone = '1'); (DELETE FROM clients)", "several"),
    "unterminated": ("SELECT id FROM clients WHERE tier = ':phone", "unterminated"),
    "no parameter": ("SELECT id FROM clients", "does not use :phone"),
    "another parameter": ("SELECT client_id FROM v_phones WHERE digits = :phone OR client_id = :customer_id",
                          "uses :customer_id"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_query_that_is_not_a_single_read_only_select_is_refused_at_load(tmp_path: Path, case: str) -> None:
    sql, reason = REFUSED[case]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**MAPPING, "find_by_phone": sql}, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        SqlMapping.from_yaml(path)
    message = str(caught.value)
    assert str(path) in message and "query find_by_phone:" in message
    assert reason in message


def test_words_in_literals_comments_and_quoted_names_are_not_statements() -> None:
    assert read_only_problem("SELECT id, \"update\" FROM t WHERE note = 'DELETE; DROP' -- INSERT\n") is None
    assert read_only_problem("SELECT /* DROP /* nested */ TABLE */ $$; DELETE$$ AS x;") is None
    assert read_only_problem("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT i FROM n") is None
    assert read_only_problem("SELECT E'it\\'s; DELETE' AS x, updated_at, created FROM t") is None
    assert read_only_problem("select replace(phone, '-', '') from t") is None


def test_mapping_file_problems_are_config_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match="cannot read"):
        SqlMapping.from_yaml(missing)
    path = tmp_path / "m.yaml"
    path.write_text("find_by_phone: SELECT 1 AS id WHERE :phone = '1'\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="customer: Field required"):
        SqlMapping.from_yaml(path)
    path.write_text(yaml.safe_dump({"customer": MAPPING["customer"]}), encoding="utf-8")
    with pytest.raises(ConfigError, match="at least one of"):
        SqlMapping.from_yaml(path)
    path.write_text(yaml.safe_dump({**MAPPING, "values": {"tier": {"label": "x", "sensitivity": "top"}}}),
                    encoding="utf-8")
    with pytest.raises(ConfigError, match=r"values\.tier\.sensitivity"):
        SqlMapping.from_yaml(path)


def test_the_example_mapping_loads() -> None:
    mapping = SqlMapping.from_yaml(Path(__file__).resolve().parents[2] / "examples" / "crm" / "mapping.yaml")
    assert set(mapping.queries()) == {"find_by_phone", "find_by_email", "find_by_telegram", "find_by_id",
                                      "customer", "phones", "emails", "deals", "tasks"}


# --- read-only, in the database ----------------------------------------------------------------


async def test_a_write_that_gets_past_the_load_check_is_refused_by_the_database(
    company_db: Engine, db_url: str
) -> None:
    if _is_pg(db_url):
        sneaky = ["WITH x AS (INSERT INTO clients (id, full_name) VALUES (98, 'x') RETURNING id) SELECT id FROM x"]
    else:
        sneaky = ["WITH x AS (SELECT 98 AS id) INSERT INTO clients (id, full_name) SELECT id, 'x' FROM x"]
    sneaky.append("INSERT INTO clients (id, full_name) VALUES (99, 'x') RETURNING id")
    before = _count(company_db, "clients")
    for sql in sneaky:
        crm = SqlCrm(company_db, _unchecked(find_by_id=sql))
        try:
            with pytest.raises(CrmError, match="query find_by_id") as caught:
                await crm.find_customer(Lookup(crm_id="1"))
            assert not isinstance(caught.value, CrmUnavailable)
            assert "read" in str(caught.value).lower()  # "read-only transaction" / "readonly database"
        finally:
            await crm.aclose()
    assert _count(company_db, "clients") == before
    # the read-only mode ends with the call: the same engine still writes for its other users
    with company_db.begin() as conn:
        conn.execute(text("INSERT INTO todo (id, client_id, title, done) VALUES (30, 2, 'ok', :f)"), {"f": False})
    assert _count(company_db, "todo") == 2


async def test_a_select_that_writes_through_a_function_is_refused_by_postgresql(
    company_db: Engine, db_url: str
) -> None:
    if not _is_pg(db_url):
        pytest.skip("SQLite has no server-side functions that write")
    with company_db.begin() as conn:
        conn.exec_driver_sql(
            "CREATE FUNCTION sneaky_insert() RETURNS integer LANGUAGE sql AS "
            "$$ INSERT INTO clients (id, full_name) VALUES (97, 'x') RETURNING id $$"
        )
    # a plain SELECT to the load-time check: only the database can tell
    crm = SqlCrm(company_db, _mapping(find_by_id="SELECT sneaky_insert() AS id WHERE :customer_id <> ''"))
    try:
        with pytest.raises(CrmError, match="read-only transaction"):
            await crm.find_customer(Lookup(crm_id="1"))
    finally:
        await crm.aclose()
    assert _count(company_db, "clients") == 3


# --- time and availability ---------------------------------------------------------------------


def _slow_query(db_url: str, seconds: int) -> str:
    if _is_pg(db_url):
        return f"SELECT c.id FROM clients c, pg_sleep({seconds}) WHERE CAST(c.id AS TEXT) = :customer_id"
    rows = 100_000_000 * seconds  # far more than SQLite counts in the timeout
    return (f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) "
            "SELECT max(i) AS id FROM n WHERE :customer_id <> ''")


async def test_a_slow_query_hits_the_statement_timeout(company_db: Engine, db_url: str) -> None:
    crm = SqlCrm(company_db, _mapping(find_by_id=_slow_query(db_url, 5)), timeout_s=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(CrmUnavailable, match=r"query find_by_id took longer than 0\.5s"):
            await crm.find_customer(Lookup(crm_id="1"))
        assert time.monotonic() - started < 2.0  # the database stopped it, not the caller's grace
        # the connection went back to the pool clean: the next call works
        assert await crm.find_customer(Lookup(phone="79161234567")) is not None
    finally:
        await crm.aclose()


async def test_a_slow_query_does_not_block_the_event_loop(company_db: Engine, db_url: str) -> None:
    crm = SqlCrm(company_db, _mapping(find_by_id=_slow_query(db_url, 5)), timeout_s=0.4)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        with pytest.raises(CrmUnavailable):
            await crm.find_customer(Lookup(crm_id="1"))
    finally:
        ticker.cancel()
        await crm.aclose()
    assert ticks >= 10


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_an_unreachable_database_is_unavailable(db_url: str, tmp_path: Path) -> None:
    if _is_pg(db_url):
        url = f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/test"
    else:
        url = f"sqlite:///{tmp_path / 'no-such-dir' / 'crm.db'}"
    crm = SqlCrm.from_url(url, _mapping(), connect_timeout_s=2.0)
    try:
        with pytest.raises(CrmUnavailable, match="connecting to the database"):
            await crm.find_customer(Lookup(phone="79161234567"))
        with pytest.raises(CrmUnavailable):
            await crm.context(CustomerRef("sql", "1", "client"))
    finally:
        await crm.aclose()


async def test_a_database_that_refuses_our_user_is_a_crm_error(db_url: str) -> None:
    if not _is_pg(db_url):
        pytest.skip("SQLite has no users")
    url = make_url(db_url).set(username="no_such_role", password="wrong").render_as_string(hide_password=False)
    crm = SqlCrm.from_url(url, _mapping())
    try:
        with pytest.raises(CrmError, match="refused our user") as caught:
            await crm.find_customer(Lookup(phone="79161234567"))
        assert not isinstance(caught.value, CrmUnavailable)
    finally:
        await crm.aclose()


async def test_a_closed_adapter_refuses_calls(crm: SqlCrm) -> None:
    await crm.aclose()
    with pytest.raises(CrmError, match="closed"):
        await crm.find_customer(Lookup(crm_id="1"))


def test_only_postgresql_and_sqlite_are_supported() -> None:
    with pytest.raises(ConfigError, match="sqlite"):
        SqlCrm.from_url("mysql+pymysql://u@localhost/crm", _mapping())
