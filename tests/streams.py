"""Clients of the live transports for tests against real servers: a WebSocket viewer that acks, an SSE reader, an agent."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets

from dashboard.testing import Server, login_cookies, manage

VIEWER, VIEWER_PASSWORD = "watcher", "watch-pass-123"


def create_viewer(env: dict[str, str]) -> None:
    """Create the staff user every live test signs in as (idempotent)."""
    manage(
        env,
        "shell",
        "-c",
        "from django.contrib.auth import get_user_model\n"
        f"u, _ = get_user_model().objects.get_or_create(username={VIEWER!r}, defaults={{'is_staff': True}})\n"
        f"u.set_password({VIEWER_PASSWORD!r}); u.save()",
    )


def issue_token(env: dict[str, str], path) -> str:
    manage(env, "issuetoken", "stream tests", "--output", str(path))
    return path.read_text().strip()


def cookie_header(server: Server) -> str:
    cookies = login_cookies(server, VIEWER, VIEWER_PASSWORD)
    return "; ".join(f"{k}={v}" for k, v in cookies.items())


async def post_samples(server: Server, secret: str, source: str, samples: list[tuple[str, int, float]]) -> dict:
    """Ingest (metric, ts µs, value) samples through the HTTP API, like an agent."""
    body = {"source": source, "precision": "us", "samples": [{"metric": m, "ts": t, "value": v} for m, t, v in samples]}
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        response = await client.post("/api/v1/ingest", json=body, headers={"Authorization": f"Token {secret}"})
    assert response.status_code == 200, response.text[:500]
    return response.json()


@dataclass
class Viewer:
    """A protocol v1 WebSocket client that acknowledges every data frame and keeps what it received per key."""

    socket: Any
    samples: dict[str, list[int]] = field(default_factory=dict)
    frames: int = 0
    closed_code: int | None = None

    @classmethod
    async def connect(cls, server: Server, cookies: str, **options: Any) -> Viewer:
        socket = await websockets.connect(
            server.ws_url, additional_headers={"Cookie": cookies, "Origin": server.url}, **options
        )
        hello = json.loads(await socket.recv())
        assert hello["type"] == "hello", hello
        return cls(socket)

    async def subscribe(self, metrics: list[str], **fields: Any) -> dict:
        await self.socket.send(json.dumps({"type": "subscribe", "id": 1, "metrics": metrics, **fields}))
        return await self.until("subscribed")

    async def until(self, kind: str, within_s: float = 20) -> dict:
        """Read (and take in) frames until one of this type arrives."""
        deadline = time.monotonic() + within_s
        while True:
            frame = await self.read(max(0.1, deadline - time.monotonic()))
            if frame["type"] == kind:
                return frame

    async def read(self, within_s: float = 20) -> dict:
        frame = json.loads(await asyncio.wait_for(self.socket.recv(), within_s))
        if frame["type"] == "data":
            self.frames += 1
            for batch in frame["batches"]:
                self.samples.setdefault(batch["k"], []).extend(batch["t"])
            await self.socket.send(json.dumps({"type": "ack", "frame": self.frames}))
        return frame

    async def collect(self, key: str, count: int, within_s: float = 30) -> list[int]:
        """Read until `count` samples of `key` arrived; return them in arrival order."""
        deadline = time.monotonic() + within_s
        while len(self.samples.get(key, [])) < count:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"only {len(self.samples.get(key, []))} of {count} samples of {key} arrived"
            await self.read(remaining)
        return self.samples[key]

    async def close(self) -> None:
        await self.socket.close()


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str | None, dict]]:
    """Yield (event id, frame) for each event of a text/event-stream response."""
    event_id: str | None = None
    data: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield event_id, json.loads("\n".join(data))
            event_id, data = None, []
        elif line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
