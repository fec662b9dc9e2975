"""Write-through for Twisted TCP transports under Daphne: send at once when nothing is queued.

Twisted's transport.write() never sends: it queues the bytes and registers
the socket for writability (an epoll_ctl), the reactor later calls doWrite()
to send, and unregisters it (a second epoll_ctl). Under Daphne's asyncio
reactor each registration also rebuilds a selector key. For a live frame
fanned out to 1,000 sockets that bookkeeping cost more than the send itself:
py-spy put 43 % of the server's time in the write path, of which the send
syscall was less than half (bench/README.md, Fan-out).

With this installed, a write to a plain-TCP connection whose queue is empty
tries socket.send() directly; whatever the kernel does not take (a slow
reader's full buffer) is queued the usual way, and errors are left to the
usual path, which reports them as a lost connection. Order is kept because
bytes are only sent directly when nothing is waiting before them. A
registered producer (Daphne's HTTP channel stays registered after the
WebSocket upgrade) is paused by the usual path as soon as bytes queue up,
which they do only when the kernel buffer is full. TLS connections are
untouched.

Installed once per process by monitor/asgi.py (PULSEBOARD_WRITE_THROUGH=0
turns it off); a no-op where Twisted is not imported. Each function here
asks the guard first (dashboard/fastpaths/__init__.py): a Twisted, autobahn
or Daphne version it was not written for, or PULSEBOARD_FAST_PATHS=0, means
the public path, and an unexpected error turns the fast path off for the
process instead of closing the session.
"""

from __future__ import annotations

import asyncio
import functools
import struct
import sys
from collections.abc import Awaitable, Callable

from dashboard import fastpaths

_installed = False


def install() -> bool:
    """Make Twisted's TCP connections write through; return whether that is (now) the case."""
    global _installed
    if not _installed and "twisted.internet.reactor" in sys.modules and fastpaths.enabled("write_through"):
        # Imported only under Daphne (its reactor is running): this module must not pull Twisted into tests.
        from twisted.internet import tcp

        patch(tcp.Connection)
        _installed = True
    return _installed


_on = True  # write_through as the guard last said; a module global, read on every write


def _turn_off(exc: BaseException) -> None:
    global _on
    _on = False
    fastpaths.disable("write_through", exc)


def patch(connection_class: type) -> None:
    """Replace connection_class.write with a write-through version of it."""
    queued_write = connection_class.write

    def write(self, data: bytes) -> None:
        try:
            direct = (
                _on
                and not self.TLS
                and self.connected
                and not self._writeDisconnected
                and not self.dataBuffer
                and not self._tempDataBuffer
                and type(data) is bytes
                and data
            )
        except AttributeError as exc:  # Twisted's private names changed: queued writes from now on
            _turn_off(exc)
            direct = False
        if direct:
            # socket.send itself, not writeSomeData: its byte slicing and retry
            # wrapper cost about a microsecond per socket of every pass.
            try:
                sent = self.socket.send(data)
            except OSError:
                # A full buffer or a lost connection: the queued path retries,
                # or meets the error again and reports the connection lost.
                sent = 0
            if sent == len(data):
                return
            if sent > 0:
                data = data[sent:]
        queued_write(self, data)

    queued_sequence = getattr(connection_class, "writeSequence", None)

    def write_sequence(self, iovec) -> None:
        # Twisted's HTTP channel writes every response's status line and
        # headers with writeSequence, which queues them like write does: one
        # send for the joined pieces instead (an ingest request's 204 is all headers).
        if _on and type(iovec) is list:
            try:
                data = b"".join(iovec)
            except TypeError:  # str among the pieces: Twisted's own check names the error
                pass
            else:
                if data:
                    write(self, data)
                return
        queued_sequence(self, iovec)

    write.__doc__ = queued_write.__doc__
    connection_class.write = write
    if queued_sequence is not None:
        write_sequence.__doc__ = queued_sequence.__doc__
        connection_class.writeSequence = write_sequence


