"""InfluxDB line protocol: the parser, POST /api/v2/write, and the real influxdb-client against a live server."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from pathlib import Path

import pytest
from django.test import AsyncClient
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from dashboard import ratelimit
from dashboard.lineprotocol import parse_body
from dashboard.models import AgentToken, Sample, Source
from dashboard.testing import Server, open_live_socket, prepare_database, project_env
from dashboard.timeutil import US, now_us
from dashboard.validation import Reading, Rejection

NOW = 1_700_000_000 * US


def parse(body: str, precision: str = "ns") -> list[tuple[int, Reading | Rejection]]:
    parsed = parse_body(body.encode(), precision, NOW)
    return list(zip(parsed.lines, parsed.items, strict=True))


def test_it_names_sources_by_the_host_tag_and_metrics_by_measurement_tags_and_field() -> None:
    [(line, reading)] = parse("cpu,cpu=cpu0,host=web1 usage_idle=98.2 1700000000000000000")
    assert line == 1
    assert isinstance(reading, Reading)
    assert (reading.source, reading.metric, reading.ts, reading.value) == (
        "web1",
        "cpu.cpu0.usage_idle",
        NOW,
        98.2,
    )
    assert reading.source_kind == "host"
    assert reading.labels == {"cpu": "cpu0", "host": "web1"}


def test_it_uses_the_measurement_as_source_without_a_source_tag() -> None:
    [(_, reading)] = parse("boiler,room=attic temp=61.5")
    assert (reading.source, reading.metric) == ("boiler", "attic.temp")


def test_it_prefers_source_over_host_over_device() -> None:
    [(_, a)] = parse("m,device=d1,host=h1,source=s1 f=1")
    [(_, b)] = parse("m,device=d1,host=h1 f=1")
    [(_, c)] = parse("m,device=d1 f=1")
    assert (a.source, a.metric) == ("s1", "m.d1.h1.f")
    assert (b.source, b.metric) == ("h1", "m.d1.f")
    assert (c.source, c.metric, c.source_kind) == ("d1", "m.f", "device")


def test_it_reads_integer_unsigned_and_float_fields() -> None:
    items = parse("m a=1i,b=18446744073709551615u,c=-1.5e3,d=7,e=.5,f=+2.")
    assert [(r.metric, r.value) for _, r in items] == [
        ("a", 1.0),
        ("b", float(2**64 - 1)),
        ("c", -1500.0),
        ("d", 7.0),
        ("e", 0.5),
        ("f", 2.0),
    ]


@pytest.mark.parametrize(
    ("field", "words"),
    [
        ('s="text"', "is a string"),
        ("s=true", "is a boolean"),
        ("s=F", "is a boolean"),
        ("s=1x", "is not a number"),
        ("s=9223372036854775808i", "out of the signed 64-bit range"),
        ("s=-1u", "not an unsigned integer"),
        ("s=nan", "is not a number"),
        ("s=1e999", "finite"),
        ("s=1_000", "is not a number"),
    ],
)
def test_it_rejects_non_numeric_fields_with_the_reason_and_keeps_the_others(field: str, words: str) -> None:
    items = parse(f"m,host=h ok=1,{field} 1700000000000000000")
    assert isinstance(items[0][1], Reading)
    rejection = items[1][1]
    assert isinstance(rejection, Rejection)
    assert rejection.field == "s"
    assert words in rejection.reason


def test_it_unescapes_measurements_tags_fields_and_strings() -> None:
    body = r'weather\ station,loc=us\,mid\=west,ho\ st=x temp\=c=82,note="say \"hi\" \\o/" 1700000000'
    items = parse(body, "s")
    reading = items[0][1]
    assert isinstance(reading, Reading)
    assert reading.source == "weather-station"
    assert reading.labels == {"loc": "us,mid=west", "ho st": "x"}
    assert reading.metric == "x.us-mid-west.temp-c"
    assert reading.ts == NOW
    assert "string" in items[1][1].reason


@pytest.mark.parametrize(
    ("precision", "raw", "expected_us"),
    [
        ("ns", "1700000000123456789", 1_700_000_000_123_456),
        ("us", "1700000000123456", 1_700_000_000_123_456),
        ("ms", "1700000000123", 1_700_000_000_123_000),
        ("s", "1700000000", 1_700_000_000_000_000),
    ],
)
def test_it_converts_each_precision_to_microseconds(precision: str, raw: str, expected_us: int) -> None:
    [(_, reading)] = parse(f"m v=1 {raw}", precision)
    assert reading.ts == expected_us


def test_it_stamps_lines_without_a_timestamp_with_now() -> None:
    [(_, reading)] = parse("m v=1")
    assert reading.ts == NOW


@pytest.mark.parametrize(
    "line",
    [
        "just-a-measurement",
        "m",
        "m,t v=1",
        "m,=x v=1",
        "m v=",
        "m =1",
        'm v="open',
        "m v=1 12x",
        "m v=1 1 2",
        ",t=1 v=1",
        "m,t=1",
    ],
)
def test_it_rejects_unreadable_lines_whole_with_their_line_number(line: str) -> None:
    items = parse(f"ok v=1\n\n# comment\n{line}\nok w=2")
    assert [n for n, _ in items] == [1, 4, 5]
    assert isinstance(items[1][1], Rejection) and items[1][1].code in (
        "invalid_line",
        "invalid_reading",
    )


def test_it_rejects_lines_that_are_not_utf8() -> None:
    parsed = parse_body(b"m v=1\n\xff\xfe v=2\n", "ns", NOW)
    assert parsed.lines == [1, 2]
    assert "UTF-8" in parsed.items[1].reason


# --- The HTTP view --------------------------------------------------------------------------------


@pytest.fixture
def token_secret(db) -> str:
    ratelimit.reset()
    return AgentToken.issue("telegraf")[1]


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Token {secret}"}


@pytest.mark.django_db(transaction=True)
async def test_the_write_endpoint_answers_204_when_every_line_is_stored(
    token_secret: str,
) -> None:
    ts = now_us() * 1000
    body = f"cpu,host=web1 usage=12.5,count=3i {ts}\ncpu,host=web2 usage=1 {ts}\n"
    response = await AsyncClient().post(
        "/api/v2/write?org=o&bucket=b&precision=ns",
        body,
        content_type="text/plain",
        headers=auth(token_secret),
    )
    assert response.status_code == 204, response.content
    assert await Sample.objects.filter(metric__key__startswith="web").acount() == 3
    assert await Source.objects.filter(slug="web1", kind="host").aexists()


@pytest.mark.django_db(transaction=True)
async def test_the_write_endpoint_stores_good_lines_and_lists_bad_ones_with_a_400(
    token_secret: str,
) -> None:
    ts = now_us() // 1000
    body = f'room,host=h1 temp=21 {ts}\nbroken\nroom,host=h1 label="x",hum=40 {ts}\n'
    response = await AsyncClient().post(
        "/api/v2/write?precision=ms",
        body,
        content_type="text/plain",
        headers=auth(token_secret),
    )
    assert response.status_code == 400
    payload = response.json()
    assert payload["error"]["code"] == "invalid_reading"
    assert payload["code"] == "invalid" and "refused" in payload["message"]
    assert payload["accepted"] == 2
    assert [(r["line"], r.get("field")) for r in payload["rejected"]] == [
        (2, None),
        (3, "label"),
    ]
    assert await Sample.objects.filter(metric__key__in=["h1.room.temp", "h1.room.hum"]).acount() == 2


@pytest.mark.django_db(transaction=True)
async def test_the_write_endpoint_reads_gzip_and_counts_duplicates_as_success(
    token_secret: str,
) -> None:
    body = gzip.compress(f"m,host=gz v=1 {now_us()}\n".encode())
    client = AsyncClient()
    for _ in range(2):
        response = await client.post(
            "/api/v2/write?precision=us",
            body,
            content_type="text/plain",
            headers={**auth(token_secret), "Content-Encoding": "gzip"},
        )
        assert response.status_code == 204
    assert await Sample.objects.filter(metric__key="gz.m.v").acount() == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("query", "headers", "status", "code"),
    [
        ("", {}, 401, "not_authenticated"),
        ("", {"Authorization": "Token pb_nope_nope"}, 401, "not_authenticated"),
        ("?precision=h", None, 400, "bad_request"),
    ],
)
async def test_the_write_endpoint_refuses_bad_requests_in_the_one_error_shape(
    token_secret: str,
    query: str,
    headers: dict[str, str] | None,
    status: int,
    code: str,
) -> None:
    response = await AsyncClient().post(
        "/api/v2/write" + query,
        "m v=1",
        content_type="text/plain",
        headers=auth(token_secret) if headers is None else headers,
    )
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


@pytest.mark.django_db(transaction=True)
async def test_the_write_endpoint_keeps_tokens_to_their_sources(db) -> None:
    _, secret = await asyncio.to_thread(AgentToken.issue, "narrow", "iot.*")
    response = await AsyncClient().post(
        "/api/v2/write",
        "m,host=web1 v=1",
        content_type="text/plain",
        headers=auth(secret),
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "out_of_scope"


# --- The official client against a live server ----------------------------------------------------


@pytest.mark.slow
@pytest.mark.sqlite_only  # the server keeps its own SQLite file: the PostgreSQL pass would only repeat this
async def test_influxdb_client_writes_unchanged_and_points_appear_live(
    tmp_path: Path,
) -> None:
    from influxdb_client import InfluxDBClient, Point, WritePrecision
    from influxdb_client.client.write_api import SYNCHRONOUS

    server = Server(project_env(tmp_path))
    secret, session = await asyncio.to_thread(prepare_database, server.env, "influx client")
    server.start()
    try:

        def write(points: list) -> None:
            with InfluxDBClient(url=server.url, token=secret, org="acme") as client:
                client.write_api(write_options=SYNCHRONOUS).write(bucket="metrics", record=points)

        first_ts = time.time_ns()
        # Create the metrics first so the socket can subscribe to them.
        first = (
            Point("env").tag("host", "lab-1").field("temp", 20.0).field("count", 6).time(first_ts, WritePrecision.NS)
        )
        await asyncio.to_thread(write, [first])
        socket = await open_live_socket(server, session)
        try:
            await socket.send(
                json.dumps(
                    {
                        "type": "subscribe",
                        "id": 1,
                        "metrics": ["lab-1.env.*"],
                        "history_s": 0,
                    }
                )
            )
            subscribed = json.loads(await socket.recv())
            assert subscribed["type"] == "subscribed", subscribed

            second_ts = time.time_ns()
            points = [
                Point("env")
                .tag("host", "lab-1")
                .field("temp", 21.5)
                .field("count", 7)
                .time(second_ts, WritePrecision.NS),
                "env,host=lab-1 temp=22.5 " + str(second_ts + 1_000_000),
            ]
            await asyncio.to_thread(write, points)
            seen: dict[str, list[float]] = {}
            async with asyncio.timeout(10):
                while sum(len(v) for v in seen.values()) < 3:
                    frame = json.loads(await socket.recv())
                    if frame["type"] == "data":
                        for batch in frame["batches"]:
                            seen.setdefault(batch["k"], []).extend(batch["v"])
            assert seen == {"lab-1.env.temp": [21.5, 22.5], "lab-1.env.count": [7.0]}
        finally:
            await socket.close()

        stored = server.samples("lab-1.%")
        assert [(k, v) for k, _, v in stored] == [
            ("lab-1.env.count", 6.0),
            ("lab-1.env.count", 7.0),
            ("lab-1.env.temp", 20.0),
            ("lab-1.env.temp", 21.5),
            ("lab-1.env.temp", 22.5),
        ]
        assert stored[2][1] == first_ts // 1000

        from influxdb_client.rest import ApiException

        with pytest.raises(ApiException) as refused:
            await asyncio.to_thread(write, ['env,host=lab-1 note="text"'])
        assert refused.value.status == 400
        assert json.loads(refused.value.body)["rejected"][0]["line"] == 1
    finally:
        server.stop()


# Bodies without escapes or quotes take the per-series fast path; its answer must be the
# line-by-line parser's, item for item, for well-formed and broken lines alike.
_token = st.sampled_from(["cpu", "m", "Host-1", "web.1", "a_b", "x:y", "é", "-", "0", "ok"])
_value = st.sampled_from(
    [
        "1",
        "-1.5",
        "1e3",
        "1.",
        ".5",
        "42i",
        "-7i",
        "-0i",
        "-0",
        "+3",
        "42u",
        "1e400",
        "inf",
        "nan",
        "1_0",
        "t",
        "",
        "9" * 20 + "i",
    ]
)
_ts = st.sampled_from(["", " 1700000000000000000", " 1699999999", " -5", " 12x", " 1 2", "  1700000000000000000"])
_line = st.one_of(
    st.builds(
        lambda m, tags, fields, ts: m + "".join(f",{k}={v}" for k, v in tags) + " " + fields + ts,
        _token,
        st.lists(st.tuples(_token, _token), max_size=3),
        st.lists(st.tuples(_token, _value), min_size=1, max_size=3).map(lambda fs: ",".join(f"{k}={v}" for k, v in fs)),
        _ts,
    ),
    st.text(alphabet="m ,=1v\t#\r", max_size=12),
)


@pytest.mark.slow  # thousands of generated examples: seconds; make test-fast leaves it out
@given(lines=st.lists(_line, max_size=8), precision=st.sampled_from(["ns", "us", "ms", "s"]))
@hsettings(max_examples=3000, deadline=None)
def test_the_plain_fast_path_answers_exactly_as_the_line_by_line_parser(lines: list[str], precision: str) -> None:
    body = "\n".join(lines).encode()
    fast = parse_body(body, precision, NOW)
    slow = parse_body(body, precision, NOW, plain=False)
    assert fast.lines == slow.lines
    assert [repr(item) for item in fast.items] == [repr(item) for item in slow.items]


def test_long_series_are_parsed_but_not_remembered() -> None:
    from dashboard import lineprotocol

    now = now_us()
    tags = "".join(f",{c * 190}=a" for c in "pqrstu")  # long tag keys (labels), short values (the metric)
    body = "\n".join(f"longseries,host=h{i}{tags} f=1 {now * 1000}" for i in range(50))
    assert len(body.split("\n")[0].split(" ")[0]) > lineprotocol.MAX_CACHED_SERIES_CHARS
    parsed = lineprotocol.parse_body(body.encode(), "ns", now)
    assert len(parsed.items) == 50 and all(isinstance(r, Reading) for r in parsed.items), parsed.items[:1]
    assert not any(key.startswith("longseries,") for key in lineprotocol._SERIES)


def test_a_field_of_thousands_of_digits_is_refused_in_linear_time() -> None:
    # "\d+\.?\d*" backtracked quadratically: 4,300 digits and an "i" took 2.5 s, 60,000 would take minutes.
    now = now_us()
    for value in ("9" * 60_000 + "i", "9" * 60_000 + "x", "9" * 60_000 + ".5e", "1" + "0" * 60_000):
        started = time.perf_counter()
        (item,) = parse_body(f"m,host=h v={value} {now * 1000}".encode(), "ns", now).items
        print(f"{len(value)} characters refused in {time.perf_counter() - started:.4f} s")
        assert isinstance(item, Rejection)
