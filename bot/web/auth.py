"""Authentication for what the CRM puts in front of us: signed widget sessions, Kommo's JWT,
HMAC-signed generic webhooks, and single-use nonces.

The widget keeps no cookie: after the CRM's iframe request is authenticated, the page gets a
short-lived signed session token that its script sends as ``Authorization: Bearer``. A
forged cross-site request carries no such header, so there is nothing for CSRF to ride on,
and third-party-cookie blocking in the CRM's iframe does not break the widget.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rag.errors import AppError


class AuthError(AppError):
    """The request could not be authenticated; the edge answers 401 and shows nothing."""

    code = "unauthenticated"


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise AuthError("malformed token") from exc


@dataclass(frozen=True)
class WidgetSession:
    """Who is looking, through which CRM, at which customer (None: the queue only)."""

    operator_id: str  # "bitrix24:15", "amocrm:42", "demo:operator"
    operator_name: str
    vendor: str
    account: str  # the portal / account the session belongs to
    customer_id: str | None
    customer_kind: str = "contact"
    expires_at: float = 0.0

    def claims(self) -> dict[str, Any]:
        return {"sub": self.operator_id, "name": self.operator_name, "vendor": self.vendor, "acc": self.account,
                "cid": self.customer_id, "ckind": self.customer_kind, "exp": int(self.expires_at)}


class SessionSigner:
    """HMAC-SHA256-signed session tokens: ``payload.signature``, both base64url."""

    def __init__(self, secret: bytes, *, ttl_s: float = 1800.0, clock: Callable[[], float] = time.time) -> None:
        if len(secret) < 16:
            raise ValueError("the session secret must be at least 16 bytes")
        self._secret, self._ttl, self._clock = secret, ttl_s, clock

    def issue(self, session: WidgetSession) -> str:
        claims = session.claims() | {"exp": int(self._clock() + self._ttl)}
        payload = _b64e(json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode())
        return f"{payload}.{self._sign(payload)}"

    def verify(self, token: str) -> WidgetSession:
        payload, _, signature = token.partition(".")
        if not payload or not signature or not hmac.compare_digest(signature, self._sign(payload)):
            raise AuthError("invalid session")
        claims = json.loads(_b64d(payload))
        if float(claims.get("exp", 0)) < self._clock():
            raise AuthError("session expired")
        return WidgetSession(operator_id=str(claims["sub"]), operator_name=str(claims.get("name", "")),
                             vendor=str(claims["vendor"]), account=str(claims["acc"]),
                             customer_id=claims.get("cid"), customer_kind=str(claims.get("ckind", "contact")),
                             expires_at=float(claims["exp"]))

    def _sign(self, payload: str) -> str:
        return _b64e(hmac.new(self._secret, payload.encode("ascii"), hashlib.sha256).digest())


def verify_hs256_jwt(token: str, secret: str, *, issuer: str | None, audience: str | None,
                     now: float | None = None, leeway_s: float = 30.0) -> dict[str, Any]:
    """Kommo's widget ``X-Auth-Token``: HS256 signed with the integration's secret key.

    Only HS256 is accepted (``alg: none`` and every other algorithm are refused before any
    signature check); ``exp`` and ``nbf`` are enforced with a small leeway; ``iss``/``aud`` must
    match when configured. The single use of ``jti`` is the caller's (it needs the database).
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise AuthError("malformed token")
    header = json.loads(_b64d(parts[0]))
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise AuthError("unsupported token algorithm")
    expected = hmac.new(secret.encode(), f"{parts[0]}.{parts[1]}".encode("ascii"), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, _b64d(parts[2])):
        raise AuthError("bad token signature")
    claims = json.loads(_b64d(parts[1]))
    if not isinstance(claims, dict):
        raise AuthError("malformed token")
    t = time.time() if now is None else now
    if "exp" not in claims or float(claims["exp"]) + leeway_s < t:
        raise AuthError("token expired")
    if "nbf" in claims and float(claims["nbf"]) - leeway_s > t:
        raise AuthError("token not yet valid")
    if issuer is not None and claims.get("iss") != issuer:
        raise AuthError("token from another account")
    if audience is not None:
        aud = claims.get("aud")
        if not (aud == audience or (isinstance(aud, list) and audience in aud)):
            raise AuthError("token for another audience")
    return claims


def hs256_jwt(claims: Mapping[str, Any], secret: str) -> str:
    """Make an HS256 JWT (the demo and the tests sign what Kommo would)."""
    head = _b64e(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = _b64e(json.dumps(dict(claims), separators=(",", ":")).encode())
    sig = _b64e(hmac.new(secret.encode(), f"{head}.{body}".encode("ascii"), hashlib.sha256).digest())
    return f"{head}.{body}.{sig}"


def verify_signed_webhook(body: bytes, timestamp: str | None, signature: str | None, secret: str, *,
                          now: float | None = None, max_age_s: float = 300.0) -> None:
    """Generic webhooks: ``X-Perimeter-Signature: sha256=<hex HMAC of "<timestamp>.<body>">`` and
    ``X-Perimeter-Timestamp`` (unix seconds) no older than five minutes (replays are refused)."""
    if not timestamp or not signature:
        raise AuthError("missing signature headers")
    try:
        ts = int(timestamp)
    except ValueError as exc:
        raise AuthError("bad timestamp") from exc
    t = time.time() if now is None else now
    if abs(t - ts) > max_age_s:
        raise AuthError("timestamp outside the allowed window")
    expected = "sha256=" + hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    try:
        ok = hmac.compare_digest(expected.encode("ascii"), signature.encode("ascii"))
    except UnicodeEncodeError:
        ok = False
    if not ok:
        raise AuthError("bad signature")


def sign_webhook(body: bytes, secret: str, timestamp: int) -> str:
    return "sha256=" + hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
