"""Real processes for tests and benchmarks: Daphne with the project's settings, the agent, and faults to break them with.

Why here: both tests/ and bench/ need to start a real server, wait for it,
sign in and break things around it, and bench/ must not import from tests/
(a test module is not an API). Like django.test, the helpers live in the
app package both already put on sys.path; nothing in the running server
imports this module, and it reads no settings of its own.

What it holds, once each:
- `project_env` / `bench_env`: the environment of a server (its own SQLite
  file unless DATABASE_URL is given, a chosen REDIS_URL, anything else);
  `manage` runs manage.py in it; `prepare_database` migrates and returns an
  agent token and a staff session (SQLite: from a template migrated once).
- `Server`: one Daphne on a loopback port, waited for through /healthz,
  logging to a file; stop (SIGTERM), kill (SIGKILL), pause/resume
  (SIGSTOP/SIGCONT), start again on the same port; `running_server` for the
  common migrate-start-stop; `stop_process`, its stop, for any other server
  a benchmark starts.
- Private services to break, since the shared Redis, PostgreSQL and
  Mosquitto serve other runs: `RedisServer`, `Mosquitto`, and a cuttable
  `TcpProxy` (in front of PostgreSQL, say).
- Clients: `login_cookies`, `open_live_socket`, `ResumeViewer` (a protocol
  client that resumes with `since`), the collector `Agent`.
- Waits: `wait_port`, `wait_until`, `async_wait_until` (deadlines, never
  fixed sleeps).
- `steal_meter`: how much CPU the hypervisor gave other guests during a
  benchmark step, printed beside the load average.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
import psutil
import websockets

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 60.0  # Daphne imports Django and the app: seconds on a loaded 2-core machine
STOP_TIMEOUT_S = 30.0  # graceful shutdown drains writers and closes sockets (1001) first
MANAGE_TIMEOUT_S = 180.0  # migrate on PostgreSQL under load
VIEWER, VIEWER_PASSWORD = "watcher", "watch-pass-123"  # the staff user prepare_database signs in
FIXED_SECRET_KEY = "test-servers-only-" + "k" * 40  # sessions made in a template stay valid in its copies

T = TypeVar("T")


# --- Ports and waits ----------------------------------------------------------------------------


def free_port() -> int:
    """Return a loopback port nobody listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


def wait_port(
    port: int,
    up: bool = True,
    timeout_s: float = 10.0,
    process: subprocess.Popen | None = None,
    log_path: Path | None = None,
) -> None:
    """Wait until the port accepts connections (or refuses them, up=False); fail early if process exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_open(port) == up:
            return
        if process is not None and process.poll() is not None:
            break
        time.sleep(0.05)
    tail = log_path.read_text(errors="replace")[-2000:] if log_path and log_path.exists() else ""
    if process is not None and process.poll() is not None:
        raise RuntimeError(f"the process for port {port} exited with {process.returncode}: {tail}")
    raise RuntimeError(f"port {port} did not go {'up' if up else 'down'} within {timeout_s} s: {tail}")


def wait_until(predicate: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.2) -> T:
    """Return predicate()'s first truthy value; fail after timeout_s naming what was awaited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


