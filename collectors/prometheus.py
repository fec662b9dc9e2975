"""Scrape Prometheus exporters: fetch /metrics over HTTP, parse it with prometheus_client, map series to keys.

Each target (a URL) is scraped on its own task every `interval_s`, with a
whole-scrape timeout, so a hanging exporter never delays the others. The body
(Prometheus text format 0.0.4, or OpenMetrics when the exporter insists) is
parsed by prometheus_client's own parsers on a worker thread, whole: a body
that fails to parse halfway is refused as a failed scrape, not half-stored.

Naming rule (docs/ingest.md, "Prometheus exporters"): the source is the
target's configured `source`, else `<job>.<instance>` (job: the collector's
`job`, default its name; instance: the URL's host:port). The metric is the
sample name followed by one `.<label>:<value>` part per non-empty label, in
label-name order, e.g. `http_requests_total.code:200.method:get`. Names keep
their case; a character outside the key charset becomes `_` (in names and
label names: anything but letters, digits, `_` and `:`; in values: anything
but those and `-`). A key that would be too long keeps its head and ends in
`-` + 12 hex digits of a hash of the whole name. Two series that still map to
one key are a collision: the later is refused and counted.

Counters stay counters, and each also gets `<metric>.rate` (per second, from
this scrape and the previous one; none on the first scrape; after a counter
reset the increase is the new value, as in Prometheus' `rate()`).
Histograms and summaries become `_count` and `_sum` (counters, with rates),
`<name>.mean` (Δsum / Δcount over the last interval, when there were
observations), summary quantiles as gauges, and buckets only with
`buckets = true`. Per target, `scrape.*` readings report the scrape itself
(`scrape.up` is 1 or 0, like Prometheus' `up`), what was cut by the series
cap, left out, refused as a collision or not a storable number.
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import hashlib
import logging
import math
import os
import re
import time
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from collectors import retry
from collectors.base import Collector, Reading, slugify_key
from collectors.reading import US, now_us

log = logging.getLogger("collectors.prometheus")

# The ingest rules (dashboard/validation.py; a test pins these copies), kept here
# so this module does not need Django: keys are "<source>.<metric>".
MAX_KEY_LEN = 200
MAX_SOURCE_LEN = 120
MAX_ABS_VALUE = 1e300
KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,199}$")
SOURCE_KINDS = {"host", "device", "feed", "agent", "other"}

DEFAULT_INTERVAL_S = 10.0
DEFAULT_TIMEOUT_S = 10.0  # Prometheus' default scrape_timeout; never longer than the interval
DEFAULT_MAX_SERIES = 1000  # node_exporter on a busy host exposes 500-1,500
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024  # after gunzip; node_exporter's body is ~0.1-0.5 MiB
DEFAULT_MAX_BACKOFF_S = 120.0
FAILURE_LOG_EVERY_S = 300.0  # a target down for hours says so every 5 minutes, not at every scrape
SUFFIX_LEN = 5  # room kept in every key for ".rate" / ".mean"
HASH_CHARS = 12
MAX_REDIRECTS = 5  # on the target's own origin (Prometheus follows up to 10, to any host)
INT64_MAX = 2**63 - 1  # µs timestamps beyond it cannot be stored (the spool, the server's BIGINT)
# Only the classic text format is asked for: prometheus_client (and others) answer OpenMetrics to any
# Accept that names it, whatever its q. A body that is OpenMetrics anyway is parsed as such.
ACCEPT = "text/plain;version=0.0.4,*/*;q=0.1"
USER_AGENT = "pulseboard-agent"

_NAME_BAD = re.compile(r"[^A-Za-z0-9_:]")
_LABEL_BAD = re.compile(r"[^A-Za-z0-9_]")
_VALUE_BAD = re.compile(r"[^A-Za-z0-9_:-]")
# The unit of a series from its base-unit suffix (Prometheus naming conventions).
UNITS = {
    "seconds": "s",
    "bytes": "B",
    "celsius": "°C",
    "volts": "V",
    "amperes": "A",
    "watts": "W",
    "joules": "J",
    "hertz": "Hz",
    "meters": "m",
    "grams": "g",
    "percent": "%",
}
OPTION_NAMES_WITH_SECRETS = {"bearer_token", "password", "basic_auth_password", "token"}


class ScrapeError(Exception):
    """A scrape that produced no exposition: HTTP error status, oversized or undecodable body."""


def series_metric(name: str, labels: dict[str, str]) -> str:
    """Return the metric name of one Prometheus series by the naming rule (before the length rule)."""
    parts = [_NAME_BAD.sub("_", name)]
    if parts[0][:1] in (":", ""):
        parts[0] = "_" + parts[0]  # a key must not start with ':'
    for label in sorted(labels):
        value = labels[label]
        if value != "":  # in Prometheus an empty label value is the same as no label
            parts.append(f"{_LABEL_BAD.sub('_', label)}:{_VALUE_BAD.sub('_', value)}")
    return ".".join(parts)


def fit_metric(source: str, metric: str) -> str:
    """Return metric shortened (head + '-' + hash) so that '<source>.<metric>.rate' fits in a key."""
    room = MAX_KEY_LEN - len(source) - 1 - SUFFIX_LEN
    if len(metric) <= room:
        return metric
    digest = hashlib.sha256(metric.encode()).hexdigest()[:HASH_CHARS]
    return metric[: room - HASH_CHARS - 1] + "-" + digest


def unit_of(name: str) -> str:
    """Return the unit a metric name announces by its base-unit suffix ('_seconds' -> 's'), or ''."""
    return UNITS.get(name.removesuffix("_total").rsplit("_", 1)[-1], "")


@dataclass(frozen=True)
class NamePattern:
    """One allow/deny entry: a glob on metric names, or a regular expression written 're:<regex>'."""

    text: str
    test: Callable[[str], bool]

    @classmethod
    def parse(cls, text: str) -> NamePattern:
        if not isinstance(text, str) or not text:
            raise ValueError(f"metric name patterns must be non-empty strings, got {text!r}")
        if text.startswith("re:"):
            try:
                regex = re.compile(text[3:])
            except re.error as exc:
                raise ValueError(f"bad regular expression {text!r}: {exc}") from None
            return cls(text, lambda name: regex.fullmatch(name) is not None)
        return cls(text, lambda name: fnmatch.fnmatchcase(name, text))


@dataclass
class Target:
    """One scraped URL, its source and what is remembered between its scrapes."""

    url: str
    source: str
    instance: str
    labels: dict[str, str]
    # Counter values of the previous scrape by metric name: (ts µs, value), for rates and means.
    last: dict[str, tuple[int, float]] = field(default_factory=dict)
    # Which series owns each metric name, so two series never write into one key.
    owners: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = field(default_factory=dict)
    scrapes: int = 0
    failures: int = 0  # failed scrapes since start
    failing: int = 0  # failed scrapes in a row
    failing_since: float | None = None
    failure_logged_at: float = 0.0
    cut: int = 0  # series over max_series, since start
    collisions: int = 0
    skipped: int = 0  # samples whose value (or timestamp) is not a storable number
    cut_logged: bool = False
    collision_logged: bool = False


@dataclass
class ScrapeResult:
    """What one parse of a body gave: readings and the per-scrape counts for the scrape.* series."""

    readings: list[Reading] = field(default_factory=list)
    samples: int = 0
    series: int = 0
    filtered: int = 0
    keys: set[str] = field(default_factory=set)  # metrics written by this scrape: a repeated series is refused


class PrometheusCollector(Collector):
    """Scrape Prometheus exporters' /metrics and turn their series into readings (module docstring)."""

    kind = "prometheus"
    default_interval_s = DEFAULT_INTERVAL_S

    def __init__(
        self,
        name: str | None = None,
        interval_s: float | None = None,
        targets: list[str | dict[str, str]] | None = None,
        source: str | None = None,
        job: str | None = None,
        source_kind: str = "other",
        timeout_s: float | None = None,
        bearer_token_env: str | None = None,
        basic_auth_user: str | None = None,
        basic_auth_password_env: str | None = None,
        headers: dict[str, str] | None = None,
        headers_env: dict[str, str] | None = None,
        metrics_allow: list[str] | None = None,
        metrics_deny: list[str] | None = None,
        max_series: int = DEFAULT_MAX_SERIES,
        buckets: bool = False,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_backoff_s: float = DEFAULT_MAX_BACKOFF_S,
        **options: Any,
    ) -> None:
        secrets_given = OPTION_NAMES_WITH_SECRETS & set(options)
        if secrets_given:
            raise ValueError(
                f"{name or self.kind}: {', '.join(sorted(secrets_given))} would put a secret in the config file; "
                "name an environment variable instead (bearer_token_env, basic_auth_password_env, headers_env)"
            )
        if options:
            raise ValueError(f"{name or self.kind}: unknown options {', '.join(sorted(options))}")
        super().__init__(name, interval_s)
        self.job = job or self.name
        if not targets:
            raise ValueError(f"{self.name}: give at least one target URL in 'targets'")
        if source_kind not in SOURCE_KINDS:
            raise ValueError(f"{self.name}: source_kind must be one of {', '.join(sorted(SOURCE_KINDS))}")
        self.source_kind = source_kind
        self.timeout_s = float(timeout_s if timeout_s is not None else min(DEFAULT_TIMEOUT_S, self.interval_s))
        if not 0 < self.timeout_s <= self.interval_s:
            raise ValueError(f"{self.name}: timeout_s must be positive and at most interval_s ({self.interval_s})")
        if isinstance(max_series, bool) or not isinstance(max_series, int) or max_series < 1:
            raise ValueError(f"{self.name}: max_series must be a whole number of at least 1")
        self.max_series = max_series
        self.buckets = bool(buckets)
        if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or max_body_bytes < 1:
            raise ValueError(f"{self.name}: max_body_bytes must be a whole number of at least 1")
        self.max_body_bytes = max_body_bytes
        self.max_backoff_s = max(float(max_backoff_s), self.interval_s)
        self.allow = [NamePattern.parse(p) for p in metrics_allow or []]
        self.deny = [NamePattern.parse(p) for p in metrics_deny or []]
        self.headers = self._headers(bearer_token_env, basic_auth_user, basic_auth_password_env, headers, headers_env)
        if source is not None:
            if len(targets) != 1:
                raise ValueError(f"{self.name}: 'source' names the source of a single target; give each target its own")
            only = {"url": targets[0]} if isinstance(targets[0], str) else dict(targets[0])
            only.setdefault("source", source)
            targets = [only]
        self.targets = [self._target(spec) for spec in targets]
        sources = [t.source for t in self.targets]
        duplicated = sorted({s for s in sources if sources.count(s) > 1})
        if duplicated:
            raise ValueError(
                f"{self.name}: two targets would write the same source {duplicated[0]!r}; give each a source"
            )

    # --- configuration ------------------------------------------------------------------------

    def _headers(
        self,
        bearer_token_env: str | None,
        basic_auth_user: str | None,
        basic_auth_password_env: str | None,
        headers: dict[str, str] | None,
        headers_env: dict[str, str] | None,
    ) -> dict[str, str]:
        out = {
            "Accept": ACCEPT,
            "User-Agent": USER_AGENT,
            # Prometheus sends it; some exporters bound their own work by it.
            "X-Prometheus-Scrape-Timeout-Seconds": f"{self.timeout_s:g}",
        }
        for key, value in (headers or {}).items():
            if key.lower() == "authorization":
                raise ValueError(
                    f"{self.name}: no literal Authorization header in the config; "
                    "use bearer_token_env, basic_auth_user + basic_auth_password_env, or headers_env"
                )
            out[key] = str(value)
        for key, variable in (headers_env or {}).items():
            out[key] = self._secret(variable, f"headers_env[{key!r}]")
        if bearer_token_env and basic_auth_user:
            raise ValueError(f"{self.name}: choose bearer_token_env or basic auth, not both")
        if bearer_token_env:
            out["Authorization"] = "Bearer " + self._secret(bearer_token_env, "bearer_token_env")
        if basic_auth_user:
            password = (
                self._secret(basic_auth_password_env, "basic_auth_password_env") if basic_auth_password_env else ""
            )
            credentials = base64.b64encode(f"{basic_auth_user}:{password}".encode()).decode()
            out["Authorization"] = "Basic " + credentials
        return out

    def _secret(self, variable: str, option: str) -> str:
        value = os.environ.get(variable, "")
        if not value:
            raise ValueError(f"{self.name}: {option} names the environment variable {variable!r}, which is not set")
        return value

    def _target(self, spec: str | dict[str, str]) -> Target:
        if isinstance(spec, str):
            spec = {"url": spec}
        if not isinstance(spec, dict) or not isinstance(spec.get("url"), str):
            raise ValueError(f"{self.name}: each target is a URL or a table with a 'url' (and maybe a 'source')")
        unknown = set(spec) - {"url", "source"}
        if unknown:
            raise ValueError(f"{self.name}: unknown target options {', '.join(sorted(unknown))}")
        url = spec["url"]
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{self.name}: target {url!r} must be an http:// or https:// URL")
        if parts.username or parts.password:
            raise ValueError(f"{self.name}: target {url!r} carries credentials; use basic_auth_user and an env var")
        instance = parts.netloc
        source = spec.get("source") or slugify_key(f"{self.job}.{instance}")
        if not KEY_RE.match(source) or len(source) > MAX_SOURCE_LEN:
            raise ValueError(
                f"{self.name}: source {source[:60]!r} for {url} must be 1-{MAX_SOURCE_LEN} characters of letters, "
                "digits, '_', '.', ':', '-', not starting with '.', ':' or '-'; set 'source' on the target"
            )
        labels = {"name": f"{self.job} {instance}"[:200], "job": self.job[:200], "instance": instance[:200]}
        labels["url"] = url[:200]
        return Target(url=url, source=source, instance=instance, labels=labels)

    # --- one scrape -----------------------------------------------------------------------------

    def client(self) -> httpx.AsyncClient:
        """Return the HTTP client scrapes share (connections are kept alive between scrapes).

        Redirects are followed by `_fetch`, on the target's own origin only: httpx would follow one to
        any host with every configured header but Authorization (headers_env secrets included).
        """
        return httpx.AsyncClient(headers=self.headers, timeout=self.timeout_s, follow_redirects=False)

    async def scrape(self, target: Target, client: httpx.AsyncClient) -> list[Reading]:
        """Scrape one target once; return its readings and scrape.* series. Never raises (but for cancellation)."""
        scrape_ts = now_us()
        started = time.monotonic()
        target.scrapes += 1
        result: ScrapeResult | None = None
        try:
            body, content_type = await self._fetch(target, client)
            result = await asyncio.to_thread(self.readings, target, body, content_type, scrape_ts)
        except TimeoutError:
            self._failed(target, f"no complete answer within {self.timeout_s:g} s")
        except httpx.HTTPError as exc:
            self._failed(target, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        except ScrapeError as exc:
            self._failed(target, str(exc))
        except Exception as exc:  # the parser raises ValueError, but also IndexError etc. on hostile bodies
            self._failed(target, f"unparsable body ({type(exc).__name__}: {str(exc)[:200]})")
        else:
            if target.failing:
                log.info("%s: %s answers again after %d failed scrapes", self.name, target.url, target.failing)
            target.failing = 0
            target.failing_since = None
        duration = time.monotonic() - started
        readings = result.readings if result is not None else []
        readings += self._scrape_series(target, scrape_ts, duration, result)
        return readings

    async def _fetch(self, target: Target, client: httpx.AsyncClient) -> tuple[bytes, str]:
        # asyncio.timeout bounds the whole scrape; httpx's own timeout is per read, which a slow drip never trips.
        async with asyncio.timeout(self.timeout_s):
            origin = httpx.URL(target.url)
            url = origin
            for _ in range(MAX_REDIRECTS + 1):
                async with client.stream("GET", url) as response:
                    if response.is_redirect:
                        url = response.url.join(response.headers["location"])
                        if (url.scheme, url.host, url.port) != (origin.scheme, origin.host, origin.port):
                            raise ScrapeError(
                                f"redirected to another origin ({str(url)[:200]}); scrapes follow redirects on the "
                                "target's own scheme, host and port only: make that URL the target"
                            )
                        continue
                    if response.status_code != 200:
                        raise ScrapeError(f"HTTP {response.status_code} {response.reason_phrase}".rstrip())
                    return await self._body(response), response.headers.get("content-type", "")
            raise ScrapeError(f"more than {MAX_REDIRECTS} redirects")

    async def _body(self, response: httpx.Response) -> bytes:
        """Read a body, inflating gzip or deflate here, never more than one byte past max_body_bytes.

        httpx inflates each network chunk whole: a 64 KB gzip bomb became 64 MiB in memory before any
        size check could see it (141 MiB peak with max_body_bytes at 1 MiB).
        """
        encoding = response.headers.get("content-encoding", "").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            inflate = zlib.decompressobj(zlib.MAX_WBITS | 32)  # a gzip or zlib header, told apart by zlib
        elif encoding in ("", "identity"):
            inflate = None
        else:
            raise ScrapeError(f"unsupported Content-Encoding {encoding[:40]!r}")
        chunks: list[bytes] = []
        size = 0
        try:
            async for raw in response.aiter_raw():
                data = raw
                while data:
                    if inflate is None:
                        piece, data = data, b""
                    else:
                        piece = inflate.decompress(data, self.max_body_bytes - size + 1)
                        data = inflate.unconsumed_tail
                    size += len(piece)
                    if size > self.max_body_bytes:
                        raise ScrapeError(f"body over max_body_bytes ({self.max_body_bytes})")
                    chunks.append(piece)
        except zlib.error as exc:
            raise ScrapeError(f"body is not valid {encoding} ({exc})") from None
        return b"".join(chunks)

    def _failed(self, target: Target, reason: str) -> None:
        target.failures += 1
        target.failing += 1
        self.errors += 1
        now = time.monotonic()
        if target.failing_since is None:
            target.failing_since = now
            target.failure_logged_at = now
            log.warning("%s: scrape of %s failed: %s; retrying with backoff", self.name, target.url, reason)
        elif now - target.failure_logged_at >= FAILURE_LOG_EVERY_S:
            target.failure_logged_at = now
            log.warning(
                "%s: %s still failing: %d scrapes in a row over %.0f s; last: %s",
                self.name,
                target.url,
                target.failing,
                now - target.failing_since,
                reason,
            )

    def _scrape_series(self, target: Target, ts: int, duration: float, result: ScrapeResult | None) -> list[Reading]:
        """Return the target's scrape.* readings (source: the target's source)."""
        values: list[tuple[str, float, str, str]] = [
            ("scrape.up", 1.0 if result is not None else 0.0, "", "gauge"),
            ("scrape.duration", round(duration, 6), "s", "gauge"),
            ("scrape.failures", float(target.failures), "", "counter"),
            ("scrape.cut", float(target.cut), "", "counter"),
            ("scrape.collisions", float(target.collisions), "", "counter"),
            ("scrape.skipped", float(target.skipped), "", "counter"),
        ]
        if result is not None:
            values += [
                ("scrape.samples", float(result.samples), "", "gauge"),
                ("scrape.series", float(result.series), "", "gauge"),
                ("scrape.filtered", float(result.filtered), "", "gauge"),
            ]
        return [
            Reading(target.source, metric, ts, value, unit, kind, self.source_kind, target.labels)
            for metric, value, unit, kind in values
        ]

    # --- from exposition to readings (runs on a worker thread) ---------------------------------

    def readings(self, target: Target, body: bytes, content_type: str, scrape_ts: int) -> ScrapeResult:
        """Parse a whole exposition and map it to readings; raise (ValueError...) when it cannot be parsed."""
        text = body.decode("utf-8")
        parse = parse_openmetrics if content_type.startswith("application/openmetrics-text") else parse_text
        families = list(parse(text))  # all or nothing: a body that breaks halfway stores none of it
        result = ScrapeResult()
        # prometheus_client writes a counter's (histogram's, summary's) creation time as a separate
        # gauge family <name>_created in the text format; it is bookkeeping, not a series to chart.
        created = {f.name + "_created" for f in families if f.type in ("counter", "histogram", "summary")}
        previous, target.last = target.last, {}
        for family in families:
            if family.name in created and family.type in ("gauge", "unknown", "untyped"):
                result.samples += len(family.samples)
                result.filtered += len(family.samples)
                continue
            self._family(target, family, scrape_ts, previous, result)
        if len(target.owners) > 4 * self.max_series + 1000:
            target.owners.clear()  # bounded; ownership is learnt again from the next scrapes
        return result

    def _family(
        self,
        target: Target,
        family: Any,
        scrape_ts: int,
        previous: dict[str, tuple[int, float]],
        result: ScrapeResult,
    ) -> None:
        family_unit = unit_of(family.name)
        # For histograms and summaries: _count and _sum per label set, for the mean.
        pairs: dict[tuple[tuple[str, str], ...], dict[str, tuple[str, int, float]]] = {}
        for sample in family.samples:
            result.samples += 1
            role = _role(family.type, family.name, sample.name)
            if (
                role == "skip"
                or (role in ("bucket", "gauge_bucket") and not self.buckets)
                or not self._allowed(family.name, sample.name)
            ):
                result.filtered += 1
                continue
            value = _storable(sample.value)
            ts = _sample_ts(sample.timestamp, scrape_ts)
            if value is None or ts is None:
                target.skipped += 1
                continue
            if result.series >= self.max_series:
                target.cut += 1
                if not target.cut_logged:
                    target.cut_logged = True
                    log.warning(
                        "%s: %s exposes more than max_series = %d series; the rest are cut and counted in "
                        "%s.scrape.cut (logged once per target)",
                        self.name,
                        target.url,
                        self.max_series,
                        target.source,
                    )
                continue
            label_items = tuple(sorted(sample.labels.items()))
            metric = fit_metric(target.source, series_metric(sample.name, sample.labels))
            if not self._claim(target, result, metric, sample.name, label_items):
                continue
            result.series += 1
            counter = role in ("counter", "bucket", "count", "sum")
            unit = "" if role in ("count", "bucket", "gauge_bucket") else family_unit
            kind = "counter" if counter else "gauge"
            result.readings.append(
                Reading(target.source, metric, ts, value, unit, kind, self.source_kind, target.labels)
            )
            if not counter:
                continue
            target.last[metric] = (ts, value)
            rate = _rate(previous.get(metric), ts, value)
            if rate is not None:
                result.readings.append(
                    Reading(
                        target.source, metric + ".rate", ts, rate, unit + "/s", "rate", self.source_kind, target.labels
                    )
                )
            if role in ("count", "sum"):
                pairs.setdefault(label_items, {})[role] = (metric, ts, value)
        for label_items, pair in pairs.items():
            if "count" in pair and "sum" in pair:
                self._mean(target, family, dict(label_items), pair, previous, family_unit, result)

    def _mean(
        self,
        target: Target,
        family: Any,
        labels: dict[str, str],
        pair: dict[str, tuple[str, int, float]],
        previous: dict[str, tuple[int, float]],
        unit: str,
        result: ScrapeResult,
    ) -> None:
        """Append <family>.mean = Δsum / Δcount since the previous scrape, when there were observations."""
        count_metric, ts, count = pair["count"]
        sum_metric, _, total = pair["sum"]
        before_count, before_sum = previous.get(count_metric), previous.get(sum_metric)
        if before_count is None or before_sum is None or ts <= before_count[0]:
            return
        observed, added = count - before_count[1], total - before_sum[1]
        if observed < 0:  # reset: everything since the restart
            observed, added = count, total
        if observed <= 0:
            return
        metric = fit_metric(target.source, series_metric(family.name, labels)) + ".mean"
        if self._claim(target, result, metric, family.name + ".mean", tuple(sorted(labels.items()))):
            mean = added / observed
            result.readings.append(
                Reading(target.source, metric, ts, mean, unit, "gauge", self.source_kind, target.labels)
            )

    def _allowed(self, family_name: str, sample_name: str) -> bool:
        """Return whether a series passes the allow/deny lists (a pattern may match the family or the sample)."""
        names = (family_name, sample_name)
        if any(p.test(n) for p in self.deny for n in names):
            return False
        return not self.allow or any(p.test(n) for p in self.allow for n in names)

    def _claim(
        self, target: Target, result: ScrapeResult, metric: str, name: str, label_items: tuple[tuple[str, str], ...]
    ) -> bool:
        """Return whether this series may write metric: no other series of the target owns it, not yet written."""
        owner = target.owners.setdefault(metric, (name, label_items))
        if owner == (name, label_items) and metric not in result.keys:
            result.keys.add(metric)
            return True
        target.collisions += 1
        if not target.collision_logged and owner == (name, label_items):
            target.collision_logged = True
            log.warning(
                "%s: %s exposes %s%s twice in one scrape; the repeat is refused and counted in "
                "%s.scrape.collisions (logged once per target)",
                self.name,
                target.url,
                name,
                dict(label_items),
                target.source,
            )
        elif not target.collision_logged:
            target.collision_logged = True
            log.warning(
                "%s: %s: %s%s and %s%s both map to the key %s.%s; the later is refused and counted in "
                "%s.scrape.collisions (logged once per target; narrow it with metrics_deny)",
                self.name,
                target.url,
                owner[0],
                dict(owner[1]),
                name,
                dict(label_items),
                target.source,
                metric,
                target.source,
            )
        return False

    # --- the loop -------------------------------------------------------------------------------

    async def scrape_once(self) -> list[Reading]:
        """Scrape every target once, concurrently (tests and one-off checks)."""
        async with self.client() as client:
            batches = await asyncio.gather(*(self.scrape(t, client) for t in self.targets))
        return [r for batch in batches for r in batch]

    def next_delay(self, target: Target) -> float:
        """Return seconds from one scrape's start to the next: the interval, longer while the target fails."""
        if not target.failing:
            return self.interval_s
        return retry.Schedule(self.interval_s, max_s=self.max_backoff_s, jitter=0.1).wait(target.failing)

    async def batches(self) -> AsyncIterator[list[Reading]]:
        queue: asyncio.Queue[list[Reading]] = asyncio.Queue(maxsize=2 * len(self.targets))
        async with self.client() as client:
            tasks = [
                asyncio.create_task(self._scrape_forever(t, client, queue), name=f"{self.name} {t.url}")
                for t in self.targets
            ]
            try:
                while True:
                    yield await queue.get()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _scrape_forever(
        self, target: Target, client: httpx.AsyncClient, queue: asyncio.Queue[list[Reading]]
    ) -> None:
        while True:
            started = time.monotonic()
            try:
                batch = await self.scrape(target, client)
            except Exception:  # a bug here, not a bad exporter (scrape() absorbs those): keep this target going
                self._failed(target, "internal error (logged with its traceback)")
                log.exception("%s: scraping %s raised; trying again at the next interval", self.name, target.url)
                batch = []
            await queue.put(batch)
            await asyncio.sleep(max(0.0, self.next_delay(target) - (time.monotonic() - started)))


def _role(family_type: str, family_name: str, sample_name: str) -> str:
    """Return what a sample is: counter, gauge, count, sum, bucket, quantile, or skip."""
    if sample_name.endswith("_created") and family_type in ("counter", "histogram", "summary", "gaugehistogram"):
        return "skip"  # OpenMetrics puts the creation time inside the family
    if family_type == "counter":
        return "counter"
    if family_type in ("histogram", "summary"):
        if sample_name == family_name + "_count":
            return "count"
        if sample_name == family_name + "_sum":
            return "sum"
        if sample_name == family_name + "_bucket":
            return "bucket"
        return "gauge"  # a summary's quantiles
    if family_type == "gaugehistogram" and sample_name == family_name + "_bucket":
        return "gauge_bucket"
    return "gauge"  # gauge, untyped/unknown, info, stateset, gaugehistogram's _gcount/_gsum


def _storable(value: Any) -> float | None:
    """Return value as a float the ingest rules accept (finite, within ±1e300), or None."""
    try:
        number = float(value)
    except (OverflowError, TypeError, ValueError):
        return None
    if not math.isfinite(number) or abs(number) > MAX_ABS_VALUE:
        return None
    return number


def _sample_ts(timestamp: Any, scrape_ts: int) -> int | None:
    """Return the exporter's sample timestamp in µs (whole ms as exposed), the scrape's when absent, None if absurd."""
    if timestamp is None:
        return scrape_ts
    try:
        seconds = float(timestamp)  # the parsers give seconds, or an OpenMetrics Timestamp
        us = round(seconds * 1000) * 1000 if math.isfinite(seconds) else None
    except (OverflowError, TypeError, ValueError):
        return None
    # Before 1970 or past int64 µs (year 294,247) is no reading anyone can store: skipped and counted.
    return us if us is not None and 0 <= us <= INT64_MAX else None


def _rate(before: tuple[int, float] | None, ts: int, value: float) -> float | None:
    """Return the per-second increase since the previous scrape; after a reset, the new value counts as the increase."""
    if before is None or ts <= before[0]:
        return None
    increase = value - before[1]
    if increase < 0:
        increase = value  # the counter restarted from 0 (Prometheus' rate() assumes the same)
    return increase / ((ts - before[0]) / US)
