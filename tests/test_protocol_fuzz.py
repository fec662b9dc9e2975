"""Fuzz the live protocol: LiveClient.handle with arbitrary text, bytes, JSON and near-valid messages.

Whatever a client sends, the server answers with well-formed frames or closes
with a documented code (CloseConnection); no other exception escapes, and the
connection's state stays consistent (subscriptions, cursors and hub groups
agree, limits hold, and stopping leaves nothing behind in the hub).

CI runs a small slice (FUZZ_EXAMPLES, default 150). The dedicated run:

    FUZZ_EXAMPLES=100000 .venv/bin/python -m pytest tests/test_protocol_fuzz.py -p no:cacheprovider -q -s

(see docs/security.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dashboard import storage
from dashboard.live import protocol
from dashboard.live.client import LiveClient
from dashboard.live.hub import Hub
from dashboard.timeutil import US, now_us
from dashboard.validation import Reading
from tests import hostile

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
KEYS = ["fz.host-a.cpu", "fz.host-a.mem", "fz.host-b.cpu", "fz.dev.temp"]
CLOSE_CODES = {
    protocol.CLOSE_MESSAGE_TOO_BIG,
    protocol.CLOSE_TOO_MANY_MESSAGES,
    protocol.CLOSE_FORBIDDEN,
    protocol.CLOSE_TOO_SLOW,
}
FRAME_TYPES = {
    "hello",
    "subscribed",
    "unsubscribed",
    "data",
    "lag",
    "pong",
    "error",
    "heartbeat",
    "alert",
    "degraded",
    "stale",
}

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("clock")]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
patterns = st.one_of(
    st.sampled_from(KEYS + ["fz.*", "*", "fz.host-?.cpu", "fz.[ab", "nope.*", "", "**", "fz.host-a.*"]),
    st.text(max_size=30),
)
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=5),
)
cursors = st.dictionaries(
    st.sampled_from(KEYS) | st.text(max_size=10), numbers | st.just(now_us() - 30 * US), max_size=4
)
protocol_messages = st.fixed_dictionaries(
    {"type": st.sampled_from(["subscribe", "unsubscribe", "ping"]) | st.text(max_size=10)},
    optional={
        "id": json_values,
        "metrics": st.lists(patterns, max_size=6) | json_values,
        "since": cursors | json_values,
        "history_s": numbers,
        "max_rate": numbers,
    },
)
messages = st.one_of(
    protocol_messages.map(json.dumps),
    protocol_messages.map(lambda m: json.dumps(m).encode()),
    json_values.map(json.dumps),
    st.text(max_size=200),
    st.binary(max_size=200),
    st.just("x" * (protocol.MAX_MESSAGE_BYTES + 1)),
)


@pytest.fixture
def loop(transactional_db) -> Iterator[asyncio.AbstractEventLoop]:
    now = now_us()
    storage.store([Reading(*k.rsplit(".", 1), now - i * US, float(i)) for k in KEYS for i in range(20)])
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.run_until_complete(asyncio.sleep(0))
    event_loop.close()


class SendOnly:
    """A Transport (dashboard/live/session.py) around one send function; closing does nothing."""

    wire = None

    def __init__(self, send: Callable[[str], Awaitable[None]]) -> None:
        self.send_text = send

    async def close(self, code: int) -> None:
        pass


def check_consistent(client: LiveClient, hub: Hub) -> None:
    assert len(client.metrics) <= protocol.MAX_SUBSCRIPTIONS
    assert set(client.metrics) == set(client.session.cursors)
    assert set().union(*client.session.sources.values()) == set(client.metrics)
    for keys in client.session.sources.values():
        assert keys, "a source without subscribed keys must be left"
    for source_id in client.session.sources:
        assert client.session in hub.groups[f"source.{source_id}"]


def check_frames(frames: list[str]) -> None:
    for text in frames:
        frame = json.loads(text)
        assert isinstance(frame, dict) and frame["type"] in FRAME_TYPES, frame
        if frame["type"] == "error":
            assert isinstance(frame["code"], str) and isinstance(frame["message"], str)


def test_the_protocol_survives_arbitrary_messages(loop, viewer) -> None:
    seen = {"runs": 0, "closed": 0, "frames": 0}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(st.lists(messages, min_size=1, max_size=8))
    def run(batch: list[str | bytes]) -> None:
        frames: list[str] = []

        async def send(text: str) -> None:
            frames.append(text)

        async def scenario() -> None:
            client = LiveClient(viewer, SendOnly(send))
            hub = Hub.get()
            await client.start()
            try:
                for message in batch:
                    try:
                        await client.handle(message)
                    except protocol.CloseConnection as exc:
                        assert exc.code in CLOSE_CODES
                        seen["closed"] += 1
                        break
                    check_consistent(client, hub)
                await asyncio.sleep(0)  # let flushes scheduled by replays run
            finally:
                await client.stop()
            assert client.session not in hub.sessions
            assert all(client.session not in members for members in hub.groups.values())

        loop.run_until_complete(scenario())
        check_frames(frames)
        seen["runs"] += 1
        seen["frames"] += len(frames)

    run()
    print(f"fuzzed {seen['runs']} message sequences, {seen['frames']} frames checked, {seen['closed']} closed")


EDGE_MESSAGES = [
    {"type": "subscribe", "metrics": ["fz.host-a.cpu"], "since": {"fz.host-a.cpu": 2**70}},
    {"type": "subscribe", "metrics": ["fz.host-a.cpu"], "since": {"fz.host-a.cpu": -(2**70)}},
    {"type": "subscribe", "metrics": ["fz.*"], "history_s": 1e308},
    {"type": "subscribe", "metrics": ["fz.*"], "max_rate": float("inf")},
    {"type": "ack", "seq": 2**70},
    {"type": "ack", "seq": "x"},
    {"type": "unsubscribe", "metrics": ["[", "**", ""]},
]


def test_edge_values_get_an_answer_not_an_exception(loop, viewer) -> None:
    for message in EDGE_MESSAGES:
        frames: list[str] = []

        async def send(text: str, frames=frames) -> None:
            frames.append(text)

        async def scenario(message=message, send=send, frames=frames) -> None:
            client = LiveClient(viewer, SendOnly(send))
            await client.start()
            try:
                await client.handle(json.dumps(message))
                async with asyncio.timeout(10):  # hello, then the answer to the message
                    while len(frames) < 2:
                        await asyncio.sleep(0.005)
                check_consistent(client, Hub.get())
            finally:
                await client.stop()

        loop.run_until_complete(scenario())
        check_frames(frames)
        assert len(frames) >= 2, (message, frames)


# --- Hostile shapes (tests/hostile.py) ----------------------------------------------------------------

# Messages per run: `make fuzz` sets FUZZ_INPUTS=100000; CI runs a modest slice.
FUZZ_INPUTS = int(os.environ.get("FUZZ_INPUTS", "1500"))
FUZZ_SOCKET_INPUTS = int(os.environ.get("FUZZ_SOCKET_INPUTS", "60"))  # through a real consumer
hostile_messages = hostile.hostile_socket_messages(protocol.MAX_MESSAGE_BYTES)


class ErrorLines(logging.Handler):
    """Collect every ERROR (or worse) log record, from any logger, while installed."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()[:300]}")


