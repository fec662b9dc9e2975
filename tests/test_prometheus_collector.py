"""The prometheus collector against real exporters: a prometheus_client process, Pulseboard's own /metrics, bad servers."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    SummaryMetricFamily,
)

from collectors import prometheus
from collectors.prometheus import PrometheusCollector, fit_metric, series_metric
from collectors.registry import build
from dashboard import validation
from dashboard.models import KEY_RE
from dashboard.testing import ROOT, Server, free_port, login_cookies, manage, project_env, running_server
from dashboard.timeutil import now_us
from dashboard.validation import Reading, check_reading

# A real exporter: prometheus_client's own HTTP server in a subprocess, driven by JSON lines on stdin.
# Each command is answered "ok" once applied, so the test knows what the next scrape must show.
EXPORTER = r"""
import json, sys
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Summary, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric

requests = Counter("app_requests", "Requests served", ["method", "code"])
temperature = Gauge("app_temperature_celsius", "Boiler temperature")
latency = Histogram("app_latency_seconds", "Request latency", buckets=(0.1, 0.5, 1.0))
payload = Summary("app_payload_bytes", "Payload sizes")
state = {"quantiles": {}, "rpc": [0, 0.0], "stamped": None, "many": 0, "odd": {}}


class Extra:
    def collect(self):
        if state["quantiles"]:
            family = Metric("rpc_duration_seconds", "RPC latency quantiles", "summary")
            for quantile, value in state["quantiles"].items():
                family.add_sample("rpc_duration_seconds", {"quantile": quantile}, value)
            family.add_sample("rpc_duration_seconds_count", {}, state["rpc"][0])
            family.add_sample("rpc_duration_seconds_sum", {}, state["rpc"][1])
            yield family
        if state["stamped"] is not None:
            family = GaugeMetricFamily("stamped_value", "A gauge with the exporter's own timestamp")
            family.add_metric([], state["stamped"][0], timestamp=state["stamped"][1])
            yield family
        if state["many"]:
            family = GaugeMetricFamily("many_series", "Lots of series", labels=["n"])
            for n in range(state["many"]):
                family.add_metric([str(n)], n)
            yield family
        if state["odd"]:
            family = GaugeMetricFamily("odd_labels", "Label values that lose characters", labels=["path"])
            for path, value in state["odd"].items():
                family.add_metric([path], value)
            yield family


REGISTRY.register(Extra())
server, _ = start_http_server(0, addr="127.0.0.1")
print(server.server_port, flush=True)
for line in sys.stdin:
    command = json.loads(line)
    op = command.pop("op")
    if op == "inc":
        requests.labels(command["method"], command["code"]).inc(command["by"])
    elif op == "reset":  # the series starts again from 0, as after a restart of the exporter
        requests.remove(command["method"], command["code"])
    elif op == "set":
        temperature.set(command["value"])
    elif op == "observe":
        latency.observe(command["value"])
        payload.observe(command["value"])
    elif op == "state":
        state.update(command)
    print("ok", flush=True)
