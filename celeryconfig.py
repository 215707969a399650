"""Celery settings for notifier, all derived from ``notifier.settings.Settings``.

``notifier.app.create_app`` applies ``build(settings)``; nothing else
configures Celery. Each setting says why it has the value it has.
"""

from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue

from notifier import keys
from notifier.settings import Settings

__all__ = ["build"]


def build(settings: Settings) -> dict[str, Any]:
    """The Celery configuration for these settings."""
    visibility = settings.notifier_visibility_timeout
    transport_options = {
        # A message taken but not acked (worker killed) comes back after this.
        # It must exceed every retry countdown, or Redis redelivers a message a
        # worker is still holding for its ETA: a duplicate.
        "visibility_timeout": visibility,
        # Without these a publish can hang forever on a half-open connection.
        "socket_timeout": 10,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
        "health_check_interval": 30,
    }
    return {
        "broker_url": settings.redis_url,
        "broker_transport_options": transport_options,
        # Same options for the result backend, should one ever be configured.
        "result_backend_transport_options": transport_options,
        # We never read results: don't write them.
        "task_ignore_result": True,
        "result_backend": None,
        # JSON is the public contract: any language's Celery client can publish.
        "task_serializer": "json",
        "accept_content": ["json"],
        # Celery's own convention (exchange and routing key named after the
        # queue), so a bare Celery client in any language reaches the same list.
        "task_queues": [
            Queue(name, Exchange(name, type="direct"), routing_key=name) for name in keys.QUEUES
        ],
        "task_default_queue": keys.EVENTS_QUEUE,
        "task_routes": {"notifier.handle_event": {"queue": keys.EVENTS_QUEUE}},
        # Ack after the work is done, so a crash mid-delivery redelivers it;
        # the idempotency ledger makes the redelivery safe.
        "task_acks_late": True,
        # A worker process killed mid-task (OOM, SIGKILL) requeues the message.
        "task_reject_on_worker_lost": True,
        # One message at a time per process: late acks plus a long prefetch
        # would hold messages hostage behind a slow SMTP send.
        "worker_prefetch_multiplier": 1,
        # Keep trying to reach Redis at start-up and after losing it.
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        # A publish that fails is retried briefly, then raises: never a silent loss.
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 3,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 2.0,
        },
        # A stuck send must not pin a process forever; the soft limit leaves
        # time to record the failure before the hard kill.
        "task_soft_time_limit": 120,
        "task_time_limit": 150,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "enable_utc": True,
    }
