"""amoCRM / Kommo: find a contact, read its leads and tasks, write notes and tasks back.

One API (v4) on two domains: ``https://<subdomain>.amocrm.ru`` and ``https://<subdomain>.kommo.com``.
What this adapter relies on, from the vendor documentation (amocrm.ru/developers, developers.kommo.com):

- OAuth 2.0: every request carries ``Authorization: Bearer <access token>``; an expired token is
  answered 401. ``POST /oauth2/access_token`` with ``grant_type=refresh_token`` returns a new access
  token *and a new refresh token*; the old refresh token is single-use. So the new pair is handed to
  ``on_tokens`` to be persisted, and concurrent requests that all see the 401 share one refresh (a
  second refresh with the already-spent refresh token would be refused and lock the integration out).
- Lists are HAL: ``_embedded.<entity>`` plus ``_links.next.href`` while more pages exist; ``limit`` is
  at most 250; an empty list is ``204 No Content`` with no body, not ``200`` with ``[]``. A single
  entity that does not exist is 204 as well (the vendor's PHP library maps it to a "no content"
  exception); 404 is accepted too.
- ``query`` searches "all filled fields" fuzzily, so its hits are only candidates: a contact matches a
  lookup only if one of its PHONE values normalises to the same number, an EMAIL value is the same
  address, or the configured Telegram field holds exactly the id.
- Every pipeline has the system statuses 142 («Успешно реализовано», won) and 143 («Закрыто и не
  реализовано», lost): a lead in either is closed. Status names come from ``GET /api/v4/leads/pipelines``.
- Limits: at most 7 requests a second per integration, 429 past it, and an account that keeps exceeding
  it gets blocked (403) — hence the pacing below, on top of the caller's resilience wrapper. 402 means
  the subscription has expired; 400 carries ``validation-errors``.
- Webhooks are ``application/x-www-form-urlencoded`` with PHP-style nested keys
  (``leads[status][0][id]=…``, ``message[add][0][text]=…``, ``account[subdomain]=…``):
  ``parse_amo_webhook`` turns them into nested dicts and lists.

Tokens and the client secret never appear in exception messages or logs: messages name the method,
the URL path (never the query, which holds phones and e-mails) and amo's own error title, scrubbed.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from datetime import time as clock_time
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urljoin, urlsplit

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
    is_ascii_number,
    normalize_phone,
)
from rag.errors import InputError

log = logging.getLogger(__name__)

WON_STATUS_ID = 142  # «Успешно реализовано», in every pipeline
LOST_STATUS_ID = 143  # «Закрыто и не реализовано», in every pipeline
CLOSED_STATUS_IDS = frozenset({WON_STATUS_ID, LOST_STATUS_ID})
MAX_PAGE_SIZE = 250  # the documented maximum of ``limit``
LEAD_IDS_PER_REQUEST = 100  # keeps ``filter[id][]=…`` URLs well under proxies' header limits
DEFAULT_RETRY_AFTER_S = 1.0  # amo documents no Retry-After on 429; its limit is per second
DOCUMENTED_REQUESTS_PER_SECOND = 7.0
MAX_WEBHOOK_DEPTH = 12
_MESSAGE_LIMIT = 300


@dataclass(frozen=True)
class AmoTokens:
    """The integration's OAuth pair. ``repr`` never shows the tokens, so logging one is harmless."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_at: datetime | None = None




