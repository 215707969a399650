"""Issue 18's scenario: SIGKILLed workers under a steady stream of events. Nothing may vanish.

One run: a dedicated ``redis-server`` (AOF, ``appendfsync always``), an SMTP
sink, one worker started as ops start it (``celery -A worker worker -Q
notifier.events,notifier.email,notifier.sms -c 2``), and a producer thread
publishing a steady stream (``--rate`` events/s, a seeded mix of
registrations, bookings, cancellations and password resets) through
``notifier.client.publish_many``, exactly as a producer does. Every
``--kill-every`` seconds (seeded) the worker's whole process group is
SIGKILLed and a fresh worker started, as an orchestrator would. When the
stream ends, the worker started after the last kill drains until every planned
email is delivered or dead-lettered and no message is left in a queue or in
kombu's ``unacked`` hash, or until ``--drain-timeout`` passes.

Each planned email is counted as delivered (at the sink), dead-lettered,
lost (neither), and as duplicated when the sink got it more than once. SMS
are not planned: the events carry no phone numbers and Twilio is off.

    python -m tests.reliability.soak --seeds 1 2 3 --duration 150 --kill-every 8-15 --rate 20

prints one line of figures per run and a table, and exits 1 when any run lost
an email, left a message behind, received one nobody planned or had more
duplicates than the documented window (one per pool process per kill); 2 when
a run could not be carried out. Everything it starts (redis-server, sink,
workers) is stopped at the end, whatever happens. What each run leaves behind
for inspection (worker logs, Redis's AOF) stays under ``--workdir``.

``--kill-lead-ms 1`` moves each kill to 1 ms before one of the producer's
publishes: the next message then reaches Redis while the dead worker's BRPOP
is still registered there (Redis drops it some milliseconds after the kill),
the moment the issue's losses came from. At random instants (the default)
only about one kill in six meets a publish in that window.

Evidence of where a lost message went: just before each kill the run records
the worker's Redis connections as Redis sees them (``CLIENT LIST``: was a
``BRPOP`` blocked?) and as the kernel sees them (bytes received by the
worker's socket and not yet read, from ``/proc/net/tcp``), and how long after
the SIGKILL Redis still listed them. Marker keys written into Redis go into
its AOF in order with every other write: ``before`` the kill, ``sent`` right
after SIGKILL, ``dropped`` once Redis no longer lists the dead BRPOP client,
``after`` once every process of the worker is gone. Afterwards the AOF is
replayed: every message that left the queues without ever being recorded in
``unacked`` is an orphan, placed between the markers (``Forensics``).

``tests/reliability/test_steady_stream_kills.py`` runs a short version.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import psutil
import pytest
import redis

from notifier import keys
from notifier.app import create_app
from notifier.client import publish_many
from notifier.errors import PublishError
from notifier.testing import SmtpSink
from tests import samples
from tests.polling import eventually
from tests.reliability.conftest import (
    UNACKED,
    WORKER_PROCESSES,
    RedisServer,
    System,
    Tally,
    Worker,
    person,
    planned_emails,
    report,
    worker_environment,
)

__all__ = ["Forensics", "KillRecord", "RunResult", "Scenario", "main", "run"]

ROOT = Path(__file__).resolve().parents[2]
UNACKED_INDEX = "unacked_index"  # kombu's Redis transport: delivery tag -> time taken
MARKER = "soak:marker:"  # marker keys written into Redis (and so into its AOF) around each kill
# How a consumer waits for messages: kombu's BRPOP, or what a reliable-fetch transport uses.
FETCHES = frozenset({"brpop", "blpop", "blmove", "brpoplpush", "bzpopmin", "bzpopmax"})


@dataclass(frozen=True)
class Scenario:
    """One run's parameters. The defaults are the issue's."""

    seed: int
    duration: float = 150.0  # seconds of steady stream
    kill_every: tuple[float, float] = (8.0, 15.0)  # seconds between kills, uniform (seeded)
    rate: float = 20.0  # events per second
    drain_timeout: float = 150.0  # seconds, after the stream, to settle
    visibility_timeout: int = 20  # NOTIFIER_VISIBILITY_TIMEOUT: a dead worker's messages return
    claim_lease: int = 6  # NOTIFIER_CLAIM_LEASE: a dead worker's claims free up
    sink_delay: float = 0.02  # seconds the SMTP server takes per message
    concurrency: int = WORKER_PROCESSES
    # None: kill at the seeded instant, whatever the producer is doing (the
    # issue's scenario). Else: move each kill to this many seconds before the
    # producer's next publish, so the next message reaches Redis while the
    # dead worker's BRPOP may still be registered there.
    kill_lead: float | None = None

    def kill_times(self) -> list[float]:
        """Seconds into the stream at which the worker is killed (seeded)."""
        rng = random.Random(f"{self.seed}-kills")
        times: list[float] = []
        at = 0.0
        while True:
            at += rng.uniform(*self.kill_every)
            if at >= self.duration:
                return times
            times.append(round(at, 3))


# --------------------------------------------------------------------------- the stream


def stream_event(rng: random.Random, index: int, tag: str) -> dict[str, Any]:
    """Event ``index`` of a seeded stream: one of the four types, its own people, a seeded id.

    People are never shared between events, so per-recipient rate limits stay
    out of the way; nobody has a phone, so only emails are planned.
    """
    who = f"{tag}-{index}"
    fan = person(f"Fan {who}", f"fan-{who}@example.com")
    admin = person(f"Admin {who}", f"admin-{who}@example.com")
    kind = rng.choice(
        ("user.registered", "booking.created", "booking.cancelled", "password.reset_requested")
    )
    if kind == "user.registered":
        event = samples.user_registered(user=fan)
    elif kind == "booking.created":
        event = samples.booking_created(fan=fan, admin=admin)
    elif kind == "booking.cancelled":
        event = samples.booking_cancelled(fan=fan, admin=admin)
    else:
        event = samples.password_reset_requested(user=fan)
    event["event_id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    return event


class Producer(threading.Thread):
    """Publishes ``rate`` events a second, on schedule, until stopped; keeps what was accepted.

    Each event is due at ``index / rate`` seconds after the start; whatever is
    due goes out in one ``publish_many`` call (usually one event), so a slow
    publish is caught up instead of lowering the rate.
    """

    def __init__(self, system: System, seed: int, rate: float) -> None:
        super().__init__(name="soak-producer", daemon=True)
        self.system = system
        self.rate = rate
        self.rng = random.Random(f"{seed}-events")
        self.tag = f"s{seed}"
        self.accepted: list[dict[str, Any]] = []
        self.refused: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        self.started = 0.0  # monotonic: event k is due at started + k / rate

    def start(self) -> None:
        self.started = time.monotonic()
        super().start()

    def next_publish(self, after: float) -> float:
        """The monotonic time of the first publish scheduled at or after ``after``."""
        index = max(0, math.ceil((after - self.started) * self.rate))
        return self.started + index / self.rate

    def run(self) -> None:
        app = create_app(self.system.settings)
        try:
            start = self.started
            published = 0
            while not self._stop_event.is_set():
                due = int((time.monotonic() - start) * self.rate) + 1
                if due > published:
                    batch = [
                        stream_event(self.rng, index, self.tag) for index in range(published, due)
                    ]
                    published = due
                    try:
                        publish_many(batch, app=app)
                    except PublishError:
                        with self._lock:
                            self.refused.extend(batch)
                    else:
                        with self._lock:
                            self.accepted.extend(batch)
                self._stop_event.wait(max(0.0, published / self.rate - (time.monotonic() - start)))
        except BaseException as error:  # surfaced by stop()
            self.error = error
        finally:
            app.close()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=30)
        if self.error is not None:
            raise RuntimeError(f"the producer failed: {self.error!r}") from self.error


# --------------------------------------------------------------------------- the worker at a kill


@dataclass
class Connection:
    """One TCP connection of a worker process to Redis, seen from both ends."""

    role: str  # "parent" (Celery's consumer) or "pool" (a pool process)
    port: int  # the worker's local port
    cmd: str  # the last command Redis had from it (CLIENT LIST)
    flags: str  # "b": blocked (in a BRPOP), nothing handed over yet
    idle: int  # seconds since its last command
    unread: int  # bytes the kernel received for the worker and the worker has not read yet


@dataclass
class KillRecord:
    """The worker at the moment it was SIGKILLed."""

    number: int
    at: float  # seconds into the stream
    pid: int
    uptime: float  # seconds since this worker was started
    ready: bool  # had it logged "ready."
    queued: int  # messages in notifier.events at the kill
    unacked: int  # messages in kombu's unacked hash at the kill
    rss_mb: float  # the worker's main process: the kernel frees its memory before its sockets
    connections: list[Connection] = field(default_factory=list)
    dropped_ms: float = -1.0  # after the SIGKILL, until Redis had dropped all its connections
    fetch_dropped_ms: float = -1.0  # ... and its fetching (BRPOP) connection

    @property
    def fetch(self) -> str:
        """What the consumer's BRPOP (or other blocking fetch) was doing at the kill."""
        states = []
        for c in self.connections:
            if c.cmd not in FETCHES:
                continue
            if "b" in c.flags:
                states.append(f"{c.cmd.upper()} blocked")
            elif c.unread:
                states.append(f"{c.cmd.upper()} answered, {c.unread} bytes unread")
            else:
                states.append(f"{c.cmd.upper()} answered and read")
        return "; ".join(states) or "no fetch outstanding"


