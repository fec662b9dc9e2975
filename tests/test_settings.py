from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from monitor import env


def test_it_reads_booleans_and_explains_bad_ones(monkeypatch) -> None:
    monkeypatch.setenv("X_FLAG", "yes")
    assert env.env_bool("X_FLAG") is True
    monkeypatch.setenv("X_FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="Set it to 1 or 0"):
        env.env_bool("X_FLAG")


def test_it_explains_a_port_that_is_not_a_number(monkeypatch) -> None:
    monkeypatch.setenv("X_PORT", "80a")
    with pytest.raises(ImproperlyConfigured, match="not a whole number"):
        env.env_int("X_PORT", 8000)
    monkeypatch.setenv("X_PORT", "70000")
    with pytest.raises(ImproperlyConfigured, match="above the maximum"):
        env.env_int("X_PORT", 8000, maximum=65535)


def test_it_builds_postgres_settings_from_a_url() -> None:
    db = env.database_from_url("postgres://pb:s%40cret@db.local:6543/pulse")
    assert (db["NAME"], db["USER"], db["PASSWORD"], db["HOST"], db["PORT"]) == (
        "pulse",
        "pb",
        "s@cret",
        "db.local",
        "6543",
    )
    with pytest.raises(ImproperlyConfigured, match="names no database"):
        env.database_from_url("postgres://db.local:5432/")


def run_settings(**environ: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG")}
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; from django.conf import settings; django.setup(); print(settings.DATABASES['default']['ENGINE'])",
        ],
        env={**clean, "DJANGO_SETTINGS_MODULE": "monitor.settings", **environ},
        capture_output=True,
        text=True,
    )


def test_it_requires_a_secret_key_when_debug_is_off() -> None:
    result = run_settings(DEBUG="0")
    assert result.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is off" in result.stderr


def test_it_refuses_a_database_url_of_another_kind() -> None:
    result = run_settings(DATABASE_URL="mysql://x/y")
    assert "DATABASE_URL='mysql://x/y' is not a valid URL" in result.stderr


def test_it_defaults_to_sqlite() -> None:
    result = run_settings()
    assert result.stdout.strip() == "django.db.backends.sqlite3", result.stderr
