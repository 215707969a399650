"""Redis Sentinel: a worker and a producer on ``REDIS_URL=sentinel://…`` ride out a failover.

Real processes throughout (``sentinel_cluster``): a master, a replica and
three Sentinels on loopback ports; a ``celery -A worker worker`` subprocess;
events published through ``notifier.client`` over the same Sentinel URL; an
SMTP sink. The master is SIGKILLed mid-stream, or demoted under a running
worker, and every accepted event must still end delivered.

Figures (``pytest -s`` prints a ``RELIABILITY`` line): events accepted and
refused (``PublishError`` during the switch: the producer keeps those),
emails lost and duplicated, and the recovery time: from the kill to the
first email of an event published through the new master.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from redis.sentinel import SentinelConnectionPool

from notifier.app import create_app
from notifier.client import publish_many
from notifier.errors import PublishError
from notifier.redis_clients import redis_client
from notifier.testing import make_settings
from tests.reliability.conftest import (
    System,
    event_batch,
    operator_environment,
    planned_emails,
    received_ids,
    report,
)
from tests.reliability.sentinel_cluster import MASTER_NAME, SentinelCluster

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

RATE = 20.0  # events per second
STREAM_SECONDS = 10.0
KILL_AFTER = 3.0  # seconds into the stream

# The stores' client retries for about 10 s (notifier/redis_clients.py): a
# task caught by the kill must not reach its hard time limit (13.3 s here,
# notifier/budget.py) before the new master answers, or it is dead-lettered
# instead. The visibility timeout must exceed lease + 1 + hard limit.
TIMINGS = {"NOTIFIER_CLAIM_LEASE": "14", "NOTIFIER_VISIBILITY_TIMEOUT": "30"}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    # On the first master only: refuse writes when no replica is in sync
    # within 10 s (the promoted replica has none until the old master returns,
    # so it must not carry the setting: see the docs' advice on two replicas).
    with SentinelCluster(
        tmp_path / "cluster",
        master_config=["min-replicas-to-write 1", "min-replicas-max-lag 10"],
    ) as running:
        yield running


@dataclass
class Stream:
    """A producer publishing one event at a time at a steady rate, in a thread."""

    system: System
    events: list[dict[str, Any]]
    accepted: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    refused: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def run(self) -> None:
        app = create_app(self.system.settings)
        try:
            started = time.monotonic()
            for index, event in enumerate(self.events):
                pause = started + index / RATE - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                try:
                    publish_many([event], app=app)
                except PublishError:
                    self.refused.append((time.monotonic(), event))
                else:
                    self.accepted.append((time.monotonic(), event))
        finally:
            app.close()


class Arrivals:
    """When each delivery first reached the sink (polled every 20 ms in a thread)."""

    def __init__(self, system: System) -> None:
        self.first_seen: dict[str, float] = {}
        self._system = system
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            now = time.monotonic()
            for delivery_id in received_ids(self._system.sink):
                self.first_seen.setdefault(delivery_id, now)

    @contextlib.contextmanager
    def watching(self) -> Iterator[Arrivals]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=5)


def swap_roles_and_repoint_sentinels(cluster: SentinelCluster, pause: float = 0.0) -> None:
    """Demote the master as an operator's REPLICAOF does, then point the Sentinels at the new one.

    Unlike a Sentinel failover, which also closes the old master's client
    connections, this leaves them open: every write on them now answers
    READONLY, the demoted-master case itself.
    """
    old, new = cluster.master, cluster.replica
    with contextlib.closing(new.client()) as client:
        client.replicaof("NO", "ONE")
    with contextlib.closing(old.client()) as client:
        client.replicaof("127.0.0.1", new.port)
    time.sleep(pause)  # clients meet READONLY while the Sentinels still name the old master
    for sentinel in cluster.sentinels:
        with contextlib.closing(sentinel.client()) as client:
            client.sentinel_remove(MASTER_NAME)
            client.sentinel_monitor(MASTER_NAME, "127.0.0.1", new.port, 2)


def test_a_worker_on_sentinels_delivers_every_accepted_event_across_a_master_kill(
    cluster: SentinelCluster, make_system: Callable[[str], System]
) -> None:
    system = make_system(cluster.url())
    system.configure(**TIMINGS)
    worker = system.worker().wait_ready()
    stream = Stream(system, event_batch(int(RATE * STREAM_SECONDS), tag="failover"))
    producer = threading.Thread(target=stream.run, daemon=True)
    old_master = cluster.master_port()

    with Arrivals(system).watching() as arrivals:
        producer.start()
        time.sleep(KILL_AFTER)
        killed_at = time.monotonic()
        cluster.master.kill()
        cluster.wait_until(
            lambda: cluster.agreed_master() not in (None, old_master), 30, "the failover"
        )
        failover_seconds = time.monotonic() - killed_at
        producer.join(timeout=STREAM_SECONDS + 30)
        assert not producer.is_alive(), "the producer hung"
        planned = planned_emails(event for _, event in stream.accepted)
        # Messages the worker held at the kill come back after the visibility timeout.
        tally = system.settle(planned, timeout=45)

    worker.check_alive()
    after_kill = planned_emails(event for at, event in stream.accepted if at > killed_at)
    recovered = min(arrivals.first_seen[i] for i in after_kill) - killed_at
    refused_at = [at - killed_at for at, _ in stream.refused]
    report(
        "sentinel failover",
        accepted=len(stream.accepted),
        refused=len(stream.refused),
        refused_window_s=[round(min(refused_at), 2), round(max(refused_at), 2)]
        if refused_at
        else None,
        failover_s=round(failover_seconds, 2),
        recovery_s=round(recovered, 2),
        strangers=len(tally.strangers),
        **tally.figures(),
    )
    # What the producer was told it handed over is delivered: with a SIGKILL on
    # loopback the replica had every acknowledged write (see the docs for the
    # window asynchronous replication leaves on a crashed host or a partition).
    assert tally.lost == set(), f"lost {len(tally.lost)} emails of accepted events"
    assert len(stream.accepted) >= 0.5 * len(stream.events), "the stream did not go on"
    assert after_kill, "nothing was accepted after the kill"


def test_a_worker_whose_master_was_demoted_consumes_from_the_new_master(
    cluster: SentinelCluster, make_system: Callable[[str], System]
) -> None:
    system = make_system(cluster.url())
    worker = system.worker().wait_ready()
    before = event_batch(4, tag="before")
    system.publish(before)
    system.settle(planned_emails(before), timeout=30)

    # The worker meets READONLY for 2 s before the Sentinels name the new master.
    swap_roles_and_repoint_sentinels(cluster, pause=2.0)
    after = event_batch(4, tag="after")
    # Straight to the new master (the producer is not under test here).
    with contextlib.closing(redis_client(make_settings(redis_url=cluster.url()))) as client:
        assert client.info("replication")["role"] == "master"
    system.publish(after)
    tally = system.settle(planned_emails(before + after), timeout=40)

    worker.check_alive()
    report("sentinel demoted master", **tally.figures())
    assert "READONLY" in worker.log() or "now a slave" in worker.log(), (
        "the worker never met the demoted master: the test did not test it"
    )
    assert tally.lost == set()


def test_a_store_write_to_a_read_only_server_is_retried_until_it_takes_writes(
    cluster: SentinelCluster,
) -> None:
    # A redis:// client of a demoted master (a DNS name or address that moves
    # back, say): READONLY is retried like a broken connection, not raised.
    replica = cluster.replica
    client = redis_client(make_settings(redis_url=f"redis://127.0.0.1:{replica.port}/0"))

    def promote() -> None:
        time.sleep(1.0)
        with contextlib.closing(replica.client()) as admin:
            admin.replicaof("NO", "ONE")

    promoter = threading.Thread(target=promote)
    promoter.start()
    try:
        started = time.monotonic()
        assert client.set("notifier:test:written", b"1")
        waited = time.monotonic() - started
    finally:
        promoter.join()
        client.close()
    assert waited >= 0.9, "the write did not meet the read-only replica: nothing was tested"


def test_a_store_write_after_a_failover_reaches_the_new_master(
    cluster: SentinelCluster,
) -> None:
    client = redis_client(make_settings(redis_url=cluster.url()))
    try:
        assert client.set("notifier:test:before", b"1")  # a connection to the first master
        old_master = cluster.master_port()
        cluster.master.kill()
        cluster.wait_until(
            lambda: cluster.agreed_master() not in (None, old_master), 30, "the failover"
        )

        assert client.set("notifier:test:after", b"1")
        pool = client.connection_pool
        assert isinstance(pool, SentinelConnectionPool)
        assert pool.get_master_address()[1] == cluster.replica.port  # type: ignore[no-untyped-call]
    finally:
        client.close()


def test_a_store_write_to_a_demoted_master_is_retried_on_the_new_one(
    cluster: SentinelCluster,
) -> None:
    client = redis_client(make_settings(redis_url=cluster.url()))
    try:
        assert client.set("notifier:test:before", b"1")  # a connection to the first master
        swap_roles_and_repoint_sentinels(cluster)

        assert client.set("notifier:test:after", b"1")  # READONLY at first, then retried
        with contextlib.closing(cluster.replica.client()) as new_master:
            assert new_master.get("notifier:test:after") == b"1"
    finally:
        client.close()


def test_the_cli_reaches_the_master_through_the_sentinels_and_never_prints_the_password(
    cluster: SentinelCluster,
) -> None:
    password = "sentinel-test-pw-4417"
    for node in cluster.nodes:  # the data nodes now want a password (the URL's user info)
        with contextlib.closing(node.client()) as client:
            client.config_set("masterauth", password)
            client.config_set("requirepass", password)
    for sentinel in cluster.sentinels:
        with contextlib.closing(sentinel.client()) as client:
            client.sentinel_set(MASTER_NAME, "auth-pass", password)
    environment = operator_environment(cluster.url(userinfo=f":{password}@"))

    health = run_cli(["health", "--json"], environment)
    stats = run_cli(["dlq", "stats", "--json"], environment)

    checks = {check["name"]: check for check in json.loads(health.stdout)["checks"]}
    assert checks["redis"]["status"] == "ok", checks["redis"]
    assert checks["redis"]["detail"].startswith("master 'mymaster' via sentinels 127.0.0.1:")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["total"] == 0
    for result in (health, stats):
        assert password not in result.stdout + result.stderr


def run_cli(arguments: list[str], environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "notifier", *arguments],
        env=environment, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
