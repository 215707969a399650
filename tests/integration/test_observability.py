"""Observability with real parts, as ops see it.

A prefork worker subprocess (``celery -A worker worker -c 2``) with its metrics
endpoint on handles a small scenario once per module: sends, one retried
attempt, one dead delivery, one rejected event. The tests then read what an
operator would: the ``/metrics`` scrape, the worker's log output and
``notifier stats --json``. ``notifier health`` runs as the container
healthcheck runs it, against real Redis and the SMTP sink.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import trustme
from prometheus_client.parser import text_string_to_metric_families

from notifier.app import NotifierCelery, create_app
from notifier.channels.smtp.connection import SmtpProvider
from notifier.client import publish_many
from notifier.deadletter import DeadLetterStore
from notifier.events import parse_event
from notifier.health import check_smtp
from notifier.ledger import Ledger
from notifier.metrics.tallies import recent_outcomes
from notifier.planner import plan
from notifier.settings import Settings
from notifier.testing import SmtpSink, TwilioStandIn, free_port
from tests import samples
from tests.conftest import make_settings
from tests.integration.conftest import TWILIO_NUMBER
from tests.polling import eventually

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NOTIFIER = Path(sys.executable).with_name("notifier")
SENDER = "Bookings <bookings@example.com>"
GONE = "gone@example.com"  # the sink refuses it with 550: a dead delivery
LEAKY = "leak@example.com"  # only inside an invalid event
DELIVERIES = "notifier_deliveries_total"
ADDRESSES = ("ada@example.com", GONE, LEAKY, "+447911123456")


def service_environment(redis_url: str, sink: SmtpSink, **extra: str) -> dict[str, str]:
    """The environment a worker container or an operator's shell would have."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("MAIL_", "TWILIO_", "NOTIFIER_", "PROMETHEUS_"))
    }
    environment.update(
        REDIS_URL=redis_url,
        MAIL_SERVER=sink.host,
        MAIL_PORT=str(sink.port),
        MAIL_USE_TLS="false",
        MAIL_DEFAULT_SENDER=SENDER,
        NOTIFIER_LOG_FORMAT="json",
    )
    environment.update(extra)
    return environment


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def total(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # warm shutdown
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@dataclass
class Observed:
    """What an operator could read after the scenario."""

    metrics: str
    stats: dict[str, Any]
    stdout: str
    stderr: str


def scenario_events() -> list[dict[str, Any]]:
    gone_admin = {"name": "Gone Away", "email": GONE, "phone": None}
    return [
        samples.user_registered(),
        samples.booking_created(admin=gone_admin),  # 2 emails (one dead) + 1 SMS
        samples.password_reset_requested(),
    ]


def wait_until_settled(settings: Settings, events: list[dict[str, Any]], timeout: float) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        ledger, dead = Ledger(client, ttl=60), DeadLetterStore(client)
        deliveries = [d for event in events for d in plan(parse_event(event))]
        expected_sent = [d.delivery_id for d in deliveries if d.address != GONE]

        def settled() -> bool:
            return dead.count() == 2 and all(ledger.is_sent(i) for i in expected_sent)

        eventually(settled, timeout=timeout, what="every delivery sent or dead-lettered")
        # The stats tallies are batched by the second.
        eventually(
            lambda: sum(recent_outcomes(client).get("email", {}).values()) >= 5,
            timeout=5,
            what="the recent-outcome tallies",
        )
    finally:
        client.close()


@pytest.fixture(scope="module")
def observed(_redis_available: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    """Run the scenario once against a prefork worker; keep what it showed."""
    redis.Redis.from_url(_redis_available).flushdb()
    logs = tmp_path_factory.mktemp("worker")
    port = free_port()
    with SmtpSink() as sink, TwilioStandIn() as twilio:
        environment = service_environment(
            _redis_available,
            sink,
            TWILIO_ACCOUNT_SID=twilio.account_sid,
            TWILIO_AUTH_TOKEN=twilio.auth_token,
            TWILIO_PHONE_NUMBER=TWILIO_NUMBER,
            TWILIO_API_BASE_URL=twilio.base_url,
            NOTIFIER_METRICS_PORT=str(port),
            NOTIFIER_RETRY_BACKOFF_BASE="0.05",
            NOTIFIER_RETRY_BACKOFF_MAX="0.2",
            NOTIFIER_RETRY_MAX_ATTEMPTS="3",
            NOTIFIER_SMS_MPS="0",
        )
        settings = Settings.model_validate(
            {name.lower(): value for name, value in environment.items()
             if name.lower() in Settings.model_fields}
        )  # fmt: skip
        sink.fail_next(451, "4.3.0 try later")  # one retried attempt
        sink.reject_recipient(GONE)  # one dead delivery
        with (logs / "stdout").open("wb") as out, (logs / "stderr").open("wb") as err:
            worker = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "worker", "worker",
                 "-Q", "notifier.events,notifier.email,notifier.sms", "-c", "2", "-l", "INFO"],
                cwd=ROOT, env=environment, stdout=out, stderr=err,
            )  # fmt: skip
            try:
                eventually(lambda: _answers(port), timeout=30, what="the metrics endpoint")
                app = create_app(settings)
                events = scenario_events()
                publish_many(events, app=app)
                invalid = {"type": "user.registered", "event_id": "nope", "user": {"email": LEAKY}}
                app.send_task("notifier.handle_event", args=[invalid], queue="notifier.events")
                wait_until_settled(settings, events, timeout=30)
                # 4 sent, 1 retried, 1 dead, 1 rejected (a queued SMS is counted when sent).
                text = eventually(
                    lambda: _scrape_when(port, lambda t: total(t, DELIVERIES) >= 7),
                    timeout=10,
                    what="the scrape to count every outcome",
                )
                stats = subprocess.run(
                    [str(NOTIFIER), "stats", "--json"],
                    env=environment, capture_output=True, text=True, timeout=60, check=True,
                )  # fmt: skip
            finally:
                stop(worker)
    yield Observed(
        metrics=text,
        stats=json.loads(stats.stdout),
        stdout=(logs / "stdout").read_text(encoding="utf-8"),
        stderr=(logs / "stderr").read_text(encoding="utf-8"),
    )
    redis.Redis.from_url(_redis_available).flushdb()