def _unread_bytes(redis_port: int) -> dict[int, int]:
    """Local port → bytes in the receive queue, for this host's TCP sockets connected to Redis."""
    unread: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, remote, queues = fields[1], fields[2], fields[4]
                if int(remote.rsplit(":", 1)[1], 16) == redis_port:
                    unread[int(local.rsplit(":", 1)[1], 16)] = int(queues.split(":")[1], 16)
    return unread


def _worker_ports(worker: Worker, redis_port: int) -> dict[int, str]:
    """Local port → role, for the worker's connections to Redis."""
    ports: dict[int, str] = {}
    try:
        parent = psutil.Process(worker.pid)
        processes = [(parent, "parent")] + [(child, "pool") for child in parent.children()]
    except psutil.NoSuchProcess:
        return ports
    for process, role in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            for conn in process.net_connections("tcp"):
                if conn.raddr and conn.raddr.port == redis_port:
                    ports[conn.laddr.port] = role
    return ports


def snapshot(
    worker: Worker, client: redis.Redis, redis_port: int, number: int, at: float, started: float
) -> KillRecord:
    """The worker's state as Redis and the kernel see it (taken just before a kill)."""
    ports = _worker_ports(worker, redis_port)
    clients = {int(str(c["addr"]).rsplit(":", 1)[1]): c for c in client.client_list()}
    unread = _unread_bytes(redis_port)
    pipe = client.pipeline(transaction=False)
    pipe.llen(keys.EVENTS_QUEUE)
    pipe.hlen(UNACKED)
    queued, unacked = pipe.execute()
    try:
        rss = psutil.Process(worker.pid).memory_info().rss / 2**20
    except psutil.NoSuchProcess:
        rss = 0.0
    record = KillRecord(
        number=number,
        at=round(at, 3),
        pid=worker.pid,
        uptime=round(time.monotonic() - started, 3),
        ready=" ready." in worker.log(),
        queued=int(queued),
        unacked=int(unacked),
        rss_mb=round(rss, 1),
    )
    for port, role in sorted(ports.items()):
        info = clients.get(port, {})
        record.connections.append(
            Connection(
                role=role,
                port=port,
                cmd=str(info.get("cmd", "?")),
                flags=str(info.get("flags", "?")),
                idle=int(info.get("idle", -1)),
                unread=unread.get(port, 0),
            )
        )
    return record


