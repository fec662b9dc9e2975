"""The one retry schedule of Pulseboard's Python: exponential waits, capped, with optional jitter.

Every loop that tries again after a failure takes its waits from here: the
writer's database retries, the agent's HTTP sink, the collector runner, the
MQTT bridge, Prometheus scrapes and alert notifications. It lives in
`collectors` because the agent runs without Django and imports nothing from
`dashboard`; the server imports it from here. It only computes waits: each caller sleeps its own way
(a thread's time.sleep, an event's wait, asyncio.sleep).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterator

MAX_DOUBLINGS = 64  # past this the cap has long been reached; the exponent stays small enough for a float


def wait(
    failures: int,
    start_s: float,
    *,
    factor: float = 2.0,
    max_s: float = math.inf,
    jitter: float = 0.0,
    uniform: Callable[[float, float], float] = random.uniform,
) -> float:
    """Return the wait after `failures` failures in a row (the first wait for 1): start_s, times factor each, capped.

    `jitter` spreads the wait by up to that fraction either way (0.2: 80-120 %),
    after the cap, so clients that failed together do not retry together.
    """
    step = min(start_s * factor ** min(max(failures - 1, 0), MAX_DOUBLINGS), max_s)
    return step * uniform(1 - jitter, 1 + jitter) if jitter else step


def delays(
    start_s: float,
    *,
    factor: float = 2.0,
    max_s: float = math.inf,
    jitter: float = 0.0,
    attempts: int | None = None,
    uniform: Callable[[float, float], float] = random.uniform,
) -> Iterator[float]:
    """Yield the waits between tries (see `wait`): start_s, start_s * factor, ...; forever unless attempts given."""
    failures = itertools.count(1) if attempts is None else range(1, attempts + 1)
    for failure in failures:
        yield wait(failure, start_s, factor=factor, max_s=max_s, jitter=jitter, uniform=uniform)


class Backoff:
    """The waits of a loop that runs until stopped: longer after each failure, from the start again after a success."""

    def __init__(
        self,
        start_s: float,
        *,
        factor: float = 2.0,
        max_s: float = math.inf,
        jitter: float = 0.0,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self._schedule = lambda: delays(start_s, factor=factor, max_s=max_s, jitter=jitter, uniform=uniform)
        self._waits = self._schedule()

    def next(self) -> float:
        """Return how long to wait after one more failure."""
        return next(self._waits)

    def reset(self) -> None:
        """Start from the shortest wait again (after a success)."""
        self._waits = self._schedule()
