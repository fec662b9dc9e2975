"""The guard around speed tricks on private internals: other versions and errors take the public path, once, loudly."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator

import pytest

from dashboard import fastpaths
from dashboard.fastpaths import writethrough
from dashboard.live.session import Session
from tests.test_fanout import Transport, fragment


@pytest.fixture(autouse=True)
def _fresh_guard(monkeypatch) -> Iterator[None]:
    monkeypatch.delenv("PULSEBOARD_FAST_PATHS", raising=False)
    fastpaths.reset()
    yield
    fastpaths.reset()


def test_every_fast_path_runs_on_the_locked_versions() -> None:
    """requirements.txt pins exactly what WRITTEN_FOR names: on this install every fast path is on."""
    assert fastpaths.summary() == dict.fromkeys(fastpaths.WRITTEN_FOR, True)


def test_a_version_it_was_not_written_for_turns_it_off_with_one_warning(monkeypatch, caplog) -> None:
    monkeypatch.setitem(fastpaths.WRITTEN_FOR, "wire_frames", {"autobahn": ("1.0.0",), "daphne": ("4.2.3",)})
    with caplog.at_level(logging.WARNING, logger="dashboard.fastpaths"):
        assert fastpaths.enabled("wire_frames") is False
        assert fastpaths.enabled("wire_frames") is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "autobahn" in warnings[0].getMessage() and "1.0.0" in warnings[0].getMessage()
    assert fastpaths.enabled("write_through") is True  # the others are not affected


def test_a_private_name_that_is_gone_turns_it_off(monkeypatch) -> None:
    monkeypatch.setitem(fastpaths.PRIVATE_NAMES, "server_close", fastpaths._has("json", "no_such_name"))
    assert fastpaths.enabled("server_close") is False
    assert "json.no_such_name is gone" in fastpaths.why_not("server_close")


def test_the_switch_turns_every_fast_path_off_quietly(monkeypatch, caplog) -> None:
    monkeypatch.setenv("PULSEBOARD_FAST_PATHS", "0")
    with caplog.at_level(logging.WARNING, logger="dashboard.fastpaths"):
        assert not any(fastpaths.summary().values())
    assert not caplog.records  # asked for: nothing to warn about


def handle_reply(protocol, message) -> None:  # the name Daphne's send partial carries
    protocol.replies.append(message)


class ChangedProtocol:
    """An autobahn protocol from a release whose private send queue is gone."""

    STATE_OPEN = 3
    state = 3

    def __init__(self) -> None:
        self.replies: list = []
        self.written: list[bytes] = []
        self.transport = self

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def sendPreparedMessage(self, message) -> None:  # noqa: N802 (autobahn's name)
        raise AssertionError("not used")


async def test_a_fast_path_error_falls_back_to_the_public_send_instead_of_closing_the_session(caplog) -> None:
    protocol = ChangedProtocol()
    send_wire = writethrough.wire_sender(functools.partial(handle_reply, protocol))
    assert send_wire is not None
    transport = Transport()
    transport.wire = send_wire
    session = Session(transport, max_rate=100, window=None, on_stuck=transport.stuck)
    session.add(1, "s.m", cursor=0)
    with caplog.at_level(logging.WARNING, logger="dashboard.fastpaths"):
        for ts in (1, 2, 3):
            session.offer(fragment("s.m", ts))
            await session.flush()
    assert not session.closed
    assert protocol.written == []  # nothing went past autobahn
    assert [t for frame in transport.data() for b in frame["batches"] for t in b["t"]] == [1, 2, 3]
    assert fastpaths.enabled("wire_frames") is False
    assert sum(1 for r in caplog.records if "wire_frames" in r.getMessage()) == 1
    session.close()


def test_a_twisted_whose_private_names_changed_still_writes_through_the_queued_path(caplog) -> None:
    class Connection:
        def __init__(self) -> None:
            self.queued: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.queued.append(data)

    writethrough.patch(Connection)
    connection = Connection()  # no TLS, connected, dataBuffer... attributes: a changed Twisted
    with caplog.at_level(logging.WARNING, logger="dashboard.fastpaths"):
        connection.write(b"frame one")
        connection.write(b"frame two")
    assert connection.queued == [b"frame one", b"frame two"]
    assert fastpaths.enabled("write_through") is False
    assert sum(1 for r in caplog.records if "write_through" in r.getMessage()) == 1
    writethrough._on = True  # this process's other tests use the real Twisted


def test_the_malloc_policy_sets_glibcs_trim_threshold_and_stays_off_when_switched_off(monkeypatch) -> None:
    from dashboard.fastpaths import mallocpolicy

    if mallocpolicy.is_glibc() is not None:
        pytest.skip(f"malloc policy applies to glibc only: {mallocpolicy.is_glibc()}")
    calls: list[tuple[int, int]] = []

    class Libc:
        def mallopt(self, param: int, value: int) -> int:
            calls.append((param, value))
            return 1

    monkeypatch.setattr(mallocpolicy.ctypes, "CDLL", lambda name: Libc())
    assert mallocpolicy.configure() is True
    assert calls == [(mallocpolicy.M_MMAP_THRESHOLD, 128 * 1024), (mallocpolicy.M_TRIM_THRESHOLD, 128 * 1024)]

    monkeypatch.setenv("PULSEBOARD_FAST_PATHS", "0")
    fastpaths.reset()
    calls.clear()
    assert mallocpolicy.configure() is False
    assert calls == []


def test_a_refused_mallopt_turns_the_malloc_policy_off(monkeypatch) -> None:
    from dashboard.fastpaths import mallocpolicy

    if mallocpolicy.is_glibc() is not None:
        pytest.skip(f"malloc policy applies to glibc only: {mallocpolicy.is_glibc()}")

    class Libc:
        def mallopt(self, param: int, value: int) -> int:
            return 0

    monkeypatch.setattr(mallocpolicy.ctypes, "CDLL", lambda name: Libc())
    assert mallocpolicy.configure() is False
    assert fastpaths.enabled("malloc_trim") is False


def test_the_gil_policy_sets_a_1_ms_switch_interval_and_stays_off_when_switched_off(monkeypatch) -> None:
    import sys

    from dashboard.fastpaths import gilpolicy

    set_to: list[float] = []
    monkeypatch.setattr(sys, "setswitchinterval", set_to.append)  # this process keeps its own interval
    assert gilpolicy.configure() is True
    assert set_to == [0.001]

    monkeypatch.setenv("PULSEBOARD_FAST_PATHS", "0")
    fastpaths.reset()
    set_to.clear()
    assert gilpolicy.configure() is False
    assert set_to == []