async def async_wait_until(predicate: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.2) -> T:
    """wait_until for a coroutine: the event loop keeps running between checks."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


# --- Benchmark conditions ---------------------------------------------------------------------------


def steal_meter() -> Callable[[], float | None]:
    """Start counting CPU steal; the function returned gives the % of the machine's CPU time stolen since.

    Steal is time this virtual machine's vCPUs wanted to run and the host ran
    another guest instead. The load average does not show it, and it comes
    exactly when a benchmark holds both cores (2026-12-06, a fan-out step at
    1,000 viewers: 17-33 % stolen, 1-2 % with the machine idle; the same tree's
    p99 moved from 0.3 to 4 s between such steps). The benchmarks print it
    beside each figure so that a run the host slowed can be told apart. None
    where the kernel does not report steal.
    """
    before = _cpu_total_and_steal()
    if before is None:
        return lambda: None

    def stolen_pct() -> float:
        total, steal = _cpu_total_and_steal()
        return round(100 * (steal - before[1]) / (total - before[0]), 1) if total > before[0] else 0.0

    return stolen_pct


def _cpu_total_and_steal() -> tuple[float, float] | None:
    times = psutil.cpu_times()
    if not hasattr(times, "steal"):
        return None
    # Linux counts guest time inside user time too: left out, so nothing is counted twice.
    return sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0), times.steal


SETTLED_CPU_PCT = 15.0  # machine-wide CPU busy below which settle() calls the machine quiet


def settle(limit_s: float = 60.0, quiet_pct: float = SETTLED_CPU_PCT) -> float:
    """Wait until the machine is quiet before a measurement; return how busy it was (%) when it started.

    The previous case's leftovers ran into the next one's figures: a naive
    server draining seconds of backlog in the fan-out bench, and in the
    ingest bench PostgreSQL's checkpoint and autovacuum after its cases,
    while SQLite's ran (SQLite at batch 5,000: 150-164k samples/s after them,
    175-240k alone). Waits at most `limit_s`, then says so and goes on.
    """
    deadline = time.monotonic() + limit_s
    while (busy := psutil.cpu_percent(interval=1.0)) > quiet_pct:
        if time.monotonic() > deadline:
            print(f"# the machine is still {busy:.0f} % busy after {limit_s:.0f} s; measuring anyway", flush=True)
            break
    return busy


# --- Environment and the database ---------------------------------------------------------------


def project_env(workdir: Path, **extra: str) -> dict[str, str]:
    """Return the environment of a server with its own SQLite file in workdir (or DATABASE_URL/REDIS_URL in extra).

    The run's own DATABASE_URL and REDIS_URL are dropped: a server never shares the test database.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        DJANGO_SETTINGS_MODULE="monitor.settings",
        PULSEBOARD_VAR_DIR=str(workdir),
        SQLITE_PATH=str(workdir / "server.sqlite3"),
        PYTHONUNBUFFERED="1",
        LOG_LEVEL="WARNING",
    )
    env.update(extra)
    return env


def bench_env(workdir: Path, redis_url: str, prefix: str = "bench", **extra: str) -> dict[str, str]:
    """project_env for a benchmark server: DEBUG off, no rate limit or background jobs, its own layer prefix."""
    return project_env(
        workdir,
        DEBUG="0",
        SECRET_KEY="bench-" + "x" * 40,
        PULSEBOARD_RATE_LIMIT_PER_S="0",
        PULSEBOARD_BACKGROUND="0",
        REDIS_URL=redis_url,
        CHANNEL_LAYER_PREFIX=f"{prefix}{uuid.uuid4().hex[:8]}",
        **extra,
    )


def manage(env: dict[str, str], *args: str, timeout_s: float = MANAGE_TIMEOUT_S) -> str:
    """Run manage.py with env and return its output; raise with its output if it fails."""
    result = subprocess.run(  # noqa: PLW1510 - the return code is checked below
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s
    )
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return result.stdout


_templates: dict[str, tuple[Path, str, str]] = {}  # token name -> (migrated SQLite file, token, session), per process


