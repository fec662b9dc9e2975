"""Protocol v1 (docs/protocol.md): version, limits, close codes, and the frames both ways."""

from __future__ import annotations

import dataclasses
import json
import logging
import typing
from typing import Annotated, Any

import msgspec
from django.conf import settings

from dashboard import events

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
SERVER_VERSION = "pulseboard/0.1.0"
MAX_MESSAGE_BYTES = 64 * 1024
MAX_SUBSCRIPTIONS = settings.PULSEBOARD["LIVE_MAX_KEYS"]  # metric keys per connection, through keys or globs
MAX_GLOBS = settings.PULSEBOARD["LIVE_MAX_GLOBS"]  # globs per subscribe message (each is a scan of every key)
MAX_PATTERNS = 10_000  # keys and globs per subscribe or unsubscribe message, after removing repeats
MAX_LIVE_GLOBS = 64  # globs a connection keeps following for new metrics
MAX_MESSAGES_PER_S = 20  # client messages, sustained
MESSAGE_BURST = 40
MAX_REPLAY_POINTS = 10_000  # per metric per back-fill
# Per back-fill, all metrics together: a 10,000-key subscription replays its newest 20 points a key
# (and says which were cut: `lag` `truncated`), not 10,000 x 300 s of history.
MAX_REPLAY_TOTAL = 200_000
REPLAY_CHUNK = 1_000  # metrics per replay query
MAX_HISTORY_S = 24 * 3600  # live windows reach back at most a day; longer ranges use /api/v1/series
MIN_RATE, MAX_RATE = 0.2, 100.0

# Close codes (docs/protocol.md).
CLOSE_GOING_AWAY = 1001  # the server process is stopping (SIGTERM)
CLOSE_NOT_AUTHENTICATED = 4001
CLOSE_FORBIDDEN = 4003
CLOSE_TOO_SLOW = 4008
CLOSE_MESSAGE_TOO_BIG = 4009
CLOSE_TOO_MANY_MESSAGES = 4029

MAX_FRAME_SAMPLES = 2_500  # per data frame (~60 KB of JSON), so a full ack window stays a few MB
# Data frames a WebSocket client may leave unacknowledged; then its data waits here. Clients ack
# every ack_window/2 frames: with 8, acks from 1,000 viewers were a fifth of the server's time, and
# arriving together they stalled the loop for 10-20 ms (bench/README.md, Fan-out). 32 x 2,500
# samples in flight is the same bound as 8 x 10,000 was.
ACK_WINDOW_FRAMES = 32


