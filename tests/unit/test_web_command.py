"""``notifier web`` refuses a non-loopback address without ``NOTIFIER_API_KEY`` (exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import SecretStr

from notifier.errors import ConfigurationError
from notifier.web.server import check_bind
from tests.conftest import make_settings


def run_web(**environment: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFIER_", "REDIS_"))}
    env.update(environment)
    return subprocess.run(
        [sys.executable, "-m", "notifier", "web"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_it_refuses_0_0_0_0_without_an_api_key_with_exit_2() -> None:
    finished = run_web(NOTIFIER_WEB_HOST="0.0.0.0")
    assert finished.returncode == 2
    assert "NOTIFIER_WEB_HOST 0.0.0.0 is not a loopback address" in finished.stderr
    assert "NOTIFIER_API_KEY" in finished.stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "notifier.internal"])
def test_non_loopback_hosts_need_the_key(host: str) -> None:
    with pytest.raises(ConfigurationError, match="not a loopback address"):
        check_bind(make_settings(notifier_web_host=host))


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost"])
def test_loopback_hosts_need_no_key(host: str) -> None:
    check_bind(make_settings(notifier_web_host=host))


def test_any_host_is_allowed_with_a_key() -> None:
    check_bind(make_settings(notifier_web_host="0.0.0.0", notifier_api_key=SecretStr("k")))


def test_the_key_never_shows_in_the_settings_repr() -> None:
    settings = make_settings(notifier_api_key=SecretStr("very-secret-key"))
    assert "very-secret-key" not in repr(settings)
