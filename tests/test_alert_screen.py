"""The alerts screen's page and JSON API (dashboard/pages/alerts.py, dashboard/alerts/screen.py) and the shared rule validation (dashboard/alerts/forms.py)."""

from __future__ import annotations

import fnmatch
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, Permission
from django.test import Client
from django.utils import timezone
from hypothesis import given, settings
from hypothesis import strategies as st

from dashboard.alerts.forms import KeySet
from dashboard.models import AlertEvent, AlertInstance, AlertRule, Metric, Source
from dashboard.timeutil import US

pytestmark = pytest.mark.django_db


@pytest.fixture
def metrics() -> dict[str, Metric]:
    """Two open sensors and one locked room that only the 'lab' group may read."""
    found = {}
    for slug in ("iot.sensor-01", "iot.sensor-02"):
        source = Source.objects.create(slug=slug, name=slug, kind=Source.Kind.DEVICE)
        for name, unit in (("temperature", "°C"), ("humidity", "%")):
            found[f"{slug}.{name}"] = Metric.objects.create(source=source, name=name, key=f"{slug}.{name}", unit=unit)
    locked = Source.objects.create(slug="lab.vault", name="Vault", kind=Source.Kind.DEVICE)
    locked.viewer_groups.add(Group.objects.create(name="lab"))
    found["lab.vault.temperature"] = Metric.objects.create(
        source=locked, name="temperature", key="lab.vault.temperature"
    )
    return found


def grant(user, *codenames: str):
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="dashboard", codename__in=codenames))
    return type(user).objects.get(pk=user.pk)  # a fresh object: permissions are cached per instance


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


RULE = {
    "name": "Too warm",
    "metric_pattern": "iot.*.temperature",
    "condition": "above",
    "threshold": 28,
    "for_s": 30,
    "severity": "critical",
}


def test_the_page_lists_visible_rules_and_links_from_the_top_bar(viewer, metrics) -> None:
    AlertRule.objects.create(name="Too warm", metric_pattern="iot.*.temperature", threshold=28, for_s=30)
    page = signed_in(viewer).get("/alerts/").content.decode()
    assert '<a href="/alerts/">Alerts</a>' in page
    assert '<script id="alerts-config" type="application/json">' in page and "Too warm" in page
    assert "<script>" not in page  # no inline script: data comes through json_script, code from a static module
    assert 'src="/static/dashboard/alertscreen.js"' in page


def test_strangers_are_sent_to_sign_in_and_the_api_answers_401(client: Client) -> None:
    assert client.get("/alerts/")["Location"].startswith("/accounts/login/")
    response = client.get("/api/v1/alert-rules")
    assert response.status_code == 401 and response.json()["error"]["code"] == "not_authenticated"


def test_rules_on_metrics_the_user_may_not_read_are_not_listed(owner, viewer, metrics) -> None:
    open_rule = AlertRule.objects.create(name="Sensors", metric_pattern="iot.*.temperature", threshold=28)
    vault = AlertRule.objects.create(name="Vault", metric_pattern="lab.vault.temperature", threshold=5)
    AlertInstance.objects.create(rule=vault, metric=metrics["lab.vault.temperature"], state="firing", last_value=9)
    bob = signed_in(viewer)
    listed = bob.get("/api/v1/alert-rules").json()
    assert [r["name"] for r in listed["rules"]] == ["Sensors"]
    assert listed["rules"][0]["matches"] == 2 and listed["rules"][0]["condition_text"] == "above 28 °C"
    assert "webhook_url" not in listed["rules"][0]  # targets are for editors only
    assert bob.get(f"/api/v1/alert-rules/{vault.id}").status_code == 404
    assert bob.get(f"/api/v1/alert-rules/{vault.id}/history").json()["error"]["code"] == "not_found"
    assert bob.get(f"/api/v1/alert-rules/{open_rule.id}").status_code == 200
    alice = signed_in(owner)
    assert [r["name"] for r in alice.get("/api/v1/alert-rules").json()["rules"]] == ["Sensors", "Vault"]


def test_a_rule_on_a_mix_shows_only_the_instances_the_user_may_read(viewer, metrics) -> None:
    rule = AlertRule.objects.create(name="Everything hot", metric_pattern="*.temperature", threshold=28)
    AlertInstance.objects.create(rule=rule, metric=metrics["lab.vault.temperature"], state="firing", last_value=40)
    AlertInstance.objects.create(rule=rule, metric=metrics["iot.sensor-01.temperature"], state="pending", last_value=30)
    body = signed_in(viewer).get("/api/v1/alert-rules").json()["rules"][0]
    assert [i["metric"] for i in body["instances"]] == ["iot.sensor-01.temperature"]
    assert body["state"] == "pending" and body["matches"] == 2