def encode(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"))


def error_frame(code: str, message: str, **extra: Any) -> str:
    return encode({"type": "error", "code": code, "message": message, **extra})


class CloseConnection(Exception):
    """Raised by the protocol when the transport must close with a code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


# --- Client frames: what a browser may send, decoded with msgspec --------------------------------
# Extra fields are ignored, as before (a newer client may send more); `id` is echoed as given.
Pattern = Annotated[str, msgspec.Meta(min_length=1)]


class Subscribe(msgspec.Struct, tag="subscribe", tag_field="type"):
    """Follow keys or globs, with history (or what was missed since the cursors), then live data."""

    metrics: Annotated[list[Pattern], msgspec.Meta(min_length=1)]
    id: Any = None
    since: dict[str, int] | None = None  # metric key -> cursor (µs)
    history_s: Annotated[float, msgspec.Meta(ge=0, le=MAX_HISTORY_S)] | msgspec.UnsetType = msgspec.UNSET
    max_rate: Annotated[float, msgspec.Meta(ge=MIN_RATE, le=MAX_RATE)] | None = None


class Unsubscribe(msgspec.Struct, tag="unsubscribe", tag_field="type"):
    """Stop following keys, and globs (which end followed globs whose text they match)."""

    metrics: list[str]
    id: Any = None


class Ping(msgspec.Struct, tag="ping", tag_field="type"):
    """Ask for a pong (clients measure the round trip)."""

    id: Any = None


class Ack(msgspec.Struct, tag="ack", tag_field="type"):
    """Acknowledge data frames 1..frame, counted from the start of the connection."""

    frame: Annotated[int, msgspec.Meta(ge=0)]
    id: Any = None


class BareAck(msgspec.Struct, tag="ack", tag_field="type", forbid_unknown_fields=True):
    """An acknowledgement with nothing else in it: the free path, not counted against the message rate."""

    frame: Annotated[int, msgspec.Meta(ge=0)]


ClientFrame = Subscribe | Unsubscribe | Ping | Ack
CLIENT_FRAMES: dict[str, type[ClientFrame]] = {
    "subscribe": Subscribe,
    "unsubscribe": Unsubscribe,
    "ping": Ping,
    "ack": Ack,
}

# The error message for each field that fails to decode, checked in this order (the first bad one is named).
FIELD_ERRORS: dict[type, dict[str, str]] = {
    Subscribe: {
        "metrics": "subscribe needs 'metrics': a non-empty list of metric keys or globs",
        "since": "'since' must map metric keys to integer cursors (µs)",
        "history_s": f"'history_s' must be a number of seconds from 0 to {MAX_HISTORY_S}",
        "max_rate": f"'max_rate' must be between {MIN_RATE} and {MAX_RATE} frames a second",
    },
    Unsubscribe: {"metrics": "unsubscribe needs 'metrics': a list of metric keys or globs"},
    Ack: {"frame": "ack needs 'frame': the number of data frames received on this connection"},
}
_bare_acks = msgspec.json.Decoder(BareAck)


class UnknownType(ValueError):
    """A message whose `type` is none of the client frames; `kind` is its type as text, for the error."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def decode_client(message: dict[str, Any]) -> ClientFrame:
    """Return the typed frame of one parsed client message; raise UnknownType, or ValueError naming the bad field."""
    kind = message.get("type")
    if not isinstance(kind, str):  # {"type": [0]} is JSON too, and a list is no dictionary key
        raise UnknownType(repr(kind)[:40])
    cls = CLIENT_FRAMES.get(kind)
    if cls is None:
        raise UnknownType(kind)
    if "since" in message and not message["since"]:
        message = {**message, "since": None}  # an empty (or false) `since` has always meant none
    try:
        return msgspec.convert(message, ClientFrame)
    except msgspec.ValidationError:
        raise ValueError(_field_error(cls, message)) from None


def _field_error(cls: type, message: dict[str, Any]) -> str:
    """Return the message for the first field of `cls`, in declaration order, that does not decode."""
    errors = FIELD_ERRORS[cls]
    for field in msgspec.structs.fields(cls):
        if field.name not in errors:
            continue
        if field.name not in message:
            if field.required:
                return errors[field.name]
            continue
        try:
            msgspec.convert(message[field.name], field.type)
        except msgspec.ValidationError:
            return errors[field.name]
    return next(iter(errors.values()))


def decode_bare_ack(text: str | bytes) -> int | None:
    """Return the frame number of a message that is only an acknowledgement, else None (it takes the usual path)."""
    try:
        return _bare_acks.decode(text).frame
    except (msgspec.MsgspecError, UnicodeError):
        return None


# --- Server frames: what the server sends, declared for readers and checked by tests ------------
# They are built as text (encode, error_frame and dashboard/live/frames.py: the data path joins
# pre-encoded fragments); tests/test_protocol_frames.py decodes every builder's output as these.
class Limits(msgspec.Struct, forbid_unknown_fields=True):
    """The server's limits, sent in hello so a client can stay within them."""

    max_message_bytes: int
    max_subscriptions: int
    max_patterns: int
    max_globs: int
    max_live_globs: int
    max_replay_total: int
    max_messages_per_s: int
    max_replay_points: int
    max_history_s: int
    max_rate: float
    ack_window: int  # 0: no acknowledgements (SSE)


class Hello(msgspec.Struct, tag="hello", tag_field="type", forbid_unknown_fields=True):
    """The first frame of every connection."""

    protocol: int
    server: str
    heartbeat_s: float
    time: int  # µs
    limits: Limits


class MetricMeta(msgspec.Struct, forbid_unknown_fields=True):
    """One metric of a subscribed frame (encoded once per metric by the key index)."""

    key: str
    source: str  # the source's slug
    unit: str
    kind: str
    name: str


class Subscribed(msgspec.Struct, tag="subscribed", tag_field="type", forbid_unknown_fields=True):
    """The metrics a subscribe (or a followed glob's new metric) now holds."""

    id: Any
    metrics: list[MetricMeta]
    globs: list[str] | msgspec.UnsetType = msgspec.UNSET  # a followed glob's new metrics


class Unsubscribed(msgspec.Struct, tag="unsubscribed", tag_field="type", forbid_unknown_fields=True):
    """The keys an unsubscribe (or a share link that lost them) let go."""

    id: Any
    metrics: list[str]


class Batch(msgspec.Struct, forbid_unknown_fields=True):
    """One metric's samples in a data frame."""

    k: str  # metric key
    t: list[int]  # µs
    v: list[float]
    late: bool = False  # committed after a newer sample of its key went out: insert by t


class Data(msgspec.Struct, tag="data", tag_field="type", forbid_unknown_fields=True):
    """Samples: live, or a back-fill (`replay`) sent before live data of its keys."""

    batches: list[Batch]
    replay: bool = False


class Lag(msgspec.Struct, tag="lag", tag_field="type", forbid_unknown_fields=True):
    """Samples were lost and are being back-filled, or a replay was cut."""

    metrics: list[str] | msgspec.UnsetType = msgspec.UNSET  # being back-filled after a loss
    dropped: int | msgspec.UnsetType = msgspec.UNSET
    truncated: list[str] | msgspec.UnsetType = msgspec.UNSET  # a replay skipped older samples of these
    message: str | msgspec.UnsetType = msgspec.UNSET


class Pong(msgspec.Struct, tag="pong", tag_field="type", forbid_unknown_fields=True):
    """The answer to a ping."""

    id: Any
    time: int  # µs


class Heartbeat(msgspec.Struct, tag="heartbeat", tag_field="type", forbid_unknown_fields=True):
    """Sent every heartbeat_s so proxies keep the connection open."""

    time: int  # µs


class Degraded(msgspec.Struct, tag="degraded", tag_field="type", forbid_unknown_fields=True):
    """Live delivery is degraded (or ok again) for a reason."""

    reason: str  # "layer" or "database"
    state: str  # "degraded" or "ok"
    since: int  # µs
    time: int  # µs


class Stale(msgspec.Struct, tag="stale", tag_field="type", forbid_unknown_fields=True):
    """These metrics' sources missed their expected interval (or sent again)."""

    metrics: list[str]
    state: str  # "stale" or "ok"
    since: int  # µs


def _event_frame(event: type[events.Event], name: str, tag: str, doc: str) -> type[msgspec.Struct]:
    """Return the frame type that carries an event's fields as they are, each one required.

    Declared from the event, not beside it: a field added to the event is in
    the frame (and a client may rely on it) without a second list to keep in
    step. Every field is required because the frame is the whole
    `as_message()` of the event, defaults included.
    """
    hints = typing.get_type_hints(event)  # the event module's annotations are strings (PEP 563)
    return msgspec.defstruct(
        name,
        [(field.name, hints[field.name]) for field in dataclasses.fields(event)],
        tag=tag,
        tag_field="type",
        forbid_unknown_fields=True,
        module=__name__,
        namespace={"__doc__": doc},
    )


# events.AlertState (dashboard/events.py) as the browser gets it, field for field (times in µs).
Alert = _event_frame(events.AlertState, "Alert", "alert", "An alert instance changed state.")


class Error(msgspec.Struct, tag="error", tag_field="type", forbid_unknown_fields=True):
    """A message was refused, in whole or in part; `code` is stable, `message` is for people."""

    code: str
    message: str
    id: Any = None
    metric: str | None = None  # the first pattern refused
    metrics: list[str] | msgspec.UnsetType = msgspec.UNSET  # every pattern refused for this reason
    keys_left_out: int | msgspec.UnsetType = msgspec.UNSET
    limit: int | msgspec.UnsetType = msgspec.UNSET


ServerFrame = Hello | Subscribed | Unsubscribed | Data | Lag | Pong | Heartbeat | Degraded | Stale | Alert | Error
