"""Hypothesis strategies for hostile input: what an attacker or a broken client sends, not what the author expects.

Shared by the fuzz tests of both ingest endpoints and of the live socket
(tests/test_ingest_fuzz.py, tests/test_protocol_fuzz.py). Each strategy
produces raw text or bytes, so that shapes json.dumps would never write can
be sent: deep nesting, invalid UTF-8, lone surrogates (escaped, and encoded
as the bytes UTF-8 forbids), huge integers and exponents, duplicate keys,
very long strings, and sizes just over each limit.
"""

from __future__ import annotations

import json

from hypothesis import strategies as st

from dashboard.timeutil import now_us

NOW_MS = now_us() // 1000

# Python's recursion limit is 1,000; the socket allows 64 KiB a message, so 20,000 "[" fits.
deep_depths = st.sampled_from([100, 999, 1000, 1001, 5000, 20_000]) | st.integers(min_value=1, max_value=30_000)


@st.composite
def deep_nesting(draw: st.DrawFn) -> str:
    """Arrays or objects nested thousands deep, closed or not."""
    depth = draw(deep_depths)
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}"), ('[{"samples":', "}]")]))
    inner = draw(st.sampled_from(["", "1", '"x"', "null"]))
    closed = draw(st.booleans())
    return opener * depth + inner + (closer * depth if closed else "")


huge_integers = st.one_of(
    st.integers(min_value=-(2**200), max_value=2**200).map(str),
    st.sampled_from([4299, 4300, 4301, 5000, 20_000]).map(lambda n: "9" * n),  # 4,300: int()'s digit limit
    st.sampled_from([str(2**63), str(-(2**63) - 1), str(2**64), str(10**19), str(-(10**19))]),
)
huge_exponents = st.sampled_from(
    ["1e999999", "-1e999999", "1e-999999", "1E+400", "-1e309", "1.7976931348623157e308", "5e-324", "1e" + "9" * 50]
)
odd_numbers = st.sampled_from(["NaN", "Infinity", "-Infinity", "-0", "0.0", "01", "1.", ".5", "+1", "0x10", "1_000"])
surrogate_strings = st.sampled_from(
    ['"\\ud800"', '"\\udfff"', '"a\\ud83d"', '"\\ude00b"', '"\\ud800\\ud800"', '"\\ud83d\\ude00"', '"\\u0000"']
)
long_strings = st.sampled_from([1_000, 65_535, 65_536, 70_000, 200_001]).map(lambda n: json.dumps("a" * n))
plain_strings = st.text(max_size=30).map(json.dumps)  # json.dumps escapes lone surrogates as \ud800
names = st.sampled_from(["cpu", "host-a.cpu", "fz.host-a.cpu", "boiler-1", "a" * 200, "a" * 201, "*", ""]).map(
    json.dumps
)
scalars = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    huge_integers,
    huge_exponents,
    odd_numbers,
    surrogate_strings,
    plain_strings,
    names,
    st.sampled_from(["true", "false", "null", "{}", "[]", '"2026-12-06T00:00:00Z"', '"0001-01-01T00:00:00+14:00"']),
)
fragments = st.one_of(
    scalars,
    scalars.map(lambda s: f"[{s},{s}]"),
    st.tuples(plain_strings, scalars).map(lambda kv: "{" + f"{kv[0]}:{kv[1]}" + "}"),
)
rare_fragments = st.one_of(long_strings, deep_nesting())


def json_object(fields: st.SearchStrategy[str], values: st.SearchStrategy[str], max_size: int = 6) -> st.SearchStrategy:
    """Raw JSON objects whose keys may repeat (duplicate keys are legal JSON; which one wins is the parser's)."""
    return st.lists(st.tuples(fields, values), max_size=max_size).map(
        lambda pairs: "{" + ",".join(f'"{k}":{v}' for k, v in pairs) + "}"
    )


_manglings = st.sampled_from(["as is", "as is", "as is", "invalid utf-8", "cut"])
_invalid_utf8 = st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\x80"])
_fractions = st.floats(min_value=0.0, max_value=1.0)


def mangle(text: str, draw: st.DrawFn) -> bytes:
    """Encode text (lone surrogates as the bytes UTF-8 forbids), then maybe cut it or splice in invalid UTF-8."""
    body = text.encode("utf-8", "surrogatepass")
    how = draw(_manglings)
    if how == "invalid utf-8" and body:
        at = int(draw(_fractions) * len(body))
        body = body[:at] + draw(_invalid_utf8) + body[at:]
    elif how == "cut" and body:
        body = body[: int(draw(_fractions) * (len(body) - 1))]
    return body


SAMPLE_FIELDS = st.sampled_from(["metric", "ts", "value", "source", "unit", "labels", "kind", "source_kind", "extra"])
BATCH_FIELDS = st.sampled_from(["source", "precision", "unit", "labels", "source_kind", "samples", "ts"])
precisions = st.sampled_from(['"s"', '"ms"', '"us"', '"ns"', '"h"', "1", "null"])


