"""The one retry schedule of Pulseboard's Python: exponential waits, capped, with optional jitter.

Every loop that tries again after a failure takes its waits from here: the
writer's database retries, the agent's HTTP sink, the collector runner, the
MQTT bridge, the exchange feed, Prometheus scrapes and alert notifications.
It lives in `collectors` because the agent runs without Django and imports
nothing from `dashboard`; the server imports it from here. It only computes
waits: each caller sleeps its own way (a thread's time.sleep, an event's
wait, asyncio.sleep).

A `Schedule` holds the shape once (start, factor, cap, jitter), as the front
end's twin takes it in one options object (connection.js `backoffDelay`:
startMs, factor, maxMs, jitter); `wait`, `delays` and `Backoff` read it.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

MAX_DOUBLINGS = 64  # past this the cap has long been reached; the exponent stays small enough for a float


@dataclass(frozen=True, slots=True)
class Schedule:
    """The waits after failures in a row: start_s, times factor each, capped at max_s, spread by ±jitter.

    `jitter` spreads each wait by up to that fraction either way (0.2: 80-120 %),
    after the cap, so clients that failed together do not retry together.
    `uniform` draws the spread (tests pass a fixed one).
    """

    start_s: float
    factor: float = 2.0
    max_s: float = math.inf
    jitter: float = 0.0
    uniform: Callable[[float, float], float] = field(default=random.uniform, repr=False, compare=False)

    def wait(self, failures: int) -> float:
        """Return the wait after `failures` failures in a row (the first wait for 1)."""
        step = min(self.start_s * self.factor ** min(max(failures - 1, 0), MAX_DOUBLINGS), self.max_s)
        return step * self.uniform(1 - self.jitter, 1 + self.jitter) if self.jitter else step

    def delays(self, attempts: int | None = None) -> Iterator[float]:
        """Yield the waits between tries: start_s, start_s * factor, ...; forever unless `attempts` given."""
        failures = itertools.count(1) if attempts is None else range(1, attempts + 1)
        for failure in failures:
            yield self.wait(failure)


class Backoff:
    """The waits of a loop that runs until stopped: longer after each failure, from the start again after a success."""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self.failures = 0  # in a row

    def next(self) -> float:
        """Return how long to wait after one more failure."""
        self.failures += 1
        return self.schedule.wait(self.failures)

    def reset(self) -> None:
        """Start from the shortest wait again (after a success; cheap enough for every message of a feed)."""
        self.failures = 0
