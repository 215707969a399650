"""How long a SIGKILLed worker's message takes to be delivered, with the default timings.

Issue 14 item 7: a dead worker's messages must come back within 5 minutes.
With the defaults (``NOTIFIER_VISIBILITY_TIMEOUT`` 280 s, a sweep every 9 s,
``NOTIFIER_CLAIM_LEASE`` 140 s) the bound is 289 s from the moment the dead
worker took the message. This run measures it for real, so it takes about
five minutes and is not part of the suite (the killed-worker tests there run
the same path with the timings scaled down):

    python -m tests.reliability.recovery      # or: make recovery

A worker (prefork, two processes) takes one event, and is SIGKILLed with
its process group while the SMTP server holds the message unanswered. A
second worker, started at once, must deliver it. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

import celeryconfig
from notifier.testing import SmtpSink, make_settings
from tests.polling import eventually
from tests.reliability.conftest import (
    RedisServer,
    System,
    event_batch,
    planned_emails,
    received_ids,
    worker_environment,
)

# conftest's FAST timings are left out: the defaults are what is measured.
DEFAULTS = {
    name.upper(): str(getattr(make_settings(), name))
    for name in (
        "notifier_visibility_timeout",
        "notifier_claim_lease",
        "notifier_retry_max_attempts",
        "notifier_retry_backoff_base",
        "notifier_retry_backoff_max",
        "mail_timeout",
    )
}


def measure(workdir: Path, held_for: float) -> dict[str, object]:
    """Kill a worker mid-send; seconds from its taking the event to the delivery."""
    server = RedisServer(workdir / "redis")
    with contextlib.ExitStack() as stack:
        server.start()
        stack.callback(server.stop)
        sink = stack.enter_context(SmtpSink(delay=held_for))
        system = System(worker_environment(server.url, sink, **DEFAULTS), sink, workdir)
        stack.callback(system.stop)
        events = event_batch(1, tag="recovery-")  # one email
        planned = planned_emails(events)
        first = system.worker().wait_ready()
        system.publish(events)
        sink.wait_for_bodies(1, timeout=60)  # the worker took it and is mid-send
        first.kill()
        killed = time.monotonic()
        system.worker().wait_ready()
        limit = system.settings.notifier_visibility_timeout + 120
        eventually(lambda: sum(received_ids(sink).values()) >= 1, timeout=limit, what="delivery")
        delivered = time.monotonic()
        return {
            "visibility_timeout": system.settings.notifier_visibility_timeout,
            "claim_lease": system.settings.notifier_claim_lease,
            "sweep_interval": celeryconfig.unacked_sweep_interval(system.settings),
            "seconds_from_kill_to_delivery": round(delivered - killed, 1),
            "received": dict(received_ids(sink)),
            "planned": len(planned),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--held-for", type=float, default=2.0, help="SMTP answer delay, s")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="notifier-recovery-") as directory:
        figures = measure(Path(directory), arguments.held_for)
    print("RECOVERY " + json.dumps(figures))


if __name__ == "__main__":
    main()
