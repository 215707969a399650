"""The console's session cookie and CSRF tokens (notifier.web.console.session)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

from notifier.web.console import session

NOW = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
KEY = session.signing_key("the-api-key")


def test_a_signed_session_cookie_reads_back_as_the_same_session() -> None:
    issued, cookie = session.issue(KEY, NOW)

    assert session.read(KEY, cookie, NOW + timedelta(hours=1)) == issued


def test_a_session_cookie_is_refused_once_it_expired() -> None:
    _, cookie = session.issue(KEY, NOW, timedelta(hours=8))

    assert session.read(KEY, cookie, NOW + timedelta(hours=8)) is None


def test_a_session_cookie_with_a_changed_expiry_is_refused() -> None:
    issued, cookie = session.issue(KEY, NOW)
    _encoded, mac = cookie.split(".")
    forged_payload = f"{issued.id}:{issued.expires + 86_400}".encode()
    forged = base64.urlsafe_b64encode(forged_payload).decode().rstrip("=") + "." + mac

    assert session.read(KEY, forged, NOW) is None


def test_a_session_cookie_signed_under_another_api_key_is_refused() -> None:
    _, cookie = session.issue(session.signing_key("an-older-key"), NOW)

    assert session.read(KEY, cookie, NOW) is None


def test_malformed_session_cookies_are_refused_without_raising() -> None:
    for cookie in (None, "", "x", "a.b.c", "!!!.00", "bm9jb2xvbg.00"):
        assert session.read(KEY, cookie, NOW) is None


def test_the_signing_key_is_not_the_api_key() -> None:
    assert b"the-api-key" not in KEY


def test_the_csrf_token_of_the_session_is_accepted() -> None:
    issued, _ = session.issue(KEY, NOW)

    assert session.csrf_matches(KEY, issued.id, session.csrf_token(KEY, issued.id))


def test_a_csrf_token_of_another_session_or_none_is_refused() -> None:
    mine, _ = session.issue(KEY, NOW)
    theirs, _ = session.issue(KEY, NOW)

    assert not session.csrf_matches(KEY, mine.id, session.csrf_token(KEY, theirs.id))
    assert not session.csrf_matches(KEY, mine.id, None)
    assert not session.csrf_matches(KEY, mine.id, "")


def test_the_typed_api_key_must_match_exactly() -> None:
    assert session.key_matches("the-api-key", "the-api-key")
    assert not session.key_matches("the-api-key ", "the-api-key")
    assert not session.key_matches("", "the-api-key")
