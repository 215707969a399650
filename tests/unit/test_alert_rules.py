"""deploy/prometheus/alerts.yml: well-formed, covers what ops asked for, and fires when it should.

The YAML checks always run; promtool's own checks and the rule unit tests in
deploy/prometheus/alerts_test.yml run where promtool is installed (Debian's
``prometheus`` package ships it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
METRICS = (
    "notifier_deliveries_total",
    "notifier_events_total",
    "notifier_callbacks_total",
    "notifier_dead_letters",
    "notifier_held_emails",
    "notifier_queue_length",
    "notifier_redis_up",
    "notifier_redis_memory_used_bytes",
    "notifier_redis_memory_max_bytes",
    "notifier_redis_oom",
)


@pytest.fixture(scope="module")
def rules() -> dict[str, dict[str, Any]]:
    document = yaml.safe_load((RULES_DIR / "alerts.yml").read_text(encoding="utf-8"))
    return {rule["alert"]: rule for group in document["groups"] for rule in group["rules"]}


def test_every_rule_has_an_expression_a_severity_and_a_summary(
    rules: dict[str, dict[str, Any]],
) -> None:
    for name, rule in rules.items():
        assert rule["expr"].strip(), name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"], name


def test_the_alerts_ops_asked_for_exist(rules: dict[str, dict[str, Any]]) -> None:
    assert {
        "NotifierDeadLettersGrowing",
        "NotifierFailureRatioHigh",
        "NotifierNoDeliveriesWhileEventsArrive",
        "NotifierDeliveryRateDropped",
        "NotifierQueueBacklog",
        "NotifierRedisMemoryHigh",
        "NotifierRedisFull",
        "NotifierEmailsHeld",
        "NotifierCallbacksDeadLettered",
    } <= set(rules)


def test_rules_use_only_metrics_the_workers_export(rules: dict[str, dict[str, Any]]) -> None:
    used = {
        name
        for rule in rules.values()
        for name in re.findall(r"\b(notifier_[a-z_]+)\b", rule["expr"])
    }
    assert used <= set(METRICS)


def test_redis_read_gauges_are_never_summed_across_workers(
    rules: dict[str, dict[str, Any]],
) -> None:
    # Every worker reports the same Redis-read value: sum() would multiply it.
    for rule in rules.values():
        for gauge in METRICS:
            if gauge.endswith("_total"):
                continue
            assert f"sum({gauge}" not in rule["expr"].replace(" ", "")


PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")


@needs_promtool
def test_promtool_accepts_the_rules_and_the_config() -> None:
    for arguments in (["check", "rules", "alerts.yml"], ["check", "config", "prometheus.yml"]):
        result = subprocess.run(
            [str(PROMTOOL), *arguments],
            cwd=RULES_DIR,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_the_rules_fire_on_the_series_that_should_trigger_them() -> None:
    result = subprocess.run(
        [str(PROMTOOL), "test", "rules", "alerts_test.yml"],
        cwd=RULES_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
