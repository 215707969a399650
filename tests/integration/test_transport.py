"""The reliable fetch (notifier/transport.py) against real Redis.

The defect it fixes (issue 18, kombu#305): kombu's ``BRPOP`` removes a message
from its queue before the consumer records it in ``unacked``; a consumer
whose connection drops in between takes the message with it. The first test
runs the same scenario through stock kombu, where it must fail.
"""

from __future__ import annotations

import contextlib
import json
import select
import uuid
from collections.abc import Iterator
from queue import Empty
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Queue
from kombu.transport import redis as kombu_redis

from notifier import keys
from notifier.transport import RejectedEntry, ReliableFetch, SentinelTransport, Transport
from tests.polling import eventually

pytestmark = pytest.mark.integration

QUEUE = "t.reliable"
OTHER = "t.other"


def envelope(body: Any, tag: str | None = None) -> dict[str, Any]:
    """A kombu message as a Celery client writes it to the queue list (JSON body)."""
    return {
        "body": json.dumps(body),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {},
        "properties": {
            "delivery_tag": tag or str(uuid.uuid4()),
            "body_encoding": "utf-8",
            "delivery_info": {"exchange": QUEUE, "routing_key": QUEUE},
            "priority": 0,
        },
    }


class Received:
    """What the consumer was handed, and what the rejected handler recorded."""

    def __init__(self) -> None:
        self.bodies: list[Any] = []
        self.rejected: list[RejectedEntry] = []

    def on_message(self, body: Any, message: Any) -> None:
        self.bodies.append(body)
        message.ack()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def connect(redis_url: str, transport: type, received: Received | None = None) -> Connection:
    options: dict[str, Any] = {"visibility_timeout": 3600}
    if received is not None:
        options["rejected_handler"] = received.rejected.append
    return Connection(redis_url, transport=transport, transport_options=options)


def queue(name: str = QUEUE) -> Queue:
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def drain(connection: Connection, times: int = 1) -> None:
    for _ in range(times):
        with contextlib.suppress(TimeoutError):
            connection.drain_events(timeout=0.5)


def redis_channel(connection: Connection) -> Any:
    """The connection's channel, whose Redis internals (client, _get, qos) the stubs do not show."""
    return connection.default_channel


def wait_readable(channel: Any) -> None:
    sock = channel.client.connection._sock
    readable, _, _ = select.select([sock], [], [], 5)
    assert readable, "the consumer's request got no reply"


def ask_for_a_message(connection: Connection, channel: Any) -> None:
    """Put the consumer in the state it waits in when its queues are empty."""
    transport: Any = connection.transport  # the Redis transport's poller is private
    transport.cycle._register_BRPOP(channel)  # as the event loop does
    if isinstance(channel, ReliableFetch):
        # Ours first tries every queue in one script; finding them empty it
        # sends the wait. Read that first reply, as the event loop would.
        wait_readable(channel)
        with pytest.raises(Empty):
            channel._brpop_read()


@pytest.mark.parametrize(
    "transport",
    [
        Transport,
        pytest.param(
            kombu_redis.Transport,
            marks=pytest.mark.xfail(strict=True, reason="kombu#305: BRPOP then record"),
        ),
    ],
    ids=["notifier", "stock-kombu"],
)
def test_a_consumer_that_drops_its_connection_while_waiting_takes_no_message_with_it(
    redis_url: str, client: redis.Redis, transport: type
) -> None:
    connection = connect(redis_url, transport)
    channel = redis_channel(connection)
    with Consumer(channel, [queue()], callbacks=[lambda body, message: None]):
        ask_for_a_message(connection, channel)
        client.lpush(QUEUE, json.dumps(envelope("precious")))
        wait_readable(channel)  # Redis answered the waiting request
        channel.client.connection.disconnect()  # ...to a consumer that is gone
    connection.release()

    in_queue = client.llen(QUEUE)
    in_unacked = client.hlen("unacked")
    assert in_queue + in_unacked == 1


def test_a_taken_message_is_recorded_in_unacked_in_the_same_step(
    redis_url: str, client: redis.Redis
) -> None:
    message = envelope("one", tag="tag-1")
    client.lpush(QUEUE, json.dumps(message))
    with connect(redis_url, Transport) as connection:
        taken = redis_channel(connection)._get(QUEUE)

    assert taken == message
    assert client.llen(QUEUE) == 0
    stored = json.loads(client.hget("unacked", "tag-1") or b"null")
    assert stored == [message, QUEUE, QUEUE]
    assert client.zscore("unacked_index", "tag-1") is not None


def test_an_unacked_message_is_restored_to_its_queue_intact(
    redis_url: str, client: redis.Redis
) -> None:
    message = envelope({"n": 1}, tag="tag-2")
    client.lpush(QUEUE, json.dumps(message))
    with connect(redis_url, Transport) as connection:
        channel = redis_channel(connection)
        queue()(channel).declare()  # the exchange binding a restore follows
        channel._get(QUEUE)
        channel.qos.restore_by_tag("tag-2")

    raw = client.rpop(QUEUE)
    assert isinstance(raw, bytes)
    restored = json.loads(raw)
    assert restored["body"] == message["body"]
    assert restored["properties"]["delivery_info"]["redelivered"] is True
    assert client.hlen("unacked") == 0


