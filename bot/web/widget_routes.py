"""HTTP edge of the CRM sidebar widget: the iframe entry points per vendor, the page, its JSON API.

Entry points authenticate the CRM's request (Bitrix24 placement POST, Kommo JWT, the demo's
signed link) and answer the page with a fresh session token in a meta tag; without valid
authentication the answer is a 401 page that shows nothing. The API takes that token as
``Authorization: Bearer`` only — no cookies, so no CSRF.
"""

import html
import logging
from collections.abc import Mapping
from pathlib import Path as FilePath
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, Field

from bot.web.auth import AuthError, SessionSigner, WidgetSession
from bot.widget import Authenticator, WidgetService

log = logging.getLogger(__name__)

STATIC = FilePath(__file__).parent / "static"

# What the API answers besides 200 and 422, for its OpenAPI schema (clients and fuzzers read it).
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {401: {"description": "missing, invalid or expired session"}}
BODY_RESPONSES: dict[int | str, dict[str, Any]] = {
    **AUTH_RESPONSES, 400: {"description": "the body is not JSON"},
    413: {"description": "body larger than PERIMETER_HTTP_MAX_BODY_BYTES"}}
# A ticket id as the database stores it (BIGINT): past 2**63 - 1 SQLite cannot even bind it.
TicketId = Annotated[int, Path(ge=1, le=2**63 - 1)]


class Question(BaseModel):
    question: str = Field(min_length=1, max_length=4000)


class ReplyText(BaseModel):
    text: str = Field(min_length=1, max_length=4000)
    request_id: str | None = Field(default=None, max_length=80, description="Makes a retried reply harmless")


class NoteText(BaseModel):
    text: str = Field(min_length=1, max_length=10000)


def _page(token: str, session: WidgetSession, language: str, frame_ancestors: str) -> HTMLResponse:
    body = f"""<!doctype html>
<html lang="{language}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="perimeter-session" content="{html.escape(token)}">
<meta name="perimeter-language" content="{language}">
<title>Perimeter</title>
<link rel="stylesheet" href="/widget/static/widget.css">
<link rel="icon" href="data:,">
</head>
<body data-customer="{html.escape(session.customer_id or '')}">
<main id="app" aria-live="polite"><p class="muted">…</p></main>
<script src="/widget/static/widget.js"></script>
</body>
</html>"""
    return HTMLResponse(body, headers=_security_headers(frame_ancestors))


