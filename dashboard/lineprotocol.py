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

import re
from dataclasses import dataclass, field

from dashboard.exceptions import BadRequest, InvalidReading
from dashboard.validation import Reading, Rejection, check_key, check_value

# The first of these tags present names the source, and gives its kind.
SOURCE_TAGS = {"source": "", "host": "host", "device": "device"}
PRECISION_TO_US = {
    "ns": (1, 1000),
    "us": (1, 1),
    "ms": (1000, 1),
    "s": (1_000_000, 1),
}  # (multiply, divide)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT64_MAX = 2**64 - 1
MAX_LINE_CHARS = 64 * 1024  # InfluxDB's default limit is larger, but no sane line comes close

_FLOAT_RE = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
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
    multiply, divide = PRECISION_TO_US[precision]
    return int(raw) * multiply // divide


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


def parse_body(body: bytes, precision: str, now: int) -> ParsedBody:
    """Parse a whole write body; only an unknown precision fails the request as a whole."""
    if precision not in PRECISION_TO_US:
        raise BadRequest(f"precision must be one of {', '.join(PRECISION_TO_US)}", field="precision")
    parsed = ParsedBody()
    for line_no, raw in enumerate(body.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            parsed.add(
                Rejection(0, None, "the line is not valid UTF-8", LineSyntaxError.code),
                line_no,
            )
            continue
        line = line.rstrip("\r").lstrip(" \t")
        if not line or line.startswith("#"):
            continue
        if len(line) > MAX_LINE_CHARS:
            parsed.add(
                Rejection(
                    0,
                    None,
                    f"the line is over {MAX_LINE_CHARS} characters",
                    LineSyntaxError.code,
                ),
                line_no,
            )
            continue
        try:
            for item in parse_line(line, precision, now):
                parsed.add(item, line_no)
        except InvalidReading as exc:
            parsed.add(Rejection(0, exc.field, exc.message, exc.code), line_no)
    return parsed
