"""Callbacks to the producer: each final state POSTed, signed, to ``NOTIFIER_CALLBACK_URL``.

The contract is docs/DESIGN.md §9: the payload (``notifier.callback_payload``),
the header ``Notifier-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
"<t>.<raw body>">`` keyed with ``NOTIFIER_CALLBACK_SECRET``, a 2xx ends one,
anything else is retried with the deliveries' backoff on ``notifier.callbacks``,
the last failure is dead-lettered with channel ``callback``, and redirects are
never followed (docs/security.md).

Four parts, each usable alone:

* ``sign`` and ``verify_signature``: the signature, for us and for receivers;
* ``post_callback`` and ``CallbackPoster``: one POST on a long-lived session;
* ``run``: one attempt of a ``notifier.callback`` job, its retry or dead letter;
* ``CallbackPublisher``: the final-state sink the status store calls, which
  only enqueues (a callback never delays an email or an SMS).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Literal, Protocol
from urllib.parse import urlsplit

import redis
import requests
from pydantic import SecretStr, ValidationError

from notifier.callback_payload import CallbackPayload, payload_from
from notifier.deadletter_entries import AttemptRecord
from notifier.errors import ConfigurationError, NotifierError, PublishError, TransientError
from notifier.jobs import CallbackJob, CallbackQueue
from notifier.logs import get_logger
from notifier.status_store import FinalState
from notifier.timestamps import iso_utc
from notifier.truncation import truncate

if TYPE_CHECKING:
    from notifier.deadletter import DeadLetterStore
    from notifier.runtime import MetricsRecorder, Runtime

__all__ = [
    "SIGNATURE_HEADER",
    "CallbackOutcome",
    "CallbackPoster",
    "CallbackPublisher",
    "CallbackSender",
    "body_of",
    "classify_status",
    "parse_callback_job",
    "post_callback",
    "run",
    "sign",
    "verify_signature",
    "with_attempt",
]

SIGNATURE_HEADER = "Notifier-Signature"
DEFAULT_TOLERANCE = 300
"""Seconds a receiver accepts a signature's ``t`` (docs/DESIGN.md §9: 5 minutes)."""

_MAX_REASON_CHARS = 120
_MAX_HISTORY = 20

CallbackOutcome = Literal["sent", "retried", "dead", "rejected"]


# -- the signature


def body_of(payload: CallbackPayload) -> bytes:
    """The raw body POSTed: compact UTF-8 JSON, fields in the contract's order."""
    return json.dumps(
        payload.model_dump(mode="json"), ensure_ascii=False, separators=(",", ":")
    ).encode("utf-8", "surrogatepass")


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, now: int) -> str:
    """The ``Notifier-Signature`` value for ``body`` sent at ``now`` (unix seconds)."""
    return f"t={now},v1={_digest(secret, now, body)}"


