"""Callbacks to the producer (docs/DESIGN.md §9): payload, signature, HTTP outcomes, retries.

Stores are fakeredis; the HTTP tests talk to a real local server
(``tests.callback_endpoint``), and a fake sender stands in where only the
outcome of a POST matters.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import requests
from pydantic import SecretStr
from structlog.testing import capture_logs

import celeryconfig
from notifier import keys
from notifier.callback_payload import CallbackPayload, payload_from
from notifier.callbacks import (
    CallbackPoster,
    CallbackPublisher,
    body_of,
    classify_status,
    post_callback,
    run,
    sign,
    verify_signature,
)
from notifier.cli import worker as worker_command
from notifier.deadletter import DeadLetter, DeadLetterStore, Filter
from notifier.errors import ConfigurationError, PublishError, TransientError
from notifier.jobs import CallbackJob, Job
from notifier.pipeline import replay_many, task_failed
from notifier.runtime import Runtime
from notifier.status_store import FinalState
from tests.callback_endpoint import CallbackEndpoint
from tests.conftest import make_settings

SECRET = "s3cret"
NOW = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
MAX_ATTEMPTS = 3

SENT = FinalState(
    event_id="6f1c2b9e-4a51-4a0e-9b1e-0c7d2f3a8e11",
    delivery_id="d-1",
    type="booking.created",
    channel="email",
    template="booking_confirmation_fan",
    state="sent",
    provider_id="<id@example.com>",
    error=None,
    at="2026-12-07T10:00:00.000Z",
)


# --- the payload -------------------------------------------------------------------


def test_the_payload_has_the_contracts_fields_in_the_contracts_order() -> None:
    payload = payload_from(SENT).model_dump(mode="json")

    assert list(payload) == [
        "event_id",
        "delivery_id",
        "type",
        "channel",
        "template",
        "state",
        "provider_id",
        "error",
        "at",
    ]
    assert payload["state"] == "sent"
    assert payload["provider_id"] == "<id@example.com>"


def test_a_rejected_event_calls_back_with_nulls_for_what_it_never_had() -> None:
    rejected = FinalState("e-1", None, None, None, None, "rejected", None, "bad type", "t")

    payload = payload_from(rejected).model_dump(mode="json")

    assert payload["delivery_id"] is None
    assert payload["channel"] is None
    assert payload["error"] == "bad type"


def test_the_body_is_the_payload_as_compact_utf8_json() -> None:
    final = dataclasses.replace(SENT, error="Grüße")

    body = body_of(payload_from(final))

    assert b" " not in body.replace(b"Gr\xc3\xbc\xc3\x9fe", b"")
    assert json.loads(body) == payload_from(final).model_dump(mode="json")
    assert "Grüße".encode() in body


def test_a_producers_long_text_is_cut_in_the_payload() -> None:
    final = dataclasses.replace(SENT, event_id="e" * 5000, error="x" * 10_000)

    payload = payload_from(final)

    assert len(payload.event_id.encode()) <= 200
    assert payload.error is not None
    assert payload.error.endswith("bytes]")
    assert len(payload.error.encode()) <= 1024


# --- the signature -----------------------------------------------------------------


BODY = b'{"event_id":"e-1","state":"sent"}'


def test_the_signature_matches_a_known_vector() -> None:
    assert sign(SECRET, BODY, 1765100000) == (
        "t=1765100000,v1=3c3e6ad18628aabf805e00fd5c7537af9779950c8bbcb4200e3d581dff68b3cb"
    )


def test_verify_accepts_what_sign_made() -> None:
    assert verify_signature(SECRET, sign(SECRET, BODY, 1765100000), BODY, now=1765100010)


def test_verify_refuses_a_timestamp_older_than_the_tolerance() -> None:
    header = sign(SECRET, BODY, 1765100000)

    assert not verify_signature(SECRET, header, BODY, now=1765100000 + 301)


def test_verify_refuses_a_timestamp_from_the_future() -> None:
    header = sign(SECRET, BODY, 1765100000)

    assert not verify_signature(SECRET, header, BODY, now=1765100000 - 301)


def test_verify_refuses_a_changed_body() -> None:
    header = sign(SECRET, BODY, 1765100000)

    assert not verify_signature(SECRET, header, BODY.replace(b"sent", b"failed"), 1765100000)


def test_verify_refuses_another_secret() -> None:
    header = sign("another", BODY, 1765100000)

    assert not verify_signature(SECRET, header, BODY, now=1765100000)


@pytest.mark.parametrize(
    "header",
    ["", "v1=abc", "t=1765100000", "t=abc,v1=00", "t=-1765100000,v1=00", "garbage"],
)
def test_verify_refuses_a_malformed_header(header: str) -> None:
    assert not verify_signature(SECRET, header, BODY, now=1765100000)


def test_verify_accepts_any_one_matching_v1_part() -> None:
    good = sign(SECRET, BODY, 1765100000)

    assert verify_signature(SECRET, f"{good},v1=00ff", BODY, now=1765100000)


# --- the HTTP outcome --------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_a_2xx_ends_a_callback(status: int) -> None:
    assert classify_status(status, "OK") is None


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_a_failure_that_says_it_was_not_followed(status: int) -> None:
    failure = classify_status(status, "Moved")

    assert isinstance(failure, TransientError)
    assert "redirects are not followed" in str(failure)


@pytest.mark.parametrize("status", [100, 400, 401, 404, 429, 500, 503])
def test_any_other_status_is_a_transient_failure(status: int) -> None:
    failure = classify_status(status, "Nope")

    assert isinstance(failure, TransientError)
    assert f"HTTP {status}" in str(failure)


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as made:
        yield made


def test_a_post_carries_the_body_signed_at_the_injected_clock(session: requests.Session) -> None:
    with CallbackEndpoint(SECRET) as endpoint:
        poster = CallbackPoster(
            endpoint.url, SecretStr(SECRET), 5, clock=datetime.now, session=session
        )
        poster.post(payload_from(SENT))
        (received,) = endpoint.wait_for(1)

    assert received.signed
    assert received.body == body_of(payload_from(SENT))
    assert received.signature.startswith("t=")


def test_the_signature_time_is_the_clocks(session: requests.Session) -> None:
    with CallbackEndpoint(SECRET) as endpoint:
        poster = CallbackPoster(
            endpoint.url, SecretStr(SECRET), 5, clock=lambda: NOW, session=session
        )
        poster.post(payload_from(SENT))
        (received,) = endpoint.wait_for(1)

    assert received.signature.startswith(f"t={int(NOW.timestamp())},v1=")
    assert not received.signed  # NOW is long past: the receiver refuses it as stale


def test_a_hanging_endpoint_is_a_transient_timeout(session: requests.Session) -> None:
    with (
        CallbackEndpoint(SECRET, hang=True) as endpoint,
        pytest.raises(TransientError, match=r"did not answer within 0\.3 s"),
    ):
        post_callback(session, endpoint.url, SecretStr(SECRET), BODY, timeout=0.3, now=1765100000)


def test_an_unreachable_endpoint_is_transient_and_names_only_the_host(
    session: requests.Session,
) -> None:
    with CallbackEndpoint(SECRET) as endpoint:
        url = endpoint.url
    # Closed: nothing listens there any more.

    with pytest.raises(TransientError) as raised:
        post_callback(session, url + "?token=t0ps3cret", SecretStr(SECRET), BODY, timeout=2, now=1)

    assert "unreachable: ConnectionError" in str(raised.value)
    assert "t0ps3cret" not in str(raised.value)
    assert "/hooks" not in str(raised.value)


def test_a_redirect_is_not_followed_and_fails(session: requests.Session) -> None:
    with (
        CallbackEndpoint(SECRET) as elsewhere,
        CallbackEndpoint(SECRET, status=307, location=elsewhere.url) as endpoint,
    ):
        with pytest.raises(TransientError, match="HTTP 307"):
            post_callback(session, endpoint.url, SecretStr(SECRET), BODY, timeout=2, now=1765100000)

        assert len(endpoint.received) == 1
        assert elsewhere.received == []


def test_the_secret_is_never_in_a_failures_reason(session: requests.Session) -> None:
    with (
        CallbackEndpoint(SECRET, status=500) as endpoint,
        pytest.raises(TransientError) as raised,
    ):
        post_callback(session, endpoint.url, SecretStr(SECRET), BODY, timeout=2, now=1)

    assert SECRET not in str(raised.value)


# --- one attempt of a job ------------------------------------------------------------


@dataclass
class NoScheduler:
    """The deliveries' queue: these tests put nothing there."""

    def schedule(self, job: Job, countdown: float) -> None:
        raise AssertionError("no delivery expected")

    def publish_event(self, event: dict[str, Any]) -> None:
        raise AssertionError("no event expected")

    def schedule_many(self, jobs: Any, events: Any = ()) -> None:
        assert not jobs, "no delivery expected"
        assert not events, "no event expected"


