"""Run collectors and ship their readings to Pulseboard: pulseboard-agent, plus the in-process mode."""

from __future__ import annotations

import logging
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from collectors import agent
from collectors.agent import DEFAULT_COLLECTORS
from collectors.exceptions import AgentError
from collectors.sinks import LocalSink

__all__ = ["DEFAULT_COLLECTORS", "Command"]


class Command(BaseCommand):
    help = (
        "Run the configured collectors and ship their readings to a Pulseboard server's ingest API "
        "(--server with a token from --token-file or PULSEBOARD_AGENT_TOKEN), or straight into this "
        "project's database with --in-process. Without --config it runs the system collector and the "
        "IoT and market simulators. With --requeue-dead it instead sends the readings kept in the spool's "
        "dead letters (batches the server refused as a whole: bad token, 403, 400 without per-sample reasons, "
        "repeated 5xx...) to the server again, prints its progress, and exits. The same agent as the "
        "pulseboard-agent command (pip install ./collectors). See collectors.example.toml and docs/ingest.md."
    )

    def add_arguments(self, parser) -> None:
        agent.add_arguments(parser, default_spool=self.default_spool())
        parser.add_argument(
            "--in-process", action="store_true", help="write through the local ingest action instead of HTTP"
        )

    def default_spool(self) -> Path:
        return settings.VAR_DIR / agent.SPOOL_NAME

    def handle(self, *args, **options) -> None:
        logging.getLogger("collectors").setLevel(logging.INFO)
        try:
            running = agent.build_agent(options, default_spool=self.default_spool(), local_sink=LocalSink)
            if options["requeue_dead"]:
                running.requeue_dead(self.stdout.write, lambda line: self.stdout.write(self.style.SUCCESS(line)))
                return
        except AgentError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(running.describe())
        running.run()