"""


@dataclass
class Exporter:
    """The exporter subprocess: its URL and a way to change what it exposes."""

    process: subprocess.Popen
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def do(self, op: str, **args: object) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == "ok"


@pytest.fixture
def exporter() -> Iterator[Exporter]:
    process = subprocess.Popen(
        [sys.executable, "-c", EXPORTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
    )
    try:
        assert process.stdout is not None
        yield Exporter(process, int(process.stdout.readline()))
    finally:
        process.kill()
        process.wait(10)


def by_metric(readings: list[Reading]) -> dict[str, Reading]:
    out: dict[str, Reading] = {}
    for reading in readings:
        assert reading.metric not in out, f"two readings of {reading.metric} in one scrape"
        out[reading.metric] = reading
    return out


def rate_between(first: Reading, second: Reading) -> float:
    return (second.value - first.value) / ((second.ts - first.ts) / 1e6)


# --- The naming rule -------------------------------------------------------------------------------


def test_the_naming_rule_appends_labels_in_name_order_and_keeps_the_key_charset() -> None:
    assert series_metric("http_requests_total", {"method": "get", "code": "200"}) == (
        "http_requests_total.code:200.method:get"
    )
    assert series_metric("node_filesystem_avail_bytes", {"mountpoint": "/var/lib", "fstype": "ext4"}) == (
        "node_filesystem_avail_bytes.fstype:ext4.mountpoint:_var_lib"
    )
    assert series_metric("up", {"instance": "web-01:9100", "empty": ""}) == "up.instance:web-01:9100"
    assert series_metric("rpc_seconds", {"quantile": "0.99"}) == "rpc_seconds.quantile:0_99"
    assert series_metric(":recorded:rate5m", {}) == "_:recorded:rate5m"
    hostile = series_metric("ünïcode.name", {"lä bel": "a.b/c\nd\u2028", "x": "\x00"})
    assert KEY_RE.match(hostile), hostile
    assert ".rate" not in hostile and ".mean" not in hostile


def test_a_name_too_long_for_a_key_keeps_its_head_and_ends_in_a_hash() -> None:
    source = "s" * 120
    long_a = series_metric("m", {"path": "a" * 300})
    long_b = series_metric("m", {"path": "a" * 299 + "b"})
    fitted_a, fitted_b = fit_metric(source, long_a), fit_metric(source, long_b)
    assert fitted_a != fitted_b  # the hash keeps them apart
    assert fitted_a.startswith("m.path:aaa")
    for fitted in (fitted_a, fitted_b):
        assert len(f"{source}.{fitted}.rate") == 200
        validation.check_keys(source, fitted + ".rate")
    assert fit_metric("short", "m.path:x") == "m.path:x"


def test_the_collector_copies_of_the_ingest_limits_match_the_validation_module() -> None:
    # collectors/prometheus.py keeps its own copies so that it does not need Django.
    assert prometheus.MAX_SOURCE_LEN == validation.MAX_SOURCE_LEN
    assert prometheus.MAX_ABS_VALUE == validation.MAX_ABS_VALUE
    assert prometheus.KEY_RE.pattern == KEY_RE.pattern
    assert prometheus.SOURCE_KINDS == validation.SOURCE_KINDS
    with pytest.raises(validation.InvalidReading):
        validation.check_keys("s", "x" * 199)  # and the 200-character key limit is what fit_metric assumes


# --- Configuration ---------------------------------------------------------------------------------


def test_the_registry_builds_it_and_the_default_source_is_the_job_and_instance() -> None:
    collector = build({"kind": "prometheus", "targets": ["http://127.0.0.1:9100/metrics"], "interval_s": 15})
    assert isinstance(collector, PrometheusCollector)
    assert collector.targets[0].source == "prometheus.127.0.0.1:9100"
    assert collector.timeout_s == 10.0
    named = build(
        {
            "kind": "prometheus",
            "job": "Node",
            "targets": ["http://Web-01.example.org:9100/metrics", {"url": "http://db:9187/", "source": "db.main"}],
        }
    )
    assert [t.source for t in named.targets] == ["node.web-01.example.org:9100", "db.main"]
    single = build({"kind": "prometheus", "source": "pulseboard", "targets": [{"url": "http://a:1/metrics"}]})
    assert single.targets[0].source == "pulseboard"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"bearer_token": "s3cret"}, "secret in the config file"),
        ({"password": "s3cret"}, "secret in the config file"),
        ({"headers": {"authorization": "Bearer s3cret"}}, "no literal Authorization"),
        ({"bearer_token_env": "PB_TEST_UNSET_VARIABLE"}, "'PB_TEST_UNSET_VARIABLE', which is not set"),
        ({"targets": ["http://user:pw@127.0.0.1:1/metrics"]}, "carries credentials"),
        ({"targets": ["ftp://127.0.0.1/metrics"]}, "http:// or https://"),
        ({"targets": []}, "at least one target"),
        ({"targets": ["http://a:1/m", {"url": "http://b:1/m", "source": "prometheus.a:1"}]}, "same source"),
        ({"timeout_s": 20}, "at most interval_s"),
        ({"max_series": 0}, "max_series"),
        ({"metrics_allow": ["re:(unclosed"]}, "bad regular expression"),
        ({"metric_allow": ["typo"]}, "unknown options metric_allow"),
        ({"targets": [{"url": "http://a:1/m", "source": ".bad"}]}, "not starting with"),
        ({"source": "one", "targets": ["http://a:1/m", "http://b:1/m"]}, "single target"),
        ({"source_kind": "exporter"}, "source_kind must be one of"),
        ({"max_body_bytes": 0}, "max_body_bytes"),
    ],
)
def test_bad_or_secret_bearing_configuration_is_refused_with_a_reason(options: dict, message: str) -> None:
    config = {"kind": "prometheus", "targets": ["http://127.0.0.1:9100/metrics"], "interval_s": 10, **options}
    with pytest.raises(ValueError, match=message):
        build(config)


# --- Scrapes of a real exporter process ----------------------------------------------------------------


async def test_a_scrape_maps_every_series_by_the_rule_with_kinds_units_and_the_scrape_health(
    exporter: Exporter,
) -> None:
    exporter.do("inc", method="get", code="200", by=3)
    exporter.do("set", value=61.5)
    exporter.do("observe", value=0.3)
    collector = PrometheusCollector(targets=[exporter.url])
    readings = await collector.scrape_once()
    found = by_metric(readings)
    source = f"prometheus.127.0.0.1:{exporter.port}"
    assert {r.source for r in readings} == {source}
    requests = found["app_requests_total.code:200.method:get"]
    assert (requests.value, requests.kind, requests.unit) == (3.0, "counter", "")
    temperature = found["app_temperature_celsius"]
    assert (temperature.value, temperature.kind, temperature.unit) == (61.5, "gauge", "°C")
    assert found["app_latency_seconds_count"].value == 1 and found["app_latency_seconds_count"].kind == "counter"
    assert found["app_latency_seconds_sum"].value == pytest.approx(0.3) and found["app_latency_seconds_sum"].unit == "s"
    assert found["app_payload_bytes_sum"].unit == "B"
    # prometheus_client's own process and platform series come through too.
    assert any(m.startswith("python_info.implementation:CPython.major:3.") for m in found)
    assert not any(m.endswith("_created") or "_bucket" in m for m in found)  # bookkeeping and buckets: off
    assert not any(m.endswith(".rate") or m.endswith(".mean") for m in found)  # the first scrape has no interval
    assert found["scrape.up"].value == 1 and found["scrape.duration"].unit == "s"
    assert found["scrape.series"].value == sum(1 for m in found if not m.startswith("scrape."))
    assert found["scrape.filtered"].value > 0  # buckets and _created
    assert found["scrape.samples"].value == found["scrape.series"].value + found["scrape.filtered"].value
    assert requests.labels["job"] == "prometheus" and requests.labels["instance"] == f"127.0.0.1:{exporter.port}"
    for reading in readings:
        check_reading(reading)  # every reading passes the ingest rules as it is


async def test_a_counter_rate_is_the_increase_per_second_between_scrapes_and_survives_a_reset(
    exporter: Exporter,
) -> None:
    key = "app_requests_total.code:200.method:get"
    exporter.do("inc", method="get", code="200", by=10)
    collector = PrometheusCollector(targets=[exporter.url])
    first = by_metric(await collector.scrape_once())
    assert key + ".rate" not in first
    exporter.do("inc", method="get", code="200", by=30)
    second = by_metric(await collector.scrape_once())
    assert second[key].value == 40
    rate = second[key + ".rate"]
    assert rate.value == pytest.approx(30 / ((second[key].ts - first[key].ts) / 1e6))
    assert (rate.kind, rate.unit, rate.ts) == ("rate", "/s", second[key].ts)
    # The exporter's series starts again from 0 (a restart): the increase is the new value, never negative.
    exporter.do("reset", method="get", code="200")
    exporter.do("inc", method="get", code="200", by=4)
    third = by_metric(await collector.scrape_once())
    assert third[key].value == 4
    assert third[key + ".rate"].value == pytest.approx(4 / ((third[key].ts - second[key].ts) / 1e6))
    assert third[key + ".rate"].value > 0
    print(f"rates: {rate.value:.1f}/s then {third[key + '.rate'].value:.1f}/s after the reset")


async def test_histograms_and_summaries_reduce_to_count_sum_mean_and_quantiles(exporter: Exporter) -> None:
    for value in (0.05, 0.3, 0.7):
        exporter.do("observe", value=value)
    exporter.do("state", quantiles={"0.5": 0.12, "0.99": 0.9}, rpc=[10, 2.0])
    collector = PrometheusCollector(targets=[exporter.url], buckets=True)
    first = by_metric(await collector.scrape_once())
    assert first["rpc_duration_seconds.quantile:0_5"].value == 0.12
    assert first["rpc_duration_seconds.quantile:0_99"].kind == "gauge"
    assert first["rpc_duration_seconds.quantile:0_99"].unit == "s"
    buckets = {m: r.value for m, r in first.items() if m.startswith("app_latency_seconds_bucket")}
    assert buckets == {
        "app_latency_seconds_bucket.le:0_1": 1,
        "app_latency_seconds_bucket.le:0_5": 2,
        "app_latency_seconds_bucket.le:1_0": 3,
        "app_latency_seconds_bucket.le:_Inf": 3,
    }
    assert "app_latency_seconds.mean" not in first  # no previous scrape to take a difference from
    exporter.do("observe", value=0.9)
    exporter.do("observe", value=0.5)
    exporter.do("state", rpc=[14, 3.0])
    second = by_metric(await collector.scrape_once())
    assert second["app_latency_seconds.mean"].value == pytest.approx((0.9 + 0.5) / 2)
    assert second["app_latency_seconds.mean"].unit == "s"
    assert second["app_payload_bytes.mean"].value == pytest.approx(0.7)
    assert second["app_payload_bytes.mean"].unit == "B"
    assert second["rpc_duration_seconds.mean"].value == pytest.approx(1.0 / 4)
    assert second["app_latency_seconds_count.rate"].kind == "rate"
    assert second["app_latency_seconds_bucket.le:1_0.rate"].value > 0
    # No observations in an interval: no mean (rather than 0/0).
    third = by_metric(await collector.scrape_once())
    assert "app_latency_seconds.mean" not in third and third["app_latency_seconds_count.rate"].value == 0


async def test_an_exporter_timestamp_is_kept_and_missing_ones_are_the_scrape_time(exporter: Exporter) -> None:
    stamped_s = int(time.time()) - 30 + 0.125  # exact in binary: the exporter truncates seconds * 1000 to an int
    exporter.do("state", stamped=[7.0, stamped_s])
    collector = PrometheusCollector(targets=[exporter.url])
    before = time.time_ns() // 1000
    found = by_metric(await collector.scrape_once())
    assert found["stamped_value"].ts == int(stamped_s * 1000) * 1000  # the exposition carries whole ms
    assert before <= found["app_temperature_celsius"].ts == found["scrape.up"].ts <= time.time_ns() // 1000


async def test_allow_and_deny_lists_and_the_series_cap_count_what_they_leave_out(
    exporter: Exporter, caplog: pytest.LogCaptureFixture
) -> None:
    exporter.do("state", many=50)
    exporter.do("inc", method="get", code="200", by=1)
    collector = PrometheusCollector(
        targets=[exporter.url],
        metrics_allow=["app_*", "re:many_.*"],
        metrics_deny=["app_temperature_*", "app_payload_bytes"],
        max_series=20,
    )
    with caplog.at_level(logging.WARNING, logger="collectors.prometheus"):
        first = by_metric(await collector.scrape_once())
        second = by_metric(await collector.scrape_once())
    kept = [m for m in first if not m.startswith("scrape.")]
    assert len(kept) == 20 and first["scrape.series"].value == 20
    assert "app_requests_total.code:200.method:get" in kept and "app_latency_seconds_count" in kept
    assert not any(m.startswith(("app_temperature", "app_payload", "python_", "process_")) for m in kept)
    # app_requests (1) + app_latency count and sum (2) are kept; then 17 of the 50 many_series fit.
    assert sum(1 for m in kept if m.startswith("many_series")) == 17
    assert first["scrape.cut"].value == 33 and second["scrape.cut"].value == 66  # a counter since start
    assert first["scrape.filtered"].value > 0
    cut_logs = [r for r in caplog.records if "max_series" in r.getMessage()]
    assert len(cut_logs) == 1, "logged once per target, not at every scrape"


async def test_two_series_that_map_to_one_key_are_refused_and_counted_not_merged(
    exporter: Exporter, caplog: pytest.LogCaptureFixture
) -> None:
    exporter.do("state", odd={"/a/b": 1.0, "/a.b": 2.0, "/c": 3.0})
    collector = PrometheusCollector(targets=[exporter.url])
    with caplog.at_level(logging.WARNING, logger="collectors.prometheus"):
        first = by_metric(await collector.scrape_once())
        second = by_metric(await collector.scrape_once())
    assert first["odd_labels.path:_c"].value == 3.0
    assert first["odd_labels.path:_a_b"].value in (1.0, 2.0)
    assert second["odd_labels.path:_a_b"].value == first["odd_labels.path:_a_b"].value  # the same owner each time
    assert first["scrape.collisions"].value == 1 and second["scrape.collisions"].value == 2
    assert sum("both map to the key" in r.getMessage() for r in caplog.records) == 1


# --- Hostile expositions: every sample is kept or counted, every reading is storable ----------------

label_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,6}", fullmatch=True).filter(lambda n: not n.startswith("__"))
metric_names = st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,10}", fullmatch=True)
label_values = st.text(st.characters(codec="utf-8"), max_size=12) | st.sampled_from(["/a/b", "/a.b", "0.99", ""])
sample_values = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**70), 2**70)
FAMILY_KINDS = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily}


@st.composite
def expositions(draw: st.DrawFn) -> bytes:
    """A text exposition written by prometheus_client itself, from families with hostile names and values."""
    registry = CollectorRegistry()
    families = []
    for name in draw(st.lists(metric_names, min_size=1, max_size=5, unique_by=lambda n: n.removesuffix("_total"))):
        kind = draw(st.sampled_from([*FAMILY_KINDS, "histogram", "summary"]))
        labels = draw(st.lists(label_names, max_size=3, unique=True))
        if kind == "histogram":
            family = HistogramMetricFamily(name, "h", labels=labels)
            for _ in range(draw(st.integers(0, 3))):
                family.add_metric(
                    [draw(label_values) for _ in labels], [("0.5", 1.0), ("+Inf", 2.0)], draw(sample_values)
                )
        elif kind == "summary":
            family = SummaryMetricFamily(name, "s", labels=labels)
            for _ in range(draw(st.integers(0, 3))):
                family.add_metric([draw(label_values) for _ in labels], draw(st.integers(0, 9)), draw(sample_values))
        else:
            family = FAMILY_KINDS[kind](name, "x", labels=labels)
            for _ in range(draw(st.integers(0, 4))):
                stamp = draw(st.none() | st.floats(0, 4e9))
                family.add_metric([draw(label_values) for _ in labels], draw(sample_values), timestamp=stamp)
        families.append(family)

    class Fixed:
        def collect(self):
            return families

    registry.register(Fixed())
    return generate_latest(registry)


def assert_storable_and_accounted(collector: PrometheusCollector, body: bytes) -> None:
    target = collector.targets[0]
    lost_before = target.cut + target.collisions + target.skipped
    try:
        result = collector.readings(target, body, "text/plain", now_us())
    except Exception:
        return  # scrape() counts it as a failed scrape; nothing of the body is stored
    metrics = [r.metric for r in result.readings]
    assert len(metrics) == len(set(metrics)), "two readings of one key in one scrape"
    for reading in result.readings:
        validation.check_keys(reading.source, reading.metric)
        validation.check_value(reading.value)
    lost = target.cut + target.collisions + target.skipped - lost_before
    assert result.samples == result.series + result.filtered + lost, "a sample neither kept nor counted"


@pytest.mark.sqlite_only  # no database: the PostgreSQL pass would only repeat it
@hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(expositions(), min_size=1, max_size=3), st.integers(1, 12), st.booleans())
def test_generated_expositions_give_storable_readings_and_count_every_sample_left_out(
    bodies: list[bytes], max_series: int, buckets: bool
) -> None:
    collector = PrometheusCollector(
        targets=[{"url": "http://127.0.0.1:1/metrics", "source": "s" * 60}], max_series=max_series, buckets=buckets
    )
    for body in bodies:  # consecutive scrapes: rates, means, resets and collisions across them
        assert_storable_and_accounted(collector, body)


@pytest.mark.sqlite_only
@hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.sampled_from(
            ["# TYPE a counter", "# TYPE a histogram", "# HELP a x", "a_total 1", 'a{le="1"} 2', "a_count 3"]
        )
        | st.text(st.sampled_from(list('ab_{}="=, #\\n\t0.9eE+-InfNaN\xff')), max_size=30),
        max_size=12,
    ).map(lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass"))
    | st.binary(max_size=200)
)
def test_junk_bodies_are_refused_whole_or_give_storable_readings(body: bytes) -> None:
    collector = PrometheusCollector(targets=["http://127.0.0.1:1/metrics"], buckets=True)
    assert_storable_and_accounted(collector, body)


# --- Failures: bad servers, hanging servers ----------------------------------------------------------------


@dataclass
class TinyHttp:
    """A loopback HTTP server answering every request with a fixed status and body; hangs if told to."""

    status: int = 200
    body: bytes = b""
    hang: bool = False
    requests: list[bytes] = field(default_factory=list)
    hanging: int = 0  # requests held open right now
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/metrics"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                if self.hang:
                    self.hanging += 1
                    try:
                        await reader.read()  # until the client gives up and closes
                    finally:
                        self.hanging -= 1
                    return
                writer.write(
                    f"HTTP/1.1 {self.status} X\r\nContent-Type: text/plain\r\nContent-Length: {len(self.body)}\r\n\r\n".encode()
                    + self.body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[TinyHttp]:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        try:
            yield self
        finally:
            self.server.close()


def unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("server", "reason"),
    [
        (TinyHttp(status=500, body=b"boom"), "HTTP 500"),
        (TinyHttp(status=200, body=b"<html><body>Sign in</body></html>\n"), "unparsable body"),
        (TinyHttp(status=200, body=b"metric_a 1\nmetric_b{broken 2\n"), "unparsable body"),
        (TinyHttp(status=200, body=b"metric_a 1\n\xff\xfe\n"), "unparsable body"),
        (TinyHttp(status=200, body=b"metric_a 1\n" * 2000), "over max_body_bytes"),
    ],
    ids=["http-500", "html", "broken-line", "not-utf8", "too-big"],
)
async def test_a_failed_scrape_is_counted_logged_once_backs_off_and_reports_up_zero(
    server: TinyHttp, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with server.running():
        collector = PrometheusCollector(targets=[server.url], interval_s=1.0, max_body_bytes=16_000)
        target = collector.targets[0]
        with caplog.at_level(logging.INFO, logger="collectors.prometheus"):
            for _ in range(3):
                found = by_metric(await collector.scrape_once())
        assert found["scrape.up"].value == 0 and found["scrape.failures"].value == 3
        assert set(found) == {"scrape.up", "scrape.duration", "scrape.failures"} | {
            "scrape.cut",
            "scrape.collisions",
            "scrape.skipped",
        }  # nothing of a broken body is stored
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and reason in warnings[0], warnings
        assert collector.next_delay(target) >= 4 * 0.9  # 1 s, doubled per failure after the first
        assert collector.errors == 3
        server.status, server.body = 200, b"metric_a 1\n"
        with caplog.at_level(logging.INFO, logger="collectors.prometheus"):
            found = by_metric(await collector.scrape_once())
        assert found["scrape.up"].value == 1 and found["metric_a"].value == 1
        assert any("answers again after 3 failed scrapes" in r.getMessage() for r in caplog.records)
        assert collector.next_delay(target) == 1.0


async def test_a_refused_connection_is_a_failed_scrape_not_an_exception() -> None:
    collector = PrometheusCollector(targets=[f"http://127.0.0.1:{unused_port()}/metrics"])
    found = by_metric(await collector.scrape_once())
    assert found["scrape.up"].value == 0 and found["scrape.failures"].value == 1


async def test_a_hanging_endpoint_times_out_without_holding_up_the_other_targets(exporter: Exporter) -> None:
    async with TinyHttp(hang=True).running() as hanging:
        collector = PrometheusCollector(
            targets=[hanging.url, exporter.url], interval_s=2.0, timeout_s=2.0, max_backoff_s=2.0
        )
        batches = collector.batches()
        exporter_batches_while_hanging = 0
        failed: dict[str, Reading] | None = None
        started = time.monotonic()
        try:
            while failed is None:
                batch = by_metric(await asyncio.wait_for(anext(batches), 30))
                source = next(iter(batch.values())).source
                if source.endswith(f":{exporter.port}"):
                    assert batch["scrape.up"].value == 1
                    # The exporter's scrape was handed over while the hanging one was still waiting.
                    exporter_batches_while_hanging += hanging.hanging
                else:
                    failed = batch
        finally:
            await batches.aclose()
        waited = time.monotonic() - started
    assert exporter_batches_while_hanging >= 1
    assert failed["scrape.up"].value == 0 and failed["scrape.failures"].value == 1
    assert collector.targets[0].failing == 1
    print(f"the hanging target's failure came after {waited:.2f} s (timeout_s = 2)")


async def test_bearer_and_basic_credentials_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PB_TEST_SCRAPE_TOKEN", "tok-123")
    monkeypatch.setenv("PB_TEST_SCRAPE_PASSWORD", "pw-456")
    monkeypatch.setenv("PB_TEST_API_KEY", "key-789")
    async with TinyHttp(body=b"metric_a 1\n").running() as server:
        await PrometheusCollector(targets=[server.url], bearer_token_env="PB_TEST_SCRAPE_TOKEN").scrape_once()
        await PrometheusCollector(
            targets=[server.url],
            basic_auth_user="scraper",
            basic_auth_password_env="PB_TEST_SCRAPE_PASSWORD",
            headers={"X-Tenant": "blue"},
            headers_env={"X-Api-Key": "PB_TEST_API_KEY"},
        ).scrape_once()
    bearer, basic = (head.decode().lower() for head in server.requests)
    assert "authorization: bearer tok-123" in bearer
    assert "authorization: basic " + base64.b64encode(b"scraper:pw-456").decode().lower() in basic
    assert "x-tenant: blue" in basic and "x-api-key: key-789" in basic
    assert "x-prometheus-scrape-timeout-seconds: 10" in bearer


# --- Pulseboard's own /metrics on a real Daphne, and a whole agent run -----------------------------------

METRICS_TOKEN = "scrape-secret-for-tests-0123456789"


@pytest.fixture(scope="module")
def pulseboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp_path = tmp_path_factory.mktemp("pulseboard")
    env = project_env(tmp_path, METRICS_TOKEN=METRICS_TOKEN, ADMIN_PASSWORD="prom-pass-123")
    with running_server(env) as server:
        manage(env, "ensureadmin")
        yield server


@pytest.mark.slow
async def test_pulseboards_own_metrics_scrape_with_the_token_and_fail_without_it(
    pulseboard: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PB_TEST_METRICS_TOKEN", METRICS_TOKEN)
    url = pulseboard.url + "/metrics"
    collector = PrometheusCollector(
        targets=[{"url": url, "source": "pulseboard"}], bearer_token_env="PB_TEST_METRICS_TOKEN"
    )
    first = by_metric(await collector.scrape_once())
    assert first["scrape.up"].value == 1
    assert first["pulseboard_ingest_accepted_total"].kind == "counter"
    assert first["pulseboard_connections"].kind == "gauge"
    assert first["pulseboard_write_batch_seconds_count"].kind == "counter"
    assert first["pulseboard_write_batch_seconds_sum"].unit == "s"
    assert "process_resident_memory_bytes" in first and first["process_resident_memory_bytes"].unit == "B"
    second = by_metric(await collector.scrape_once())
    assert second["pulseboard_ingest_accepted_total.rate"].value >= 0
    print(f"Pulseboard's /metrics: {first['scrape.samples'].value:.0f} samples, {len(second)} readings a scrape")
    for reading in second.values():
        check_reading(reading)
    anonymous = PrometheusCollector(targets=[{"url": url, "source": "pulseboard"}])
    refused = by_metric(await anonymous.scrape_once())
    assert refused["scrape.up"].value == 0 and refused["scrape.failures"].value == 1


@pytest.mark.slow
def test_an_agent_run_scrapes_both_exporters_and_the_readings_reach_storage(
    pulseboard: Server, exporter: Exporter, tmp_path: Path
) -> None:
    token_file = tmp_path / "agent-token"
    manage(pulseboard.env, "issuetoken", "prometheus test agent", "--output", str(token_file))
    exporter.do("inc", method="post", code="201", by=5)
    exporter.do("observe", value=0.25)
    config = tmp_path / "agent.toml"
    config.write_text(
        f"""
