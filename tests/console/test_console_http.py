"""The console's HTTP answers (real uvicorn, requests): keys, cookies, CSRF and headers.

Over fake parts (fakeredis), so they need neither Redis nor a worker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import fakeredis
import pytest
import requests
from fastapi import FastAPI
from pydantic import SecretStr

from notifier.console_bulk import BulkJobs
from notifier.deadletter import DeadLetterStore
from notifier.web.console import ConsolePorts, console_router
from notifier.web.server import ServerThread
from tests.console.conftest import API_KEY

NOW = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)


def fake_ports(**overrides: Any) -> ConsolePorts:
    client = fakeredis.FakeRedis()
    jobs = BulkJobs(client)
    values: dict[str, Any] = {
        "api_key": SecretStr(API_KEY),
        "public_url": None,
        "dead_letters": DeadLetterStore(client),
        "replay": lambda batch: ["re-enqueued on email" for _ in batch],
        "status": lambda event_id: None,
        "start_bulk": jobs.create,
        "bulk_job": jobs.get,
        "queue_lengths": lambda: {"notifier.events": 0, "notifier.email": 4},
        "outcomes": lambda now: [(int(now.timestamp() // 60), {"sent": 3})],
        "clock": lambda: NOW,
    }
    values.update(overrides)
    return ConsolePorts(**values)


@pytest.fixture
def serve() -> Iterator[Callable[..., str]]:
    servers: list[ServerThread] = []

    def start(**overrides: Any) -> str:
        app = FastAPI()
        app.include_router(console_router(fake_ports(**overrides)))
        server = ServerThread(app).start()
        servers.append(server)
        return f"{server.url}/console"

    yield start
    for server in servers:
        server.stop()


def login_token(session: requests.Session, console_url: str) -> str:
    page = session.get(f"{console_url}/login", timeout=10)
    return page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]


def signed_in(console_url: str) -> requests.Session:
    session = requests.Session()
    token = login_token(session, console_url)
    session.post(f"{console_url}/login", data={"csrf": token, "api_key": API_KEY}, timeout=10)
    return session


def test_without_an_api_key_every_console_page_answers_503(serve: Callable[..., str]) -> None:
    console_url = serve(api_key=None)

    for path in ("/", "/login", "/dead-letters"):
        answer = requests.get(f"{console_url}{path}", timeout=10, allow_redirects=False)
        assert answer.status_code == 503
        assert "API key not configured" in answer.text


def test_a_wrong_key_answers_401_with_the_login_form(serve: Callable[..., str]) -> None:
    console_url = serve()
    session = requests.Session()
    token = login_token(session, console_url)

    answer = session.post(
        f"{console_url}/login", data={"csrf": token, "api_key": "guess"}, timeout=10
    )

    assert answer.status_code == 401
    assert 'id="api_key"' in answer.text
    assert "notifier_console" not in session.cookies


def test_a_login_post_without_its_csrf_token_is_refused(serve: Callable[..., str]) -> None:
    console_url = serve()
    session = requests.Session()
    login_token(session, console_url)

    answer = session.post(f"{console_url}/login", data={"api_key": API_KEY}, timeout=10)

    assert answer.status_code == 403
    assert "notifier_console" not in session.cookies


def test_the_session_cookie_is_httponly_strict_and_scoped_to_the_console(
    serve: Callable[..., str],
) -> None:
    console_url = serve()
    session = requests.Session()
    token = login_token(session, console_url)

    answer = session.post(
        f"{console_url}/login",
        data={"csrf": token, "api_key": API_KEY},
        timeout=10,
        allow_redirects=False,
    )

    assert answer.status_code == 303
    cookie = next(c for c in answer.headers["set-cookie"].split(", ") if "notifier_console=" in c)
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/console" in cookie
    assert "Secure" not in cookie  # plain http on loopback: the browser would drop it


def test_the_console_cookies_are_secure_when_the_public_url_is_https(
    serve: Callable[..., str],
) -> None:
    console_url = serve(public_url="https://notifier.example.com")
    session = requests.Session()
    page = session.get(f"{console_url}/login", timeout=10)
    assert "Secure" in page.headers["set-cookie"]
    token = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    # requests keeps a Secure cookie from plain http; a browser would not.
    nonce = page.headers["set-cookie"].split("notifier_console_login=", 1)[1].split(";", 1)[0]
    session.cookies.set("notifier_console_login", nonce, path="/console")

    answer = session.post(
        f"{console_url}/login",
        data={"csrf": token, "api_key": API_KEY},
        timeout=10,
        allow_redirects=False,
    )

    assert answer.status_code == 303
    assert "Secure" in answer.headers["set-cookie"]


def test_console_answers_carry_the_security_headers_redirects_and_errors_too(
    serve: Callable[..., str],
) -> None:
    console_url = serve()
    session = signed_in(console_url)
    answers = [
        session.get(f"{console_url}/", timeout=10),
        requests.get(f"{console_url}/", timeout=10, allow_redirects=False),
        session.post(f"{console_url}/logout", timeout=10),
        session.get(f"{console_url}/entries/nope", timeout=10),
    ]

    assert [answer.status_code for answer in answers] == [200, 303, 403, 404]
    for answer in answers:
        assert "script-src" not in answer.headers["Content-Security-Policy"]
        assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
        assert answer.headers["X-Frame-Options"] == "DENY"
        assert answer.headers["Referrer-Policy"] == "no-referrer"
        assert answer.headers["Cache-Control"] == "no-store"


def test_the_console_stays_out_of_the_openapi_document(serve: Callable[..., str]) -> None:
    console_url = serve()

    document = requests.get(console_url.replace("/console", "/openapi.json"), timeout=10).json()

    assert not [path for path in document["paths"] if path.startswith("/console")]