def _security_headers(frame_ancestors: str) -> dict[str, str]:
    return {
        # Only our own script and styles; only the CRM may frame the page.
        "Content-Security-Policy": (f"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                    f"connect-src 'self'; frame-ancestors {frame_ancestors}"),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


def _denied(frame_ancestors: str) -> HTMLResponse:
    return HTMLResponse("<!doctype html><meta charset=utf-8><title>Perimeter</title>"
                        '<link rel="stylesheet" href="/widget/static/widget.css"><link rel="icon" href="data:,">'
                        '<main id="app"><section class="notice"><h1>Нет доступа</h1><p>Откройте виджет из карточки '
                        "клиента в CRM. / Access denied: open the widget from a customer's card in your CRM.</p>"
                        "</section></main>",
                        status_code=401, headers=_security_headers(frame_ancestors))


def widget_router(service: WidgetService, signer: SessionSigner, authenticators: Mapping[str, Authenticator], *,
                  frame_ancestors: str = "'self'", cost: Any = None, max_body_bytes: int | None = None) -> APIRouter:
    # Every body here (the API's JSON, the Bitrix24 entry point's form) is counted as it streams and
    # refused with a 413 past ``max_body_bytes`` (a declared Content-Length at once), before any parsing.
    router = APIRouter(prefix="/widget", tags=["widget"], max_body_size=max_body_bytes)

    async def enter(vendor: str, params: Mapping[str, str]) -> HTMLResponse:
        authenticate = authenticators.get(vendor)
        if authenticate is None:
            return _denied(frame_ancestors)
        try:
            session = await authenticate(params)
        except AuthError as exc:
            log.warning("widget %s entry refused: %s", vendor, exc)
            return _denied(frame_ancestors)
        return _page(signer.issue(session), session, service.language, frame_ancestors)

    @router.post("/bitrix24", include_in_schema=False)
    async def bitrix24(request: Request) -> HTMLResponse:
        # Bitrix24 posts application/x-www-form-urlencoded; parsed here as crm_routes does, since
        # Starlette's request.form() needs python-multipart, which is not a dependency.
        try:
            form = parse_qsl((await request.body()).decode("utf-8"), keep_blank_values=True, max_num_fields=200)
        except ValueError:
            return _denied(frame_ancestors)
        return await enter("bitrix24", dict(form))

    @router.get("/kommo", include_in_schema=False)
    async def kommo(request: Request) -> HTMLResponse:
        params = dict(request.query_params)
        if "token" not in params and request.headers.get("x-auth-token"):
            params["token"] = request.headers["x-auth-token"]
        return await enter("kommo", params)

    @router.get("/demo", include_in_schema=False)
    async def demo(request: Request) -> HTMLResponse:
        return await enter("demo", dict(request.query_params))

    @router.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> FileResponse:
        path = (STATIC / name).resolve()
        if path.parent != STATIC.resolve() or not path.is_file():
            raise HTTPException(404)
        return FileResponse(path, headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    async def session_of(authorization: Annotated[str | None, Header()] = None) -> WidgetSession:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(401, "missing session", headers={"WWW-Authenticate": "Bearer"})
        try:
            return signer.verify(token)
        except AuthError as exc:
            raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None

    Session = Annotated[WidgetSession, Depends(session_of)]

    @router.get("/api/summary", responses=AUTH_RESPONSES)
    async def summary(session: Session) -> dict[str, Any]:
        """The customer of this session, their conversation with the bot and its open ticket."""
        return await service.summary(session)

    @router.get("/api/suggestion", responses=AUTH_RESPONSES)
    async def suggestion(session: Session) -> dict[str, Any]:
        """A suggested reply to the customer's last message, with its sources."""
        return {"suggestion": await service.suggestion(session)}

    @router.post("/api/ask", responses=BODY_RESPONSES)
    async def ask(body: Question, session: Session) -> dict[str, Any]:
        """Ask the knowledge base as an operator (operator-only documents allowed)."""
        return await service.ask(body.question)

    @router.get("/api/queue", responses=AUTH_RESPONSES)
    async def queue(session: Session) -> dict[str, Any]:
        """Active tickets, longest waiting first."""
        return {"tickets": await service.queue()}

    @router.post("/api/tickets/{ticket_id}/claim", responses=AUTH_RESPONSES)
    async def claim(ticket_id: TicketId, session: Session) -> dict[str, Any]:
        return await service.claim(session, ticket_id)

    @router.post("/api/tickets/{ticket_id}/reply", responses=BODY_RESPONSES)
    async def reply(ticket_id: TicketId, body: ReplyText, session: Session) -> dict[str, Any]:
        return await service.reply(session, ticket_id, body.text, body.request_id)

    @router.post("/api/tickets/{ticket_id}/resolve", responses=AUTH_RESPONSES)
    async def resolve(ticket_id: TicketId, session: Session) -> dict[str, Any]:
        return await service.resolve(session, ticket_id)

    @router.get("/api/report", responses=AUTH_RESPONSES)
    async def report(session: Session, days: Annotated[float, Query(ge=1 / 1440, le=366)] = 7) -> dict[str, Any]:
        """The service's figures for the last ``days``: what `perimeter report` prints."""
        # At least a minute: a tinier positive float (5e-324) is a zero timedelta, an empty period.
        return await service.report(days, cost)

    @router.post("/api/note", responses=BODY_RESPONSES)
    async def note(body: NoteText, session: Session) -> dict[str, Any]:
        """Write a text (the suggested reply) into the customer's CRM card as a note."""
        return await service.write_note(session, body.text)

    return router
