"""Drop the database foreign key from dashboard_sample to dashboard_metric.

Its check ran at every commit, one index probe on dashboard_metric per
inserted sample, about a third of a 5,000-sample batch's storage time on
PostgreSQL. The writer only inserts metric ids it has just resolved, and
deleting a metric still deletes its samples through Django's on_delete. On
PostgreSQL this drops the constraint of the partitioned table (and so of
every partition); on SQLite Django rebuilds the table, a copy of the samples
kept (a week by default).
"""

from __future__ import annotations

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("dashboard", "0003_tenminuterollup"),
    ]

    operations = [
        migrations.AlterField(
            model_name="sample",
            name="metric",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="+",
                to="dashboard.metric",
            ),
        ),
    ]
