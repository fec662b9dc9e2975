"""The naive Channels pattern, for bench/fanout.py to compare against (never deployed).

Every socket gets its own channel-layer channel and joins one group; every
sample is one group_send; every socket JSON-encodes every sample itself. Run
by Daphne with the project's settings and REDIS_URL, so it uses the same
channel layer (channels_redis pub/sub) as Pulseboard.

POST /publish with {"samples": [{"metric", "ts", "value"}, ...]} publishes;
viewers connect to /ws/.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "monitor.settings")

import django  # noqa: E402

django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.layers import get_channel_layer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

GROUP = "bench.naive"


class NaiveConsumer(AsyncWebsocketConsumer):
    """One socket, one channel, one group membership, one encode per sample."""

    async def connect(self) -> None:
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(GROUP, self.channel_name)

    async def bench_sample(self, event: dict) -> None:
        batch = {"k": event["k"], "t": [event["t"]], "v": [event["v"]]}
        await self.send(text_data=json.dumps({"type": "data", "batches": [batch]}))


async def publish(scope, receive, send) -> None:
    """Accept a batch over HTTP and group_send each sample on its own."""
    if scope["type"] != "http":
        return
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    layer = get_channel_layer()
    for sample in json.loads(body or b"{}").get("samples", []):
        await layer.group_send(
            GROUP, {"type": "bench.sample", "k": sample["metric"], "t": sample["ts"], "v": sample["value"]}
        )
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


application = ProtocolTypeRouter({"http": publish, "websocket": URLRouter([path("ws/", NaiveConsumer.as_asgi())])})
