"""Create or replace a dashboard from a JSON file written by exportdashboard (checked by dashboard/layout.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from dashboard import panels
from dashboard.exceptions import BadRequest


class Command(BaseCommand):
    help = (
        "Create a dashboard from a file written by exportdashboard ('-' reads stdin). An existing slug is "
        "refused unless --replace, which overwrites its title, description and panels (groups and owner stay). "
        "The whole file is checked first; a refusal names the field and changes nothing."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("file", help="the JSON file, or - for stdin")
        parser.add_argument("--replace", action="store_true", help="overwrite a dashboard with the same slug")

    def handle(self, *args, file: str, replace: bool, **options) -> None:
        try:
            text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
            data = json.loads(text)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise CommandError(f"{file}: not a readable JSON file: {exc}") from None
        try:
            board, created = panels.import_board(data, replace=replace)
        except BadRequest as exc:
            raise CommandError(f"{file}: {exc.field}: {exc.message}") from None
        verb = "Created" if created else "Replaced"
        self.stdout.write(f"{verb} dashboard {board.slug!r} with {board.panels.count()} panels: /d/{board.slug}/")
