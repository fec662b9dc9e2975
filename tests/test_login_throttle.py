"""Issue #12 item 12b: sign-in throttling (django-axes) on the login page and the admin login.

N wrong passwords lock that user name from that address; the right password
is refused while locked; the lock ends after the cool-off (the attempt
records' clock is moved back). Agent tokens and share links are untouched.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta

import httpx
import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.db.models import F
from django.test import Client

from dashboard.models import Dashboard, Panel, ShareLink
from dashboard.testing import login_cookies, manage, project_env, running_server
from dashboard.timeutil import now_us

pytestmark = pytest.mark.django_db
LIMIT = settings.AXES_FAILURE_LIMIT


@pytest.fixture
def root(django_user_model):
    return django_user_model.objects.create_superuser("root", password="root-pass-123")


def sign_in(client: Client, path: str, username: str, password: str, **extra):
    return client.post(path, {"username": username, "password": password, "next": "/"}, **extra)


def signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def move_clock_past_the_cool_off() -> None:
    """Age every counted failure by the cool-off, as if that much time had passed."""
    AccessAttempt.objects.update(attempt_time=F("attempt_time") - settings.AXES_COOLOFF_TIME - timedelta(seconds=1))


@pytest.mark.parametrize("path", ["/accounts/login/", "/admin/login/"])
def test_wrong_passwords_lock_the_account_from_that_address_until_the_cool_off(
    client: Client, root, path: str, caplog
) -> None:
    for attempt in range(1, LIMIT):
        response = sign_in(client, path, "root", f"wrong-{attempt}")
        assert response.status_code == 200, attempt  # the form again, with its error
    locked = sign_in(client, path, "root", "wrong-last")
    assert locked.status_code == 429
    page = locked.content.decode()
    assert "Sign-in paused" in page and f"{LIMIT} failed sign-ins" in page
    assert "Try again after" in page and "axes_reset_username root" in page
    retry_after = int(locked["Retry-After"])
    assert settings.AXES_COOLOFF_TIME.total_seconds() - 5 <= retry_after <= settings.AXES_COOLOFF_TIME.total_seconds()

    # The right password is refused while locked, and retrying does not move the end of the lock.
    refused = sign_in(client, path, "root", "root-pass-123")
    assert refused.status_code == 429 and not signed_in(client)
    assert int(refused["Retry-After"]) <= retry_after

    lockouts = [r for r in caplog.records if r.name == "dashboard.lockout"]
    assert len(lockouts) == 1 and "'root' from 127.0.0.1" in lockouts[0].getMessage()

    move_clock_past_the_cool_off()
    response = sign_in(client, path, "root", "root-pass-123")
    assert response.status_code == 302 and signed_in(client)
    assert not AccessAttempt.objects.filter(username="root").exists()  # a success clears the count


def test_the_lock_is_per_user_name_and_address(client: Client, root, django_user_model) -> None:
    django_user_model.objects.create_user("dora", password="dora-pass-123")
    for attempt in range(LIMIT):
        sign_in(client, "/accounts/login/", "root", f"wrong-{attempt}")
    assert sign_in(client, "/accounts/login/", "root", "root-pass-123").status_code == 429
    # Another user at the same address, and the same user from another address, still sign in:
    # nobody elsewhere can lock the admin out by guessing.
    assert sign_in(Client(), "/accounts/login/", "dora", "dora-pass-123").status_code == 302
    elsewhere = Client(REMOTE_ADDR="10.1.2.3")
    assert sign_in(elsewhere, "/accounts/login/", "root", "root-pass-123").status_code == 302


def test_thirty_wrong_admin_passwords_in_a_row_are_not_all_answered(client: Client, root) -> None:
    """The issue's probe: 30 wrong passwords at the admin login."""
    codes = [sign_in(client, "/admin/login/", "root", f"guess-{i}").status_code for i in range(30)]
    assert codes[: LIMIT - 1] == [200] * (LIMIT - 1)
    assert set(codes[LIMIT - 1 :]) == {429}


@pytest.mark.django_db(transaction=True)  # the writer thread stores the ingested sample
def test_agent_tokens_and_share_links_work_from_a_locked_address(client: Client, root, agent_token) -> None:
    for attempt in range(LIMIT):
        sign_in(client, "/accounts/login/", "root", f"wrong-{attempt}")
    assert sign_in(client, "/accounts/login/", "root", "root-pass-123").status_code == 429
    token, secret = agent_token
    body = {"samples": [{"source": "lab.a", "metric": "t", "ts": now_us() // 1000, "value": 1.5}]}
    ingest = client.post(
        "/api/v1/ingest",
        json.dumps(body),
        content_type="application/json",
        headers={"Authorization": f"Token {secret}"},
    )
    assert ingest.status_code in (200, 202), ingest.content
    board = Dashboard.objects.create(title="Lobby", slug="lobby")
    Panel.objects.create(dashboard=board, title="T", metrics=["lab.a.t"])
    _, share = ShareLink.issue(board, created_by=root)
    assert client.get(f"/share/{share}/").status_code == 200
    assert client.get(f"/share/{share}/series", {"metric": "lab.a.t"}).status_code == 200


@pytest.mark.sqlite_only
@pytest.mark.slow
def test_a_real_server_locks_a_browser_out_after_wrong_passwords(tmp_path) -> None:
    """Through Daphne with CSRF, as a browser would: the lock holds across requests and a good password."""
    env = project_env(tmp_path, LOGIN_FAILURE_LIMIT="3", ADMIN_USERNAME="admin", ADMIN_PASSWORD="real-pass-123")
    with running_server(env) as server:
        manage(env, "ensureadmin")
        codes = []
        with httpx.Client(base_url=server.url) as browser:
            for password in ["no-1", "no-2", "no-3", "real-pass-123"]:
                page = browser.get("/accounts/login/")
                token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
                answer = browser.post(
                    "/accounts/login/",
                    data={"username": "admin", "password": password, "csrfmiddlewaretoken": token},
                )
                codes.append(answer.status_code)
        assert codes == [200, 200, 429, 429]
        assert "Try again after" in answer.text and int(answer.headers["Retry-After"]) > 0
        with pytest.raises(AssertionError):
            login_cookies(server, "admin", "real-pass-123")
