"""Email over SMTP, on one long-lived connection per worker process.

Opening a connection costs about 3× a send, and STARTTLS about 10×, so the
channel keeps its connection and reuses it for every message. A server that
dropped an idle connection (aiosmtpd after 300 s, most providers sooner) is
met with one immediate reconnect inside the same attempt (tenacity); anything
else is classified and left to the caller's retry policy.

A server that offers PIPELINING (RFC 2920: Postfix, Exim, the big providers)
gets MAIL, RCPT and DATA in one write and answers them together: two round
trips per message instead of four; one that also offers CHUNKING (RFC 3030:
Postfix, Exchange, Gmail) gets the message in the same write, one round trip.
Others get smtplib's one command at a time. Round trips matter more than
bytes here: each wakes the server and waits on it (README, "Performance").

Certificates are always verified (``MAIL_CA_FILE`` adds a private CA), and
credentials are never sent over a plain connection unless
``MAIL_ALLOW_PLAIN_AUTH`` says the relay is local.
"""

from __future__ import annotations

import contextlib
import re
import smtplib
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import redis
from pydantic import SecretStr
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

from notifier import keys
from notifier.channels import Receipt
from notifier.compose import ComposedEmail
from notifier.errors import ConfigurationError, PermanentError, ProviderUnavailableError
from notifier.retry import ProviderError, classify
from notifier.settings import Settings

__all__ = ["CircuitBreaker", "FailoverMailer", "SmtpChannel", "SmtpProvider", "transact"]


@dataclass(frozen=True, slots=True)
class SmtpProvider:
    """Where and how to reach one SMTP server."""

    name: str
    host: str
    port: int
    use_tls: bool
    use_ssl: bool
    username: str | None
    password: SecretStr | None
    timeout: float
    ca_file: Path | None
    allow_plain_auth: bool

    @classmethod
    def primary(cls, settings: Settings) -> SmtpProvider:
        """The provider configured by ``MAIL_*``."""
        return cls(
            name="primary",
            host=settings.mail_server,
            port=settings.mail_port,
            use_tls=settings.mail_use_tls,
            use_ssl=settings.mail_use_ssl,
            username=settings.mail_username,
            password=settings.mail_password,
            timeout=settings.mail_timeout,
            ca_file=settings.mail_ca_file,
            allow_plain_auth=settings.mail_allow_plain_auth,
        )

    @classmethod
    def fallback(cls, settings: Settings) -> SmtpProvider | None:
        """The provider configured by ``MAIL_FALLBACK_*``, if any."""
        if not settings.mail_fallback_server:
            return None
        return cls(
            name="fallback",
            host=settings.mail_fallback_server,
            port=settings.mail_fallback_port,
            use_tls=settings.mail_fallback_use_tls,
            use_ssl=settings.mail_fallback_use_ssl,
            username=settings.mail_fallback_username,
            password=settings.mail_fallback_password,
            timeout=settings.mail_timeout,
            ca_file=settings.mail_ca_file,
            allow_plain_auth=settings.mail_allow_plain_auth,
        )


class _StaleConnection(Exception):
    """A reused connection turned out to be closed by the server."""


_LEADING_DOT = re.compile(rb"(?m)^\.")


