"""The ``notifier`` command line: schema, preview, publish's validation, input parsing;
``dlq`` and ``stats`` on fakeredis: inert output, corrupt entries, one recipient."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from typer.testing import CliRunner

import notifier.client
import notifier.redis_clients
import notifier.settings
from notifier import keys
from notifier.cli import app, parse_input
from notifier.deadletter import DeadLetter, DeadLetterStore
from notifier.errors import InvalidEventError, PublishError
from notifier.events import SUPPORTED_TYPES, parse_event
from notifier.planner import plan
from tests import samples
from tests.conftest import make_settings


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(autouse=True)
def isolated_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's environment (NOTIFIER_TEMPLATE_DIR, REDIS_URL...) does not leak in."""
    monkeypatch.setattr(notifier.settings, "get_settings", make_settings)


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[list[Any]]:
    """Stands in for the broker: what ``publish`` handed over, one list per call."""
    calls: list[list[Any]] = []

    def publish_many(events: list[Any]) -> list[str]:
        calls.append(list(events))
        return [event["event_id"] for event in events]

    monkeypatch.setattr(notifier.client, "publish_many", publish_many)
    return calls


def write_event(tmp_path: Path, event: dict[str, Any], name: str = "event.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(event, indent=2), encoding="utf-8")
    return path


def write_lines(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- schema ------------------------------------------------------------------------


def test_schema_prints_json_schema_of_the_four_event_types(runner: CliRunner) -> None:
    result = runner.invoke(app, ["schema"])

    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    definitions = [schema["$defs"][ref["$ref"].rsplit("/", 1)[1]] for ref in schema["oneOf"]]
    types = {definition["properties"]["type"]["const"] for definition in definitions}
    assert types == set(SUPPORTED_TYPES)
    assert schema["discriminator"]["propertyName"] == "type"


# --- preview -----------------------------------------------------------------------


def test_preview_email_prints_subject_text_and_html(runner: CliRunner, tmp_path: Path) -> None:
    event = write_event(tmp_path, samples.booking_created())

    result = runner.invoke(
        app, ["preview", "booking_confirmation_fan", "--channel", "email", "--event", str(event)]
    )

    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("Subject: Booking Confirmation\n")
    assert "Hello Ada Lovelace," in result.stdout
    assert "Your booking has been confirmed for the following event:" in result.stdout
    assert "--- text/html ---" in result.stdout
    assert "<html" in result.stdout


def test_preview_sms_prints_the_body(runner: CliRunner, tmp_path: Path) -> None:
    event = write_event(tmp_path, samples.booking_created())

    result = runner.invoke(
        app, ["preview", "booking_confirmation_fan", "--channel", "sms", "--event", str(event)]
    )

    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("Appointment Booking Confirmation\nHello Ada Lovelace,\n")


def test_preview_of_a_template_the_event_does_not_plan_lists_what_it_plans(
    runner: CliRunner, tmp_path: Path
) -> None:
    event = write_event(tmp_path, samples.booking_created())

    result = runner.invoke(app, ["preview", "password_reset", "--event", str(event)])

    assert result.exit_code == 1
    assert "plans no email with template 'password_reset'" in result.stderr
    assert (
        "it plans: email:booking_confirmation_fan, email:booking_notification_admin, "
        "sms:booking_confirmation_fan" in result.stderr
    )
    assert result.stdout == ""


def test_preview_of_an_sms_the_event_does_not_plan_fails(runner: CliRunner, tmp_path: Path) -> None:
    # The admin has no phone, so no admin SMS is planned.
    event = write_event(tmp_path, samples.booking_created())

    result = runner.invoke(
        app, ["preview", "booking_notification_admin", "--channel", "sms", "--event", str(event)]
    )

    assert result.exit_code == 1
    assert "plans no sms with template 'booking_notification_admin'" in result.stderr


def test_preview_of_an_invalid_event_fails(runner: CliRunner, tmp_path: Path) -> None:
    event = samples.booking_created()
    del event["fan"]
    path = write_event(tmp_path, event)

    result = runner.invoke(app, ["preview", "booking_confirmation_fan", "--event", str(path)])

    assert result.exit_code == 1
    assert "fan" in result.stderr


def test_preview_of_a_missing_event_file_fails(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["preview", "booking_confirmation_fan", "--event", str(tmp_path / "nope.json")]
    )

    assert result.exit_code == 1
    assert "error:" in result.stderr


# --- publish -----------------------------------------------------------------------


def test_publish_of_an_invalid_event_publishes_nothing(
    runner: CliRunner, tmp_path: Path, published: list[list[Any]]
) -> None:
    event = samples.booking_created()
    del event["schema_version"]
    path = write_lines(tmp_path, [json.dumps(event)])

    result = runner.invoke(app, ["publish", str(path)])

    assert result.exit_code == 1
    assert "error: line 1: schema_version" in result.stderr
    assert "nothing was published" in result.stderr
    assert published == []


def test_publish_names_the_line_of_the_invalid_event_and_publishes_none(
    runner: CliRunner, tmp_path: Path, published: list[list[Any]]
) -> None:
    bad = samples.user_registered(verification_url="ftp://example.com/verify")
    lines = [json.dumps(samples.user_registered()), "", json.dumps(bad)]
    path = write_lines(tmp_path, lines)

    result = runner.invoke(app, ["publish", str(path)])

    assert result.exit_code == 1
    assert "error: line 3: verification_url" in result.stderr
    assert "line 1" not in result.stderr
    assert "nothing was published" in result.stderr
    assert published == []
    assert result.stdout == ""


def test_publish_of_unparsable_json_publishes_nothing(
    runner: CliRunner, tmp_path: Path, published: list[list[Any]]
) -> None:
    path = write_lines(tmp_path, [json.dumps(samples.user_registered()), "{oops"])

    result = runner.invoke(app, ["publish", str(path)])

    assert result.exit_code == 1
    assert "error: line 2: not valid JSON" in result.stderr
    assert published == []


def test_publish_of_a_missing_file_publishes_nothing(
    runner: CliRunner, tmp_path: Path, published: list[list[Any]]
) -> None:
    result = runner.invoke(app, ["publish", str(tmp_path / "nope.jsonl")])

    assert result.exit_code == 1
    assert "nothing was published" in result.stderr
    assert published == []


def test_publish_prints_one_event_id_per_line(
    runner: CliRunner, tmp_path: Path, published: list[list[Any]]
) -> None:
    events = [samples.user_registered(), samples.booking_created()]
    path = write_lines(tmp_path, [json.dumps(event) for event in events])

    result = runner.invoke(app, ["publish", str(path)])

    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [event["event_id"] for event in events]
    assert published == [events]


def test_publish_reads_standard_input(runner: CliRunner, published: list[list[Any]]) -> None:
    event = samples.password_reset_requested()

    result = runner.invoke(app, ["publish", "-"], input=json.dumps(event, indent=2))

    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [event["event_id"]]


def test_publish_exits_2_when_the_broker_is_unreachable(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(events: list[Any]) -> list[str]:
        raise PublishError("broker redis://localhost:6379/0 unreachable")

    monkeypatch.setattr(notifier.client, "publish_many", unreachable)
    path = write_event(tmp_path, samples.user_registered())

    result = runner.invoke(app, ["publish", str(path)])

    assert result.exit_code == 2
    assert "unreachable" in result.stderr


def test_publish_refused_part_way_prints_the_event_ids_that_were_published(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = [samples.user_registered(), samples.user_registered()]
    first, second = (event["event_id"] for event in events)

    def half_full(batch: list[Any]) -> list[str]:
        raise PublishError(
            "Redis refused 1 of 2 events (…): event 0 was published; event 1 was not published",
            published=[first],
            not_published=[second],
        )

    monkeypatch.setattr(notifier.client, "publish_many", half_full)

    lines = "\n".join(json.dumps(event) for event in events)
    result = runner.invoke(app, ["publish", "-"], input=lines)

    assert result.exit_code == 2
    assert result.stdout.splitlines() == [first]
    assert "event 1 was not published" in result.stderr


# --- parse_input -------------------------------------------------------------------


def test_parse_input_reads_one_pretty_printed_object() -> None:
    event = samples.booking_created()

    assert parse_input(json.dumps(event, indent=2)) == [(1, event)]


def test_parse_input_numbers_a_pretty_printed_object_by_its_first_line() -> None:
    event = samples.user_registered()

    assert parse_input("\n\n" + json.dumps(event, indent=2) + "\n") == [(3, event)]


def test_parse_input_reads_json_lines_skipping_blank_lines() -> None:
    first, second = samples.user_registered(), samples.booking_cancelled()
    text = "\n".join([json.dumps(first), "", "   ", json.dumps(second), ""])

    assert parse_input(text) == [(1, first), (4, second)]


def test_parse_input_keeps_non_object_lines_for_validation_to_refuse() -> None:
    assert parse_input('{"a": 1}\n[1, 2]\n') == [(1, {"a": 1}), (2, [1, 2])]


def test_parse_input_names_the_line_that_is_not_json() -> None:
    text = "\n".join([json.dumps(samples.user_registered()), "", "{not json", "[]"])

    with pytest.raises(InvalidEventError) as raised:
        parse_input(text)

    (message,) = raised.value.errors
    assert message.startswith("line 3: not valid JSON")


def test_parse_input_reports_every_bad_line() -> None:
    with pytest.raises(InvalidEventError) as raised:
        parse_input("{\n{}\n}\n")

    assert [message.split(":")[0] for message in raised.value.errors] == ["line 1", "line 3"]


@pytest.mark.parametrize("text", ["", "  \n\n\t\n"], ids=["empty", "blank"])
def test_parse_input_refuses_empty_input(text: str) -> None:
    with pytest.raises(InvalidEventError, match="input is empty"):
        parse_input(text)


# --- dlq and stats: what reaches the operator's terminal ---------------------------------

# An event type and id a hostile producer chose: an OSC 8 hyperlink, a window title, a C1
# CSI, a right-to-left override, DEL, line erase and cursor up, and a line of its own.
HOSTILE_TYPE = (
    "\x1b]8;;https://evil.example/\x1b\\booking.created\x1b]8;;\x1b\\"
    "\x1b]0;pwned\x07\x9b2J\u202egnp.exe\u2066\x7f\nreplayed 00000000: forged"
)
HOSTILE_ID = "\x1b[2K\x1b[1Aok\r"
ACTIVE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


@pytest.fixture
def dead_letters(monkeypatch: pytest.MonkeyPatch) -> DeadLetterStore:
    """The store every dlq and stats command reads: fakeredis instead of REDIS_URL."""
    client = fakeredis.FakeRedis()
    monkeypatch.setattr(notifier.redis_clients, "redis_client", lambda settings: client)
    return DeadLetterStore(client)


@pytest.fixture
def hostile_entry(dead_letters: DeadLetterStore) -> DeadLetter:
    return dead_letters.reject(
        {"type": HOSTILE_TYPE, "event_id": HOSTILE_ID}, [f"type: unknown type {HOSTILE_TYPE}"]
    )


@pytest.mark.parametrize(
    "command",
    [
        ["dlq", "list"],
        ["dlq", "list", "--json"],
        ["dlq", "show", "{id}"],
        ["dlq", "show", "{id}", "--json"],
        ["dlq", "stats"],
        ["dlq", "stats", "--json"],
        ["dlq", "replay", "--all", "--dry-run"],
        ["dlq", "purge", "--all"],
        ["stats"],
        ["stats", "--json"],
    ],
    ids=" ".join,
)
def test_stored_text_reaches_the_terminal_inert(
    runner: CliRunner, hostile_entry: DeadLetter, command: list[str]
) -> None:
    result = runner.invoke(app, [part.format(id=hostile_entry.id) for part in command])

    output = result.stdout + result.stderr
    assert ACTIVE.search(output) is None, repr(output)
    assert "\nreplayed 00000000: forged" not in output


def test_show_prints_the_escapes_for_the_operator_to_read(
    runner: CliRunner, hostile_entry: DeadLetter
) -> None:
    result = runner.invoke(app, ["dlq", "show", hostile_entry.id])

    assert "\\u001b]8;;https://evil.example/" in result.stdout
    assert "\\u202egnp.exe" in result.stdout


def test_json_output_still_parses_to_the_stored_text(
    runner: CliRunner, hostile_entry: DeadLetter
) -> None:
    result = runner.invoke(app, ["dlq", "show", hostile_entry.id, "--json"])

    assert json.loads(result.stdout)["event_type"] == HOSTILE_TYPE


# --- dlq with a corrupt entry ------------------------------------------------------------


def plant_corrupt(store: DeadLetterStore, entry_id: str = "corrupt-1") -> None:
    store._redis.set(keys.dlq_entry(entry_id), b"{not json \x1b]0;pwned\x07")
    store._redis.zadd(keys.DLQ_INDEX, {entry_id: 1_764_151_200.0})


def test_list_json_shows_a_corrupt_entry_with_null_fields(
    runner: CliRunner, dead_letters: DeadLetterStore
) -> None:
    plant_corrupt(dead_letters)

    result = runner.invoke(app, ["dlq", "list", "--json"])

    assert result.exit_code == 0, result.stderr
    [row] = json.loads(result.stdout)
    assert row["id"] == "corrupt-1"
    assert row["status"] == "corrupt"
    assert row["failed_at"] == "2025-11-26T10:00:00.000Z"
    assert {name for name, value in row.items() if value is not None} == {
        "id",
        "status",
        "failed_at",
    }


def test_show_prints_a_corrupt_entry_raw_and_inert(
    runner: CliRunner, dead_letters: DeadLetterStore
) -> None:
    plant_corrupt(dead_letters)

    result = runner.invoke(app, ["dlq", "show", "corrupt-1"])

    assert result.exit_code == 0, result.stderr
    assert "corrupt" in result.stdout
    assert "{not json \\u001b]0;pwned\\u0007" in result.stdout


def test_show_json_of_a_corrupt_entry_holds_the_raw_document(
    runner: CliRunner, dead_letters: DeadLetterStore
) -> None:
    plant_corrupt(dead_letters)

    result = runner.invoke(app, ["dlq", "show", "corrupt-1", "--json"])

    shown = json.loads(result.stdout)
    assert (shown["status"], shown["raw"]) == ("corrupt", "{not json \x1b]0;pwned\x07")


def test_replay_reports_a_corrupt_entry_as_failed_and_keeps_it(
    runner: CliRunner, dead_letters: DeadLetterStore
) -> None:
    plant_corrupt(dead_letters)

    result = runner.invoke(app, ["dlq", "replay", "corrupt-1"])

    assert result.exit_code == 1
    assert "failed corrupt-1: corrupt entry" in result.stdout.splitlines()
    assert dead_letters.count() == 1


def test_purge_status_corrupt_deletes_only_the_corrupt_entries(
    runner: CliRunner, dead_letters: DeadLetterStore
) -> None:
    plant_corrupt(dead_letters)
    kept = dead_letters.reject({"type": "nope"}, ["type: unknown type"])

    result = runner.invoke(app, ["dlq", "purge", "--all", "--status", "corrupt", "--yes"])

    assert result.exit_code == 0, result.stderr
    assert [entry.id for entry in dead_letters] == [kept.id]


# --- dlq list: the address replay would send to ------------------------------------------


def test_list_shows_the_address_replay_sends_to(
    runner: CliRunner, dead_letters: DeadLetterStore
) -> None:
    delivery = plan(parse_event(samples.user_registered()))[0]
    entry = dead_letters.add_delivery(
        delivery, status="failed", error="PermanentError: 550", history=[]
    )
    document = json.loads(entry.model_dump_json())
    document["recipient"] = "mallory@evil.example"
    dead_letters._redis.set(keys.dlq_entry(entry.id), json.dumps(document))

    result = runner.invoke(app, ["dlq", "list", "--json"])

    [row] = json.loads(result.stdout)
    assert row["recipient"] == "a***@example.com"


def test_publish_prints_what_is_wrong_with_an_event_inert(
    runner: CliRunner, tmp_path: Path, published: list[list[Any]]
) -> None:
    # pydantic quotes the offending character of a UUID as it is.
    event = write_event(tmp_path, samples.user_registered(event_id="\x1b]0;pwned\x07"))

    result = runner.invoke(app, ["publish", str(event)])

    assert result.exit_code == 1
    assert ACTIVE.search(result.stdout + result.stderr) is None
    assert "\\u001b" in result.stderr


def test_publish_accepts_an_address_under_test_when_special_domains_are_allowed(
    runner: CliRunner,
    tmp_path: Path,
    published: list[list[Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    staging = make_settings(notifier_allow_special_domains=True)
    monkeypatch.setattr(notifier.settings, "get_settings", lambda: staging)
    event = samples.user_registered(user={**samples.FAN, "email": "ada@staging.test"})
    path = write_lines(tmp_path, [json.dumps(event)])

    result = runner.invoke(app, ["publish", str(path)])

    assert result.exit_code == 0, result.stderr
    assert published == [[event]]


# --- dlq at scale: paging, footer, filtered stats, usage errors, --all confirmation -------


def test_list_json_stays_an_array_and_the_footer_goes_to_stderr(
    runner: CliRunner, dead_letters: DeadLetterStore
) -> None:
    for _ in range(3):
        dead_letters.reject({"type": "nope"}, ["type: unknown type"])

    result = runner.invoke(app, ["dlq", "list", "--json", "--limit", "2", "--offset", "1"])

    assert result.exit_code == 0, result.stderr
    assert len(json.loads(result.stdout)) == 2
    assert result.stderr.strip() == "2 of 3 (after the first 1)"


def test_list_ends_with_how_many_of_how_many(
    runner: CliRunner, dead_letters: DeadLetterStore
) -> None:
    for _ in range(3):
        dead_letters.reject({"type": "nope"}, ["type: unknown type"])

    result = runner.invoke(app, ["dlq", "list", "--limit", "2"])

    assert result.stdout.splitlines()[-1] == "2 of 3"


def test_dlq_stats_takes_the_list_filters(runner: CliRunner, dead_letters: DeadLetterStore) -> None:
    dead_letters.reject({"type": "nope"}, ["type: unknown type"])
    dead_letters.add_delivery(
        plan(parse_event(samples.user_registered()))[0],
        status="failed",
        error="PermanentError: 550",
        history=[],
    )

    result = runner.invoke(app, ["dlq", "stats", "--json", "--status", "failed"])

    assert result.exit_code == 0, result.stderr
    counts = json.loads(result.stdout)
    assert (counts["total"], counts["by_status"]) == (1, {"failed": 1})


@pytest.mark.parametrize("command", ["replay", "purge"])
def test_neither_ids_nor_all_is_a_usage_error(
    runner: CliRunner, dead_letters: DeadLetterStore, command: str
) -> None:
    result = runner.invoke(app, ["dlq", command])

    assert result.exit_code == 2
    assert "give entry IDs, or --all" in result.stderr


def test_replay_all_off_a_terminal_without_yes_refuses(
    runner: CliRunner, dead_letters: DeadLetterStore
) -> None:
    dead_letters.reject({"type": "nope"}, ["type: unknown type"])

    result = runner.invoke(app, ["dlq", "replay", "--all"])

    assert result.exit_code == 2
    assert "add --yes" in result.stderr
    assert dead_letters.count() == 1


# --- trace and the replay of an undelivered SMS ------------------------------------------


def test_trace_prints_a_hostile_event_type_and_reasons_inert(
    runner: CliRunner, dead_letters: DeadLetterStore
) -> None:
    from notifier.redis_clients import redis_client
    from notifier.status_store import StatusStore

    store = StatusStore(redis_client(make_settings()), ttl=60)
    store.reject("evt-hostile", HOSTILE_TYPE, [f"type: unknown type {HOSTILE_TYPE}"], "dl-1")

    result = runner.invoke(app, ["trace", "evt-hostile"])

    assert result.exit_code == 0, result.stderr
    assert ACTIVE.search(result.stdout + result.stderr) is None, repr(result.stdout)
    assert "\nreplayed 00000000: forged" not in result.stdout


def test_dlq_replay_dry_run_says_an_undelivered_sms_goes_again_under_a_new_id(
    runner: CliRunner, dead_letters: DeadLetterStore
) -> None:
    sms = next(d for d in plan(parse_event(samples.booking_created())) if d.channel == "sms")
    entry = dead_letters.add_delivery(sms, status="undelivered", error="30003", history=[])

    result = runner.invoke(app, ["dlq", "replay", entry.id, "--dry-run"])

    assert result.exit_code == 0, result.stderr
    assert f"sent again as {sms.delivery_id}:r<n>" in result.stdout