def _answers(port: int) -> bool:
    try:
        scrape(port)
    except OSError:
        return False
    return True


def _scrape_when(port: int, ready: Callable[[str], bool]) -> str | None:
    text = scrape(port)
    return text if ready(text) else None


# --- /metrics --------------------------------------------------------------------------


def test_sends_from_every_pool_process_add_up_in_one_scrape(observed: Observed) -> None:
    sent = "notifier_deliveries_total"

    assert total(observed.metrics, sent, channel="email", outcome="sent") == 3
    assert total(observed.metrics, sent, channel="sms", outcome="sent") == 1


def test_a_retried_attempt_is_counted(observed: Observed) -> None:
    assert total(observed.metrics, "notifier_deliveries_total", outcome="retried") == 1


def test_a_dead_delivery_is_counted_with_its_channel_and_type(observed: Observed) -> None:
    labels = {"channel": "email", "type": "booking.created", "outcome": "dead"}

    assert total(observed.metrics, "notifier_deliveries_total", **labels) == 1


def test_a_rejected_event_is_counted(observed: Observed) -> None:
    labels = {"channel": "none", "outcome": "rejected"}

    assert total(observed.metrics, "notifier_deliveries_total", **labels) == 1


def test_accepted_events_are_counted_by_type(observed: Observed) -> None:
    by_type = {
        kind: total(observed.metrics, "notifier_events_total", type=kind)
        for kind in ("user.registered", "booking.created", "password.reset_requested")
    }

    assert by_type == {"user.registered": 1, "booking.created": 1, "password.reset_requested": 1}


def test_each_accepted_send_is_timed_per_provider(observed: Observed) -> None:
    count = "notifier_send_duration_seconds_count"

    assert total(observed.metrics, count, channel="email", provider="primary") == 3
    assert total(observed.metrics, count, channel="sms", provider="twilio") == 1


def test_the_dead_letter_gauge_reads_the_store(observed: Observed) -> None:
    assert total(observed.metrics, "notifier_dead_letters") == 2


# --- logs ------------------------------------------------------------------------------


def log_lines(observed: Observed) -> list[dict[str, Any]]:
    return [json.loads(line) for line in observed.stderr.splitlines() if line.strip()]


def test_every_line_the_worker_logs_is_a_json_object(observed: Observed) -> None:
    lines = log_lines(observed)  # raises on the first line that is not JSON

    assert len(lines) > 10
    assert all({"event", "level", "timestamp"} <= line.keys() for line in lines)


def test_celerys_own_lines_come_through_the_same_configuration(observed: Observed) -> None:
    loggers = {line.get("logger", "") for line in log_lines(observed)}

    assert "celery.worker.strategy" in loggers  # "Task ... received"


