"""The benchmark: Celery's no-op baseline and notifier end to end, measured in one run.

    .venv/bin/python -m bench            # full run, about 2 minutes on 2 cores
    .venv/bin/python -m bench --smoke    # tiny numbers: checks it works (CI), measures nothing

Phases, in order (bench/README.md):

1. ``render_us``/``mime_us``: each email template rendered (cached
   environment) and composed in this process, microseconds per email.
2. ``noop_tasks_per_s``: N events pre-queued with ``publish_many``; a worker
   whose only task is a no-op registered as ``notifier.handle_event``
   (``bench/noop.py``: notifier's Celery configuration, nothing else) is
   started with the documented command line; time until the queue is drained
   and every message acked.
3. ``emails_per_s``: N events (``user.registered`` with a share of
   ``booking.created``) pre-queued with ``publish_many`` (timed:
   ``publish_per_s``), then ``celery -A worker worker -Q ... -c 4``; time
   until the SMTP sink accepted the last email. ``smtp_connections`` is
   counted at the sink once the worker stopped.
4. ``p50_ms``/``p99_ms``: a fresh worker, events published at a steady rate
   of half the measured maximum; latency from publish to SMTP acceptance,
   per email, from the sink's arrival times.

Rates are measured from the first message taken off the queue, so worker
boot (the same ~1-2 s in both runs, more on a loaded machine) does not
flatter the shorter run; the ``*_incl_boot`` fields count from spawning.
The run prints a table, then one JSON line (the last line of output).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from bench import workload
from bench.sink import PostfixSink, PythonSink, Sink, find_smtp_sink
from notifier import keys
from notifier.app import create_app
from notifier.client import prepare, publish_batch, publish_many
from notifier.compose import compose_email, parse_sender
from notifier.events import parse_event
from notifier.planner import plan
from notifier.redis_clients import redis_client
from notifier.settings import Settings
from notifier.templates import Renderer
from notifier.testing import (
    EmbeddedRedis,
    WorkerProcess,
    free_port,
    make_settings,
    redis_reachable,
)

__all__ = ["Config", "main", "run"]

REPO = Path(__file__).resolve().parent.parent
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/11"
SENDER = "Bookings <bookings@example.com>"
# The fields the JSON line always carries (the smoke test checks each one).
REQUIRED_FIELDS = (
    "emails_per_s",
    "noop_tasks_per_s",
    "ratio",
    "p50_ms",
    "p99_ms",
    "render_us",
    "publish_per_s",
    "smtp_connections",
    "settings",
)


@dataclass(frozen=True)
class Config:
    """What one run does; the defaults are the full benchmark."""

    redis_url: str = DEFAULT_REDIS_URL
    events: int = 15_000
    noop_tasks: int = 15_000
    booking_share: float = 0.2
    concurrency: int = 4
    """Pool processes of both workers: docker-compose's ``worker-events`` (bench/README.md)."""
    latency_seconds: float = 8.0
    render_iterations: int = 1_000
    sink: str = "auto"
    workdir: Path = REPO / "var" / "bench"
    py_spy: Path | None = None
    drain_timeout: float = 120.0
    worker_args: tuple[str, ...] = ()
    """Extra ``celery worker`` options for both workers (experiments: the defaults are ours)."""
    batch: int = 0
    """> 0: the end-to-end events go by the bulk path, ``publish_batch(size=batch)``."""


# --------------------------------------------------------------------------- processes


class PySpy:
    """``py-spy record`` on a worker and its pool children, for the profile (--py-spy)."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, pid: int) -> None:
        """Attach to ``pid`` and its subprocesses (raw collapsed stacks)."""
        binary = Path(sys.executable).parent / "py-spy"
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen(  # noqa: S603 - our own fixed command
            [
                str(binary if binary.exists() else "py-spy"),
                "record",
                "--pid",
                str(pid),
                "--subprocesses",
                "--nonblocking",  # don't pause the workers to sample them
                "--rate",
                "250",
                "--format",
                "raw",
                "--output",
                str(self.output),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        """SIGINT makes py-spy write its output and exit."""
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --------------------------------------------------------------------------- helpers


def _worker(app: str, env: dict[str, str], config: Config, log_name: str) -> WorkerProcess:
    """A worker started as operators start it; Celery's default log level (WARNING)."""
    return WorkerProcess(
        env,
        config.workdir / log_name,
        app=app,
        concurrency=config.concurrency,
        loglevel=None,
        options=config.worker_args,
        cwd=REPO,
    )


