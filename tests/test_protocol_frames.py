"""Every server frame, however it is built, decodes as its declared msgspec type (dashboard/live/protocol.py).

The data path builds frames by joining pre-encoded strings (dashboard/live/frames.py)
for speed; these tests keep that text and the declared types from drifting apart.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import msgspec
import pytest
from asgiref.sync import sync_to_async

from dashboard import actions, events
from dashboard.live import frames, protocol
from dashboard.live.client import LiveClient
from dashboard.live.hub import Hub
from dashboard.timeutil import US, now_us
from dashboard.validation import Reading
from tests.test_subscriptions import Collector

SERVER_FRAMES = msgspec.json.Decoder(protocol.ServerFrame)


def decoded(text: str) -> protocol.ServerFrame:
    return SERVER_FRAMES.decode(text)


def test_the_fast_data_frame_builder_decodes_as_the_declared_data_frame() -> None:
    """Live and replay data frames, joined from fragments (with a late one), are Data frames."""
    fragments = [
        frames.encode_fragment("plant.µ-meter", [1, 2], [0.5, -1e300]),
        frames.encode_fragment('odd "key"\\', [3], [float(2**53)], late=True),
    ]
    live = decoded(frames.data_frame([f.json for f in fragments]))
    replay = decoded(frames.data_frame([f.json for f in fragments], replay=True))
    assert isinstance(live, protocol.Data) and not live.replay
    assert isinstance(replay, protocol.Data) and replay.replay
    assert [(b.k, b.t, b.v, b.late) for b in live.batches] == [
        ("plant.µ-meter", [1, 2], [0.5, -1e300], False),
        ('odd "key"\\', [3], [float(2**53)], True),
    ]


def test_a_shared_frame_is_the_same_data_frame_for_every_session() -> None:
    """shared_frame's cached text decodes as a Data frame with every fragment in it."""
    shared: dict = {}
    fragments = [frames.encode_fragment(f"k{i}", [i], [float(i)], shared) for i in range(3)]
    frame = frames.shared_frame(fragments)
    assert frames.shared_frame(list(reversed(fragments))) is frame
    assert [b.k for b in decoded(frame).batches] == ["k0", "k1", "k2"]


def test_notices_decode_as_their_declared_frames() -> None:
    """Degraded, stale, heartbeat and alert frames match their types."""
    assert isinstance(decoded(frames.degraded_frame("layer", "degraded", 5)), protocol.Degraded)
    assert decoded(frames.stale_frame(["a.b"], "stale", 7)) == protocol.Stale(["a.b"], "stale", 7)
    assert isinstance(decoded(frames.heartbeat_frame()), protocol.Heartbeat)
    alert = events.AlertState(
        rule=1, rule_name="hot", metric="a.b", state="firing", previous="ok", severity="page", value=None, at=9
    )
    frame = decoded(frames.alert_frame(alert))
    assert isinstance(frame, protocol.Alert)
    assert msgspec.structs.asdict(frame) == {k: v for k, v in alert.as_message().items() if k != "type"}


def test_the_alert_frame_has_every_field_of_the_alert_event_and_the_protocol_doc_shows_them_all() -> None:
    """The frame is declared from events.AlertState; the doc's example decodes as it (no field missing or extra)."""
    assert [f.name for f in msgspec.structs.fields(protocol.Alert)] == [
        f.name for f in dataclasses.fields(events.AlertState)
    ]
    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text(encoding="utf-8")
    example = re.search(r"### alert\n.*?```json\n(.*?)```", doc, re.S)
    assert example, "docs/protocol.md has no alert example"
    assert isinstance(decoded(example.group(1)), protocol.Alert)


def test_error_frames_decode_as_the_declared_error_frame() -> None:
    """Every shape of error frame (with or without id, one pattern or many, the limit) is an Error."""
    assert decoded(protocol.error_frame("bad_message", "messages must be JSON objects")).id is None
    frame = decoded(
        protocol.error_frame(
            "too_many_subscriptions", "cut", id=[1], metric="a.*", metrics=["a.*"], keys_left_out=3, limit=10
        )
    )
    assert isinstance(frame, protocol.Error) and frame.keys_left_out == 3


@pytest.mark.django_db(transaction=True)
async def test_a_whole_conversation_sends_only_declared_server_frames(django_user_model) -> None:
    """hello, subscribed (keys and globs), data (replay and live), lag, pong, unsubscribed, error: all declared."""
    user = await sync_to_async(django_user_model.objects.create_user)("frames", password="x", is_staff=True)
    now = now_us()
    await actions.ingest([Reading("plant.a", "temp", now - US, 1.0), Reading("plant.a", "rpm", now - US, 2.0)])
    transport = Collector()
    client = transport.client = LiveClient(user, transport)
    await client.start()
    try:
        messages = [
            {"type": "subscribe", "id": 1, "metrics": ["plant.a.temp", "plant.*", "nope.x"], "history_s": 60},
            {"type": "ping", "id": "p"},
            {"type": "subscribe", "id": 2, "metrics": []},
            {"type": "what"},
            {"type": "unsubscribe", "id": 3, "metrics": ["plant.a.rpm"]},
        ]
        for message in messages:
            await client.handle(json.dumps(message))
        await actions.ingest([Reading("plant.a", "temp", now_us(), 3.0)])
        await Hub.get().reconcile()
    finally:
        await client.stop()
    kinds = [type(decoded(text)).__name__ for text in transport.texts]
    for kind in ("Hello", "Subscribed", "Data", "Pong", "Error", "Unsubscribed"):
        assert kind in kinds, (kind, kinds)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"type": "subscribe", "metrics": ["a"], "since": {}, "max_rate": None}, protocol.Subscribe(["a"])),
        ({"type": "ack", "frame": 2**70, "extra": 1}, protocol.Ack(2**70)),
        ({"type": "ping", "id": {"any": ["json"]}}, protocol.Ping({"any": ["json"]})),
    ],
)
def test_client_frames_decode_into_their_types(message: dict, expected: protocol.ClientFrame) -> None:
    """Client messages become typed frames; extra fields are ignored, an empty `since` means none."""
    assert protocol.decode_client(message) == expected


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"type": "subscribe", "metrics": ["a", ""], "since": 5}, "subscribe needs 'metrics'"),
        ({"type": "subscribe", "metrics": ["a"], "since": {"a": True}, "history_s": -1}, "'since' must map"),
        ({"type": "subscribe", "metrics": ["a"], "history_s": None}, "'history_s' must be"),
        ({"type": "subscribe", "metrics": ["a"], "max_rate": 1000}, "'max_rate' must be"),
        ({"type": "unsubscribe"}, "unsubscribe needs 'metrics'"),
        ({"type": "ack", "frame": -1}, "ack needs 'frame'"),
    ],
)
def test_a_bad_client_frame_names_its_first_bad_field(message: dict, error: str) -> None:
    """The error names the first field that fails, in the order the fields are declared."""
    with pytest.raises(ValueError, match=error):
        protocol.decode_client(message)
