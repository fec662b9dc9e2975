"""Memory per idle viewer connection: Pulseboard, a raw `websockets` server and the naive Channels app, side by side.

For each system: start the server alone (Pulseboard: Daphne + monitor.asgi +
Redis pub/sub layer + a fresh SQLite file, PULSEBOARD_BACKGROUND=0), open a
few warm-up connections and close them (so first-use costs such as imports,
the hub's tasks and the database connection are not charged to the
connections), take the baseline, open N idle viewers from a separate client
process (Pulseboard: session cookie, protocol v1 `subscribe` to 10 metrics
that exist, history_s 0), wait for the server to settle, and report

  RSS delta / N    what the operating system sees (psutil, the server process)
  heap delta / N   what Python allocated (tracemalloc, in a second run of the
                   server with tracing on, since tracing itself costs memory)

plus, with --top, the allocation sites and object types that grew most per
connection, and with --anatomy (Daphne systems, an extra run of a few hundred
viewers) what one idle connection holds of its own, by the attribute path that
reaches it from its protocol (`protocol['transport']['producer']...`): objects
shared with a second connection or older than the viewers are left out. The server runs under this script (`--serve`), which starts
tracemalloc when asked and installs a SIGUSR1 handler that collects garbage
and dumps a snapshot and object counts; nothing in the project changes.

Usage:
    python bench/connmem.py                          # 1,000 viewers, all three systems (+ raw-nodeflate)
    python bench/connmem.py -n 10000 --systems pulseboard,raw,raw-nodeflate --frames 0   # 10,000 idle viewers
    python bench/connmem.py --keys 0,250,1000,10000  # bytes per held key beyond the idle socket, raw beside
    python bench/connmem.py --systems pulseboard --top 25
    python bench/connmem.py --systems pulseboard --frames 0 --anatomy   # what an idle socket holds, by path
    python bench/connmem.py --env MALLOC_ARENA_MAX=2  # extra server environment

File descriptors: each socket is one descriptor in the server and one in the
client process, so both raise their soft RLIMIT_NOFILE to the hard limit
(printed; 10,000 viewers need a hard limit above ~10,100). Everything stays
on loopback: beyond SOURCE_PORTS_PER_ADDRESS viewers the client spreads its
sockets over several source addresses (127.0.0.2, 127.0.0.3, ...) so the
ephemeral ports of one address never run short.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing as mp
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil
import websockets

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dashboard.testing import bench_env, free_port, login_cookies, manage, stop_process, wait_port  # noqa: E402

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
VIEWER, PASSWORD = "bench", "bench-pass-123"
METRICS = 10  # per viewer, as in bench/fanout.py
WARMUP_CONNECTIONS = 20
SETTLE_S = 3.0  # after the last viewer is subscribed, before measuring
DUMP_TIMEOUT_S = 60.0
CLIENT_TIMEOUT_S = 1800.0  # the longest the client may take to open one batch of viewers (10,000 under load)
OPEN_WAVE = 50  # handshakes in flight at once (a listen backlog overflows beyond a few hundred)
SOURCE_PORTS_PER_ADDRESS = 20_000  # of the ~28,000 ephemeral ports (32768-60999), leaving room for TIME_WAIT
ANATOMY_VIEWERS = 200  # --anatomy's run: enough to tell one connection's objects from shared ones
KEYS_PER_RUN = 1_000_000  # held keys in all per --keys row: viewers per row are min(-n, this / keys), at least 50


def raise_fd_limit() -> tuple[int, int]:
    """Raise this process's soft limit of open files to its hard limit (a socket is a file); return both."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# --- The server side: run a server with a dump-on-SIGUSR1 hook ------------------------


