"""A real HTTP server on 127.0.0.1 that speaks the amoCRM / Kommo API v4 the adapter uses.

The amoCRM adapter is tested against actual sockets, status codes and HAL bodies rather than mocks
of its own functions. What the server answers, the way amo documents it (amocrm.ru/developers,
developers.kommo.com):

- ``POST /oauth2/access_token`` (``grant_type=refresh_token``; JSON or form body): checks
  ``client_id``, ``client_secret``, ``redirect_uri`` and the refresh token, then rotates *both* tokens
  — the old refresh token is single-use, the old access token stops working.
- Every ``/api/v4/`` request needs ``Authorization: Bearer <access token>``; an expired or unknown
  token gets 401 ``application/problem+json``.
- ``GET /api/v4/account``; ``GET /api/v4/contacts`` (``query``: amo's fuzzy search, a substring of the
  name or any field value, phones also by their digits; ``filter[id][]``; ``with=leads``);
  ``GET /api/v4/contacts/{id}``; ``GET /api/v4/leads`` (``filter[id][]``); ``GET /api/v4/leads/{id}``;
  ``GET /api/v4/leads/pipelines`` (each pipeline with its statuses, the system 142 «Успешно
  реализовано» and 143 «Закрыто и не реализовано» included); ``GET /api/v4/tasks``
  (``filter[entity_type]``, ``filter[entity_id][]``, ``filter[is_completed]``); ``POST /api/v4/tasks``;
  ``POST /api/v4/{contacts|leads}/{id}/notes``.
- Lists are HAL with ``page`` / ``limit`` (default 50), ``_page``, ``_links.self`` and ``_links.next``
  while more remain; an empty list — or a missing entity by id — is ``204 No Content`` with no body.
- Custom fields as ``custom_fields_values`` ``[{field_id, field_name, field_code, field_type,
  values: [{value, enum_id, enum_code}]}]``; contacts have the PHONE and EMAIL multitext fields.

Script trouble with ``fail_next`` (amo-like bodies: problem+json, ``validation-errors`` for 400, an
nginx HTML page for 502–504), ``slow_next``, ``expire_access_token``, ``revoke_refresh_token`` and
``rate_limit`` (429 past N requests in a window, amo's 7 requests/s by default when enabled). Read
``requests`` (every request with its status), ``notes``, ``tasks``, ``token_refreshes``.

Deliberate differences from amo, each to keep tests honest or simple:

- ``limit`` over 250 is refused with 400 rather than clamped, so an adapter bug shows.
- A note or task bound to an entity that does not exist gets 400 ``validation-errors`` (amo's exact
  answer is not documented).
- ``query`` is a plain case-insensitive substring search; amo's index is fuzzier still.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_CLIENT_ID = "5f1e6c0a-3b7d-4e52-9a1c-perimeter0001"
DEFAULT_CLIENT_SECRET = "Zq8vN3xKp1LmT7rW2yB5cD9fG4hJ6sA0eR8tU3iO1pQ7wE2zX5cV9bN4mK6lJ0hG"
DEFAULT_REDIRECT_URI = "https://perimeter.example.ru/amocrm/oauth"
PHONE_FIELD_ID = 264911
EMAIL_FIELD_ID = 264913
WON_STATUS_ID = 142
LOST_STATUS_ID = 143
DEFAULT_USER_ID = 8375357
DEFAULT_LIMIT = 50
MAX_LIMIT = 250
NOTE_TYPES = frozenset(
    {
        "common",
        "call_in",
        "call_out",
        "service_message",
        "extended_service_message",
        "message_cashier",
        "geolocation",
        "sms_in",
        "sms_out",
        "attachment",
    }
)
TASK_ENTITY_TYPES = frozenset({"leads", "contacts", "companies", "customers"})
NGINX_PAGE = (
    "<html>\r\n<head><title>{status} {phrase}</title></head>\r\n<body>\r\n<center><h1>{status} {phrase}</h1>"
    "</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


def new_access_token() -> str:
    """amo's access tokens are JWTs: a long ``eyJ…`` string."""
    return "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9." + secrets.token_urlsafe(96)


