"""A local HTTP server answering the Twilio Messages API as Twilio does.

Standard library and the ``twilio`` package (its ``RequestValidator`` signs
status callbacks): it needs no extra.
"""

from __future__ import annotations

import base64
import binascii
import collections
import email.utils
import json
import logging
import pathlib
import queue
import re
import secrets
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

from twilio.request_validator import RequestValidator

from notifier.channels.sms import segments
from notifier.testing.atomic_write import write_atomically
from notifier.testing.ports import free_port
from notifier.testing.recorder import Recorder, check_failure_code

__all__ = [
    "TWILIO_TEST_ACCOUNT_SID",
    "TWILIO_TEST_AUTH_TOKEN",
    "ReceivedSms",
    "SentCallback",
    "TwilioStandIn",
]

log = logging.getLogger(__name__)

TWILIO_TEST_ACCOUNT_SID = "AC" + "0" * 32
"""Account SID the :class:`TwilioStandIn` accepts by default (Twilio's shape: AC + 32 hex)."""

TWILIO_TEST_AUTH_TOKEN = "test-auth-token"  # noqa: S105 - a fixed credential for a local double
"""Auth token the :class:`TwilioStandIn` accepts by default."""


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
    status_callback: str | None = None
    """The ``StatusCallback`` URL the message was created with, if any."""


@dataclass(frozen=True)
class SentCallback:
    """One status callback the stand-in POSTed, and the HTTP status it got (0: no answer)."""

    sid: str
    status: str
    error_code: int | None
    answer: int


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