@dataclass
class RecordingCallbackQueue:
    """Stands in for notifier.callbacks: what would be enqueued, or a publish failure."""

    scheduled: list[tuple[CallbackJob, float, bool]] = field(default_factory=list)
    failure: PublishError | None = None

    def schedule_callback(self, job: CallbackJob, countdown: float, *, quick: bool = False) -> None:
        if self.failure is not None:
            raise self.failure
        self.scheduled.append((job, countdown, quick))


@dataclass
class FakeSender:
    """A callback sender whose POSTs fail with ``failures``, in order, then succeed."""

    failures: list[TransientError] = field(default_factory=list)
    posted: list[CallbackPayload] = field(default_factory=list)

    def post(self, payload: CallbackPayload) -> None:
        self.posted.append(payload)
        if self.failures:
            raise self.failures.pop(0)

    def close(self) -> None:
        pass


class CountingMetrics:
    def __init__(self) -> None:
        self.callbacks: list[str] = []

    def record_delivery(self, channel: str | None, event_type: str | None, outcome: str) -> None:
        pass

    def record_event(self, event_type: str) -> None:
        pass

    def timed_send(self, send: Any) -> Any:
        return send()

    def record_callback(self, outcome: str) -> None:
        self.callbacks.append(outcome)


@dataclass
class World:
    rt: Runtime
    queue: RecordingCallbackQueue
    sender: FakeSender
    metrics: CountingMetrics

    @property
    def dead_letters(self) -> list[DeadLetter]:
        entries = list(self.rt.dead_letters)
        assert all(isinstance(entry, DeadLetter) for entry in entries)
        return [entry for entry in entries if isinstance(entry, DeadLetter)]