def websocket_text_frame(text: str) -> bytes:
    """Return an unmasked, unfragmented WebSocket text frame (RFC 6455, 5.2) carrying `text`."""
    payload = text.encode()
    n = len(payload)
    if n <= 125:
        head = struct.pack("!BB", 0x81, n)
    elif n <= 0xFFFF:
        head = struct.pack("!BBH", 0x81, 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 127, n)
    return head + payload


def wire_sender(send) -> Callable[[bytes], bool] | None:
    """Return a function writing ready-made WebSocket frames to the Daphne connection behind `send`, or None.

    A live frame shared by 1,000 sockets would otherwise go through Daphne's
    reply handling and autobahn's framing (and a UTF-8 encode) once per
    socket; framed once (websocket_text_frame) it is one transport write each.
    Daphne hands every application `functools.partial(server.handle_reply,
    protocol)` as its send; anything else (another server, the test
    communicator) gets None and keeps the ASGI path. The function returns
    False, so the caller falls back to `send`, unless the connection is open
    with nothing queued in autobahn and no compression negotiated.
    """
    if not isinstance(send, functools.partial) or getattr(send.func, "__name__", "") != "handle_reply":
        return None
    protocol = send.args[0] if send.args else None
    if protocol is None or not hasattr(protocol, "sendPreparedMessage") or not hasattr(protocol, "STATE_OPEN"):
        return None
    if not fastpaths.enabled("wire_frames"):
        return None
    state_open = protocol.STATE_OPEN

    def send_wire(data: bytes) -> bool:
        if not fastpaths.enabled("wire_frames"):
            return False
        try:
            if protocol.state != state_open or protocol.send_queue or protocol._perMessageCompress is not None:
                return False
        except AttributeError as exc:  # autobahn's private names changed under us: the public path from now on
            fastpaths.disable("wire_frames", exc)
            return False
        protocol.transport.write(data)
        return True

    return send_wire


def server_closer(send, handshake_s: float) -> Callable[[int], bool] | None:
    """Return a function closing the Daphne connection behind `send` with a code, or None where it is not Daphne.

    Two things Daphne's own `websocket.close` cannot do: autobahn's public
    sendClose refuses 1001 (going away, what a stopping server should say)
    though RFC 6455 defines it for servers, so the close frame goes through
    its sendCloseFrame; and autobahn waits only 1 s (closeHandshakeTimeout)
    for the answer before it resets the TCP connection, while a reader slow
    enough to be closed with 4008 finds the close frame behind the data it
    has not read yet, so the wait is `handshake_s`. The function returns
    False when the connection is not open.
    """
    if not isinstance(send, functools.partial) or getattr(send.func, "__name__", "") != "handle_reply":
        return None
    protocol = send.args[0] if send.args else None
    if protocol is None or not hasattr(protocol, "sendCloseFrame") or not hasattr(protocol, "closeHandshakeTimeout"):
        return None
    if not fastpaths.enabled("server_close"):
        return None

    def close(code: int) -> bool:
        try:
            if protocol.state != protocol.STATE_OPEN:
                return False
            protocol.closeHandshakeTimeout = handshake_s
            protocol.sendCloseFrame(code=code, isReply=False)
        except Exception as exc:  # an autobahn that changed: Daphne's own close does it (without 1001)
            fastpaths.disable("server_close", exc)
            return False
        return True

    return close


def before_shutdown(callback: Callable[[], Awaitable[None]]) -> bool:
    """Run `callback` when Daphne's reactor begins to shut down (SIGTERM), before it drops the connections.

    Daphne's own trigger cancels every application, but it raises KeyError
    (and so cancels nothing) as soon as one finished HTTP request is still
    in its connection table (daphne 4.2.3): the reactor then drops every
    WebSocket without a close frame and clients see 1006. Returns False
    where Twisted's reactor is not running (tests, another server).
    """
    if "twisted.internet.reactor" not in sys.modules:
        return False
    # Imported here: importing twisted.internet.reactor installs a reactor, which is Daphne's choice.
    from twisted.internet import defer, reactor

    if not reactor.running:
        return False

    def trigger():
        return defer.Deferred.fromFuture(asyncio.ensure_future(callback()))

    reactor.addSystemEventTrigger("before", "shutdown", trigger)
    return True
