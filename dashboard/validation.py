"""Turn untrusted readings into clean Reading objects, one at a time.

Validation is per reading so that one bad value never costs its neighbours:
callers collect the InvalidReading errors with their index and keep the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import msgspec
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

# The one Reading type and timestamp parser are shared with the agent, which runs without Django.
from collectors.reading import PRECISION_US, US, Reading, now_us, parse_ts, scale_ts  # noqa: F401 (re-exported)
from dashboard.exceptions import InvalidReading
from dashboard.models import KEY_CHARSET_HELP, KEY_RE, Metric, Source

MAX_UNIT_LEN = 32
# Rollups keep sums per bucket; PostgreSQL raises (instead of giving inf) when a
# float8 sum overflows, which would fail a whole group commit. 1e300 leaves room
# for millions of samples a bucket.
MAX_ABS_VALUE = 1e300
MAX_SOURCE_LEN = Source._meta.get_field("slug").max_length  # 120: the column is shorter than a key
MAX_LABELS = 32
MAX_LABEL_LEN = Source._meta.get_field("name").max_length  # 200: the "name" label becomes Source.name
SOURCE_KINDS = set(Source.Kind.values)
METRIC_KINDS = set(Metric.Kind.values)
# (source, metric) pairs that passed the key rules. A fleet sends the same few
# thousand keys over and over, and the regular expressions and length checks
# were a fifth of the time an ingest request spent validating (each reading is
# checked when parsed and again by the ingest action). Bounded: emptied when full.
_VALID_KEYS: set[tuple[str, str]] = set()
VALID_KEYS_MAX = 100_000


@dataclass(slots=True)
class Rejection:
    """Why the reading at a position (index or line number) was refused."""

    index: int
    field: str | None
    reason: str
    code: str = "invalid_reading"

    def as_dict(self, position: str = "index") -> dict:
        out: dict[str, Any] = {position: self.index, "code": self.code, "reason": self.reason}
        if self.field:
            out["field"] = self.field
        return out


def check_key(value: Any, field_name: str) -> str:
    """Return value if it is a valid source slug or metric name."""
    if not isinstance(value, str):
        raise InvalidReading(f"{field_name} must be a string", field=field_name)
    if not KEY_RE.match(value):
        raise InvalidReading(f"{field_name} {value[:60]!r} is not valid: {KEY_CHARSET_HELP}", field=field_name)
    return value


def check_value(value: Any) -> float:
    """Return value as a finite float; booleans, strings, NaN and infinities are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidReading(f"value must be a number, got {type(value).__name__}", field="value")
    try:
        number = float(value)
    except OverflowError:
        raise InvalidReading("value is too large for a 64-bit float", field="value") from None
    if not math.isfinite(number):
        raise InvalidReading(f"value must be finite, got {number}", field="value")
    if abs(number) > MAX_ABS_VALUE:
        raise InvalidReading(f"value must be within ±{MAX_ABS_VALUE:g}", field="value")
    return number


_conf: dict[str, Any] | None = None


def _pulseboard_settings() -> dict[str, Any]:
    # settings.PULSEBOARD costs a LazySettings lookup (~1 µs), and check_ts
    # runs for every reading, twice: kept until the setting changes.
    global _conf
    if _conf is None:
        _conf = settings.PULSEBOARD
    return _conf


@receiver(setting_changed)
def _forget_settings(*, setting: str, **kwargs: Any) -> None:
    global _conf
    if setting == "PULSEBOARD":
        _conf = None


def check_ts(ts: int, now: int | None = None) -> int:
    """Return ts if it lies inside the accepted window (not older than retention, not too far ahead)."""
    now = now if now is not None else now_us()
    conf = _pulseboard_settings()
    if ts < now - conf["MAX_AGE_S"] * US:
        raise InvalidReading(f"ts is older than the {conf['MAX_AGE_S']} s accepted window (raw retention)", field="ts")
    if ts > now + conf["MAX_FUTURE_S"] * US:
        raise InvalidReading(
            f"ts is more than {conf['MAX_FUTURE_S']} s in the future; check the sender's clock", field="ts"
        )
    return ts


def accepted_window(now: int) -> tuple[int, int]:
    """Return the oldest and newest µs timestamps check_ts accepts at `now`, for parsers that check in bulk."""
    conf = _pulseboard_settings()
    return now - conf["MAX_AGE_S"] * US, now + conf["MAX_FUTURE_S"] * US


