"""Settings (docs/DESIGN.md §4): names, defaults, cross-checks and secrecy."""

from __future__ import annotations

import itertools
import traceback
from typing import Any

import pytest

from notifier.errors import ConfigurationError
from notifier.settings import Settings

PASSWORD = "hunter2-mail-password"
TOKEN = "tw-auth-token-0123456789abcdef"
TWILIO = {
    "twilio_account_sid": "AC0123456789abcdef0123456789abcdef",
    "twilio_auth_token": TOKEN,
    "twilio_phone_number": "+14155550123",
}


@pytest.fixture(autouse=True)
def _empty_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting from the developer's shell leaks in: pydantic-settings reads the
    environment even through ``model_validate``."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
        monkeypatch.delenv(name, raising=False)


def settings(**values: Any) -> Settings:
    return Settings.model_validate(values)


# --- defaults -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "default"),
    [
        # The seed's names keep their meaning and defaults.
        ("mail_server", "localhost"),
        ("mail_port", 587),
        ("mail_use_tls", True),
        ("mail_use_ssl", False),
        ("mail_username", None),
        ("mail_password", None),
        ("mail_default_sender", None),
        ("twilio_account_sid", None),
        ("twilio_auth_token", None),
        ("twilio_phone_number", None),
        # Ours.
        ("redis_url", "redis://localhost:6379/0"),
        ("mail_timeout", 10),
        ("mail_ca_file", None),
        ("mail_allow_plain_auth", False),
        ("twilio_api_base_url", "https://api.twilio.com"),
        ("twilio_timeout", 10),
        ("notifier_retry_max_attempts", 8),
        ("notifier_retry_backoff_base", 5),
        ("notifier_retry_backoff_max", 120),
        ("notifier_visibility_timeout", 280),
        ("notifier_claim_lease", 140),
        ("notifier_ledger_ttl", 604_800),
        ("notifier_status_ttl", 604_800),
        ("notifier_public_url", None),
        ("notifier_template_dir", None),
        ("notifier_log_level", "INFO"),
        ("notifier_log_format", "json"),
        ("notifier_allow_special_domains", False),
    ],
)
def test_defaults_match_the_design(field: str, default: object) -> None:
    assert getattr(settings(), field) == default


def test_defaults_are_valid_without_any_environment() -> None:
    assert Settings().mail_server == "localhost"


# --- the environment ----------------------------------------------------------------------


def test_mail_port_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAIL_PORT", "2525")

    assert Settings().mail_port == 2525


@pytest.mark.parametrize("value", ["false", "False", "0", "no"])
def test_mail_use_tls_can_be_switched_off_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("MAIL_USE_TLS", value)

    assert Settings().mail_use_tls is False


def test_implicit_tls_is_configured_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAIL_USE_TLS", "false")
    monkeypatch.setenv("MAIL_USE_SSL", "true")
    monkeypatch.setenv("MAIL_PORT", "465")

    loaded = Settings()

    assert (loaded.mail_use_tls, loaded.mail_use_ssl, loaded.mail_port) == (False, True, 465)


def test_secrets_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAIL_PASSWORD", PASSWORD)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", TOKEN)

    loaded = Settings()

    assert loaded.mail_password is not None
    assert loaded.mail_password.get_secret_value() == PASSWORD
    assert loaded.twilio_auth_token is not None
    assert loaded.twilio_auth_token.get_secret_value() == TOKEN


def test_retry_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFIER_RETRY_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("NOTIFIER_RETRY_BACKOFF_BASE", "0.5")
    monkeypatch.setenv("NOTIFIER_RETRY_BACKOFF_MAX", "60")
    monkeypatch.setenv("NOTIFIER_VISIBILITY_TIMEOUT", "120")
    monkeypatch.setenv("NOTIFIER_CLAIM_LEASE", "50")
    monkeypatch.setenv("MAIL_TIMEOUT", "3")

    loaded = Settings()

    assert loaded.notifier_retry_max_attempts == 3
    assert loaded.notifier_retry_backoff_base == 0.5
    assert loaded.notifier_retry_backoff_max == 60
    assert loaded.notifier_visibility_timeout == 120


def test_a_malformed_value_in_the_environment_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAIL_PORT", "smtp")

    with pytest.raises(ConfigurationError, match="MAIL_PORT"):
        Settings()


# --- cross-checks -------------------------------------------------------------------------


def test_starttls_and_implicit_tls_together_are_rejected() -> None:
    with pytest.raises(ConfigurationError) as info:
        settings(mail_use_tls=True, mail_use_ssl=True)

    assert "MAIL_USE_TLS" in str(info.value)
    assert "MAIL_USE_SSL" in str(info.value)