def _settings(redis_url: str, smtp_port: int) -> Settings:
    return make_settings(
        redis_url=redis_url,
        mail_server="127.0.0.1",
        mail_port=smtp_port,
        mail_use_tls=False,
        mail_default_sender=SENDER,
    )


def _worker_env(redis_url: str, smtp_port: int) -> dict[str, str]:
    """The environment of a worker: the caller's, minus every notifier setting, plus ours."""
    prefixes = ("MAIL_", "TWILIO_", "NOTIFIER_", "PROMETHEUS_MULTIPROC_DIR", "REDIS_URL")
    env = {name: value for name, value in os.environ.items() if not name.startswith(prefixes)}
    env.update(
        {
            "REDIS_URL": redis_url,
            "MAIL_SERVER": "127.0.0.1",
            "MAIL_PORT": str(smtp_port),
            "MAIL_USE_TLS": "false",
            "MAIL_DEFAULT_SENDER": SENDER,
            # Metrics stay on, as in production, on a port nobody else uses.
            "NOTIFIER_METRICS_PORT": str(free_port()),
            "PYTHONPATH": os.pathsep.join(
                part for part in (str(REPO), os.environ.get("PYTHONPATH", "")) if part
            ),
        }
    )
    return env


def _wait(
    probe: Any,
    timeout: float,
    what: str,
    worker: WorkerProcess | None = None,
    poll: float = 0.01,
) -> float:
    """Poll ``probe()`` until true; return the monotonic time it first was."""
    deadline = time.monotonic() + timeout
    while True:
        if probe():
            return time.monotonic()
        if worker is not None:
            worker.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(poll)


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds used so far by a worker's parent, its pool children and the sink, and by all."""

    at: float
    parent: float
    children: float
    sink: float
    machine_busy: float

    @classmethod
    def take(cls, worker: WorkerProcess, sink_pid: int | None) -> CpuSample:
        """Read /proc now (zeros where it is unreadable: not Linux, or the process is gone)."""
        return cls(
            at=time.monotonic(),
            parent=_process_cpu(worker.pid if worker.running() else None),
            children=sum(_process_cpu(pid) for pid in worker.child_pids()),
            sink=_process_cpu(sink_pid),
            machine_busy=_machine_busy(),
        )

    def per_item(self, later: CpuSample, items: int) -> dict[str, float]:
        """Microseconds of CPU per item between the two samples, and cores busy machine-wide."""
        elapsed = later.at - self.at
        return {
            "parent_us": (later.parent - self.parent) / items * 1e6,
            "children_us": (later.children - self.children) / items * 1e6,
            "sink_us": (later.sink - self.sink) / items * 1e6,
            # Everything on the machine (Redis, other jobs included), in cores.
            "machine_busy_cores": (later.machine_busy - self.machine_busy) / elapsed
            if elapsed > 0
            else 0.0,
        }


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _process_cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


def _machine_busy() -> float:
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    values = [int(value) for value in first]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / _TICKS


def _make_sink(kind: str, workdir: Path) -> Sink:
    port = free_port()
    if kind == "smtp-sink":
        return PostfixSink(workdir, port)
    return PythonSink(workdir, port)