def check_keys(source: Any, metric: Any) -> None:
    """Check a reading's source and metric names (type, charset, lengths); remember pairs that pass."""
    if type(source) is str and type(metric) is str and (source, metric) in _VALID_KEYS:
        return
    check_key(source, "source")
    if len(source) > MAX_SOURCE_LEN:
        # Longer slugs would fail the whole group-commit batch in the database, not just this reading.
        raise InvalidReading(f"source is longer than {MAX_SOURCE_LEN} characters", field="source")
    check_key(metric, "metric")
    if len(source) + 1 + len(metric) > 200:
        raise InvalidReading("source and metric together are longer than 200 characters", field="metric")
    if type(source) is str and type(metric) is str:  # not a str subclass with its own __hash__
        if len(_VALID_KEYS) >= VALID_KEYS_MAX:
            _VALID_KEYS.clear()
        _VALID_KEYS.add((source, metric))


def check_reading(reading: Reading, now: int | None = None) -> Reading:
    """Validate a Reading built by trusted code (collectors) with the same rules as untrusted input."""
    check_keys(reading.source, reading.metric)
    reading.value = check_value(reading.value)
    if isinstance(reading.ts, bool) or not isinstance(reading.ts, int):
        raise InvalidReading("ts must be integer microseconds", field="ts")
    check_ts(reading.ts, now)
    return _check_details(reading)


def check_encodable(text: str, field_name: str) -> None:
    """Refuse text with a lone surrogate (JSON's "\\ud800"): no database can store it as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidReading(
            f"{field_name} holds a lone surrogate (\\ud800-\\udfff), which is not text", field=field_name
        ) from None


def _check_details(reading: Reading) -> Reading:
    """Check what is optional on a reading: labels, unit, kinds."""
    if reading.labels and (
        len(reading.labels) > MAX_LABELS
        or any(len(k) > MAX_LABEL_LEN or len(v) > MAX_LABEL_LEN for k, v in reading.labels.items())
    ):
        raise InvalidReading(
            f"labels: at most {MAX_LABELS}, keys and values at most {MAX_LABEL_LEN} characters", field="labels"
        )
    if len(reading.unit) > MAX_UNIT_LEN:
        raise InvalidReading(f"unit is longer than {MAX_UNIT_LEN} characters", field="unit")
    if not reading.unit.isascii():
        check_encodable(reading.unit, "unit")
    if reading.labels:
        for key, text in reading.labels.items():
            if not (key.isascii() and text.isascii()):
                check_encodable(key, "labels")
                check_encodable(text, "labels")
    if reading.kind and reading.kind not in METRIC_KINDS:
        raise InvalidReading(f"kind must be one of {sorted(METRIC_KINDS)}", field="kind")
    if reading.source_kind and reading.source_kind not in SOURCE_KINDS:
        raise InvalidReading(f"source_kind must be one of {sorted(SOURCE_KINDS)}", field="source_kind")
    return reading


def reading_from_dict(item: Any, defaults: dict[str, Any], precision: str, now: int) -> Reading:
    """Build a Reading from one JSON sample, falling back to batch-level defaults (source, unit...)."""
    if not isinstance(item, dict):
        raise InvalidReading("each sample must be a JSON object", field=None)
    # A field of the sample overrides the batch's default. Looked up field by
    # field rather than by merging two dicts: this runs for every sample.
    for name in ("metric", "value", "ts"):
        if name not in item and name not in defaults:
            raise InvalidReading(f"{name} is required", field=name)
    get = item.get
    source = get("source", defaults.get("source"))
    if source is None:
        raise InvalidReading("source is required (on the sample or the batch)", field="source")
    unit = get("unit", defaults.get("unit")) or ""
    kind = get("kind", defaults.get("kind")) or ""
    source_kind = get("source_kind", defaults.get("source_kind")) or ""
    labels = get("labels", defaults.get("labels")) or {}
    for name, text in (("unit", unit), ("kind", kind), ("source_kind", source_kind)):
        if not isinstance(text, str):
            raise InvalidReading(f"{name} must be a string", field=name)
    if labels and (
        not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())
    ):
        raise InvalidReading("labels must be an object of strings", field="labels")
    metric = get("metric", defaults.get("metric"))
    if not (type(source) is str and type(metric) is str and (source, metric) in _VALID_KEYS):
        # In this order, so that a sample with several faults is refused for the same one as always.
        check_key(source, "source")
        check_key(metric, "metric")
    ts = parse_ts(get("ts", defaults.get("ts")), precision)
    value = check_value(get("value", defaults.get("value")))
    check_keys(source, metric)
    check_ts(ts, now)
    reading = Reading(source, metric, ts, value, unit, kind, source_kind, labels)
    return _check_details(reading)


def readings_from_dicts(
    samples: list[Any], defaults: dict[str, Any], precision: str, now: int
) -> list[Reading | Rejection]:
    """Build a Reading or a Rejection (with its index) for each JSON sample of a batch.

    The same rules and the same messages as reading_from_dict, which it falls
    back to for any sample off the common path: an object with a known-good
    source and metric, an integer ts, a finite float value and no per-sample
    unit, kind or labels. The accepted time window and the defaults are
    looked up once per batch instead of once per sample, which made
    validating a 5,000-sample body about twice as fast.
    """
    conf = _pulseboard_settings()
    oldest, newest = now - conf["MAX_AGE_S"] * US, now + conf["MAX_FUTURE_S"] * US
    multiply, divide = PRECISION_US[precision]
    source_default = defaults.get("source")
    simple_defaults = not (defaults.keys() - {"source"})
    out: list[Reading | Rejection] = []
    append = out.append
    for index, item in enumerate(samples):
        if type(item) is dict and simple_defaults and len(item) <= 4:
            source = item.get("source", source_default)
            metric = item.get("metric")
            ts = item.get("ts")
            value = item.get("value")
            if (
                type(source) is str
                and type(metric) is str
                and type(ts) is int
                and type(value) is float
                and (source, metric) in _VALID_KEYS
                and -MAX_ABS_VALUE <= value <= MAX_ABS_VALUE
                and len(item) == 3 + ("source" in item)
            ):
                ts = ts * multiply // divide
                if oldest <= ts <= newest:
                    append(Reading(source, metric, ts, value))
                    continue
        try:
            append(reading_from_dict(item, defaults, precision, now))
        except InvalidReading as exc:
            append(Rejection(index, exc.field, exc.message, exc.code))
    return out


class _PlainSample(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A JSON sample of the common shape: metric, integer ts, number value, and maybe its own source."""

    metric: str
    ts: int
    value: float
    source: str | msgspec.UnsetType = msgspec.UNSET


