"""Generated bodies, valid and malformed, against both ingest endpoints: nothing escapes, nothing 5xx, good data lands.

Most examples call the parsers directly (cheap); a few hundred go through the
HTTP views with Django's AsyncClient and the real ingest action and database.
Counts are in EXAMPLES (about 10,000 parser bodies plus 400 over HTTP; a run
prints the exact figures with -s); PULSEBOARD_FUZZ_SCALE scales them for a
quick local run.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import math
import os
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import AsyncClient
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from dashboard.api import parse_json_batch
from dashboard.exceptions import BadRequest, PulseboardError
from dashboard.lineprotocol import MAX_LINE_CHARS, PRECISION_TO_US, name_reading, parse_body, parse_line
from dashboard.models import AgentToken, Sample
from dashboard.timeutil import US, now_us
from dashboard.validation import MAX_ABS_VALUE, Reading, Rejection
from dashboard.writer import Writer
from tests import hostile

# Examples per test; each parser example checks a list of 1-10 bodies (5.5 on average), which
# costs Hypothesis far less than one example per body: about 11,000-14,000 parser bodies in all (Hypothesis
# stops early on some strategies, so the budget sits well above the 9,500 floor checked below), plus 400 over HTTP.
EXAMPLES = {
    "lp_round_trip": 1000,
    "lp_junk": 600,
    "json_structured": 500,
    "json_junk": 500,
    "http": 400,  # one body each, about half to each endpoint
}
# The parsers touch no database, so the PostgreSQL pass of the suite would only repeat them.
PARSER_ONLY = pytest.mark.sqlite_only
checked: dict[str, int] = {}  # bodies checked per test, printed with -s


def count(test: str, bodies: int) -> None:
    checked[test] = checked.get(test, 0) + bodies


NOW = now_us()


SCALE = float(os.environ.get("PULSEBOARD_FUZZ_SCALE", "1"))  # e.g. 0.1 for a quick local run


def fuzz(examples: int, shrink: bool = True) -> hsettings:
    # Shrinking a list of hundreds of HTTP bodies would repost them thousands of times; report as found.
    phases = list(Phase) if shrink else [Phase.explicit, Phase.reuse, Phase.generate]
    return hsettings(
        phases=phases,
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.function_scoped_fixture,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


# --- Line protocol ------------------------------------------------------------------------------

# Small alphabets keep generation cheap while covering every character the escaping rules care about.
name_chars = st.sampled_from(list('abcXYZ019_.:-, ="#éß😀/\t'))
names = st.text(name_chars, min_size=1, max_size=8).filter(
    lambda s: not s.startswith(("#", " ", "\t")) and not s.endswith("\\") and "\\" not in s
)
floats = st.floats(allow_nan=False, allow_infinity=False, width=64)
storable = st.floats(-MAX_ABS_VALUE, MAX_ABS_VALUE)
field_values = st.one_of(
    floats.map(lambda v: (repr(v), v if abs(v) <= MAX_ABS_VALUE else None)),
    st.integers(-(2**63), 2**63 - 1).map(lambda v: (f"{v}i", float(v))),
    st.integers(0, 2**64 - 1).map(lambda v: (f"{v}u", float(v))),
    st.sampled_from(["t", "F", "true", "FALSE"]).map(lambda v: (v, None)),
    st.text(name_chars, max_size=10).map(lambda v: ('"' + v.replace('"', '\\"') + '"', None)),
)


def escape(text: str, specials: str) -> str:
    return "".join("\\" + c if c in specials else c for c in text)


@st.composite
def lp_lines(draw: st.DrawFn) -> tuple[str, str, dict[str, str], list[tuple[str, float | None]], int | None]:
    measurement = draw(names)
    tags = draw(st.dictionaries(names, names, max_size=3))
    fields = draw(st.dictionaries(names, field_values, min_size=1, max_size=4))
    ts = draw(st.none() | st.integers(0, 2**62))
    line = escape(measurement, ", ")
    line += "".join(f",{escape(k, ',= ')}={escape(v, ',= ')}" for k, v in tags.items())
    line += " " + ",".join(f"{escape(k, ',= ')}={raw}" for k, (raw, _) in fields.items())
    if ts is not None:
        line += f" {ts}"
    return line, measurement, tags, [(k, value) for k, (_, value) in fields.items()], ts


@pytest.mark.slow  # thousands of generated examples: seconds; make test-fast leaves it out
@PARSER_ONLY
@fuzz(EXAMPLES["lp_round_trip"])
@given(st.lists(lp_lines(), min_size=1, max_size=10), st.sampled_from(list(PRECISION_TO_US)))
def test_generated_lines_parse_back_to_what_was_written(lines: list[tuple], precision: str) -> None:
    count("lp_round_trip", len(lines))
    for line_parts in lines:
        check_round_trip(line_parts, precision)


def check_round_trip(line_parts: tuple, precision: str) -> None:
    line, measurement, tags, fields, ts = line_parts
    items = parse_line(line, precision, NOW)
    assert len(items) == len(fields)
    multiply, divide = PRECISION_TO_US[precision]
    for item, (key, value) in zip(items, fields, strict=True):
        if value is None:
            assert isinstance(item, Rejection) and item.field == key
            continue
        assert isinstance(item, Reading), item
        assert item.value == value
        assert item.labels == tags
        assert (item.source, item.metric) == name_reading(measurement, tags, key)
        assert item.ts == (NOW if ts is None else ts * multiply // divide)


lp_alphabet = st.sampled_from(list(' ,=\\"#\n\r\tabcxyz0123456789iu.-+eETFtf_é') + ["\x00", "😀"])
lp_junk = st.one_of(
    st.binary(max_size=300),
    st.text(lp_alphabet, max_size=200).map(str.encode),
    st.lists(lp_lines().map(lambda p: p[0]) | st.text(lp_alphabet, max_size=40), max_size=8).map(
        lambda lines: "\n".join(lines).encode()
    ),
)


@pytest.mark.slow  # thousands of generated examples: seconds; make test-fast leaves it out
@PARSER_ONLY
@fuzz(EXAMPLES["lp_junk"])
@given(st.lists(st.tuples(lp_junk, st.sampled_from([*PRECISION_TO_US, "h", "", "n"])), min_size=1, max_size=10))
def test_any_body_parses_to_readings_and_rejections_without_raising(bodies: list[tuple[bytes, str]]) -> None:
    count("lp_junk", len(bodies))
    for body, precision in bodies:
        check_lp_body(body, precision)


def check_lp_body(body: bytes, precision: str) -> None:
    try:
        parsed = parse_body(body, precision, NOW)
    except BadRequest:
        assert precision not in PRECISION_TO_US
        return
    assert len(parsed.items) == len(parsed.lines)
    line_count = body.count(b"\n") + 1
    for item, line_no in zip(parsed.items, parsed.lines, strict=True):
        assert 1 <= line_no <= line_count
        assert isinstance(item, (Reading, Rejection))
        if isinstance(item, Reading):
            assert math.isfinite(item.value)


# --- JSON -----------------------------------------------------------------------------------------

ODD_VALUES = [None, True, False, 0, -1, 2**63, 10**400, 1.5, -0.0, 1e308, float("nan"), float("inf"), "", "x", "21.5",
              "2024-01-01T00:00:00Z", [], [1], {}, {"a": 1}, [None, {}], "é😀", "\x00"]  # fmt: skip
json_values = st.sampled_from(ODD_VALUES) | st.integers() | st.floats() | st.text(max_size=8)
keys = st.sampled_from(["iot.a", "host.web-01", "x", "_y", "a" * 201, ".hidden", "bad key", "a:b-c.d", "é", "", "-x"])
sample_values = st.one_of(floats, st.integers(-(10**20), 10**20), json_values)
timestamps = st.one_of(
    st.integers(-(10**3), 10**3).map(lambda s: (NOW // 1000) + s * 1000),
    st.integers(-(2**70), 2**70),
    json_values,
)


@st.composite
def json_samples(draw: st.DrawFn) -> dict[str, Any]:
    sample: dict[str, Any] = {}
    for name, strategy in (
        ("metric", keys | json_values),
        ("value", sample_values),
        ("ts", timestamps),
        ("source", keys | json_values),
        ("unit", st.text(max_size=40) | json_values),
        ("kind", st.sampled_from(["gauge", "counter", "nope", ""]) | json_values),
        ("labels", st.sampled_from([{"a": "b"}, {"a": 1}, {1: "x"}]) | json_values),
    ):
        if draw(st.integers(0, 9)) > 0:  # each field is missing now and then
            sample[name] = draw(strategy)
    return sample


json_batches = st.fixed_dictionaries(
    {"samples": st.lists(json_samples() | json_values, max_size=5) | json_values},
    optional={
        "source": keys | json_values,
        "precision": st.sampled_from(["s", "ms", "us", "ns", "h"]) | json_values,
        "unit": st.text(max_size=5),
    },
)


def check_json_body(body: bytes) -> None:
    try:
        items = parse_json_batch(body)
    except PulseboardError:
        return
    for item in items:
        assert isinstance(item, (Reading, Rejection))


@pytest.mark.slow  # thousands of generated examples: seconds; make test-fast leaves it out
@PARSER_ONLY
@fuzz(EXAMPLES["json_structured"])
@given(st.lists(json_batches | st.lists(json_samples(), max_size=4), min_size=1, max_size=10))
def test_generated_json_batches_parse_or_are_refused_with_an_error_class(payloads: list[Any]) -> None:
    count("json_structured", len(payloads))
    for payload in payloads:
        check_json_body(json.dumps(payload).encode())


@PARSER_ONLY
@fuzz(EXAMPLES["json_junk"])
@given(st.lists(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()), min_size=1, max_size=10))
def test_any_json_body_parses_or_is_refused_with_an_error_class(bodies: list[bytes]) -> None:
    count("json_junk", len(bodies))
    for body in bodies:
        check_json_body(body)


@PARSER_ONLY
def test_the_parser_tests_checked_about_ten_thousand_bodies() -> None:
    """Runs after the parser tests (file order): report, and catch a silent shrink of the example counts."""
    print(f"\nbodies checked by the parser tests: {checked} = {sum(checked.values())}")
    if SCALE >= 1 and len(checked) == 4:
        assert sum(checked.values()) >= 9500


# --- Through HTTP, into the database ---------------------------------------------------------------


@st.composite
def valid_json_bodies(draw: st.DrawFn) -> tuple[dict, set[tuple[str, int]]]:
    source = "fuzz." + draw(st.text("abc123", min_size=1, max_size=6))
    samples = draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "metric": st.text("abc_12", min_size=1, max_size=6).map("m".__add__),
                    "ts": st.integers(-60_000, 60_000),
                    "value": storable,
                }
            ),
            min_size=1,
            max_size=5,
        )
    )
    for sample in samples:
        sample["ts"] += NOW // 1000
    return {"source": source, "samples": samples}, {(f"{source}.{s['metric']}", s["ts"] * 1000) for s in samples}


@st.composite
def valid_lp_bodies(draw: st.DrawFn) -> tuple[str, set[tuple[str, int]]]:
    lines, expected = [], set()
    for _ in range(draw(st.integers(1, 4))):
        host = draw(st.text("abc123", min_size=1, max_size=6))
        field = "f" + draw(st.text("abc_12", max_size=6))
        ts = NOW + draw(st.integers(-60 * US, 60 * US))
        value = draw(storable)
        lines.append(f"fz,host=fz-{host} {field}={value!r} {ts}")
        expected.add((f"fz-{host}.fz.{field}", ts))
    return "\n".join(lines), expected


http_bodies = st.one_of(
    valid_json_bodies().map(lambda b: ("json", json.dumps(b[0]).encode(), b[1])),
    valid_lp_bodies().map(lambda b: ("lp", b[0].encode(), b[1])),
    json_batches.map(lambda p: ("json", json.dumps(p).encode(), None)),
    st.binary(max_size=100).map(lambda b: ("json", b, None)),
    lp_junk.map(lambda b: ("lp", b, None)),
)


async def post_one(secret: str, endpoint: str, body: bytes, expected: set[tuple[str, int]] | None) -> int:
    url = "/api/v1/ingest" if endpoint == "json" else "/api/v2/write?precision=us"
    response = await AsyncClient().post(
        url, body, content_type="application/octet-stream", headers={"Authorization": f"Token {secret}"}
    )
    assert response.status_code < 500, (endpoint, body[:200], response.content[:500])
    if expected is not None:
        assert response.status_code in (200, 204), (endpoint, body[:200], response.content[:500])
        for key, ts in expected:
            assert await Sample.objects.filter(metric__key=key, ts=ts).aexists(), (key, ts)
    return response.status_code


@pytest.fixture
def http_state(settings) -> Iterator[dict[str, Any]]:
    """One event loop (so one writer) and one token for every example of the HTTP test."""
    settings.PULSEBOARD = {**settings.PULSEBOARD, "RATE_LIMIT_PER_S": 0.0}
    loop = asyncio.new_event_loop()
    state: dict[str, Any] = {"loop": loop, "secret": AgentToken.issue("fuzzer")[1], "statuses": {}}
    yield state
    print(f"\nHTTP statuses: {dict(sorted(state['statuses'].items()))}")
    Writer.close_all()
    loop.run_until_complete(asyncio.sleep(0))  # let the cancelled writer task finish
    loop.close()


@pytest.mark.slow  # thousands of generated examples: seconds; make test-fast leaves it out
@pytest.mark.django_db(transaction=True)
@fuzz(EXAMPLES["http"], shrink=False)
@given(body=http_bodies)
def test_the_http_views_never_fail_and_store_every_valid_sample(body: tuple, http_state: dict[str, Any]) -> None:
    endpoint, raw, expected = body
    status = http_state["loop"].run_until_complete(post_one(http_state["secret"], endpoint, raw, expected))
    http_state["statuses"][status] = http_state["statuses"].get(status, 0) + 1


# --- Hostile shapes (tests/hostile.py): deep nesting, invalid UTF-8, surrogates, huge numbers, just over limits ----

# Inputs per endpoint: `make fuzz` sets FUZZ_INPUTS=100000; CI runs a modest slice. Each example is a list of
# 1-10 bodies (5.5 on average), which costs Hypothesis far less than one example per body.
FUZZ_INPUTS = int(os.environ.get("FUZZ_INPUTS", "1500"))
# Over real HTTP (the ASGI application a server runs, the writer, the database): a sample of the same shapes.
FUZZ_HTTP_INPUTS = int(os.environ.get("FUZZ_HTTP_INPUTS", "120"))
# Small limits, so that "just over the limit" is cheap to generate; the code paths are the same.
SMALL_LIMITS = {"MAX_BODY_BYTES": 64 * 1024, "MAX_SAMPLES_PER_REQUEST": 40, "RATE_LIMIT_PER_S": 0.0}
hostile_counts: dict[str, int] = {}


class ErrorLines(logging.Handler):
    """Collect every ERROR (or worse) log record, from any logger, while installed."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()[:300]}")


