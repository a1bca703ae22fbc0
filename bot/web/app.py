"""The service's HTTP app: the Telegram webhook and health, the place later routes join.

The webhook route is the hot path: it checks the secret, bounds and parses the body,
stores the update under its ``update_id`` and answers 200 — the work happens in the update
worker. A database that cannot store the update makes the route answer 503, so Telegram
delivers it again instead of it being acknowledged and lost.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from bot.health import Readiness
from bot.metrics import Metrics
from rag.errors import InputError

log = logging.getLogger(__name__)

SECRET_HEADER = "x-telegram-bot-api-secret-token"
WEBHOOK_PATH = "/telegram/webhook"


class WebhookIngress:
    """What the webhook route needs: the secret, the body limit and where updates are stored."""

    def __init__(self, secret: str, store: Callable[[Any], bool], on_stored: Callable[[], None], *,
                 max_body_bytes: int) -> None:
        if not secret:
            raise ValueError("a webhook needs a secret")
        self._secret = secret.encode()
        self._store, self._on_stored, self.max_body_bytes = store, on_stored, max_body_bytes

    def authentic(self, header: str | None) -> bool:
        if header is None:
            return False
        try:
            given = header.encode("ascii")
        except UnicodeEncodeError:  # Starlette decodes header bytes as latin-1
            return False
        return hmac.compare_digest(given, self._secret)

    async def accept(self, payload: Any) -> bool:
        stored = await run_in_threadpool(self._store, payload)
        if stored:
            self._on_stored()
        return stored


def error_response(status: int, message: str) -> JSONResponse:
    """The webhooks' error body: ``{"ok": false, "error": ...}``."""
    return JSONResponse({"ok": False, "error": message}, status_code=status)


async def read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None past ``limit`` bytes (read no further than that).

    Streamed and counted, so a huge or never-ending body is refused as soon as it passes the
    limit instead of being held in memory (or holding the request open) until it ends."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(body: bytes) -> Any:
    """The body as JSON, or ValueError for anything that is not strictly JSON.

    Python's json accepts NaN and ±Infinity, which are not JSON: stored again they become bare
    tokens that PostgreSQL's json type refuses, so they are refused here. Deep nesting makes the
    parser raise RecursionError (not a ValueError): also a body that is not acceptable JSON.
    """
    try:
        return json.loads(body, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 without each error's ``input`` and ``ctx``: echoing the input back leaks customer
    text into error bodies, and a NaN or a lone surrogate in it cannot even be rendered (a 500)."""
    assert isinstance(exc, RequestValidationError)
    errors = [{"type": e.get("type", ""), "loc": list(e.get("loc", ())), "msg": e.get("msg", "")}
              for e in exc.errors()]
    return JSONResponse({"detail": errors}, status_code=422)


async def _input_error(_request: Request, exc: Exception) -> JSONResponse:
    """A request that the service refuses (``InputError`` from below the routes) is the client's 400."""
    return JSONResponse({"detail": str(exc)[:500]}, status_code=400)


def create_app(*, webhook: WebhookIngress | None, on_shutdown: Callable[[], Awaitable[None]] | None = None,
               routers: Sequence[APIRouter] = (), readiness: Readiness | None = None,
               metrics: Metrics | None = None) -> FastAPI:
    """The app. The service is started before it (so start-up errors reach the CLI) and
    stopped in its shutdown, which uvicorn runs on SIGTERM/SIGINT before it exits."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if on_shutdown is not None:
                await on_shutdown()

    app = FastAPI(title="Perimeter", version="0.1.0", lifespan=lifespan,
                  description="Self-hosted support assistant: webhooks, the CRM widget, health, metrics.")
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(InputError, _input_error)

    for router in routers:
        app.include_router(router)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    if readiness is not None:
        @app.get("/readyz", tags=["health"], responses={503: {"description": "a check failed; the body says which"}})
        async def readyz() -> JSONResponse:
            """Ready to answer: database at the head revision, Qdrant, the model server, the CRM."""
            results = await readiness.run()
            ready = all(r.ok for r in results.values())
            body = {"status": "ready" if ready else "not ready",
                    "checks": {name: {"ok": r.ok, "detail": r.detail} for name, r in results.items()}}
            return JSONResponse(body, status_code=200 if ready else 503)

    if metrics is not None:
        @app.get("/metrics", tags=["health"], include_in_schema=False)
        async def prometheus() -> Response:
            payload = await run_in_threadpool(metrics.exposition)  # backlog gauges query the database
            return Response(payload, media_type=CONTENT_TYPE_LATEST)

    if webhook is not None:
        @app.post(WEBHOOK_PATH, tags=["telegram"], include_in_schema=False)
        async def telegram_webhook(request: Request) -> JSONResponse:
            header = request.headers.get(SECRET_HEADER)
            if header is None:
                return error_response(401, "missing secret token")
            if not webhook.authentic(header):
                # The header value is never logged: it may be a guess at the secret.
                peer = request.client.host if request.client else "?"
                log.warning("webhook request with a wrong secret from %s", peer)
                return error_response(403, "wrong secret token")
            body = await read_body(request, webhook.max_body_bytes)
            if body is None:
                return error_response(413, f"body larger than {webhook.max_body_bytes} bytes")
            try:
                payload = parse_json(body)
            except ValueError:  # UnicodeDecodeError is one
                return error_response(400, "body is not JSON")
            try:
                stored = await webhook.accept(payload)
            except InputError as exc:
                return error_response(400, str(exc))
            except SQLAlchemyError as exc:
                log.error("could not store an update, asking Telegram to retry: %s", type(exc).__name__)
                return error_response(503, "storage unavailable, retry later")
            return JSONResponse({"ok": True, "duplicate": not stored})

    return app
