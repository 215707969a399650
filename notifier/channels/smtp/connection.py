"""Connections to an SMTP server: how one is opened, and the one a worker process keeps.

Opening a connection costs about 3× a send, and STARTTLS about 10×, so
``SmtpChannel`` keeps its connection and reuses it for every message. A
server that dropped an idle connection is met with one immediate reconnect
inside the same attempt (tenacity), but only while the server has not yet
accepted MAIL FROM: after that a lost connection is classified and left to
the caller's retry policy, and one lost after the message was handed over is
an ``AmbiguousDeliveryError`` (the server may have it; docs/guarantees.md).
Before a reused connection carries a message it is looked at for a close the
server already sent, so the common idle timeout costs no ambiguity even when
the message travels with MAIL (CHUNKING).

Every operation waits at most ``MAIL_TIMEOUT``, cut to the time left before
the delivery's deadline (``notifier.deadlines``); when the deadline passes
first, the send ends with a ``DeadlineExpiredError`` and nothing is sent.

The steps of opening one (``open_connection``, ``start_tls``, ``log_in``)
are functions of their own so that ``notifier health`` probes a server with
the very code that sends: the same TLS settings and certificate checks,
without the login.
"""

from __future__ import annotations

import contextlib
import select
import smtplib
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

from notifier.channels import Receipt
from notifier.channels.smtp.transaction import (
    Progress,
    Transaction,
    limit_wait,
    reset_after_refusal,
    transact,
)
from notifier.compose import ComposedEmail
from notifier.deadlines import Deadline
from notifier.errors import AmbiguousDeliveryError, ConfigurationError, DeadlineExpiredError
from notifier.retry import ProviderError, classify
from notifier.settings import Settings

__all__ = [
    "SmtpChannel",
    "SmtpProvider",
    "connect",
    "log_in",
    "open_connection",
    "start_tls",
    "tls_context",
]


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


def tls_context(provider: SmtpProvider) -> ssl.SSLContext:
    """A verifying TLS context: the system's CAs, plus ``MAIL_CA_FILE`` when set."""
    cafile = str(provider.ca_file) if provider.ca_file else None
    return ssl.create_default_context(cafile=cafile)


def open_connection(provider: SmtpProvider, deadline: Deadline | None = None) -> smtplib.SMTP:
    """Connect and read the greeting: over implicit TLS (``use_ssl``) or plain TCP.

    The connect and the greeting each wait ``MAIL_TIMEOUT``, cut to the
    time left before ``deadline``.
    """
    timeout = deadline.cap(provider.timeout) if deadline is not None else provider.timeout
    if provider.use_ssl:
        return smtplib.SMTP_SSL(
            provider.host, provider.port, timeout=timeout, context=tls_context(provider)
        )
    return smtplib.SMTP(provider.host, provider.port, timeout=timeout)


def start_tls(connection: smtplib.SMTP, provider: SmtpProvider) -> tuple[int, bytes]:
    """STARTTLS, then EHLO again over TLS (RFC 3207 discards what was said before); its reply."""
    connection.starttls(context=tls_context(provider))
    return connection.ehlo()


def log_in(connection: smtplib.SMTP, provider: SmtpProvider) -> None:
    """Log in when the provider has a username; never over a plain connection by accident."""
    if not provider.username:
        return
    if not (provider.use_tls or provider.use_ssl) and not provider.allow_plain_auth:
        raise ConfigurationError(
            f"refusing to send SMTP credentials to {provider.host}:{provider.port} over a plain "
            "connection; enable MAIL_USE_TLS/MAIL_USE_SSL, or set "
            "MAIL_ALLOW_PLAIN_AUTH=true for a local relay"
        )
    password = provider.password.get_secret_value() if provider.password else ""
    connection.login(provider.username, password)


def connect(provider: SmtpProvider, deadline: Deadline | None = None) -> smtplib.SMTP:
    """A connection ready for mail: greeted, upgraded to TLS when configured, logged in.

    Each step waits ``MAIL_TIMEOUT``, cut to the time left before ``deadline``.
    """
    connection = open_connection(provider, deadline)
    try:
        limit_wait(connection, provider.timeout, deadline)
        connection.ehlo()
        if provider.use_tls:
            limit_wait(connection, provider.timeout, deadline)
            start_tls(connection, provider)
        limit_wait(connection, provider.timeout, deadline)
        log_in(connection, provider)
    except BaseException:
        connection.close()
        raise
    return connection


