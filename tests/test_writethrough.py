"""Write-through on a real Twisted TCP connection over a real socket pair (dashboard/fastpaths/writethrough.py)."""

from __future__ import annotations

import socket

import pytest

from dashboard.fastpaths import writethrough

pytestmark = pytest.mark.usefixtures("clock")

tcp = pytest.importorskip("twisted.internet.tcp")


class Reactor:
    """Records what the connection asks of the reactor: registering for writability is the cost avoided."""

    def __init__(self) -> None:
        self.writers: list[object] = []

    def addWriter(self, writer) -> None:  # noqa: N802 (Twisted's name)
        self.writers.append(writer)

    def removeWriter(self, writer) -> None:  # noqa: N802
        self.writers.remove(writer)


class Connection(tcp.Connection):
    pass


writethrough.patch(Connection)


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    reactor = Reactor()
    connection = Connection(ours, None, reactor)
    connection.connected = 1
    yield connection, theirs, reactor
    ours.close()
    theirs.close()


def read_all(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        data += sock.recv(size - len(data))
    return data


def test_a_write_the_kernel_takes_is_sent_at_once_without_registering_for_writability(pair) -> None:
    connection, theirs, reactor = pair
    connection.write(b"frame one")
    connection.write(b"frame two")
    assert reactor.writers == []
    assert read_all(theirs, 18) == b"frame oneframe two"


def test_what_the_kernel_refuses_is_queued_and_later_bytes_wait_behind_it(pair) -> None:
    connection, theirs, reactor = pair
    big = bytes(range(256)) * 40_000  # 10 MB: more than the socket buffers hold
    connection.write(big)
    assert reactor.writers == [connection]  # the rest waits for writability, as without the patch
    connection.write(b"after")  # must not overtake the queued bytes
    received = bytearray()
    while len(received) < len(big) + 5:
        connection.doWrite()
        received += theirs.recv(1 << 20)
    assert bytes(received) == big + b"after"
    connection.doWrite()  # finds the queue empty
    assert reactor.writers == []  # drained: unregistered


def test_a_write_to_a_closed_peer_is_queued_and_the_usual_path_reports_the_loss(pair) -> None:
    connection, theirs, reactor = pair
    theirs.close()
    connection.write(b"x" * 1000)  # EPIPE or ECONNRESET: not raised here
    assert reactor.writers == [connection]  # queued: Twisted's own doWrite meets the error
    assert connection.doWrite() is not None  # and returns the loss, which the reactor turns into connectionLost


def test_a_sequence_of_pieces_goes_out_as_one_send_without_registering(pair) -> None:
    """Twisted's HTTP channel writes every status line and header block with writeSequence."""
    connection, theirs, reactor = pair
    connection.writeSequence([b"HTTP/1.1 204 No Content\r\n", b"Server: x\r\n", b"\r\n"])
    connection.writeSequence([])  # nothing to write: nothing happens, as in Twisted
    assert reactor.writers == []
    assert read_all(theirs, 38) == b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n"


def test_a_sequence_written_behind_queued_bytes_waits_its_turn(pair) -> None:
    connection, theirs, reactor = pair
    big = bytes(range(256)) * 40_000  # more than the socket buffers hold: the rest is queued
    connection.write(big)
    connection.writeSequence([b"head", b"ers"])
    connection.write(b"body")
    received = bytearray()
    while len(received) < len(big) + 11:
        connection.doWrite()
        received += theirs.recv(1 << 20)
    assert bytes(received) == big + b"headersbody"


def test_a_sequence_holding_text_is_refused_as_twisted_refuses_it(pair) -> None:
    connection, theirs, reactor = pair
    with pytest.raises(TypeError):
        connection.writeSequence([b"bytes", "text"])
    assert reactor.writers == [] and connection.dataBuffer == b"" and not connection._tempDataBuffer


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 300_000])
def test_a_frame_framed_once_is_byte_for_byte_what_autobahn_would_send(size: int) -> None:
    from autobahn.websocket.protocol import PreparedMessage

    text = ("é" * size)[:size] if size % 2 else "x" * size  # multi-byte UTF-8 too
    expected = PreparedMessage(text.encode(), isBinary=False, applyMask=False, doNotCompress=True).payloadHybi
    assert writethrough.websocket_text_frame(text) == expected


def test_only_daphne_connections_get_the_wire_path() -> None:
    async def some_send(message: dict) -> None:
        pass

    assert writethrough.wire_sender(some_send) is None
