"""Parse InfluxDB line protocol into Readings, so Telegraf and InfluxDB clients can write unchanged.

Each line is `measurement[,tag=value...] field=value[,field=value...] [timestamp]`
(https://docs.influxdata.com/influxdb/v2/reference/syntax/line-protocol/).
A line that cannot be read is rejected whole, with its 1-based line number;
a field that is not a number (string or boolean) is rejected on its own and
the line's numeric fields are kept.

Naming rule (docs/ingest.md), because Pulseboard keys are "<source>.<metric>":

* source = the value of the first tag among SOURCE_TAGS (`source`, `host`,
  `device`), else the measurement;
* metric = the measurement (unless it became the source), then the values of
  the remaining tags ordered by tag key, then the field key, joined with ".".

Every part is lower-cased and reduced to the key charset ([a-z0-9_:-], anything
else becomes "-"). All tags are kept as the source's labels. So Telegraf's
`cpu,cpu=cpu0,host=web1 usage_idle=98.2` is the metric `web1.cpu.cpu0.usage_idle`.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import repeat

import msgspec

from dashboard.exceptions import BadRequest, InvalidReading, PayloadTooLarge
from dashboard.validation import (
    MAX_ABS_VALUE,
    MAX_LABEL_LEN,
    MAX_LABELS,
    PRECISION_US,
    Reading,
    Rejection,
    accepted_window,
    check_key,
    check_keys,
    check_reading,
    check_value,
    scale_ts,
)

# The first of these tags present names the source, and gives its kind.
SOURCE_TAGS = {"source": "", "host": "host", "device": "device"}
# (multiply, divide), the JSON endpoint's ratios (dashboard/validation.py) in InfluxDB's order.
PRECISION_TO_US = {name: PRECISION_US[name] for name in ("ns", "us", "ms", "s")}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT64_MAX = 2**64 - 1
MAX_LINE_CHARS = 64 * 1024  # InfluxDB's default limit is larger, but no sane line comes close

# Field values float() reads exactly as line protocol means them (no underscores, no words like "inf"):
# a decimal with at most a 3-digit exponent, or an integer of at most 15 digits (which a float holds
# exactly) with its i/u suffix. Anything else, and anything out of range, takes the full rules.
_PLAIN_FLOAT_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d{1,3})?\Z")
_PLAIN_INT_RE = re.compile(r"-?\d{1,15}i\Z|\d{1,15}u\Z")
# A line of the usual shape: a series not starting with a space, tab or '#', fields, a timestamp of at
# most 19 digits, single spaces between, nothing after. ASCII digits only ([0-9], not \d).
_UNIFORM_LINE = re.compile(r"^([^ \t#\n][^ \n]*) ([^ \n]+) ([0-9]{1,19})$", re.MULTILINE)
# The columnar path's two decoders: numbers as JSON writes them, a subset of line protocol's floats.
_FLOATS = msgspec.json.Decoder(list[float])
_INTS = msgspec.json.Decoder(list[int])
# Series (the text before a line's first space) seen lately, with their names: senders repeat the same
# series every interval, so naming and checking is done once per series, not once per line.
_SERIES: dict[str, _Series | bool] = {}
MAX_CACHED_SERIES = 10_000
# Longer series texts are not remembered: 10,000 lines of 64 KiB would otherwise pin 640 MB per process.
MAX_CACHED_SERIES_CHARS = 1024
# Written so that no two parts can match the same digits: "\d+\.?\d*" backtracked quadratically, and a
# field of 4,300 digits and an "i" took 2.5 s to refuse (found by tests/hostile.py).
_FLOAT_RE = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")
# Field names learnt per series grow with every new key a sender invents: at most this many are kept.
MAX_FIELDS_PER_SERIES = 1000
# Digit counts are capped so int() never meets Python's 4,300-digit conversion limit.
_INT_RE = re.compile(r"^[+-]?\d{1,20}$")
_UINT_RE = re.compile(r"^\d{1,20}$")
_TRUE = {"t", "T", "true", "True", "TRUE"}
_FALSE = {"f", "F", "false", "False", "FALSE"}
_NOT_KEY_CHAR = re.compile(r"[^a-z0-9_:-]+")


class LineSyntaxError(InvalidReading):
    """A line of line protocol cannot be read; the whole line is refused."""

    code = "invalid_line"


@dataclass
class ParsedBody:
    """Readings and rejections in body order, with the 1-based line number of each item."""

    items: list[Reading | Rejection] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)

    def add(self, item: Reading | Rejection, line_no: int) -> None:
        self.items.append(item)
        self.lines.append(line_no)


def key_part(text: str) -> str:
    """Return one name part reduced to the key charset (no dots, so parts never run into each other)."""
    part = _NOT_KEY_CHAR.sub("-", text.lower()).strip("-:")
    return part or "unnamed"


def to_us(raw: str, precision: str) -> int:
    """Return a line-protocol timestamp as µs since the epoch."""
    if not _INT_RE.match(raw):
        raise LineSyntaxError(f"timestamp {raw[:40]!r} is not an integer", field="ts")
    return scale_ts(int(raw), precision)  # integer arithmetic, rounded down: the JSON endpoint's rule


class _Scanner:
    """Walk one line character by character, honouring backslash escapes."""

    def __init__(self, line: str) -> None:
        self.line = line
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.line)

    def peek(self) -> str:
        return self.line[self.pos] if self.pos < len(self.line) else ""

    def take_until(self, stops: str, escapable: str, what: str) -> str:
        """Return the text up to an unescaped stop character (not consumed); a backslash escapes `escapable`."""
        out: list[str] = []
        line = self.line
        while self.pos < len(line):
            char = line[self.pos]
            if char == "\\" and self.pos + 1 < len(line) and line[self.pos + 1] in escapable:
                out.append(line[self.pos + 1])
                self.pos += 2
                continue
            if char in stops:
                break
            out.append(char)
            self.pos += 1
        text = "".join(out)
        if not text:
            raise LineSyntaxError(f"{what} is empty at column {self.pos + 1}", field=None)
        return text

    def take_string(self) -> str:
        """Return a double-quoted field value (the opening quote is at pos), unescaping \\" and \\\\."""
        self.pos += 1
        out: list[str] = []
        line = self.line
        while self.pos < len(line):
            char = line[self.pos]
            if char == "\\" and self.pos + 1 < len(line) and line[self.pos + 1] in '"\\':
                out.append(line[self.pos + 1])
                self.pos += 2
                continue
            if char == '"':
                self.pos += 1
                return "".join(out)
            out.append(char)
            self.pos += 1
        raise LineSyntaxError("a string field value has no closing quote", field=None)

    def expect(self, char: str, what: str) -> None:
        if self.peek() != char:
            found = repr(self.peek()) if self.peek() else "the end of the line"
            raise LineSyntaxError(f"expected {what} at column {self.pos + 1}, found {found}", field=None)
        self.pos += 1


