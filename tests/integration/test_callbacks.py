"""Callbacks to the producer with real parts: Redis, ``celery -A worker worker`` processes
(notifier.testing's harness), an SMTP sink, and a producer's HTTP endpoint in a thread
that checks every signature with ``verify_signature`` (docs/DESIGN.md §9, §10).

Retries are scaled down (3 attempts, backoff 0.05–0.2 s). Redis unreachable:
skipped locally, failed with CI=true (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from notifier import keys
from notifier.app import CeleryScheduler, NotifierCelery, create_app
from notifier.callback_payload import payload_from
from notifier.callbacks import CallbackPublisher
from notifier.client import publish
from notifier.deadletter import DeadLetter, DeadLetterStore
from notifier.metrics import ProcessRecorder
from notifier.settings import Settings
from notifier.status_store import FinalState
from notifier.testing import SmtpSink, WorkerProcess, make_settings
from tests import samples
from tests.callback_endpoint import CallbackEndpoint
from tests.polling import eventually

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SECRET = "callback-test-secret"
SENDER = "Bookings <bookings@example.com>"
SEND_QUEUES = (keys.EVENTS_QUEUE, keys.EMAIL_QUEUE, keys.SMS_QUEUE)

FAST = {
    "NOTIFIER_RETRY_MAX_ATTEMPTS": "3",
    "NOTIFIER_RETRY_BACKOFF_BASE": "0.05",
    "NOTIFIER_RETRY_BACKOFF_MAX": "0.2",
    "NOTIFIER_CALLBACK_TIMEOUT": "1",
}


def final_state(n: int = 1) -> FinalState:
    return FinalState(
        event_id="6f1c2b9e-4a51-4a0e-9b1e-0c7d2f3a8e11",
        delivery_id=f"d-{n}",
        type="booking.created",
        channel="email",
        template="booking_confirmation_fan",
        state="sent",
        provider_id=f"<{n}@example.com>",
        error=None,
        at="2026-12-07T10:00:00.000Z",
    )


class Deployment:
    """Workers started as operators start them, and the producer's side of Redis."""

    def __init__(self, redis_url: str, sink: SmtpSink, tmp_path: Path) -> None:
        self.redis_url = redis_url
        self.sink = sink
        self.tmp_path = tmp_path
        self.workers: list[WorkerProcess] = []
        self.apps: list[NotifierCelery] = []

    def environment(self, callback_url: str, **overrides: str) -> dict[str, str]:
        ours = {name.upper() for name in Settings.model_fields}
        environment = {k: v for k, v in os.environ.items() if k.upper() not in ours}
        environment.update(
            {
                "REDIS_URL": self.redis_url,
                "MAIL_SERVER": self.sink.host,
                "MAIL_PORT": str(self.sink.port),
                "MAIL_USE_TLS": "false",
                "MAIL_DEFAULT_SENDER": SENDER,
                "NOTIFIER_METRICS_PORT": "0",
                "NOTIFIER_LOG_FORMAT": "json",
                "NOTIFIER_CALLBACK_URL": callback_url,
                "NOTIFIER_CALLBACK_SECRET": SECRET,
                **FAST,
                **overrides,
            }
        )
        return environment

    def worker(
        self,
        callback_url: str,
        queues: tuple[str, ...] = (keys.CALLBACKS_QUEUE,),
        **overrides: str,
    ) -> WorkerProcess:
        name = "-".join(queue.removeprefix("notifier.") for queue in queues)
        worker = WorkerProcess(
            self.environment(callback_url, **overrides),
            self.tmp_path / f"worker-{name}-{len(self.workers)}.log",
            queues=queues,
            concurrency=1,
            cwd=ROOT,
        )
        self.workers.append(worker)
        worker.start().wait_ready()
        return worker

    def producer(self, callback_url: str) -> NotifierCelery:
        """A Celery app for this Redis (the status store's side, which enqueues callbacks)."""
        app = create_app(
            make_settings(
                redis_url=self.redis_url,
                notifier_callback_url=callback_url,
                notifier_callback_secret=SECRET,
            )
        )
        self.apps.append(app)
        return app

    def publisher(self, callback_url: str) -> CallbackPublisher:
        """The final-state sink a worker's Runtime calls, over this Redis."""
        app = self.producer(callback_url)
        return CallbackPublisher(CeleryScheduler(app), app.runtime.dead_letters, ProcessRecorder())

    def dead_letters(self) -> list[DeadLetter]:
        client = redis.Redis.from_url(self.redis_url)
        try:
            entries = list(DeadLetterStore(client))
        finally:
            client.close()
        return [entry for entry in entries if isinstance(entry, DeadLetter)]

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop(timeout=20)
        for app in self.apps:
            app.close_runtime()


