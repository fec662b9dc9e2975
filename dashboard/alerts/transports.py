"""Notification transports: one class per kind (webhook, email), a registry, and delivery with retries.

A delivery goes out off the hot path (`spawn`), is retried on the schedule
of collectors/retry.py (NOTIFY_ATTEMPTS tries, NOTIFY_BACKOFF_S doubling),
and every attempt is recorded on its NotificationDelivery row. A delivery
left pending by a process that stopped mid-way is claimed and sent again by
the no-data job (`retry_stale_deliveries`). Adding a kind is one class here
and one entry in TRANSPORTS (healthchecks' hc/api/transports.py).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import ssl
from collections.abc import Coroutine
from typing import Any, ClassVar

import httpx
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.mail import send_mail

from collectors.retry import Schedule
from dashboard import fastpaths, loops
from dashboard.alerts import storage
from dashboard.alerts.storage import DetachedDelivery
from dashboard.models import NotificationDelivery

log = logging.getLogger(__name__)

WEBHOOK_TIMEOUT_S = 5.0  # a receiver slower than this counts as a failed attempt, retried later


class Transport:
    """One way to tell someone about an alert; `send` raises on failure (the caller retries and records)."""

    kind: ClassVar[str]

    async def send(self, target: str, payload: dict) -> None:
        raise NotImplementedError


class Webhook(Transport):
    """POST the payload as JSON to the rule's webhook URL; anything but a 2xx is a failure."""

    kind = "webhook"

    async def send(self, target: str, payload: dict) -> None:
        response = await (await webhook_client()).post(target, json=payload)
        if response.status_code >= 300:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")


class Email(Transport):
    """Send one plain-text email per address through Django's email backend (on a thread: SMTP blocks)."""

    kind = "email"

    async def send(self, target: str, payload: dict) -> None:
        await sync_to_async(self._send)(target, payload)

    @staticmethod
    def _send(target: str, payload: dict) -> None:
        subject = f"[Pulseboard {payload['severity']}] {payload['rule']}: {payload['state']}"
        body = (
            f"{payload['message']}\n\nRule: {payload['rule']}\nMetric: {payload['metric']}\n"
            f"State: {payload['previous']} -> {payload['state']}\nAt: {payload['at']}\n"
        )
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [target])


TRANSPORTS: dict[str, type[Transport]] = {cls.kind: cls for cls in (Webhook, Email)}


# --- Work in flight ----------------------------------------------------------------

IN_FLIGHT = "alerts.in_flight"  # dashboard/loops.py key: the running loop's notification tasks


def spawn(coro: Coroutine[Any, Any, Any]) -> None:
    """Run a notification off the hot path; keep a reference so the task is not collected mid-flight."""
    # A fresh context: spawned from inside async_to_sync (a rule disabled in the admin), the task
    # would inherit that request thread's executor, which is gone by the time it calls sync_to_async.
    task = asyncio.get_running_loop().create_task(coro, context=contextvars.Context())
    tasks: set[asyncio.Task] = loops.service(IN_FLIGHT, set)
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def drain() -> None:
    """Wait for this loop's notifications in flight (tests, shutdown)."""
    tasks: set[asyncio.Task] = loops.service(IN_FLIGHT, set)
    while tasks:
        await asyncio.gather(*list(tasks), return_exceptions=True)


# --- The webhook client of each event loop -----------------------------------------


def _prepare_tls() -> ssl.SSLContext:
    """Load the CA certificates and the modules httpx imports on its first request (slow: keep off the loop)."""
    fastpaths.warm_imports()
    # Imported here, on the executor thread, because this import is what would stall the loop.
    import anyio.streams.tls  # noqa: F401

    return ssl.create_default_context()


def client_ready() -> bool:
    """Return whether the running loop's webhook client exists already."""
    return loops.existing(Webhook) is not None


async def webhook_client() -> httpx.AsyncClient:
    """Return the event loop's webhook client (dashboard/loops.py): one connection pool, created once.

    Loading the CA certificates takes a few hundred milliseconds of CPU; it runs
    on a thread so it never stalls the loop that serves ingest and live sockets.
    """
    client = loops.existing(Webhook)
    if client is None:
        context = await asyncio.get_running_loop().run_in_executor(None, _prepare_tls)
        # Another notification may have made it meanwhile: service() keeps the first.
        client = loops.service(
            Webhook,
            lambda: httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT_S, headers={"User-Agent": "Pulseboard"}, verify=context),
        )
    return client


# --- Delivery ------------------------------------------------------------------------


def _waits() -> tuple[float, ...]:
    """Return the waits between a notification's attempts (NOTIFY_BACKOFF_S, then doubling)."""
    attempts = settings.PULSEBOARD["NOTIFY_ATTEMPTS"]
    return tuple(Schedule(settings.PULSEBOARD["NOTIFY_BACKOFF_S"]).delays(attempts=attempts - 1))


def stale_after_s() -> float:
    """Return how long a delivery may stay pending before it counts as abandoned: a full retry series and a minute."""
    return sum(_waits()) + settings.PULSEBOARD["NOTIFY_ATTEMPTS"] * WEBHOOK_TIMEOUT_S + 60


async def retry_stale_deliveries() -> list[int]:
    """Send again the notifications a stopped process left pending; return their ids."""
    claimed = await sync_to_async(storage.claim_stale_deliveries)(stale_after_s())
    for delivery_id in claimed:
        log.warning("resuming notification %d left pending by a stopped process", delivery_id)
        spawn(deliver(delivery_id))
    return claimed


async def deliver(delivery: NotificationDelivery | DetachedDelivery | int) -> None:
    """Send one notification, retrying with exponential backoff; record every attempt and the outcome."""
    if isinstance(delivery, int):
        delivery, payload = await sync_to_async(storage.load_delivery)(delivery)
    elif isinstance(delivery, DetachedDelivery):
        payload = delivery.payload
    else:
        payload = storage.payload(delivery)
    waits = _waits()
    attempts = len(waits) + 1
    kind = TRANSPORTS.get(delivery.channel)
    if kind is None:  # a row written by hand or by a newer version
        log.warning("notification %d has no transport %r", delivery.id, delivery.channel)
        return
    transport = kind()

    async def record(ok: bool, error: str, final: bool) -> None:
        if not isinstance(delivery, DetachedDelivery):
            await sync_to_async(storage.record_attempt)(delivery.id, ok, error, final)

    for attempt, wait in enumerate((*waits, None)):
        try:
            await transport.send(delivery.target, payload)
        except Exception as exc:
            await record(False, f"attempt {attempt + 1}: {exc}", wait is None)
            if wait is None:
                log.warning(
                    "notification %d to %s failed after %d attempts: %s", delivery.id, delivery.target, attempts, exc
                )
                return
            await asyncio.sleep(wait)
            continue
        await record(True, "", wait is None)
        return