@contextlib.contextmanager
def _redis(url: str, workdir: Path) -> Iterator[str]:
    """The Redis URL to use: ``url`` if it answers, else an embedded server (default URL only)."""
    if redis_reachable(url):
        yield url
        return
    if url != DEFAULT_REDIS_URL:
        raise SystemExit(f"Redis at {url} does not answer")
    with tempfile.TemporaryDirectory(prefix="bench-redis-", dir=workdir) as data:
        server = EmbeddedRedis(Path(data))
        server.start()
        try:
            yield server.url.rsplit("/", 1)[0] + "/11"
        finally:
            server.stop()


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _publish(app: Any, events: list[Any], batch: int = 0) -> float:
    """Publish with ``publish_many`` (or ``publish_batch``); return events per second."""
    started = time.perf_counter()
    if batch:
        publish_batch(events, size=batch, app=app)
    else:
        publish_many(events, app=app)
    return len(events) / (time.perf_counter() - started)


# --------------------------------------------------------------------------- phases


def measure_render(iterations: int) -> tuple[dict[str, float], dict[str, float]]:
    """Microseconds per email: render (subject, text, HTML) and MIME (compose + serialize)."""
    renderer = Renderer()
    sender = parse_sender(SENDER)
    render_us: dict[str, float] = {}
    mime_us: dict[str, float] = {}
    for template, event in workload.template_samples().items():
        delivery = next(d for d in plan(parse_event(event)) if d.template == template)
        now = datetime.now().astimezone()
        for _ in range(min(50, iterations)):  # compile and warm the cache first
            rendered = renderer.email(template, renderer.context(delivery, now))
        started = time.perf_counter()
        for _ in range(iterations):
            rendered = renderer.email(template, renderer.context(delivery, now))
        render_us[template] = (time.perf_counter() - started) / iterations * 1e6
        started = time.perf_counter()
        for _ in range(iterations):
            compose_email(delivery, rendered, sender, now)  # the bytes SMTP sends
        mime_us[template] = (time.perf_counter() - started) / iterations * 1e6
    return render_us, mime_us


def measure_noop(config: Config, redis_url: str, app: Any, client: redis.Redis) -> dict[str, Any]:
    """The Celery baseline: N pre-queued messages, a no-op worker, time to drain."""
    events = workload.make_events(config.noop_tasks, config.booking_share, start=10_000_000)
    publish_per_s = _publish(app, events)
    total = config.noop_tasks
    worker = _worker("bench.noop", _worker_env(redis_url, 1), config, "noop.log")
    try:
        worker.start()
        first = _wait(lambda: client.llen(keys.EVENTS_QUEUE) < total, 60, "the first task", worker)
        cpu_first = CpuSample.take(worker, None)
        # Drained = nothing queued and nothing unacked (acks_late: acked once done).
        done = _wait(
            lambda: client.llen(keys.EVENTS_QUEUE) == 0 and client.hlen("unacked") == 0,
            config.drain_timeout,
            "the no-op worker to drain its queue",
            worker,
        )
        cpu_done = CpuSample.take(worker, None)
    finally:
        worker.stop()
    return {
        "noop_cpu": cpu_first.per_item(cpu_done, total),
        "noop_tasks_per_s": total / (done - first),
        "noop_tasks_per_s_incl_boot": total / (done - worker.started_at),
        "noop_boot_s": first - worker.started_at,
        "noop_publish_per_s": publish_per_s,
        "noop_command": " ".join(worker.arguments),
    }


