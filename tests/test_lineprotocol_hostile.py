"""The line-protocol fast path against hostile bodies: same answer as the line-by-line parser, a bounded shared cache."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from dashboard import lineprotocol
from dashboard.lineprotocol import parse_body
from dashboard.timeutil import US

NOW = 1_700_000_000 * US

# Characters a hostile or careless client puts where names go: unicode letters and spaces, control
# characters str.split() takes for whitespace (\x1c-\x1f, \x85, \u2028), tabs, \r, BOM, NUL.
_odd = st.sampled_from(
    [
        "é",
        "Ⅻ",
        "ß",
        "İ",
        "\t",
        "\r",
        "\x0b",
        "\x0c",
        "\x1c",
        "\x85",
        "\u00a0",
        "\u2028",
        "\ufeff",
        "\x00",
        "=",
        ",",
        "#",
    ]
)
_word = st.lists(
    st.one_of(st.sampled_from(["cpu", "host", "m", "a", "0", "_", "-", ":"]), _odd), min_size=1, max_size=4
).map("".join)
_number = st.one_of(
    st.sampled_from(
        [
            "1",
            "-1.5",
            "1e3",
            "1e308",
            "1e-400",
            "0.0000001",
            "123456789012345i",
            "1234567890123456i",
            "18446744073709551615u",
            "9223372036854775807i",
            "-9223372036854775808i",
            "1" * 400,
        ]
    ),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(min_value=-(2**64), max_value=2**64).map(lambda i: f"{i}i"),
)
# Timestamps at the int64 edges (and past them) and around the accepted window, for each precision.
_ts = st.one_of(
    st.just(""),
    st.sampled_from(
        [
            " 9223372036854775807",
            " 9223372036854775808",
            " 99999999999999999999",
            " 0",
            " 00000000000000000001700000000",
            " -9223372036854775808",
            " 1700000000",
            " 1700000000000",
            " 1700000000000000",
            " 1700000000000000000",
            " ١٧٠٠٠٠٠٠٠٠",
        ]
    ),
    st.integers(min_value=-(2**64), max_value=2**64).map(lambda i: f" {i}"),
)
_fields = st.lists(st.tuples(_word, _number), min_size=1, max_size=6).map(
    lambda fs: ",".join(f"{k}={v}" for k, v in fs)
)
_line = st.one_of(
    st.builds(
        lambda m, tags, fields, dup, ts, end: (
            m
            + "".join(f",{k}={v}" for k, v in tags)
            + " "
            + fields
            + ("," + fields if dup else "")  # every field key twice
            + ts
            + end
        ),
        _word,
        st.lists(st.tuples(_word, _word), max_size=4),
        _fields,
        st.booleans(),
        _ts,
        st.sampled_from(["", "\r", " ", "\t", "\r\r"]),
    ),
    st.builds(lambda n: "m " + ",".join(f"f{i}={i}" for i in range(n)), st.integers(0, 300)),  # many fields
    st.builds(lambda n: "m,t=" + "v" * n + " f=1", st.integers(0, 70_000)),  # very long series
)


@pytest.mark.slow  # thousands of generated examples: seconds; make test-fast leaves it out
@given(lines=st.lists(_line, max_size=8), precision=st.sampled_from(["ns", "us", "ms", "s"]))
@hsettings(max_examples=1500, deadline=None)
def test_the_fast_path_answers_hostile_bodies_exactly_as_the_line_by_line_parser(
    lines: list[str], precision: str
) -> None:
    body = "\n".join(lines).encode()
    for _ in range(2):  # the second pass meets the series the first one cached
        fast = parse_body(body, precision, NOW)
        slow = parse_body(body, precision, NOW, plain=False)
        assert fast.lines == slow.lines
        assert [repr(item) for item in fast.items] == [repr(item) for item in slow.items]


def test_one_clients_series_never_changes_anothers_answer() -> None:
    """A series cached (and its field names learnt) by one request answers every later request as if fresh."""
    first = b"cpu,host=web1 usage=1 1700000000000000000\ncpu,host=web1 usage=x 1700000000000000000"
    later = b"cpu,host=web1 usage=2i,idle=3 1700000000000000000\ncpu,host=web1 usage=1e999"
    parse_body(first, "ns", NOW)
    fast = parse_body(later, "ns", NOW)
    lineprotocol._SERIES.clear()
    fresh = parse_body(later, "ns", NOW)
    assert [repr(i) for i in fast.items] == [repr(i) for i in fresh.items]
    cached = parse_body(later, "ns", NOW)  # every field name now learnt: the per-series path
    cached.items[0].labels["host"] = "evil"  # a consumer that changes a reading's labels...
    again = parse_body(later, "ns", NOW)
    assert again.items[0].labels == {"host": "web1"}  # ...does not change the next request's
    assert again.items[0].source == "web1"


@pytest.mark.slow  # 12 s of series: make test-fast leaves it out
def test_the_series_cache_is_bounded_in_characters_and_field_names() -> None:
    lineprotocol._SERIES.clear()
    long_tag = "v" * 60_000
    for i in range(40):  # 40 bodies of 60 series of 60,000 characters: 144 MB if every series were kept
        body = "\n".join(f"m,t={long_tag}{i:03d}{j:03d} f=1" for j in range(60)).encode()
        parse_body(body, "ns", NOW)
    kept = sum(len(text) for text in lineprotocol._SERIES)
    print(f"series cache after 2,400 long series: {len(lineprotocol._SERIES)} entries, {kept:,} characters")
    assert all(len(text) <= lineprotocol.MAX_CACHED_SERIES_CHARS for text in lineprotocol._SERIES)
    parse_body("\n".join(f"m,t={i} f=1" for i in range(25_000)).encode(), "ns", NOW)  # one body of new series
    assert len(lineprotocol._SERIES) <= lineprotocol.MAX_CACHED_SERIES
    for i in range(20):  # one series, 20 bodies of 5,000 new field keys each
        parse_body(("m " + ",".join(f"f{i}_{j}=1" for j in range(5000))).encode(), "ns", NOW)
    names = max(len(s.names) for s in lineprotocol._SERIES.values() if s)
    print(f"field names learnt for one series: {names}")
    assert names <= lineprotocol.MAX_FIELDS_PER_SERIES


@pytest.fixture(autouse=True)
def _empty_cache():
    lineprotocol._SERIES.clear()
    yield
    lineprotocol._SERIES.clear()


def test_a_field_name_learnt_for_a_series_still_obeys_the_key_length_limit() -> None:
    """Found by the property test above: a series whose key is over 200 characters was refused once, then stored."""
    body = ("m,t=" + "v" * 197 + " f=1").encode()
    for _ in range(2):
        assert [type(item).__name__ for item in parse_body(body, "ns", NOW).items] == ["Rejection"]


def _one_field_body(precision: str, scale: int, extra: str = "") -> bytes:
    lines = [f"temp,host=web{i % 7},zone=a{i % 3} value={20 + i / 8} {(NOW - i * US) * scale}" for i in range(300)]
    return ("\n".join(lines) + extra).encode()


@pytest.mark.parametrize(("precision", "scale"), [("ns", 1000), ("us", 1), ("ms", 1), ("s", 1)])
def test_one_field_bodies_are_parsed_by_columns_exactly_as_line_by_line(precision: str, scale: int) -> None:
    """The columnar path (dashboard/lineprotocol.py _parse_columns) gives the line-by-line parser's Readings."""
    if precision in ("ms", "s"):  # whole milliseconds and seconds since the epoch
        body = "\n".join(
            f"temp,host=web{i % 7} value={i}.5 {(NOW // US - i) * (1000 if precision == 'ms' else 1)}"
            for i in range(300)
        ).encode()
    else:
        body = _one_field_body(precision, scale)
    lineprotocol._SERIES.clear()
    text = body.decode()
    first = lineprotocol.ParsedBody()
    assert not lineprotocol._parse_columns(text, precision, NOW, first), "series not learnt yet: the per-line path"
    assert not first.items
    parse_body(body, precision, NOW)  # learns the series and their field names
    columns = lineprotocol.ParsedBody()
    assert lineprotocol._parse_columns(text, precision, NOW, columns)
    slow = parse_body(body, precision, NOW, plain=False)
    assert columns.lines == slow.lines == list(range(1, 301))
    assert [repr(item) for item in columns.items] == [repr(item) for item in slow.items]
    assert parse_body(body, precision, NOW).items == columns.items


