"""Open WebSockets without their handshake (dashboard/fastpaths/leansocket.py), on Daphne's own HTTP and WebSocket protocols.

Each test drives a real Daphne HTTP channel, upgrade and autobahn protocol
over an in-memory Twisted transport, with an echo application on the test's
event loop: the bytes a client sees must be the same with the fast path on
and off, and the socket must still read, write, ping and close.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import struct
import sys
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from dashboard import fastpaths
from dashboard.fastpaths import leansocket

pytest.importorskip("daphne")

from daphne.http_protocol import HTTPFactory  # noqa: E402
from daphne.server import Server  # noqa: E402  (installs Daphne's asyncio reactor, as inputqueue's tests do)
from daphne.ws_protocol import WebSocketFactory  # noqa: E402
from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.error import ConnectionDone  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402

UPGRADE = (
    b"GET /ws/live/ HTTP/1.1\r\n"
    b"Host: testserver\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    b"Origin: http://testserver\r\n"
    b"Cookie: sessionid=abc\r\n"
    b"\r\n"
)


class TCPTransport(StringTransport):
    """An in-memory transport that, like Twisted's TCP ones, lets autobahn unregister a producer at every drop."""

    def unregisterProducer(self) -> None:  # noqa: N802 (Twisted's name)
        self.producer = None


class LeanFactory(WebSocketFactory):
    pass


leansocket.patch(LeanFactory)


class PlainFactory(WebSocketFactory):
    """Daphne's factory as Daphne made it, even once a test before these imported monitor.asgi (which
    installs the fast path on WebSocketFactory itself for the rest of the process)."""

    buildProtocol = getattr(WebSocketFactory.buildProtocol, "__wrapped__", WebSocketFactory.buildProtocol)  # noqa: N815


@pytest.fixture(autouse=True)
def _fresh_guard(monkeypatch) -> Iterator[None]:
    monkeypatch.delenv("PULSEBOARD_FAST_PATHS", raising=False)
    monkeypatch.setattr(leansocket, "_on", True)
    fastpaths.reset()
    yield
    fastpaths.reset()


