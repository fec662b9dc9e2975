"""Server frames as text: live fragments encoded once, data frames joined from them, notices."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii

from dashboard import events, stats
from dashboard.timeutil import now_us

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Fragment:
    """One metric's part of one batch, JSON-encoded once for every socket.

    `frames` is shared by every fragment decoded from the same hub message:
    sessions that flush exactly those fragments reuse one frame string.
    """

    key: str
    first_ts: int
    last_ts: int
    count: int
    json: str
    ts: list[int]
    values: list[float]
    frames: dict[frozenset[str], str] | None = None


@dataclass(slots=True, eq=False)
class BatchPiece:
    """Every fragment of one hub message, joined once, for the sessions that hold all of its keys.

    A session holding every key takes the piece as one buffer entry (one
    call per session per batch, no loop over its keys), flushes it as one
    part of a frame, and may take `newest` as its cursors as they are when
    the piece is `clean` (no sample late at the hub) and `floor` (the oldest
    of its keys' newest timestamps) is above anything else set them.
    Wherever a session needs per-key work (held keys, a seam, a trim, a
    shed), it unpacks the piece into `parts`.
    """

    keys: frozenset[str]
    parts: tuple[Fragment, ...]
    json: str
    count: int
    newest: dict[str, int]  # key -> its newest ts in the piece
    floor: int  # min(newest.values())
    last_ts: int  # the last part's newest ts: what the flusher observes latency by
    clean: bool
    frames: dict[frozenset[str], str] | None = None

    @property
    def key(self) -> str:
        return ""  # no metric key: per-key code unpacks pieces first


def batch_piece(fragments: list[Fragment], clean: bool, frames: dict[frozenset[str], str]) -> BatchPiece:
    """Return the piece joining one hub message's fragments (at least two, of distinct keys)."""
    newest = {f.key: f.last_ts for f in fragments}
    return BatchPiece(
        frozenset(newest),
        tuple(fragments),
        ",".join(f.json for f in fragments),
        sum(f.count for f in fragments),
        newest,
        min(newest.values()),
        fragments[-1].last_ts,
        clean,
        frames,
    )


def unpack(buffer: list) -> list[Fragment]:
    """Return a session's buffer with every batch piece replaced by its fragments (the same list if none)."""
    if not any(type(f) is BatchPiece for f in buffer):
        return buffer
    out: list[Fragment] = []
    for f in buffer:
        if type(f) is BatchPiece:
            out.extend(f.parts)
        else:
            out.append(f)
    return out


def encode_fragment(
    key: str,
    ts: list[int],
    values: list[float],
    frames: dict[frozenset[str], str] | None = None,
    late: bool = False,
) -> Fragment:
    """Return the encoded fragment of one metric's samples.

    Built by hand, not json.dumps of a dict: the same text for the finite
    floats and integers samples hold, at a third of the cost (a 1,000-key
    replay encodes 1,000 fragments on the event loop). `late` marks samples
    that committed after a newer sample of their key went out live
    (docs/protocol.md: the client inserts them by `t`).
    """
    text = (
        '{"k":'
        + encode_basestring_ascii(key)
        + (',"late":true,"t":[' if late else ',"t":[')
        + ",".join(map(str, ts))
        + '],"v":['
        + ",".join(map(repr, values))
        + "]}"
    )
    return Fragment(key, ts[0], ts[-1], len(ts), text, ts, values, frames)


def data_frame(fragments: list[str], replay: bool = False) -> str:
    """Return a data frame made of already-encoded fragments."""
    head = '{"type":"data","replay":true,"batches":[' if replay else '{"type":"data","batches":['
    return head + ",".join(fragments) + "]}"


def shared_frame(fragments: list[Fragment], cache: dict | None = None) -> str:
    """Return the live frame for these fragments, built once for every session that sends the same ones.

    Fragments all from one hub message share that message's frames (in any
    order: sessions may buffer them differently). Fragments coalesced from
    several messages are looked up in `cache`, the flusher's frames of its
    current pass: sessions due in the same slot usually hold the same ones.
    """
    frames = fragments[0].frames
    if len(fragments) == 1 and type(fragments[0]) is BatchPiece:  # a whole batch: the common case of a fleet board
        key = fragments[0].keys
        frame = frames.get(key)
        if frame is None:
            frame = frames[key] = data_frame([fragments[0].json])
            stats.FRAMES_ENCODED.inc()
        return frame
    if frames is not None and all(f.frames is frames and type(f) is Fragment for f in fragments):
        key = frozenset(f.key for f in fragments)
        frame = frames.get(key)
        if frame is None:
            frame = frames[key] = data_frame([f.json for f in fragments])
            stats.FRAMES_ENCODED.inc()
        return frame
    if cache is not None:
        # Keyed by identity; the entry keeps its fragments alive, so no id is reused while it is cached.
        ident = tuple(map(id, fragments))
        hit = cache.get(ident)
        if hit is not None:
            return hit[1]
        frame = data_frame([f.json for f in fragments])
        cache[ident] = (tuple(fragments), frame)
        stats.FRAMES_ENCODED.inc()
        return frame
    stats.FRAMES_ENCODED.inc()
    return data_frame([f.json for f in fragments])


def degraded_frame(reason: str, state: str, since: int) -> str:
    """Return the connection-level notice that live delivery is degraded (or ok again) for a reason."""
    body = {"type": "degraded", "reason": reason, "state": state, "since": since, "time": now_us()}
    return json.dumps(body, separators=(",", ":"))


def stale_frame(keys: list[str], state: str, since: int) -> str:
    """Return the notice that these metrics' sources missed their expected interval (or sent again)."""
    return json.dumps({"type": "stale", "metrics": keys, "state": state, "since": since}, separators=(",", ":"))


def heartbeat_frame() -> str:
    """Return the heartbeat every connection gets each heartbeat_s (proxies drop idle sockets)."""
    return json.dumps({"type": "heartbeat", "time": now_us()}, separators=(",", ":"))


def alert_frame(event: events.AlertState) -> str:
    """Return the frame telling viewers an alert instance changed state."""
    body = event.as_message()
    body["type"] = "alert"
    return json.dumps(body, separators=(",", ":"))
