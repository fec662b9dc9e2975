"""Real servers for end-to-end tests: Daphne (and the collector agent) as subprocesses on loopback."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return result.stdout


@dataclass
class Server:
    """A Daphne process serving monitor.asgi on a loopback port, with its own database."""

    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/live/"

    def start(self) -> Server:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "monitor.asgi:application"],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daphne exited: {self.process.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("daphne did not answer /healthz within 30 s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def project_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Environment for a server with its own SQLite file (or DATABASE_URL/REDIS_URL given in extra)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        DJANGO_SETTINGS_MODULE="monitor.settings",
        PULSEBOARD_VAR_DIR=str(tmp_path),
        SQLITE_PATH=str(tmp_path / "e2e.sqlite3"),
        PYTHONUNBUFFERED="1",
        LOG_LEVEL="WARNING",
    )
    env.update(extra)
    return env


def bench_env(tmp_path: Path, redis_url: str, prefix: str = "bench", **extra: str) -> dict[str, str]:
    """project_env for a benchmark server: DEBUG off, no rate limit or background jobs, its own layer prefix."""
    return project_env(
        tmp_path,
        DEBUG="0",
        SECRET_KEY="bench-" + "x" * 40,
        PULSEBOARD_RATE_LIMIT_PER_S="0",
        PULSEBOARD_BACKGROUND="0",
        REDIS_URL=redis_url,
        CHANNEL_LAYER_PREFIX=f"{prefix}{uuid.uuid4().hex[:8]}",
        **extra,
    )


@contextmanager
def running_server(env: dict[str, str]) -> Iterator[Server]:
    manage(env, "migrate", "--noinput")
    server = Server(env).start()
    try:
        yield server
    finally:
        server.stop()


def login_cookies(server: Server, username: str, password: str) -> dict[str, str]:
    """Sign in through the login form and return the session cookies."""
    with httpx.Client(base_url=server.url, follow_redirects=False) as client:
        page = client.get("/accounts/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        response = client.post(
            "/accounts/login/", data={"username": username, "password": password, "csrfmiddlewaretoken": token}
        )
        assert response.status_code == 302, response.text[:500]
        return dict(client.cookies)
