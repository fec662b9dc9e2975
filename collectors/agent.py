"""The agent's command line: `pulseboard-agent`, which `manage.py runcollectors` wraps.

It reads the config file, builds the collectors from the registry and an
HttpSink, and runs them until SIGTERM. Nothing here imports Django or the
dashboard package: a watched host needs only this package
(`pip install ./collectors`) and talks to the server through its ingest API.
The in-process mode (LocalSink, which calls the server's ingest action) is
offered only by `manage.py runcollectors`, on a host with the whole project.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collectors import registry
from collectors.base import Collector
from collectors.exceptions import AgentError
from collectors.runner import Runner
from collectors.sinks import BACKOFF_MAX_S, HEALTH_INTERVAL_S, SHUTDOWN_GRACE_S, HttpSink, RequeueStopped, Sink
from collectors.spool import DEFAULT_MAX_READINGS

DEFAULT_COLLECTORS: list[dict[str, Any]] = [{"kind": "system"}, {"kind": "iot_sim"}, {"kind": "market_sim"}]
SERVER_ENV = "PULSEBOARD_SERVER"
TOKEN_ENV = "PULSEBOARD_AGENT_TOKEN"
SPOOL_NAME = "agent-spool.sqlite3"

DESCRIPTION = (
    "Run the configured collectors and ship their readings to a Pulseboard server's ingest API "
    f"(--server with a token from --token-file or {TOKEN_ENV}). Without --config it runs the system "
    "collector and the IoT and market simulators. With --requeue-dead it instead sends the readings kept in "
    "the spool's dead letters (batches the server refused as a whole: bad token, 403, 400 without per-sample "
    "reasons, repeated 5xx...) to the server again, prints its progress, and exits. "
    "See collectors.example.toml and docs/ingest.md."
)


def default_spool_path() -> Path:
    """Return where pulseboard-agent keeps its spool when neither --spool nor [agent] spool_path says."""
    state_directory = os.environ.get("STATE_DIRECTORY")  # set by systemd's StateDirectory=
    if state_directory:
        return Path(state_directory.split(":")[0]) / SPOOL_NAME
    state_home = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state_home) / "pulseboard-agent" / SPOOL_NAME


def add_arguments(parser: argparse.ArgumentParser, *, default_spool: Path | str) -> None:
    """Add the agent's options (shared by pulseboard-agent and manage.py runcollectors)."""
    parser.add_argument("--config", type=Path, help="TOML file with [agent] and [[collectors]] tables")
    parser.add_argument(
        "--server",
        help=f"base URL of the server, e.g. http://127.0.0.1:8000 (default: [agent] server, then ${SERVER_ENV})",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        help=f"file holding the agent token secret (default: [agent] token_file; without a file, ${TOKEN_ENV})",
    )
    parser.add_argument(
        "--spool",
        type=Path,
        help=f"SQLite file holding readings until the server has them (default: [agent] spool_path, then {default_spool})",
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


def load_config(path: Path | None) -> dict[str, Any]:
    """Return the parsed TOML config, or {} when there is none."""
    if path is None:
        return {}
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise AgentError(f"{path} does not exist; start from collectors.example.toml") from None
    except tomllib.TOMLDecodeError as exc:
        raise AgentError(f"{path} is not valid TOML: {exc}") from None


@dataclass
class Agent:
    """Collectors and the sink they feed, ready to run."""

    collectors: list[Collector]
    sink: Sink
    where: str

    def describe(self) -> str:
        return (
            f"Running {len(self.collectors)} collectors ({', '.join(c.name for c in self.collectors)}) -> {self.where}"
        )

    def run(self) -> None:
        """Run until SIGTERM or SIGINT, then let the sink flush."""

        async def main() -> None:
            runner = Runner(self.collectors, self.sink)
            runner.install_signal_handlers()
            await runner.run()

        asyncio.run(main())

    def requeue_dead(self, write: Callable[[str], None], write_done: Callable[[str], None] | None = None) -> None:
        """Send the spool's dead letters to the server again, writing progress; AgentError when some are left."""
        sink = self.sink
        if not isinstance(sink, HttpSink):
            raise AgentError("--requeue-dead sends the dead letters to a server; it does not go with --in-process")

        async def main() -> list[tuple[str, int]]:
            reasons = await sink.spool.dead_reasons()
            if not reasons:
                return []
            write(f"{sink.spool.dead} readings in the dead letters of {sink.spool.path}:")
            for reason, count in reasons:
                write(f"  {count} refused with {reason}")
            write(f"sending them to {self.where} ...")

            def progress(done: int, total: int) -> None:
                write(f"  {done}/{total} sent ({sink.rejected} of them rejected one by one)")

            await sink.requeue_dead(progress)
            return reasons

        try:
            reasons = asyncio.run(main())
        except RequeueStopped as stop:
            raise AgentError(
                f"stopped after {stop.done} readings: the server refused again ({stop.reason}); "
                f"{stop.left} readings are still in the dead letters"
            ) from None
        finally:
            sink.spool.close()
        if not reasons:
            write(f"no dead letters in {sink.spool.path}; nothing to send")
            return
        (write_done or write)(
            f"done: {sink.sent} stored or already stored, {sink.rejected} rejected one by one "
            "(the server's reasons are logged above); the dead letters are empty"
        )


def build_agent(
    options: dict[str, Any], *, default_spool: Path | str, local_sink: Callable[[], Sink] | None = None
) -> Agent:
    """Build the collectors and the sink from the command-line options and the config file.

    local_sink makes the in-process mode available (manage.py runcollectors
    passes LocalSink); without it, a config asking for that mode is refused.
    """
    config = load_config(options.get("config"))
    agent = config.get("agent", {})
    try:
        collectors = [registry.build(c) for c in config.get("collectors", DEFAULT_COLLECTORS)]
    except (KeyError, TypeError, ValueError) as exc:
        raise AgentError(f"bad collector configuration: {exc}") from None

    in_process = options.get("in_process") or agent.get("mode") == "in-process"
    if options.get("requeue_dead") and in_process:
        raise AgentError("--requeue-dead sends the dead letters to a server; it does not go with --in-process")
    if in_process:
        if local_sink is None:
            raise AgentError(
                "in-process mode writes into the server's own database: run `manage.py runcollectors "
                "--in-process` on the server, or give this agent a --server URL"
            )
        return Agent(collectors, local_sink(), "the local database")

    server = options.get("server") or agent.get("server") or os.environ.get("PULSEBOARD_SERVER")
    if not server:
        hint = ", or --in-process" if local_sink is not None else f" or ${SERVER_ENV}"
        raise AgentError(f"say where to send readings: --server URL (or [agent] server in the config){hint}")
    token = os.environ.get("PULSEBOARD_AGENT_TOKEN", "")
    token_file = options.get("token_file") or agent.get("token_file")
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except FileNotFoundError:
            raise AgentError(f"token file {token_file} does not exist; run `manage.py issuetoken`") from None
    if not token:
        raise AgentError(f"no agent token: set {TOKEN_ENV} or --token-file (create one with `manage.py issuetoken`)")
    try:
        sink = HttpSink(
            server,
            token,
            spool_path=options.get("spool") or agent.get("spool_path") or default_spool,
            spool_max_readings=int(agent.get("spool_max_readings", DEFAULT_MAX_READINGS)),
            batch_size=int(agent.get("batch_size", 1000)),
            flush_interval_s=float(agent.get("flush_interval_s", 1.0)),
            health_interval_s=float(agent.get("health_interval_s", HEALTH_INTERVAL_S)),
            agent_name=agent.get("name"),
            shutdown_grace_s=float(agent.get("shutdown_grace_s", SHUTDOWN_GRACE_S)),
            max_backoff_s=float(agent.get("max_backoff_s", BACKOFF_MAX_S)),
        )
    except (TypeError, ValueError, OSError) as exc:
        raise AgentError(f"bad [agent] configuration: {exc}") from None
    for collector in collectors:  # e.g. MQTT's taken retained values live in the spool file too
        if getattr(collector, "state_path", "") is None:
            collector.state_path = str(sink.spool.path)
    return Agent(collectors, sink, server)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the pulseboard-agent console script."""
    parser = argparse.ArgumentParser(prog="pulseboard-agent", description=DESCRIPTION)
    default_spool = default_spool_path()
    add_arguments(parser, default_spool=default_spool)
    options = vars(parser.parse_args(argv))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("collectors").setLevel(logging.INFO)
    try:
        agent = build_agent(options, default_spool=default_spool)
        if options["requeue_dead"]:
            agent.requeue_dead(lambda line: print(line, flush=True))
            return 0
    except AgentError as exc:
        parser.exit(1, f"pulseboard-agent: error: {exc}\n")
    print(agent.describe(), flush=True)
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
