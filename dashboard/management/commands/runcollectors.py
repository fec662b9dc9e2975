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
from collectors.sinks import BACKOFF_MAX_S, HEALTH_INTERVAL_S, SHUTDOWN_GRACE_S, HttpSink, LocalSink, RequeueStopped
from collectors.spool import DEFAULT_MAX_READINGS

DEFAULT_COLLECTORS: list[dict[str, Any]] = [{"kind": "system"}, {"kind": "iot_sim"}, {"kind": "market_sim"}]


class Command(BaseCommand):
    help = (
        "Run the configured collectors and ship their readings to a Pulseboard server's ingest API "
        "(--server with a token from --token-file or PULSEBOARD_AGENT_TOKEN), or straight into this "
        "project's database with --in-process. Without --config it runs the system collector and the "
        "IoT and market simulators. With --requeue-dead it instead sends the readings kept in the spool's "
        "dead letters (batches the server refused as a whole: bad token, 403, 400 without per-sample reasons, "
        "repeated 5xx...) to the server again, prints its progress, and exits. "
        "See collectors.example.toml and docs/ingest.md."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--config", type=Path, help="TOML file with [agent] and [[collectors]] tables")
        parser.add_argument("--server", help="base URL of the server, e.g. http://127.0.0.1:8000")
        parser.add_argument("--token-file", type=Path, help="file holding the agent token secret")
        parser.add_argument(
            "--in-process", action="store_true", help="write through the local ingest action instead of HTTP"
        )
        parser.add_argument(
            "--requeue-dead",
            action="store_true",
            help=(
                "do not run collectors: send the spool's dead letters (readings the server refused as a whole, "
                "kept with the reason) to the server again, oldest first, with the same rules as the agent "
                "(a per-sample answer removes them, 413 splits the batch); print progress and exit. Stops at the "
                "first batch refused as a whole again, keeping the rest, and exits with status 1. Fix the cause "
                "first (token, its source patterns, the server). Safe while the agent runs: stored readings "
                "are never stored twice."
            ),
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

        if options["requeue_dead"] and (options["in_process"] or agent.get("mode") == "in-process"):
            raise CommandError("--requeue-dead sends the dead letters to a server; it does not go with --in-process")
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
            for collector in collectors:  # e.g. MQTT's taken retained values live in the spool file too
                if getattr(collector, "state_path", "") is None:
                    collector.state_path = str(sink.spool.path)
            if options["requeue_dead"]:
                self.requeue_dead(sink, server)
                return
        self.stdout.write(f"Running {len(collectors)} collectors ({', '.join(c.name for c in collectors)}) -> {where}")

        async def main() -> None:
            runner = Runner(collectors, sink)
            runner.install_signal_handlers()
            await runner.run()

        asyncio.run(main())

    def requeue_dead(self, sink: HttpSink, server: str) -> None:
        """Send the dead letters to the server again, printing progress; CommandError when some are left."""

        async def main() -> list[tuple[str, int]]:
            reasons = await sink.spool.dead_reasons()
            if not reasons:
                return []
            self.stdout.write(f"{sink.spool.dead} readings in the dead letters of {sink.spool.path}:")
            for reason, count in reasons:
                self.stdout.write(f"  {count} refused with {reason}")
            self.stdout.write(f"sending them to {server} ...")

            def progress(done: int, total: int) -> None:
                self.stdout.write(f"  {done}/{total} sent ({sink.rejected} of them rejected one by one)")

            await sink.requeue_dead(progress)
            return reasons

        try:
            reasons = asyncio.run(main())
        except RequeueStopped as stop:
            raise CommandError(
                f"stopped after {stop.done} readings: the server refused again ({stop.reason}); "
                f"{stop.left} readings are still in the dead letters"
            ) from None
        finally:
            sink.spool.close()
        if not reasons:
            self.stdout.write(f"no dead letters in {sink.spool.path}; nothing to send")
            return
        self.stdout.write(
            self.style.SUCCESS(
                f"done: {sink.sent} stored or already stored, {sink.rejected} rejected one by one "
                "(the server's reasons are logged above); the dead letters are empty"
            )
        )
