"""Throwaway services for fault tests: a private redis-server, a cuttable TCP proxy, a private Mosquitto.

The shared Redis and PostgreSQL serve other test runs at the same time, so a
fault test never stops them: it breaks its own redis-server, or a proxy that
stands between the server under test and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from tests.servers import free_port
from tests.servers import manage as run_manage


def wait_port(port: int, up: bool = True, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} did not go {'up' if up else 'down'} within {timeout_s} s")


class RedisServer:
    """A redis-server on a free loopback port that a test may stop and start again (same port)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
            wait_port(self.port, up=False)
        self.process = None


class Mosquitto:
    """A private Mosquitto broker on a free port that a test may stop and start again."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Mosquitto:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        config = self.workdir / "mosquitto.conf"
        config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.process = subprocess.Popen(
            [binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
            wait_port(self.port, up=False)
        self.process = None


class TcpProxy:
    """Forward a free loopback port to a target on its own event loop thread; cut() drops every connection and refuses new ones."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._thread.start()

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

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


# --- The stack under test: Daphne workers, an agent, a viewer ---------------------------------------

REPO = Path(__file__).resolve().parent.parent


class Worker:
    """One Daphne process on a fixed loopback port, logging to a file; start() again after stop() or kill()."""

    def __init__(self, env: dict[str, str], workdir: Path, name: str = "worker") -> None:
        self.env = env
        self.port = free_port()
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/live/"

    def start(self) -> Worker:
        log = open(self.log_path, "a")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "monitor.asgi:application"],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daphne exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("daphne did not answer /healthz within 60 s")

    def terminate(self, timeout_s: float = 30) -> int | None:
        """SIGTERM and wait: the graceful shutdown."""
        if self.process is None or self.process.poll() is not None:
            return None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def kill(self) -> None:
        """SIGKILL: the worker dies with whatever it held."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


FIXED_SECRET_KEY = "fault-tests-only-" + "k" * 40  # sessions made in a template stay valid in its copies
_templates: dict[str, tuple[Path, str, str]] = {}  # "sqlite" -> (migrated file, token, session), per test process


def prepare_database(env: dict[str, str], workdir: Path) -> tuple[str, str]:
    """Migrate (SQLite: copy a template migrated once per process), then return (agent token secret, staff session key).

    Sets env["SECRET_KEY"], so call it before starting servers with env.
    """
    env["SECRET_KEY"] = FIXED_SECRET_KEY
    sqlite = "DATABASE_URL" not in env
    if sqlite and "sqlite" in _templates:
        template, token, session = _templates["sqlite"]
        shutil.copyfile(template, env["SQLITE_PATH"])
        return token, session
    code = (
        "from django.core.management import call_command\n"
        "call_command('migrate', interactive=False, verbosity=0)\n"
        "from dashboard.models import AgentToken\n"
        "print(AgentToken.issue('fault agent')[1])\n"
        "from django.contrib.auth import get_user_model, SESSION_KEY, BACKEND_SESSION_KEY, HASH_SESSION_KEY\n"
        "from django.contrib.sessions.backends.db import SessionStore\n"
        "u, _ = get_user_model().objects.get_or_create(username='watcher', defaults={'is_staff': True})\n"
        "s = SessionStore(); s[SESSION_KEY] = str(u.pk)\n"
        "s[BACKEND_SESSION_KEY] = 'django.contrib.auth.backends.ModelBackend'\n"
        "s[HASH_SESSION_KEY] = u.get_session_auth_hash(); s.create(); print(s.session_key)\n"
    )
    token, session = run_manage(env, "shell", "-c", code).strip().splitlines()[-2:]
    if sqlite:
        template = Path(tempfile.mkdtemp(prefix="pulseboard-template-")) / "template.sqlite3"
        shutil.copyfile(env["SQLITE_PATH"], template)
        _templates["sqlite"] = (template, token, session)
    return token, session


class Agent:
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
        log = open(self.log_path, "a")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "runcollectors", "--config", str(self.config)],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return self

    def terminate(self, timeout_s: float = 60) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

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


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


async def async_wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


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
        import websockets

        while not self._stop:
            url = self.ws_urls[self.url_index % len(self.ws_urls)]
            origin = url.replace("ws://", "http://").split("/ws/")[0]
            try:
                async with websockets.connect(
                    url, origin=origin, additional_headers={"Cookie": f"sessionid={self.session_key}"}, open_timeout=5
                ) as ws:
                    hello = json.loads(await ws.recv())
                    assert hello["type"] == "hello", hello
                    self.connects += 1
                    self.connected_to = url
                    message = {
                        "type": "subscribe",
                        "id": self.connects,
                        "metrics": self.keys,
                        "history_s": self.history_s,
                    }
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
            except asyncio.CancelledError:
                raise
            except Exception:
                pass
            self.connected_to = None
            # Try the next worker: the one we were on may be gone for good.
            self.url_index += 1
            await asyncio.sleep(0.2)
