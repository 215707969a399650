"""``notifier health``: each check, the verdict, the output (no real services needed)."""

from __future__ import annotations

import json
from typing import Any

import fakeredis
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

import notifier.health
import notifier.settings
from notifier import keys
from notifier.channels.smtp.connection import SmtpProvider
from notifier.cli import app as cli
from notifier.health import (
    Check,
    Report,
    check_dead_letters,
    check_redis,
    check_smtp,
    check_twilio,
    describe_redis_url,
    run_checks,
)
from notifier.redis_clients import quick_redis
from notifier.testing import SmtpSink, free_port
from tests.conftest import make_settings
from tests.unit.full_redis import MIB, ReportingMemory

TWILIO = {
    "twilio_account_sid": "AC" + "0" * 32,
    "twilio_auth_token": "twilio-secret-token",
    "twilio_phone_number": "+14155550100",
}


def closed_smtp(**overrides: Any) -> SmtpProvider:
    values: dict[str, Any] = {
        "name": "primary",
        "host": "127.0.0.1",
        "port": free_port(),
        "use_tls": False,
        "use_ssl": False,
        "username": None,
        "password": None,
        "timeout": 2.0,
        "ca_file": None,
        "allow_plain_auth": False,
    }
    values.update(overrides)
    return SmtpProvider(**values)


# --- twilio --------------------------------------------------------------------------


def test_twilio_is_ok_when_all_three_settings_are_set() -> None:
    assert check_twilio(make_settings(**TWILIO)).status == "ok"


def test_twilio_off_is_a_warning_not_a_failure() -> None:
    check = check_twilio(make_settings())

    assert check.status == "warn"
    assert "skipped" in check.detail


def test_a_partial_twilio_configuration_fails_and_names_what_is_missing() -> None:
    check = check_twilio(make_settings(**{**TWILIO, "twilio_phone_number": None}))

    assert check.status == "fail"
    assert "TWILIO_PHONE_NUMBER" in check.detail
    assert "twilio-secret-token" not in check.detail


# --- dead letters ---------------------------------------------------------------------


def test_dead_letters_under_the_threshold_are_ok() -> None:
    client = fakeredis.FakeRedis()
    client.zadd(keys.DLQ_INDEX, {"a": 1, "b": 2})

    check = check_dead_letters(client, threshold=3)

    assert (check.status, check.detail) == ("ok", "2 entries (threshold 3)")


def test_dead_letters_at_the_threshold_fail() -> None:
    client = fakeredis.FakeRedis()
    client.zadd(keys.DLQ_INDEX, {"a": 1, "b": 2, "c": 3})

    assert check_dead_letters(client, threshold=3).status == "fail"


# --- redis and smtp ---------------------------------------------------------------------


def test_redis_answering_ping_is_ok() -> None:
    assert check_redis(fakeredis.FakeRedis(), "fake:6379/0").status == "ok"


def test_a_full_redis_fails_with_full_in_the_detail() -> None:
    check = check_redis(ReportingMemory(used=21 * MIB, maximum=20 * MIB), "fake:6379/0")

    assert check.status == "fail"
    assert check.detail.startswith("fake:6379/0: full: 21.0 MiB used of maxmemory 20.0 MiB")


def test_a_redis_with_room_is_ok_and_shows_its_memory() -> None:
    check = check_redis(ReportingMemory(used=10 * MIB, maximum=20 * MIB), "fake:6379/0")

    assert check.status == "ok"
    assert "10.0 MiB used of maxmemory 20.0 MiB" in check.detail
    assert "full" not in check.detail


def test_redis_on_a_closed_port_fails() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"

    check = check_redis(quick_redis(url, timeout=1), describe_redis_url(url))

    assert check.status == "fail"
    assert "ConnectionError" in check.detail


def test_a_redis_url_is_described_without_its_credentials() -> None:
    described = describe_redis_url("redis://user:hunter2@cache.internal:6380/3")

    assert described == "cache.internal:6380/3"


def test_smtp_on_a_closed_port_fails() -> None:
    check = check_smtp(closed_smtp())

    assert check.status == "fail"
    assert check.name == "smtp"


def test_smtp_answering_ehlo_is_ok_and_nothing_is_sent() -> None:
    with SmtpSink() as sink:
        provider = closed_smtp(host=sink.host, port=sink.port)

        check = check_smtp(provider)

        assert check.status == "ok", check.detail
        assert sink.messages == []


def test_with_a_fallback_one_smtp_server_down_is_only_a_warning() -> None:
    with SmtpSink() as sink:
        settings = make_settings(
            redis_url=f"redis://127.0.0.1:{free_port()}/0",
            mail_server="127.0.0.1",
            mail_port=free_port(),
            mail_use_tls=False,
            mail_fallback_server=sink.host,
            mail_fallback_port=sink.port,
            mail_fallback_use_tls=False,
            mail_timeout=5,  # both servers' sends fit the default time limits
        )

        report = run_checks(settings)

    statuses = {check.name: check.status for check in report.checks}
    assert (statuses["smtp"], statuses["smtp-fallback"]) == ("warn", "ok")


# --- the verdict and the command ---------------------------------------------------------


def test_warnings_keep_a_report_healthy_and_a_failure_does_not() -> None:
    assert Report([Check("a", "ok", ""), Check("b", "warn", "")]).healthy
    assert not Report([Check("a", "ok", ""), Check("b", "fail", "")]).healthy


def test_redis_down_fails_the_dead_letter_check_without_a_second_timeout() -> None:
    settings = make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", mail_port=free_port())

    report = run_checks(settings)

    dead_letters = next(check for check in report.checks if check.name == "dead_letters")
    assert (dead_letters.status, dead_letters.seconds) == ("fail", 0.0)


def test_health_json_exits_1_when_a_check_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notifier.settings, "get_settings", make_settings)
    failing = Report([Check("redis", "ok", "PONG"), Check("smtp", "fail", "refused")])
    monkeypatch.setattr(notifier.health, "run_checks", lambda _settings: failing)

    result = CliRunner().invoke(cli, ["health", "--json"])

    assert result.exit_code == 1
    document = json.loads(result.output)
    assert document["healthy"] is False
    assert [check["status"] for check in document["checks"]] == ["ok", "fail"]


def test_health_table_exits_0_when_only_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notifier.settings, "get_settings", make_settings)
    report = Report([Check("redis", "ok", "PONG"), Check("twilio", "warn", "SMS off")])
    monkeypatch.setattr(notifier.health, "run_checks", lambda _settings: report)

    result = CliRunner().invoke(cli, ["health"])

    assert result.exit_code == 0
    assert "WARN" in result.output
    assert result.output.rstrip().endswith("healthy")


def test_health_never_prints_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(
        redis_url=f"redis://admin:redis-secret@127.0.0.1:{free_port()}/0",
        mail_port=free_port(),
        mail_use_tls=False,
        mail_username="mailer",
        mail_password=SecretStr("smtp-secret"),
        mail_timeout=5,  # a login's waits fit the default time limits
        **TWILIO,
    )
    monkeypatch.setattr(notifier.settings, "get_settings", lambda: settings)

    for arguments in (["health"], ["health", "--json"]):
        result = CliRunner().invoke(cli, arguments)

        assert result.exit_code == 1
        for secret in ("redis-secret", "smtp-secret", "twilio-secret-token"):
            assert secret not in result.output
