"""One SMTP mail transaction on an open connection, in as few round trips as the server allows.

MAIL, RCPT and the message's command go in one write when the server offers
PIPELINING (RFC 2920), and the message itself too when it also offers
CHUNKING (RFC 3030); the replies are then read together. A transaction the
server refused is ended here as well (``reset_after_refusal``), so that the
connection layer (``notifier.channels.smtp.connection``) only has to decide
whether to keep the connection.

A transaction records how far it got (``Progress``): the connection layer
may open a new connection and start over only while the server has not
accepted MAIL FROM, and a connection lost once the message was handed over
is ambiguous (the server may have queued it), never silently sent again.
Every read and write before the hand-over waits at most the time left before
the delivery's deadline (``notifier.deadlines``), and the deadline is checked
once more right before the message is written.
"""

from __future__ import annotations

import enum
import re
import smtplib
from dataclasses import dataclass

from notifier.compose import ComposedEmail
from notifier.deadlines import Deadline
from notifier.errors import PermanentError
from notifier.retry import ProviderError

__all__ = ["Progress", "Transaction", "limit_wait", "reset_after_refusal", "transact"]

_LEADING_DOT = re.compile(rb"(?m)^\.")


class Progress(enum.IntEnum):
    """How far a mail transaction got, in order."""

    NOTHING_SENT = 0
    """Not a byte of this transaction was written."""
    ENVELOPE_SENT = 1
    """MAIL FROM (and maybe more) was written; the server has not accepted it yet."""
    MAIL_ACCEPTED = 2
    """The server answered 250 to MAIL FROM; the message itself was not handed over."""
    BODY_SENT = 3
    """The whole message was written (DATA's final dot, or the BDAT chunk)."""


@dataclass(slots=True)
class Transaction:
    """One transaction's settings and its progress, which ``transact`` keeps up to date."""

    timeout: float
    """Each operation's own limit (``MAIL_TIMEOUT``)."""
    deadline: Deadline | None = None
    progress: Progress = Progress.NOTHING_SENT


def limit_wait(connection: smtplib.SMTP, timeout: float, deadline: Deadline | None) -> None:
    """Let the connection's next operation wait ``timeout``, cut to the deadline's time left.

    A DeadlineExpiredError when the deadline has passed. The limit is per
    socket operation (each read or write), which is what smtplib offers.
    """
    limit = deadline.cap(timeout) if deadline is not None else timeout
    if connection.sock is not None:
        connection.sock.settimeout(limit)


def transact(
    connection: smtplib.SMTP,
    message: ComposedEmail,
    sender: str,
    recipient: str,
    transaction: Transaction | None = None,
) -> None:
    """One mail transaction on an open connection: MAIL, RCPT, then the message.

    Three ways, by what the server offers (EHLO): with PIPELINING and
    CHUNKING (RFC 3030), MAIL, RCPT and ``BDAT <size> LAST`` with the message
    go in one write, one round trip; with PIPELINING alone, MAIL, RCPT and
    DATA go together and the message follows the 354, two round trips;
    otherwise one command at a time, four. Every way raises what smtplib's
    ``sendmail`` raises in the same cases, and keeps ``transaction.progress``
    up to date. A refused transaction is not ended here: ``SmtpChannel``
    calls ``reset_after_refusal`` in one place for every way.
    """
    state = transaction if transaction is not None else Transaction(timeout=connection.timeout)
    if any(char in sender or char in recipient for char in "\r\n"):
        raise PermanentError("an envelope address contains CR/LF: refusing the SMTP command")
    options: list[str] = []
    if message.smtputf8:
        if not connection.has_extn("smtputf8"):
            raise smtplib.SMTPNotSupportedError(
                "the address needs internationalized email, but the server does not offer SMTPUTF8"
            )
        options = ["SMTPUTF8", "BODY=8BITMIME"]
    if connection.has_extn("size"):
        options = [f"SIZE={len(message.data)}", *options]
    if connection.has_extn("pipelining"):
        _pipelined(connection, message, sender, recipient, options, state)
    else:
        _one_at_a_time(connection, message, sender, recipient, options, state)