def verify_signature(
    secret: str, header: str, body: bytes, now: float, tolerance: float = DEFAULT_TOLERANCE
) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` at a ``t`` within ``tolerance`` of ``now``.

    For receivers (docs/operations.md shows it in use): pass the raw body as
    received, before any JSON parsing, and ``time.time()``. A ``t`` more than
    ``tolerance`` seconds away (older, or ahead) is refused, so a captured
    request cannot be replayed later. Several ``v1=`` parts are allowed; one
    match is enough.
    """
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit() and len(value) <= 12:
            timestamp = int(value)
        elif name == "v1" and value:
            candidates.append(value)
    if timestamp is None or not candidates or abs(now - timestamp) > tolerance:
        return False
    expected = _digest(secret, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)


# -- one POST


def classify_status(status: int, reason: str) -> TransientError | None:
    """None for a 2xx (done); otherwise why it failed (every failure is retried, §9).

    A 3xx is a failure like any other: a redirect is never followed, since it
    could send the signed payload anywhere (docs/security.md).
    """
    if 200 <= status < 300:
        return None
    said = truncate(reason.strip(), _MAX_REASON_CHARS) if reason else ""
    what = f"HTTP {status}" + (f" {said}" if said else "")
    if 300 <= status < 400:
        return TransientError(f"callback endpoint answered {what}: redirects are not followed")
    return TransientError(f"callback endpoint answered {what}")


def _where(url: str) -> str:
    # Host and port only: a URL's path or query may carry a token of the producer's.
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{host}:{parts.port}" if parts.port else host


def post_callback(
    session: requests.Session,
    url: str,
    secret: SecretStr,
    body: bytes,
    *,
    timeout: float,
    now: int,
) -> None:
    """POST ``body`` signed at ``now``; return on a 2xx, raise ``TransientError`` otherwise.

    ``timeout`` bounds the connect and the wait for the reply's head, each;
    the reply's body is never read. The reason given names the endpoint's
    host, never its path, query or the secret.
    """
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(secret.get_secret_value(), body, now),
    }
    try:
        response = session.post(
            url,
            data=body,
            headers=headers,
            timeout=(timeout, timeout),
            allow_redirects=False,
            stream=True,  # the body is not ours to wait for
        )
    except requests.Timeout:
        raise TransientError(
            f"callback endpoint {_where(url)} did not answer within {timeout:g} s "
            "(NOTIFIER_CALLBACK_TIMEOUT)"
        ) from None
    except (requests.RequestException, OSError) as exc:
        # requests' messages repeat the whole URL: the class says enough.
        raise TransientError(
            f"callback endpoint {_where(url)} unreachable: {type(exc).__name__}"
        ) from None
    try:
        failure = classify_status(response.status_code, response.reason or "")
    finally:
        response.close()
    if failure is not None:
        raise failure


class CallbackSender(Protocol):
    """Sends one callback (``CallbackPoster`` in production; tests pass their own)."""

    def post(self, payload: CallbackPayload) -> None:
        """One attempt: return on a 2xx, raise ``TransientError`` otherwise."""

    def close(self) -> None:
        """Close pooled connections."""


class CallbackPoster:
    """POSTs callbacks to one URL over one session, made once per process (``Runtime``)."""

    def __init__(
        self,
        url: str,
        secret: SecretStr,
        timeout: float,
        *,
        clock: Callable[[], datetime],
        session: requests.Session | None = None,
    ) -> None:
        self.url = url
        self._secret = secret
        self.timeout = timeout
        self._clock = clock
        self._session = session if session is not None else requests.Session()

    def post(self, payload: CallbackPayload) -> None:
        """One attempt: a 2xx returns, anything else raises ``TransientError``."""
        post_callback(
            self._session,
            self.url,
            self._secret,
            body_of(payload),
            timeout=self.timeout,
            now=int(self._clock().timestamp()),
        )

    def close(self) -> None:
        """Close the session's pooled connections."""
        self._session.close()


# -- one attempt of a notifier.callback job


def parse_callback_job(raw: object) -> CallbackJob:
    """A ``notifier.callback`` argument; ``ValidationError`` when it is not one."""
    return CallbackJob.model_validate(raw)


def run(raw: object, rt: Runtime) -> CallbackOutcome:
    """Run the job given to ``notifier.callback``: POST it, retry it, or dead-letter it.

    A message that is no callback job is rejected (kept, with the reason) like
    any bad queue input. With callbacks off in this worker (no URL or secret)
    a job is dead-lettered at once: it can be replayed once they are set.
    """
    try:
        job = parse_callback_job(raw)
    except ValidationError as exc:
        problems = [
            f"notifier.callback job: {'.'.join(map(str, e['loc']))}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)
        ]
        entry = rt.dead_letters.reject(raw, problems)
        rt.metrics.record_callback("rejected")
        get_logger().warning("callback.rejected", errors=problems, dead_letter_id=entry.id)
        return "rejected"
    poster = rt.callback_poster
    if poster is None:
        off = ConfigurationError(
            "callbacks are off in this worker: set NOTIFIER_CALLBACK_URL and "
            "NOTIFIER_CALLBACK_SECRET, then replay"
        )
        return _dead(job, with_attempt(job, off, rt.clock()), rt, _error_text(off))
    try:
        poster.post(job.payload)
    except TransientError as exc:
        return _failed(job, rt, exc)
    rt.metrics.record_callback("sent")
    _log(job, "sent", "info")
    return "sent"


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def with_attempt(job: CallbackJob, exc: BaseException, now: datetime) -> CallbackJob:
    """``job`` with this attempt's failure in its history (the first and the last 19 kept)."""
    record = AttemptRecord(attempt=job.attempt, at=iso_utc(now), error=_error_text(exc))
    history = [*job.history, record]
    if len(history) > _MAX_HISTORY:
        history = [history[0], *history[len(history) - _MAX_HISTORY + 1 :]]
    return job.model_copy(update={"history": history})


def _failed(job: CallbackJob, rt: Runtime, exc: TransientError) -> CallbackOutcome:
    recorded = with_attempt(job, exc, rt.clock())
    delay = rt.retry.delay_after(job.attempt)
    queue = rt.callback_queue
    if delay is None or queue is None:
        error = f"{_error_text(exc)} (gave up after {job.attempt} attempts)"
        return _dead(job, recorded, rt, error)
    retry = recorded.model_copy(update={"attempt": job.attempt + 1})
    # A publish that fails raises: the task's on_failure keeps the job (a dead letter).
    queue.schedule_callback(retry, countdown=delay)
    rt.metrics.record_callback("retried")
    _log(job, "retried", "warning", error=_error_text(exc), retry_in=round(delay, 3))
    return "retried"


def _dead(job: CallbackJob, recorded: CallbackJob, rt: Runtime, error: str) -> CallbackOutcome:
    entry = rt.dead_letters.add_callback(recorded.payload, error=error, history=recorded.history)
    rt.metrics.record_callback("dead")
    _log(job, "dead", "warning", error=error, dead_letter_id=entry.id)
    rt.dead_letters.warn_if_crowded(rt.settings.notifier_dlq_alert_threshold, rt.clock())
    return "dead"


def _log(job: CallbackJob, outcome: str, level: str, **fields: object) -> None:
    payload = job.payload
    getattr(get_logger(), level)(
        f"callback.{outcome}",
        event_id=payload.event_id,
        delivery_id=payload.delivery_id,
        type=payload.type,
        channel=payload.channel,
        template=payload.template,
        state=payload.state,
        attempt=job.attempt,
        outcome=outcome,
        **fields,
    )


# -- the final-state sink


class CallbackPublisher:
    """The final-state sink (``Runtime.on_final``): enqueues one ``notifier.callback``.

    Called on the send path, right after a delivery's final state is stored,
    so it only publishes (one Redis write, at most one immediate retry, never
    a wait). When the broker does not take the job, the callback is kept as a
    dead letter (channel ``callback``) for ``dlq replay``; when even that
    fails (Redis gone), it is logged (``callback.lost``, with the payload)
    and counted (outcome ``lost``). Nothing is raised into the send path: the
    email or SMS is out already, and its state is stored (docs/operations.md,
    "Callbacks to the producer").
    """

    def __init__(
        self,
        queue: CallbackQueue,
        dead_letters: DeadLetterStore,
        metrics: MetricsRecorder,
    ) -> None:
        self._queue = queue
        self._dead_letters = dead_letters
        self._metrics = metrics

    def __call__(self, final: FinalState) -> None:
        """Enqueue the callback for ``final``; never raises a NotifierError or Redis error."""
        job = CallbackJob(payload=payload_from(final))
        try:
            self._queue.schedule_callback(job, countdown=0, quick=True)
        except PublishError as exc:
            self._keep(job, f"PublishError: {exc}")
            return
        self._metrics.record_callback("queued")

    def _keep(self, job: CallbackJob, error: str) -> None:
        try:
            entry = self._dead_letters.add_callback(job.payload, error=error, history=[])
        except (redis.RedisError, NotifierError) as exc:
            self._metrics.record_callback("lost")
            get_logger().error(
                "callback.lost",
                error=error,
                not_kept=f"{type(exc).__name__}: {exc}",
                payload=job.payload.model_dump(mode="json"),
            )
            return
        self._metrics.record_callback("dead")
        get_logger().warning(
            "callback.not_queued",
            event_id=job.payload.event_id,
            delivery_id=job.payload.delivery_id,
            state=job.payload.state,
            error=error,
            dead_letter_id=entry.id,
        )
