"""Where customer data may go: the network perimeter, and redaction for what crosses it.

Perimeter's promise is that a customer's data stays inside the company's network (152-FZ).
Answers that use CRM context send that context to the chat model and, for semantic search,
to an embedding server. This module decides from the *configuration* whether each of those
endpoints is inside the network (``inside_perimeter``), refuses to start when one is outside
and nothing protects the data (``PerimeterGuard.require``), and provides the protection:
``RedactingChat``, which sends placeholders instead of personal data and restores the answer.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import replace
from typing import Final
from urllib.parse import urlsplit

from rag.errors import ConfigError
from rag.llm.base import ChatMessage, ChatModel, ChatOptions, ChatResult, StreamEvent
from rag.redaction import Redactor

DEFAULT_INTERNAL_SUFFIXES: Final[tuple[str, ...]] = (
    ".internal",
    ".local",
    ".lan",
    ".corp",
    ".home.arpa",
    ".svc.cluster.local",
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_INSIDE_NETWORKS: Final[tuple[IPNetwork, ...]] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8",  # loopback
        "10.0.0.0/8",  # private (RFC 1918)
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",  # link-local
        "0.0.0.0/32",  # "this host": connecting to it reaches the local machine
        "::1/128",
        "::/128",
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
    )
)

_LABEL: Final = re.compile(r"^[a-z0-9_](?:[a-z0-9_\-]*[a-z0-9_])?$")
_FORBIDDEN_IN_NETLOC: Final = re.compile(r"[\\\s\x00-\x1f\x7f]")


def parse_ipv4_number(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address an all-numeric host denotes, the way URL parsers and ``inet_aton`` read it.

    One to four dot-separated parts, each decimal, octal (leading 0) or hex (0x); the last part
    fills the remaining bytes: ``2130706433``, ``0x7f000001``, ``0177.0.0.1`` and ``127.1`` are
    all 127.0.0.1. Raises ``ValueError`` for a host that ends in a number but is no valid address
    (``1.2.3.4.5``, ``999.1.1.1``): clients refuse or misread those, so they are not guessed at.
    Returns None for a host that does not end in a number (a domain name).
    """
    parts = host.split(".")
    if parts and parts[-1] == "" and len(parts) > 1:
        parts.pop()  # one trailing dot is allowed: "127.0.0.1."
    if not parts or not _is_number(parts[-1]):
        return None
    if len(parts) > 4:
        raise ValueError(f"{host!r} has more than four numeric parts")
    numbers = [_number(part, host) for part in parts]
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):
        raise ValueError(f"{host!r} is out of range for an IPv4 address")
    value = last
    for index, n in enumerate(head):
        value += n << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _is_number(part: str) -> bool:
    if part.isascii() and part.isdigit():
        return True
    lowered = part.lower()
    return lowered.startswith("0x") and all(c in "0123456789abcdef" for c in lowered[2:])


def _number(part: str, host: str) -> int:
    if not part:
        raise ValueError(f"{host!r} has an empty numeric part")
    lowered = part.lower()
    try:
        if lowered.startswith("0x"):
            return int(lowered[2:] or "0", 16)
        if len(part) > 1 and part.startswith("0"):
            return int(part, 8)
        return int(part, 10)
    except ValueError:
        raise ValueError(f"{host!r} has a malformed numeric part {part!r}") from None


def url_host(url: str) -> str | None:
    """The host a client would connect to, lower-cased and IDNA-encoded; None if unparseable.

    Conservative on purpose: user-info is dropped the standard way (``http://127.0.0.1@evil.com``
    connects to evil.com); a backslash, whitespace or control character in the authority (which
    parsers disagree about), a percent-encoded host, a bad port or a name that does not encode
    to IDNA make the URL unparseable, and an unparseable URL is outside.
    """
    try:
        parts = urlsplit(url.strip())
        netloc = parts.netloc
        if not parts.scheme or not netloc or _FORBIDDEN_IN_NETLOC.search(netloc):
            return None
        _ = parts.port  # raises ValueError for a malformed or out-of-range port
        host = parts.hostname
    except ValueError:
        return None
    if not host:
        return None
    if ":" in host:  # a bracketed IPv6 literal, validated by urlsplit
        return host
    if "%" in host:
        return None
    if not host.isascii():
        try:
            # Also maps the dots other scripts use («。», «．») and full-width digits, as clients do.
            host = host.encode("idna").decode("ascii").lower()
        except UnicodeError:
            return None
    return host