class _StaleConnection(Exception):
    """A reused connection turned out to be closed by the server before it accepted MAIL."""


# A connection lost this way before MAIL was accepted is a stale one.
_LOST = (smtplib.SMTPServerDisconnected, ConnectionError)


def _closed_by_server(connection: smtplib.SMTP) -> bool:
    """Whether an idle connection has something to read: the server's close, or its 421.

    Nothing else arrives on an idle SMTP connection, and a zero-timeout
    select costs no round trip. A close that lands after this look is met
    by the reconnect before MAIL (or, with CHUNKING, is ambiguous).
    """
    sock = connection.sock
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):  # closed under us: fileno() is -1
        return True
    return bool(readable)


class SmtpChannel:
    """Sends composed emails through one provider over a reused connection."""

    def __init__(self, provider: SmtpProvider) -> None:
        self.provider = provider
        self._connection: smtplib.SMTP | None = None
        self._lock = threading.Lock()
        self.connections_opened = 0

    def _connect(self, deadline: Deadline | None) -> smtplib.SMTP:
        connection = connect(self.provider, deadline)
        self.connections_opened += 1
        return connection

    def _send_once(
        self, message: ComposedEmail, sender: str, recipient: str, deadline: Deadline | None
    ) -> None:
        if self._connection is not None and _closed_by_server(self._connection):
            self._drop()
        reused = self._connection is not None
        if self._connection is None:
            self._connection = self._connect(deadline)
        transaction = Transaction(timeout=self.provider.timeout, deadline=deadline)
        try:
            transact(self._connection, message, sender, recipient, transaction)
        except (smtplib.SMTPResponseException, smtplib.SMTPRecipientsRefused) as exc:
            if not reset_after_refusal(self._connection, exc):
                self._drop()
            raise
        except ProviderError as exc:
            self._drop()
            if transaction.progress is Progress.BODY_SENT:
                raise AmbiguousDeliveryError(
                    f"{self.provider.name} SMTP server: no reply after the message was handed "
                    f"over ({type(exc).__name__}: {exc}); it may have been delivered"
                ) from exc
            if reused and transaction.progress < Progress.MAIL_ACCEPTED and isinstance(exc, _LOST):
                raise _StaleConnection() from exc
            raise
        except DeadlineExpiredError:
            if transaction.progress is not Progress.NOTHING_SENT:
                self._drop()  # mid-transaction: the connection cannot carry the next one
            raise
        except BaseException:
            # Interrupted mid-transaction (a soft time limit): the connection's
            # state is unknown, so it must not carry the next message.
            self._drop()
            raise

    def send(
        self,
        message: ComposedEmail,
        sender: str,
        recipient: str,
        deadline: Deadline | None = None,
    ) -> Receipt:
        """Send one message to one envelope recipient; raise Transient/PermanentError.

        Nothing is sent once ``deadline`` has passed (``DeadlineExpiredError``);
        a connection lost after the message was handed over raises
        ``AmbiguousDeliveryError``, and is not sent again here.
        """
        with self._lock:
            try:
                for attempt in Retrying(
                    retry=retry_if_exception_type(_StaleConnection),
                    stop=stop_after_attempt(2),
                    reraise=True,
                ):
                    with attempt:
                        self._send_once(message, sender, recipient, deadline)
            except _StaleConnection as exc:  # pragma: no cover - two stale connections in a row
                raise classify(smtplib.SMTPServerDisconnected(str(exc))) from exc
            except ProviderError as exc:
                if deadline is not None and deadline.expired():
                    # Our deadline cut the wait short: not the provider's fault,
                    # so no failover and no circuit breaker, and nothing was sent.
                    raise DeadlineExpiredError(
                        f"{deadline.name} {deadline.at.isoformat()} passed while waiting on the "
                        f"{self.provider.name} SMTP server ({type(exc).__name__}: {exc})",
                        deadline=deadline,
                    ) from exc
                raise classify(exc) from exc
        return Receipt(
            channel="email",
            provider=self.provider.name,
            provider_id=message.message_id,
        )

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
