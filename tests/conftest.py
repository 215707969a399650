"""Shared fixtures: real Redis (skip locally, fail on CI), settings, sample events."""

from __future__ import annotations

import os
from collections.abc import Iterator

import hypothesis
import pytest
import redis

from notifier.testing import make_settings

__all__ = ["make_settings"]

TEST_REDIS_URL = os.environ.get("NOTIFIER_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# On CI, property tests replay the same examples every run: a new random
# counterexample is found (and fixed) on a developer's machine, not by
# failing somebody else's unrelated change.
hypothesis.settings.register_profile("ci", derandomize=True, print_blob=True)
if ON_CI:
    hypothesis.settings.load_profile("ci")


@pytest.fixture(scope="session")
def _redis_available() -> str:
    client = redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=1, socket_timeout=2)
    try:
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        message = f"Redis at {TEST_REDIS_URL} is unreachable: {exc}"
        if ON_CI:
            pytest.fail(message + " (CI=true: tests that need Redis must run)")
        pytest.skip(message)
    finally:
        client.close()
    return TEST_REDIS_URL


@pytest.fixture
def redis_url(_redis_available: str) -> Iterator[str]:
    """A dedicated, flushed Redis database for one test."""
    client = redis.Redis.from_url(_redis_available)
    client.flushdb()
    try:
        yield _redis_available
    finally:
        client.flushdb()
        client.close()
