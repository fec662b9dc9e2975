"""Start Pulseboard as one process group: migrate, ensure an admin, then Daphne and the collector agent."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from collectors.agent import DEFAULT_COLLECTORS


class Command(BaseCommand):
    help = (
        "Run the whole embedded Pulseboard: apply migrations, make sure the admin account and a local agent "
        "token exist, then start Daphne on HOST:PORT and a collector agent that posts this host's metrics, "
        "the IoT simulator, the market simulator and Pulseboard's own /metrics (source `pulseboard`) to it. "
        "Ctrl-C or SIGTERM stops both cleanly."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default=settings.HOST, help="address to listen on (default: HOST or 127.0.0.1)")
        parser.add_argument("--port", type=int, default=settings.PORT, help="port (default: PORT or 8000)")
        parser.add_argument("--no-collectors", action="store_true", help="start only the server")
        parser.add_argument("--collectors-config", type=Path, help="TOML for the agent (default: built-in set)")

    def handle(
        self, *args, host: str, port: int, no_collectors: bool, collectors_config: Path | None, **options
    ) -> None:
        self.stdout.write("Applying migrations...")
        call_command("migrate", interactive=False, verbosity=0)
        call_command("ensureadmin")
        call_command("demodashboards")
        token_file = settings.VAR_DIR / "agent-token"
        call_command("issuetoken", "local agent", output=token_file)

        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if not env.get("METRICS_TOKEN"):
            # The built-in agent scrapes /metrics with it. Random per start and only in the children's
            # environment: nobody else learns it, so /metrics stays closed to everyone but staff.
            env["METRICS_TOKEN"] = secrets.token_urlsafe(32)
        children: list[subprocess.Popen] = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "daphne",
                    "-b",
                    host,
                    "-p",
                    str(port),
                    "--proxy-headers",
                    # The agent posts every second; per-request access lines would bury real messages.
                    "--access-log",
                    os.devnull,
                    "monitor.asgi:application",
                ],
                env=env,
            )
        ]
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/"
        if not no_collectors:
            _wait_for_port(host, port)
            command = [sys.executable, "manage.py", "runcollectors", "--server", url, "--token-file", str(token_file)]
            command += ["--config", str(collectors_config or write_default_agent_config(url))]
            children.append(subprocess.Popen(command, env=env, cwd=settings.BASE_DIR))

        user = os.environ.get("ADMIN_USERNAME", "admin")
        self.stdout.write(self.style.SUCCESS(f"\nPulseboard is running at {url}"))
        self.stdout.write(
            f"Log in as {user!r} with ADMIN_PASSWORD (or the password printed when the account was created)."
        )
        self.stdout.write("Admin: " + url + "admin/   Stop: Ctrl-C\n")

        stopping = False

        def stop(signum, frame) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        while not stopping and all(child.poll() is None for child in children):
            time.sleep(0.5)
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in reversed(children):
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
        failed = [c for c in children if c.returncode not in (0, -signal.SIGTERM, None)]
        if failed and not stopping:
            raise SystemExit(f"a Pulseboard process exited with code {failed[0].returncode}")


def write_default_agent_config(url: str) -> Path:
    """Write the built-in agent's config: runcollectors' default set plus a scrape of this server's /metrics."""
    tables = [*DEFAULT_COLLECTORS, SELF_SCRAPE | {"targets": [url.rstrip("/") + "/metrics"]}]
    lines = ["# Written by `manage.py serve` at each start; pass --collectors-config to use your own."]
    for table in tables:
        lines += ["", "[[collectors]]"] + [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    path = settings.VAR_DIR / "serve-agent.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


# Pulseboard's own health on its own boards (docs/ingest.md, "Prometheus exporters"): about 40 series
# and their rates every 10 s. The token comes from the environment, never from the file.
SELF_SCRAPE = {
    "kind": "prometheus",
    "name": "self",
    "interval_s": 10.0,
    "source": "pulseboard",
    "bearer_token_env": "METRICS_TOKEN",
}


def _wait_for_port(host: str, port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    target = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((target, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
