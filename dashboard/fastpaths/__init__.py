"""Every speed trick that leans on another library's private internals, and the guard around them.

Each fast path below was measured (bench/README.md) and each has a public
path that does the same job more slowly. They live behind one switch and one
check so that a dependency's next release cannot break the server:

* at start-up `enabled(name)` compares the installed versions of the
  libraries a fast path reaches into with the versions it was written and
  tested for (`WRITTEN_FOR`, which the lock file pins), and checks that the
  private names it uses are still there; on any difference it logs ONE
  WARNING naming the library and the version, and the caller takes the
  public path;
* at run time a fast path that fails in a way its own code does not expect
  calls `disable(name, exc)`: one WARNING with the traceback, the public path
  from then on in this process, and never a closed session or a lost frame;
* `PULSEBOARD_FAST_PATHS=0` turns them all off; the suite runs its live,
  ingest and fault tests a second time that way (scripts/test.sh), so the
  public paths stay correct.

The fast paths, and where their code is:

=================  ===========================================  ============================================
name               what it does (module)                        public path when off
=================  ===========================================  ============================================
write_through      Twisted TCP writes (and writeSequence, as    Twisted's queued write
                   HTTP headers go) try socket.send at once
                   (writethrough.py: install)
wire_frames        shared live frames framed once and written   Channels' `send` of each frame
                   to Daphne's transport (writethrough.py:
                   wire_sender; autobahn's send_queue,
                   _perMessageCompress)
server_close       close frames with 1001 and a 5 s handshake   Channels' `websocket.close` (autobahn
                   wait (writethrough.py: server_closer;        refuses 1001 there: a stopping server
                   autobahn's sendCloseFrame)                   closes with 1000)
agent_handler      agent endpoints without Django's middleware  Django's ASGIHandler and middleware
                   chain (agenthandler.py;
                   BaseHandler._middleware_chain)
gc_policy          gc.freeze and rarer young collections        CPython's default collector thresholds
                   (gcpolicy.py)
warm_imports       anyio's asyncio backend imported off the     imported on the first alert notification
                   event loop (alerts/transports.py)
input_queue        Daphne's per-connection input queue is a     Daphne's asyncio.Queue (~3 KB more per
                   small InputQueue (inputqueue.py;             idle socket)
                   Server.create_application)
malloc_trim        glibc's trim threshold fixed at 128 KB       glibc's dynamic threshold (~60 B more per
                   (mallocpolicy.py; mallopt)                   held key after 10,000-key subscribes)
lean_socket        an open WebSocket drops its handshake and    Daphne's protocol as it is (~12 KB more per
                   the HTTP request; options and close-time     idle socket)
                   defaults on a per-factory subclass
                   (leansocket.py; WebSocketFactory.
                   buildProtocol, autobahn's CONFIG_ATTRS)
switch_interval    the GIL changes hands within 1 ms            CPython's 5 ms (the writer's commits and
                   (gilpolicy.py; sys.setswitchinterval)        hand-overs wait longer for the loop)
=================  ===========================================  ============================================
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

# The distributions each fast path reaches into, and the versions it was written and tested
# for (the ones requirements.txt pins). A new version runs the public path until someone has
# checked the private names still mean the same and added it here.
WRITTEN_FOR: dict[str, dict[str, tuple[str, ...]]] = {
    "write_through": {"twisted": ("26.10.0",)},
    "wire_frames": {"autobahn": ("26.11.1",), "daphne": ("4.2.3",)},
    "server_close": {"autobahn": ("26.11.1",), "daphne": ("4.2.3",)},
    "agent_handler": {"django": ("5.2.19",)},
    "gc_policy": {},
    "warm_imports": {"anyio": ("4.16.0",)},
    "input_queue": {"daphne": ("4.2.3",)},
    "malloc_trim": {},
    "lean_socket": {"daphne": ("4.2.3",), "autobahn": ("26.11.1",), "twisted": ("26.10.0",)},
    "switch_interval": {},
}


def _has(module: str, *names: str) -> Callable[[], str | None]:
    """Return a check that `module` imports and has attributes `names` (dotted), or says what is missing."""

    def check() -> str | None:
        try:
            target = importlib.import_module(module)
        except ImportError as exc:
            return f"cannot import {module} ({exc})"
        for dotted in names:
            obj = target
            for part in dotted.split("."):
                if not hasattr(obj, part):
                    return f"{module}.{dotted} is gone"
                obj = getattr(obj, part)
        return None

    return check


# The private names each fast path uses, checked before it is first used.
PRIVATE_NAMES: dict[str, Callable[[], str | None]] = {
    "write_through": _has("twisted.internet.tcp", "Connection.write", "Connection.writeSequence", "Connection.doWrite"),
    "wire_frames": _has(
        "autobahn.websocket.protocol",
        "WebSocketProtocol.sendPreparedMessage",
        "WebSocketProtocol.STATE_OPEN",
    ),
    "server_close": _has("autobahn.websocket.protocol", "WebSocketProtocol.sendCloseFrame"),
    "agent_handler": _has(
        "django.core.handlers.base", "BaseHandler.load_middleware", "BaseHandler._get_response_async"
    ),
    "gc_policy": _has("gc", "freeze", "unfreeze", "get_freeze_count"),
    "warm_imports": _has("anyio._backends._asyncio"),
    "input_queue": _has("daphne.server", "Server.create_application", "Server.handle_reply"),
    "malloc_trim": lambda: importlib.import_module("dashboard.fastpaths.mallocpolicy").is_glibc(),
    "lean_socket": lambda: (
        _has("daphne.ws_protocol", "WebSocketFactory.buildProtocol", "WebSocketProtocol.serverAccept")()
        or _has("autobahn.websocket.protocol", "WebSocketServerProtocol.CONFIG_ATTRS")()
        or _has("twisted.web.http", "HTTPChannel._requestProducer")()
    ),
    "switch_interval": _has("sys", "setswitchinterval"),
}

_lock = threading.Lock()
_state: dict[str, bool] = {}
_warned: set[str] = set()


def switched_on() -> bool:
    """Return the PULSEBOARD_FAST_PATHS switch (default on); read from the environment, not settings,
    so that it also governs code that runs before Django's settings are configured."""
    return os.environ.get("PULSEBOARD_FAST_PATHS", "1").strip().lower() not in ("0", "false", "no", "off")


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def why_not(name: str) -> str | None:
    """Return why a fast path must not run here (a version it was not written for, a missing name), or None."""
    if not switched_on():
        return "PULSEBOARD_FAST_PATHS=0"
    for distribution, versions in WRITTEN_FOR[name].items():
        found = installed_version(distribution)
        if found not in versions:
            return f"{distribution} {found or 'missing'} is not a version it was written for ({', '.join(versions)})"
    return PRIVATE_NAMES[name]()


