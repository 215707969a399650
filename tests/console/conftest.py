"""The console served for real: uvicorn on a free port, real Redis, a real worker, a browser.

The console's router is mounted in a minimal FastAPI app of the test's own (its
parts from ``notifier.web.console.wiring``, as ``notifier web`` builds them),
so these tests need neither the rest of the web process nor its settings.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi import FastAPI
from pydantic import SecretStr

from notifier.app import NotifierCelery, create_app
from notifier.deadletter import DeadLetterStore
from notifier.settings import Settings
from notifier.testing import SmtpSink, WorkerProcess
from notifier.testing.browser import browser_missing, headless_chromium
from notifier.web.console import console_router
from notifier.web.console.wiring import production_ports
from notifier.web.server import ServerThread
from tests.conftest import ON_CI, make_settings

API_KEY = "console-key-for-tests-0123456789"
SENDER = "Bookings <bookings@example.com>"


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    with SmtpSink() as sink:
        yield sink


@pytest.fixture
def settings(redis_url: str, smtp_sink: SmtpSink) -> Settings:
    return make_settings(
        redis_url=redis_url,
        mail_server=smtp_sink.host,
        mail_port=smtp_sink.port,
        mail_use_tls=False,
        mail_default_sender=SENDER,
        notifier_api_key=SecretStr(API_KEY),
        notifier_log_format="console",
    )


@pytest.fixture
def celery_client(settings: Settings) -> Iterator[NotifierCelery]:
    """A Celery client (no worker): what the console publishes replays and bulk tasks with."""
    app = create_app(settings)
    yield app
    app.close_runtime()


@pytest.fixture
def store(celery_client: NotifierCelery) -> DeadLetterStore:
    return celery_client.runtime.dead_letters


@pytest.fixture
def console_url(settings: Settings, celery_client: NotifierCelery) -> Iterator[str]:
    """The console at ``<origin>/console``, served by uvicorn in a thread."""
    app = FastAPI()
    app.include_router(console_router(production_ports(settings, celery_client)))
    with ServerThread(app) as server:
        yield f"{server.url}/console"


@pytest.fixture
def worker(settings: Settings, smtp_sink: SmtpSink, tmp_path: Path) -> Iterator[WorkerProcess]:
    """``celery -A worker worker`` (the real command) on this test's Redis and sink."""
    environment = dict(os.environ)
    environment.update(
        REDIS_URL=settings.redis_url,
        MAIL_SERVER=smtp_sink.host,
        MAIL_PORT=str(smtp_sink.port),
        MAIL_USE_TLS="false",
        MAIL_USE_SSL="false",
        MAIL_DEFAULT_SENDER=SENDER,
        NOTIFIER_LOG_FORMAT="console",
        NOTIFIER_METRICS_PORT="0",
        NOTIFIER_RATE_LIMITS="none",
    )
    for name in ("MAIL_USERNAME", "MAIL_PASSWORD", "NOTIFIER_API_KEY"):
        environment.pop(name, None)
    process = WorkerProcess(environment, tmp_path / "worker.log", concurrency=1)
    process.start().wait_ready()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def _browser_available() -> None:
    missing = browser_missing()
    if missing is not None:
        if ON_CI:
            pytest.fail(f"{missing} (CI=true: the console's browser tests must run)")
        pytest.skip(missing)


@pytest.fixture
def browser(_browser_available: None) -> Iterator[Any]:
    driver = headless_chromium()
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


@pytest.fixture
def redis_client(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url)
    yield client
    client.close()
