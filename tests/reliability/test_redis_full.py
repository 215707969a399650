"""Redis fills up (``maxmemory`` reached, ``noeviction``) under a running worker, then frees.

A dedicated ``redis-server`` is given a small ``maxmemory`` while a worker
sends a stream of emails, and a big key takes the rest: every write that
could grow memory is refused with ``OOM``. The worker must stay up, hold
or return its messages, back off (few commands a second against the full
Redis), and say "full" through health and metrics; once the key is gone,
everything accepted must be delivered, with duplicates only for the sends
in flight, each of them logged.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable

import kombu
import pytest
import redis

from notifier import keys
from notifier.app import create_app
from notifier.client import publish, publish_many
from notifier.deadletter import DeadLetterStore
from notifier.errors import PublishError
from notifier.testing import free_port, make_settings
from notifier.transport import Transport
from tests import samples
from tests.polling import eventually
from tests.reliability.conftest import (
    UNACKED,
    WORKER_PROCESSES,
    RedisServer,
    System,
    event_batch,
    operator_environment,
    planned_emails,
    report,
)
from tests.reliability.test_redis_faults import body_event_id

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

EVENTS = keys.EVENTS_QUEUE
FILLER = "test:filler"
FILLER_BYTES = 4 * 1024 * 1024
# Commands a second the whole deployment may send a full Redis: a backing-off
# worker (one pause command a second per channel, a restore try, a sweep and
# Celery's own heartbeat traffic) stays far below; a hot loop does thousands.
MAX_COMMANDS_PER_SECOND_WHILE_FULL = 60


def fill(client: redis.Redis) -> None:
    """Set ``maxmemory`` just above what is used, then take the rest with one big key.

    In chunks: a client's query buffer counts as used memory, so one big SET
    would be refused before it ran.
    """
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used + FILLER_BYTES)
    chunk = b"x" * 65536
    for _ in range(4 * FILLER_BYTES // len(chunk)):
        try:
            client.append(FILLER, chunk)
        except redis.exceptions.OutOfMemoryError:
            return
    pytest.fail("Redis did not fill up")


def commands_per_second(client: redis.Redis, seconds: float = 3.0) -> float:
    """Commands Redis processed per second over ``seconds``, our own two INFOs excluded."""
    before = int(client.info("stats")["total_commands_processed"])
    time.sleep(seconds)  # a rate over real time: there is no clock to inject into Redis
    after = int(client.info("stats")["total_commands_processed"])
    return (after - before - 1) / seconds


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def gauge(text: str, name: str) -> float | None:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def notifier_health(redis_url: str) -> dict[str, dict[str, str]]:
    """``notifier health --json`` as an operator runs it: the checks by name."""
    done = subprocess.run(
        [sys.executable, "-m", "notifier", "health", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=operator_environment(redis_url),
        check=False,
    )
    assert done.returncode == 1, done.stderr  # unhealthy
    return {check["name"]: check for check in json.loads(done.stdout)["checks"]}


def sent_log_lines(log: str) -> list[dict[str, object]]:
    """The worker's ``delivery.sent`` records (JSON lines)."""
    lines = []
    for line in log.splitlines():
        if '"delivery.sent"' not in line:
            continue
        try:
            record = json.loads(line[line.index("{") :])
        except ValueError:
            continue
        if record.get("event") == "delivery.sent":
            lines.append(record)
    return lines


