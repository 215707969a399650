"""Metrics and the recent-outcome tallies: private registries, fakeredis, no worker."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from typer.testing import CliRunner

import notifier.redis_clients
import notifier.settings
from notifier import keys, metrics
from notifier.channels import Receipt
from notifier.cli import app as cli
from notifier.compose import ComposedEmail
from notifier.deadletter import DeadLetterStore
from notifier.deadlines import Deadline
from notifier.errors import TransientError
from notifier.events import parse_event
from notifier.metrics import endpoint
from notifier.metrics.dead_letters import dead_letter_summary
from notifier.metrics.endpoint import RedisCollector
from notifier.metrics.instruments import Metrics
from notifier.metrics.queues import queue_lengths
from notifier.metrics.tallies import RecentOutcomes, recent_outcomes
from notifier.metrics.unacked import held_messages
from notifier.pipeline import handle_event
from notifier.planner import plan
from notifier.redis_clients import quick_redis
from notifier.runtime import Runtime
from notifier.testing import free_port
from tests import samples
from tests.conftest import make_settings
from tests.unit.full_redis import MIB, ReportingMemory

ROOT = Path(__file__).resolve().parents[2]


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A sample's value, 0 when the series does not exist yet."""
    return registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


# --- the metric objects ---------------------------------------------------------------


def test_delivery_is_counted_by_channel_type_and_outcome(registry: CollectorRegistry) -> None:
    recorder = Metrics(registry)

    recorder.delivery("email", "booking.created", "sent")
    recorder.delivery("email", "booking.created", "sent")
    recorder.delivery("sms", "booking.created", "retried")

    labels = {"channel": "email", "type": "booking.created", "outcome": "sent"}
    assert value(registry, "notifier_deliveries_total", **labels) == 2
    labels = {"channel": "sms", "type": "booking.created", "outcome": "retried"}
    assert value(registry, "notifier_deliveries_total", **labels) == 1


def test_an_unsupported_event_type_is_counted_as_unknown(registry: CollectorRegistry) -> None:
    # A producer's typo must not mint a new time series per value.
    Metrics(registry).delivery(None, "booking.created.v2-typo", "rejected")

    labels = {"channel": "none", "type": "unknown", "outcome": "rejected"}
    assert value(registry, "notifier_deliveries_total", **labels) == 1


def test_accepted_events_are_counted_by_type(registry: CollectorRegistry) -> None:
    Metrics(registry).event("password.reset_requested")

    assert value(registry, "notifier_events_total", type="password.reset_requested") == 1


def test_a_send_is_observed_by_channel_and_provider(registry: CollectorRegistry) -> None:
    Metrics(registry).send(Receipt("email", "fallback", "<id>"), 0.02)

    labels = {"channel": "email", "provider": "fallback"}
    assert value(registry, "notifier_send_duration_seconds_count", **labels) == 1
    assert value(registry, "notifier_send_duration_seconds_bucket", le="0.025", **labels) == 1
    assert value(registry, "notifier_send_duration_seconds_bucket", le="0.01", **labels) == 0


def test_timed_send_returns_the_receipt_and_observes_it() -> None:
    labels = {"channel": "sms", "provider": "timed-test"}
    before = value(REGISTRY, "notifier_send_duration_seconds_count", **labels)
    receipt = Receipt("sms", "timed-test", "SM1")

    assert metrics.timed_send(lambda: receipt) is receipt
    assert value(REGISTRY, "notifier_send_duration_seconds_count", **labels) == before + 1


def test_timed_send_lets_a_failure_through_without_observing() -> None:
    before = sum(
        s.value
        for family in REGISTRY.collect()
        if family.name == "notifier_send_duration_seconds"
        for s in family.samples
        if s.name.endswith("_count")
    )

    def failing() -> Receipt:
        raise TransientError("451 try later")

    with pytest.raises(TransientError):
        metrics.timed_send(failing)
    after = sum(
        s.value
        for family in REGISTRY.collect()
        if family.name == "notifier_send_duration_seconds"
        for s in family.samples
        if s.name.endswith("_count")
    )
    assert after == before


# --- the pipeline records through them -------------------------------------------------


@dataclass
class RecordingScheduler:
    scheduled: list[Any] = field(default_factory=list)

    def schedule(self, job: Any, countdown: float) -> None:
        self.scheduled.append((job, countdown))

    def publish_event(self, event: dict[str, Any]) -> None:
        self.scheduled.append((event, 0))

    def schedule_many(self, jobs: Sequence[Any], events: Sequence[Any] = ()) -> None:
        for job in jobs:
            self.schedule(job, 0)
        for event in events:
            self.publish_event(event)


