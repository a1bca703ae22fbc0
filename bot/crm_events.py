"""CRM events: a customer's message in a CRM chat, a deal changing stage.

The HTTP edge verifies each vendor's request and stores the event (idempotently, like
Telegram updates); the worker calls ``CrmEventProcessor.handle``, which re-reads the customer
through the CRM's API (an event's own fields are never trusted for data), asks the knowledge
base with that customer's context, and writes the suggested reply and its sources back to
the CRM as a note for the operator. The result is kept on the event, so the generic webhook's
caller can fetch it.

Payload parsers turn each vendor's format into one ``CrmEvent`` shape:

- Bitrix24: form-encoded ``event=ONIMBOTMESSAGEADD`` (a message to our bot in an Open Lines
  chat; the CRM binding is in ``CHAT_ENTITY_DATA_1``/``_2`` as ``…|CONTACT|<id>|…``) and
  ``ONCRMDEALUPDATE`` (``data[FIELDS][ID]``).
- amoCRM / Kommo: form-encoded ``message[add][n]`` (an incoming chat message with its
  ``contact_id``) and ``leads[status][n]`` (a lead moved to another stage).
- Generic: JSON ``{"id", "type": "message" | "deal_stage", "customer": {...}, "text", "deal_id"}``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import update

from bot.customers import context_for_prompt
from bot.storage.database import Database
from bot.storage.tables import inbound_events
from bot.usage import UsageLog
from crm_adapters.amocrm import parse_amo_webhook
from crm_adapters.base import (
    CrmError,
    CrmReader,
    CrmWriter,
    CustomerRef,
    Lookup,
    is_ascii_number,
    normalize_phone,
)
from rag.answer import AnswerResult
from rag.errors import InputError
from rag.pipeline import AnswerPipeline, AnswerRequest

log = logging.getLogger(__name__)

parse_php_form = parse_amo_webhook  # Bitrix24 events use the same PHP-style nested form keys

# Events are stored under ``inbound_events.key`` String(128) and ``chat_key`` String(64): PostgreSQL
# refuses longer values (SQLite does not check), which would turn an event into a 503 that the CRM
# retries for ever. A sender's id longer than any real one is refused (400) where it is read; a chat
# key is hashed when the source's prefix makes it too long (it only orders a chat's events).
MAX_ID_LENGTH = 64
MAX_KEY_LENGTH = 128
MAX_CHAT_KEY_LENGTH = 64


@dataclass(frozen=True)
class CrmEvent:
    source: str  # bitrix24 | amocrm | generic
    kind: str  # message | deal_stage
    key: str  # the idempotency key within the source
    customer: dict[str, str] = field(default_factory=dict)  # crm_id / phone / email
    text: str | None = None
    deal_id: str | None = None

    def __post_init__(self) -> None:
        if len(self.key) > MAX_KEY_LENGTH:
            raise InputError(f"the event's key is longer than {MAX_KEY_LENGTH} characters")

    def chat_key(self) -> str:
        key = f"{self.source}:{self.customer.get('crm_id') or self.customer.get('phone') or self.key}"
        return key if len(key) <= MAX_CHAT_KEY_LENGTH else f"{self.source}:#{_fingerprint(key)}"

    def payload(self) -> dict[str, Any]:
        return asdict(self)


def _fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()[:40]


def _group(value: Any) -> dict[str, Any]:
    """A nested part of a PHP-style form, or {} where the sender put a value or a list instead."""
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str:
    """A form value, or "" where the sender put a group instead."""
    return value if isinstance(value, str) else ""


def _id(value: str, what: str) -> str:
    if len(value) > MAX_ID_LENGTH:
        raise InputError(f"{what}: at most {MAX_ID_LENGTH} characters")
    return value


def bitrix24_events(pairs: Iterable[tuple[str, str]]) -> list[CrmEvent]:
    """The events in one Bitrix24 POST (Bitrix24 sends no event id: the content is the key)."""
    form = parse_php_form(list(pairs))
    name = _text(form.get("event")).upper()
    data = _group(form.get("data"))
    if name == "ONIMBOTMESSAGEADD":
        params = _group(data.get("PARAMS"))
        text = _text(params.get("MESSAGE")).strip()
        contact = _bitrix_contact(_text(params.get("CHAT_ENTITY_DATA_1")), _text(params.get("CHAT_ENTITY_DATA_2")))
        if not text or contact is None:
            return []
        key = _id(_text(params.get("MESSAGE_ID")) or _fingerprint(name, params), "MESSAGE_ID")
        return [CrmEvent("bitrix24", "message", f"msg:{key}", {"crm_id": _id(contact, "contact id")}, text)]
    if name == "ONCRMDEALUPDATE":
        deal = _text(_group(data.get("FIELDS")).get("ID"))
        if not is_ascii_number(deal):
            return []
        deal = _id(deal, "deal id")
        return [CrmEvent("bitrix24", "deal_stage", f"deal:{deal}:{_text(form.get('ts'))}", {}, None, deal)]
    return []


def _bitrix_contact(*entity_data: str) -> str | None:
    for raw in entity_data:
        parts = raw.split("|")
        for i, part in enumerate(parts[:-1]):
            if part.upper() == "CONTACT" and is_ascii_number(parts[i + 1]) and parts[i + 1] != "0":
                return parts[i + 1]
    return None


def amocrm_events(pairs: Iterable[tuple[str, str]]) -> tuple[list[CrmEvent], dict[str, Any]]:
    """The events in one amo webhook, and its ``account`` part (checked by the edge)."""
    form = parse_amo_webhook(list(pairs))
    events: list[CrmEvent] = []
    for message in _items(_group(form.get("message")).get("add")):
        text, contact = _text(message.get("text")).strip(), _text(message.get("contact_id"))
        if text and is_ascii_number(contact):
            key = _id(_text(message.get("id")) or _fingerprint(message), "message id")
            events.append(CrmEvent("amocrm", "message", f"msg:{key}", {"crm_id": _id(contact, "contact_id")}, text))
    for lead in _items(_group(form.get("leads")).get("status")):
        lead_id = _text(lead.get("id"))
        if is_ascii_number(lead_id):
            key = f"lead:{_id(lead_id, 'lead id')}:{_text(lead.get('status_id'))}:{_text(lead.get('last_modified'))}"
            events.append(CrmEvent("amocrm", "deal_stage", key, {}, None, lead_id))
    return events, _group(form.get("account"))


def _items(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, list):
        return [v for v in value if isinstance(v, dict)]
    if isinstance(value, dict):
        return [v for v in value.values() if isinstance(v, dict)]
    return []


def generic_event(body: Mapping[str, Any]) -> CrmEvent:
    """The documented generic webhook's JSON (see the OpenAPI schema)."""
    event_id = str(body.get("id") or "").strip()
    kind = body.get("type")
    if not event_id or len(event_id) > 100:
        raise InputError("id: a non-empty string of at most 100 characters")
    if kind not in ("message", "deal_stage"):
        raise InputError("type: message | deal_stage")
    raw_customer = body.get("customer") or {}
    if not isinstance(raw_customer, dict):
        raise InputError("customer: an object")
    customer = {k: str(raw_customer[k]) for k in ("crm_id", "phone", "email") if raw_customer.get(k)}
    if "crm_id" in customer:
        _id(customer["crm_id"], "customer.crm_id")
    if "phone" in customer:
        phone = normalize_phone(customer["phone"])
        if phone is None:
            raise InputError("customer.phone: not a phone number")
        customer["phone"] = phone
    text = body.get("text")
    if kind == "message" and (not isinstance(text, str) or not text.strip()):
        raise InputError("text: required for a message")
    if kind == "message" and not customer:
        raise InputError("customer: crm_id, phone or email is required for a message")
    deal = body.get("deal_id")
    return CrmEvent("generic", kind, event_id, customer, text.strip() if isinstance(text, str) else None,
                    str(deal) if deal is not None else None)


