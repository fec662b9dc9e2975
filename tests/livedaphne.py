"""A real Pulseboard server in a subprocess (Daphne on a free loopback port, temp SQLite), for tests that need one.

Clients that cannot be pointed at Django's test client (influxdb-client, the
agent subprocess) talk to it over TCP. It uses its own SQLite file whatever
the test run's database is, so it never touches the test database.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import websockets

from tests.servers import free_port

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


class LiveDaphne:
    """Start, stop and restart Daphne on one port with one SQLite file; query that file directly."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.db_path = workdir / "server.sqlite3"
        self.log_path = workdir / "daphne.log"
        self.process: subprocess.Popen | None = None
        self.env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        self.env.update(
            SQLITE_PATH=str(self.db_path),
            PULSEBOARD_VAR_DIR=str(workdir),
            DEBUG="1",
            PYTHONUNBUFFERED="1",
            DJANGO_SETTINGS_MODULE="monitor.settings",
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def manage(self, *args: str) -> str:
        """Run a manage.py command against this server's database and return its output."""
        done = subprocess.run(  # noqa: PLW1510 - the return code is checked below
            [sys.executable, "manage.py", *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed: {done.stderr[-2000:]}")
        return done.stdout

    def prepare(self, token_name: str = "test agent", session_user: str | None = None) -> tuple[str, str | None]:
        """Migrate, issue an agent token and optionally sign a staff user in, in one process (Django starts once).

        Return (token secret, session cookie value or None).
        """
        code = (
            "from django.core.management import call_command\n"
            "call_command('migrate', interactive=False, verbosity=0)\n"
            "from dashboard.models import AgentToken\n"
            f"print('TOKEN', AgentToken.issue({token_name!r})[1])\n"
        )
        if session_user:
            code += (
                "from django.contrib.auth import get_user_model, SESSION_KEY, BACKEND_SESSION_KEY, HASH_SESSION_KEY\n"
                "from django.contrib.sessions.backends.db import SessionStore\n"
                f"u = get_user_model().objects.create_user({session_user!r}, password='watch-pass-123', is_staff=True)\n"
                "s = SessionStore(); s[SESSION_KEY] = str(u.pk)\n"
                "s[BACKEND_SESSION_KEY] = 'django.contrib.auth.backends.ModelBackend'\n"
                "s[HASH_SESSION_KEY] = u.get_session_auth_hash(); s.create(); print('SESSION', s.session_key)\n"
            )
        found = dict(
            line.split(" ", 1)
            for line in self.manage("shell", "-c", code).splitlines()
            if line.startswith(("TOKEN ", "SESSION "))
        )
        return found["TOKEN"].strip(), found.get("SESSION", "").strip() or None

    def start(self) -> None:
        log = open(self.log_path, "a")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(self.port),
                "monitor.asgi:application",
            ],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daphne exited with {self.process.returncode}: {self.log_path.read_text()[-2000:]}")
            if port_open(self.port):
                return
            time.sleep(0.1)
        raise RuntimeError(f"daphne did not listen on {self.port} within {START_TIMEOUT_S} s")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with sqlite3.connect(self.db_path, timeout=20) as db:
            return db.execute(sql, params).fetchall()

    def samples(self, key_like: str = "%") -> list[tuple[str, int, float]]:
        """Return (metric key, ts µs, value) of every stored sample whose key matches a LIKE pattern."""
        return self.query(
            "SELECT m.key, s.ts, s.value FROM dashboard_sample s JOIN dashboard_metric m ON m.id = s.metric_id "
            "WHERE m.key LIKE ? ORDER BY m.key, s.ts",
            (key_like,),
        )


async def open_live_socket(server: LiveDaphne, session_key: str) -> Any:
    """Connect to /ws/live/ as the session's user and read the hello frame."""
    host = urlparse(server.url).netloc
    socket_ = await websockets.connect(
        f"ws://{host}/ws/live/",
        origin=f"http://{host}",
        additional_headers={"Cookie": f"sessionid={session_key}"},
    )
    hello = json.loads(await socket_.recv())
    assert hello["type"] == "hello", hello
    return socket_
