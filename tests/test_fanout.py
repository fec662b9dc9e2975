"""The per-process fan-out: ack windows bound what a slow reader costs, and one frame string serves every socket."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from unittest.mock import patch

import pytest
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dashboard import actions, events, stats
from dashboard.live import delivery, protocol
from dashboard.live.flusher import Flusher
from dashboard.live.frames import Fragment, encode_fragment
from dashboard.live.hub import Hub
from dashboard.live.ledger import KeyLedger
from dashboard.live.session import Session
from dashboard.live.websocket import LiveConsumer
from dashboard.timeutil import US, now_us
from dashboard.validation import Reading

pytestmark = pytest.mark.usefixtures("clock")


class Transport:
    """A transport that records every frame it is handed (a reader that never reads)."""

    def __init__(self) -> None:
        self.frames: list[str] = []
        self.closed_with: str | None = None
        self.wire: Callable[[bytes], bool] | None = None  # the fast path, where a test plugs one in

    async def close(self, code: int) -> None:
        pass

    async def send_text(self, frame: str) -> None:
        self.frames.append(frame)

    def stuck(self, reason: str) -> None:
        self.closed_with = reason

    def data(self) -> list[dict]:
        return [json.loads(f) for f in self.frames if f.startswith('{"type":"data"')]


def fragment(key: str, ts: int, value: float = 1.0) -> Fragment:
    return encode_fragment(key, [ts], [value])


def subscribed_session(
    transport: Transport, key: str = "s.m", window: int | None = protocol.ACK_WINDOW_FRAMES
) -> Session:
    session = Session(transport, max_rate=100, window=window, on_stuck=transport.stuck)
    session.add(1, key, cursor=0)
    return session


async def test_a_reader_that_acknowledges_nothing_is_sent_at_most_the_window_of_frames() -> None:
    transport = Transport()
    session = subscribed_session(transport)
    for i in range(1, protocol.ACK_WINDOW_FRAMES + 13):
        session.offer(fragment("s.m", i))
        await session.flush()
    assert len(transport.frames) == protocol.ACK_WINDOW_FRAMES
    assert session.in_flight == protocol.ACK_WINDOW_FRAMES
    assert session.window_full()
    session.close()


async def test_a_frame_cut_at_its_sample_limit_never_lets_a_later_fragment_overtake() -> None:
    """Frames of at most MAX_FRAME_SAMPLES go out in buffer order: per key, oldest first, nothing duplicated."""
    transport = Transport()
    session = subscribed_session(transport, key="s.a")
    session.add(1, "s.b", cursor=0)
    big = protocol.MAX_FRAME_SAMPLES - 100
    session.offer(encode_fragment("s.a", list(range(1, big + 1)), [1.0] * big))
    session.offer(encode_fragment("s.b", list(range(1, 201)), [1.0] * 200))  # does not fit: the frame is full
    session.offer(encode_fragment("s.b", [500], [1.0]))  # would fit, but must not go before the 200
    await session.flush()
    await session.flush()
    frames = transport.data()
    assert [[b["k"] for b in f["batches"]] for f in frames] == [["s.a"], ["s.b", "s.b"]]
    assert [t for b in frames[1]["batches"] for t in b["t"]] == [*range(1, 201), 500]
    session.close()


async def test_data_held_back_by_a_full_window_goes_out_coalesced_after_an_ack() -> None:
    transport = Transport()
    session = subscribed_session(transport, window=8)
    for i in range(1, 21):
        session.offer(fragment("s.m", i))
        await session.flush()
    assert session.ack(8) is True
    await session.flush()
    frames = transport.data()
    assert len(frames) == 9
    held_back = [t for batch in frames[-1]["batches"] for t in batch["t"]]
    assert held_back == list(range(9, 21))
    sent = [t for frame in frames for batch in frame["batches"] for t in batch["t"]]
    assert sent == list(range(1, 21))  # nothing lost, nothing repeated
    session.close()


async def test_an_ack_for_a_frame_not_yet_sent_is_refused() -> None:
    transport = Transport()
    session = subscribed_session(transport)
    session.offer(fragment("s.m", 1))
    await session.flush()
    with pytest.raises(ValueError):
        session.ack(2)
    assert session.ack(1) is True
    assert session.ack(1) is False  # repeated acknowledgements change nothing
    session.close()


async def test_a_connection_whose_window_stays_full_is_reaped_as_too_slow() -> None:
    transport = Transport()
    session = subscribed_session(transport, window=2)
    hub = Hub()
    hub.sessions.add(session)
    before = stats.SLOW_CLOSES._value.get()
    for i in range(1, 4):
        session.offer(fragment("s.m", i))
        await session.flush()
    hub.reap_stalled(time.monotonic() + hub.stall_s / 2)
    assert transport.closed_with is None
    hub.reap_stalled(time.monotonic() + hub.stall_s + 1)
    assert transport.closed_with is not None and "acknowledged nothing" in transport.closed_with
    assert session.closed
    assert stats.SLOW_CLOSES._value.get() == before + 1


async def test_a_connection_that_acknowledges_in_time_is_not_reaped() -> None:
    transport = Transport()
    session = subscribed_session(transport, window=2)
    hub = Hub()
    hub.sessions.add(session)
    for i in range(1, 3):
        session.offer(fragment("s.m", i))
        await session.flush()
    session.ack(2)
    hub.reap_stalled(time.monotonic() + hub.stall_s + 1)
    assert transport.closed_with is None
    session.close()


async def test_a_connection_that_keeps_overflowing_its_buffer_is_closed(monkeypatch) -> None:
    monkeypatch.setattr(delivery, "MAX_BUFFER_SAMPLES", 10)
    transport = Transport()
    session = subscribed_session(transport, window=1)
    gaps: list[set[str]] = []
    session.on_gap = gaps.append
    session.offer(fragment("s.m", 1))
    await session.flush()  # fills the window of one frame
    for i in range(2, 100):
        session.offer(fragment("s.m", i))
        if session.closed:
            break
    assert len(gaps) == delivery.MAX_SHEDS - 1  # the first sheds are back-filled ...
    assert transport.closed_with is not None and "shed" in transport.closed_with  # ... then it gives up
    assert session.dropped > 0


async def test_a_slow_readers_buffer_never_exceeds_its_bound(monkeypatch) -> None:
    monkeypatch.setattr(delivery, "MAX_BUFFER_SAMPLES", 100)
    monkeypatch.setattr(delivery, "MAX_SHEDS", 10_000)
    transport = Transport()
    session = subscribed_session(transport, window=1)
    session.on_gap = lambda keys: None
    for i in range(1, 5000):
        session.offer(fragment("s.m", i))
        assert session._buffered <= 100
    session.close()


async def test_sockets_receiving_the_same_batch_share_one_frame_string() -> None:
    hub = Hub()
    transports = [Transport() for _ in range(100)]
    sessions = [subscribed_session(t, key="iot.a.temp") for t in transports]
    hub.groups[events.source_group(1)] = set(sessions)
    before_encoded = stats.FRAMES_ENCODED._value.get()
    batch = events.SampleBatch(
        series={"iot.a.temp": [[now_us()], [21.5]]}, sources={"iot.a.temp": 1}, publisher="p", seq=1
    )
    hub.dispatch(batch.as_message())
    for session in sessions:
        await session.flush()
    frames = [t.frames[0] for t in transports]
    assert all(frame is frames[0] for frame in frames)  # the same object, not equal copies
    assert stats.FRAMES_ENCODED._value.get() == before_encoded + 1
    assert json.loads(frames[0])["batches"][0]["v"] == [21.5]
    for session in sessions:
        session.close()


async def test_sessions_due_together_share_one_frame_coalesced_from_several_batches() -> None:
    """Under load a frame carries several batches; sessions flushed in the same pass still share its string."""
    hub = Hub()
    transports = [Transport() for _ in range(3)]
    sessions = [subscribed_session(t, key="iot.a.temp") for t in transports]
    hub.groups[events.source_group(1)] = set(sessions)
    now = now_us()
    for seq in (1, 2):  # two layer messages before the flusher runs
        batch = events.SampleBatch(
            series={"iot.a.temp": [[now + seq], [float(seq)]]}, sources={"iot.a.temp": 1}, publisher="p", seq=seq
        )
        hub.dispatch(batch.as_message())
    before_encoded = stats.FRAMES_ENCODED._value.get()
    async with asyncio.timeout(10):  # the flusher's pass
        while not all(t.frames for t in transports):
            await asyncio.sleep(0.005)
    frames = [t.frames[0] for t in transports]
    assert all(frame is frames[0] for frame in frames)
    assert stats.FRAMES_ENCODED._value.get() == before_encoded + 1
    assert [b["v"] for b in json.loads(frames[0])["batches"]] == [[1.0], [2.0]]
    for session in sessions:
        session.close()


async def test_sockets_wanting_different_keys_of_a_batch_get_different_frames() -> None:
    hub = Hub()
    one, both = Transport(), Transport()
    first = subscribed_session(one, key="iot.a.temp")
    second = subscribed_session(both, key="iot.a.temp")
    second.add(1, "iot.a.hum", cursor=0)
    hub.groups[events.source_group(1)] = {first, second}
    now = now_us()
    batch = events.SampleBatch(
        series={"iot.a.temp": [[now], [21.5]], "iot.a.hum": [[now], [40.0]]},
        sources={"iot.a.temp": 1, "iot.a.hum": 1},
        publisher="p",
        seq=1,
    )
    hub.dispatch(batch.as_message())
    await first.flush()
    await second.flush()
    assert [b["k"] for b in one.data()[0]["batches"]] == ["iot.a.temp"]
    assert sorted(b["k"] for b in both.data()[0]["batches"]) == ["iot.a.hum", "iot.a.temp"]
    first.close()
    second.close()


def fleet_batch(keys: list[str], ts: int, seq: int, source_of=lambda key: 1) -> dict:
    """The layer message of one commit of one sample per key (several sources: one message)."""
    return events.SampleBatch(
        series={key: [[ts], [float(seq)]] for key in keys},
        sources={key: source_of(key) for key in keys},
        publisher="p",
        seq=seq,
    ).as_message()


async def test_a_session_holding_every_key_of_a_batch_takes_it_in_one_piece_and_its_cursors_follow() -> None:
    hub = Hub()
    keys = [f"fleet.dev-{i}.temp" for i in range(10)]
    transport = Transport()
    session = Session(transport, max_rate=100)
    session.add_keys(1, keys, [1] * len(keys))
    hub.groups[events.source_group(1)] = {session}
    for key in keys:  # followed by the hub: it can tell a batch holds no late sample
        hub.ledgers[key] = KeyLedger(key, 1, 1)
    now = now_us()
    for seq in (1, 2, 3):
        hub.dispatch(fleet_batch(keys, now + seq, seq))
    assert [type(item).__name__ for item in session._buffer] == ["BatchPiece"] * 3  # one entry per batch
    await session.flush()
    batches = transport.data()[0]["batches"]
    assert [(b["k"], b["t"]) for b in batches] == [(k, [now + seq]) for seq in (1, 2, 3) for k in keys]
    assert session._unfolded is not None  # no per-key work at the flush ...
    session.settle_cursors()  # ... the cursors are brought up to date when someone needs them
    assert session.cursors == dict.fromkeys(keys, now + 3)
    assert session.delivered == dict.fromkeys(keys, now + 3)
    session.close()


async def test_the_first_frame_of_an_interval_goes_out_at_once_and_the_next_waits_for_its_slot() -> None:
    """A connection whose last frame left 1/max_rate ago or more is flushed on the next loop turn, with no timer;
    what comes within the interval waits for the slot 1/max_rate after the pass that sent it, as one frame."""
    transport = Transport()
    session = Session(transport, max_rate=20)
    session.add(1, "s.m", cursor=0)
    session.offer(fragment("s.m", 1))
    assert session.queued and session.due_at is None  # in the flusher's next pass, not behind a tick
    await asyncio.sleep(0)
    assert [b["t"] for f in transport.data() for b in f["batches"]] == [[1]]
    for ts in (2, 3, 4):
        session.offer(fragment("s.m", ts))
    assert not session.queued and session.due_at == session._last_slot + 1 / 20  # max_rate is a ceiling
    assert len(transport.frames) == 1
    Flusher.get()._fire(session.due_at)  # the slot's timer, without waiting for it
    await asyncio.sleep(0)
    assert [b["t"] for f in transport.data() for b in f["batches"]] == [[1], [2], [3], [4]]
    assert len(transport.frames) == 2  # the three coalesced into one frame
    session.close()


def fleet_hub(keys: list[str], *sessions: Session) -> Hub:
    """A hub routing source 1 (every key) to the sessions, following each key (it can tell a batch is clean)."""
    hub = Hub()
    hub.groups[events.source_group(1)] = set(sessions)
    for key in keys:
        hub.ledgers[key] = KeyLedger(key, 1, 1)
    return hub


async def test_a_session_that_flushed_a_whole_fold_takes_its_cursors_from_it_in_one_copy(monkeypatch) -> None:
    monkeypatch.setattr("dashboard.live.hub.FOLD_SPAN", 3)
    keys = [f"fleet.dev-{i}.temp" for i in range(4)]
    transport = Transport()
    session = Session(transport, max_rate=100)
    session.add_keys(1, keys, [1] * len(keys))
    hub = fleet_hub(keys, session)
    now = now_us()
    for seq in range(1, 5):  # pieces 1-3 are the first fold; piece 4 begins the next
        subset = keys if seq != 2 else keys[:2]  # each key's newest in the fold: from piece 3
        hub.dispatch(fleet_batch(subset, now + seq, seq))
        await session.flush()
    assert [type(entry).__name__ for entry in session._unfolded] == ["BatchPiece"]  # the fold was settled
    assert session.cursors == dict.fromkeys(keys, now + 3)  # ... and the fourth piece waits for the next
    session.settle_cursors()
    assert session.cursors == session.delivered == dict.fromkeys(keys, now + 4)
    sent = [(b["k"], b["t"][0]) for frame in transport.data() for b in frame["batches"]]
    assert len(sent) == len(set(sent)) == 4 + 2 + 4 + 4
    session.close()


async def test_a_fold_without_every_held_key_or_with_a_piece_missing_is_merged_piece_by_piece(monkeypatch) -> None:
    monkeypatch.setattr("dashboard.live.hub.FOLD_SPAN", 2)
    keys = [f"fleet.dev-{i}.temp" for i in range(3)]
    quiet = "fleet.dev-9.temp"  # held, never in a batch: no fold holds it
    watcher = Session(Transport(), max_rate=100)
    watcher.add_keys(1, [*keys, quiet], [5, 5, 5, 7])
    hub = fleet_hub([*keys, quiet], watcher)
    now = now_us()
    hub.dispatch(fleet_batch(keys, now + 1, 1))
    await watcher.flush()
    joined = Session(Transport(), max_rate=100)  # joins after the first fold's first piece: it never has all of it
    joined.add_keys(1, keys, [5, 5, 5])
    hub.groups[events.source_group(1)].add(joined)
    for seq in (2, 3, 4, 5):
        hub.dispatch(fleet_batch(keys, now + seq, seq))
        await watcher.flush()
        await joined.flush()
    for session in (watcher, joined):
        session.settle_cursors()
        assert {key: session.cursors[key] for key in keys} == dict.fromkeys(keys, now + 5)
        session.close()
    assert watcher.cursors[quiet] == 7 and quiet not in watcher.delivered


async def test_a_late_piece_inside_a_fold_never_moves_a_cursor_back(monkeypatch) -> None:
    monkeypatch.setattr("dashboard.live.hub.FOLD_SPAN", 2)
    keys = ["fleet.dev-1.temp", "fleet.dev-2.temp"]
    session = Session(Transport(), max_rate=100)
    session.add_keys(1, keys, [0, 0])
    hub = fleet_hub(keys, session)
    now = now_us()
    hub.dispatch(fleet_batch(keys, now + 10, 1))
    await session.flush()
    late = events.SampleBatch(
        series={keys[0]: [[now + 20], [2.0]], keys[1]: [[now + 5], [2.0]]}, sources=dict.fromkeys(keys, 1), seq=2
    )
    hub.dispatch(late.as_message())  # not clean: no fold, its keys go the per-key way
    await session.flush()
    for seq in (3, 4, 5):
        hub.dispatch(fleet_batch(keys, now + 20 + seq, seq))
        await session.flush()
    session.settle_cursors()
    assert session.cursors == dict.fromkeys(keys, now + 25)
    session.close()


# One step of a fleet: a commit of some keys (a chosen one maybe late), a flush of one viewer, or a settle.
fleet_steps = st.lists(
    st.one_of(
        st.tuples(st.just("commit"), st.sets(st.integers(0, 2), min_size=2), st.booleans()),
        st.tuples(st.just("commit"), st.sets(st.integers(0, 2), min_size=1, max_size=1), st.just(False)),
        st.tuples(st.just("flush"), st.integers(0, 2), st.just(False)),
        st.tuples(st.just("settle"), st.integers(0, 2), st.just(False)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None, database=None)
@given(fleet_steps, st.integers(1, 4), st.integers(0, 8))
@example(  # a viewer joins inside a fold whose only sample of one key it never got
    [("commit", {0, 1}, False), ("commit", {0, 2}, False), ("flush", 2, False)]
    + [("commit", {0, 2}, False), ("flush", 2, False), ("settle", 2, False)],
    2,
    1,
)
def test_cursors_are_what_was_flushed_whatever_the_folds(steps: list, fold_span: int, joins_after: int) -> None:
    """Whole folds, partial ones, late pieces, a viewer joining midway: each cursor ends at the newest ts flushed."""
    keys = [f"fleet.dev-{i}.temp" for i in range(3)]

    async def scenario() -> None:
        sessions = [Session(Transport(), max_rate=1000, window=1000) for _ in range(3)]
        for session in sessions[:2]:
            session.add_keys(1, keys, [3] * len(keys))
        hub = fleet_hub(keys, *sessions[:2])
        flushed: list[dict[str, int]] = [{}, {}, {}]
        base, seq = now_us(), 0
        for kind, what, flag in steps:
            if kind == "commit":
                seq += 1
                chosen = [keys[i] for i in sorted(what)]
                ts = {key: base + 10 * seq for key in chosen}
                if flag and len(chosen) > 1:
                    ts[chosen[0]] = base + 10 * seq - 15  # committed after a newer sample of its key
                batch = events.SampleBatch(
                    series={key: [[t], [1.0]] for key, t in ts.items()}, sources=dict.fromkeys(ts, 1), seq=seq
                )
                hub.dispatch(batch.as_message())
                if seq == joins_after:  # the third viewer joins midway, maybe inside a fold
                    sessions[2].add_keys(1, keys, [3] * len(keys))
                    hub.groups[events.source_group(1)].add(sessions[2])
            elif kind == "flush":
                transport = sessions[what].transport
                before = len(transport.frames)
                await sessions[what].flush()
                for frame in transport.data()[before:] if len(transport.frames) > before else ():
                    for b in frame["batches"]:
                        flushed[what][b["k"]] = max(flushed[what].get(b["k"], 0), *b["t"])
            elif len(sessions[what].keyset):
                check(sessions[what], flushed[what])
        for session, sent in zip(sessions, flushed, strict=True):
            if len(session.keyset):
                check(session, sent)
            session.close()

    def check(session: Session, sent: dict[str, int]) -> None:
        session.settle_cursors()
        assert dict(session.delivered) == sent
        assert dict(session.cursors) == {key: max(3, sent.get(key, 0)) for key in keys}

    with patch("dashboard.live.hub.FOLD_SPAN", fold_span):
        asyncio.run(scenario())


async def test_a_session_holding_some_keys_of_a_batch_gets_only_those() -> None:
    hub = Hub()
    transport = Transport()
    session = subscribed_session(transport, key="fleet.dev-1.temp")
    hub.groups[events.source_group(1)] = {session}
    hub.dispatch(fleet_batch(["fleet.dev-1.temp", "fleet.dev-2.temp"], now_us(), 1))
    await session.flush()
    assert [b["k"] for b in transport.data()[0]["batches"]] == ["fleet.dev-1.temp"]
    session.close()


async def test_a_late_batch_never_moves_a_cursor_back() -> None:
    """A piece with a late sample (committed after a newer one of its key) advances cursors by max(), not update()."""
    hub = Hub()
    keys = ["fleet.dev-1.temp", "fleet.dev-2.temp"]
    transport = Transport()
    session = Session(transport, max_rate=100)
    session.add_keys(1, keys, [0, 0])
    hub.groups[events.source_group(1)] = {session}
    for key in keys:
        hub.ledgers[key] = KeyLedger(key, 1, 1)
    now = now_us()
    hub.dispatch(fleet_batch(keys, now + 10, 1))
    await session.flush()
    late = events.SampleBatch(
        series={keys[0]: [[now + 20], [2.0]], keys[1]: [[now + 5], [2.0]]},
        sources=dict.fromkeys(keys, 1),
        publisher="p",
        seq=2,
    )
    hub.dispatch(late.as_message())
    await session.flush()
    late_batch = next(b for b in transport.data()[1]["batches"] if b["k"] == keys[1])
    assert late_batch["late"] is True
    session.settle_cursors()
    assert session.cursors == {keys[0]: now + 20, keys[1]: now + 10}
    session.close()


async def test_keys_held_for_a_replay_wait_even_when_a_whole_batch_was_buffered_before() -> None:
    hub = Hub()
    keys = ["fleet.dev-1.temp", "fleet.dev-2.temp"]
    transport = Transport()
    session = Session(transport, max_rate=100, window=0)  # a full window: nothing goes out yet
    session.add_keys(1, keys, [0, 0])
    hub.groups[events.source_group(1)] = {session}
    hub.dispatch(fleet_batch(keys, now_us(), 1))
    session.hold({keys[1]})
    session.window = None
    await session.flush()
    assert [b["k"] for b in transport.data()[0]["batches"]] == [keys[0]]
    session.release({keys[1]})
    await session.flush()
    assert [b["k"] for b in transport.data()[1]["batches"]] == [keys[1]]
    session.close()


async def test_a_publication_reaches_local_sessions_directly_and_once() -> None:
    """The ingesting process's viewers skip the layer round trip; the layer's copy is then ignored."""
    hub = Hub()
    await hub.ensure_started()
    transport = Transport()
    session = subscribed_session(transport, key="iot.a.temp")
    await hub.join(session, 1)
    try:
        batch = events.SampleBatch(series={"iot.a.temp": [[now_us()], [21.5]]}, sources={"iot.a.temp": 1})
        dispatched: list[dict] = []
        dispatch = hub.dispatch
        hub.dispatch = lambda message: (dispatched.append(message), dispatch(message))
        assert await events.publish(events.SAMPLES_GROUP, batch)
        assert len(dispatched) == 1  # handed over during publish, not after a trip through the layer
        await asyncio.sleep(0.3)  # a quiet window (the thing checked): the layer's copy arrives and is ignored
        assert len(dispatched) == 1
        assert [b["v"] for frame in transport.data() for b in frame["batches"]] == [[21.5]]
        assert batch.publisher == hub.local_publisher
    finally:
        await hub.unregister(session)
        for task in hub._tasks:
            task.cancel()


# --- Over a WebSocket ----------------------------------------------------------


def temp(value: float, ts: int) -> Reading:
    return Reading("iot.fan", "temperature", ts, value, "°C", "gauge", "device")


async def connect(user) -> tuple[WebsocketCommunicator, dict]:
    communicator = WebsocketCommunicator(LiveConsumer.as_asgi(), "/ws/live/")
    communicator.scope["user"] = user
    connected, _ = await communicator.connect()
    assert connected
    hello = json.loads(await communicator.receive_from())
    return communicator, hello


async def next_frame(ws: WebsocketCommunicator, kind: str) -> dict:
    while True:
        frame = json.loads(await ws.receive_from(5))
        if frame["type"] == kind:
            return frame


@pytest.mark.django_db(transaction=True)
async def test_hello_announces_the_ack_window(viewer) -> None:
    ws, hello = await connect(viewer)
    assert hello["limits"]["ack_window"] == protocol.ACK_WINDOW_FRAMES
    await ws.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_websocket_client_that_stops_acknowledging_stops_receiving_until_it_acks(viewer) -> None:
    start = now_us() - 60 * US
    await actions.ingest([temp(0.0, start)])
    ws, _ = await connect(viewer)
    await ws.send_json_to({"type": "subscribe", "metrics": ["iot.fan.temperature"], "history_s": 0, "max_rate": 100})
    await next_frame(ws, "subscribed")
    start = now_us()
    received: list[int] = []
    total = protocol.ACK_WINDOW_FRAMES + 4
    for i in range(1, total + 1):
        await actions.ingest([temp(float(i), start + i)])
        if i <= protocol.ACK_WINDOW_FRAMES:
            frame = await next_frame(ws, "data")
            received += [t for b in frame["batches"] for t in b["t"]]
    assert await ws.receive_nothing(0.3)  # the window is full: the rest waits on the server
    await ws.send_json_to({"type": "ack", "frame": protocol.ACK_WINDOW_FRAMES})
    frame = await next_frame(ws, "data")
    received += [t for b in frame["batches"] for t in b["t"]]
    assert received == [start + i for i in range(1, total + 1)]
    await ws.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_an_ack_beyond_the_frames_sent_is_a_bad_message(viewer) -> None:
    ws, _ = await connect(viewer)
    await ws.send_json_to({"type": "ack", "frame": 5})
    error = await next_frame(ws, "error")
    assert error["code"] == "bad_message" and "not sent yet" in error["message"]
    await ws.disconnect()


async def test_publish_soon_delivers_locally_at_once_and_to_the_layer_in_order() -> None:
    """The writer does not wait for the layer; other processes still get every batch, numbered, in order."""
    layer = get_channel_layer()
    channel = await layer.new_channel("other-process.")
    await layer.group_add(events.SAMPLES_GROUP, channel)
    delivered: list[dict] = []

    class Recorder:
        def deliver_local(self, group: str, message: dict) -> None:
            delivered.append(message)

    events.set_local_hub(Recorder())
    try:
        for value in range(5):
            events.publish_soon(
                events.SAMPLES_GROUP, events.SampleBatch(series={"a.b": [[value + 1], [value]]}, sources={"a.b": 7})
            )
        assert [m["series"]["a.b"][1] for m in delivered] == [[0], [1], [2], [3], [4]]  # before any await
        await events.drain()
        received = [await asyncio.wait_for(layer.receive(channel), 1) for _ in range(5)]
        assert [m["series"]["a.b"][1] for m in received] == [[0], [1], [2], [3], [4]]
        seqs = [m["seq"] for m in received]
        assert seqs == list(range(seqs[0], seqs[0] + 5))
    finally:
        events.set_local_hub(None)
        await layer.group_discard(events.SAMPLES_GROUP, channel)


async def test_a_layer_too_far_behind_drops_and_counts_what_it_cannot_queue(monkeypatch) -> None:
    """Bounded memory: beyond MAX_BACKLOG the outbox drops a message and counts it; hubs see the gap and back-fill."""
    layer = get_channel_layer()
    release = asyncio.Event()
    sent: list[int] = []

    async def slow_group_send(group: str, message: dict) -> None:
        await release.wait()
        sent.append(message["seq"])

    monkeypatch.setattr(layer, "group_send", slow_group_send)
    monkeypatch.setattr(events.Outbox, "MAX_BACKLOG", 2)
    failures = stats.PUBLISH_FAILURES._value.get()
    for value in range(5):
        events.publish_soon(
            events.SAMPLES_GROUP, events.SampleBatch(series={"a.c": [[value + 1], [value]]}, sources={"a.c": 8})
        )
    assert stats.PUBLISH_FAILURES._value.get() - failures == 3
    release.set()
    await events.drain()
    assert len(sent) == 2 and sent[1] == sent[0] + 1