def transact(connection: smtplib.SMTP, message: ComposedEmail, sender: str, recipient: str) -> None:
    """One mail transaction on an open connection: MAIL, RCPT, then the message.

    Three ways, by what the server offers (EHLO): with PIPELINING and
    CHUNKING (RFC 3030), MAIL, RCPT and ``BDAT <size> LAST`` with the message
    go in one write, one round trip; with PIPELINING alone, MAIL, RCPT and
    DATA go together and the message follows the 354, two round trips;
    otherwise smtplib's ``sendmail``, four. Every way raises what
    ``sendmail`` raises in the same cases. Ending a failed transaction (RSET,
    or dropping the connection after a 421) is the caller's:
    ``SmtpChannel`` does it in one place for every way.
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


def _reply_codes(exc: smtplib.SMTPResponseException | smtplib.SMTPRecipientsRefused) -> list[int]:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return [code for code, _ in exc.recipients.values()]
    return [exc.smtp_code]


class SmtpChannel:
    """Sends composed emails through one provider over a reused connection."""

    def __init__(self, provider: SmtpProvider) -> None:
        self.provider = provider
        self._connection: smtplib.SMTP | None = None
        self._lock = threading.Lock()
        self.connections_opened = 0

    def _tls_context(self) -> ssl.SSLContext:
        cafile = str(self.provider.ca_file) if self.provider.ca_file else None
        return ssl.create_default_context(cafile=cafile)

    def _connect(self) -> smtplib.SMTP:
        p = self.provider
        connection: smtplib.SMTP
        if p.use_ssl:
            connection = smtplib.SMTP_SSL(
                p.host, p.port, timeout=p.timeout, context=self._tls_context()
            )
        else:
            connection = smtplib.SMTP(p.host, p.port, timeout=p.timeout)
        try:
            connection.ehlo()
            if p.use_tls:
                connection.starttls(context=self._tls_context())
                connection.ehlo()
            if p.username:
                if not (p.use_tls or p.use_ssl) and not p.allow_plain_auth:
                    raise ConfigurationError(
                        f"refusing to send SMTP credentials to {p.host}:{p.port} over a plain "
                        "connection; enable MAIL_USE_TLS/MAIL_USE_SSL, or set "
                        "MAIL_ALLOW_PLAIN_AUTH=true for a local relay"
                    )
                password = p.password.get_secret_value() if p.password else ""
                connection.login(p.username, password)
        except BaseException:
            connection.close()
            raise
        self.connections_opened += 1
        return connection

    def _send_once(self, message: ComposedEmail, sender: str, recipient: str) -> None:
        reused = self._connection is not None
        if self._connection is None:
            self._connection = self._connect()
        try:
            transact(self._connection, message, sender, recipient)
        except smtplib.SMTPServerDisconnected as exc:
            self._drop()
            if reused:
                raise _StaleConnection() from exc
            raise
        except (smtplib.SMTPResponseException, smtplib.SMTPRecipientsRefused) as exc:
            # A refusal is about this message (a bounce, a rejected sender or
            # body): reset, and the connection carries the next one, unless
            # the server said it is closing (421). smtplib's sendmail has
            # mostly reset already; a second RSET on that fallback path is
            # harmless, a missing one (DATA refused) is not.
            if 421 in _reply_codes(exc):
                self._drop()
            else:
                self._reset()
            raise
        except OSError:
            self._drop()
            raise
        except BaseException:
            # Interrupted mid-transaction (a soft time limit): the connection's
            # state is unknown, so it must not carry the next message.
            self._drop()
            raise

    def send(self, message: ComposedEmail, sender: str, recipient: str) -> Receipt:
        """Send one message to one envelope recipient; raise Transient/PermanentError."""
        with self._lock:
            try:
                for attempt in Retrying(
                    retry=retry_if_exception_type(_StaleConnection),
                    stop=stop_after_attempt(2),
                    reraise=True,
                ):
                    with attempt:
                        self._send_once(message, sender, recipient)
            except _StaleConnection as exc:  # pragma: no cover - two stale connections in a row
                raise classify(smtplib.SMTPServerDisconnected(str(exc))) from exc
            except ProviderError as exc:
                raise classify(exc) from exc
        return Receipt(
            channel="email",
            provider=self.provider.name,
            provider_id=message.message_id,
        )

    def _reset(self) -> None:
        # After a refused RCPT/MAIL the transaction must be reset before the
        # connection can carry the next message.
        if self._connection is None:
            return
        try:
            self._connection.rset()
        except ProviderError:
            self._drop()

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(OSError):
                connection.close()

    def close(self) -> None:
        """Say QUIT and close the connection (worker shutdown)."""
        with self._lock:
            connection, self._connection = self._connection, None
            if connection is None:
                return
            try:
                connection.quit()
            except ProviderError:
                connection.close()


class CircuitBreaker:
    """Remembers, for all workers at once, that a provider is down.

    Tripped by a ``ProviderUnavailableError``; while open (a Redis key with
    a TTL of ``NOTIFIER_CIRCUIT_COOLDOWN``) the provider is skipped, so each
    message does not pay the primary's timeout before reaching the fallback.
    When the key expires the next message probes the primary again.
    """

    def __init__(self, client: redis.Redis, name: str, cooldown: float) -> None:
        self._redis = client
        self._key = keys.circuit(name)
        self.cooldown = cooldown

    def is_open(self) -> bool:
        """Whether the provider is being skipped right now."""
        return self.cooldown > 0 and bool(self._redis.exists(self._key))

    def trip(self, reason: str) -> None:
        """Skip the provider for the cool-down."""
        if self.cooldown > 0:
            self._redis.set(self._key, reason[:500], px=int(self.cooldown * 1000))


class FailoverMailer:
    """The primary SMTP channel, and the fallback when the primary is unavailable.

    Only ``ProviderUnavailableError`` (the server, not the message, is the
    problem) moves a send to the fallback; a 5xx for a mailbox would fail the
    same way anywhere, and a 4xx deferral is for the retry schedule.
    """

    def __init__(
        self, primary: SmtpChannel, fallback: SmtpChannel | None, circuit: CircuitBreaker
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self.circuit = circuit

    def send(self, message: ComposedEmail, sender: str, recipient: str) -> Receipt:
        """Send through the primary, or the fallback within the same attempt."""
        if self.fallback is None:
            return self.primary.send(message, sender, recipient)
        primary_error: ProviderUnavailableError | None = None
        if not self.circuit.is_open():
            try:
                return self.primary.send(message, sender, recipient)
            except ProviderUnavailableError as exc:
                self.circuit.trip(str(exc))
                primary_error = exc
        try:
            return self.fallback.send(message, sender, recipient)
        except ProviderUnavailableError as exc:
            if primary_error is None:
                raise
            raise ProviderUnavailableError(f"primary: {primary_error}; fallback: {exc}") from exc

    def close(self) -> None:
        """Close both connections."""
        self.primary.close()
        if self.fallback is not None:
            self.fallback.close()