def new_refresh_token() -> str:
    return "def50200" + secrets.token_hex(120)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it; header names lower-cased, ``query`` as ordered pairs."""

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: Any
    at: float  # time.monotonic() on arrival
    status: int = 0  # 0 while in progress (a hang), or if the server stopped first

    def param(self, name: str) -> str | None:
        return next((value for key, value in self.query if key == name), None)

    def params(self, name: str) -> list[str]:
        return [value for key, value in self.query if key == name]


@dataclass(frozen=True)
class FakePipeline:
    id: int
    name: str
    statuses: dict[str, int]  # status name -> id, the system ones included


@dataclass
class _Fault:
    prefix: str
    status: int
    body: Any
    headers: dict[str, str]


@dataclass
class _Slow:
    prefix: str
    seconds: float | None  # None: until the server stops


@dataclass
class _FieldDef:
    id: int
    name: str
    type: str
    code: str | None


@dataclass
class _Answer:
    status: int
    body: Any = None  # dict/list: JSON; str: HTML; None: no body
    headers: dict[str, str] = field(default_factory=dict)


class _Stopped(Exception):
    """The server is shutting down; a handler abandons its reply."""


class FakeAmoCrm:
    def __init__(
        self,
        *,
        subdomain: str = "severny-kredit",
        account_id: int = 30123456,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        redirect_uri: str = DEFAULT_REDIRECT_URI,
        access_token: str | None = None,
        refresh_token: str | None = None,
        currency: str = "RUB",
    ) -> None:
        self.subdomain = subdomain
        self.account_id = account_id
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.currency = currency
        self.access_token = access_token or new_access_token()
        self.refresh_token = refresh_token or new_refresh_token()
        self.access_expired = False
        self.refresh_revoked = False
        self.token_refreshes = 0
        self.links_base: str | None = None  # where _links point; None: this server's own URL
        self.requests: list[RecordedRequest] = []
        self.notes: list[dict[str, Any]] = []
        self.contacts: dict[int, dict[str, Any]] = {}
        self.leads: dict[int, dict[str, Any]] = {}
        self.tasks: dict[int, dict[str, Any]] = {}
        self.pipelines: dict[int, dict[str, Any]] = {}
        self.fields: dict[str, dict[int, _FieldDef]] = {
            "contacts": {
                PHONE_FIELD_ID: _FieldDef(PHONE_FIELD_ID, "Телефон", "multitext", "PHONE"),
                EMAIL_FIELD_ID: _FieldDef(EMAIL_FIELD_ID, "Email", "multitext", "EMAIL"),
            },
            "leads": {},
        }
        self._ids = iter(range(1_000_001, 10**9, 7))
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._faults: deque[_Fault] = deque()
        self._slows: deque[_Slow] = deque()
        self._rate: tuple[int, float, int | None] | None = None
        self._accepted: deque[float] = deque()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.block_on_close = False  # hanging handlers are released via _closing instead
        self._httpd.fake = self
        self._thread = threading.Thread(target=self._serve, name="fake-amocrm", daemon=True)

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The account's base URL, as ``https://<subdomain>.amocrm.ru`` would be."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeAmoCrm:
        self._thread.start()
        return self

    def _serve(self) -> None:
        self._httpd.serve_forever(poll_interval=0.02)

    def stop(self) -> None:
        self._closing.set()
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeAmoCrm:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- scripting ---------------------------------------------------------------------------

    def expire_access_token(self) -> None:
        """The current access token now gets 401, as amo's does after ``expires_in``."""
        with self._lock:
            self.access_expired = True

    def revoke_refresh_token(self) -> None:
        """The refresh token is refused (spent, revoked, or the integration uninstalled)."""
        with self._lock:
            self.refresh_revoked = True

    def fail_next(
        self,
        path_prefix: str,
        status: int,
        times: int = 1,
        *,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """The next ``times`` requests whose path starts with ``path_prefix`` fail with ``status``.

        Without a ``body``: amo's problem+json for the status (``validation-errors`` for 400), or
        nginx's HTML page for 502/503/504. Checked after the rate limit and before authorisation.
        """
        with self._lock:
            self._faults.extend(_Fault(path_prefix, status, body, dict(headers or {})) for _ in range(times))

    def slow_next(self, seconds: float | None, path_prefix: str = "/", times: int = 1) -> None:
        """Delay the next ``times`` matching requests by ``seconds`` (None: until ``stop()``)."""
        with self._lock:
            self._slows.extend(_Slow(path_prefix, seconds) for _ in range(times))

    def rate_limit(
        self, max_requests: int | None = 7, per_seconds: float = 1.0, retry_after: int | None = None
    ) -> None:
        """429 for a request past ``max_requests`` answered within ``per_seconds`` (None: no limit).

        amo documents 7 requests a second per integration and no Retry-After; ``retry_after`` adds
        the header for tests of clients that honour it.
        """
        with self._lock:
            self._rate = None if max_requests is None else (max_requests, per_seconds, retry_after)
            self._accepted.clear()

    def calls(self, method: str | None = None, path_prefix: str = "") -> list[RecordedRequest]:
        with self._lock:
            return [
                r for r in self.requests if (method is None or r.method == method) and r.path.startswith(path_prefix)
            ]

    # --- data --------------------------------------------------------------------------------

    def define_field(
        self, entity: str, name: str, *, field_type: str = "text", code: str | None = None, field_id: int | None = None
    ) -> int:
        """A custom field of ``contacts`` or ``leads``; returns its id."""
        with self._lock:
            new_id = field_id or self._next_id()
            self.fields[entity][new_id] = _FieldDef(new_id, name, field_type, code)
            return new_id

    def add_pipeline(self, name: str, statuses: Sequence[str], *, is_main: bool = False) -> FakePipeline:
        """A pipeline with «Неразобранное», the given stages, and the system statuses 142 and 143."""
        with self._lock:
            pipeline_id = self._next_id()
            pipeline = {"id": pipeline_id, "name": name, "is_main": is_main, "statuses": []}
            self.pipelines[pipeline_id] = pipeline
            self._append_status(pipeline, "Неразобранное", type_=1)
            for status_name in statuses:
                self._append_status(pipeline, status_name)
            self._append_status(pipeline, "Успешно реализовано", status_id=WON_STATUS_ID, editable=False)
            self._append_status(pipeline, "Закрыто и не реализовано", status_id=LOST_STATUS_ID, editable=False)
            return self._pipeline_view(pipeline)

    def add_status(self, pipeline_id: int, name: str) -> int:
        """A new stage, before the closing ones (an administrator editing the pipeline)."""
        with self._lock:
            pipeline = self.pipelines[pipeline_id]
            status = self._append_status(pipeline, name)
            statuses = pipeline["statuses"]
            statuses.sort(key=lambda s: (s["id"] in (WON_STATUS_ID, LOST_STATUS_ID), s["sort"]))
            return int(status["id"])

    def add_contact(
        self,
        name: str,
        *,
        phones: Iterable[str | tuple[str, str]] = (),
        emails: Iterable[str | tuple[str, str]] = (),
        fields: Mapping[int, Any] | None = None,
        first_name: str | None = None,
        last_name: str | None = None,
        responsible_user_id: int = DEFAULT_USER_ID,
    ) -> int:
        """A contact; phones and e-mails as values or (value, enum code: WORK, MOB, PRIV…)."""
        with self._lock:
            contact_id = self._next_id()
            custom: list[dict[str, Any]] = []
            for field_id, entries, default_enum in ((PHONE_FIELD_ID, phones, "WORK"), (EMAIL_FIELD_ID, emails, "WORK")):
                values = [
                    {"value": e, "enum_code": default_enum}
                    if isinstance(e, str)
                    else {"value": e[0], "enum_code": e[1]}
                    for e in entries
                ]
                if values:
                    custom.append(self._custom_value("contacts", field_id, values))
            custom.extend(self._custom_values("contacts", fields or {}))
            now = int(time.time())
            self.contacts[contact_id] = {
                "id": contact_id,
                "name": name,
                "first_name": first_name if first_name is not None else name.split(" ")[0],
                "last_name": last_name if last_name is not None else " ".join(name.split(" ")[1:]),
                "responsible_user_id": responsible_user_id,
                "group_id": 0,
                "created_by": responsible_user_id,
                "updated_by": responsible_user_id,
                "created_at": now,
                "updated_at": now,
                "closest_task_at": None,
                "is_deleted": False,
                "custom_fields_values": custom or None,
                "lead_ids": [],
            }
            return contact_id

    def add_lead(
        self,
        name: str,
        *,
        pipeline: FakePipeline,
        status: str | int,
        price: int | None = None,
        contacts: Iterable[int] = (),
        fields: Mapping[int, Any] | None = None,
        responsible_user_id: int = DEFAULT_USER_ID,
    ) -> int:
        """A lead in ``pipeline`` at ``status`` (a stage name or id), linked to ``contacts``."""
        with self._lock:
            lead_id = self._next_id()
            status_id = pipeline.statuses[status] if isinstance(status, str) else status
            now = int(time.time())
            self.leads[lead_id] = {
                "id": lead_id,
                "name": name,
                "price": price,
                "responsible_user_id": responsible_user_id,
                "group_id": 0,
                "status_id": status_id,
                "pipeline_id": pipeline.id,
                "loss_reason_id": None,
                "created_by": responsible_user_id,
                "updated_by": responsible_user_id,
                "created_at": now,
                "updated_at": now,
                "closed_at": now if status_id in (WON_STATUS_ID, LOST_STATUS_ID) else None,
                "closest_task_at": None,
                "is_deleted": False,
                "custom_fields_values": self._custom_values("leads", fields or {}) or None,
                "score": None,
            }
            for contact_id in contacts:
                self.contacts[contact_id]["lead_ids"].append(lead_id)
            return lead_id

    def move_lead(self, lead_id: int, status_id: int) -> None:
        with self._lock:
            self.leads[lead_id]["status_id"] = status_id

    def add_task(
        self,
        entity_type: str,
        entity_id: int,
        text: str,
        *,
        complete_till: int,
        responsible_user_id: int = DEFAULT_USER_ID,
        is_completed: bool = False,
        task_type_id: int = 1,
    ) -> int:
        with self._lock:
            return self._create_task(
                {
                    "entity_type": entity_type,
                    "entity_id": entity_id,
                    "text": text,
                    "complete_till": complete_till,
                    "responsible_user_id": responsible_user_id,
                    "is_completed": is_completed,
                    "task_type_id": task_type_id,
                }
            )

    def search(self, query: str) -> list[int]:
        """The contact ids amo's ``query`` would return: what the adapter must then filter."""
        with self._lock:
            return [c["id"] for c in self.contacts.values() if _matches_query(c, query)]

    # --- internals (called with the lock held) ----------------------------------------------

    def _next_id(self) -> int:
        return next(self._ids)

    def _append_status(
        self,
        pipeline: dict[str, Any],
        name: str,
        *,
        status_id: int | None = None,
        type_: int = 0,
        editable: bool = True,
    ) -> dict[str, Any]:
        status = {
            "id": status_id or self._next_id(),
            "name": name,
            "sort": 10 * (len(pipeline["statuses"]) + 1),
            "is_editable": editable,
            "pipeline_id": pipeline["id"],
            "color": "#99ccff",
            "type": type_,
            "account_id": self.account_id,
        }
        pipeline["statuses"].append(status)
        return status

    def _pipeline_view(self, pipeline: dict[str, Any]) -> FakePipeline:
        return FakePipeline(pipeline["id"], pipeline["name"], {s["name"]: s["id"] for s in pipeline["statuses"]})

    def _custom_values(self, entity: str, fields: Mapping[int, Any]) -> list[dict[str, Any]]:
        out = []
        for field_id, value in fields.items():
            values = value if isinstance(value, list) else [value]
            out.append(self._custom_value(entity, field_id, [{"value": v} for v in values]))
        return out

    def _custom_value(self, entity: str, field_id: int, values: list[dict[str, Any]]) -> dict[str, Any]:
        definition = self.fields[entity][field_id]
        return {
            "field_id": definition.id,
            "field_name": definition.name,
            "field_code": definition.code,
            "field_type": definition.type,
            "values": [
                {**v, "enum_id": None} if "enum_code" not in v else {**v, "enum_id": 100 + i}
                for i, v in enumerate(values)
            ],
        }

    def _create_task(self, item: dict[str, Any]) -> int:
        task_id = self._next_id()
        now = int(time.time())
        self.tasks[task_id] = {
            "id": task_id,
            "created_by": DEFAULT_USER_ID,
            "updated_by": DEFAULT_USER_ID,
            "created_at": now,
            "updated_at": now,
            "responsible_user_id": item.get("responsible_user_id", DEFAULT_USER_ID),
            "group_id": 0,
            "entity_id": item.get("entity_id"),
            "entity_type": item.get("entity_type"),
            "duration": 0,
            "is_completed": bool(item.get("is_completed", False)),
            "task_type_id": item.get("task_type_id", 1),
            "text": item["text"],
            "result": [],
            "complete_till": item["complete_till"],
            "account_id": self.account_id,
        }
        return task_id

    # --- request handling --------------------------------------------------------------------

    def sleep(self, seconds: float | None) -> None:
        if self._closing.wait(seconds):
            raise _Stopped

    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: Any) -> _Answer:
        split = urllib.parse.urlsplit(raw_path)
        path = split.path
        query = urllib.parse.parse_qsl(split.query, keep_blank_values=True)
        record = RecordedRequest(method, path, query, headers, body, time.monotonic())
        with self._lock:
            index = len(self.requests)
            self.requests.append(record)
        answer = self._answer(method, path, query, headers, body)
        with self._lock:
            self.requests[index] = dataclasses.replace(record, status=answer.status)
        return answer

    def _answer(
        self, method: str, path: str, query: list[tuple[str, str]], headers: dict[str, str], body: Any
    ) -> _Answer:
        with self._lock:
            limited = self._rate_limited()
            slow = None if limited else self._take(self._slows, path)
            fault = None if limited else self._take(self._faults, path)
        if limited is not None:
            return limited
        if slow is not None:
            self.sleep(slow.seconds)
        if fault is not None:
            return _fault_answer(fault)
        with self._lock:
            if path == "/oauth2/access_token" and method == "POST":
                return self._oauth(body)
            if not path.startswith("/api/v4/"):
                return _problem(404, "Not Found")
            if headers.get("authorization") != f"Bearer {self.access_token}" or self.access_expired:
                return _problem(401, "Unauthorized", "Неверный логин или пароль")
            if isinstance(body, _BadJson):
                return _problem(400, "Bad Request", "Request body is not valid JSON")
            return self._route(method, path, query, body)

    def _take(self, queue: deque[Any], path: str) -> Any:
        for item in queue:
            if path.startswith(item.prefix):
                queue.remove(item)
                return item
        return None

    def _rate_limited(self) -> _Answer | None:
        if self._rate is None:
            return None
        max_requests, window, retry_after = self._rate
        now = time.monotonic()
        while self._accepted and self._accepted[0] <= now - window:
            self._accepted.popleft()
        if len(self._accepted) >= max_requests:
            extra = {"Retry-After": str(retry_after)} if retry_after is not None else {}
            return _problem(429, "Too Many Requests", "Превышено допустимое количество запросов", extra)
        self._accepted.append(now)
        return None

    def _oauth(self, body: Any) -> _Answer:
        if not isinstance(body, dict):
            return _problem(400, "Bad Request", "Request body is not valid JSON")
        if body.get("client_id") != self.client_id or body.get("client_secret") != self.client_secret:
            return _problem(401, "Unauthorized", "Client authentication failed", hint="Client authentication failed")
        if body.get("grant_type") != "refresh_token":
            return _problem(400, "Bad Request", "The authorization grant type is not supported")
        if body.get("redirect_uri") != self.redirect_uri:
            return _problem(400, "Bad Request", "Invalid redirect_uri", hint="Redirect URI mismatch")
        if self.refresh_revoked or body.get("refresh_token") != self.refresh_token:
            return _problem(400, "Bad Request", "The refresh token is invalid.", hint="Token has been revoked")
        self.access_token, self.refresh_token = new_access_token(), new_refresh_token()
        self.access_expired = False
        self.token_refreshes += 1
        return _Answer(
            200,
            {
                "token_type": "Bearer",
                "expires_in": 86400,
                "server_time": int(time.time()),
                "access_token": self.access_token,
                "refresh_token": self.refresh_token,
            },
        )

    def _route(self, method: str, path: str, query: list[tuple[str, str]], body: Any) -> _Answer:
        if method == "GET":
            if path == "/api/v4/account":
                return _Answer(200, self._account())
            if path == "/api/v4/contacts":
                return self._list_contacts(path, query)
            if match := re.fullmatch(r"/api/v4/contacts/(\d+)", path):
                contact = self.contacts.get(int(match.group(1)))
                with_ = _with(query)
                return _Answer(204) if contact is None else _Answer(200, self._contact_view(contact, "leads" in with_))
            if path == "/api/v4/leads/pipelines":
                return _Answer(200, self._pipelines_view())
            if path == "/api/v4/leads":
                return self._list_leads(path, query)
            if match := re.fullmatch(r"/api/v4/leads/(\d+)", path):
                lead = self.leads.get(int(match.group(1)))
                return _Answer(204) if lead is None else _Answer(200, self._lead_view(lead))
            if path == "/api/v4/tasks":
                return self._list_tasks(path, query)
        if method == "POST":
            if path == "/api/v4/tasks":
                return self._post_tasks(body)
            if match := re.fullmatch(r"/api/v4/(contacts|leads)/(\d+)/notes", path):
                return self._post_notes(match.group(1), int(match.group(2)), body)
        return _problem(404, "Not Found", f"Cannot {method} {path}")

    # --- views -------------------------------------------------------------------------------

    def _base(self) -> str:
        return self.links_base or self.url

    def _link(self, path: str) -> dict[str, Any]:
        return {"self": {"href": self._base() + path}}

    def _account(self) -> dict[str, Any]:
        return {
            "id": self.account_id,
            "name": "Северный Кредит",
            "subdomain": self.subdomain,
            "created_at": 1673927032,
            "created_by": 0,
            "updated_at": 1673927032,
            "updated_by": 0,
            "current_user_id": DEFAULT_USER_ID,
            "country": "RU",
            "currency": self.currency,
            "currency_symbol": "₽",
            "customers_mode": "disabled",
            "is_unsorted_on": True,
            "is_loss_reason_enabled": True,
            "is_helpbot_enabled": False,
            "is_technical_account": False,
            "contact_name_display_order": 1,
            "_links": self._link("/api/v4/account"),
        }

    def _contact_view(self, contact: dict[str, Any], with_leads: bool) -> dict[str, Any]:
        view = {k: v for k, v in contact.items() if k != "lead_ids"}
        view["account_id"] = self.account_id
        view["_links"] = self._link(f"/api/v4/contacts/{contact['id']}")
        embedded: dict[str, Any] = {"tags": [], "companies": []}
        if with_leads:
            embedded["leads"] = [
                {"id": lead_id, "_links": self._link(f"/api/v4/leads/{lead_id}")} for lead_id in contact["lead_ids"]
            ]
        view["_embedded"] = embedded
        return view

    def _lead_view(self, lead: dict[str, Any]) -> dict[str, Any]:
        return {
            **lead,
            "account_id": self.account_id,
            "_links": self._link(f"/api/v4/leads/{lead['id']}"),
            "_embedded": {"tags": [], "companies": []},
        }

    def _task_view(self, task: dict[str, Any]) -> dict[str, Any]:
        return {**task, "_links": self._link(f"/api/v4/tasks/{task['id']}")}

    def _pipelines_view(self) -> dict[str, Any]:
        pipelines = []
        for sort, pipeline in enumerate(self.pipelines.values(), start=1):
            statuses = [
                {**s, "_links": self._link(f"/api/v4/leads/pipelines/{pipeline['id']}/statuses/{s['id']}")}
                for s in pipeline["statuses"]
            ]
            pipelines.append(
                {
                    "id": pipeline["id"],
                    "name": pipeline["name"],
                    "sort": sort,
                    "is_main": pipeline["is_main"],
                    "is_unsorted_on": True,
                    "is_archive": False,
                    "account_id": self.account_id,
                    "_links": self._link(f"/api/v4/leads/pipelines/{pipeline['id']}"),
                    "_embedded": {"statuses": statuses},
                }
            )
        return {
            "_total_items": len(pipelines),
            "_links": self._link("/api/v4/leads/pipelines"),
            "_embedded": {"pipelines": pipelines},
        }

    # --- lists -------------------------------------------------------------------------------

    def _list_contacts(self, path: str, query: list[tuple[str, str]]) -> _Answer:
        text = _param(query, "query")
        ids = _ids(query, "filter[id]")
        with_leads = "leads" in _with(query)
        items = [
            self._contact_view(c, with_leads)
            for c in self.contacts.values()
            if (not text or _matches_query(c, text)) and (ids is None or c["id"] in ids)
        ]
        return self._page(path, query, "contacts", items)

    def _list_leads(self, path: str, query: list[tuple[str, str]]) -> _Answer:
        text = _param(query, "query")
        ids = _ids(query, "filter[id]")
        items = [
            self._lead_view(lead)
            for lead in self.leads.values()
            if (ids is None or lead["id"] in ids) and (not text or text.casefold() in str(lead["name"]).casefold())
        ]
        return self._page(path, query, "leads", items)

    def _list_tasks(self, path: str, query: list[tuple[str, str]]) -> _Answer:
        entity_type = _param(query, "filter[entity_type]")
        entity_ids = _ids(query, "filter[entity_id]")
        if entity_ids is not None and entity_type is None:
            return _validation(400, "filter.entity_type", "NotBlank", "filter[entity_id] needs filter[entity_type]")
        completed = _param(query, "filter[is_completed]")
        items = [
            self._task_view(task)
            for task in self.tasks.values()
            if (entity_type is None or task["entity_type"] == entity_type)
            and (entity_ids is None or task["entity_id"] in entity_ids)
            and (completed is None or task["is_completed"] == (completed in {"1", "true"}))
        ]
        return self._page(path, query, "tasks", items)

    def _page(self, path: str, query: list[tuple[str, str]], key: str, items: list[dict[str, Any]]) -> _Answer:
        """One HAL page: ``page``/``limit``, ``_links.next`` while more remain, 204 when empty."""
        try:
            page = int(_param(query, "page") or 1)
            limit = int(_param(query, "limit") or DEFAULT_LIMIT)
        except ValueError:
            return _validation(400, "page", "InvalidType", "page and limit are numbers")
        if limit > MAX_LIMIT or limit < 1 or page < 1:
            return _validation(400, "limit", "RangeError", f"limit must be between 1 and {MAX_LIMIT}")
        chunk = items[(page - 1) * limit : page * limit]
        if not chunk:
            return _Answer(204)

        def href(page_no: int) -> str:
            pairs = [(k, v) for k, v in query if k not in {"page", "limit"}] + [
                ("page", str(page_no)),
                ("limit", str(limit)),
            ]
            return f"{self._base()}{path}?{urllib.parse.urlencode(pairs)}"

        links: dict[str, Any] = {"self": {"href": href(page)}}
        if page * limit < len(items):
            links["next"] = {"href": href(page + 1)}
        if page > 1:
            links["prev"] = {"href": href(page - 1)}
        return _Answer(200, {"_page": page, "_links": links, "_embedded": {key: chunk}})

    # --- writes ------------------------------------------------------------------------------

    def _post_tasks(self, body: Any) -> _Answer:
        if not isinstance(body, list) or not body:
            return _validation(400, "", "InvalidType", "the body must be a non-empty array of tasks")
        for index, item in enumerate(body):
            if not isinstance(item, dict):
                return _validation(400, "", "InvalidType", "each task must be an object", index)
            if not isinstance(item.get("text"), str) or not item["text"].strip():
                return _validation(400, "text", "NotBlank", "This value should not be blank.", index)
            if not isinstance(item.get("complete_till"), int) or isinstance(item.get("complete_till"), bool):
                return _validation(400, "complete_till", "InvalidType", "This value should be of type int.", index)
            entity_type = item.get("entity_type")
            if entity_type is not None:
                if entity_type not in TASK_ENTITY_TYPES:
                    return _validation(
                        400, "entity_type", "NotSupportedChoice", "The value is not a valid choice.", index
                    )
                if not self._entity_exists(entity_type, item.get("entity_id")):
                    return _validation(400, "entity_id", "NotFound", "The entity does not exist.", index)
            responsible = item.get("responsible_user_id")
            if responsible is not None and (not isinstance(responsible, int) or isinstance(responsible, bool)):
                return _validation(
                    400, "responsible_user_id", "InvalidType", "This value should be of type int.", index
                )
        created = [self._create_task(item) for item in body]
        return _Answer(
            200,
            {
                "_links": self._link("/api/v4/tasks"),
                "_embedded": {
                    "tasks": [
                        {"id": task_id, "request_id": str(i), "_links": self._link(f"/api/v4/tasks/{task_id}")}
                        for i, task_id in enumerate(created)
                    ]
                },
            },
        )

    def _post_notes(self, entity_type: str, entity_id: int, body: Any) -> _Answer:
        if not isinstance(body, list) or not body:
            return _validation(400, "", "InvalidType", "the body must be a non-empty array of notes")
        if not self._entity_exists(entity_type, entity_id):
            return _validation(400, "entity_id", "NotFound", "The entity does not exist.")
        for index, item in enumerate(body):
            if not isinstance(item, dict) or item.get("note_type") not in NOTE_TYPES:
                return _validation(400, "note_type", "NotSupportedChoice", "The value is not a valid choice.", index)
            params = item.get("params")
            if item["note_type"] == "common" and (
                not isinstance(params, dict) or not str(params.get("text") or "").strip()
            ):
                return _validation(400, "params.text", "NotBlank", "This value should not be blank.", index)
        created = []
        for item in body:
            note_id = self._next_id()
            self.notes.append(
                {
                    "id": note_id,
                    "entity_type": entity_type,
                    "entity_id": entity_id,
                    "note_type": item["note_type"],
                    "params": item.get("params") or {},
                    "created_at": int(time.time()),
                }
            )
            created.append(note_id)
        return _Answer(
            200,
            {
                "_links": self._link(f"/api/v4/{entity_type}/{entity_id}/notes"),
                "_embedded": {
                    "notes": [
                        {
                            "id": note_id,
                            "entity_id": entity_id,
                            "request_id": str(i),
                            "_links": self._link(f"/api/v4/{entity_type}/{entity_id}/notes/{note_id}"),
                        }
                        for i, note_id in enumerate(created)
                    ]
                },
            },
        )

    def _entity_exists(self, entity_type: str, entity_id: Any) -> bool:
        if not isinstance(entity_id, int) or isinstance(entity_id, bool):
            return False
        table = {"contacts": self.contacts, "leads": self.leads}.get(entity_type)
        return table is not None and entity_id in table