class TwilioStandIn(Recorder[ReceivedSms]):
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

    A message created with ``StatusCallback`` gets Twilio's status callbacks:
    form-encoded POSTs to that URL signed as Twilio signs them
    (``X-Twilio-Signature``: ``RequestValidator(auth_token).compute_signature(url,
    fields)``), ``sent`` then ``delivered``; for a number passed to
    :meth:`undeliverable`, ``sent`` then ``undelivered`` with its ``ErrorCode``
    (optionally ``failed`` and a repeated ``undelivered`` too). They go out in
    order from one thread of their own, ``callback_delay`` seconds apart (0.2 by
    default: Twilio's come after its API reply, and the sender records the SID
    in between), never holding up message creation; :attr:`callbacks` and
    :meth:`wait_for_callbacks` show what went out and what it was answered.

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
        callback_delay: float = 0.2,
    ) -> None:
        if delay < 0 or callback_delay < 0:
            raise ValueError("delays must not be negative")
        self._account_sid = account_sid
        self._auth_token = auth_token
        self._host = host
        self._port = port if port is not None else free_port(host)
        self._json_dir = json_dir
        self._delay = delay
        self._callback_delay = callback_delay

        super().__init__()
        self._failures: collections.deque[tuple[int, int, str]] = collections.deque()
        self._requests = 0
        self._sequence = 0
        self._server: _TwilioHTTPServer | None = None
        self._thread: threading.Thread | None = None
        # Status callbacks go out from one thread of their own, in order, never
        # from the request thread: creating a message never waits for them.
        self._undeliverable: dict[str, tuple[int, bool]] = {}
        self._outbox: queue.Queue[tuple[str, dict[str, str]] | None] = queue.Queue()
        self._callbacks: list[SentCallback] = []
        self._caller: threading.Thread | None = None

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
        caller = threading.Thread(
            target=self._call_back, name=f"twilio-stand-in-callbacks-{self._port}", daemon=True
        )
        caller.start()
        self._server, self._thread, self._caller = server, thread, caller

    def stop(self) -> None:
        """Stop serving and close the port; a no-op when stopped (queued callbacks are dropped)."""
        server, thread, caller = self._server, self._thread, self._caller
        if server is None:
            return
        self._server = self._thread = self._caller = None
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        if caller is not None:
            self._outbox.put(None)
            caller.join(timeout=5)

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
        check_failure_code(status)
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._cond:
            self._failures.extend([(status, code, message)] * times)

    def undeliverable(
        self, number: str, error_code: int = 30003, *, duplicate: bool = False
    ) -> None:
        """Messages to ``number`` are accepted, then reported ``undelivered`` with ``error_code``.

        Their status callbacks are ``sent`` then ``undelivered`` (ErrorCode
        30003 "unreachable handset", 30005 "unknown handset", ...). With
        ``duplicate``: ``sent``, ``failed``, ``undelivered``, ``undelivered``, as
        Twilio may send both final statuses and retry one.
        """
        with self._cond:
            self._undeliverable[number] = (error_code, duplicate)

    @property
    def callbacks(self) -> list[SentCallback]:
        """The status callbacks POSTed so far, in order."""
        with self._cond:
            return list(self._callbacks)

    def wait_for_callbacks(self, count: int, timeout: float = 10.0) -> list[SentCallback]:
        """Block until at least ``count`` callbacks were POSTed (and answered); all of them."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._callbacks) >= count, timeout):
                raise TimeoutError(
                    f"TwilioStandIn: expected {count} status callbacks within {timeout:g}s, "
                    f"{len(self._callbacks)} went out"
                )
            return list(self._callbacks)

    def clear(self) -> None:
        """Forget accepted SMS, callbacks and injected failures (not the request count)."""
        with self._cond:
            self._messages.clear()
            self._failures.clear()
            self._callbacks.clear()
            self._undeliverable.clear()

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
        resource = self._accept(
            to, from_, text, fields.get("MessagingServiceSid"), fields.get("StatusCallback")
        )
        return 201, resource, {}

    def _accept(
        self,
        to: str,
        from_: str,
        body: str,
        messaging_service_sid: str | None,
        status_callback: str | None,
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
            "num_segments": str(segments(body)[0]),
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
            write_atomically(path, json.dumps(resource, indent=2, sort_keys=True).encode())
        received = ReceivedSms(
            sid=sid,
            account_sid=self._account_sid,
            to=to,
            from_=from_,
            body=body,
            path=path,
            status_callback=status_callback or None,
        )
        with self._cond:
            self._messages.append(received)
            self._cond.notify_all()
            failing = self._undeliverable.get(to)
        if status_callback:
            for status, code in _callback_statuses(failing):
                self._outbox.put((status_callback, self._callback_fields(received, status, code)))
        return resource

    # -- status callbacks (their own thread)

    def _callback_fields(self, sms: ReceivedSms, status: str, code: int | None) -> dict[str, str]:
        fields = {
            "AccountSid": self._account_sid,
            "ApiVersion": "2010-04-01",
            "From": sms.from_,
            "To": sms.to,
            "MessageSid": sms.sid,
            "SmsSid": sms.sid,
            "MessageStatus": status,
            "SmsStatus": status,
        }
        if code is not None:
            fields["ErrorCode"] = str(code)
        return fields

    def _call_back(self) -> None:
        while (item := self._outbox.get()) is not None:
            url, fields = item
            if self._callback_delay > 0:
                # Twilio's receipts come after the create call has returned;
                # the sender records the SID in that time (docs/guarantees.md).
                time.sleep(self._callback_delay)
            answer = self._post_callback(url, fields)
            code = fields.get("ErrorCode")
            sent = SentCallback(
                sid=fields["MessageSid"],
                status=fields["MessageStatus"],
                error_code=int(code) if code else None,
                answer=answer,
            )
            with self._cond:
                self._callbacks.append(sent)
                self._cond.notify_all()

    def _post_callback(self, url: str, fields: dict[str, str]) -> int:
        """POST one callback signed as Twilio signs it; the HTTP status (0: no answer)."""
        signature = RequestValidator(self._auth_token).compute_signature(url, fields)
        request = urllib.request.Request(  # noqa: S310 - the URL the client gave us
            url,
            data=urllib.parse.urlencode(fields).encode(),
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Twilio-Signature": signature,
                "User-Agent": "TwilioProxy/1.1",
            },
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            log.debug("TwilioStandIn: status callback to %s failed", url, exc_info=True)
            return 0


def _callback_statuses(failing: tuple[int, bool] | None) -> list[tuple[str, int | None]]:
    """The statuses a message's callbacks report, in order."""
    if failing is None:
        return [("sent", None), ("delivered", None)]
    code, duplicate = failing
    if duplicate:
        return [("sent", None), ("failed", code), ("undelivered", code), ("undelivered", code)]
    return [("sent", None), ("undelivered", code)]
