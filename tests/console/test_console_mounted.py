"""``notifier web`` serves the console at /console/ with its production parts (real Redis)."""

from __future__ import annotations

import pytest
import requests

from notifier.settings import Settings
from notifier.web.app import create_app
from notifier.web.server import ServerThread, production_parts

pytestmark = pytest.mark.integration


def test_notifier_web_serves_the_console_behind_its_login(settings: Settings) -> None:
    parts, close = production_parts(settings)
    try:
        with ServerThread(create_app(parts)) as server:
            page = requests.get(f"{server.url}/console/", timeout=10)
            health = requests.get(f"{server.url}/healthz", timeout=10)
    finally:
        close()

    assert page.url.endswith("/console/login")
    assert 'id="api_key"' in page.text
    assert page.headers["X-Frame-Options"] == "DENY"
    assert health.status_code == 200