# --- helpers ----------------------------------------------------------------------------------


class _BadJson:
    """A request body that did not parse."""


def _param(query: list[tuple[str, str]], name: str) -> str | None:
    return next((value for key, value in query if key == name), None)


def _with(query: list[tuple[str, str]]) -> set[str]:
    return {part.strip() for part in (_param(query, "with") or "").split(",") if part.strip()}


def _ids(query: list[tuple[str, str]], name: str) -> set[int] | None:
    """``filter[x][]=1&filter[x][]=2``, ``filter[x]=1`` or ``filter[x]=1,2``; None when absent."""
    values = [v for k, v in query if k in {name, f"{name}[]"}]
    if not values:
        return None
    return {int(part) for value in values for part in value.split(",") if part.strip().isdigit()}


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def _matches_query(contact: dict[str, Any], query: str) -> bool:
    """amo's ``query``: a substring of the name or any field value; a number also against phones' digits."""
    needle = query.strip().casefold()
    if not needle:
        return True
    texts = [str(contact.get(k) or "") for k in ("name", "first_name", "last_name")]
    phones: list[str] = []
    for custom in contact.get("custom_fields_values") or []:
        for value in custom.get("values") or []:
            texts.append(str(value.get("value") or ""))
            if custom.get("field_code") == "PHONE":
                phones.append(str(value.get("value") or ""))
    if any(needle in text.casefold() for text in texts):
        return True
    bare = re.sub(r"[\s()+\-]", "", needle)
    return bare.isdigit() and any(bare in _digits(phone) for phone in phones)