@pytest.fixture
def world() -> Iterator[World]:
    if importlib.util.find_spec("lupa") is None:
        pytest.fail("the dead-letter store runs Lua scripts: install the dev extra (lupa)")
    queue, sender, metrics = RecordingCallbackQueue(), FakeSender(), CountingMetrics()
    settings = make_settings(
        notifier_retry_max_attempts=MAX_ATTEMPTS,
        notifier_retry_backoff_base=5,
        notifier_callback_url="https://producer.example.com/hooks",
        notifier_callback_secret=SECRET,
    )
    production = Runtime.from_settings(
        settings,
        NoScheduler(),
        client=fakeredis.FakeRedis(),
        callback_queue=queue,
        clock=lambda: NOW,
    )
    assert production.callback_poster is not None
    production.callback_poster.close()
    rt = dataclasses.replace(production, callback_poster=sender, metrics=metrics)
    yield World(rt, queue, sender, metrics)
    rt.redis.close()


def job(attempt: int = 1) -> dict[str, Any]:
    return CallbackJob(payload=payload_from(SENT), attempt=attempt).model_dump(mode="json")


def test_a_2xx_ends_the_job_and_counts_it_sent(world: World) -> None:
    assert run(job(), world.rt) == "sent"

    assert world.sender.posted == [payload_from(SENT)]
    assert world.queue.scheduled == []
    assert world.metrics.callbacks == ["sent"]


def test_a_failed_callback_is_retried_with_the_deliveries_backoff(world: World) -> None:
    world.sender.failures.append(TransientError("callback endpoint answered HTTP 500"))

    assert run(job(), world.rt) == "retried"

    ((retry, countdown, quick),) = world.queue.scheduled
    assert retry.attempt == 2
    assert 0 <= countdown <= 5  # retry 1: uniform(0, base)
    assert not quick
    assert [record.error for record in retry.history] == [
        "TransientError: callback endpoint answered HTTP 500"
    ]
    assert world.metrics.callbacks == ["retried"]


def test_after_the_last_attempt_a_callback_is_dead_lettered_with_channel_callback(
    world: World,
) -> None:
    world.sender.failures.append(TransientError("callback endpoint answered HTTP 500"))

    assert run(job(attempt=MAX_ATTEMPTS), world.rt) == "dead"

    (entry,) = world.dead_letters
    assert entry.channel == "callback"
    assert entry.status == "failed"
    assert entry.callback == payload_from(SENT)
    assert entry.event_id == SENT.event_id
    assert entry.event_type == "booking.created"
    assert f"gave up after {MAX_ATTEMPTS} attempts" in entry.error
    assert world.queue.scheduled == []
    assert world.metrics.callbacks == ["dead"]


