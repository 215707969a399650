"""The Celery app and its tasks, thin wrappers over ``notifier.pipeline`` and ``callbacks``.

``create_app(settings)`` builds an app for any settings (tests make one per
test); ``worker.py`` builds the production one from the environment.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import celery
import redis
from celery import Celery, Task, bootsteps
from celery.exceptions import Reject
from celery.signals import (
    celeryd_after_setup,
    celeryd_init,
    setup_logging,
    task_internal_error,
    task_postrun,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)
from celery.utils import uuid
from celery.utils.nodenames import anon_nodename
from celery.worker.consumer import Consumer
from kombu.exceptions import OperationalError
from vine import promise

import celeryconfig
from notifier import (
    batch,
    callbacks,
    console_bulk,
    dlq_retention,
    keys,
    metrics,
    outage,
    pipeline,
    receipt_sweep,
)
from notifier.errors import NotifierError, PublishError
from notifier.jobs import CallbackJob, Job
from notifier.logs import configure_logging, get_logger, route_stdlib_logging
from notifier.metrics import endpoint
from notifier.runtime import Runtime
from notifier.settings import Settings
from notifier.transport import RejectedEntry

__all__ = ["CeleryScheduler", "NotifierCelery", "create_app", "publish_bulk"]


_logger = logging.getLogger(__name__)
_apps: weakref.WeakSet[NotifierCelery] = weakref.WeakSet()

# What Celery's strategy raises on an envelope it cannot read.
_ENVELOPE_ERRORS = (TypeError, KeyError, ValueError, AttributeError)

# Enough of an undecodable body to diagnose it; it can be arbitrarily large.
MAX_UNDECODABLE_BYTES = 70_000


@contextlib.contextmanager
def _broker_errors() -> Iterator[None]:
    # Our PublishError (a NotifierError) instead of kombu's: callers such as
    # replay can then tell "not enqueued, put it back" from a bug.
    try:
        yield
    except (OperationalError, redis.RedisError, OSError) as exc:
        raise PublishError(f"broker did not accept the job: {type(exc).__name__}: {exc}") from exc


# The send path's publish of a callback (CallbackQueue.schedule_callback(quick=True)):
# one immediate retry (a pooled connection gone stale after a Redis restart), no waits.
_QUICK_RETRY = {"max_retries": 1, "interval_start": 0.0, "interval_step": 0.0, "interval_max": 0.0}


class CeleryScheduler:
    """Schedules ``notifier.deliver`` jobs on the channel's queue, callbacks on theirs."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def schedule(self, job: Job, countdown: float) -> None:
        """Publish the job; ``countdown`` seconds later a worker runs it."""
        queue = keys.EMAIL_QUEUE if job.delivery.channel == "email" else keys.SMS_QUEUE
        with _broker_errors():
            self.app.send_task(
                keys.DELIVER_TASK,
                args=[job.model_dump(mode="json")],
                queue=queue,
                countdown=countdown if countdown > 0 else None,
            )

    def schedule_callback(self, job: CallbackJob, countdown: float, *, quick: bool = False) -> None:
        """Publish ``notifier.callback(job)`` on ``notifier.callbacks`` (``CallbackQueue``)."""
        options: dict[str, Any] = {"retry_policy": _QUICK_RETRY} if quick else {}
        payload = job.payload
        with _broker_errors():
            self.app.send_task(
                keys.CALLBACK_TASK,
                args=[job.model_dump(mode="json")],
                queue=keys.CALLBACKS_QUEUE,
                countdown=countdown if countdown > 0 else None,
                # Short, and no address: Celery copies argsrepr into the message headers.
                argsrepr=f"[callback {payload.delivery_id or payload.event_id} {payload.state}]",
                **options,
            )

    def publish_event(self, event: dict[str, Any]) -> None:
        """Publish an event to ``notifier.handle_event`` as a producer would."""
        with _broker_errors():
            self.app.send_task(keys.HANDLE_EVENT_TASK, args=[event], queue=keys.EVENTS_QUEUE)

    def schedule_many(self, jobs: Sequence[Job], events: Sequence[dict[str, Any]] = ()) -> None:
        """Publish jobs to run now, and events, in one Redis pipeline (as ``publish_many``).

        A bulk replay's path: one round trip per batch instead of one per job
        (docs/operations.md, "Dead letters"). All or nothing is known: on an
        error, which ones the broker took is not, and the caller puts them all
        back (the ledger stops a job that then runs twice).
        """
        if not jobs and not events:
            return
        app, amqp = self.app, self.app.amqp
        origin = anon_nodename()
        with _broker_errors(), app.producer_or_acquire() as producer:
            # Bound once: kombu binds an unbound Queue on every publish otherwise.
            queues = {name: amqp.queues[name].bind(producer.channel) for name in keys.QUEUES}
            with producer.batch(max_size=len(jobs) + len(events) + 1):
                for job in jobs:
                    queue = keys.EMAIL_QUEUE if job.delivery.channel == "email" else keys.SMS_QUEUE
                    # argsrepr: Celery's saferepr of a whole job cost more than the
                    # rest of the message, and would copy an address into headers.
                    self._send(
                        producer,
                        keys.DELIVER_TASK,
                        job.model_dump(mode="json"),
                        queues[queue],
                        f"[job {job.delivery.delivery_id}]",
                        origin,
                    )
                for event in events:
                    self._send(
                        producer,
                        keys.HANDLE_EVENT_TASK,
                        event,
                        queues[keys.EVENTS_QUEUE],
                        repr([{"type": event.get("type"), "event_id": event.get("event_id")}]),
                        origin,
                    )

    def _send(
        self, producer: Any, task: str, body: object, queue: Any, argsrepr: str, origin: str
    ) -> None:
        amqp = self.app.amqp
        task_id = uuid()
        message = amqp.create_task_message(
            task_id,
            task,
            [body],
            {},
            root_id=task_id,
            argsrepr=argsrepr,
            kwargsrepr="{}",
            origin=origin,
            ignore_result=None,  # as send_task: the task's own setting decides
        )
        amqp.send_task_message(producer, task, message, queue=queue, retry=False)