def test_a_viewer_without_rights_cannot_create_change_delete_or_acknowledge(viewer, metrics) -> None:
    rule = AlertRule.objects.create(name="Sensors", metric_pattern="iot.*.temperature", threshold=28)
    inst = AlertInstance.objects.create(rule=rule, metric=metrics["iot.sensor-01.temperature"], state="firing")
    bob = signed_in(viewer)
    for response in (
        bob.post("/api/v1/alert-rules", RULE, content_type="application/json"),
        bob.patch(f"/api/v1/alert-rules/{rule.id}", {"enabled": False}, content_type="application/json"),
        bob.delete(f"/api/v1/alert-rules/{rule.id}"),
        bob.post(f"/api/v1/alerts/{inst.id}/ack", {}, content_type="application/json"),
        bob.post(f"/api/v1/alerts/{inst.id}/silence", {"duration_s": 60}, content_type="application/json"),
    ):
        assert response.status_code == 403, response.content
        assert response.json()["error"]["code"] == "forbidden"
    assert AlertRule.objects.count() == 1 and AlertRule.objects.get().enabled
    inst.refresh_from_db()
    assert inst.acknowledged_by is None and inst.silenced_until is None
    rights = bob.get("/api/v1/alert-rules").json()
    assert not (rights["can_add"] or rights["can_change"] or rights["can_delete"] or rights["can_operate"])