def prepare_database(env: dict[str, str], token_name: str = "test agent") -> tuple[str, str]:
    """Migrate, issue an agent token and sign the staff user VIEWER in; return (token secret, session key).

    One manage.py process does it all (Django starts once). On SQLite the
    migrated file is kept as a template and copied next time. Sets
    env["SECRET_KEY"] (sessions are signed with it), so call it before
    starting servers with env.
    """
    env["SECRET_KEY"] = FIXED_SECRET_KEY
    sqlite = not env.get("DATABASE_URL")
    if sqlite and token_name in _templates:
        template, token, session = _templates[token_name]
        shutil.copyfile(template, env["SQLITE_PATH"])
        return token, session
    code = (
        "from django.core.management import call_command\n"
        "call_command('migrate', interactive=False, verbosity=0)\n"
        "from dashboard.models import AgentToken\n"
        f"print(AgentToken.issue({token_name!r})[1])\n"
        "from django.contrib.auth import get_user_model, SESSION_KEY, BACKEND_SESSION_KEY, HASH_SESSION_KEY\n"
        "from django.contrib.sessions.backends.db import SessionStore\n"
        f"u, _ = get_user_model().objects.get_or_create(username={VIEWER!r}, defaults={{'is_staff': True}})\n"
        f"u.set_password({VIEWER_PASSWORD!r}); u.save()\n"
        "s = SessionStore(); s[SESSION_KEY] = str(u.pk)\n"
        "s[BACKEND_SESSION_KEY] = 'django.contrib.auth.backends.ModelBackend'\n"
        "s[HASH_SESSION_KEY] = u.get_session_auth_hash(); s.create(); print(s.session_key)\n"
    )
    token, session = manage(env, "shell", "-c", code).strip().splitlines()[-2:]
    if sqlite:
        template = Path(tempfile.mkdtemp(prefix="pulseboard-template-")) / "template.sqlite3"
        shutil.copyfile(env["SQLITE_PATH"], template)
        _templates[token_name] = (template, token, session)
    return token, session


# --- Processes ----------------------------------------------------------------------------------