def measure_end_to_end(
    config: Config, redis_url: str, app: Any, client: redis.Redis, sink_kind: str
) -> dict[str, Any]:
    """notifier end to end: N pre-queued events, the documented worker, time to the last email."""
    events = workload.make_events(config.events, config.booking_share)
    expected = sum(1 for event in events for _ in workload.emails_of(event))
    # The validation half of publish_many, timed alone, to split publish cost:
    # on other people than the published events', so no cache anywhere can
    # make publishing look cheaper than it is for new sign-ups.
    others = workload.make_events(len(events), config.booking_share, start=40_000_000)
    started = time.perf_counter()
    for event in others:
        prepare(event)
    validate_us = (time.perf_counter() - started) / len(others) * 1e6
    publish_per_s = _publish(app, events, config.batch)
    send_us = 1e6 / publish_per_s - validate_us
    queued = int(client.llen(keys.EVENTS_QUEUE))

    sink = _make_sink(sink_kind, config.workdir)
    worker = _worker("worker", _worker_env(redis_url, sink.port), config, "worker-e2e.log")
    spy = PySpy(config.py_spy) if config.py_spy else None
    sink.start()
    try:
        worker.start()
        if spy is not None:
            spy.start(worker.pid)
        first = _wait(
            lambda: client.llen(keys.EVENTS_QUEUE) < queued, 60, "the first event", worker
        )
        cpu_first = CpuSample.take(worker, sink.pid)
        deadline = time.monotonic() + config.drain_timeout
        while True:
            seen = sink.received()
            if seen.messages >= expected:
                last = seen.last_at if seen.last_at is not None else time.monotonic()
                break
            worker.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the sink received {seen.messages} of {expected} emails")
            time.sleep(0.01)
        cpu_last = CpuSample.take(worker, sink.pid)
        if spy is not None:
            spy.stop()
        worker.stop()
        time.sleep(0.3)  # the sink counts a session when it ends: let the QUITs land
        connections = sink.received().connections
        dead = int(client.zcard(keys.DLQ_INDEX))
        retries = int(client.llen(keys.EMAIL_QUEUE))
    finally:
        if spy is not None:
            spy.stop()
        worker.stop()
        sink.stop()
    return {
        "e2e_cpu": cpu_first.per_item(cpu_last, expected),
        "emails_per_s": expected / (last - first),
        "emails_per_s_incl_boot": expected / (last - worker.started_at),
        "events_per_s": len(events) / (last - first),
        "e2e_boot_s": first - worker.started_at,
        "emails": expected,
        "events": len(events),
        "publish_per_s": publish_per_s,
        "validate_us": validate_us,
        "publish_send_us": send_us,
        "smtp_connections": connections,
        "smtp_connections_per_process": connections / config.concurrency,
        "dead_letters": dead,
        "email_retries_queued": retries,
        "e2e_sink": sink.kind,
        "worker_command": " ".join(worker.arguments),
        "e2e_path": f"publish_batch(size={config.batch})" if config.batch else "publish_many",
    }


def measure_latency(
    config: Config, redis_url: str, app: Any, emails_per_s: float
) -> dict[str, Any]:
    """p50/p99 publish -> SMTP accepted, publishing at half the measured maximum."""
    per_event = 1 + config.booking_share  # booking.created plans two emails
    rate = max(1.0, emails_per_s / 2 / per_event)  # events per second
    count = max(10, int(rate * config.latency_seconds))
    warmup = workload.make_events(20, 0.0, start=20_000_000)
    events = workload.make_events(count, config.booking_share, start=30_000_000)
    # Message-ID <delivery_id@example.com> -> index of its event, worked out up front.
    owner = {
        f"<{delivery_id}@example.com>": index
        for index, event in enumerate(events)
        for delivery_id in workload.emails_of(event)
    }
    sink = PythonSink(config.workdir, free_port())  # exact per-message arrival times
    worker = _worker("worker", _worker_env(redis_url, sink.port), config, "worker-latency.log")
    published_at = [0.0] * len(events)
    sink.start()
    try:
        worker.start()
        publish_many(warmup, app=app)  # boots the worker and opens its SMTP connections
        warm = sum(1 for event in warmup for _ in workload.emails_of(event))
        _wait(lambda: sink.received().messages >= warm, 60, "the warm-up emails", worker)
        started = time.monotonic()
        sent = 0
        while sent < len(events):
            due = min(len(events), int((time.monotonic() - started) * rate) + 1)
            if due > sent:
                now = time.monotonic()  # before publishing: the publish counts too
                publish_many(events[sent:due], app=app)
                published_at[sent:due] = [now] * (due - sent)
                sent = due
            time.sleep(0.002)
        published_for = time.monotonic() - started
        seen = sink.wait_for(warm + len(owner), timeout=config.drain_timeout)
        worker.check_alive()
    finally:
        worker.stop()
        sink.stop()
    latencies = [
        (arrived - published_at[owner[message_id]]) * 1000
        for message_id, arrived in seen.arrivals.items()
        if message_id in owner
    ]
    return {
        "p50_ms": _percentile(latencies, 0.50),
        "p99_ms": _percentile(latencies, 0.99),
        "latency_max_ms": max(latencies),
        "latency_emails": len(latencies),
        "latency_events_per_s": len(events) / published_for,
        "latency_emails_per_s": len(latencies) / published_for,
    }