def _alive(process: psutil.Process) -> bool:
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def kill(worker: Worker, client: redis.Redis, record: KillRecord, when: float) -> None:
    """SIGKILL the worker's process group at ``when`` (monotonic), with markers in the AOF.

    Marker keys go into Redis (and so into its AOF, in order with every other
    write): ``before`` the kill, ``sent`` as soon as SIGKILL was sent,
    ``dropped`` once Redis no longer lists the dead worker's BRPOP connection
    (a BRPOP still registered until then can be served into a socket nobody
    will read again), and ``after`` once every process of the worker is gone.
    How long Redis kept the connections is measured by polling its client list.
    """
    pool = worker.children()
    ports = {c.port for c in record.connections}
    fetching = {c.port for c in record.connections if c.cmd in FETCHES}
    client.set(f"{MARKER}kill:{record.number}:before", repr(time.time()))
    time.sleep(max(0.0, when - time.monotonic()))
    os.killpg(worker.pid, signal.SIGKILL)
    killed = time.monotonic()
    client.set(f"{MARKER}kill:{record.number}:sent", repr(time.time()))
    while ports and time.monotonic() - killed < 10:
        listed = {int(str(c["addr"]).rsplit(":", 1)[1]) for c in client.client_list()}
        elapsed = round((time.monotonic() - killed) * 1000, 1)
        if fetching and not fetching & listed:
            client.set(f"{MARKER}kill:{record.number}:dropped", repr(time.time()))
            record.fetch_dropped_ms, fetching = elapsed, set()
        if not ports & listed:
            record.dropped_ms = elapsed
            break
    worker.kill()  # reaps it
    eventually(lambda: not any(map(_alive, pool)), 10, "the killed pool processes to be gone")
    client.set(f"{MARKER}kill:{record.number}:after", repr(time.time()))


