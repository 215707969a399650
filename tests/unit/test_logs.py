"""Logging set-up: redaction reaches nested values, stdlib records come out as our JSON."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from notifier.logs import redact_processor, route_stdlib_logging
from tests.conftest import make_settings


def test_addresses_inside_lists_and_dicts_are_redacted() -> None:
    event = {"errors": ["fan.email: ada@example.com is taken"], "extra": {"to": "+447911123456"}}

    redacted = redact_processor(None, "warning", event)

    assert redacted["errors"] == ["fan.email: a***@example.com is taken"]
    assert redacted["extra"] == {"to": "+44*******456"}


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, put back as it was afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    root.handlers = handlers
    root.setLevel(level)


def test_a_stdlib_record_becomes_a_redacted_json_line(
    root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    route_stdlib_logging(make_settings(notifier_log_format="json"), logging.INFO)

    logging.getLogger("celery.app.trace").info("Task failed for %s", "grace@example.com")

    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["event"] == "Task failed for g***@example.com"
    assert (line["logger"], line["level"]) == ("celery.app.trace", "info")
