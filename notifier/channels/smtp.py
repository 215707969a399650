"""Email over SMTP, on one long-lived connection per worker process.

Opening a connection costs about 3× a send, and STARTTLS about 10×, so the
channel keeps its connection and reuses it for every message. A server that
dropped an idle connection (aiosmtpd after 300 s, most providers sooner) is
met with one immediate reconnect inside the same attempt (tenacity); anything
else is classified and left to the caller's retry policy.

Certificates are always verified (``MAIL_CA_FILE`` adds a private CA), and
credentials are never sent over a plain connection unless
``MAIL_ALLOW_PLAIN_AUTH`` says the relay is local.
"""

from __future__ import annotations

import contextlib
import smtplib
import ssl
import threading
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from pydantic import SecretStr
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

from notifier.channels import Receipt
from notifier.errors import ConfigurationError
from notifier.retry import ProviderError, classify
from notifier.settings import Settings

__all__ = ["SmtpChannel", "SmtpProvider"]


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


class _StaleConnection(Exception):
    """A reused connection turned out to be closed by the server."""


class SmtpChannel:
    """Sends ``EmailMessage``s through one provider over a reused connection."""

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

    def _send_once(self, message: EmailMessage, sender: str, recipient: str) -> None:
        reused = self._connection is not None
        if self._connection is None:
            self._connection = self._connect()
        try:
            self._connection.send_message(message, from_addr=sender, to_addrs=[recipient])
        except smtplib.SMTPServerDisconnected as exc:
            self._drop()
            if reused:
                raise _StaleConnection() from exc
            raise
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code == 421:  # the server is closing this connection
                self._drop()
            else:
                self._reset()
            raise
        except OSError:
            self._drop()
            raise

    def send(self, message: EmailMessage, sender: str, recipient: str) -> Receipt:
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
            provider_id=str(message.get("Message-ID", "")),
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
