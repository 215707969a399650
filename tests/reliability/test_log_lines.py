"""Issue 14, item 8: four pool processes sharing one stderr pipe never glue log lines together.

Under Docker a worker's output is a pipe, and ``PYTHONUNBUFFERED=1`` (the
Dockerfile sets it) makes every ``write`` reach it at once. A record written in
two calls (the line, then its newline, as ``print()`` does) lets another
process's record land in between: 0.3-0.7 % of lines were glued before
``notifier.logs`` wrote each record in one call. The worker here runs as ops
run it (``-c 4``), its stdout and stderr one pipe read by this test, through
10,000 events; every line must be one whole JSON record.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import samples
from tests.reliability.conftest import ROOT, System, person, received_ids, report

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

EVENTS = 10_000
CONCURRENCY = 4
CELERY_SHUTDOWN_NOTICE = b"\n\nworker: Warm shutdown (MainProcess)\n"


class PipedWorker:
    """``celery -A worker worker -c 4`` whose stdout and stderr are one pipe, read here."""

    def __init__(self, environment: dict[str, str]) -> None:
        self.output = bytearray()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q", "notifier.events",
             "-c", str(CONCURRENCY), "--loglevel", "INFO"],
            cwd=ROOT,
            env={**environment, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        # Small reads, as a log shipper's: what sits in the pipe is taken as it is.
        while chunk := os.read(self._process.stdout.fileno(), 4096):
            self.output += chunk

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while b" ready." not in self.output:
            if self._process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the worker did not start:\n{self.output[-3000:].decode()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, 9)
                self._process.wait(timeout=10)
        self._reader.join(timeout=10)


@pytest.fixture
def piped_worker(system: System) -> Iterator[PipedWorker]:
    worker = PipedWorker(system.environment)
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()


def test_four_pool_processes_on_one_pipe_write_only_whole_json_lines(
    system: System, piped_worker: PipedWorker, tmp_path: Path
) -> None:
    events = [
        samples.user_registered(user=person(f"Fan {n}", f"fan{n}@example.com"))
        for n in range(EVENTS)
    ]
    for start in range(0, EVENTS, 2_000):
        system.publish(events[start : start + 2_000])

    deadline = time.monotonic() + 240
    while sum(received_ids(system.sink).values()) < EVENTS:
        if time.monotonic() > deadline:
            pytest.fail(f"only {len(system.sink.messages)} of {EVENTS} emails arrived")
        time.sleep(0.2)
    piped_worker.stop()

    output = bytes(piped_worker.output)
    # The one thing Celery prints itself, from its SIGTERM handler, past any hook.
    assert output.count(CELERY_SHUTDOWN_NOTICE) == 1
    lines = output.replace(CELERY_SHUTDOWN_NOTICE, b"\n").split(b"\n")
    assert lines[-1] == b"", "the last record has no newline"
    bad = []
    for line in lines[:-1]:
        try:
            record = json.loads(line)
        except ValueError:
            bad.append(line)
            continue
        if not isinstance(record, dict) or "event" not in record:
            bad.append(line)
    sent = sum(1 for line in lines if b'"delivery.sent"' in line)
    (tmp_path / "worker-output.log").write_bytes(piped_worker.output)
    report("log lines on one pipe", events=EVENTS, lines=len(lines) - 1, bad=len(bad), sent=sent)
    assert bad == [], f"{len(bad)} of {len(lines) - 1} lines are not one JSON record: {bad[:3]!r}"
    # Every delivery was logged, once each: nothing was swallowed by a glued line either.
    assert sent == EVENTS
