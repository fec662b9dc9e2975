"""Periodic jobs in a real server process: retention creates partitions ahead and drops expired days by itself."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import psycopg
import pytest

from dashboard.testing import Server, manage, project_env

PG_ADMIN_URL = os.environ.get("FAULT_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres")
DAY_S = 86_400
DAY_US = DAY_S * 1_000_000
DAYS_AHEAD = 7  # dashboard.partitions.DAYS_AHEAD

# A server of its own on a database of its own: the PostgreSQL pass of the suite runs it.
pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A throwaway database on the shared PostgreSQL server; return its URL."""
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        pytest.skip(f"needs PostgreSQL at {PG_ADMIN_URL} (set FAULT_PG_URL)")
    name = f"pulseboard_bg_{secrets.token_hex(4)}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def wait_until(check: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def day_name(days_from_today: int) -> str:
    day = datetime.fromtimestamp(time.time() + days_from_today * DAY_S, tz=UTC)
    return f"dashboard_sample_p{day:%Y%m%d}"


def partitions_of(url: str) -> set[str]:
    with psycopg.connect(url, connect_timeout=5) as db:
        rows = db.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'dashboard_sample'::regclass"
        ).fetchall()
    return {row[0] for row in rows}


def samples_by_partition(url: str) -> dict[float, str]:
    with psycopg.connect(url, connect_timeout=5) as db:
        rows = db.execute("SELECT value, tableoid::regclass::text FROM dashboard_sample").fetchall()
    return dict(rows)


def leader_lock_holders(url: str) -> int:
    from dashboard.retention import LEADER_LOCK_KEY

    with psycopg.connect(url, connect_timeout=5) as db:
        (count,) = db.execute(
            "SELECT COUNT(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s "
            "AND a.datname = current_database()",
            [(LEADER_LOCK_KEY >> 32) & 0xFFFF_FFFF, LEADER_LOCK_KEY & 0xFFFF_FFFF],
        ).fetchone()
    return count


# Run in `manage.py shell` before the server starts: the migration's window of partitions has passed
# (nothing from today on, as after days of downtime), one reading of today waits in DEFAULT, and a
# day 30 days back (past the 7-day raw retention) has its own partition holding one reading.
PREPARE = """
from dashboard import partitions, storage
from dashboard.timeutil import US, now_us
from dashboard.validation import Reading
now, day = now_us(), 86_400 * US
for part in partitions.list_partitions():
    if part.end > partitions.day_start(now):
        partitions.drop_partition(part)
storage.store([Reading("bg", "cpu", now, 1.0), Reading("bg", "cpu", now - 30 * day, 30.0)])
print(partitions.ensure_partitions(now - 30 * day, now - 30 * day + 1))
"""


def background_env(tmp_path, url: str) -> dict[str, str]:
    return project_env(
        tmp_path, DATABASE_URL=url, PULSEBOARD_BACKGROUND="1", PULSEBOARD_RETENTION_INTERVAL_S="1", LOG_LEVEL="INFO"
    )


def test_the_server_creates_the_coming_days_partitions_and_drops_an_expired_day_by_itself(tmp_path, pg_url) -> None:
    env = background_env(tmp_path, pg_url)
    manage(env, "migrate", "--noinput")
    manage(env, "shell", "-c", PREPARE)
    expired, coming = day_name(-30), {day_name(d) for d in range(DAYS_AHEAD)}
    before = partitions_of(pg_url)
    assert expired in before and not coming & before
    assert samples_by_partition(pg_url) == {1.0: "dashboard_sample_default", 30.0: expired}

    server = Server(env).start()  # its /healthz probe is the first request: that starts the jobs
    try:
        started = time.monotonic()
        wait_until(lambda: coming <= partitions_of(pg_url), 60, f"the partitions of the next {DAYS_AHEAD} days")
        wait_until(lambda: expired not in partitions_of(pg_url), 60, "the expired day's partition to be dropped")
        print(
            f"[retention in the server] partitions created and expired day dropped in {time.monotonic() - started:.1f} s"
        )
        # Today's reading moved out of DEFAULT into its new day, nothing lost; the expired one went with its day.
        assert samples_by_partition(pg_url) == {1.0: day_name(0)}
        assert leader_lock_holders(pg_url) == 1

        # The next pass (1 s later) catches up again: a coming day removed behind its back comes back.
        with psycopg.connect(pg_url, autocommit=True) as db:
            db.execute(f"DROP TABLE {day_name(3)}")
        wait_until(lambda: day_name(3) in partitions_of(pg_url), 60, "the next pass to recreate a missing day")
    finally:
        server.stop()
    log = server.log()
    assert "retention: created" in log and "ERROR" not in log and "Traceback" not in log, log[-3000:]


def test_with_two_workers_one_leader_runs_retention_and_the_other_takes_over_when_it_stops(tmp_path, pg_url) -> None:
    env = background_env(tmp_path, pg_url)
    manage(env, "migrate", "--noinput")
    first = Server(env).start()
    second = Server(env).start()
    try:
        wait_until(lambda: leader_lock_holders(pg_url) == 1, 30, "a leader")
        for _ in range(5):  # several intervals: still exactly one leader among the two workers
            assert leader_lock_holders(pg_url) == 1
            time.sleep(0.5)
        first.stop()
        with psycopg.connect(pg_url, autocommit=True) as db:
            db.execute(f"DROP TABLE {day_name(2)}")
        wait_until(lambda: day_name(2) in partitions_of(pg_url), 60, "the remaining worker to recreate the day")
        assert leader_lock_holders(pg_url) == 1
    finally:
        first.stop()
        second.stop()