# --------------------------------------------------------------------------- accounting


@dataclass
class RunResult:
    """What one run produced: the figures, what was left behind, and the evidence."""

    scenario: Scenario
    kills: list[KillRecord]
    accepted: int
    refused: int
    tally: Tally
    strangers: int  # emails received that no published event called for
    drain_seconds: float
    drained: bool  # settled within the drain timeout
    leftovers: dict[str, int]  # key → messages still held there at the end
    lost_events: list[str]  # event ids with at least one lost email
    workdir: Path
    forensics: Forensics | None = None

    @property
    def duplicate_window(self) -> int:
        """The documented bound: at most one duplicate per pool process per kill."""
        return len(self.kills) * self.scenario.concurrency

    @property
    def problems(self) -> list[str]:
        found = []
        if self.tally.lost:
            found.append(f"{len(self.tally.lost)} emails lost ({len(self.lost_events)} events)")
        if self.leftovers:
            found.append(f"messages left behind: {self.leftovers}")
        if self.strangers:
            found.append(f"{self.strangers} emails nobody planned")
        if self.tally.duplicates > self.duplicate_window:
            found.append(
                f"{self.tally.duplicates} duplicates, over the window of {self.duplicate_window}"
            )
        return found

    def figures(self) -> dict[str, object]:
        return {
            "seed": self.scenario.seed,
            "kills": len(self.kills),
            "accepted": self.accepted,
            "planned": len(self.tally.planned),
            "delivered": len(self.tally.delivered),
            "dead": len(self.tally.dead_only),
            "lost": len(self.tally.lost),
            "duplicates": self.tally.duplicates,
            "drain_s": round(self.drain_seconds, 1),
            "drained": self.drained,
            "left": sum(self.leftovers.values()),
        }


