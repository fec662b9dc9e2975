"""Soak: 1,000 live viewers and several agents against two Daphne workers for 10 minutes, on loopback.

    .venv/bin/python bench/soak.py                      # the full run: 1000 viewers, 4 agents, 600 s
    .venv/bin/python bench/soak.py --duration 60        # a trial

It starts its own redis-server, a throwaway PostgreSQL database on the local
server (FAULT_PG_URL, default postgres://postgres@127.0.0.1:5432/postgres;
--sqlite to use a SQLite file instead), two Daphne workers, N collector
agents (`manage.py runcollectors`, each with a counter whose values 0, 1, 2,
... are logged as produced) and V viewers written from docs/protocol.md
(acknowledging frames, at most --max-rate frames a second each), half on each
worker. It samples the workers' RSS every 10 s and, at the end, checks:

- loss and duplicates in storage: every produced value stored exactly once;
- loss and duplicates at every viewer: each viewer's count and sum of values
  per key equals what is stored after its starting cursor, and no sample
  arrived twice (t at or below the key's cursor);
- errors: error frames, unexpected closes, reconnects, agent send errors,
  ERROR lines in the worker logs;
- memory: RSS growth after warm-up (default: the first 20 % of the run) < 5 %.

It prints the figures as a Markdown table for bench/README.md and exits 1 if
a check fails. Not part of CI.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import random
import re
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import psycopg  # noqa: E402
import websockets  # noqa: E402

from dashboard.testing import Agent, RedisServer, Server, prepare_database, project_env  # noqa: E402

PG_ADMIN_URL = os.environ.get("FAULT_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres")
RSS_INTERVAL_S = 10.0
BACKOFF_S = (0.5, 1, 2, 4, 8, 15)


@dataclass
class Viewer:
    """One live client: per key, how many samples it got, their sum, and how many arrived twice."""

    url: str
    session_key: str
    keys: list[str]
    since: int  # µs; set when the viewer first connects
    max_rate: float
    count: dict[str, int] = field(default_factory=dict)
    total: dict[str, float] = field(default_factory=dict)
    cursors: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    errors: list[str] = field(default_factory=list)
    connects: int = 0
    frames: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    stop: bool = False
    attempt: int = 0

    async def run(self) -> None:
        origin = self.url.replace("ws://", "http://").split("/ws/")[0]
        while not self.stop:
            try:
                async with websockets.connect(
                    self.url,
                    origin=origin,
                    additional_headers={"Cookie": f"sessionid={self.session_key}"},
                    open_timeout=60,
                    max_queue=64,
                ) as ws:
                    hello = json.loads(await ws.recv())
                    if hello["type"] != "hello":
                        self.errors.append(f"first frame {hello['type']}")
                    self.connects += 1
                    self.attempt = 0
                    if not self.since:
                        self.since = time.time_ns() // 1000 - 1_000_000  # one second of history, then live
                    since = {k: self.cursors.get(k, self.since) for k in self.keys}
                    await ws.send(
                        json.dumps(
                            {"type": "subscribe", "metrics": self.keys, "since": since, "max_rate": self.max_rate}
                        )
                    )
                    frames = 0
                    async for raw in ws:
                        frame = json.loads(raw)
                        kind = frame["type"]
                        if kind == "data":
                            frames += 1
                            self.frames += 1
                            if frames % 2 == 0:
                                await ws.send(json.dumps({"type": "ack", "frame": frames}))
                            for batch in frame["batches"]:
                                self._take(batch, live=not frame.get("replay"))
                        elif kind == "error":
                            self.errors.append(f"{frame['code']}: {frame['message'][:100]}")
                if not self.stop:
                    self.errors.append("socket closed by the server")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - counted and reported, then the viewer reconnects
                if not self.stop:
                    self.errors.append(f"{type(exc).__name__}: {str(exc)[:100]}")
            if not self.stop:
                # Backoff with jitter, as dashboard/static/dashboard/connection.js: a herd that retries in step never gets in.
                await asyncio.sleep(BACKOFF_S[min(self.attempt, len(BACKOFF_S) - 1)] * random.uniform(0.8, 1.2))
                self.attempt += 1

    def _take(self, batch: dict, live: bool) -> None:
        key = batch["k"]
        cursor = self.cursors.get(key, self.since)
        for t, v in zip(batch["t"], batch["v"], strict=True):
            if t <= cursor:
                self.duplicates += 1
                continue
            cursor = t
            self.count[key] = self.count.get(key, 0) + 1
            self.total[key] = self.total.get(key, 0.0) + v
        self.cursors[key] = cursor
        if live and len(self.latencies_ms) < 2000:
            self.latencies_ms.append(time.time() * 1000 - batch["t"][-1] / 1000)


class Store:
    """Read counts and sums of what the workers stored, from PostgreSQL or SQLite."""

    def __init__(self, env: dict[str, str], pg_url: str | None) -> None:
        self.env = env
        self.pg_url = pg_url

    def rows(self, sql: str, params: tuple) -> list[tuple]:
        if self.pg_url:
            with psycopg.connect(self.pg_url) as db:
                return db.execute(sql.replace("?", "%s"), params).fetchall()
        with sqlite3.connect(self.env["SQLITE_PATH"], timeout=30) as db:
            return db.execute(sql, params).fetchall()

    def values(self, key: str) -> list[float]:
        sql = "SELECT s.value FROM dashboard_sample s JOIN dashboard_metric m ON m.id = s.metric_id WHERE m.key = ?"
        return [r[0] for r in self.rows(sql, (key,))]

    def timeline(self, key: str) -> tuple[list[int], list[float]]:
        """Return the stored timestamps in order and the prefix sums of their values (sums[i] = sum of the first i)."""
        sql = (
            "SELECT s.ts, s.value FROM dashboard_sample s JOIN dashboard_metric m ON m.id = s.metric_id "
            "WHERE m.key = ? ORDER BY s.ts"
        )
        rows = self.rows(sql, (key,))
        sums = [0.0]
        for _, value in rows:
            sums.append(sums[-1] + value)
        return [r[0] for r in rows], sums


def rss_mb(workers: list[Server]) -> list[float]:
    return [psutil.Process(w.process.pid).memory_info().rss / 2**20 for w in workers]


async def soak(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="pulseboard-soak-"))
    redis = RedisServer(workdir).start()
    pg_db = None
    admin = None
    if not args.sqlite:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True)
        pg_db = f"pulseboard_soak_{secrets.token_hex(4)}"
        admin.execute(f'CREATE DATABASE "{pg_db}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    extra = {"DATABASE_URL": f"{base}/{pg_db}"} if pg_db else {}
    env = project_env(workdir, REDIS_URL=redis.url, LOG_LEVEL="WARNING", DEBUG="1", **extra)
    store = Store(env, f"{base}/{pg_db}" if pg_db else None)
    workers: list[Server] = []
    agents: list[Agent] = []
    viewers: list[Viewer] = []
    tasks: list[asyncio.Task] = []
    try:
        print(
            f"soak: {args.viewers} viewers, {args.agents} agents, {args.workers} workers, {args.duration} s; {workdir}"
        )
        token, session = prepare_database(env)
        (workdir / "agent-token").write_text(token)
        workers = [Server(env, workdir, f"worker-{i}").start() for i in range(args.workers)]
        keys = [f"soak.agent-{i}.n" for i in range(args.agents)]
        for i in range(args.agents):
            agent_dir = workdir / f"agent-{i}"
            agent_dir.mkdir()
            (agent_dir / "agent-token").write_text(token)
            agents.append(
                Agent(
                    env,
                    agent_dir,
                    workers[i % len(workers)].url,
                    source=f"soak.agent-{i}",
                    interval_s=args.agent_interval,
                    per_batch=5,
                ).start()
            )
        deadline = time.monotonic() + 120
        while any(not store.values(k) for k in keys):
            if time.monotonic() > deadline:
                raise RuntimeError("the agents' metrics did not appear within 120 s")
            await asyncio.sleep(1)

        started = time.monotonic()
        for i in range(args.viewers):
            # Viewer i watches keys i, i+1, ... (--keys-per-viewer of them): every key has as many watchers.
            watched = [keys[(i + j) % len(keys)] for j in range(min(args.keys_per_viewer, len(keys)))]
            viewer = Viewer(workers[i % len(workers)].ws_url, session, watched, 0, args.max_rate)
            viewers.append(viewer)
            tasks.append(asyncio.ensure_future(viewer.run()))
            if i % args.ramp == args.ramp - 1:
                await asyncio.sleep(1)  # a ramp: --ramp new viewers a second
        connect_deadline = time.monotonic() + 300
        while sum(1 for v in viewers if v.connects) < len(viewers):
            if time.monotonic() > connect_deadline:
                sample = [e for v in viewers for e in v.errors][:5]
                raise RuntimeError(f"only {sum(1 for v in viewers if v.connects)} viewers connected; errors: {sample}")
            await asyncio.sleep(1)
        print(f"soak: {len(viewers)} viewers connected in {time.monotonic() - started:.1f} s")

        ramp_errors = [e for v in viewers for e in v.errors]
        log_offsets = [len(w.log_path.read_text().splitlines()) for w in workers]
        for v in viewers:
            v.errors.clear()
        run_started = time.monotonic()
        warmup_s = args.duration * args.warmup
        samples: list[tuple[float, list[float]]] = []
        while (elapsed := time.monotonic() - run_started) < args.duration:
            samples.append((elapsed, rss_mb(workers)))
            print(
                f"soak: t={elapsed:5.0f} s rss={[round(r) for r in samples[-1][1]]} MB "
                f"frames={sum(v.frames for v in viewers)} errors={sum(len(v.errors) for v in viewers)}",
                flush=True,
            )
            await asyncio.sleep(min(RSS_INTERVAL_S, max(0.1, args.duration - elapsed)))
        samples.append((time.monotonic() - run_started, rss_mb(workers)))

        for agent in agents:
            agent.terminate()
        stored = {k: store.values(k) for k in keys}
        timeline = {k: store.timeline(k) for k in keys}

        def expected(viewer: Viewer, key: str) -> tuple[int, float]:
            """Count and sum of what is stored after the viewer's starting cursor."""
            ts, sums = timeline[key]
            i = bisect.bisect_right(ts, viewer.since)
            return len(ts) - i, sums[-1] - sums[i]

        settle = time.monotonic() + 120
        while time.monotonic() < settle:
            if all(v.count.get(k, 0) >= expected(v, k)[0] for v in viewers for k in v.keys):
                break
            await asyncio.sleep(1)
        await asyncio.sleep(2)  # late duplicates would show now
        for v in viewers:
            v.stop = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

        # --- Figures -----------------------------------------------------------------
        produced = {k: a.produced() for k, a in zip(keys, agents, strict=True)}
        stored_loss = sum(len(set(produced[k]) - set(stored[k])) for k in keys)
        stored_dups = sum(len(stored[k]) - len(set(stored[k])) for k in keys)
        viewer_loss = sum(max(0, expected(v, k)[0] - v.count.get(k, 0)) for v in viewers for k in v.keys)
        viewer_mismatch = sum(
            1
            for v in viewers
            for k in v.keys
            if (v.count.get(k, 0), round(v.total.get(k, 0.0), 3)) != (expected(v, k)[0], round(expected(v, k)[1], 3))
        )
        viewer_dups = sum(v.duplicates for v in viewers)
        errors = [e for v in viewers for e in v.errors]
        reconnects = sum(max(0, v.connects - 1) for v in viewers)  # each connected at least once before the run
        agent_errors = 0
        for agent in agents:
            found = re.findall(r"'send_errors': (\d+)", agent.log_path.read_text())
            agent_errors += int(found[-1]) if found else 0

        def error_lines(lines: list[str]) -> int:
            return sum(1 for line in lines if " ERROR " in line or "Traceback" in line)

        worker_lines = [w.log_path.read_text().splitlines() for w in workers]
        ramp_worker_errors = sum(error_lines(lines[:n]) for lines, n in zip(worker_lines, log_offsets, strict=True))
        worker_errors = sum(error_lines(lines[n:]) for lines, n in zip(worker_lines, log_offsets, strict=True))
        after_warmup = [s for s in samples if s[0] >= warmup_s] or samples[-1:]
        base_rss = sum(after_warmup[0][1])
        end_rss = sum(samples[-1][1])
        peak_rss = max(sum(s[1]) for s in samples)
        growth = (end_rss - base_rss) / base_rss * 100
        latencies = sorted(x for v in viewers for x in v.latencies_ms)
        p50 = statistics.median(latencies) if latencies else float("nan")
        p99 = latencies[int(len(latencies) * 0.99) - 1] if latencies else float("nan")
        total_produced = sum(len(p) for p in produced.values())
        frames = sum(v.frames for v in viewers)
        delivered = sum(sum(v.count.values()) for v in viewers)

        ok = (
            stored_loss == 0
            and stored_dups == 0
            and viewer_loss == 0
            and viewer_mismatch == 0
            and viewer_dups == 0
            and not errors
            and agent_errors == 0
            and worker_errors == 0
            and growth < 5.0
        )
        print()
        print(
            f"| soak ({args.duration:.0f} s, {args.viewers} viewers x {args.keys_per_viewer} key(s) at <= {args.max_rate:g} "
            f"frames/s, {args.agents} agents every {args.agent_interval:g} s, {args.workers} workers, "
            f"{'SQLite' if args.sqlite else 'PostgreSQL'} + Redis) | value |"
        )
        print("| --- | --- |")
        for name, value in [
            ("samples produced by the agents", total_produced),
            ("stored: loss / duplicates", f"{stored_loss} / {stored_dups}"),
            ("samples delivered to viewers (all viewers)", delivered),
            ("data frames received (all viewers)", frames),
            (
                "viewers: loss / duplicates / count-or-sum mismatches",
                f"{viewer_loss} / {viewer_dups} / {viewer_mismatch}",
            ),
            (
                "while the viewers ramped up: handshakes refused (retried) / worker ERROR lines",
                f"{len(ramp_errors)} / {ramp_worker_errors}",
            ),
            ("viewer errors / reconnects after all were connected", f"{len(errors)} / {reconnects}"),
            ("agent send errors / worker ERROR lines", f"{agent_errors} / {worker_errors}"),
            ("delivery latency p50 / p99 (ms, live frames)", f"{p50:.0f} / {p99:.0f}"),
            (f"workers' RSS after warm-up ({warmup_s:.0f} s) -> end (MB)", f"{base_rss:.0f} -> {end_rss:.0f}"),
            ("RSS growth after warm-up", f"{growth:+.1f} %"),
            ("peak RSS, all workers (MB)", f"{peak_rss:.0f}"),
            ("result", "PASS" if ok else "FAIL"),
        ]:
            print(f"| {name} | {value} |")
        if errors or ramp_errors:
            print("first viewer errors:", errors[:5], "while ramping:", ramp_errors[:3])
        return 0 if ok else 1
    finally:
        for viewer in viewers:
            viewer.stop = True
        for task in tasks:
            task.cancel()
        for agent in agents:
            agent.kill()
        for worker in workers:
            worker.kill()
        redis.stop()
        if admin is not None:
            admin.execute(f'DROP DATABASE IF EXISTS "{pg_db}" WITH (FORCE)')
            admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--duration", type=float, default=600.0, help="seconds of steady load after the viewers connected"
    )
    parser.add_argument("--viewers", type=int, default=1000)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keys-per-viewer", type=int, default=1, help="agents' counters each viewer subscribes to")
    parser.add_argument("--agent-interval", type=float, default=0.2, help="seconds between an agent's batches of 5")
    parser.add_argument("--max-rate", type=float, default=1.0, help="frames per second each viewer asks for")
    parser.add_argument(
        "--warmup", type=float, default=0.2, help="fraction of the run that is warm-up for the RSS check"
    )
    parser.add_argument("--ramp", type=int, default=10, help="viewers connecting per second at the start")
    parser.add_argument("--sqlite", action="store_true", help="store in a SQLite file instead of PostgreSQL")
    args = parser.parse_args()
    sys.exit(asyncio.run(soak(args)))


if __name__ == "__main__":
    main()
