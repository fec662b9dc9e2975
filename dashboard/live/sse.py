"""The Server-Sent Events transport of protocol v1: GET /api/v1/stream, for networks that block WebSocket upgrades.

It wraps the same LiveClient as the WebSocket consumer, so it carries the same
frames (each one `data:` line of the same JSON) with the same resume
semantics. The subscription comes from the query string, and every data frame
carries an `id:` holding the cursors delivered so far, so the browser's
automatic reconnect (which sends Last-Event-ID) resumes with no gap and no
duplicate.

SSE has no way back for acknowledgements, so its bound is different: one
response carries at most SSE_RESPONSE_BYTES and then ends; EventSource
reconnects and resumes. A reader that stops reading therefore costs the
server at most that many bytes of transport buffer.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.views.decorators.http import require_GET

from dashboard import stats
from dashboard.api import error_response
from dashboard.exceptions import BadRequest, NotAuthenticated
from dashboard.live import protocol
from dashboard.live.client import LiveClient

log = logging.getLogger(__name__)

RETRY_MS = 1000  # EventSource waits this long before it reconnects after a response ends
MAX_CURSOR_HEADER_KEYS = protocol.MAX_SUBSCRIPTIONS  # the same cap as max_subscriptions


def encode_cursors(cursors: Mapping[str, int]) -> str:
    """Return cursors as `key:ts,key:ts` (keys never contain commas), the form of `since` and of event ids."""
    return ",".join(f"{key}:{ts}" for key, ts in cursors.items())


def parse_cursors(text: str) -> dict[str, int]:
    """Return the cursors of a `key:ts,key:ts` string; raise ValueError when it is malformed."""
    cursors: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, ts = item.rpartition(":")
        if not sep or not key or not ts.isdigit():
            raise ValueError(f"'since' items look like metric.key:cursor_us, not {item[:80]!r}")
        cursors[key] = int(ts)
    if len(cursors) > MAX_CURSOR_HEADER_KEYS:
        raise ValueError(f"at most {MAX_CURSOR_HEADER_KEYS} cursors")
    return cursors


def subscribe_message(query: Mapping[str, Any], last_event_id: str | None) -> dict[str, Any]:
    """Return the protocol `subscribe` message a stream's query string (and Last-Event-ID) stands for."""
    patterns = [p for value in query.getlist("metrics") for p in value.split(",") if p]
    if not patterns:
        raise ValueError("'metrics' is required: metric keys or globs, comma-separated")
    message: dict[str, Any] = {"type": "subscribe", "id": 1, "metrics": patterns}
    for name in ("history_s", "max_rate"):
        if query.get(name):
            try:
                message[name] = float(query[name])
            except ValueError:
                raise ValueError(f"{name!r} must be a number") from None
    since = parse_cursors(query.get("since", ""))
    if last_event_id:
        since.update(parse_cursors(last_event_id))  # what the browser last received wins
    if since:
        message["since"] = since
    return message


@require_GET
async def stream(request: HttpRequest) -> HttpResponse:
    """GET /api/v1/stream: protocol v1 frames as Server-Sent Events for the signed-in user."""
    user = await request.auser()
    if not user.is_authenticated:
        return error_response(NotAuthenticated("sign in at /accounts/login/ first"))
    try:
        subscribe = subscribe_message(request.GET, request.headers.get("Last-Event-ID"))
    except ValueError as exc:
        return error_response(BadRequest(str(exc), field="metrics"))
    response = StreamingHttpResponse(events(user, subscribe), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx must pass each event through at once
    return response


class EventStream:
    """The Transport (dashboard/live/session.py) of one SSE response: frames become events on a queue the response reads."""

    __slots__ = ("queue", "client")

    wire = None  # no pre-framed WebSocket bytes here

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.client: LiveClient | None = None

    async def send_text(self, frame: str) -> None:
        """Queue a frame as one event; a data frame's id holds the cursors delivered with it."""
        # The id is taken when the frame is handed over, so it names exactly what the browser has by then.
        if frame.startswith('{"type":"data"') and self.client is not None:
            self.queue.put_nowait(f"id: {encode_cursors(self.client.session.delivered)}\ndata: {frame}\n\n")
        else:
            self.queue.put_nowait(f"data: {frame}\n\n")

    async def close(self, code: int) -> None:
        """Do nothing: a response ends when its byte budget is spent or the browser goes away."""


async def events(user, subscribe: dict[str, Any]) -> AsyncIterator[str]:
    """Yield one connection's events until its byte budget is spent or the browser goes away."""
    transport = EventStream()
    client = transport.client = LiveClient(user, transport, acks=False)
    queue = transport.queue
    budget = settings.PULSEBOARD["SSE_RESPONSE_BYTES"]
    yield f"retry: {RETRY_MS}\n\n"
    started = False
    try:
        await client.start()  # inside the try: a browser gone during start still releases what it took
        started = True
        await client.handle(json.dumps(subscribe))
        sent = 0
        while sent < budget:
            chunk = await queue.get()
            sent += len(chunk)
            yield chunk
        stats.SSE_RESPONSES_ENDED.inc()
    finally:
        if started:
            await client.stop()
        else:
            await client.hub.unregister(client.session)
