"""Open WebSockets without their handshake: what Daphne, autobahn and Twisted keep per socket that an open one never reads.

An idle live socket held ~21 KB of Python heap, two thirds of it in these
three libraries (bench/connmem.py --top; bench/results/2026-12-06-0740-connmem.md).
Much of it is the opening handshake, kept for the socket's whole life:

* the HTTP upgrade request (~4 KB): Twisted's HTTPChannel stays registered
  as the transport's producer after Daphne hands the connection over to the
  WebSocket protocol, with the request (headers, cookies, addresses, body
  buffer) in its queue. An upgraded channel is handling its request for good
  and that request has no producer, so its pause and resume do nothing;
  autobahn unregisters it anyway when it drops the connection. Here the
  transport lets go of it at open (`unregisterProducer`, Twisted's public method);
* the handshake as parsed (~5 KB): autobahn's raw request bytes, header
  dict, offered extensions, response text and `ConnectionRequest`, and
  Daphne's copy of the headers for the scope, read only during the handshake.
  Daphne logs `request.path` when the socket closes, so that much stays;
* autobahn's send queue, a deque (760 B) for trickled sends Daphne never
  makes: a list with a `popleft` (56 B) does the same.

And the protocol's instance dict: autobahn copies its 29 options from the
factory into every protocol and sets ~20 attributes that stay False or None
until the socket closes: ~100 keys, a 256-slot table of 3.3 KB. Here the
protocol is a subclass made once per set of factory options, holding the
options as class attributes (autobahn's `_connectionMade` copies an option
only when the protocol has none) and those defaults; at open the instance
keeps only what differs, and its dict is rebuilt to its size (64 slots, room
for what the first messages and pings add). Reading an option finds it on
the class instead of the instance; the wire path of shared live frames
(writethrough.py) reads none of them.

The hook is Daphne's `serverAccept`: the handshake completes inside it
(autobahn's succeedHandshake, then onOpen) and Daphne deletes its handshake
Deferred after that, so the dict is rebuilt once that key is gone.

Installed once per process by monitor/asgi.py, which makes
`daphne.ws_protocol.WebSocketFactory.buildProtocol` build the subclass. It is
the fast path `lean_socket` (dashboard/fastpaths/__init__.py): another Daphne,
autobahn or Twisted, or PULSEBOARD_FAST_PATHS=0, keeps Daphne's protocol as it
is; an unexpected error turns it off for the process, and a socket it had
begun to shed keeps working with what it still holds.
"""

from __future__ import annotations

import sys
from collections import deque
from typing import Any

from dashboard import fastpaths

_installed = False
_on = True  # lean_socket as the guard last said; cleared by the first unexpected error

# Read only while the opening handshake runs (autobahn's processHandshake and
# succeedHandshake, Daphne's onConnect); an open socket never reads them again.
HANDSHAKE_ONLY = (
    # autobahn
    "http_request_data",
    "http_status_line",
    "http_headers",
    "http_request_uri",
    "http_request_path",
    "http_request_host",
    "http_request_params",
    "http_response_data",
    "websocket_origin",
    "websocket_protocols",
    "websocket_extensions",
    "websocket_extensions_in_use",
    "websocket_protocol_in_use",
    "_wskey",
    # daphne
    "clean_headers",
    "server_addr",
    "root_path",
    "_raw_query_string",
    "application_deferred",
    "protocol_to_accept",
    "_transport_details",  # autobahn's _onOpen reads its TLS details just before onOpen; the class holds None
)

# What an open socket holds until it closes, written only by the closing handshake (or a
# protocol error, which closes it), and two flags set only by queued sends and timing:
# the class holds these, the instance only what differs.
CLASS_DEFAULTS: dict[str, Any] = {
    "wasClean": False,
    "wasNotCleanReason": None,
    "wasServerConnectionDropTimeout": False,
    "wasOpenHandshakeTimeout": False,
    "wasCloseHandshakeTimeout": False,
    "wasServingFlashSocketPolicyFile": False,
    "wasMaxFramePayloadSizeExceeded": False,
    "wasMaxMessagePayloadSizeExceeded": False,
    "localCloseCode": None,
    "localCloseReason": None,
    "remoteCloseCode": None,
    "remoteCloseReason": None,
    "closedByMe": False,
    "failedByMe": False,
    "droppedByMe": False,
    "openHandshakeTimeoutCall": None,
    "closeHandshakeTimeoutCall": None,
    "triggered": False,  # autobahn's trickling sends (sync=True or a chopsize), which Daphne does not use
    "trackedTimings": None,  # set by setTrackTimings, off unless the factory's trackTimings is
}


class SendQueue(list):
    """autobahn's send queue as it uses it (append, popleft, len): an empty list is 56 B, an empty deque 760.

    It holds frames only for trickled sends (`sync=True` or a chopsize), which
    Daphne never makes, so it stays empty and popleft's cost never matters.
    """

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