def test_an_editor_creates_edits_disables_and_deletes_a_rule(viewer, metrics) -> None:
    editor = grant(viewer, "add_alertrule", "change_alertrule", "delete_alertrule")
    client = signed_in(editor)
    created = client.post("/api/v1/alert-rules", RULE, content_type="application/json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["state"] == "ok" and body["matches"] == 2 and body["condition_text"] == "above 28 °C for 30 s"
    rule_id = body["id"]
    changed = client.patch(f"/api/v1/alert-rules/{rule_id}", {"threshold": 30.5}, content_type="application/json")
    assert changed.json()["condition_text"] == "above 30.5 °C for 30 s"
    disabled = client.patch(f"/api/v1/alert-rules/{rule_id}", {"enabled": False}, content_type="application/json")
    assert disabled.json()["state"] == "disabled" and not AlertRule.objects.get(pk=rule_id).enabled
    # Its metrics gone, the rule still saves as long as its pattern is unchanged (the editor sends every field).
    Metric.objects.filter(key__startswith="iot.").delete()
    again = client.patch(
        f"/api/v1/alert-rules/{rule_id}",
        {**RULE, "threshold": 29, "enabled": True, "allow_empty_match": False},
        content_type="application/json",
    )
    assert again.status_code == 200 and again.json()["matches"] == 0, again.content
    moved = client.patch(
        f"/api/v1/alert-rules/{rule_id}", {"metric_pattern": "iot.*.temp"}, content_type="application/json"
    )
    assert moved.json()["error"]["code"] == "pattern_matches_nothing"
    assert client.delete(f"/api/v1/alert-rules/{rule_id}").json() == {"deleted": rule_id}
    assert not AlertRule.objects.exists()


def test_disabling_or_deleting_a_rule_from_the_page_resolves_its_alerts(owner, metrics) -> None:
    staff = grant(owner, "change_alertrule", "delete_alertrule")
    rule = AlertRule.objects.create(name="Sensors", metric_pattern="iot.*.temperature", threshold=28)
    inst = AlertInstance.objects.create(
        rule=rule, metric=metrics["iot.sensor-01.temperature"], state="firing", last_value=31
    )
    client = signed_in(staff)
    body = client.patch(f"/api/v1/alert-rules/{rule.id}", {"enabled": False}, content_type="application/json").json()
    assert body["state"] == "disabled" and body["instances"] == []
    inst.refresh_from_db()
    assert inst.state == "resolved"
    assert AlertEvent.objects.filter(rule=rule, to_state="resolved", message__contains="rule disabled").exists()
    # Enabled again, firing again, then deleted: the rule and its alert are gone with it.
    client.patch(f"/api/v1/alert-rules/{rule.id}", {"enabled": True}, content_type="application/json")
    AlertInstance.objects.filter(pk=inst.pk).update(state="firing")
    assert client.delete(f"/api/v1/alert-rules/{rule.id}").status_code == 200
    assert not AlertInstance.objects.filter(pk=inst.pk).exists()


def test_a_pattern_that_matches_nothing_is_refused_with_close_keys(viewer, metrics) -> None:
    client = signed_in(grant(viewer, "add_alertrule"))
    response = client.post(
        "/api/v1/alert-rules", {**RULE, "metric_pattern": "iot.*.temprature"}, content_type="application/json"
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "pattern_matches_nothing" and error["field"] == "metric_pattern"
    assert error["suggestions"][0] == "iot.*.temperature"
    assert "iot.*.temperature" in error["message"]
    assert not AlertRule.objects.exists()
    allowed = client.post(
        "/api/v1/alert-rules",
        {**RULE, "metric_pattern": "iot.*.temprature", "allow_empty_match": True},
        content_type="application/json",
    )
    assert allowed.status_code == 201, allowed.content
    # Its author still sees it, though it matches nothing yet.
    assert [r["metric_pattern"] for r in client.get("/api/v1/alert-rules").json()["rules"]] == ["iot.*.temprature"]


def test_a_pattern_matching_only_unreadable_metrics_is_refused_too(viewer, metrics) -> None:
    client = signed_in(grant(viewer, "add_alertrule"))
    response = client.post(
        "/api/v1/alert-rules", {**RULE, "metric_pattern": "lab.vault.*"}, content_type="application/json"
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "pattern_matches_nothing"
    assert "lab.vault" not in str(response.json()["error"].get("suggestions", []))


def test_bad_fields_are_named_in_the_one_error_shape(viewer, metrics) -> None:
    client = signed_in(grant(viewer, "add_alertrule"))
    cases = [
        ({**RULE, "threshold": None}, "threshold"),
        ({**RULE, "condition": "sideways"}, "condition"),
        ({**RULE, "for_s": -1}, "for_s"),
        ({**RULE, "condition": "outside", "threshold": 10, "threshold_high": 5}, "threshold_high"),
        ({**RULE, "colour": "red"}, "colour"),
        ({**RULE, "enabled": "yes"}, "enabled"),
        ({**RULE, "name": ""}, "name"),
    ]
    for body, field in cases:
        response = client.post("/api/v1/alert-rules", body, content_type="application/json")
        assert response.status_code == 400, body
        assert response.json()["error"]["field"] == field, response.json()
    assert client.post("/api/v1/alert-rules", "[1]", content_type="application/json").json()["error"]["field"] == "body"
    assert not AlertRule.objects.exists()


def test_the_preview_counts_only_what_the_user_may_read(owner, viewer, metrics) -> None:
    bob = signed_in(viewer)
    body = bob.get("/api/v1/alert-rules/preview", {"pattern": "*.temperature"}).json()
    assert body["count"] == 2 and body["keys"] == ["iot.sensor-01.temperature", "iot.sensor-02.temperature"]
    assert signed_in(owner).get("/api/v1/alert-rules/preview", {"pattern": "*.temperature"}).json()["count"] == 3
    typo = bob.get("/api/v1/alert-rules/preview", {"pattern": "iot.*.temprature"}).json()
    assert typo["count"] == 0 and typo["suggestions"][0] == "iot.*.temperature"
    assert bob.get("/api/v1/alert-rules/preview", {"pattern": "x" * 201}).status_code == 400


def test_the_preview_shows_the_first_20_keys_and_counts_them_all(viewer) -> None:
    source = Source.objects.create(slug="farm", name="Farm")
    Metric.objects.bulk_create(Metric(source=source, name=f"probe{i:02d}", key=f"farm.probe{i:02d}") for i in range(45))
    body = signed_in(viewer).get("/api/v1/alert-rules/preview", {"pattern": "farm.*"}).json()
    assert body["count"] == 45 and len(body["keys"]) == 20 and body["keys"][0] == "farm.probe00"


def test_acknowledge_and_silence_keep_the_since_of_an_instance(owner, metrics) -> None:
    rule = AlertRule.objects.create(name="Sensors", metric_pattern="iot.*.temperature", threshold=28)
    began = timezone.now() - timedelta(minutes=7)
    inst = AlertInstance.objects.create(
        rule=rule, metric=metrics["iot.sensor-01.temperature"], state="firing", since=began, last_value=31
    )
    alice = signed_in(owner)

    def listed() -> dict:
        return alice.get("/api/v1/alert-rules").json()["rules"][0]["instances"][0]

    assert listed()["since"] == int(began.timestamp() * US)
    assert alice.post(f"/api/v1/alerts/{inst.id}/ack", {}, content_type="application/json").status_code == 200
    after_ack = listed()
    assert after_ack["acknowledged_by"] == "alice" and after_ack["since"] == int(began.timestamp() * US)
    response = alice.post(f"/api/v1/alerts/{inst.id}/silence", {"duration_s": 3600}, content_type="application/json")
    assert response.status_code == 200
    after_silence = listed()
    assert after_silence["silenced_until"] > 0 and after_silence["since"] == int(began.timestamp() * US)
    assert alice.get("/api/v1/alert-rules").json()["rules"][0]["state"] == "silenced"


def test_a_pending_instance_is_pending_since_its_first_breaching_sample(owner, metrics) -> None:
    rule = AlertRule.objects.create(name="Sensors", metric_pattern="iot.*.temperature", threshold=28, for_s=60)
    AlertInstance.objects.create(
        rule=rule, metric=metrics["iot.sensor-01.temperature"], state="pending", pending_since_ts=1_700_000_000 * US
    )
    body = signed_in(owner).get("/api/v1/alert-rules").json()["rules"][0]
    assert body["state"] == "pending" and body["instances"][0]["since"] == 1_700_000_000 * US


def test_history_is_newest_first_and_paginated(owner, viewer, metrics) -> None:
    rule = AlertRule.objects.create(name="Everything", metric_pattern="*.temperature", threshold=28)
    start = timezone.now() - timedelta(hours=1)
    for i in range(45):
        AlertEvent.objects.create(
            rule=rule,
            metric=metrics["iot.sensor-01.temperature"],
            from_state="ok" if i % 2 == 0 else "firing",
            to_state="firing" if i % 2 == 0 else "resolved",
            value=28.0 + i,
            at=start + timedelta(seconds=i),
        )
    AlertEvent.objects.create(rule=rule, metric=metrics["lab.vault.temperature"], from_state="ok", to_state="firing")
    bob = signed_in(viewer)
    first = bob.get(f"/api/v1/alert-rules/{rule.id}/history").json()
    assert (first["page"], first["pages"], first["total"]) == (1, 3, 45)  # the vault's event is not bob's to read
    assert [e["value"] for e in first["events"][:3]] == [72.0, 71.0, 70.0]
    assert first["events"][0]["at"] == int((start + timedelta(seconds=44)).timestamp() * US)
    last = bob.get(f"/api/v1/alert-rules/{rule.id}/history", {"page": 3}).json()
    assert [e["value"] for e in last["events"]] == [32.0, 31.0, 30.0, 29.0, 28.0]
    past = bob.get(f"/api/v1/alert-rules/{rule.id}/history", {"page": 4})
    assert past.status_code == 400 and past.json()["error"]["field"] == "page"
    assert bob.get(f"/api/v1/alert-rules/{rule.id}/history", {"per_page": "0"}).json()["error"]["field"] == "per_page"
    assert signed_in(owner).get(f"/api/v1/alert-rules/{rule.id}/history").json()["total"] == 46


def test_writes_need_the_csrf_token(owner, metrics) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    assert client.post("/api/v1/alert-rules", RULE, content_type="application/json").status_code == 403
    assert not AlertRule.objects.exists()


def test_the_admin_form_refuses_the_same_typo(admin_user, metrics) -> None:
    client = signed_in(admin_user)
    form = {
        "name": "Typo",
        "metric_pattern": "iot.*.temprature",
        "condition": "above",
        "threshold": "28",
        "for_s": "0",
        "nodata_s": "60",
        "severity": "warning",
        "enabled": "on",
        "email_to": "",
        "webhook_url": "",
        "instances-TOTAL_FORMS": "0",
        "instances-INITIAL_FORMS": "0",
    }
    response = client.post("/admin/dashboard/alertrule/add/", form)
    assert response.status_code == 200 and "did you mean iot.*.temperature" in response.content.decode()
    assert not AlertRule.objects.exists()
    response = client.post("/admin/dashboard/alertrule/add/", {**form, "allow_empty_match": "on"})
    assert response.status_code == 302 and AlertRule.objects.get().metric_pattern == "iot.*.temprature"


@settings(max_examples=300, deadline=None)
@given(
    keys=st.lists(st.text(alphabet="ab1._:-", min_size=1, max_size=6), max_size=40, unique=True),
    pattern=st.text(alphabet="ab1._:-*?[]!", min_size=0, max_size=7),
)
def test_the_one_pass_glob_search_matches_exactly_what_fnmatch_matches(keys: list[str], pattern: str) -> None:
    found = KeySet(sorted(keys)).matching(pattern)
    assert found == [k for k in sorted(keys) if pattern and fnmatch.fnmatchcase(k, pattern)]
