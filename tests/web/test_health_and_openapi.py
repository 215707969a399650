"""``GET /healthz`` (no auth) and ``GET /openapi.json`` (docs/DESIGN.md §9, §10)."""

from __future__ import annotations

import requests

from notifier.health import Check
from notifier.testing import free_port
from notifier.web.app import create_app
from notifier.web.server import ServerThread, production_parts
from tests.web.conftest import FakeParts, web_settings


def test_healthz_is_200_ok_without_auth(base_url: str) -> None:
    answer = requests.get(base_url + "/healthz", timeout=5)
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok"}


def test_healthz_is_503_with_the_failing_checks(base_url: str, fakes: FakeParts) -> None:
    fakes.checks = [
        Check("redis", "fail", "127.0.0.1:6379/0: ConnectionError: refused"),
        Check("other", "ok", "fine"),
    ]
    answer = requests.get(base_url + "/healthz", timeout=5)
    assert answer.status_code == 503
    assert answer.json() == {
        "status": "fail",
        "checks": [{"name": "redis", "detail": "127.0.0.1:6379/0: ConnectionError: refused"}],
    }


def test_openapi_documents_the_trace_shape_and_the_bearer_scheme(base_url: str) -> None:
    document = requests.get(base_url + "/openapi.json", timeout=5).json()
    operation = document["paths"]["/v1/events/{event_id}"]["get"]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/EventStatus"}
    assert "DeliveryStatus" in document["components"]["schemas"]
    assert operation["security"] == [{"HTTPBearer": []}]
    assert {"/healthz", "/twilio/status"} <= set(document["paths"])


def test_no_interactive_docs_are_served(base_url: str) -> None:
    assert requests.get(base_url + "/docs", timeout=5).status_code == 404


def test_healthz_with_production_parts_is_503_when_redis_is_down() -> None:
    settings = web_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    parts, close = production_parts(settings)
    try:
        with ServerThread(create_app(parts)) as server:
            answer = requests.get(server.url + "/healthz", timeout=10)
    finally:
        close()
    assert answer.status_code == 503
    (check,) = answer.json()["checks"]
    assert check["name"] == "redis"
