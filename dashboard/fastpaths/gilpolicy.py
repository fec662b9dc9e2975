"""The interpreter's switch interval for a server process: the writer thread gets its turn within 1 ms, not 5.

A server process runs Python on two kinds of threads at once: the event loop
(fan-out, HTTP, acknowledgements) and the writer's storage threads
(dashboard/writer.py). A thread that wants the GIL while the other computes
waits for the switch interval before CPython makes the holder let go, and
the writer wants it back after every SQL statement it runs, and so does the
event loop after the writer's hand-over. With CPython's 5 ms, at 1,000
viewers of a 1,000-device fleet (the loop ~70 % busy) a commit of a dozen
readings took 2-4 ms where it computes for 1.7-1.9 ms, and its hand-over to
the loop waited 1.5-4 ms at the median: both are live latency. At 1 ms, in
the same runs' quiet moments, the hand-over's median was 0.1-0.2 ms and
ingest to publish 7-10 ms instead of 16-26 ms (bench/results/2026-12-06-0840-fleet.md).
The cost is at most one forced switch per
millisecond while both threads compute.
"""

from __future__ import annotations

import sys

from dashboard import fastpaths

SWITCH_INTERVAL_S = 0.001  # CPython's default is 0.005


def configure() -> bool:
    """Set the switch interval for this process; return whether it was set."""
    if not fastpaths.enabled("switch_interval"):
        return False  # CPython's 5 ms: the writer's commits and hand-overs wait longer for the loop
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    return True
