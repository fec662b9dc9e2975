"""Where a runner's readings go: straight into the ingest action, or over HTTP to a server.

Both end in the same ingest action (dashboard/actions.py); the HTTP sink is
what a separate agent process uses, the local sink what a co-located one uses.
The HTTP sink keeps everything in an on-disk spool (collectors/spool.py) until
the server has accepted it, and reports its own health as readings.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from pathlib import Path

import httpx

from collectors.base import slugify_key
from collectors.spool import DEFAULT_MAX_READINGS, Spool, reading_to_json
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


BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0  # by default an agent polls a dead server about every 30 s
REQUEST_TIMEOUT_S = 10.0
SHUTDOWN_GRACE_S = 10.0  # on SIGTERM, keep trying to empty the spool this long; the rest waits on disk
HEALTH_INTERVAL_S = 10.0  # a source is stale after 3 silent expected intervals (10 s by default)


class HttpSink(Sink):
    """POST batches to /api/v1/ingest from a durable spool, in order, with backoff; report health as readings.

    A batch leaves the spool only after a 2xx answer. Connection errors, 5xx
    and 429 (honouring Retry-After) are retried with exponential backoff and
    jitter; 401/403 are retried slowly too (an operator can fix the token),
    413 halves the batch; any other 4xx drops the batch loudly, since sending
    it again cannot help.
    """

    def __init__(
        self,
        server: str,
        token: str,
        spool_path: Path | str,
        spool_max_readings: int = DEFAULT_MAX_READINGS,
        batch_size: int = 1000,
        flush_interval_s: float = 1.0,
        health_interval_s: float = HEALTH_INTERVAL_S,
        agent_name: str | None = None,
        shutdown_grace_s: float = SHUTDOWN_GRACE_S,
        transport: httpx.AsyncBaseTransport | None = None,
        max_backoff_s: float = BACKOFF_MAX_S,
    ) -> None:
        if batch_size < 1 or flush_interval_s <= 0 or health_interval_s <= 0:
            raise ValueError("batch_size, flush_interval_s and health_interval_s must be positive")
        self.url = server.rstrip("/") + "/api/v1/ingest"
        self.token = token
        self.spool = Spool(spool_path, spool_max_readings)
        self.batch_size = batch_size
        self._batch_limit = batch_size  # shrinks after a 413
        self.flush_interval_s = flush_interval_s
        self.health_interval_s = health_interval_s
        self.health_source = "agent." + slugify_key(agent_name or socket.gethostname())
        self.shutdown_grace_s = shutdown_grace_s
        self.max_backoff_s = max_backoff_s
        self.transport = transport  # tests hand in the ASGI app; agents use the network
        self.sent = 0
        self.rejected = 0
        self.send_errors = 0
        self.refused = 0  # readings dropped because the server refused their batch for good
        self.started = time.time()
        self.last_success: float | None = None
        self._ready = asyncio.Event()

    @property
    def dropped(self) -> int:
        return self.spool.dropped + self.refused

    async def put(self, readings: list[Reading]) -> None:
        """Append readings to the spool (durably) and wake the sender when a batch is ready."""
        await self.spool.append(readings)
        if self.spool.depth >= self._batch_limit:
            self._ready.set()

    def status(self) -> dict[str, float | int | None]:
        return {
            "spooled": self.spool.depth,
            "sent": self.sent,
            "rejected": self.rejected,
            "dropped": self.dropped,
            "send_errors": self.send_errors,
            "last_success": self.last_success,
        }

    def health_readings(self, ts: int) -> list[Reading]:
        """Return this agent's own vital signs as readings of source agent.<name>."""
        since = self.last_success if self.last_success is not None else self.started
        values = [
            ("heartbeat", 1.0, "", "gauge"),
            ("spool.depth", float(self.spool.depth), "", "gauge"),
            ("last_success_age", round(time.time() - since, 3), "s", "gauge"),
            ("send_errors", float(self.send_errors), "", "counter"),
            ("dropped", float(self.dropped), "", "counter"),
            ("sent", float(self.sent), "", "counter"),
        ]
        labels = {"name": self.health_source.removeprefix("agent."), "host": socket.gethostname()}
        return [Reading(self.health_source, m, ts, v, unit, kind, "agent", labels) for m, v, unit, kind in values]

    async def _health(self, stop: asyncio.Event) -> None:
        from dashboard.timeutil import now_us

        while not stop.is_set():
            await self.put(self.health_readings(now_us()))
            try:
                await asyncio.wait_for(stop.wait(), self.health_interval_s)
            except TimeoutError:
                pass

    async def run(self, stop: asyncio.Event) -> None:
        health = asyncio.create_task(self._health(stop), name="agent-health")
        try:
            async with httpx.AsyncClient(
                timeout=REQUEST_TIMEOUT_S, headers={"Authorization": f"Token {self.token}"}, transport=self.transport
            ) as client:
                await self._deliver(client, stop)
        finally:
            health.cancel()
            await asyncio.gather(health, return_exceptions=True)
            if self.spool.depth:
                log.error("stopping with %d readings in the spool; they are sent at the next start", self.spool.depth)
            self.spool.close()

    async def _deliver(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        backoff = BACKOFF_START_S
        give_up_at: float | None = None
        while True:
            if stop.is_set() and give_up_at is None:
                give_up_at = time.monotonic() + self.shutdown_grace_s
            if give_up_at is not None and time.monotonic() >= give_up_at:
                return
            if self.spool.depth < self._batch_limit and not stop.is_set():
                # Linger up to flush_interval_s for a full batch (fewer, bigger requests).
                self._ready.clear()
                waiters = [asyncio.ensure_future(self._ready.wait()), asyncio.ensure_future(stop.wait())]
                await asyncio.wait(waiters, timeout=self.flush_interval_s, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters:
                    waiter.cancel()
            last_id, batch = await self.spool.peek(self._batch_limit)
            if not batch:
                if stop.is_set():
                    return
                continue
            outcome, retry_after = await self._send(client, batch)
            if outcome in ("sent", "judged"):
                await self.spool.delete_through(last_id)
                self.sent += len(batch) if outcome == "sent" else 0
                self.last_success = time.time()
                backoff = BACKOFF_START_S
                self._batch_limit = min(self.batch_size, self._batch_limit * 2)
                continue
            if outcome == "refused":
                await self.spool.delete_through(last_id)
                self.refused += len(batch)
                continue
            if outcome == "smaller":
                self._batch_limit = max(1, len(batch) // 2)
                continue
            delay = retry_after if retry_after is not None else backoff * random.uniform(0.5, 1.5)
            backoff = min(backoff * 2, self.max_backoff_s)
            if give_up_at is not None:
                delay = min(delay, max(0.0, give_up_at - time.monotonic()))
            log.info("retrying in %.1f s with %d readings spooled", delay, self.spool.depth)
            await asyncio.sleep(delay)

    async def _send(self, client: httpx.AsyncClient, batch: list[Reading]) -> tuple[str, float | None]:
        """POST one batch; return ("sent" | "judged" | "retry" | "smaller" | "refused", Retry-After seconds or None)."""
        try:
            response = await client.post(
                self.url, json={"precision": "us", "samples": [reading_to_json(r) for r in batch]}
            )
        except httpx.HTTPError as exc:
            self.send_errors += 1
            log.warning("server unreachable (%s); %d readings spooled", type(exc).__name__, self.spool.depth)
            return "retry", None
        status = response.status_code
        if status < 300:
            body = response.json()
            self.rejected += len(body.get("rejected", []))
            for rejected in body.get("rejected", [])[:5]:
                log.warning("server rejected a reading: %s", rejected)
            return "sent", None
        self.send_errors += 1
        if status == 429 or status >= 500:
            log.warning("server answered %d; %d readings spooled", status, self.spool.depth)
            return "retry", _retry_after(response)
        if status in (401, 403):
            log.error("server refused the token (%d %s); fix it, readings stay spooled", status, response.text[:300])
            return "retry", self.max_backoff_s
        if status == 413 and len(batch) > 1:
            log.warning("server found a batch of %d too large; halving it", len(batch))
            return "smaller", None
        if status == 400:
            # The server judged every sample and refused them all; sending again gives the same answer.
            self.rejected += len(batch)
            log.error("server rejected a whole batch of %d: %s", len(batch), response.text[:300])
            return "judged", None
        log.error("server refused a batch of %d for good: %d %s", len(batch), status, response.text[:300])
        return "refused", None


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("Retry-After", "")
    try:
        return min(max(float(raw), 0.0), 300.0)
    except ValueError:
        return None
