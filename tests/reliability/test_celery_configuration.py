"""The reliability settings (docs/DESIGN.md §6) as the Celery app gets them; no processes needed.

The fault tests next to this file show what these settings achieve; these
pin the settings themselves and the relations between them, so a change that
would quietly weaken a guarantee fails here first.
"""

from __future__ import annotations

from typing import Any

import pytest

from notifier.app import create_app
from notifier.errors import ConfigurationError
from notifier.testing import make_settings
from tests.reliability.conftest import FAST, retry_waits

pytestmark = pytest.mark.reliability

DEFAULTS = make_settings()
# As the fault tests' workers get them: FAST, against the plain (no TLS) sink.
FAST_SETTINGS = make_settings(
    mail_use_tls=False, **{name.lower(): value for name, value in FAST.items()}
)


def conf(**settings: Any) -> Any:
    """The configuration of an app made for these settings (defaults otherwise)."""
    return create_app(make_settings(**settings)).conf


def test_a_message_is_acked_only_after_its_work_and_requeued_when_its_process_dies() -> None:
    config = conf()
    assert config.task_acks_late is True
    assert config.task_reject_on_worker_lost is True
    # Failures are acked because on_failure dead-letters them first.
    assert config.task_acks_on_failure_or_timeout is True


def test_the_visibility_timeout_is_the_setting_for_broker_and_result_backend_alike() -> None:
    config = conf(notifier_visibility_timeout=2400)
    assert config.broker_transport_options["visibility_timeout"] == 2400
    assert config.result_backend_transport_options["visibility_timeout"] == 2400


@pytest.mark.parametrize("settings", [DEFAULTS, FAST_SETTINGS], ids=["defaults", "fast-tests"])
def test_a_busy_deliverys_countdown_and_its_run_end_inside_the_visibility_timeout(
    settings: Any,
) -> None:
    soft, hard = settings.task_time_limits
    visibility = settings.notifier_visibility_timeout
    assert settings.notifier_retry_backoff_max + hard < visibility  # a retry's countdown, a run
    # A delivery another worker holds waits out the lease, then runs.
    assert settings.notifier_claim_lease + 1 + hard < visibility
    assert soft < hard < settings.notifier_claim_lease  # a claim never expires under a send


def test_settings_refuse_a_visibility_timeout_a_busy_deliverys_countdown_would_outlast() -> None:
    # The default lease of 140 s, then the hard time limit of 135 s.
    with pytest.raises(ConfigurationError, match=r"NOTIFIER_CLAIM_LEASE \+ 1"):
        make_settings(notifier_visibility_timeout=276, notifier_retry_backoff_max=60)
    assert make_settings(notifier_visibility_timeout=277, notifier_retry_backoff_max=60)


def test_time_limits_are_130_and_135_seconds_by_default_and_apply_to_every_task() -> None:
    config = conf()
    assert DEFAULTS.task_time_limits == (130, 135)
    assert (config.task_soft_time_limit, config.task_time_limit) == (130, 135)


@pytest.mark.parametrize(
    ("visibility", "lease", "interval"),
    [(1800, 300, 60), (7200, 300, 60), (600, 280, 20), (280, 140, 9), (14, 6, 1), (5, 2, 1)],
)
def test_a_dead_workers_messages_are_swept_back_within_a_thirtieth_of_the_timeout(
    visibility: int, lease: int, interval: int
) -> None:
    config = conf(
        notifier_visibility_timeout=visibility,
        notifier_retry_backoff_max=1,
        notifier_claim_lease=lease,
        mail_timeout=0.1,  # one send fits the time limits of the shortest lease here
    )
    options = config.broker_transport_options
    assert options["unacked_restore_interval"] == interval
    assert options["unacked_restore_throttle"] == 1  # the interval alone sets the period
    assert options["unacked_mutex_expire"] <= visibility


def test_publishing_retries_for_about_five_seconds_then_raises() -> None:
    config = conf()
    assert config.task_publish_retry is True
    assert retry_waits(config.task_publish_retry_policy) == [0, 0.5, 1, 1.5, 2]
    # kombu's own connection loop would add seconds to every attempt.
    assert config.broker_transport_options["max_retries"] == 0


def test_workers_never_give_up_on_redis_and_never_hang_on_it() -> None:
    config = conf()
    assert config.broker_connection_retry_on_startup is True
    assert config.broker_connection_retry is True
    assert config.broker_connection_max_retries is None
    assert config.worker_cancel_long_running_tasks_on_connection_loss is False
    options = config.broker_transport_options
    assert options["socket_timeout"] > 0
    assert options["socket_connect_timeout"] > 0


def test_one_message_per_process_and_no_results() -> None:
    config = conf()
    assert config.worker_prefetch_multiplier == 1
    assert config.task_ignore_result is True
    assert config.result_backend is None
