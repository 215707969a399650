"""The shipped test doubles behave like the services they stand in for."""

from __future__ import annotations

import json
import os
import pathlib
import smtplib
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis
import trustme
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from notifier.testing import (
    EmbeddedRedis,
    SmtpSink,
    TwilioStandIn,
    free_port,
    redis_reachable,
)

pytestmark = pytest.mark.integration

MESSAGE = b"From: shop@example.com\r\nTo: guest@example.com\r\nSubject: Booked\r\n\r\nSee you!\r\n"
TO_NUMBER = "+447911123456"
FROM_NUMBER = "+14155550123"


@dataclass(frozen=True)
class Tls:
    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture(scope="module")
def tls() -> Tls:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return Tls(server=server, client=client)


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        yield running


@pytest.fixture
def stand_in() -> Iterator[TwilioStandIn]:
    with TwilioStandIn() as running:
        yield running


def twilio_client(stand_in: TwilioStandIn, *, auth_token: str | None = None) -> Client:
    client = Client(
        stand_in.account_sid,
        auth_token or stand_in.auth_token,
        http_client=TwilioHttpClient(timeout=5),
        # Not {}: twilio reads os.environ when given an empty mapping.
        environment={"TWILIO_EDGE": "", "TWILIO_REGION": ""},
    )
    client.api.base_url = stand_in.base_url
    return client


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- SmtpSink


def test_sink_records_a_message_sent_by_smtplib(sink: SmtpSink) -> None:
    with smtplib.SMTP(sink.host, sink.port, timeout=5) as client:
        client.sendmail("shop@example.com", ["guest@example.com"], MESSAGE)

    [received] = sink.wait_for(1)
    assert received.mail_from == "shop@example.com"
    assert received.rcpt_tos == ("guest@example.com",)
    assert received.data == MESSAGE
    assert received.message()["Subject"] == "Booked"


def test_sink_counts_one_connection_for_several_messages_on_it(sink: SmtpSink) -> None:
    with smtplib.SMTP(sink.host, sink.port, timeout=5) as client:
        for _ in range(3):
            client.sendmail("shop@example.com", ["guest@example.com"], MESSAGE)

    assert sink.connections == 1
    assert [m.connection for m in sink.wait_for(3)] == [1, 1, 1]


def test_sink_counts_two_connections_for_two_smtplib_sessions(sink: SmtpSink) -> None:
    for _ in range(2):
        with smtplib.SMTP(sink.host, sink.port, timeout=5) as client:
            client.sendmail("shop@example.com", ["guest@example.com"], MESSAGE)

    assert sink.connections == 2
    assert [m.connection for m in sink.wait_for(2)] == [1, 2]


def test_sink_accepts_mail_after_starttls(tls: Tls) -> None:
    with SmtpSink(starttls_context=tls.server, require_starttls=True) as sink:
        with smtplib.SMTP(sink.host, sink.port, timeout=5) as client:
            client.starttls(context=tls.client)
            client.sendmail("shop@example.com", ["guest@example.com"], MESSAGE)

        assert sink.wait_for(1)[0].data == MESSAGE


def test_sink_with_required_starttls_refuses_plain_mail(tls: Tls) -> None:
    with (
        SmtpSink(starttls_context=tls.server, require_starttls=True) as sink,
        smtplib.SMTP(sink.host, sink.port, timeout=5) as client,
    ):
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            client.sendmail("shop@example.com", ["guest@example.com"], MESSAGE)
        assert refused.value.smtp_code == 530


def test_sink_speaks_implicit_tls_to_smtp_ssl(tls: Tls) -> None:
    with SmtpSink(implicit_tls_context=tls.server) as sink:
        with smtplib.SMTP_SSL(sink.host, sink.port, timeout=5, context=tls.client) as client:
            client.sendmail("shop@example.com", ["guest@example.com"], MESSAGE)

        assert sink.wait_for(1)[0].data == MESSAGE
        assert sink.connections == 1


def test_sink_with_credentials_accepts_the_right_login() -> None:
    with SmtpSink(credentials=("mailer", "s3cret")) as sink:
        with smtplib.SMTP(sink.host, sink.port, timeout=5) as client:
            client.login("mailer", "s3cret")
            client.sendmail("shop@example.com", ["guest@example.com"], MESSAGE)

        assert len(sink.wait_for(1)) == 1


def test_sink_with_credentials_answers_535_to_a_wrong_password() -> None:
    with (
        SmtpSink(credentials=("mailer", "s3cret")) as sink,
        smtplib.SMTP(sink.host, sink.port, timeout=5) as client,
    ):
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login("mailer", "wrong")
        assert refused.value.smtp_code == 535


def test_sink_with_credentials_refuses_mail_without_login() -> None:
    with (
        SmtpSink(credentials=("mailer", "s3cret")) as sink,
        smtplib.SMTP(sink.host, sink.port, timeout=5) as client,
    ):
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            client.sendmail("shop@example.com", ["guest@example.com"], MESSAGE)
        assert refused.value.smtp_code == 530


