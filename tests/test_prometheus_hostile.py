"""The prometheus collector against hostile exporters: a raw local HTTP server that answers whatever a test scripts."""

from __future__ import annotations

import asyncio
import gzip
import resource
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from collectors.prometheus import PrometheusCollector
from dashboard.validation import Reading

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], "asyncio.Future[None] | None"]


@dataclass
class Hostile:
    """A loopback HTTP server whose answer is a coroutine given the request head; it records every request."""

    answer: Callable
    requests: list[bytes] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(head)
            await self.answer(reader, writer, head)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Hostile]:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()


def reply(body: bytes, *headers: str, status: str = "200 OK") -> Callable:
    async def answer(reader, writer, head) -> None:
        extra = "".join(f"{h}\r\n" for h in headers)
        writer.write(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body)
        await writer.drain()

    return answer


def by_metric(readings: list[Reading]) -> dict[str, Reading]:
    return {r.metric: r for r in readings}


async def test_a_redirect_to_another_host_is_not_followed_and_no_secret_header_reaches_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EXPORTER_KEY", "s3cret-key")
    monkeypatch.setenv("EXPORTER_TOKEN", "s3cret-token")
    elsewhere = Hostile(reply(b"stolen 1\n"))
    async with elsewhere.running():
        redirect = Hostile(reply(b"", f"Location: http://localhost:{elsewhere.port}/metrics", status="302 Found"))
        async with redirect.running():
            for auth in ({"bearer_token_env": "EXPORTER_TOKEN"}, {}):
                collector = PrometheusCollector(
                    targets=[redirect.url], headers_env={"X-Api-Key": "EXPORTER_KEY"}, **auth
                )
                found = by_metric(await collector.scrape_once())
                assert found["scrape.up"].value == 0 and "stolen" not in found
    leaked = [h for h in elsewhere.requests if b"s3cret" in h]
    assert not leaked, leaked
    assert redirect.requests and all(b"s3cret-key" in h for h in redirect.requests)


async def test_a_redirect_on_the_same_host_is_followed() -> None:
    async def answer(reader, writer, head) -> None:
        if head.startswith(b"GET /metrics "):
            await reply(b"", "Location: /real-metrics", status="301 Moved")(reader, writer, head)
        else:
            await reply(b"app_up 1\n")(reader, writer, head)

    async with Hostile(answer).running() as server:
        found = by_metric(await PrometheusCollector(targets=[server.url]).scrape_once())
    assert found["scrape.up"].value == 1 and found["app_up"].value == 1


async def test_a_gzip_bomb_is_cut_at_max_body_bytes_without_inflating_it() -> None:
    bomb = gzip.compress(b"a 1\n" * (64 * 1024 * 1024 // 4), compresslevel=9)  # 64 MiB that gzip to ~64 KB
    async with Hostile(reply(bomb, "Content-Encoding: gzip", "Content-Type: text/plain")).running() as server:
        collector = PrometheusCollector(targets=[server.url], max_body_bytes=1024 * 1024)
        tracemalloc.start()
        found = by_metric(await collector.scrape_once())
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    print(f"gzip bomb of {len(bomb):,} bytes (64 MiB inflated): peak traced memory {peak / 2**20:.1f} MiB")
    assert found["scrape.up"].value == 0
    assert peak < 8 * 1024 * 1024  # the bomb is never inflated whole, nor a network chunk's worth past the cap


async def test_an_endless_drip_is_cut_by_the_scrape_timeout_and_other_targets_keep_going() -> None:
    async def drip(reader, writer, head) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        while True:
            writer.write(b"4\r\na 1\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)

    async with Hostile(drip).running() as slow, Hostile(reply(b"ok_up 1\n")).running() as good:
        collector = PrometheusCollector(targets=[slow.url, good.url], interval_s=1.0, timeout_s=1.0)
        found = await collector.scrape_once()
    health = {(r.source, r.metric): r.value for r in found}
    assert health[(collector.targets[0].source, "scrape.up")] == 0
    assert health[(collector.targets[1].source, "scrape.up")] == 1
    assert health[(collector.targets[1].source, "ok_up")] == 1


@pytest.mark.parametrize(
    "line",
    [
        b"a 1 99999999999999999999999",  # ms timestamps past int64
        b"a 1 -99999999999999999999999",
        b"a 1 9223372036854775807",
        b"a 1 1e300",
    ],
)
async def test_an_absurd_exporter_timestamp_is_skipped_and_counted_not_sent(line: bytes) -> None:
    async with Hostile(reply(line + b"\nb 2\n")).running() as server:
        collector = PrometheusCollector(targets=[server.url])
        found = by_metric(await collector.scrape_once())
    assert "a" not in found, found.get("a")
    assert found["b"].value == 2 and found["scrape.skipped"].value == 1


async def test_label_values_with_every_character_give_keys_of_the_key_charset() -> None:
    value = "".join(chr(c) for c in range(1, 0x250) if chr(c) not in '"\\\n')
    body = f'odd{{l="{value}",m="\\\\\\"\\n"}} 1\nodd{{l=""}} 2\n'.encode()
    async with Hostile(reply(body)).running() as server:
        readings = await PrometheusCollector(targets=[server.url]).scrape_once()
    from dashboard.validation import check_reading

    odd = [r for r in readings if r.metric.startswith("odd")]
    assert len(odd) == 2
    for reading in odd:
        check_reading(reading)


@pytest.mark.slow  # a million series: 4 s; make test-fast leaves it out
async def test_a_million_series_body_is_bounded_in_memory_and_cut_at_max_series() -> None:
    """10 MiB of one-character series (~870,000 of them): parsed, cut at max_series, counted."""
    body = b"".join(b'a{l="%d"} 1\n' % i for i in range(870_000))[: 10 * 1024 * 1024]
    body = body[: body.rindex(b"\n") + 1]
    async with Hostile(reply(body)).running() as server:
        collector = PrometheusCollector(targets=[server.url], timeout_s=10.0, interval_s=10.0)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        found = by_metric(await collector.scrape_once())
        took = time.perf_counter() - started
        grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    lines = body.count(b"\n")
    print(f"{lines:,} series in {len(body):,} bytes: {took:.1f} s, peak RSS grew {grew / 1024:.0f} MiB")
    assert found["scrape.up"].value == 1
    assert found["scrape.series"].value == 1000 and found["scrape.cut"].value == lines - 1000