@dataclass(slots=True)
class _Field:
    key: str
    raw: str
    quoted: bool


def split_line(line: str) -> tuple[str, dict[str, str], list[_Field], str | None]:
    """Return (measurement, tags, fields, raw timestamp or None) of one line."""
    scan = _Scanner(line)
    measurement = scan.take_until(", ", ", ", "the measurement")
    tags: dict[str, str] = {}
    while scan.peek() == ",":
        scan.pos += 1
        key = scan.take_until("=, ", ",= ", "a tag key")
        scan.expect("=", f"'=' after tag key {key!r}")
        tags[key] = scan.take_until(", ", ",= ", f"the value of tag {key!r}")
    if scan.peek() != " ":
        scan.expect(" ", "a space before the fields")
    while scan.peek() == " ":
        scan.pos += 1
    fields: list[_Field] = []
    while True:
        key = scan.take_until("=, ", ",= ", "a field key")
        scan.expect("=", f"'=' after field key {key!r}")
        if scan.peek() == '"':
            fields.append(_Field(key, scan.take_string(), True))
        else:
            fields.append(_Field(key, scan.take_until(", ", "", f"the value of field {key!r}"), False))
        if scan.peek() == ",":
            scan.pos += 1
            continue
        break
    timestamp = None
    if not scan.at_end():
        scan.expect(" ", "a space before the timestamp")
        rest = scan.line[scan.pos :].strip(" ")
        if rest:
            if " " in rest:
                raise LineSyntaxError(f"unexpected text after the timestamp: {rest[:40]!r}", field=None)
            timestamp = rest
    return measurement, tags, fields, timestamp