def test_sink_offers_auth_on_an_implicit_tls_port(tls: Tls) -> None:
    with (
        SmtpSink(implicit_tls_context=tls.server, credentials=("mailer", "s3cret")) as sink,
        smtplib.SMTP_SSL(sink.host, sink.port, timeout=5, context=tls.client) as client,
    ):
        client.login("mailer", "s3cret")
        client.sendmail("shop@example.com", ["guest@example.com"], MESSAGE)
        assert len(sink.wait_for(1)) == 1


def test_sink_fail_next_rcpt_refuses_once_then_accepts(sink: SmtpSink) -> None:
    sink.fail_next(451, "4.3.0 try later")

    with smtplib.SMTP(sink.host, sink.port, timeout=5) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            client.sendmail("shop@example.com", ["guest@example.com"], MESSAGE)
        assert refused.value.recipients == {"guest@example.com": (451, b"4.3.0 try later")}
        client.sendmail("shop@example.com", ["guest@example.com"], MESSAGE)

    assert len(sink.wait_for(1)) == 1


def test_sink_fail_next_data_refuses_the_message_and_records_nothing(sink: SmtpSink) -> None:
    sink.fail_next(554, "5.6.0 content rejected", stage="data")

    with smtplib.SMTP(sink.host, sink.port, timeout=5) as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("shop@example.com", ["guest@example.com"], MESSAGE)
        assert refused.value.smtp_code == 554

    assert sink.messages == []


def test_sink_rejects_a_refused_recipient_with_550_every_time(sink: SmtpSink) -> None:
    sink.reject_recipient("gone@example.com")

    with smtplib.SMTP(sink.host, sink.port, timeout=5) as client:
        for _ in range(2):
            with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                client.sendmail("shop@example.com", ["gone@example.com"], MESSAGE)
            assert refused.value.recipients["gone@example.com"][0] == 550
        refusals = client.sendmail(
            "shop@example.com", ["gone@example.com", "guest@example.com"], MESSAGE
        )

    assert refusals == {"gone@example.com": (550, b"5.1.1 mailbox unavailable")}
    assert sink.wait_for(1)[0].rcpt_tos == ("guest@example.com",)


def test_sink_clear_forgets_messages_and_failures_but_not_connections(sink: SmtpSink) -> None:
    with smtplib.SMTP(sink.host, sink.port, timeout=5) as client:
        client.sendmail("shop@example.com", ["guest@example.com"], MESSAGE)
    sink.reject_recipient("guest@example.com")
    sink.fail_next(451, "4.3.0 try later", stage="mail")

    sink.clear()

    assert sink.messages == []
    assert sink.connections == 1
    with smtplib.SMTP(sink.host, sink.port, timeout=5) as client:
        client.sendmail("shop@example.com", ["guest@example.com"], MESSAGE)
    assert len(sink.wait_for(1)) == 1


def test_sink_writes_each_message_to_eml_dir(tmp_path: pathlib.Path) -> None:
    with SmtpSink(eml_dir=tmp_path / "mail") as sink:
        with smtplib.SMTP(sink.host, sink.port, timeout=5) as client:
            client.sendmail("shop@example.com", ["guest/x@example.com"], MESSAGE)

        [received] = sink.wait_for(1)

    assert received.path == tmp_path / "mail" / "1-guest_x@example.com.eml"
    assert received.path.read_bytes() == MESSAGE
    assert [p.name for p in (tmp_path / "mail").iterdir()] == ["1-guest_x@example.com.eml"]


def test_sink_wait_for_times_out_naming_how_many_arrived(sink: SmtpSink) -> None:
    with smtplib.SMTP(sink.host, sink.port, timeout=5) as client:
        client.sendmail("shop@example.com", ["guest@example.com"], MESSAGE)

    with pytest.raises(TimeoutError, match=r"expected 2 message\(s\) within 0.2s, 1 arrived"):
        sink.wait_for(2, timeout=0.2)


def test_sink_delay_slows_the_answer_to_data() -> None:
    with SmtpSink(delay=0.3) as sink, smtplib.SMTP(sink.host, sink.port, timeout=5) as client:
        started = time.monotonic()
        client.sendmail("shop@example.com", ["guest@example.com"], MESSAGE)
        assert time.monotonic() - started >= 0.3


def test_sink_stops_with_a_client_still_connected_and_restarts_on_the_same_port(
    tls: Tls,
) -> None:
    sink = SmtpSink(starttls_context=tls.server)
    sink.start()
    client = smtplib.SMTP(sink.host, sink.port, timeout=5)
    client.starttls(context=tls.client)

    started = time.monotonic()
    sink.stop()
    assert time.monotonic() - started < 1
    client.close()

    with sink, smtplib.SMTP(sink.host, sink.port, timeout=5) as again:
        again.sendmail("shop@example.com", ["guest@example.com"], MESSAGE)
        assert sink.connections == 2


def test_sink_on_a_busy_port_fails_to_start_at_once(sink: SmtpSink) -> None:
    second = SmtpSink(port=sink.port)

    started = time.monotonic()
    with pytest.raises(OSError, match="Address already in use"):
        second.start()

    assert time.monotonic() - started < 1
    assert not second.running


