"""Ingest throughput: samples/s stored through the real HTTP API, next to InfluxDB and a bare COPY.

The headline is the ratio to InfluxDB 1.6 (`influxd` from the Debian package
`influxdb`), the store a user would otherwise point Telegraf at: this starts a
private `influxd` on a loopback port with a temporary data directory and
writes it the very same line-protocol bodies, with the same HTTP client and
the same number of requests in flight. Without `influxd` that row is skipped
with the reason.

The run ends with the target's four cells (#14: each endpoint on each
database at batch 5,000, >= 0.25x InfluxDB), each database as it is
deployed: SQLite in the embedded mode's one Daphne process, PostgreSQL
with one Daphne process per CPU (--workers), each on its own port with the
clients spread over them as nginx spreads agents; the one-process
PostgreSQL rows stay in the table. Those cells run --rounds times (3),
each case right after an InfluxDB case of its own, and each cell's
headline is the median of its rounds' ratios: this machine's speed drifts
more within a minute than the two systems differ (bench_paired).

For each database (PostgreSQL, then SQLite) this migrates a fresh database,
issues an agent token, starts Daphne on a loopback port and POSTs batches
of 1,000 and 5,000 samples from a few concurrent clients (so the writer's
group commit is exercised as in production), as JSON to /api/v1/ingest and
as line protocol to /api/v2/write. Throughput is stored samples / wall time,
checked against the "accepted" counts (JSON) or the 204 answers (line
protocol). The same rows are then COPYed with psycopg into a bare table (no
index, no constraint) on PostgreSQL, one transaction per batch, as the floor
of what any store on PostgreSQL could do.

A third PostgreSQL row, "storage SQL alone", runs the storage layer's own SQL
(dashboard.storage.insert_by_copy: the COPY into dashboard_sample and the
staging table, then one statement for the rollup tiers, the "latest"
updates and the source counters, commit) on the same rows in this process, one transaction per batch,
with no HTTP, JSON, validation or writer thread: the database's share of an
ingest, and so the best the API could do.

    python bench/ingest.py [--samples 200000] [--concurrency 4] [--formats json,lp] [--rounds 3]

Needs PostgreSQL at --pg (trust auth); creates and drops database pulseboard_bench_ingest.
`influxd` is installed by `make bench` (scripts/bench-deps.sh) when run as root.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import ingest_stages
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from dashboard.testing import settle, steal_meter, stop_process  # noqa: E402

DB_NAME = "pulseboard_bench_ingest"
METRICS = 100  # distinct metrics per run, like a small fleet
BATCH_SIZES = (1000, 5000)
START_TIMEOUT_S = 30.0
METRICS_TOKEN = secrets.token_hex(16)  # lets the stage run read /metrics


@dataclass
class Result:
    backend: str
    batch: int
    samples: int
    seconds: float
    fmt: str = "json"
    workers: int = 1  # Daphne processes
    steal: float | None = None  # % of the machine's CPU time the hypervisor gave other guests meanwhile

    @property
    def rate(self) -> float:
        return self.samples / self.seconds


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_rows(count: int, batch: int, tag: str, now_us: int) -> list[list[tuple[str, int, float]]]:
    """Return batches of (metric name, ts µs, value); every (metric, ts) distinct, all within the last day.

    Each series' times ascend, within a batch and from one batch to the
    next, as an agent's or Telegraf's do. (Until 2026-12-06 16:40 they
    descended: both InfluxDB and Pulseboard took 5-12 % longer that way.)
    """
    start = now_us - 3_600_000_000 - count // METRICS * 1000
    rows = [(f"m{i % METRICS:03d}", start + i // METRICS * 1000, float(i % 977) / 7) for i in range(count)]
    return [rows[i : i + batch] for i in range(0, count, batch)]


def payload(source: str, rows: list[tuple[str, int, float]]) -> bytes:
    return json.dumps(
        {"source": source, "precision": "us", "samples": [{"metric": m, "ts": ts, "value": v} for m, ts, v in rows]}
    ).encode()


def wait_until_up(url: str, status: int, name: str) -> None:
    """Poll a server's health URL until it answers `status`, or stop the run after START_TIMEOUT_S."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == status:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{name} did not answer {url} within {START_TIMEOUT_S:.0f} s")
        time.sleep(0.2)


