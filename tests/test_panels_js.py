"""panels.js and timerange.js in Node: gaps stay gaps, thresholds colour values, the URL holds the time state."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from dashboard.models import glob_matches
from dashboard.testing import ROOT

NODE = shutil.which("node")
STATIC = ROOT / "dashboard" / "static" / "dashboard"


@pytest.fixture(scope="module")
def run() -> dict:
    if NODE is None:
        pytest.skip("needs Node.js (node) to run the front-end modules")
    result = subprocess.run(
        [
            NODE,
            str(ROOT / "tests" / "js" / "panels_harness.mjs"),
            (STATIC / "panels.js").as_uri(),
            (STATIC / "timerange.js").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_silent_series_is_null_inside_its_silence_even_where_others_have_samples(run: dict) -> None:
    xs, a, b = run["shared"]
    assert xs == [1, 2, 3, 4, 5, 5.5, 6, 7, 8, 9]  # 5.5: a break point inside b's silence
    assert a == [1, 1, 1, 1, 1, "u", 1, 1, 1, 1]
    assert b == [2, 2, 2, None, None, None, None, None, None, 2]


def test_interleaved_series_without_silences_join_across_each_other(run: dict) -> None:
    xs, a, b = run["interleaved"]
    assert xs == [1, 2, 3, 4, 5, 6]
    assert None not in a and None not in b
    assert a == [1, "u", 1, "u", 1, "u"]


def test_a_single_series_breaks_at_its_silence(run: dict) -> None:
    assert run["single"] == [[1, 2, 4.5, 20, 21], [1, 2, None, 3, 4]]


def test_the_highest_threshold_reached_picks_the_colour(run: dict) -> None:
    assert run["colors"] == ["ok", "amber", "red"]


def test_the_url_holds_live_history_custom_and_paused_states(run: dict) -> None:
    default, live, history, custom, bogus = run["states"]
    assert (default["mode"], default["range"], default["windowS"]) == ("live", "15m", 900)
    assert (live["range"], live["paused"]) == ("1h", True)
    assert (history["mode"], history["spanS"]) == ("history", 7 * 86400)
    assert (custom["mode"], custom["fromMs"], custom["toMs"]) == ("history", 1000, 5000)
    assert bogus["range"] == "15m"
    assert run["written"] == "/d/host/?from=1000&to=5000"
    assert run["bounds"] == [700_000, 1_000_000]


def test_a_2_s_sensor_in_sub_second_buckets_is_one_line_not_isolated_points(run: dict) -> None:
    assert run["sensorOldNulls"] > 100, "the old rule (2.5 buckets) broke the line between every two samples"
    assert run["sensorGap"] == pytest.approx(10.0, abs=1.5), "five of the sensor's own 2 s intervals"
    assert run["sensorNulls"] == 0


def test_the_gap_rule_falls_back_to_the_expected_interval_and_never_undercuts_the_buckets(run: dict) -> None:
    assert run["fewPointsGap"] == 10, "5 x the source's expected 2 s until the series has 3 samples"
    assert run["unknownGap"] == 50, "5 x the default expected interval of 10 s"
    assert run["bucketGap"] == 3000, "5 x the median 600 s spacing, above 2.5 buckets"


def test_a_sensor_that_lost_30_s_still_shows_a_gap(run: dict) -> None:
    assert run["lostNulls"] == 1


def test_each_series_breaks_by_its_own_gap(run: dict) -> None:
    xs, fast, slow = run["perSeries"]
    assert xs == [0, 1, 2, 3, 4.5, 10, 11]
    assert fast == [1, 1, 1, 1, None, 1, 1], "the fast series broke after 7 s of silence"
    assert None not in slow, "10 s is no gap for a series that reports every 10 s"


def test_samples_without_a_drawn_neighbour_are_drawn_as_points(run: dict) -> None:
    single, mixed, with_undefined, joined, short_runs = run["isolated"]
    assert single == [0], "a series with one bucket (7 d, recent data only) is one point"
    assert mixed == [1, 6]
    assert with_undefined == [0, 4], "undefined (another series' timestamp) neither joins nor breaks"
    assert joined == []
    assert short_runs == [1, 2], "two buckets closer than the minimum span are points; a wide run is a line"


def test_times_are_shown_and_read_in_the_chosen_zone_on_a_24_hour_clock(run: dict) -> None:
    times = run["times"]
    assert times["input"] == ["2026-07-02 00:05", "2026-07-01 18:05", "2026-07-01 22:05"]
    assert times["clock"] == ["07:05:09", "00:30:00"], "never AM/PM, never 24:30"
    assert times["full"] == "2026-07-02 07:05:09"
    assert times["parsed"] == [True, True, True]
    assert times["refused"] == [None, None, None]


def test_the_editor_pushes_covered_panels_down_instead_of_overlapping(run: dict) -> None:
    cells = run["settled"]["cells"]
    assert cells == [["a", 0, 0, 6, 2], ["b", 4, 2, 4, 2], ["c", 0, 4, 8, 5], ["d", 8, 0, 4, 7]]
    assert run["settled"]["pushed"] == ["b", "c"]


def test_the_editor_previews_how_many_series_each_pattern_matches_like_the_server(run: dict) -> None:
    preview = run["preview"]
    server = [sum(glob_matches(p, k) for k in preview["keys"]) for p in preview["patterns"]]
    assert preview["counts"] == server, "the same counts as dashboard/models.py glob_matches (fnmatch)"
    assert preview["counts"][:2] == [2, 0], "a typo such as iot.*.temprature matches nothing"


def test_a_variable_in_a_pattern_stands_for_its_choice_or_its_glob(run: dict) -> None:
    assert run["expanded"] == ["iot.boiler-1.temperature", "iot.*.t", "iot.$room.t"]
    assert run["variableCounts"] == [2, 1]


def test_decimals_fix_the_digits_of_legends_and_stats(run: dict) -> None:
    assert run["decimals"] == ["21.5 °C", "21.46 °C", "0.00 %", "123k", "2 KiB"]


def test_min_and_max_are_the_value_axis_and_a_side_left_out_follows_the_data(run: dict) -> None:
    auto, both, low, high, empty = run["yRanges"]
    assert auto == "auto"
    assert both == [0, 60]
    assert low[0] == 0 and low[1] > 30
    assert high[1] == 10 and high[0] < 10  # a max below the data still gives a valid range
    assert empty == [0, 5]
