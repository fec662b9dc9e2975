"""The server's garbage-collector policy: planned refreezes as connections grow (dashboard/fastpaths/gcpolicy.py)."""

from __future__ import annotations

import gc

import pytest

from dashboard.fastpaths import gcpolicy


@pytest.fixture
def configured(monkeypatch):
    thresholds = gc.get_threshold()
    monkeypatch.setattr(gcpolicy, "_configured", False)
    gcpolicy.configure()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_start_up_objects_are_frozen_and_young_collections_are_rarer(configured) -> None:
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == gcpolicy.THRESHOLDS


def test_it_refreezes_when_connections_grow_by_a_quarter_or_an_hour_passes(configured) -> None:
    now = gcpolicy._frozen_at
    assert not gcpolicy.maybe_refreeze(50, now + 1)  # fewer than REFREEZE_MIN_NEW new connections
    assert gcpolicy.maybe_refreeze(100, now + 1)
    assert not gcpolicy.maybe_refreeze(124, now + 2)
    assert gcpolicy.maybe_refreeze(250, now + 2)
    assert not gcpolicy.maybe_refreeze(250, gcpolicy._frozen_at + 10)
    assert gcpolicy.maybe_refreeze(250, gcpolicy._frozen_at + gcpolicy.REFREEZE_EVERY_S + 1)  # +1: float rounding


def test_processes_that_did_not_opt_in_are_left_alone(monkeypatch) -> None:
    monkeypatch.setattr(gcpolicy, "_configured", False)
    assert not gcpolicy.maybe_refreeze(10_000)
