from __future__ import annotations

import json

import pytest
from channels.testing import WebsocketCommunicator

from dashboard import actions
from dashboard.live.websocket import LiveConsumer
from dashboard.timeutil import US, now_us
from dashboard.validation import Reading

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("clock")]


async def connect(user) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(LiveConsumer.as_asgi(), "/ws/live/")
    communicator.scope["user"] = user
    connected, _ = await communicator.connect()
    assert connected
    hello = json.loads(await communicator.receive_from())
    assert hello["type"] == "hello" and hello["protocol"] == 1
    return communicator


async def receive(communicator: WebsocketCommunicator, kind: str, timeout: float = 5) -> dict:
    while True:
        frame = json.loads(await communicator.receive_from(timeout))
        if frame["type"] == kind:
            return frame


def temp(value: float, ts: int, source: str = "iot.sensor-01") -> Reading:
    return Reading(source, "temperature", ts, value, "°C", "gauge", "device")


async def test_it_sends_recent_history_then_live_batches(viewer) -> None:
    now = now_us()
    await actions.ingest([temp(20.0, now - 120 * US), temp(21.0, now - 60 * US)])
    ws = await connect(viewer)
    await ws.send_json_to({"type": "subscribe", "id": 7, "metrics": ["iot.*.temperature"], "history_s": 300})
    subscribed = await receive(ws, "subscribed")
    assert subscribed["id"] == 7
    assert [m["key"] for m in subscribed["metrics"]] == ["iot.sensor-01.temperature"]
    replay = await receive(ws, "data")
    assert replay["replay"] is True
    assert replay["batches"][0]["v"] == [20.0, 21.0]

    await actions.ingest([temp(22.5, now_us())])
    live = await receive(ws, "data")
    assert "replay" not in live
    assert live["batches"][0]["k"] == "iot.sensor-01.temperature"
    assert live["batches"][0]["v"] == [22.5]
    await ws.disconnect()


async def test_it_resumes_from_a_cursor_without_gap_or_duplicate(viewer) -> None:
    now = now_us()
    await actions.ingest([temp(float(i), now - (10 - i) * US) for i in range(5)])
    cursor = now - 8 * US  # the client saw samples 0..2 before it lost the connection
    ws = await connect(viewer)
    await ws.send_json_to(
        {"type": "subscribe", "metrics": ["iot.sensor-01.temperature"], "since": {"iot.sensor-01.temperature": cursor}}
    )
    replay = await receive(ws, "data")
    assert replay["batches"][0]["v"] == [3.0, 4.0]
    await ws.disconnect()


async def test_it_refuses_sockets_without_a_signed_in_user() -> None:
    from django.contrib.auth.models import AnonymousUser

    communicator = WebsocketCommunicator(LiveConsumer.as_asgi(), "/ws/live/")
    communicator.scope["user"] = AnonymousUser()
    await communicator.connect()
    error = json.loads(await communicator.receive_from())
    assert error["code"] == "not_authenticated"
    closed = await communicator.receive_output()
    assert closed == {"type": "websocket.close", "code": 4001}


async def test_it_answers_bad_messages_with_error_frames(viewer) -> None:
    ws = await connect(viewer)
    await ws.send_to(text_data="not json")
    assert (await receive(ws, "error"))["code"] == "bad_message"
    await ws.send_json_to({"type": "dance"})
    assert (await receive(ws, "error"))["code"] == "unknown_type"
    await ws.send_json_to({"type": "subscribe", "metrics": "cpu"})
    assert (await receive(ws, "error"))["code"] == "bad_message"
    await ws.send_json_to({"type": "subscribe", "id": 3, "metrics": ["nope.*"]})
    error = await receive(ws, "error")
    assert (error["code"], error["metric"], error["id"]) == ("unknown_metric", "nope.*", 3)
    await ws.disconnect()


async def test_it_closes_a_socket_that_sends_a_huge_message(viewer) -> None:
    ws = await connect(viewer)
    await ws.send_to(text_data="x" * (64 * 1024 + 1))
    assert (await receive(ws, "error"))["code"] == "message_too_big"
    assert await ws.receive_output() == {"type": "websocket.close", "code": 4009}


async def test_it_stops_sending_after_unsubscribe(viewer) -> None:
    await actions.ingest([temp(1.0, now_us())])
    ws = await connect(viewer)
    await ws.send_json_to({"type": "subscribe", "metrics": ["iot.sensor-01.temperature"], "history_s": 0})
    await receive(ws, "subscribed")
    await ws.send_json_to({"type": "unsubscribe", "metrics": ["iot.*"]})
    assert (await receive(ws, "unsubscribed"))["metrics"] == ["iot.sensor-01.temperature"]
    await actions.ingest([temp(2.0, now_us())])
    assert await ws.receive_nothing(0.3)
    await ws.disconnect()
