"""``GET /v1/events/{id}``: the Bearer key (docs/DESIGN.md §10, "web auth")."""

from __future__ import annotations

import hmac
from collections.abc import Callable

import pytest
import requests
from pydantic import SecretStr

from notifier.web import auth
from tests.web.conftest import API_KEY, SAMPLE_EVENT_ID, sample_status

EVENT = f"/v1/events/{SAMPLE_EVENT_ID}"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_the_right_key_gets_the_trace_shape(base_url: str) -> None:
    answer = requests.get(base_url + EVENT, headers=bearer(API_KEY), timeout=5)
    assert answer.status_code == 200
    assert answer.json() == sample_status().model_dump(mode="json")


def test_no_key_is_401_with_a_bearer_challenge(base_url: str) -> None:
    answer = requests.get(base_url + EVENT, timeout=5)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == "Bearer"


def test_a_wrong_key_is_401(base_url: str) -> None:
    answer = requests.get(base_url + EVENT, headers=bearer(API_KEY + "x"), timeout=5)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == "Bearer"


def test_another_scheme_is_401(base_url: str) -> None:
    headers = {"Authorization": f"Basic {API_KEY}"}
    answer = requests.get(base_url + EVENT, headers=headers, timeout=5)
    assert answer.status_code == 401


def test_no_key_configured_is_503_even_on_loopback(serve: Callable[..., str]) -> None:
    url = serve(notifier_api_key=None)
    answer = requests.get(url + EVENT, headers=bearer(API_KEY), timeout=5)
    assert answer.status_code == 503
    assert answer.json() == {"detail": "API key not configured"}


def test_an_unknown_event_is_404(base_url: str) -> None:
    answer = requests.get(base_url + "/v1/events/nope", headers=bearer(API_KEY), timeout=5)
    assert answer.status_code == 404


def test_the_key_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # The comparison goes through hmac.compare_digest (docs/security.md): a
    # recording wrapper around it sees both keys, as bytes.
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    assert auth.key_matches("guess", SecretStr("secret")) is False
    assert auth.key_matches("secret", SecretStr("secret")) is True
    assert calls == [(b"guess", b"secret"), (b"secret", b"secret")]