@dataclass
class AcceptingSmtp:
    sent: list[ComposedEmail] = field(default_factory=list)

    def send(
        self,
        message: ComposedEmail,
        sender: str,
        recipient: str,
        deadline: Deadline | None = None,
    ) -> Receipt:
        self.sent.append(message)
        return Receipt("email", "metrics-test-smtp", str(len(self.sent)))

    def close(self) -> None:
        pass


@pytest.fixture
def rt(client: fakeredis.FakeRedis) -> Iterator[Runtime]:
    """A Runtime whose every Redis use is fakeredis and whose SMTP accepts everything."""
    production = Runtime.from_settings(
        make_settings(notifier_sms_mps=0), RecordingScheduler(), client=client
    )
    yield dataclasses.replace(production, smtp=AcceptingSmtp())
    client.close()


def test_the_pipeline_counts_an_accepted_event_and_its_sent_email(rt: Runtime) -> None:
    sent = {"channel": "email", "type": "user.registered", "outcome": "sent"}
    timed = {"channel": "email", "provider": "metrics-test-smtp"}
    before = (
        value(REGISTRY, "notifier_deliveries_total", **sent),
        value(REGISTRY, "notifier_events_total", type="user.registered"),
        value(REGISTRY, "notifier_send_duration_seconds_count", **timed),
    )

    handle_event(samples.user_registered(), rt)

    assert value(REGISTRY, "notifier_deliveries_total", **sent) == before[0] + 1
    assert value(REGISTRY, "notifier_events_total", type="user.registered") == before[1] + 1
    assert value(REGISTRY, "notifier_send_duration_seconds_count", **timed) == before[2] + 1


def test_the_pipeline_counts_rejected_input(rt: Runtime) -> None:
    rejected = {"channel": "none", "type": "unknown", "outcome": "rejected"}
    before = value(REGISTRY, "notifier_deliveries_total", **rejected)

    handle_event({"type": "no.such.event"}, rt)

    assert value(REGISTRY, "notifier_deliveries_total", **rejected) == before + 1


# --- recent outcomes for `notifier stats` ------------------------------------------------

NOW = 1_800_000_000.0  # a fixed epoch second, so minute buckets are predictable