def _problem(
    status: int,
    title: str,
    detail: str | None = None,
    headers: dict[str, str] | None = None,
    *,
    hint: str | None = None,
) -> _Answer:
    body: dict[str, Any] = {"title": title, "type": f"https://httpstatus.es/{status}", "status": status}
    if detail is not None:
        body["detail"] = detail
    if hint is not None:
        body["hint"] = hint
    return _Answer(status, body, {"Content-Type": "application/problem+json", **(headers or {})})


def _validation(status: int, path: str, code: str, detail: str, request_id: int = 0) -> _Answer:
    body = {
        "validation-errors": [
            {"request_id": str(request_id), "errors": [{"code": code, "path": path, "detail": detail}]}
        ],
        "title": "Bad Request",
        "type": f"https://httpstatus.es/{status}",
        "status": status,
        "detail": "Request validation failed",
    }
    return _Answer(status, body, {"Content-Type": "application/problem+json"})


def _fault_answer(fault: _Fault) -> _Answer:
    status = fault.status
    if fault.body is not None:
        return _Answer(status, fault.body, fault.headers)
    if status in {502, 503, 504}:
        phrase = HTTPStatus(status).phrase
        return _Answer(status, NGINX_PAGE.format(status=status, phrase=phrase), fault.headers)
    if status == 400:
        answer = _validation(
            400,
            "custom_fields_values.0.field_id",
            "NotSupportedChoice",
            "The value you selected is not a valid choice.",
        )
        answer.headers.update(fault.headers)
        return answer
    details = {
        401: "Неверный логин или пароль",
        402: "Аккаунт не оплачен",
        403: "Аккаунт заблокирован",
        404: "Not Found",
        429: "Превышено допустимое количество запросов",
        500: "Internal Server Error",
    }
    return _problem(status, HTTPStatus(status).phrase, details.get(status), fault.headers)


