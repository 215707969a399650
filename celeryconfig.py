"""Celery settings for notifier, all derived from ``notifier.settings.Settings``.

``notifier.app.create_app`` applies ``build(settings)``; nothing else
configures Celery. Each setting says why it has the value it has; together
they are docs/DESIGN.md §6, and ``tests/reliability/`` proves what they promise
with real workers, real Redis servers and real kills.

Shutdown, which no setting here changes: SIGTERM is Celery's warm shutdown.
The worker stops taking messages, lets running tasks finish (at most the hard
time limit below), acks them, and kombu hands every message it still holds
(prefetched, or waiting for a retry countdown) back to its queue on the way
out. Give the container at least the hard time limit to stop; a SIGKILL
before that is covered by the visibility timeout.
"""

from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue

from notifier import keys
from notifier.sentinel_url import SentinelUrl, is_sentinel_url
from notifier.settings import Settings

__all__ = [
    "broker_transport",
    "build",
    "publish_retry_policy",
    "sentinel_options",
    "unacked_sweep_interval",
]


def unacked_sweep_interval(settings: Settings) -> int:
    """Seconds between sweeps for messages held by dead workers: 9 s by default.

    A killed worker's messages return once they are older than the visibility
    timeout *and* a sweep runs, so recovery takes at most the timeout plus
    one interval: a thirtieth of it, between 1 and 60 s (280 + 9 s by default,
    within the 5 minutes of issue 14). One sweep is one
    ZRANGE under a mutex, per worker: cheap even every second.
    """
    return max(1, min(60, settings.notifier_visibility_timeout // 30))


def broker_transport(redis_url: str) -> str:
    """Our transport class for this URL's scheme (``sentinel://`` or ``redis://``)."""
    if is_sentinel_url(redis_url):
        return "notifier.transport:SentinelTransport"
    return "notifier.transport:Transport"


def sentinel_options(settings: Settings) -> tuple[str, dict[str, Any]]:
    """The broker URL and the extra transport options for a ``sentinel://`` REDIS_URL.

    kombu reads the database and password from the first ``;`` part only;
    the URL given to it carries them on every part (notifier/sentinel_url.py),
    so the broker and the stores use the same database. The Sentinels are
    asked with the broker's socket timeouts, and their own credentials (from
    ``?sentinel_password=``), which kombu takes as ``sentinel_kwargs`` only.
    """
    where = SentinelUrl.parse(settings.redis_url)
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": BROKER_SOCKET_TIMEOUT,
        "socket_connect_timeout": BROKER_CONNECT_TIMEOUT,
        **where.sentinel_kwargs(),
    }
    options = {
        "master_name": settings.notifier_redis_master_name,
        "sentinel_kwargs": sentinel_kwargs,
    }
    return where.broker_url(), options


def publish_retry_policy() -> dict[str, float]:
    """Retries of a publish the broker did not take: 5 retries, 5 s of waiting in all.

    The first retry is immediate (after a Redis restart the pooled connection
    is stale and the next one works), then 0.5, 1, 1.5 and 2 s: enough to
    ride out a Redis restart or a Sentinel switch-over of a few seconds,
    short enough that a producer learns soon that its event was not taken
    (``PublishError``) and can keep it. Shared by ``notifier.client`` and
    the tasks' own publishes (retries, SMS, fallbacks).
    """
    return {"max_retries": 5, "interval_start": 0.0, "interval_step": 0.5, "interval_max": 2.0}


BROKER_SOCKET_TIMEOUT = 10
BROKER_CONNECT_TIMEOUT = 5


def build(settings: Settings) -> dict[str, Any]:
    """The Celery configuration for these settings."""
    visibility = settings.notifier_visibility_timeout
    soft_limit, hard_limit = settings.task_time_limits
    transport_options = {
        # A message taken but not acked (worker killed) comes back after this.
        # It must exceed every countdown (retry backoff, a busy claim's lease)
        # plus the run after it (settings check), or Redis hands a message a
        # live worker holds for its ETA to a second worker.
        "visibility_timeout": visibility,
        # How soon a dead worker's messages come back after the timeout
        # (kombu sweeps every interval x throttle s; default 10 x 10).
        "unacked_restore_interval": unacked_sweep_interval(settings),
        # Deliberately 1: every tick sweeps, so the interval alone is the period.
        "unacked_restore_throttle": 1,
        # A worker killed mid-sweep holds the sweep mutex this long (kombu: 300 s);
        # never longer than the timeout itself. Restores are WATCHed: no doubles.
        "unacked_mutex_expire": min(300, visibility),
        # Without these a publish or a poll can hang forever on a half-open
        # connection (kombu's default socket_timeout is None).
        "socket_timeout": BROKER_SOCKET_TIMEOUT,
        "socket_connect_timeout": BROKER_CONNECT_TIMEOUT,
        "socket_keepalive": True,
        "health_check_interval": 30,
        # Opening a connection is tried once per publish attempt, so the
        # publish retry policy alone decides how long a producer waits
        # (kombu's own loop added ~6 s to every attempt: 26 s in all).
        # Workers are unaffected: they reconnect under broker_connection_*.
        "max_retries": 0,
    }
    broker_url = settings.redis_url
    if is_sentinel_url(broker_url):
        broker_url, extra = sentinel_options(settings)
        transport_options.update(extra)
    return {
        "broker_url": broker_url,
        # kombu's Redis transport with a fetch that pops and records a message
        # in one atomic step: a killed worker can no longer take one with it
        # (notifier/transport.py, docs/guarantees.md).
        "broker_transport": broker_transport(settings.redis_url),
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
        "task_routes": {
            keys.HANDLE_EVENT_TASK: {"queue": keys.EVENTS_QUEUE},
            # Never with the sends: a slow endpoint must not hold up an email (DESIGN §10).
            keys.CALLBACK_TASK: {"queue": keys.CALLBACKS_QUEUE},
            keys.HANDLE_EVENTS_TASK: {"queue": keys.EVENTS_QUEUE},
        },
        # Ack after the work is done, so a crash mid-delivery redelivers it;
        # the idempotency ledger makes the redelivery safe.
        "task_acks_late": True,
        # A pool process killed mid-task (OOM, SIGKILL) requeues its message as
        # soon as Celery notices; one that dies every time is dead-lettered as
        # poison (NOTIFIER_MAX_REDELIVERIES), so this cannot loop forever.
        "task_reject_on_worker_lost": True,
        # A task that raised or hit the hard time limit is acked: our on_failure
        # has dead-lettered it first (replayable; when it cannot, it requeues
        # the message instead), and requeueing every failure would loop.
        "task_acks_on_failure_or_timeout": True,
        # One message per process: a kill -9 strands at most one message per
        # process for a visibility timeout, and a slow SMTP send holds nothing
        # up behind it. Measured against 4 (2 processes, 600 emails): the same
        # throughput, 385/s to an instant SMTP sink and 76/s to a 20 ms one.
        "worker_prefetch_multiplier": 1,
        # Keep trying to reach Redis at start-up and after losing it, forever:
        # a worker that gives up is a silent outage; one that waits recovers.
        "broker_connection_retry_on_startup": True,
        "broker_connection_retry": True,
        "broker_connection_max_retries": None,
        # A lost broker connection does not cancel running sends: a send cut
        # off half-way is the duplicate window itself. They finish; what they
        # cannot record is dead-lettered or requeued (NotifierTask.on_failure),
        # and a message whose ack was lost returns to find the ledger's answer.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # A publish that fails is retried briefly, then raises: never a silent loss.
        "task_publish_retry": True,
        "task_publish_retry_policy": publish_retry_policy(),
        # A stuck send must not pin a process forever; both end before the
        # claim lease does, so no claim runs out under a live send, and the
        # settings check makes one send's worst case fit before the soft one
        # (notifier/budget.py).
        "task_soft_time_limit": soft_limit,
        "task_time_limit": hard_limit,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "enable_utc": True,
    }
