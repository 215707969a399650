"""Screenshots of the console for docs/console.md: ``make screenshots``.

``python -m notifier.web.console.screenshots --out docs/console`` seeds a demo
dead-letter store in memory (fakeredis: nothing real is read or written), serves
the console with uvicorn on a free loopback port, signs in with Debian's
headless Chromium (``notifier.testing.browser``) and saves one PNG per page.
Needs the dev extra (selenium, fakeredis) and the ``chromium`` and
``chromium-driver`` packages.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from notifier.console_bulk import BulkJobs
from notifier.deadletter import AttemptRecord, DeadLetter, DeadLetterStore, Filter
from notifier.demo import demo_events
from notifier.errors import NotifierError
from notifier.events import parse_event
from notifier.planner import Delivery, plan
from notifier.status_store import EventStatus
from notifier.web.console.ports import ConsolePorts, MinuteOutcomes

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver

__all__ = ["main"]

DEMO_KEY = "demo-console-key"
NOW = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)


class _Clock:
    def __init__(self) -> None:
        self.now = NOW - timedelta(hours=3)

    def __call__(self) -> datetime:
        return self.now


def _stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _seed(store: DeadLetterStore, clock: _Clock) -> list[DeadLetter]:
    """Dead letters as an outage and a few bad producers leave them."""
    added: list[DeadLetter] = []
    for number in range(36):
        clock.now += timedelta(minutes=4)
        deliveries: list[Delivery] = []
        for event in demo_events(clock.now):
            deliveries += plan(parse_event(event))
        delivery = deliveries[number % len(deliveries)]
        if delivery.channel == "sms":
            error = "PermanentError: Twilio 21610: the recipient unsubscribed (STOP)"
        elif number % 3:
            error = (
                f"ProviderUnavailableError: smtp.example.net:587: connection refused "
                f"(attempt {number % 5 + 1})"
            )
        else:
            error = f"PermanentError: 550 5.1.1 <{delivery.address}>: mailbox unavailable"
        history = [
            AttemptRecord(
                attempt=attempt,
                at=_stamp(clock.now - timedelta(seconds=40 * (4 - attempt))),
                error=error,
                provider="primary" if attempt % 2 else "fallback",
            )
            for attempt in range(1, 5)
        ]
        added.append(store.add_delivery(delivery, status="failed", error=error, history=history))
    for number in range(6):
        clock.now += timedelta(minutes=3)
        added.append(
            store.reject(
                {"type": "booking.rescheduled", "event_id": f"evt-{number}", "booking_id": "b-7"},
                ["type: unknown event type 'booking.rescheduled'"],
            )
        )
    clock.now += timedelta(minutes=2)
    added.append(
        store.reject(
            {"type": "<script>alert('xss')</script>", "event_id": "\x1b[31mred\x1b[0m"},
            ["type: unknown event type '<img src=x onerror=alert(1)>'"],
        )
    )
    return added


def _outcomes(now: datetime) -> MinuteOutcomes:
    current = int(now.timestamp() // 60)
    series = []
    for index in range(60):
        wave = 1 + math.sin(index / 6)
        counts = {"sent": int(40 + 25 * wave), "retried": int(6 * wave) if 20 < index < 35 else 1}
        if 24 < index < 32:
            counts["dead"] = 3
        if index % 9 == 0:
            counts["duplicate"] = 1
        series.append((current - 59 + index, counts))
    return series


def _trace(entry: DeadLetter) -> EventStatus:
    delivery = entry.delivery
    assert delivery is not None
    return EventStatus.model_validate(
        {
            "event_id": delivery.event_id,
            "type": delivery.event_type,
            "state": "accepted",
            "reasons": [],
            "dead_letter_id": None,
            "deliveries": [
                {
                    "delivery_id": delivery.delivery_id,
                    "channel": delivery.channel,
                    "template": delivery.template,
                    "recipient": "a***@example.com",
                    "state": "failed",
                    "attempts": 4,
                    "provider": "smtp",
                    "provider_id": None,
                    "dead_letter_id": entry.id,
                    "updated_at": entry.failed_at,
                    "timeline": [
                        {"state": "queued", "at": entry.first_failed_at, "detail": ""},
                        {"state": "retrying", "at": entry.history[1].at, "detail": "attempt 2"},
                        {"state": "retrying", "at": entry.history[2].at, "detail": "attempt 3"},
                        {"state": "failed", "at": entry.failed_at, "detail": entry.error[:80]},
                    ],
                }
            ],
        }
    )


def _demo_ports() -> tuple[ConsolePorts, list[DeadLetter], str]:
    import fakeredis

    client = fakeredis.FakeRedis()
    clock = _Clock()
    store = DeadLetterStore(client, clock=clock)
    entries = _seed(store, clock)
    traced = next(e for e in entries if e.delivery is not None and e.channel == "email")
    traces = {traced.event_id: _trace(traced)}
    jobs = BulkJobs(client, clock=lambda: NOW)
    job = jobs.create("replay", Filter(status="failed", channel="email"), 1_234_567)
    jobs.save(job.model_copy(update={"state": "running", "done": 493_800, "failed": 12}))

    def replay(batch: Sequence[DeadLetter]) -> list[str | NotifierError]:
        return ["re-enqueued on email" for _ in batch]

    ports = ConsolePorts(
        api_key=SecretStr(DEMO_KEY),
        public_url=None,
        dead_letters=store,
        replay=replay,
        status=lambda event_id: traces.get(event_id),
        start_bulk=jobs.create,
        bulk_job=jobs.get,
        queue_lengths=lambda: {"notifier.events": 12, "notifier.email": 348, "notifier.sms": 7},
        outcomes=_outcomes,
        clock=lambda: NOW,
    )
    return ports, entries, job.id


def _save(driver: WebDriver, path: Path) -> None:
    # The whole page's height, so a long list is shown whole (bounded: files stay small).
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(max(int(height) + 20, 720), 1800))
    driver.save_screenshot(str(path))
    print(f"{path} ({path.stat().st_size // 1024} KB)")


def take(out: Path) -> None:
    """Serve the demo console and save the pages' screenshots into ``out``."""
    from fastapi import FastAPI
    from selenium.webdriver.common.by import By

    from notifier.testing.browser import headless_chromium
    from notifier.web.console import console_router
    from notifier.web.server import ServerThread

    ports, entries, job_id = _demo_ports()
    traced = next(e for e in entries if e.delivery is not None and e.channel == "email")
    app = FastAPI()
    app.include_router(console_router(ports))
    out.mkdir(parents=True, exist_ok=True)
    with ServerThread(app) as server:
        base = f"{server.url}/console"
        driver = headless_chromium(1280, 900)
        try:
            pages: list[tuple[str, str, Any]] = [("login", f"{base}/login", None)]
            driver.get(pages[0][1])
            _save(driver, out / "login.png")
            driver.find_element(By.ID, "api_key").send_keys(DEMO_KEY)
            driver.find_element(By.CSS_SELECTOR, "form.login button").click()
            for name, url in (
                ("overview", f"{base}/"),
                ("dead-letters", f"{base}/dead-letters?limit=12"),
                ("entry", f"{base}/entries/{traced.id}"),
                ("trace", f"{base}/trace?event_id={traced.event_id}"),
                ("bulk", f"{base}/bulk/{job_id}"),
            ):
                driver.set_window_size(1280, 900)
                driver.get(url)
                _save(driver, out / f"{name}.png")
        finally:
            driver.quit()


def main(argv: list[str] | None = None) -> int:
    """``python -m notifier.web.console.screenshots --out DIR``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("docs/console"))
    arguments = parser.parse_args(argv)
    from notifier.testing.browser import browser_missing

    missing = browser_missing()
    if missing is not None:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    take(arguments.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