def lp_body(source: str, rows: list[tuple[str, int, float]]) -> bytes:
    """Return the rows as line protocol: one point per sample, field `value`, timestamps in µs."""
    return "".join(f"{m},source={source} value={v!r} {ts}\n" for m, ts, v in rows).encode()


def endpoint_requests(
    fmt: str, bases: list[str], source: str, batches: list[list[tuple[str, int, float]]], now_us: int
) -> tuple[list[str], bytes, list[bytes], list[int] | None]:
    """Return (URL per worker, warm-up body, bodies, line counts or None for JSON) for posting `batches` to one endpoint."""
    warm = warm_rows(now_us)
    if fmt == "json":
        urls = [f"{base}/api/v1/ingest" for base in bases]
        return urls, payload(source, warm), [payload(source, rows) for rows in batches], None
    urls = [f"{base}/api/v2/write?org=bench&bucket=bench&precision=us" for base in bases]
    return urls, lp_body(source, warm), [lp_body(source, rows) for rows in batches], [len(r) for r in batches]


def run(cmd: list[str], env: dict[str, str]) -> str:
    return subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout


def backend_env(backend: str, pg_url: str, sqlite_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SQLITE_PATH")}
    env.update(
        DEBUG="0",
        SECRET_KEY=secrets.token_hex(32),
        LOG_LEVEL="WARNING",
        PULSEBOARD_RATE_LIMIT_PER_S="0",  # the benchmark measures storage, not the limiter
        PULSEBOARD_VAR_DIR=str(sqlite_path.parent),
        PYTHONPATH=str(ROOT),
    )
    if backend == "postgresql":
        env["DATABASE_URL"] = f"{pg_url.rstrip('/')}/{DB_NAME}"
    else:
        env["SQLITE_PATH"] = str(sqlite_path)
    return env


def drop_postgres(pg_url: str) -> None:
    """Drop the bench database and write its pages out now, not during the next case's timed run."""
    with psycopg.connect(f"{pg_url.rstrip('/')}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute("CHECKPOINT")


def reset_postgres(pg_url: str) -> None:
    drop_postgres(pg_url)
    with psycopg.connect(f"{pg_url.rstrip('/')}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {DB_NAME}")


async def post_all(
    url: str | list[str], secret: str | None, bodies: list[bytes], concurrency: int, counts: list[int] | None = None
) -> int:
    """POST every body with `concurrency` clients in flight and return the accepted count.

    With several URLs (one per Daphne worker, each on its own port) the
    clients are spread over them evenly, client i on URL i modulo their
    number, as nginx's least_conn spreads an agent fleet's connections over
    the workers in the documented deployment (docs/deployment.md). JSON
    answers carry their "accepted" count; a line-protocol body answered 204
    counts all its lines (`counts`, one per body), since a partial write is
    answered 400 and stops the run.
    """
    urls = [url] if isinstance(url, str) else url
    fmt = "json" if counts is None else "lp"
    headers = {"Content-Type": "application/json" if fmt == "json" else "text/plain; charset=utf-8"}
    if secret:
        headers["Authorization"] = f"Token {secret}"
    queue = list(reversed(list(zip(bodies, counts or [0] * len(bodies), strict=True))))
    accepted = 0

    async def worker(client: httpx.AsyncClient, target: str) -> None:
        nonlocal accepted
        while queue:
            body, lines = queue.pop()
            response = await client.post(target, content=body, headers=headers)
            response.raise_for_status()
            accepted += response.json()["accepted"] if fmt == "json" else lines

    async with httpx.AsyncClient(timeout=120) as client:
        await asyncio.gather(*(worker(client, urls[i % len(urls)]) for i in range(concurrency)))
    return accepted


@contextlib.contextmanager
def daphne(
    backend: str, args: argparse.Namespace, tmp: Path, workers: int = 1
) -> Iterator[tuple[list[str], str, subprocess.Popen]]:
    """Migrate a fresh database, issue an agent token and run Daphne on it; yield (base URLs, secret, process).

    With several workers, each is a Daphne process on its own loopback port,
    as in the documented deployment (one systemd unit per port behind
    nginx): the bench spreads its clients over the URLs itself (post_all).
    One listening socket shared by every worker (`daphne --fd`) left the
    kernel to hand each of the 4 kept-alive connections to whichever worker
    accepted first, and a run where one worker took 3 or 4 of them measured
    the other idle (2026-12-06: 145k-229k samples/s between runs of the same
    tree). The process yielded is the first worker.
    """
    env = backend_env(backend, args.pg, tmp / "bench.sqlite3")
    env["METRICS_TOKEN"] = METRICS_TOKEN
    if backend == "postgresql":
        reset_postgres(args.pg)
    else:
        for suffix in ("", "-wal", "-shm"):
            (tmp / f"bench.sqlite3{suffix}").unlink(missing_ok=True)
    run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], env)
    secret = run(
        [
            sys.executable,
            "manage.py",
            "shell",
            "-c",
            "from dashboard.models import AgentToken; print(AgentToken.issue('bench')[1])",
        ],
        env,
    ).split()[-1]  # the shell prints a banner about auto-imports first
    listeners, servers = [], []
    try:
        for _ in range(workers):
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", 0))
            listener.listen(1024)
            listeners.append(listener)
            fd = listener.fileno()
            servers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "daphne", "--fd", str(fd), "monitor.asgi:application"],
                    cwd=ROOT,
                    env=env,
                    pass_fds=(fd,),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        bases = [f"http://127.0.0.1:{listener.getsockname()[1]}" for listener in listeners]
        for base in bases:
            wait_until_up(f"{base}/healthz", 200, "daphne")
        yield bases, secret, servers[0]
    finally:
        for listener in listeners:
            listener.close()
        for server in servers:
            stop_process(server)
        if backend == "postgresql":
            drop_postgres(args.pg)


