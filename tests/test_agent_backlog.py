"""The agent against a real server with default limits: a big backlog drains whole; refused batches come back.

Real processes: Daphne serving monitor.asgi (dashboard/testing.py) with its own
SQLite file, queried directly; the agent's HttpSink in this process; and
`manage.py runcollectors --requeue-dead` as a subprocess.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from collectors.sinks import HttpSink
from dashboard.testing import ROOT, Server, prepare_database, project_env
from dashboard.timeutil import now_us
from dashboard.validation import Reading

# Keys of 200 characters, the longest allowed, and labels of 300 bytes: about 560 bytes a reading in JSON,
# so a batch of 10,000 is about 5.6 MB, over the server's 5 MiB body limit (413), and half of one is under it.
SOURCE = "backlog." + "s" * 111
METRICS = [f"m{i}".ljust(80, "m") for i in range(5)]
LABELS = {"site": "a" * 150, "rack": "b" * 150}


def backlog(count: int, source: str = SOURCE) -> list[Reading]:
    base = now_us() - 60_000_000
    return [
        Reading(source, METRICS[i % len(METRICS)], base + i, float(i), labels=LABELS, source_kind="host")
        for i in range(count)
    ]


async def drain(sink: HttpSink, done, timeout_s: float = 300.0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    try:
        async with asyncio.timeout(timeout_s):
            while not done():
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task


def sink_for(server: Server, token: str, spool: Path, batch_size: int) -> HttpSink:
    return HttpSink(
        server.url,
        token,
        spool_path=spool,
        batch_size=batch_size,
        flush_interval_s=0.05,
        health_interval_s=3600.0,
        agent_name="backlog-test",
        max_backoff_s=0.2,
        shutdown_grace_s=0.5,
    )


def stored(server: Server, source: str) -> list[tuple[str, int, float]]:
    return server.samples(source + ".%")


@pytest.mark.slow
@pytest.mark.sqlite_only  # the server keeps its own SQLite file
def test_a_backlog_of_50000_long_readings_drains_in_batches_of_10000_and_is_stored_exactly_once(tmp_path: Path) -> None:
    server = Server(project_env(tmp_path))
    token = prepare_database(server.env, "backlog agent")[0]
    server.start()
    try:
        sink = sink_for(server, token, tmp_path / "spool.sqlite3", batch_size=10_000)
        made = backlog(50_000)

        async def main() -> None:
            for start in range(0, len(made), 5_000):
                await sink.put(made[start : start + 5_000])
            await drain(sink, lambda: sink.spool.depth == 0)

        asyncio.run(main())
        rows = stored(server, SOURCE)
        print(
            f"\n{len(made)} readings spooled, {sink.sent} sent, {sink.splits} batches halved after a 413, "
            f"{len(rows)} stored, {len(set((k, ts) for k, ts, _ in rows))} distinct"
        )
        assert sink.splits >= 1  # the 413 path was taken: a 10,000 batch of these is over 5 MiB
        assert sink.rejected == 0 and sink.spool.dead == 0 and sink.dropped == 0
        assert len(rows) == len(made)
        assert sorted((f"{r.source}.{r.metric}", r.ts, r.value) for r in made) == sorted(rows)
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.sqlite_only
def test_batches_refused_with_401_and_403_wait_in_the_dead_letters_and_requeue_dead_stores_them_once(
    tmp_path: Path,
) -> None:
    server = Server(project_env(tmp_path))
    token = prepare_database(server.env, "good agent")[0]
    narrow_file = tmp_path / "narrow-token"
    server.manage("issuetoken", "narrow agent", "--sources", "elsewhere.*", "--output", str(narrow_file))
    token_file = tmp_path / "agent-token"
    token_file.write_text(token)
    spool = tmp_path / "spool.sqlite3"
    server.start()
    try:
        unknown = sink_for(server, "pb_unknown_secret", spool, batch_size=1_000)
        first = backlog(3_000, source="dead.unknown")

        async def refused(sink: HttpSink, readings: list[Reading]) -> None:
            await sink.put(readings)
            await drain(sink, lambda: sink.spool.depth == 0, timeout_s=60)

        asyncio.run(refused(unknown, first))
        assert unknown.spool.dead == 3_000 + 8  # and one round of its health readings
        narrow = sink_for(server, narrow_file.read_text().strip(), spool, batch_size=1_000)
        second = backlog(2_000, source="dead.scope")
        asyncio.run(refused(narrow, second))
        assert narrow.spool.dead == 3_000 + 2_000 + 2 * 8
        assert stored(server, "dead") == []

        config = tmp_path / "agent.toml"
        config.write_text(
            f'[agent]\nserver = "{server.url}"\ntoken_file = "{token_file}"\nspool_path = "{spool}"\nbatch_size = 1000\n'
        )
        done = subprocess.run(
            [sys.executable, "manage.py", "runcollectors", "--config", str(config), "--requeue-dead"],
            cwd=ROOT,
            env=server.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        print(done.stdout[-1500:])
        assert done.returncode == 0, done.stderr[-3000:]
        assert "401 not_authenticated" in done.stdout and "403 out_of_scope" in done.stdout
        assert "5016/5016 sent" in done.stdout
        rows = stored(server, "dead")
        want = sorted((f"{r.source}.{r.metric}", r.ts, r.value) for r in first + second)
        assert sorted(rows) == want  # every one, exactly once

        again = subprocess.run(
            [sys.executable, "manage.py", "runcollectors", "--config", str(config), "--requeue-dead"],
            cwd=ROOT,
            env=server.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert again.returncode == 0 and "no dead letters" in again.stdout
    finally:
        server.stop()
