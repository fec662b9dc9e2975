"""JSON endpoints: the ingest API for agents and read APIs for pages.

Every error has one shape, built by error_response:
{"error": {"code": "...", "message": "...", "field": "..."}}.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import json
import zlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

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
from dashboard.storage import Prepared
from dashboard.timeutil import now_us
from dashboard.validation import PRECISION_US, Reading, Rejection, readings_from_dicts, readings_from_json

T = TypeVar("T")

# Bodies above this are unzipped, decoded and validated on a worker thread,
# so that a big batch (5,000 samples, ~350 KB: 2-3 ms of parsing) does not
# hold up the event loop, and with it every live socket of the process,
# while small ones (an agent's usual post) skip the thread hop (~0.1 ms).
PARSE_ON_LOOP_MAX_BYTES = 16 * 1024
# One thread parses the big bodies, one after another. Parsing is Python under the GIL, so a second
# thread parses no faster; with one per request in flight (asyncio.to_thread), four parsers took the
# GIL from the writer thread every time it came back from the database, and under line-protocol load
# the writer, which bounds throughput, spent a fifth of its time waiting for it (bench/ingest.py --stages).
_parser = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="pulseboard-parse")


async def off_loop(parse: Callable[[], T]) -> T:
    """Run a parse on the parsing thread, with the caller's context variables (as asyncio.to_thread would)."""
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(_parser, context.run, parse)


async def parse_off_loop(
    parse: Callable[[], T], items_of: Callable[[T], Sequence[Reading | Rejection]]
) -> tuple[T, Prepared | None]:
    """Parse a big body on the parsing thread, and there also work out its keys for the writer (actions.prepare).

    The writer's commit is ingest's serial chain; the parsing thread is idle
    most of the time, so the per-reading work that needs no database is
    done here, overlapping the commit of the batch before.
    """

    def work() -> tuple[T, Prepared | None]:
        parsed = parse()
        return parsed, actions.prepare(items_of(parsed))

    return await off_loop(work)


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
    (dashboard/fastpaths/agenthandler.py), so close_old_connections never runs for
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


def raw_body(request: HttpRequest) -> bytes:
    """Return the body as sent, at most one byte over PULSEBOARD_MAX_BODY_BYTES (the rest is never kept).

    Read with request.read, not request.body: Django's body refuses anything
    over DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MiB) with an HTML 400 before the
    documented 5 MiB limit could answer. Read once and remembered.
    """
    body = getattr(request, "_pulseboard_raw_body", None)
    if body is None:
        limit = settings.PULSEBOARD["MAX_BODY_BYTES"]
        if hasattr(request, "_body"):  # something read request.body already
            body = request.body[: limit + 1]
        else:
            body = request.read(limit + 1)
        request._pulseboard_raw_body = body
    return body


def too_large(limit: int, how: str) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the body is over the limit of {limit} bytes{how} (PULSEBOARD_MAX_BODY_BYTES); send smaller batches",
        field="body",
    )


def gunzip(body: bytes, limit: int) -> bytes:
    """Return a gzip body unzipped, member after member, never inflating more than limit + 1 bytes.

    A gzip bomb (a few KB that inflate to gigabytes) costs at most the limit
    in memory: each step asks zlib for no more than what is left of it.
    Several concatenated members (`cat a.gz b.gz`) are one valid gzip body;
    a truncated one is refused rather than read as far as it goes.
    """
    out = bytearray()
    rest = body
    while True:
        decompressor = zlib.decompressobj(wbits=31)
        try:
            out += decompressor.decompress(rest, limit + 1 - len(out))
        except zlib.error:
            raise BadRequest("Content-Encoding is gzip but the body is not valid gzip", field="body") from None
        if len(out) > limit or decompressor.unconsumed_tail:
            raise too_large(limit, " once unzipped")
        if not decompressor.eof:
            raise BadRequest("Content-Encoding is gzip but the body is cut short", field="body")
        rest = decompressor.unused_data
        if not rest.strip(b"\0"):  # gzip(1) ignores trailing zero padding too
            return bytes(out)


def read_body(request: HttpRequest) -> bytes:
    """Return the request body, gunzipped if needed, within PULSEBOARD_MAX_BODY_BYTES before and after unzipping."""
    return decode_body(raw_body(request), request.headers.get("Content-Encoding", ""))


def decode_body(body: bytes, content_encoding: str) -> bytes:
    """Return a body as sent with a Content-Encoding, decoded, within PULSEBOARD_MAX_BODY_BYTES both ways."""
    limit = settings.PULSEBOARD["MAX_BODY_BYTES"]
    if len(body) > limit:
        raise too_large(limit, "")
    encoding = content_encoding.strip().lower()
    if encoding in ("gzip", "x-gzip"):
        return gunzip(body, limit)
    if encoding not in ("", "identity"):
        raise BadRequest(
            f"Content-Encoding {encoding[:40]!r} is not supported; send gzip or no encoding", field="Content-Encoding"
        )
    return body


def parse_json_batch(body: bytes) -> list[Reading | Rejection]:
    """Turn a JSON ingest body into readings and per-sample rejections (docs/ingest.md).

    The body must be UTF-8 (RFC 8259). Whatever else it holds, the answer
    is readings, rejections or a PulseboardError: invalid UTF-8, nesting
    deeper than Python's recursion limit and numbers of more than 4,300
    digits are a 400 bad_request, never an exception of the decoder.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the body is not valid UTF-8 (byte {exc.start})", field="body") from None
    items = readings_from_json(body, now_us(), settings.PULSEBOARD["MAX_SAMPLES_PER_REQUEST"])
    if items is not None:  # the common shape, decoded and checked in one pass
        return items
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}", field="body") from None
    except RecursionError:
        raise BadRequest("the body is nested too deeply to be an ingest batch", field="body") from None
    if isinstance(payload, list):
        payload = {"samples": payload}
    if not isinstance(payload, dict):
        raise BadRequest("the body must be a JSON object with a 'samples' list", field="body")
    samples = payload.get("samples")
    if not isinstance(samples, list):
        raise BadRequest("'samples' must be a list", field="samples")
    limit = settings.PULSEBOARD["MAX_SAMPLES_PER_REQUEST"]
    if len(samples) > limit:
        raise PayloadTooLarge(
            f"{len(samples)} samples is over the limit of {limit} per request (PULSEBOARD_MAX_SAMPLES_PER_REQUEST)",
            field="samples",
        )
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
        prepared = None
        if len(raw_body(request)) > PARSE_ON_LOOP_MAX_BYTES or request.headers.get("Content-Encoding"):
            items, prepared = await parse_off_loop(lambda: parse_json_batch(read_body(request)), lambda items: items)
        else:
            items = parse_json_batch(read_body(request))
        check_scope(token, items)
        result = await actions.ingest(items, token=token, checked=True, prepared=prepared)
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

        def parse() -> lineprotocol.ParsedBody:
            limit = settings.PULSEBOARD["MAX_SAMPLES_PER_REQUEST"]
            return lineprotocol.parse_body(read_body(request), precision, now_us(), max_items=limit)

        # Big bodies are parsed on a worker thread, as JSON ones are: 5 MiB of lines holds the loop ~1 s.
        prepared = None
        if len(raw_body(request)) > PARSE_ON_LOOP_MAX_BYTES or request.headers.get("Content-Encoding"):
            parsed, prepared = await parse_off_loop(parse, lambda parsed: parsed.items)
        else:
            parsed = parse()
        check_scope(token, parsed.items)
        result = await actions.ingest(parsed.items, token=token, checked=True, prepared=prepared)
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
