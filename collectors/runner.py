"""Drive collectors concurrently on asyncio and hand their batches to a sink.

Each collector runs in its own task; when it raises, the runner logs, counts,
backs off (exponential with jitter, capped) and calls it again, so one bad
sensor never stops the others. SIGTERM and SIGINT set a shutdown flag; the
sink then flushes what it holds.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from collectors.base import Collector
from collectors.retry import Backoff, Schedule
from collectors.sinks import Sink

log = logging.getLogger("collectors.runner")

MAX_BACKOFF_S = 60.0  # a collector failing for good is retried once a minute, not forgotten


class Runner:
    def __init__(self, collectors: list[Collector], sink: Sink) -> None:
        self.collectors = collectors
        self.sink = sink
        sink.collectors = collectors  # their counters join the agent's health readings
        self.stop = asyncio.Event()
        self.failures: dict[str, int] = {c.name: 0 for c in collectors}
        self._puts: set[asyncio.Future] = set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)

    def request_stop(self) -> None:
        log.info("shutting down: flushing readings in flight")
        self.stop.set()

    async def run(self) -> None:
        """Run every collector until stop is requested, then let the sink flush."""
        # The sink is told to flush only once every batch already produced has reached it;
        # a batch whose put was still running when the collectors were cancelled would be lost.
        sink_stop = asyncio.Event()
        sink_task = asyncio.create_task(self.sink.run(sink_stop), name="sink")
        tasks = [asyncio.create_task(self._drive(c), name=c.name) for c in self.collectors]
        await self.stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*self._puts, return_exceptions=True)
        sink_stop.set()
        await sink_task
        log.info("stopped: %s", self.sink.status())

    async def _drive(self, collector: Collector) -> None:
        backoff = Backoff(Schedule(1.0, max_s=MAX_BACKOFF_S, jitter=0.2))
        while not self.stop.is_set():
            try:
                async for batch in collector.batches():
                    # Shielded: cancelling the collector at shutdown must not cancel a half-done put.
                    put = asyncio.ensure_future(self.sink.put(batch))
                    self._puts.add(put)
                    put.add_done_callback(self._puts.discard)
                    await asyncio.shield(put)
                    backoff.reset()
                    if self.stop.is_set():
                        return
                return  # a finite collector (a replay) is done
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures[collector.name] += 1
                delay = backoff.next()
                log.warning("%s failed (%s: %s); retrying in %.1f s", collector.name, type(exc).__name__, exc, delay)
                try:
                    await asyncio.wait_for(self.stop.wait(), delay)
                except TimeoutError:
                    pass
