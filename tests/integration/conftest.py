"""Real parts: a Celery worker (solo pool, in a thread) on real Redis, SMTP sink, Twilio."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker

from notifier.app import NotifierCelery, create_app
from notifier.deadletter import DeadLetterStore
from notifier.keys import QUEUES
from notifier.ledger import Ledger
from notifier.logs import configure_logging
from notifier.redis_clients import redis_client
from notifier.settings import Settings
from notifier.testing import SmtpSink, TwilioStandIn
from tests.conftest import make_settings

pytestmark = pytest.mark.integration


TWILIO_NUMBER = "+14155550100"


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    with SmtpSink() as sink:
        yield sink


@pytest.fixture
def twilio() -> Iterator[TwilioStandIn]:
    with TwilioStandIn() as stand_in:
        yield stand_in


@pytest.fixture
def settings_for(
    redis_url: str, smtp_sink: SmtpSink, twilio: TwilioStandIn
) -> Callable[..., Settings]:
    """Settings pointing at this test's Redis DB, sink and stand-in, with fast retries."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": redis_url,
            "mail_server": smtp_sink.host,
            "mail_port": smtp_sink.port,
            "mail_use_tls": False,
            "twilio_account_sid": twilio.account_sid,
            "twilio_auth_token": twilio.auth_token,
            "twilio_phone_number": TWILIO_NUMBER,
            "twilio_api_base_url": twilio.base_url,
            # Local servers: short enough that login plus a fallback fit the
            # default time limits (notifier/budget.py).
            "mail_timeout": 4,
            "notifier_retry_backoff_base": 0.05,
            "notifier_retry_backoff_max": 0.2,
            "notifier_retry_max_attempts": 3,
            "notifier_log_format": "console",
            "notifier_sms_mps": 0,  # Twilio's 1/s would slow every test; tested on its own
        }
        values.update(overrides)
        return make_settings(**values)

    return build


@pytest.fixture
def settings(settings_for: Callable[..., Settings]) -> Settings:
    return settings_for()


def running(app: NotifierCelery) -> Any:
    """A real worker consuming all three queues, in a thread (solo pool)."""
    return start_worker(
        app,
        pool="solo",
        perform_ping_check=False,
        queues=list(QUEUES),
        shutdown_timeout=30,
        loglevel="WARNING",
    )


@pytest.fixture
def worker_for() -> Iterator[Callable[[Settings], Any]]:
    """Start a worker for given settings; stopped at the end of the test."""
    stack: list[Any] = []
    apps: list[NotifierCelery] = []

    def start(settings: Settings) -> NotifierCelery:
        configure_logging(settings)  # as a worker's start-up does
        app = create_app(settings)
        context = running(app)
        context.__enter__()
        stack.append(context)
        apps.append(app)
        return app

    yield start
    for context in reversed(stack):
        context.__exit__(None, None, None)
    for app in apps:
        app.close_runtime()


@pytest.fixture
def app(worker_for: Callable[[Settings], NotifierCelery], settings: Settings) -> NotifierCelery:
    """A running worker with the default test settings; publish through this app."""
    return worker_for(settings)


@pytest.fixture
def dead_letters(settings: Settings) -> Iterator[DeadLetterStore]:
    client = redis_client(settings)
    yield DeadLetterStore(client)
    client.close()


@pytest.fixture
def ledger(settings: Settings) -> Iterator[Ledger]:
    client = redis_client(settings)
    yield Ledger(client, ttl=settings.notifier_ledger_ttl)
    client.close()
