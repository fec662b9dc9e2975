"""Where a runner's readings go: straight into the ingest action, or over HTTP to a server.

Both end in the same ingest action (dashboard/actions.py); the HTTP sink is
what a separate agent process uses, the local sink what a co-located one uses.
The HTTP sink keeps everything in an on-disk spool (collectors/spool.py) until
the server has judged it sample by sample, keeps what the server refuses
as a whole in the spool's dead letters, and reports its own health as readings.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from collectors.base import slugify_key
from collectors.reading import Reading, now_us
from collectors.retry import Backoff, Schedule
from collectors.spool import DEFAULT_MAX_READINGS, Spool, reading_to_json

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
        # Imported here, not at the top: only a host with the whole project (Django, the
        # database) has it, and the agent alone (pip install ./collectors) must import this module.
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
# The server is away (restarting, overloaded, its database down): wait and send the same batch again, forever.
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
# Other 5xx are a fault of the server with this batch; after this many answers in a row it goes to the dead letters.
SERVER_ERROR_ATTEMPTS = 5


@dataclass
class Answer:
    """What the server's answer to one batch means for the spool (docs/ingest.md, "What the agent deletes")."""

    outcome: str  # "judged" | "split" | "retry" | "dead"
    reason: str = ""
    rejected: list[dict] = field(default_factory=list)
    retry_after: float | None = None


def _rejections(payload: Any, count: int) -> list[dict] | None:
    """Return the `rejected` list of a per-sample answer to `count` readings, or None when it is not one."""
    if not isinstance(payload, dict):
        return None
    rejected = payload.get("rejected")
    numbers = (payload.get("accepted"), payload.get("duplicates"))
    if not isinstance(rejected, list) or not all(type(n) is int and n >= 0 for n in numbers):
        return None
    for item in rejected:
        if not isinstance(item, dict) or type(item.get("index")) is not int or not 0 <= item["index"] < count:
            return None
    return rejected


