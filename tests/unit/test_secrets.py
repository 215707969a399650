"""Secrets and addresses stay out of reprs, logs and dead letters (issue 6).

The SMTP and Twilio failures are real: a login against an ``SmtpSink`` that
knows another password, a request to a ``TwilioStandIn`` that knows another
token. Redis is fakeredis (every client a Runtime makes), and the logs are
what ``configure_logging`` really writes, captured from stderr: redaction is
a processor of that chain, so ``structlog.testing.capture_logs`` (which
replaces the chain) would not see it.
"""

from __future__ import annotations

import importlib.util
import re
from base64 import b64encode
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import fakeredis
import pytest
import structlog

from notifier.deadletter import DeadLetter
from notifier.events import parse_event
from notifier.logs import configure_logging
from notifier.pipeline import Job, handle_event, run_job
from notifier.planner import Delivery, plan
from notifier.runtime import Runtime
from notifier.settings import Settings
from notifier.testing import SmtpSink, TwilioStandIn
from tests import samples
from tests.conftest import make_settings

SMTP_USER = "notifier"
SMTP_PASSWORD = "smtp-Pa55word-7f3c"
WRONG_SMTP_PASSWORD = "wrong-smtp-Pa55word-91ad"
FALLBACK_SMTP_PASSWORD = "fallback-Pa55word-0b2e"
TWILIO_TOKEN = "twilio-auth-token-5e8a"
WRONG_TWILIO_TOKEN = "wrong-twilio-auth-token-c41d"
REDIS_PASSWORD = "redis-Pa55word-d17f"
TWILIO_NUMBER = "+14155550100"
# The SmtpSink runs aiosmtpd in this process; what it logs is the server's business.
DOUBLES_LOGGERS = ("mail.log", "notifier.testing")


def secret_forms(user: str, secret: str) -> list[str]:
    """The secret as it may leak: raw, and base64 as AUTH PLAIN/LOGIN and basic auth send it."""
    return [
        secret,
        b64encode(secret.encode()).decode(),
        b64encode(f"\0{user}\0{secret}".encode()).decode(),
        b64encode(f"{user}:{secret}".encode()).decode(),
    ]


# --- settings -----------------------------------------------------------------------


def settings_with_secrets() -> Settings:
    return make_settings(
        mail_username=SMTP_USER,
        mail_password=SMTP_PASSWORD,
        mail_fallback_server="smtp2.example.com",
        mail_fallback_password=FALLBACK_SMTP_PASSWORD,
        mail_timeout=4,  # login plus a fallback fit the default time limits
        twilio_account_sid="AC" + "0" * 32,
        twilio_auth_token=TWILIO_TOKEN,
        twilio_phone_number=TWILIO_NUMBER,
    )


SECRETS = [SMTP_PASSWORD, FALLBACK_SMTP_PASSWORD, TWILIO_TOKEN]


@pytest.mark.parametrize("show", [repr, str], ids=["repr", "str"])
def test_settings_never_show_credentials(show: Callable[[object], str]) -> None:
    text = show(settings_with_secrets())

    for secret in SECRETS:
        assert secret not in text


def test_settings_dumped_as_json_never_show_credentials() -> None:
    text = settings_with_secrets().model_dump_json()

    for secret in SECRETS:
        assert secret not in text


def test_settings_still_hand_the_credentials_to_the_code_that_needs_them() -> None:
    settings = settings_with_secrets()

    assert settings.mail_password is not None
    assert settings.mail_password.get_secret_value() == SMTP_PASSWORD
    assert settings.twilio_auth_token is not None
    assert settings.twilio_auth_token.get_secret_value() == TWILIO_TOKEN


def test_settings_never_show_the_password_in_the_redis_url() -> None:
    settings = make_settings(redis_url=f"redis://:{REDIS_PASSWORD}@redis.internal:6379/0")

    assert REDIS_PASSWORD not in repr(settings)
    assert REDIS_PASSWORD not in str(settings)


# --- a Runtime on fakeredis whose logs we read ------------------------------------


@dataclass
class RecordingScheduler:
    scheduled: list[tuple[Job, float]] = field(default_factory=list)

    def schedule(self, job: Job, countdown: float) -> None:
        self.scheduled.append((job, countdown))

    def publish_event(self, event: dict[str, Any]) -> None:
        raise AssertionError("nothing here republishes events")

    def schedule_many(self, jobs: Sequence[Any], events: Sequence[Any] = ()) -> None:
        for job in jobs:
            self.schedule(job, 0)
        for event in events:
            self.publish_event(event)


