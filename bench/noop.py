"""The Celery baseline: notifier's exact Celery configuration, and a task that does nothing.

    celery -A bench.noop worker -Q notifier.events,notifier.email,notifier.sms -c 4

The task is registered under notifier's own name, ``notifier.handle_event``,
so the baseline consumes the very messages ``publish_many`` makes for the
end-to-end run (same size, same serializer, same queue, same broker,
``acks_late``, ``reject_on_worker_lost``, prefetch, time limits): the
difference between the two runs is notifier's own work, nothing else.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

import celeryconfig
from notifier import keys
from notifier.settings import get_settings

__all__ = ["app"]

app = Celery("bench-noop", set_as_current=False)
app.conf.update(celeryconfig.build(get_settings()))


@app.task(name=keys.HANDLE_EVENT_TASK, shared=False)
def handle_event(*args: Any, **kwargs: Any) -> None:
    """Do nothing: what Celery alone costs per task."""