class AmoCrm:
    """``CrmReader`` and ``CrmWriter`` for amoCRM / Kommo.

    ``client`` is the ``httpx.AsyncClient`` to use (its timeout bounds each request); ``aclose``
    closes it. ``field_map`` maps custom field ids (int) or codes (str) of contacts and leads to
    labelled, tagged values; ``telegram_field`` is the contact field holding the Telegram user id.
    ``max_requests_per_second`` paces this instance's requests (amo's limit is per integration, so
    several processes sharing one integration should split it); ``None`` disables pacing.
    """

    name = "amocrm"

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        tokens: AmoTokens,
        *,
        client_id: str,
        client_secret: str,
        redirect_uri: str,
        on_tokens: Callable[[AmoTokens], None] | None = None,
        field_map: Mapping[int | str, FieldSpec] | None = None,
        telegram_field: int | str | None = None,
        currency: str | None = None,
        timezone: tzinfo = UTC,
        page_size: int = MAX_PAGE_SIZE,
        max_pages: int = 40,
        max_requests_per_second: float | None = DOCUMENTED_REQUESTS_PER_SECOND,
        default_task_due: timedelta = timedelta(days=1),
    ) -> None:
        split = urlsplit(base_url.strip())
        if split.scheme not in {"http", "https"} or not split.netloc:
            raise ValueError("base_url must be like https://<subdomain>.amocrm.ru or https://<subdomain>.kommo.com")
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE} (amo's maximum limit)")
        if max_pages < 1:
            raise ValueError("max_pages must be at least 1")
        if max_requests_per_second is not None and max_requests_per_second <= 0:
            raise ValueError("max_requests_per_second must be positive, or None to disable pacing")
        self._client = client
        self._origin = f"{split.scheme}://{split.netloc}"
        self._base_url = self._origin + split.path.rstrip("/")
        self._tokens = tokens
        self._client_id = client_id
        self._client_secret = client_secret
        self._redirect_uri = redirect_uri
        self._on_tokens = on_tokens
        self._fields_by_id: dict[int, tuple[str, FieldSpec]] = {}
        self._fields_by_code: dict[str, tuple[str, FieldSpec]] = {}
        for map_key, spec in (field_map or {}).items():
            entry = (spec.key or str(map_key), spec)
            if isinstance(map_key, int) or map_key.isdigit():
                self._fields_by_id[int(map_key)] = entry
            else:
                self._fields_by_code[map_key.casefold()] = entry
        self._telegram_field = telegram_field
        self._currency = currency
        self._tz = timezone
        self._page_size = page_size
        self._max_pages = max_pages
        self._interval = 1.0 / max_requests_per_second if max_requests_per_second else 0.0
        self._next_slot = 0.0
        self._default_task_due = default_task_due
        self._refresh_lock = asyncio.Lock()
        self._secrets: list[str] = [tokens.access_token, tokens.refresh_token, client_secret]
        # (pipeline id, status id) -> status name, and pipeline id -> pipeline name; None until loaded.
        self._statuses: dict[tuple[int, int], str] | None = None
        self._pipelines: dict[int, str] = {}

    @property
    def tokens(self) -> AmoTokens:
        """The tokens in use now (after any refresh)."""
        return self._tokens

    # --- CrmReader --------------------------------------------------------------------------

    async def find_customer(self, lookup: Lookup) -> CustomerRef | None:
        """The one contact matching the most trusted usable key of ``lookup``; None if nobody does.

        ``query`` is amo's fuzzy full-text search, so every hit is checked against the exact key:
        a near miss (another number ending in the same digits, an address containing this one) is
        dropped, and two real matches raise ``AmbiguousCustomer`` rather than pick one.
        """
        if lookup.crm_id is not None:
            contact = await self._get_contact(lookup.crm_id.strip(), with_leads=False)
            return None if contact is None else _ref(contact)
        if lookup.telegram_id is not None and self._telegram_field is not None:
            telegram_id = lookup.telegram_id.strip()
            if not telegram_id:
                return None
            return await self._find_by_query(telegram_id, lambda c: telegram_id in self._telegram_ids(c), "Telegram id")
        if lookup.phone is not None:
            number = normalize_phone(lookup.phone)
            if number is None:
                return None
            # The last ten digits find the number however it was typed in: +7…, 8… or no country code.
            return await self._find_by_query(number[-10:], lambda c: number in _phone_numbers(c), "phone")
        if lookup.email is not None:
            address = lookup.email.strip()
            if "@" not in address:
                return None
            wanted = address.casefold()
            return await self._find_by_query(address, lambda c: wanted in _emails(c), "e-mail")
        return None

    async def context(self, ref: CustomerRef) -> CustomerContext:
        """The contact with its leads (stage names, amounts, closed flags), its tasks and mapped fields."""
        contact_id = _contact_id(ref)
        contact = await self._get_contact(contact_id, with_leads=True)
        if contact is None:
            raise CrmError(f"amoCRM contact {contact_id} does not exist (deleted or merged?)")
        embedded = contact.get("_embedded") or {}
        lead_ids = [int(lead["id"]) for lead in embedded.get("leads") or [] if _is_int(lead.get("id"))]
        leads = await self._leads(lead_ids) if lead_ids else []
        if leads:
            await self._ensure_statuses(
                {(_int(lead.get("pipeline_id")), _int(lead.get("status_id"))) for lead in leads}
            )
        tasks = await self._list(
            "/api/v4/tasks",
            {"filter[entity_type]": "contacts", "filter[entity_id][]": contact_id},
            "tasks",
        )
        phones, emails = _contact_channels(contact)
        return CustomerContext(
            customer=_ref(contact),
            name=Value("name", "Имя", _contact_name(contact), "personal"),
            phones=tuple(phones),
            emails=tuple(emails),
            deals=tuple(self._deal(lead) for lead in leads),
            tasks=tuple(sorted((_task(t) for t in tasks), key=_task_order)),
            values=tuple(self._mapped_values(contact)),
            fetched_at=datetime.now(UTC),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    # --- CrmWriter --------------------------------------------------------------------------

    async def add_note(self, ref: CustomerRef, text: str, *, deal_id: str | None = None) -> str:
        """A «common» note on the contact, or on its lead when ``deal_id`` is given; returns the note id."""
        contact_id = _contact_id(ref)
        if not text.strip():
            raise CrmError("an amoCRM note needs text")
        if deal_id is not None and not deal_id.strip().isdigit():
            raise CrmError("an amoCRM lead id is a number")
        entity = f"leads/{deal_id.strip()}" if deal_id is not None else f"contacts/{contact_id}"
        payload = await self._call(
            "POST", f"/api/v4/{entity}/notes", json=[{"note_type": "common", "params": {"text": text}}]
        )
        return _created_id(payload, "notes")

    async def add_task(self, ref: CustomerRef, task: NewTask) -> str:
        """A task bound to the contact; returns its id.

        amo requires a deadline (``complete_till``): a ``date`` becomes 23:59 that day in the
        adapter's timezone, which amo shows as «Весь день»; no deadline means ``default_task_due``
        from now. Without ``responsible_id`` amo makes the integration's user responsible.
        """
        contact_id = _contact_id(ref)
        text = task.title.strip()
        if task.description.strip():
            text = f"{text}\n\n{task.description.strip()}" if text else task.description.strip()
        if not text:
            raise CrmError("an amoCRM task needs text")
        item: dict[str, Any] = {
            "text": text,
            "complete_till": self._complete_till(task.deadline),
            "entity_type": "contacts",
            "entity_id": int(contact_id),
        }
        if task.responsible_id is not None:
            if not task.responsible_id.strip().isdigit():
                raise CrmError("an amoCRM responsible user id is a number")
            item["responsible_user_id"] = int(task.responsible_id)
        payload = await self._call("POST", "/api/v4/tasks", json=[item])
        return _created_id(payload, "tasks")

    # --- account ------------------------------------------------------------------------------

    async def current_account(self) -> dict[str, Any]:
        """``GET /api/v4/account``: id, name, subdomain, currency… — to check a webhook's ``account[id]``."""
        payload = await self._call("GET", "/api/v4/account")
        if not isinstance(payload, dict):
            raise CrmError("amoCRM answered GET /api/v4/account without an account")
        return payload

    # --- reading --------------------------------------------------------------------------

    async def _get_contact(self, contact_id: str, *, with_leads: bool) -> dict[str, Any] | None:
        if not contact_id.isdigit():
            return None  # amo ids are numbers; anything else cannot name a contact (nor a path)
        params = {"with": "leads"} if with_leads else None
        payload = await self._call("GET", f"/api/v4/contacts/{contact_id}", params=params, missing_ok=True)
        return payload if isinstance(payload, dict) else None

    async def _find_by_query(
        self, query: str, matches: Callable[[dict[str, Any]], bool], what: str
    ) -> CustomerRef | None:
        candidates = await self._list("/api/v4/contacts", {"query": query}, "contacts")
        found: dict[str, dict[str, Any]] = {}
        for contact in candidates:
            if _is_int(contact.get("id")) and matches(contact):
                found[str(contact["id"])] = contact
        if not found:
            return None
        if len(found) > 1:
            # The message names neither the lookup value nor the contacts: it may reach a log.
            raise AmbiguousCustomer(f"{len(found)} amoCRM contacts have this {what}; refusing to guess")
        return _ref(next(iter(found.values())))

    async def _leads(self, lead_ids: list[int]) -> list[dict[str, Any]]:
        leads: dict[int, dict[str, Any]] = {}
        for start in range(0, len(lead_ids), LEAD_IDS_PER_REQUEST):
            chunk = lead_ids[start : start + LEAD_IDS_PER_REQUEST]
            for lead in await self._list("/api/v4/leads", {"filter[id][]": [str(i) for i in chunk]}, "leads"):
                if _is_int(lead.get("id")):
                    leads[int(lead["id"])] = lead
        # The contact's own order of linked leads, whatever order the pages came in.
        return [leads[i] for i in dict.fromkeys(lead_ids) if i in leads]

    async def _ensure_statuses(self, wanted: set[tuple[int, int]]) -> None:
        """Load pipelines once per adapter; again only when a lead sits in a stage added since."""
        if self._statuses is not None and all(key in self._statuses or key[1] in CLOSED_STATUS_IDS for key in wanted):
            return
        payload = await self._call("GET", "/api/v4/leads/pipelines")
        statuses: dict[tuple[int, int], str] = {}
        pipelines: dict[int, str] = {}
        for pipeline in _embedded(payload, "pipelines"):
            pipeline_id = _int(pipeline.get("id"))
            pipelines[pipeline_id] = str(pipeline.get("name") or "")
            for status in _embedded(pipeline, "statuses"):
                statuses[(pipeline_id, _int(status.get("id")))] = str(status.get("name") or "")
        self._statuses, self._pipelines = statuses, pipelines

    async def _list(self, path: str, params: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
        """Every item of a HAL list, following ``_links.next`` (204: an empty list)."""
        items: list[dict[str, Any]] = []
        target = path
        query: dict[str, Any] | None = {**params, "limit": self._page_size}
        for _ in range(self._max_pages):
            payload = await self._call("GET", target, params=query)
            if payload is None:
                return items  # 204: nothing (more) to list
            items.extend(_embedded(payload, key))
            next_href = ((payload.get("_links") or {}).get("next") or {}).get("href")
            if not isinstance(next_href, str) or not next_href:
                return items
            target, query = self._same_origin(next_href), None
        raise CrmError(f"amoCRM {urlsplit(path).path} has more than {self._max_pages} pages; refusing to read on")

    # --- mapping ----------------------------------------------------------------------------

    def _deal(self, lead: dict[str, Any]) -> Deal:
        pipeline_id, status_id = _int(lead.get("pipeline_id")), _int(lead.get("status_id"))
        statuses = self._statuses or {}
        stage = statuses.get((pipeline_id, status_id)) or _SYSTEM_STATUS_NAMES.get(status_id) or f"этап {status_id}"
        values = list(self._mapped_values(lead))
        pipeline_name = self._pipelines.get(pipeline_id)
        if pipeline_name:
            values.insert(0, Value("pipeline", "Воронка", pipeline_name, "public"))
        return Deal(
            id=str(lead.get("id")),
            title=str(lead.get("name") or f"Сделка #{lead.get('id')}"),
            stage=stage,
            amount=_decimal(lead.get("price")),
            currency=self._currency,
            closed=status_id in CLOSED_STATUS_IDS,
            values=tuple(values),
        )

    def _mapped_values(self, entity: dict[str, Any]) -> Iterable[Value]:
        for custom in entity.get("custom_fields_values") or []:
            mapped = self._spec_for(custom)
            if mapped is None:
                continue
            key, spec = mapped
            text = self._field_text(custom)
            if text:
                yield Value(key, spec.label, text, spec.sensitivity)

    def _spec_for(self, custom: dict[str, Any]) -> tuple[str, FieldSpec] | None:
        field_id = custom.get("field_id")
        if _is_int(field_id) and _int(field_id) in self._fields_by_id:
            return self._fields_by_id[_int(field_id)]
        code = custom.get("field_code")
        if isinstance(code, str) and code.casefold() in self._fields_by_code:
            return self._fields_by_code[code.casefold()]
        return None

    def _field_text(self, custom: dict[str, Any]) -> str:
        field_type = custom.get("field_type")
        parts: list[str] = []
        for item in custom.get("values") or []:
            raw = item.get("value") if isinstance(item, dict) else item
            if raw is None or raw == "":
                continue
            if field_type in {"date", "birthday", "date_time"} and _is_int(raw):
                # amo gives dates as Unix timestamps; render them in the account's timezone.
                moment = datetime.fromtimestamp(int(raw), self._tz)
                parts.append(
                    moment.date().isoformat() if field_type != "date_time" else moment.isoformat(" ", "minutes")
                )
            elif isinstance(raw, bool):
                parts.append("да" if raw else "нет")
            elif isinstance(raw, dict):
                parts.append("; ".join(f"{k}: {v}" for k, v in raw.items() if v not in (None, "")))
            else:
                parts.append(str(raw))
        return ", ".join(p for p in parts if p)

    def _telegram_ids(self, contact: dict[str, Any]) -> set[str]:
        wanted = self._telegram_field
        out: set[str] = set()
        for custom in contact.get("custom_fields_values") or []:
            if _field_is(custom, wanted):
                out.update(str(v.get("value")).strip() for v in custom.get("values") or [] if isinstance(v, dict))
        return out

    def _complete_till(self, deadline: datetime | date | None) -> int:
        if deadline is None:
            return int((datetime.now(UTC) + self._default_task_due).timestamp())
        if isinstance(deadline, datetime):
            moment = deadline if deadline.tzinfo is not None else deadline.replace(tzinfo=self._tz)
        else:
            moment = datetime.combine(deadline, clock_time(23, 59), tzinfo=self._tz)
        return int(moment.timestamp())

    # --- HTTP -------------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        target: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        missing_ok: bool = False,
    ) -> Any:
        """One API request: parsed JSON, or None for 204 (and for 404 when ``missing_ok``).

        A 401 refreshes the tokens once and repeats the request; nothing else is retried here.
        """
        url = target if target.startswith(("http://", "https://")) else self._base_url + target
        where = f"{method} {urlsplit(url).path}"
        refreshed = False
        while True:
            token = self._tokens.access_token
            await self._pace()
            try:
                response = await self._client.request(
                    method,
                    url,
                    params=dict(params) if params is not None else None,
                    json=json,
                    headers={"Authorization": f"Bearer {token}", "Accept": "application/hal+json, application/json"},
                )
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                # Never reached amo: nothing happened there, so even a write may be retried.
                raise CrmNotSent(f"cannot connect to amoCRM for {where} ({type(exc).__name__})") from None
            except httpx.TimeoutException as exc:
                raise CrmUnavailable(f"amoCRM did not answer {where} in time ({type(exc).__name__})") from None
            except httpx.HTTPError as exc:
                raise CrmUnavailable(self._scrub(f"amoCRM {where} failed: {type(exc).__name__}: {exc}")) from None
            if response.status_code == 401 and not refreshed:
                await self._refresh(token)
                refreshed = True
                continue
            return self._payload(response, where, missing_ok=missing_ok)

    def _payload(self, response: httpx.Response, where: str, *, missing_ok: bool) -> Any:
        status = response.status_code
        if status == 204 or (status == 404 and missing_ok):
            return None
        if 200 <= status < 300:
            try:
                return response.json()
            except ValueError:
                raise CrmUnavailable(f"amoCRM answered {where} with something that is not JSON") from None
        problem = self._problem(response)
        if status == 429:
            retry_after = _retry_after(response.headers.get("Retry-After"))
            raise CrmNotSent(  # refused before acting on it: safe to retry, even a write
                f"amoCRM rate limit (7 requests/s per integration) hit on {where}{problem}", retry_after_s=retry_after
            )
        if status >= 500:
            raise CrmUnavailable(f"amoCRM failed on {where}: HTTP {status}{problem}")
        if status == 401:
            raise CrmError(f"amoCRM rejected {where} even with a freshly refreshed access token (HTTP 401){problem}")
        if status == 402:
            raise CrmError(f"amoCRM refused {where}: the account's subscription has expired (HTTP 402){problem}")
        if status == 403:
            raise CrmError(
                f"amoCRM refused {where}: access forbidden — account blocked (e.g. for exceeding the request"
                f" limit) or this IP not allowed (HTTP 403){problem}"
            )
        raise CrmError(f"amoCRM refused {where}: HTTP {status}{problem}")

    async def _refresh(self, stale_token: str) -> None:
        """Trade the refresh token for a new pair, once for all requests that saw the same 401."""
        async with self._refresh_lock:
            if self._tokens.access_token != stale_token:
                return  # another request refreshed while this one waited: just use the new token
            await self._pace()
            try:
                response = await self._client.post(
                    self._base_url + "/oauth2/access_token",
                    json={
                        "client_id": self._client_id,
                        "client_secret": self._client_secret,
                        "grant_type": "refresh_token",
                        "refresh_token": self._tokens.refresh_token,
                        "redirect_uri": self._redirect_uri,
                    },
                    headers={"Accept": "application/json"},
                )
            except httpx.TimeoutException as exc:
                raise CrmUnavailable(
                    f"amoCRM did not answer the token refresh in time ({type(exc).__name__})"
                ) from None
            except httpx.HTTPError as exc:
                raise CrmUnavailable(f"amoCRM token refresh failed: {type(exc).__name__}") from None
            status = response.status_code
            if status == 429 or status >= 500:
                raise CrmUnavailable(
                    f"amoCRM could not refresh the access token now (HTTP {status})",
                    retry_after_s=_retry_after(response.headers.get("Retry-After")) if status == 429 else None,
                )
            if status != 200:
                raise CrmError(
                    f"amoCRM refused to refresh the access token (HTTP {status}{self._problem(response)}): "
                    "the integration must be authorised again"
                )
            try:
                body = response.json()
                access, refresh = body["access_token"], body["refresh_token"]
                expires_in = body.get("expires_in")
            except (ValueError, KeyError, TypeError):
                raise CrmError("amoCRM answered the token refresh without a token pair") from None
            if not isinstance(access, str) or not isinstance(refresh, str) or not access or not refresh:
                raise CrmError("amoCRM answered the token refresh without a token pair")
            expires_at = datetime.now(UTC) + timedelta(seconds=int(expires_in)) if _is_int(expires_in) else None
            self._tokens = AmoTokens(access, refresh, expires_at)
            self._secrets = [access, refresh, *self._secrets][:12]
            log.info("amoCRM access token refreshed (expires %s)", expires_at.isoformat() if expires_at else "unknown")
            if self._on_tokens is not None:
                try:
                    self._on_tokens(self._tokens)
                except Exception as exc:
                    # amo has already spent the old refresh token: the new pair lives in memory only,
                    # and a restart will need the integration authorised again. Loud, but no reason to
                    # fail this request.
                    log.error("amoCRM: persisting the refreshed tokens failed (%s)", type(exc).__name__)

    async def _pace(self) -> None:
        """Space request starts ``1 / max_requests_per_second`` apart (amo: 7 requests/s, then 429)."""
        if not self._interval:
            return
        now = time.monotonic()
        slot = max(now, self._next_slot)
        self._next_slot = slot + self._interval
        if slot > now:
            await asyncio.sleep(slot - now)

    def _same_origin(self, href: str) -> str:
        """A ``_links.next`` URL, only if it stays on this account: the bearer token goes with it."""
        url = urljoin(self._base_url + "/", href)
        split = urlsplit(url)
        if f"{split.scheme}://{split.netloc}" != self._origin:
            raise CrmError("amoCRM pagination link leads to another host; not following it with the token")
        return url

    def _problem(self, response: httpx.Response) -> str:
        """amo's error explanation (problem+json title/detail/hint, validation-error paths), scrubbed."""
        try:
            body = response.json()
        except ValueError:
            return f" {response.reason_phrase}" if response.reason_phrase else ""
        if not isinstance(body, dict):
            return ""
        parts = [
            str(body[k]) for k in ("title", "detail", "hint") if isinstance(body.get(k), str | int) and body.get(k)
        ]
        # 400 ``validation-errors``: the paths and codes say what was wrong without echoing values.
        for request in body.get("validation-errors") or []:
            errors = request.get("errors") if isinstance(request, dict) else None
            for error in errors if isinstance(errors, list) else []:
                if isinstance(error, dict):
                    parts.append(f"{error.get('path', '?')}: {error.get('code', '?')}")
        text = self._scrub(": ".join(dict.fromkeys(parts)))
        if len(text) > _MESSAGE_LIMIT:
            text = text[: _MESSAGE_LIMIT - 1] + "…"
        return f" — {text}" if text else ""

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret:
                text = text.replace(secret, "***")
        return _BEARER.sub("Bearer ***", text)


# --- module helpers ---------------------------------------------------------------------------

_BEARER = re.compile(r"Bearer\s+\S+", re.IGNORECASE)
_SYSTEM_STATUS_NAMES = {WON_STATUS_ID: "Успешно реализовано", LOST_STATUS_ID: "Закрыто и не реализовано"}


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and value.strip().isdigit()


def _int(value: Any) -> int:
    return int(value) if _is_int(value) else 0


def _embedded(payload: Any, key: str) -> list[dict[str, Any]]:
    if not isinstance(payload, dict):
        return []
    items = (payload.get("_embedded") or {}).get(key) or []
    return [item for item in items if isinstance(item, dict)]


def _ref(contact: dict[str, Any]) -> CustomerRef:
    return CustomerRef(crm=AmoCrm.name, id=str(contact["id"]), kind="contact")


def _contact_id(ref: CustomerRef) -> str:
    if ref.crm != AmoCrm.name or ref.kind != "contact" or not ref.id.isdigit():
        raise CrmError("not an amoCRM contact reference")
    return ref.id


def _field_is(custom: dict[str, Any], wanted: int | str | None) -> bool:
    if wanted is None:
        return False
    if isinstance(wanted, int) or wanted.isdigit():
        return _is_int(custom.get("field_id")) and int(custom["field_id"]) == int(wanted)
    code = custom.get("field_code")
    return isinstance(code, str) and code.casefold() == wanted.casefold()


def _channel_values(contact: dict[str, Any], code: str) -> list[tuple[str, str]]:
    """(value, field name) of the contact's PHONE or EMAIL multitext field."""
    out: list[tuple[str, str]] = []
    for custom in contact.get("custom_fields_values") or []:
        if custom.get("field_code") == code:
            label = str(custom.get("field_name") or "")
            out.extend(
                (str(v["value"]).strip(), label)
                for v in custom.get("values") or []
                if isinstance(v, dict) and v.get("value") not in (None, "")
            )
    return out


def _phone_numbers(contact: dict[str, Any]) -> set[str]:
    return {n for value, _ in _channel_values(contact, "PHONE") if (n := normalize_phone(value))}


def _emails(contact: dict[str, Any]) -> set[str]:
    return {value.casefold() for value, _ in _channel_values(contact, "EMAIL")}


def _contact_channels(contact: dict[str, Any]) -> tuple[list[Value], list[Value]]:
    phones = [Value("phone", label or "Телефон", v, "personal") for v, label in _channel_values(contact, "PHONE")]
    emails = [Value("email", label or "Email", v, "personal") for v, label in _channel_values(contact, "EMAIL")]
    return phones, emails


def _contact_name(contact: dict[str, Any]) -> str:
    name = str(contact.get("name") or "").strip()
    if name:
        return name
    parts = [str(contact.get(k) or "").strip() for k in ("first_name", "last_name")]
    return " ".join(p for p in parts if p) or f"Контакт #{contact.get('id')}"


def _decimal(value: Any) -> Decimal | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def _task(item: dict[str, Any]) -> CrmTask:
    till = item.get("complete_till")
    responsible = item.get("responsible_user_id")
    return CrmTask(
        id=str(item.get("id")),
        title=str(item.get("text") or ""),
        deadline=datetime.fromtimestamp(_int(till), UTC) if _is_int(till) else None,
        responsible=str(responsible) if responsible not in (None, "", 0) else None,
        done=bool(item.get("is_completed")),
    )


def _task_order(task: CrmTask) -> tuple[bool, datetime]:
    """Open tasks first, each group by deadline."""
    return task.done, task.deadline or datetime.max.replace(tzinfo=UTC)


def _created_id(payload: Any, key: str) -> str:
    created = _embedded(payload, key)
    if not created or not _is_int(created[0].get("id")):
        raise CrmError(f"amoCRM answered without the id of the created {key[:-1]}")
    return str(created[0]["id"])


def _retry_after(value: str | None) -> float:
    """Seconds from a Retry-After header (seconds or an HTTP date); amo's 1-second window otherwise."""
    if not value:
        return DEFAULT_RETRY_AFTER_S
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return DEFAULT_RETRY_AFTER_S
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


# --- webhooks ---------------------------------------------------------------------------------

_NESTED_KEY = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])+)")
_KEY_PART = re.compile(r"\[([^\[\]]*)\]")