class NotifierTask(Task):  # type: ignore[type-arg]
    """Base of our tasks: nothing a task fails on is acked away unrecorded."""

    app: NotifierCelery

    def poisoned(self, args: tuple[Any, ...]) -> bool:
        """Dead-letter a message redelivered too often (it kills its worker); True if so.

        Only redelivered messages are counted (kombu marks them when it puts
        them back), so the first delivery costs no Redis round trip.
        """
        if not (self.request.delivery_info or {}).get("redelivered"):
            return False
        runtime = self.app.runtime
        return pipeline.count_redelivery(self.name, str(self.request.id), args, runtime)

    def on_failure(
        self,
        exc: Exception,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        einfo: Any,
    ) -> None:
        """A crash, a bug or a hard time limit: Celery acks the message, so we keep it.

        If it cannot be kept (Redis unreachable or refusing writes), the message
        goes back to its queue instead: acked, it would vanish with no trace.
        """
        try:
            pipeline.task_failed(self.name, args, kwargs, exc, self.app.runtime)
        except (redis.RedisError, OperationalError, PublishError) as error:
            raise Reject(f"failure not recorded ({error!r}): requeued", requeue=True) from error


class NotifierConsumer(Consumer):
    """Celery's consumer, keeping what it cannot run instead of logging and acking it.

    Celery acks a message it cannot decode or run (another serializer, an
    unknown task name, no task headers) with a log line that prints the body,
    the person's name and address included. Each is kept as a ``rejected``
    dead letter instead, with the reason and the body (capped), and logged
    without it. Never decoded: Celery refuses every content type but JSON
    (``accept_content``) before our hooks see the message.
    """

    app: NotifierCelery

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        """A body the JSON decoder refused (too deep, not UTF-8, not JSON)."""
        self._reject(
            message,
            f"message body could not be decoded ({type(exc).__name__}: {exc}); "
            f"content type {message.content_type!r}",
        )

    def on_unknown_message(self, body: Any, message: Any) -> None:
        """No ``task`` header, and not a protocol 1 body either."""
        self._reject(message, "not a Celery task message: it has no 'task' header")

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        """A task name this worker does not run (a typo in a producer)."""
        name = (message.headers or {}).get("task") if isinstance(message.headers, dict) else None
        self._reject(
            message,
            f"unknown task {str(name)[:200]!r}: notifier runs "
            f"{keys.HANDLE_EVENT_TASK!r}, {keys.HANDLE_EVENTS_TASK!r}, {keys.DELIVER_TASK!r} "
            f"and {keys.CALLBACK_TASK!r}",
        )

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        """A message Celery refused to read: another serializer, a broken envelope."""
        self._reject(message, f"invalid task message: {exc}")

    def create_task_handler(self, promise: Any = promise) -> Any:
        """Celery's handler, rejecting envelopes its strategy cannot read instead of crashing."""
        handle = super().create_task_handler(promise)

        def on_task_received(message: Any) -> Any:
            try:
                return handle(message)
            except _ENVELOPE_ERRORS as exc:
                # Raised while Celery reads the envelope, before any task runs
                # (task errors are caught by its tracer): otherwise the whole
                # worker stops with "Unrecoverable error".
                if message.acknowledged:
                    raise
                self._reject(message, f"malformed task message: {type(exc).__name__}: {exc}")
                return None

        return on_task_received

    def _reject(self, message: Any, problem: str) -> None:
        body = message.body
        raw = body[:MAX_UNDECODABLE_BYTES] if isinstance(body, (bytes, str)) else repr(body)
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        try:
            pipeline.reject(raw, [problem], self.app.runtime)
        except (redis.RedisError, NotifierError) as error:
            # Not recorded: back on its queue rather than acked away.
            _logger.warning("rejected message not recorded (%r); requeued", error)
            message.reject(requeue=True)
            return
        message.ack()