@pytest.fixture
def error_lines(settings) -> Iterator[ErrorLines]:
    settings.PULSEBOARD = {**settings.PULSEBOARD, **SMALL_LIMITS}
    handler = ErrorLines()
    logging.getLogger().addHandler(handler)
    try:
        yield handler
    finally:
        logging.getLogger().removeHandler(handler)
    assert not handler.lines, handler.lines[:5]


def check_storable(reading: Reading, now: int) -> None:
    """A reading the parser let through passes every rule again (the views store them with checked=True)."""
    from dashboard.validation import check_reading

    check_reading(Reading(**{f: getattr(reading, f) for f in Reading.__struct_fields__}), now)
    for text in (reading.source, reading.metric, reading.unit, *reading.labels, *reading.labels.values()):
        text.encode("utf-8")


def with_encoding(body: bytes, data: st.DataObject) -> tuple[bytes, str]:
    """Maybe gzip the body, pad it to just over or at the body limit, or replace it with a gzip bomb."""
    limit = SMALL_LIMITS["MAX_BODY_BYTES"]
    how = data.draw(st.sampled_from(["plain"] * 6 + ["gzip", "pad to limit", "pad over limit", "bomb", "bad gzip"]))
    if how == "gzip":
        return gzip.compress(body), "gzip"
    if how in ("pad to limit", "pad over limit"):
        size = limit + (how == "pad over limit")
        return body + b" " * max(0, size - len(body)), data.draw(st.sampled_from(["", "identity"]))
    if how == "bomb":
        return gzip.compress(b" " * (limit + data.draw(st.integers(-1, 2)))), "gzip"
    if how == "bad gzip":
        return body[:20], "gzip"
    return body, ""