def field_number(item: _Field) -> float:
    """Return a field's value as a float; strings and booleans are refused with the reason."""
    raw = item.raw
    if item.quoted:
        raise InvalidReading(
            f"field {item.key!r} is a string; only numeric fields are stored",
            field=item.key,
        )
    if raw in _TRUE or raw in _FALSE:
        raise InvalidReading(
            f"field {item.key!r} is a boolean; only numeric fields are stored",
            field=item.key,
        )
    if raw.endswith("i"):
        if not _INT_RE.match(raw[:-1]):
            raise InvalidReading(f"field {item.key!r}: {raw[:40]!r} is not an integer", field=item.key)
        number = int(raw[:-1])
        if not INT64_MIN <= number <= INT64_MAX:
            raise InvalidReading(
                f"field {item.key!r}: integer out of the signed 64-bit range",
                field=item.key,
            )
        return float(number)
    if raw.endswith("u"):
        if not _UINT_RE.match(raw[:-1]):
            raise InvalidReading(
                f"field {item.key!r}: {raw[:40]!r} is not an unsigned integer",
                field=item.key,
            )
        number = int(raw[:-1])
        if number > UINT64_MAX:
            raise InvalidReading(
                f"field {item.key!r}: integer out of the unsigned 64-bit range",
                field=item.key,
            )
        return float(number)
    if not _FLOAT_RE.match(raw):
        raise InvalidReading(f"field {item.key!r}: {raw[:40]!r} is not a number", field=item.key)
    try:
        return check_value(float(raw))
    except InvalidReading as exc:
        raise InvalidReading(f"field {item.key!r}: {exc.message}", field=item.key) from None


def name_reading(measurement: str, tags: dict[str, str], field_key: str) -> tuple[str, str]:
    """Return (source slug, metric name) for one field by the naming rule in the module docstring."""
    source_tag = next((t for t in SOURCE_TAGS if t in tags), None)
    parts: list[str] = []
    if source_tag is None:
        source = key_part(measurement)
    else:
        source = key_part(tags[source_tag])
        parts.append(key_part(measurement))
    parts += [key_part(tags[k]) for k in sorted(tags) if k != source_tag]
    parts.append(key_part(field_key))
    return source, ".".join(parts)


def parse_line(line: str, precision: str, now: int) -> list[Reading | Rejection]:
    """Return one Reading or Rejection per field of a line; raise LineSyntaxError for an unreadable line."""
    measurement, tags, fields, raw_ts = split_line(line)
    ts = now if raw_ts is None else to_us(raw_ts, precision)
    labels = {k: v for k, v in tags.items()}
    source_kind = next((kind for tag, kind in SOURCE_TAGS.items() if tag in tags), "")
    out: list[Reading | Rejection] = []
    for item in fields:
        try:
            value = field_number(item)
            source, metric = name_reading(measurement, tags, item.key)
            out.append(
                Reading(
                    source=check_key(source, "source"),
                    metric=check_key(metric, "metric"),
                    ts=ts,
                    value=value,
                    source_kind=source_kind,
                    labels=labels,
                )
            )
        except InvalidReading as exc:
            out.append(Rejection(0, exc.field, exc.message, exc.code))
    return out


@dataclass(slots=True)
class _Series:
    """What every line of one series (measurement and tags, the text before the first space) shares."""

    measurement: str
    tags: dict[str, str]
    source_kind: str
    # field key -> (source, metric), checked against the key rules once
    names: dict[str, tuple[str, str]] = field(default_factory=dict)


def _plain_series(text: str) -> _Series:
    """Return the series of a line without escapes or quotes; raise InvalidReading as the full parser would."""
    measurement, tags, _, _ = split_line(text + " f=0")
    _check_labels(tags)
    return _Series(measurement, tags, next((kind for tag, kind in SOURCE_TAGS.items() if tag in tags), ""))


