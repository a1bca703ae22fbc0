"""A real HTTP server on 127.0.0.1 that speaks the Bitrix24 REST methods Perimeter's CRM adapter uses.

The adapter is tested against actual sockets, status codes and Bitrix24's own response shapes
rather than mocks of our functions. One server plays the portal and the OAuth server:

- inbound webhooks: ``POST /rest/<user_id>/<code>/<method>.json`` (a wrong code answers 401
  ``NO_AUTH_FOUND`` "Wrong authorization data");
- an installed application: ``POST /rest/<method>.json`` with ``auth=<access_token>`` in the query,
  the form or the JSON body (unknown token: 401 ``invalid_token``; expired: 401 ``expired_token``
  "The access token provided has expired."; none: 401 ``NO_AUTH_FOUND``);
- the OAuth server: ``/oauth/token/`` with ``grant_type=refresh_token`` (GET query or POST form, as
  oauth.bitrix.info accepts), rotating the pair: the old refresh token stops working.

Parameters may come as JSON (what the adapter sends), as a form, or in the query string with PHP's
array syntax (``filter[CONTACT_ID]=5&select[]=ID``) — ``batch`` commands always use the latter, so
``parse_php_query`` is an independent implementation of PHP's ``parse_str`` to check the adapter's
encoder against.

Methods: ``crm.contact.get``, ``crm.contact.list``, ``crm.duplicate.findbycomm``, ``crm.deal.list``,
``crm.status.list``, ``tasks.task.list``, ``tasks.task.add``, ``crm.timeline.comment.add``,
``user.current`` and ``batch`` (``halt``; ``result_error``/``result_total``/``result_next``/
``result_time``; PHP's empty array ``[]`` where a map is empty, as Bitrix24 sends it). List methods
page by 50 with ``start``, ``total`` and ``next``; ``crm.status.list`` returns everything at once
(it has no navigation).

Script failures with ``fail_next``, slowness with ``slow_next`` and Bitrix24's leaky-bucket limit
(503 ``QUERY_LIMIT_EXCEEDED`` past N requests a second) with ``set_rate_limit``. Read ``requests``
(every HTTP request: REST method, parsed parameters, auth style), ``calls`` (every method executed,
``batch`` sub-commands included), ``comments`` and the portal's ``tasks``.

Deliberate simplifications: filters understand equality (``=``, ``!``, arrays as IN), not ranges;
``$result[...]`` references between batch commands are not resolved; the Russian texts of errors
specific to a method are approximations — the codes and statuses follow the documentation.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import secrets
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PAGE_SIZE = 50  # Bitrix24 list methods: "the page size is always static — 50 records"
MAX_BATCH_COMMANDS = 50
PORTAL_TZ = "+03:00"  # the fake portal's time zone, for naive dates written through the API

DEFAULT_DEAL_STAGES = (
    ("NEW", "Новая", ""),
    ("PREPARATION", "Подготовка документов", ""),
    ("PREPAYMENT_INVOICE", "Счёт на предоплату", ""),
    ("EXECUTING", "В работе", ""),
    ("FINAL_INVOICE", "Финальный счёт", ""),
    ("WON", "Сделка успешна", "S"),
    ("LOSE", "Сделка провалена", "F"),
)
# Other directories crm.status.list returns when unfiltered: an adapter must keep to deal stages.
OTHER_STATUSES = (
    ("SOURCE", "CALL", "Звонок"),
    ("SOURCE", "WEB", "Веб-сайт"),
    ("STATUS", "NEW", "Не обработан"),
    ("CONTACT_TYPE", "CLIENT", "Клиенты"),
)

# Texts of the system errors, as apidocs.bitrix24.com lists them.
NO_AUTH = ("NO_AUTH_FOUND", "Wrong authorization data")
EXPIRED = ("expired_token", "The access token provided has expired.")
INVALID = ("invalid_token", "The access token provided is invalid.")
RATE_LIMITED = ("QUERY_LIMIT_EXCEEDED", "Too many requests")
NOT_FOUND_METHOD = ("ERROR_METHOD_NOT_FOUND", "Method not found!")
SYSTEM_DESCRIPTIONS = {
    "INTERNAL_SERVER_ERROR": "Internal server error",
    "ERROR_UNEXPECTED_ANSWER": "Server returned an unexpected response",
    "QUERY_LIMIT_EXCEEDED": "Too many requests",
    "OPERATION_TIME_LIMIT": "Method is blocked due to operation time limit",
    "NO_AUTH_FOUND": "Wrong authorization data",
    "expired_token": "The access token provided has expired.",
    "invalid_token": "The access token provided is invalid.",
    "insufficient_scope": "The request requires higher privileges than provided by the webhook token",
    "ACCESS_DENIED": "Access denied.",
    "invalid_grant": "Invalid grant",
}


# --- records ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BitrixRequest:
    """One HTTP request as the server saw it.

    ``method`` is the REST method (lower-cased), or ``oauth.token`` for the OAuth server; ``params`` are
    the parsed parameters (query, form and JSON merged); ``auth_style`` is "webhook", "oauth" (an
    ``auth`` token), "none" or "oauth-server". ``status`` is 0 while the request is being answered.
    """

    method: str
    params: dict[str, Any]
    auth_style: str
    http_method: str
    path: str
    content_type: str
    at: float
    status: int = 0
    error: str | None = None
    user_id: int | None = None  # whose credentials were accepted


@dataclass(frozen=True)
class BitrixCall:
    """One method executed: a direct request or a ``batch`` sub-command (``in_batch``)."""

    method: str
    params: dict[str, Any]
    in_batch: bool
    error: str | None = None


@dataclass(frozen=True)
class OAuthTokens:
    access_token: str
    refresh_token: str


@dataclass
class _Fault:
    status: int
    error: str
    description: str | None


@dataclass
class _Slow:
    seconds: float | None  # None: until the server stops


class BitrixError(Exception):
    """An error answer: raised by method handlers, sent as ``{"error": ..., "error_description": ...}``."""

    def __init__(self, status: int, error: str, description: str | None = None) -> None:
        super().__init__(f"{status} {error}")
        self.status = status
        self.error = error
        self.description = description if description is not None else SYSTEM_DESCRIPTIONS.get(error, "")

    def payload(self) -> dict[str, Any]:
        return {"error": self.error, "error_description": self.description}


class _Stopped(Exception):
    """The server is shutting down; a handler abandons its reply."""


# --- PHP's parse_str ------------------------------------------------------------------------------


def parse_php_query(query: str) -> dict[str, Any]:
    """``a[b][]=1&a[b][]=2&c=x`` → ``{"a": {"b": ["1", "2"]}, "c": "x"}``, the way PHP's ``parse_str`` reads it.

    Values stay strings (PHP has no other type in a query). ``[]`` appends the next integer key; maps
    whose keys are exactly 0..n-1 become lists, as PHP's arrays serialise to JSON lists.
    """
    root: dict[str, Any] = {}
    for part in query.split("&"):
        if not part:
            continue
        raw_key, _, raw_value = part.partition("=")
        key, value = urllib.parse.unquote_plus(raw_key), urllib.parse.unquote_plus(raw_value)
        match = re.match(r"^([^\[]+)((?:\[[^\]]*\])*)", key)
        if match is None:
            continue
        path = [match.group(1), *re.findall(r"\[([^\]]*)\]", match.group(2))]
        node: dict[str, Any] = root
        for index, name in enumerate(path):
            last = index == len(path) - 1
            if name == "":
                name = str(_next_index(node))
            if last:
                node[name] = value
            else:
                child = node.get(name)
                if not isinstance(child, dict):
                    child = {}
                    node[name] = child
                node = child
    return _php_lists(root)


def _next_index(node: dict[str, Any]) -> int:
    indices = [int(k) for k in node if k.isdigit()]
    return max(indices) + 1 if indices else 0


def _php_lists(value: Any) -> Any:
    if isinstance(value, dict):
        converted = {k: _php_lists(v) for k, v in value.items()}
        if converted and list(converted) == [str(i) for i in range(len(converted))]:
            return list(converted.values())
        return converted
    return value


def _php_map(value: dict[str, Any]) -> dict[str, Any] | list[Any]:
    """PHP's ``json_encode`` of an empty array is ``[]``: Bitrix24 sends ``[]`` for an empty map."""
    return value if value else []


