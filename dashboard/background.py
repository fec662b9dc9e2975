"""Periodic jobs that run inside each server process (retention, no-data alert checks).

Daphne has no start-up hook, so the jobs start with the first request of any
kind on each event loop: monitor/asgi.py wraps the application in
`starting()`, so a load balancer's first /healthz probe is enough (Writer.get
and Hub.get call ensure_started too).
Each job is an async function that loops forever; a crash is logged and the
job restarted after a pause, never taking the server down. Jobs must be safe
to run in several processes at once (several Daphne workers).
"""

from __future__ import annotations

import asyncio
import logging
import os
from importlib import import_module

from dashboard import loops

log = logging.getLogger(__name__)

# Dotted paths of `async def job() -> None` loops.
JOBS: list[str] = ["dashboard.alerts.nodata.nodata_loop", "dashboard.retention.retention_loop"]

RESTART_DELAY_S = 10.0


def ensure_started() -> None:
    """Start every job once on the running event loop (no-op when PULSEBOARD_BACKGROUND=0, as in tests)."""
    if os.environ.get("PULSEBOARD_BACKGROUND", "1") == "0":
        return
    loops.service("background.jobs", _start_jobs)


def _start_jobs() -> list[asyncio.Task]:
    loop = asyncio.get_running_loop()
    return [loop.create_task(_supervise(path), name=f"background:{path}") for path in JOBS]


def starting(app):
    """Wrap an ASGI application so every scope first makes sure the jobs run on this event loop.

    The wrapper returns the application's coroutine instead of awaiting it:
    an awaiting wrapper stays suspended, with its frame, for as long as the
    connection lasts (~500 B per idle WebSocket, bench/connmem.py).
    """

    def application(scope, receive, send):
        if scope["type"] != "lifespan":
            ensure_started()
        return app(scope, receive, send)

    application._asgi_single_callable = True  # asgiref would take a plain function for an ASGI 2 app
    return application


async def _supervise(path: str) -> None:
    module, _, name = path.rpartition(".")
    job = getattr(import_module(module), name)
    while True:
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background job %s crashed; restarting in %.0f s", path, RESTART_DELAY_S)
        await asyncio.sleep(RESTART_DELAY_S)