def enabled(name: str) -> bool:
    """Return whether the fast path `name` may run in this process; the first 'no' is logged once."""
    state = _state.get(name)
    if state is not None:
        return state
    with _lock:
        if name not in _state:
            reason = why_not(name)
            _state[name] = reason is None
            if reason is not None and switched_on():
                _warn(name, f"fast path {name!r} is off, the public path serves instead: {reason}")
        return _state[name]


def disable(name: str, exc: BaseException | None = None) -> None:
    """Turn a fast path off in this process after it failed unexpectedly; log it once, with the traceback."""
    with _lock:
        was_on = _state.get(name, True)
        _state[name] = False
    if was_on:
        _warn(name, f"fast path {name!r} failed and is now off in this process; the public path serves", exc)


def _warn(name: str, message: str, exc: BaseException | None = None) -> None:
    if name in _warned:
        return
    _warned.add(name)
    log.warning(message, exc_info=(type(exc), exc, exc.__traceback__) if exc is not None else None)


def reset() -> None:
    """Forget every decision (tests that change the switch or the versions)."""
    with _lock:
        _state.clear()
        _warned.clear()


def summary() -> dict[str, bool]:
    """Return each fast path's state in this process (for /readyz detail and the start-up log)."""
    return {name: enabled(name) for name in WRITTEN_FOR}


def warm_imports() -> None:
    """Import anyio's asyncio backend now, off the event loop (httpx imports it on its first request, slowly).

    The module is private to anyio, so this is a fast path like the others: with a
    version it was not written for, the import happens at httpx's first request instead.
    """
    if enabled("warm_imports"):
        try:
            importlib.import_module("anyio._backends._asyncio")
        except ImportError as exc:
            disable("warm_imports", exc)