def leftovers(client: redis.Redis) -> dict[str, int]:
    """Messages still held anywhere: queues, kombu's unacked hash and index, any other list."""
    held: dict[str, int] = {}
    for key in keys.QUEUES:
        held[key] = int(client.llen(key))
    held[UNACKED] = int(client.hlen(UNACKED))
    held[UNACKED_INDEX] = int(client.zcard(UNACKED_INDEX))
    # Whatever else holds messages in lists (a fix may keep per-consumer lists).
    for raw in client.scan_iter(count=1000, _type="list"):
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        held.setdefault(name, int(client.llen(name)))
    return {name: n for name, n in held.items() if n}


def _event_of(delivery_ids: set[str], planned: dict[str, str]) -> list[str]:
    return sorted({planned[i] for i in delivery_ids})


# --------------------------------------------------------------------------- one run


def run(scenario: Scenario, workdir: Path, *, forensics: bool = True) -> RunResult:
    """Carry out one run in ``workdir`` (emptied first); everything started is stopped."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    server = RedisServer(workdir / "redis")
    kills: list[KillRecord] = []
    with contextlib.ExitStack() as stack:
        server.start()
        stack.callback(server.stop)
        with contextlib.closing(redis.Redis.from_url(server.url)) as admin:
            # The AOF is the evidence: every write on disk before the next one,
            # and no rewrite folding it up mid-run.
            admin.config_set("appendfsync", "always")
            admin.config_set("auto-aof-rewrite-percentage", 0)
        sink = stack.enter_context(SmtpSink(delay=scenario.sink_delay))
        environment = worker_environment(
            server.url,
            sink,
            NOTIFIER_VISIBILITY_TIMEOUT=str(scenario.visibility_timeout),
            NOTIFIER_CLAIM_LEASE=str(scenario.claim_lease),
        )
        system = System(environment, sink, workdir)
        stack.callback(system.stop)
        client = stack.enter_context(contextlib.closing(redis.Redis.from_url(server.url)))

        worker = system.worker(scenario.concurrency).wait_ready()
        started = time.monotonic()
        producer = Producer(system, scenario.seed, scenario.rate)
        producer.start()
        stream_start = producer.started
        stack.callback(producer.stop)  # on any failure below; stopping twice is harmless
        for number, at in enumerate(scenario.kill_times(), start=1):
            # The scenario itself: the worker runs under the stream until its kill.
            time.sleep(max(0.0, stream_start + at - time.monotonic()))
            if not producer.is_alive():
                break
            record = snapshot(worker, client, server.port, number, at=at, started=started)
            kills.append(record)
            when = time.monotonic()
            if scenario.kill_lead is not None:
                when = producer.next_publish(after=when + 0.01) - scenario.kill_lead
            kill(worker, client, record, when)
            worker = system.worker(scenario.concurrency)  # the orchestrator's restart
            started = time.monotonic()
        time.sleep(max(0.0, stream_start + scenario.duration - time.monotonic()))
        producer.stop()
        stream_end = time.monotonic()

        accepted, refused = producer.accepted, producer.refused
        planned = planned_emails(accepted)
        expected_anywhere = set(planned) | set(planned_emails(refused))

        def settled() -> Tally | None:
            if not system.idle():
                return None
            tally = system.tally(planned)
            return tally if tally.settled else None

        drained = True
        try:
            eventually(settled, scenario.drain_timeout, "every email delivered or dead-lettered")
        except pytest.fail.Exception:
            drained = False
        drain_seconds = time.monotonic() - stream_end
        tally = system.tally(planned)
        left = leftovers(client)
        if not worker.running():
            raise RuntimeError(f"the last worker died during the drain\n{worker.log_tail()}")
        result = RunResult(
            scenario=scenario,
            kills=kills,
            accepted=len(accepted),
            refused=len(refused),
            tally=tally,
            strangers=len(set(tally.received) - expected_anywhere),
            drain_seconds=drain_seconds,
            drained=drained,
            leftovers=left,
            lost_events=_event_of(tally.lost, planned),
            workdir=workdir,
        )
    # Everything is stopped: Redis has written out its AOF.
    if forensics:
        result.forensics = Forensics.from_aof(workdir / "redis", set(result.lost_events))
    return result


# --------------------------------------------------------------------------- forensics (the AOF)


def aof_commands(directory: Path) -> Iterator[list[bytes]]:
    """Every command in the AOF under ``directory``, in order (Redis 7 multi-part AOF)."""
    aof_dir = directory / "appendonlydir"
    manifests = sorted(aof_dir.glob("*.manifest"))
    if not manifests:
        return
    files = []
    for line in manifests[0].read_text().splitlines():
        fields = line.split()
        entry = dict(zip(fields[::2], fields[1::2], strict=False))
        if entry.get("type") == "i":  # incremental files; the base is the empty start
            files.append((int(entry["seq"]), aof_dir / entry["file"]))
    for _, path in sorted(files):
        yield from _resp_commands(path.read_bytes())


def _resp_commands(data: bytes) -> Iterator[list[bytes]]:
    position = 0
    while position < len(data):
        if data[position : position + 1] == b"#":  # an annotation (#TS:...)
            position = data.index(b"\r\n", position) + 2
            continue
        end = data.index(b"\r\n", position)
        count = int(data[position + 1 : end])
        position = end + 2
        arguments = []
        for _ in range(count):
            end = data.index(b"\r\n", position)
            length = int(data[position + 1 : end])
            start = end + 2
            arguments.append(data[start : start + length])
            position = start + length + 2
        yield arguments


@dataclass
class Orphan:
    """A message that left a queue and was never recorded in ``unacked`` afterwards."""

    queue: str
    task: str
    event_id: str
    delivery_tag: str
    reply_bytes: int  # the size of the BRPOP reply that carried it
    popped_at: int  # command number in the AOF
    kill: int  # the kill whose markers are nearest
    relation: str  # where the pop lies relative to that kill's markers
    commands_between: dict[str, int]  # AOF commands between the pop and SIGKILL being sent


@dataclass
class Forensics:
    """Where messages went, from Redis's AOF: popped-and-never-recorded messages and the kills."""

    commands: int
    orphans: list[Orphan]
    markers: dict[str, int]  # marker key → command number
    lost_explained: dict[str, str]  # lost event id → what the AOF shows

    @classmethod
    def from_aof(cls, directory: Path, lost_events: set[str]) -> Forensics:
        lists: dict[bytes, list[bytes]] = {}
        pops: list[tuple[int, bytes, bytes]] = []  # (command number, queue, payload)
        recorded: dict[bytes, list[int]] = {}  # delivery tag → HSET unacked command numbers
        markers: dict[str, int] = {}
        commands: list[bytes] = []
        number = -1
        for number, command in enumerate(aof_commands(directory)):
            name = command[0].upper()
            commands.append(name)
            if name in (b"LPUSH", b"RPUSH"):
                items = lists.setdefault(command[1], [])
                for value in command[2:]:
                    if name == b"LPUSH":
                        items.insert(0, value)
                    else:
                        items.append(value)
            elif name in (b"RPOP", b"LPOP"):
                items = lists.get(command[1], [])
                count = int(command[2]) if len(command) > 2 else 1
                for _ in range(min(count, len(items))):
                    value = items.pop() if name == b"RPOP" else items.pop(0)
                    pops.append((number, command[1], value))
            elif name in (b"LMOVE", b"RPOPLPUSH"):
                source, destination = lists.get(command[1], []), command[2]
                if source:
                    take_right = name == b"RPOPLPUSH" or command[3].upper() == b"RIGHT"
                    value = source.pop() if take_right else source.pop(0)
                    if not destination.startswith(b"notifier."):  # it left the queues
                        pops.append((number, command[1], value))
                    items = lists.setdefault(destination, [])
                    if name == b"RPOPLPUSH" or command[4].upper() == b"LEFT":
                        items.insert(0, value)
                    else:
                        items.append(value)
            elif name == b"DEL":
                for key in command[1:]:
                    lists.pop(key, None)
            elif name == b"HSET" and command[1] == UNACKED.encode():
                for recorded_tag in command[2::2]:
                    recorded.setdefault(recorded_tag, []).append(number)
            elif name == b"SET" and command[1].startswith(MARKER.encode()):
                markers[command[1].decode().removeprefix(MARKER)] = number

        orphans = []
        for popped_at, queue, payload in pops:
            if not queue.startswith(b"notifier."):
                continue
            message = json.loads(payload)
            tag = str(message["properties"]["delivery_tag"])
            if any(n > popped_at for n in recorded.get(tag.encode(), [])):
                continue
            kill_number, relation = _nearest_kill(markers, popped_at)
            before = markers.get(f"kill:{kill_number}:sent", popped_at)
            between = Counter(
                c.decode() for c in commands[min(popped_at, before) + 1 : max(popped_at, before)]
            )
            orphans.append(
                Orphan(
                    queue=queue.decode(),
                    task=str(message["headers"].get("task")),
                    event_id=_event_id(message),
                    delivery_tag=tag,
                    reply_bytes=_brpop_reply_size(queue, payload),
                    popped_at=popped_at,
                    kill=kill_number,
                    relation=relation,
                    commands_between=dict(between),
                )
            )
        explained = {}
        for event_id in sorted(lost_events):
            mine = [o for o in orphans if o.event_id == event_id]
            explained[event_id] = (
                "; ".join(
                    f"popped from {o.queue} at AOF command {o.popped_at}, never in {UNACKED}: "
                    f"{o.relation} kill {o.kill}"
                    for o in mine
                )
                or "no orphaned pop in the AOF"
            )
        return cls(number + 1, orphans, markers, explained)