[agent]
spool_path = "{tmp_path / "spool.sqlite3"}"
flush_interval_s = 0.2
name = "prom-test"

[[collectors]]
kind = "prometheus"
name = "app"
interval_s = 0.5
targets = [{{ url = "{exporter.url}", source = "app.exporter" }}]
metrics_allow = ["app_*"]

[[collectors]]
kind = "prometheus"
name = "self"
interval_s = 0.5
targets = [{{ url = "{pulseboard.url}/metrics", source = "pulseboard" }}]
bearer_token_env = "METRICS_TOKEN"
metrics_allow = ["pulseboard_*"]
"""
    )
    agent = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "runcollectors",
            "--config",
            str(config),
            "--server",
            pulseboard.url,
            "--token-file",
            str(token_file),
        ],
        cwd=ROOT,
        env=pulseboard.env,  # holds METRICS_TOKEN, as `serve` passes it to its agent
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wanted = [
        "app.exporter.app_requests_total.code:201.method:post",
        "app.exporter.app_requests_total.code:201.method:post.rate",
        "app.exporter.app_latency_seconds_count",
        "app.exporter.scrape.up",
        "pulseboard.pulseboard_ingest_accepted_total",
        "pulseboard.pulseboard_ingest_accepted_total.rate",
        "pulseboard.scrape.up",
    ]
    try:
        cookies = login_cookies(pulseboard, "admin", "prom-pass-123")
        series: dict[str, dict] = {}
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=pulseboard.url, cookies=cookies) as client:
            while time.monotonic() < deadline:
                answer = client.get("/api/v1/series", params={"metric": wanted, "from": "-10m", "points": 1000})
                # 400 "does not exist" until the agent's first batches have created every metric.
                assert answer.status_code in (200, 400), answer.text[:500]
                if answer.status_code == 200:
                    series = {s["key"]: s for s in answer.json()["series"] if s["t"]}
                    accepted = series.get("pulseboard.pulseboard_ingest_accepted_total", {"max": [0]})["max"][-1]
                    if set(series) == set(wanted) and accepted > 0:
                        break
                assert agent.poll() is None, agent.stderr.read().decode()[-3000:] if agent.stderr else ""
                time.sleep(0.3)  # polling a condition with a deadline
        assert set(series) == set(wanted), set(wanted) - set(series)
        assert series["app.exporter.app_requests_total.code:201.method:post"]["max"][-1] == 5
        assert series["app.exporter.app_requests_total.code:201.method:post.rate"]["min"][-1] == 0
        assert series["app.exporter.scrape.up"]["min"] == [1.0] * len(series["app.exporter.scrape.up"]["min"])
        # The server counted the agent's own posts: its ingest counter, scraped back, went up.
        assert series["pulseboard.pulseboard_ingest_accepted_total"]["max"][-1] > 0
        # The demo board of Pulseboard's own health (demodashboards) names keys this scrape makes.
        from fnmatch import fnmatchcase

        from dashboard.management.commands.demodashboards import pulseboard_board

        with httpx.Client(base_url=pulseboard.url, cookies=cookies) as client:
            keys = [m["key"] for m in client.get("/api/v1/metrics").json()["metrics"]]
        for spec in pulseboard_board()[1]:
            for pattern in spec["metrics"]:
                if "rejected" in pattern or "failures" in pattern or "dropped" in pattern or ".mean" in pattern:
                    continue  # series that appear with their first rejection, failure, drop or second write
                assert any(fnmatchcase(k, pattern) for k in keys), (spec["title"], pattern)
    finally:
        agent.terminate()
        agent.wait(20)


# --- The demo: `manage.py serve` (make run) scrapes its own /metrics ---------------------------------------


def test_the_serve_agent_config_is_the_default_set_plus_a_tokened_self_scrape(
    settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tomllib

    from dashboard.management.commands.runcollectors import DEFAULT_COLLECTORS
    from dashboard.management.commands.serve import write_default_agent_config

    settings.VAR_DIR = tmp_path
    path = write_default_agent_config("http://127.0.0.1:8123/")
    text = path.read_text()
    assert "METRICS_TOKEN" in text and "Bearer" not in text  # the variable's name, never a secret
    config = tomllib.loads(text)
    assert config["collectors"][:-1] == DEFAULT_COLLECTORS
    monkeypatch.setenv("METRICS_TOKEN", "t" * 40)
    scrape = build(config["collectors"][-1])
    assert isinstance(scrape, PrometheusCollector)
    assert [(t.url, t.source) for t in scrape.targets] == [("http://127.0.0.1:8123/metrics", "pulseboard")]
    assert scrape.headers["Authorization"] == "Bearer " + "t" * 40


@pytest.mark.slow
def test_serve_shows_pulseboards_own_metrics_without_any_configuration(tmp_path: Path) -> None:
    env = project_env(tmp_path, ADMIN_PASSWORD="serve-pass-123")
    env.pop("METRICS_TOKEN", None)
    port = free_port()
    serve = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    wanted = ["pulseboard.scrape.up", "pulseboard.pulseboard_ingest_accepted_total"]
    try:
        deadline = time.monotonic() + 90
        found: dict[str, dict] = {}
        cookies = None
        while time.monotonic() < deadline and set(found) != set(wanted):
            assert serve.poll() is None, serve.stderr.read().decode()[-3000:] if serve.stderr else ""
            try:
                cookies = cookies or login_cookies(url, "admin", "serve-pass-123")
                answer = httpx.get(url + "/api/v1/series", params={"metric": wanted, "from": "-10m"}, cookies=cookies)
            except (httpx.HTTPError, AttributeError):  # not listening yet, or no login form yet
                answer = None
            if answer is not None and answer.status_code == 200:
                found = {s["key"]: s for s in answer.json()["series"] if s["t"]}
            time.sleep(0.5)  # polling a condition with a deadline
        assert set(found) == set(wanted), "serve's agent never stored its scrape of /metrics"
        assert found["pulseboard.scrape.up"]["max"][-1] == 1
        # Without a METRICS_TOKEN of ours, /metrics stays closed to anyone else.
        assert httpx.get(url + "/metrics").status_code == 403
    finally:
        serve.terminate()
        serve.wait(30)


async def test_a_series_repeated_in_one_exposition_is_kept_once_and_the_repeat_counted() -> None:
    # Found by the generated expositions above: two readings of one key in one batch.
    body = b'# TYPE a gauge\na{x="1"} 1\na{x="1"} 2\n# TYPE c counter\nc_total 5\nc_total 6\n'
    async with TinyHttp(body=body).running() as server:
        found = by_metric(await PrometheusCollector(targets=[server.url]).scrape_once())
    assert found["a.x:1"].value == 1 and found["c_total"].value == 5
    assert found["scrape.collisions"].value == 2 and found["scrape.series"].value == 2
