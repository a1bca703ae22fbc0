"""The demo CRM: the sample bank's customer database in SQLite, read through the real SQL adapter.

``perimeter demo`` needs customers to look up without anyone running a CRM. Rather than a
stand-in with its own code path, the demo is a small "company database" — tables a bank could
have, plus the two views a DBA would write for Perimeter (phones as normalised digits, the
next loan payment date) — built from ``examples/crm/customers.json`` and read by ``SqlCrm``
through ``examples/crm/mapping.yaml``: what the demo shows is what a deployment on its own
database gets. Only write-back is demo-specific: a real company database is read-only to us,
so ``DemoCrm`` adds a small writer that puts notes and tasks into the demo database's own
``notes`` and ``tasks`` tables, where ``tasks`` is read back by the mapping.

The database is built idempotently: the seed's fingerprint (the JSON and the schema below) is
stored in it, and a build with the same fingerprint changes nothing. When the JSON or the
schema changes, the customers' tables are rebuilt; notes and tasks written by Perimeter stay.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from bot.storage.database import create_db_engine
from crm_adapters.base import CrmError, CrmNotSent, CustomerContext, CustomerRef, Lookup, NewTask
from crm_adapters.sql import SqlCrm, SqlMapping
from rag.errors import ConfigError

T = TypeVar("T")

EXAMPLES_CRM = Path(__file__).resolve().parents[1] / "examples" / "crm"
DEFAULT_CUSTOMERS = EXAMPLES_CRM / "customers.json"
DEFAULT_MAPPING = EXAMPLES_CRM / "mapping.yaml"

DEMO_CRM_NAME = "demo"
NOTE_AUTHOR = "Perimeter"

_PRODUCT_TYPES: dict[str, tuple[str, str]] = {
    # type code: (what the bank calls it, what the amount of the product is)
    "debit_card": ("Дебетовая карта", "остаток на карте"),
    "credit_card": ("Кредитная карта", "задолженность по карте"),
    "deposit": ("Вклад", "сумма вклада"),
    "savings": ("Накопительный счёт", "остаток на счёте"),
    "consumer_loan": ("Потребительский кредит", "остаток долга"),
    "mortgage": ("Ипотека", "остаток долга"),
}

# The bank's tables. Re-seeding replaces customers, their phones, e-mails, products and the
# tasks that came from the JSON (source 'seed'); notes and Perimeter's tasks are never touched.
_TABLES = (
    """CREATE TABLE IF NOT EXISTS customers (
        id INTEGER PRIMARY KEY,
        full_name TEXT NOT NULL,
        segment TEXT,
        language TEXT,
        branch TEXT,
        client_since TEXT,
        telegram_id TEXT,
        passport TEXT,
        security_note TEXT)""",
    """CREATE TABLE IF NOT EXISTS customer_phones (
        customer_id INTEGER NOT NULL,
        position INTEGER NOT NULL,
        phone TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS customer_emails (
        customer_id INTEGER NOT NULL,
        position INTEGER NOT NULL,
        email TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS products (
        id INTEGER PRIMARY KEY,
        customer_id INTEGER NOT NULL,
        type_code TEXT NOT NULL,
        product_type TEXT NOT NULL,
        amount_meaning TEXT NOT NULL,
        title TEXT NOT NULL,
        status TEXT NOT NULL,
        amount NUMERIC,
        currency TEXT NOT NULL DEFAULT 'RUB',
        card TEXT,
        rate NUMERIC,
        credit_limit NUMERIC,
        monthly_payment NUMERIC,
        payment_day INTEGER CHECK (payment_day BETWEEN 1 AND 28),
        opened_on TEXT,
        closes_on TEXT,
        closed INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS tasks (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        customer_id INTEGER NOT NULL,
        title TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        deadline TEXT,
        responsible TEXT,
        done INTEGER NOT NULL DEFAULT 0,
        source TEXT NOT NULL,
        created_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS notes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        customer_id INTEGER NOT NULL,
        product_id INTEGER,
        text TEXT NOT NULL,
        author TEXT NOT NULL,
        created_at TEXT NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS demo_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)

# What a DBA would add for Perimeter. Phones are stored as people typed them; the view strips
# the punctuation and turns 8XXXXXXXXXX / 9XXXXXXXXX into 7XXXXXXXXXX, as base.normalize_phone
# does. Money is kept as numbers and shown with two decimals (kopecks); the next payment is
# the payment day of this month, or of the next one once it has passed.
_VIEWS = (
    """CREATE VIEW v_customer_phones AS
    WITH cleaned AS (
        SELECT customer_id, phone,
               replace(replace(replace(replace(replace(replace(phone,
                   ' ', ''), '-', ''), '(', ''), ')', ''), '+', ''), '.', '') AS d
        FROM customer_phones)
    SELECT customer_id, phone,
           CASE WHEN length(d) = 11 AND substr(d, 1, 1) = '8' THEN '7' || substr(d, 2)
                WHEN length(d) = 10 AND substr(d, 1, 1) = '9' THEN '7' || d
                ELSE d END AS phone_digits
    FROM cleaned""",
    """CREATE VIEW v_products AS
    WITH due AS (
        SELECT p.*,
               date('now', 'localtime', 'start of month', printf('+%d days', payment_day - 1)) AS this_month,
               date('now', 'localtime', 'start of month', '+1 month', printf('+%d days', payment_day - 1))
                   AS next_month
        FROM products p)
    SELECT id, customer_id, type_code, product_type, amount_meaning, title, status,
           CASE WHEN amount IS NULL THEN NULL ELSE printf('%.2f', amount) END AS amount,
           currency, card, rate,
           CASE WHEN credit_limit IS NULL THEN NULL ELSE printf('%.2f', credit_limit) END AS credit_limit,
           CASE WHEN monthly_payment IS NULL THEN NULL ELSE printf('%.2f', monthly_payment) END AS monthly_payment,
           payment_day, opened_on, closes_on, closed,
           CASE WHEN payment_day IS NULL OR closed THEN NULL
                WHEN this_month >= date('now', 'localtime') THEN this_month
                ELSE next_month END AS next_payment_date
    FROM due""",
)
_VIEW_NAMES = ("v_customer_phones", "v_products")


@dataclass(frozen=True)
class DemoNote:
    """A note Perimeter wrote into the demo database (the demo's timeline)."""

    id: str
    customer_id: str
    text: str
    deal_id: str | None
    author: str
    created_at: datetime


def build_demo_database(path: Path, customers: Path = DEFAULT_CUSTOMERS) -> bool:
    """Create the demo database at ``path`` from ``customers``, or bring it up to date.

    Returns True when the customers were (re)loaded, False when the database already held this
    seed. Safe to run from several processes at once: the build is one ``BEGIN IMMEDIATE``
    transaction, so the second waits for the first and then finds nothing to do.
    """
    try:
        raw = customers.read_bytes()
        data = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{customers}: cannot read the demo customers: {exc}") from exc
    rows = _seed_rows(data, customers)
    fingerprint = hashlib.sha256(raw + "\n".join(_TABLES + _VIEWS).encode()).hexdigest()
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for ddl in _TABLES:
                conn.execute(ddl)
            row = conn.execute("SELECT value FROM demo_meta WHERE key = 'seed'").fetchone()
            if row is not None and row[0] == fingerprint:
                conn.execute("COMMIT")
                return False
            for view in _VIEW_NAMES:
                conn.execute(f"DROP VIEW IF EXISTS {view}")
            for ddl in _VIEWS:
                conn.execute(ddl)
            for table in ("customers", "customer_phones", "customer_emails", "products"):
                conn.execute(f"DELETE FROM {table}")
            conn.execute("DELETE FROM tasks WHERE source = 'seed'")
            for table, table_rows in rows.items():
                for values in table_rows:
                    columns = ", ".join(values)
                    marks = ", ".join(f":{c}" for c in values)
                    conn.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", values)
            conn.execute(
                "INSERT INTO demo_meta (key, value) VALUES ('seed', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (fingerprint,),
            )
            conn.execute("COMMIT")
            return True
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()


def _seed_rows(data: object, source: Path) -> dict[str, list[dict[str, Any]]]:
    """The JSON as table rows; a missing or wrong field is a ``ConfigError`` naming the customer."""
    if not isinstance(data, dict) or not isinstance(data.get("customers"), list):
        raise ConfigError(f"{source}: expected {{\"customers\": [...]}}")
    now = datetime.now(UTC).isoformat()
    out: dict[str, list[dict[str, Any]]] = {
        "customers": [], "customer_phones": [], "customer_emails": [], "products": [], "tasks": []
    }
    for c in data["customers"]:
        who = f"{source}: customer {c.get('id', '?') if isinstance(c, dict) else c!r}"
        try:
            cid = int(c["id"])
            out["customers"].append(dict(
                id=cid, full_name=str(c["name"]), segment=c.get("segment"), language=c.get("language"),
                branch=c.get("branch"), client_since=c.get("client_since"),
                telegram_id=str(c["telegram_id"]) if c.get("telegram_id") else None,
                passport=c.get("passport"), security_note=c.get("security_note"),
            ))
            for i, phone in enumerate(c.get("phones", [])):
                out["customer_phones"].append(dict(customer_id=cid, position=i, phone=str(phone)))
            for i, email in enumerate(c.get("emails", [])):
                out["customer_emails"].append(dict(customer_id=cid, position=i, email=str(email)))
            for p in c.get("products", []):
                kind, meaning = _PRODUCT_TYPES[p["type"]]
                out["products"].append(dict(
                    id=int(p["id"]), customer_id=cid, type_code=p["type"], product_type=kind,
                    amount_meaning=meaning, title=str(p["title"]), status=str(p["status"]),
                    amount=p.get("amount"), currency=p.get("currency", "RUB"),
                    card=f"•• {p['card_last4']}" if p.get("card_last4") else None,
                    rate=p.get("rate"), credit_limit=p.get("credit_limit"),
                    monthly_payment=p.get("monthly_payment"), payment_day=p.get("payment_day"),
                    opened_on=p.get("opened_on"), closes_on=p.get("closes_on"), closed=int(bool(p.get("closed"))),
                ))
            for t in c.get("tasks", []):
                out["tasks"].append(dict(
                    customer_id=cid, title=str(t["title"]), description=t.get("description", ""),
                    deadline=t.get("deadline"), responsible=t.get("responsible"), done=0,
                    source="seed", created_at=now,
                ))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{who}: missing or invalid field: {exc}") from exc
    return out


class DemoCrm:
    """``CrmReader`` + ``CrmWriter`` on the demo database: ``SqlCrm`` reads, a small writer writes.

    Building the database (``build_demo_database``) happens here, once, at start-up: it takes a
    few milliseconds. ``notes(ref)`` reads back what ``add_note`` wrote (``CustomerContext`` has
    no notes; the demo shows them so write-back is visible). Write errors follow the port:
    SQLite busy or locked is ``CrmNotSent`` (nothing was written, a retry is safe), anything
    else ``CrmError``.
    """

    name = DEMO_CRM_NAME

    def __init__(
        self,
        db_path: Path,
        *,
        customers: Path = DEFAULT_CUSTOMERS,
        mapping: Path = DEFAULT_MAPPING,
        timeout_s: float = 5.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db_path = db_path
        self.seeded = build_demo_database(db_path, customers)
        url = f"sqlite:///{db_path}"
        # Two engines: the reader's connections are switched to query_only while they read,
        # the writer's never are.
        self.reader = SqlCrm(create_db_engine(url), SqlMapping.from_yaml(mapping), name=self.name,
                             timeout_s=timeout_s, dispose_engine=True)
        self._writes: Engine = create_db_engine(url)
        self._clock = clock

    async def find_customer(self, lookup: Lookup) -> CustomerRef | None:
        return await self.reader.find_customer(lookup)

    async def context(self, ref: CustomerRef) -> CustomerContext:
        return await self.reader.context(ref)

    async def add_note(self, ref: CustomerRef, text: str, *, deal_id: str | None = None) -> str:
        if not text.strip():
            raise CrmError("the note is empty")
        now = self._clock()

        def write(conn: Connection) -> str:
            customer_id = self._customer_id(conn, ref)
            product_id = self._product_id(conn, customer_id, deal_id)
            return self._insert(conn, "notes", dict(
                customer_id=customer_id, product_id=product_id, text=text, author=NOTE_AUTHOR,
                created_at=now.isoformat()))

        return await self._tx(write)

    async def add_task(self, ref: CustomerRef, task: NewTask) -> str:
        if not task.title.strip():
            raise CrmError("the task has no title")
        now = self._clock()

        def write(conn: Connection) -> str:
            return self._insert(conn, "tasks", dict(
                customer_id=self._customer_id(conn, ref), title=task.title, description=task.description,
                deadline=task.deadline.isoformat() if task.deadline is not None else None,
                responsible=task.responsible_id, done=0, source="perimeter", created_at=now.isoformat()))

        return await self._tx(write)

    async def notes(self, ref: CustomerRef) -> list[DemoNote]:
        """The notes on this customer, oldest first."""

        def read(conn: Connection) -> list[DemoNote]:
            customer_id = self._customer_id(conn, ref)
            rows = conn.execute(
                text("SELECT id, customer_id, product_id, text, author, created_at FROM notes "
                     "WHERE customer_id = :c ORDER BY id"),
                {"c": customer_id},
            ).mappings()
            return [
                DemoNote(str(r["id"]), str(r["customer_id"]), r["text"],
                         None if r["product_id"] is None else str(r["product_id"]), r["author"],
                         datetime.fromisoformat(r["created_at"]))
                for r in rows
            ]

        return await self._tx(read)

    async def aclose(self) -> None:
        await self.reader.aclose()
        self._writes.dispose()

    # --- writing -------------------------------------------------------------------------------

    async def _tx(self, fn: Callable[[Connection], T]) -> T:
        return await asyncio.to_thread(self._tx_sync, fn)

    def _tx_sync(self, fn: Callable[[Connection], T]) -> T:
        try:
            with self._writes.begin() as conn:
                return fn(conn)
        except sa_exc.DBAPIError as exc:
            code = getattr(exc.orig, "sqlite_errorcode", 0) & 0xFF
            if code in (5, 6):  # SQLITE_BUSY, SQLITE_LOCKED: the statement did not run
                raise CrmNotSent(f"CRM {self.name}: the demo database is busy: {exc.orig}") from exc
            raise CrmError(f"CRM {self.name}: the demo database refused the write: {exc.orig}") from exc

    def _customer_id(self, conn: Connection, ref: CustomerRef) -> int:
        if ref.crm != self.name:
            raise CrmError(f"CRM {self.name} was given a customer of CRM {ref.crm}")
        found = conn.execute(text("SELECT id FROM customers WHERE id = :c"), {"c": ref.id}).scalar()
        if found is None:
            raise CrmError(f"CRM {self.name}: no customer {ref.id}")
        return int(found)

    def _product_id(self, conn: Connection, customer_id: int, deal_id: str | None) -> int | None:
        if deal_id is None:
            return None
        found = conn.execute(
            text("SELECT id FROM products WHERE id = :d AND customer_id = :c"), {"d": deal_id, "c": customer_id}
        ).scalar()
        if found is None:
            raise CrmError(f"CRM {self.name}: customer {customer_id} has no deal {deal_id}")
        return int(found)

    @staticmethod
    def _insert(conn: Connection, table: str, values: Mapping[str, object]) -> str:
        columns = ", ".join(values)
        marks = ", ".join(f":{c}" for c in values)
        new_id = conn.execute(text(f"INSERT INTO {table} ({columns}) VALUES ({marks}) RETURNING id"), dict(values))
        return str(new_id.scalar_one())