@pytest.fixture
def error_lines() -> Iterator[ErrorLines]:
    from channels.layers import channel_layers

    # A fresh in-memory layer: the process's one is bound to the event loop of the test before this one.
    channel_layers.backends.clear()
    handler = ErrorLines()
    logging.getLogger().addHandler(handler)
    try:
        yield handler
    finally:
        logging.getLogger().removeHandler(handler)
    assert not handler.lines, handler.lines[:5]


def message_variants(message: str | bytes) -> list[str | bytes]:
    """Four frames from one generated message: as text, as bytes, cut in half, with a byte UTF-8 forbids."""
    raw = message.encode("utf-8", "surrogatepass") if isinstance(message, str) else message
    text = message if isinstance(message, str) else raw.decode("utf-8", "replace")
    third = len(raw) // 3
    return [text, raw, raw[: len(raw) // 2], raw[:third] + b"\xff" + raw[third:]]


def test_hostile_messages_get_an_error_frame_or_a_documented_close_never_an_exception(
    loop, viewer, error_lines
) -> None:
    seen = {"messages": 0, "closed": 0, "frames": 0}

    @settings(
        max_examples=max(1, FUZZ_INPUTS // 16),  # lists of 4-6 messages, 4 frames each: >= FUZZ_INPUTS frames
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(hostile_messages, min_size=4, max_size=6))
    def run(batch: list[str | bytes]) -> None:
        frames: list[str] = []

        async def send(text: str) -> None:
            frames.append(text)

        async def scenario() -> None:
            client = LiveClient(viewer, SendOnly(send))
            await client.start()
            try:
                for message in batch:
                    for frame in message_variants(message):
                        client._tokens = float(protocol.MESSAGE_BURST)  # the rate limit is not what is tested here
                        seen["messages"] += 1
                        try:
                            await client.handle(frame)
                        except protocol.CloseConnection as exc:
                            assert exc.code in CLOSE_CODES
                            seen["closed"] += 1
            finally:
                await client.stop()

        loop.run_until_complete(scenario())
        check_frames(frames)
        seen["frames"] += len(frames)

    run()
    print(f"\nhostile socket messages: {seen['messages']}, frames checked {seen['frames']}, closes {seen['closed']}")
    assert seen["messages"] >= FUZZ_INPUTS


async def test_hostile_frames_on_a_real_consumer_never_end_in_1011(viewer, error_lines) -> None:
    """The consumer as Daphne runs it: an exception escaping here is what Daphne turns into close 1011."""
    from channels.testing import WebsocketCommunicator

    from dashboard.live.websocket import LiveConsumer

    sent = closed = 0
    frames: list[str | bytes] = []

    @settings(max_examples=FUZZ_SOCKET_INPUTS, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(hostile_messages)
    def collect(message: str | bytes) -> None:
        frames.extend(message_variants(message)[:2])

    await asyncio.to_thread(collect)
    for start in range(0, len(frames), 20):
        ws = WebsocketCommunicator(LiveConsumer.as_asgi(), "/ws/live/")
        ws.scope["user"] = viewer
        connected, _ = await ws.connect()
        assert connected
        await ws.receive_from()  # hello
        for frame in frames[start : start + 20]:
            kind = "text" if isinstance(frame, str) else "bytes"
            await ws.send_input({"type": "websocket.receive", kind: frame})  # send_to refuses empty frames
            sent += 1
        await ws.send_to(text_data='{"type":"ping","id":"last"}')
        while True:
            output = await ws.receive_output(10)  # an exception in the consumer is raised here
            if output["type"] == "websocket.close":
                assert output.get("code") in CLOSE_CODES, output
                closed += 1
                break
            frame = json.loads(output["text"])
            if frame.get("type") == "pong" and frame.get("id") == "last":
                break
        await ws.disconnect()
    print(f"\n{sent} hostile frames through the consumer, {closed} documented closes, no 1011")
