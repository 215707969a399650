"""The Celery entry point.

    celery -A worker worker -Q notifier.events,notifier.email,notifier.sms,notifier.callbacks

Settings come from the environment (``notifier.settings``), read once here.
"""

from __future__ import annotations

from notifier.app import create_app
from notifier.settings import get_settings

app = create_app(get_settings())