def test_implicit_tls_alone_is_accepted() -> None:
    assert settings(mail_use_tls=False, mail_use_ssl=True).mail_use_ssl is True


@pytest.mark.parametrize(
    ("visibility", "backoff_max"),
    [
        pytest.param(600, 600, id="equal"),
        pytest.param(300, 600, id="shorter"),
        # A retry's countdown, then the run after it (the hard limit, 135 s).
        pytest.param(255, 120, id="shorter-than-the-countdown-and-its-run"),
    ],
)
def test_a_visibility_timeout_not_above_the_backoff_max_is_rejected_naming_both(
    visibility: int, backoff_max: int
) -> None:
    with pytest.raises(ConfigurationError) as info:
        settings(notifier_visibility_timeout=visibility, notifier_retry_backoff_max=backoff_max)

    assert "NOTIFIER_VISIBILITY_TIMEOUT" in str(info.value)
    assert "NOTIFIER_RETRY_BACKOFF_MAX" in str(info.value)


def test_a_visibility_timeout_above_the_backoff_max_and_a_run_is_accepted() -> None:
    loaded = settings(notifier_visibility_timeout=736, notifier_retry_backoff_max=600)

    assert loaded.notifier_visibility_timeout == 736


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://127.0.0.1:8765/2010-04-01", id="path"),
        pytest.param("http://127.0.0.1:8765/?x=1", id="query"),
        pytest.param("http://127.0.0.1:8765/#top", id="fragment"),
        pytest.param("ftp://127.0.0.1:8765", id="not-http"),
        pytest.param("127.0.0.1:8765", id="no-scheme"),
    ],
)
def test_a_twilio_api_base_url_that_is_not_an_origin_is_rejected(url: str) -> None:
    with pytest.raises(ConfigurationError, match="TWILIO_API_BASE_URL"):
        settings(twilio_api_base_url=url)


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://api.twilio.com", id="twilio"),
        pytest.param("http://10.0.0.5:8765", id="private-address"),
        pytest.param("http://127.0.0.1.evil.example:8765", id="loopback-lookalike-name"),
        pytest.param("http://localhost.evil.example", id="localhost-lookalike-name"),
        pytest.param("http://[::2]:8765", id="ipv6-not-loopback"),
        pytest.param("http://128.0.0.1:8765", id="just-outside-127/8"),
    ],
)
def test_a_plain_http_twilio_api_base_url_off_loopback_is_refused(url: str) -> None:
    # The Twilio client sends the auth token with every request (basic auth).
    with pytest.raises(ConfigurationError, match=r"TWILIO_API_BASE_URL: .*https"):
        settings(twilio_api_base_url=url)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8765",
        "http://127.45.6.7:8765",
        "http://[::1]:8765",
        "http://localhost:8765",
        "http://LocalHost:8765",
        "https://api.twilio.com",
        "https://twilio-proxy.internal.example:8443",
    ],
)
def test_a_twilio_api_base_url_over_https_or_to_loopback_is_accepted(url: str) -> None:
    assert settings(twilio_api_base_url=url).twilio_api_base_url == url


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://127.0.0.1:8765/", "http://127.0.0.1:8765"),
        ("http://127.0.0.1:8765", "http://127.0.0.1:8765"),
        ("https://api.twilio.com/", "https://api.twilio.com"),
    ],
)
def test_a_twilio_api_base_url_is_normalized_to_its_origin(url: str, origin: str) -> None:
    assert settings(twilio_api_base_url=url).twilio_api_base_url == origin


SUBSETS = [
    subset for size in range(len(TWILIO) + 1) for subset in itertools.combinations(TWILIO, size)
]


@pytest.mark.parametrize(
    "present", SUBSETS, ids=["+".join(s).replace("twilio_", "") or "none" for s in SUBSETS]
)
def test_sms_is_enabled_only_when_all_three_twilio_settings_are_set(
    present: tuple[str, ...],
) -> None:
    loaded = settings(**{name: TWILIO[name] for name in present})

    assert loaded.sms_enabled is (len(present) == len(TWILIO))


def test_sms_is_disabled_by_empty_twilio_settings() -> None:
    assert settings(**dict.fromkeys(TWILIO, "")).sms_enabled is False


# --- secrecy ------------------------------------------------------------------------------


def test_repr_does_not_reveal_secrets() -> None:
    loaded = settings(mail_password=PASSWORD, **TWILIO)

    assert PASSWORD not in repr(loaded)
    assert TOKEN not in repr(loaded)


def test_str_does_not_reveal_secrets() -> None:
    loaded = settings(mail_password=PASSWORD, **TWILIO)

    assert PASSWORD not in str(loaded)
    assert TOKEN not in str(loaded)


