"""The console's session cookie and CSRF tokens: plain functions over an injected time.

A session is a random id and an expiry, signed with HMAC-SHA256 under a key
derived from ``NOTIFIER_API_KEY`` (never the key itself), so nothing is kept on
the server and changing the key ends every session. The CSRF token of a session
is an HMAC of its id under the same key: it cannot be guessed without the key,
and it is checked with ``hmac.compare_digest`` (docs/console.md, "Security").
Before login there is no session; the login form's token is tied the same way to
a random nonce kept in a short-lived cookie of its own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = [
    "LOGIN_COOKIE",
    "SESSION_COOKIE",
    "SESSION_LIFETIME",
    "Session",
    "csrf_matches",
    "csrf_token",
    "issue",
    "key_matches",
    "login_nonce",
    "read",
    "signing_key",
]

SESSION_COOKIE = "notifier_console"
LOGIN_COOKIE = "notifier_console_login"
SESSION_LIFETIME = timedelta(hours=8)
"""A working day: an operator logs in again the next morning."""

_PURPOSE = b"notifier console session v1"


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in operator's session: its id and when it ends (epoch seconds)."""

    id: str
    expires: int


def signing_key(api_key: str) -> bytes:
    """The key sessions and tokens are signed with, derived from the API key."""
    return hmac.new(api_key.encode(), _PURPOSE, hashlib.sha256).digest()


def key_matches(given: str, api_key: str) -> bool:
    """Whether the typed key is the API key, compared in constant time."""
    return hmac.compare_digest(given.encode(), api_key.encode())


def _mac(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def issue(key: bytes, now: datetime, lifetime: timedelta = SESSION_LIFETIME) -> tuple[Session, str]:
    """A new session and its cookie value."""
    session = Session(secrets.token_urlsafe(18), int((now + lifetime).timestamp()))
    payload = f"{session.id}:{session.expires}"
    encoded = base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
    return session, f"{encoded}.{_mac(key, payload)}"


def read(key: bytes, cookie: str | None, now: datetime) -> Session | None:
    """The session a cookie holds; None when absent, forged, malformed or expired."""
    if not cookie or cookie.count(".") != 1:
        return None
    encoded, mac = cookie.split(".")
    try:
        payload = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    if not hmac.compare_digest(mac.encode(), _mac(key, payload).encode()):
        return None
    session_id, _, expires = payload.rpartition(":")
    if not session_id or not expires.isdigit():
        return None
    session = Session(session_id, int(expires))
    return session if now.timestamp() < session.expires else None


def csrf_token(key: bytes, session_id: str) -> str:
    """The CSRF token of a session (or of a login nonce)."""
    return _mac(key, f"csrf:{session_id}")


def csrf_matches(key: bytes, session_id: str, given: str | None) -> bool:
    """Whether a form's token is the session's, in constant time."""
    return given is not None and hmac.compare_digest(
        given.encode(), csrf_token(key, session_id).encode()
    )


def login_nonce() -> str:
    """A random value for the login form's cookie, which its CSRF token is tied to."""
    return "login:" + secrets.token_urlsafe(18)
