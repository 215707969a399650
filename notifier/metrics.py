"""Prometheus metrics of a worker, and the Redis-backed tallies behind ``notifier stats``.

Metrics (names and labels are a public contract, DESIGN.md §7):

``notifier_deliveries_total{channel,type,outcome}``
    Counter. Every outcome of every delivery attempt: ``sent``, ``retried``,
    ``dead``, ``duplicate``, ``skipped``, ``queued``, ``deferred``, ``fallback``
    (and ``rate_limited`` once limits exist); ``rejected`` for invalid input
    (``channel="none"``). ``type`` is the event type, ``unknown`` when the input
    named none we support (a producer must not be able to mint label values).
``notifier_send_duration_seconds{channel,provider}``
    Histogram. How long a provider took to accept a message (successful sends;
    failures show up as ``retried``/``dead`` outcomes instead).
``notifier_events_total{type}``
    Counter. Events accepted by ``notifier.handle_event`` (valid ones).
``notifier_dead_letters``, ``notifier_queue_length{queue}``, ``notifier_redis_up``
    Gauges read from Redis when Prometheus scrapes (ZCARD of the dead-letter
    index, LLEN of each queue); every worker reports the same values, so
    aggregate them with ``max``, not ``sum``.

Prefork: multiprocess mode
--------------------------
Under Celery's prefork pool the work happens in child processes while one
HTTP endpoint per worker is wanted. We use prometheus_client's multiprocess
mode: each process writes its counters to memory-mapped files in
``PROMETHEUS_MULTIPROC_DIR`` and the endpoint, served by the worker's main
process, adds up every file at scrape time. The alternative, one exporter
per child on its own port, needs a port range, service discovery of every
child and loses a child's counts when Celery replaces it; multiprocess mode
keeps them (a dead child's files stay and keep counting in the sums, so
counters never go backwards).

prometheus_client picks its value class once, when it is first imported, so
the directory must be in the environment before that. Two rules make that
hold: nothing in notifier imports prometheus_client at module level (only
the functions below, on first use), and ``prepare_multiprocess`` runs in the
worker's main process at ``celeryd_init``, before the pool forks its
children (they inherit the variable). When ``PROMETHEUS_MULTIPROC_DIR`` is
already set (a container image may set it) that directory is used and its
stale ``*.db`` files are wiped, since they would be added to this run's
counts; it must then belong to this one worker. Otherwise a private
directory is made and removed at shutdown.

Measured here (2 cores, prometheus_client 0.26): ``labels(...).inc()`` costs
2.1 µs in multiprocess mode against 1.5 µs in memory, a histogram
``observe()`` 3.1 µs against 1.9 µs, and a scrape that merges 26 files
0.8 ms. A delivery costs a millisecond or more, so neither is noticeable.

Embedded workers (tests' ``start_worker``) never send ``celeryd_init``: they
count in memory, in the default registry, and serve nothing.

Recent outcomes (``notifier stats``)
------------------------------------
Prometheus keeps history, but an operator at a shell wants "what happened in
the last hour" without one. ``RecentOutcomes`` tallies outcomes per minute in
the process; after a task (``task_postrun``) they are added to one Redis hash
per minute (``keys.stats_outcomes``), batched to about one round trip per
process per second; the hashes expire after ``keys.STATS_OUTCOMES_TTL``. The
tallies are best effort: a Redis error drops them (with a warning) rather
than failing a delivery, and a worker stopping loses at most the last second.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from notifier import keys
from notifier.channels import Receipt
from notifier.events import SUPPORTED_TYPES
from notifier.logs import get_logger
from notifier.redaction import redact_text
from notifier.redis_clients import quick_redis
from notifier.settings import Settings

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.core import Metric

__all__ = [
    "MULTIPROC_ENV",
    "SEND_BUCKETS",
    "UNACKED_KEY",
    "Held",
    "HeldMessages",
    "Metrics",
    "MetricsServer",
    "RecentOutcomes",
    "RedisCollector",
    "build_registry",
    "dead_letter_summary",
    "held_messages",
    "metrics",
    "prepare_multiprocess",
    "queue_lengths",
    "recent",
    "recent_outcomes",
    "record_delivery",
    "record_event",
    "remove_private_dir",
    "serve",
    "serving",
    "timed_send",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Inline SMTP to a local relay takes milliseconds, a remote provider tens to
# hundreds, and a timeout (MAIL_TIMEOUT, TWILIO_TIMEOUT) 10 s.
SEND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_CHANNELS = frozenset({"email", "sms"})
_TYPES = frozenset(SUPPORTED_TYPES)


def _channel_label(channel: str | None) -> str:
    return channel if channel in _CHANNELS else "none"


def _type_label(event_type: str | None) -> str:
    return event_type if event_type in _TYPES else "unknown"


class Metrics:
    """The counters and histogram a worker process records, in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import REGISTRY, Counter, Histogram

        target = REGISTRY if registry is None else registry
        self.deliveries: Counter = Counter(
            "notifier_deliveries",
            "Delivery outcomes by channel, event type and outcome.",
            ["channel", "type", "outcome"],
            registry=target,
        )
        self.send_duration: Histogram = Histogram(
            "notifier_send_duration_seconds",
            "Seconds a provider took to accept a message.",
            ["channel", "provider"],
            buckets=SEND_BUCKETS,
            registry=target,
        )
        self.events: Counter = Counter(
            "notifier_events",
            "Valid events accepted by notifier.handle_event, by type.",
            ["type"],
            registry=target,
        )

    def delivery(self, channel: str | None, event_type: str | None, outcome: str) -> None:
        """Count one outcome."""
        self.deliveries.labels(_channel_label(channel), _type_label(event_type), outcome).inc()

    def event(self, event_type: str) -> None:
        """Count one accepted event."""
        self.events.labels(_type_label(event_type)).inc()

    def send(self, receipt: Receipt, seconds: float) -> None:
        """Observe one successful send."""
        self.send_duration.labels(receipt.channel, receipt.provider).observe(seconds)


