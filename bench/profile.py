"""Where a worker's time goes, two ways.

1. The real worker under load: summarize a ``py-spy record --format raw``
   taken by the benchmark::

       .venv/bin/python -m bench --events 6000 --py-spy var/bench/e2e.txt
       .venv/bin/python -m bench.profile var/bench/e2e.txt --per N_EMAILS

   py-spy samples every process of the worker (``--subprocesses``) while
   they run (not while they sleep). Each sample is put in one bucket: the
   Celery parent process (consume, dispatch to the pool, ack), or, in a pool
   child, the deepest notifier stage on its stack (validation, ledger,
   render, MIME, SMTP, logging, ...), "Celery in the child" when no notifier
   frame is there. With ``--per`` (emails sent while recording) it prints
   microseconds per email from the sampling rate; on a busy machine a
   runnable-but-waiting process is sampled too, so trust the shares more.

2. The pipeline alone, in this process, under pyinstrument: real Redis
   (a database it flushes), a real SMTP sink process, Celery not involved::

       .venv/bin/python -m bench.profile --pipeline 2000 [--redis-url URL]

   It prints the same buckets from pyinstrument's samples, and the CPU time
   per email of the whole loop.
"""

from __future__ import annotations

import argparse
import collections
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["STAGES", "classify", "summarize"]

# (bucket, marker) in stack order from the task's entry down: the last marker
# found on a stack wins, so a ledger call inside the pipeline counts as
# "ledger", not as "pipeline".
STAGES: tuple[tuple[str, str], ...] = (
    ("pipeline (models, control)", "notifier/pipeline.py"),
    ("pipeline (models, control)", "notifier/app.py"),
    ("validate event (pydantic)", "notifier/events.py"),
    ("plan deliveries", "notifier/planner.py"),
    ("ledger (Redis round trips)", "notifier/ledger.py"),
    ("status records (Redis)", "notifier/status_store.py"),
    ("status records (Redis)", "notifier/script_calls.py"),
    ("callbacks", "notifier/callbacks.py"),
    ("rate limits (Redis)", "notifier/ratelimit.py"),
    ("dead letters (Redis)", "notifier/deadletter.py"),
    ("render (Jinja2)", "notifier/templates.py"),
    ("MIME build (email package)", "notifier/compose.py"),
    ("SMTP (smtplib, socket)", "notifier/channels/smtp/"),
    ("MIME serialize (email.generator)", "email/generator.py"),
    ("logging (structlog)", "notifier/logs.py"),
    ("logging (structlog)", "structlog/"),
    ("metrics", "notifier/metrics/"),
    ("metrics", "prometheus_client/"),
    ("schedule SMS (Celery publish)", "notifier/runtime.py"),
)

_PROCESS = re.compile(r"^process (\d+):")


def classify(frames: list[str]) -> str:
    """The bucket of one sample (its frames, outermost first, process frames included)."""
    processes = [frame for frame in frames if _PROCESS.match(frame)]
    if len(processes) <= 1:
        return "Celery parent process (consume, dispatch, ack)"
    bucket = "Celery in the pool child (task protocol, ack)"
    for frame in frames:
        for name, marker in STAGES:
            if marker in frame:
                bucket = name
    return bucket


def _samples(lines: Iterable[str]) -> Iterable[tuple[list[str], int]]:
    for line in lines:
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        yield stack.split(";"), int(count)


def summarize(path: Path) -> tuple[collections.Counter[str], int]:
    """Samples per bucket, and the total."""
    buckets: collections.Counter[str] = collections.Counter()
    total = 0
    with path.open(encoding="utf-8", errors="replace") as stream:
        for frames, count in _samples(stream):
            buckets[classify(frames)] += count
            total += count
    return buckets, total


def _print(buckets: collections.Counter[str], total: float, per: float | None) -> None:
    print(f"{'where':48} {'share':>7} {'us/email':>9}")
    for name, amount in buckets.most_common():
        column = f"{amount / per * 1e6:9.0f}" if per else ""
        print(f"{name:48} {amount / total:7.1%} {column}")