def _nearest_kill(markers: dict[str, int], position: int) -> tuple[int, str]:
    """The kill nearest to AOF command ``position``, and where the command lies against it."""
    kills = sorted({int(name.split(":")[1]) for name in markers if name.startswith("kill:")})
    best: tuple[int, int, str] = (sys.maxsize, 0, "far from any")
    for n in kills:
        mine = sorted((at, name.rsplit(":", 1)[1]) for name, at in markers.items()
                      if name.startswith(f"kill:{n}:"))  # fmt: skip
        first, last = mine[0][0], mine[-1][0]
        if first < position < last:
            previous = max((at, name) for at, name in mine if at < position)[1]
            following = min((at, name) for at, name in mine if at > position)[1]
            return n, f"between the '{previous}' and '{following}' markers of"
        if position < first and first - position < best[0]:
            best = (first - position, n, f"{first - position} commands before")
        if position > last and position - last < best[0]:
            best = (position - last, n, f"{position - last} commands after")
    return best[1], best[2]


def _event_id(message: dict[str, Any]) -> str:
    try:
        args = json.loads(base64.b64decode(message["body"]))[0]
        first = args[0] if args else {}
        if "event_id" in first:
            return str(first["event_id"])
        return str(first.get("delivery", {}).get("event_id", "?"))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return "?"