def suggestion_note(result: AnswerResult, language: str) -> str:
    ru = language != "en"
    head = "Perimeter: предлагаемый ответ клиенту" if ru else "Perimeter: suggested reply to the customer"
    lines = [head, "", result.text]
    if result.sources:
        lines += ["", "Источники:" if ru else "Sources:"]
        lines += [f"[{s.n}] {s.title}" + (f" — {s.url}" if s.url else "") for s in result.sources]
    return "\n".join(lines)


class CrmEventProcessor:
    def __init__(self, db: Database, pipeline: AnswerPipeline, crm: CrmReader | None, writer: CrmWriter | None, *,
                 write_notes: bool = True, usage: UsageLog | None = None) -> None:
        self._db, self._pipeline, self._crm, self._writer, self._write_notes = db, pipeline, crm, writer, write_notes
        self._usage = usage or UsageLog()

    async def handle(self, event_id: int, payload: Mapping[str, Any], *, received: float | None = None) -> None:
        """``received``: when the event arrived (``time.monotonic()``), None for now; a message's
        deadline counts from then, the CRM lookup included."""
        event = CrmEvent(**payload)
        if event.kind == "message":
            result = await self._message(event, self._pipeline.deadline_from(received))
        else:
            result = await self._deal_stage(event)
        await self._db.tx(lambda c: c.execute(
            update(inbound_events).where(inbound_events.c.id == event_id).values(result=result)
        ))

    async def _find(self, event: CrmEvent) -> CustomerRef | None:
        if self._crm is None:
            return None
        c = event.customer
        return await self._crm.find_customer(Lookup(crm_id=c.get("crm_id"), phone=c.get("phone"),
                                                    email=c.get("email")))

    async def _message(self, event: CrmEvent, deadline: float) -> dict[str, Any]:
        assert event.text is not None
        ref = await self._find(event)  # CrmUnavailable propagates: the worker retries the event
        context = await self._crm.context(ref) if (ref is not None and self._crm is not None) else None
        language = "en" if event.text.isascii() else "ru"
        result = await self._pipeline.answer(AnswerRequest(
            event.text, audience="customer",
            customer_context=context_for_prompt(context, language) if context else None, deadline=deadline,
        ))
        await self._db.tx(lambda c: self._usage.record(c, now=datetime.now(UTC), channel=f"crm:{event.source}",
                                                 audience="customer", result=result))
        out: dict[str, Any] = {
            "suggestion": None if result.escalate else result.text,
            "escalate": result.escalate, "reason": result.reason, "mode": result.mode,
            "sources": [{"n": s.n, "title": s.title, "url": s.url} for s in result.sources],
            "customer_found": ref is not None, "note_id": None,
        }
        if ref is not None and self._writer is not None and self._write_notes and not result.escalate:
            try:
                out["note_id"] = await self._writer.add_note(ref, suggestion_note(result, language))
            except CrmError as exc:  # refused (not retryable): keep the suggestion, say why
                out["note_error"] = exc.code
        return out

    async def _deal_stage(self, event: CrmEvent) -> dict[str, Any]:
        """Recorded; nothing to answer. The deal is not re-read: no customer asked anything."""
        return {"deal_id": event.deal_id, "recorded": True}