def judge(status: int, payload: Any, count: int) -> Answer:
    """Classify the server's answer to a batch of `count` readings.

    Only a per-sample judgement lets the agent delete the readings:
    * a 2xx whose JSON body has integer `accepted` and `duplicates` and a
      `rejected` list naming each refused sample by its `index` in the batch
      (the refused ones are counted and logged; the rest are stored);
    * a 400 with error code `invalid_reading` and such a body in which every
      sample of the batch is rejected by index (no sample was acceptable);
    * a 413 to a batch of one reading: that reading alone is too large.
    A 413 to a bigger batch splits it. 429, 502, 503 and 504 mean the server
    is away: the same batch is sent again later. Any other answer refuses
    the batch as a whole without judging its samples (400 without
    per-sample rejections, 401, 403, 404, other 4xx, other 5xx after
    SERVER_ERROR_ATTEMPTS tries, or a 2xx that is not a per-sample answer):
    the readings go to the dead letters, kept for `--requeue-dead`.
    """
    error = payload.get("error") if isinstance(payload, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    reason = f"{status} {code}: {message}" if code else f"{status} without a per-sample answer"
    if 200 <= status < 300:
        rejected = _rejections(payload, count)
        if rejected is not None:
            return Answer("judged", rejected=rejected)
        return Answer("dead", reason=reason)
    if status == 400 and code == "invalid_reading":
        rejected = _rejections(payload, count)
        if rejected is not None and {item["index"] for item in rejected} == set(range(count)):
            return Answer("judged", rejected=rejected)
    if status == 413:
        if count > 1:
            return Answer("split", reason=reason)
        too_large = message or "the server found this one reading too large"
        return Answer("judged", rejected=[{"index": 0, "code": "payload_too_large", "reason": too_large}])
    if status in TRANSIENT_STATUSES or status >= 500:
        return Answer("retry", reason=reason)
    return Answer("dead", reason=reason)


class HttpSink(Sink):
    """POST batches to /api/v1/ingest from a durable spool, in order, with backoff; report health as readings.

    A batch leaves the spool only when the server judged it sample by sample
    (see judge). Connection errors, 429 and 502-504 (honouring Retry-After)
    are retried with exponential backoff and jitter; 413 halves the batch,
    down to one reading; a batch refused as a whole moves to the spool's
    dead letters, counted in the `dead_letters` health metric and logged
    once per reason, and the next batch waits a backoff step.
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
        self._batch_limit = batch_size  # shrinks after a 413, grows back slowly
        self.flush_interval_s = flush_interval_s
        self.health_interval_s = health_interval_s
        self.health_source = "agent." + slugify_key(agent_name or socket.gethostname())
        self.shutdown_grace_s = shutdown_grace_s
        self.max_backoff_s = max_backoff_s
        self.transport = transport  # tests hand in the ASGI app; agents use the network
        self.collectors: list = []  # set by the runner: their counters join the health readings
        self.sent = 0
        self.rejected = 0  # readings the server judged and refused one by one
        self.send_errors = 0
        self.buried = 0  # readings moved to the dead letters since start
        self.splits = 0  # batches halved after a 413
        self.started = time.time()
        self.last_success: float | None = None
        self._ready = asyncio.Event()
        self._server_errors = 0  # 5xx answers in a row to the batch at the head of the spool
        self._logged_reason: str | None = None  # a refusal is logged once, until a success or another reason

    @property
    def dropped(self) -> int:
        return self.spool.dropped

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
            "dead_letters": self.spool.dead,
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
            ("dead_letters", float(self.spool.dead), "", "gauge"),
            ("last_success_age", round(time.time() - since, 3), "s", "gauge"),
            ("send_errors", float(self.send_errors), "", "counter"),
            ("rejected", float(self.rejected), "", "counter"),
            ("dropped", float(self.dropped), "", "counter"),
            ("sent", float(self.sent), "", "counter"),
        ]
        for collector in self.collectors:
            prefix = "collector." + slugify_key(collector.name)
            values += [(f"{prefix}.{name}", float(value), "", "counter") for name, value in collector.health().items()]
        labels = {"name": self.health_source.removeprefix("agent."), "host": socket.gethostname()}
        return [Reading(self.health_source, m, ts, v, unit, kind, "agent", labels) for m, v, unit, kind in values]

    async def _health(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.put(self.health_readings(now_us()))
            try:
                await asyncio.wait_for(stop.wait(), self.health_interval_s)
            except TimeoutError:
                pass

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=REQUEST_TIMEOUT_S, headers={"Authorization": f"Token {self.token}"}, transport=self.transport
        )

    async def run(self, stop: asyncio.Event) -> None:
        health = asyncio.create_task(self._health(stop), name="agent-health")
        try:
            async with self._client() as client:
                await self._deliver(client, stop)
        finally:
            health.cancel()
            await asyncio.gather(health, return_exceptions=True)
            if self.spool.depth:
                log.error("stopping with %d readings in the spool; they are sent at the next start", self.spool.depth)
            if self.spool.dead:
                log.error(
                    "%d readings are in the dead letters; send them again with runcollectors --requeue-dead",
                    self.spool.dead,
                )
            self.spool.close()

    def _grow(self) -> None:
        # After a 413, grow back by a quarter per success: doubling would send the refused size every other time.
        self._batch_limit = min(self.batch_size, self._batch_limit + max(1, self._batch_limit // 4))

    async def _deliver(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        # Jittered: agents that lost the server together do not all come back in the same second.
        backoff = Backoff(Schedule(BACKOFF_START_S, max_s=self.max_backoff_s, jitter=0.5))
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
            answer = await self._send(client, batch)
            if answer.outcome == "judged":
                await self.spool.delete_through(last_id)
                self._judged(batch, answer)
                backoff.reset()
                self._grow()
                continue
            if answer.outcome == "split":
                self._batch_limit = max(1, len(batch) // 2)
                self.splits += 1
                continue
            if answer.outcome == "dead":
                await self.spool.bury_through(last_id, answer.reason)
                self._buried(batch, answer.reason)
                delay = backoff.next()  # the server refuses: do not spin through the spool
            else:
                wait = backoff.next()
                delay = answer.retry_after if answer.retry_after is not None else wait
                log.info("retrying in %.1f s with %d readings spooled", delay, self.spool.depth)
            if give_up_at is not None:
                delay = min(delay, max(0.0, give_up_at - time.monotonic()))
            await asyncio.sleep(delay)

    def _judged(self, batch: list[Reading], answer: Answer) -> None:
        self.sent += len(batch) - len(answer.rejected)
        self.rejected += len(answer.rejected)
        self.last_success = time.time()
        self._server_errors = 0
        self._logged_reason = None
        for item in answer.rejected[:5]:
            reading = batch[item["index"]]
            log.warning("server rejected %s at %d: %s", reading.key, reading.ts, item.get("reason"))
        if len(answer.rejected) > 5:
            log.warning("server rejected %d more readings of that batch", len(answer.rejected) - 5)

    def _buried(self, batch: list[Reading], reason: str) -> None:
        self.buried += len(batch)
        self._server_errors = 0
        if reason != self._logged_reason:
            self._logged_reason = reason
            log.error(
                "server refused a batch of %d as a whole (%s); kept in the dead letters (%d readings), "
                "send them again with runcollectors --requeue-dead once fixed; "
                "further refusals for this reason are only counted",
                len(batch),
                reason,
                self.spool.dead,
            )

    async def _send(self, client: httpx.AsyncClient, batch: list[Reading]) -> Answer:
        """POST one batch and judge the answer (see judge)."""
        try:
            response = await client.post(
                self.url, json={"precision": "us", "samples": [reading_to_json(r) for r in batch]}
            )
        except httpx.HTTPError as exc:
            self.send_errors += 1
            log.warning("server unreachable (%s); %d readings spooled", type(exc).__name__, self.spool.depth)
            return Answer("retry", reason=type(exc).__name__)
        try:
            payload = response.json()
        except ValueError:
            payload = None
        answer = judge(response.status_code, payload, len(batch))
        if payload is None and answer.outcome == "dead":
            answer.reason = f"{response.status_code} {response.text[:200]!r}"
        if answer.outcome == "judged" and response.status_code < 300:
            return answer
        self.send_errors += 1
        if answer.outcome == "split":
            log.warning("server found a batch of %d too large; halving it", len(batch))
        elif answer.outcome == "retry":
            if response.status_code not in TRANSIENT_STATUSES:
                self._server_errors += 1
                if self._server_errors >= SERVER_ERROR_ATTEMPTS:
                    return Answer("dead", reason=f"{answer.reason} ({self._server_errors} times)")
            log.warning("server answered %d; %d readings spooled", response.status_code, self.spool.depth)
            answer.retry_after = _retry_after(response)
        return answer

    async def requeue_dead(self, progress: Any = None, attempts: int = SERVER_ERROR_ATTEMPTS) -> int:
        """Send the dead letters again, oldest first; return how many the server judged.

        Stops (raising RequeueStopped, the rest kept) at the first whole-batch
        refusal, or after `attempts` tries while the server is away.
        `progress(done, total)` is called after each judged batch.
        """
        await self.spool.dead_reasons()  # counts them
        total = self.spool.dead
        done = 0
        limit = self.batch_size
        tries = 0
        backoff = Backoff(Schedule(BACKOFF_START_S, max_s=self.max_backoff_s))
        async with self._client() as client:
            while True:
                last_id, batch = await self.spool.peek_dead(limit)
                if not batch:
                    return done
                answer = await self._send(client, batch)
                if answer.outcome == "judged":
                    await self.spool.delete_dead_through(last_id)
                    self._judged(batch, answer)
                    done += len(batch)
                    tries = 0
                    limit = min(self.batch_size, limit + max(1, limit // 4))
                    if progress is not None:
                        progress(done, total)
                elif answer.outcome == "split":
                    limit = max(1, len(batch) // 2)
                elif answer.outcome == "retry" and tries + 1 < attempts:
                    tries += 1
                    wait = backoff.next()
                    await asyncio.sleep(answer.retry_after if answer.retry_after is not None else wait)
                else:
                    raise RequeueStopped(answer.reason or "the server is unreachable", done, self.spool.dead)


class RequeueStopped(Exception):
    """--requeue-dead stopped: the server refused a batch as a whole again, or stayed away."""

    def __init__(self, reason: str, done: int, left: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.done = done
        self.left = left


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("Retry-After", "")
    try:
        return min(max(float(raw), 0.0), 300.0)
    except ValueError:
        return None