def _brpop_reply_size(queue: bytes, payload: bytes) -> int:
    """Bytes of the RESP reply to a BRPOP that returned ``payload`` from ``queue``."""
    return len(b"*2\r\n") + sum(len(b"$%d\r\n" % len(x)) + len(x) + 2 for x in (queue, payload))


# --------------------------------------------------------------------------- command line


def _range(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    bounds = (float(low), float(high or low))
    if not 0 < bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"not a range of seconds like 8-15: {text!r}")
    return bounds


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.reliability.soak",
        description="Issue 18: SIGKILL workers under a steady stream; count what was lost.",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--duration", type=float, default=150.0, help="seconds of stream")
    parser.add_argument("--kill-every", type=_range, default=(8.0, 15.0), help="seconds, LOW-HIGH")
    parser.add_argument("--rate", type=float, default=20.0, help="events per second")
    parser.add_argument(
        "--kill-lead-ms",
        type=float,
        default=None,
        help="kill this many ms before the producer's next publish (default: at random)",
    )
    parser.add_argument("--drain-timeout", type=float, default=150.0, help="seconds")
    parser.add_argument("--visibility-timeout", type=int, default=20, help="seconds")
    parser.add_argument("--claim-lease", type=int, default=6, help="seconds")
    parser.add_argument("--workdir", type=Path, default=ROOT / "var" / "soak")
    parser.add_argument("--no-forensics", action="store_true", help="skip reading the AOF")
    parser.add_argument("--verbose", action="store_true", help="each kill's worker state")
    return parser.parse_args(argv)


