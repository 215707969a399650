"""schemathesis against the served /openapi.json: no server error, answers as documented.

Its Python API, driven by hypothesis here (its pytest ``from_fixture``
integration does not run under our pytest 9).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from twilio.request_validator import RequestValidator

from tests.web.conftest import API_KEY, TWILIO_TOKEN
from tests.web.test_twilio_status import CALLBACK_URL

AUTHORIZED = {"Authorization": f"Bearer {API_KEY}"}


@pytest.mark.parametrize("path", ["/healthz", "/v1/events/{event_id}", "/twilio/status"])
def test_the_api_answers_as_its_openapi_document_says(serve: Callable[..., str], path: str) -> None:
    url = serve()
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    (operation,) = [op for op in operations if op.path == path]

    @given(case=operation.as_strategy())
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    def answers_as_documented(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(base_url=url, headers=AUTHORIZED)

    answers_as_documented()


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (schemathesis.GenerationMode.POSITIVE, {200}),
        # Some "invalid" forms are valid once sent as text (ErrorCode 5 is "5").
        (schemathesis.GenerationMode.NEGATIVE, {200, 400}),
    ],
    ids=["valid-forms", "invalid-forms"],
)
def test_signed_status_callbacks_answer_as_documented(
    serve: Callable[..., str], mode: schemathesis.GenerationMode, expected: set[int]
) -> None:
    # Each generated form is signed as Twilio would sign it, so it gets past the
    # signature to the form's own checks: valid ones 200, invalid ones 400.
    url = serve()
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    (operation,) = [op for op in operations if op.path == "/twilio/status"]
    answers: set[int] = set()

    @given(case=operation.as_strategy(mode))
    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
    def answers_as_documented(case: schemathesis.Case[Any]) -> None:
        if not isinstance(case.body, dict):
            return  # a body that is not a form: unsigned, 403, covered above
        fields = {str(key): str(value) for key, value in case.body.items()}
        case.body = dict[str, Any](fields)
        signature = RequestValidator(TWILIO_TOKEN).compute_signature(CALLBACK_URL, fields)
        headers = {"X-Twilio-Signature": signature}
        if mode is schemathesis.GenerationMode.POSITIVE:
            response = case.call_and_validate(base_url=url, headers=headers)
        else:
            response = case.call(base_url=url, headers=headers)
            assert response.status_code < 500
        answers.add(response.status_code)

    answers_as_documented()
    assert answers <= expected
    assert max(expected) in answers
