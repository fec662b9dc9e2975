"""Fan-out benchmark: N WebSocket viewers of K metrics updated at R samples/s, three servers side by side.

Systems, each run alone on the same machine, same workload, same load client:
  pulseboard  Daphne + monitor.asgi + Redis (pub/sub layer) + SQLite in WAL mode (BENCH_DB=postgres
              for PostgreSQL); samples go in through the real HTTP ingest API (POST /api/v1/ingest
              with an AgentToken), are stored, published once per batch, and fanned out by the
              per-process hub. Viewers ack (protocol v1).
  raw         bench/raw_server.py: `websockets` with broadcast(), no storage, no auth, no layer.
  naive       bench/naive_app.py on Daphne + the same Redis: a channel and group membership per
              socket, a group_send per sample, a JSON encode per socket per sample.

The producer ticks at 100 Hz (an agent flushing every 10 ms), each tick one request/message with
R/100 samples spread over K metrics. Viewers run in separate processes (asyncio + picows, a C WebSocket client) and
measure, per sample batch, receipt time minus the sample's timestamp (the oldest sample of each
batch: a conservative latency), count samples and duplicates. Loss = samples produced x viewers
- unique samples received after a drain period; for Pulseboard that includes back-fills, so it is
*unrepaired* loss. Server CPU and RSS come from psutil on the server process.

Loopback only, bounded in time (each step STEP_S + drain). Usage:
    python bench/fanout.py                       # all scenarios (~10 min)
    python bench/fanout.py --scenarios latency   # one: latency, scale, ceiling, fleet
    python bench/fanout.py --scenarios fleet --systems pulseboard,raw   # 1,000 viewers of fleet.*, 1,000+ devices
                                                 # (--fleet-sizes, --raw-fleet-sizes, --fleet-viewers 1000,2000
                                                 # step each; prints the largest fleet x viewers that holds).
                                                 # Pulseboard runs as deployed for a fleet's boards: one Daphne
                                                 # per CPU holding the viewers, over Redis (--fanout-workers),
                                                 # and an ingest worker apart taking the agents' posts
                                                 # (--ingest http: the agents post to the first viewers' worker)
    python bench/fanout.py --scenarios ceiling --systems pulseboard --in-flight 8
                                                 # 8 ingest requests always in flight: samples of a key commit
                                                 # out of order; "late" counts those delivered after a newer one
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import picows
import psutil
import websockets

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dashboard.testing import (  # noqa: E402
    bench_env,
    free_port,
    login_cookies,
    manage,
    settle,
    steal_meter,
    stop_process,
    wait_port,
)

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres")
PG_DB = "pulseboard_bench"
TICK_S = 0.01  # the producer flushes every 10 ms (100 requests a second at most)
STEP_S = 8.0  # measured producing time per step
DRAIN_S = 6.0  # longest wait for stragglers (and Pulseboard back-fills) after a step
WARMUP_S = 3.0  # after connecting: the server refreezes its garbage collector once (dashboard/fastpaths/gcpolicy.py)
P99_LIMIT_MS = 100.0  # "sustainable": p99 at or under this and no unrepaired loss
LATENCY_RESERVOIR = 20_000  # latency samples kept per client process
VIEWER, PASSWORD = "bench", "bench-pass-123"
LATE_WINDOW_US = 5_000_000  # a viewer tells a late sample from a duplicate within this much of the newest one
LATE_SET_MAX = 2_000
FLEET = [False]  # the fleet scenario: 1 Hz devices fleet.dev-NNNNN.temp posted by FLEET_AGENTS agents
FLEET_AGENTS = 10  # agents, each posting every FLEET_TICK_S the samples of its devices that came due
FLEET_TICK_S = 0.1
FLEET_ALIGNED = [False]  # --fleet-aligned: every agent ticks at the same instant (a burst of 10 requests)
FLEET_VERIFY_EVERY = 20  # every 20th viewer checks each key's sequence (loss, duplicates, order) in full
IN_FLIGHT = [0]  # --in-flight: requests the producer keeps in flight (0: one request per 10 ms tick)
FANOUT_WORKERS = [1]  # --fanout-workers: Daphne processes holding the viewers (Pulseboard), sharing Redis
PROFILE: list[Path | None] = [None]  # --profile DIR: py-spy records the server during each measured step
PY_SPY = os.environ.get("PY_SPY", "py-spy")


def now_us() -> int:
    return time.time_ns() // 1000


# --- Servers under test ------------------------------------------------------------


@dataclass
class System:
    """A server under test: how to start it, connect a viewer, and publish a tick of samples."""

    name: str
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    cookies: str = ""
    token: str = ""
    tmp: Path | None = None
    http: httpx.AsyncClient | None = None
    publisher: Any = None
    # pulseboard only: "http" (the API), "action" (actions.ingest in another process), or "worker" (the API
    # on a second Daphne, an ingest worker, sharing the database and Redis: the viewers' worker only fans out)
    ingest: str = "http"
    ingest_process: subprocess.Popen | None = None
    ingest_port: int = 0
    # pulseboard with --fanout-workers N: the other N - 1 viewers' workers (self.process is the first), each on its
    # own port; the load client spreads the viewers over them as nginx's least_conn would.
    fanout_processes: list[subprocess.Popen] = field(default_factory=list)
    fanout_ports: list[int] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    producer: Any = None  # (process, pipe) of the action-mode producer

    # Each attribute below is what the client processes need (they get a plain dict).
    def client_spec(self) -> dict[str, Any]:
        fleet = FLEET[0]
        if self.name == "pulseboard":
            pattern = "fleet.*" if fleet else "bench.src.*"
            return {
                "url": f"ws://127.0.0.1:{self.port}/ws/live/",
                "headers": {"Cookie": self.cookies, "Origin": f"http://127.0.0.1:{self.port}"},
                # Viewer i of a client process connects to target i modulo their number.
                "targets": [
                    (f"ws://127.0.0.1:{port}/ws/live/", {"Cookie": self.cookies, "Origin": f"http://127.0.0.1:{port}"})
                    for port in self.viewer_ports()
                ],
                "subscribe": json.dumps({"type": "subscribe", "metrics": [pattern], "history_s": 0}),
                "ack": True,
                "fleet": fleet,
            }
        path = "/ws/" if self.name == "naive" else "/"
        return {
            "url": f"ws://127.0.0.1:{self.port}{path}",
            "headers": {},
            "subscribe": None,
            "ack": False,
            "fleet": fleet,
        }

    def start(self, metrics: int) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-"))
        on_postgres = os.environ.get("BENCH_DB", "sqlite") == "postgres"
        env = bench_env(
            self.tmp, REDIS_URL, DATABASE_URL=PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + PG_DB if on_postgres else ""
        )
        self.env = env
        if self.name == "raw":
            command = [sys.executable, str(ROOT / "bench" / "raw_server.py"), str(self.port)]
        else:
            if self.name == "pulseboard":
                if on_postgres:
                    reset_database()  # a SQLite run gets a fresh file in self.tmp
                manage(env, "migrate", "--noinput", "-v", "0")
                manage(
                    env,
                    "shell",
                    "-c",
                    "from django.contrib.auth import get_user_model\n"
                    f"get_user_model().objects.create_user({VIEWER!r}, password={PASSWORD!r}, is_staff=True)",
                )
                manage(env, "issuetoken", "bench", "--output", str(self.tmp / "token"))
                self.token = (self.tmp / "token").read_text().strip()
            app = "monitor.asgi:application" if self.name == "pulseboard" else "bench.naive_app:application"
            command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), app]
        self.process = self._serve(command, self.port, "server.log")
        if self.name == "pulseboard":
            for i in range(1, FANOUT_WORKERS[0]):
                port = free_port()
                self.fanout_ports.append(port)
                worker = [*command[:-3], "-p", str(port), command[-1]]
                self.fanout_processes.append(self._serve(worker, port, f"fanout-{i}.log"))
        if self.name == "pulseboard" and self.ingest == "worker":
            self.ingest_port = free_port()
            command = [*command[:-3], "-p", str(self.ingest_port), command[-1]]
            self.ingest_process = self._serve(command, self.ingest_port, "ingest.log")
        if self.name == "pulseboard":
            cookies = login_cookies(f"http://127.0.0.1:{self.port}", VIEWER, PASSWORD)
            self.cookies = "; ".join(f"{k}={v}" for k, v in cookies.items())

    def _serve(self, command: list[str], port: int, log_name: str) -> subprocess.Popen:
        """Start a server process and wait until it listens."""
        process = subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=open(self.tmp / log_name, "w")
        )
        wait_port(port, timeout_s=30, process=process, log_path=self.tmp / log_name)
        return process

    def viewer_ports(self) -> list[int]:
        """Return the ports of the processes that hold viewers: the server's, then any other fan-out worker's."""
        return [self.port, *self.fanout_ports]

    def server_processes(self) -> list[psutil.Process]:
        """Return the processes whose CPU a step counts: the viewers' workers, then the ingest worker if any."""
        processes = [self.process, *self.fanout_processes, self.ingest_process]
        return [psutil.Process(p.pid) for p in processes if p is not None]

    async def open_publisher(self, metrics: int) -> None:
        self.http = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{self.ingest_port or self.port}",
            timeout=30,
            limits=httpx.Limits(max_connections=20),
        )
        if self.name == "raw":
            self.publisher = await websockets.connect(f"ws://127.0.0.1:{self.port}/publish", max_size=2**24)
        if self.name == "pulseboard":  # the metrics must exist before viewers subscribe to them
            old = now_us() - 10_000_000
            if FLEET[0]:
                names = [fleet_device(i) for i in range(metrics)]
                for at in range(0, metrics, 1000):
                    await self.publish([(name, old, -1.0) for name in names[at : at + 1000]])
            else:
                await self.publish([(f"m{i}", old, 0.0) for i in range(metrics)])
            if self.ingest == "action":
                parent, child = mp.get_context("spawn").Pipe()
                process = mp.get_context("spawn").Process(target=action_producer, args=(child, self.env), daemon=True)
                process.start()
                self.producer = (process, parent)

    async def publish(self, samples: list[tuple[str, int, float]]) -> None:
        if FLEET[0]:
            await self.publish_fleet(samples)
            return
        if self.name == "pulseboard":
            body = {
                "source": "bench.src",
                "precision": "us",
                "samples": [{"metric": m, "ts": t, "value": v} for m, t, v in samples],
            }
            response = await self.http.post(
                "/api/v1/ingest", json=body, headers={"Authorization": f"Token {self.token}"}
            )
            if response.status_code != 200 or response.json()["rejected"]:
                raise RuntimeError(f"ingest refused: {response.status_code} {response.text[:300]}")
        elif self.name == "naive":
            body = {"samples": [{"metric": f"bench.src.{m}", "ts": t, "value": v} for m, t, v in samples]}
            (await self.http.post("/publish", json=body)).raise_for_status()
        else:
            series: dict[str, list[list]] = {}
            for m, t, v in samples:
                entry = series.setdefault(f"bench.src.{m}", [[], []])
                entry[0].append(t)
                entry[1].append(v)
            batches = [{"k": k, "t": tv[0], "v": tv[1]} for k, tv in series.items()]
            await self.publisher.send(json.dumps({"type": "data", "batches": batches}, separators=(",", ":")))

    async def publish_fleet(self, samples: list[tuple[str, int, float]]) -> None:
        """Publish one agent's request: each sample is device `name`'s reading (its own source, as devices are).

        Pulseboard gets one ingest request naming each sample's source; the raw
        baseline broadcasts one message per sample, as a per-sample fan-out does.
        """
        if self.name == "pulseboard":
            body = {
                "precision": "us",
                "samples": [
                    {"source": f"fleet.{name}", "metric": "temp", "ts": t, "value": v} for name, t, v in samples
                ],
            }
            response = await self.http.post(
                "/api/v1/ingest", json=body, headers={"Authorization": f"Token {self.token}"}
            )
            if response.status_code != 200 or response.json()["rejected"]:
                raise RuntimeError(f"ingest refused: {response.status_code} {response.text[:300]}")
        elif self.name == "raw":
            for name, t, v in samples:
                message = {"type": "data", "batches": [{"k": f"fleet.{name}.temp", "t": [t], "v": [v]}]}
                await self.publisher.send(json.dumps(message, separators=(",", ":")))
        else:
            raise SystemExit("the fleet scenario runs pulseboard and raw")

    async def produce_step(
        self, rate: float, metrics: int, duration: float, publish_ms: list[float]
    ) -> tuple[int, float]:
        """Run one step's producer: here over HTTP/WebSocket, or in the action-mode producer process."""
        if self.producer is None:
            return await produce(self, rate, metrics, duration, publish_ms)
        _, pipe = self.producer
        pipe.send((rate, metrics, duration))
        produced, behind, timings = await asyncio.to_thread(pipe.recv)
        publish_ms += timings
        return produced, behind

    async def close_publisher(self) -> None:
        if self.producer is not None:
            process, pipe = self.producer
            pipe.send(None)
            process.join(10)
        if self.publisher is not None:
            await self.publisher.close()
        if self.http is not None:
            await self.http.aclose()

    def stop(self) -> None:
        for process in (self.process, *self.fanout_processes, self.ingest_process):
            stop_process(process)


