"""docker-compose.yml, Dockerfile and .env.example say what the README promises.

No Docker engine is needed: the compose file is parsed with PyYAML (merge
keys included) and checked service by service.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from notifier.keys import CALLBACKS_QUEUE, EMAIL_QUEUE, EVENTS_QUEUE, SMS_QUEUE
from notifier.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
WORKERS = {
    "worker-events": EVENTS_QUEUE,
    "worker-email": EMAIL_QUEUE,
    "worker-sms": SMS_QUEUE,
    "worker-callbacks": CALLBACKS_QUEUE,
}


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    return dict(document["services"])


def option(command: list[str], *names: str) -> str | None:
    """The value after the first of ``names`` in an argv list."""
    for index, argument in enumerate(command):
        if argument in names and index + 1 < len(command):
            return command[index + 1]
    return None


def test_redis_keeps_an_append_only_file_and_never_evicts(services: dict[str, Any]) -> None:
    command = services["redis"]["command"]

    assert option(command, "--appendonly") == "yes"
    assert option(command, "--maxmemory-policy") == "noeviction"
    assert any(volume.endswith(":/data") for volume in services["redis"]["volumes"])


@pytest.mark.parametrize(("service", "queue"), sorted(WORKERS.items()))
def test_each_worker_service_consumes_only_its_own_queue(
    services: dict[str, Any], service: str, queue: str
) -> None:
    command = services[service]["command"]

    assert command[:4] == ["celery", "-A", "worker", "worker"]
    assert option(command, "-Q", "--queues") == queue


def test_worker_services_share_one_image_and_serve_metrics(services: dict[str, Any]) -> None:
    images = {services[name]["image"] for name in WORKERS}

    assert images == {"notifier:latest"}
    for name in WORKERS:
        assert services[name]["environment"]["NOTIFIER_METRICS_PORT"] == "9808"
        assert services[name]["stop_signal"] == "SIGTERM"


def test_mailpit_is_the_development_smtp_server(services: dict[str, Any]) -> None:
    assert services["mailpit"]["image"].startswith("axllent/mailpit")
    for name in WORKERS:
        assert services[name]["environment"]["MAIL_SERVER"] == "mailpit"


@pytest.mark.parametrize("service", ["flower", "prometheus"])
def test_optional_services_start_only_under_a_profile(
    services: dict[str, Any], service: str
) -> None:
    assert services[service]["profiles"] == [service]


def test_prometheus_mounts_the_config_and_alert_rules(services: dict[str, Any]) -> None:
    mounts = services["prometheus"]["volumes"]
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())

    assert "./deploy/prometheus:/etc/prometheus:ro" in mounts
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    assert set(job["dns_sd_configs"][0]["names"]) == set(WORKERS)


def test_the_image_runs_as_an_unprivileged_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")

    users = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.MULTILINE)
    assert users[-1:] == ["notifier"]


def test_the_image_checks_its_health_with_notifier_health() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    # One logical instruction, possibly continued over lines.
    instructions = re.sub(r"\\\n\s*", " ", dockerfile)

    (healthcheck,) = re.findall(r"^HEALTHCHECK .*$", instructions, flags=re.MULTILINE)
    assert healthcheck.endswith('CMD ["notifier", "health"]')


def test_env_example_documents_every_setting() -> None:
    lines = (ROOT / ".env.example").read_text(encoding="utf-8").splitlines()
    documented = {line.split("=", 1)[0] for line in lines if re.match(r"^[A-Z_]+=", line)}

    assert {name.upper() for name in Settings.model_fields} <= documented
