"""Drive collectors concurrently on asyncio and hand their batches to a sink.

Each collector runs in its own task; when it raises, the runner logs, counts,
backs off (exponential with jitter, capped) and calls it again, so one bad
sensor never stops the others. SIGTERM and SIGINT set a shutdown flag; the
sink then flushes what it holds.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal

from collectors.base import Collector
from collectors.sinks import Sink

log = logging.getLogger("collectors.runner")

MAX_BACKOFF_S = 60.0


class Runner:
    def __init__(self, collectors: list[Collector], sink: Sink) -> None:
        self.collectors = collectors
        self.sink = sink
        self.stop = asyncio.Event()
        self.failures: dict[str, int] = {c.name: 0 for c in collectors}

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)

    def request_stop(self) -> None:
        log.info("shutting down: flushing readings in flight")
        self.stop.set()

    async def run(self) -> None:
        """Run every collector until stop is requested, then let the sink flush."""
        sink_task = asyncio.create_task(self.sink.run(self.stop), name="sink")
        tasks = [asyncio.create_task(self._drive(c), name=c.name) for c in self.collectors]
        await self.stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await sink_task
        log.info("stopped: %s", self.sink.status())

    async def _drive(self, collector: Collector) -> None:
        backoff = 1.0
        while not self.stop.is_set():
            try:
                async for batch in collector.batches():
                    await self.sink.put(batch)
                    backoff = 1.0
                    if self.stop.is_set():
                        return
                return  # a finite collector (a replay) is done
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures[collector.name] += 1
                delay = min(backoff, MAX_BACKOFF_S) * random.uniform(0.8, 1.2)
                log.warning("%s failed (%s: %s); retrying in %.1f s", collector.name, type(exc).__name__, exc, delay)
                backoff *= 2
                try:
                    await asyncio.wait_for(self.stop.wait(), delay)
                except TimeoutError:
                    pass
