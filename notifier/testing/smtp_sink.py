"""An in-process SMTP server (aiosmtpd) that records every message it accepts.

It needs aiosmtpd, from the extra ``notifier[testing]``; without it, importing
this module raises an ImportError that says so.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.policy
import logging
import pathlib
import re
import secrets
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any, Literal

from notifier.testing.atomic_write import write_atomically
from notifier.testing.extra import missing_extra
from notifier.testing.ports import check_port_free, free_port
from notifier.testing.recorder import Recorder, check_failure_code

try:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
except ImportError as error:
    raise missing_extra("notifier.testing.SmtpSink", "aiosmtpd") from error

__all__ = ["ReceivedEmail", "SmtpSink", "SmtpStage"]

log = logging.getLogger(__name__)

SmtpStage = Literal["mail", "rcpt", "data"]
"""The SMTP command at which :meth:`SmtpSink.fail_next` injects a failure."""

_SMTP_STAGES: frozenset[str] = frozenset({"mail", "rcpt", "data"})


@dataclass(frozen=True)
class ReceivedEmail:
    """One message accepted by an :class:`SmtpSink`."""

    mail_from: str
    """The envelope sender (``MAIL FROM``)."""
    rcpt_tos: tuple[str, ...]
    """The envelope recipients that were accepted (``RCPT TO``), in order."""
    data: bytes
    """The raw message as received after ``DATA`` (CRLF line ends, dot-unstuffed)."""
    connection: int
    """1-based number of the SMTP connection the message arrived on."""
    path: pathlib.Path | None = None
    """Where the message was written as ``.eml`` when the sink has an ``eml_dir``."""

    def message(self) -> EmailMessage:
        """Parse :attr:`data` with :data:`email.policy.default`."""
        return BytesParser(policy=email.policy.default).parsebytes(self.data)


class _DropLoginDataDeprecation(logging.Filter):
    """Drop the warning aiosmtpd logs about its own use of ``Session.login_data``.

    aiosmtpd 1.4 sets that deprecated attribute itself after every successful
    AUTH and logs a WARNING each time; nothing a user can act on.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Session.login_data is deprecated")


_AIOSMTPD_LOG_FILTER = _DropLoginDataDeprecation()


