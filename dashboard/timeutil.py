"""Timestamps as integer microseconds since the Unix epoch (UTC).

Samples, cursors and buckets all use this one unit: it sorts and buckets with
integer arithmetic on SQLite and PostgreSQL alike, keeps distinct trades that
share a millisecond, and fits a JavaScript number until the year 2255.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

US = 1_000_000


def now_us() -> int:
    """Return the current time in microseconds.

    This and django.utils.timezone.now are the only wall clocks the code reads
    (the database's now() is never used), so tests move both in-process with
    time-machine: tests/conftest.py's clock fixture.
    """
    return time.time_ns() // 1000


def to_datetime(ts_us: int | None) -> datetime | None:
    """Return an aware UTC datetime for a microsecond timestamp."""
    if ts_us is None:
        return None
    return datetime.fromtimestamp(ts_us / US, tz=UTC)


def from_datetime(dt: datetime) -> int:
    """Return the microsecond timestamp of an aware datetime."""
    return int(dt.timestamp() * US)
