"""Who a channel user is in the CRM — and the rule that their CRM data is used only once they
proved it.

A Telegram user is *verified* when they share their **own** contact through Telegram's contact
button (Telegram fills in ``contact.user_id`` with the sender's id; a contact typed by hand or
forwarded from someone else does not carry it) and the phone matches exactly one CRM customer.
A phone number typed into the chat proves nothing and is never looked up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import delete, select
from sqlalchemy.engine import Connection

from bot.storage.database import Database
from bot.storage.events import insert_ignoring_duplicates
from bot.storage.tables import customer_links
from crm_adapters.base import (
    AmbiguousCustomer,
    CrmError,
    CrmReader,
    CrmUnavailable,
    CustomerContext,
    CustomerRef,
    Lookup,
    Sensitivity,
    Value,
    normalize_phone,
)
from rag.redaction import mask_pii

log = logging.getLogger(__name__)

# What may reach the model's prompt: never "secret".
PROMPT_SENSITIVITIES: frozenset[Sensitivity] = frozenset({"public", "personal", "financial"})

VerifyResult = Literal["verified", "not_own_contact", "not_found", "ambiguous", "unavailable", "no_crm"]


@dataclass(frozen=True)
class LinkRecord:
    ref: CustomerRef
    phone_last4: str
    verified_at: datetime


@dataclass(frozen=True)
class CustomerLookup:
    """The context of a verified customer, or why there is none."""

    context: CustomerContext | None
    linked: bool
    problem: str | None = None  # "unavailable" when the CRM could not be asked


class CustomerDirectory:
    def __init__(self, db: Database, crm: CrmReader | None, *, clock: Callable[[], datetime]) -> None:
        self._db, self._crm, self._clock = db, crm, clock

    @property
    def enabled(self) -> bool:
        return self._crm is not None

    async def verify_contact(self, user_id: int, sender_external_id: str, phone: str,
                             contact_user_id: str | None) -> VerifyResult:
        """Link the user to the CRM customer with this phone, if the contact is their own."""
        if self._crm is None:
            return "no_crm"
        if contact_user_id is None or contact_user_id != sender_external_id:
            return "not_own_contact"
        digits = normalize_phone(phone)
        if digits is None:
            return "not_found"
        try:
            ref = await self._crm.find_customer(Lookup(phone=digits))
        except AmbiguousCustomer:
            return "ambiguous"
        except (CrmUnavailable, CrmError) as exc:
            log.warning("CRM lookup for verification failed: %s", exc.code)
            return "unavailable"
        if ref is None:
            return "not_found"
        now = self._clock()

        def link(conn: Connection) -> None:
            conn.execute(delete(customer_links).where(customer_links.c.user_id == user_id))
            insert_ignoring_duplicates(conn, customer_links, dict(
                user_id=user_id, crm=ref.crm, crm_customer_id=ref.id, crm_kind=ref.kind,
                phone_last4=digits[-4:], verified_at=now), ["user_id"])

        await self._db.tx(link)
        return "verified"

    async def link_of(self, user_id: int) -> LinkRecord | None:
        return await self._db.tx(lambda c: linked(c, user_id))

    async def forget(self, user_id: int) -> None:
        await self._db.tx(lambda c: c.execute(delete(customer_links).where(customer_links.c.user_id == user_id)))

    async def context_for(self, user_id: int) -> CustomerLookup:
        """The verified customer's context; a CRM that is slow or down yields no context, not an error."""
        if self._crm is None:
            return CustomerLookup(None, False)
        link = await self.link_of(user_id)
        if link is None:
            return CustomerLookup(None, False)
        try:
            return CustomerLookup(await self._crm.context(link.ref), True)
        except (CrmUnavailable, CrmError) as exc:
            log.warning("CRM context unavailable, answering without it: %s", exc.code)
            return CustomerLookup(None, True, "unavailable")

    async def context_of(self, ref: CustomerRef) -> CustomerContext | None:
        """For operators' screens: the context of a customer they work on."""
        if self._crm is None:
            return None
        try:
            return await self._crm.context(ref)
        except (CrmUnavailable, CrmError):
            return None


@dataclass(frozen=True)
class WidgetPolicy:
    """What the widget shows: "secret" values never; financial ones masked unless allowed."""

    show_financial: bool = True
    unmask_contacts: bool = False


def _value(v: Value, policy: WidgetPolicy) -> dict[str, str] | None:
    if v.sensitivity == "secret":
        return None
    if v.sensitivity == "financial" and not policy.show_financial:
        return {"label": v.label, "value": "•••", "sensitivity": v.sensitivity}
    text = v.value if policy.unmask_contacts or v.sensitivity != "personal" else mask_pii(v.value)
    return {"label": v.label, "value": text, "sensitivity": v.sensitivity}


def customer_json(ctx: CustomerContext, policy: WidgetPolicy) -> dict[str, Any]:
    contacts = [_value(v, policy) for v in (*ctx.phones, *ctx.emails)]
    values = [_value(v, policy) for v in ctx.values]
    return {
        "id": ctx.customer.id,
        "name": ctx.name.value,
        "contacts": [c for c in contacts if c],
        "values": [v for v in values if v],
        "deals": [
            {"id": d.id, "title": d.title, "stage": d.stage, "closed": d.closed,
             "amount": None if d.amount is None else (str(d.amount) if policy.show_financial else "•••"),
             "currency": d.currency,
             "values": [x for x in (_value(v, policy) for v in d.values) if x]}
            for d in ctx.deals
        ],
        "tasks": [{"title": t.title, "deadline": t.deadline.isoformat() if t.deadline else None, "done": t.done}
                  for t in ctx.tasks],
    }


def linked(conn: Connection, user_id: int) -> LinkRecord | None:
    row = conn.execute(select(customer_links).where(customer_links.c.user_id == user_id)).first()
    if row is None:
        return None
    return LinkRecord(CustomerRef(row.crm, row.crm_customer_id, row.crm_kind), row.phone_last4, row.verified_at)


def personal_values(ctx: CustomerContext) -> tuple[str, ...]:
    """What redaction must hide whatever its spelling: the customer's name and contacts."""
    return tuple(v.value for v in (ctx.name, *ctx.phones, *ctx.emails) if v.value)


def context_for_prompt(ctx: CustomerContext, language: str) -> str:
    """The customer's data as the model reads it: labelled lines, nothing marked secret."""
    ru = language != "en"
    lines = [f"{'Клиент' if ru else 'Customer'}: {ctx.name.value}"]
    for v in ctx.values:
        if v.sensitivity in PROMPT_SENSITIVITIES:
            lines.append(f"{v.label}: {v.value}")
    for deal in ctx.deals:
        if deal.closed:
            continue
        amount = f", {deal.amount} {deal.currency or ''}".rstrip() if deal.amount is not None else ""
        lines.append(f"{'Продукт' if ru else 'Product'}: {deal.title} ({deal.stage}{amount})")
        lines.extend(f"  {v.label}: {v.value}" for v in deal.values if v.sensitivity in PROMPT_SENSITIVITIES)
    return "\n".join(lines)
