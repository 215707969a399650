"""The benchmark in its smoke size: it runs end to end and reports every field.

No speed is asserted (CI machines vary); what is asserted is that the
commands it starts work: the Celery no-op worker drains its queue, the
documented ``celery -A worker worker`` command delivers every email that
``publish_many`` queued to the sink, and nothing is dead-lettered.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.run import REQUIRED_FIELDS
from bench.sink import find_smtp_sink
from bench.workload import EMAIL_TEMPLATES

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "sink",
    [
        "python",
        pytest.param(
            "smtp-sink",
            marks=pytest.mark.skipif(
                find_smtp_sink() is None, reason="Postfix's smtp-sink is not installed"
            ),
        ),
    ],
)
def test_the_benchmark_runs_and_reports_every_field(
    redis_url: str, tmp_path: Path, sink: str
) -> None:
    command = [sys.executable, "-m", "bench", "--smoke", "--sink", sink]
    command += ["--redis-url", redis_url, "--workdir", str(tmp_path)]
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = process.communicate(timeout=200)
    except subprocess.TimeoutExpired:
        # SIGTERM, not SIGKILL: the benchmark then stops the workers and sink it started.
        process.terminate()
        stdout, stderr = process.communicate(timeout=60)
        pytest.fail(f"the smoke benchmark took over 200 s:\n{stdout[-3000:]}{stderr[-3000:]}")

    assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
    lines = stdout.strip().splitlines()
    assert "Celery no-op baseline" in stdout
    assert "notifier end to end" in stdout
    result = json.loads(lines[-1])
    for field in REQUIRED_FIELDS:
        assert field in result, field
    for field in ("emails_per_s", "noop_tasks_per_s", "ratio", "p50_ms", "p99_ms", "publish_per_s"):
        value = result[field]
        assert isinstance(value, float), (field, value)
        assert math.isfinite(value), (field, value)
        assert value > 0, (field, value)
    assert set(result["render_us"]) == set(EMAIL_TEMPLATES)
    assert all(value > 0 for value in result["render_us"].values())
    assert 1 <= result["smtp_connections"] <= result["settings"]["concurrency"]
    assert result["dead_letters"] == 0
    assert result["settings"]["sink_throughput"] == sink
    assert result["settings"]["task_acks_late"] is True
    assert result["emails"] > result["events"]  # the booking.created mix sends two each


@pytest.mark.timeout(240)
def test_the_benchmark_runs_the_bulk_path(redis_url: str, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "bench", "--smoke", "--batch", "50", "--sink", "python"]
    command += ["--redis-url", redis_url, "--workdir", str(tmp_path)]
    completed = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=200, check=False
    )

    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["e2e_path"] == "publish_batch(size=50)"
    assert result["dead_letters"] == 0
    assert result["emails_per_s"] > 0
