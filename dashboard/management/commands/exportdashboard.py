"""Write one dashboard as JSON (the layout schema of dashboard/layout.py), for git or another installation."""

from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from dashboard import panels
from dashboard.layout import LayoutError
from dashboard.models import Dashboard


class Command(BaseCommand):
    help = "Write a dashboard (title, description, panels) as JSON to stdout or --output; importdashboard reads it."

    def add_arguments(self, parser) -> None:
        parser.add_argument("slug", help="the dashboard's slug, as in /d/<slug>/")
        parser.add_argument("--output", type=Path, help="write to this file instead of stdout")

    def handle(self, *args, slug: str, output: Path | None, **options) -> None:
        board = Dashboard.objects.filter(slug=slug).first()
        if board is None:
            raise CommandError(f"no dashboard {slug!r}; `manage.py exportdashboard` takes a slug from /d/")
        try:
            text = json.dumps(panels.export_board(board), indent=2, ensure_ascii=False) + "\n"
        except LayoutError as exc:
            raise CommandError(f"{slug}: a stored panel breaks the layout schema: {exc}; fix it in the admin") from None
        if output:
            output.write_text(text, encoding="utf-8")
            self.stdout.write(f"Dashboard {slug!r} written to {output}.")
        else:
            self.stdout.write(text, ending="")
