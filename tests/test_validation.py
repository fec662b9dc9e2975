"""Validation: the batch fast path answers exactly as the per-sample rules do, for good and bad samples alike."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from dashboard import validation
from dashboard.exceptions import InvalidReading
from dashboard.timeutil import US
from dashboard.validation import (
    MAX_ABS_VALUE,
    Reading,
    Rejection,
    reading_from_dict,
    readings_from_dicts,
    readings_from_json,
)

NOW = 1_795_694_400_000_000  # 2026-11-26 12:00:00 UTC: the window around it is fixed, whatever the date


def one_by_one(samples: list[Any], defaults: dict[str, Any], precision: str) -> list[Reading | Rejection]:
    out: list[Reading | Rejection] = []
    for index, item in enumerate(samples):
        try:
            out.append(reading_from_dict(item, defaults, precision, NOW))
        except InvalidReading as exc:
            out.append(Rejection(index, exc.field, exc.message, exc.code))
    return out


names = st.sampled_from(["cpu", "load", "m001", "bad name", "", "x" * 190, 7, None])
sources = st.sampled_from(["web-01", "dev", "bad source", "y" * 130, 3, None])
stamps = st.one_of(
    st.integers(NOW - 10 * 86_400 * US, NOW + 3600 * US),
    st.sampled_from([NOW, NOW // 1000, NOW // US, True, 1.5, "2026-11-26T00:00:00Z", None]),
)
values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1, True, "3", None, MAX_ABS_VALUE, -MAX_ABS_VALUE, 2e300, 10**400]),
)
samples = st.one_of(
    st.fixed_dictionaries({"metric": names, "ts": stamps, "value": values}),
    st.fixed_dictionaries(
        {"metric": names, "ts": stamps, "value": values},
        optional={"source": sources, "unit": st.sampled_from(["%", 5, "u" * 40]), "labels": st.just({"a": "b"})},
    ),
    st.sampled_from([[], "sample", 3, {}]),
)


@pytest.mark.sqlite_only  # no database: the PostgreSQL pass would repeat it
@hsettings(max_examples=300, deadline=None)
@given(
    batch=st.lists(samples, max_size=12),
    defaults=st.sampled_from([{}, {"source": "web-01"}, {"source": "web-01", "unit": "%"}, {"source": 5}]),
    precision=st.sampled_from(["us", "ms", "s", "ns"]),
)
def test_the_batch_path_gives_the_same_readings_and_rejections_as_one_sample_at_a_time(
    batch: list[Any], defaults: dict[str, Any], precision: str
) -> None:
    want = one_by_one(batch, defaults, precision)
    assert readings_from_dicts(batch, defaults, precision, NOW) == want
    # Again with every key that passed already remembered (the fast path's condition).
    assert readings_from_dicts(batch, defaults, precision, NOW) == want


# Samples of the shape the one-pass path decodes, good and bad (the general strategy rarely makes a whole batch of them).
plain_samples = st.fixed_dictionaries(
    {
        "metric": st.sampled_from(["cpu", "load", "bad name", "", "x" * 190]),
        "ts": st.one_of(
            st.integers(NOW - 10 * 86_400 * US, NOW + 3600 * US), st.sampled_from([NOW // 1000, 2**64, -(2**70)])
        ),
        "value": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1, 2e300, 10**400, 2**64])),
    },
    optional={"source": st.sampled_from(["web-01", "dev", "bad source", "y" * 130])},
)


@pytest.mark.sqlite_only  # no database: the PostgreSQL pass would repeat it
@hsettings(max_examples=500, deadline=None)
@given(
    batch=st.one_of(st.lists(plain_samples, max_size=12), st.lists(samples, max_size=12)),
    defaults=st.sampled_from([{}, {"source": "web-01"}, {"source": "web-01", "unit": "%"}, {"source": 5}]),
    precision=st.sampled_from(["us", "ms", "s", "ns"]),
)
def test_the_one_pass_json_path_answers_as_the_general_one_or_leaves_the_body_to_it(
    batch: list[Any], defaults: dict[str, Any], precision: str
) -> None:
    # json.dumps writes NaN, Infinity and 10**400 as json.loads reads them back: the cases msgspec refuses.
    body = json.dumps({**defaults, "precision": precision, "samples": batch}).encode()
    payload = json.loads(body)
    want = one_by_one(payload["samples"], {k: v for k, v in payload.items() if k in defaults}, precision)
    for _ in range(2):  # the second time with every key that passed remembered
        got = readings_from_json(body, NOW, 1000)
        assert got is None or got == want


def test_the_one_pass_json_path_takes_plain_agent_bodies_and_leaves_the_rest() -> None:
    validation.check_keys("web-01", "cpu")
    sample = {"metric": "cpu", "ts": NOW // 1000, "value": 0.5}
    plain = {"source": "web-01", "samples": [sample, {**sample, "ts": 5}, {**sample, "source": "bad source"}]}
    got = readings_from_json(json.dumps(plain).encode(), NOW, 1000)
    assert got is not None and got[0] == Reading("web-01", "cpu", NOW // 1000 * 1000, 0.5)
    assert [(r.index, r.field) for r in got[1:]] == [(1, "ts"), (2, "source")]
    assert readings_from_json(json.dumps(plain).encode(), NOW, 2) is None  # over the limit: the caller says so
    for other in (
        {**plain, "unit": "%"},
        {"source": "web-01", "samples": [{**sample, "value": float("nan")}]},
        {"source": "web-01", "samples": [{**sample, "ts": "2026-11-26T00:00:00Z"}]},
        [sample],
    ):
        assert readings_from_json(json.dumps(other).encode(), NOW, 1000) is None
    # Nanoseconds take the one-pass path too, scaled with integers (rounded down), not through a float.
    ns = NOW * 1000 + 999
    got = readings_from_json(
        json.dumps({"source": "web-01", "precision": "ns", "samples": [{**sample, "ts": ns}]}).encode(), NOW + 1, 1000
    )
    assert got == [Reading("web-01", "cpu", NOW, 0.5)]


def test_it_remembers_only_keys_that_pass_and_forgets_them_all_when_full(monkeypatch) -> None:
    monkeypatch.setattr(validation, "_VALID_KEYS", set())
    monkeypatch.setattr(validation, "VALID_KEYS_MAX", 2)
    validation.check_keys("web-01", "cpu")
    with pytest.raises(InvalidReading):
        validation.check_keys("web-01", "bad name")
    assert validation._VALID_KEYS == {("web-01", "cpu")}
    validation.check_keys("web-01", "load")
    validation.check_keys("web-01", "disk")
    assert validation._VALID_KEYS == {("web-01", "disk")}
