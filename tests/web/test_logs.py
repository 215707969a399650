"""No secret in the web process's logs: not the API key, not a query string, not a body."""

from __future__ import annotations

import logging

import pytest
import requests
from structlog.testing import capture_logs

from notifier.errors import PublishError
from tests.polling import eventually
from tests.web.conftest import API_KEY, SAMPLE_EVENT_ID, FakeParts
from tests.web.test_twilio_status import SID, post, signed


def test_requests_are_logged_without_key_query_or_body(
    base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with capture_logs() as records:
        requests.get(
            f"{base_url}/v1/events/{SAMPLE_EVENT_ID}?token=query-secret",
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=5,
        )
        post(base_url, {"MessageSid": SID, "MessageStatus": "sent", "To": "+447911123456"}, {})

        def both() -> list[str] | None:
            found = [r["path"] for r in records if r["event"] == "web.request"]
            return found if len(found) == 2 else None

        # A line is written once its response went out: wait for both.
        paths = eventually(both, what="two access log lines")
    assert paths == [f"/v1/events/{SAMPLE_EVENT_ID}", "/twilio/status"]
    # The server's records (the client's own, urllib3's, show its request line).
    served = [r for r in caplog.records if r.name.startswith(("uvicorn", "notifier", "fastapi"))]
    logged = repr(records) + "\n".join(r.getMessage() for r in served)
    for secret in (API_KEY, "query-secret", "+447911123456"):
        assert secret not in logged


def test_a_receipt_the_broker_refused_is_a_5xx_for_twilio_to_retry(
    base_url: str, fakes: FakeParts
) -> None:
    fakes.refusal = PublishError("broker did not accept the job")
    fields = {"MessageSid": SID, "MessageStatus": "undelivered", "ErrorCode": "30003"}
    assert post(base_url, fields, signed(fields)).status_code == 503
