"""Operations under faults: retention when PostgreSQL goes away and comes back, /metrics with bad tokens."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from dashboard.testing import Server, TcpProxy, manage
from tests.test_background import background_env, day_name, leader_lock_holders, partitions_of, pg_url, wait_until

__all__ = ["pg_url"]  # the fixture, used by name


@pytest.mark.postgres
def test_retention_comes_back_after_postgresql_goes_away_under_the_leader(tmp_path, pg_url: str) -> None:
    """The link to PostgreSQL is cut while the leader holds its lock; after it is back, one leader runs passes again."""
    host, _, rest = pg_url.rpartition("@")[2].partition(":")
    port, _, name = rest.partition("/")
    proxy = TcpProxy(host, int(port)).start()
    proxied = f"{pg_url.rpartition('@')[0]}@127.0.0.1:{proxy.port}/{name}"
    env = background_env(tmp_path, proxied)
    manage(env, "migrate", "--noinput")
    server = Server(env).start()
    try:
        wait_until(lambda: leader_lock_holders(pg_url) == 1, 60, "a leader")
        for _ in range(3):  # cut at different moments of the 1 s cycle, some of them inside a pass
            proxy.cut()
            wait_until(lambda: leader_lock_holders(pg_url) == 0, 30, "the cut session's lock to be released")
            with psycopg.connect(pg_url, autocommit=True) as db:
                db.execute(f"DROP TABLE IF EXISTS {day_name(2)}")
            time.sleep(0.3)  # the outage itself, not a synchronisation: passes fail meanwhile
            proxy.start()
            wait_until(lambda: day_name(2) in partitions_of(pg_url), 60, "a pass after the outage to recreate the day")
            wait_until(lambda: leader_lock_holders(pg_url) == 1, 30, "one leader again")
    finally:
        server.stop()
        proxy.close()
    log = server.log()
    failures = log.count("retention pass failed")
    print(f"retention passes failed during three outages: {failures}; tracebacks in the log: {log.count('Traceback')}")
    assert "retention: created" in log


@pytest.mark.django_db
@pytest.mark.parametrize("configured", ["", "t0ken-ABC"])
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer t0ken",
        "Bearer t0ken-ABCD",
        "Basic t0ken-ABC",
        "t0ken-ABC",
        "Bearer t0ken-ÀBC",
        "Bearer " + "x" * 100_000,
        "Bearer \x00t0ken-ABC",
    ],
)
def test_metrics_refuses_every_wrong_or_missing_token_and_never_errs(
    client, settings, configured: str, authorization: str | None
) -> None:
    settings.METRICS_TOKEN = configured
    headers = {} if authorization is None else {"Authorization": authorization}
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 403, response.content[:200]
    assert b"pulseboard_ingest_accepted" not in response.content


@pytest.mark.django_db
@pytest.mark.parametrize("authorization", ["Bearer t0ken-ABC", "bearer t0ken-ABC", "Bearer  t0ken-ABC "])
def test_metrics_answers_the_configured_token(client, settings, authorization: str) -> None:
    settings.METRICS_TOKEN = "t0ken-ABC"
    response = client.get("/metrics", headers={"Authorization": authorization})
    assert response.status_code == 200 and b"pulseboard_ingest_accepted" in response.content


def test_an_unwritable_multiproc_dir_is_refused_at_start_with_a_clear_message(tmp_path) -> None:
    """/proc/self is a directory nobody, root included, can create files in."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": "/proc/self", "DJANGO_SETTINGS_MODULE": "monitor.settings"}
    run = subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); import dashboard.stats"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "django.core.exceptions.ImproperlyConfigured: PROMETHEUS_MULTIPROC_DIR='/proc/self' is not writable"
    ), last
