"""Timestamps as integer microseconds since the Unix epoch (UTC).

Samples, cursors and buckets all use this one unit: it sorts and buckets with
integer arithmetic on SQLite and PostgreSQL alike, keeps distinct trades that
share a millisecond, and fits a JavaScript number until the year 2255.
"""

from __future__ import annotations

from datetime import UTC, datetime

# Defined with the Reading type, so that the agent needs no Django (collectors/reading.py).
from collectors.reading import US, now_us

__all__ = ["US", "from_datetime", "now_us", "to_datetime"]


def to_datetime(ts_us: int | None) -> datetime | None:
    """Return an aware UTC datetime for a microsecond timestamp."""
    if ts_us is None:
        return None
    return datetime.fromtimestamp(ts_us / US, tz=UTC)


def from_datetime(dt: datetime) -> int:
    """Return the microsecond timestamp of an aware datetime."""
    return int(dt.timestamp() * US)