def action_producer(conn, env: dict[str, str]) -> None:
    """A process that ingests through dashboard.actions.ingest (store, then publish on the shared Redis)."""
    os.environ.update(env)
    import django

    django.setup()
    from dashboard import actions
    from dashboard.validation import Reading

    class Publisher:
        async def publish(self, samples: list[tuple[str, int, float]]) -> None:
            result = await actions.ingest([Reading("bench.src", m, t, v) for m, t, v in samples])
            if result.rejected:
                raise RuntimeError(f"ingest refused: {result.rejected[:3]}")

    async def main() -> None:
        while True:
            command = await asyncio.to_thread(conn.recv)
            if command is None:
                return
            rate, metrics, duration = command
            timings: list[float] = []
            produced, behind = await produce(Publisher(), rate, metrics, duration, timings)
            conn.send((produced, behind, timings))

    asyncio.run(main())


def reset_database() -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL.replace("postgres://", "postgresql://"), autocommit=True) as db:
        db.execute(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
        db.execute(f"CREATE DATABASE {PG_DB}")


# --- Load client (separate processes) --------------------------------------------------


class ViewerStats:
    """What one client process measured since the last `measure` command."""

    def __init__(self) -> None:
        self.lo = 1 << 62
        self.received = 0
        self.duplicates = 0
        self.late = 0  # samples older than the newest received of their key (committed late), marked late
        self.unmarked = 0  # ... and not marked late: out-of-order deliveries
        self.latencies_ms: list[float] = []
        self.seen_latencies = 0
        self.closed: dict[int, int] = {}
        self.verifiers = 0
        self.checks: list[SequenceCheck] = []  # the fleet viewers that check every key's sequence

    def latency(self, ms: float) -> None:
        self.seen_latencies += 1
        if len(self.latencies_ms) < LATENCY_RESERVOIR:
            self.latencies_ms.append(ms)
        else:
            slot = random.randrange(self.seen_latencies)
            if slot < LATENCY_RESERVOIR:
                self.latencies_ms[slot] = ms


@dataclass(slots=True)
class FleetFrame:
    """What a fleet data frame holds inside the measured window: its readings and each key's sequence range."""

    samples: int
    oldest_t: int | None
    replay: bool
    ranges: list[tuple[str, int, int, int, bool]]  # (key, first value, last value, count, marked late)


class FleetFrames:
    """Distinct fleet frames of this client process, decoded once each (bounded; emptied at each step)."""

    def __init__(self) -> None:
        self.frames: dict[bytes, FleetFrame | None] = {}

    def get(self, payload: bytes, lo: int) -> FleetFrame | None:
        found = self.frames.get(payload, False)
        if found is not False:
            return found
        message = json.loads(payload)
        summary = None
        if message.get("type") == "data":
            samples, oldest, ranges = 0, None, []
            for batch in message["batches"]:
                t, v = batch["t"], batch["v"]
                if t[-1] < lo:
                    continue
                keep = [i for i, x in enumerate(t) if x >= lo] if t[0] < lo else range(len(t))
                if not keep:
                    continue
                first = keep[0]
                samples += len(keep)
                oldest = t[first] if oldest is None else min(oldest, t[first])
                ranges.append((batch["k"], int(v[first]), int(v[keep[-1]]), len(keep), bool(batch.get("late"))))
            summary = FleetFrame(samples, oldest, bool(message.get("replay")), ranges)
        if len(self.frames) > 20_000:
            self.frames.clear()
        self.frames[payload] = summary
        return summary


FLEET_FRAMES = FleetFrames()
VIEWERS_MADE = 0


class SequenceCheck:
    """One viewer's check of every key's readings: values are each device's 0, 1, 2... sequence."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        self.missing: dict[str, set[int]] = {}

    def reset(self) -> None:
        self.last.clear()
        self.missing.clear()

    def check(self, ranges: list[tuple[str, int, int, int, bool]], stats: ViewerStats) -> None:
        last, missing = self.last, self.missing
        for key, first, end, count, marked in ranges:
            previous = last.get(key)
            if previous is None or first == previous + 1:
                if count == end - first + 1:
                    last[key] = end
                    continue
            values = range(first, end + 1) if count == end - first + 1 else [first] * count  # odd: a repeat inside
            for value in values:
                previous = last.get(key)
                if previous is None or value == previous + 1:
                    last[key] = value
                elif value > previous + 1:
                    missing.setdefault(key, set()).update(range(previous + 1, value))
                    last[key] = value
                elif value in missing.get(key, ()):
                    missing[key].discard(value)
                    if marked:
                        stats.late += 1  # committed after a newer reading of its key, and marked so
                    else:
                        stats.unmarked += 1  # out of order without the mark
                else:
                    stats.duplicates += 1

    def unrepaired(self) -> int:
        return sum(len(m) for m in self.missing.values())


class Viewer(picows.WSListener):
    """One viewer's protocol handling, called by picows for each frame (no task or coroutine per message).

    The load client shares the 2 cores with the server under test, so it must
    be cheap per message: with the pure-Python `websockets` client, reading
    10,000 messages a second took a whole core and the client, not the
    server, set every ceiling. picows parses frames in C; what is left per
    message is json.loads and the bookkeeping below, the same for every
    system under test.
    """

    def __init__(self, spec: dict[str, Any], stats: ViewerStats, ready: asyncio.Future) -> None:
        self.spec, self.stats, self.ready = spec, stats, ready
        self.state = "hello" if spec["subscribe"] else "live"
        self.last: dict[str, int] = {}
        self.recent: dict[str, set[int]] = {}  # per key: timestamps received within LATE_WINDOW_US of the newest
        global VIEWERS_MADE
        VIEWERS_MADE += 1
        self.verify = SequenceCheck() if spec.get("fleet") and VIEWERS_MADE % FLEET_VERIFY_EVERY == 1 else None
        if self.verify is not None:
            stats.verifiers += 1
            stats.checks.append(self.verify)
        self.frames = self.acked = 0
        self.ack_every = 1  # half of hello's limits.ack_window, as docs/protocol.md asks
        self.parts: list[bytes] = []
        self.closed_code: int | None = None

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        self.transport = transport
        if self.state == "live" and not self.ready.done():
            self.ready.set_result(True)

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        code = self.closed_code or 1006
        self.stats.closed[code] = self.stats.closed.get(code, 0) + 1
        if not self.ready.done():
            self.ready.set_result(False)

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        if frame.msg_type == picows.WSMsgType.CLOSE:
            self.closed_code = int(frame.get_close_code())
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return
        if frame.msg_type == picows.WSMsgType.PING:
            transport.send_pong(frame.get_payload_as_bytes())
            return
        if not frame.fin or self.parts:  # a fragmented message: assemble it
            self.parts.append(frame.get_payload_as_bytes())
            if not frame.fin:
                return
            payload, self.parts = b"".join(self.parts), []
        else:
            payload = frame.get_payload_as_bytes()
        received_at = now_us()
        if self.state == "live" and self.spec.get("fleet"):
            self.on_fleet_frame(payload, received_at)
            return
        message = json.loads(payload)
        if self.state != "live":
            if self.state == "hello":
                self.ack_every = max(1, message.get("limits", {}).get("ack_window", 0) // 2)
                # Viewers that connected at different times acknowledge on different frames; these
                # all connected within seconds and get the same frames, so each gets its own phase
                # (else all 1,000 would ack in the same pass, every ack_every-th one).
                self.acked = -random.randrange(self.ack_every)
                transport.send(picows.WSMsgType.TEXT, self.spec["subscribe"].encode())
                self.state = "subscribing"
            elif message.get("type") == "subscribed":
                self.state = "live"
                self.ready.set_result(True)
            return
        self.on_message(message, received_at)

    def on_fleet_frame(self, payload: bytes, received_at: int) -> None:
        """Count a fleet frame from its summary, parsed once per client process for all viewers that share it.

        Pulseboard sends the same bytes to every viewer of a fleet board, so a
        client process decodes each distinct frame once (FleetFrames) and each
        viewer only adds up numbers; one viewer in FLEET_VERIFY_EVERY also
        checks every key's sequence: a gap, a repeat, or a late reading.
        """
        summary = FLEET_FRAMES.get(payload, self.stats.lo)
        if summary is None:
            return
        stats = self.stats
        self.frames += 1
        stats.received += summary.samples
        if summary.oldest_t is not None and not summary.replay:
            stats.latency((received_at - summary.oldest_t) / 1000)
        if self.verify is not None:
            self.verify.check(summary.ranges, stats)
        if self.spec["ack"] and self.frames - self.acked >= self.ack_every:
            self.acked = self.frames
            self.transport.send(picows.WSMsgType.TEXT, b'{"type":"ack","frame":%d}' % self.frames)

    def on_message(self, frame: dict, received_at: int) -> None:
        if frame.get("type") != "data":
            return
        stats, last = self.stats, self.last
        self.frames += 1
        for batch in frame["batches"]:
            t = batch["t"]
            if t[-1] < stats.lo:
                continue
            key = batch["k"]
            if self.spec["ack"]:
                # Pulseboard promises every sample once per key, in commit order: a sample older than the
                # newest one received (it committed late) is new, and counted as late, not as a duplicate.
                high = last.get(key, 0)
                recent = self.recent.get(key)
                if recent is None:
                    recent = self.recent[key] = set()
                first = None
                fresh = 0
                marked = batch.get("late", False)
                for x in t:
                    if x < stats.lo:
                        continue
                    if x > high:
                        high = x
                    elif x in recent or x < high - LATE_WINDOW_US:
                        stats.duplicates += 1  # seen already (or too old to tell: counted against us)
                        continue
                    elif marked:
                        stats.late += 1  # marked late, as docs/protocol.md promises: the client inserts it
                    else:
                        stats.unmarked += 1  # older than one already delivered, and not marked: out of order
                    recent.add(x)
                    fresh += 1
                    if first is None:
                        first = x
                last[key] = high
                if len(recent) > 4 * LATE_SET_MAX:
                    self.recent[key] = {x for x in recent if x >= high - LATE_WINDOW_US}
                stats.received += fresh
                if first is not None and not frame.get("replay"):
                    stats.latency((received_at - first) / 1000)
                continue
            # The others promise nothing; concurrent publishes may reorder (not a loss).
            fresh = [x for x in t if x >= stats.lo] if t[0] < stats.lo else t
            stats.received += len(fresh)
            if fresh:
                last[key] = max(last.get(key, 0), fresh[-1])
                if not frame.get("replay"):
                    stats.latency((received_at - fresh[0]) / 1000)
        if self.spec["ack"] and self.frames - self.acked >= self.ack_every:
            self.acked = self.frames
            self.transport.send(picows.WSMsgType.TEXT, b'{"type":"ack","frame":%d}' % self.frames)


async def run_viewer(spec: dict[str, Any], stats: ViewerStats, ready: asyncio.Queue, index: int = 0) -> None:
    loop = asyncio.get_running_loop()
    targets = spec.get("targets") or [(spec["url"], spec["headers"])]
    url, headers = targets[index % len(targets)]
    for attempt in range(5):  # a burst of handshakes can overflow a listen backlog
        subscribed = loop.create_future()
        try:
            transport, _ = await picows.ws_connect(
                lambda subscribed=subscribed: Viewer(spec, stats, subscribed),
                url,
                extra_headers=headers,
                websocket_handshake_timeout=60,
                max_frame_size=2**24,
            )
            break
        except (OSError, EOFError, picows.WSError, TimeoutError):
            if attempt == 4:
                await ready.put(False)
                return
            await asyncio.sleep(0.5 + random.random())
    ok = await asyncio.wait_for(subscribed, 60)
    await ready.put(ok)
    try:
        await transport.wait_disconnected()
    finally:
        transport.disconnect()


async def client_main(conn, spec: dict[str, Any], viewers: int) -> None:
    loop = asyncio.get_running_loop()
    stats = ViewerStats()
    ready: asyncio.Queue = asyncio.Queue()
    tasks: list[asyncio.Task] = []
    for wave in range(0, viewers, 50):
        batch = [asyncio.create_task(run_viewer(spec, stats, ready, wave + i)) for i in range(min(50, viewers - wave))]
        tasks += batch
        for _ in batch:
            await ready.get()
    alive = sum(1 for t in tasks if not t.done())
    conn.send(("connected", alive))
    while True:
        command, *args = await loop.run_in_executor(None, conn.recv)
        if command == "measure":
            stats.lo = args[0]
            stats.received = stats.duplicates = stats.late = stats.unmarked = stats.seen_latencies = 0
            stats.latencies_ms = []
            FLEET_FRAMES.frames.clear()
            for check in stats.checks:
                check.reset()
            conn.send("ok")
        elif command == "report":
            conn.send(
                {
                    "received": stats.received,
                    "duplicates": stats.duplicates,
                    "late": stats.late,
                    "unmarked": stats.unmarked,
                    "latencies_ms": stats.latencies_ms,
                    "alive": sum(1 for t in tasks if not t.done()),
                    "closed": stats.closed,
                    "verifiers": stats.verifiers,
                    "gaps": sum(check.unrepaired() for check in stats.checks),
                }
            )
        elif command == "close":
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            conn.send("closed")
            return


def client_process(conn, spec: dict[str, Any], viewers: int) -> None:
    asyncio.run(client_main(conn, spec, viewers))


class LoadClient:
    """A few processes that hold the viewers (one process per ~1,000 viewers, at most 2 on 2 cores)."""

    def __init__(self, spec: dict[str, Any], viewers: int) -> None:
        self.count = 1 if viewers <= 200 else 2
        shares = [viewers // self.count + (1 if i < viewers % self.count else 0) for i in range(self.count)]
        ctx = mp.get_context("spawn")
        self.pipes, self.procs = [], []
        for share in shares:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=client_process, args=(child, spec, share), daemon=True)
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)

    def wait_connected(self) -> int:
        return sum(p.recv()[1] for p in self.pipes)

    def ask(self, *command: Any) -> list[Any]:
        for p in self.pipes:
            p.send(command)
        return [p.recv() for p in self.pipes]

    def report(self) -> dict[str, Any]:
        parts = self.ask("report")
        closed: dict[int, int] = {}
        for part in parts:
            for code, n in part["closed"].items():
                closed[code] = closed.get(code, 0) + n
        return {
            "received": sum(p["received"] for p in parts),
            "duplicates": sum(p["duplicates"] for p in parts),
            "late": sum(p["late"] for p in parts),
            "unmarked": sum(p["unmarked"] for p in parts),
            "latencies_ms": [x for p in parts for x in p["latencies_ms"]],
            "alive": sum(p["alive"] for p in parts),
            "closed": closed,
            "verifiers": sum(p["verifiers"] for p in parts),
            "gaps": sum(p["gaps"] for p in parts),
        }

    def close(self) -> None:
        try:
            self.ask("close")
        except (EOFError, BrokenPipeError):
            pass
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


# --- Producer and one measured step --------------------------------------------------


async def timed_publish(system: System, samples: list[tuple[str, int, float]], durations: list[float]) -> None:
    """Publish and time it; a server too overloaded to answer in 30 s shows as a 30 s publish, not a crash."""
    started = time.perf_counter()
    try:
        await system.publish(samples)
    except (httpx.TimeoutException, httpx.TransportError):
        pass  # its samples may still arrive; if not, they count as loss
    durations.append((time.perf_counter() - started) * 1000)


def fleet_device(i: int) -> str:
    return f"dev-{i:05d}"


SEQUENCES: dict[int, int] = {}  # device -> its next sequence number (the value of its next reading)


async def produce_fleet(system: System, metrics: int, duration: float, publish_ms: list[float]) -> tuple[int, float]:
    """Run a fleet of `metrics` devices at 1 Hz each, posted by FLEET_AGENTS agents every FLEET_TICK_S.

    Agent a owns devices a, a + FLEET_AGENTS, ...; each tick it posts the
    tenth of its devices whose second came due, one request with their new
    readings. Agents started independently tick at independent phases: agent
    a ticks a tenth of a tick after agent a - 1 (with --fleet-aligned all
    tick at once, a burst of FLEET_AGENTS requests every tick). A reading's value is its device's sequence number (0, 1, 2...),
    so a viewer can tell loss, duplicates and order per key from two numbers
    per batch. Returns the readings produced and the producer's lag.
    """
    ticks_per_s = round(1 / FLEET_TICK_S)
    owned = [list(range(a, metrics, FLEET_AGENTS)) for a in range(FLEET_AGENTS)]
    produced = 0
    lag = 0.0
    start = time.monotonic()

    async def agent(devices: list[int], phase: float) -> None:
        nonlocal produced, lag
        tick = 0
        next_at = start + phase
        await asyncio.sleep(phase)
        while next_at - start < duration:
            due = devices[tick % ticks_per_s :: ticks_per_s]
            if due:
                ts = now_us()
                samples = []
                for i in due:
                    seq = SEQUENCES.get(i, 0)
                    SEQUENCES[i] = seq + 1
                    samples.append((fleet_device(i), ts, float(seq)))
                produced += len(samples)
                await timed_publish(system, samples, publish_ms)
            tick += 1
            next_at += FLEET_TICK_S
            wait = next_at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            else:
                lag = max(lag, -wait)

    phases = [0.0 if FLEET_ALIGNED[0] else a * FLEET_TICK_S / FLEET_AGENTS for a in range(FLEET_AGENTS)]
    await asyncio.gather(*(agent(devices, phase) for devices, phase in zip(owned, phases, strict=True)))
    return produced, lag


async def produce_in_flight(
    system: System, rate: float, metrics: int, duration: float, publish_ms: list[float], in_flight: int
) -> tuple[int, float]:
    """Publish `rate` samples/s for `duration` from `in_flight` concurrent senders (an agent with several flushers).

    Each sender posts whatever samples came due since it last posted, and
    posts again as soon as its request is answered, so `in_flight` requests
    are always on their way and commit in whatever order the server finishes
    them: samples of one key commit out of timestamp order.
    """
    start = time.monotonic()
    taken = 0

    def due() -> list[tuple[str, int, float]]:
        nonlocal taken
        n = min(int(rate * (time.monotonic() - start)), int(rate * duration)) - taken
        if n <= 0:
            return []
        ts = now_us()
        samples = [(f"m{(taken + j) % metrics}", ts + j, float((taken + j) % 100)) for j in range(n)]
        taken += n
        return samples

    async def sender() -> None:
        while time.monotonic() - start < duration:
            samples = due()
            if samples:
                await timed_publish(system, samples, publish_ms)
            else:
                await asyncio.sleep(min(TICK_S, 1.0 / rate))

    await asyncio.gather(*(sender() for _ in range(in_flight)))
    return taken, 0.0


async def produce(
    system: System, rate: float, metrics: int, duration: float, publish_ms: list[float]
) -> tuple[int, float]:
    """Publish `rate` samples/s for `duration`; return samples produced and the publish lag (s) at the end."""
    if FLEET[0]:
        return await produce_fleet(system, metrics, duration, publish_ms)
    if IN_FLIGHT[0]:
        return await produce_in_flight(system, rate, metrics, duration, publish_ms, IN_FLIGHT[0])
    tick = max(TICK_S, 1.0 / rate)
    per_tick = rate * tick
    carry, produced, sequence = 0.0, 0, 0
    pending: set[asyncio.Task] = set()
    start = next_at = time.monotonic()
    while time.monotonic() - start < duration:
        carry += per_tick
        n = int(carry)
        carry -= n
        if n:
            ts = now_us()
            samples = [(f"m{(sequence + j) % metrics}", ts + j, float(j % 100)) for j in range(n)]
            sequence += n
            produced += n
            task = asyncio.create_task(timed_publish(system, samples, publish_ms))
            pending.add(task)
            task.add_done_callback(pending.discard)
            if len(pending) >= 50:  # the server is not keeping up with ingest: wait, and it shows as latency
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        next_at += tick
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    behind = time.monotonic() - next_at
    if pending:
        await asyncio.gather(*pending)
    return produced, behind


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


SERVER_COUNTERS = (
    "pulseboard_frames_sent_total",
    "pulseboard_frames_encoded_total",
    "pulseboard_write_batch_seconds_sum",  # commits: where an agent's round trip goes
    "pulseboard_write_batch_seconds_count",
    "pulseboard_write_batch_samples_sum",
    "pulseboard_delivery_latency_seconds_sum",  # sample ts to its frame handed to the socket, once per distinct frame
    "pulseboard_delivery_latency_seconds_count",
)


async def frame_counters(system: System) -> dict[str, float]:
    """Return Pulseboard's SERVER_COUNTERS from /metrics (the bench user is staff); zeros for the others."""
    if system.name != "pulseboard":
        return dict.fromkeys(SERVER_COUNTERS, 0.0)
    # The viewers' workers' counters, summed (absolute URLs: the client's base URL may be the ingest worker's).
    totals = dict.fromkeys(SERVER_COUNTERS, 0.0)
    for port in system.viewer_ports():
        response = await system.http.get(f"http://127.0.0.1:{port}/metrics", headers={"Cookie": system.cookies})
        values = dict(line.split(" ", 1) for line in response.text.splitlines() if line and not line.startswith("#"))
        for name in SERVER_COUNTERS:
            totals[name] += float(values.get(name, 0))
    return totals


async def measure_step(system: System, client: LoadClient, viewers: int, metrics: int, rate: float) -> dict[str, Any]:
    server = psutil.Process(system.process.pid)
    stolen = steal_meter()
    servers = system.server_processes()
    before = await frame_counters(system)
    lo = now_us()
    client.ask("measure", lo)
    cpu_before = [sum(p.cpu_times()[:2]) for p in servers]
    clients = [psutil.Process(p.pid) for p in client.procs]
    client_cpu_before = sum(sum(c.cpu_times()[:2]) for c in clients)
    started = time.monotonic()
    peak_rss = server.memory_info().rss
    publish_ms: list[float] = []
    profiler = start_profile(system, viewers, metrics)
    producer = asyncio.create_task(system.produce_step(rate, metrics, STEP_S, publish_ms))
    while not producer.done():
        await asyncio.sleep(0.5)
        peak_rss = max(peak_rss, server.memory_info().rss)
    produced, behind = await producer
    elapsed = time.monotonic() - started
    cpus = [(sum(p.cpu_times()[:2]) - b) / elapsed for p, b in zip(servers, cpu_before, strict=True)]
    cpu = sum(cpus)  # with an ingest worker: both processes
    client_cpu = (sum(sum(c.cpu_times()[:2]) for c in clients) - client_cpu_before) / elapsed
    load = os.getloadavg()[0]
    if profiler is not None:
        await asyncio.to_thread(profiler.wait)
    expected = produced * viewers
    drain_until = time.monotonic() + DRAIN_S
    report = await asyncio.to_thread(client.report)
    while report["received"] - 0 < expected and time.monotonic() < drain_until:
        await asyncio.sleep(0.5)
        peak_rss = max(peak_rss, server.memory_info().rss)
        report = await asyncio.to_thread(client.report)
    after = await frame_counters(system)
    delta = {name: after[name] - before[name] for name in SERVER_COUNTERS}
    frames = delta["pulseboard_frames_sent_total"]
    commits = delta["pulseboard_write_batch_seconds_count"]
    latencies = delta["pulseboard_delivery_latency_seconds_count"]
    lat = report["latencies_ms"]
    delivered_s = report["received"] / elapsed
    loss = max(0, expected - report["received"])
    return {
        "system": system.name,
        "viewers": viewers,
        "metrics": metrics,
        "rate": rate,
        "produced": produced,
        "delivered_per_s": round(delivered_s),
        "p50_ms": round(percentile(lat, 0.50), 1),
        "p99_ms": round(percentile(lat, 0.99), 1),
        "loss": loss,
        "loss_pct": round(100.0 * loss / expected, 3) if expected else 0.0,
        "duplicates": report["duplicates"],
        "late": report["late"],
        "out_of_order": report["unmarked"],
        "in_flight": IN_FLIGHT[0],
        "verifiers": report["verifiers"],
        "gaps": report["gaps"],
        "server_cpu_s_per_million": round(cpu * elapsed / (report["received"] / 1e6), 2)
        if report["received"]
        else None,
        "producer_behind_s": round(max(0.0, behind), 2),
        "publish_p50_ms": round(percentile(publish_ms, 0.5), 1),
        "publish_p99_ms": round(percentile(publish_ms, 0.99), 1),
        "server_cpu_pct": round(100 * cpu),
        "ingest_worker_cpu_pct": round(100 * cpus[-1]) if system.ingest_process is not None else None,
        "client_cpu_pct": round(100 * client_cpu),  # the load client's processes, on the same 2 cores
        "load_1m": round(load, 2),  # the machine is shared: noisy neighbours show here
        "steal_pct": stolen(),  # ... and here, where the load average does not show them
        "server_rss_mb": round(peak_rss / 1e6, 1),
        "alive": report["alive"],
        "frames_sent": int(frames),
        "frames_shared_pct": round(100 * (1 - delta["pulseboard_frames_encoded_total"] / frames), 1)
        if frames
        else None,
        "commit_ms_mean": round(1000 * delta["pulseboard_write_batch_seconds_sum"] / commits, 1) if commits else None,
        "commit_readings_mean": round(delta["pulseboard_write_batch_samples_sum"] / commits, 1) if commits else None,
        "server_latency_ms_mean": round(1000 * delta["pulseboard_delivery_latency_seconds_sum"] / latencies, 1)
        if latencies
        else None,
        "closed": report["closed"],
    }


def start_profile(system: System, viewers: int, metrics: int) -> subprocess.Popen | None:
    """Record the server with py-spy for the step (--profile): a flame graph and raw stacks per step."""
    out = PROFILE[0]
    if out is None or system.process is None:
        return None
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{system.name}-{viewers}v-{metrics}k"
    command = [PY_SPY, "record", "--pid", str(system.process.pid), "--duration", str(int(STEP_S)), "--rate", "50"]
    # Collapsed stacks (flamegraph.pl or speedscope read them); one recorder, so the overhead is counted once.
    return subprocess.Popen(
        [*command, "--format", "raw", "-o", f"{stem}.txt"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def sustainable(result: dict[str, Any]) -> bool:
    return (
        result["loss"] == 0
        and result["duplicates"] == 0
        and result.get("out_of_order", 0) == 0
        and result["p99_ms"] <= P99_LIMIT_MS
        and result["alive"] == result["viewers"]
    )


async def run_system(
    name: str, viewers: int, metrics: int, rates: list[float], stop_when_failing: bool, ingest: str = "http"
) -> list[dict]:
    """Start one server, connect the viewers, run one step per rate; return the steps' results."""
    await asyncio.to_thread(settle)
    system = System(name, ingest=ingest)
    system.start(metrics)
    client = None
    results: list[dict] = []
    try:
        await system.open_publisher(metrics)
        server = psutil.Process(system.process.pid)
        await asyncio.sleep(WARMUP_S)
        rss_base = server.memory_info().rss
        client = LoadClient(system.client_spec(), viewers)
        connected = await asyncio.to_thread(client.wait_connected)
        await asyncio.sleep(WARMUP_S)
        per_connection = (server.memory_info().rss - rss_base) / max(1, connected)
        # Unmeasured warm-up production: the first ingest of a producer is slow (connections,
        # caches), and with 80 batches in a step one slow batch is the whole p99.
        await system.produce_step(rates[0], metrics, WARMUP_S, [])
        await asyncio.sleep(WARMUP_S)
        for rate in rates:
            result = await measure_step(system, client, viewers, metrics, rate)
            result["connected"] = connected
            if name == "pulseboard":
                workers = f", {FANOUT_WORKERS[0]} fan-out workers" if FANOUT_WORKERS[0] > 1 else ""
                result["system"] = f"pulseboard ({ingest}{workers})"
            # The first worker's growth per connection: only meaningful when it holds them all.
            result["idle_kb_per_connection"] = round(per_connection / 1024, 1) if not system.fanout_ports else None
            results.append(result)
            print(json.dumps(result), flush=True)
            if stop_when_failing and not sustainable(result):
                break
    finally:
        if client is not None:
            client.close()
        await system.close_publisher()
        system.stop()
    return results


# --- Scenarios -----------------------------------------------------------------------


def fleet_holds(result: dict[str, Any]) -> bool:
    """Return whether a fleet step held: p99 within the limit, nothing lost, repeated or out of order, no gap left."""
    return sustainable(result) and result["gaps"] == 0


def fleet_table(rows: list[dict]) -> str:
    """Return the fleet rows as the Markdown table of bench/results (CPU per million deliveries, load beside each)."""
    lines = [
        "| system | devices | viewers | delivered samples/s (wanted) | loss | dups | out of order | p50 / p99 ms "
        "| server CPU % | CPU s per million deliveries | client CPU % | load (1 min) | CPU steal % | holds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['system']} | {r['metrics']:,} | {r['viewers']:,} | {r['delivered_per_s']:,} ({r['metrics'] * r['viewers']:,}) "
            f"| {r['loss']:,} | {r['duplicates']} | {r.get('out_of_order', 0)} | {r['p50_ms']} / {r['p99_ms']} "
            f"| {r['server_cpu_pct']} | {r['server_cpu_s_per_million']} | {r.get('client_cpu_pct', '')} "
            f"| {r.get('load_1m', '')} | {r.get('steal_pct', '')} | {'yes' if fleet_holds(r) else 'no'} |"
        )
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    head = (
        "| system | viewers | K | R samples/s | delivered samples/s | p50 ms | p99 ms | loss | dups | late (marked) / out of order | "
        "publish p50/p99 ms | server CPU % | server RSS MB | idle KB/conn | CPU steal % |"
    )
    lines = [head, "|" + "---|" * 15]
    for r in rows:
        lines.append(
            f"| {r['system']} | {r['viewers']} | {r['metrics']} | {r['rate']:g} | {r['delivered_per_s']:,} | {r['p50_ms']} | "
            f"{r['p99_ms']} | {r['loss']} ({r['loss_pct']}%) | {r['duplicates']} | {r.get('late', 0)} / {r.get('out_of_order', 0)} | {r['publish_p50_ms']}/{r['publish_p99_ms']} | "
            f"{r['server_cpu_pct']} | {r['server_rss_mb']} | "
            f"{r['idle_kb_per_connection']} | {r.get('steal_pct', '')} |"
        )
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default="latency,scale,ceiling")
    parser.add_argument("--systems", default="pulseboard,raw,naive")
    parser.add_argument(
        "--fleet-sizes", default="1000,2000,5000", help="fleet scenario: devices (1 Hz each), stepped up"
    )
    parser.add_argument(
        "--fleet-viewers", default="1000", help="fleet scenario: viewers of fleet.* (several: each is stepped)"
    )
    parser.add_argument(
        "--fleet-aligned",
        action="store_true",
        help="fleet scenario: all agents post at the same instant each tick (default: their ticks spread over it)",
    )
    parser.add_argument(
        "--raw-fleet-sizes",
        default="100,200,500,1000",
        help="fleet scenario: devices for the raw baseline (one message per sample), stepped up to where it stops",
    )
    parser.add_argument("--metrics", type=int, default=10, help="K")
    parser.add_argument("--latency-viewers", type=int, default=100, help="N for the latency scenario")
    parser.add_argument("--scale-rate", type=float, default=200.0, help="R for the scale scenario")
    parser.add_argument("--viewers", default="100,1000,2000", help="N values for the scale scenario")
    parser.add_argument("--ceiling-viewers", type=int, default=1000)
    parser.add_argument("--ceiling-rates", default="10,20,50,100,200,500,1000,2000,5000,10000,20000")
    parser.add_argument("--out", type=Path, help="append results as JSON lines here")
    parser.add_argument(
        "--fanout-workers",
        type=int,
        default=0,
        help="Pulseboard: Daphne processes that hold the viewers, each on its own port and sharing Redis, with the "
        "viewers spread evenly over them (the production deployment: docs/deployment.md); ingest goes to the first. "
        "0 (the default): one per CPU in the fleet scenario, as deployed for a fleet's boards, and 1 in the others, "
        "which compare one process with the one-process baselines",
    )
    parser.add_argument(
        "--profile", type=Path, help="record the server with py-spy during each step into this directory"
    )
    parser.add_argument(
        "--in-flight",
        type=int,
        default=0,
        help="keep this many ingest requests in flight (samples of a key then commit out of order); "
        "0: one request per 10 ms tick",
    )
    parser.add_argument(
        "--ingest",
        default="",
        help="how Pulseboard gets samples: http (POST /api/v1/ingest), action (dashboard.actions.ingest in another "
        "process sharing the database and Redis), worker (POST to a second Daphne, an ingest worker: the viewers' "
        "worker only fans out what the layer brings), or several, comma-separated (both: http,action). "
        "Empty (the default): worker in the fleet scenario, as deployed for a large fleet's boards "
        "(docs/deployment.md), and http in the others",
    )
    args = parser.parse_args()
    IN_FLIGHT[0] = args.in_flight
    PROFILE[0] = args.profile
    FLEET_ALIGNED[0] = args.fleet_aligned
    FANOUT_WORKERS[0] = args.fanout_workers or 1
    systems = args.systems.split(",")
    modes = ["http", "action"] if args.ingest == "both" else (args.ingest or "http").split(",")

    async def each(system: str, viewers: int, rates: list[float], stop: bool) -> list[dict]:
        rows: list[dict] = []
        for mode in modes if system == "pulseboard" else ["-"]:
            rows += await run_system(system, viewers, args.metrics, rates, stop, mode)
        return rows

    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.node()}: {psutil.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total / 2**30:.1f} GiB, Python {platform.python_version()}, load {os.getloadavg()}",
        flush=True,
    )
    sections: list[tuple[str, list[dict]]] = []
    scenarios = args.scenarios.split(",")
    if "latency" in scenarios:
        rows = [r for s in systems for r in await each(s, args.latency_viewers, [10.0], False)]
        sections.append((f"Latency: {args.latency_viewers} viewers, 10 samples/s", rows))
    if "scale" in scenarios:
        rows = []
        for n in [int(x) for x in args.viewers.split(",")]:
            for s in systems:
                rows += await each(s, n, [args.scale_rate], False)
        sections.append((f"Scale: N viewers at {args.scale_rate:g} samples/s", rows))
    if "fleet" in scenarios:
        # A whole fleet on every board: each viewer subscribes to fleet.*; devices step up until a size
        # no longer holds p99 <= 100 ms with nothing lost, repeated or left out of order per key.
        FLEET[0] = True
        FANOUT_WORKERS[0] = args.fanout_workers or psutil.cpu_count()
        rows = []
        for viewers in [int(x) for x in str(args.fleet_viewers).split(",")]:
            for s in [s for s in systems if s != "naive"]:
                sizes = args.raw_fleet_sizes if s == "raw" else args.fleet_sizes
                # A large fleet's boards are deployed with the agents' posts on ingest workers of their own
                # (docs/deployment.md, "Large fleets"): on the viewers' worker they queued behind 500 sends a
                # commit, and 1,000 x 1,000 held p99 <= 100 ms in 7 runs of 13 that way against 7 of 8 apart
                # (bench/results/2026-12-06-1350-fanout.md); --ingest http measures the shared way.
                fleet_modes = modes if args.ingest else ["worker"]
                for mode in fleet_modes if s == "pulseboard" else ["-"]:
                    for size in [int(x) for x in sizes.split(",")]:
                        SEQUENCES.clear()
                        result = (await run_system(s, viewers, size, [float(size)], False, mode))[-1]
                        rows.append(result)
                        if not fleet_holds(result):
                            break
        FLEET[0] = False
        FANOUT_WORKERS[0] = args.fanout_workers or 1
        print(f"\n### Fleet: viewers of fleet.*, devices at 1 Hz from {FLEET_AGENTS} agents\n\n{fleet_table(rows)}")
        sections.append((f"Fleet: viewers of fleet.*, devices at 1 Hz from {FLEET_AGENTS} agents", rows))
        for s in sorted({r["system"] for r in rows}):
            held = [
                (r["metrics"] * r["viewers"], r["metrics"], r["viewers"])
                for r in rows
                if r["system"] == s and fleet_holds(r)
            ]
            _, devices, viewers = max(held, default=(0, 0, 0))
            print(
                f"largest fleet x viewers {s} holds (p99 <= {P99_LIMIT_MS:g} ms, nothing lost): {devices} x {viewers}"
            )
    if "ceiling" in scenarios:
        rows = []
        rates = [float(x) for x in args.ceiling_rates.split(",")]
        for s in [s for s in systems if s != "naive"]:
            rows += await each(s, args.ceiling_viewers, rates, True)
        sections.append(
            (f"Ceiling: {args.ceiling_viewers} viewers, R stepped up until p99 > {P99_LIMIT_MS:g} ms or loss", rows)
        )
        best = {
            s: max((r["rate"] for r in rows if r["system"] == s and sustainable(r)), default=0.0)
            for s in {r["system"] for r in rows}
        }
        print(f"\nhighest sustainable rate at {args.ceiling_viewers} viewers: {best}")
        if best.get("raw"):
            for s, rate in best.items():
                if s.startswith("pulseboard"):
                    print(f"{s} / raw = {rate / best['raw']:.2f}x")
    for title, rows in sections:
        print(f"\n### {title}\n\n{table(rows)}")
        if args.out:
            with args.out.open("a") as out:
                for r in rows:
                    out.write(json.dumps({"scenario": title, **r}) + "\n")
    # Ratios per comparable row.
    for title, rows in sections:
        by = {(r["system"], r["viewers"], r["rate"]): r for r in rows}
        for (s, n, rate), r in by.items():
            if s.startswith("pulseboard"):
                for other in ("raw", "naive"):
                    o = by.get((other, n, rate))
                    if o and o["server_cpu_pct"]:
                        print(
                            f"{title} N={n} R={rate:g}: {s} / {other} delivered {r['delivered_per_s'] / max(1, o['delivered_per_s']):.2f}x, "
                            f"CPU {r['server_cpu_pct'] / max(1, o['server_cpu_pct']):.2f}x, p99 {r['p99_ms']} vs {o['p99_ms']} ms"
                        )


if __name__ == "__main__":
    asyncio.run(main())
