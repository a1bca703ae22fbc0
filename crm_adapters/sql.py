"""The company's own database as a CRM: named, read-only SELECT queries mapped by configuration.

Many banks keep customers in their own core or CRM database rather than in Bitrix24 or amoCRM.
Rather than code per schema, a deployment writes one YAML file (``SqlMapping``) with a few
parameterised SELECTs — usually against views the DBA creates for Perimeter — and says which
extra columns become tagged ``Value``s. ``examples/crm/mapping.yaml`` is a complete example and
``examples/crm/README.md`` explains how to write one.

The database is the company's, so we only ever read it, and that is enforced three times:

1. **At load**: each query must be one SELECT (or WITH … SELECT); chained statements, DML, DDL,
   ``SELECT … INTO`` and ``FOR UPDATE``/``FOR SHARE`` are refused with an error naming the query.
   This is a cheap tokenizer, not a SQL parser: it catches mistakes and obvious abuse.
2. **In the database**: every call runs in a read-only transaction (PostgreSQL ``SET TRANSACTION
   READ ONLY``, in REPEATABLE READ so one context is one consistent snapshot; SQLite ``PRAGMA
   query_only = ON``), which also stops writes the tokenizer cannot see — a function that
   inserts, a data-modifying CTE.
3. **By the deployment**: give Perimeter a database user with SELECT on its views only. Nothing
   here replaces that; 1 and 2 are for when it was forgotten.

Every call is bounded by ``timeout_s`` (PostgreSQL ``SET LOCAL statement_timeout`` with the time
left before each statement; SQLite a progress handler that interrupts the query), and runs in a
small thread pool of its own, so neither the event loop nor the service's own database work
(which uses the default executor) waits on a slow company database.

Parameters are SQLAlchemy bind parameters — ``:phone``, ``:email``, ``:telegram_id``,
``:customer_id`` — never string formatting. ``find_by_phone`` receives the digits
``base.normalize_phone`` returns (``79161234567``), so the company's view must expose phones in
that form too; the example shows such a view.

``SqlCrm`` is a ``CrmReader`` only, not a ``CrmWriter``: notes and tasks would be writes to the
company's database, which is read-only to us. A deployment that wants write-back uses a CRM
with an API for it (the demo adds its own writer next to the reader: ``crm_adapters.demo``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import sqlite3
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from datetime import time as dtime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from sqlalchemy import Engine, create_engine, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import TextClause

from crm_adapters.base import (
    AmbiguousCustomer,
    CrmError,
    CrmNotSent,
    CrmTask,
    CrmUnavailable,
    CustomerContext,
    CustomerRef,
    Deal,
    Lookup,
    Sensitivity,
    Value,
    normalize_phone,
)
from rag.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Each query and the one bind parameter it receives (and must use: a lookup that ignores the
# phone would match every customer, a context query that ignores the id would show another's).
QUERY_PARAMS: dict[str, str] = {
    "find_by_phone": "phone",
    "find_by_email": "email",
    "find_by_telegram": "telegram_id",
    "find_by_id": "customer_id",
    "customer": "customer_id",
    "phones": "customer_id",
    "emails": "customer_id",
    "deals": "customer_id",
    "tasks": "customer_id",
}
FIND_QUERIES = ("find_by_id", "find_by_telegram", "find_by_phone", "find_by_email")  # order of trust

# Columns with a fixed meaning; any other column becomes a Value only if ``values`` names it.
CUSTOMER_COLUMNS = frozenset({"id", "name"})
DEAL_COLUMNS = frozenset({"id", "title", "stage", "amount", "currency", "closed"})

SUPPORTED_DIALECTS = ("postgresql", "sqlite")

# Words that only a write, a schema change or a database-level command contains. Words that
# merely start other statements (CALL, COPY, LOCK ...) are caught by "must start with SELECT".
_WRITE_WORDS = frozenset({
    "INSERT", "UPDATE", "DELETE", "MERGE", "UPSERT", "TRUNCATE", "DROP", "ALTER", "CREATE",
    "GRANT", "REVOKE", "ATTACH", "DETACH", "PRAGMA", "VACUUM", "REINDEX",
})
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")

# SQLite primary result codes that mean "the database could not be used right now".
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_INTERRUPT = 5, 6, 9
_SQLITE_NOT_SENT = frozenset({_SQLITE_BUSY, _SQLITE_LOCKED, 14})  # 14: CANTOPEN
_SQLITE_UNAVAILABLE = frozenset({7, 10, 13, 15})  # NOMEM, IOERR, FULL, PROTOCOL
# PostgreSQL SQLSTATE classes of the same kind: connection, resources, operator intervention,
# system error, transaction rollback (serialization failure, deadlock).
_PG_UNAVAILABLE_CLASSES = frozenset({"08", "53", "57", "58", "40"})
_PG_QUERY_CANCELED = "57014"
# What the server says when our user, password or database name is wrong (not worth retrying).
_PG_REFUSED_AT_CONNECT = ("authentication failed", "does not exist", "no pg_hba.conf entry")

# How much longer than ``timeout_s`` the caller waits for the worker thread before giving up
# on it: the database's own timeout should have fired by then; this covers a hung connect.
_GRACE_S = 2.0


# --- the mapping -------------------------------------------------------------------------------


def _code_tokens(sql: str) -> list[str]:
    """The statement's words (upper-cased) and ``;``, ``(``, ``)``, outside comments, string
    literals and quoted identifiers, which may contain any word without it meaning anything."""
    tokens: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch.isspace():
            i += 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            depth, i = 1, i + 2  # PostgreSQL nests block comments
            while depth:
                if i >= n:
                    raise ValueError("unterminated /* comment")
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif ch == "'":
            # E'...' strings (PostgreSQL) take backslash escapes; standard strings do not.
            backslash = bool(tokens) and tokens[-1] == "E" and i > 0 and sql[i - 1] in "eE"
            if backslash:
                tokens.pop()
            i = _skip_quoted(sql, i, "'", backslash)
            tokens.append("'")
        elif ch in "\"`":
            i = _skip_quoted(sql, i, ch, False)
            tokens.append('"')
        elif ch == "$" and (tag := _DOLLAR_TAG.match(sql, i)):
            end = sql.find(tag.group(), tag.end())
            if end < 0:
                raise ValueError(f"unterminated {tag.group()} string")
            i = end + len(tag.group())
            tokens.append("'")
        elif word := _WORD.match(sql, i):
            tokens.append(word.group().upper())
            i = word.end()
        else:
            if ch in ";()":
                tokens.append(ch)
            i += 1
    return tokens


def _skip_quoted(sql: str, start: int, quote: str, backslash: bool) -> int:
    i = start + 1
    while i < len(sql):
        ch = sql[i]
        if backslash and ch == "\\":
            i += 2
        elif ch == quote:
            if sql.startswith(quote * 2, i):
                i += 2  # a doubled quote is the quote itself
            else:
                return i + 1
        else:
            i += 1
    raise ValueError(f"unterminated {quote}…{quote} literal")


def read_only_problem(sql: str) -> str | None:
    """Why this statement is not a single read-only SELECT, or None if it is one."""
    try:
        tokens = _code_tokens(sql)
    except ValueError as exc:
        return str(exc)
    if tokens and tokens[-1] == ";":
        tokens.pop()  # one trailing semicolon is harmless
    if not tokens:
        return "the statement is empty"
    if ";" in tokens:
        return "several statements chained with ';': only one SELECT is allowed"
    depth = 0
    for token in tokens:
        depth += {"(": 1, ")": -1}.get(token, 0)
        if depth < 0:
            break
    if depth != 0:
        return "unbalanced parentheses"
    first = next((t for t in tokens if t != "("), "")
    if first not in ("SELECT", "WITH"):
        return f"it starts with {first or 'nothing'}: only SELECT or WITH … SELECT is allowed"
    for i, token in enumerate(tokens):
        following = tokens[i + 1] if i + 1 < len(tokens) else ""
        if token in _WRITE_WORDS:
            return f"it contains {token}: only reads are allowed"
        if token == "INTO":
            return "SELECT … INTO creates a table: only reads are allowed"
        if token == "FOR" and following in ("UPDATE", "SHARE", "NO", "KEY"):
            return "FOR UPDATE / FOR SHARE locks rows: only plain reads are allowed"
    return None


class ValueSpec(BaseModel):
    """How one extra column is shown: its label (in the CRM's language), its sensitivity and,
    optionally, the ``Value.key`` to use instead of the column name (the same shape as
    ``base.FieldSpec``, validated strictly because it comes from a hand-written file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str = Field(min_length=1)
    sensitivity: Sensitivity
    key: str | None = None


class SqlMapping(BaseModel):
    """The queries that turn a company's database into a CRM, validated as read-only at load.

    - ``find_by_phone`` (``:phone``, normalised digits), ``find_by_email`` (``:email``, trimmed
      and lower-cased), ``find_by_telegram`` (``:telegram_id``, a string of digits) and
      ``find_by_id`` (``:customer_id``) return customer id rows (column ``id``, or the first);
      at least one is required, a missing one means "this database cannot be searched so".
    - ``customer`` (``:customer_id``) returns one row: ``id``, ``name`` and any other columns.
    - ``phones`` / ``emails`` return one per row (column ``phone`` / ``email``, or the first).
    - ``deals`` returns ``id``, ``title``, ``stage``, ``amount``, ``currency``, ``closed`` and
      extra columns; ``tasks`` returns ``id``, ``title``, ``deadline``, ``responsible``, ``done``.
    - ``values`` maps extra columns of ``customer`` and ``deals`` to a label and a sensitivity.
      A column it does not name is never shown — a ``SELECT *`` cannot leak a passport number.

    Column names are compared case-insensitively. Values are shown as text: numbers as the
    database returns them, dates in ISO form, booleans as да/нет; format in SQL for anything
    else. ``kind`` becomes ``CustomerRef.kind``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = "customer"
    find_by_phone: str | None = None
    find_by_email: str | None = None
    find_by_telegram: str | None = None
    find_by_id: str | None = None
    customer: str
    phones: str | None = None
    emails: str | None = None
    deals: str | None = None
    tasks: str | None = None
    values: dict[str, ValueSpec] = Field(default_factory=dict)
    name_label: str = "Имя"
    phone_label: str = "Телефон"
    email_label: str = "E-mail"

    @field_validator(*QUERY_PARAMS, mode="after")
    @classmethod
    def _single_read_only_select(cls, sql: str | None, info: ValidationInfo) -> str | None:
        if sql is None:
            return None
        assert info.field_name is not None
        problem = read_only_problem(sql)
        if problem is not None:
            raise ValueError(problem)
        expected = QUERY_PARAMS[info.field_name]
        try:
            used = set(text(sql).compile().params)
        except sa_exc.SQLAlchemyError as exc:  # pragma: no cover - text() accepts nearly anything
            raise ValueError(f"cannot be read as SQL: {exc}") from exc
        if used - {expected}:
            names = ", ".join(f":{p}" for p in sorted(used - {expected}))
            raise ValueError(f"uses {names}, but it is given only :{expected}")
        if expected not in used:
            raise ValueError(f"does not use :{expected}, so its rows would not depend on it")
        return sql

    @field_validator("values", mode="after")
    @classmethod
    def _lower_case_columns(cls, values: dict[str, ValueSpec]) -> dict[str, ValueSpec]:
        return {column.lower(): spec for column, spec in values.items()}

    @model_validator(mode="after")
    def _can_find_someone(self) -> SqlMapping:
        if not any(getattr(self, q) for q in FIND_QUERIES):
            raise ValueError(f"at least one of {', '.join(FIND_QUERIES)} is needed to find a customer")
        return self

    def queries(self) -> dict[str, str]:
        """The configured queries by name."""
        return {name: sql for name in QUERY_PARAMS if (sql := getattr(self, name)) is not None}

    @classmethod
    def from_yaml(cls, path: str | Path) -> SqlMapping:
        """Load and validate a mapping file; every problem is a ``ConfigError`` naming the file
        and the query, so a bad mapping stops start-up instead of the first customer's lookup."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the SQL mapping: {exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the SQL mapping must be a YAML mapping of query names to SELECTs")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"{path}: {_describe(exc)}") from exc


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        if where in QUERY_PARAMS:
            problems.append(f"query {where}: {message}")
        elif where:
            problems.append(f"{where}: {message}")
        else:
            problems.append(message)
    return "; ".join(problems)


# --- the adapter -------------------------------------------------------------------------------


class _DeadlineExceeded(Exception):
    """The call's time ran out between statements."""


class _Session:
    """One read-only transaction: runs the mapping's queries, each within the time left."""

    def __init__(self, conn: Connection, dialect: str, deadline: float) -> None:
        self.conn = conn
        self.dialect = dialect
        self.deadline = deadline
        self.query: str | None = None  # the query running, for error messages
        self.params: Mapping[str, str] = {}

    def rows(self, query: str, stmt: TextClause, params: Mapping[str, str]) -> list[dict[str, Any]]:
        self.query, self.params = query, params
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _DeadlineExceeded
        if self.dialect == "postgresql":
            # SET takes no bind parameters; this is our own integer, not input.
            self.conn.exec_driver_sql(f"SET LOCAL statement_timeout = {max(1, int(left * 1000))}")
        result = self.conn.execute(stmt, dict(params))
        return [{str(k).lower(): v for k, v in row.items()} for row in result.mappings()]


class SqlCrm:
    """A ``CrmReader`` over the company's database through an ``SqlMapping``; see the module.

    ``engine`` is the caller's (``from_url`` makes one and then owns it): ``aclose`` stops the
    worker threads and disposes only an engine it owns. ``name`` is ``CustomerRef.crm``.

    ``find_customer`` uses the most trusted key of the ``Lookup`` the mapping has a query for
    (``crm_id``, ``telegram_id``, ``phone``, ``email``) and only that one; several distinct ids
    raise ``AmbiguousCustomer``. Errors: a connection that fails, a database that is down or a
    call past ``timeout_s`` is ``CrmUnavailable`` (``CrmNotSent`` when no query ran); bad SQL,
    a refused write, bad credentials or rows the mapping cannot read are ``CrmError``.
    """

    def __init__(
        self,
        engine: Engine,
        mapping: SqlMapping,
        *,
        name: str = "sql",
        timeout_s: float = 5.0,
        max_workers: int = 4,
        dispose_engine: bool = False,
    ) -> None:
        dialect = engine.dialect.name
        if dialect not in SUPPORTED_DIALECTS:
            raise ConfigError(
                f"SQL CRM {name}: {dialect} is not supported (read-only mode and timeouts are implemented "
                f"for {' and '.join(SUPPORTED_DIALECTS)})"
            )
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.name = name
        self.mapping = mapping
        self.timeout_s = timeout_s
        self._engine = engine
        self._dialect = dialect
        self._dispose_engine = dispose_engine
        self._statements = {q: text(sql) for q, sql in mapping.queries().items()}
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=f"crm-{name}")

    @classmethod
    def from_url(
        cls,
        url: str,
        mapping: SqlMapping,
        *,
        name: str = "sql",
        timeout_s: float = 5.0,
        connect_timeout_s: float = 3.0,
        max_workers: int = 4,
    ) -> SqlCrm:
        """An adapter with an engine of its own, whose connects give up after ``connect_timeout_s``."""
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": connect_timeout_s})
        elif url.startswith("postgresql"):
            connect_timeout = max(1, math.ceil(connect_timeout_s))  # libpq takes whole seconds
            engine = create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": connect_timeout})
        else:
            raise ConfigError(f"SQL CRM {name}: the URL must be sqlite:// or postgresql+psycopg://")
        return cls(engine, mapping, name=name, timeout_s=timeout_s, max_workers=max_workers, dispose_engine=True)

    # --- the port ------------------------------------------------------------------------------

    async def find_customer(self, lookup: Lookup) -> CustomerRef | None:
        chosen = self._choose(lookup)
        if chosen is None:
            return None
        query, params = chosen
        stmt = self._statements[query]

        def find(session: _Session) -> list[str]:
            ids: list[str] = []
            for row in session.rows(query, stmt, params):
                value = row["id"] if "id" in row else next(iter(row.values()), None)
                if value is not None and str(value) not in ids:
                    ids.append(str(value))
            return ids

        ids = await self._run(find)
        if len(ids) > 1:
            raise AmbiguousCustomer(f"CRM {self.name}: {len(ids)} customers match {query}; none is chosen")
        return CustomerRef(self.name, ids[0], self.mapping.kind) if ids else None

    async def context(self, ref: CustomerRef) -> CustomerContext:
        if ref.crm != self.name:
            raise CrmError(f"CRM {self.name} was asked for a customer of CRM {ref.crm}")
        return await self._run(lambda session: self._read_context(session, ref))

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._dispose_engine:
            self._engine.dispose()

    # --- reading -------------------------------------------------------------------------------

    def _choose(self, lookup: Lookup) -> tuple[str, dict[str, str]] | None:
        email = lookup.email.strip().lower() if lookup.email else None
        phone = normalize_phone(lookup.phone) if lookup.phone else None
        for query, value in (
            ("find_by_id", lookup.crm_id),
            ("find_by_telegram", lookup.telegram_id),
            ("find_by_phone", phone),
            ("find_by_email", email),
        ):
            if value and query in self._statements:
                return query, {QUERY_PARAMS[query]: value}
        return None

    def _read_context(self, s: _Session, ref: CustomerRef) -> CustomerContext:
        params = {"customer_id": ref.id}
        rows = s.rows("customer", self._statements["customer"], params)
        if not rows:
            raise CrmError(f"CRM {self.name}: query customer found no customer {ref.id}")
        if len(rows) > 1:
            raise CrmError(f"CRM {self.name}: query customer returned {len(rows)} rows for one customer id")
        row = rows[0]
        if "name" not in row:
            raise CrmError(f"CRM {self.name}: query customer must return a column named name")
        name = Value("name", self.mapping.name_label, _text(row["name"]) or "", "personal")
        phones = self._contacts(s, "phones", "phone", self.mapping.phone_label, params)
        emails = self._contacts(s, "emails", "email", self.mapping.email_label, params)
        deals = tuple(self._deal(r) for r in self._rows(s, "deals", params))
        tasks = tuple(self._task(r) for r in self._rows(s, "tasks", params))
        return CustomerContext(
            customer=ref,
            name=name,
            phones=phones,
            emails=emails,
            deals=deals,
            tasks=tasks,
            values=self._values(row, CUSTOMER_COLUMNS),
            fetched_at=datetime.now(UTC),
        )

    def _rows(self, s: _Session, query: str, params: Mapping[str, str]) -> list[dict[str, Any]]:
        stmt = self._statements.get(query)
        return [] if stmt is None else s.rows(query, stmt, params)

    def _contacts(
        self, s: _Session, query: str, column: str, label: str, params: Mapping[str, str]
    ) -> tuple[Value, ...]:
        seen: list[str] = []
        for row in self._rows(s, query, params):
            raw = row[column] if column in row else next(iter(row.values()), None)
            value = _text(raw)
            if value and value not in seen:
                seen.append(value)
        return tuple(
            Value(column if i == 0 else f"{column}_{i + 1}", label, value, "personal") for i, value in enumerate(seen)
        )

    def _values(self, row: Mapping[str, Any], core: frozenset[str]) -> tuple[Value, ...]:
        out = []
        for column, spec in self.mapping.values.items():
            if column in core or column not in row:
                continue
            value = _text(row[column])
            if value is not None:
                out.append(Value(spec.key or column, spec.label, value, spec.sensitivity))
        return tuple(out)

    def _deal(self, row: Mapping[str, Any]) -> Deal:
        for column in ("id", "title"):
            if row.get(column) is None:
                raise CrmError(f"CRM {self.name}: query deals must return a non-empty {column} column")
        return Deal(
            id=str(row["id"]),
            title=_text(row["title"]) or "",
            stage=_text(row.get("stage")) or "",
            amount=_decimal(row.get("amount"), self.name),
            currency=_text(row.get("currency")),
            closed=_flag(row.get("closed")),
            values=self._values(row, DEAL_COLUMNS),
        )

    def _task(self, row: Mapping[str, Any]) -> CrmTask:
        for column in ("id", "title"):
            if row.get(column) is None:
                raise CrmError(f"CRM {self.name}: query tasks must return a non-empty {column} column")
        return CrmTask(
            id=str(row["id"]),
            title=_text(row["title"]) or "",
            deadline=_datetime(row.get("deadline"), self.name),
            responsible=_text(row.get("responsible")),
            done=_flag(row.get("done")),
        )

    # --- running -------------------------------------------------------------------------------

    async def _run(self, work: Callable[[_Session], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._executor, self._run_sync, work)
        except RuntimeError as exc:  # the executor is shut down
            raise CrmError(f"CRM {self.name} is closed") from exc
        try:
            async with asyncio.timeout(self.timeout_s + _GRACE_S):
                return await future
        except TimeoutError as exc:
            # The database's own timeout should have fired; the worker is stuck (a hung
            # connect, a dead network). It ends on its own; the caller does not wait for it.
            raise CrmUnavailable(f"CRM {self.name}: the database did not answer within {self.timeout_s:g}s") from exc

    def _run_sync(self, work: Callable[[_Session], T]) -> T:
        deadline = time.monotonic() + self.timeout_s
        interrupted = [False]
        session: _Session | None = None
        try:
            with self._engine.connect() as conn:
                raw: sqlite3.Connection | None = None
                if self._dialect == "sqlite":
                    raw = conn.connection.dbapi_connection  # type: ignore[assignment]
                    assert raw is not None

                    def progress() -> int:
                        if time.monotonic() >= deadline:
                            interrupted[0] = True
                            return 1  # SQLite aborts the statement with SQLITE_INTERRUPT
                        return 0

                    # On the driver connection, outside SQLAlchemy's transaction bookkeeping:
                    # PRAGMA query_only makes SQLite refuse every write on this connection.
                    raw.execute("PRAGMA query_only = ON")
                    raw.set_progress_handler(progress, 1000)
                else:
                    # A real transaction (even on an AUTOCOMMIT engine), one snapshot for all queries.
                    conn.execution_options(isolation_level="REPEATABLE READ")
                try:
                    session = _Session(conn, self._dialect, deadline)
                    trans = conn.begin()
                    try:
                        if self._dialect == "postgresql":
                            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                        return work(session)
                    finally:
                        trans.rollback()  # nothing to keep: it was read-only
                finally:
                    if raw is not None:
                        raw.set_progress_handler(None, 0)
                        try:
                            raw.execute("PRAGMA query_only = OFF")
                        except sqlite3.Error:  # the connection is broken; the pool will drop it
                            conn.invalidate()
        except (CrmError, CrmUnavailable):
            raise
        except _DeadlineExceeded as exc:
            raise self._timed_out(session) from exc
        except Exception as exc:
            raise self._translate(exc, session, interrupted[0]) from exc

    def _timed_out(self, session: _Session | None) -> CrmUnavailable:
        where = f"query {session.query}" if session and session.query else "the call"
        return CrmUnavailable(f"CRM {self.name}: {where} took longer than {self.timeout_s:g}s")

    def _translate(self, exc: Exception, session: _Session | None, interrupted: bool) -> Exception:
        """Retryable trouble → ``CrmUnavailable``; everything the database refused → ``CrmError``."""
        query = session.query if session else None
        connecting = query is None
        where = f"query {query}" if query else "connecting to the database"
        detail = _detail(exc, session.params if session else {})
        if interrupted:
            return self._timed_out(session)
        if isinstance(exc, sa_exc.TimeoutError):
            return CrmNotSent(f"CRM {self.name}: no free database connection: {detail}")
        if not isinstance(exc, sa_exc.DBAPIError):
            return CrmError(f"CRM {self.name}: {where} failed: {detail}")
        orig = exc.orig
        if self._dialect == "postgresql":
            sqlstate = getattr(orig, "sqlstate", None) or ""
            if sqlstate == _PG_QUERY_CANCELED:
                return self._timed_out(session)
            refused = sqlstate.startswith(("28", "3D")) or (
                # libpq reports connect-time refusals without a SQLSTATE: only the text tells
                connecting and any(phrase in str(orig) for phrase in _PG_REFUSED_AT_CONNECT)
            )
            if refused:
                return CrmError(f"CRM {self.name}: the database refused our user or database name: {detail}")
            transient = sqlstate[:2] in _PG_UNAVAILABLE_CLASSES or (
                not sqlstate and isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)
            )
        else:
            code = getattr(orig, "sqlite_errorcode", 0) & 0xFF
            if code == _SQLITE_INTERRUPT:
                return self._timed_out(session)
            transient = code in _SQLITE_NOT_SENT or code in _SQLITE_UNAVAILABLE
            connecting = connecting or code in _SQLITE_NOT_SENT
        if transient or exc.connection_invalidated:
            cls = CrmNotSent if connecting else CrmUnavailable
            return cls(f"CRM {self.name}: {where} failed, the database is unavailable: {detail}")
        return CrmError(f"CRM {self.name}: {where} failed: {detail}")


# --- conversions -------------------------------------------------------------------------------


def _detail(exc: Exception, params: Mapping[str, str]) -> str:
    """The driver's message, first line, without the values we bound (a phone, an e-mail):
    error messages end up in logs, customer data must not."""
    orig = getattr(exc, "orig", None) or exc
    message = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    for value in params.values():
        if value:
            message = message.replace(value, "<param>")
    return f"{type(orig).__name__}: {message}"[:300]


def _text(value: object) -> str | None:
    """A column's value as the text a ``Value`` holds; None stays None (nothing to show)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "да" if value else "нет"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return None  # binary columns have no place in a prompt or on a screen
    return str(value)


def _flag(value: object) -> bool:
    if value is None:
        return False
    if isinstance(value, str):
        return value.strip().lower() in ("1", "t", "true", "y", "yes", "да")
    return bool(value)


def _decimal(value: object, crm: str) -> Decimal | None:
    if value is None or value == "":
        return None
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool):
        raise CrmError(f"CRM {crm}: query deals returned a boolean amount")
    if isinstance(value, int | float):
        return Decimal(str(value))
    try:
        return Decimal(str(value).strip())
    except InvalidOperation as exc:
        raise CrmError(f"CRM {crm}: query deals returned an amount that is not a number") from exc


def _datetime(value: object, crm: str) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime.combine(value, dtime())
    try:
        return datetime.fromisoformat(str(value).strip())
    except ValueError as exc:
        raise CrmError(f"CRM {crm}: query tasks returned a deadline that is not an ISO date") from exc