# -- TwilioStandIn


def test_stand_in_delivers_a_message_sent_by_the_real_twilio_client(
    stand_in: TwilioStandIn,
) -> None:
    message = twilio_client(stand_in).messages.create(
        to=TO_NUMBER, from_=FROM_NUMBER, body="Your booking is confirmed."
    )

    [received] = stand_in.wait_for(1)
    assert message.sid == received.sid
    assert received.sid.startswith("SM")
    assert message.num_segments == "1"
    assert message.status == "queued"
    assert message.date_created is not None
    assert (received.to, received.from_, received.body) == (
        TO_NUMBER,
        FROM_NUMBER,
        "Your booking is confirmed.",
    )
    assert received.account_sid == stand_in.account_sid


def test_stand_in_counts_segments_like_twilio(stand_in: TwilioStandIn) -> None:
    client = twilio_client(stand_in)

    long_gsm = client.messages.create(to=TO_NUMBER, from_=FROM_NUMBER, body="a" * 161)
    unicode = client.messages.create(to=TO_NUMBER, from_=FROM_NUMBER, body="Łódź " * 15)

    assert (long_gsm.num_segments, unicode.num_segments) == ("2", "2")


def test_stand_in_answers_401_to_a_wrong_auth_token(stand_in: TwilioStandIn) -> None:
    client = twilio_client(stand_in, auth_token="wrong-token")

    with pytest.raises(TwilioRestException) as error:
        client.messages.create(to=TO_NUMBER, from_=FROM_NUMBER, body="hi")

    assert (error.value.status, error.value.code) == (401, 20003)
    assert stand_in.messages == []
    assert stand_in.requests == 1


def test_stand_in_answers_404_for_another_account(stand_in: TwilioStandIn) -> None:
    client = twilio_client(stand_in)

    with pytest.raises(TwilioRestException) as error:
        client.api.v2010.accounts("AC" + "f" * 32).messages.create(
            to=TO_NUMBER, from_=FROM_NUMBER, body="hi"
        )

    assert (error.value.status, error.value.code) == (404, 20404)


def test_stand_in_answers_400_21602_without_a_body(stand_in: TwilioStandIn) -> None:
    with pytest.raises(TwilioRestException) as error:
        twilio_client(stand_in).messages.create(to=TO_NUMBER, from_=FROM_NUMBER)

    assert (error.value.status, error.value.code) == (400, 21602)


def test_stand_in_fail_next_429_raises_then_accepts(stand_in: TwilioStandIn) -> None:
    client = twilio_client(stand_in)
    stand_in.fail_next(429, 20429, "Too Many Requests")

    with pytest.raises(TwilioRestException) as error:
        client.messages.create(to=TO_NUMBER, from_=FROM_NUMBER, body="hi")
    client.messages.create(to=TO_NUMBER, from_=FROM_NUMBER, body="hi")

    assert (error.value.status, error.value.code) == (429, 20429)
    assert "Too Many Requests" in error.value.msg
    assert len(stand_in.wait_for(1)) == 1
    assert stand_in.requests == 2


def test_stand_in_writes_each_message_to_json_dir(tmp_path: pathlib.Path) -> None:
    with TwilioStandIn(json_dir=tmp_path / "sms") as stand_in:
        message = twilio_client(stand_in).messages.create(
            to=TO_NUMBER, from_=FROM_NUMBER, body="hi"
        )
        [received] = stand_in.wait_for(1)

    assert received.path == tmp_path / "sms" / f"1-{message.sid}.json"
    resource = json.loads(received.path.read_text())
    assert resource["sid"] == message.sid
    assert resource["to"] == TO_NUMBER
    assert resource["status"] == "queued"


def test_stand_in_wait_for_times_out_naming_how_many_arrived(stand_in: TwilioStandIn) -> None:
    with pytest.raises(TimeoutError, match=r"expected 1 SMS within 0.1s, 0 arrived"):
        stand_in.wait_for(1, timeout=0.1)


# -- EmbeddedRedis


def test_embedded_redis_answers_and_leaves_no_process_after_stop(tmp_path: pathlib.Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    pid = server.pid
    assert pid is not None
    assert process_exists(pid)
    try:
        with redis.Redis.from_url(server.url) as client:
            assert client.ping()
    finally:
        server.stop()

    assert not process_exists(pid)
    assert not redis_reachable(server.url)
    assert server.pid is None


def test_embedded_redis_keeps_data_in_its_data_dir_between_runs(tmp_path: pathlib.Path) -> None:
    with EmbeddedRedis(tmp_path / "redis") as first, redis.Redis.from_url(first.url) as client:
        client.set("booking", "confirmed")

    with EmbeddedRedis(tmp_path / "redis") as second, redis.Redis.from_url(second.url) as client:
        assert client.get("booking") == b"confirmed"


def test_redis_reachable_is_false_for_a_closed_port_and_returns_quickly() -> None:
    started = time.monotonic()
    assert not redis_reachable(f"redis://127.0.0.1:{free_port()}/0")
    assert time.monotonic() - started < 0.5