def test_a_malformed_callback_job_is_rejected_and_kept(world: World) -> None:
    assert run({"payload": {"event_id": 5}}, world.rt) == "rejected"

    (entry,) = world.dead_letters
    assert entry.status == "rejected"
    assert any("notifier.callback job" in error for error in entry.errors)
    assert world.sender.posted == []


def test_a_forged_callback_job_with_an_oversize_field_is_rejected_not_sent(world: World) -> None:
    forged = job()
    forged["payload"]["error"] = "x" * 1_000_000

    assert run(forged, world.rt) == "rejected"

    (entry,) = world.dead_letters
    assert entry.status == "rejected"
    assert world.sender.posted == []


def test_with_callbacks_off_a_job_is_dead_lettered_at_once(world: World) -> None:
    rt = dataclasses.replace(world.rt, callback_poster=None)

    assert run(job(), rt) == "dead"

    (entry,) = world.dead_letters
    assert entry.channel == "callback"
    assert "NOTIFIER_CALLBACK_URL" in entry.error


def test_a_callback_that_crashed_its_task_is_dead_lettered_as_a_callback(world: World) -> None:
    task_failed("notifier.callback", (job(),), {}, RuntimeError("boom"), world.rt)

    (entry,) = world.dead_letters
    assert entry.channel == "callback"
    assert entry.callback == payload_from(SENT)
    assert entry.error == "RuntimeError: boom"


# --- dead letters of callbacks ---------------------------------------------------------


def test_callback_dead_letters_are_listed_and_counted_by_channel(world: World) -> None:
    store = world.rt.dead_letters
    store.add_callback(payload_from(SENT), error="TransientError: HTTP 500", history=[])

    page = store.page(Filter(channel="callback"))

    assert [entry.channel for entry in page.entries] == ["callback"]
    assert page.total == 1
    assert store.stats()["by_channel"] == {"callback": 1}
    assert store.stats(Filter(channel="callback"))["total"] == 1


def test_a_callback_dead_letter_reads_back_with_its_payload(world: World) -> None:
    store: DeadLetterStore = world.rt.dead_letters
    written = store.add_callback(payload_from(SENT), error="TransientError: x", history=[])

    entry = store.get(written.id)

    assert isinstance(entry, DeadLetter)
    assert entry.callback == payload_from(SENT)
    assert entry.delivery is None
    assert entry.model_dump(mode="json")["callback"]["state"] == "sent"


def test_replaying_a_callback_entry_puts_it_back_on_the_callbacks_queue(world: World) -> None:
    entry = world.rt.dead_letters.add_callback(
        payload_from(SENT), error="TransientError: x", history=[]
    )

    (outcome,) = replay_many([entry], world.rt)

    assert outcome == "re-enqueued on notifier.callbacks"
    ((replayed, countdown, _),) = world.queue.scheduled
    assert replayed.payload == payload_from(SENT)
    assert replayed.attempt == 1
    assert countdown == 0


# --- the sink ----------------------------------------------------------------------------


def test_the_publisher_enqueues_one_callback_without_waiting(world: World) -> None:
    publisher = CallbackPublisher(world.queue, world.rt.dead_letters, world.metrics)

    publisher(SENT)

    ((queued, countdown, quick),) = world.queue.scheduled
    assert queued.payload == payload_from(SENT)
    assert queued.attempt == 1
    assert countdown == 0
    assert quick
    assert world.metrics.callbacks == ["queued"]


def test_a_callback_the_broker_refused_is_kept_as_a_dead_letter_not_raised(world: World) -> None:
    world.queue.failure = PublishError("broker did not accept the job: ConnectionError")
    publisher = CallbackPublisher(world.queue, world.rt.dead_letters, world.metrics)

    publisher(SENT)

    (entry,) = world.dead_letters
    assert entry.channel == "callback"
    assert entry.callback == payload_from(SENT)
    assert entry.error.startswith("PublishError:")


def test_a_callback_neither_queued_nor_kept_is_logged_lost_not_raised(world: World) -> None:
    world.queue.failure = PublishError("broker did not accept the job")
    down = fakeredis.FakeServer()
    down.connected = False  # Redis gone: the dead-letter write fails too
    publisher = CallbackPublisher(
        world.queue, DeadLetterStore(fakeredis.FakeRedis(server=down)), world.metrics
    )

    with capture_logs() as logs:
        publisher(SENT)

    (lost,) = [log for log in logs if log["event"] == "callback.lost"]
    assert lost["payload"]["event_id"] == SENT.event_id
    assert world.metrics.callbacks == ["lost"]