def test_delivery_lines_carry_the_delivery_fields(observed: Observed) -> None:
    deliveries = [line for line in log_lines(observed) if line["event"].startswith("delivery.")]
    required = {"event_id", "delivery_id", "type", "channel", "template", "attempt", "outcome"}

    assert len(deliveries) >= 6
    for line in deliveries:
        assert required <= line.keys(), line
    assert all("provider" in line for line in deliveries if line["outcome"] == "sent")
    assert all("error" in line for line in deliveries if line["outcome"] in ("retried", "dead"))


def test_no_raw_address_appears_in_the_worker_output(observed: Observed) -> None:
    output = observed.stdout + observed.stderr

    for address in ADDRESSES:
        assert address not in output


# --- notifier stats ----------------------------------------------------------------------


def test_stats_counts_the_last_hour_by_outcome(observed: Observed) -> None:
    by_outcome = observed.stats["outcomes_last_hour"]["by_outcome"]

    assert (by_outcome["sent"], by_outcome["retried"]) == (4, 1)
    assert (by_outcome["dead"], by_outcome["rejected"]) == (1, 1)


def test_stats_groups_dead_letters_by_fingerprint(observed: Observed) -> None:
    dead = observed.stats["dead_letters"]

    assert dead["total"] == 2
    assert sorted(group["count"] for group in dead["by_fingerprint"].values()) == [1, 1]
    assert all(GONE not in group["error"] for group in dead["by_fingerprint"].values())


def test_stats_shows_empty_queues_once_the_work_is_done(observed: Observed) -> None:
    ready = {queue: counts["ready"] for queue, counts in observed.stats["queues"].items()}

    assert ready == {
        "notifier.events": 0,
        "notifier.email": 0,
        "notifier.sms": 0,
        "notifier.callbacks": 0,
    }


# --- notifier health -------------------------------------------------------------------


def run_health(environment: dict[str, str]) -> tuple[int, dict[str, Any]]:
    result = subprocess.run(
        [str(NOTIFIER), "health", "--json"],
        env=environment, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return result.returncode, json.loads(result.stdout)


def statuses(document: dict[str, Any]) -> dict[str, str]:
    return {check["name"]: check["status"] for check in document["checks"]}


def test_health_is_green_with_everything_up(redis_url: str, smtp_sink: SmtpSink) -> None:
    code, document = run_health(service_environment(redis_url, smtp_sink))

    assert code == 0
    assert document["healthy"] is True
    assert statuses(document) == {
        "redis": "ok",
        "smtp": "ok",
        "twilio": "warn",  # not configured: SMS are skipped, which is allowed
        "dead_letters": "ok",
    }


def test_health_is_red_when_redis_is_down(redis_url: str, smtp_sink: SmtpSink) -> None:
    environment = service_environment(f"redis://127.0.0.1:{free_port()}/0", smtp_sink)

    code, document = run_health(environment)

    assert code == 1
    assert statuses(document)["redis"] == "fail"


def test_health_is_red_when_smtp_is_unreachable(redis_url: str, smtp_sink: SmtpSink) -> None:
    environment = service_environment(redis_url, smtp_sink, MAIL_PORT=str(free_port()))

    code, document = run_health(environment)

    assert code == 1
    assert statuses(document)["smtp"] == "fail"


def test_health_checks_starttls_against_a_verified_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with SmtpSink(starttls_context=server, require_starttls=True) as sink:
        settings = make_settings(
            mail_server=sink.host, mail_port=sink.port, mail_use_tls=True, mail_ca_file=ca_file
        )

        check = check_smtp(SmtpProvider.primary(settings))

    assert (check.status, check.detail.endswith("(STARTTLS)")) == ("ok", True)


def test_health_checks_implicit_tls_and_refuses_an_unknown_certificate(tmp_path: Path) -> None:
    # The probe opens its connection with the channel's code: same TLS, same verification.
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with SmtpSink(implicit_tls_context=server) as sink:
        settings = make_settings(
            mail_server=sink.host, mail_port=sink.port, mail_use_tls=False, mail_use_ssl=True
        )

        trusted = check_smtp(
            SmtpProvider.primary(settings.model_copy(update={"mail_ca_file": ca_file}))
        )
        untrusted = check_smtp(SmtpProvider.primary(settings))

    assert (trusted.status, trusted.detail.endswith("(implicit TLS)")) == ("ok", True)
    assert untrusted.status == "fail"
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.detail


# --- embedded workers ------------------------------------------------------------------


def test_an_embedded_worker_serves_no_metrics(
    worker_for: Callable[[Settings], NotifierCelery],
    settings_for: Callable[..., Settings],
    smtp_sink: SmtpSink,
) -> None:
    port = free_port()
    app = worker_for(settings_for(notifier_metrics_port=port))

    publish_many([samples.user_registered()], app=app)
    smtp_sink.wait_for(1)

    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