COLUMNS = [
    ("seed", "seed"),
    ("kills", "kills"),
    ("accepted", "events accepted"),
    ("planned", "planned deliveries"),
    ("delivered", "delivered"),
    ("dead", "dead-lettered"),
    ("lost", "lost"),
    ("duplicates", "duplicates"),
    ("drain_s", "drain s"),
    ("left", "left in Redis"),
]


def table(rows: list[dict[str, object]]) -> str:
    """A Markdown table of the runs' figures."""
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |"]
    lines.append("|" + "---|" * len(COLUMNS))
    for row in rows:
        cells = []
        for name, _ in COLUMNS:
            value = row.get(name, "")
            if name == "drain_s" and row.get("drained") is False:
                value = f"{value} (timed out)"
            cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def describe(result: RunResult, verbose: bool) -> None:
    """Print what a run found out about where messages went."""
    for record in result.kills:
        print(
            f"  kill {record.number} at {record.at:.1f}s: worker up {record.uptime:.1f}s, "
            f"ready={record.ready}, queued={record.queued}, unacked={record.unacked}, "
            f"RSS {record.rss_mb} MB, {record.fetch}; Redis dropped the fetching client "
            f"{record.fetch_dropped_ms} ms and every client {record.dropped_ms} ms after the kill"
        )
        if verbose:
            for c in record.connections:
                print(f"    {asdict(c)}")
    if result.forensics is None:
        return
    for orphan in result.forensics.orphans:
        print(
            f"  orphan: {orphan.task} of event {orphan.event_id} (reply of {orphan.reply_bytes} "
            f"bytes) popped from {orphan.queue}, never in {UNACKED}; {orphan.relation} kill "
            f"{orphan.kill}; between: {orphan.commands_between}"
        )
    for event_id, what in result.forensics.lost_explained.items():
        print(f"  lost event {event_id}: {what}")


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)

    def stop(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)  # unwinds: every run stops what it started

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    rows: list[dict[str, object]] = []
    failed = errors = 0
    for seed in arguments.seeds:
        scenario = Scenario(
            seed=seed,
            duration=arguments.duration,
            kill_every=arguments.kill_every,
            rate=arguments.rate,
            drain_timeout=arguments.drain_timeout,
            visibility_timeout=arguments.visibility_timeout,
            claim_lease=arguments.claim_lease,
            kill_lead=None if arguments.kill_lead_ms is None else arguments.kill_lead_ms / 1000,
        )
        print(f"seed {seed}: {len(scenario.kill_times())} kills planned", flush=True)
        try:
            result = run(
                scenario, arguments.workdir / f"seed-{seed}", forensics=not arguments.no_forensics
            )
        except (Exception, pytest.fail.Exception) as error:  # pytest.fail: a conftest helper
            errors += 1
            print(f"seed {seed}: the run could not be carried out: {error}", file=sys.stderr)
            continue
        rows.append(result.figures())
        report("steady-stream kills (soak)", **result.figures(), problems=result.problems)
        describe(result, arguments.verbose)
        failed += bool(result.problems)
    print()
    print(table(rows))
    if errors:
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