def _classify_address(host: str) -> IPAddress | None:
    """The IP address a host denotes, or None for a name. Raises ValueError for a bad address."""
    if ":" in host:
        address = ipaddress.ip_address(host)  # scope ids ("fe80::1%eth0") are accepted
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return address.ipv4_mapped
        return address
    return parse_ipv4_number(host)


def _normalise_entry(entry: str) -> str:
    return entry.strip().lower().rstrip(".")


def _name_matches(host: str, entry: str) -> bool:
    """``entry`` is a host name (exact) or a suffix (``.bank.ru`` / ``*.bank.ru``: the domain and
    every name under it)."""
    if entry.startswith("*."):
        entry = entry[1:]
    if entry.startswith("."):
        return host == entry[1:] or host.endswith(entry)
    return host == entry


def _address_allowed(address: IPAddress, allowed_hosts: Collection[str]) -> bool:
    for raw in allowed_hosts:
        entry = _normalise_entry(raw).strip("[]")
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue  # a name or suffix entry: says nothing about an address
    return False


def inside_perimeter(
    url: str,
    *,
    allowed_hosts: Collection[str] = (),
    internal_suffixes: Collection[str] = DEFAULT_INTERNAL_SUFFIXES,
) -> bool:
    """Whether what is sent to ``url`` stays inside the company's network, judged by the URL alone.

    Inside: loopback (127.0.0.0/8, ::1, ``localhost``), private ranges (10/8, 172.16/12,
    192.168/16, fc00::/7), link-local (169.254/16, fe80::/10), the unspecified address (which
    reaches the local host), single-label names (``ollama``, ``qdrant``: service names only
    resolve inside a network; ICANN forbids dotless public names), names under
    ``internal_suffixes``, and what the deployment lists in ``allowed_hosts``: exact names,
    suffixes (``.bank.ru``), IP addresses or networks (``100.64.0.0/10``). Everything else is
    outside, including public names that merely embed a private address (``10.0.0.5.nip.io``)
    and anything unparseable.

    DNS is never consulted: a public name that resolves to a private address today may not
    tomorrow, so the decision rests on what the configuration says. Addresses are judged by
    what they denote, however spelled: ``[::ffff:10.0.0.1]`` is 10.0.0.1, ``2130706433``,
    ``0x7f000001`` and ``0177.0.0.1`` are 127.0.0.1 (and ``134744072``, 8.8.8.8, is outside).
    """
    host = url_host(url)
    if host is None:
        return False
    if host.endswith(".") and ":" not in host:
        host = host[:-1]
    try:
        address = _classify_address(host)
    except ValueError:
        return False
    if address is not None:
        if any(address in network for network in _INSIDE_NETWORKS if network.version == address.version):
            return True
        return _address_allowed(address, allowed_hosts)
    if not host or not all(_LABEL.match(label) for label in host.split(".")):
        return False
    if host == "localhost" or "." not in host:
        return True
    entries = [_normalise_entry(s) for s in internal_suffixes]
    if any(_name_matches(host, e if e.startswith((".", "*.")) else "." + e) for e in entries if e):
        return True
    return any(_name_matches(host, _normalise_entry(e)) for e in allowed_hosts if _normalise_entry(e))


class PerimeterGuard:
    """Start-up check that customer context only goes where it may.

    ``endpoints`` maps a readable name («chat model», «embedding server») to the URL of every
    place customer context may be sent. An endpoint outside the perimeter (see
    ``inside_perimeter``) is acceptable only with redaction on, because then only placeholders
    cross the perimeter. ``check()`` lists the names of endpoints outside; ``require()`` raises
    ``ConfigError`` when any is outside and redaction is off, naming each endpoint, its host
    and the two ways out. ``needs_redaction(url)`` tells the wiring whether the model behind
    ``url`` must be wrapped in ``RedactingChat``: a model inside the perimeter gets the data
    as is, since it never leaves the network.
    """

    def __init__(
        self,
        endpoints: Mapping[str, str],
        *,
        redaction: bool,
        allowed_hosts: Collection[str] = (),
        internal_suffixes: Collection[str] = DEFAULT_INTERNAL_SUFFIXES,
    ) -> None:
        self.endpoints = dict(endpoints)
        self.redaction = redaction
        self.allowed_hosts = tuple(allowed_hosts)
        self.internal_suffixes = tuple(internal_suffixes)

    def _inside(self, url: str) -> bool:
        return inside_perimeter(url, allowed_hosts=self.allowed_hosts, internal_suffixes=self.internal_suffixes)

    def check(self) -> list[str]:
        return [name for name, url in self.endpoints.items() if not self._inside(url)]

    def needs_redaction(self, url: str) -> bool:
        return not self._inside(url)

    def require(self) -> None:
        outside = self.check()
        if not outside or self.redaction:
            return
        described = "; ".join(self._describe(name) for name in outside)
        raise ConfigError(
            f"customer data would leave the network: {described}. Either list the host in "
            "PERIMETER_PRIVACY_ALLOWED_HOSTS if it is inside your network (a name, or a suffix such as "
            ".bank.ru), or set PERIMETER_PRIVACY_REDACTION=true so that only placeholders, never "
            "personal data, are sent there"
        )

    def _describe(self, name: str) -> str:
        # The host only: a URL may carry credentials (https://user:key@host), never repeated here.
        host = url_host(self.endpoints[name])
        if host is None:
            return f"the {name} URL cannot be parsed (an unparseable URL counts as outside)"
        return f"the {name} at host {host} is outside the perimeter"


