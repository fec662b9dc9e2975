"""`manage.py ensureadmin`, which `make run` runs at every start: it never ends sessions for nothing."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

pytestmark = pytest.mark.django_db


def ensure(monkeypatch, password: str) -> str:
    monkeypatch.setenv("ADMIN_USERNAME", "admin")
    monkeypatch.setenv("ADMIN_PASSWORD", password)
    out = io.StringIO()
    call_command("ensureadmin", stdout=out)
    return out.getvalue()


def test_an_unchanged_admin_password_is_not_set_again_so_sessions_stay_valid(monkeypatch, settings) -> None:
    ensure(monkeypatch, "first-pass-123")
    admin = get_user_model().objects.get(username="admin")
    session_hash = admin.get_session_auth_hash()
    assert "already" in ensure(monkeypatch, "first-pass-123")
    admin.refresh_from_db()
    assert admin.get_session_auth_hash() == session_hash  # a new salt would sign every browser out


def test_a_changed_admin_password_is_set(monkeypatch, settings) -> None:
    ensure(monkeypatch, "first-pass-123")
    assert "password set from ADMIN_PASSWORD" in ensure(monkeypatch, "second-pass-456")
    assert get_user_model().objects.get(username="admin").check_password("second-pass-456")
