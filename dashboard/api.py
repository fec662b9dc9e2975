"""JSON endpoints: the ingest API for agents and read APIs for pages.

Every error has one shape, built by error_response:
{"error": {"code": "...", "message": "...", "field": "..."}}.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from dashboard import actions, lineprotocol, ratelimit
from dashboard.exceptions import (
    BadRequest,
    InvalidReading,
    NotAuthenticated,
    OutOfScope,
    PayloadTooLarge,
    PulseboardError,
    RateLimited,
    ReadOnlyToken,
    StorageUnavailable,
)
from dashboard.models import AgentToken, Metric, ReadToken
from dashboard.timeutil import now_us
from dashboard.validation import PRECISION_US, Reading, Rejection, readings_from_dicts, readings_from_json

# Bodies above this are unzipped, decoded and validated on a worker thread,
# so that a big batch (5,000 samples, ~350 KB: 2-3 ms of parsing) does not
# hold up the event loop, and with it every live socket of the process,
# while small ones (an agent's usual post) skip the thread hop (~0.1 ms).
PARSE_ON_LOOP_MAX_BYTES = 16 * 1024


def error_response(exc: PulseboardError, **extra: Any) -> JsonResponse:
    """Return the one JSON error shape for an exception, with its HTTP status."""
    response = JsonResponse({"error": exc.as_dict(), **extra}, status=exc.status)
    if isinstance(exc, RateLimited):
        response["Retry-After"] = str(max(1, round(exc.retry_after_s + 0.499)))
    elif exc.status == 503:
        response["Retry-After"] = "5"
    return response


def _find_token(secret: str) -> AgentToken | None:
    """AgentToken.find on the shared sync thread, which keeps its connection; a broken one is dropped.

    The agent handler sends no request_started/finished signals
    (dashboard/agenthandler.py), so close_old_connections never runs for
    this thread: like the writer, it keeps one connection and closes it only
    after an error, so the next lookup reconnects.
    """
    try:
        return AgentToken.find(secret)
    except DatabaseError:
        if not connection.in_atomic_block:  # never inside a test's transaction
            connection.close()
        raise


async def authenticate_agent(request: HttpRequest) -> AgentToken:
    """Return the live agent token named by the Authorization header ("Token x" or "Bearer x").

    A token seen in the last few seconds comes from the process cache
    (AgentToken.find_cached) with no database round trip and no thread hop;
    revocation still takes effect within AgentToken.CACHE_S everywhere.
    """
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    secret = secret.strip()
    if scheme.lower() not in ("token", "bearer") or not secret:
        raise NotAuthenticated("send an agent token in the Authorization header: 'Authorization: Token <secret>'")
    if secret.startswith(ReadToken.PREFIX):
        raise ReadOnlyToken("read tokens only read; send an agent token (Agent tokens in the admin) to write")
    token = AgentToken.find_cached(secret)
    if token is None:
        try:
            # last_used is set by the writer, in the transaction that stores the token's readings.
            token = await sync_to_async(_find_token)(secret)
        except DatabaseError as exc:
            # An outage is a 503 with Retry-After (the agent keeps its spool), not a 500.
            raise StorageUnavailable(f"the database is unavailable ({type(exc).__name__}); retry later") from None
        if token is None:
            raise NotAuthenticated("the agent token is unknown; create one in the admin under Agent tokens")
        AgentToken.remember(secret, token)
    if token.is_revoked:
        raise NotAuthenticated("the agent token was revoked; create a new one in the admin")
    return token


def read_body(request: HttpRequest) -> bytes:
    """Return the request body, gunzipped if needed, within the size limit."""
    limit = settings.PULSEBOARD["MAX_BODY_BYTES"]
    body = request.body
    if len(body) > limit:
        raise PayloadTooLarge(f"the body is over {limit} bytes; send smaller batches")
    if request.headers.get("Content-Encoding", "").lower() == "gzip":
        try:
            decompressor = zlib.decompressobj(wbits=31)
            body = decompressor.decompress(body, limit + 1)
        except (zlib.error, gzip.BadGzipFile):
            raise BadRequest("Content-Encoding is gzip but the body is not valid gzip", field="body") from None
        if len(body) > limit or decompressor.unconsumed_tail:
            raise PayloadTooLarge(f"the unzipped body is over {limit} bytes; send smaller batches")
    return body


def parse_json_batch(body: bytes) -> list[Reading | Rejection]:
    """Turn a JSON ingest body into readings and per-sample rejections (docs/ingest.md)."""
    items = readings_from_json(body, now_us(), settings.PULSEBOARD["MAX_SAMPLES_PER_REQUEST"])
    if items is not None:  # the common shape, decoded and checked in one pass
        return items
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}", field="body") from None
    if isinstance(payload, list):
        payload = {"samples": payload}
    if not isinstance(payload, dict):
        raise BadRequest("the body must be a JSON object with a 'samples' list", field="body")
    samples = payload.get("samples")
    if not isinstance(samples, list):
        raise BadRequest("'samples' must be a list", field="samples")
    limit = settings.PULSEBOARD["MAX_SAMPLES_PER_REQUEST"]
    if len(samples) > limit:
        raise PayloadTooLarge(f"{len(samples)} samples is over the limit of {limit} per request", field="samples")
    precision = payload.get("precision", "ms")
    if not isinstance(precision, str) or precision not in PRECISION_US:
        raise BadRequest(f"precision must be one of {sorted(PRECISION_US)}", field="precision")
    defaults = {k: payload[k] for k in ("source", "source_kind", "unit", "labels") if k in payload}
    return readings_from_dicts(samples, defaults, precision, now_us())


def check_scope(token: AgentToken, items: list[Reading | Rejection]) -> None:
    """Refuse the whole request when it writes a source the token may not write."""
    # Each source once: a batch has thousands of readings of a few sources, and
    # matching the token's patterns cost more than validating the readings.
    allowed: set[str] = set()
    for item in items:
        if isinstance(item, Reading) and item.source not in allowed:
            if not token.allows(item.source):
                raise OutOfScope(
                    f"token {token.name!r} may not write source {item.source!r}; widen its source patterns in the admin",
                    field="source",
                )
            allowed.add(item.source)


def ingest_response(result: actions.IngestResult, position: str = "index") -> JsonResponse:
    body = result.as_dict(position)
    if result.rejected and not result.accepted and not result.duplicates:
        error = InvalidReading("no sample was accepted; see 'rejected' for each reason", field="samples")
        return JsonResponse({"error": error.as_dict(), **body}, status=400)
    return JsonResponse(body, status=200)


@csrf_exempt
@require_POST
async def ingest(request: HttpRequest) -> JsonResponse:
    """POST /api/v1/ingest: store a JSON batch of samples from an agent or device."""
    try:
        token = await authenticate_agent(request)
        ratelimit.check_rate(token.pk)
        if len(request.body) > PARSE_ON_LOOP_MAX_BYTES or request.headers.get("Content-Encoding"):
            items = await asyncio.to_thread(lambda: parse_json_batch(read_body(request)))
        else:
            items = parse_json_batch(read_body(request))
        check_scope(token, items)
        result = await actions.ingest(items, token=token, checked=True)
    except PulseboardError as exc:
        return error_response(exc)
    return ingest_response(result)


@require_GET
async def metrics(request: HttpRequest) -> JsonResponse:
    """GET /api/v1/metrics: the metrics the signed-in user may read, with their latest values."""
    user = await request.auser()
    if not user.is_authenticated:
        return error_response(NotAuthenticated("sign in at /accounts/login/ first"))

    @sync_to_async
    def rows() -> list[dict[str, Any]]:
        return [
            {
                "key": m.key,
                "source": m.source.slug,
                "source_kind": m.source.kind,
                "name": m.name,
                "unit": m.unit,
                "kind": m.kind,
                "last_ts": m.last_ts,
                "last_value": m.last_value,
            }
            for m in Metric.objects.visible_to(user).select_related("source")
        ]

    return JsonResponse({"metrics": await rows()})


@csrf_exempt
@require_POST
async def write_line_protocol(request: HttpRequest) -> HttpResponse:
    """POST /api/v2/write: InfluxDB line protocol, as Telegraf and influxdb-client send it (docs/ingest.md).

    204 when every line was stored (or was already stored), like InfluxDB.
    Otherwise 400 with the good lines stored and each refused line's number
    and reason; `code` and `message` are repeated at the top level because
    that is where InfluxDB clients look for them. `org` and `bucket` are
    accepted and ignored: the naming rule, not the bucket, places a sample.
    """
    try:
        token = await authenticate_agent(request)
        ratelimit.check_rate(token.pk)
        precision = request.GET.get("precision", "ns")
        if len(request.body) > PARSE_ON_LOOP_MAX_BYTES or request.headers.get("Content-Encoding"):
            parsed = await asyncio.to_thread(lambda: lineprotocol.parse_body(read_body(request), precision, now_us()))
        else:
            parsed = lineprotocol.parse_body(read_body(request), precision, now_us())
        limit = settings.PULSEBOARD["MAX_SAMPLES_PER_REQUEST"]
        if len(parsed.items) > limit:
            raise PayloadTooLarge(f"{len(parsed.items)} fields is over the limit of {limit} per request", field="body")
        check_scope(token, parsed.items)
        result = await actions.ingest(parsed.items, token=token, checked=True)
    except PulseboardError as exc:
        return error_response(exc, code=exc.code, message=exc.message)
    if not result.rejected:
        return HttpResponse(status=204)
    for rejection in result.rejected:
        rejection.index = parsed.lines[rejection.index]
    message = f"{len(result.rejected)} field(s) refused, {result.accepted + result.duplicates} stored"
    error = InvalidReading(message + "; see 'rejected' for each line", field="body")
    return JsonResponse(
        {"error": error.as_dict(), "code": "invalid", "message": message, **result.as_dict("line")}, status=400
    )


@require_GET
async def series(request: HttpRequest) -> HttpResponse:
    """GET /api/v1/series: chart history of readable metrics, at most `points` buckets each (docs/history.md)."""
    user = await request.auser()
    if not user.is_authenticated:
        return error_response(NotAuthenticated("sign in at /accounts/login/ first"))
    return await series_response(user, request)


async def series_response(reader, request: HttpRequest) -> HttpResponse:
    """Answer a series request as JSON or streamed CSV for a reader (a user or a share-link principal)."""
    from django.http import StreamingHttpResponse

    from dashboard import history

    output = request.GET.get("format", "json")
    try:
        if output not in ("json", "csv"):
            raise BadRequest("format must be 'json' or 'csv'", field="format")
        result = await sync_to_async(history.load_for_user)(reader, request.GET)
    except PulseboardError as exc:
        return error_response(exc)
    if output == "json":
        return JsonResponse(result.as_dict())

    async def lines():
        for line in history.csv_lines(result):
            yield line

    return StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