def serve(dump_dir: Path, trace: int, argv: list[str]) -> None:
    """Run a server in this process; SIGUSR1 writes gc'd object counts (and a tracemalloc snapshot) to dump_dir."""
    import tracemalloc

    raise_fd_limit()
    if trace:
        tracemalloc.start(trace)
    counter = [0]
    anatomy = os.environ.get("CONNMEM_ANATOMY") == "1"
    before: list[object] = []  # --anatomy: what existed at the baseline, kept alive so that no id is reused

    def type_name(o: object) -> str:
        kind = type(o)
        return f"{kind.__dict__.get('__module__', '?')}.{kind.__qualname__}"

    def dump(signum: int, frame: Any) -> None:
        # The server freezes long-lived objects (dashboard/fastpaths/gcpolicy.py); frozen ones are neither collected
        # nor listed by gc.get_objects(), so thaw, collect and count, then freeze again as the policy would.
        frozen = gc.get_freeze_count() > 0
        gc.unfreeze()
        gc.collect()
        rss = psutil.Process().memory_info().rss  # before this handler allocates anything
        counter[0] += 1
        path = dump_dir / f"dump{counter[0]}"
        if tracemalloc.is_tracing():
            tracemalloc.take_snapshot().dump(str(path) + ".snapshot")
        info = {"rss": rss, "types": Counter(type_name(o) for o in gc.get_objects())}
        if anatomy and counter[0] == 1:
            objects = gc.get_objects()
            before.extend(objects)
            for o in objects:
                before.extend(gc.get_referents(o))
        elif anatomy and counter[0] == 2:
            (dump_dir / "anatomy.txt").write_text(connection_anatomy({id(o) for o in before}, type_name))
        if frozen:
            gc.freeze()
        (Path(str(path) + ".json.tmp")).write_text(json.dumps(info))
        os.replace(str(path) + ".json.tmp", str(path) + ".json")

    signal.signal(signal.SIGUSR1, dump)
    if argv[0] == "raw":
        import runpy

        sys.argv = [str(ROOT / "bench" / "raw_server.py"), *argv[1:]]
        runpy.run_path(sys.argv[0], run_name="__main__")
    else:
        from daphne.cli import CommandLineInterface

        CommandLineInterface().run(argv[1:])


