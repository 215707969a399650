"""What a worker counts, and the calls the pipeline counts with.

Metrics (names and labels are a public contract, docs/DESIGN.md §7):

``notifier_deliveries_total{channel,type,outcome}``
    Counter. Every outcome of every delivery attempt: ``sent``, ``retried``,
    ``dead``, ``duplicate``, ``skipped``, ``queued``, ``deferred``, ``fallback``
    (and ``rate_limited`` once limits exist); ``ambiguous`` when an SMTP
    connection was lost after the message was handed over (counted beside the
    ``retried`` or ``dead`` that follows); ``rejected`` for invalid input
    (``channel="none"``). ``type`` is the event type, ``unknown`` when the input
    named none we support (a producer must not be able to mint label values).
``notifier_send_duration_seconds{channel,provider}``
    Histogram. How long a provider took to accept a message (successful sends;
    failures show up as ``retried``/``dead`` outcomes instead).
``notifier_events_total{type}``
    Counter. Events accepted by ``notifier.handle_event`` (valid ones).
``notifier_callbacks_total{outcome}``
    Counter. Callbacks to the producer (``notifier.callbacks``): ``queued`` (the
    send path enqueued one), ``sent`` (a 2xx), ``retried``, ``dead``
    (dead-lettered, channel ``callback``), ``rejected`` (a malformed job) and
    ``lost`` (neither enqueued nor kept: Redis gone; logged ``callback.lost``).
    Kept apart from ``notifier_deliveries_total`` so that the delivery alerts
    count emails and SMS only.
``notifier_dead_letters``, ``notifier_queue_length{queue}``, ``notifier_redis_up``
    Gauges read from Redis when Prometheus scrapes (ZCARD of the dead-letter
    index, LLEN of each queue); every worker reports the same values, so
    aggregate them with ``max``, not ``sum``.
``notifier_redis_memory_used_bytes``, ``notifier_redis_memory_max_bytes``, ``notifier_redis_oom``
    Gauges from ``INFO memory`` at scrape time: the memory Redis counts
    against ``maxmemory``, ``maxmemory`` (0 = no limit), and 1 while Redis is
    over it (full: it refuses writes). Aggregate with ``max`` too.

One module per concern:

* ``instruments``: the counters and histogram, and their label values;
* ``endpoint``: the ``/metrics`` endpoint, prometheus_client's multiprocess
  mode under the prefork pool, and the gauges read from Redis per scrape;
* ``tallies``: per-minute tallies of recent outcomes in Redis, flushed by a
  background thread, for ``notifier stats``;
* ``queues``, ``unacked``, ``dead_letters``: the other reads of Redis behind
  ``notifier stats`` (queue lengths, kombu's unacked hash, the dead-letter
  store by fingerprint).

This package's own module is the pipeline's side of all that: the calls it
makes for each outcome (``record_delivery``, ``record_event``,
``timed_send``) and this process's recorders behind them, so that a call
site reads ``metrics.record_delivery(...)`` and a failing metric never fails
a delivery.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from notifier.channels import Receipt
from notifier.logs import get_logger
from notifier.metrics.instruments import Metrics
from notifier.metrics.tallies import RecentOutcomes

__all__ = [
    "ProcessRecorder",
    "metrics",
    "recent",
    "record_callback",
    "record_delivery",
    "record_event",
    "timed_send",
]

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


def record_callback(outcome: str) -> None:
    """Count one callback to the producer: ``queued``, ``sent``, ``retried``, ``dead``, ..."""
    _guarded(lambda: metrics().callback(outcome))


def timed_send(send: Callable[[], Receipt]) -> Receipt:
    """Call ``send`` (a provider send) and observe its duration when it succeeds."""
    started = time.perf_counter()
    receipt = send()
    elapsed = time.perf_counter() - started
    _guarded(lambda: metrics().send(receipt, elapsed))
    return receipt


class ProcessRecorder:
    """This process's metrics as a Runtime part (``Runtime.metrics``): the calls above."""

    def record_delivery(self, channel: str | None, event_type: str | None, outcome: str) -> None:
        """Count one delivery outcome."""
        record_delivery(channel, event_type, outcome)

    def record_event(self, event_type: str) -> None:
        """Count one accepted event."""
        record_event(event_type)

    def timed_send(self, send: Callable[[], Receipt]) -> Receipt:
        """Call ``send`` and observe its duration when it succeeds."""
        return timed_send(send)

    def record_callback(self, outcome: str) -> None:
        """Count one callback outcome."""
        record_callback(outcome)
