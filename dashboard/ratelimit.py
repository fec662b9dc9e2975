"""Per-token rate limits for the ingest endpoints: a token bucket in process memory.

The unit is requests, not samples: a request already carries at most
MAX_SAMPLES_PER_REQUEST samples, so requests/s bounds both the request churn
(auth, parsing, one commit each) and the sample volume, and an agent draining
a backlog in big batches is never starved by its own batch size.
Each server process keeps its own buckets; behind N processes a token gets up
to N times the configured rate, which is the price of not needing Redis here.
PULSEBOARD_RATE_LIMIT_PER_S=0 turns limiting off.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.conf import settings

from dashboard.exceptions import RateLimited

MAX_TRACKED_TOKENS = 10_000  # buckets kept in memory; idle full buckets are forgotten first


@dataclass(slots=True)
class TokenBucket:
    """Tokens refill at `rate` per second up to `burst`; each request takes one."""

    rate: float
    burst: float
    tokens: float
    updated: float

    def take(self, now: float, cost: float = 1.0) -> float:
        """Take `cost` tokens and return 0, or return the seconds to wait and take nothing."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate


_buckets: dict[int, TokenBucket] = {}


def reset() -> None:
    """Forget every bucket (between tests, or after a settings change)."""
    _buckets.clear()


def check_rate(token_id: int, now: float | None = None) -> None:
    """Count one request of an agent token; raise RateLimited with the wait when it is over its limit."""
    conf = settings.PULSEBOARD
    rate = float(conf["RATE_LIMIT_PER_S"])
    if rate <= 0:
        return
    burst = float(max(conf["RATE_LIMIT_BURST"], 1))
    now = time.monotonic() if now is None else now
    bucket = _buckets.get(token_id)
    if bucket is None or bucket.rate != rate or bucket.burst != burst:
        if len(_buckets) >= MAX_TRACKED_TOKENS:
            _forget_idle(now)
        bucket = _buckets[token_id] = TokenBucket(rate, burst, burst, now)
    wait = bucket.take(now)
    if wait > 0:
        raise RateLimited(
            f"this token is limited to {rate:g} requests/s (bursts of {burst:g}); retry in {wait:.2f} s "
            "or send bigger batches",
            retry_after_s=wait,
        )


def _forget_idle(now: float) -> None:
    for token_id, bucket in list(_buckets.items()):
        if bucket.tokens + (now - bucket.updated) * bucket.rate >= bucket.burst:
            del _buckets[token_id]
    if len(_buckets) >= MAX_TRACKED_TOKENS:
        _buckets.clear()