def warm_rows(now_us: int) -> list[tuple[str, int, float]]:
    """One old sample per metric: creates the metrics (a slow path taken once) before the timed posts."""
    return [(name, now_us - 2 * 86_400_000_000 - i, 0.0) for i, name in enumerate(f"m{j:03d}" for j in range(METRICS))]


def bench_api(
    backend: str, args: argparse.Namespace, now_us: int, tmp: Path, workers: int = 1, batches_of=BATCH_SIZES
) -> list[Result]:
    """Time each endpoint in args.formats at each batch size, each case in a fresh database and server.

    Each case starts from an empty database, as each of InfluxDB's does (a
    database per batch size): when line protocol ran second in JSON's
    database it met 400,000 more rows in dashboard_sample's indexes and
    measured 15-25 % slower for that alone (2026-12-06 10:38: 87k vs 104k
    samples/s at batch 5,000 on PostgreSQL; in fresh databases, side by
    side, 103-126k vs 115-126k), and batch 5,000 met batch 1,000's 200,000
    rows the same way (SQLite JSON 160-164k after them, 175-240k alone).
    """
    return [
        api_case(backend, fmt, batch, args, now_us, tmp, workers)
        for fmt in ("json", "lp")
        if fmt in args.formats
        for batch in batches_of
    ]


def api_case(
    backend: str, fmt: str, batch: int, args: argparse.Namespace, now_us: int, tmp: Path, workers: int = 1
) -> Result:
    """Post args.samples samples to one endpoint in batches of `batch`, in a fresh database and server."""
    label = backend if workers == 1 else f"{backend} ×{workers}"
    with daphne(backend, args, tmp, workers) as (bases, secret, _):
        source = f"bench-{backend[:2]}-{batch}-{fmt}"
        batches = make_rows(args.samples, batch, source, now_us)
        url, warm, bodies, counts = endpoint_requests(fmt, bases, source, batches, now_us)
        # The warm-up creates the metrics; every worker then knows them from the database.
        asyncio.run(post_all(url[0], secret, [warm], 1, None if counts is None else [METRICS]))
        settle(30)
        stolen, started = steal_meter(), time.perf_counter()
        accepted = asyncio.run(post_all(url, secret, bodies, args.concurrency, counts))
        elapsed = time.perf_counter() - started
    if accepted != args.samples:
        raise SystemExit(f"{backend}: {accepted} of {args.samples} samples accepted")
    name = "JSON" if fmt == "json" else "LP"
    print(f"  {label:14s} {name:5s} batch {batch:5d}: {args.samples / elapsed:10,.0f} samples/s", flush=True)
    return Result(backend, batch, args.samples, elapsed, fmt, workers, stolen())


