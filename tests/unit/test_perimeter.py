"""Which URLs are inside the company's network, judged from the configuration alone."""

from __future__ import annotations

import ipaddress

import pytest

from rag.errors import ConfigError
from rag.perimeter import (
    DEFAULT_INTERNAL_SUFFIXES,
    PerimeterGuard,
    inside_perimeter,
    parse_ipv4_number,
    url_host,
)

INSIDE = [
    # loopback, however spelled
    "http://127.0.0.1:11434",
    "http://127.8.9.10/",
    "http://localhost:11434",
    "http://LOCALHOST./api",
    "http://[::1]:8000",
    "http://0177.0.0.1/",  # octal
    "http://2130706433/",  # one decimal number
    "http://0x7f000001/",  # one hex number
    "http://0x7f.0.0.1/",
    "http://127.1/",  # short form: the last part fills the remaining bytes
    "http://127.0.0.0x1/",  # a hex last part
    "http://[::ffff:127.0.0.1]/",
    "http://0.0.0.0:11434",  # the unspecified address reaches the local host
    # private and link-local ranges
    "http://10.0.0.5:8000/v1",
    "http://10.255.255.255/",
    "http://012.0.0.1/",  # octal 012 = 10
    "http://167772161/",  # 10.0.0.1 as one number
    "http://172.16.0.1/",
    "http://172.31.255.255/",
    "http://192.168.1.10:6333",
    "http://169.254.169.254/",
    "http://[::ffff:10.0.0.1]:11434",  # IPv4-mapped IPv6
    "http://[::ffff:a00:1]:11434",  # the same, in hex
    "http://[fd12:3456::1]:8000",
    "http://[fe80::1%25eth0]:8080/",
    # names that only resolve inside a network
    "http://ollama:11434",
    "http://qdrant:6333",
    "http://vllm-gpu_1:8000",
    "http://ollama.:11434",
    "http://gpu01.bank.internal:8000",
    "http://printer.local/",
    "http://llm.lan",
    "https://llm.corp:443",
    "http://nas.home.arpa/",
    "http://ollama.ai.svc.cluster.local:11434",
    "HTTP://GPU01.BANK.INTERNAL:8000",
    "grpc://qdrant:6334",
]

OUTSIDE = [
    "https://api.openai.com",
    "https://api.openai.com/v1",
    "http://8.8.8.8/",
    "http://134744072/",  # 8.8.8.8 as one number
    "http://0x08080808/",
    "http://[::ffff:8.8.8.8]/",
    "http://[2001:db8::1]/",
    "http://[::10.0.0.1]/",  # IPv4-compatible IPv6 is not IPv4-mapped: a public IPv6 address
    "http://172.32.0.1/",  # just past 172.16/12
    "http://172.15.255.255/",
    "http://192.169.0.1/",
    "http://100.64.0.1/",  # carrier-grade NAT: list it when it is yours
    "http://11.0.0.1/",
    # public names that embed or mimic an internal address
    "http://10.0.0.5.nip.io/",
    "http://127.0.0.1.sslip.io:11434/",
    "http://localhost.evil.com/",
    "http://internal.evil.com/",
    "http://evil.com/.internal",
    "http://gpu.bank.ru:8000",
    # user-info tricks: the host is what follows the last @
    "http://127.0.0.1@evil.com/",
    "http://localhost:11434@evil.com/",
    "http://user:pass@api.openai.com/",
    "http://evil.com\\@127.0.0.1/",  # parsers disagree about backslashes: refused
    # malformed or ambiguous
    "http://1.2.3.4.5/",
    "http://999.0.0.1/",
    "http://08.0.0.1/",  # 08 is no octal number
    "http://%31%32%37.0.0.1/",
    "http://127.0.0.1:99999/",
    "http://127.0.0.1:port/",
    "http://[::1/",
    "http://exa mple.internal/",
    "http://10.0.0.5。nip.io/",  # an ideographic full stop is a dot to IDNA
    "127.0.0.1:11434",  # no scheme
    "localhost:11434",
    "ollama",
    "file:///etc/passwd",
    "http:///path",
    "",
    "not a url",
]


@pytest.mark.parametrize("url", INSIDE)
def test_inside(url: str) -> None:
    assert inside_perimeter(url)


@pytest.mark.parametrize("url", OUTSIDE)
def test_outside(url: str) -> None:
    assert not inside_perimeter(url)


def test_evil_at_loopback_is_loopback() -> None:
    # the other way round the trick is harmless: the connection goes to 127.0.0.1
    assert url_host("http://evil.com@127.0.0.1/") == "127.0.0.1"
    assert inside_perimeter("http://evil.com@127.0.0.1/")
    assert url_host("http://127.0.0.1@evil.com/") == "evil.com"


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0X7F000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0177.0000.0.01", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("10.65535", "10.0.255.255"),
        ("0x0a.0x00.0x00.0x01", "10.0.0.1"),
        ("192.168.0x1.010", "192.168.1.8"),
        ("134744072", "8.8.8.8"),
        ("0", "0.0.0.0"),
        ("4294967295", "255.255.255.255"),
        ("127.0.0.1.", "127.0.0.1"),
    ],
)
def test_ipv4_spellings_denote_their_address(host: str, address: str) -> None:
    assert parse_ipv4_number(host) == ipaddress.IPv4Address(address)


@pytest.mark.parametrize("host", ["4294967296", "1.2.3.4.5", "256.0.0.1", "1.16777216", "08.0.0.1", "1..1", "a.1"])
def test_bad_ipv4_spellings_are_refused(host: str) -> None:
    with pytest.raises(ValueError):
        parse_ipv4_number(host)


