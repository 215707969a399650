"""Whatever lands on a queue, the worker keeps it as a ``rejected`` dead letter and goes on.

Issue 13, items 1 and 2: entries kombu could not read used to stop the worker
("Unrecoverable error") or loop its connection, and messages Celery could not
run (unknown task, other serializers, no task headers) were acked away with a
log line that printed the event. Each case is written to Redis the way an
attacker with queue access would, and followed by a good event.
"""

from __future__ import annotations

import base64
import json
import pickle
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from notifier.app import NotifierCelery
from notifier.deadletter import DeadLetter, DeadLetterStore
from notifier.testing import SmtpSink
from tests import samples
from tests.polling import eventually

pytestmark = pytest.mark.integration

GOOD_RECIPIENT = "grace@example.com"
SECRET_NAME = "Ada Secretname"


def envelope(
    body: bytes,
    *,
    content_type: str = "application/json",
    headers: dict[str, Any] | None = None,
    body_encoding: str = "base64",
) -> bytes:
    encoded = base64.b64encode(body).decode() if body_encoding == "base64" else body.decode()
    return json.dumps(
        {
            "body": encoded,
            "content-encoding": "utf-8",
            "content-type": content_type,
            "headers": headers if headers is not None else {},
            "properties": {
                "delivery_tag": str(uuid.uuid4()),
                "body_encoding": body_encoding,
                "delivery_info": {"exchange": "notifier.events", "routing_key": "notifier.events"},
                "priority": 0,
            },
        }
    ).encode()


def task_headers(name: str) -> dict[str, Any]:
    return {"lang": "py", "task": name, "id": str(uuid.uuid4()), "argsrepr": "", "kwargsrepr": ""}


def push(app: NotifierCelery, raw: bytes) -> None:
    client = redis.Redis.from_url(app.settings.redis_url)
    client.lpush("notifier.events", raw)
    client.close()


def publish_good_event_and_wait(app: NotifierCelery, smtp_sink: SmtpSink) -> None:
    user = {"name": "Grace Hopper", "email": GOOD_RECIPIENT, "phone": None}
    app.send_task("notifier.handle_event", args=[samples.user_registered(user=user)])
    eventually(
        lambda: any(GOOD_RECIPIENT in mail.rcpt_tos for mail in smtp_sink.messages),
        timeout=15,
        what="the good event published after the hostile entry",
    )


def the_rejected_entry(dead_letters: DeadLetterStore) -> DeadLetter:
    [entry] = eventually(lambda: list(dead_letters), timeout=5, what="a dead-letter entry")
    assert entry.status == "rejected"
    return entry


def secret_event() -> dict[str, Any]:
    return samples.user_registered(
        user={"name": SECRET_NAME, "email": "ada@example.com", "phone": None}
    )


RAW_ENTRIES = [
    pytest.param(b"not json", "not JSON", id="not-json"),
    pytest.param(b"[]", "no properties object", id="array"),
    pytest.param(b'"str"', "not a JSON object", id="string"),
    pytest.param(b"null", "not a JSON object", id="null"),
    pytest.param(b"{}", "no properties object", id="empty-object"),
    pytest.param(b'{"body":"x"}', "no properties object", id="body-only"),
    pytest.param(
        envelope(b"%%%", body_encoding="utf-8").replace(b'"utf-8", "delivery_info"', b'"base64"'),
        "",
        id="body-not-base64",
    ),
    pytest.param(
        json.dumps(
            {
                "content-type": "application/json",
                "headers": task_headers("notifier.handle_event"),
                "properties": {"delivery_tag": "no-body", "body_encoding": "base64"},
            }
        ).encode(),
        "",
        id="envelope-without-body",
    ),
]


@pytest.mark.parametrize(("raw", "reason"), RAW_ENTRIES)
def test_a_malformed_queue_entry_becomes_a_rejected_dead_letter_and_the_worker_goes_on(
    raw: bytes,
    reason: str,
    app: NotifierCelery,
    smtp_sink: SmtpSink,
    dead_letters: DeadLetterStore,
) -> None:
    push(app, raw)
    publish_good_event_and_wait(app, smtp_sink)

    entry = the_rejected_entry(dead_letters)
    assert reason in entry.error
    assert entry.raw_event is not None


def test_an_unknown_task_name_is_rejected_without_printing_the_event(
    app: NotifierCelery,
    smtp_sink: SmtpSink,
    dead_letters: DeadLetterStore,
    capfd: pytest.CaptureFixture[str],
) -> None:
    app.send_task("notifier.handle_evnt", args=[secret_event()], queue="notifier.events")
    publish_good_event_and_wait(app, smtp_sink)

    entry = the_rejected_entry(dead_letters)
    assert "notifier.handle_evnt" in entry.error
    out, err = capfd.readouterr()
    assert SECRET_NAME not in out + err


@pytest.mark.parametrize(
    "content_type",
    ["application/x-python-serialize", "application/x-yaml", "application/x-msgpack"],
)
def test_a_message_in_another_serializer_is_rejected_and_never_decoded(
    content_type: str,
    app: NotifierCelery,
    smtp_sink: SmtpSink,
    dead_letters: DeadLetterStore,
    tmp_path: Path,
) -> None:
    proof = tmp_path / "unpickled"

    class Exploit:
        def __reduce__(self) -> tuple[Any, ...]:
            return (proof.write_text, ("owned",))

    body = pickle.dumps(((Exploit(),), {}, {})) if "python" in content_type else b"!!python/x"
    push(
        app,
        envelope(body, content_type=content_type, headers=task_headers("notifier.handle_event")),
    )
    publish_good_event_and_wait(app, smtp_sink)

    entry = the_rejected_entry(dead_letters)
    assert content_type in entry.error
    assert not proof.exists()


def test_a_message_without_task_headers_is_rejected(
    app: NotifierCelery, smtp_sink: SmtpSink, dead_letters: DeadLetterStore
) -> None:
    body = json.dumps([[secret_event()], {}, {}]).encode()
    push(app, envelope(body, headers={}))
    publish_good_event_and_wait(app, smtp_sink)

    entry = the_rejected_entry(dead_letters)
    assert "task" in entry.error


@pytest.mark.filterwarnings("ignore:Exception raised outside body:RuntimeWarning")
def test_a_message_with_null_keyword_arguments_is_rejected_with_the_fix_in_its_reason(
    app: NotifierCelery, smtp_sink: SmtpSink, dead_letters: DeadLetterStore
) -> None:
    # What celery-node writes when a producer leaves kwargs out.
    body = json.dumps([[secret_event()], None, {}]).encode()
    push(app, envelope(body, headers=task_headers("notifier.handle_event")))
    publish_good_event_and_wait(app, smtp_sink)

    entry = the_rejected_entry(dead_letters)
    assert "got null" in entry.error
    assert entry.raw_event is not None
