"""Redis goes away: restarted under running workers, or down while a producer publishes.

Each test runs its own ``redis-server`` (AOF on, as production must), so
stopping it harms nobody else's tests.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
import redis

import celeryconfig
from notifier import keys
from notifier.app import create_app
from notifier.client import publish
from notifier.errors import PublishError
from notifier.testing import make_settings
from tests import samples
from tests.polling import eventually
from tests.reliability.conftest import (
    WORKER_PROCESSES,
    RedisServer,
    System,
    event_batch,
    operator_environment,
    planned_emails,
    report,
    retry_waits,
)

pytestmark = [pytest.mark.reliability, pytest.mark.integration]


def test_a_redis_restart_mid_run_loses_nothing_that_was_accepted(
    redis_server: RedisServer, make_system: Callable[[str], System]
) -> None:
    system = make_system(redis_server.url)
    before = event_batch(150, tag="before-")
    after = event_batch(20, tag="after-")
    planned = planned_emails(before + after)
    worker = system.worker().wait_ready()
    system.publish(before)  # returned: every one of them accepted by Redis
    eventually(
        lambda: len(system.sink.messages) >= 40,
        timeout=60,
        what="work under way before the restart",
    )

    redis_server.restart()  # SIGTERM (the AOF is flushed), then up again on the same files
    restarted_at = time.monotonic()
    system.publish(after)  # producers carry on
    tally = system.settle(planned, timeout=90)

    report(
        "redis restart",
        events=len(before) + len(after),
        **tally.figures(),
        seconds_to_settle=round(time.monotonic() - restarted_at, 1),
        dead_letters=system.dead_letter_errors(),
    )
    assert worker.running(), "the worker reconnects by itself: nobody restarted it"
    assert tally.lost == set()
    assert tally.strangers == set()
    # The documented window: a send the SMTP server accepted while Redis was away
    # cannot be recorded. Each pool process has at most one send in flight.
    assert tally.duplicates <= WORKER_PROCESSES


def test_publishing_while_redis_is_down_fails_loudly_and_within_the_retry_policy(
    redis_server: RedisServer,
) -> None:
    app = create_app(make_settings(redis_url=redis_server.url))
    client = redis.Redis.from_url(redis_server.url)
    try:
        sent = publish(samples.user_registered(), app=app)
        redis_server.stop()

        started = time.monotonic()
        with pytest.raises(PublishError, match="broker did not accept"):
            publish(samples.user_registered(), app=app)
        elapsed = time.monotonic() - started

        cli = subprocess.run(
            [sys.executable, "-m", "notifier", "publish", "-"],
            input=json.dumps(samples.user_registered()),
            capture_output=True,
            text=True,
            timeout=60,
            env=operator_environment(redis_server.url),
            check=False,
        )

        redis_server.start()  # the same AOF: what was accepted is still there
        sent_after = publish(samples.user_registered(), app=app)  # recovers by itself
        queued = [json.loads(m) for m in client.lrange(keys.EVENTS_QUEUE, 0, -1)]
    finally:
        client.close()
        app.close()

    waits = sum(retry_waits(celeryconfig.publish_retry_policy()))  # 5 s
    report("redis down while publishing", seconds_to_publish_error=round(elapsed, 2))
    assert waits - 0.5 <= elapsed <= waits + 10, f"gave up after {elapsed:.1f}s"
    assert cli.returncode == 2, cli.stderr
    assert cli.stdout.strip() == "", "no event_id printed: nothing claimed as sent"
    # Exactly what publish() reported as sent is queued: nothing more, nothing less.
    assert sorted(body_event_id(m) for m in queued) == sorted([sent, sent_after])


def body_event_id(message: dict[str, object]) -> str:
    """The event_id inside a queued Celery message (protocol 2, JSON body)."""
    body = message["body"]
    assert isinstance(body, str)
    args, _kwargs, _embed = json.loads(base64.b64decode(body))
    return str(args[0]["event_id"])
