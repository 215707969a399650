"""One SMTP mail transaction on an open connection, in as few round trips as the server allows.

MAIL, RCPT and the message's command go in one write when the server offers
PIPELINING (RFC 2920), and the message itself too when it also offers
CHUNKING (RFC 3030); the replies are then read together. A transaction the
server refused is ended here as well (``reset_after_refusal``), so that the
connection layer (``notifier.channels.smtp.connection``) only has to decide
whether to keep the connection.
"""

from __future__ import annotations

import re
import smtplib

from notifier.compose import ComposedEmail
from notifier.errors import PermanentError
from notifier.retry import ProviderError

__all__ = ["reset_after_refusal", "transact"]

_LEADING_DOT = re.compile(rb"(?m)^\.")


def transact(connection: smtplib.SMTP, message: ComposedEmail, sender: str, recipient: str) -> None:
    """One mail transaction on an open connection: MAIL, RCPT, then the message.

    Three ways, by what the server offers (EHLO): with PIPELINING and
    CHUNKING (RFC 3030), MAIL, RCPT and ``BDAT <size> LAST`` with the message
    go in one write, one round trip; with PIPELINING alone, MAIL, RCPT and
    DATA go together and the message follows the 354, two round trips;
    otherwise smtplib's ``sendmail``, four. Every way raises what
    ``sendmail`` raises in the same cases. A refused transaction is not
    ended here: ``SmtpChannel`` calls ``reset_after_refusal`` in one place
    for every way.
    """
    if any(char in sender or char in recipient for char in "\r\n"):
        raise PermanentError("an envelope address contains CR/LF: refusing the SMTP command")
    options: list[str] = []
    if message.smtputf8:
        if not connection.has_extn("smtputf8"):
            raise smtplib.SMTPNotSupportedError(
                "the address needs internationalized email, but the server does not offer SMTPUTF8"
            )
        options = ["SMTPUTF8", "BODY=8BITMIME"]
    if not connection.has_extn("pipelining"):
        connection.sendmail(sender, [recipient], message.data, mail_options=options)
        return
    if connection.has_extn("size"):
        options = [f"SIZE={len(message.data)}", *options]
    envelope = "".join(f" {option}" for option in options)
    commands = f"MAIL FROM:<{sender}>{envelope}\r\nRCPT TO:<{recipient}>\r\n"
    encoding = "utf-8" if message.smtputf8 else "ascii"
    chunking = connection.has_extn("chunking")
    if chunking:
        # The chunk is sent as it is: BDAT counts bytes, no dot-stuffing.
        connection.send(
            (commands + f"BDAT {len(message.data)} LAST\r\n").encode(encoding) + message.data
        )
    else:
        connection.send((commands + "DATA\r\n").encode(encoding))
    mail = connection.getreply()
    if mail[0] == 421:  # the server is closing: no more replies will come
        raise smtplib.SMTPSenderRefused(*mail, sender)
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
        body = _LEADING_DOT.sub(b"..", message.data)
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        connection.send(body + b".\r\n")
        last = connection.getreply()
    if last[0] != 250:
        raise smtplib.SMTPDataError(*last)


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