def _check_labels(tags: dict[str, str]) -> None:
    if len(tags) > MAX_LABELS or any(len(k) > MAX_LABEL_LEN or len(v) > MAX_LABEL_LEN for k, v in tags.items()):
        raise InvalidReading(
            f"labels: at most {MAX_LABELS} tags, keys and values at most {MAX_LABEL_LEN} characters", field="labels"
        )


def _parse_columns(text: str, precision: str, now: int, parsed: ParsedBody) -> bool:
    """Parse a body of one-field lines of known series by columns; False (nothing added) when it is not one.

    Most writers send one sample per line (`temp,host=a value=21.5 1700000000000000000`),
    and `_parse_plain`'s few operations per line were still about 2 µs, five
    times the JSON path, mostly the interpreter walking each line. (Telegraf's
    lines of several fields stay with `_parse_plain`, which shares each line's
    work among its fields: about 1 µs a field, and columns measured no faster.)
    Here the body is cut into three columns by str.split in C, and each line
    is proved to be exactly "series field=value time" by joining the columns
    back; the values and times are read as one JSON array each by msgspec,
    whose grammar for numbers is a subset of line protocol's floats (anything
    else, `1i`, `nan`, `1_000`, `.5`, fails it and the whole body goes line by
    line); the names are looked up once per series; the time window and value
    range are checked once with min() and max(). A regular expression over the
    lines did the same cutting in 0.7-1.2 µs a line and float() over the
    values took another 0.33: 1.4 µs a line in all, against 1.0 this way
    (5,000 lines, in-process, collector off; JSON's decode is 0.65). Only a body where every
    line has this shape, every series and field name is already learnt (the
    first body of a series goes through `_parse_plain`, which learns them) and
    every time and value is acceptable qualifies, so the Readings are exactly
    `_parse_plain`'s, which falls back to the full rules line by line.
    """
    # JSON would take a tab or CR beside a number as white space; line protocol does not.
    if "\t" in text or "\r" in text:
        return False
    body = text[:-1] if text.endswith("\n") else text
    lines = body.split("\n")
    cut = body.replace("\n", " ").split(" ")
    count = len(lines)
    if len(cut) != 3 * count or max(map(len, lines)) > MAX_LINE_CHARS:
        return False
    series_texts, pairs, stamps = cut[0::3], cut[1::3], cut[2::3]
    # Three tokens per line in total is not three on every line: "a b=1 2 3" beside "c=4 5" shifts the columns.
    if list(map(" ".join, zip(series_texts, pairs, stamps, strict=True))) != lines:
        return False
    halves = "=".join(pairs).split("=")
    field_keys, raws = halves[0::2], halves[1::2]
    # Likewise one "=" in every pair, not two in one and none in another.
    if len(halves) != 2 * count or list(map("=".join, zip(field_keys, raws, strict=True))) != pairs:
        return False
    numbers = ",".join(raws)
    try:
        values = _FLOATS.decode(f"[{numbers}]")
        ts = _INTS.decode(f"[{','.join(stamps)}]")
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False
    if len(values) != count or len(ts) != count:  # a value of "1,2" adds an element
        return False
    if "-" in numbers and 0.0 in values:  # JSON's -0 decodes to 0.0; float() keeps the sign, as line by line does
        values = list(map(float, raws))
    series_cache = _SERIES
    labels_of: dict[str, dict[str, str]] = {}  # one copy per series per body, as _parse_plain makes
    names: dict[tuple[str, str], tuple[str, str, str, dict[str, str]]] = {}
    keys = list(zip(series_texts, field_keys, strict=True))
    for key in set(keys):
        series_text, field_key = key
        series = series_cache.get(series_text)
        if not series:
            return False
        known = series.names.get(field_key)
        if known is None:
            return False
        tags = labels_of.get(series_text)
        if tags is None:
            tags = labels_of[series_text] = dict(series.tags) if series.tags else {}
        names[key] = (known[0], known[1], series.source_kind, tags)
    multiply, divide = PRECISION_TO_US[precision]
    if divide != 1:
        ts = list(map(operator.floordiv, ts, repeat(divide)))
    elif multiply != 1:
        ts = list(map(operator.mul, ts, repeat(multiply)))
    oldest, newest = accepted_window(now)
    if min(ts) < oldest or max(ts) > newest or min(values) < -MAX_ABS_VALUE or max(values) > MAX_ABS_VALUE:
        return False
    sources, metrics, kinds, labels = zip(*map(names.__getitem__, keys), strict=True)
    empty = repeat("")
    parsed.items = list(map(Reading, sources, metrics, ts, values, empty, empty, kinds, labels))
    parsed.lines = list(range(1, count + 1))
    return True


