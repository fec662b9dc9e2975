"""What a reading is, for the agent and the server alike: the Reading type and its µs timestamps.

Collectors build Readings; so do the server's decoders (dashboard/validation.py,
dashboard/lineprotocol.py), which import them from here. Keeping the one type
and its time helpers in this module, which needs only msgspec, is what lets a
watched host run the agent (`pip install ./collectors`) without Django.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

import msgspec

from collectors.exceptions import InvalidReading

__all__ = ["PRECISION_US", "US", "Reading", "now_us", "parse_ts", "scale_ts"]

US = 1_000_000
# Each precision's ratio to µs as (multiply, divide): timestamps are scaled with
# integer arithmetic and floor division, never through a float (a float has 53
# bits; a nanosecond timestamp needs 61, and 18 % of them came out 1 µs off).
# The line protocol parser uses the same ratios and the same rule.
PRECISION_US: dict[str, tuple[int, int]] = {"s": (US, 1), "ms": (1000, 1), "us": (1, 1), "ns": (1, 1000)}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_US = timedelta(microseconds=1)


def now_us() -> int:
    """Return the current time in microseconds.

    This and django.utils.timezone.now are the only wall clocks the code reads
    (the database's now() is never used), so tests move both in-process with
    time-machine: tests/conftest.py's clock fixture.
    """
    return time.time_ns() // 1000


class Reading(msgspec.Struct, gc=False):
    """One measurement on its way to storage.

    A msgspec Struct rather than a dataclass: built in C (3x faster), and
    not tracked by the cyclic garbage collector, which otherwise scans the
    5,000 readings of a big request again at every young collection. It
    holds only strings, numbers and a dict of strings, so it can never be
    part of a reference cycle. An empty labels dict is copied per reading.
    """

    source: str
    metric: str
    ts: int  # µs since epoch
    value: float
    unit: str = ""
    kind: str = ""
    source_kind: str = ""
    labels: dict[str, str] = {}

    @property
    def key(self) -> str:
        return f"{self.source}.{self.metric}"


def scale_ts(value: int | float, precision: str) -> int:
    """Return an epoch timestamp in `precision` as µs, rounded down (floor, toward the past) when not whole.

    Exact for integers of any size and for floats (taken at their exact
    binary value): 1764133200123456789 ns is 1764133200123456 µs, and so is
    1764133200123456.9 µs; -1500 ns is -2 µs.
    """
    multiply, divide = PRECISION_US[precision]
    if type(value) is int:
        return value * multiply // divide
    return math.floor(Fraction(value) * multiply / divide)


def parse_ts(value: Any, precision: str = "ms") -> int:
    """Return a timestamp in µs from an epoch number in the given precision or an ISO 8601 string."""
    if isinstance(value, bool):
        raise InvalidReading("ts must be a number or an ISO 8601 string, got a boolean", field="ts")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise InvalidReading("ts must be finite", field="ts")
        return scale_ts(value, precision)
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidReading(f"ts {value[:40]!r} is not an ISO 8601 time", field="ts") from None
        if dt.tzinfo is None:
            raise InvalidReading("ts needs a time zone (e.g. a trailing Z for UTC)", field="ts")
        try:
            return (dt - EPOCH) // ONE_US  # exact, unlike dt.timestamp() (a float)
        except OverflowError:
            raise InvalidReading("ts is out of range", field="ts") from None
    raise InvalidReading(f"ts must be a number or an ISO 8601 string, got {type(value).__name__}", field="ts")