# --- settings ---------------------------------------------------------------------------


def test_a_callback_url_without_a_secret_is_refused_naming_both_and_showing_neither() -> None:
    with pytest.raises(ConfigurationError) as raised:
        make_settings(notifier_callback_url="https://producer.example.com/hooks?k=v4lue")

    message = str(raised.value)
    assert "NOTIFIER_CALLBACK_URL" in message
    assert "NOTIFIER_CALLBACK_SECRET" in message
    assert "v4lue" not in message


@pytest.mark.parametrize("url", ["ftp://producer.example.com/", "producer.example.com/hooks"])
def test_a_callback_url_must_be_absolute_http_or_https(url: str) -> None:
    with pytest.raises(ConfigurationError, match="NOTIFIER_CALLBACK_URL"):
        make_settings(notifier_callback_url=url, notifier_callback_secret=SECRET)


def test_the_callback_timeout_must_be_positive() -> None:
    with pytest.raises(ConfigurationError, match="NOTIFIER_CALLBACK_TIMEOUT"):
        make_settings(notifier_callback_timeout=0)


def test_the_callback_timeout_is_capped_so_both_waits_fit_the_time_for_sends() -> None:
    settings = make_settings(notifier_callback_timeout=600)

    assert settings.callback_timeout == settings.time_limits.sends / 2
    assert make_settings().callback_timeout == 10


def test_the_secret_is_not_in_the_settings_repr() -> None:
    settings = make_settings(
        notifier_callback_url="https://producer.example.com/hooks?k=v4lue",
        notifier_callback_secret="hunter2-secret",
    )

    assert "hunter2-secret" not in repr(settings)
    assert "v4lue" not in repr(settings)


def test_the_runtime_sends_callbacks_only_with_url_and_secret() -> None:
    client = fakeredis.FakeRedis()
    off = Runtime.from_settings(make_settings(), NoScheduler(), client=client)
    on = Runtime.from_settings(
        make_settings(
            notifier_callback_url="https://producer.example.com/hooks",
            notifier_callback_secret=SECRET,
        ),
        NoScheduler(),
        client=client,
    )
    try:
        assert off.callback_poster is None
        assert isinstance(on.callback_poster, CallbackPoster)
    finally:
        on.close()
        off.close()


def test_final_states_are_published_only_with_url_secret_and_a_queue() -> None:
    configured = make_settings(
        notifier_callback_url="https://producer.example.com/hooks",
        notifier_callback_secret=SECRET,
    )
    client = fakeredis.FakeRedis()
    queue = RecordingCallbackQueue()
    made = [
        Runtime.from_settings(configured, NoScheduler(), client=client, callback_queue=queue),
        Runtime.from_settings(configured, NoScheduler(), client=client),
        Runtime.from_settings(make_settings(), NoScheduler(), client=client, callback_queue=queue),
    ]
    try:
        assert [isinstance(rt.on_final, CallbackPublisher) for rt in made] == [True, False, False]
        made[0].on_final(SENT)
        assert [job.payload for job, _, _ in queue.scheduled] == [payload_from(SENT)]
    finally:
        for rt in made:
            rt.close()


# --- the queue ------------------------------------------------------------------------


def test_notifier_worker_consumes_the_callbacks_queue_by_default() -> None:
    default = inspect.signature(worker_command).parameters["queues"].default

    assert keys.CALLBACKS_QUEUE in default.split(",")


def test_a_callback_sent_without_a_queue_is_routed_to_the_callbacks_queue() -> None:
    routes = celeryconfig.build(make_settings())["task_routes"]

    assert routes[keys.CALLBACK_TASK] == {"queue": "notifier.callbacks"}


# --- the docs -----------------------------------------------------------------------------


def _documented_verify() -> Any:
    """The stand-alone ``verify`` docs/operations.md gives receivers without notifier."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    (source,) = [block for block in blocks if "def verify(" in block]
    namespace: dict[str, Any] = {}
    exec(compile(source, "docs/operations.md", "exec"), namespace)  # our own docs
    return namespace["verify"]


def test_the_documented_standalone_verify_accepts_our_signature_and_refuses_a_stale_one() -> None:
    verify = _documented_verify()
    header = sign(SECRET, BODY, 1765100000)

    assert verify(SECRET, header, BODY, 1765100010)
    assert not verify(SECRET, header, BODY, 1765100000 + 301)
    assert not verify(SECRET, header, BODY + b" ", 1765100010)
