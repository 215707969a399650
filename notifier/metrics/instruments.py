"""The Prometheus counters and histogram a worker process records into.

Label values come from closed sets: a channel we send on (else ``none``) and
an event type we support (else ``unknown``), so a producer cannot mint new
time series by sending odd values. prometheus_client is imported when a
``Metrics`` is made, never when this module is imported (the endpoint's
module says why: ``notifier.metrics.endpoint``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from notifier.channels import Receipt
from notifier.events import SUPPORTED_TYPES

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["SEND_BUCKETS", "Metrics", "channel_label", "type_label"]

# Inline SMTP to a local relay takes milliseconds, a remote provider tens to
# hundreds, and a timeout (MAIL_TIMEOUT, TWILIO_TIMEOUT) 10 s.
SEND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_CHANNELS = frozenset({"email", "sms"})
_TYPES = frozenset(SUPPORTED_TYPES)


def channel_label(channel: str | None) -> str:
    """The ``channel`` label of an outcome: ``email``, ``sms`` or ``none``."""
    return channel if channel in _CHANNELS else "none"


def type_label(event_type: str | None) -> str:
    """The ``type`` label of an outcome: a supported event type or ``unknown``."""
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
        self.callbacks: Counter = Counter(
            "notifier_callbacks",
            "Callbacks to the producer by outcome.",
            ["outcome"],
            registry=target,
        )

    def delivery(self, channel: str | None, event_type: str | None, outcome: str) -> None:
        """Count one outcome."""
        self.deliveries.labels(channel_label(channel), type_label(event_type), outcome).inc()

    def event(self, event_type: str) -> None:
        """Count one accepted event."""
        self.events.labels(type_label(event_type)).inc()

    def callback(self, outcome: str) -> None:
        """Count one callback outcome (a closed set, chosen by notifier.callbacks)."""
        self.callbacks.labels(outcome).inc()

    def send(self, receipt: Receipt, seconds: float) -> None:
        """Observe one successful send."""
        self.send_duration.labels(receipt.channel, receipt.provider).observe(seconds)
