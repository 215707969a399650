"""``notifier web`` served for real (uvicorn in a thread, a free port) over fake parts."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import SecretStr

from notifier.health import Check
from notifier.receipts import TwilioReceipt
from notifier.settings import Settings
from notifier.status_store import EventStatus
from notifier.web.app import WebParts, create_app
from notifier.web.server import ServerThread
from tests.conftest import make_settings

API_KEY = "k3y-for-tests-0123456789abcdef"
TWILIO_TOKEN = "twilio-token-for-tests"
SAMPLE_EVENT_ID = "0d4a3c1e-8f00-4b8a-9c3e-5a6f7b8c9d0e"


def sample_status(event_id: str = SAMPLE_EVENT_ID) -> EventStatus:
    return EventStatus.model_validate(
        {
            "event_id": event_id,
            "type": "booking.created",
            "state": "accepted",
            "reasons": [],
            "dead_letter_id": None,
            "deliveries": [
                {
                    "delivery_id": "d-1",
                    "channel": "sms",
                    "template": "booking_confirmation_fan",
                    "recipient": "+44*******456",
                    "state": "delivered",
                    "attempts": 1,
                    "provider": "twilio",
                    "provider_id": "SM" + "a" * 32,
                    "dead_letter_id": None,
                    "updated_at": "2026-12-01T10:00:02.120Z",
                    "timeline": [
                        {"state": "queued", "at": "2026-12-01T10:00:00.000Z", "detail": ""},
                        {"state": "sent", "at": "2026-12-01T10:00:01.000Z", "detail": "SM…"},
                        {"state": "delivered", "at": "2026-12-01T10:00:02.120Z", "detail": ""},
                    ],
                }
            ],
        }
    )


@dataclass
class FakeStatus:
    events: dict[str, EventStatus] = field(default_factory=dict)

    def event(self, event_id: str) -> EventStatus | None:
        return self.events.get(event_id)


@dataclass
class FakeParts:
    """What a test changes: the checks' results and the receipts applied."""

    status: FakeStatus = field(default_factory=FakeStatus)
    checks: list[Check] = field(default_factory=lambda: [Check("redis", "ok", "PONG")])
    receipts: list[TwilioReceipt] = field(default_factory=list)
    refusal: Exception | None = None
    """Raised by ``apply`` instead of taking the receipt (a broker that refuses)."""

    def health(self) -> Sequence[Check]:
        return self.checks

    def apply(self, receipt: TwilioReceipt) -> None:
        if self.refusal is not None:
            raise self.refusal
        self.receipts.append(receipt)


def web_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "notifier_api_key": SecretStr(API_KEY),
        "twilio_account_sid": "AC" + "0" * 32,
        "twilio_auth_token": SecretStr(TWILIO_TOKEN),
        "twilio_phone_number": "+14155550100",
        "notifier_public_url": "https://notifier.example.com",
    }
    values.update(overrides)
    return make_settings(**values)


@pytest.fixture
def fakes() -> FakeParts:
    fakes = FakeParts()
    fakes.status.events[SAMPLE_EVENT_ID] = sample_status()
    return fakes


@pytest.fixture
def serve(fakes: FakeParts) -> Iterator[Callable[..., str]]:
    """Serve the app over ``fakes`` with settings ``web_settings(**overrides)``; its origin."""
    servers: list[ServerThread] = []

    def start(**overrides: Any) -> str:
        parts = WebParts(
            settings=web_settings(**overrides),
            status=fakes.status,
            health=fakes.health,
            apply_receipt=fakes.apply,
        )
        server = ServerThread(create_app(parts)).start()
        servers.append(server)
        return server.url

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def base_url(serve: Callable[..., str]) -> str:
    return serve()
