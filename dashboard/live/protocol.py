"""Protocol v1 (docs/protocol.md): version, limits, close codes, and the frames both ways."""

from __future__ import annotations

import json
import logging
from typing import Any

from django.conf import settings

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
