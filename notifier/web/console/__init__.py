"""The operators' console at ``/console/`` (issue 16, items 5 and 6; docs/console.md).

Server-rendered pages (Jinja2, autoescaped, no script) over the dead-letter
store, the status store and the outcome tallies: an overview, the dead letters
(filters, paging, groups, replay or purge of a selection or of a whole filter),
one entry, and a trace search. ``console_router(ports)`` is a FastAPI router
that ``notifier.web.app`` mounts; ``ConsolePorts`` holds its parts.

Modules: ``pages`` (the routes), ``session`` (cookie and CSRF), ``forms``
(forms and filters), ``chart`` (the SVG), ``groups`` (fingerprint groups),
``rendering`` (templates, inert filters, security headers), ``ports``,
``screenshots`` (``python -m notifier.web.console.screenshots``).
"""

from __future__ import annotations

from notifier.web.console.pages import console_router
from notifier.web.console.ports import ConsolePorts

__all__ = ["ConsolePorts", "console_router"]
