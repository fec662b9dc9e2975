"""Process-wide counters and histograms, exported at /metrics in Prometheus format.

Counters are how Pulseboard keeps its promise that nothing is lost silently:
every rejected, duplicate, dropped or coalesced item increments one of these.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

INGEST_ACCEPTED = Counter("pulseboard_ingest_accepted", "Samples stored by the ingest action")
INGEST_DUPLICATES = Counter("pulseboard_ingest_duplicates", "Samples ignored because (metric, ts) was already stored")
INGEST_REJECTED = Counter("pulseboard_ingest_rejected", "Samples refused by validation", ["code"])
WRITE_BATCH_SECONDS = Histogram(
    "pulseboard_write_batch_seconds",
    "Time to commit one group-commit batch",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
WRITE_BATCH_SIZE = Histogram(
    "pulseboard_write_batch_samples", "Samples per group-commit batch", buckets=(1, 10, 100, 1000, 5000, 20000)
)
WRITE_RETRIES = Counter("pulseboard_write_retries", "Batches retried after a database error")
WRITE_FAILURES = Counter("pulseboard_write_failures", "Batches given up after retries (callers got 503)")
PUBLISH_FAILURES = Counter("pulseboard_publish_failures", "Channel-layer publishes that failed after commit")
CONNECTIONS = Gauge("pulseboard_connections", "Open live connections (WebSocket and SSE)")
SUBSCRIPTIONS = Gauge("pulseboard_subscriptions", "Metric subscriptions over all live connections")
FRAMES_SENT = Counter("pulseboard_frames_sent", "Data frames sent to live connections")
SAMPLES_SENT = Counter("pulseboard_samples_sent", "Samples delivered to live connections")
SAMPLES_DROPPED = Counter(
    "pulseboard_samples_dropped", "Samples dropped from a slow connection's buffer (then back-filled)"
)
GAPS_DETECTED = Counter("pulseboard_gaps_detected", "Sequence gaps seen on the channel layer (then back-filled)")
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
