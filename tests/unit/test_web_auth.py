"""Widget sessions, Kommo JWTs and signed webhooks: forged, expired and replayed input is refused."""

from __future__ import annotations

import base64
import json

import pytest

from bot.web.auth import (
    AuthError,
    SessionSigner,
    WidgetSession,
    hs256_jwt,
    sign_webhook,
    verify_hs256_jwt,
    verify_signed_webhook,
)

SECRET = "integration-secret-key-0123456789"
NOW = 1_800_000_000.0
CLAIMS = {"iss": "https://bank.kommo.com", "aud": "https://perimeter.bank.internal", "jti": "j-1",
          "iat": NOW - 10, "nbf": NOW - 10, "exp": NOW + 600, "account_id": 31, "user_id": 7}


def _b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_a_session_round_trips_and_tampering_or_expiry_is_refused() -> None:
    clock = [NOW]
    signer = SessionSigner(b"0123456789abcdef0123", ttl_s=60, clock=lambda: clock[0])
    token = signer.issue(WidgetSession("bitrix24:15", "Ольга", "bitrix24", "b24-member", "42"))
    session = signer.verify(token)
    assert (session.operator_id, session.customer_id, session.operator_name) == ("bitrix24:15", "42", "Ольга")
    payload, sig = token.split(".")
    forged = _b64({**json.loads(base64.urlsafe_b64decode(payload + "==")), "cid": "43"})
    with pytest.raises(AuthError):
        signer.verify(f"{forged}.{sig}")
    with pytest.raises(AuthError):
        SessionSigner(b"another-secret-of-16+").verify(token)
    clock[0] += 61
    with pytest.raises(AuthError, match="expired"):
        signer.verify(token)


def test_a_valid_kommo_token_passes() -> None:
    claims = verify_hs256_jwt(hs256_jwt(CLAIMS, SECRET), SECRET, issuer=CLAIMS["iss"], audience=CLAIMS["aud"], now=NOW)
    assert claims["user_id"] == 7


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (hs256_jwt(CLAIMS | {"exp": NOW - 120}, SECRET), "expired"),
        (hs256_jwt(CLAIMS | {"nbf": NOW + 120}, SECRET), "not yet"),
        (hs256_jwt(CLAIMS | {"aud": "https://elsewhere.example"}, SECRET), "audience"),
        (hs256_jwt(CLAIMS | {"iss": "https://other.kommo.com"}, SECRET), "account"),
        (hs256_jwt(CLAIMS, "a-different-secret"), "signature"),
        (f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(CLAIMS)}.", "algorithm"),
        (f"{_b64({'alg': 'HS512', 'typ': 'JWT'})}.{_b64(CLAIMS)}.abc", "algorithm"),
        ("not-a-jwt", "malformed"),
    ],
)
def test_a_bad_kommo_token_is_refused(token: str, message: str) -> None:
    with pytest.raises(AuthError, match=message):
        verify_hs256_jwt(token, SECRET, issuer=CLAIMS["iss"], audience=CLAIMS["aud"], now=NOW)


def test_signed_webhooks_need_a_fresh_timestamp_and_the_right_signature() -> None:
    body = b'{"id": "e1"}'
    ts = int(NOW)
    verify_signed_webhook(body, str(ts), sign_webhook(body, "s3cret", ts), "s3cret", now=NOW)
    with pytest.raises(AuthError, match="window"):
        verify_signed_webhook(body, str(ts - 301), sign_webhook(body, "s3cret", ts - 301), "s3cret", now=NOW)
    with pytest.raises(AuthError, match="signature"):
        verify_signed_webhook(body + b" ", str(ts), sign_webhook(body, "s3cret", ts), "s3cret", now=NOW)
    with pytest.raises(AuthError, match="signature"):
        verify_signed_webhook(body, str(ts), "sha256=подпись", "s3cret", now=NOW)
    with pytest.raises(AuthError, match="missing"):
        verify_signed_webhook(body, None, None, "s3cret", now=NOW)