class OpenRequest:
    """What Daphne reads of the handshake's `ConnectionRequest` once the socket is open: its path (for logs)."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


def install() -> bool:
    """Make Daphne's WebSocket factory build lean protocols; return whether that is (now) the case."""
    global _installed
    if not _installed and "daphne.server" in sys.modules and fastpaths.enabled("lean_socket"):
        # Imported only under Daphne (its reactor is installed): this module must not pull Twisted into tests.
        from daphne.ws_protocol import WebSocketFactory

        patch(WebSocketFactory)
        _installed = True
    return _installed


def _turn_off(exc: BaseException) -> None:
    global _on
    _on = False
    fastpaths.disable("lean_socket", exc)


def patch(factory_class: type) -> None:
    """Replace factory_class.buildProtocol with one that builds lean_class(factory)'s protocols."""
    build_protocol = factory_class.buildProtocol

    def buildProtocol(self, addr):  # noqa: N802 (Twisted's name)
        if _on:
            try:
                protocol = lean_class(self)()
            except Exception as exc:  # noqa: BLE001 (any failure: Daphne's own protocol from now on)
                _turn_off(exc)
            else:
                protocol.factory = self  # what Twisted's Factory.buildProtocol and Daphne's add
                return protocol
        return build_protocol(self, addr)

    buildProtocol.__doc__ = build_protocol.__doc__
    buildProtocol.__wrapped__ = build_protocol  # Daphne's own, for whoever needs it (tests compare the two)
    factory_class.buildProtocol = buildProtocol


_classes: list[tuple[type, tuple[Any, ...], type]] = []  # (Daphne's protocol class, options, lean subclass)


def lean_class(factory) -> type:
    """Return the protocol subclass holding this factory's current options and the close-time defaults."""
    base = factory.protocol
    options = tuple(getattr(factory, name) for name in base.CONFIG_ATTRS)
    for known_base, known_options, cls in _classes:
        if known_base is base and known_options == options:
            return cls

    def serverAccept(self, subprotocol=None) -> None:  # noqa: N802 (Daphne's name)
        # The handshake completes (autobahn's succeedHandshake, then onOpen) inside this call, and
        # Daphne deletes its handshake Deferred after it: the dict is rebuilt after that.
        base.serverAccept(self, subprotocol)
        if _on and self.state == self.STATE_OPEN:
            try:
                shed(self)
            except Exception as exc:  # noqa: BLE001 (what is left is what Daphne keeps anyway)
                _turn_off(exc)

    # An option that is a function (perMessageCompressionAccept) must not become a method of the class.
    attrs: dict[str, Any] = {
        name: staticmethod(value) if hasattr(type(value), "__get__") else value
        for name, value in zip(base.CONFIG_ATTRS, options, strict=True)
    }
    attrs.update(CLASS_DEFAULTS, _transport_details=None)  # autobahn's property `transport_details` returns it
    attrs.update(
        serverAccept=serverAccept,
        __module__=__name__,
        __doc__=f"{base.__name__} with its factory's options on the class.",
    )
    cls = type(f"Lean{base.__name__}", (base,), attrs)
    del _classes[8:]  # options do not change in a server; a test that changes them makes a few
    _classes.insert(0, (base, options, cls))
    return cls


def shed(protocol) -> None:
    """Drop what an open protocol keeps of its handshake, and of values its class holds; release the HTTP request."""
    state = protocol.__dict__
    request = state.get("request")
    if request is not None:
        state["request"] = OpenRequest(request.path)
    for name in HANDSHAKE_ONLY:
        state.pop(name, None)
    if type(state.get("send_queue")) is deque and not state["send_queue"]:
        state["send_queue"] = SendQueue()
    cls = type(protocol)
    for name in CLASS_DEFAULTS:
        if name in state and state[name] is getattr(cls, name):
            del state[name]
    protocol.__dict__ = dict(state)  # a table for the keys left (a dict never shrinks as keys go)
    release_http_request(protocol.transport)


def release_http_request(transport) -> bool:
    """Unregister the HTTP channel a WebSocket upgrade left as the transport's producer, when it does nothing there.

    Twisted's HTTPChannel pauses and resumes only its request's producer, and
    its own transport when it is not handling a request; an upgraded one is
    handling its request forever and that request has no producer. Return
    whether it was released.
    """
    from twisted.web.http import HTTPChannel

    channel = getattr(transport, "producer", None)
    if not isinstance(channel, HTTPChannel) or not channel._handlingRequest or channel._requestProducer is not None:
        return False
    transport.unregisterProducer()
    del channel.requests[:]  # the request and the channel refer to each other: free them now, not at a collection
    return True
