"""Agent tokens in the admin: the secret is shown once and never stored; revoking works; counters are shown."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from dashboard.models import AgentToken, Source

pytestmark = pytest.mark.django_db

SECRET_RE = re.compile(r"<code id='agent-token-secret'>([^<]+)</code>")


@pytest.fixture
def admin_client(django_user_model) -> Client:
    user = django_user_model.objects.create_superuser("root", password="root-pass-123")
    client = Client()
    client.force_login(user)
    return client


def test_the_add_view_shows_the_secret_once_and_stores_only_its_hash(admin_client: Client) -> None:
    response = admin_client.post(
        "/admin/dashboard/agenttoken/add/", {"name": "agent on web-01", "source_patterns": "host.*"}, follow=True
    )
    assert response.status_code == 200
    found = SECRET_RE.findall(response.content.decode())
    assert len(found) == 1
    secret = found[0]

    token = AgentToken.objects.get(name="agent on web-01")
    assert AgentToken.find(secret) == token
    assert token.secret_hash != secret and secret not in token.secret_hash
    assert len(token.secret_hash) == 64  # a SHA-256 hex digest
    assert token.allows("host.web-01") and not token.allows("iot.x")

    for url in (f"/admin/dashboard/agenttoken/{token.pk}/change/", "/admin/dashboard/agenttoken/"):
        page = admin_client.get(url).content.decode()
        assert secret not in page
        assert not SECRET_RE.search(page)


def test_the_revoke_action_makes_the_token_useless(admin_client: Client) -> None:
    token, secret = AgentToken.issue("old agent")
    response = admin_client.post(
        "/admin/dashboard/agenttoken/", {"action": "revoke", "_selected_action": [token.pk]}, follow=True
    )
    assert "Revoked 1 token(s)." in response.content.decode()
    token.refresh_from_db()
    assert token.is_revoked
    refused = Client().post(
        "/api/v1/ingest", {"samples": []}, content_type="application/json", headers={"Authorization": f"Token {secret}"}
    )
    assert refused.status_code == 401
    assert "revoked" in refused.json()["error"]["message"]


def test_the_source_and_token_lists_show_ingest_counters(admin_client: Client) -> None:
    Source.objects.create(slug="host.counted", name="counted", samples_accepted=1234, samples_rejected=56)
    page = admin_client.get("/admin/dashboard/source/").content.decode()
    assert "1234" in page and "56" in page
    assert "Samples accepted" in page and "Samples rejected" in page
    token, _ = AgentToken.issue("busy agent")
    AgentToken.objects.filter(pk=token.pk).update(samples_accepted=777, samples_rejected=3)
    page = admin_client.get("/admin/dashboard/agenttoken/").content.decode()
    assert "777" in page and "Samples accepted" in page