def py_spy() -> str | None:
    """Return the py-spy command, or None with the reason printed (it must run as root to attach)."""
    binary = shutil.which("py-spy") or next((p for p in ("/tmp/tools/bin/py-spy",) if os.path.exists(p)), None)
    if binary is None:
        print("  stages     skipped: py-spy is not installed (pip install py-spy)")
    elif os.geteuid() != 0:
        print("  stages     skipped: py-spy attaches to Daphne only as root")
    else:
        return binary
    return None


def bench_stages(backend: str, fmt: str, args: argparse.Namespace, now_us: int, tmp: Path) -> dict[str, float]:
    """Post the batch-5,000 bodies once more under py-spy and return µs per sample per stage (bench/ingest_stages.py)."""
    binary = py_spy()
    if binary is None:
        return {}
    batch, source = 5000, f"stages-{backend[:2]}-{fmt}"
    rows = make_rows(args.samples, batch, source, now_us)
    with daphne(backend, args, tmp) as (bases, secret, server):
        base = bases[0]
        url, warm, bodies, counts = endpoint_requests(fmt, bases, source, rows, now_us)
        asyncio.run(post_all(url, secret, [warm], 1, None if counts is None else [METRICS]))
        metrics_url, auth = f"{base}/metrics", {"Authorization": f"Bearer {METRICS_TOKEN}"}
        wait_before = ingest_stages.histogram_mean(
            httpx.get(metrics_url, headers=auth).text, "pulseboard_write_wait_seconds"
        )
        out = tmp / f"stages-{backend}-{fmt}.txt"
        spy = subprocess.Popen(
            [binary, "record", "-p", str(server.pid), "-r", str(ingest_stages.SAMPLE_RATE_HZ), "--threads", "--idle"]
            + ["--nonblocking", "-f", "raw", "-o", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # py-spy attaches
        started = time.perf_counter()
        asyncio.run(post_all(url, secret, bodies, args.concurrency, counts))
        elapsed = time.perf_counter() - started
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
        wait_after = ingest_stages.histogram_mean(
            httpx.get(metrics_url, headers=auth).text, "pulseboard_write_wait_seconds"
        )
    stages = ingest_stages.per_sample_us(ingest_stages.read_raw(out)(), args.samples)
    waited, requests = wait_after[0] - wait_before[0], wait_after[1] - wait_before[1]
    stages["group-commit wait (mean per request)"] = waited / args.samples * 1e6
    stages["_wait_ms"] = waited / max(requests, 1) * 1000
    stages["_rate"] = args.samples / elapsed
    print(
        f"  {backend:10s} {fmt.upper():5s} stages, batch {batch}: {args.samples / elapsed:10,.0f} samples/s under py-spy"
    )
    return stages


def print_headline(pairs: list[tuple[Result, Result]]) -> None:
    """Print the four cells of #14's target: each endpoint and database at batch 5,000, as each is deployed.

    SQLite is the embedded mode, one Daphne process. PostgreSQL is the
    production mode, one Daphne process per core behind nginx
    (docs/deployment.md), on the same cores InfluxDB's Go threads use; its
    one-process rows stay in the table above. Each cell's figure is the
    median of its rounds' ratios, each to the InfluxDB case run just before
    it (bench_paired).
    """
    if not pairs:
        return
    cells: dict[tuple[str, str, int], list[tuple[Result, Result]]] = {}
    for influx, cell in pairs:
        cells.setdefault((cell.fmt, cell.backend, cell.workers), []).append((influx, cell))
    names = {"json": "JSON", "lp": "line protocol"}
    rounds = max(len(v) for v in cells.values())
    print(
        f"\nTarget (#14): >= 0.25x InfluxDB at batch 5,000, each database as deployed (SQLite: 1 Daphne process; "
        f"PostgreSQL: one per CPU), each round's ratio to the InfluxDB case run just before it, median of {rounds}"
    )
    medians = []
    for (fmt, backend, workers), runs in cells.items():
        ratios = sorted(cell.rate / influx.rate for influx, cell in runs)
        medians.append(statistics.median(ratios))
        each = ", ".join(
            f"{cell.rate / 1000:,.0f}k/{influx.rate / 1000:,.0f}k = {cell.rate / influx.rate:.2f}x"
            for influx, cell in runs
        )
        print(f"  {names[fmt]:13s} {backend:10s} ×{workers}  median {medians[-1]:.2f}x  ({each})")
    print(f"  all {len(medians)} cells' medians >= 0.25x: {'yes' if min(medians) >= 0.25 else 'no'}")


def print_stages(table: dict[tuple[str, str], dict[str, float]]) -> None:
    """Print µs per sample per stage, one column per database and endpoint."""
    if not table:
        return
    cases = list(table)
    names = {"json": "JSON", "lp": "LP"}
    print("\n| Stage (µs per sample, batch 5,000) | " + " | ".join(f"{b} {names[f]}" for b, f in cases) + " |")
    print("|---|" + "---:|" * len(cases))
    for stage in ingest_stages.STAGES:
        cells = []
        for case in cases:
            value = table[case].get(stage, 0.0)
            if stage.startswith("group-commit"):
                cells.append(f"{value:.2f} ({table[case]['_wait_ms']:.1f} ms)")
            else:
                cells.append(f"{value:.2f}")
        print(f"| {stage} | " + " | ".join(cells) + " |")
    for label, pick in (
        (
            "writer thread busy (sum of writer rows)",
            lambda t: sum(v for k, v in t.items() if k in ingest_stages.WRITER_STAGES),
        ),
        ("wall time per sample (1 / throughput under py-spy)", lambda t: 1e6 / t["_rate"]),
    ):
        print(f"| **{label}** | " + " | ".join(f"**{pick(table[c]):.2f}**" for c in cases) + " |")


@contextlib.contextmanager
def influxd(tmp: Path) -> Iterator[str | None]:
    """Run a private influxd 1.x on loopback ports with its data under tmp; yield its URL, or None if not installed."""
    binary = shutil.which("influxd")
    if binary is None:
        print("  influxdb   skipped: influxd is not installed (Debian package `influxdb`; `make bench` installs it)")
        yield None
        return
    data = tmp / "influxdb"
    port, rpc = free_port(), free_port()
    env = dict(
        os.environ,
        INFLUXDB_REPORTING_DISABLED="true",
        INFLUXDB_BIND_ADDRESS=f"127.0.0.1:{rpc}",
        INFLUXDB_HTTP_BIND_ADDRESS=f"127.0.0.1:{port}",
        INFLUXDB_HTTP_LOG_ENABLED="false",
        INFLUXDB_META_DIR=str(data / "meta"),
        INFLUXDB_DATA_DIR=str(data / "data"),
        INFLUXDB_DATA_WAL_DIR=str(data / "wal"),
        INFLUXDB_DATA_QUERY_LOG_ENABLED="false",
        INFLUXDB_MONITOR_STORE_ENABLED="false",
    )
    server = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(f"{base}/ping", 204, "influxd")
        yield base
    finally:
        stop_process(server)


def influx_case(base: str, db: str, batch: int, args: argparse.Namespace, now_us: int) -> Result:
    """Write args.samples samples as line protocol in batches of `batch` into a new InfluxDB database `db`."""
    httpx.post(f"{base}/query", params={"q": f"CREATE DATABASE {db}"}, timeout=30).raise_for_status()
    batches = make_rows(args.samples, batch, "influx", now_us)
    bodies = [lp_body(f"bench-in-{batch}", rows) for rows in batches]
    url = f"{base}/write?db={db}&precision=u"
    settle(30)
    stolen, started = steal_meter(), time.perf_counter()
    asyncio.run(post_all(url, None, bodies, args.concurrency, [len(rows) for rows in batches]))
    elapsed = time.perf_counter() - started
    answer = httpx.get(f"{base}/query", params={"db": db, "q": "SELECT count(value) FROM /.*/"}, timeout=60).json()
    stored = sum(s["values"][0][1] for s in answer["results"][0].get("series", []))
    if stored != args.samples:
        raise SystemExit(f"influxdb: {stored} of {args.samples} points stored")
    print(f"  {'influxdb':10s} LP    batch {batch:5d}: {stored / elapsed:10,.0f} samples/s", flush=True)
    return Result("influxdb", batch, stored, elapsed, "lp", steal=stolen())


def bench_influxdb(args: argparse.Namespace, now_us: int, tmp: Path) -> list[Result]:
    """Write the same line-protocol bodies to a private influxd 1.x: the store a Telegraf user would pick."""
    with influxd(tmp) as base:
        if base is None:
            return []
        return [influx_case(base, f"bench{batch}", batch, args, now_us) for batch in BATCH_SIZES]


def bench_paired(args: argparse.Namespace, now_us: int, tmp: Path) -> list[tuple[Result, Result]]:
    """Run each of the target's four cells args.rounds times, each right after an InfluxDB case: (InfluxDB, cell) pairs.

    This machine's speed drifts within a run: InfluxDB measured 475-728k
    samples/s and the same Pulseboard tree's SQLite cell 131-261k in
    consecutive full runs minutes apart (2026-12-06 16:42-16:50), so the
    ratio of two cases a minute apart measured the drift as much as either
    system. Each pair here is measured back to back, a fresh server and
    database each, and the headline is each cell's median ratio over its
    rounds; every pair is printed.
    """
    cells = [("sqlite", fmt, 1) for fmt in ("json", "lp")] + [
        ("postgresql", fmt, args.workers) for fmt in ("json", "lp")
    ]
    cells = [cell for cell in cells if cell[1] in args.formats]
    pairs = []
    for round_no in range(args.rounds):
        print(f"  round {round_no + 1} of {args.rounds}", flush=True)
        for backend, fmt, workers in cells:
            # A private influxd per pair, stopped before Pulseboard's case: one left running between them
            # went on working (its caches of every earlier case) through the next cases, and the SQLite
            # line-protocol cell measured 155-173k samples/s paired that way against 229k in the table.
            workdir = Path(tempfile.mkdtemp(dir=tmp))
            with influxd(workdir) as base:
                if base is None:
                    return []
                influx = influx_case(base, "bench", 5000, args, now_us)
            shutil.rmtree(workdir)
            pairs.append((influx, api_case(backend, fmt, 5000, args, now_us, tmp, workers)))
    return pairs


def bench_copy(args: argparse.Namespace, now_us: int) -> list[Result]:
    """COPY the same rows into a bare table, one transaction per batch: the ceiling for PostgreSQL."""
    results = []
    reset_postgres(args.pg)
    with psycopg.connect(f"{args.pg.rstrip('/')}/{DB_NAME}") as conn:
        conn.execute("DROP TABLE IF EXISTS bench_copy")
        conn.execute("CREATE TABLE bench_copy (metric_id bigint, ts bigint, value double precision)")
        conn.commit()
        for batch in BATCH_SIZES:
            batches = make_rows(args.samples, batch, "copy", now_us)
            ids = {f"m{i:03d}": i + 1 for i in range(METRICS)}
            settle(30)
            stolen, started = steal_meter(), time.perf_counter()
            for rows in batches:
                with conn.cursor() as cur:
                    with cur.copy("COPY bench_copy (metric_id, ts, value) FROM STDIN (FORMAT BINARY)") as copy:
                        copy.set_types(["int8", "int8", "float8"])
                        for name, ts, value in rows:
                            copy.write_row((ids[name], ts, value))
                conn.commit()
            elapsed = time.perf_counter() - started
            results.append(Result("COPY", batch, args.samples, elapsed, steal=stolen()))
            print(f"  {'postgresql':10s} COPY  batch {batch:5d}: {args.samples / elapsed:10,.0f} samples/s", flush=True)
        conn.execute("DROP TABLE bench_copy")
        conn.commit()
    return results


def bench_storage_sql(args: argparse.Namespace, now_us: int, tmp: Path) -> list[Result]:
    """Time the storage layer's SQL on pre-built rows, one transaction per batch: the API's floor on PostgreSQL."""
    env = backend_env("postgresql", args.pg, tmp / "unused.sqlite3")
    reset_postgres(args.pg)
    run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], env)
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "monitor.settings")
    import django

    django.setup()
    from django.db import connection, transaction

    from dashboard import storage
    from dashboard.models import Metric, Source

    results = []
    for batch in BATCH_SIZES:
        source = Source.objects.create(slug=f"bench-sql-{batch}", name=f"bench-sql-{batch}")
        refs = {}
        for i in range(METRICS):
            metric = Metric.objects.create(source=source, key=f"{source.slug}.m{i:03d}", name=f"m{i:03d}")
            refs[metric.name] = storage.MetricRef(metric.id, source.id, metric.key)
        batches = [
            {(refs[name].id, ts): (refs[name], value) for name, ts, value in rows}
            for rows in make_rows(args.samples, batch, "sql", now_us)
        ]
        settle(30)
        stolen, started = steal_meter(), time.perf_counter()
        for rows in batches:
            with transaction.atomic(), connection.cursor() as cursor:
                # The COPYs, then one statement for the rollups, latest values and source counters.
                if storage.insert_by_copy(cursor, rows):
                    raise SystemExit("storage SQL alone: rows were already stored")
        elapsed = time.perf_counter() - started
        results.append(Result("SQL", batch, args.samples, elapsed, steal=stolen()))
        print(f"  {'postgresql':10s} SQL   batch {batch:5d}: {args.samples / elapsed:10,.0f} samples/s", flush=True)
    connection.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200_000, help="samples per batch size and backend")
    parser.add_argument("--concurrency", type=int, default=4, help="HTTP requests in flight")
    parser.add_argument(
        "--pg", default="postgres://postgres@127.0.0.1:5432", help="PostgreSQL server URL (no database)"
    )
    parser.add_argument(
        "--formats", default="json,lp", help="Pulseboard endpoints: json (/api/v1/ingest), lp (/api/v2/write)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="also run PostgreSQL at batch 5,000 with this many Daphne processes (default: one per CPU, as deployed)",
    )
    parser.add_argument(
        "--stages", action="store_true", help="also time each stage at batch 5,000 with py-spy (as root)"
    )
    parser.add_argument("--stages-only", action="store_true", help="only the --stages passes (while tuning)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of the target's four cells, each case right after an InfluxDB case (0: none)",
    )
    args = parser.parse_args()
    args.stages = args.stages or args.stages_only
    args.formats = set(args.formats.split(","))
    now_us = time.time_ns() // 1000
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, {os.cpu_count()} CPUs, "
        f"{args.samples:,} samples per case, {args.concurrency} clients, load average {load_average()}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        influx, api, copy, floor, pairs = {}, [], {}, [], []
        if not args.stages_only:
            influx = {r.batch: r for r in bench_influxdb(args, now_us, Path(tmp))}
            api = bench_api("postgresql", args, now_us, Path(tmp)) + bench_api("sqlite", args, now_us, Path(tmp))
            if args.workers > 1:  # production runs several Daphne processes; SQLite takes one writer at a time
                api += bench_api("postgresql", args, now_us, Path(tmp), args.workers, (5000,))
            copy = {r.batch: r for r in bench_copy(args, now_us)}
            floor = bench_storage_sql(args, now_us, Path(tmp))
            if args.rounds:
                print(
                    f"\nThe target's cells, {args.rounds} rounds, each case right after an InfluxDB case:", flush=True
                )
                pairs = bench_paired(args, now_us, Path(tmp))
        stages = {}
        if args.stages:
            for backend in ("postgresql", "sqlite"):
                for fmt in sorted(args.formats):
                    stages[(backend, fmt)] = bench_stages(backend, fmt, args, now_us, Path(tmp))
            stages = {case: row for case, row in stages.items() if row}
    names = {
        "influxdb": f"InfluxDB 1.6 `/write`, line protocol (1 influxd process, Go threads on all {os.cpu_count()} CPUs)",
        "COPY": "psycopg COPY, bare table (PostgreSQL)",
        "SQL": "storage SQL alone, no HTTP/JSON/validation (PostgreSQL)",
    }
    endpoints = {"json": "JSON `/api/v1/ingest`", "lp": "line protocol `/api/v2/write`"}

    def ratio(r: Result, base: dict[int, Result]) -> str:
        return f"{r.rate / base[r.batch].rate:.2f}×" if r.batch in base else "n/a"

    if influx or api or copy or floor:
        print("\n| Path | Batch | Samples/s | vs. InfluxDB | vs. bare COPY on PostgreSQL | CPU steal % |")
        print("|---|---:|---:|---:|---:|---:|")
        for r in [*influx.values(), *copy.values(), *floor, *api]:
            processes = "1 Daphne process" if r.workers == 1 else f"{r.workers} Daphne processes"
            name = names.get(r.backend, f"Pulseboard {endpoints[r.fmt]} ({r.backend}, {processes})")
            steal = "n/a" if r.steal is None else r.steal
            print(f"| {name} | {r.batch:,} | {r.rate:,.0f} | {ratio(r, influx)} | {ratio(r, copy)} | {steal} |")
    print_headline(pairs)
    print_stages(stages)
    print(f"\nload average at the end: {load_average()}")
    drop_postgres(args.pg)


if __name__ == "__main__":
    main()
