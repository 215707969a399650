"""The dead-letter store's counts and the streaming replay against real Redis (issue 16):
concurrent writers, removers and replays keep the counters exact; ``dlq replay`` prints
each result as it happens and re-enqueues every entry once; the benchmark's smoke size."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from bench.dlq import entries
from notifier import keys
from notifier.app import NotifierCelery
from notifier.deadletter import DeadLetterStore
from notifier.settings import Settings
from tests.conftest import make_settings
from tests.integration.test_failures_and_replay import notifier_cli
from tests.polling import eventually

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def recount(store: DeadLetterStore) -> dict[str, dict[str, int]]:
    by: dict[str, Counter[str]] = {"status": Counter(), "channel": Counter(), "fp": Counter()}
    for entry in store:
        by["status"][entry.status] += 1
        by["channel"][entry.channel or "none"] += 1
        by["fp"][entry.fingerprint] += 1
    return {name: dict(counter) for name, counter in by.items()}


def test_counts_stay_exact_under_concurrent_writers_removers_and_takers(redis_url: str) -> None:
    seeded = list(entries(1200, now=datetime.now(UTC)))
    client = redis.Redis.from_url(redis_url)
    store = DeadLetterStore(client)
    store.add_many(seeded[:600])

    def write() -> None:
        DeadLetterStore(redis.Redis.from_url(redis_url)).add_many(seeded[600:], chunk=50)

    def remove() -> None:
        mine = DeadLetterStore(redis.Redis.from_url(redis_url))
        for entry in seeded[:300]:
            mine.remove(entry.id)

    def take() -> None:
        mine = DeadLetterStore(redis.Redis.from_url(redis_url))
        for start in range(200, 600, 25):
            mine.take_many([e for e in seeded[start : start + 25] if e.status != "rejected"])

    threads = [threading.Thread(target=job) for job in (write, remove, take, take, remove)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    stats = store.stats()
    expected = recount(store)
    assert stats["total"] == store.count() == sum(expected["status"].values())
    assert (stats["by_status"], stats["by_channel"], stats["by_fingerprint"]) == (
        expected["status"],
        expected["channel"],
        expected["fp"],
    )
    assert int(client.hlen(keys.DLQ_FACETS)) == store.count()


@pytest.fixture
def redis_only(redis_url: str) -> Settings:
    return make_settings(redis_url=redis_url)


def test_replay_all_prints_each_result_and_re_enqueues_every_entry_once(
    redis_only: Settings, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    seeded = list(entries(450, now=datetime.now(UTC)))
    DeadLetterStore(client).add_many(seeded)

    result = notifier_cli(redis_only, "dlq", "replay", "--all", "--yes")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    replayed = {line.split()[1].rstrip(":") for line in lines if line.startswith("replayed ")}
    assert replayed == {entry.id for entry in seeded}
    assert lines[-1] == "450 replayed, 0 could not be replayed"
    queued = sum(int(client.llen(queue)) for queue in keys.QUEUES)
    assert queued == 450
    assert DeadLetterStore(client).count() == 0


@pytest.mark.timeout(120)
def test_the_dlq_benchmark_runs_end_to_end_at_its_smoke_size(redis_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.dlq", "--entries", "2000", "--redis-url", redis_url],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["entries"] == 2000
    assert result["bytes_per_entry"] > 0
    assert result["replay"]["replayed"] == result["replay"]["entries"] > 0
    assert {m["name"] for m in result["measurements"]} >= {"dlq list --limit 50", "dlq stats"}
    assert redis.Redis.from_url(redis_url).dbsize() == 0  # flushed after


def test_a_worker_removes_dead_letters_older_than_the_retention(
    worker_for: Callable[[Settings], NotifierCelery],
    settings_for: Callable[..., Settings],
    redis_url: str,
) -> None:
    client = redis.Redis.from_url(redis_url)
    now = datetime.now(UTC)
    old = DeadLetterStore(client, clock=lambda: now - timedelta(seconds=30))
    for number in range(30):
        old.reject({"type": "nope", "n": number}, ["type: unknown type"])
    kept = DeadLetterStore(client, clock=lambda: now + timedelta(hours=1)).reject(
        {"type": "nope"}, ["type: unknown type"]
    )

    worker_for(settings_for(notifier_dlq_retention=2))

    store = DeadLetterStore(client)
    eventually(lambda: store.count() == 1, timeout=20, what="the old entries removed")
    assert [entry.id for entry in store] == [kept.id]
    assert store.stats()["removed_by_retention"] == 30
