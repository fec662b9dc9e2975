"""Server frames as text: live fragments encoded once, data frames joined from them, notices."""

from __future__ import annotations

import json
import logging
from array import array
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING

from dashboard import events, stats
from dashboard.timeutil import now_us

if TYPE_CHECKING:
    from dashboard.live.heldkeys import KeySet

log = logging.getLogger(__name__)

# A hub's clean batch pieces are grouped in folds of this many (2.5 s of a fleet committing 100 times a
# second: every device has reported in one): a session that flushed a whole fold takes its cursors from it.
FOLD_SPAN = 256


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
    fold: Fold | None = None  # the hub's fold this clean piece belongs to
    covers: dict[KeySet, bool] | None = None  # KeySet -> whether it holds every key here (covered_by)

    @property
    def key(self) -> str:
        return ""  # no metric key: per-key code unpacks pieces first

    def covered_by(self, keyset: KeySet) -> bool:
        """Return whether the KeySet holds every key of the piece, tested once per KeySet (1,000 viewers of a fleet share one)."""
        covers = self.covers
        if covers is None:
            covers = self.covers = {}
        found = covers.get(keyset)
        if found is None:
            found = covers[keyset] = keyset.slot.keys() >= self.keys
        return found


class Fold:
    """FOLD_SPAN consecutive clean batch pieces of one hub, and each key's newest ts over all of them, merged once.

    Every session that flushed all of a fold's pieces whole (every viewer of
    a fleet board) would otherwise merge the same hundreds of `newest` dicts
    into its cursors on its own: 23 % of the server's event loop at 1,000
    viewers of a 1,000-device fleet (py-spy). A session sees that it has the
    whole fold when the fold's first and last pieces are FOLD_SPAN entries
    apart in what it flushed (pieces are flushed in the order the hub made
    them, each at most once). When the fold holds every key of the
    session's KeySet, its timestamps, laid out as that KeySet's arrays and
    made once per KeySet, become the session's cursors in one copy.
    """

    __slots__ = ("merged", "count", "first", "last", "_timestamps")

    def __init__(self) -> None:
        self.merged: dict[str, int] = {}  # key -> newest ts in the fold's pieces
        self.count = 0
        self.first: BatchPiece | None = None
        self.last: BatchPiece | None = None
        self._timestamps: dict[KeySet, array | None] = {}

    def add(self, piece: BatchPiece) -> None:
        """Make a clean piece the fold's next (each key's ts only grows from a clean piece to the next)."""
        self.merged.update(piece.newest)
        self.count += 1
        if self.first is None:
            self.first = piece
        self.last = piece
        piece.fold = self

    def holds_all(self, entries: list) -> bool:
        """Return whether the last of `entries` (pieces in flush order) are all of this fold's pieces."""
        n = self.count
        return len(entries) >= n and entries[-1] is self.last and entries[-n] is self.first

    def timestamps(self, keyset: KeySet) -> array | None:
        """Return the fold's newest ts of each of the KeySet's keys, by position; None unless it has them all."""
        if keyset in self._timestamps:
            return self._timestamps[keyset]
        merged, slot = self.merged, keyset.slot
        found: array | None = None
        if slot and slot.keys() <= merged.keys():
            found = array("q", bytes(8 * len(slot)))
            for key, i in slot.items():
                found[i] = merged[key]
        self._timestamps[keyset] = found
        return found


def batch_piece(fragments: list[Fragment], clean: bool, frames: dict[frozenset[str], str]) -> BatchPiece:
    """Return the piece joining one hub message's fragments (at least two, of distinct keys); the hub folds clean ones."""
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
    if (
        frames is not None
        and type(fragments[0]) is Fragment
        and all(f.frames is frames and type(f) is Fragment for f in fragments)
    ):
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
