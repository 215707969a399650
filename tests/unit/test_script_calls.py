"""Calls riding another call's round trip: one combined script (notifier/script_calls.py)."""

from __future__ import annotations

import fakeredis
import pytest
import redis

from notifier.script_calls import Combiner, RiderError, ScriptCall
from tests.unit.round_trips import CountingRedis

SET = "redis.call('SET', KEYS[1], ARGV[1]) return 1"
NOTHING = "return false"
INCR = "return redis.call('INCR', KEYS[1])"
PAIR = "return {ARGV[1], tonumber(ARGV[2])}"


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


def call(client: redis.Redis, source: str, keys: tuple[str, ...], *args: str | int) -> ScriptCall:
    return ScriptCall(client.register_script(source), keys, args)


def test_the_main_call_and_its_riders_run_in_one_command() -> None:
    client = CountingRedis()
    combiner = Combiner(client)
    main, rider = call(client, SET, ("a",), "1"), call(client, PAIR, (), "x", 2)
    combiner.run(main, [rider])  # loads the combined script
    client.restart()

    own, replies = combiner.run(main, [rider])

    assert (own, replies) == (1, ([b"x", 2],))
    assert client.commands == ["EVALSHA"]


def test_a_rider_answering_nil_keeps_its_place(client: fakeredis.FakeRedis) -> None:
    own, replies = Combiner(client).run(
        call(client, SET, ("a",), "1"),
        [call(client, NOTHING, ()), call(client, PAIR, (), "y", 3)],
    )

    assert own == 1
    assert replies == (None, [b"y", 3])


def test_a_failing_rider_is_its_own_error_and_the_main_call_stands(
    client: fakeredis.FakeRedis,
) -> None:
    client.set("text", "not a number")

    own, (failed, fine) = Combiner(client).run(
        call(client, SET, ("a",), "1"),
        [call(client, INCR, ("text",)), call(client, PAIR, (), "z", 4)],
    )

    assert own == 1
    assert isinstance(failed, RiderError)
    assert fine == [b"z", 4]
    assert client.get("a") == b"1"


def test_a_failing_main_call_raises(client: fakeredis.FakeRedis) -> None:
    client.set("text", "not a number")

    with pytest.raises(redis.ResponseError):
        Combiner(client).run(call(client, INCR, ("text",)), [call(client, PAIR, (), "z", 4)])