def test_telegraf_lines_of_several_fields_are_parsed_exactly_as_line_by_line() -> None:
    body = "\n".join(
        f"cpu,cpu=cpu{i % 4},host=web{i % 3} usage_idle={90 + i % 7}.5,usage_user=-{i % 5}.25,usage_system=1e-{i % 3}"
        f",steal=0 {(NOW - i * US) * 1000}"
        for i in range(200)
    ).encode()
    lineprotocol._SERIES.clear()
    parse_body(body, "ns", NOW)
    columns = parse_body(body, "ns", NOW)  # per line, each line's names learnt
    slow = parse_body(body, "ns", NOW, plain=False)
    assert len(columns.items) == 800
    assert columns.lines == slow.lines
    assert [repr(item) for item in columns.items] == [repr(item) for item in slow.items]


@pytest.mark.parametrize(
    "odd_line",
    [
        "temp,host=web1,zone=a1 value=1e999 {ts}",  # out of range: refused, its neighbours stored
        "temp,host=web1,zone=a1 value=1 1",  # outside the accepted time window
        "temp,host=web1,zone=a1 value=1,other=2 {ts}",  # a second field not learnt yet
        "temp,host=web1,zone=a1 value=1,value=x {ts}",  # a second field that is not a number
        "temp,host=web1,zone=a1 value=1, {ts}",
        "temp,host=web1,zone=a1 value=1,=2 {ts}",
        "temp,host=web1,zone=a1 " + ",".join(f"{'k' * 70}{j}=1" for j in range(999)) + " {ts}",  # over 64 KiB
        "temp,host=web1,zone=a1 value=1i {ts}",  # an integer
        "temp,host=web1,zone=a1 value=nan {ts}",
        "temp,host=web1,zone=a1 value=1_000 {ts}",  # float() reads it, line protocol does not
        "temp,host=web1,zone=a1 newfield=3 {ts}",  # a field name not learnt yet
        "temp,host=web99 value=3 {ts}",  # a series not seen yet
        "\ntemp,host=web1,zone=a1 value=2 {ts}",  # a blank line between
        "# a comment",
        "temp,host=web1,zone=a1 value=2 {ts}\r",
        "temp,host=web1,zone=a1  value=2 {ts}",
        # Numbers line protocol reads and JSON does not, or JSON reads more loosely than line protocol:
        "temp,host=web1,zone=a1 value=.5 {ts}",
        "temp,host=web1,zone=a1 value=1. {ts}",
        "temp,host=web1,zone=a1 value=+1 {ts}",
        "temp,host=web1,zone=a1 value=01 {ts}",
        "temp,host=web1,zone=a1 value=1e999 {ts}",
        "temp,host=web1,zone=a1 value=1,2 {ts}",
        "temp,host=web1,zone=a1 value=1\t {ts}",
        "temp,host=web1,zone=a1 value=1=2 {ts}",
        "temp,host=web1,zone=a1 value=1 0{ts}",
        # Three tokens a line on average, not on each line: the columns would shift onto learnt series.
        "temp,host=web1,zone=a1 value=1 {ts} temp,host=web2,zone=a2\nvalue=2 {ts}",
        "temp,host=web1,zone=a1 value=1=value {ts}\ntemp,host=web2,zone=a2 2 {ts}",
    ],
)
def test_a_body_with_one_odd_line_leaves_the_columns_and_answers_as_line_by_line(odd_line: str) -> None:
    lineprotocol._SERIES.clear()
    parse_body(_one_field_body("ns", 1000), "ns", NOW)
    body = _one_field_body("ns", 1000, "\n" + odd_line.format(ts=NOW * 1000))
    assert not lineprotocol._parse_columns(body.decode(), "ns", NOW, lineprotocol.ParsedBody())
    fast, slow = parse_body(body, "ns", NOW), parse_body(body, "ns", NOW, plain=False)
    assert fast.lines == slow.lines
    assert [repr(item) for item in fast.items] == [repr(item) for item in slow.items]
    assert len(fast.items) >= 300, "the well-formed neighbours are kept"


def test_negative_zero_keeps_its_sign_by_columns() -> None:
    """msgspec reads -0 as 0.0; the columns then read the values with float(), as the line-by-line path does."""
    lineprotocol._SERIES.clear()
    parse_body(_one_field_body("us", 1), "us", NOW)
    body = "\n".join(
        f"temp,host=web{i % 7},zone=a{i % 3} value={v} {NOW - i}" for i, v in enumerate(["-0", "-0.0", "0", "2"])
    )
    columns = lineprotocol.ParsedBody()
    assert lineprotocol._parse_columns(body, "us", NOW, columns)
    assert [math.copysign(1, item.value) for item in columns.items] == [-1, -1, 1, 1]
    assert [repr(i) for i in columns.items] == [
        repr(i) for i in parse_body(body.encode(), "us", NOW, plain=False).items
    ]