# --------------------------------------------------------------------------- the run


def run(config: Config) -> dict[str, Any]:
    """Every phase, in one run; the JSON-ready result."""
    config.workdir.mkdir(parents=True, exist_ok=True)
    for stale in {*config.workdir.glob("sink-*"), *config.workdir.glob("*.log")}:
        stale.unlink(missing_ok=True)  # the previous run's files: each run leaves its own
    sink_kind = config.sink
    if sink_kind == "auto":
        sink_kind = "smtp-sink" if find_smtp_sink() else "python"
    began = time.monotonic()
    with _redis(config.redis_url, config.workdir) as redis_url:
        if redis_url.rstrip("/").endswith("/0"):
            raise SystemExit("refusing to flush Redis database 0: give a dedicated one")
        client = redis_client(_settings(redis_url, 1))
        app = create_app(_settings(redis_url, 1))
        try:
            client.flushdb()  # a dedicated database (the default is 11)
            render_us, mime_us = measure_render(config.render_iterations)
            result: dict[str, Any] = {"render_us": render_us, "mime_us": mime_us}
            result.update(measure_noop(config, redis_url, app, client))
            client.flushdb()
            result.update(measure_end_to_end(config, redis_url, app, client, sink_kind))
            client.flushdb()
            result.update(measure_latency(config, redis_url, app, result["emails_per_s"]))
        finally:
            with contextlib.suppress(redis.RedisError):
                client.flushdb()
            client.close()
            app.close_runtime()
    result["ratio"] = result["emails_per_s"] / result["noop_tasks_per_s"]
    result["render_us_max"] = max(render_us.values())
    conf = celery_settings(redis_url)
    result["settings"] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "redis_url": redis_url,
        "events": config.events,
        "noop_tasks": config.noop_tasks,
        "booking_share": config.booking_share,
        "batch": config.batch,
        "concurrency": config.concurrency,
        "pool": "prefork",
        "sink_throughput": sink_kind,
        "sink_latency": "python",
        "smtp": "plain, local sink (MAIL_USE_TLS=false)",
        "latency_seconds": config.latency_seconds,
        "worker_args": list(config.worker_args),
        **conf,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "duration_s": round(time.monotonic() - began, 1),
    }
    result["targets"] = {
        "ratio>=0.7": result["ratio"] >= 0.7,
        "render_us<=50": result["render_us_max"] <= 50,
        "smtp_connections_per_process==1": result["smtp_connections_per_process"] == 1,
        "publish_per_s>=10000": result["publish_per_s"] >= 10_000,
        "p99_ms<250": result["p99_ms"] < 250,
    }
    return result


def celery_settings(redis_url: str) -> dict[str, Any]:
    """The reliability settings both workers ran with (from ``celeryconfig.build``)."""
    import celeryconfig

    conf = celeryconfig.build(_settings(redis_url, 1))
    return {
        name: conf[name]
        for name in (
            "task_acks_late",
            "task_reject_on_worker_lost",
            "worker_prefetch_multiplier",
            "task_publish_retry",
            "task_soft_time_limit",
            "task_time_limit",
        )
    } | {"visibility_timeout": conf["broker_transport_options"]["visibility_timeout"]}


def _cpu_row(cpu: dict[str, float]) -> str:
    return (
        f"parent {cpu['parent_us']:.0f} us, pool children {cpu['children_us']:.0f} us, "
        f"sink {cpu['sink_us']:.0f} us; machine busy {cpu['machine_busy_cores']:.2f} cores"
    )