def _parse_plain(text: str, precision: str, now: int, parsed: ParsedBody) -> None:
    """Parse a body with no backslash and no double quote, the shape Telegraf and most clients send.

    Without escapes a line is `series fields [timestamp]` split on single
    spaces, and every line of a series shares its names, so the per-line work
    is a few splits, a dict lookup, float() and int(): about a tenth of the
    character scanner's. Readings come out fully checked (keys, finite value,
    time window, labels), like the JSON decoder's, so the ingest action does
    not check them again. A line of any other shape (several spaces, a
    field without '=', a value that is not a plain decimal number) goes
    through `parse_line` and gets exactly its errors.
    """
    multiply, divide = PRECISION_TO_US[precision]
    oldest, newest = accepted_window(now)
    series_cache = _SERIES
    if len(series_cache) > MAX_CACHED_SERIES:
        series_cache.clear()
    plain_float, plain_int = _PLAIN_FLOAT_RE.match, _PLAIN_INT_RE.match
    add_item, add_line = parsed.items.append, parsed.lines.append
    # Each series' labels copied once per body: a body's readings never share a dict with another body's
    # (the cached series is shared by every request), and a copy per line was a tenth of the parse.
    labels_of: dict[str, dict[str, str]] = {}
    for line_no, line, parts in _split_plain(text):
        if parts is None:
            _parse_one(line, precision, now, parsed, line_no)
            continue
        raw_ts = parts[2] if len(parts) == 3 else None
        ts = now if raw_ts is None else int(raw_ts) * multiply // divide
        series = series_cache.get(parts[0])
        if series is None and len(parts[0]) > MAX_CACHED_SERIES_CHARS:
            series = False  # a series this long is rare: the full rules, nothing remembered
        elif series is None:
            try:
                series = _plain_series(parts[0])
            except InvalidReading:
                series = False  # unreadable, or labels over the limits: every line of it gets the full rules
            if len(series_cache) >= MAX_CACHED_SERIES:  # within one body too: a 5 MiB body of new series
                series_cache.clear()
            series_cache[parts[0]] = series
        if series is False:
            _parse_one(line or " ".join(parts), precision, now, parsed, line_no)
            continue
        if ts < oldest or ts > newest:  # refused; the full rules say why, field by field
            _parse_one(line or " ".join(parts), precision, now, parsed, line_no)
            continue
        known = series.names
        fields = parts[1].split(",")
        readings = []
        tags = labels_of.get(parts[0])
        if tags is None:
            tags = labels_of[parts[0]] = dict(series.tags) if series.tags else {}
        for item in fields:
            key, _, raw = item.partition("=")
            names = known.get(key)
            if names is None:
                break
            if plain_float(raw):
                value = float(raw)
            elif plain_int(raw):
                value = float(int(raw[:-1]))
            else:
                break
            if not -MAX_ABS_VALUE <= value <= MAX_ABS_VALUE:
                break
            readings.append(Reading(names[0], names[1], ts, value, "", "", series.source_kind, tags))
        else:
            for reading in readings:
                add_item(reading)
                add_line(line_no)
            continue
        # A field key not seen yet in this series, or a value that is not a plain number in range (or not
        # a field at all): the whole line gets the full rules, then its field keys are learnt for the next.
        _parse_one(line or " ".join(parts), precision, now, parsed, line_no)
        for item in fields:
            key = item.partition("=")[0]
            if key and key not in known and len(known) < MAX_FIELDS_PER_SERIES:
                try:
                    source, metric = name_reading(series.measurement, series.tags, key)
                    check_keys(source, metric)  # every key rule, lengths too: a learnt name skips them all
                    known[key] = (source, metric)
                except InvalidReading:
                    pass  # its lines always take the full rules


