"""Replace the (id, ts) primary key btree of dashboard_sample with a BRIN index on id, on PostgreSQL.

Nothing but the admin finds a sample by id: every read names a metric and a
time range, which the unique (metric_id, ts) btree serves. The primary key
was a second btree entry per inserted row, a third of the time of the COPY
that stores a batch (bench/README.md, Ingest). Ids are assigned in the order
rows are written, so a BRIN index on id, a few pages that cost next to
nothing per insert, still finds a row by id for the admin. Django's model
keeps id as its primary key; only the database constraint goes. SQLite keeps
its table as it is.
"""

from __future__ import annotations

from django.db import migrations

FORWARD = """
ALTER TABLE dashboard_sample DROP CONSTRAINT dashboard_sample_pkey;
CREATE INDEX dashboard_sample_id_brin ON dashboard_sample USING brin (id);
"""

BACKWARD = """
DROP INDEX dashboard_sample_id_brin;
ALTER TABLE dashboard_sample ADD CONSTRAINT dashboard_sample_pkey PRIMARY KEY (id, ts);
"""


def forward(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FORWARD)


def backward(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(BACKWARD)


class Migration(migrations.Migration):
    dependencies = [("dashboard", "0004_sample_metric_no_db_constraint")]

    operations = [migrations.RunPython(forward, backward, elidable=False)]