class _SinkSMTP(SMTP):
    """aiosmtpd's SMTP protocol, one instance per connection, numbered."""

    def __init__(
        self,
        handler: _SinkHandler,
        *,
        number: int,
        controller: _SinkController,
        require_auth: bool,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self.connection_number = number
        self._controller = controller
        self._require_auth = require_auth
        self._raw_transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # aiosmtpd calls this a second time, with the TLS transport, after STARTTLS.
        if self._raw_transport is None:
            self._raw_transport = transport
            self._controller.live.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self._controller.live.discard(self)
        super().connection_lost(error)

    def abort(self) -> None:
        """Drop the connection at once (no TLS close_notify, no QUIT)."""
        transport = self._raw_transport
        if isinstance(transport, asyncio.Transport):
            transport.abort()
        elif transport is not None:
            transport.close()

    async def check_auth_needed(self, caller_method: str) -> bool:
        # aiosmtpd's own ``auth_required`` warns (UserWarning, an error under
        # ``-W error``) when TLS is not required for AUTH, which is the case for
        # plain local tests and for implicit TLS; enforce the rule here instead.
        if self._require_auth and (self.session is None or not self.session.authenticated):
            await self.push("530 5.7.0 Authentication required")
            return True
        return await super().check_auth_needed(caller_method)


class _SinkHandler:
    """aiosmtpd handler hooks; all state lives in the :class:`SmtpSink`."""

    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname  # this hook takes over what aiosmtpd does without one
        await self._sink._command_wait()
        if self._sink._pipelining:
            # aiosmtpd reads pipelined commands one line at a time anyway; it
            # just never says so. Real relays (Postfix, providers) do.
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        await self._sink._command_wait()
        failure = self._sink._take_failure("mail")
        if failure is not None:
            return failure
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        await self._sink._command_wait()
        failure = self._sink._take_failure("rcpt") or self._sink._rejection(address)
        if failure is not None:
            return failure
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self._sink._data_arrived()
        if self._sink._delay > 0:
            await asyncio.sleep(self._sink._delay)
        failure = self._sink._take_failure("data")
        if failure is not None:
            return failure
        number = server.connection_number if isinstance(server, _SinkSMTP) else 0
        self._sink._record(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=envelope.original_content or b"",
            connection=number,
        )
        return "250 OK"


class _SinkController(Controller):
    """A Controller that numbers connections and can drop them all on stop."""

    def __init__(self, sink: SmtpSink, *, require_auth: bool, **kwargs: Any) -> None:
        super().__init__(_SinkHandler(sink), **kwargs)
        self._sink = sink
        self._require_auth = require_auth
        self.live: set[_SinkSMTP] = set()  # touched only on the event loop's thread

    def factory(self) -> SMTP:
        # Called once per accepted connection (asyncio's protocol factory).
        return _SinkSMTP(
            self.handler,
            number=self._sink._next_connection(),
            controller=self,
            require_auth=self._require_auth,
            loop=self.loop,
            **self.SMTP_kwargs,
        )

    async def abort_all(self) -> None:
        for smtp in list(self.live):
            smtp.abort()
        await asyncio.sleep(0)


class SmtpSink(Recorder[ReceivedEmail]):
    """In-process aiosmtpd server recording every message.

    Start it with :meth:`start` or a ``with`` block; point the code under test
    at :attr:`host` and :attr:`port`; read :attr:`messages` or block on
    :meth:`wait_for`. Failures can be injected per SMTP stage with
    :meth:`fail_next` and per address with :meth:`reject_recipient`.

    TLS: ``starttls_context`` offers STARTTLS (``require_starttls`` refuses
    mail until it is used); ``implicit_tls_context`` makes the port speak TLS
    from the first byte (SMTPS, ``smtplib.SMTP_SSL``). Server contexts come
    from ``ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)`` plus a
    certificate (``trustme`` makes test ones).

    AUTH: with ``credentials=(user, password)`` AUTH LOGIN and PLAIN are
    offered and MAIL/RCPT/DATA answer ``530`` until the client has logged in;
    a wrong password answers ``535``. With STARTTLS configured, AUTH is only
    offered after STARTTLS (as on real servers); on a plain or implicit-TLS
    port it is offered at once. Without credentials AUTH is not accepted.

    Files and timing: with ``eml_dir`` every accepted message is also written
    there as ``<n>-<first recipient>.eml`` (``n`` counts from 1 for the life
    of the sink; characters other than letters, digits and ``@._+-`` become
    ``_``) and :attr:`ReceivedEmail.path` points at it. ``delay`` seconds are
    slept before answering each DATA, like a slow server; ``command_delay``
    seconds before answering each EHLO, MAIL and RCPT, like a server slow
    at every step.

    The sink restarts cleanly after :meth:`stop` (same port). Idle client
    connections are dropped by aiosmtpd after 300 seconds.

    PIPELINING (RFC 2920) and SMTPUTF8 (RFC 6531) are offered, as real relays
    do; ``pipelining=False`` leaves the first out, for clients that must then
    send one command at a time, and ``smtputf8=False`` the second.
    """

    _noun = "message(s)"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        starttls_context: ssl.SSLContext | None = None,
        require_starttls: bool = False,
        implicit_tls_context: ssl.SSLContext | None = None,
        credentials: tuple[str, str] | None = None,
        eml_dir: pathlib.Path | None = None,
        delay: float = 0.0,
        command_delay: float = 0.0,
        pipelining: bool = True,
        smtputf8: bool = True,
    ) -> None:
        if require_starttls and starttls_context is None:
            raise ValueError("require_starttls needs a starttls_context")
        if starttls_context is not None and implicit_tls_context is not None:
            raise ValueError("choose STARTTLS or implicit TLS, not both")
        if delay < 0 or command_delay < 0:
            raise ValueError("delays must not be negative")
        self._host = host
        self._port = port if port is not None else free_port(host)
        self._starttls_context = starttls_context
        self._require_starttls = require_starttls
        self._implicit_tls_context = implicit_tls_context
        self._credentials = credentials
        self._eml_dir = eml_dir
        self._delay = delay
        self._command_delay = command_delay
        self._pipelining = pipelining
        self._smtputf8 = smtputf8

        super().__init__()
        self._failures: dict[str, collections.deque[str]] = {
            stage: collections.deque() for stage in _SMTP_STAGES
        }
        self._rejected: dict[str, str] = {}
        self._connections = 0
        self._sequence = 0  # messages accepted since creation; names .eml files
        self._bodies_received = 0  # whole messages in, answered or not
        self._controller: _SinkController | None = None

    # -- lifecycle

    @property
    def host(self) -> str:
        """The address the sink listens on."""
        return self._host

    @property
    def port(self) -> int:
        """The TCP port the sink listens on (chosen at construction)."""
        return self._port

    @property
    def running(self) -> bool:
        """Whether the sink is accepting connections."""
        return self._controller is not None

    def start(self) -> None:
        """Start listening; returns once the server answers connections."""
        if self._controller is not None:
            raise RuntimeError("SmtpSink is already running")
        # aiosmtpd would only report a busy port after its 5 s ready_timeout.
        check_port_free(self._host, self._port, "SmtpSink")
        if self._eml_dir is not None:
            self._eml_dir.mkdir(parents=True, exist_ok=True)
        smtp_kwargs: dict[str, Any] = {
            # Fixed name: otherwise aiosmtpd calls socket.getfqdn() per connection.
            "server_hostname": "smtp-sink.localhost",
            "tls_context": self._starttls_context,
            "require_starttls": self._require_starttls,
            "enable_SMTPUTF8": self._smtputf8,
        }
        if self._credentials is not None:
            logging.getLogger("mail.log").addFilter(_AIOSMTPD_LOG_FILTER)  # idempotent
            smtp_kwargs["authenticator"] = self._authenticate
            # aiosmtpd only knows STARTTLS as TLS: on an implicit-TLS port its
            # default auth_require_tls=True would refuse AUTH with 538.
            smtp_kwargs["auth_require_tls"] = self._starttls_context is not None
        controller = _SinkController(
            self,
            require_auth=self._credentials is not None,
            hostname=self._host,
            port=self._port,
            ssl_context=self._implicit_tls_context,
            **smtp_kwargs,
        )
        with self._cond:
            connections_before = self._connections
        # Controller.start() opens (and, with implicit TLS, handshakes) one
        # connection of its own to check readiness; it must not count.
        try:
            controller.start()
        except BaseException:
            with contextlib.suppress(Exception):
                controller.stop(no_assert=True)
                if not controller.loop.is_closed():
                    controller.loop.close()
            raise
        with self._cond:
            self._connections = connections_before
        self._controller = controller

    @property
    def bodies_received(self) -> int:
        """Whole messages that arrived, answered or not (a client may give up waiting)."""
        with self._cond:
            return self._bodies_received

    def wait_for_bodies(self, count: int, timeout: float = 10.0) -> None:
        """Block until ``count`` whole messages have arrived, answered or not.

        With ``delay``, the moment after this returns and before the answer is
        the middle of a send: the server holds the message, the client waits.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._bodies_received >= count, timeout):
                raise TimeoutError(
                    f"{self._bodies_received} of {count} message bodies arrived in {timeout:g}s"
                )

    def _data_arrived(self) -> None:
        with self._cond:
            self._bodies_received += 1
            self._cond.notify_all()

    def stop(self) -> None:
        """Stop listening and drop open connections; a no-op when stopped."""
        controller = self._controller
        if controller is None:
            return
        self._controller = None
        # Abort client connections first: on Python 3.12+ the server's
        # wait_closed() waits for them, and a TLS close waits for the peer.
        future = asyncio.run_coroutine_threadsafe(controller.abort_all(), controller.loop)
        try:
            future.result(timeout=5)
        except TimeoutError:
            log.warning("SmtpSink: could not abort open connections in time")
        controller.stop()

    # -- what arrived

    @property
    def connections(self) -> int:
        """Number of SMTP connections accepted so far (not reset by :meth:`clear`)."""
        with self._cond:
            return self._connections

    # -- misbehaving on purpose

    def fail_next(
        self,
        code: int,
        text: str,
        *,
        times: int = 1,
        stage: SmtpStage = "rcpt",
    ) -> None:
        """Answer the next ``times`` commands at ``stage`` with ``code text``.

        For example ``fail_next(451, "4.3.0 try later")`` makes the next RCPT
        TO answer ``451 4.3.0 try later``; ``stage="data"`` refuses after the
        message body was sent (nothing is recorded); ``stage="mail"`` refuses
        MAIL FROM. Calls queue up: failures are used in the order given.
        """
        check_failure_code(code)
        if stage not in _SMTP_STAGES:
            raise ValueError(f"stage must be one of {sorted(_SMTP_STAGES)}, got {stage!r}")
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._cond:
            self._failures[stage].extend([f"{code} {text}".rstrip()] * times)

    def reject_recipient(
        self,
        address: str,
        code: int = 550,
        text: str = "5.1.1 mailbox unavailable",
    ) -> None:
        """Refuse every ``RCPT TO`` for ``address`` (compared case-insensitively)."""
        check_failure_code(code)
        with self._cond:
            self._rejected[address.casefold()] = f"{code} {text}".rstrip()

    def clear(self) -> None:
        """Forget messages, injected failures and rejected recipients.

        The connection count is kept, and ``.eml`` numbering continues.
        """
        with self._cond:
            self._messages.clear()
            for queue in self._failures.values():
                queue.clear()
            self._rejected.clear()

    # -- called from the server's event-loop thread

    def _next_connection(self) -> int:
        with self._cond:
            self._connections += 1
            return self._connections

    async def _command_wait(self) -> None:
        if self._command_delay > 0:
            await asyncio.sleep(self._command_delay)

    def _take_failure(self, stage: str) -> str | None:
        with self._cond:
            queue = self._failures[stage]
            return queue.popleft() if queue else None

    def _rejection(self, address: str) -> str | None:
        with self._cond:
            return self._rejected.get(address.casefold())

    def _authenticate(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        if self._credentials is None or not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user, password = self._credentials
        ok = secrets.compare_digest(auth_data.login, user.encode()) & secrets.compare_digest(
            auth_data.password, password.encode()
        )
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    def _record(
        self, *, mail_from: str, rcpt_tos: tuple[str, ...], data: bytes, connection: int
    ) -> None:
        with self._cond:
            self._sequence += 1
            sequence = self._sequence
        path = None
        if self._eml_dir is not None:
            first = rcpt_tos[0] if rcpt_tos else "unknown"
            safe = re.sub(r"[^A-Za-z0-9@._+-]", "_", first)[:100]
            path = self._eml_dir / f"{sequence}-{safe}.eml"
            write_atomically(path, data)
        received = ReceivedEmail(
            mail_from=mail_from,
            rcpt_tos=rcpt_tos,
            data=data,
            connection=connection,
            path=path,
        )
        with self._cond:
            self._messages.append(received)
            self._cond.notify_all()
