"""The real ``notifier`` command against real Redis holding corrupt and hostile dead letters.

Each corrupt-entry case is the issue's repro: what ``redis-cli set
notifier:dlq:entry:corrupt-1 '{not json'`` and ``zadd notifier:dlq:index 1
corrupt-1`` leave behind. Every command must go on working and show it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
import redis

from notifier import keys
from notifier.app import NotifierCelery
from notifier.client import publish
from notifier.deadletter import DeadLetterStore
from notifier.planner import delivery_id
from notifier.settings import Settings
from notifier.testing import SmtpSink
from tests import samples
from tests.conftest import make_settings
from tests.integration.test_failures_and_replay import notifier_cli
from tests.polling import eventually

pytestmark = pytest.mark.integration

ACTIVE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


@pytest.fixture
def redis_only(redis_url: str) -> Settings:
    """Settings for this test's flushed Redis database; no worker, SMTP or Twilio needed."""
    return make_settings(redis_url=redis_url)


@pytest.fixture
def client(redis_only: Settings) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_only.redis_url)
    yield connection
    connection.close()


@pytest.fixture
def corrupt(client: redis.Redis) -> str:
    client.set(keys.dlq_entry("corrupt-1"), "{not json")
    client.zadd(keys.DLQ_INDEX, {"corrupt-1": 1})
    return "corrupt-1"


@pytest.fixture
def good(client: redis.Redis) -> str:
    return DeadLetterStore(client).reject({"type": "nope"}, ["type: unknown type 'nope'"]).id


def test_list_shows_a_corrupt_entry_beside_the_good_ones(
    redis_only: Settings, corrupt: str, good: str
) -> None:
    result = notifier_cli(redis_only, "dlq", "list", "--json")

    assert result.returncode == 0, result.stderr
    rows = {row["id"]: row for row in json.loads(result.stdout)}
    assert rows[corrupt]["status"] == "corrupt"
    assert rows[corrupt]["failed_at"] == "1970-01-01T00:00:01.000Z"
    assert rows[good]["status"] == "rejected"


def test_dlq_stats_counts_a_corrupt_entry(redis_only: Settings, corrupt: str, good: str) -> None:
    result = notifier_cli(redis_only, "dlq", "stats", "--json")

    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout)
    assert counts["total"] == 2
    assert counts["by_status"] == {"corrupt": 1, "rejected": 1}


def test_show_prints_a_corrupt_entry_raw(redis_only: Settings, corrupt: str) -> None:
    result = notifier_cli(redis_only, "dlq", "show", corrupt)

    assert result.returncode == 0, result.stderr
    assert "{not json" in result.stdout


def test_replay_all_replays_the_good_and_reports_the_corrupt(
    redis_only: Settings, client: redis.Redis, corrupt: str, good: str
) -> None:
    result = notifier_cli(redis_only, "dlq", "replay", "--all", "--yes")

    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert f"failed {corrupt}: corrupt entry" in lines
    assert f"replayed {good}: re-published to notifier.handle_event" in lines
    assert client.zrange(keys.DLQ_INDEX, 0, -1) == [corrupt.encode()]


def test_purge_deletes_a_corrupt_entry(
    redis_only: Settings, client: redis.Redis, corrupt: str
) -> None:
    result = notifier_cli(redis_only, "dlq", "purge", corrupt, "--yes")

    assert result.returncode == 0, result.stderr
    assert "1 purged" in result.stdout
    assert client.exists(keys.dlq_entry(corrupt), keys.DLQ_INDEX) == 0


def test_notifier_stats_counts_a_corrupt_entry(
    redis_only: Settings, corrupt: str, good: str
) -> None:
    result = notifier_cli(redis_only, "stats", "--json")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["dead_letters"]["total"] == 2


def test_since_goes_on_working_when_a_failure_time_is_not_a_date(
    redis_only: Settings, client: redis.Redis, good: str
) -> None:
    document = json.loads(client.get(keys.dlq_entry(good)) or b"")
    client.set(keys.dlq_entry(good), json.dumps({**document, "failed_at": "last tuesday"}))

    result = notifier_cli(redis_only, "dlq", "list", "--since", "1h", "--json")

    assert result.returncode == 0, result.stderr
    [row] = json.loads(result.stdout)
    assert (row["id"], row["status"]) == (good, "corrupt")


def test_escape_sequences_in_stored_text_reach_the_terminal_inert(
    redis_only: Settings, client: redis.Redis
) -> None:
    hostile = "\x1b]8;;https://evil.example/\x1b\\x\x1b]8;;\x1b\\\x1b]0;pwned\x07\x9b2J\u202e"
    entry = DeadLetterStore(client).reject(
        {"type": hostile, "event_id": "\x1b[2K"}, [f"type: {hostile}"]
    )

    for command in (["list"], ["show", entry.id], ["stats"], ["replay", "--all", "--dry-run"]):
        result = notifier_cli(redis_only, "dlq", *command)
        assert result.returncode == 0, result.stderr
        assert ACTIVE.search(result.stdout + result.stderr) is None, (command, result.stdout)


def test_a_worker_records_a_failure_under_a_new_id_when_the_delivery_s_entry_is_corrupt(
    app: NotifierCelery, smtp_sink: SmtpSink, dead_letters: DeadLetterStore, settings: Settings
) -> None:
    event = samples.user_registered()
    planted = delivery_id(
        event["event_id"], "email", "registration_confirmation", "ada@example.com"
    )
    client = redis.Redis.from_url(settings.redis_url)
    client.set(keys.dlq_entry(planted), "{not json")
    client.zadd(keys.DLQ_INDEX, {planted: 1})
    client.close()
    smtp_sink.reject_recipient("ada@example.com")

    publish(event, app=app)

    entries = eventually(
        lambda: [entry for entry in dead_letters if entry.status == "failed"],
        what="the failure recorded",
    )
    [entry] = entries
    assert entry.id != planted
    assert entry.delivery is not None
    assert entry.delivery.delivery_id == planted
    assert "550" in entry.error
