"""CRM webhooks: verified per vendor, stored idempotently, answered fast, handled by the worker.

- Bitrix24 events: ``auth[application_token]`` equals the token saved at install (constant
  time) and ``auth[member_id]`` is the configured portal. Bitrix24 signs nothing and sends no
  event id, so the stored key is derived from the content.
- amoCRM / Kommo: a secret path segment (constant time) and the payload's account id /
  subdomain; the customer is re-read through the API before anything is done.
- Generic JSON: ``X-Perimeter-Signature: sha256=<HMAC-SHA256(secret, "<timestamp>.<body>")>`` with
  ``X-Perimeter-Timestamp`` no older than 5 minutes.

A database that cannot store an event makes the route answer 503, so the sender retries.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from bot.arrivals import Arrivals
from bot.crm_events import MAX_ID_LENGTH, CrmEvent, amocrm_events, bitrix24_events, generic_event
from bot.storage.database import Database
from bot.storage.events import InboundEventRepository
from bot.storage.tables import inbound_events
from bot.web.app import error_response, parse_json, read_body
from bot.web.auth import AuthError, verify_signed_webhook
from rag.errors import InputError

log = logging.getLogger(__name__)


class GenericCustomer(BaseModel):
    crm_id: str | None = Field(default=None, max_length=MAX_ID_LENGTH, description="The customer's id in your system")
    phone: str | None = Field(default=None, description="Any common spelling; matched as digits")
    email: str | None = None


class GenericEventIn(BaseModel):
    """A CRM event from a system without an adapter. Sign it (see the route's description)."""

    id: str = Field(max_length=100, description="Your event id: the same id twice is handled once")
    type: Literal["message", "deal_stage"]
    customer: GenericCustomer = Field(default_factory=GenericCustomer)
    text: str | None = Field(default=None, max_length=20000, description="The customer's message (type=message)")
    deal_id: str | None = None

    model_config = {"json_schema_extra": {"examples": [{
        "id": "evt-1001", "type": "message", "customer": {"phone": "+7 916 123-45-67"},
        "text": "Сколько стоит обслуживание карты «Классик»?"}]}}


class GenericEventStatus(BaseModel):
    id: str
    status: Literal["pending", "processing", "done", "failed"]
    result: dict[str, Any] | None = Field(default=None, description="suggestion, sources, escalate, reason, note_id")
    error: str | None = None


def _inline_defs(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its ``#/$defs/X`` references replaced by the definitions.

    In an OpenAPI document a local ``$ref`` resolves against the document's root, where a model's
    own ``$defs`` are not: left as they are, they dangle (Swagger UI and fuzzers cannot read the body).
    """
    defs = schema.get("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, list):
            return [inline(v) for v in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return inline(defs[ref.removeprefix("#/$defs/")])
        return {k: inline(v) for k, v in node.items() if k != "$defs"}

    result: dict[str, Any] = inline(schema)
    return result


class CrmWebhooks:
    """What the CRM routes need: secrets from the configuration and where events are stored."""

    def __init__(self, db: Database, *, clock: Callable[[], datetime], on_stored: Callable[[], None],
                 max_body_bytes: int, arrivals: Arrivals | None = None, bitrix24_application_token: str | None = None,
                 bitrix24_member_id: str | None = None, amocrm_path_secret: str | None = None,
                 amocrm_account_id: str | None = None, amocrm_base_url: str | None = None,
                 generic_secret: str | None = None) -> None:
        self.db, self._clock, self._on_stored, self.max_body_bytes = db, clock, on_stored, max_body_bytes
        self._arrivals = arrivals
        self.bitrix24_token, self.bitrix24_member_id = bitrix24_application_token, bitrix24_member_id
        self.amocrm_secret, self.amocrm_account_id = amocrm_path_secret, amocrm_account_id
        host = urlsplit(amocrm_base_url).hostname if amocrm_base_url else None
        self.amocrm_subdomain = host.split(".")[0] if host else None
        self.generic_secret = generic_secret

    def store(self, events: list[CrmEvent]) -> list[bool]:
        def run(conn: Any) -> list[bool]:
            repo, now = InboundEventRepository(conn), self._clock()
            return [repo.add(e.source, e.key, e.chat_key(), e.payload(), now) for e in events]

        stored = self.db.tx_sync(run)
        if self._arrivals is not None:
            for event, added in zip(events, stored, strict=True):
                if added:
                    self._arrivals.received(event.source, event.key)
        if any(stored):
            self._on_stored()
        return stored


def _same(given: str | None, expected: str | None) -> bool:
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def crm_router(hooks: CrmWebhooks) -> APIRouter:
    router = APIRouter(tags=["crm"])

    async def store(events: list[CrmEvent]) -> JSONResponse:
        try:
            stored = await run_in_threadpool(hooks.store, events)
        except SQLAlchemyError as exc:
            log.error("could not store CRM events, asking the sender to retry: %s", type(exc).__name__)
            return error_response(503, "storage unavailable, retry later")
        return JSONResponse({"ok": True, "stored": sum(stored), "duplicates": len(stored) - sum(stored)})

    if hooks.bitrix24_token:
        @router.post("/crm/bitrix24/events", include_in_schema=False)
        async def bitrix24(request: Request) -> JSONResponse:
            body = await read_body(request, hooks.max_body_bytes)
            if body is None:
                return error_response(413, "body too large")
            try:
                pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=2000)
            except (UnicodeDecodeError, ValueError):
                return error_response(400, "not a form")
            form = dict(pairs)
            if not _same(form.get("auth[application_token]"), hooks.bitrix24_token):
                log.warning("Bitrix24 event with a wrong application token refused")
                return error_response(401, "wrong application token")
            if hooks.bitrix24_member_id and not _same(form.get("auth[member_id]"), hooks.bitrix24_member_id):
                return error_response(403, "event from another portal")
            try:
                events = bitrix24_events(pairs)
            except (ValueError, InputError) as exc:  # a form of another shape than Bitrix24's
                return error_response(400, str(exc) or "not a Bitrix24 event")
            return await store(events)

    if hooks.amocrm_secret:
        @router.post("/crm/amocrm/{secret}/events", include_in_schema=False)
        async def amocrm(secret: str, request: Request) -> JSONResponse:
            if not _same(secret, hooks.amocrm_secret):
                return error_response(404, "not found")  # the path is the credential: reveal nothing
            body = await read_body(request, hooks.max_body_bytes)
            if body is None:
                return error_response(413, "body too large")
            try:
                events, account = amocrm_events(parse_qsl(body.decode("utf-8"), keep_blank_values=True,
                                                          max_num_fields=2000))
            except (UnicodeDecodeError, ValueError, InputError) as exc:
                return error_response(400, str(exc) or "not a form")
            if hooks.amocrm_account_id and str(account.get("id", "")) != hooks.amocrm_account_id:
                return error_response(403, "event from another account")
            if hooks.amocrm_subdomain and str(account.get("subdomain", "")) != hooks.amocrm_subdomain:
                return error_response(403, "event from another account")
            return await store(events)

    if hooks.generic_secret:
        secret = hooks.generic_secret

        @router.post(
            "/api/v1/events", status_code=202, response_model=dict[str, Any],
            summary="Send a CRM event (generic, HMAC-signed)",
            description=(
                "For CRMs without an adapter. Headers: `X-Perimeter-Timestamp` (unix seconds, within 5 minutes) "
                "and `X-Perimeter-Signature: sha256=<hex HMAC-SHA256 of \"<timestamp>.<raw body>\" with the "
                "shared secret>`. The same `id` twice is handled once. A `message` is answered from the "
                "knowledge base with the customer's context; fetch the result with GET /api/v1/events/{id}."),
            openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                "schema": _inline_defs(GenericEventIn.model_json_schema())}}}},
            responses={401: {"description": "bad or stale signature"}, 400: {"description": "invalid event"},
                       413: {"description": "body too large"}, 503: {"description": "retry later"}},
        )
        async def generic(request: Request) -> JSONResponse:
            body = await read_body(request, hooks.max_body_bytes)
            if body is None:
                return error_response(413, "body too large")
            try:
                verify_signed_webhook(body, request.headers.get("x-perimeter-timestamp"),
                                      request.headers.get("x-perimeter-signature"), secret)
            except AuthError as exc:
                return error_response(401, str(exc))
            try:
                data = parse_json(body)  # NaN/Infinity and deep nesting are ValueErrors too
                if not isinstance(data, dict):
                    raise InputError("an event is a JSON object")
                GenericEventIn.model_validate(data)
                event = generic_event(data)
            except (ValueError, InputError) as exc:
                return error_response(400, str(exc)[:500])
            response = await store([event])
            if response.status_code == 200:
                duplicate = json.loads(bytes(response.body))["duplicates"] == 1
                return JSONResponse({"id": event.key, "status": "accepted", "duplicate": duplicate}, status_code=202)
            return response

        @router.get("/api/v1/events/{event_id}", response_model=GenericEventStatus,
                    summary="The status and result of a generic event",
                    description="Signed like the POST, over an empty body.",
                    responses={401: {"description": "bad or stale signature"}, 404: {"description": "unknown id"}})
        async def generic_status(event_id: str, request: Request) -> JSONResponse:
            try:
                verify_signed_webhook(b"", request.headers.get("x-perimeter-timestamp"),
                                      request.headers.get("x-perimeter-signature"), secret)
            except AuthError as exc:
                return error_response(401, str(exc))
            t = inbound_events
            row = await hooks.db.tx(lambda c: c.execute(
                select(t.c.status, t.c.result, t.c.error).where(t.c.source == "generic", t.c.key == event_id[:128])
            ).first())
            if row is None:
                return error_response(404, "unknown event")
            return JSONResponse(GenericEventStatus(id=event_id, status=row.status, result=row.result,
                                                   error=row.error).model_dump())

    return router