@dataclass
class World:
    rt: Runtime
    redis: fakeredis.FakeRedis
    capture: pytest.CaptureFixture[str]
    caplog: pytest.LogCaptureFixture

    def logs(self) -> str:
        """What notifier wrote: structlog's lines, and stdlib logging's records
        (smtplib, twilio, urllib3) except the test doubles' own server logs."""
        captured = self.capture.readouterr()
        records = [
            f"{record.name} {record.getMessage()} {record.exc_text or ''}"
            for record in self.caplog.records
            if not record.name.startswith(DOUBLES_LOGGERS)
        ]
        return "\n".join([captured.out, captured.err, *records])

    def stored(self) -> str:
        """Every string value in Redis, for "is it anywhere?" questions."""
        values = []
        for key in self.redis.scan_iter():
            value = self.redis.get(key) if self.redis.type(key) == b"string" else None
            if isinstance(value, bytes):
                values.append(value.decode("utf-8", "replace"))
        return "\n".join(values)

    def only_dead_letter(self) -> DeadLetter:
        [entry] = list(self.rt.dead_letters)
        assert isinstance(entry, DeadLetter)
        return entry


MakeWorld = Callable[..., World]


@pytest.fixture
def make_world(
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> Iterator[MakeWorld]:
    if importlib.util.find_spec("lupa") is None:
        pytest.fail("fakeredis needs lupa for the ledger's Lua scripts: install the dev extra")
    fake = fakeredis.FakeRedis()
    caplog.set_level("DEBUG")
    made: list[Runtime] = []

    def build(**overrides: Any) -> World:
        values: dict[str, Any] = {
            "notifier_retry_max_attempts": 1,  # every failure is dead-lettered at once
            "notifier_log_format": "json",
            "notifier_log_level": "DEBUG",
            "mail_use_tls": False,
            **overrides,
        }
        settings = make_settings(**values)
        # As a worker's start-up does; binds structlog to the sys.stderr capsys installed.
        configure_logging(settings)
        rt = Runtime.from_settings(settings, RecordingScheduler(), client=fake)
        made.append(rt)
        return World(rt=rt, redis=fake, capture=capsys, caplog=caplog)

    yield build
    for rt in made:
        rt.close()
    # configure_logging bound structlog to this test's captured stderr, now closed.
    structlog.reset_defaults()


def email_delivery(event: dict[str, Any] | None = None) -> Delivery:
    return next(d for d in plan(parse_event(event or samples.user_registered())))


def sms_delivery() -> Delivery:
    return next(d for d in plan(parse_event(samples.booking_created())) if d.channel == "sms")


@pytest.fixture
def smtp_with_login() -> Iterator[SmtpSink]:
    with SmtpSink(credentials=(SMTP_USER, SMTP_PASSWORD)) as sink:
        yield sink


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    with SmtpSink() as sink:
        yield sink


@pytest.fixture
def twilio() -> Iterator[TwilioStandIn]:
    with TwilioStandIn(auth_token=TWILIO_TOKEN) as stand_in:
        yield stand_in


def smtp_settings(sink: SmtpSink, **more: Any) -> dict[str, Any]:
    # A local sink: a short MAIL_TIMEOUT lets a login fit the default time limits.
    return {"mail_server": sink.host, "mail_port": sink.port, "mail_timeout": 4, **more}


def twilio_settings(stand_in: TwilioStandIn, token: str) -> dict[str, Any]:
    return {
        "twilio_account_sid": stand_in.account_sid,
        "twilio_auth_token": token,
        "twilio_phone_number": TWILIO_NUMBER,
        "twilio_api_base_url": stand_in.base_url,
    }


# --- failed logins ------------------------------------------------------------------


@pytest.fixture
def failed_smtp_login(make_world: MakeWorld, smtp_with_login: SmtpSink) -> World:
    world = make_world(
        **smtp_settings(
            smtp_with_login,
            mail_username=SMTP_USER,
            mail_password=WRONG_SMTP_PASSWORD,
            mail_allow_plain_auth=True,  # a local relay: the sink speaks no TLS
        )
    )
    outcome = run_job(Job(delivery=email_delivery()), world.rt)
    assert outcome.outcome == "dead"
    assert smtp_with_login.messages == []
    return world


def test_a_failed_smtp_login_is_dead_lettered_as_an_authentication_failure(
    failed_smtp_login: World,
) -> None:
    entry = failed_smtp_login.only_dead_letter()

    assert entry.status == "failed"
    assert "535" in entry.error  # the sink really refused the login


def test_a_failed_smtp_login_never_logs_the_password(failed_smtp_login: World) -> None:
    logs = failed_smtp_login.logs()

    assert "delivery.dead" in logs  # the logs were captured
    for form in secret_forms(SMTP_USER, WRONG_SMTP_PASSWORD):
        assert form not in logs


def test_a_failed_smtp_login_never_stores_the_password(failed_smtp_login: World) -> None:
    entry = failed_smtp_login.only_dead_letter().model_dump_json()
    stored = failed_smtp_login.stored()

    for form in secret_forms(SMTP_USER, WRONG_SMTP_PASSWORD):
        assert form not in entry
        assert form not in stored


@pytest.fixture
def failed_twilio_login(make_world: MakeWorld, twilio: TwilioStandIn) -> World:
    world = make_world(**twilio_settings(twilio, WRONG_TWILIO_TOKEN))
    outcome = run_job(Job(delivery=sms_delivery()), world.rt)
    assert outcome.outcome == "dead"
    assert twilio.messages == []
    return world


def test_a_failed_twilio_login_is_dead_lettered_as_an_authentication_failure(
    failed_twilio_login: World,
) -> None:
    entry = failed_twilio_login.only_dead_letter()

    assert entry.status == "failed"
    assert "401" in entry.error


def test_a_failed_twilio_login_never_logs_the_auth_token(failed_twilio_login: World) -> None:
    logs = failed_twilio_login.logs()

    assert "delivery.dead" in logs
    for form in secret_forms("AC" + "0" * 32, WRONG_TWILIO_TOKEN):
        assert form not in logs


def test_a_failed_twilio_login_never_stores_the_auth_token(failed_twilio_login: World) -> None:
    entry = failed_twilio_login.only_dead_letter().model_dump_json()
    stored = failed_twilio_login.stored()

    for form in secret_forms("AC" + "0" * 32, WRONG_TWILIO_TOKEN):
        assert form not in entry
        assert form not in stored


# --- addresses: redacted in logs, whole for the operator who asks ----------------


def test_a_sent_email_is_logged_with_a_redacted_address(
    make_world: MakeWorld, smtp_sink: SmtpSink
) -> None:
    world = make_world(**smtp_settings(smtp_sink))

    outcome = run_job(Job(delivery=email_delivery()), world.rt)

    assert outcome.outcome == "sent"
    logs = world.logs()
    assert "delivery.sent" in logs
    assert "a***@example.com" in logs
    assert "ada@example.com" not in logs


@pytest.fixture
def refused_email(make_world: MakeWorld, smtp_sink: SmtpSink) -> World:
    # The server echoes the address in its reply, as real servers do.
    smtp_sink.reject_recipient("ada@example.com", 550, "5.1.1 <ada@example.com>: no such user")
    world = make_world(**smtp_settings(smtp_sink))
    outcome = run_job(Job(delivery=email_delivery()), world.rt)
    assert outcome.outcome == "dead"
    return world


def test_a_refused_email_is_logged_with_a_redacted_address(refused_email: World) -> None:
    logs = refused_email.logs()

    assert "delivery.dead" in logs
    assert "a***@example.com" in logs
    assert "ada@example.com" not in logs


def test_a_refused_email_dead_letter_keeps_the_whole_address_for_show(
    refused_email: World,
) -> None:
    listed = refused_email.only_dead_letter()

    entry = refused_email.rt.dead_letters.get(listed.id)

    assert entry is not None
    assert entry.recipient == "ada@example.com"
    assert entry.delivery is not None
    assert entry.delivery.address == "ada@example.com"
    assert "ada@example.com" in entry.error


def test_a_refused_sms_is_logged_with_a_redacted_number(
    make_world: MakeWorld, twilio: TwilioStandIn
) -> None:
    world = make_world(**twilio_settings(twilio, TWILIO_TOKEN))
    twilio.fail_next(400, 21211, "The 'To' number +447911123456 is not a valid phone number.")

    outcome = run_job(Job(delivery=sms_delivery()), world.rt)

    assert outcome.outcome == "dead"
    logs = world.logs()
    assert "delivery.dead" in logs
    assert "+44*******456" in logs
    assert "+447911123456" not in logs
    entry = world.rt.dead_letters.get(world.only_dead_letter().id)
    assert entry is not None
    assert entry.recipient == "+447911123456"


def test_a_rejected_event_is_logged_without_its_addresses(make_world: MakeWorld) -> None:
    world = make_world()
    event = samples.user_registered(user={**samples.FAN, "phone": "07911 123456"})

    handle_event(event, world.rt)

    logs = world.logs()
    assert "event.rejected" in logs
    assert "ada@example.com" not in logs
    entry = world.only_dead_letter()
    assert entry.status == "rejected"
    assert entry.raw_event is not None
    assert "ada@example.com" in entry.raw_event  # the operator's `dlq show` sees it all


def test_the_e164_hint_of_a_rejected_phone_is_logged_with_its_example_whole(
    make_world: MakeWorld,
) -> None:
    world = make_world()
    event = samples.user_registered(user={**samples.FAN, "phone": "+44 7911 123456"})

    handle_event(event, world.rt)

    [error] = world.only_dead_letter().errors
    [example] = re.findall(r"such as (\+[0-9]+)", error)
    [line] = [line for line in world.logs().splitlines() if "event.rejected" in line]
    assert f"such as {example}" in line
    assert "*" not in line.split("user.phone", 1)[1].split('"', 1)[0]