class RedactingChat:
    """A ``ChatModel`` that sends placeholders instead of personal data and restores the answer.

    For a model outside the perimeter (a provider's API, a GPU host in another network). Per
    call, one ``Redactor`` — fed with ``known_values()``, e.g. the current customer's name
    from the CRM — redacts every message's content, so one value has one placeholder across
    the system prompt, the history and the question. The model sees only ``[PHONE_1]``,
    ``[NAME_1]`` and the like; the caller's prompt must ask it to copy such placeholders
    verbatim (``PLACEHOLDER_INSTRUCTIONS``), and the answer gets the originals back before it
    reaches the caller: the complete text, and each streamed delta, buffered so that a
    placeholder split across deltas is never printed half-way nor a value half-restored.

    ``name``, ``backend``, ``health()`` and ``aclose()`` are the inner model's; errors pass
    through unchanged (the stream's inner generator is closed however it ends).
    """

    def __init__(self, inner: ChatModel, *, known_values: Callable[[], Collection[str]] | None = None) -> None:
        self._inner = inner
        self._known_values = known_values
        self.name = inner.name
        self.backend = inner.backend

    def _redact(self, messages: Sequence[ChatMessage]) -> tuple[Redactor, list[ChatMessage]]:
        redactor = Redactor(self._known_values() if self._known_values is not None else ())
        redacted = [replace(m, content=redactor.redact(m.content)) for m in messages]
        if redactor.mapping and redacted and redacted[0].role == "system":
            # The model must copy placeholders verbatim for them to be restored.
            system = redacted[0].content
            lang = "ru" if any("а" <= ch <= "я" for ch in system.lower()) else "en"
            redacted[0] = replace(redacted[0], content=f"{system}\n\n{PLACEHOLDER_INSTRUCTIONS[lang]}")
        return redactor, redacted

    async def complete(self, messages: Sequence[ChatMessage], options: ChatOptions) -> ChatResult:
        redactor, redacted = self._redact(messages)
        result = await self._inner.complete(redacted, options)
        return replace(result, text=redactor.restore(result.text))

    async def stream(self, messages: Sequence[ChatMessage], options: ChatOptions) -> AsyncGenerator[StreamEvent, None]:
        redactor, redacted = self._redact(messages)
        restorer = redactor.stream_restorer()
        events: AsyncIterator[StreamEvent] | None = None
        try:
            events = self._inner.stream(redacted, options)
            async for event in events:
                text = restorer.feed(event.delta) if event.delta else ""
                if not event.done:
                    if text:  # an event whose delta is only the start of a placeholder waits
                        yield replace(event, delta=text)
                    continue
                # The end: whatever was held back (a placeholder the model never closed) goes
                # out as it is, then the result with the whole answer restored.
                text += restorer.flush()
                if text:
                    yield StreamEvent(delta=text)
                result = event.result
                if result is not None:
                    result = replace(result, text=redactor.restore(result.text))
                yield replace(event, delta="", result=result)
        finally:
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()

    async def health(self) -> bool:
        return await self._inner.health()

    async def aclose(self) -> None:
        await self._inner.aclose()


PLACEHOLDER_INSTRUCTIONS: Final[dict[str, str]] = {
    "ru": (
        "Персональные данные в тексте заменены метками вида [NAME_1], [PHONE_1], [CARD_1]. "
        "Если нужно упомянуть такие данные, пиши метку точно как есть, в квадратных скобках; "
        "не придумывай значения и не меняй метки."
    ),
    "en": (
        "Personal data in the text is replaced by placeholders such as [NAME_1], [PHONE_1], [CARD_1]. "
        "When you need to mention such data, write the placeholder exactly as it is, in square brackets; "
        "never invent values or change the placeholders."
    ),
}
