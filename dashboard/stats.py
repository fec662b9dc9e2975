"""Process-wide counters and histograms, exported at /metrics in Prometheus format.

Counters are how Pulseboard keeps its promise that nothing is lost silently:
every rejected, duplicate, dropped or coalesced item increments one of these.

With several workers, set PROMETHEUS_MULTIPROC_DIR (the same directory for
every worker of one deployment, emptied before the first one starts; see
docs/deployment.md) and every worker answers /metrics with the sum over all
of them: prometheus_client keeps each process's values in files there
(multiprocess mode). Counters and histograms of a stopped worker stay in the
sum (totals never go back); gauges count live workers only (`livesum`): the
files of a process that is gone are removed at the next scrape, and a new
process removes what a dead one with its pid left behind before it writes.
"""

from __future__ import annotations

import glob
import os
import re
import tempfile

from django.core.exceptions import ImproperlyConfigured
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db$")

if MULTIPROC_DIR and not os.path.isdir(MULTIPROC_DIR):
    raise ImproperlyConfigured(
        f"PROMETHEUS_MULTIPROC_DIR={MULTIPROC_DIR!r} is not a directory: create it (empty) before the workers start."
    )
if MULTIPROC_DIR:
    try:  # prometheus_client opens its files as the metrics below are declared: say why, not FileNotFoundError
        tempfile.TemporaryFile(dir=MULTIPROC_DIR).close()
    except OSError as exc:
        raise ImproperlyConfigured(
            f"PROMETHEUS_MULTIPROC_DIR={MULTIPROC_DIR!r} is not writable by this process ({exc.strerror}): "
            "every worker writes its counters there."
        ) from None
    # A pid is reused after a worker dies: start this process's gauges from zero, not from its predecessor's.
    multiprocess.mark_process_dead(os.getpid(), MULTIPROC_DIR)

INGEST_ACCEPTED = Counter("pulseboard_ingest_accepted", "Samples stored by the ingest action")
INGEST_DUPLICATES = Counter("pulseboard_ingest_duplicates", "Samples ignored because (metric, ts) was already stored")
INGEST_REJECTED = Counter("pulseboard_ingest_rejected", "Samples refused by validation", ["code"])
WRITE_BATCH_SECONDS = Histogram(
    "pulseboard_write_batch_seconds",
    "Time to commit one group-commit batch",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
# From a caller's write() to the start of the commit that takes its readings: the price of group commit.
WRITE_WAIT_SECONDS = Histogram(
    "pulseboard_write_wait_seconds",
    "Time readings wait for the writer before the group commit that stores them starts",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
WRITE_BATCH_SIZE = Histogram(
    "pulseboard_write_batch_samples", "Samples per group-commit batch", buckets=(1, 10, 100, 1000, 5000, 20000)
)
WRITE_RETRIES = Counter("pulseboard_write_retries", "Batches retried after a database error")
WRITE_FAILURES = Counter("pulseboard_write_failures", "Batches given up after retries (callers got 503)")
PUBLISH_FAILURES = Counter("pulseboard_publish_failures", "Channel-layer publishes that failed after commit")
# Summed over the live workers in multiprocess mode (ignored otherwise).
CONNECTIONS = Gauge("pulseboard_connections", "Open live connections (WebSocket and SSE)", multiprocess_mode="livesum")
SUBSCRIPTIONS = Gauge(
    "pulseboard_subscriptions", "Metric subscriptions over all live connections", multiprocess_mode="livesum"
)
FRAMES_SENT = Counter("pulseboard_frames_sent", "Data frames sent to live connections")
SAMPLES_SENT = Counter("pulseboard_samples_sent", "Samples delivered to live connections")
SAMPLES_DROPPED = Counter(
    "pulseboard_samples_dropped", "Samples dropped from a slow connection's buffer (then back-filled)"
)
GAPS_DETECTED = Counter("pulseboard_gaps_detected", "Sequence gaps seen on the channel layer (then back-filled)")
SAMPLES_RECONCILED = Counter(
    "pulseboard_samples_reconciled",
    "Stored samples a hub found it had not delivered live (lost in the layer or by a dead publisher) and back-filled",
)
DEGRADED = Counter("pulseboard_degraded", "Times a hub told its connections live delivery is degraded", ["reason"])
LATENCY_SECONDS = Histogram(
    "pulseboard_delivery_latency_seconds",
    "Sample timestamp to frame sent",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
FRAMES_ENCODED = Counter(
    "pulseboard_frames_encoded", "Live data frames assembled; FRAMES_SENT minus this is frames shared between sockets"
)
WINDOW_FULL = Counter("pulseboard_window_full", "Times a connection's ack window filled, so its data waited coalesced")
SLOW_CLOSES = Counter("pulseboard_slow_closes", "Connections closed with 4008 because they could not keep up")
SSE_RESPONSES_ENDED = Counter(
    "pulseboard_sse_budget_ends", "Server-Sent Events responses ended at their byte budget (clients resume)"
)


def _forget_dead_processes() -> None:
    """Remove the live-gauge files of workers that are gone (killed, crashed, restarted under a new pid)."""
    pids = set()
    for path in glob.glob(os.path.join(MULTIPROC_DIR, "gauge_live*_*.db")):
        match = _LIVE_GAUGE_FILE.search(os.path.basename(path))
        if match:
            pids.add(int(match.group(1)))
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, MULTIPROC_DIR)
        except PermissionError:
            pass  # alive, another user's


def exposition() -> bytes:
    """Return this process's metrics, or every worker's summed in multiprocess mode, as Prometheus text."""
    if not MULTIPROC_DIR:
        return generate_latest(REGISTRY)
    _forget_dead_processes()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, MULTIPROC_DIR)
    return generate_latest(registry)