@pytest.mark.parametrize("host", ["ollama", "10.0.0.5.nip.io", "gpu01.bank.internal", "1e100.net", "0x1g"])
def test_names_are_not_addresses(host: str) -> None:
    assert parse_ipv4_number(host) is None


def test_no_dns_lookups(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("DNS must not be consulted")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "gethostbyname", refuse)
    assert not inside_perimeter("https://api.openai.com")
    assert inside_perimeter("http://ollama:11434")


def test_allowed_hosts_exact_names() -> None:
    allowed = ["gpu.bank.ru", "LLM.Partner.RU."]
    assert inside_perimeter("http://gpu.bank.ru:8000", allowed_hosts=allowed)
    assert inside_perimeter("https://llm.partner.ru/v1", allowed_hosts=allowed)
    assert not inside_perimeter("http://other.bank.ru:8000", allowed_hosts=allowed)
    assert not inside_perimeter("http://gpu.bank.ru.evil.com/", allowed_hosts=allowed)
    assert not inside_perimeter("http://xgpu.bank.ru/", allowed_hosts=allowed)


def test_allowed_hosts_suffix_entries() -> None:
    for allowed in ([".bank.ru"], ["*.bank.ru"]):
        assert inside_perimeter("http://gpu01.dc2.bank.ru:8000", allowed_hosts=allowed)
        assert inside_perimeter("http://bank.ru/", allowed_hosts=allowed)
        assert not inside_perimeter("http://evilbank.ru/", allowed_hosts=allowed)
        assert not inside_perimeter("http://bank.ru.evil.com/", allowed_hosts=allowed)


def test_allowed_hosts_addresses_and_networks() -> None:
    allowed = ["100.64.0.0/10", "203.0.113.7", "[2001:db8::1]"]
    assert inside_perimeter("http://100.100.1.2:8000", allowed_hosts=allowed)
    assert inside_perimeter("http://203.0.113.7/", allowed_hosts=allowed)
    assert inside_perimeter("http://3405803783/", allowed_hosts=allowed)  # 203.0.113.7 as a number
    assert inside_perimeter("http://[2001:db8::1]:8000/", allowed_hosts=allowed)
    assert not inside_perimeter("http://203.0.113.8/", allowed_hosts=allowed)
    # a name entry never vouches for an address, nor an address entry for a name
    assert not inside_perimeter("http://8.8.8.8/", allowed_hosts=["dns.google"])
    assert not inside_perimeter("http://dns.google/", allowed_hosts=["8.8.8.8"])


def test_internal_suffixes_can_be_replaced() -> None:
    assert ".internal" in DEFAULT_INTERNAL_SUFFIXES
    assert not inside_perimeter("http://gpu01.bank.internal/", internal_suffixes=[".corp"])
    assert inside_perimeter("http://gpu01.corp/", internal_suffixes=["corp"])  # the dot is optional
    assert inside_perimeter("http://ollama:11434", internal_suffixes=())  # single labels stay inside


# --- the guard --------------------------------------------------------------------------------

ENDPOINTS = {
    "chat model": "https://sk-secret:key@api.openai.com/v1",
    "embedding server": "http://10.0.0.7:11434",
}


def test_guard_lists_endpoints_outside() -> None:
    guard = PerimeterGuard(ENDPOINTS, redaction=False)
    assert guard.check() == ["chat model"]
    assert guard.needs_redaction(ENDPOINTS["chat model"])
    assert not guard.needs_redaction(ENDPOINTS["embedding server"])


def test_guard_require_names_the_endpoint_its_host_and_the_ways_out() -> None:
    guard = PerimeterGuard(ENDPOINTS, redaction=False)

    with pytest.raises(ConfigError) as caught:
        guard.require()
    message = caught.value.message
    assert "chat model" in message
    assert "api.openai.com" in message
    assert "PERIMETER_PRIVACY_ALLOWED_HOSTS" in message
    assert "PERIMETER_PRIVACY_REDACTION=true" in message
    assert "embedding server" not in message
    assert "sk-secret" not in message and "key@" not in message  # credentials in a URL are never repeated


def test_guard_require_names_every_endpoint_outside() -> None:
    guard = PerimeterGuard({"chat model": "https://llm.example.com", "embedding server": "::bad::"}, redaction=False)
    with pytest.raises(ConfigError) as caught:
        guard.require()
    message = caught.value.message
    assert "chat model at host llm.example.com" in message
    assert "embedding server URL cannot be parsed" in message


def test_guard_require_passes_with_redaction_or_when_everything_is_inside() -> None:
    PerimeterGuard(ENDPOINTS, redaction=True).require()
    PerimeterGuard(ENDPOINTS, redaction=False, allowed_hosts=["api.openai.com"]).require()
    PerimeterGuard(
        {"chat model": "http://ollama:11434", "embedding server": "http://127.0.0.1:11434"}, redaction=False
    ).require()
    PerimeterGuard({}, redaction=False).require()


def test_guard_uses_its_allowed_hosts_and_suffixes() -> None:
    guard = PerimeterGuard(
        {"chat model": "http://gpu01.dc.bank.ru:8000", "embedding server": "http://emb.svc.example:80"},
        redaction=False,
        allowed_hosts=[".bank.ru"],
        internal_suffixes=[".svc.example"],
    )
    assert guard.check() == []
    assert not guard.needs_redaction("http://gpu01.dc.bank.ru:8000")
    assert guard.needs_redaction("http://gpu01.dc.bank.com:8000")
