"""How each CRM's iframe request is authenticated before the widget shows anything.

- Bitrix24 placement: an unsigned POST with ``DOMAIN``, ``AUTH_ID``, ``member_id``,
  ``PLACEMENT_OPTIONS``. The portal is looked up by ``member_id`` (compared in constant time with
  the one saved at install) and ``AUTH_ID`` is confirmed by calling ``user.current`` on *that*
  portal; ``DOMAIN`` from the request is never trusted.
- Kommo / amoCRM: the widget passes its ``X-Auth-Token`` JWT (HS256 with the integration's
  secret): signature, ``exp``/``nbf``, ``iss`` (the account) and ``aud`` (this service) are
  checked and the ``jti`` is single-use.
- Demo: a link `perimeter demo` prints, signed with the service's own session key.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from bot.storage.database import Database
from bot.storage.events import use_nonce
from bot.web.auth import AuthError, SessionSigner, WidgetSession, verify_hs256_jwt
from bot.widget import Authenticator


def bitrix24_authenticator(current_user: Callable[[str], Awaitable[dict[str, Any] | None]], member_id: str,
                           ) -> Authenticator:
    async def authenticate(form: Mapping[str, str]) -> WidgetSession:
        given = form.get("member_id", "")
        if not member_id or not hmac.compare_digest(given.encode("utf-8"), member_id.encode("utf-8")):
            raise AuthError("unknown Bitrix24 portal")
        auth_id = form.get("AUTH_ID", "")
        if not auth_id:
            raise AuthError("no AUTH_ID")
        user = await current_user(auth_id)
        if not user or "ID" not in user:
            raise AuthError("Bitrix24 did not confirm AUTH_ID")
        try:
            options = json.loads(form.get("PLACEMENT_OPTIONS") or "{}")
        except ValueError:
            options = {}
        placement = form.get("PLACEMENT", "")
        customer = str(options.get("ID")) if isinstance(options, dict) and options.get("ID") else None
        name = " ".join(p for p in (user.get("NAME"), user.get("LAST_NAME")) if p) or f"Bitrix24 user {user['ID']}"
        return WidgetSession(operator_id=f"bitrix24:{user['ID']}", operator_name=name, vendor="bitrix24",
                             account=member_id, customer_id=customer if "CONTACT" in placement else None)

    return authenticate


def kommo_authenticator(db: Database, secret: str, *, issuer: str, audience: str | None,
                        account_id: str | None = None) -> Authenticator:
    async def authenticate(params: Mapping[str, str]) -> WidgetSession:
        claims = verify_hs256_jwt(params.get("token", ""), secret, issuer=issuer.rstrip("/"), audience=audience)
        if account_id is not None and str(claims.get("account_id")) != account_id:
            raise AuthError("token from another account")
        jti = claims.get("jti")
        if not jti:
            raise AuthError("token without jti")
        if not await db.tx(lambda c: use_nonce(c, "kommo-jti", str(jti), float(claims["exp"]))):
            raise AuthError("token already used")
        user = str(claims.get("user_id", ""))
        contact = params.get("contact_id") or None
        if contact is not None and not contact.isdigit():
            raise AuthError("bad contact id")
        return WidgetSession(operator_id=f"amocrm:{user}", operator_name=params.get("user_name") or f"amoCRM {user}",
                             vendor="amocrm", account=str(claims.get("account_id", "")), customer_id=contact)

    return authenticate


def demo_authenticator(signer: SessionSigner) -> Authenticator:
    async def authenticate(params: Mapping[str, str]) -> WidgetSession:
        session = signer.verify(params.get("token", ""))
        if session.vendor != "demo":
            raise AuthError("not a demo link")
        return session

    return authenticate