def profile_pipeline(events: int, redis_url: str) -> None:
    """Run ``events`` events through ``pipeline.handle_event`` in-process under pyinstrument."""
    import tempfile
    import time

    from pyinstrument import Profiler

    from bench import workload
    from bench.sink import PostfixSink, PythonSink, Sink, find_smtp_sink
    from notifier import pipeline
    from notifier.redis_clients import redis_client
    from notifier.runtime import Runtime
    from notifier.testing import free_port, make_settings

    class _Scheduler:
        def schedule(self, job: object, countdown: float) -> None:
            """SMS and retries are not this profile's business."""

        def publish_event(self, event: object) -> None:
            """Nothing to publish here."""

        def schedule_many(self, jobs: object, events: object = ()) -> None:
            """No replays here."""

    with tempfile.TemporaryDirectory(prefix="bench-profile-") as workdir:
        sink: Sink = (PostfixSink if find_smtp_sink() else PythonSink)(Path(workdir), free_port())
        sink.start()
        settings = make_settings(
            redis_url=redis_url,
            mail_server=sink.host,
            mail_port=sink.port,
            mail_use_tls=False,
        )
        client = redis_client(settings)
        try:
            client.flushdb()
            rt = Runtime.from_settings(settings, _Scheduler())
            batch = workload.make_events(2 * events + 100, 0.2)
            for event in batch[:100]:  # connections, template cache, scripts
                pipeline.handle_event(event, rt)
            # First unprofiled (the real cost), then profiled (where it goes).
            plain, profiled = batch[100 : 100 + events], batch[100 + events :]
            emails = sum(1 for event in plain for _ in workload.emails_of(event))
            cpu, wall = time.process_time(), time.perf_counter()
            for event in plain:
                pipeline.handle_event(event, rt)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            profiler = Profiler()
            profiler.start()
            for event in profiled:
                pipeline.handle_event(event, rt)
            profiler.stop()
            rt.close()
        finally:
            sink.stop()
            client.flushdb()
            client.close()
    buckets: collections.Counter[str] = collections.Counter()
    session = profiler.last_session
    root = session.root_frame() if session is not None else None

    def walk(frame: Any, stack: list[str]) -> None:
        here = [*stack, f"{frame.function} ({frame.file_path})"]
        own = frame.time - sum(child.time for child in frame.children)
        if own > 0:
            # Two process frames: classify() then treats it as a pool child.
            buckets[classify(["process 1:", "process 2:", *here])] += own
        for child in frame.children:
            walk(child, here)

    if root is not None:
        walk(root, [])
    total = sum(buckets.values())
    print(
        f"{events} events, {emails} emails in-process (sink: {sink.kind}): "
        f"{wall / emails * 1e6:.0f} us wall, {cpu / emails * 1e6:.0f} us CPU per email"
    )
    # Shares from the profiled run, applied to the unprofiled wall time.
    scaled = collections.Counter({name: share / total * wall for name, share in buckets.items()})
    _print(scaled, wall, emails)


def _main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("raw", type=Path, nargs="?", help="py-spy record --format raw output")
    parser.add_argument("--per", type=int, help="emails sent while recording")
    parser.add_argument("--rate", type=int, default=250, help="py-spy sampling rate (Hz)")
    parser.add_argument("--pipeline", type=int, metavar="EVENTS", help="profile in-process")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/11")
    args = parser.parse_args()
    if args.pipeline:
        profile_pipeline(args.pipeline, args.redis_url)
        return
    if args.raw is None:
        parser.error("give a py-spy raw file, or --pipeline EVENTS")
    counts, samples = summarize(args.raw)
    buckets: collections.Counter[str] = collections.Counter(
        {name: count / args.rate for name, count in counts.items()}
    )
    _print(buckets, samples / args.rate, args.per)
    if args.per:
        per_email = samples / args.rate / args.per * 1e6
        print(f"{'total (sampled) of the worker':48} {'':7} {per_email:9.0f}")


if __name__ == "__main__":
    _main()
