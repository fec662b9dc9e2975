"""Health and scraping endpoints: /healthz (liveness), /readyz (database and channel layer), /metrics (Prometheus)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from dashboard import loops, stats
from dashboard.models import Metric, Source

log = logging.getLogger(__name__)


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers (no dependency is checked, so a database outage never restarts it)."""
    return JsonResponse({"status": "ok"})


READY_TIMEOUT_S = 2.0  # a load balancer probes every few seconds; an answer later than this is a failure


class LayerProbe:
    """One event loop's probe channel on the layer, used by one readiness probe at a time."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.channel: str | None = None


def _database_ready() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


async def _channel_layer_ready() -> None:
    """Send a message to this process's probe channel through the layer and receive it back."""
    layer = get_channel_layer()
    probe = loops.service(LayerProbe, LayerProbe)
    async with probe.lock:
        # One probe channel per process: the pub/sub layer keeps a channel subscribed after a receive.
        channel = probe.channel
        if channel is None:
            channel = probe.channel = await layer.new_channel("readyz.")
        nonce = secrets.token_hex(8)
        try:
            await layer.send(channel, {"type": "readyz.probe", "nonce": nonce})
            while (await layer.receive(channel)).get("nonce") != nonce:
                pass  # a late answer to an earlier probe that timed out
        except BaseException:
            probe.channel = None  # a cancelled receive unsubscribes it
            raise


async def _check(name: str, probe) -> tuple[str, str]:
    try:
        await asyncio.wait_for(probe(), READY_TIMEOUT_S)
    except TimeoutError:
        return name, f"no answer within {READY_TIMEOUT_S} s"
    except Exception as exc:
        return name, f"{type(exc).__name__}: {str(exc)[:200]}"
    return name, "ok"


READY_LOG_EVERY_S = 60.0  # a probe every few seconds must not log the same failure every few seconds
_ready_logged: dict[str, tuple[str, float]] = {}


def _log_readiness(results: dict[str, str]) -> None:
    """Log a failing check with its detail when the detail changes, else at most once per READY_LOG_EVERY_S."""
    now = time.monotonic()
    for name, detail in results.items():
        if detail == "ok":
            if _ready_logged.pop(name, None) is not None:
                log.info("readiness: %s is ok again", name)
            continue
        last = _ready_logged.get(name)
        if last is None or last[0] != detail or now - last[1] >= READY_LOG_EVERY_S:
            _ready_logged[name] = (detail, now)
            log.warning("readiness: %s failed: %s", name, detail)


async def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: the database and the channel layer both answer a round trip within READY_TIMEOUT_S.

    Anonymous callers (load balancers) get the status and, per check, "ok" or
    "unavailable"; the reason (an exception's text names hosts and ports) goes
    to the log and to staff sessions or scrapers with METRICS_TOKEN.
    """
    results = dict(
        await asyncio.gather(
            _check("database", sync_to_async(_database_ready)),
            _check("channel_layer", _channel_layer_ready),
        )
    )
    ok = all(v == "ok" for v in results.values())
    _log_readiness(results)
    if not ok and not await _may_see_detail(request):
        results = {name: "ok" if detail == "ok" else "unavailable" for name, detail in results.items()}
    response = JsonResponse({"status": "ok" if ok else "unavailable", **results}, status=200 if ok else 503)
    if not ok:
        response["Retry-After"] = "5"
    return response


async def _may_see_detail(request: HttpRequest) -> bool:
    """Return whether the caller may read why a check failed: staff sessions and METRICS_TOKEN holders."""
    if _bearer_matches(request):
        return True
    try:
        user = await request.auser()
    except Exception:  # the session store is the database, which may be the thing that is down
        return False
    return bool(user.is_authenticated and user.is_staff)


def _agent_gauges() -> bytes:
    """Return the agents' self-reported spool depth and last-success age as Prometheus text.

    Built as metric families, not Gauge objects: in multiprocess mode a Gauge
    writes a file per process, and these values come from the database.
    """
    depth = GaugeMetricFamily("pulseboard_agent_spool_depth", "Readings waiting in an agent's spool", labels=["agent"])
    age = GaugeMetricFamily(
        "pulseboard_agent_last_success_age_seconds",
        "Seconds since an agent's last accepted batch, as it last reported",
        labels=["agent"],
    )
    rows = Metric.objects.filter(source__kind=Source.Kind.AGENT, name__in=["spool.depth", "last_success_age"])
    for source_slug, name, value in rows.values_list("source__slug", "name", "last_value"):
        if value is not None:
            (depth if name == "spool.depth" else age).add_metric([source_slug.removeprefix("agent.")], value)
    registry = CollectorRegistry()
    registry.register(_Families([depth, age]))
    return generate_latest(registry)


class _Families:
    """A collector that yields ready-made metric families once."""

    def __init__(self, families: list) -> None:
        self.families = families

    def collect(self):
        return self.families


def _bearer_matches(request: HttpRequest) -> bool:
    """Return whether the request presents METRICS_TOKEN as a bearer token."""
    token = settings.METRICS_TOKEN
    if token:
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and secrets.compare_digest(presented.strip().encode(), token.encode()):
            return True
    return False


def metrics_allowed(request: HttpRequest) -> bool:
    """Let staff sessions and scrapers presenting METRICS_TOKEN as a bearer token read /metrics."""
    if _bearer_matches(request):
        return True
    return request.user.is_authenticated and request.user.is_staff


def prometheus_metrics(request: HttpRequest) -> HttpResponse:
    """GET /metrics: the counters (this process's, or all workers' in multiprocess mode) and the agents' gauges."""
    if not metrics_allowed(request):
        response = HttpResponse(
            "Forbidden: sign in as staff or send 'Authorization: Bearer <METRICS_TOKEN>'.\n", status=403
        )
        response["Content-Type"] = "text/plain; charset=utf-8"
        return response
    body = stats.exposition() + _agent_gauges()
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
