"""The CRM port: find a customer, read their context, write back. One shape for every CRM.

Adapters (Bitrix24, amoCRM/Kommo, the company's own SQL database, the demo CRM) implement
``CrmReader`` and ``CrmWriter`` and return ``CustomerContext`` normalised the same way, with
every value tagged by sensitivity so the caller decides what may reach a prompt, a log or
the operator's screen. Contracts:

- ``find_customer`` returns None when nobody matches; it never guesses between several matches
  (``AmbiguousCustomer``), because a wrong match shows one customer another's data.
- Errors are ``CrmUnavailable`` (retryable: timeouts, 429, 5xx, connection errors) or
  ``CrmError`` (not retryable: bad credentials, a request the CRM refuses). Adapters do not
  retry on their own; ``crm_adapters.resilience`` adds retries within a time budget and a
  circuit breaker around any adapter.
- Adapters receive their clients (an ``httpx.AsyncClient``, an SQLAlchemy engine), so tests
  pass real local ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Literal, Protocol, runtime_checkable

from rag.errors import AppError, BackendUnavailable

# public: safe anywhere (a deal stage); personal: identifies a person (name, phone, e-mail);
# financial: money and account data (balance, next payment); secret: never leaves the CRM
# adapter (passport numbers, internal notes an operator must open in the CRM itself).
Sensitivity = Literal["public", "personal", "financial", "secret"]
SENSITIVITIES: tuple[Sensitivity, ...] = ("public", "personal", "financial", "secret")


class CrmError(AppError):
    """The CRM refused the request (bad credentials, bad request); retrying will not help."""

    code = "crm_error"


class CrmUnavailable(BackendUnavailable):
    """The CRM is slow, rate-limited (429), failing (5xx) or unreachable; retrying later may help.
    ``retry_after_s`` is the CRM's own hint, when it gave one."""

    code = "crm_unavailable"

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class CrmNotSent(CrmUnavailable):
    """The request never reached the CRM, so nothing happened there: safe to retry, even a write.

    Adapters raise it for failures *before* the request was sent — connection refused, name
    resolution, connect timeout, no connection from the pool, and a 429 (the CRM refused the
    request without acting on it). A plain ``CrmUnavailable`` means the CRM may have acted.
    """

    code = "crm_not_sent"


class AmbiguousCustomer(CrmError):
    """Several customers match a lookup: none is returned."""

    code = "crm_ambiguous_customer"


@dataclass(frozen=True)
class Value:
    """One piece of customer data with its label (in the CRM's language) and sensitivity."""

    key: str
    label: str
    value: str
    sensitivity: Sensitivity


@dataclass(frozen=True)
class FieldSpec:
    """How one of the deployment's custom CRM fields becomes a ``Value``: its label for people and
    its sensitivity, which decides where the value may go. Fields without a spec never leave the
    adapter. ``key`` defaults to the field's id or code."""

    label: str
    sensitivity: Sensitivity
    key: str | None = None


@dataclass(frozen=True)
class CustomerRef:
    """A customer in one CRM: ``kind`` is "contact" (Bitrix24, amoCRM) or what the SQL mapping names."""

    crm: str  # bitrix24 | amocrm | sql | demo
    id: str
    kind: str = "contact"


@dataclass(frozen=True)
class Deal:
    """A deal (Bitrix24), lead (amoCRM) or order / product (SQL)."""

    id: str
    title: str
    stage: str
    amount: Decimal | None = None
    currency: str | None = None
    closed: bool = False
    values: tuple[Value, ...] = ()


@dataclass(frozen=True)
class CrmTask:
    id: str
    title: str
    deadline: datetime | None = None
    responsible: str | None = None
    done: bool = False


@dataclass(frozen=True)
class CustomerContext:
    """What the CRM knows about one customer, normalised.

    ``values`` holds the deployment's mapped custom fields (a balance, the next payment date),
    each with its sensitivity; name, phones and e-mails are ``personal``.
    """

    customer: CustomerRef
    name: Value
    phones: tuple[Value, ...] = ()
    emails: tuple[Value, ...] = ()
    deals: tuple[Deal, ...] = ()
    tasks: tuple[CrmTask, ...] = ()
    values: tuple[Value, ...] = ()
    fetched_at: datetime | None = None

    def all_values(self) -> list[Value]:
        """Every tagged value, deals' included (for masking and for the redaction check)."""
        out = [self.name, *self.phones, *self.emails, *self.values]
        for deal in self.deals:
            out.extend(deal.values)
        return out


@dataclass(frozen=True)
class NewTask:
    title: str
    description: str = ""
    deadline: datetime | date | None = None
    responsible_id: str | None = None


@dataclass(frozen=True)
class Lookup:
    """How to find a customer: exactly one of these is used, in this order of trust."""

    crm_id: str | None = None
    telegram_id: str | None = None
    phone: str | None = None  # E.164 digits, e.g. "79161234567"
    email: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class CrmReader(Protocol):
    name: str

    async def find_customer(self, lookup: Lookup) -> CustomerRef | None: ...

    async def context(self, ref: CustomerRef) -> CustomerContext: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class CrmWriter(Protocol):
    name: str

    async def add_note(self, ref: CustomerRef, text: str, *, deal_id: str | None = None) -> str:
        """A note / timeline comment on the contact (or the deal); returns its id in the CRM."""
        ...

    async def add_task(self, ref: CustomerRef, task: NewTask) -> str:
        """A task for an operator about this customer; returns its id in the CRM."""
        ...


def is_ascii_number(value: str) -> bool:
    """ASCII digits only: ``str.isdigit`` is also true for '²' or '٣', which ``int`` refuses or
    reads as another number, and which no CRM uses in an id or a form index."""
    return value.isascii() and value.isdigit()


def normalize_phone(raw: str) -> str | None:
    """Digits in international form, Russian numbers as 7XXXXXXXXXX; None if it is no phone.

    «8 (916) 123-45-67», «+7 916 123 45 67» and «9161234567» are the same number.
    """
    digits = "".join(ch for ch in raw if ch.isdigit())
    if len(digits) == 10 and digits[0] == "9":
        digits = "7" + digits
    elif len(digits) == 11 and digits[0] == "8":
        digits = "7" + digits[1:]
    if not 10 <= len(digits) <= 15:
        return None
    return digits


def sensitivity_at_most(values: Sequence[Value], allowed: set[Sensitivity]) -> list[Value]:
    return [v for v in values if v.sensitivity in allowed]