def test_a_full_redis_keeps_the_worker_up_and_everything_is_delivered_once_freed(
    redis_server: RedisServer, make_system: Callable[[str], System]
) -> None:
    system = make_system(redis_server.url)
    metrics_port = free_port()
    system.configure(NOTIFIER_METRICS_PORT=str(metrics_port))
    events = event_batch(240, tag="full-")
    planned = planned_emails(events)
    worker = system.worker().wait_ready()
    admin = redis.Redis.from_url(redis_server.url)
    app = create_app(make_settings(redis_url=redis_server.url))
    try:
        system.publish(events)  # returned: every one accepted
        eventually(lambda: len(system.sink.messages) >= 30, 60, "sends under way")

        fill(admin)
        filled_at = time.monotonic()
        with pytest.raises(PublishError) as refused:
            publish(samples.user_registered(), app=app)

        time.sleep(4)  # let the worker run into the full Redis for a while
        rate = commands_per_second(admin)
        assert worker.running(), f"the worker exited:\n{worker.log_tail()}"
        health = notifier_health(redis_server.url)
        oom = eventually(
            lambda: gauge(scrape(metrics_port), "notifier_redis_oom"), 10, "the OOM gauge"
        )
        memory = gauge(scrape(metrics_port), "notifier_redis_memory_used_bytes")
        delivered_while_full = len(system.sink.messages)

        admin.delete(FILLER)  # memory freed; maxmemory stays where it was
        freed_at = time.monotonic()
        tally = system.settle(planned, timeout=90)
        settled_after = time.monotonic() - freed_at
    finally:
        app.close()
        admin.close()

    unrecorded = [r for r in sent_log_lines(worker.log()) if r.get("recorded") is False]
    logged = {str(r.get("delivery_id")) for r in unrecorded}
    report(
        "redis full",
        **tally.figures(),
        seconds_full=round(freed_at - filled_at, 1),
        delivered_while_full=delivered_while_full,
        commands_per_second_while_full=round(rate, 1),
        sends_unrecorded=len(unrecorded),
        seconds_to_settle_after_free=round(settled_after, 1),
    )
    assert worker.running(), f"the worker exited:\n{worker.log_tail()}"
    assert rate <= MAX_COMMANDS_PER_SECOND_WHILE_FULL, f"{rate:.0f} commands/s against full Redis"
    assert health["redis"]["status"] == "fail", health
    assert "full" in health["redis"]["detail"], health
    assert health["dead_letters"]["status"] == "ok", health  # still counted: reads work
    assert oom == 1.0
    assert memory is not None
    assert memory > FILLER_BYTES
    assert "Redis refused the event" in str(refused.value)
    assert "it was not published" in str(refused.value)
    assert tally.lost == set()
    assert tally.strangers == set()
    # The only duplicates: sends the SMTP server accepted while the ledger could
    # not record them, at most one per pool process, and each one logged.
    assert tally.duplicates <= WORKER_PROCESSES
    assert tally.duplicated <= logged


def queued_event_ids(client: redis.Redis) -> list[str]:
    """The event_ids waiting on notifier.events, oldest first."""
    return [body_event_id(json.loads(raw)) for raw in reversed(client.lrange(EVENTS, 0, -1))]


def test_publish_many_into_a_filling_redis_names_exactly_the_events_it_took(
    redis_server: RedisServer,
) -> None:
    admin = redis.Redis.from_url(redis_server.url)
    app = create_app(make_settings(redis_url=redis_server.url))
    events = [samples.user_registered() for _ in range(300)]
    try:
        publish(samples.user_registered(), app=app)  # queue declared, connection warm
        admin.delete(EVENTS)
        # Room for some dozens of events (about 1.5 KB each), not for 300.
        admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) + 150_000)
        with pytest.raises(PublishError) as refused:
            publish_many(events, app=app, batch_size=50)
        queued = queued_event_ids(admin)
    finally:
        app.close()
        admin.close()

    error = refused.value
    ids = [event["event_id"] for event in events]
    taken = len(error.published)
    report("publish_many into a full redis", events=len(ids), published=taken)
    assert 0 < taken < len(ids)
    assert error.published == queued == ids[:taken]
    assert error.not_published == ids[taken:]
    assert error.uncertain == []
    assert f"events 0-{taken - 1} were published" in str(error)
    assert f"events {taken}-{len(ids) - 1} were not published" in str(error)
    assert "Redis is full" in str(error)


