"""Create an agent token and print its secret once (or write it to a file)."""

from __future__ import annotations

import os
from pathlib import Path

from django.core.management.base import BaseCommand

from dashboard.models import AgentToken


class Command(BaseCommand):
    help = (
        "Create an agent token for a collector agent or device. The secret is printed once (or written "
        "to --output with mode 600); only its hash is stored. With --output and an existing file whose "
        "token is still valid, nothing is created."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("name", help="a name operators will recognise, e.g. 'agent on web-01'")
        parser.add_argument(
            "--sources", default="*", help="comma-separated globs of source slugs it may write (default: all)"
        )
        parser.add_argument("--output", type=Path, help="write the secret to this file instead of printing it")

    def handle(self, *args, name: str, sources: str, output: Path | None, **options) -> None:
        if output and output.exists():
            existing = AgentToken.find(output.read_text().strip())
            if existing and not existing.is_revoked:
                self.stdout.write(f"Token {existing.name!r} in {output} is valid; keeping it.")
                return
        patterns = "\n".join(p.strip() for p in sources.split(",") if p.strip())
        token, secret = AgentToken.issue(name, patterns)
        if output:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(secret)
            os.chmod(output, 0o600)
            self.stdout.write(f"Token {token.name!r} written to {output}.")
        else:
            self.stdout.write(f"Token {token.name!r} created. Secret (shown once): {secret}")