def _split_plain(text: str) -> Iterator[tuple[int, str, tuple[str, ...] | list[str] | None]]:
    """Yield (line number, line, (series, fields[, timestamp]) or None for a line that takes the full rules).

    A body whose every line is `series fields timestamp` (what clients
    send) is split by one regular expression, in C, instead of line by line
    in Python; any other body line by line, as before.
    """
    found = _UNIFORM_LINE.findall(text)
    if len(found) == text.count("\n") + (not text.endswith("\n")):  # every line matched, none blank
        for line_no, parts in enumerate(found, start=1):
            if len(parts[0]) + len(parts[1]) + len(parts[2]) + 2 > MAX_LINE_CHARS:
                yield line_no, " ".join(parts), None
            else:
                yield line_no, "", parts  # the line is " ".join(parts), made only if it is needed
        return
    for line_no, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line or line[0] in " \t#" or len(line) > MAX_LINE_CHARS:
            yield line_no, line, None
            continue
        parts = line.split(" ")
        if len(parts) == 3:
            raw_ts = parts[2]
            yield line_no, line, parts if raw_ts.isascii() and raw_ts.isdigit() and len(raw_ts) <= 19 else None
        elif len(parts) == 2:
            yield line_no, line, parts
        else:
            yield line_no, line, None


def _checked(items: list[Reading | Rejection], now: int) -> list[Reading | Rejection]:
    """Return the full parser's items with each Reading put through check_reading (a failure becomes a Rejection)."""
    out: list[Reading | Rejection] = []
    for item in items:
        if isinstance(item, Reading):
            try:
                item = check_reading(item, now)
            except InvalidReading as exc:
                item = Rejection(0, exc.field, exc.message, exc.code)
        out.append(item)
    return out


def _parse_one(line: str, precision: str, now: int, parsed: ParsedBody, line_no: int) -> None:
    """Parse one line with the full parser and check its readings; skip blank lines and comments."""
    line = line.rstrip("\r").lstrip(" \t")
    if not line or line.startswith("#"):
        return
    if len(line) > MAX_LINE_CHARS:
        parsed.add(Rejection(0, None, f"the line is over {MAX_LINE_CHARS} characters", LineSyntaxError.code), line_no)
        return
    try:
        items = _checked(parse_line(line, precision, now), now)
    except InvalidReading as exc:
        items = [Rejection(0, exc.field, exc.message, exc.code)]
    for item in items:
        parsed.add(item, line_no)


def too_many(max_items: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"more than {max_items} fields: over the limit per request (PULSEBOARD_MAX_SAMPLES_PER_REQUEST)",
        field="body",
    )


def parse_body(
    body: bytes, precision: str, now: int, *, plain: bool = True, max_items: int | None = None
) -> ParsedBody:
    """Parse a whole write body into checked Readings and Rejections; an unknown precision or more than
    max_items fields (413) fails it whole.

    Every Reading returned has passed check_reading's rules, so the caller
    hands them to the ingest action with checked=True. A body without
    escapes or quotes takes `_parse_plain`; `plain=False` forces the
    line-by-line parser, which tests compare it with.
    """
    if precision not in PRECISION_TO_US:
        raise BadRequest(f"precision must be one of {', '.join(PRECISION_TO_US)}", field="precision")
    parsed = ParsedBody()
    if plain and b"\\" not in body and b'"' not in body:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            pass  # the line-by-line path names each line that is not UTF-8
        else:
            if not _parse_columns(text, precision, now, parsed):
                _parse_plain(text, precision, now, parsed)  # fast enough to parse whole, then count
            if max_items is not None and len(parsed.items) > max_items:
                raise too_many(max_items)
            return parsed
    for line_no, raw in enumerate(body.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            parsed.add(
                Rejection(0, None, "the line is not valid UTF-8", LineSyntaxError.code),
                line_no,
            )
            continue
        _parse_one(line, precision, now, parsed, line_no)
        if max_items is not None and len(parsed.items) > max_items:
            # Stop here: the rest of a 5 MiB body would only be parsed to be refused.
            raise too_many(max_items)
    return parsed