def _camel(upper_snake: str) -> str:
    """``RESPONSIBLE_ID`` → ``responsibleId``: tasks.task.list answers in camelCase whatever ``select`` says."""
    head, *rest = upper_snake.lower().split("_")
    return head + "".join(word.capitalize() for word in rest)


def _digits(value: str) -> str:
    return "".join(ch for ch in value if ch.isdigit())


# --- the fake portal ------------------------------------------------------------------------------


class FakeBitrix24:
    """One Bitrix24 portal (and its OAuth server) on 127.0.0.1 (random port): a ThreadingHTTPServer in a
    daemon thread.

    State that tests read (``requests``, ``calls``, ``comments``, ``tasks``) is written under one lock by
    the handler threads; copy lists before iterating while requests are in flight.
    """

    def __init__(
        self,
        *,
        webhook_user_id: int = 1,
        webhook_code: str = "s3cr3tw3bh00kc0de",
        client_id: str = "local.65f1c0ffee.12345678",
        client_secret: str = "app-client-secret-XYZ",
    ) -> None:
        self.webhook_user_id = webhook_user_id
        self.webhook_code = webhook_code
        self.client_id = client_id
        self.client_secret = client_secret
        self.requests: list[BitrixRequest] = []
        self.calls: list[BitrixCall] = []
        self.comments: list[dict[str, Any]] = []
        self.tasks: list[dict[str, Any]] = []  # the portal's tasks, Bitrix24's UPPER_CASE field names
        self.contacts: dict[int, dict[str, Any]] = {}
        self.deals: dict[int, dict[str, Any]] = {}
        self.statuses: list[dict[str, Any]] = []
        self.users: dict[int, dict[str, Any]] = {}
        self.rate_limit_per_second: int | None = None
        self._access: dict[str, int] = {}  # access token -> user id
        self._expired: set[str] = set()
        self._refresh: dict[str, int] = {}  # live refresh token -> user id
        self._ids = {"contact": 0, "deal": 0, "task": 0, "comment": 0, "status": 0, "multifield": 0}
        self._faults: dict[str, deque[_Fault]] = {}
        self._slow: dict[str, deque[_Slow]] = {}
        self._recent: deque[float] = deque()  # arrival times of REST requests, for the rate limit
        self._lock = threading.RLock()
        self._closing = threading.Event()
        self._methods: dict[str, Callable[[dict[str, Any], int], Any]] = {
            "crm.contact.get": self._contact_get,
            "crm.contact.list": self._contact_list,
            "crm.duplicate.findbycomm": self._find_by_comm,
            "crm.deal.list": self._deal_list,
            "crm.status.list": self._status_list,
            "tasks.task.list": self._task_list,
            "tasks.task.add": self._task_add,
            "crm.timeline.comment.add": self._comment_add,
            "user.current": self._user_current,
        }
        self.add_user(webhook_user_id, name="Анна", last_name="Смирнова", email="a.smirnova@bank.example")
        for status_id, name, semantics in DEFAULT_DEAL_STAGES:
            self.add_stage(status_id, name, semantics=semantics)
        for entity_id, status_id, name in OTHER_STATUSES:
            self._add_status(entity_id, status_id, name, None, "")
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.block_on_close = False  # slow handlers are released via _closing instead
        self._httpd.fake = self
        self._thread = threading.Thread(target=self._serve, name="fake-bitrix24", daemon=True)

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The portal's address, e.g. ``http://127.0.0.1:PORT`` (an installed app's ``portal_url``)."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def webhook_url(self) -> str:
        """The inbound webhook, as Bitrix24 shows it: ``<portal>/rest/<user_id>/<code>/``."""
        return f"{self.url}/rest/{self.webhook_user_id}/{self.webhook_code}/"

    @property
    def oauth_url(self) -> str:
        return f"{self.url}/oauth/token/"

    def start(self) -> FakeBitrix24:
        self._thread.start()
        return self

    def _serve(self) -> None:
        # A short poll so that stop() returns quickly: tests start and stop many servers.
        self._httpd.serve_forever(poll_interval=0.02)

    def stop(self) -> None:
        self._closing.set()
        if self._thread.is_alive():  # shutdown() would wait forever for a loop that never ran
            self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeBitrix24:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- the portal's data -------------------------------------------------------------------

    def add_user(self, user_id: int, *, name: str, last_name: str = "", email: str = "") -> int:
        with self._lock:
            self.users[user_id] = {
                "ID": str(user_id),
                "ACTIVE": True,
                "NAME": name,
                "LAST_NAME": last_name,
                "SECOND_NAME": "",
                "EMAIL": email,
                "ADMIN": user_id == self.webhook_user_id,
                "TIME_ZONE": "Europe/Moscow",
                "UF_DEPARTMENT": [1],
            }
        return user_id

    def add_contact(
        self,
        *,
        name: str,
        last_name: str = "",
        second_name: str = "",
        phones: Sequence[str | tuple[str, str]] = (),
        emails: Sequence[str | tuple[str, str]] = (),
        fields: Mapping[str, Any] | None = None,
        contact_id: int | None = None,
    ) -> int:
        """A contact; ``phones``/``emails`` are stored exactly as given (as an operator typed them),
        optionally as ``(value, VALUE_TYPE)``; ``fields`` holds custom ``UF_CRM_*`` values."""
        with self._lock:
            if contact_id is None:
                self._ids["contact"] += 1
                contact_id = self._ids["contact"]
            else:
                self._ids["contact"] = max(self._ids["contact"], contact_id)
            contact: dict[str, Any] = {
                "ID": str(contact_id),
                "NAME": name,
                "SECOND_NAME": second_name,
                "LAST_NAME": last_name,
                "TYPE_ID": "CLIENT",
                "ASSIGNED_BY_ID": str(self.webhook_user_id),
                "DATE_CREATE": "2024-03-01T10:00:00+03:00",
                "HAS_PHONE": "Y" if phones else "N",
                "HAS_EMAIL": "Y" if emails else "N",
                "PHONE": self._multifields("PHONE", phones, "WORK"),
                "EMAIL": self._multifields("EMAIL", emails, "WORK"),
            }
            contact.update(dict(fields or {}))
            self.contacts[contact_id] = contact
        return contact_id

    def _multifields(self, type_id: str, values: Sequence[str | tuple[str, str]], default: str) -> list[dict[str, Any]]:
        out = []
        for item in values:
            value, value_type = (item, default) if isinstance(item, str) else item
            self._ids["multifield"] += 1
            out.append(
                {"ID": str(self._ids["multifield"]), "VALUE_TYPE": value_type, "VALUE": value, "TYPE_ID": type_id}
            )
        return out

    def add_deal(
        self,
        *,
        contact_id: int,
        title: str,
        stage_id: str = "NEW",
        category_id: int = 0,
        opportunity: str = "0.00",
        currency_id: str = "RUB",
        closed: bool = False,
        fields: Mapping[str, Any] | None = None,
    ) -> int:
        with self._lock:
            self._ids["deal"] += 1
            deal_id = self._ids["deal"]
            semantic = next((s["SEMANTICS"] for s in self.statuses if s["STATUS_ID"] == stage_id), None)
            deal: dict[str, Any] = {
                "ID": str(deal_id),
                "TITLE": title,
                "TYPE_ID": "SALE",
                "CATEGORY_ID": str(category_id),
                "STAGE_ID": stage_id,
                "STAGE_SEMANTIC_ID": {"S": "S", "F": "F"}.get(semantic or "", "P"),
                "IS_NEW": "N",
                "CURRENCY_ID": currency_id,
                "OPPORTUNITY": opportunity,
                "CONTACT_ID": str(contact_id),
                "CLOSED": "Y" if closed else "N",
                "ASSIGNED_BY_ID": str(self.webhook_user_id),
                "BEGINDATE": "2024-03-01T03:00:00+03:00",
            }
            deal.update(dict(fields or {}))
            self.deals[deal_id] = deal
        return deal_id

    def add_task(
        self,
        *,
        title: str,
        crm: Sequence[str] = (),
        deadline: str | None = None,
        responsible_id: int | None = None,
        status: int = 2,
        description: str = "",
    ) -> int:
        """A task bound to CRM items by ``crm`` (``["C_5"]``: contact 5); status 5 is "completed"."""
        with self._lock:
            return self._store_task(
                {
                    "TITLE": title,
                    "DESCRIPTION": description,
                    "DEADLINE": deadline,
                    "RESPONSIBLE_ID": str(responsible_id or self.webhook_user_id),
                    "STATUS": str(status),
                    "UF_CRM_TASK": list(crm),
                    "CREATED_BY": str(self.webhook_user_id),
                },
                via_rest=False,
            )

    def _store_task(self, fields: dict[str, Any], *, via_rest: bool) -> int:
        self._ids["task"] += 1
        task_id = self._ids["task"]
        self.tasks.append({"ID": str(task_id), **fields, "CREATED_DATE": _now_iso(), "VIA_REST": via_rest})
        return task_id

    def add_stage(self, status_id: str, name: str, *, category_id: int = 0, semantics: str = "") -> str:
        """A deal stage. In pipeline (category) n > 0 the stage lives in directory ``DEAL_STAGE_n`` and its
        id gets the ``Cn:`` prefix, as crm.status.add does; returns the stored STATUS_ID."""
        entity_id = "DEAL_STAGE" if category_id == 0 else f"DEAL_STAGE_{category_id}"
        prefix = "" if category_id == 0 else f"C{category_id}:"
        full_id = status_id if status_id.startswith(prefix) else prefix + status_id
        with self._lock:
            self._add_status(entity_id, full_id, name, category_id or None, semantics)
        return full_id

    def _add_status(self, entity_id: str, status_id: str, name: str, category_id: int | None, semantics: str) -> None:
        self._ids["status"] += 1
        sort = 10 * (sum(1 for s in self.statuses if s["ENTITY_ID"] == entity_id) + 1)
        self.statuses.append(
            {
                "ID": str(self._ids["status"]),
                "ENTITY_ID": entity_id,
                "STATUS_ID": status_id,
                "NAME": name,
                "NAME_INIT": name,
                "SORT": str(sort),
                "SYSTEM": "N",
                "CATEGORY_ID": None if category_id is None else str(category_id),
                "COLOR": "#39A8EF",
                "SEMANTICS": semantics or None,
            }
        )

    def task(self, task_id: int | str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(next(t for t in self.tasks if t["ID"] == str(task_id)))

    # --- auth --------------------------------------------------------------------------------

    def issue_tokens(self, user_id: int | None = None, *, expired: bool = False) -> OAuthTokens:
        """A fresh access/refresh pair for an installed application (or a placement's AUTH_ID)."""
        user = user_id or self.webhook_user_id
        tokens = OAuthTokens(secrets.token_hex(16), secrets.token_hex(16))
        with self._lock:
            self._access[tokens.access_token] = user
            self._refresh[tokens.refresh_token] = user
            if expired:
                self._expired.add(tokens.access_token)
        return tokens

    def expire(self, access_token: str) -> None:
        with self._lock:
            self._expired.add(access_token)

    def revoke_refresh_token(self, refresh_token: str) -> None:
        with self._lock:
            self._refresh.pop(refresh_token, None)

    def is_live(self, access_token: str) -> bool:
        with self._lock:
            return access_token in self._access and access_token not in self._expired

    # --- scripting ---------------------------------------------------------------------------

    def fail_next(
        self, method: str, status: int, error: str, *, description: str | None = None, times: int = 1
    ) -> None:
        """The next ``times`` calls of ``method`` fail with ``{"error": error, ...}`` and ``status``.

        ``method`` is a REST method (also matched inside ``batch``, where the failure lands in
        ``result_error``), ``oauth.token`` for the OAuth server, or "*" for any HTTP request.
        """
        with self._lock:
            queue = self._faults.setdefault(method.lower(), deque())
            queue.extend(_Fault(status, error, description) for _ in range(times))

    def slow_next(self, seconds: float | None, method: str = "*", *, times: int = 1) -> None:
        """Delay the next ``times`` HTTP requests (of ``method``) by ``seconds`` (None: until ``stop()``)."""
        with self._lock:
            self._slow.setdefault(method.lower(), deque()).extend(_Slow(seconds) for _ in range(times))

    def set_rate_limit(self, per_second: int | None) -> None:
        """Answer 503 QUERY_LIMIT_EXCEEDED once more than ``per_second`` REST requests arrived within a second."""
        with self._lock:
            self.rate_limit_per_second = per_second
            self._recent.clear()

    def sleep(self, seconds: float | None) -> None:
        """Wait ``seconds`` (``None``: until the server stops), cut short by ``stop()``."""
        if self._closing.wait(seconds):
            raise _Stopped

    # --- reading -----------------------------------------------------------------------------

    def requests_of(self, method: str) -> list[BitrixRequest]:
        with self._lock:
            return [r for r in self.requests if r.method == method.lower()]

    def calls_of(self, method: str) -> list[BitrixCall]:
        with self._lock:
            return [c for c in self.calls if c.method == method.lower()]

    # --- request handling (called by the handler threads) ------------------------------------

    def handle(
        self, http_method: str, path: str, query: str, content_type: str, body: bytes
    ) -> tuple[int, dict[str, Any] | list[Any]]:
        """One HTTP request: (status, JSON body)."""
        arrived = time.monotonic()
        try:
            params = parse_php_query(query)
            params.update(_parse_body(content_type, body))
        except ValueError as error:
            return 400, {"error": "ERROR_ARGUMENT", "error_description": f"Cannot parse the request: {error}"}
        path_only = path.rstrip("/")
        if path_only == "/oauth/token":
            return self._record_and_answer(
                "oauth.token", params, "oauth-server", http_method, path, content_type, arrived, self._oauth_token
            )
        webhook = re.fullmatch(r"/rest/(\d+)/([^/]+)/([^/]+?)(?:\.json)?", path_only)
        app = re.fullmatch(r"/rest/([^/]+?)(?:\.json)?", path_only)
        if webhook is not None:
            method, style = webhook.group(3).lower(), "webhook"
            credentials: tuple[str, ...] = (webhook.group(1), webhook.group(2))
        elif app is not None:
            method, style = app.group(1).lower(), "oauth" if params.get("auth") else "none"
            credentials = (str(params.get("auth") or ""),)
        else:
            return 404, {"error": "NOT_FOUND", "error_description": f"no route {path}"}
        rest_params = {k: v for k, v in params.items() if k != "auth"}

        def answer(p: dict[str, Any]) -> tuple[int, Any, int | None]:
            return self._rest(method, p, style, credentials)

        return self._record_and_answer(method, rest_params, style, http_method, path, content_type, arrived, answer)

    def _record_and_answer(
        self,
        method: str,
        params: dict[str, Any],
        style: str,
        http_method: str,
        path: str,
        content_type: str,
        arrived: float,
        answer: Callable[[dict[str, Any]], tuple[int, Any, int | None]],
    ) -> tuple[int, dict[str, Any] | list[Any]]:
        record = BitrixRequest(method, copy.deepcopy(params), style, http_method, path, content_type, arrived)
        with self._lock:
            index = len(self.requests)
            self.requests.append(record)
        slow = self._take(self._slow, method)
        if slow is not None:
            self.sleep(slow.seconds)
        user_id: int | None = None
        try:
            if style != "oauth-server":
                self._check_rate_limit()
            fault = self._take(self._faults, method)
            if fault is not None:
                raise BitrixError(fault.status, fault.error, fault.description)
            status, body, user_id = answer(params)
        except BitrixError as error:
            status, body = error.status, error.payload()
        with self._lock:
            self.requests[index] = dataclasses.replace(
                record,
                status=status,
                error=body.get("error") if isinstance(body, dict) and status != 200 else None,
                user_id=user_id,
            )
        return status, body

    def _take(self, queues: Mapping[str, deque[Any]], method: str) -> Any:
        with self._lock:
            queue = queues.get(method) or queues.get("*")
            return queue.popleft() if queue else None

    def _check_rate_limit(self) -> None:
        """Bitrix24's leaky bucket, simplified to a one-second window: past the limit, 503 QUERY_LIMIT_EXCEEDED."""
        with self._lock:
            if self.rate_limit_per_second is None:
                return
            now = time.monotonic()
            while self._recent and now - self._recent[0] >= 1.0:
                self._recent.popleft()
            if len(self._recent) >= self.rate_limit_per_second:
                raise BitrixError(503, *RATE_LIMITED)
            self._recent.append(now)

    def _authenticate(self, style: str, credentials: tuple[str, ...]) -> int:
        with self._lock:
            if style == "webhook":
                user, code = credentials
                if int(user) != self.webhook_user_id or code != self.webhook_code:
                    raise BitrixError(401, *NO_AUTH)
                return self.webhook_user_id
            (token,) = credentials
            if not token:
                raise BitrixError(401, *NO_AUTH)
            if token not in self._access:
                raise BitrixError(401, *INVALID)
            if token in self._expired:
                raise BitrixError(401, *EXPIRED)
            return self._access[token]

    def _rest(
        self, method: str, params: dict[str, Any], style: str, credentials: tuple[str, ...]
    ) -> tuple[int, Any, int | None]:
        user_id = self._authenticate(style, credentials)
        if method == "batch":
            return 200, self._batch(params, user_id), user_id
        handler = self._methods.get(method)
        if handler is None:
            raise BitrixError(404, *NOT_FOUND_METHOD)
        try:
            payload = handler(params, user_id)
        except BitrixError as error:
            self._log_call(method, params, in_batch=False, error=error.error)
            raise
        self._log_call(method, params, in_batch=False)
        return 200, {**payload, "time": _time_info()}, user_id

    def _log_call(self, method: str, params: dict[str, Any], *, in_batch: bool, error: str | None = None) -> None:
        with self._lock:
            self.calls.append(BitrixCall(method, copy.deepcopy(params), in_batch, error))

    def _batch(self, params: dict[str, Any], user_id: int) -> dict[str, Any]:
        """``batch``: sub-commands run in order with the batch's credentials; ``halt`` stops at the first error."""
        cmd = params.get("cmd")
        if isinstance(cmd, list):
            cmd = {str(i): c for i, c in enumerate(cmd)}
        if not isinstance(cmd, dict) or not cmd:
            raise BitrixError(400, "INVALID_ARG_VALUE", "Parameter 'cmd' is required")
        if len(cmd) > MAX_BATCH_COMMANDS:
            raise BitrixError(400, "ERROR_BATCH_LENGTH_EXCEEDED", "Max batch length exceeded")
        halt = str(params.get("halt", "0")).lower() in {"1", "true", "y"}
        results: dict[str, Any] = {}
        errors: dict[str, Any] = {}
        totals: dict[str, Any] = {}
        nexts: dict[str, Any] = {}
        times: dict[str, Any] = {}
        for key, command in cmd.items():
            name, _, query = str(command).partition("?")
            name = name.strip().lower()
            sub_params = parse_php_query(query)
            try:
                if name == "batch":
                    raise BitrixError(400, "ERROR_BATCH_METHOD_NOT_ALLOWED", "Method is not allowed for batch usage")
                handler = self._methods.get(name)
                if handler is None:
                    raise BitrixError(404, *NOT_FOUND_METHOD)
                fault = self._take(self._faults, name) if name in self._faults else None
                if fault is not None:
                    raise BitrixError(fault.status, fault.error, fault.description)
                payload = handler(sub_params, user_id)
            except BitrixError as error:
                self._log_call(name, sub_params, in_batch=True, error=error.error)
                errors[key] = error.payload()
                if halt:
                    break
                continue
            self._log_call(name, sub_params, in_batch=True)
            results[key] = payload["result"]
            if "total" in payload:
                totals[key] = payload["total"]
            if "next" in payload:
                nexts[key] = payload["next"]
            times[key] = _time_info()
        return {
            "result": {
                "result": _php_map(results),
                "result_error": _php_map(errors),
                "result_total": _php_map(totals),
                "result_next": _php_map(nexts),
                "result_time": _php_map(times),
            },
            "time": _time_info(),
        }

    # --- the OAuth server --------------------------------------------------------------------

    def _oauth_token(self, params: dict[str, Any]) -> tuple[int, Any, int | None]:
        """``grant_type=refresh_token``: a new pair; the old refresh token stops working (rotation)."""
        if params.get("grant_type") != "refresh_token":
            raise BitrixError(400, "invalid_request", "Unsupported grant_type")
        if params.get("client_id") != self.client_id or params.get("client_secret") != self.client_secret:
            raise BitrixError(401, "invalid_client", "Invalid client credentials")
        with self._lock:
            user = self._refresh.pop(str(params.get("refresh_token") or ""), None)
            if user is None:
                raise BitrixError(400, "invalid_grant", "Invalid refresh token")
        tokens = self.issue_tokens(user)
        body = {
            "access_token": tokens.access_token,
            "client_endpoint": f"{self.url}/rest/",
            "domain": "oauth.bitrix.info",
            "expires_in": 3600,
            "member_id": "a223c6b3710f85df22e9377d6c4f7553",
            "refresh_token": tokens.refresh_token,
            "scope": "crm,task,user",
            "server_endpoint": "https://oauth.bitrix.info/rest/",
            "status": "L",
            "user_id": user,
        }
        return 200, body, user

    # --- methods -----------------------------------------------------------------------------

    def _contact_get(self, params: dict[str, Any], _user: int) -> dict[str, Any]:
        contact_id = _int_param(params.get("id", params.get("ID")))
        if contact_id is None or contact_id <= 0:
            raise BitrixError(400, "", "ID is not defined or invalid.")
        with self._lock:
            contact = self.contacts.get(contact_id)
            if contact is None:
                raise BitrixError(400, "", "Not found")
            return {"result": copy.deepcopy(contact)}

    def _contact_list(self, params: dict[str, Any], _user: int) -> dict[str, Any]:
        with self._lock:
            rows = [c for c in self.contacts.values() if _matches(c, params.get("filter"))]
        return self._page(rows, params, ("ID", "NAME", "SECOND_NAME", "LAST_NAME", "TYPE_ID", "ASSIGNED_BY_ID"))

    def _find_by_comm(self, params: dict[str, Any], _user: int) -> dict[str, Any]:
        """Phones compare by their digits (Bitrix24 indexes communications without formatting), so
        ``+7 (916) 123-45-67`` matches ``79161234567`` but not ``89161234567``; e-mails compare
        case-insensitively. Up to 20 values; no matches: PHP's empty array ``[]``."""
        comm_type = str(params.get("type") or "").upper()
        if not comm_type:
            raise BitrixError(400, "Communication type is not defined", "Parameter 'type' is required.")
        if comm_type not in {"PHONE", "EMAIL"}:
            raise BitrixError(400, f"Communication type '{comm_type}' is not supported in current context", "")
        values = params.get("values")
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, list) or not values:
            raise BitrixError(400, "Communication values is not defined", "")
        if len(values) > 20:
            raise BitrixError(400, "INVALID_ARG_VALUE", "Too many values: 20 at most")
        if comm_type == "PHONE":
            wanted = {_digits(str(v)) for v in values} - {""}
        else:
            wanted = {str(v).strip().lower() for v in values}
        entity_type = str(params.get("entity_type") or "CONTACT").upper()
        found: list[int] = []
        with self._lock:
            if entity_type == "CONTACT":
                for contact_id, contact in sorted(self.contacts.items()):
                    stored = [m["VALUE"] for m in contact.get(comm_type) or []]
                    keys = {_digits(s) for s in stored} if comm_type == "PHONE" else {s.strip().lower() for s in stored}
                    if keys & wanted:
                        found.append(contact_id)
        return {"result": {"CONTACT": found[:20]} if found else []}

    def _deal_list(self, params: dict[str, Any], _user: int) -> dict[str, Any]:
        flt = params.get("filter")
        with self._lock:
            rows = [d for d in self.deals.values() if _matches(d, flt)]
        standard = tuple(k for k in next(iter(self.deals.values()), {}) if not k.startswith("UF_"))
        return self._page(rows, params, standard or ("ID", "TITLE"))

    def _status_list(self, params: dict[str, Any], _user: int) -> dict[str, Any]:
        """No ``select`` and no navigation on this method: everything matching, at once."""
        with self._lock:
            rows = [copy.deepcopy(s) for s in self.statuses if _matches(s, params.get("filter"))]
        order = params.get("order")
        if isinstance(order, dict) and "SORT" in {k.upper() for k in order}:
            rows.sort(key=lambda s: (s["ENTITY_ID"], int(s["SORT"])))
        return {"result": rows, "total": len(rows)}

    def _task_list(self, params: dict[str, Any], _user: int) -> dict[str, Any]:
        flt = params.get("filter")
        with self._lock:
            rows = [t for t in self.tasks if _matches(t, flt)]
            users = copy.deepcopy(self.users)
        order = params.get("order")
        if not isinstance(order, dict) or not order:
            order = {"ID": "desc"}
        descending = str(next(iter(order.values()), "desc")).lower() == "desc"  # default: descending by ID
        rows.sort(key=lambda t: int(t["ID"]), reverse=descending)
        start = _int_param(params.get("start")) or 0
        page = rows[start : start + PAGE_SIZE]
        select = params.get("select")
        fields = [str(f).upper() for f in select] if isinstance(select, list) and select else None
        tasks = []
        for task in page:
            chosen = fields or [k for k in task if k != "VIA_REST"]
            item = {_camel(k): copy.deepcopy(task.get(k)) for k in chosen if k in task}
            item["id"] = task["ID"]
            user = users.get(int(task["RESPONSIBLE_ID"]))
            if user is not None:
                full = f"{user['NAME']} {user['LAST_NAME']}".strip()
                item["responsible"] = {"id": user["ID"], "name": full, "link": f"/company/personal/user/{user['ID']}/"}
            tasks.append(item)
        out: dict[str, Any] = {"result": {"tasks": tasks}, "total": len(rows)}
        if start + PAGE_SIZE < len(rows):
            out["next"] = start + PAGE_SIZE
        return out

    def _task_add(self, params: dict[str, Any], user: int) -> dict[str, Any]:
        fields = params.get("fields")
        if not isinstance(fields, dict):
            raise BitrixError(400, "ERROR_CORE", "Не указаны поля задачи")
        fields = {str(k).upper(): v for k, v in fields.items()}
        if not str(fields.get("TITLE") or "").strip():
            raise BitrixError(400, "ERROR_CORE", "Не указано название задачи")
        responsible = _int_param(fields.get("RESPONSIBLE_ID"))
        if responsible is None or responsible not in self.users:
            raise BitrixError(400, "ERROR_CORE", "Не указан ответственный")
        crm = fields.get("UF_CRM_TASK") or []
        if isinstance(crm, str):
            crm = [crm]
        deadline = fields.get("DEADLINE") or None
        if deadline is not None:
            deadline = _with_tz(str(deadline))
        with self._lock:
            task_id = self._store_task(
                {
                    "TITLE": str(fields["TITLE"]),
                    "DESCRIPTION": str(fields.get("DESCRIPTION") or ""),
                    "DEADLINE": deadline,
                    "RESPONSIBLE_ID": str(responsible),
                    "STATUS": "2",
                    "UF_CRM_TASK": [str(c) for c in crm],
                    "CREATED_BY": str(user),
                },
                via_rest=True,
            )
            stored = next(t for t in self.tasks if t["ID"] == str(task_id))
            task = {_camel(k): copy.deepcopy(v) for k, v in stored.items() if k != "VIA_REST"}
        return {"result": {"task": task}}

    def _comment_add(self, params: dict[str, Any], user: int) -> dict[str, Any]:
        # Since crm 23.100.0 only the lower-case ``fields`` key is accepted.
        fields = params.get("fields")
        if not isinstance(fields, dict):
            raise BitrixError(400, "INVALID_ARG_VALUE", "Parameter 'fields' is required")
        entity_type = str(fields.get("ENTITY_TYPE") or "").lower()
        entity_id = _int_param(fields.get("ENTITY_ID"))
        comment = str(fields.get("COMMENT") or "")
        if entity_type not in {"lead", "deal", "contact", "company", "order"} or entity_id is None:
            raise BitrixError(400, "INVALID_ARG_VALUE", "ENTITY_TYPE and ENTITY_ID are required")
        if not comment.strip():
            raise BitrixError(400, "INVALID_ARG_VALUE", "Empty comment")
        with self._lock:
            store = {"contact": self.contacts, "deal": self.deals}.get(entity_type)
            if store is not None and entity_id not in store:
                raise BitrixError(400, "NOT_FOUND", "Element not found")
            self._ids["comment"] += 1
            comment_id = self._ids["comment"]
            self.comments.append(
                {
                    "ID": str(comment_id),
                    "ENTITY_TYPE": entity_type,
                    "ENTITY_ID": str(entity_id),
                    "COMMENT": comment,
                    "AUTHOR_ID": str(user),
                    "CREATED": _now_iso(),
                }
            )
        return {"result": comment_id}

    def _user_current(self, _params: dict[str, Any], user: int) -> dict[str, Any]:
        with self._lock:
            return {"result": copy.deepcopy(self.users[user])}

    def _page(self, rows: list[dict[str, Any]], params: dict[str, Any], standard: Iterable[str]) -> dict[str, Any]:
        """A crm.*.list page: ``select`` (``*``: standard fields, ``UF_*``: custom ones, unknown names
        ignored), ``order`` by ID, 50 from ``start``, ``total`` and ``next``."""
        order = params.get("order")
        descending = isinstance(order, dict) and str(order.get("ID", "ASC")).upper() == "DESC"
        rows = sorted(rows, key=lambda r: int(r["ID"]), reverse=descending)
        start = _int_param(params.get("start")) or 0
        select = params.get("select")
        names = [str(s) for s in select] if isinstance(select, list) and select else ["*"]
        out_rows = []
        for row in rows[start : start + PAGE_SIZE]:
            keys: list[str] = []
            for name in names:
                if name == "*":
                    keys.extend(standard)
                elif name == "UF_*":
                    keys.extend(k for k in row if k.startswith("UF_"))
                elif name in row:
                    keys.append(name)
            out_rows.append({k: copy.deepcopy(row[k]) for k in dict.fromkeys(keys) if k in row})
        out: dict[str, Any] = {"result": out_rows, "total": len(rows)}
        if start + PAGE_SIZE < len(rows):
            out["next"] = start + PAGE_SIZE
        return out


