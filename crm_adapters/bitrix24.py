"""Bitrix24 behind the CRM port: find a contact, read its context in one round trip, write back.

Speaks Bitrix24's REST API (apidocs.bitrix24.com) over the ``httpx.AsyncClient`` it is given, with
either credential Bitrix24 offers:

- an inbound webhook, ``https://<portal>/rest/<user_id>/<code>/`` — methods are called as
  ``<webhook><method>.json``; the code is a password and never appears in a message or a log;
- an installed (local or Market) application: ``https://<portal>/rest/<method>.json`` with
  ``auth=<access_token>``. Access tokens live an hour; on ``expired_token`` the adapter renews the pair
  once at the OAuth server (``grant_type=refresh_token``), hands the new pair to ``on_tokens`` for
  storage — Bitrix24 rotates refresh tokens, so the old one is dead — and repeats the call.

Requests are POSTs with JSON bodies, which Bitrix24 accepts for every method and which keep nested
parameters (``filter``, ``select``, ``fields``) intact. The one place a query string is unavoidable is
``batch``: each ``cmd`` is ``method?params`` with PHP's array syntax, built by ``php_query``.

``context`` reads the contact, its deals, its tasks and the deal stage names in ONE ``batch`` call
(Bitrix24 counts a batch as one request against its rate limit of about 2 per second); only deals or
tasks beyond the first 50 cost further calls, again batched.

Errors follow the port: 503 ``QUERY_LIMIT_EXCEEDED`` (``retry_after_s=1``: the leaky bucket drains
about two requests a second), 429, 5xx, timeouts and connection failures are ``CrmUnavailable``;
authentication failures and every other refusal are ``CrmError`` (``Bitrix24Error`` carries
Bitrix24's own code). Nothing is retried here except the single call after a token refresh;
``crm_adapters.resilience`` retries around any adapter.

Note for the composition root: httpx logs every request URL at INFO on the ``httpx`` logger, and a
webhook's URL contains its code. Keep that logger at WARNING when a webhook is configured.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx

from crm_adapters.base import (
    AmbiguousCustomer,
    CrmError,
    CrmNotSent,
    CrmTask,
    CrmUnavailable,
    CustomerContext,
    CustomerRef,
    Deal,
    FieldSpec,
    Lookup,
    NewTask,
    Value,
    normalize_phone,
)
from rag.errors import ConfigError

log = logging.getLogger(__name__)

CRM_NAME = "bitrix24"
DEFAULT_OAUTH_URL = "https://oauth.bitrix.info/oauth/token/"
PAGE_SIZE = 50  # list methods: "the page size is always static — 50 records"
MAX_BATCH_COMMANDS = 50  # "the number of requests in a batch is limited to 50"
QUERY_LIMIT_RETRY_AFTER_S = 1.0
TASK_DONE = "5"  # tasks.task.list ``status``: 2 waiting, 3 in progress, 4 awaiting control, 5 completed, 6 deferred
# Token errors the OAuth flow recovers from by renewing the pair once.
RENEWABLE_TOKEN_ERRORS = frozenset({"expired_token", "invalid_token"})
# Errors of a batch sub-command that mean "later", not "never" (system errors, apidocs error-codes).
RETRYABLE_ERRORS = frozenset(
    {"QUERY_LIMIT_EXCEEDED", "OPERATION_TIME_LIMIT", "INTERNAL_SERVER_ERROR", "ERROR_UNEXPECTED_ANSWER"}
)
DEAL_SELECT = ("ID", "TITLE", "STAGE_ID", "CATEGORY_ID", "OPPORTUNITY", "CURRENCY_ID", "CLOSED")
TASK_SELECT = ("ID", "TITLE", "DEADLINE", "RESPONSIBLE_ID", "STATUS")
NAME_LABEL, PHONE_LABEL, EMAIL_LABEL = "Имя", "Телефон", "E-mail"
_WEBHOOK_PATH = re.compile(r"^/rest/(?P<user>\d+)/(?P<code>[^/]+)/?$")
_MONEY = re.compile(r"^(-?\d+(?:\.\d+)?)\|([A-Z]{3})$")  # a "money" custom field: "1500.50|RUB"




@dataclass(frozen=True)
class Bitrix24Webhook:
    """An inbound webhook: ``https://<portal>/rest/<user_id>/<code>/``, as Bitrix24 shows it.

    The URL is a credential: it is left out of ``repr`` and of every message.
    """

    url: str = field(repr=False)

    def __post_init__(self) -> None:
        split = urllib.parse.urlsplit(self.url.strip())
        if split.scheme not in {"http", "https"} or not split.netloc or not _WEBHOOK_PATH.match(split.path):
            raise ConfigError(
                "the Bitrix24 webhook URL must look like https://<portal>/rest/<user_id>/<code>/ "
                "(the URL is not repeated here: it contains the webhook's secret code)"
            )

    @property
    def portal_url(self) -> str:
        split = urllib.parse.urlsplit(self.url.strip())
        return f"{split.scheme}://{split.netloc}"

    @property
    def user_id(self) -> str:
        match = _WEBHOOK_PATH.match(urllib.parse.urlsplit(self.url.strip()).path)
        assert match is not None  # checked in __post_init__
        return match.group("user")

    @property
    def code(self) -> str:
        match = _WEBHOOK_PATH.match(urllib.parse.urlsplit(self.url.strip()).path)
        assert match is not None
        return match.group("code")

    def __repr__(self) -> str:
        return f"Bitrix24Webhook(portal={self.portal_url!r}, user_id={self.user_id!r}, code='***')"


@dataclass(frozen=True)
class Bitrix24OAuth:
    """An installed application's credentials. ``on_tokens(access_token, refresh_token)`` is called after
    every renewal so the caller can store the new pair (the old refresh token no longer works)."""

    portal_url: str
    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    client_id: str
    client_secret: str = field(repr=False)
    oauth_url: str = DEFAULT_OAUTH_URL
    on_tokens: Callable[[str, str], None] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        split = urllib.parse.urlsplit(self.portal_url.strip())
        if split.scheme not in {"http", "https"} or not split.netloc:
            raise ConfigError(f"the Bitrix24 portal URL must look like https://<portal>, got {self.portal_url!r}")


Bitrix24Auth = Bitrix24Webhook | Bitrix24OAuth


class Bitrix24Error(CrmError):
    """Bitrix24 refused a call: ``error`` is its own code (``ERROR_CORE``, ``NO_AUTH_FOUND``...), ``status``
    the HTTP status — for callers that react to one refusal differently from another."""

    def __init__(self, message: str, *, error: str, description: str, status: int) -> None:
        super().__init__(message)
        self.error = error
        self.description = description
        self.status = status


@dataclass
class _BatchAnswer:
    """``batch``'s ``result``, with PHP's empty arrays (``[]``) read as empty maps."""

    result: dict[str, Any]
    errors: dict[str, dict[str, Any]]
    totals: dict[str, int]
    nexts: dict[str, int]


def php_query(params: Mapping[str, Any]) -> str:
    """Parameters as a query string in PHP's array syntax, the way ``http_build_query`` writes it:
    ``{"filter": {"CONTACT_ID": 5}, "select": ["ID", "TITLE"]}`` → ``filter[CONTACT_ID]=5&select[]=ID&select[]=TITLE``.

    ``batch`` needs it: each ``cmd`` is ``method?query`` (Bitrix24 parses it with PHP's ``parse_str``).
    Lists of scalars use ``[]``, lists holding maps or lists use explicit indices; ``None`` and empty
    containers are left out (``http_build_query`` drops them too); booleans become 1/0. Values are
    percent-encoded once (UTF-8), brackets in keys are kept readable.
    """
    pairs: list[tuple[str, str]] = []

    def walk(key: str, value: Any) -> None:
        if value is None:
            return
        if isinstance(value, Mapping):
            for name, item in value.items():
                walk(f"{key}[{name}]", item)
        elif isinstance(value, list | tuple):
            nested = any(isinstance(item, Mapping | list | tuple) for item in value)
            for index, item in enumerate(value):
                walk(f"{key}[{index}]" if nested else f"{key}[]", item)
        else:
            pairs.append((key, _scalar(value)))

    for name, value in params.items():
        walk(str(name), value)
    return "&".join(f"{urllib.parse.quote(k, safe='[]')}={urllib.parse.quote(v, safe='')}" for k, v in pairs)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


class Bitrix24Crm:
    """``CrmReader`` and ``CrmWriter`` on one Bitrix24 portal. ``aclose`` closes the client it was given.

    ``field_map`` names the deployment's custom fields to read from contacts and deals (for example
    ``{"UF_CRM_BALANCE": FieldSpec("Баланс", "financial")}``); fields not named there never leave this
    adapter. ``telegram_field`` is the contact's custom field holding a Telegram user id.
    ``default_responsible_id`` is who gets tasks created without a ``responsible_id`` (a webhook's own
    user when unset: Bitrix24 requires a responsible person).
    """

    name = CRM_NAME

    def __init__(
        self,
        http: httpx.AsyncClient,
        auth: Bitrix24Auth,
        *,
        field_map: Mapping[str, FieldSpec] | None = None,
        telegram_field: str | None = None,
        default_responsible_id: str | None = None,
        max_list_pages: int = 20,
    ) -> None:
        self._http = http
        self._auth = auth
        self._field_map = dict(field_map or {})
        self._telegram_field = telegram_field
        self._max_list_pages = max(1, max_list_pages)
        self._default_responsible: str | None
        if isinstance(auth, Bitrix24Webhook):
            self._portal = auth.portal_url
            self._rest_base = f"{self._portal}/rest/{auth.user_id}/{auth.code}/"
            self._secrets = [auth.code]
            self._default_responsible = default_responsible_id or auth.user_id
        else:
            self._portal = auth.portal_url.strip().rstrip("/").removesuffix("/rest")
            self._rest_base = f"{self._portal}/rest/"
            self._secrets = [auth.access_token, auth.refresh_token, auth.client_secret]
            self._default_responsible = default_responsible_id
        self._access_token = auth.access_token if isinstance(auth, Bitrix24OAuth) else None
        self._refresh_token = auth.refresh_token if isinstance(auth, Bitrix24OAuth) else None
        self._refresh_lock = asyncio.Lock()
        self._where = f"Bitrix24 at {self._portal}"

    # --- CrmReader -----------------------------------------------------------------------------

    async def find_customer(self, lookup: Lookup) -> CustomerRef | None:
        """The first usable key of ``lookup`` decides: crm_id, telegram_id (when ``telegram_field`` is
        configured), phone, e-mail. None when nobody matches; ``AmbiguousCustomer`` when several do."""
        if lookup.crm_id:
            return await self._find_by_id(lookup.crm_id)
        if lookup.telegram_id and self._telegram_field:
            return await self._find_by_telegram(self._telegram_field, lookup.telegram_id)
        if lookup.phone:
            digits = normalize_phone(lookup.phone)
            if digits is None:
                return None
            return await self._find_by_comm("PHONE", _phone_forms(digits), "phone")
        if lookup.email:
            email = lookup.email.strip()
            if not email:
                return None
            return await self._find_by_comm("EMAIL", list(dict.fromkeys([email, email.lower()])), "e-mail")
        return None

    async def context(self, ref: CustomerRef) -> CustomerContext:
        """Contact, deals (with stage names and mapped fields), tasks bound to the contact: one ``batch``."""
        contact_id = self._contact_id(ref)
        requests: dict[str, tuple[str, dict[str, Any]]] = {
            "contact": ("crm.contact.get", {"id": contact_id}),
            "deals": (
                "crm.deal.list",
                {
                    "filter": {"CONTACT_ID": contact_id},
                    "select": [*DEAL_SELECT, *self._custom_fields()],
                    "order": {"ID": "ASC"},
                },
            ),
            # Tasks bind to CRM items through UF_CRM_TASK values such as "C_5" (contact 5).
            "tasks": (
                "tasks.task.list",
                {"filter": {"UF_CRM_TASK": f"C_{contact_id}"}, "select": list(TASK_SELECT), "order": {"ID": "asc"}},
            ),
            # Stages of every pipeline: DEAL_STAGE and DEAL_STAGE_<n>. crm.status.list has no navigation
            # and returns all directories at once, so one unfiltered call covers every pipeline a deal
            # may be in without knowing their ids beforehand.
            "stages": ("crm.status.list", {"order": {"SORT": "ASC"}}),
        }
        answer = await self._batch(requests)
        contact_error = answer.errors.get("contact")
        if contact_error is not None:
            if _is_not_found(contact_error):
                raise Bitrix24Error(
                    f"{self._where} has no contact {contact_id}", error="NOT_FOUND", description="Not found", status=400
                )
            raise self._sub_error("crm.contact.get", contact_error)
        for key, (method, _params) in requests.items():
            if key in answer.errors:
                raise self._sub_error(method, answer.errors[key])
        contact = answer.result.get("contact")
        if not isinstance(contact, dict):
            raise CrmUnavailable(f"{self._where} answered crm.contact.get without a contact")
        deals = _as_list(answer.result.get("deals"))
        tasks = _as_list(_as_dict(answer.result.get("tasks")).get("tasks"))
        more = await self._remaining_pages(requests, answer, ("deals", "tasks"))
        deals += more.get("deals", [])
        for page in more.get("tasks", []):
            tasks += _as_list(_as_dict(page).get("tasks"))
        stages = {
            str(s.get("STATUS_ID")): str(s.get("NAME") or s.get("STATUS_ID"))
            for s in _as_list(answer.result.get("stages"))
            if isinstance(s, dict) and re.fullmatch(r"DEAL_STAGE(_\d+)?", str(s.get("ENTITY_ID")))
        }
        return CustomerContext(
            customer=CustomerRef(CRM_NAME, contact_id),
            name=Value("NAME", NAME_LABEL, _full_name(contact), "personal"),
            phones=tuple(Value("PHONE", PHONE_LABEL, v, "personal") for v in _multifield(contact.get("PHONE"))),
            emails=tuple(Value("EMAIL", EMAIL_LABEL, v, "personal") for v in _multifield(contact.get("EMAIL"))),
            deals=tuple(self._deal(d, stages) for d in deals if isinstance(d, dict)),
            tasks=tuple(_task(t) for t in tasks if isinstance(t, dict)),
            values=self._values(contact),
            fetched_at=datetime.now(UTC),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- CrmWriter -----------------------------------------------------------------------------

    async def add_note(self, ref: CustomerRef, text: str, *, deal_id: str | None = None) -> str:
        """A timeline comment on the contact, or on the deal when ``deal_id`` is given."""
        contact_id = self._contact_id(ref)
        entity_type, entity_id = ("deal", _numeric_id(deal_id, "deal")) if deal_id else ("contact", contact_id)
        # Since crm 23.100.0 only the lower-case ``fields`` key is accepted.
        body = await self._call(
            "crm.timeline.comment.add",
            {"fields": {"ENTITY_ID": entity_id, "ENTITY_TYPE": entity_type, "COMMENT": text}},
        )
        return str(body.get("result"))

    async def add_task(self, ref: CustomerRef, task: NewTask) -> str:
        """A task bound to the contact (``UF_CRM_TASK: ["C_<id>"]``, so it shows in the contact's card)."""
        contact_id = self._contact_id(ref)
        fields: dict[str, Any] = {
            "TITLE": task.title,
            "DESCRIPTION": task.description,
            "UF_CRM_TASK": [f"C_{contact_id}"],
        }
        responsible = task.responsible_id or self._default_responsible
        if responsible:
            fields["RESPONSIBLE_ID"] = responsible
        if task.deadline is not None:
            fields["DEADLINE"] = _deadline(task.deadline)
        body = await self._call("tasks.task.add", {"fields": fields})
        created = _as_dict(_as_dict(body.get("result")).get("task"))
        if "id" not in created:
            raise CrmUnavailable(f"{self._where} answered tasks.task.add without the task's id")
        return str(created["id"])

    # --- the placement (widget) ---------------------------------------------------------------

    async def current_user(self, auth_id: str) -> dict[str, Any] | None:
        """The Bitrix24 user an ``AUTH_ID`` belongs to (what a placement iframe receives), or None when
        Bitrix24 does not accept it (401).

        Always asks the CONFIGURED portal: the request's own DOMAIN is never trusted, or anyone could
        point us at a portal they control and vouch for themselves. The token is not renewed here.
        """
        if not auth_id.strip():
            return None
        response = await self._post(f"{self._portal}/rest/user.current.json", {"auth": auth_id}, "user.current")
        if response.status_code == 401:
            return None
        body = self._checked(response, "user.current", extra_secrets=(auth_id,))
        result = body.get("result")
        return result if isinstance(result, dict) else None

    # --- calls -------------------------------------------------------------------------------

    async def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """One REST call; with OAuth, an expired token is renewed once and the call repeated."""
        renewed = False
        while True:
            token = self._access_token
            payload = dict(params) if token is None else {**params, "auth": token}
            response = await self._post(self._rest_base + f"{method}.json", payload, method)
            if (
                token is not None
                and not renewed
                and response.status_code == 401
                and _error_of(response)[0] in RENEWABLE_TOKEN_ERRORS
            ):
                await self._renew_tokens(token)
                renewed = True
                continue
            return self._checked(response, method)

    async def _post(self, url: str, payload: dict[str, Any], method: str) -> httpx.Response:
        started = time.monotonic()
        try:
            response = await self._http.post(url, json=payload)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # Never reached Bitrix24: nothing happened there, so even a write may be retried.
            raise CrmNotSent(f"cannot connect to {self._where} for {method}: {type(exc).__name__}") from None
        except httpx.TimeoutException:
            raise CrmUnavailable(f"{self._where} did not answer {method} in time") from None
        except httpx.TransportError as exc:
            raise CrmUnavailable(
                f"cannot reach {self._where} for {method}: {type(exc).__name__}: {self._redact(str(exc))}"
            ) from None
        log.debug("bitrix24 %s -> %s in %.3fs", method, response.status_code, time.monotonic() - started)
        return response

    def _checked(self, response: httpx.Response, method: str, *, extra_secrets: tuple[str, ...] = ()) -> dict[str, Any]:
        """The JSON body of a successful answer, or the port's error for a failed one."""
        status = response.status_code
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        if status == 200 and isinstance(body, dict) and "error" not in body:
            return body
        error, description = _error_of(response)
        description = self._redact(description, extra_secrets)
        detail = f"{status} {error or 'no error code'}" + (f": {description}" if description else "")
        if error == "QUERY_LIMIT_EXCEEDED":
            # 503 "Too many requests": Bitrix24's leaky bucket drains about two requests a second.
            raise CrmNotSent(  # refused before acting on it
                f"{self._where} rate-limited {method} ({detail})", retry_after_s=QUERY_LIMIT_RETRY_AFTER_S
            )
        if status == 429:
            raise CrmNotSent(f"{self._where} rate-limited {method} ({detail})", retry_after_s=_retry_after(response))
        if status >= 500:
            raise CrmUnavailable(f"{self._where} failed {method} ({detail})", retry_after_s=_retry_after(response))
        if status == 200:
            raise CrmUnavailable(f"{self._where} answered {method} with something that is not a REST result")
        raise Bitrix24Error(
            f"{self._where} refused {method} ({detail})", error=error, description=description, status=status
        )

    async def _renew_tokens(self, used_token: str) -> None:
        """Exchange the refresh token for a new pair, once even when several calls find the token expired."""
        auth = self._auth
        assert isinstance(auth, Bitrix24OAuth)
        async with self._refresh_lock:
            if self._access_token != used_token:
                return  # another call renewed the pair while this one waited
            form = {
                "grant_type": "refresh_token",
                "client_id": auth.client_id,
                "client_secret": auth.client_secret,
                "refresh_token": self._refresh_token or "",
            }
            try:
                # POSTed as a form rather than the documented GET query, so that the client secret and the
                # refresh token stay out of URLs (and so out of proxy and httpx access logs).
                response = await self._http.post(auth.oauth_url, data=form)
            except httpx.TimeoutException:
                raise CrmUnavailable("the Bitrix24 OAuth server did not answer in time") from None
            except httpx.TransportError as exc:
                raise CrmUnavailable(f"cannot reach the Bitrix24 OAuth server: {type(exc).__name__}") from None
            try:
                body: Any = response.json()
            except ValueError:
                body = None
            if response.status_code >= 500 or response.status_code == 429:
                raise CrmUnavailable(f"the Bitrix24 OAuth server failed ({response.status_code})")
            if response.status_code != 200 or not isinstance(body, dict) or not body.get("access_token"):
                error, description = _error_of(response)
                raise Bitrix24Error(
                    f"the Bitrix24 OAuth server refused to renew the access token for {self._portal} "
                    f"({response.status_code} {error or 'no error code'}): the application must be authorised again",
                    error=error,
                    description=self._redact(description),
                    status=response.status_code,
                )
            self._access_token = str(body["access_token"])
            self._refresh_token = str(body.get("refresh_token") or self._refresh_token or "")
            self._secrets += [self._access_token, self._refresh_token]
            log.info("renewed the Bitrix24 OAuth tokens for %s", self._portal)
            if auth.on_tokens is not None:
                try:
                    auth.on_tokens(self._access_token, self._refresh_token)
                except Exception:
                    # The call can go on with the new pair; the next process start will need re-authorisation.
                    log.exception("storing the renewed Bitrix24 tokens failed (on_tokens)")

    async def _batch(self, requests: Mapping[str, tuple[str, dict[str, Any]]]) -> _BatchAnswer:
        """Up to 50 commands in one ``batch`` call (``halt=0``: every command runs, errors per command)."""
        cmd = {key: f"{method}?{php_query(params)}" if params else method for key, (method, params) in requests.items()}
        body = await self._call("batch", {"halt": 0, "cmd": cmd})
        outer = _as_dict(body.get("result"))
        return _BatchAnswer(
            result=_as_dict(outer.get("result")),
            errors={k: _as_dict(v) for k, v in _as_dict(outer.get("result_error")).items()},
            totals={k: _int(v) for k, v in _as_dict(outer.get("result_total")).items()},
            nexts={k: _int(v) for k, v in _as_dict(outer.get("result_next")).items()},
        )

    async def _remaining_pages(
        self, requests: Mapping[str, tuple[str, dict[str, Any]]], first: _BatchAnswer, keys: tuple[str, ...]
    ) -> dict[str, list[Any]]:
        """Pages after the first of each list (``next``/``total``), fetched in as few batches as possible."""
        pending: list[tuple[str, str, tuple[str, dict[str, Any]]]] = []
        for key in keys:
            start, total = first.nexts.get(key), first.totals.get(key, 0)
            if not start:
                continue
            limit = min(total, self._max_list_pages * PAGE_SIZE)
            if total > limit:
                log.warning("bitrix24: %s has %d records; reading the first %d", requests[key][0], total, limit)
            method, params = requests[key]
            for offset in range(start, limit, PAGE_SIZE):
                pending.append((key, f"{key}_{offset}", (method, {**params, "start": offset})))
        pages: dict[str, list[Any]] = {}
        for chunk_start in range(0, len(pending), MAX_BATCH_COMMANDS):
            chunk = pending[chunk_start : chunk_start + MAX_BATCH_COMMANDS]
            answer = await self._batch({name: request for _key, name, request in chunk})
            for key, name, (method, _params) in chunk:
                if name in answer.errors:
                    raise self._sub_error(method, answer.errors[name])
                result = answer.result.get(name)
                if key == "tasks":
                    pages.setdefault(key, []).append(result)
                else:
                    pages.setdefault(key, []).extend(_as_list(result))
        return pages

    def _sub_error(self, method: str, error: Mapping[str, Any]) -> CrmError | CrmUnavailable:
        code = str(error.get("error") or "")
        description = self._redact(str(error.get("error_description") or ""))
        detail = f"{code or 'no error code'}" + (f": {description}" if description else "")
        if code in RETRYABLE_ERRORS:
            retry = QUERY_LIMIT_RETRY_AFTER_S if code == "QUERY_LIMIT_EXCEEDED" else None
            return CrmUnavailable(f"{self._where} failed {method} in a batch ({detail})", retry_after_s=retry)
        return Bitrix24Error(
            f"{self._where} refused {method} in a batch ({detail})", error=code, description=description, status=400
        )

    # --- lookups -----------------------------------------------------------------------------

    async def _find_by_id(self, raw_id: str) -> CustomerRef | None:
        contact_id = raw_id.strip()
        if not contact_id.isdigit() or int(contact_id) <= 0:
            return None
        try:
            body = await self._call("crm.contact.get", {"id": contact_id})
        except Bitrix24Error as exc:
            # An unknown id: 400 {"error": "", "error_description": "Not found"}.
            if exc.status == 400 and _is_not_found({"error": exc.error, "error_description": exc.description}):
                return None
            raise
        contact = _as_dict(body.get("result"))
        return CustomerRef(CRM_NAME, str(contact.get("ID") or contact_id))

    async def _find_by_telegram(self, telegram_field: str, telegram_id: str) -> CustomerRef | None:
        body = await self._call(
            "crm.contact.list",
            {"filter": {telegram_field: telegram_id.strip()}, "select": ["ID"], "order": {"ID": "ASC"}},
        )
        ids = [str(row["ID"]) for row in _as_list(body.get("result")) if isinstance(row, dict) and "ID" in row]
        return self._one(ids, "Telegram id", total=_int(body.get("total")))

    async def _find_by_comm(self, comm_type: str, values: list[str], what: str) -> CustomerRef | None:
        body = await self._call(
            "crm.duplicate.findbycomm", {"entity_type": "CONTACT", "type": comm_type, "values": values}
        )
        # {"CONTACT": [275, 2297]} — or PHP's empty array [] when nothing matches.
        ids = [str(i) for i in _as_dict(body.get("result")).get("CONTACT") or []]
        return self._one(ids, what)

    def _one(self, ids: list[str], what: str, *, total: int = 0) -> CustomerRef | None:
        distinct = list(dict.fromkeys(ids))
        if len(distinct) > 1 or total > 1:
            raise AmbiguousCustomer(f"{max(len(distinct), total)} contacts in {self._where} match this {what}")
        return CustomerRef(CRM_NAME, distinct[0]) if distinct else None

    # --- mapping -----------------------------------------------------------------------------

    def _custom_fields(self) -> list[str]:
        # Custom fields of contacts and deals share one map; a name a deal does not have is ignored by
        # crm.deal.list's select.
        return [name for name in self._field_map if name.startswith("UF_")]

    def _values(self, entity: Mapping[str, Any]) -> tuple[Value, ...]:
        out = []
        for key, spec in self._field_map.items():
            text = _field_text(entity.get(key))
            if text:
                out.append(Value(key, spec.label, text, spec.sensitivity))
        return tuple(out)

    def _deal(self, row: Mapping[str, Any], stages: Mapping[str, str]) -> Deal:
        stage_id = str(row.get("STAGE_ID") or "")
        return Deal(
            id=str(row.get("ID")),
            title=str(row.get("TITLE") or ""),
            stage=stages.get(stage_id, stage_id),
            amount=_decimal(row.get("OPPORTUNITY")),
            currency=str(row.get("CURRENCY_ID")) if row.get("CURRENCY_ID") else None,
            closed=str(row.get("CLOSED") or "N").upper() == "Y",
            values=self._values(row),
        )

    def _contact_id(self, ref: CustomerRef) -> str:
        if ref.crm != CRM_NAME or ref.kind != "contact":
            raise CrmError(f"{ref.crm}/{ref.kind} is not a Bitrix24 contact")
        return _numeric_id(ref.id, "contact")

    def _redact(self, text: str, extra: tuple[str, ...] = ()) -> str:
        for secret in (*self._secrets, *extra):
            if secret and len(secret) >= 4:
                text = text.replace(secret, "***")
        return text


# --- helpers ----------------------------------------------------------------------------------


def _error_of(response: httpx.Response) -> tuple[str, str]:
    """Bitrix24's ``{"error": ..., "error_description": ...}``, or ("", a short excerpt) for other bodies."""
    try:
        body = response.json()
    except ValueError:
        return "", response.text[:200].strip()
    if isinstance(body, dict):
        return str(body.get("error") or ""), str(body.get("error_description") or "")
    return "", ""


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("Retry-After")
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def _is_not_found(error: Mapping[str, Any]) -> bool:
    return str(error.get("error_description") or "").strip().lower() == "not found"


def _numeric_id(raw: str | None, what: str) -> str:
    value = (raw or "").strip()
    if not value.isdigit():
        raise CrmError(f"a Bitrix24 {what} id is a number, got {raw!r}")
    return value


def _phone_forms(digits: str) -> list[str]:
    """The forms a CRM may hold one number in. Bitrix24 matches communications by their digits, so
    «+7 (916) 123-45-67» is found as 79161234567 but «8 916 123-45-67» only as 89161234567, and
    «916 123 45 67» only as 9161234567: ask for all of them at once (up to 20 values per call)."""
    forms = [digits, f"+{digits}"]
    if len(digits) == 11 and digits.startswith("7"):
        forms += [f"8{digits[1:]}", digits[1:]]
    return forms


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}  # PHP's empty array arrives as []


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, dict):  # a PHP array with non-sequential keys
        return list(value.values())
    return []


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _decimal(value: Any) -> Decimal | None:
    if value in (None, ""):
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def _full_name(contact: Mapping[str, Any]) -> str:
    parts = (contact.get("NAME"), contact.get("SECOND_NAME"), contact.get("LAST_NAME"))
    return " ".join(str(p).strip() for p in parts if p and str(p).strip())


