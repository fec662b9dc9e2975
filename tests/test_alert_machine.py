"""The alert state machine alone (dashboard/alerts/machine.py): pure functions, no database, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dashboard.alerts.machine import (
    CachedInstance,
    CachedRule,
    State,
    breaches,
    describe,
    next_state,
    notifies,
    retired_message,
    retired_state,
    targets,
)
from dashboard.timeutil import US

T0 = 1_700_000_000 * US  # any instant, in µs
NOW = datetime(2026, 12, 6, 4, 0, tzinfo=UTC)


def rule(
    condition: str = "above", threshold: float | None = 30.0, high: float | None = None, for_s: int = 0
) -> CachedRule:
    return CachedRule(1, "Hot", "iot.*.temperature", condition, threshold, high, for_s * US, 60, "warning")


def at(state: str, since: int | None = None) -> CachedInstance:
    return CachedInstance(1, state, since)


def run(r: CachedRule, samples: list[tuple[float, float]], state: str = State.OK) -> list[str]:
    """Feed (seconds after T0, value) samples through the machine; return the states it passes through."""
    inst, seen, previous = at(state), [], None
    for offset_s, value in samples:
        ts = T0 + int(offset_s * US)
        breach = breaches(r, value, previous, ts)
        previous = (ts, value)
        if breach is None:
            continue
        to, since = next_state(r, inst, breach, ts)
        if to != inst.state:
            seen.append(to)
        inst = at(to, since)
    return seen


def test_it_fires_after_the_for_duration() -> None:
    assert run(rule(for_s=10), [(0, 31), (5, 32), (10, 33)]) == [State.PENDING, State.FIRING]


def test_it_stays_pending_until_the_for_duration_has_passed() -> None:
    assert run(rule(for_s=10), [(0, 31), (9.9, 32)]) == [State.PENDING]


def test_it_fires_on_the_first_breach_without_a_for_duration() -> None:
    assert run(rule(for_s=0), [(0, 31)]) == [State.FIRING]


def test_a_breach_shorter_than_the_duration_goes_back_to_ok() -> None:
    assert run(rule(for_s=10), [(0, 31), (5, 20)]) == [State.PENDING, State.OK]


def test_a_firing_alert_resolves_when_the_value_is_back_to_normal() -> None:
    assert run(rule(), [(0, 31), (1, 20)]) == [State.FIRING, State.RESOLVED]


def test_a_no_data_alert_resolves_on_the_next_normal_sample() -> None:
    assert run(rule(), [(0, 20)], state=State.NODATA) == [State.RESOLVED]


def test_pending_keeps_the_time_its_breach_began() -> None:
    to, since = next_state(rule(for_s=10), at(State.PENDING, T0), True, T0 + 3 * US)
    assert (to, since) == (State.PENDING, T0)


def test_firing_keeps_the_time_its_breach_began() -> None:
    assert next_state(rule(), at(State.FIRING, T0), True, T0 + 50 * US) == (State.FIRING, T0)


@pytest.mark.parametrize("state", [State.OK, State.RESOLVED])
def test_ok_and_resolved_stay_put_without_a_breach(state: str) -> None:
    assert next_state(rule(), at(state), False, T0) == (state, None)


@pytest.mark.parametrize(
    ("condition", "threshold", "high", "value", "expected"),
    [
        ("above", 30.0, None, 30.0, False),
        ("above", 30.0, None, 30.1, True),
        ("below", 10.0, None, 9.9, True),
        ("below", 10.0, None, 10.0, False),
        ("outside", 10.0, 30.0, 31.0, True),
        ("outside", 10.0, 30.0, 9.0, True),
        ("outside", 10.0, 30.0, 20.0, False),
        ("outside", None, 30.0, -1e9, False),
        ("above", None, None, 1e9, False),
        ("nodata", None, None, 1e9, False),
    ],
)
def test_each_condition_breaches_only_when_it_holds(
    condition: str, threshold: float | None, high: float | None, value: float, expected: bool
) -> None:
    assert breaches(rule(condition, threshold, high), value, None, T0) is expected


def test_a_rate_rule_cannot_tell_from_its_first_sample_or_one_out_of_order() -> None:
    r = rule("rate", 2.0)
    assert breaches(r, 20, None, T0) is None
    assert breaches(r, 20, (T0, 10), T0) is None  # no time passed


def test_a_rate_rule_compares_the_change_per_second_either_way() -> None:
    r = rule("rate", 2.0)
    assert breaches(r, 25, (T0, 20), T0 + US) is True  # +5/s
    assert breaches(r, 15, (T0, 20), T0 + US) is True  # -5/s
    assert breaches(r, 21, (T0, 20), T0 + US) is False


def test_it_notifies_firing_nodata_and_resolved_but_not_pending() -> None:
    assert notifies(State.PENDING, State.FIRING, None, NOW)
    assert notifies(State.OK, State.NODATA, None, NOW)
    assert notifies(State.FIRING, State.RESOLVED, None, NOW)
    assert not notifies(State.OK, State.PENDING, None, NOW)


def test_a_pending_alert_that_never_fired_resolves_quietly() -> None:
    assert not notifies(State.PENDING, State.RESOLVED, None, NOW)


def test_a_silence_mutes_notifications_until_it_ends() -> None:
    assert not notifies(State.OK, State.FIRING, NOW + timedelta(seconds=1), NOW)
    assert notifies(State.OK, State.FIRING, NOW - timedelta(seconds=1), NOW)


def test_a_rule_switched_off_sends_pending_to_ok_and_the_rest_to_resolved() -> None:
    assert retired_state(State.PENDING) == State.OK
    assert retired_state(State.FIRING) == State.RESOLVED
    assert retired_state(State.NODATA) == State.RESOLVED
    assert retired_message("iot.a.temperature", "rule deleted") == "iot.a.temperature: rule deleted, alert resolved"


def test_targets_are_the_webhook_then_one_email_per_line() -> None:
    assert targets("https://hooks.example/x", " ops@example.com \n\noncall@example.com\n") == [
        ("webhook", "https://hooks.example/x"),
        ("email", "ops@example.com"),
        ("email", "oncall@example.com"),
    ]
    assert targets("", "") == []


def test_the_text_says_the_value_the_condition_and_the_duration() -> None:
    key = "iot.a.temperature"
    assert describe(rule(for_s=30), key, "°C", State.FIRING, 31.5) == f"{key} is 31.5 °C, above 30 for 30 s"
    assert describe(rule(), key, "", State.RESOLVED, 20) == f"{key} is back to normal (20)"
    assert describe(rule(), key, "", State.NODATA, None) == f"{key} has sent no data for 60 s"