def connection_anatomy(baseline: set[int], type_name: Any, lines: int = 60) -> str:
    """Return what one idle connection holds of its own, by the attribute path that reaches it (--anatomy).

    Walks the objects reachable from one Daphne WebSocket protocol and its
    entry in Daphne's connection table (which holds the application's task),
    stopping at what existed at the baseline and at the other connections,
    and keeps what a second connection does not also reach: shared objects
    (a KeySet, the factory's options) are left out, as they should be.
    Sizes are sys.getsizeof, so a dict counts its table but not its values.
    """
    import types

    from daphne.ws_protocol import WebSocketProtocol

    protocols = [o for o in gc.get_objects() if isinstance(o, WebSocketProtocol)]
    if len(protocols) < 3:
        return f"only {len(protocols)} WebSocket protocols: nothing to compare\n"
    server = protocols[0].server
    roots = {id(p) for p in protocols} | {id(server.connections.get(p)) for p in protocols}
    stop = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.CodeType)

    def reach(protocol: object) -> dict[int, tuple[object, str]]:
        seen: dict[int, tuple[object, str]] = {}
        frontier = [(protocol, "protocol"), (server.connections.get(protocol), "connections[protocol]")]
        for obj, label in frontier:
            seen[id(obj)] = (obj, label)
        while frontier:
            found = []
            for obj, label in frontier:
                if isinstance(obj, dict):
                    named = [(v, f"{label}[{k!r}]" if isinstance(k, str) else label) for k, v in obj.items()]
                    named += [(k, label) for k in obj]
                elif isinstance(obj, types.CoroutineType):
                    named = [(r, f"{label}>{obj.cr_code.co_qualname}") for r in gc.get_referents(obj)]
                elif isinstance(getattr(obj, "__dict__", None), dict) and not isinstance(obj, stop):
                    named = [(obj.__dict__, label)] + [
                        (r, label) for r in gc.get_referents(obj) if r is not obj.__dict__
                    ]
                else:
                    slots = [
                        name for k in type(obj).__mro__ for name in getattr(k, "__slots__", ()) if name != "__weakref__"
                    ]
                    named = [(getattr(obj, n), f"{label}.{n}") for n in slots if isinstance(n, str) and hasattr(obj, n)]
                    named += [(r, label) for r in gc.get_referents(obj)]
                for r, name in named:
                    i = id(r)
                    if i in seen or i in baseline or isinstance(r, stop) or (i in roots and r is not obj):
                        continue
                    seen[i] = (r, name)
                    found.append((r, name))
            frontier = found
        return seen

    one, other = reach(protocols[len(protocols) // 2]), reach(protocols[len(protocols) // 2 + 1])
    own = [(sys.getsizeof(o), type_name(o), label) for i, (o, label) in one.items() if i not in other]
    by_path: Counter[str] = Counter()
    by_type: Counter[str] = Counter()
    for size, kind, label in own:
        by_path[label.replace("protocol.__dict__", "protocol")] += size
        by_type[kind] += size
    out = [f"{sum(by_path.values())} B in {len(own)} objects of its own ({len(one) - len(own)} reached are shared)"]
    out += [f"{size:8d} B  {path}" for path, size in by_path.most_common(lines)]
    out += ["", "by type:"] + [f"{size:8d} B  {kind}" for kind, size in by_type.most_common(lines // 3)]
    return "\n".join(out) + "\n"


# --- The client side: N idle viewers in another process --------------------------------


def source_address(number: int) -> tuple[str, int] | None:
    """Return the loopback source address of the number-th viewer (None: the kernel's choice, 127.0.0.1)."""
    group = number // SOURCE_PORTS_PER_ADDRESS
    return None if group == 0 else (f"127.0.0.{1 + group}", 0)


async def open_viewer(spec: dict[str, Any], held: list, warmup: bool = False, number: int = 0) -> bool:
    local = source_address(number)
    for attempt in range(5):  # a burst of handshakes can overflow a listen backlog
        try:
            ws = await websockets.connect(
                spec["url"],
                additional_headers=spec["headers"],
                open_timeout=60,
                compression=spec["compression"],
                max_size=2**24,  # a 10,000-key `subscribed` frame is ~1 MB
                **({"local_addr": local} if local else {}),
            )
            break
        except (OSError, EOFError, websockets.InvalidHandshake, TimeoutError):
            if attempt == 4:
                return False
            await asyncio.sleep(0.5 + attempt)
    try:
        # Warm-up sockets hold one key: the first subscribe loads the key index and starts the hub's
        # work, a per-process cost; their keys' memory, freed, must not be reused by the measured ones.
        subscribe, keys = (
            (spec.get("warmup"), 1) if warmup and spec.get("warmup") else (spec["subscribe"], spec["keys"])
        )
        if subscribe:
            subscribe = subscribe.replace("{n}", f"{number:05d}")  # --distinct: each viewer's own key
            hello = json.loads(await ws.recv())
            assert hello["type"] == "hello", hello
            await ws.send(subscribe)
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] == "subscribed":
                    assert len(frame["metrics"]) == keys, (len(frame["metrics"]), keys)
                    break
                if frame["type"] == "error":
                    raise RuntimeError(f"subscribe failed: {frame}")
            # The server answers messages in order, and a subscribe's history replay is part of it: the pong
            # says the replay is over, so its transient state (keys held back, the replay's maps) is not
            # counted as what a held key costs. Subscribes take turns, so the last ones wait for all others.
            await ws.send(json.dumps({"type": "ping", "id": "settled"}))
            while json.loads(await ws.recv())["type"] != "pong":
                pass
    except websockets.ConnectionClosed:
        return False  # counted: the figures are divided by the viewers that stayed connected
    held.append(ws)
    return True


async def client_main(conn, spec: dict[str, Any]) -> None:
    held: list = []
    opened = 0  # viewers opened so far, for their source addresses
    while True:
        command, n = await asyncio.to_thread(conn.recv)
        if command in ("open", "warmup"):
            results = []
            for wave in range(0, n, OPEN_WAVE):
                size = min(OPEN_WAVE, n - wave)
                results += await asyncio.gather(
                    *(open_viewer(spec, held, command == "warmup", opened + i) for i in range(size))
                )
                opened += size
            conn.send(sum(results))
        elif command == "close":
            await asyncio.gather(*(ws.close() for ws in held), return_exceptions=True)
            held.clear()
            conn.send(0)
        else:
            return


def client_process(conn, spec: dict[str, Any]) -> None:
    raise_fd_limit()
    asyncio.run(client_main(conn, spec))


def ask(conn, client: mp.Process, command: str, n: int) -> int:
    """Send the client a command and return its answer; raise if it died (rather than wait forever)."""
    conn.send((command, n))
    deadline = time.monotonic() + CLIENT_TIMEOUT_S
    while not conn.poll(1.0):
        if not client.is_alive():
            raise RuntimeError(f"the client process died (exit code {client.exitcode}) during {command!r}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the client did not finish {command!r} of {n} in {CLIENT_TIMEOUT_S:.0f} s")
    return conn.recv()


# --- One system ------------------------------------------------------------------------


def request_dump(process: subprocess.Popen, dump_dir: Path, number: int) -> dict[str, Any]:
    process.send_signal(signal.SIGUSR1)
    path = dump_dir / f"dump{number}.json"
    deadline = time.monotonic() + DUMP_TIMEOUT_S
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the server wrote no dump")
        time.sleep(0.1)
    return json.loads(path.read_text())


def measure(
    name: str,
    n: int,
    trace: int,
    extra_env: dict[str, str],
    top: int,
    keys: int = METRICS,
    distinct: bool = False,
    anatomy: bool = False,
) -> dict[str, Any]:
    """Start one system, connect n idle viewers, return RSS (and heap) growth per connection.

    Pulseboard's viewers each hold `keys` metrics through one glob (`bench.*`: devices of 10 metrics
    each, as a fleet is); 0 keys is a socket that only said hello. With `distinct`, each viewer also
    holds one key of its own (`solo.dev-<n>.m0`), so no two hold the same set: nothing is shared.
    """
    tmp = Path(tempfile.mkdtemp(prefix=f"connmem-{name}-"))
    port = free_port()
    env = bench_env(tmp, REDIS_URL, prefix="connmem", SQLITE_PATH=str(tmp / "db.sqlite3"), **extra_env)
    if anatomy:
        env["CONNMEM_ANATOMY"] = "1"
    token = ""
    if name == "pulseboard":
        manage(env, "migrate", "--noinput", "-v", "0")
        manage(
            env,
            "shell",
            "-c",
            "from django.contrib.auth import get_user_model\n"
            f"get_user_model().objects.create_user({VIEWER!r}, password={PASSWORD!r})",
        )
        manage(env, "issuetoken", "connmem", "--output", str(tmp / "token"))
        token = (tmp / "token").read_text().strip()
    if name.startswith("raw"):
        target = ["raw", str(port)]
    else:
        app = "monitor.asgi:application" if name == "pulseboard" else "bench.naive_app:application"
        target = ["daphne", "-b", "127.0.0.1", "-p", str(port), app]
    log = tmp / "server.log"
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(tmp), str(trace), *target],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(log, "w"),
    )
    client = None
    try:
        wait_port(port, timeout_s=120, process=process, log_path=log)  # under tracemalloc a busy machine is slow
        base = f"http://127.0.0.1:{port}"
        if name == "pulseboard":
            old = (time.time_ns() // 1000) - 10_000_000
            samples = [
                {"source": f"bench.dev-{i // 10:05d}", "metric": f"m{i % 10}", "ts": old, "value": 0.0}
                for i in range(keys)
            ]
            if distinct and keys:
                samples += [
                    {"source": f"solo.dev-{i:05d}", "metric": "m0", "ts": old, "value": 0.0}
                    for i in range(WARMUP_CONNECTIONS + n)
                ]
            for start in range(0, len(samples), 5_000):
                body = {"precision": "us", "samples": samples[start : start + 5_000]}
                response = httpx.post(
                    base + "/api/v1/ingest", json=body, headers={"Authorization": f"Token {token}"}, timeout=120
                )
                assert response.status_code == 200 and not response.json()["rejected"], response.text
            cookies = "; ".join(f"{k}={v}" for k, v in login_cookies(base, VIEWER, PASSWORD).items())
            spec = {
                "url": f"ws://127.0.0.1:{port}/ws/live/",
                "headers": {"Cookie": cookies, "Origin": base},
                "subscribe": json.dumps(
                    {"type": "subscribe", "metrics": ["bench.*", *(["solo.dev-{n}.m0"] if distinct else [])]}
                    | {"history_s": 0}
                )
                if keys
                else None,
                "keys": keys + 1 if distinct and keys else keys,
                "warmup": json.dumps({"type": "subscribe", "metrics": ["bench.dev-00000.m0"], "history_s": 0})
                if keys not in (0, METRICS)
                else None,
            }
        else:
            spec = {
                "url": f"ws://127.0.0.1:{port}{'/ws/' if name == 'naive' else '/'}",
                "headers": {},
                "subscribe": None,
                "keys": 0,
            }
        # Viewers offer permessage-deflate as browsers do: Daphne declines it, the raw server accepts it and
        # keeps ~46 KB of zlib state per socket. raw-nodeflate is the raw server with viewers that do not offer it.
        spec["compression"] = None if name == "raw-nodeflate" else "deflate"
        parent, child = mp.get_context("spawn").Pipe()
        client = mp.get_context("spawn").Process(target=client_process, args=(child, spec), daemon=True)
        client.start()
        # A warm-up socket that failed changes nothing: they are closed before the baseline.
        ask(parent, client, "warmup", WARMUP_CONNECTIONS)
        ask(parent, client, "close", 0)
        time.sleep(SETTLE_S)
        before = request_dump(process, tmp, 1)
        started = time.monotonic()
        connected = ask(parent, client, "open", n)
        opened_s = time.monotonic() - started
        time.sleep(SETTLE_S)
        after = request_dump(process, tmp, 2)
        if anatomy:
            print(f"\n## {name}: what one idle connection holds of its own (of {connected}; --anatomy)")
            print((tmp / "anatomy.txt").read_text(), end="", flush=True)
        result: dict[str, Any] = {
            "system": name,
            "connected": connected,
            "rss_mb_after": round(after["rss"] / 2**20, 1),
            "rss_kb_per_conn": round((after["rss"] - before["rss"]) / connected / 1024, 1),
            "tracemalloc": trace,
            "open_s": round(opened_s, 1),
        }
        types = Counter(after["types"])
        types.subtract(before["types"])
        result["objects_per_conn"] = round(sum(types.values()) / connected, 1)
        if trace:
            import tracemalloc

            first = tracemalloc.Snapshot.load(str(tmp / "dump1.snapshot"))
            second = tracemalloc.Snapshot.load(str(tmp / "dump2.snapshot"))
            diff = second.compare_to(first, "traceback")
            result["heap_kb_per_conn"] = round(sum(d.size_diff for d in diff) / connected / 1024, 1)
            if top:
                print_owners(diff, connected, top, name)
                print(f"\n## {name}: top allocation sites, bytes per connection (of {connected})")
                for stat in diff[:top]:
                    if stat.size_diff <= 0:
                        continue
                    print(f"{stat.size_diff / connected:8.0f} B {stat.count_diff / connected:6.1f} blocks")
                    for line in stat.traceback.format(limit=trace)[-2 * trace :]:
                        print("        " + line.strip())
        if top:
            print(f"\n## {name}: object types that grew, per connection (gc-tracked objects only)")
            for type_name, count in types.most_common(top):
                if count > 0:
                    print(f"{count / connected:8.2f}  {type_name}")
        return result
    finally:
        if client is not None:
            if client.is_alive():
                parent.send(("exit", 0))
            client.join(10)
            if client.is_alive():
                client.kill()
        stop_process(process)


def header(args: argparse.Namespace, extra: dict[str, str], what: str) -> None:
    """Print when, where, the load and the file-descriptor limits the run had."""
    soft, hard = raise_fd_limit()
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.node()}: {psutil.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total / 2**30:.1f} GiB, Python {platform.python_version()}, "
        f"load {tuple(round(x, 2) for x in os.getloadavg())}, {what}; RLIMIT_NOFILE raised to {soft} "
        f"(hard {hard}) in the server and client processes" + (f", server env {extra}" if extra else ""),
        flush=True,
    )
    if hard < args.viewers + 100:
        print(f"# warning: {args.viewers} viewers need ~{args.viewers + 100} descriptors; the hard limit is {hard}")


