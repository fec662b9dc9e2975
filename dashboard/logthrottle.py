"""Log a repeating failure once with its traceback, then a summary line per interval, then a recovery line.

During an outage (Redis hung, PostgreSQL stopped) the same failure repeats
many times a second: every publish, every receive retry, every periodic
check. Logging each with a traceback buried everything else in the log
(25 tracebacks in 5 s at 5 batches a second). One `FailureLog` per place
that can fail keeps the first traceback, counts the rest, and says when the
failure ended.
"""

from __future__ import annotations

import logging
import time

SUMMARY_INTERVAL_S = 30.0  # at most one summary line per failing place per this many seconds


class FailureLog:
    """The log lines of one place that may fail repeatedly (a publish, a receive loop, a periodic check)."""

    __slots__ = ("log", "what", "interval_s", "failing_since", "failures", "unreported", "_last_line", "_last_error")

    def __init__(self, log: logging.Logger, what: str, interval_s: float = SUMMARY_INTERVAL_S) -> None:
        self.log = log
        self.what = what
        self.interval_s = interval_s
        self.failing_since: float | None = None  # monotonic s of the first failure of the current run
        self.failures = 0  # in the current run of failures
        self.unreported = 0  # failures since the last line
        self._last_line = 0.0
        self._last_error = ""

    def failure(self, error: BaseException | str, *, level: int = logging.ERROR, traceback: bool = True) -> None:
        """Record one failure: the first of a run is logged in full, the rest as a summary line per interval."""
        now = time.monotonic()
        self.failures += 1
        self._last_error = error if isinstance(error, str) else f"{error.__class__.__name__}: {error}"
        if self.failing_since is None:
            self.failing_since = self._last_line = now
            exc_info = error if traceback and isinstance(error, BaseException) else None
            self.log.log(level, "%s failed: %s", self.what, self._last_error, exc_info=exc_info)
            return
        self.unreported += 1
        if now - self._last_line >= self.interval_s:
            self.log.log(
                level,
                "%s still failing: %d more failures in the last %.0f s (%d since %.0f s ago); last: %s",
                self.what,
                self.unreported,
                now - self._last_line,
                self.failures,
                now - self.failing_since,
                self._last_error,
            )
            self.unreported = 0
            self._last_line = now

    def success(self) -> None:
        """Record a success: if failures were running, log one recovery line with their count and duration."""
        if self.failing_since is None:
            return
        self.log.warning(
            "%s recovered after %d failures over %.1f s",
            self.what,
            self.failures,
            time.monotonic() - self.failing_since,
        )
        self.failing_since = None
        self.failures = self.unreported = 0

    @property
    def failing(self) -> bool:
        return self.failing_since is not None