class _PlainBatch(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """An ingest body with no batch defaults but the source: what agents send."""

    samples: list[_PlainSample]
    source: str | msgspec.UnsetType = msgspec.UNSET
    precision: str = "ms"


_plain_batch = msgspec.json.Decoder(_PlainBatch)


def readings_from_json(body: bytes, now: int, max_samples: int) -> list[Reading | Rejection] | None:
    """Decode and validate a common ingest body in one pass; None when it needs the general path.

    msgspec decodes the body straight into typed samples (in C, 5-6x faster
    than json.loads into dicts), so what is left per sample is the accepted
    time window, the value's range and a lookup of its known-good key. A body
    of another shape (batch defaults other than source, per-sample unit,
    kind or labels, a string or float ts, a null, a NaN or an integer too big
    for a float, anything json.loads reads differently) fails to decode here
    and goes the general way: the caller's json.loads and
    readings_from_dicts. A sample that decodes but fails a check is handed
    to reading_from_dict as the object it was, so it is refused with the
    same reason as on the general path.
    """
    try:
        batch = _plain_batch.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    ratio = PRECISION_US.get(batch.precision)
    if ratio is None or len(batch.samples) > max_samples:
        return None
    multiply, divide = ratio
    conf = _pulseboard_settings()
    oldest, newest = now - conf["MAX_AGE_S"] * US, now + conf["MAX_FUTURE_S"] * US
    source_default = batch.source
    defaults = {} if source_default is msgspec.UNSET else {"source": source_default}
    unset = msgspec.UNSET
    valid_keys = _VALID_KEYS
    out: list[Reading | Rejection] = []
    append = out.append
    for index, sample in enumerate(batch.samples):
        source = source_default if sample.source is unset else sample.source
        metric, ts, value = sample.metric, sample.ts * multiply // divide, sample.value
        if (source, metric) in valid_keys and oldest <= ts <= newest and -MAX_ABS_VALUE <= value <= MAX_ABS_VALUE:
            append(Reading(source, metric, ts, value))
            continue
        item: dict[str, Any] = {"metric": metric, "ts": sample.ts, "value": value}
        if sample.source is not unset:
            item["source"] = sample.source
        try:
            append(reading_from_dict(item, defaults, batch.precision, now))
        except InvalidReading as exc:
            append(Rejection(index, exc.field, exc.message, exc.code))
    return out