def owner_of(traceback: Any) -> str:
    """Name who made an allocation: the newest frame in the project, else the newest frame's package."""
    frames = list(traceback)  # oldest first
    for frame in reversed(frames):
        path = frame.filename
        if path.startswith(str(ROOT)) and "/.venv/" not in path and "/bench/" not in path:
            return f"{Path(path).relative_to(ROOT)}:{frame.lineno}"
    path = frames[-1].filename
    if "site-packages/" in path:
        return "lib " + path.split("site-packages/", 1)[1].split("/", 1)[0]
    return "stdlib " + Path(path).name


def print_owners(diff: list, connected: int, top: int, name: str) -> None:
    """Print bytes per connection by owner: each project line that allocated, or the library that did."""
    owners: Counter[str] = Counter()
    for stat in diff:
        owners[owner_of(stat.traceback)] += stat.size_diff
    print(f"\n## {name}: heap growth per connection by owner (project line, else library)")
    for owner, size in owners.most_common(top):
        if size > 0:
            print(f"{size / connected:8.0f} B  {owner}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--viewers", "-n", type=int, default=1000)
    parser.add_argument("--systems", default="pulseboard,raw,raw-nodeflate,naive")
    parser.add_argument("--frames", type=int, default=8, help="traceback depth for tracemalloc (0: no heap run)")
    parser.add_argument("--top", type=int, default=0, help="print the N biggest allocation sites and object types")
    parser.add_argument(
        "--env", action="append", default=[], help="NAME=VALUE for the servers, e.g. MALLOC_ARENA_MAX=2"
    )
    parser.add_argument(
        "--anatomy",
        action="store_true",
        help=f"also print what one idle connection holds of its own, by attribute path (Daphne systems; an extra "
        f"run of {ANATOMY_VIEWERS} viewers)",
    )
    parser.add_argument(
        "--keys",
        default="",
        help="comma-separated keys per socket (e.g. 0,250,1000,10000): Pulseboard at each, with --systems' raw "
        "ones beside it; prints bytes per held key",
    )
    parser.add_argument(
        "--distinct",
        action="store_true",
        help="with --keys: each viewer also holds one key of its own, so no two sockets hold the same set",
    )
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)
    if args.keys:
        per_key(args, extra)
        return
    header(args, extra, f"{args.viewers} idle viewers")
    rows: dict[str, dict[str, Any]] = {}
    for name in args.systems.split(","):
        rows[name] = measure_both(name, args.viewers, args, extra)
        print(json.dumps(rows[name]), flush=True)
        if args.anatomy and not name.startswith("raw"):
            measure(name, min(args.viewers, ANATOMY_VIEWERS), 0, extra, 0, anatomy=True)
    print("\n| system | connected | RSS KB/conn | Python heap KB/conn | gc objects/conn | RSS after MB | open s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows.values():
        print(
            f"| {r['system']} | {r['connected']} | {r['rss_kb_per_conn']} | {r.get('heap_kb_per_conn', '-')} | "
            f"{r['objects_per_conn']} | {r['rss_mb_after']} | {r['open_s']} |"
        )
    if "pulseboard" in rows:
        p = rows["pulseboard"]
        for other in ("raw", "raw-nodeflate", "naive"):
            if other in rows and rows[other]["rss_kb_per_conn"] > 0:
                o = rows[other]
                line = f"pulseboard / {other}: RSS {p['rss_kb_per_conn'] / o['rss_kb_per_conn']:.2f}x"
                if o.get("heap_kb_per_conn") and p.get("heap_kb_per_conn"):
                    line += f", heap {p['heap_kb_per_conn'] / o['heap_kb_per_conn']:.2f}x"
                print(line)


def measure_both(name: str, n: int, args: argparse.Namespace, extra: dict[str, str], keys: int = METRICS) -> dict:
    """Measure RSS in one run and, with --frames, the Python heap in a second run under tracemalloc."""
    distinct = getattr(args, "distinct", False)
    row = measure(name, n, 0, extra, 0 if args.frames else args.top, keys, distinct)
    if args.frames:
        row["heap_kb_per_conn"] = measure(name, n, args.frames, extra, args.top, keys, distinct)["heap_kb_per_conn"]
    row["load"] = round(os.getloadavg()[0], 2)
    return row


def per_key(args: argparse.Namespace, extra: dict[str, str]) -> None:
    """Measure Pulseboard at several key counts per socket; report memory per held key beyond an idle socket.

    Each row holds about KEYS_PER_RUN keys in all (so 10,000 keys a socket is
    100 sockets, not 1,000 x 10,000); the raw systems of --systems run beside
    it at the idle row's number of viewers.
    """
    counts = [int(k) for k in args.keys.split(",")]
    viewers = {keys: max(50, min(args.viewers, KEYS_PER_RUN // max(keys, 1))) for keys in counts}
    header(
        args,
        extra,
        f"keys per socket {counts}{' (+1 of its own: --distinct)' if args.distinct else ''}, "
        f"viewers per row {list(viewers.values())}",
    )
    rows = []
    for keys in counts:
        row = measure_both("pulseboard", viewers[keys], args, extra, keys)
        row["keys"] = keys
        rows.append(row)
        print(json.dumps(row), flush=True)
    raws = []
    for name in [s for s in args.systems.split(",") if s.startswith("raw")]:
        row = measure_both(name, viewers.get(0, args.viewers), args, extra)
        raws.append(row)
        print(json.dumps(row), flush=True)
    base = next((r for r in rows if r["keys"] == 0), None)
    print(
        "\n| keys per socket | viewers | RSS KB/conn | heap KB/conn | RSS B/key beyond idle | heap B/key beyond idle "
        "| load |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        rss_key = heap_key = "-"
        if base is not None and r["keys"]:
            held = r["keys"] + (1 if args.distinct else 0)
            rss_key = f"{(r['rss_kb_per_conn'] - base['rss_kb_per_conn']) * 1024 / held:.0f}"
            if "heap_kb_per_conn" in r and "heap_kb_per_conn" in base:
                heap_key = f"{(r['heap_kb_per_conn'] - base['heap_kb_per_conn']) * 1024 / held:.0f}"
        print(
            f"| {r['keys']} | {r['connected']} | {r['rss_kb_per_conn']} | {r.get('heap_kb_per_conn', '-')} | "
            f"{rss_key} | {heap_key} | {r['load']} |"
        )
    for r in raws:
        print(
            f"| {r['system']} (no keys) | {r['connected']} | {r['rss_kb_per_conn']} | "
            f"{r.get('heap_kb_per_conn', '-')} | - | - | {r['load']} |"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
    else:
        main()