_values = st.one_of(fragments, fragments, fragments, rare_fragments)
_samples = json_object(SAMPLE_FIELDS, _values, max_size=7) | st.builds(
    lambda ts, v: json.dumps({"metric": "cpu", "ts": ts, "value": v}),
    st.sampled_from([NOW_MS, NOW_MS * 1_000_000 + 999_999, 2**63, 10**30]),
    st.floats(allow_nan=False),
)
_sample_lists = [st.lists(_samples, min_size=n, max_size=n) for n in range(4)]
_tops = json_object(BATCH_FIELDS.filter(lambda k: k != "samples"), _values, max_size=4)


@st.composite
def hostile_ingest_json(draw: st.DrawFn, max_samples: int) -> bytes:
    """An ingest body of the documented shape with hostile values in any slot, duplicate keys, and mangled bytes."""
    count = draw(st.sampled_from([0, 1, 2, 3, 3, 3, 5, max_samples, max_samples + 1]))
    samples = draw(_sample_lists[min(count, 3)])
    samples = (samples * (count // max(1, len(samples)) + 1))[:count] if samples else []
    top = draw(_tops)
    precision = draw(precisions)
    body = (
        top[:-1]
        + ("," if top != "{}" else "")
        + f'"precision":{precision},"source":"fz.host-a","samples":['
        + ",".join(samples)
        + "]}"
    )
    return mangle(body, draw)


lp_names = st.sampled_from(["cpu", "m\\ m", "a,b", "é", "x" * 300, "#c", "[[[["]) | st.text(max_size=10)
lp_values = st.one_of(
    huge_integers.map(lambda s: s + "i"),
    huge_integers.map(lambda s: s.lstrip("-") + "u"),
    huge_integers,
    huge_exponents,
    odd_numbers,
    st.sampled_from(['"str"', '"\\"', "t", "FALSE", "", "1i2", "--1"]),
    st.floats(allow_nan=False).map(repr),
)
_lp_tags = st.lists(st.tuples(lp_names, lp_names), max_size=3)
_lp_fields = st.lists(st.tuples(lp_names | st.just("v"), lp_values), min_size=1, max_size=4)
_lp_shapes = st.sampled_from(["point", "point", "point", "long line", "many fields", "junk"])
_lp_junk = deep_nesting() | st.text(max_size=40)
lp_timestamps = st.one_of(st.none(), huge_integers, st.sampled_from([str(NOW_MS * 1_000_000 + 1), "-1", "1.5", "x"]))


@st.composite
def hostile_line_protocol(draw: st.DrawFn, max_fields: int, max_line_chars: int) -> bytes:
    """Line protocol with duplicate tags and fields, huge numbers, long lines, too many fields and mangled bytes."""
    lines = []
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        shape = draw(_lp_shapes)
        if shape == "long line":
            lines.append("m,host=h v=1 " + " " * (max_line_chars - 12 + draw(st.integers(-1, 2))))
            continue
        if shape == "junk":
            lines.append(draw(_lp_junk))
            continue
        tags = draw(_lp_tags)
        if shape == "many fields":
            fields = [(f"f{i}", "1") for i in range(max_fields + draw(st.integers(0, 1)))]
        else:
            fields = draw(_lp_fields)
        ts = draw(lp_timestamps)
        line = draw(lp_names) + "".join(f",{k}={v}" for k, v in tags) + " " + ",".join(f"{k}={v}" for k, v in fields)
        lines.append(line + ("" if ts is None else f" {ts}"))
    return mangle("\n".join(lines), draw)


_message_types = st.sampled_from(['"subscribe"', '"unsubscribe"', '"ping"', '"ack"']) | scalars
_message_bodies = json_object(
    st.sampled_from(["type", "id", "metrics", "since", "history_s", "max_rate", "frame", "seq"]),
    st.one_of(fragments, st.lists(names | scalars, max_size=5).map(lambda v: "[" + ",".join(v) + "]")),
    max_size=5,
)
_message_shapes = st.sampled_from(["message", "message", "message", "deep", "long", "just over", "just under"])


@st.composite
def hostile_socket_messages(draw: st.DrawFn, max_message_bytes: int) -> str | bytes:
    """Client messages for the live socket: protocol shapes with hostile values, deep nesting, junk, just over 64 KiB."""
    shape = draw(_message_shapes)
    if shape == "deep":
        text = draw(deep_nesting())
    elif shape in ("just over", "just under"):
        size = max_message_bytes + (1 if shape == "just over" else -40)
        text = '{"type":"ping","id":"' + "a" * (size - 22) + '"}'
    elif shape == "long":
        # Long but cheap: a subscribe of thousands of globs is the subject of its own test (issue #12, item 7).
        text = '{"type":"ping","id":[' + ",".join(["1e999"] * draw(st.integers(100, 6000))) + "]}"
    else:
        first = draw(_message_types)
        text = draw(_message_bodies)
        text = '{"type":' + first + ("," + text[1:] if text != "{}" else "}")
    body = mangle(text, draw)
    as_text = draw(st.booleans())
    if as_text:  # a text frame is valid UTF-8 by the WebSocket protocol; the server sees str
        return body.decode("utf-8", "replace")
    return body
