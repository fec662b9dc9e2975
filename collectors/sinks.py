"""Where a runner's readings go: straight into the ingest action, or over HTTP to a server.

Both end in the same ingest action (dashboard/actions.py); the HTTP sink is
what a separate agent process uses, the local sink what a co-located one uses.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque

import httpx

from dashboard.validation import Reading

log = logging.getLogger("collectors.sink")


class Sink:
    """Accept batches without blocking the collectors; deliver them in the background."""

    async def put(self, readings: list[Reading]) -> None:
        raise NotImplementedError

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until stop is set, then flush what is left."""
        await stop.wait()

    def status(self) -> dict[str, float | int | None]:
        return {}


class LocalSink(Sink):
    """Hand readings to the in-process ingest action (agent co-located with the database)."""

    def __init__(self) -> None:
        self.accepted = 0
        self.rejected = 0

    async def put(self, readings: list[Reading]) -> None:
        from dashboard import actions

        result = await actions.ingest(readings)
        self.accepted += result.accepted
        self.rejected += len(result.rejected)
        for rejection in result.rejected[:5]:
            log.warning("rejected %s: %s", readings[rejection.index].key, rejection.reason)

    def status(self) -> dict[str, float | int | None]:
        return {"accepted": self.accepted, "rejected": self.rejected}


def reading_to_json(reading: Reading) -> dict:
    out = {"source": reading.source, "metric": reading.metric, "ts": reading.ts, "value": reading.value}
    if reading.unit:
        out["unit"] = reading.unit
    if reading.kind:
        out["kind"] = reading.kind
    if reading.source_kind:
        out["source_kind"] = reading.source_kind
    if reading.labels:
        out["labels"] = reading.labels
    return out


class HttpSink(Sink):
    """POST batches to /api/v1/ingest with an agent token; keep and retry them while the server is away."""

    def __init__(
        self,
        server: str,
        token: str,
        batch_size: int = 1000,
        flush_interval_s: float = 1.0,
        max_buffered: int = 1_000_000,
    ) -> None:
        self.url = server.rstrip("/") + "/api/v1/ingest"
        self.token = token
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.max_buffered = max_buffered
        self.queue: deque[Reading] = deque()
        self.sent = 0
        self.dropped = 0
        self.send_errors = 0
        self.last_success: float | None = None
        self._ready = asyncio.Event()

    async def put(self, readings: list[Reading]) -> None:
        self.queue.extend(readings)
        overflow = len(self.queue) - self.max_buffered
        if overflow > 0:
            for _ in range(overflow):
                self.queue.popleft()
            self.dropped += overflow
            log.error("buffer full: dropped the %d oldest readings (%d dropped in all)", overflow, self.dropped)
        if len(self.queue) >= self.batch_size:
            self._ready.set()

    def status(self) -> dict[str, float | int | None]:
        return {
            "buffered": len(self.queue),
            "sent": self.sent,
            "dropped": self.dropped,
            "send_errors": self.send_errors,
            "last_success": self.last_success,
        }

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.5
        async with httpx.AsyncClient(timeout=10.0, headers={"Authorization": f"Token {self.token}"}) as client:
            while True:
                if not self.queue:
                    if stop.is_set():
                        return
                    try:
                        await asyncio.wait_for(self._ready.wait(), self.flush_interval_s)
                    except TimeoutError:
                        pass
                    self._ready.clear()
                    continue
                batch = [self.queue[i] for i in range(min(self.batch_size, len(self.queue)))]
                ok, retry_after = await self._send(client, batch)
                if ok:
                    for _ in batch:
                        self.queue.popleft()
                    self.sent += len(batch)
                    self.last_success = time.time()
                    backoff = 0.5
                    continue
                if stop.is_set() and backoff > 8:
                    log.error("giving up at shutdown with %d readings unsent", len(self.queue))
                    return
                delay = retry_after or backoff * random.uniform(0.8, 1.2)
                backoff = min(backoff * 2, 30.0)
                await asyncio.sleep(delay)

    async def _send(self, client: httpx.AsyncClient, batch: list[Reading]) -> tuple[bool, float | None]:
        try:
            response = await client.post(
                self.url, json={"precision": "us", "samples": [reading_to_json(r) for r in batch]}
            )
        except httpx.HTTPError as exc:
            self.send_errors += 1
            log.warning("server unreachable (%s); %d readings waiting", exc.__class__.__name__, len(self.queue))
            return False, None
        if response.status_code == 429 or response.status_code >= 500:
            self.send_errors += 1
            retry = response.headers.get("Retry-After")
            log.warning("server answered %d; %d readings waiting", response.status_code, len(self.queue))
            return False, float(retry) if retry and retry.isdigit() else None
        if response.status_code >= 400 and response.status_code not in (400,):
            # 401/403/413: retrying cannot help; say so loudly and drop the batch.
            self.send_errors += 1
            self.dropped += len(batch)
            log.error("server refused a batch of %d: %d %s", len(batch), response.status_code, response.text[:300])
            return True, None
        body = response.json()
        for rejected in body.get("rejected", [])[:5]:
            log.warning("server rejected a reading: %s", rejected)
        return True, None
