"""Run collectors and ship their readings to Pulseboard."""

from __future__ import annotations

import asyncio
import logging
import os
import tomllib
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from collectors import registry
from collectors.runner import Runner
from collectors.sinks import BACKOFF_MAX_S, HEALTH_INTERVAL_S, SHUTDOWN_GRACE_S, HttpSink, LocalSink
from collectors.spool import DEFAULT_MAX_READINGS

DEFAULT_COLLECTORS: list[dict[str, Any]] = [{"kind": "system"}, {"kind": "iot_sim"}, {"kind": "market_sim"}]


class Command(BaseCommand):
    help = (
        "Run the configured collectors and ship their readings to a Pulseboard server's ingest API "
        "(--server with a token from --token-file or PULSEBOARD_AGENT_TOKEN), or straight into this "
        "project's database with --in-process. Without --config it runs the system collector and the "
        "IoT and market simulators. See collectors.example.toml and docs/ingest.md."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--config", type=Path, help="TOML file with [agent] and [[collectors]] tables")
        parser.add_argument("--server", help="base URL of the server, e.g. http://127.0.0.1:8000")
        parser.add_argument("--token-file", type=Path, help="file holding the agent token secret")
        parser.add_argument(
            "--in-process", action="store_true", help="write through the local ingest action instead of HTTP"
        )

    def handle(self, *args, **options) -> None:
        logging.getLogger("collectors").setLevel(logging.INFO)
        config: dict[str, Any] = {}
        if options["config"]:
            try:
                config = tomllib.loads(options["config"].read_text())
            except FileNotFoundError:
                raise CommandError(f"{options['config']} does not exist; start from collectors.example.toml") from None
            except tomllib.TOMLDecodeError as exc:
                raise CommandError(f"{options['config']} is not valid TOML: {exc}") from None
        agent = config.get("agent", {})
        try:
            collectors = [registry.build(c) for c in config.get("collectors", DEFAULT_COLLECTORS)]
        except (KeyError, TypeError, ValueError) as exc:
            raise CommandError(f"bad collector configuration: {exc}") from None

        if options["in_process"] or agent.get("mode") == "in-process":
            sink = LocalSink()
            where = "the local database"
        else:
            server = options["server"] or agent.get("server") or os.environ.get("PULSEBOARD_SERVER")
            if not server:
                raise CommandError(
                    "say where to send readings: --server URL (or [agent] server in the config), or --in-process"
                )
            token = os.environ.get("PULSEBOARD_AGENT_TOKEN", "")
            token_file = options["token_file"] or agent.get("token_file")
            if token_file:
                try:
                    token = Path(token_file).read_text().strip()
                except FileNotFoundError:
                    raise CommandError(f"token file {token_file} does not exist; run `manage.py issuetoken`") from None
            if not token:
                raise CommandError(
                    "no agent token: set PULSEBOARD_AGENT_TOKEN or --token-file (create one with `manage.py issuetoken`)"
                )
            try:
                sink = HttpSink(
                    server,
                    token,
                    spool_path=agent.get("spool_path") or settings.VAR_DIR / "agent-spool.sqlite3",
                    spool_max_readings=int(agent.get("spool_max_readings", DEFAULT_MAX_READINGS)),
                    batch_size=int(agent.get("batch_size", 1000)),
                    flush_interval_s=float(agent.get("flush_interval_s", 1.0)),
                    health_interval_s=float(agent.get("health_interval_s", HEALTH_INTERVAL_S)),
                    agent_name=agent.get("name"),
                    shutdown_grace_s=float(agent.get("shutdown_grace_s", SHUTDOWN_GRACE_S)),
                    max_backoff_s=float(agent.get("max_backoff_s", BACKOFF_MAX_S)),
                )
            except (TypeError, ValueError, OSError) as exc:
                raise CommandError(f"bad [agent] configuration: {exc}") from None
            where = server
        self.stdout.write(f"Running {len(collectors)} collectors ({', '.join(c.name for c in collectors)}) -> {where}")

        async def main() -> None:
            runner = Runner(collectors, sink)
            runner.install_signal_handlers()
            await runner.run()

        asyncio.run(main())
