"""Add the 10-minute rollup tier and fill it from the rollups already stored.

The writer keeps the new tier from now on; this fills the past so that charts
do not go blank where the series API now picks the new tier. Periods that
still have minute rollups (90 days by default) get exact 10-minute buckets,
their first/last read from the first/last minute by its unique key. Older
periods only have hour rollups: each hour is filed whole under its first
10 minutes, so min/max/sum/count/first/last stay exact per hour and only the
placement inside the hour is coarse. Plain SQL that SQLite and PostgreSQL
both run; the rollup tables are not partitioned (migration 0002 touches only
dashboard_sample).
"""

from __future__ import annotations

import django.db.models.deletion
from django.db import migrations, models

TEN_MINUTES_US = 600_000_000
# Buckets are rounded down with integer division, not %: the driver reads % as a placeholder.
COLUMNS = '"metric_id", "bucket", "min", "max", "sum", "count", "first", "first_ts", "last", "last_ts"'
FROM_MINUTES = f"""
INSERT INTO dashboard_tenminuterollup ({COLUMNS})
SELECT g.metric_id, g.b, g.mn, g.mx, g.s, g.c,
       (SELECT f."first" FROM dashboard_minuterollup f WHERE f.metric_id = g.metric_id AND f.bucket = g.b0),
       g.first_ts,
       (SELECT l."last" FROM dashboard_minuterollup l WHERE l.metric_id = g.metric_id AND l.bucket = g.b1),
       g.last_ts
FROM (SELECT metric_id, bucket / {TEN_MINUTES_US} * {TEN_MINUTES_US} AS b, MIN("min") AS mn, MAX("max") AS mx,
             SUM("sum") AS s, SUM("count") AS c, MIN(bucket) AS b0, MAX(bucket) AS b1,
             MIN(first_ts) AS first_ts, MAX(last_ts) AS last_ts
      FROM dashboard_minuterollup GROUP BY metric_id, bucket / {TEN_MINUTES_US} * {TEN_MINUTES_US}) g
ORDER BY g.metric_id, g.b
"""
FROM_HOURS = f"""
INSERT INTO dashboard_tenminuterollup ({COLUMNS})
SELECT {COLUMNS} FROM dashboard_hourrollup h
WHERE NOT EXISTS (SELECT 1 FROM dashboard_tenminuterollup t
                  WHERE t.metric_id = h.metric_id AND t.bucket >= h.bucket AND t.bucket < h.bucket + {6 * TEN_MINUTES_US})
ORDER BY h.metric_id, h.bucket
"""


def backfill(apps, schema_editor) -> None:
    """Fill the 10-minute tier from the minute rollups, then from the hour rollups the minutes no longer cover."""
    # In (metric, bucket) order, so that a chart's range of one metric is a
    # few adjacent pages of the new table, not a page per row.
    schema_editor.execute(FROM_MINUTES)
    schema_editor.execute(FROM_HOURS)


class Migration(migrations.Migration):
    dependencies = [
        ("dashboard", "0002_sample_partitioning"),
    ]

    operations = [
        migrations.AddField(
            model_name="metric",
            name="ten_minute_retention_days",
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.CreateModel(
            name="TenMinuteRollup",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("bucket", models.BigIntegerField(help_text="µs since epoch of the bucket start")),
                ("min", models.FloatField()),
                ("max", models.FloatField()),
                ("sum", models.FloatField()),
                ("count", models.BigIntegerField()),
                ("first", models.FloatField()),
                ("first_ts", models.BigIntegerField()),
                ("last", models.FloatField()),
                ("last_ts", models.BigIntegerField()),
                (
                    "metric",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="dashboard.metric",
                    ),
                ),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(fields=("metric", "bucket"), name="tenminuterollup_metric_bucket_uniq")
                ],
            },
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop, elidable=True),
    ]
