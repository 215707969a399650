"""The Celery app and its two tasks, thin wrappers over ``notifier.pipeline``.

``create_app(settings)`` builds an app for any settings (tests make one per
test); ``worker.py`` builds the production one from the environment.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

from celery import Celery, Task
from celery.signals import worker_process_shutdown

import celeryconfig
from notifier import keys, pipeline
from notifier.runtime import Runtime
from notifier.settings import Settings

__all__ = ["CeleryScheduler", "NotifierCelery", "create_app"]

HANDLE_EVENT = "notifier.handle_event"
DELIVER = "notifier.deliver"

_apps: weakref.WeakSet[NotifierCelery] = weakref.WeakSet()


class CeleryScheduler:
    """Schedules ``notifier.deliver`` jobs on the channel's queue."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def schedule(self, job: pipeline.Job, countdown: float) -> None:
        """Publish the job; ``countdown`` seconds later a worker runs it."""
        queue = keys.EMAIL_QUEUE if job.delivery.channel == "email" else keys.SMS_QUEUE
        self.app.send_task(
            DELIVER,
            args=[job.model_dump(mode="json")],
            queue=queue,
            countdown=countdown if countdown > 0 else None,
        )

    def publish_event(self, event: dict[str, Any]) -> None:
        """Publish an event to ``notifier.handle_event`` as a producer would."""
        self.app.send_task(HANDLE_EVENT, args=[event], queue=keys.EVENTS_QUEUE)


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
        """A crash, a bug or a hard time limit: Celery acks the message, so we keep it."""
        pipeline.task_failed(self.name, args, kwargs, exc, self.app.runtime)


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
                    self._runtime = Runtime(self.settings, CeleryScheduler(self))
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

    # shared=False: otherwise Celery copies these closures into every app made
    # later in the process (tests make one per test), bound to the wrong settings.
    @app.task(name=HANDLE_EVENT, shared=False, bind=True, base=NotifierTask)
    def handle_event(self: NotifierTask, *args: Any, **kwargs: Any) -> None:
        """Validate, plan and start the deliveries of one event (the public entry point)."""
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
        pipeline.handle_event(args[0], app.runtime)

    @app.task(name=DELIVER, shared=False, bind=True, base=NotifierTask)
    def deliver(self: NotifierTask, job: object) -> None:
        """Run one attempt of one delivery (retries, replays, SMS)."""
        if self.poisoned((job,)):
            return
        pipeline.deliver(job, app.runtime)

    _apps.add(app)
    return app


@worker_process_shutdown.connect
def _close_runtimes(**_: Any) -> None:
    for app in list(_apps):
        app.close_runtime()
