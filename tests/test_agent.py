"""The agent's spool and HTTP sink: durable, bounded, in order, retried with backoff, healthy and visible."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from collectors.counter import CounterCollector
from collectors.runner import Runner
from collectors.sinks import HttpSink
from collectors.spool import Spool
from dashboard.timeutil import now_us
from dashboard.validation import Reading

pytestmark = pytest.mark.usefixtures("clock")


def readings(start: int, count: int, source: str = "test.spool") -> list[Reading]:
    ts = now_us()
    return [Reading(source, "n", ts + i, float(start + i), labels={"k": "v"}) for i in range(count)]


# --- Spool ----------------------------------------------------------------------------------------


async def test_the_spool_returns_readings_in_order_and_forgets_them_only_when_told(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite3")
    await spool.append(readings(0, 5))
    await spool.append(readings(5, 5))
    last_id, batch = await spool.peek(4)
    assert [r.value for r in batch] == [0, 1, 2, 3]
    assert batch[0].labels == {"k": "v"}
    _, again = await spool.peek(4)
    assert [r.value for r in again] == [0, 1, 2, 3]  # peeking removes nothing
    await spool.delete_through(last_id)
    assert spool.depth == 6
    _, rest = await spool.peek(100)
    assert [r.value for r in rest] == [4, 5, 6, 7, 8, 9]
    spool.close()


async def test_the_spool_survives_a_restart_of_the_agent(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite3")
    await spool.append(readings(0, 3))
    spool.close()
    reopened = Spool(tmp_path / "spool.sqlite3")
    assert reopened.depth == 3
    await reopened.append(readings(3, 1))
    _, batch = await reopened.peek(10)
    assert [r.value for r in batch] == [0, 1, 2, 3]
    reopened.close()


async def test_a_full_spool_drops_the_oldest_and_says_so_loudly(tmp_path: Path, caplog) -> None:
    spool = Spool(tmp_path / "spool.sqlite3", max_readings=10)
    await spool.append(readings(0, 8))
    with caplog.at_level(logging.ERROR, logger="collectors.spool"):
        dropped = await spool.append(readings(8, 5))
    assert dropped == 3
    assert spool.dropped == 3 and spool.depth == 10
    _, batch = await spool.peek(100)
    assert [r.value for r in batch] == list(range(3, 13))
    assert any("dropped the 3 oldest, 3 dropped since start" in r.getMessage() for r in caplog.records)
    spool.close()


# --- HttpSink against a scripted server -------------------------------------------------------------


@dataclass
class ScriptedServer:
    """A tiny HTTP server that answers each POST with the next scripted status (and body), then 200."""

    script: list[tuple]
    bodies: list[dict] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                body = json.loads(await reader.readexactly(length))
                status, headers, *answer = self.script.pop(0) if self.script else (200, {})
                self.statuses.append(status)
                if status == 200 and not answer:  # what a real server would have stored
                    self.bodies.append(body)
                default = {"accepted": len(body["samples"]), "duplicates": 0, "rejected": []}
                payload = json.dumps(answer[0] if answer else default).encode()
                extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n{extra}\r\n".encode()
                    + payload
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> ScriptedServer:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


def sink_for(url: str, tmp_path: Path, **options: object) -> HttpSink:
    defaults: dict = {"batch_size": 10, "flush_interval_s": 0.05, "health_interval_s": 60.0, "agent_name": "test-box"}
    return HttpSink(url, "pb_x_y", spool_path=tmp_path / "spool.sqlite3", **{**defaults, **options})


async def run_until(sink: HttpSink, done, timeout_s: float = 15.0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    try:
        async with asyncio.timeout(timeout_s):
            while not done():
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await task


def values_sent(server: ScriptedServer, source: str = "test.spool") -> list[float]:
    return [s["value"] for body in server.bodies for s in body["samples"] if s["source"] == source]


async def test_the_sink_retries_5xx_and_429_then_delivers_everything_in_order(tmp_path: Path) -> None:
    async with ScriptedServer([(503, {}), (429, {"Retry-After": "0"}), (502, {})]) as server:
        sink = sink_for(server.url, tmp_path)
        for start in range(0, 30, 10):
            await sink.put(readings(start, 10))
        await run_until(sink, lambda: len(values_sent(server)) >= 30)
    assert values_sent(server) == [float(i) for i in range(30)]
    assert server.statuses[:3] == [503, 429, 502]
    assert sink.send_errors == 3
    assert sink.status()["spooled"] == 0


async def test_the_sink_honours_retry_after(tmp_path: Path) -> None:
    async with ScriptedServer([(429, {"Retry-After": "1"})]) as server:
        sink = sink_for(server.url, tmp_path)
        await sink.put(readings(0, 3))
        loop = asyncio.get_running_loop()
        started = loop.time()
        await run_until(sink, lambda: len(values_sent(server)) >= 3)
        waited = loop.time() - started
    print(f"waited {waited:.2f} s after a 429 with Retry-After: 1")
    assert waited >= 0.9  # it waited as told (a lower bound, not a speed threshold)


async def test_the_sink_keeps_readings_while_the_server_is_down_and_sends_them_later(tmp_path: Path) -> None:
    sink = sink_for("http://127.0.0.1:9", tmp_path)  # discard port: connection refused
    await sink.put(readings(0, 5))
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    async with asyncio.timeout(15):  # the sink has tried and failed at least once
        while sink.send_errors < 1:
            await asyncio.sleep(0.02)
    stop.set()
    sink.shutdown_grace_s = 0.2
    await task
    assert sink.send_errors >= 1
    # The next agent start finds them on disk and delivers them.
    async with ScriptedServer([]) as server:
        again = sink_for(server.url, tmp_path)
        assert again.spool.depth == 5 + 8  # and one round of the agent's own health readings
        await run_until(again, lambda: len(values_sent(server)) >= 5)
    assert values_sent(server) == [0.0, 1.0, 2.0, 3.0, 4.0]


async def test_the_sink_halves_a_batch_the_server_finds_too_large(tmp_path: Path) -> None:
    async with ScriptedServer([(413, {})]) as server:
        sink = sink_for(server.url, tmp_path)
        await sink.put(readings(0, 10))
        await run_until(sink, lambda: len(values_sent(server)) >= 10)
    assert [len(b["samples"]) for b in server.bodies][0] == 5
    assert values_sent(server) == [float(i) for i in range(10)]


@pytest.mark.parametrize(
    "refusal",
    [
        (401, {}, {"error": {"code": "not_authenticated", "message": "the agent token is unknown"}}),
        (403, {}, {"error": {"code": "out_of_scope", "message": "token may not write source 'test.spool'"}}),
        (404, {}, "<html>not found</html>"),
        (400, {}, {"error": {"code": "bad_request", "message": "the body is not valid JSON"}}),
        (400, {}, {"error": {"code": "invalid_reading"}, "accepted": 0, "duplicates": 0, "rejected": [{"index": 0}]}),
        (422, {}),
        (200, {}, "<html>captive portal</html>"),
    ],
    ids=["401", "403", "404", "400-bad-request", "400-partial-rejections", "422", "200-not-an-answer"],
)
async def test_a_batch_refused_as_a_whole_goes_to_the_dead_letters_not_away(
    tmp_path: Path, caplog, refusal: tuple
) -> None:
    async with ScriptedServer([refusal, refusal]) as server:
        sink = sink_for(server.url, tmp_path, batch_size=5, max_backoff_s=0.05)
        await sink.put(readings(0, 15))
        with caplog.at_level(logging.ERROR, logger="collectors.sink"):
            await run_until(sink, lambda: len(values_sent(server)) >= 5)
        # Kept, with the server's reason, and counted; logged once for the two refusals of the same reason.
        reopened = Spool(tmp_path / "spool.sqlite3")
        _, kept = await reopened.peek_dead(100)
        reasons = await reopened.dead_reasons()
        reopened.close()
    assert [r.value for r in kept] == [float(i) for i in range(10)]
    assert values_sent(server) == [10.0, 11.0, 12.0, 13.0, 14.0]
    assert [count for _, count in reasons] == [10] and reasons[0][0].startswith(str(refusal[0]))
    assert sink.status()["dead_letters"] == 10 and sink.dropped == 0
    refused = [r for r in caplog.records if "refused a batch of 5 as a whole" in r.getMessage()]
    assert len(refused) == 1, [r.getMessage() for r in caplog.records]


async def test_repeated_5xx_moves_the_batch_to_the_dead_letters_after_the_retries(tmp_path: Path) -> None:
    from collectors.sinks import SERVER_ERROR_ATTEMPTS

    async with ScriptedServer([(500, {})] * SERVER_ERROR_ATTEMPTS) as server:
        sink = sink_for(server.url, tmp_path, batch_size=5, max_backoff_s=0.05)
        await sink.put(readings(0, 10))
        await run_until(sink, lambda: len(values_sent(server)) >= 5)
    assert values_sent(server) == [5.0, 6.0, 7.0, 8.0, 9.0]
    assert server.statuses[:SERVER_ERROR_ATTEMPTS] == [500] * SERVER_ERROR_ATTEMPTS
    reopened = Spool(tmp_path / "spool.sqlite3")
    _, kept = await reopened.peek_dead(100)
    reopened.close()
    assert [r.value for r in kept] == [0.0, 1.0, 2.0, 3.0, 4.0]


async def test_503_and_502_are_retried_forever_and_never_dead_lettered(tmp_path: Path) -> None:
    async with ScriptedServer([(503, {"Retry-After": "0"}), (502, {}), (504, {})] * 3) as server:
        sink = sink_for(server.url, tmp_path, batch_size=5, max_backoff_s=0.05)
        await sink.put(readings(0, 5))
        await run_until(sink, lambda: len(values_sent(server)) >= 5)
    assert values_sent(server) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert sink.status()["dead_letters"] == 0


async def test_a_per_sample_judgement_removes_the_batch_and_counts_the_rejected(tmp_path: Path) -> None:
    judged_all = {
        "error": {"code": "invalid_reading", "message": "no sample was accepted"},
        "accepted": 0,
        "duplicates": 0,
        "rejected": [{"index": i, "code": "invalid_reading", "reason": "ts is older"} for i in range(5)],
    }
    some = {"accepted": 3, "duplicates": 1, "rejected": [{"index": 4, "code": "invalid_reading", "reason": "bad"}]}
    async with ScriptedServer([(400, {}, judged_all), (200, {}, some)]) as server:
        sink = sink_for(server.url, tmp_path, batch_size=5)
        await sink.put(readings(0, 15))
        await run_until(sink, lambda: sink.spool.depth == 0 and len(server.statuses) >= 3)
    assert sink.rejected == 6 and sink.spool.dead == 0
    assert sink.sent + sink.rejected == 15 + 8  # and one round of the 8 health readings


def test_which_answers_are_a_per_sample_judgement() -> None:
    from collectors.sinks import judge

    ok = {"accepted": 2, "duplicates": 0, "rejected": [{"index": 2}]}
    assert judge(200, ok, 3).outcome == "judged"
    assert judge(200, {**ok, "rejected": [{"index": 3}]}, 3).outcome == "dead"  # an index outside the batch
    assert judge(200, {"accepted": 3}, 3).outcome == "dead"
    assert judge(200, None, 3).outcome == "dead"
    every = {"error": {"code": "invalid_reading"}, "accepted": 0, "duplicates": 0}
    assert judge(400, {**every, "rejected": [{"index": i} for i in range(3)]}, 3).outcome == "judged"
    assert judge(400, {**every, "rejected": [{"index": 0}, {"index": 0}, {"index": 1}]}, 3).outcome == "dead"
    assert judge(400, {"error": {"code": "bad_request"}}, 3).outcome == "dead"
    assert judge(413, None, 3).outcome == "split"
    assert judge(413, {"error": {"code": "payload_too_large", "message": "over"}}, 1).outcome == "judged"
    for status in (429, 500, 502, 503, 504):
        assert judge(status, None, 3).outcome == "retry"
    for status in (401, 403, 404, 405, 409, 422):
        assert judge(status, {"error": {"code": "x", "message": "y"}}, 3).outcome == "dead"


async def test_requeue_dead_sends_the_dead_letters_again_and_empties_them(tmp_path: Path) -> None:
    from collectors.sinks import RequeueStopped

    refusal = (401, {}, {"error": {"code": "not_authenticated", "message": "the agent token is unknown"}})
    async with ScriptedServer([refusal] * 3) as server:
        sink = sink_for(server.url, tmp_path, batch_size=5, max_backoff_s=0.05)
        await sink.put(readings(0, 15))
        await run_until(sink, lambda: sink.spool.dead == 15)
    async with ScriptedServer([(413, {}), (200, {}), refusal]) as server:
        again = sink_for(server.url, tmp_path, batch_size=10)
        progress: list[tuple[int, int]] = []
        with pytest.raises(RequeueStopped) as stopped:
            await again.requeue_dead(lambda done, total: progress.append((done, total)))
        assert stopped.value.left == 15 - 5 and stopped.value.reason.startswith("401")
        assert await again.requeue_dead(lambda done, total: progress.append((done, total))) == 10
        again.spool.close()
    assert values_sent(server) == [float(i) for i in range(15)]
    assert server.statuses == [413, 200, 401, 200]
    assert progress == [(5, 15), (10, 10)]
    reopened = Spool(tmp_path / "spool.sqlite3")
    assert reopened.dead == 0
    reopened.close()


async def test_the_sink_flushes_what_it_holds_on_stop(tmp_path: Path) -> None:
    async with ScriptedServer([]) as server:
        sink = sink_for(server.url, tmp_path, batch_size=1000, flush_interval_s=30.0)
        collector = CounterCollector(source="test.spool", interval_s=0.01, per_batch=7, limit=70)
        runner = Runner([collector], sink)
        task = asyncio.create_task(runner.run())
        while collector.produced < 70:
            await asyncio.sleep(0.01)
        runner.request_stop()  # what SIGTERM does
        await task
    assert values_sent(server) == [float(i) for i in range(70)]


# --- Health readings, through the real ingest API ---------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_the_agent_reports_its_health_as_a_source_that_goes_stale_when_silent(
    agent_token: tuple, tmp_path: Path
) -> None:
    from django.core.asgi import get_asgi_application

    from dashboard.models import Metric, Source

    transport = httpx.ASGITransport(app=get_asgi_application())
    sink = HttpSink(
        "http://testserver",
        agent_token[1],
        spool_path=tmp_path / "spool.sqlite3",
        batch_size=100,
        flush_interval_s=0.05,
        health_interval_s=0.2,
        agent_name="Edge Box 1",
        transport=transport,
    )
    await sink.put(readings(0, 3, source="test.health"))

    async def health_stored() -> bool:
        return (
            await Metric.objects.filter(key="agent.edge-box-1.spool.depth").aexists()
            and await Metric.objects.filter(key="test.health.n").aexists()
        )

    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    async with asyncio.timeout(15):
        while not await health_stored():
            await asyncio.sleep(0.05)
    stop.set()
    await task
    source = await Source.objects.aget(slug="agent.edge-box-1")
    assert source.kind == "agent"
    assert source.last_seen is not None and not source.is_stale()
    keys = {m async for m in Metric.objects.filter(source=source).values_list("name", flat=True)}
    assert {"heartbeat", "spool.depth", "last_success_age", "send_errors", "dropped", "sent"} <= keys
    # Silence: three expected intervals later it shows as stale.
    later = source.last_seen + timedelta(seconds=3 * source.expected_interval_s + 1)
    assert source.is_stale(now=later)


# --- The documented configuration ---------------------------------------------------------------


def test_the_example_config_documents_every_agent_option_and_collector_kind() -> None:
    import re
    import tomllib

    from collectors import registry

    root = Path(__file__).resolve().parent.parent
    text = (root / "collectors.example.toml").read_text()
    command = (root / "collectors/agent.py").read_text()  # pulseboard-agent; runcollectors wraps it
    options_read = set(re.findall(r'agent\.get\("(\w+)"', command))
    assert {"spool_path", "spool_max_readings", "batch_size", "flush_interval_s"} <= options_read
    config = tomllib.loads(text)
    documented = set(config["agent"]) | set(re.findall(r"^# (\w+) = ", text, re.MULTILINE))
    assert options_read <= documented, options_read - documented
    for kind in registry.COLLECTORS:
        assert f'kind = "{kind}"' in text, kind
    for table in config["collectors"]:
        registry.build(table)  # the uncommented examples are valid as written
    docs = (root / "docs/ingest.md").read_text()
    assert all(f"`{kind}`" in docs for kind in registry.COLLECTORS)
