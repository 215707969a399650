"""SmtpChannel against a real SMTP server, with and without PIPELINING (RFC 2920).

Every behaviour is checked both ways: a server that offers PIPELINING gets
MAIL, RCPT and DATA in one write, one that does not gets smtplib's one
command at a time, and the caller must not be able to tell the difference.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import fakeredis
import pytest

from notifier.channels.smtp.connection import SmtpChannel, SmtpProvider
from notifier.channels.smtp.failover import CircuitBreaker, FailoverMailer
from notifier.compose import ComposedEmail, compose_email, parse_sender
from notifier.deadlines import Deadline
from notifier.errors import (
    AmbiguousDeliveryError,
    ConfigurationError,
    DeadlineExpiredError,
    PermanentError,
    ProviderUnavailableError,
    TransientError,
)
from notifier.events import parse_event
from notifier.planner import Delivery, plan
from notifier.templates import RenderedEmail
from notifier.testing import SmtpSink
from tests import samples
from tests.polling import eventually
from tests.smtp_faults import FaultySmtpServer

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 26, 10, 0, 5, tzinfo=UTC)
SENDER = parse_sender("Bookings <bookings@example.com>")
# A line that starts with a dot must survive SMTP's dot-stuffing both ways.
RENDERED = RenderedEmail(
    subject="Booking Confirmation",
    text="Hello Ada,\n.\n..and a line that starts with dots.\n",
    html="<p>Hello Ada</p>\n",
)


def provider(host: str, port: int) -> SmtpProvider:
    return SmtpProvider(
        name="primary",
        host=host,
        port=port,
        use_tls=False,
        use_ssl=False,
        username=None,
        password=None,
        timeout=5.0,
        ca_file=None,
        allow_plain_auth=False,
    )


def delivery(address: str = "ada@example.com") -> Delivery:
    [fan_email] = [
        d
        for d in plan(parse_event(samples.booking_created()))
        if d.role == "fan" and d.channel == "email"
    ]
    return fan_email.model_copy(update={"address": address})


def composed(address: str = "ada@example.com") -> ComposedEmail:
    return compose_email(delivery(address), RENDERED, SENDER, NOW)


@pytest.fixture(params=[True, False], ids=["pipelining", "one-command-at-a-time"])
def sink(request: pytest.FixtureRequest) -> Iterator[SmtpSink]:
    with SmtpSink(pipelining=request.param) as server:
        yield server


@pytest.fixture
def fakeredis_client() -> Iterator[fakeredis.FakeRedis]:
    client = fakeredis.FakeRedis()
    yield client
    client.close()


@pytest.fixture
def channel(sink: SmtpSink) -> Iterator[SmtpChannel]:
    smtp = SmtpChannel(provider(sink.host, sink.port))
    yield smtp
    smtp.close()


def send(channel: SmtpChannel, message: ComposedEmail | None = None) -> None:
    message = message or composed()
    channel.send(message, sender=SENDER.addr_spec, recipient="ada@example.com")


def test_the_message_arrives_byte_for_byte_with_its_envelope(
    channel: SmtpChannel, sink: SmtpSink
) -> None:
    message = composed()

    receipt = channel.send(message, sender=SENDER.addr_spec, recipient="ada@example.com")

    [received] = sink.wait_for(1)
    assert received.data == message.data
    assert received.mail_from == "bookings@example.com"
    assert received.rcpt_tos == ("ada@example.com",)
    assert receipt.provider_id == message.message_id


def test_many_messages_share_one_connection(channel: SmtpChannel, sink: SmtpSink) -> None:
    for _ in range(20):
        send(channel)

    sink.wait_for(20)
    assert sink.connections == 1


def test_a_refused_recipient_is_permanent_and_the_connection_carries_the_next_message(
    channel: SmtpChannel, sink: SmtpSink
) -> None:
    sink.fail_next(550, "5.1.1 mailbox unavailable", stage="rcpt")

    with pytest.raises(PermanentError, match=r"550 .* mailbox unavailable"):
        send(channel)
    send(channel)

    assert len(sink.wait_for(1)) == 1
    assert sink.connections == 1


def test_a_deferred_recipient_is_transient(channel: SmtpChannel, sink: SmtpSink) -> None:
    sink.fail_next(451, "4.3.0 try again later", stage="rcpt")

    with pytest.raises(TransientError, match="451"):
        send(channel)
    send(channel)

    assert len(sink.wait_for(1)) == 1


def test_a_refused_sender_is_transient_for_a_4xx(channel: SmtpChannel, sink: SmtpSink) -> None:
    sink.fail_next(451, "4.3.0 sender deferred", stage="mail")

    with pytest.raises(TransientError, match=r"451 .* sender deferred"):
        send(channel)
    send(channel)

    assert len(sink.wait_for(1)) == 1
    assert sink.connections == 1


def test_a_message_refused_after_data_is_permanent_and_not_recorded(
    channel: SmtpChannel, sink: SmtpSink
) -> None:
    sink.fail_next(554, "5.6.0 content rejected", stage="data")

    with pytest.raises(PermanentError, match=r"554 .* content rejected"):
        send(channel)

    assert sink.messages == []
    send(channel)
    assert len(sink.wait_for(1)) == 1


def test_a_421_closes_the_connection_and_the_next_send_opens_a_new_one(
    channel: SmtpChannel, sink: SmtpSink
) -> None:
    sink.fail_next(421, "4.3.2 shutting down", stage="mail")

    with pytest.raises(ProviderUnavailableError, match="421"):
        send(channel)
    send(channel)

    assert len(sink.wait_for(1)) == 1
    assert sink.connections == 2


def test_a_connection_the_server_dropped_is_replaced_within_the_same_send(
    channel: SmtpChannel, sink: SmtpSink
) -> None:
    send(channel)
    sink.stop()  # drops the idle connection, as a server's idle timeout does
    sink.start()

    send(channel)  # no error: the stale connection is replaced at once

    first, second = sink.wait_for(2)
    assert (first.connection, second.connection) == (1, 2)


def test_an_internationalized_address_goes_out_with_smtputf8(
    channel: SmtpChannel, sink: SmtpSink
) -> None:
    message = composed("zoë@example.com")

    channel.send(message, sender=SENDER.addr_spec, recipient="zoë@example.com")

    [received] = sink.wait_for(1)
    assert message.smtputf8
    assert received.rcpt_tos == ("zoë@example.com",)
    # RFC 6532: with SMTPUTF8 the address travels as UTF-8 in the header too.
    assert "\r\nTo: Ada Lovelace <zoë@example.com>\r\n".encode() in received.data


def test_an_internationalized_address_is_refused_by_a_server_without_smtputf8() -> None:
    with SmtpSink(smtputf8=False) as sink:
        smtp = SmtpChannel(provider(sink.host, sink.port))
        with pytest.raises(ConfigurationError, match="SMTPUTF8"):
            smtp.send(composed("zoë@example.com"), SENDER.addr_spec, "zoë@example.com")
        smtp.close()

    assert sink.messages == []


# --- the commands really travel together --------------------------------------------

Reply = bytes


class GroupingServer:
    """A raw SMTP server that answers an envelope only once the whole group arrived.

    It offers PIPELINING (and CHUNKING if asked) and reads MAIL, RCPT and
    DATA or BDAT before it answers any of them. A client that waited for each
    reply before sending the next command would wait forever here (until its
    timeout): only a pipelining client gets mail through. ``script`` gives the
    replies to each transaction's (MAIL, RCPT, last) in turn; by default
    every one is accepted. It records each group of commands and each message.
    """

    def __init__(
        self, *, chunking: bool, script: Sequence[tuple[Reply, Reply, Reply]] = ()
    ) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._chunking = chunking
        self._script = list(script)
        self.groups: list[list[bytes]] = []
        self.messages: list[bytes] = []
        self.commands: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> GroupingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()
        self._thread.join(5)

    def _serve(self) -> None:
        conn, _ = self._listener.accept()
        with conn, conn.makefile("rb") as lines:
            conn.sendall(b"220 grouping ESMTP\r\n")
            while line := lines.readline():
                verb = line[:4].upper()
                self.commands.append(verb)
                if verb == b"EHLO":
                    chunking = b"250-CHUNKING\r\n" if self._chunking else b""
                    conn.sendall(b"250-grouping\r\n" + chunking + b"250 PIPELINING\r\n")
                elif verb == b"MAIL":
                    self._transaction(conn, lines, [line, lines.readline(), lines.readline()])
                elif verb == b"RSET":
                    conn.sendall(b"250 reset\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return

    def _transaction(self, conn: socket.socket, lines: Any, group: list[bytes]) -> None:
        self.groups.append(group)
        chunked = group[2].upper().startswith(b"BDAT")
        default = (b"250 sender ok", b"250 recipient ok", b"250 queued" if chunked else b"354 go")
        mail, rcpt, last = self._script.pop(0) if self._script else default
        if chunked:
            message = lines.read(int(group[2].split()[1]))  # read even if refused (RFC 3030)
        conn.sendall(b"\r\n".join((mail, rcpt, last)) + b"\r\n")
        if not chunked:
            if not last.startswith(b"354"):
                return
            message = b""
            while not message.endswith(b"\r\n.\r\n"):
                message += lines.readline()
            conn.sendall(b"250 queued\r\n")
        if mail.startswith(b"250") and rcpt.startswith(b"250") and not last.startswith(b"5"):
            self.messages.append(message)


@pytest.fixture(params=[False, True], ids=["pipelining", "pipelining+chunking"])
def chunking(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def test_mail_rcpt_and_the_message_command_go_in_one_group(chunking: bool) -> None:
    composed_email = composed()
    with GroupingServer(chunking=chunking) as server:
        smtp = SmtpChannel(provider("127.0.0.1", server.port))
        send(smtp, composed_email)
        smtp.close()

    [group] = server.groups
    assert group[0] == b"MAIL FROM:<bookings@example.com>\r\n"
    assert group[1] == b"RCPT TO:<ada@example.com>\r\n"
    message = composed_email.data
    if chunking:
        # One write: the chunk counts bytes, and carries them unstuffed.
        assert group[2] == f"BDAT {len(message)} LAST\r\n".encode()
        assert server.messages == [message]
    else:
        assert group[2] == b"DATA\r\n"
        # Dot-stuffed after the 354: a line starting with "." gains one more.
        [received] = server.messages
        assert received.endswith(b"\r\n.\r\n")
        assert b"\r\n...and a line" in received


def test_a_recipient_refused_in_a_group_is_permanent_and_the_connection_goes_on(
    chunking: bool,
) -> None:
    refused = (b"250 sender ok", b"550 5.1.1 no such user", b"503 5.5.1 no valid recipients")
    with GroupingServer(chunking=chunking, script=[refused]) as server:
        smtp = SmtpChannel(provider("127.0.0.1", server.port))
        with pytest.raises(PermanentError, match="no such user"):
            send(smtp)
        send(smtp)
        smtp.close()

    assert len(server.messages) == 1
    assert server.commands == [b"EHLO", b"MAIL", b"RSET", b"MAIL", b"QUIT"]


def test_a_message_refused_after_its_group_is_permanent(chunking: bool) -> None:
    last = b"554 5.6.0 content rejected" if chunking else b"554 5.5.1 not now"
    script = [(b"250 sender ok", b"250 recipient ok", last)]
    with GroupingServer(chunking=chunking, script=script) as server:
        smtp = SmtpChannel(provider("127.0.0.1", server.port))
        with pytest.raises(PermanentError, match="554"):
            send(smtp)
        smtp.close()

    assert server.messages == []
    assert server.commands == [b"EHLO", b"MAIL", b"RSET", b"QUIT"]  # one RSET, not two


# --- a connection lost mid-transaction (docs/guarantees.md, "Guarantees and limits") ---------


class Mode(NamedTuple):
    """What the server offers: the three ways ``transact`` sends."""

    pipelining: bool
    chunking: bool


MODES = {
    "one-command-at-a-time": Mode(pipelining=False, chunking=False),
    "pipelining-data": Mode(pipelining=True, chunking=False),
    "pipelining-bdat": Mode(pipelining=True, chunking=True),
}


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> Mode:
    return MODES[request.param]


def test_a_connection_lost_after_the_message_on_a_reused_connection_is_ambiguous_not_resent(
    mode: Mode,
) -> None:
    with FaultySmtpServer(
        pipelining=mode.pipelining, chunking=mode.chunking, drop_after_body=[2]
    ) as server:
        smtp = SmtpChannel(provider(server.host, server.port))
        send(smtp)  # the connection is now a reused one

        with pytest.raises(AmbiguousDeliveryError, match="may have been delivered"):
            send(smtp)
        smtp.close()

    assert len(server.messages) == 2, "the second message went out once, not twice"
    assert server.connections == 1


def test_a_connection_lost_after_the_message_does_not_fail_over_to_the_fallback(
    mode: Mode, fakeredis_client: Any
) -> None:
    with (
        FaultySmtpServer(
            pipelining=mode.pipelining, chunking=mode.chunking, drop_after_body=[1]
        ) as server,
        SmtpSink() as fallback,
    ):
        primary = SmtpChannel(provider(server.host, server.port))
        secondary = SmtpChannel(provider(fallback.host, fallback.port))
        breaker = CircuitBreaker(fakeredis_client, "smtp-primary", cooldown=60)
        mailer = FailoverMailer(primary, secondary, breaker)

        with pytest.raises(AmbiguousDeliveryError):
            mailer.send(composed(), SENDER.addr_spec, "ada@example.com")
        mailer.close()

    assert len(server.messages) == 1
    assert fallback.messages == [], "the fallback sent a second copy"
    assert not breaker.is_open()


def test_no_reply_after_the_message_is_waited_for_in_full_then_ambiguous(mode: Mode) -> None:
    with (
        FaultySmtpServer(
            pipelining=mode.pipelining, chunking=mode.chunking, silent_after_body=[1]
        ) as server,
        SmtpSink() as fallback,
    ):
        quick = dataclasses.replace(provider(server.host, server.port), timeout=1.5)
        mailer = FailoverMailer(
            SmtpChannel(quick),
            SmtpChannel(provider(fallback.host, fallback.port)),
            CircuitBreaker(fakeredis.FakeRedis(), "smtp-primary", cooldown=60),
        )
        started = time.monotonic()
        # A deadline sooner than MAIL_TIMEOUT: once the message is out it no
        # longer cuts the wait (that would only turn a slow 250 into a doubt).
        deadline = Deadline.after(0.5, lambda: datetime.now(UTC))

        with pytest.raises(AmbiguousDeliveryError, match="timed out"):
            mailer.send(composed(), SENDER.addr_spec, "ada@example.com", deadline)
        took = time.monotonic() - started
        mailer.close()

    assert took >= 1.4, f"gave up after {took:.1f}s, before MAIL_TIMEOUT (1.5 s)"
    assert len(server.messages) == 1
    assert fallback.messages == []


@pytest.mark.parametrize(
    "mode",
    [MODES["one-command-at-a-time"], MODES["pipelining-data"]],
    ids=["one-command-at-a-time", "pipelining-data"],
)
def test_a_reused_connection_dropped_at_mail_is_replaced_within_the_same_send(
    mode: Mode,
) -> None:
    with FaultySmtpServer(
        pipelining=mode.pipelining, chunking=mode.chunking, drop_at_mail=[2]
    ) as server:
        smtp = SmtpChannel(provider(server.host, server.port))
        send(smtp)

        send(smtp)  # no error: nothing of it had been accepted, so it starts over
        smtp.close()

    assert len(server.messages) == 2
    assert server.connections == 2


@pytest.mark.parametrize(
    "mode",
    [MODES["one-command-at-a-time"], MODES["pipelining-data"]],
    ids=["one-command-at-a-time", "pipelining-data"],
)
def test_a_reused_connection_lost_after_mail_was_accepted_is_left_to_the_retry_schedule(
    mode: Mode,
) -> None:
    with FaultySmtpServer(
        pipelining=mode.pipelining, chunking=mode.chunking, drop_at_rcpt=[2]
    ) as server:
        smtp = SmtpChannel(provider(server.host, server.port))
        send(smtp)

        with pytest.raises(ProviderUnavailableError, match="disconnected"):
            send(smtp)
        smtp.close()

    assert len(server.messages) == 1, "the lost message was not handed over at all"
    assert server.connections == 1, "no reconnect once the server had accepted MAIL"


def test_a_reused_connection_the_server_closed_when_idle_is_replaced_within_the_same_send(
    mode: Mode,
) -> None:
    with FaultySmtpServer(
        pipelining=mode.pipelining, chunking=mode.chunking, close_after=[1]
    ) as server:
        smtp = SmtpChannel(provider(server.host, server.port))
        send(smtp)
        eventually(lambda: server.closed == 1, what="the server to close the idle connection")

        send(smtp)  # even with CHUNKING, where the message travels with MAIL
        smtp.close()

    assert len(server.messages) == 2
    assert server.connections == 2


# --- deadlines ----------------------------------------------------------------------------


def test_a_server_slower_than_the_deadline_gets_nothing_and_the_send_ends_at_the_deadline() -> None:
    clock = lambda: datetime.now(UTC)  # noqa: E731 - real time: a real server is waited on
    with FaultySmtpServer(greet_after=5.0) as server:
        smtp = SmtpChannel(provider(server.host, server.port))  # MAIL_TIMEOUT 5 s
        started = time.monotonic()

        with pytest.raises(DeadlineExpiredError):
            smtp.send(composed(), SENDER.addr_spec, "ada@example.com", Deadline.after(1.0, clock))
        took = time.monotonic() - started
        smtp.close()

    assert took < 3.0, f"the send took {took:.1f}s, past its 1 s deadline"
    assert server.commands == []
    assert server.messages == []


def test_a_send_on_an_open_connection_after_the_deadline_writes_nothing(
    mode: Mode,
) -> None:
    now = [datetime(2026, 12, 3, 8, 0, tzinfo=UTC)]
    deadline = Deadline(now[0] + timedelta(seconds=30), lambda: now[0])
    with FaultySmtpServer(pipelining=mode.pipelining, chunking=mode.chunking) as server:
        smtp = SmtpChannel(provider(server.host, server.port))
        send(smtp)  # connected: the next send would start straight with its envelope
        now[0] += timedelta(seconds=31)

        with pytest.raises(DeadlineExpiredError):
            smtp.send(composed(), SENDER.addr_spec, "ada@example.com", deadline)
        commands = list(server.commands)
        send(smtp)  # and the connection still carries the next message
        smtp.close()

    assert commands == [b"EHLO", b"MAIL", b"RCPT", b"DATA" if not mode.chunking else b"BDAT"]
    assert len(server.messages) == 2
    assert server.connections == 1


@pytest.mark.parametrize(
    "mode",
    [MODES["one-command-at-a-time"], MODES["pipelining-data"]],
    ids=["one-command-at-a-time", "pipelining-data"],
)
def test_a_deadline_that_passes_before_the_354_keeps_the_message_back(
    mode: Mode,
) -> None:
    now = [datetime(2026, 12, 3, 8, 0, tzinfo=UTC)]
    deadline = Deadline(now[0] + timedelta(seconds=30), lambda: now[0])

    def slow_data(verb: bytes) -> None:
        if verb == b"DATA":  # the server takes 31 s to say 354
            now[0] += timedelta(seconds=31)

    with FaultySmtpServer(
        pipelining=mode.pipelining, chunking=mode.chunking, on_command=slow_data
    ) as server:
        smtp = SmtpChannel(provider(server.host, server.port))

        with pytest.raises(DeadlineExpiredError, match="handing the message over"):
            smtp.send(composed(), SENDER.addr_spec, "ada@example.com", deadline)
        smtp.close()

    assert b"DATA" in server.commands
    assert server.messages == []