class _Server(ThreadingHTTPServer):
    """The HTTP server, holding the ``FakeAmoCrm`` its handlers answer for."""

    fake: FakeAmoCrm


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx's pool expects
    # Buffered writes: headers and body leave in one segment. Written separately, the client's
    # delayed ACK holds every response about 40 ms.
    wbufsize = -1
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: test output is not the place for an access log."""

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def _handle(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            headers = {name.lower(): value for name, value in self.headers.items()}
            answer = self.server.fake.handle(self.command, self.path, headers, _decode_body(headers, raw))
            self._send(answer)
        except (_Stopped, BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away (a timeout), or the test is over

    def _send(self, answer: _Answer) -> None:
        self.send_response(answer.status)
        headers = dict(answer.headers)
        if answer.body is None:
            raw = b""
        elif isinstance(answer.body, str):
            raw = answer.body.encode()
            headers.setdefault("Content-Type", "text/html")
        else:
            raw = json.dumps(answer.body, ensure_ascii=False).encode()
            headers.setdefault("Content-Type", "application/hal+json")
        for name, value in headers.items():
            self.send_header(name, value)
        if answer.status != 204:
            self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        if raw and answer.status != 204:
            self.wfile.write(raw)
        self.wfile.flush()


def _decode_body(headers: dict[str, str], raw: bytes) -> Any:
    if not raw:
        return None
    content_type = headers.get("content-type", "").split(";")[0].strip()
    if content_type == "application/x-www-form-urlencoded":
        return dict(urllib.parse.parse_qsl(raw.decode(), keep_blank_values=True))
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _BadJson()