_MAX_PENDING = 5_000


class RecentOutcomes:
    """Per-minute outcome tallies, buffered in the process and added to Redis in batches.

    ``flush_soon`` runs after every task: it writes at once when the last
    write is ``interval`` seconds old, and otherwise leaves the batch to a
    background thread that writes every ``interval``. Under load that is one
    Redis round trip per process per second instead of one per task (a
    round trip costs about 90 µs here, a task about a millisecond).
    """

    def __init__(self, clock: Callable[[], float] = time.time, interval: float = 1.0) -> None:
        self._clock = clock
        self.interval = interval
        self._pending: collections.Counter[tuple[int, str]] = collections.Counter()
        self._lock = threading.Lock()
        # Held for a whole flush: ``detach`` waits on it, so the client is not
        # closed under the background thread's feet (it once was: EBADF).
        self._flush_lock = threading.Lock()
        self._last_flush = -math.inf
        self._client: redis.Redis | None = None
        self._flusher: threading.Thread | None = None
        self._flusher_pid = 0

    def record(self, channel: str | None, outcome: str) -> None:
        """Tally one outcome in the current minute."""
        minute = int(self._clock() // 60)
        with self._lock:
            self._pending[(minute, f"{_channel_label(channel)}:{outcome}")] += 1
            if len(self._pending) > _MAX_PENDING:
                # Never flushed (pipeline used outside a worker): keep memory bounded.
                oldest = min(minute for minute, _ in self._pending)
                for key in [key for key in self._pending if key[0] == oldest]:
                    del self._pending[key]

    def pending(self) -> int:
        """Outcomes tallied but not yet flushed."""
        with self._lock:
            return sum(self._pending.values())

    def flush(self, client: redis.Redis) -> None:
        """Add the buffered tallies to Redis in one round trip; drop them if Redis fails."""
        with self._flush_lock:
            self._flush(client)

    def _flush(self, client: redis.Redis) -> None:
        with self._lock:
            self._last_flush = time.monotonic()
            if not self._pending:
                return
            pending, self._pending = self._pending, collections.Counter()
        try:
            with client.pipeline(transaction=False) as pipe:
                for (minute, name), count in pending.items():
                    pipe.hincrby(keys.stats_outcomes(minute), name, count)
                # Nothing may live forever in a noeviction Redis.
                for minute in {minute for minute, _ in pending}:
                    pipe.expire(keys.stats_outcomes(minute), keys.STATS_OUTCOMES_TTL)
                pipe.execute()
        except redis.RedisError as exc:
            get_logger().warning(
                "stats.flush_failed", dropped=sum(pending.values()), error=str(exc)
            )

    def flush_soon(self, client: redis.Redis) -> None:
        """Flush now if the last flush is ``interval`` old; else within ``interval`` seconds."""
        if time.monotonic() - self._last_flush >= self.interval:
            self.flush(client)
            return
        self._client = client
        with self._lock:
            # Per process: a thread does not survive the pool's fork.
            if self._flusher is None or self._flusher_pid != os.getpid():
                self._flusher = threading.Thread(
                    target=self._flush_forever, name="notifier-stats-flush", daemon=True
                )
                self._flusher_pid = os.getpid()
                self._flusher.start()

    def detach(self, client: redis.Redis) -> None:
        """Stop the background flushes to ``client`` before it is closed.

        Waits for a flush in progress; tallies recorded later stay pending
        until the next ``flush`` or ``flush_soon`` with an open client.
        """
        with self._flush_lock:
            if self._client is client:
                self._client = None

    def _flush_forever(self) -> None:
        while True:
            time.sleep(self.interval)
            with self._flush_lock:
                client = self._client
                if client is not None and self.pending():
                    self._flush(client)


def recent_outcomes(
    client: redis.Redis, *, minutes: int = 60, now: float | None = None
) -> dict[str, dict[str, int]]:
    """Outcomes of the last ``minutes`` (this minute included): channel → outcome → count."""
    current = int((time.time() if now is None else now) // 60)
    span = range(current - minutes + 1, current + 1)
    with client.pipeline(transaction=False) as pipe:
        for minute in span:
            pipe.hgetall(keys.stats_outcomes(minute))
        buckets: list[dict[bytes | str, bytes | str]] = pipe.execute()
    totals: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for bucket in buckets:
        for name, count in bucket.items():
            channel, _, outcome = _text(name).partition(":")
            totals[channel][outcome] += int(count)
    return {channel: dict(sorted(counts.items())) for channel, counts in sorted(totals.items())}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# -- what the pipeline calls: never let a metric break a delivery

_metrics: Metrics | None = None
_metrics_lock = threading.Lock()
recent = RecentOutcomes()
"""This process's buffer of recent outcomes (flushed after each task by ``notifier.app``)."""

_warned = False


def metrics() -> Metrics:
    """This process's metrics, made on first use (first import of prometheus_client)."""
    global _metrics
    if _metrics is None:
        with _metrics_lock:
            if _metrics is None:
                _metrics = Metrics()
    return _metrics


def _guarded(action: Callable[[], None]) -> None:
    global _warned
    try:
        action()
    except Exception as exc:  # noqa: BLE001 - a metric must never fail a delivery
        if not _warned:
            _warned = True
            get_logger().warning("metrics.record_failed", error=f"{type(exc).__name__}: {exc}")


def record_delivery(channel: str | None, event_type: str | None, outcome: str) -> None:
    """Count one delivery outcome (Prometheus, and the recent tallies for ``notifier stats``)."""
    _guarded(lambda: metrics().delivery(channel, event_type, outcome))
    recent.record(channel, outcome)


def record_event(event_type: str) -> None:
    """Count one accepted event."""
    _guarded(lambda: metrics().event(event_type))


def timed_send(send: Callable[[], Receipt]) -> Receipt:
    """Call ``send`` (a provider send) and observe its duration when it succeeds."""
    started = time.perf_counter()
    receipt = send()
    elapsed = time.perf_counter() - started
    _guarded(lambda: metrics().send(receipt, elapsed))
    return receipt


# -- Redis reads shared by the scrape-time collector and `notifier stats`

# Celery's Redis transport keeps messages with a priority in sibling lists
# named queue + "\x06\x16" + step; count them too.
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)
UNACKED_KEY = "unacked"
"""kombu's hash of messages delivered to a worker and not yet acked (its default name)."""


def _queue_lists(queue: str) -> list[str]:
    return [queue] + [f"{queue}{_PRIORITY_SEPARATOR}{step}" for step in _PRIORITY_STEPS]


def queue_lengths(client: redis.Redis, queues: Iterable[str] = keys.QUEUES) -> dict[str, int]:
    """Messages waiting in each queue, not yet taken by a worker."""
    names = list(queues)
    with client.pipeline(transaction=False) as pipe:
        for queue in names:
            for name in _queue_lists(queue):
                pipe.llen(name)
        lengths: list[int] = pipe.execute()
    per_queue = len(_PRIORITY_STEPS) + 1
    return {
        queue: sum(lengths[i * per_queue : (i + 1) * per_queue]) for i, queue in enumerate(names)
    }


@dataclass
class Held:
    """Messages a worker has taken and not acked, for one queue."""

    total: int = 0
    scheduled: int = 0
    """Of those, waiting for a countdown (a retry's backoff)."""


@dataclass
class HeldMessages:
    """kombu's unacked hash, read: what the workers hold right now."""

    total: int = 0
    by_queue: dict[str, Held] = field(default_factory=dict)
    complete: bool = True
    """False when the hash was larger than the scan limit (``by_queue`` is partial)."""


def held_messages(
    client: redis.Redis, *, limit: int = 10_000, now: datetime | None = None
) -> HeldMessages:
    """Messages held by workers (running, or waiting for their countdown), by queue.

    Celery's Redis transport hands an ETA message to a worker at once and the
    worker keeps it until the time comes, so a retry waiting for its backoff
    sits in kombu's ``unacked`` hash, not in the queue's list.
    """
    moment = now or datetime.now(UTC)
    result = HeldMessages(total=int(client.hlen(UNACKED_KEY)))
    for seen, (_, raw) in enumerate(client.hscan_iter(UNACKED_KEY, count=500)):
        if seen >= limit:
            result.complete = False
            break
        queue, eta = _describe_unacked(raw)
        held = result.by_queue.setdefault(queue, Held())
        held.total += 1
        if eta is not None and eta > moment:
            held.scheduled += 1
    return result


def _describe_unacked(raw: bytes | str) -> tuple[str, datetime | None]:
    """(routing key, ETA) of one entry of kombu's unacked hash: [message, exchange, key]."""
    try:
        message, _, routing_key = json.loads(raw)
        eta_text = (message.get("headers") or {}).get("eta")
        eta = datetime.fromisoformat(eta_text) if eta_text else None
        if eta is not None and eta.tzinfo is None:
            eta = eta.replace(tzinfo=UTC)
        return str(routing_key), eta
    except (ValueError, TypeError, AttributeError):
        return "unknown", None


def dead_letter_summary(client: redis.Redis) -> dict[str, Any]:
    """Dead letters grouped by error fingerprint, the largest group first.

    Each group: count, statuses, channels, the latest error (redacted) and
    when it last happened. Reads every entry: fine for thousands, which is
    where ``NOTIFIER_DLQ_ALERT_THRESHOLD`` already turns health red.
    """
    from notifier.deadletter import DeadLetterStore

    groups: dict[str, dict[str, Any]] = {}
    total = 0
    for entry in DeadLetterStore(client):  # oldest first: the last one seen is the latest
        total += 1
        group = groups.setdefault(
            entry.fingerprint,
            {"count": 0, "status": collections.Counter(), "channel": collections.Counter()},
        )
        group["count"] += 1
        group["status"][entry.status] += 1
        group["channel"][entry.channel or "none"] += 1
        group["error"] = redact_text(entry.error)
        group["last_failed_at"] = entry.failed_at
    ordered = sorted(groups.items(), key=lambda item: (-item[1]["count"], item[0]))
    return {
        "total": total,
        "by_fingerprint": {
            fingerprint: {
                "count": group["count"],
                "status": dict(group["status"]),
                "channel": dict(group["channel"]),
                "error": group["error"],
                "last_failed_at": group["last_failed_at"],
            }
            for fingerprint, group in ordered
        },
    }


class RedisCollector:
    """Scrape-time gauges read from Redis: dead letters, queue lengths, Redis up."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def collect(self) -> Iterator[Metric]:
        """Read Redis now; on failure report ``notifier_redis_up 0`` and nothing else."""
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("notifier_redis_up", "1 when the worker's scrape could read Redis.")
        try:
            dead = int(self._redis.zcard(keys.DLQ_INDEX))
            lengths = queue_lengths(self._redis)
        except redis.RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield GaugeMetricFamily(
            "notifier_dead_letters", "Entries in the dead-letter store.", value=dead
        )
        queue = GaugeMetricFamily(
            "notifier_queue_length",
            "Messages waiting in a queue (not yet taken).",
            labels=["queue"],
        )
        for name, length in lengths.items():
            queue.add_metric([name], length)
        yield queue


# -- the worker's endpoint


@dataclass
class MetricsServer:
    """A running metrics endpoint; ``close()`` stops it and cleans up."""

    port: int
    server: WSGIServer
    thread: threading.Thread
    client: redis.Redis
    private_dir: Path | None = None

    def close(self) -> None:
        """Stop serving, close the Redis client, remove a private multiprocess directory."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
        self.client.close()
        remove_private_dir(self.private_dir)


_private_dir: Path | None = None


def prepare_multiprocess() -> Path:
    """Make ``PROMETHEUS_MULTIPROC_DIR`` ready, in the worker's main process before forking.

    Uses the directory from the environment (wiping its stale ``*.db`` files)
    or makes a private one and exports it, so pool children inherit it.
    """
    global _private_dir
    configured = os.environ.get(MULTIPROC_ENV)
    if configured:
        directory = Path(configured)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink(missing_ok=True)
    else:
        directory = Path(tempfile.mkdtemp(prefix="notifier-metrics-"))
        os.environ[MULTIPROC_ENV] = str(directory)
        _private_dir = directory
    if _imported_without_multiprocess():
        get_logger().error(
            "metrics.not_multiprocess",
            detail=(
                "prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set: "
                "counts from pool processes will be missing; set PROMETHEUS_MULTIPROC_DIR "
                "in the worker's environment"
            ),
        )
    return directory


def _imported_without_multiprocess() -> bool:
    values = sys.modules.get("prometheus_client.values")
    return values is not None and values.ValueClass is values.MutexValue


def remove_private_dir(directory: Path | None) -> None:
    """Remove the directory ``prepare_multiprocess`` made (never an operator's)."""
    global _private_dir
    if directory is not None and directory == _private_dir:
        shutil.rmtree(directory, ignore_errors=True)
        _private_dir = None


def build_registry(client: redis.Redis) -> CollectorRegistry:
    """The registry the endpoint serves: every process's metrics plus the Redis gauges."""
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    else:
        registry.register(_Forward(REGISTRY))
    registry.register(RedisCollector(client))
    return registry


class _Forward:
    """A collector that serves another registry's metrics (single-process mode)."""

    def __init__(self, source: CollectorRegistry) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        yield from self._source.collect()


def serve(settings: Settings, *, host: str = "0.0.0.0") -> MetricsServer | None:  # noqa: S104
    """Serve ``/metrics`` on ``NOTIFIER_METRICS_PORT`` (None when 0 or the port is taken).

    A busy port is logged, not raised: a worker that cannot export metrics
    must still deliver notifications.
    """
    if settings.notifier_metrics_port == 0:
        return None
    from prometheus_client import start_http_server

    client = quick_redis(settings.redis_url)
    registry = build_registry(client)
    try:
        server, thread = start_http_server(
            settings.notifier_metrics_port, addr=host, registry=registry
        )
    except OSError as exc:
        client.close()
        get_logger().error(
            "metrics.serve_failed", port=settings.notifier_metrics_port, error=str(exc)
        )
        return None
    get_logger().info("metrics.serving", port=settings.notifier_metrics_port)
    return MetricsServer(
        port=settings.notifier_metrics_port,
        server=server,
        thread=thread,
        client=client,
        private_dir=_private_dir,
    )


@contextlib.contextmanager
def serving(settings: Settings, *, host: str = "0.0.0.0") -> Iterator[MetricsServer | None]:  # noqa: S104
    """``serve`` as a context manager (tests, embedding)."""
    server = serve(settings, host=host)
    try:
        yield server
    finally:
        if server is not None:
            server.close()