def _multifield(value: Any) -> list[str]:
    """PHONE / EMAIL: ``[{"ID": "1", "VALUE_TYPE": "WORK", "VALUE": "+7...", "TYPE_ID": "PHONE"}]``."""
    return [str(item["VALUE"]) for item in _as_list(value) if isinstance(item, dict) and item.get("VALUE")]


def _field_text(value: Any) -> str:
    """A custom field's value as text: money "1500.50|RUB" → "1500.50 RUB", multiple values joined."""
    if value is None or value is False:
        return ""
    if isinstance(value, list):
        return ", ".join(t for t in (_field_text(v) for v in value) if t)
    text = str(value).strip()
    money = _MONEY.match(text)
    return f"{money.group(1)} {money.group(2)}" if money else text


def _parse_datetime(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


def _deadline(value: datetime | date) -> str:
    """ISO 8601; a bare date means the end of that day (a naive time is the portal's time zone)."""
    if isinstance(value, datetime):
        return value.isoformat()
    return f"{value.isoformat()}T23:59:59"


def _task(row: Mapping[str, Any]) -> CrmTask:
    """tasks.task.list answers in camelCase (``responsibleId``), with the responsible person's name in
    ``responsible.name``."""
    responsible = _as_dict(row.get("responsible")).get("name") or row.get("responsibleId")
    return CrmTask(
        id=str(row.get("id")),
        title=str(row.get("title") or ""),
        deadline=_parse_datetime(row.get("deadline")),
        responsible=str(responsible) if responsible else None,
        done=str(row.get("status")) == TASK_DONE,
    )