def _one_at_a_time(
    connection: smtplib.SMTP,
    message: ComposedEmail,
    sender: str,
    recipient: str,
    options: list[str],
    state: Transaction,
) -> None:
    # smtplib's sendmail, step by step, to know the progress and to check the
    # deadline between the 354 and the message.
    limit_wait(connection, state.timeout, state.deadline)
    state.progress = Progress.ENVELOPE_SENT
    mail = connection.mail(sender, options)
    if mail[0] != 250:
        raise smtplib.SMTPSenderRefused(*mail, sender)
    state.progress = Progress.MAIL_ACCEPTED
    limit_wait(connection, state.timeout, state.deadline)
    rcpt = connection.rcpt(recipient)
    if rcpt[0] not in (250, 251):
        raise smtplib.SMTPRecipientsRefused({recipient: rcpt})
    limit_wait(connection, state.timeout, state.deadline)
    connection.putcmd("data")
    last = connection.getreply()
    if last[0] != 354:
        raise smtplib.SMTPDataError(*last)
    _hand_over(connection, _dot_stuffed(message.data), state)
    last = connection.getreply()
    if last[0] != 250:
        raise smtplib.SMTPDataError(*last)


def _pipelined(
    connection: smtplib.SMTP,
    message: ComposedEmail,
    sender: str,
    recipient: str,
    options: list[str],
    state: Transaction,
) -> None:
    envelope = "".join(f" {option}" for option in options)
    commands = f"MAIL FROM:<{sender}>{envelope}\r\nRCPT TO:<{recipient}>\r\n"
    encoding = "utf-8" if message.smtputf8 else "ascii"
    chunking = connection.has_extn("chunking")
    if chunking:
        # The chunk is sent as it is: BDAT counts bytes, no dot-stuffing. It
        # travels with MAIL, so once written the message is handed over.
        head = (commands + f"BDAT {len(message.data)} LAST\r\n").encode(encoding)
        _hand_over(connection, head + message.data, state)
    else:
        limit_wait(connection, state.timeout, state.deadline)
        state.progress = Progress.ENVELOPE_SENT
        connection.send((commands + "DATA\r\n").encode(encoding))
    mail = connection.getreply()
    if mail[0] == 421:  # the server is closing: no more replies will come
        raise smtplib.SMTPSenderRefused(*mail, sender)
    if mail[0] == 250:
        state.progress = max(state.progress, Progress.MAIL_ACCEPTED)
    rcpt = connection.getreply()
    if rcpt[0] == 421:
        raise smtplib.SMTPRecipientsRefused({recipient: rcpt})
    last = connection.getreply()  # to BDAT (the message) or to DATA
    if not chunking and last[0] == 354 and (mail[0] != 250 or rcpt[0] not in (250, 251)):
        # A server may accept DATA although MAIL or RCPT failed: an empty
        # message ends it, and is refused for want of recipients (RFC 2920 §3.1).
        connection.send(b".\r\n")
        connection.getreply()
    if mail[0] != 250:
        raise smtplib.SMTPSenderRefused(*mail, sender)
    if rcpt[0] not in (250, 251):
        raise smtplib.SMTPRecipientsRefused({recipient: rcpt})
    if not chunking:
        if last[0] != 354:
            raise smtplib.SMTPDataError(*last)
        _hand_over(connection, _dot_stuffed(message.data), state)
        last = connection.getreply()
    if last[0] != 250:
        raise smtplib.SMTPDataError(*last)


def _dot_stuffed(data: bytes) -> bytes:
    body = _LEADING_DOT.sub(b"..", data)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body + b".\r\n"


def _hand_over(connection: smtplib.SMTP, payload: bytes, state: Transaction) -> None:
    """Write the message, unless the deadline passed; then wait for the reply in full.

    A write that fails part-way leaves the message incomplete at the server
    (no final dot, a short chunk), so only a write that completed counts as
    handed over. From then on the deadline no longer limits the wait: the
    message has left, and cutting the wait for its reply would only turn a
    slow 250 into an ambiguous outcome.
    """
    if state.deadline is not None:
        state.deadline.check("handing the message over")
    limit_wait(connection, state.timeout, state.deadline)
    state.progress = max(state.progress, Progress.ENVELOPE_SENT)
    connection.send(payload)
    state.progress = Progress.BODY_SENT
    limit_wait(connection, state.timeout, None)


def reset_after_refusal(
    connection: smtplib.SMTP,
    refusal: smtplib.SMTPResponseException | smtplib.SMTPRecipientsRefused,
) -> bool:
    """End a transaction the server refused; whether the connection can carry the next one.

    A refusal is about this message (a bounce, a rejected sender or body):
    after RSET the connection goes on, unless the server said it is closing
    (421) or the RSET itself failed. smtplib's ``sendmail`` has mostly reset
    already; a second RSET on that path is harmless, a missing one (DATA
    refused) is not.
    """
    if 421 in _reply_codes(refusal):
        return False
    try:
        connection.rset()
    except ProviderError:
        return False
    return True


def _reply_codes(exc: smtplib.SMTPResponseException | smtplib.SMTPRecipientsRefused) -> list[int]:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return [code for code, _ in exc.recipients.values()]
    return [exc.smtp_code]