def client_frame(opcode: int, payload: bytes) -> bytes:
    """Return a masked client frame (RFC 6455: a client masks everything it sends)."""
    mask = b"\x0f\x1e\x2d\x3c"
    assert len(payload) < 126
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class Echo:
    """An ASGI WebSocket app that accepts, echoes text and records what it was told."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def __call__(self, scope, receive, send) -> None:
        self.scope = scope
        while True:
            message = await receive()
            self.events.append(message)
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.accept"})
            elif message["type"] == "websocket.receive":
                if message["text"] == "close":
                    await send({"type": "websocket.close", "code": 4008})
                else:
                    await send({"type": "websocket.send", "text": "echo " + message["text"]})
            else:
                return


class Socket:
    """One upgraded connection on Daphne's factories: the server protocol and what was written to the client."""

    def __init__(self, factory_class: type) -> None:
        self.app = Echo()
        self.server = Server(self.app, endpoints=["tcp:port=0:interface=127.0.0.1"])
        self.server.connections = {}
        self.server.http_factory = HTTPFactory(self.server)
        self.server.ws_factory = factory_class(self.server, server="daphne")
        self.server.ws_factory.setProtocolOptions(  # as Daphne's Server.run sets them
            autoPingTimeout=self.server.ping_timeout,
            allowNullOrigin=True,
            openHandshakeTimeout=self.server.websocket_handshake_timeout,
            maxMessagePayloadSize=self.server.websocket_max_message_size,
            maxFramePayloadSize=self.server.websocket_max_frame_size,
        )
        self.transport = TCPTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8000), peerAddress=IPv4Address("TCP", "127.0.0.1", 50000)
        )
        self.channel = self.server.http_factory.buildProtocol(self.transport.getPeer())
        self.channel.makeConnection(self.transport)

    async def open(self) -> None:
        self.channel.dataReceived(UPGRADE)
        for _ in range(20):  # the application accepts on the loop; Twisted's side is synchronous
            await asyncio.sleep(0)
            if b"\r\n\r\n" in self.transport.value():
                break
        self.handshake = self.take()
        assert self.handshake.startswith(b"HTTP/1.1 101 Switching Protocols"), self.handshake
        self.protocol = self.transport.protocol

    def take(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    async def send(self, opcode: int, payload: bytes) -> bytes:
        self.protocol.dataReceived(client_frame(opcode, payload))
        for _ in range(10):
            await asyncio.sleep(0)
        return self.take()


async def exchange(factory_class: type) -> tuple[Socket, list[bytes]]:
    """Open a socket, echo, ping, and close it from the client; return it and what the client got at each step."""
    socket = Socket(factory_class)
    await socket.open()
    got = [socket.handshake]
    got.append(await socket.send(0x1, b"hello"))
    got.append(await socket.send(0x9, b"are you there"))  # a ping: autobahn answers with a pong
    got.append(await socket.send(0x8, struct.pack("!H", 1000)))  # the client closes
    socket.protocol.connectionLost(Failure(ConnectionDone()))  # the TCP connection ends after the close
    for _ in range(10):
        await asyncio.sleep(0)
    return socket, got


async def test_a_lean_socket_answers_byte_for_byte_as_daphne_s_own() -> None:
    lean, lean_got = await exchange(LeanFactory)
    plain, plain_got = await exchange(PlainFactory)
    assert type(lean.protocol).__name__ == "LeanWebSocketProtocol"
    assert type(plain.protocol) is WebSocketFactory.protocol
    assert lean_got == plain_got
    assert lean_got[1] == b"\x81\x0aecho hello"
    assert lean_got[2] == b"\x8a\x0dare you there"
    assert lean_got[3] == b"\x88\x02" + struct.pack("!H", 1000)
    for socket in (lean, plain):
        assert socket.protocol.wasClean and socket.protocol.remoteCloseCode == 1000
        assert [e["type"] for e in socket.app.events] == [
            "websocket.connect",
            "websocket.receive",
            "websocket.disconnect",
        ]


async def test_an_open_socket_keeps_none_of_its_handshake_and_a_small_dict() -> None:
    lean = Socket(LeanFactory)
    plain = Socket(PlainFactory)
    await lean.open()
    await plain.open()
    state = lean.protocol.__dict__
    assert not set(leansocket.HANDSHAKE_ONLY) & set(state)
    assert not set(leansocket.CLASS_DEFAULTS) & set(state)
    assert not set(WebSocketFactory.protocol.CONFIG_ATTRS) & set(state)
    assert lean.protocol.request.path == "/ws/live/"  # what Daphne logs when the socket closes
    assert lean.protocol.maxMessagePayloadSize == 1024 * 1024 and lean.protocol.transport_details is None
    print(f"protocol dict: {len(plain.protocol.__dict__)} keys, {sys.getsizeof(plain.protocol.__dict__)} B -> ", end="")
    print(f"{len(state)} keys, {sys.getsizeof(state)} B")
    assert sys.getsizeof(state) * 2 < sys.getsizeof(plain.protocol.__dict__)
    # The first message, a ping of Daphne's and its pong add their keys without outgrowing the table.
    size = sys.getsizeof(state)
    assert await lean.send(0x1, b"hello") == b"\x81\x0aecho hello"
    lean.protocol.last_ping -= lean.server.ping_interval + 1
    lean.protocol.check_timeouts()
    assert lean.take()[:2] == b"\x89\x0c"
    assert await lean.send(0xA, lean.protocol.autoPingPending) == b""
    assert lean.protocol.autoPingPending is None and sys.getsizeof(lean.protocol.__dict__) == size


async def test_the_upgrade_request_is_released_at_open_without_waiting_for_a_collection() -> None:
    socket = Socket(LeanFactory)
    request = None
    gc.disable()
    try:
        await socket.open()
        # Daphne keeps the finished request in its connection table until its next check (every second).
        (request,) = [r for r in socket.server.connections if r is not socket.protocol]
        del socket.server.connections[request]
        gone = weakref.ref(request)
        request = None
        assert gone() is None
    finally:
        gc.enable()
    assert socket.transport.producer is None
    # Daphne's own keeps it, registered as the producer, for the socket's life.
    plain = Socket(PlainFactory)
    await plain.open()
    assert plain.transport.producer is plain.channel._channel and plain.channel._channel.requests


async def test_a_server_close_and_a_silent_peer_still_end_a_lean_socket() -> None:
    socket = Socket(LeanFactory)
    await socket.open()
    # The application closes with 4008: a close frame goes out, and the close handshake's timer is armed.
    assert await socket.send(0x1, b"close") == b"\x88\x02" + struct.pack("!H", 4008)
    assert socket.protocol.closedByMe and socket.protocol.closeHandshakeTimeoutCall is not None
    assert "closedByMe" in socket.protocol.__dict__  # written into the instance, the class keeps False
    assert type(socket.protocol).closedByMe is False

    # Daphne pings a peer silent for ping_interval; one that never answers is dropped after ping_timeout.
    silent = Socket(LeanFactory)
    await silent.open()
    silent.protocol.last_ping -= silent.server.ping_interval + 1
    silent.protocol.check_timeouts()
    ping = silent.take()
    assert ping[:2] == b"\x89\x0c" and silent.protocol.autoPingTimeoutCall is not None  # autoPingSize 12
    silent.protocol.onAutoPingTimeout()  # what the batched timer calls after autoPingTimeout (30 s)
    assert silent.transport.disconnecting and silent.protocol.wasNotCleanReason


async def test_an_error_while_shedding_turns_the_fast_path_off_and_the_socket_works(monkeypatch, caplog) -> None:
    def broken(transport) -> bool:
        raise AttributeError("_handlingRequest")  # a Twisted whose private names changed

    monkeypatch.setattr(leansocket, "release_http_request", broken)
    with caplog.at_level(logging.WARNING, logger="dashboard.fastpaths"):
        socket = Socket(LeanFactory)
        await socket.open()
        assert await socket.send(0x1, b"still here") == b"\x81\x0fecho still here"
        later = Socket(LeanFactory)
        await later.open()
    assert not fastpaths.enabled("lean_socket")
    assert type(later.protocol) is WebSocketFactory.protocol  # Daphne's own from then on
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "lean_socket" in warnings[0].getMessage()


def test_it_is_installed_only_on_the_versions_it_was_written_for(monkeypatch) -> None:
    original = WebSocketFactory.buildProtocol
    monkeypatch.setattr(leansocket, "_installed", False)
    monkeypatch.setitem(fastpaths.WRITTEN_FOR, "lean_socket", {"autobahn": ("1.0.0",)})
    fastpaths.reset()
    assert not leansocket.install() and WebSocketFactory.buildProtocol is original
    monkeypatch.setenv("PULSEBOARD_FAST_PATHS", "0")
    monkeypatch.setitem(fastpaths.WRITTEN_FOR, "lean_socket", {})
    fastpaths.reset()
    assert not leansocket.install() and WebSocketFactory.buildProtocol is original


async def test_options_set_after_the_first_socket_make_a_new_class() -> None:
    first = Socket(LeanFactory)
    await first.open()
    second = Socket(LeanFactory)
    second.server.ws_factory.setProtocolOptions(autoPingTimeout=7)
    await second.open()
    assert first.protocol.autoPingTimeout == 30 and second.protocol.autoPingTimeout == 7
    assert type(first.protocol) is not type(second.protocol)


async def test_a_trickled_send_still_goes_through_the_small_send_queue_in_order() -> None:
    socket = Socket(LeanFactory)
    await socket.open()
    queue = socket.protocol.send_queue
    assert type(queue) is leansocket.SendQueue and not queue and sys.getsizeof(queue) < 100
    socket.protocol.sendData(b"abcdef", chopsize=2)  # autobahn writes the first chunk now, the rest on later turns
    socket.protocol.sendData(b"gh")  # queued behind them: the queue is not empty
    assert socket.take() == b"ab" and [data for data, _ in queue] == [b"cd", b"ef", b"gh"]
    for _ in range(4):
        socket.protocol._send()  # what autobahn's call_later runs next
    assert socket.take() == b"cdefgh" and not queue and not socket.protocol.triggered