def stop_process(process: subprocess.Popen | None, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
    """SIGTERM a server and wait for its graceful shutdown; SIGKILL after timeout_s. Return the exit code.

    None when it was not running. Server.stop and the benchmarks' own
    servers (a raw websockets server, the naive app, a server under a
    memory probe: commands Server does not start) stop through this one.
    """
    if process is None or process.poll() is not None:
        return None
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


class Child:
    """A subprocess a test may kill (SIGKILL) or freeze and thaw (SIGSTOP, SIGCONT)."""

    process: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the process dies with whatever it held."""
        if self.running:
            self.process.kill()
            self.process.wait()

    def pause(self) -> None:
        """SIGSTOP: the process holds its sockets open and answers nothing."""
        if self.running:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after pause(); harmless on a process that is not paused."""
        if self.running:
            self.process.send_signal(signal.SIGCONT)


class Server(Child):
    """One Daphne serving monitor.asgi on a fixed loopback port, logging to a file; start() again after stop or kill."""

    def __init__(self, env: dict[str, str], workdir: Path | None = None, name: str = "daphne") -> None:
        self.env = env
        self.workdir = workdir or Path(env["PULSEBOARD_VAR_DIR"])
        self.port = free_port()
        self.log_path = self.workdir / f"{name}.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/live/"

    def start(self, timeout_s: float = START_TIMEOUT_S) -> Server:
        """Start Daphne and wait for /healthz to answer 200 (that first request also starts background jobs)."""
        with open(self.log_path, "a") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "monitor.asgi:application"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daphne exited with {self.process.returncode}: {self.log()[-2000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"daphne did not answer /healthz within {timeout_s} s: {self.log()[-2000:]}")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM and wait for the graceful shutdown; SIGKILL after timeout_s. Return the exit code."""
        return stop_process(self.process, timeout_s)

    def log(self) -> str:
        """Return everything the server wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def manage(self, *args: str) -> str:
        """Run a manage.py command against this server's database and return its output."""
        return manage(self.env, *args)

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Run SQL on the server's own SQLite file (not through the server)."""
        if self.env.get("DATABASE_URL"):
            raise RuntimeError("query() reads the server's SQLite file; this server uses DATABASE_URL")
        with sqlite3.connect(self.env["SQLITE_PATH"], timeout=20) as db:
            return db.execute(sql, params).fetchall()

    def samples(self, key_like: str = "%") -> list[tuple[str, int, float]]:
        """Return (metric key, ts µs, value) of every stored sample whose key matches a LIKE pattern."""
        return self.query(
            "SELECT m.key, s.ts, s.value FROM dashboard_sample s JOIN dashboard_metric m ON m.id = s.metric_id "
            "WHERE m.key LIKE ? ORDER BY m.key, s.ts",
            (key_like,),
        )


@contextmanager
def running_server(env: dict[str, str]) -> Iterator[Server]:
    """Migrate env's database, start a Server and stop it afterwards."""
    manage(env, "migrate", "--noinput")
    server = Server(env).start()
    try:
        yield server
    finally:
        server.stop()


class Agent(Child):
    """`manage.py runcollectors` with a counter collector (values 0, 1, 2, ... logged as produced) and an HTTP sink."""

    def __init__(
        self,
        env: dict[str, str],
        workdir: Path,
        server: str,
        source: str = "fault.counter",
        interval_s: float = 0.05,
        per_batch: int = 2,
        extra_collectors: str = "",
    ) -> None:
        self.env = env
        self.workdir = workdir
        self.source = source
        self.produced_path = workdir / "produced.txt"
        self.log_path = workdir / "agent.log"
        self.config = workdir / "agent.toml"
        counter = (
            f'[[collectors]]\nkind = "counter"\nsource = "{source}"\nmetric = "n"\n'
            f'interval_s = {interval_s}\nper_batch = {per_batch}\nlog_path = "{self.produced_path}"\n'
            if source
            else ""
        )
        self.config.write_text(
            "[agent]\n"
            f'server = "{server}"\n'
            f'token_file = "{workdir / "agent-token"}"\n'
            f'spool_path = "{workdir / "agent-spool.sqlite3"}"\n'
            "batch_size = 200\nflush_interval_s = 0.2\nhealth_interval_s = 1.0\nshutdown_grace_s = 30.0\n"
            'name = "fault-agent"\n\n' + counter + extra_collectors
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> Agent:
        with open(self.log_path, "a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "runcollectors", "--config", str(self.config)],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def terminate(self, timeout_s: float = 60) -> int:
        """SIGTERM and wait: the agent flushes its spool before it exits."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)

    def produced(self) -> list[float]:
        """Values the counter handed to the sink, in order."""
        if not self.produced_path.exists():
            return []
        return [float(line.split()[1]) for line in self.produced_path.read_text().splitlines() if line.strip()]


def loss_and_duplicates(produced: list[float], stored: list[float]) -> tuple[int, int]:
    """Return (produced but not stored, stored more than once)."""
    lost = len(set(produced) - set(stored))
    duplicates = len(stored) - len(set(stored))
    return lost, duplicates


# --- Private services to break ------------------------------------------------------------------


class Service(Child):
    """A private server on a free loopback port that a test may stop, pause, and start again on the same port."""

    scheme = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> Service:
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, process=self.process)
        return self

    def stop(self) -> None:
        """Kill it (thawing it first if paused) and wait until the port is closed."""
        if self.running:
            self.resume()
            self.kill()
            wait_port(self.port, up=False)
        self.process = None


class RedisServer(Service):
    """A redis-server of our own, with nothing saved to disk: a channel layer a test may restart or freeze."""

    scheme = "redis"

    @property
    def url(self) -> str:
        return super().url + "/0"

    def command(self) -> list[str]:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        options = {"port": str(self.port), "bind": "127.0.0.1", "save": "", "appendonly": "no", "daemonize": "no"}
        return [
            binary,
            *(part for name, value in options.items() for part in (f"--{name}", value)),
            "--dir",
            str(self.workdir),
        ]


class Mosquitto(Service):
    """A Mosquitto broker of our own: an MQTT upstream a test may take away and bring back."""

    scheme = "mqtt"

    def command(self) -> list[str]:
        config = self.workdir / "mosquitto.conf"
        config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        return [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(config)]


class TcpProxy:
    """Forward a free loopback port to a target on its own event loop thread; cut() drops every connection and refuses new ones."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._thread.start()

    def _call(self, coro: Awaitable[None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        self._writers |= {client_writer, upstream_writer}
        await asyncio.gather(self._pipe(client_reader, upstream_writer), self._pipe(upstream_reader, client_writer))
        self._writers -= {client_writer, upstream_writer}

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def start(self) -> TcpProxy:
        self._call(self._start())
        return self

    def cut(self) -> None:
        """Drop every open connection and refuse new ones (the port stays closed until start())."""
        self._call(self._cut())

    def close(self) -> None:
        self._call(self._cut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


# --- Clients ------------------------------------------------------------------------------------


class HasUrl(Protocol):
    url: str


def login_cookies(server: HasUrl | str, username: str, password: str) -> dict[str, str]:
    """Sign in through the login form of a server (or base URL) and return the session cookies."""
    base = server if isinstance(server, str) else server.url
    with httpx.Client(base_url=base, follow_redirects=False) as client:
        page = client.get("/accounts/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        response = client.post(
            "/accounts/login/", data={"username": username, "password": password, "csrfmiddlewaretoken": token}
        )
        assert response.status_code == 302, response.text[:500]
        return dict(client.cookies)


async def open_live_socket(server: Server, session_key: str) -> Any:
    """Connect to /ws/live/ as the session's user and read the hello frame."""
    socket_ = await websockets.connect(
        server.ws_url, origin=server.url, additional_headers={"Cookie": f"sessionid={session_key}"}
    )
    hello = json.loads(await socket_.recv())
    assert hello["type"] == "hello", hello
    return socket_


class ResumeViewer:
    """A live client written from docs/protocol.md: keeps a cursor per key, reconnects (to the next URL) and resumes with `since`."""

    def __init__(self, ws_urls: list[str], session_key: str, keys: list[str], history_s: int = 3600) -> None:
        self.ws_urls = ws_urls
        self.session_key = session_key
        self.keys = keys
        self.history_s = history_s
        self.cursors: dict[str, int] = {}
        self.received: dict[str, list[tuple[int, float]]] = {k: [] for k in keys}
        self.live_count = 0
        self.connects = 0
        self.lags = 0
        self.url_index = 0
        self.connected_to: str | None = None
        self._task: asyncio.Task | None = None
        self._stop = False

    def start(self) -> ResumeViewer:
        self._task = asyncio.ensure_future(self._run())
        return self

    async def stop(self) -> None:
        self._stop = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def values(self, key: str) -> list[float]:
        return [v for _, v in self.received[key]]

    async def _run(self) -> None:
        while not self._stop:
            url = self.ws_urls[self.url_index % len(self.ws_urls)]
            origin = url.replace("ws://", "http://").split("/ws/")[0]
            try:
                async with websockets.connect(
                    url, origin=origin, additional_headers={"Cookie": f"sessionid={self.session_key}"}, open_timeout=5
                ) as ws:
                    await self._session(ws, url)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - any failure means: reconnect, as a real client would
                pass
            self.connected_to = None
            # Try the next worker: the one we were on may be gone for good.
            self.url_index += 1
            await asyncio.sleep(0.2)  # a client's reconnect pause, not a synchronisation

    async def _session(self, ws: Any, url: str) -> None:
        hello = json.loads(await ws.recv())
        assert hello["type"] == "hello", hello
        self.connects += 1
        self.connected_to = url
        message: dict[str, Any] = {"type": "subscribe", "id": self.connects, "metrics": self.keys}
        message["history_s"] = self.history_s
        if self.cursors:
            message["since"] = dict(self.cursors)
        await ws.send(json.dumps(message))
        frames = 0
        async for raw in ws:
            frame = json.loads(raw)
            if frame["type"] == "data":
                frames += 1
                await ws.send(json.dumps({"type": "ack", "frame": frames}))
                for batch in frame["batches"]:
                    key = batch["k"]
                    self.received.setdefault(key, []).extend(zip(batch["t"], batch["v"], strict=True))
                    self.cursors[key] = max(self.cursors.get(key, 0), batch["t"][-1])
                    if not frame.get("replay"):
                        self.live_count += len(batch["t"])
            elif frame["type"] == "lag":
                self.lags += 1