def parse_amo_webhook(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """amo's form-encoded webhook as nested data, the way PHP reads it (amo's webhooks are made for that).

    ``leads[status][0][id]=7&account[subdomain]=bank`` becomes
    ``{"leads": {"status": [{"id": "7"}]}, "account": {"subdomain": "bank"}}``: a level whose keys are
    all numbers is a list (in index order), ``[]`` appends, a repeated key keeps its last value, and a
    key without brackets stays as it is. Values stay strings. ``pairs`` is what
    ``urllib.parse.parse_qsl(body, keep_blank_values=True)`` gives. A key that is both a value and a
    container (``a=1&a[b]=2``) or nests deeper than any amo payload raises ``InputError``.
    """
    root: dict[str, Any] = {}
    for raw_key, value in pairs:
        path = _key_path(raw_key)
        if len(path) > MAX_WEBHOOK_DEPTH:
            raise InputError(f"webhook field {raw_key[:80]!r} nests deeper than {MAX_WEBHOOK_DEPTH} levels")
        node = root
        for depth, part in enumerate(path):
            key = _next_index(node) if part == "" and depth > 0 else part
            last = depth == len(path) - 1
            existing = node.get(key)
            if last:
                if isinstance(existing, dict):
                    raise InputError(f"webhook field {raw_key[:80]!r} is both a value and a group")
                node[key] = value
            else:
                if existing is None:
                    existing = node[key] = {}
                elif not isinstance(existing, dict):
                    raise InputError(f"webhook field {raw_key[:80]!r} is both a value and a group")
                node = existing
    return {key: _listify(value) for key, value in root.items()}


def _key_path(raw_key: str) -> list[str]:
    match = _NESTED_KEY.fullmatch(raw_key)
    if match is None:
        return [raw_key]  # no brackets, or brackets PHP would not nest: a plain name
    return [match.group(1), *_KEY_PART.findall(match.group(2))]


def _next_index(node: dict[str, Any]) -> str:
    return str(max((int(k) for k in node if is_ascii_number(k)), default=-1) + 1)


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    if node and all(is_ascii_number(key) for key in node):
        return [_listify(node[key]) for key in sorted(node, key=int)]
    return {key: _listify(value) for key, value in node.items()}