# --- helpers --------------------------------------------------------------------------------------


def _matches(row: Mapping[str, Any], flt: Any) -> bool:
    """Equality filters: ``FIELD``/``=FIELD`` equal (a list value: any of them), ``!FIELD`` not equal.
    A multiple field (``UF_CRM_TASK``) matches when any of its values does. Strings compare as strings."""
    if not isinstance(flt, dict):
        return True
    for raw_key, expected in flt.items():
        key = str(raw_key)
        negate = key.startswith("!")
        key = key.lstrip("=!")
        wanted = {str(v) for v in expected} if isinstance(expected, list) else {str(expected)}
        actual = row.get(key)
        if key == "CONTACT_ID" and "CONTACT_IDS" in row:
            actual = row["CONTACT_IDS"]
        have = {str(v) for v in actual} if isinstance(actual, list) else {"" if actual is None else str(actual)}
        hit = bool(have & wanted)
        if hit == negate:
            return False
    return True


def _int_param(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _with_tz(value: str) -> str:
    """A naive date-time written through REST is in the portal's time zone."""
    if re.search(r"(Z|[+-]\d\d:\d\d)$", value):
        return value
    return value + PORTAL_TZ


def _now_iso() -> str:
    return datetime.now(UTC).astimezone().replace(microsecond=0).isoformat()


def _time_info() -> dict[str, Any]:
    now = time.time()
    stamp = datetime.fromtimestamp(now, UTC).isoformat()
    return {
        "start": now,
        "finish": now,
        "duration": 0.0,
        "processing": 0.0,
        "date_start": stamp,
        "date_finish": stamp,
        "operating_reset_at": int(now) + 600,
        "operating": 0,
    }


def _parse_body(content_type: str, raw: bytes) -> dict[str, Any]:
    if not raw:
        return {}
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as error:
            raise ValueError(f"invalid JSON: {error}") from None
        if not isinstance(body, dict):
            raise ValueError("the JSON body is not an object")
        return body
    if kind in {"application/x-www-form-urlencoded", ""}:
        return parse_php_query(raw.decode("utf-8"))
    raise ValueError(f"unsupported content type {kind!r}")


class _Server(ThreadingHTTPServer):
    """The HTTP server, holding the ``FakeBitrix24`` its handlers answer for."""

    fake: FakeBitrix24


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: test output is not the place for an access log."""

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            split = urllib.parse.urlsplit(self.path)
            status, body = self.server.fake.handle(
                self.command, split.path, split.query, self.headers.get("Content-Type", ""), raw
            )
            data = json.dumps(body, ensure_ascii=False).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except (_Stopped, BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away, or the test is over
