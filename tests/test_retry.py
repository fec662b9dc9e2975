"""The one retry schedule per language: collectors/retry.py and connection.js's backoffDelay."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from collectors.retry import Backoff, Schedule

ROOT = Path(__file__).resolve().parent.parent
NODE = shutil.which("node")
pytestmark = pytest.mark.sqlite_only  # no database: once is enough


def test_the_waits_double_from_the_start_up_to_the_cap() -> None:
    assert list(Schedule(0.5, max_s=15.0).delays(attempts=7)) == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0]


def test_the_writers_schedule_is_its_three_retries() -> None:
    from dashboard.writer import RETRY_DELAYS_S

    assert RETRY_DELAYS_S == (0.05, 0.25, 1.0)


def test_notification_retries_wait_the_backoff_then_double(settings) -> None:
    from dashboard.alerts import transports

    settings.PULSEBOARD = {**settings.PULSEBOARD, "NOTIFY_BACKOFF_S": 2.0, "NOTIFY_ATTEMPTS": 4}
    assert transports._waits() == (2.0, 4.0, 8.0)  # between four attempts
    assert transports.stale_after_s() == 14.0 + 4 * transports.WEBHOOK_TIMEOUT_S + 60


def test_without_attempts_the_schedule_never_ends_and_never_overflows() -> None:
    waits = Schedule(1.0, max_s=60.0).delays()
    last = [next(waits) for _ in range(5000)][-1]
    assert last == 60.0


def test_jitter_spreads_each_wait_by_the_fraction_either_way() -> None:
    low = list(Schedule(1.0, max_s=8.0, jitter=0.2, uniform=lambda a, b: a).delays(attempts=5))
    high = list(Schedule(1.0, max_s=8.0, jitter=0.2, uniform=lambda a, b: b).delays(attempts=5))
    assert low == pytest.approx([0.8, 1.6, 3.2, 6.4, 6.4])
    assert high == pytest.approx([1.2, 2.4, 4.8, 9.6, 9.6])


def test_a_backoff_grows_on_failures_and_starts_over_after_a_success() -> None:
    backoff = Backoff(Schedule(0.5, max_s=2.0))
    assert [backoff.next() for _ in range(4)] == [0.5, 1.0, 2.0, 2.0]
    backoff.reset()
    assert backoff.next() == 0.5


def test_the_front_end_schedule_is_the_same_shape() -> None:
    if NODE is None:
        pytest.skip("needs Node.js (node) to run the front-end module")
    module = (ROOT / "dashboard" / "static" / "dashboard" / "connection.js").as_uri()
    script = f"""
        globalThis.window = {{ location: {{ protocol: "http:", host: "x" }} }};
        globalThis.location = globalThis.window.location;
        const {{ backoffDelay }} = await import({json.dumps(module)});
        const reconnect = [0, 1, 2, 3, 4, 5, 6].map((a) => backoffDelay(a, {{ startMs: 500, maxMs: 15000 }}));
        const probe = [0, 1, 5, 6, 200].map((a) => backoffDelay(a, {{ startMs: 1000, maxMs: 60000 }}));
        const jittered = [0, 1].map((r) => backoffDelay(2, {{ startMs: 500, jitter: 0.2 }}, () => r));
        console.log(JSON.stringify({{ reconnect, probe, jittered }}));
    """
    result = subprocess.run(
        [NODE, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["reconnect"] == [500, 1000, 2000, 4000, 8000, 15000, 15000]
    assert out["probe"] == [1000, 2000, 32000, 60000, 60000]
    assert out["jittered"] == pytest.approx([1600, 2400])
    # The twins agree: JS attempt a is Python's wait after a + 1 failures, in milliseconds.
    assert out["reconnect"] == [1000 * w for w in Schedule(0.5, max_s=15.0).delays(attempts=7)]
    probe = Schedule(1.0, max_s=60.0)
    assert out["probe"] == [1000 * probe.wait(a + 1) for a in (0, 1, 5, 6, 200)]
    jittered = [Schedule(0.5, jitter=0.2, uniform=lambda lo, hi, r=r: lo + (hi - lo) * r).wait(3) for r in (0, 1)]
    assert out["jittered"] == pytest.approx([1000 * w for w in jittered])