class OutageWatchStep(bootsteps.StartStopStep):
    """The worker's outage watch (``notifier.outage``), in its main process.

    Periodic work runs inside the workers, one host at a time (docs/DESIGN.md
    §10). A worker bootstep, so every worker has one, embedded ones too;
    started after the pool, so no forked child inherits the thread.
    """

    requires = ("celery.worker.components:Pool",)

    def start(self, parent: Any) -> None:
        app = parent.app
        if isinstance(app, NotifierCelery):
            self.obj = outage.start_watch(app.runtime)

    def stop(self, parent: Any) -> None:
        watch, self.obj = self.obj, None
        if watch is not None:
            watch.stop()

    terminate = stop


class RetentionStep(bootsteps.StartStopStep):
    """The worker's dead-letter retention job (``notifier.dlq_retention``), as the watch."""

    requires = ("celery.worker.components:Pool",)

    def start(self, parent: Any) -> None:
        app = parent.app
        if isinstance(app, NotifierCelery):
            self.obj = dlq_retention.start_retention(app.runtime)

    def stop(self, parent: Any) -> None:
        job, self.obj = self.obj, None
        if job is not None:
            job.stop()

    terminate = stop


class ReceiptSweepStep(bootsteps.StartStopStep):
    """The worker's receipt sweep (``notifier.receipt_sweep``), as the watch."""

    requires = ("celery.worker.components:Pool",)

    def start(self, parent: Any) -> None:
        app = parent.app
        if isinstance(app, NotifierCelery):
            self.obj = receipt_sweep.start_receipt_sweep(app.runtime)

    def stop(self, parent: Any) -> None:
        job, self.obj = self.obj, None
        if job is not None:
            job.stop()

    terminate = stop


class NotifierCelery(Celery):
    """A Celery app that carries notifier's settings and its per-process Runtime."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__("notifier", **kwargs)
        self.settings = settings
        self._runtime: Runtime | None = None
        self._runtime_pid = 0
        self._runtime_lock = threading.Lock()

    @property
    def runtime(self) -> Runtime:
        """This process's Runtime, made on first use after start or fork."""
        pid = os.getpid()
        if self._runtime is None or self._runtime_pid != pid:
            with self._runtime_lock:
                if self._runtime is None or self._runtime_pid != pid:
                    # After a fork the parent's sockets are not ours to use or close.
                    scheduler = CeleryScheduler(self)
                    self._runtime = Runtime.from_settings(
                        self.settings, scheduler, callback_queue=scheduler
                    )
                    self._runtime_pid = pid
        return self._runtime

    def close_runtime(self) -> None:
        """Close this process's connections, if it opened any."""
        runtime, self._runtime = self._runtime, None
        if runtime is not None and self._runtime_pid == os.getpid():
            runtime.close()