@pytest.fixture
def deployment(redis_url: str, smtp_sink: SmtpSink, tmp_path: Path) -> Iterator[Deployment]:
    made = Deployment(redis_url, smtp_sink, tmp_path)
    yield made
    made.stop()


@pytest.fixture
def endpoint() -> Iterator[CallbackEndpoint]:
    with CallbackEndpoint(SECRET) as made:
        yield made


def notifier_cli(deployment: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    """The ``notifier`` command as an operator runs it, against the test Redis."""
    environment = deployment.environment("http://127.0.0.1:9/unused")
    environment["NOTIFIER_LOG_FORMAT"] = "console"
    return subprocess.run(
        [sys.executable, "-m", "notifier", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        cwd=ROOT,
        check=False,
    )


def callback_entries(deployment: Deployment, count: int) -> list[DeadLetter]:
    def probe() -> list[DeadLetter] | None:
        entries = [e for e in deployment.dead_letters() if e.channel == "callback"]
        return entries if len(entries) >= count else None

    return eventually(probe, timeout=30, what=f"{count} callback dead letters")


def test_a_final_state_reaches_the_producer_signed(
    deployment: Deployment, endpoint: CallbackEndpoint
) -> None:
    deployment.worker(endpoint.url)

    deployment.publisher(endpoint.url)(final_state())

    (received,) = endpoint.wait_for(1)
    assert received.signed
    assert received.path == "/hooks/notifier"
    assert received.payload == payload_from(final_state()).model_dump(mode="json")


def test_an_email_sent_by_the_pipeline_calls_the_producer_back_with_its_final_state(
    deployment: Deployment, endpoint: CallbackEndpoint, smtp_sink: SmtpSink
) -> None:
    deployment.worker(endpoint.url, keys.QUEUES)
    event = samples.user_registered()

    publish(event, app=deployment.producer(endpoint.url))

    smtp_sink.wait_for(1, timeout=15)
    (received,) = endpoint.wait_for(1)
    assert received.signed
    payload = received.payload
    assert payload["event_id"] == event["event_id"]
    assert payload["type"] == "user.registered"
    assert payload["channel"] == "email"
    assert payload["template"] == "registration_confirmation"
    assert payload["state"] == "sent"
    assert payload["delivery_id"]
    assert payload["error"] is None


def test_a_rejected_event_calls_the_producer_back_with_state_rejected(
    deployment: Deployment, endpoint: CallbackEndpoint
) -> None:
    deployment.worker(endpoint.url, keys.QUEUES)
    app = deployment.producer(endpoint.url)
    event = {**samples.user_registered(), "type": "user.unheard_of"}

    app.send_task(keys.HANDLE_EVENT_TASK, args=[event], queue=keys.EVENTS_QUEUE)

    (received,) = endpoint.wait_for(1)
    assert received.signed
    assert received.payload["event_id"] == event["event_id"]
    assert received.payload["state"] == "rejected"
    assert received.payload["delivery_id"] is None
    assert "user.unheard_of" in received.payload["error"]


def test_an_endpoint_answering_500_is_retried_then_dead_lettered_with_channel_callback(
    deployment: Deployment,
) -> None:
    with CallbackEndpoint(SECRET, status=500) as failing:
        deployment.worker(failing.url)

        deployment.publisher(failing.url)(final_state())

        (entry,) = callback_entries(deployment, 1)
        requests_seen = failing.received
    assert len(requests_seen) == 3  # NOTIFIER_RETRY_MAX_ATTEMPTS
    assert all(received.signed for received in requests_seen)
    assert entry.status == "failed"
    assert entry.callback == payload_from(final_state())
    assert [record.attempt for record in entry.history] == [1, 2, 3]
    assert "HTTP 500" in entry.error
    assert "gave up after 3 attempts" in entry.error


def test_a_hanging_endpoint_times_out_and_is_retried(deployment: Deployment) -> None:
    with CallbackEndpoint(SECRET, hang=True) as hanging:
        deployment.worker(hanging.url, NOTIFIER_CALLBACK_TIMEOUT="0.5")

        deployment.publisher(hanging.url)(final_state())

        (entry,) = callback_entries(deployment, 1)
        assert len(hanging.received) == 3
    assert [record.attempt for record in entry.history] == [1, 2, 3]
    assert all("did not answer within 0.5 s" in record.error for record in entry.history)


def test_a_redirect_is_not_followed_and_counts_as_a_failure(deployment: Deployment) -> None:
    with (
        CallbackEndpoint(SECRET) as elsewhere,
        CallbackEndpoint(SECRET, status=302, location=elsewhere.url) as redirecting,
    ):
        deployment.worker(redirecting.url, NOTIFIER_RETRY_MAX_ATTEMPTS="2")

        deployment.publisher(redirecting.url)(final_state())

        (entry,) = callback_entries(deployment, 1)
        assert len(redirecting.received) == 2
        assert elsewhere.received == []
    assert "HTTP 302" in entry.error
    assert "redirects are not followed" in entry.error


def test_a_hanging_callback_endpoint_does_not_delay_email_delivery(
    deployment: Deployment, smtp_sink: SmtpSink
) -> None:
    with CallbackEndpoint(SECRET, hang=True) as hanging:
        # As docker-compose.yml runs them: sends and callbacks in separate workers.
        deployment.worker(hanging.url, SEND_QUEUES)
        deployment.worker(hanging.url, NOTIFIER_CALLBACK_TIMEOUT="60")
        app = deployment.producer(hanging.url)
        sink = CallbackPublisher(CeleryScheduler(app), app.runtime.dead_letters, ProcessRecorder())
        for n in range(5):
            sink(final_state(n))
        hanging.wait_for(1)  # the callbacks worker is stuck in a request now

        started = time.monotonic()
        for event in (samples.user_registered(), samples.booking_cancelled()):
            publish(event, app=app)
        received = smtp_sink.wait_for(3, timeout=20)
        elapsed = time.monotonic() - started

        assert len(hanging.received) == 1  # still hanging on the first one
    assert len(received) == 3
    assert elapsed < 15, f"emails took {elapsed:.1f}s behind hanging callbacks"


def test_dlq_replay_of_a_callback_entry_re_enqueues_it_and_it_arrives(
    deployment: Deployment,
) -> None:
    with CallbackEndpoint(SECRET, status=503) as flaky:
        deployment.worker(flaky.url, NOTIFIER_RETRY_MAX_ATTEMPTS="1")
        deployment.publisher(flaky.url)(final_state())
        (entry,) = callback_entries(deployment, 1)

        listed = notifier_cli(deployment, "dlq", "list", "--channel", "callback", "--json")
        counted = notifier_cli(deployment, "dlq", "stats", "--json")
        shown = notifier_cli(deployment, "dlq", "show", entry.id)
        flaky.status = 200  # the producer fixed its endpoint
        replayed = notifier_cli(deployment, "dlq", "replay", entry.id)
        arrivals = flaky.wait_for(2)

    assert [row["id"] for row in json.loads(listed.stdout)] == [entry.id], listed.stderr
    assert json.loads(counted.stdout)["by_channel"] == {"callback": 1}
    assert '"state":"sent"' in shown.stdout
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert f"replayed {entry.id}: re-enqueued on notifier.callbacks" in replayed.stdout
    assert arrivals[1].signed
    assert arrivals[1].payload == payload_from(final_state()).model_dump(mode="json")
    assert callback_entries_now(deployment) == []


def callback_entries_now(deployment: Deployment) -> list[DeadLetter]:
    return [e for e in deployment.dead_letters() if e.channel == "callback"]


@pytest.mark.parametrize(
    "args",
    [[{"payload": "not an object"}], [], ["a", "b"]],
    ids=["bad-job", "no-argument", "two-arguments"],
)
def test_a_malformed_callback_message_is_rejected_and_the_worker_goes_on(
    deployment: Deployment, endpoint: CallbackEndpoint, args: list[Any]
) -> None:
    deployment.worker(endpoint.url)
    app = deployment.producer(endpoint.url)

    app.send_task(keys.CALLBACK_TASK, args=args, queue=keys.CALLBACKS_QUEUE)
    deployment.publisher(endpoint.url)(final_state())

    (received,) = endpoint.wait_for(1)
    assert received.signed
    rejected = eventually(
        lambda: [e for e in deployment.dead_letters() if e.status == "rejected"],
        timeout=15,
        what="the rejected message",
    )
    assert "notifier.callback" in rejected[0].error