def test_json_dump_does_not_reveal_secrets() -> None:
    dumped = settings(mail_password=PASSWORD, **TWILIO).model_dump_json()

    assert PASSWORD not in dumped
    assert TOKEN not in dumped


REDIS_PASSWORD = "redis-Pa55word-d17f"
FALLBACK_PASSWORD = "fallback-Pa55word-0b2e"
ALL_SECRETS = {
    "MAIL_PASSWORD": PASSWORD,
    "MAIL_FALLBACK_PASSWORD": FALLBACK_PASSWORD,
    "TWILIO_AUTH_TOKEN": TOKEN,
    "REDIS_URL": f"redis://:{REDIS_PASSWORD}@redis.internal:6379/0",
}
SECRET_VALUES = [PASSWORD, FALLBACK_PASSWORD, TOKEN, REDIS_PASSWORD]


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        pytest.param(
            {"MAIL_USE_TLS": "true", "MAIL_USE_SSL": "true"},
            ["MAIL_USE_TLS", "MAIL_USE_SSL"],
            id="starttls-and-implicit-tls",
        ),
        pytest.param({"MAIL_PORT": "smtp-port-7"}, ["MAIL_PORT"], id="port-not-a-number"),
        pytest.param({"MAIL_TIMEOUT": "-3"}, ["MAIL_TIMEOUT"], id="negative-timeout"),
        pytest.param(
            {"NOTIFIER_VISIBILITY_TIMEOUT": "500", "NOTIFIER_RETRY_BACKOFF_MAX": "600"},
            ["NOTIFIER_VISIBILITY_TIMEOUT", "NOTIFIER_RETRY_BACKOFF_MAX"],
            id="visibility-timeout",
        ),
        pytest.param(
            {"NOTIFIER_RATE_LIMITS": "password_reset=five-per-hour"},
            ["NOTIFIER_RATE_LIMITS"],
            id="rate-limits",
        ),
        pytest.param(
            {"TWILIO_API_BASE_URL": "http://twilio-proxy.example/path"},
            ["TWILIO_API_BASE_URL"],
            id="twilio-url",
        ),
        pytest.param(
            {"NOTIFIER_LOG_FORMAT": "xml-format", "MAIL_PORT": "0"},
            ["NOTIFIER_LOG_FORMAT", "MAIL_PORT"],
            id="two-problems",
        ),
    ],
)
def test_a_settings_error_names_the_settings_and_shows_no_value(
    monkeypatch: pytest.MonkeyPatch, bad: dict[str, str], named: list[str]
) -> None:
    for name, value in {**ALL_SECRETS, **bad}.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(ConfigurationError) as info:
        Settings()

    shown = "".join(traceback.format_exception(info.value))
    for name in named:
        assert name in str(info.value)
    for value in [*SECRET_VALUES, *bad.values()]:
        if value not in ("true", "0"):  # too short to tell a leak from a word
            assert value not in shown


def test_a_settings_error_does_not_chain_pydantics_error_holding_the_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", TOKEN)
    monkeypatch.setenv("MAIL_PORT", "smtp")

    with pytest.raises(ConfigurationError) as info:
        Settings()

    # A logger or traceback printer would show a chained cause or context.
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


def test_secrets_remain_usable() -> None:
    loaded = settings(mail_password=PASSWORD, **TWILIO)

    assert loaded.mail_password is not None
    assert loaded.mail_password.get_secret_value() == PASSWORD


# --- status (docs/status.md) --------------------------------------------------------------


def test_a_status_ttl_below_one_second_is_rejected_by_name() -> None:
    with pytest.raises(ConfigurationError, match="NOTIFIER_STATUS_TTL"):
        settings(notifier_status_ttl=0)


def test_the_public_url_is_kept_without_its_trailing_slash() -> None:
    assert (
        settings(notifier_public_url="https://notifier.example.com/hooks/").notifier_public_url
        == "https://notifier.example.com/hooks"
    )


@pytest.mark.parametrize(
    "url", ["hooks.internal", "ftp://hooks.internal", "https://hooks.internal/?a=1"]
)
def test_a_public_url_that_is_not_an_http_url_is_rejected_by_name(url: str) -> None:
    with pytest.raises(ConfigurationError, match="NOTIFIER_PUBLIC_URL") as caught:
        settings(notifier_public_url=url)
    assert url not in str(caught.value)


def test_a_status_ttl_longer_than_the_ledgers_is_refused_naming_both() -> None:
    # An email's sent state is read from its ledger marker (docs/status.md).
    with pytest.raises(ConfigurationError, match=r"NOTIFIER_STATUS_TTL.*NOTIFIER_LEDGER_TTL"):
        settings(notifier_status_ttl=700_000, notifier_ledger_ttl=604_800)
