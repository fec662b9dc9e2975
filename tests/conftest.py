"""Shared fixtures: users with different rights, an agent token, service probes.

Service tests carry a marker (postgres, redis, mqtt, browser). Without the
service they skip with a reason that says how to get it; under CI=true such a
skip is turned into a failure, because CI must exercise the real services.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest
from django.db import connection

# Background jobs (retention, no-data checks) would race the tests' own clocks;
# tests that want them call the job functions directly.
os.environ.setdefault("PULSEBOARD_BACKGROUND", "0")

SERVICE_MARKERS = {"postgres", "redis", "mqtt", "browser"}
IN_CI = os.environ.get("CI", "").lower() == "true"


def reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or default_port), timeout=1):
            return True
    except OSError:
        return False


def pytest_collection_modifyitems(config, items) -> None:
    on_postgres = connection.vendor == "postgresql"
    for item in items:
        if "postgres" in item.keywords and not on_postgres:
            item.add_marker(
                pytest.mark.skip(
                    reason="needs PostgreSQL: run with DATABASE_URL=postgres://postgres@127.0.0.1:5432/test"
                )
            )
        if "sqlite_only" in item.keywords and on_postgres:
            item.add_marker(pytest.mark.skip(reason="only meaningful on SQLite"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and SERVICE_MARKERS & set(item.keywords):
        # A service test that skips in CI proves nothing: fail it loudly.
        # Deliberate skips are fine: postgres tests on the SQLite pass, sqlite_only tests on the PostgreSQL pass.
        deliberate = ("postgres" in item.keywords and connection.vendor != "postgresql") or (
            "sqlite_only" in item.keywords and connection.vendor == "postgresql"
        )
        if not deliberate:
            report.outcome = "failed"
            report.longrepr = f"service test skipped under CI=true: {report.longrepr}"


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/0")
    if not reachable(url, 6379):
        pytest.skip(f"needs Redis at {url}: start it with `redis-server` or set REDIS_TEST_URL")
    return url


@pytest.fixture
def mqtt_url() -> str:
    url = os.environ.get("MQTT_TEST_URL", "mqtt://127.0.0.1:1883")
    if not reachable(url, 1883):
        pytest.skip(f"needs an MQTT broker at {url}: start Mosquitto or set MQTT_TEST_URL")
    return url


@pytest.fixture
def owner(django_user_model):
    """alice: staff, sees and edits everything."""
    return django_user_model.objects.create_user("alice", password="alice-pass-123", is_staff=True)


@pytest.fixture
def viewer(django_user_model):
    """bob: a signed-in viewer without staff rights."""
    return django_user_model.objects.create_user("bob", password="bob-pass-123")


@pytest.fixture
def stranger(django_user_model):
    """charlie: signed in, but in no group that restricted things are granted to."""
    return django_user_model.objects.create_user("charlie", password="charlie-pass-123")


@pytest.fixture
def agent_token(db):
    """An agent token allowed to write every source, and its secret."""
    from dashboard.models import AgentToken

    return AgentToken.issue("test agent")


@pytest.fixture(autouse=True)
def _fresh_process_state() -> Iterator[None]:
    """Forget per-process caches and stop writers between tests (each test has its own event loop)."""
    from dashboard import storage
    from dashboard.writer import Writer

    storage.clear_cache()
    yield
    Writer.close_all()
    storage.clear_cache()
    # Async tests run ORM calls on asgiref's sync thread; close its connection
    # so PostgreSQL can drop the test database at the end.
    from asgiref.sync import SyncToAsync
    from django.db import connections

    SyncToAsync.single_thread_executor.submit(connections.close_all).result()
