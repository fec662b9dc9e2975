"""Garbage-collector policy for a server process: few, planned full collections instead of frequent ones.

CPython's cyclic collector pauses the event loop while it walks every
tracked object of the generation it collects. A Daphne process holding
1,000 live connections has hundreds of thousands of long-lived objects
(autobahn protocols, Twisted transports, sessions), and with the default
thresholds it ran a full collection every few seconds, each a 85-165 ms
pause: the whole p99 of live latency (bench/README.md, Fan-out).

So: what exists after start-up is frozen (gc.freeze: never walked again);
young collections are rarer but still small (threshold 5,000 objects, not
700); and when the number of connections has grown by a quarter since the
last freeze, or an hour has passed, the hub's watchdog unfreezes, collects
once and freezes again. That single planned pause replaces the recurring
ones, and frozen connections that have since closed are collected then, so
freezing leaks nothing for longer than an hour.
"""

from __future__ import annotations

import gc
import logging
import time

from dashboard import fastpaths

log = logging.getLogger(__name__)

THRESHOLDS = (5_000, 20, 50)
REFREEZE_EVERY_S = 3600.0
REFREEZE_GROWTH = 1.25  # connections since the last freeze, as a factor
REFREEZE_MIN_NEW = 100  # ... and at least this many more

_configured = False  # only server processes (monitor/asgi.py) use this policy; tests keep the defaults
_frozen_at = 0.0
_connections_at_freeze = 0


def configure() -> None:
    """Set the thresholds and freeze what start-up made (call once, at the end of loading the app)."""
    global _configured
    if not fastpaths.enabled("gc_policy"):
        return  # CPython's defaults: more frequent pauses, nothing else changes
    gc.set_threshold(*THRESHOLDS)
    refreeze(0)
    _configured = True


def refreeze(connections: int) -> None:
    """Collect everything once, then freeze the survivors."""
    global _frozen_at, _connections_at_freeze
    started = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    _frozen_at, _connections_at_freeze = time.monotonic(), connections
    log.info(
        "garbage collector: froze %d objects in %.0f ms (%d connections)",
        gc.get_freeze_count(),
        (time.perf_counter() - started) * 1000,
        connections,
    )


def maybe_refreeze(connections: int, now: float | None = None) -> bool:
    """Refreeze when connections grew by REFREEZE_GROWTH or REFREEZE_EVERY_S passed; return whether it did."""
    if not _configured:
        return False
    now = time.monotonic() if now is None else now
    grown = connections >= max(_connections_at_freeze * REFREEZE_GROWTH, _connections_at_freeze + REFREEZE_MIN_NEW)
    if grown or now - _frozen_at >= REFREEZE_EVERY_S:
        refreeze(connections)
        return True
    return False
