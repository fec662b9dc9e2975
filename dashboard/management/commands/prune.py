"""Delete samples and rollups past their retention, and create the coming days' partitions."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand

from dashboard import retention


class Command(BaseCommand):
    help = (
        "Apply retention once: delete raw samples, 1-minute, 10-minute and 1-hour rollups older than their "
        "tier keeps them (defaults PULSEBOARD_RETENTION_RAW_DAYS, PULSEBOARD_RETENTION_MINUTE_DAYS, "
        "PULSEBOARD_RETENTION_TEN_MINUTE_DAYS, PULSEBOARD_RETENTION_HOUR_DAYS; per-metric overrides in the admin). On PostgreSQL whole daily "
        "partitions of raw samples are dropped and the partitions of the coming days are created. The "
        "server does this every PULSEBOARD_RETENTION_INTERVAL_S (hourly by default) by itself; run it by hand after changing retention, or with --dry-run "
        "to see what would go."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="count what would be deleted or dropped; change nothing"
        )

    def handle(self, *args, dry_run: bool, **options) -> None:
        p = settings.PULSEBOARD
        self.stdout.write(
            f"Retention defaults: raw {p['RETENTION_RAW_DAYS']} d, 1-minute {p['RETENTION_MINUTE_DAYS']} d, "
            f"10-minute {p['RETENTION_TEN_MINUTE_DAYS']} d, 1-hour {p['RETENTION_HOUR_DAYS']} d{' (dry run)' if dry_run else ''}"
        )
        verbose = options["verbosity"] >= 1
        report = retention.prune(dry_run=dry_run, progress=self.stdout.write if verbose else lambda _: None)
        verb = "Would delete" if dry_run else "Deleted"
        counts = ", ".join(f"{tier} {rows}" for tier, rows in report.deleted.items())
        self.stdout.write(
            self.style.SUCCESS(
                f"{verb} rows: {counts}; partitions {'to drop' if dry_run else 'dropped'}: "
                f"{len(report.dropped_partitions)}, created: {len(report.created_partitions)}."
            )
        )