def create_app(settings: Settings) -> NotifierCelery:
    """A Celery app configured from ``settings`` with notifier's tasks registered."""
    app = NotifierCelery(settings, set_as_current=False)
    app.conf.update(celeryconfig.build(settings))
    # A copy: the result backend shares the dict, and has nothing to drain.
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        "rejected_handler": functools.partial(_reject_queue_entry, app),
    }
    # Set here, not in celeryconfig: it names a class of this module.
    app.conf.worker_consumer = f"{__name__}:NotifierConsumer"
    app.steps["worker"].add(OutageWatchStep)
    app.steps["worker"].add(RetentionStep)
    app.steps["worker"].add(ReceiptSweepStep)

    # shared=False: otherwise Celery copies these closures into every app made
    # later in the process (tests make one per test), bound to the wrong settings.
    @app.task(name=keys.HANDLE_EVENT_TASK, shared=False, bind=True, base=NotifierTask)
    def handle_event(self: NotifierTask, *args: Any, **kwargs: Any) -> None:
        """Validate, plan and start the deliveries of one event (the public entry point)."""
        started = app.runtime.monotonic()  # the task's time limits count from here
        if self.poisoned(args):
            return
        if len(args) != 1 or kwargs:
            # Not the contract's call shape: record it as rejected rather than
            # letting Celery fail the task (and ack it away) with a TypeError.
            problem = (
                "notifier.handle_event takes exactly one positional argument, the event; "
                f"got {len(args)} positional and keyword arguments {sorted(kwargs)}"
            )
            pipeline.reject({"args": list(args), "kwargs": kwargs}, [problem], app.runtime)
            return
        pipeline.handle_event(args[0], app.runtime, started=started)

    @app.task(name=keys.HANDLE_EVENTS_TASK, shared=False, bind=True, base=NotifierTask)
    def handle_events(self: NotifierTask, *args: Any, **kwargs: Any) -> None:
        """The bulk path: up to 100 events in one message, each handled as on its own."""
        started = app.runtime.monotonic()  # the task's time limits count from here
        if self.poisoned(args):
            return
        if len(args) != 1 or kwargs:
            problem = (
                "notifier.handle_events takes exactly one positional argument, a JSON "
                f"array of events; got {len(args)} positional and keyword arguments "
                f"{sorted(kwargs)}"
            )
            pipeline.reject({"args": list(args), "kwargs": kwargs}, [problem], app.runtime)
            return
        batch.handle_events(args[0], app.runtime, started=started)

    @app.task(name=keys.DELIVER_TASK, shared=False, bind=True, base=NotifierTask)
    def deliver(self: NotifierTask, job: object) -> None:
        """Run one attempt of one delivery (retries, replays, SMS)."""
        started = app.runtime.monotonic()  # the task's time limits count from here
        if self.poisoned((job,)):
            return
        pipeline.deliver(job, app.runtime, started=started)

    @app.task(name=keys.CALLBACK_TASK, shared=False, bind=True, base=NotifierTask)
    def callback(self: NotifierTask, *args: Any, **kwargs: Any) -> None:
        """POST one callback to the producer (docs/DESIGN.md §9); retried on notifier.callbacks."""
        if self.poisoned(args):
            return
        if len(args) != 1 or kwargs:
            problem = (
                "notifier.callback takes exactly one positional argument, the job; "
                f"got {len(args)} positional and keyword arguments {sorted(kwargs)}"
            )
            pipeline.reject({"args": list(args), "kwargs": kwargs}, [problem], app.runtime)
            return
        callbacks.run(args[0], app.runtime)

    @app.task(name=keys.CONSOLE_BULK_TASK, shared=False)
    def bulk(job_id: str) -> None:
        """A console bulk action over a filter, for half a time limit; then again until done."""
        rt = app.runtime
        soft_limit, _ = app.settings.task_time_limits
        console_bulk.run_slice(
            job_id,
            console_bulk.BulkJobs(rt.redis),
            rt.dead_letters,
            lambda taken: pipeline.replay_many(taken, rt),
            lambda next_job: publish_bulk(app, next_job),
            budget=soft_limit / 2,
        )

    _apps.add(app)
    return app


def publish_bulk(app: Celery, job_id: str) -> None:
    """Publish the console's bulk task for a job (``notifier.console_bulk``)."""
    with _broker_errors():
        app.send_task(keys.CONSOLE_BULK_TASK, args=[job_id], queue=keys.EMAIL_QUEUE)


def _reject_queue_entry(app: NotifierCelery, entry: RejectedEntry) -> None:
    """Keep a malformed queue entry the transport took off a queue (``rejected``)."""
    raw = entry.raw[:MAX_UNDECODABLE_BYTES].decode("utf-8", "replace")
    problem = f"entry on queue {entry.queue} is not a Celery message: {entry.reason}"
    pipeline.reject(raw, [problem], app.runtime)