def _table(result: dict[str, Any]) -> str:
    rows: list[tuple[str, str]] = [
        ("Celery no-op baseline", f"{result['noop_tasks_per_s']:,.0f} tasks/s"),
        (
            "notifier end to end",
            f"{result['emails_per_s']:,.0f} emails/s ({result.get('e2e_path', 'publish_many')})",
        ),
        ("  events/s", f"{result['events_per_s']:,.0f} ({result['events']:,} events)"),
        ("  ratio (target >= 0.7)", f"{result['ratio']:.2f}"),
        (
            "  incl. worker boot",
            f"{result['emails_per_s_incl_boot']:,.0f} emails/s vs "
            f"{result['noop_tasks_per_s_incl_boot']:,.0f} tasks/s",
        ),
        (
            "latency at half load",
            f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms "
            f"({result['latency_emails_per_s']:,.0f} emails/s)",
        ),
        (
            "publish_many",
            f"{result['publish_per_s']:,.0f} events/s (validate {result['validate_us']:.0f} us"
            f" + send {result['publish_send_us']:.0f} us per event)",
        ),
        (
            "SMTP connections",
            f"{result['smtp_connections']} ({result['smtp_connections_per_process']:g} per "
            "worker process)",
        ),
        ("dead letters / retries", f"{result['dead_letters']} / {result['email_retries_queued']}"),
        ("CPU per no-op task", _cpu_row(result["noop_cpu"])),
        ("CPU per email", _cpu_row(result["e2e_cpu"])),
    ]
    for template, micros in result["render_us"].items():
        rows.append(
            (f"render {template}", f"{micros:.0f} us (MIME {result['mime_us'][template]:.0f} us)")
        )
    width = max(len(name) for name, _ in rows)
    lines = [f"{name.ljust(width)}  {value}" for name, value in rows]
    met = result["targets"]
    lines.append("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in met.items()))
    return "\n".join(lines)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (``python -m bench``)."""
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="notifier's benchmark (bench/README.md)."
    )
    defaults = Config()
    parser.add_argument("--redis-url", default=defaults.redis_url, help="a database it may flush")
    parser.add_argument("--events", type=int, default=defaults.events)
    parser.add_argument("--noop-tasks", type=int, default=defaults.noop_tasks)
    parser.add_argument("--booking-share", type=float, default=defaults.booking_share)
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument("--latency-seconds", type=float, default=defaults.latency_seconds)
    parser.add_argument("--render-iterations", type=int, default=defaults.render_iterations)
    parser.add_argument("--sink", choices=("auto", "smtp-sink", "python"), default="auto")
    parser.add_argument("--workdir", type=Path, default=defaults.workdir)
    parser.add_argument("--py-spy", type=Path, help="record the e2e workers to this file")
    parser.add_argument(
        "--worker-arg",
        action="append",
        default=[],
        help="extra celery worker option for both workers (--worker-arg=--prefetch-multiplier=4)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=0,
        help="send the end-to-end events by the bulk path, N to a message (1-100)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny run: works or not, no speed")
    args = parser.parse_args(argv)
    config = Config(
        redis_url=args.redis_url,
        events=args.events,
        noop_tasks=args.noop_tasks,
        booking_share=args.booking_share,
        concurrency=args.concurrency,
        latency_seconds=args.latency_seconds,
        render_iterations=args.render_iterations,
        sink=args.sink,
        workdir=args.workdir,
        py_spy=args.py_spy,
        worker_args=tuple(args.worker_arg),
        batch=args.batch,
    )
    if args.smoke:
        config = Config(
            redis_url=args.redis_url,
            events=100,
            noop_tasks=100,
            booking_share=args.booking_share,
            concurrency=args.concurrency,
            latency_seconds=1.0,
            render_iterations=20,
            sink=args.sink,
            workdir=args.workdir,
            drain_timeout=60.0,
            worker_args=tuple(args.worker_arg),
            batch=args.batch,
        )
    # SIGTERM (a CI timeout, kill) unwinds like Ctrl-C: the finally blocks stop
    # the workers and the sink, which run in sessions of their own.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    result = run(config)
    print(_table(result))
    print(json.dumps(result, sort_keys=True))
    return 0
