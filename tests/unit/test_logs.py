"""Logging set-up: redaction reaches nested values, stdlib records come out as our JSON,
every record is at most 8 KiB and written with one write call."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator

import pytest
import structlog

from notifier.logs import configure_logging, get_logger, redact_processor, route_stdlib_logging
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


# --- one record, one bounded write ------------------------------------------------------


class Recorder:
    """A stand-in for stderr that remembers every write call."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


@pytest.fixture
def stderr(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    """configure_logging bound to a recording stderr; structlog reset afterwards."""
    recorder = Recorder()
    monkeypatch.setattr(sys, "stderr", recorder)
    configure_logging(make_settings(notifier_log_format="json"))
    yield recorder
    structlog.reset_defaults()


def test_each_record_is_written_with_one_write_call(stderr: Recorder) -> None:
    get_logger().info("delivery.sent", delivery_id="d-1")
    get_logger().info("delivery.sent", delivery_id="d-2")

    assert len(stderr.writes) == 2
    assert all(write.endswith("\n") and write.count("\n") == 1 for write in stderr.writes)
    assert json.loads(stderr.writes[1])["delivery_id"] == "d-2"


def test_a_record_with_huge_values_is_at_most_8_kib(stderr: Recorder) -> None:
    # The repro: an event whose type and event_id are 5 MiB each.
    get_logger().warning(
        "event.rejected",
        type="x" * 5 * 2**20,
        event_id="y" * 5 * 2**20,
        errors=["type: unknown"] * 10_000,
    )

    [line] = stderr.writes
    assert len(line.encode()) <= 8 * 1024
    assert json.loads(line)["event"] == "event.rejected"


def test_a_cut_string_ends_with_how_many_bytes_were_cut(stderr: Recorder) -> None:
    get_logger().warning("event.rejected", type="x" * 20_000)

    record = json.loads(stderr.writes[0])
    kept = len(record["type"]) - len(record["type"].lstrip("x"))
    assert record["type"] == "x" * kept + f"…[truncated {20_000 - kept} bytes]"
    assert 0 < kept < 8 * 1024
    assert record["event"] == "event.rejected"
    assert record["level"] == "warning"


def test_a_record_under_the_cap_is_written_unchanged(stderr: Recorder) -> None:
    get_logger().info("delivery.sent", error="z" * 4000)

    assert json.loads(stderr.writes[0])["error"] == "z" * 4000


def test_a_cut_never_leaves_half_an_address_unredacted(stderr: Recorder) -> None:
    get_logger().warning("event.rejected", errors="a" * 9000 + " ada.lovelace@example.com")

    assert "lovelace" not in stderr.writes[0]


def test_a_huge_stdlib_record_is_capped_too(
    root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    route_stdlib_logging(make_settings(notifier_log_format="json"), logging.INFO)

    logging.getLogger("celery.worker").error("Received unregistered task %s", "t" * 2**20)

    line = capsys.readouterr().err.splitlines()[-1]
    assert len(line.encode()) + 1 <= 8 * 1024
    assert json.loads(line)["event"].endswith(" bytes]")


def test_a_record_with_thousands_of_fields_keeps_what_happened(stderr: Recorder) -> None:
    get_logger().warning("event.rejected", **{f"field{i}": "v" * 100 for i in range(5_000)})

    [line] = stderr.writes
    record = json.loads(line)
    assert len(line.encode()) <= 8 * 1024
    assert (record["event"], record["level"]) == ("event.rejected", "warning")
    assert record["truncated"].startswith("…[truncated ")


def test_console_lines_are_capped_too(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    monkeypatch.setattr(sys, "stderr", recorder)
    configure_logging(make_settings(notifier_log_format="console"))
    try:
        get_logger().warning("event.rejected", type="x" * 2**20)
    finally:
        structlog.reset_defaults()

    [line] = recorder.writes
    assert len(line.encode()) <= 8 * 1024
    assert "event.rejected" in line
