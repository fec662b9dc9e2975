"""Validation: the batch fast path answers exactly as the per-sample rules do, for good and bad samples alike."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from dashboard import validation
from dashboard.exceptions import InvalidReading
from dashboard.timeutil import US, now_us
from dashboard.validation import MAX_ABS_VALUE, Reading, Rejection, reading_from_dict, readings_from_dicts

NOW = now_us()


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
