"""connection.js in Node with fake sockets: it acks every ack_window/2 data frames, resumes with cursors, and falls back to SSE."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from dashboard.testing import ROOT

NODE = shutil.which("node")
pytestmark = pytest.mark.sqlite_only  # no database: once is enough


@pytest.fixture(scope="module")
def run() -> dict:
    if NODE is None:
        pytest.skip("needs Node.js (node) to run the front-end module")
    module = (ROOT / "dashboard" / "static" / "dashboard" / "connection.js").as_uri()
    result = subprocess.run(
        [NODE, str(ROOT / "tests" / "js" / "connection_harness.mjs"), module],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_it_subscribes_then_acknowledges_data_frames_by_count(run: dict) -> None:
    sent = run["sentOnFirstSocket"]
    assert sent[0]["type"] == "subscribe" and sent[0]["metrics"] == ["iot.*"]
    acks = [m["frame"] for m in sent if m["type"] == "ack"]
    assert acks == [2, 4]  # every ack_window/2 (2) frames; two in one task share one ack; counting starts at 1


def test_it_resumes_with_its_cursors_and_counts_frames_afresh_on_a_new_socket(run: dict) -> None:
    assert run["resumeSubscribe"]["since"] == {"iot.a.t": 40}
    assert run["acksOnSecondSocket"] == [2]  # the replay and the live frame arrived in one task


def test_the_state_says_how_many_samples_a_resume_back_filled(run: dict) -> None:
    assert run["stateAfterBackfill"] == "live · back-filled 3 samples"


def test_it_falls_back_to_server_sent_events_when_websocket_never_opens(run: dict) -> None:
    assert run["transport"] == "sse"
    assert run["sseUrl"].startswith("/api/v1/stream?")
    assert "metrics=iot.*" in run["sseUrl"].replace("%2A", "*")
    assert "since=iot.a.t%3A80" in run["sseUrl"]
    assert run["cursorAfterSse"] == 90
    assert run["stateOnSse"].startswith("live (SSE fallback)")


def test_a_lost_connection_shows_since_when_data_is_stale(run: dict) -> None:
    assert run["stale"].startswith("reconnecting · stale since ")


@pytest.fixture(scope="module")
def reconnect() -> dict:
    if NODE is None:
        pytest.skip("needs Node.js (node) to run the front-end module")
    module = (ROOT / "dashboard" / "static" / "dashboard" / "connection.js").as_uri()
    result = subprocess.run(
        [NODE, str(ROOT / "tests" / "js" / "connection_reconnect_harness.mjs"), module],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


SIGN_IN_BACK_HERE = "/accounts/login/?next=%2Fdashboards%2Fops%2F%3Frange%3D6h%26panel%3D2"


def test_on_sse_it_probes_websocket_with_backoff_from_one_second(reconnect: dict) -> None:
    assert reconnect["transportAfterOutage"] == "sse"
    assert reconnect["probeDelays"] == [1000, 2000, 4000, 8000]  # was one probe a minute


def test_the_first_greeted_probe_becomes_the_connection_and_resumes_from_the_sse_cursors(reconnect: dict) -> None:
    assert reconnect["transportAfterProbe"] == "websocket"
    assert reconnect["streamClosed"] and reconnect["probeIsTheConnection"]
    assert reconnect["socketsLater"] == reconnect["socketsAfterProbe"], "no second socket after the probe"
    resume = reconnect["resumeOnProbe"]
    assert resume["type"] == "subscribe" and resume["metrics"] == ["iot.*"]
    assert resume["since"] == {"iot.a.t": 30}  # the newest sample SSE delivered


def test_close_4001_goes_to_sign_in_with_next_back_to_the_page_and_its_query(reconnect: dict) -> None:
    assert reconnect["hrefAfter4001"] == SIGN_IN_BACK_HERE
    assert reconnect["stateAfter4001"] == "signed-out"


def test_a_401_on_the_sse_stream_goes_to_sign_in_instead_of_retrying_forever(reconnect: dict) -> None:
    assert reconnect["fetchedOn401"].startswith("/api/v1/stream?")
    assert reconnect["hrefAfter401"] == SIGN_IN_BACK_HERE
    assert reconnect["stateAfter401"] == "signed-out"
    assert reconnect["streamsOpenedAfter401"] == 0


def test_a_stream_refused_for_another_reason_keeps_retrying(reconnect: dict) -> None:
    assert reconnect["hrefAfter502"] == ""
    assert reconnect["streamsOpenedAfter502"] == 1


def test_the_servers_degraded_and_stale_notices_show_in_the_top_bar_and_on_affected_panels(run: dict) -> None:
    assert run["degradedState"].startswith("live · live delivery delayed (channel layer) since ")
    assert "live delivery delayed (channel layer) since " in run["panelNotice"]
    assert "source silent since " in run["panelNotice"]
    assert "source silent" not in run["otherPanelNotice"]  # only panels showing a stale metric say so
    assert run["recoveredState"] == "live"
    assert run["recoveredNotice"] is None