def test_flush_adds_tallies_to_the_minute_hash_with_a_ttl(client: fakeredis.FakeRedis) -> None:
    recent = RecentOutcomes(clock=lambda: NOW)
    recent.record("email", "sent")
    recent.record("email", "sent")
    recent.record("sms", "dead")

    recent.flush(client)

    key = keys.stats_outcomes(int(NOW // 60))
    assert client.hgetall(key) == {b"email:sent": b"2", b"sms:dead": b"1"}
    assert 0 < client.ttl(key) <= keys.STATS_OUTCOMES_TTL
    assert recent.pending() == 0


def test_recent_outcomes_reads_the_last_hour_only(client: fakeredis.FakeRedis) -> None:
    now_minute = int(NOW // 60)
    client.hset(keys.stats_outcomes(now_minute), "email:sent", 3)
    client.hset(keys.stats_outcomes(now_minute - 59), "email:sent", 2)
    client.hset(keys.stats_outcomes(now_minute - 60), "email:sent", 100)  # 61 minutes ago
    client.hset(keys.stats_outcomes(now_minute - 5), "none:rejected", 1)

    assert recent_outcomes(client, now=NOW) == {"email": {"sent": 5}, "none": {"rejected": 1}}


def test_flush_soon_writes_at_once_then_batches_within_the_interval(
    client: fakeredis.FakeRedis,
) -> None:
    recent = RecentOutcomes(clock=lambda: NOW, interval=0.2)
    key = keys.stats_outcomes(int(NOW // 60))

    recent.record("email", "sent")
    recent.flush_soon(client)
    recent.record("email", "sent")
    recent.flush_soon(client)

    assert client.hget(key, "email:sent") == b"1"  # the second waits for the batch
    deadline = time.monotonic() + 5
    while client.hget(key, "email:sent") != b"2" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.hget(key, "email:sent") == b"2"


def test_a_failed_flush_drops_the_tallies_without_raising() -> None:
    dead_end = quick_redis(f"redis://127.0.0.1:{free_port()}/0")
    recent = RecentOutcomes(clock=lambda: NOW)
    recent.record("email", "sent")

    recent.flush(dead_end)

    assert recent.pending() == 0


# --- reads of Redis ------------------------------------------------------------------


def test_queue_lengths_count_priority_lists_too(client: fakeredis.FakeRedis) -> None:
    client.rpush(keys.EMAIL_QUEUE, "a", "b")
    client.rpush(keys.EMAIL_QUEUE + "\x06\x169", "c")
    client.rpush(keys.SMS_QUEUE, "d")

    assert queue_lengths(client) == {
        keys.EVENTS_QUEUE: 0,
        keys.EMAIL_QUEUE: 3,
        keys.SMS_QUEUE: 1,
        keys.CALLBACKS_QUEUE: 0,
    }


def _unacked(queue: str, eta: datetime | None) -> str:
    headers = {"task": "notifier.deliver", "eta": eta.isoformat() if eta else None}
    return json.dumps([{"headers": headers, "body": "..."}, queue, queue])


def test_held_messages_count_retries_waiting_for_their_countdown(
    client: fakeredis.FakeRedis,
) -> None:
    now = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)
    client.hset("unacked", "t1", _unacked(keys.EMAIL_QUEUE, now + timedelta(seconds=30)))
    client.hset("unacked", "t2", _unacked(keys.EMAIL_QUEUE, None))
    client.hset("unacked", "t3", _unacked(keys.SMS_QUEUE, now - timedelta(seconds=1)))

    held = held_messages(client, now=now)

    assert held.total == 3
    assert (held.by_queue[keys.EMAIL_QUEUE].total, held.by_queue[keys.EMAIL_QUEUE].scheduled) == (
        2,
        1,
    )
    assert (held.by_queue[keys.SMS_QUEUE].total, held.by_queue[keys.SMS_QUEUE].scheduled) == (1, 0)


def test_the_redis_collector_reports_dead_letters_and_queues(client: fakeredis.FakeRedis) -> None:
    client.zadd(keys.DLQ_INDEX, {"a": 1, "b": 2})
    client.rpush(keys.SMS_QUEUE, "x")
    registry = CollectorRegistry()
    registry.register(RedisCollector(client))

    assert registry.get_sample_value("notifier_redis_up") == 1
    assert registry.get_sample_value("notifier_dead_letters") == 2
    assert registry.get_sample_value("notifier_queue_length", {"queue": keys.SMS_QUEUE}) == 1


def test_the_redis_collector_reports_how_many_emails_the_outage_hold_keeps(
    client: fakeredis.FakeRedis,
) -> None:
    client.zadd(keys.HOLD_SINCE, {"d1": 1, "d2": 2, "d3": 3})
    registry = CollectorRegistry()
    registry.register(RedisCollector(client))

    assert registry.get_sample_value("notifier_held_emails") == 3


def test_the_redis_collector_reports_a_full_redis_as_oom() -> None:
    registry = CollectorRegistry()
    registry.register(RedisCollector(ReportingMemory(used=21 * MIB, maximum=20 * MIB)))

    assert registry.get_sample_value("notifier_redis_oom") == 1
    assert registry.get_sample_value("notifier_redis_memory_used_bytes") == 21 * MIB
    assert registry.get_sample_value("notifier_redis_memory_max_bytes") == 20 * MIB


def test_the_redis_collector_reports_oom_0_while_redis_has_room() -> None:
    registry = CollectorRegistry()
    registry.register(RedisCollector(ReportingMemory(used=10 * MIB, maximum=20 * MIB)))

    assert registry.get_sample_value("notifier_redis_oom") == 0
    assert registry.get_sample_value("notifier_redis_memory_used_bytes") == 10 * MIB


def test_the_redis_collector_reports_redis_down_and_nothing_else() -> None:
    registry = CollectorRegistry()
    registry.register(RedisCollector(quick_redis(f"redis://127.0.0.1:{free_port()}/0")))

    assert registry.get_sample_value("notifier_redis_up") == 0
    assert registry.get_sample_value("notifier_dead_letters") is None


def test_dead_letters_are_grouped_by_fingerprint_with_redacted_errors(
    client: fakeredis.FakeRedis,
) -> None:
    store = DeadLetterStore(client)
    emails = [d for d in plan(parse_event(samples.booking_created())) if d.channel == "email"]
    for delivery in emails:
        store.add_delivery(
            delivery,
            status="failed",
            error=f"PermanentError: 550 5.1.1 <{delivery.address}> unknown",
            history=[],
        )
    store.reject({"type": "nope"}, ["type: unknown type 'nope'"])

    summary = dead_letter_summary(client)

    assert summary["total"] == 3
    (biggest, group), *_ = summary["by_fingerprint"].items()
    assert biggest.startswith("PermanentError:")
    assert group["count"] == 2
    assert group["status"] == {"failed": 2}
    assert "@example.com>" in group["error"]
    assert "grace@example.com" not in group["error"]
    assert "ada@example.com" not in group["error"]


# --- multiprocess set-up and the endpoint ----------------------------------------------


def test_a_configured_multiprocess_dir_is_wiped_of_stale_counts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "counter_123.db").write_bytes(b"stale")
    (tmp_path / "keep.txt").write_text("not ours")
    monkeypatch.setenv(endpoint.MULTIPROC_ENV, str(tmp_path))

    assert endpoint.prepare_multiprocess() == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_without_a_configured_dir_a_private_one_is_made_and_exported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(endpoint.MULTIPROC_ENV, raising=False)

    directory = endpoint.prepare_multiprocess()
    try:
        assert directory.is_dir()
        assert os.environ[endpoint.MULTIPROC_ENV] == str(directory)
    finally:
        endpoint.remove_private_dir(directory)
    assert not directory.exists()


def test_importing_the_worker_module_does_not_import_prometheus_client() -> None:
    # prometheus_client picks in-memory or multiprocess values on import; the
    # worker must get to set PROMETHEUS_MULTIPROC_DIR first.
    probe = "import sys, worker; print('prometheus_client' in sys.modules)"
    environment = {k: v for k, v in os.environ.items() if k != endpoint.MULTIPROC_ENV}
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "False"


def test_no_endpoint_is_served_when_the_port_is_zero() -> None:
    assert endpoint.serve(make_settings(notifier_metrics_port=0)) is None


def test_a_busy_port_is_logged_and_the_worker_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(endpoint.MULTIPROC_ENV, raising=False)
    settings = make_settings(notifier_metrics_port=free_port(), redis_url="redis://127.0.0.1:1/0")
    with endpoint.serving(settings) as first:
        assert first is not None
        assert endpoint.serve(settings) is None


def test_the_endpoint_serves_the_metrics_and_the_redis_gauges(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(endpoint.MULTIPROC_ENV, raising=False)
    metrics.record_event("user.registered")
    port = free_port()
    # Redis on a closed port: the endpoint still answers, with redis_up 0.
    closed = f"redis://127.0.0.1:{free_port()}/0"
    settings = make_settings(notifier_metrics_port=port, redis_url=closed)
    with (
        endpoint.serving(settings, host="127.0.0.1"),
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response,
    ):
        body = response.read().decode()

    assert 'notifier_events_total{type="user.registered"}' in body
    assert "notifier_redis_up 0.0" in body


# --- `notifier stats` -------------------------------------------------------------------


def test_stats_json_reports_queues_recent_outcomes_and_dead_letters(
    monkeypatch: pytest.MonkeyPatch, client: fakeredis.FakeRedis
) -> None:
    monkeypatch.setattr(notifier.redis_clients, "redis_client", lambda _settings: client)
    monkeypatch.setattr(notifier.settings, "get_settings", make_settings)
    client.rpush(keys.EMAIL_QUEUE, "m1", "m2")
    recent = RecentOutcomes()
    recent.record("email", "sent")
    recent.record("email", "retried")
    recent.flush(client)
    DeadLetterStore(client).reject({"type": "nope"}, ["type: unknown type 'nope'"])

    result = CliRunner().invoke(cli, ["stats", "--json"])

    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["queues"][keys.EMAIL_QUEUE] == {"ready": 2, "held": 0, "scheduled": 0}
    assert document["outcomes_last_hour"]["by_outcome"] == {"retried": 1, "sent": 1}
    assert document["dead_letters"]["total"] == 1


def test_stats_exits_2_when_redis_is_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    monkeypatch.setattr(notifier.settings, "get_settings", lambda: make_settings(redis_url=closed))

    result = CliRunner().invoke(cli, ["stats"])

    assert result.exit_code == 2
    assert "cannot read Redis" in result.output


def test_a_detached_client_gets_no_more_background_flushes(
    client: fakeredis.FakeRedis,
) -> None:
    # The thread's own tick is an hour away: the test runs the next one itself.
    recent = RecentOutcomes(clock=lambda: NOW, interval=3600)
    key = keys.stats_outcomes(int(NOW // 60))
    recent.record("email", "sent")
    recent.flush_soon(client)
    recent.record("email", "sent")
    recent.flush_soon(client)  # the second is left to the background thread

    recent.detach(client)  # as Runtime.close() does before closing the client
    recent.flush_due()  # the background thread's next tick

    assert client.hget(key, "email:sent") == b"1"
    assert recent.pending() == 1