@task_internal_error.connect
def _keep_uncallable_messages(
    sender: Any = None, args: Any = None, kwargs: Any = None, exception: Any = None, **_: Any
) -> None:
    """A message Celery could not call our task with: kept as ``rejected``, not acked away.

    Celery checks the call's shape (keyword arguments must be a mapping) before
    the task body runs, so neither the task nor its ``on_failure`` sees it.
    celery-node, for one, writes ``kwargs: null`` when they are left out.
    """
    app = getattr(sender, "app", None)
    if not isinstance(app, NotifierCelery):
        return
    problem = f"{sender.name} could not be called: {type(exception).__name__}: {exception}"
    if kwargs is not None and not isinstance(kwargs, dict):
        problem += f" (keyword arguments must be a JSON object, got {type(kwargs).__name__})"
    elif kwargs is None:
        problem += " (keyword arguments must be a JSON object such as {}, got null)"
    pipeline.reject({"args": args, "kwargs": kwargs}, [problem], app.runtime)


@worker_process_shutdown.connect
def _close_runtimes(**_: Any) -> None:
    for app in list(_apps):
        app.close_runtime()


# -- operations (docs/DESIGN.md §7): Celery's logging, the metrics endpoint, recent tallies.
# Only a `celery worker` sends celeryd_init; an embedded worker (tests'
# start_worker) leaves its host process's logging and ports alone.

_worker_app: NotifierCelery | None = None
_metrics_server: endpoint.MetricsServer | None = None


@celeryd_init.connect
def _prepare_worker(instance: Any = None, options: Any = None, **_: Any) -> None:
    global _worker_app
    app = getattr(instance, "app", None)
    if not isinstance(app, NotifierCelery):
        return
    _worker_app = app
    # From the first line on (Celery's start-up warnings included), every
    # line on stderr is ours: JSON in production, redacted.
    configure_logging(app.settings)
    route_stdlib_logging(app.settings, (options or {}).get("loglevel") or logging.INFO)
    logging.captureWarnings(True)
    # With a receiver connected Celery adds no handlers of its own.
    setup_logging.connect(_keep_our_logging, dispatch_uid="notifier.logging")
    if app.settings.notifier_log_format == "json":
        # Celery's banner is 20 lines of plain text on stdout: in a JSON log
        # stream each is a line a shipper cannot parse. Its facts go out as
        # one record instead (``worker.starting``, docs/operations.md).
        instance.quiet = True
        celeryd_after_setup.connect(_log_start, dispatch_uid="notifier.start")
    if app.settings.notifier_metrics_port:
        # Here, before the pool forks, so every child writes where the endpoint reads.
        endpoint.prepare_multiprocess()


def _log_start(sender: Any = None, instance: Any = None, **_: Any) -> None:
    """The banner's facts as one record: who started, how many processes, which queues."""
    queues = instance.app.amqp.queues
    get_logger().info(
        "worker.starting",
        hostname=str(sender),
        celery=celery.__version__,
        concurrency=instance.concurrency,
        queues=sorted(queues.consume_from or queues),
    )


def _keep_our_logging(loglevel: Any = None, **_: Any) -> None:
    if _worker_app is not None and loglevel:
        logging.getLogger().setLevel(loglevel)


@worker_ready.connect
def _serve_metrics(**_: Any) -> None:
    # After the pool's first fork: the children need not inherit the listening socket.
    global _metrics_server
    if _worker_app is not None and _metrics_server is None:
        _metrics_server = endpoint.serve(_worker_app.settings)


@worker_shutdown.connect
def _stop_metrics(sender: Any = None, **_: Any) -> None:
    global _metrics_server
    app = getattr(sender, "app", None)
    if isinstance(app, NotifierCelery) and metrics.recent.pending():
        # A solo or embedded worker's last tallies, while its runtime is still open.
        metrics.recent.flush(app.runtime.redis)
    server, _metrics_server = _metrics_server, None
    if server is not None:
        server.close()


@task_postrun.connect
def _flush_recent_outcomes(sender: Any = None, **_: Any) -> None:
    # Batched: at most about one Redis round trip per process per second.
    app = getattr(sender, "app", None)
    if isinstance(app, NotifierCelery) and metrics.recent.pending():
        metrics.recent.flush_soon(app.runtime.redis)
