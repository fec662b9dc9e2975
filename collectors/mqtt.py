"""Readings from an MQTT broker: topic patterns name the source and metric, payloads carry the value.

A pattern such as `sensors/{device}/{metric}` subscribes to `sensors/+/+`;
a message on `sensors/boiler-1/temperature` becomes the metric `temperature`
of the source `<source_prefix>boiler-1` (e.g. `iot.boiler-1`), so a new
device appears as a new Source by itself. `+` in a pattern matches any one
level and is ignored. Payloads are a plain number (`21.5`) or JSON: a number,
or an object `{"value": 21.5, "ts": <ms since epoch or ISO 8601>, "unit": "°C"}`.

Subscriptions use QoS 1 (at least once: a redelivered message is a duplicate
the ingest action ignores). A lost connection is retried with exponential
backoff and jitter, and every pattern is subscribed again. A payload that is
not a reading is counted (`bad_payloads`, `unmatched_topics`, both in
`errors`), logged with its topic, and reported in the agent's health
readings (collector.<name>.bad_payloads...); it never stops the collector.

Retained messages (what the broker hands every new subscription: the last
value published with the retain flag) are skipped by default: without a
`ts`, each one would become a new reading, stamped with the time of
arrival, at every agent start or reconnect. `accept_retained = true` takes
them, each retained value of a topic once: what was taken is remembered per
topic (a hash of the payload) in a small table of a SQLite file
(`state_path`; the agent's spool file by default), across restarts.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import sqlite3
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import aiomqtt

from collectors.base import Collector, Reading, slugify_key
from collectors.exceptions import InvalidReading
from collectors.reading import now_us, parse_ts
from collectors.retry import Backoff, Schedule

log = logging.getLogger("collectors.mqtt")

BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0
MAX_BATCH = 1000  # messages handed over at once; more wait for the next batch
MAX_PAYLOAD_BYTES = 64 * 1024  # a reading is a few bytes; anything this big is a mistake


class PayloadError(ValueError):
    """A message payload is not a reading (not a number, not the documented JSON shape)."""


@dataclass(frozen=True)
class TopicPattern:
    """One configured pattern: its levels, and the subscription filter it stands for."""

    text: str
    levels: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> TopicPattern:
        levels = tuple(text.split("/"))
        if "{metric}" not in levels:
            raise ValueError(f"MQTT topic pattern {text!r} needs a {{metric}} level")
        for level in levels:
            if ("{" in level or "}" in level) and level not in ("{device}", "{metric}"):
                raise ValueError(f"MQTT topic pattern {text!r}: only {{device}} and {{metric}} may fill a whole level")
            if "#" in level:
                raise ValueError(f"MQTT topic pattern {text!r}: '#' is not supported; name each level")
        return cls(text, levels)

    @property
    def subscription(self) -> str:
        return "/".join("+" if level.startswith("{") else level for level in self.levels)

    def match(self, topic: str) -> tuple[str | None, str] | None:
        """Return (device or None, metric) when the topic fits this pattern."""
        parts = topic.split("/")
        if len(parts) != len(self.levels):
            return None
        device, metric = None, None
        for level, part in zip(self.levels, parts, strict=True):
            if level == "{device}":
                device = part
            elif level == "{metric}":
                metric = part
            elif level != "+" and level != part:
                return None
        if not metric or device == "":
            return None
        return device, metric


def parse_payload(payload: bytes) -> tuple[float, int | None, str]:
    """Return (value, ts µs or None, unit) of a payload; raise PayloadError saying what is wrong."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"payload of {len(payload)} bytes is over {MAX_PAYLOAD_BYTES}")
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise PayloadError("payload is not UTF-8 text") from None
    try:
        data: Any = json.loads(text)
    except ValueError:
        raise PayloadError(f"payload {text[:60]!r} is neither a number nor JSON") from None
    ts: int | None = None
    unit = ""
    if isinstance(data, dict):
        if "value" not in data:
            raise PayloadError('JSON payload needs a "value"')
        if "ts" in data and data["ts"] is not None:
            try:
                ts = parse_ts(data["ts"], "ms")
            except InvalidReading as exc:
                raise PayloadError(exc.message) from None
        unit = data.get("unit") or ""
        if not isinstance(unit, str):
            raise PayloadError('"unit" must be a string')
        data = data["value"]
    if isinstance(data, bool) or not isinstance(data, (int, float)):
        raise PayloadError(f"value must be a number, got {type(data).__name__}")
    try:
        value = float(data)
    except OverflowError:
        raise PayloadError("value is too large") from None
    if not math.isfinite(value):
        raise PayloadError("value must be finite")
    return value, ts, unit[:32]


