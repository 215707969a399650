"""FailoverMailer's circuits against real SMTP servers and real Redis.

Each provider has a circuit breaker, the primary too when it is alone: an
outage then costs one refused connection per cool-down, not one per email,
and ``CircuitOpenError`` says nothing was tried (the pipeline holds the email).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from notifier.channels.smtp.connection import SmtpChannel
from notifier.channels.smtp.failover import CircuitBreaker, FailoverMailer
from notifier.errors import CircuitOpenError, ProviderUnavailableError
from notifier.testing import SmtpSink
from tests.integration.test_smtp_channel import composed, provider

pytestmark = pytest.mark.integration

COOLDOWN = 60.0  # longer than any test: a circuit closes only when told to


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


@pytest.fixture
def primary() -> Iterator[SmtpSink]:
    with SmtpSink() as sink:
        yield sink


@pytest.fixture
def fallback() -> Iterator[SmtpSink]:
    with SmtpSink() as sink:
        yield sink


def circuit(client: redis.Redis, name: str) -> CircuitBreaker:
    return CircuitBreaker(client, name, COOLDOWN)


def channel(sink: SmtpSink) -> SmtpChannel:
    return SmtpChannel(provider(sink.host, sink.port))


def send(mailer: FailoverMailer) -> None:
    mailer.send(composed(), sender="bookings@example.com", recipient="ada@example.com")


def test_a_lone_primary_that_refuses_is_not_tried_again_for_the_cooldown(
    client: redis.Redis, primary: SmtpSink
) -> None:
    mailer = FailoverMailer(channel(primary), None, circuit(client, "smtp-primary"))
    primary.stop()
    with pytest.raises(ProviderUnavailableError) as first:
        send(mailer)
    primary.start()  # back, but the circuit is open: nobody looks

    with pytest.raises(CircuitOpenError):
        send(mailer)

    assert not isinstance(first.value, CircuitOpenError), "the first send was tried"
    assert primary.connections == 0
    assert mailer.down()


def test_a_lone_primary_is_tried_again_once_its_circuit_closes(
    client: redis.Redis, primary: SmtpSink
) -> None:
    breaker = circuit(client, "smtp-primary")
    mailer = FailoverMailer(channel(primary), None, breaker)
    breaker.trip("down")

    breaker.close()
    send(mailer)

    assert len(primary.messages) == 1
    assert not mailer.down()


def test_with_both_providers_refusing_the_next_email_tries_neither(
    client: redis.Redis, primary: SmtpSink, fallback: SmtpSink
) -> None:
    mailer = FailoverMailer(
        channel(primary),
        channel(fallback),
        circuit(client, "smtp-primary"),
        circuit(client, "smtp-fallback"),
    )
    primary.stop()
    fallback.stop()
    with pytest.raises(ProviderUnavailableError, match=r"primary: .*; fallback: "):
        send(mailer)
    primary.start()
    fallback.start()

    with pytest.raises(CircuitOpenError):
        send(mailer)

    assert primary.connections == fallback.connections == 0
    assert mailer.down()


def test_with_the_primary_down_the_fallback_carries_the_mail_and_the_mailer_is_up(
    client: redis.Redis, primary: SmtpSink, fallback: SmtpSink
) -> None:
    mailer = FailoverMailer(
        channel(primary),
        channel(fallback),
        circuit(client, "smtp-primary"),
        circuit(client, "smtp-fallback"),
    )
    primary.stop()

    send(mailer)
    send(mailer)

    assert len(fallback.messages) == 2
    assert not mailer.down()
