from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.db import IntegrityError
from django.utils import timezone

from dashboard.models import AgentToken, Metric, Sample, Source

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("clock")]


def make_metric(slug: str = "iot.sensor-01", name: str = "temperature") -> Metric:
    source, _ = Source.objects.get_or_create(slug=slug, defaults={"name": slug, "kind": Source.Kind.DEVICE})
    return Metric.objects.create(source=source, name=name, key=f"{slug}.{name}", unit="°C")


def test_it_refuses_a_second_sample_at_the_same_metric_and_time() -> None:
    metric = make_metric()
    Sample.objects.create(metric=metric, ts=1, value=1.0)
    with pytest.raises(IntegrityError):
        Sample.objects.create(metric=metric, ts=1, value=2.0)


def test_it_matches_metric_globs_across_sources() -> None:
    make_metric("iot.sensor-01")
    make_metric("iot.sensor-02")
    make_metric("iot.sensor-02", "humidity")
    keys = sorted(Metric.objects.matching("iot.*.temperature").values_list("key", flat=True))
    assert keys == ["iot.sensor-01.temperature", "iot.sensor-02.temperature"]
    assert Metric.objects.matching("iot.sensor-02.humidity").count() == 1


def test_a_source_is_stale_after_three_silent_intervals() -> None:
    source = Source(slug="x", name="x", expected_interval_s=10, last_seen=timezone.now())
    assert not source.is_stale()
    source.last_seen = timezone.now() - timezone.timedelta(seconds=31)
    assert source.is_stale()


def test_restricted_sources_are_visible_only_to_their_groups(owner, viewer, stranger) -> None:
    open_metric = make_metric("host.web-01", "cpu.total")
    secret = make_metric("iot.vault", "temperature")
    group = Group.objects.create(name="vault-team")
    secret.source.viewer_groups.add(group)
    viewer.groups.add(group)
    assert set(Metric.objects.visible_to(viewer)) == {open_metric, secret}
    assert set(Metric.objects.visible_to(stranger)) == {open_metric}
    assert set(Metric.objects.visible_to(owner)) == {open_metric, secret}


def test_an_agent_token_stores_only_a_hash_and_finds_its_secret() -> None:
    token, secret = AgentToken.issue("edge", "iot.*\nhost.edge-01")
    assert secret not in (token.secret_hash, token.lookup)
    assert AgentToken.find(secret) == token
    assert AgentToken.find(secret + "x") is None
    assert AgentToken.find("not-a-token") is None
    assert token.allows("iot.sensor-09")
    assert token.allows("host.edge-01")
    assert not token.allows("market.btc-usd")