def test_an_acked_message_leaves_no_trace(redis_url: str, client: redis.Redis) -> None:
    received = Received()
    client.lpush(QUEUE, json.dumps(envelope("done")))
    with (
        connect(redis_url, Transport, received) as connection,
        connection.Consumer([queue()], callbacks=[received.on_message]),
    ):
        drain(connection)

    assert received.bodies == ["done"]
    assert client.hlen("unacked") == 0
    assert client.zcard("unacked_index") == 0


MALFORMED = [
    pytest.param(b"not json", "not JSON", id="not-json"),
    pytest.param(b"[]", "no properties object", id="array"),
    pytest.param(b'"str"', "not a JSON object", id="string"),
    pytest.param(b"null", "not a JSON object", id="null"),
    pytest.param(b"{}", "no properties object", id="empty-object"),
    pytest.param(b'{"body": "x"}', "no properties object", id="body-only"),
    pytest.param(
        json.dumps(
            {
                "body": "%%% not base64 %%%",
                "content-type": "application/json",
                "properties": {
                    "delivery_tag": "t-1",
                    "body_encoding": "base64",
                    "delivery_info": {"exchange": QUEUE, "routing_key": QUEUE},
                },
            }
        ).encode(),
        "unreadable envelope",
        id="body-not-base64",
    ),
    pytest.param(
        json.dumps({"properties": {"delivery_tag": "t-2"}, "headers": "not a dict"}).encode(),
        "unreadable envelope",
        id="headers-not-an-object",
    ),
]


@pytest.mark.parametrize(("raw", "reason"), MALFORMED)
def test_a_malformed_entry_is_handed_to_the_rejected_handler_and_consuming_goes_on(
    redis_url: str, client: redis.Redis, raw: bytes, reason: str
) -> None:
    received = Received()
    client.lpush(QUEUE, raw)
    client.lpush(QUEUE, json.dumps(envelope("after")))
    with (
        connect(redis_url, Transport, received) as connection,
        connection.Consumer([queue()], callbacks=[received.on_message]),
    ):
        drain(connection, times=3)

    assert received.bodies == ["after"]
    [entry] = received.rejected
    assert (entry.queue, entry.raw) == (QUEUE, raw)
    assert reason in entry.reason
    assert client.llen(keys.TRANSPORT_REJECTED) == 0
    assert client.hlen("unacked") == 0


def test_a_rejected_entry_stays_until_its_handler_succeeds(
    redis_url: str, client: redis.Redis
) -> None:
    def unavailable(entry: RejectedEntry) -> None:
        raise redis.ConnectionError("dead-letter store unreachable")

    client.lpush(QUEUE, b"not json")
    options = {"visibility_timeout": 3600, "rejected_handler": unavailable}
    with (
        Connection(redis_url, transport=Transport, transport_options=options) as connection,
        pytest.raises(redis.ConnectionError),
    ):
        redis_channel(connection)._get(QUEUE)

    [stored] = client.lrange(keys.TRANSPORT_REJECTED, 0, -1)
    assert isinstance(stored, bytes)
    assert RejectedEntry.parse(stored).raw == b"not json"


def test_a_header_cjson_cannot_read_still_reaches_the_consumer(
    redis_url: str, client: redis.Redis
) -> None:
    # Python's json reads a lone surrogate escape; Redis's cjson does not.
    message = envelope("surrogate")
    message["headers"] = {"argsrepr": "('\ud800',)"}
    received = Received()
    client.lpush(QUEUE, json.dumps(message))
    with (
        connect(redis_url, Transport, received) as connection,
        connection.Consumer([queue()], callbacks=[received.on_message]),
    ):
        drain(connection)

    assert received.bodies == ["surrogate"]
    assert received.rejected == []


def test_an_idle_consumer_wakes_for_a_message_on_any_of_its_queues(
    redis_url: str, client: redis.Redis
) -> None:
    received = Received()
    with (
        connect(redis_url, Transport, received) as connection,
        connection.Consumer([queue(), queue(OTHER)], callbacks=[received.on_message]),
    ):
        drain(connection)  # idle: waiting on the first queue
        client.lpush(OTHER, json.dumps(envelope("second queue")))
        client.lpush(QUEUE, json.dumps(envelope("first queue")))

        def both_received() -> bool:
            drain(connection)
            return len(received.bodies) == 2

        eventually(both_received, timeout=5, what="both messages")

    assert sorted(received.bodies) == ["first queue", "second queue"]


def test_sentinel_urls_get_the_reliable_fetch_too() -> None:
    assert issubclass(SentinelTransport.Channel, ReliableFetch)
    assert issubclass(SentinelTransport, kombu_redis.SentinelTransport)
