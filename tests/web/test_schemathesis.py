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

from tests.web.conftest import API_KEY

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