def variants(body: bytes) -> list[tuple[bytes, str]]:
    """Five inputs from one generated body: as is, gzipped, cut in half, with a byte UTF-8 forbids, just over the limit.

    Deriving them costs nothing next to Hypothesis drawing a new body (about 5 ms), which is what makes
    100,000 inputs a few minutes' run.
    """
    limit = SMALL_LIMITS["MAX_BODY_BYTES"]
    third = len(body) // 3
    return [
        (body, ""),
        (gzip.compress(body, compresslevel=1), "gzip"),
        (body[: len(body) // 2], ""),
        (body[:third] + b"\xff" + body[third:], ""),
        (body + b" " * max(1, limit + 1 - len(body)), ""),
    ]


def parse_hostile(endpoint: str, body: bytes, encoding: str) -> str:
    """Run a body through what the view runs before storing; return 'refused' or 'parsed'."""
    from dashboard.api import decode_body

    now = now_us()
    try:
        decoded = decode_body(body, encoding)
        if endpoint == "json":
            items = parse_json_batch(decoded)
        else:
            items = parse_body(decoded, "ns", now, max_items=SMALL_LIMITS["MAX_SAMPLES_PER_REQUEST"]).items
    except PulseboardError as exc:
        assert 400 <= exc.status < 500, exc
        assert exc.message and exc.code
        return "refused"
    for item in items:
        if isinstance(item, Reading):
            check_storable(item, now)
        else:
            assert isinstance(item, Rejection) and item.reason and item.code
    return "parsed"


hostile_json_bodies = hostile.hostile_ingest_json(SMALL_LIMITS["MAX_SAMPLES_PER_REQUEST"])
hostile_lp_bodies = hostile.hostile_line_protocol(SMALL_LIMITS["MAX_SAMPLES_PER_REQUEST"], MAX_LINE_CHARS)


# Examples: each gives at least 3 bodies (lists of 3-8) of 5 variants each, so FUZZ_INPUTS / 15 examples give
# at least FUZZ_INPUTS inputs; the count check below prints the figure.
HOSTILE_EXAMPLES = max(1, FUZZ_INPUTS // 15)


def run_hostile(endpoint: str, bodies: list[bytes]) -> None:
    for body in bodies:
        for variant in variants(body):
            parse_hostile(endpoint, *variant)
            hostile_counts[endpoint] = hostile_counts.get(endpoint, 0) + 1


@PARSER_ONLY
@fuzz(HOSTILE_EXAMPLES)
@given(bodies=st.lists(hostile_json_bodies, min_size=3, max_size=8))
def test_hostile_json_bodies_are_parsed_or_refused_with_a_4xx(bodies: list[bytes], error_lines) -> None:
    run_hostile("json", bodies)


@PARSER_ONLY
@fuzz(HOSTILE_EXAMPLES)
@given(bodies=st.lists(hostile_lp_bodies, min_size=3, max_size=8))
def test_hostile_line_protocol_is_parsed_or_refused_with_a_4xx(bodies: list[bytes], error_lines) -> None:
    run_hostile("lp", bodies)


@PARSER_ONLY
def test_a_gzip_bomb_and_every_limit_just_over_are_refused_with_413(error_lines) -> None:
    limit = SMALL_LIMITS["MAX_BODY_BYTES"]
    for endpoint in ("json", "lp"):
        assert parse_hostile(endpoint, gzip.compress(b" " * (limit + 1)), "gzip") == "refused"
        assert parse_hostile(endpoint, gzip.compress(b" " * (200 * limit)), "gzip") == "refused"
        assert parse_hostile(endpoint, b" " * (limit + 1), "") == "refused"
    too_many = SMALL_LIMITS["MAX_SAMPLES_PER_REQUEST"] + 1
    with pytest.raises(PulseboardError) as refused:
        parse_json_batch(json.dumps([{"source": "a", "metric": "b", "ts": 1, "value": 1}] * too_many).encode())
    assert refused.value.status == 413
    with pytest.raises(PulseboardError) as refused:
        parse_body(b"m v=1\n" * too_many, "ns", NOW, max_items=too_many - 1)
    assert refused.value.status == 413


async def post_hostile(secret: str, endpoint: str, body: bytes, encoding: str) -> int:
    """POST through monitor.asgi's application (the agent handler), as a real server receives it."""
    import httpx

    from monitor.asgi import application

    url = "/api/v1/ingest" if endpoint == "json" else "/api/v2/write?precision=ns"
    headers = {"Authorization": f"Token {secret}"}
    if encoding:
        headers["Content-Encoding"] = encoding
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://localhost") as c:
        response = await c.post(url, content=body, headers=headers)
    assert response.status_code < 500, (endpoint, body[:200], response.text[:500])
    if response.status_code != 204:
        answer = response.json()  # JSON, whatever the status
        if response.status_code >= 400:
            assert set(answer["error"]) <= {"code", "message", "field"}, answer
    return response.status_code


@pytest.mark.django_db(transaction=True)
@fuzz(FUZZ_HTTP_INPUTS, shrink=False)
@given(
    body=st.tuples(st.just("json"), hostile_json_bodies) | st.tuples(st.just("lp"), hostile_lp_bodies),
    data=st.data(),
)
def test_hostile_bodies_over_http_get_a_json_4xx_or_are_stored_never_a_5xx_or_an_error_line(
    body: tuple[str, bytes], data, http_state: dict[str, Any], error_lines
) -> None:
    endpoint, raw = body
    raw, encoding = with_encoding(raw, data)
    status = http_state["loop"].run_until_complete(post_hostile(http_state["secret"], endpoint, raw, encoding))
    http_state["statuses"][status] = http_state["statuses"].get(status, 0) + 1
    hostile_counts[f"http {endpoint}"] = hostile_counts.get(f"http {endpoint}", 0) + 1


def test_the_hostile_runs_checked_what_they_were_asked_to() -> None:
    """Runs last (file order): print the figures docs/security.md quotes, and catch a silent shrink."""
    print(f"\nhostile inputs checked: {hostile_counts}")
    if "json" in hostile_counts and "lp" in hostile_counts:
        assert hostile_counts["json"] >= FUZZ_INPUTS and hostile_counts["lp"] >= FUZZ_INPUTS
