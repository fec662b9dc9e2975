"""The whole path on real processes: agent -> HTTP ingest -> Daphne -> WebSocket client written from docs/protocol.md."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest
import websockets

from dashboard.testing import ROOT, login_cookies, manage, project_env, running_server

pytestmark = pytest.mark.slow


async def test_an_external_client_receives_system_metrics_from_the_agent(tmp_path) -> None:
    env = project_env(tmp_path, ADMIN_PASSWORD="e2e-pass-123")
    with running_server(env) as server:
        manage(env, "ensureadmin")
        token_file = tmp_path / "agent-token"
        manage(env, "issuetoken", "e2e agent", "--output", str(token_file))
        agent = subprocess.Popen(
            [sys.executable, "manage.py", "runcollectors", "--server", server.url, "--token-file", str(token_file)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            cookies = login_cookies(server, "admin", "e2e-pass-123")
            headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items()), "Origin": server.url}
            async with websockets.connect(server.ws_url, additional_headers=headers) as ws:
                hello = json.loads(await ws.recv())
                assert hello["type"] == "hello"
                # Metrics appear once the agent's first batch lands; retry the subscription until they do.
                deadline = time.monotonic() + 30
                subscribed_at = None
                while subscribed_at is None and time.monotonic() < deadline:
                    await ws.send(
                        json.dumps({"type": "subscribe", "id": 1, "metrics": ["host.*.cpu.total"], "history_s": 0})
                    )
                    while True:
                        frame = json.loads(await ws.recv())
                        if frame["type"] == "subscribed":
                            subscribed_at = time.monotonic() if frame["metrics"] else None
                            break
                        if frame["type"] == "error":
                            break
                    if subscribed_at is None:
                        await asyncio.sleep(0.5)  # the pace of retries; the deadline above bounds them
                assert subscribed_at is not None, "the agent's system metrics never appeared"
                while True:
                    frame = json.loads(await ws.recv())
                    if frame["type"] == "data" and not frame.get("replay"):
                        break
                waited = time.monotonic() - subscribed_at
                print(f"first live system batch {waited:.2f} s after subscribing")
                batch = frame["batches"][0]
                assert batch["k"].endswith(".cpu.total") and 0 <= batch["v"][0] <= 100
        finally:
            agent.terminate()
            agent.wait(15)


async def test_a_cross_origin_socket_is_refused(tmp_path) -> None:
    env = project_env(tmp_path)
    with running_server(env) as server:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(server.ws_url, additional_headers={"Origin": "http://evil.example"}):
                pass
        assert refused.value.response.status_code == 403