class RetainedMemory:
    """Per topic, the hash of the retained payload last taken; in SQLite, so it survives agent restarts."""

    def __init__(self, path: Path | str, collector: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.collector = collector
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=20)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS mqtt_retained (collector TEXT NOT NULL, topic TEXT NOT NULL,"
            " payload_sha256 TEXT NOT NULL, taken_at REAL NOT NULL, PRIMARY KEY (collector, topic))"
        )

    @staticmethod
    def digest(payload: bytes) -> str:
        return hashlib.sha256(payload).hexdigest()

    def seen(self, topic: str, digest: str) -> bool:
        row = self._db.execute(
            "SELECT payload_sha256 FROM mqtt_retained WHERE collector = ? AND topic = ?", (self.collector, topic)
        ).fetchone()
        return row is not None and row[0] == digest

    def remember(self, taken: dict[str, str]) -> None:
        """Record the retained values just handed over (topic -> payload hash), in one transaction."""
        if taken:
            self._db.executemany(
                "INSERT OR REPLACE INTO mqtt_retained (collector, topic, payload_sha256, taken_at) VALUES (?, ?, ?, ?)",
                [(self.collector, topic, digest, time.time()) for topic, digest in taken.items()],
            )

    def close(self) -> None:
        self._db.close()


def parse_url(url: str) -> dict[str, Any]:
    """Return aiomqtt.Client keyword arguments for mqtt://user:password@host:port (mqtts:// for TLS)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
        raise ValueError(f"MQTT url {url!r} must look like mqtt://host:1883 (or mqtts://host:8883)")
    options: dict[str, Any] = {
        "hostname": parsed.hostname,
        "port": parsed.port or (8883 if parsed.scheme == "mqtts" else 1883),
    }
    if parsed.username:
        options["username"] = unquote(parsed.username)
    if parsed.password:
        options["password"] = unquote(parsed.password)
    if parsed.scheme == "mqtts":
        options["tls_context"] = ssl.create_default_context()
    return options


class MqttCollector(Collector):
    """Subscribe to topic patterns on a broker and turn each message into a reading."""

    kind = "mqtt"
    default_interval_s = 1.0  # unused: messages arrive when devices send them

    def __init__(
        self,
        name: str | None = None,
        interval_s: float | None = None,
        url: str = "mqtt://127.0.0.1:1883",
        topics: list[str] | None = None,
        source_prefix: str = "iot.",
        source: str = "mqtt",
        source_kind: str = "device",
        qos: int = 1,
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        accept_retained: bool = False,
        state_path: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(name, interval_s, **options)
        if not isinstance(accept_retained, bool):
            raise ValueError(f"{self.name}: accept_retained must be true or false")
        self.accept_retained = accept_retained
        self.state_path = state_path  # where taken retained values are remembered; runcollectors sets the spool
        self.client_options = parse_url(url)
        if username:
            self.client_options["username"] = username
        if password:
            self.client_options["password"] = password
        self.url = url
        self.patterns = [TopicPattern.parse(t) for t in (topics or ["sensors/{device}/{metric}"])]
        self.source_prefix = source_prefix
        self.default_source = source  # for patterns without {device}
        self.source_kind = source_kind
        if qos not in (0, 1, 2):
            raise ValueError(f"{self.name}: qos must be 0, 1 or 2")
        self.qos = qos
        # A fixed client id with a persistent session lets the broker keep QoS 1
        # messages for us while we reconnect; without one every connection is new.
        self.client_id = client_id
        self.connects = 0
        self.reconnects = 0
        self.messages = 0
        self.bad_payloads = 0
        self.unmatched_topics = 0
        self.retained_skipped = 0  # retained messages not taken (accept_retained off, or a value already taken)
        self.retained_taken = 0
        self._memory: RetainedMemory | None = None
        self._pending: dict[str, str] = {}  # retained values in the batch being handed over: topic -> hash

    def health(self) -> dict[str, float]:
        return {
            "errors": self.errors,
            "bad_payloads": self.bad_payloads,
            "unmatched_topics": self.unmatched_topics,
            "retained_skipped": self.retained_skipped,
            "retained_taken": self.retained_taken,
            "messages": self.messages,
            "reconnects": self.reconnects,
        }

    def memory(self) -> RetainedMemory:
        if self._memory is None:
            if not self.state_path:
                # Only without an HttpSink (in-process runcollectors, tests): the agent sets state_path to
                # its spool file (collectors/agent.py), so pulseboard-agent never needs Django here.
                from django.conf import settings

                self.state_path = str(settings.VAR_DIR / "agent-spool.sqlite3")
            self._memory = RetainedMemory(self.state_path, self.name)
        return self._memory

    def reading(self, topic: str, payload: bytes, received_us: int) -> Reading | None:
        """Return the reading a message carries, or None (counted and logged) when it carries none."""
        for pattern in self.patterns:
            found = pattern.match(topic)
            if found is not None:
                break
        else:
            self.errors += 1
            self.unmatched_topics += 1
            log.warning("%s: topic %r matches no configured pattern; ignored", self.name, topic)
            return None
        device, metric = found
        try:
            value, ts, unit = parse_payload(payload)
        except PayloadError as exc:
            self.errors += 1
            self.bad_payloads += 1
            log.warning("%s: malformed payload on %r: %s", self.name, topic, exc)
            return None
        source = self.source_prefix + slugify_key(device) if device is not None else self.default_source
        labels = {"name": (device or source)[:200], "topic": topic[:200]}
        return Reading(source, slugify_key(metric), ts or received_us, value, unit, "gauge", self.source_kind, labels)

    async def batches(self) -> AsyncIterator[list[Reading]]:
        backoff = Backoff(Schedule(BACKOFF_START_S, max_s=BACKOFF_MAX_S, jitter=0.5))
        while True:
            try:
                async with aiomqtt.Client(
                    identifier=self.client_id,
                    clean_session=None if self.client_id is None else False,
                    **self.client_options,
                ) as client:
                    self.connects += 1
                    if self.connects > 1:
                        self.reconnects += 1
                        log.info("%s: reconnected to %s; subscribing again", self.name, self.url)
                    for pattern in self.patterns:
                        await client.subscribe(pattern.subscription, qos=self.qos)
                    backoff.reset()
                    async for batch in self._read(client):
                        yield batch
            except aiomqtt.MqttError as exc:
                delay = backoff.next()
                log.warning(
                    "%s: MQTT connection to %s lost or refused (%s); retrying in %.1f s",
                    self.name,
                    self.url,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _read(self, client: aiomqtt.Client) -> AsyncIterator[list[Reading]]:
        """Yield what arrived as batches: everything already queued goes with the message that woke us."""
        messages = client.messages
        while True:
            message = await anext(messages)
            batch = self._collect(message, [])
            # Whatever else is already queued rides along, without waiting for more.
            while len(batch) < MAX_BATCH and len(messages) > 0:  # len() is the number already queued
                batch = self._collect(await anext(messages), batch)
            if batch:
                yield batch
            # The runner resumes us only once the batch is in the spool: now the retained values are taken.
            if self._pending:
                self.memory().remember(self._pending)
                self._pending.clear()

    def _collect(self, message: aiomqtt.Message, batch: list[Reading]) -> list[Reading]:
        self.messages += 1
        payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
        topic = message.topic.value
        digest = None
        if message.retain:
            if not self.accept_retained:
                self.retained_skipped += 1
                log.debug("%s: retained message on %r skipped (accept_retained is off)", self.name, topic)
                return batch
            digest = RetainedMemory.digest(payload)
            if self._pending.get(topic) == digest or self.memory().seen(topic, digest):
                self.retained_skipped += 1
                return batch
        reading = self.reading(topic, payload, now_us())
        if reading is not None:
            batch.append(reading)
            if digest is not None:
                self._pending[topic] = digest
                self.retained_taken += 1
        return batch