def test_a_single_publish_refused_by_a_full_redis_says_it_was_not_published(
    redis_server: RedisServer,
) -> None:
    admin = redis.Redis.from_url(redis_server.url)
    app = create_app(make_settings(redis_url=redis_server.url))
    event = samples.user_registered()
    try:
        publish(samples.user_registered(), app=app)
        admin.delete(EVENTS)
        fill(admin)
        with pytest.raises(PublishError) as refused:
            publish(event, app=app)
        queued = queued_event_ids(admin)
    finally:
        app.close()
        admin.close()

    assert str(refused.value).startswith("Redis refused the event (OutOfMemoryError")
    assert str(refused.value).endswith("Redis is full (maxmemory reached)): it was not published")
    assert refused.value.not_published == [event["event_id"]]
    assert queued == []


def test_a_worker_started_on_a_full_redis_waits_for_room_instead_of_exiting(
    redis_server: RedisServer, make_system: Callable[[str], System]
) -> None:
    system = make_system(redis_server.url)
    events = event_batch(20, tag="late-")
    planned = planned_emails(events)
    system.publish(events)
    admin = redis.Redis.from_url(redis_server.url)
    try:
        fill(admin)
        worker = system.worker()  # as a restart policy would start it: into the full Redis
        time.sleep(6)  # long enough for several restarts of its consumer
        rate = commands_per_second(admin)
        alive = worker.running()
        admin.delete(FILLER)
        tally = system.settle(planned, timeout=60)
    finally:
        admin.close()

    report("worker started on a full redis", **tally.figures(), commands_per_second=round(rate, 1))
    assert alive, f"the worker exited:\n{worker.log_tail()}"
    assert worker.running()
    assert rate <= MAX_COMMANDS_PER_SECOND_WHILE_FULL, f"{rate:.0f} commands/s against full Redis"
    assert tally.lost == set()
    assert tally.duplicates == 0


def test_a_requeue_a_full_redis_refuses_keeps_the_message_and_is_done_once_it_has_room(
    redis_server: RedisServer,
) -> None:
    admin = redis.Redis.from_url(redis_server.url)
    connection = kombu.Connection(redis_server.url, transport=Transport)
    try:
        channel = connection.channel()
        queue = kombu.Queue("test.full", kombu.Exchange("test.full"), "test.full")
        kombu.Producer(channel).publish(
            {"n": 1}, exchange=queue.exchange, routing_key="test.full", declare=[queue]
        )
        message = queue(channel).get(no_ack=False)
        assert message is not None
        qos = channel.qos  # type: ignore[attr-defined]  # the virtual channel's, ours
        fill(admin)

        message.reject(requeue=True)  # stock kombu: OutOfMemoryError, and the worker stops

        held = (admin.llen("test.full"), admin.hlen(UNACKED), dict(qos.pending))
        admin.delete(FILLER)
        qos.retry_pending()
        after = (admin.llen("test.full"), admin.hlen(UNACKED), dict(qos.pending))
    finally:
        connection.release()
        admin.close()

    assert held == (0, 1, {message.delivery_tag: True})  # still in unacked: nothing lost
    assert after == (1, 0, {})  # back on its queue


def test_dead_letters_can_be_purged_and_taken_from_a_full_redis_and_stay_counted(
    redis_server: RedisServer,
) -> None:
    # Freeing memory on a full Redis means purging or replaying dead letters
    # (docs/operations.md): the scripts that remove them must not be refused.
    admin = redis.Redis.from_url(redis_server.url)
    try:
        store = DeadLetterStore(admin)
        entries = [store.reject({"type": "nope", "n": n}, ["type: unknown type"]) for n in range(5)]
        fill(admin)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            store.reject({"type": "nope"}, ["type: unknown type"])

        purged = store.purge(entries[:2])
        taken = store.take_many(entries[2:3])
        stats = store.stats()
    finally:
        admin.close()

    assert (purged, [entry.id for entry in taken]) == (2, [entries[2].id])
    assert (stats["total"], stats["by_status"]) == (2, {"rejected": 2})
