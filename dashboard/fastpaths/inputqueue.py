"""A small input queue for each of Daphne's connections, instead of an asyncio.Queue.

Daphne gives every connection an `asyncio.Queue` for the messages it passes
to the application (`receive`). A queue is three deques and an Event with a
fourth (~3.1 KB per idle socket, 11 % of an idle live socket's heap:
bench/connmem.py --top), for what holds one message at a time: Daphne calls
only `put_nowait`, the application only `get`. `InputQueue` does exactly
that with a list made when a message waits and one future while the
application waits (~100 B); `get` returns that future itself rather than a
coroutine awaiting it (~230 B less per waiting socket).

Installed once per process by monitor/asgi.py; `daphne.server.Server.create_application`
is replaced by a copy of daphne 4.2.3's that makes an InputQueue. It is the
fast path `input_queue` (dashboard/fastpaths/__init__.py): another Daphne
version, or PULSEBOARD_FAST_PATHS=0, keeps Daphne's own method.
"""

from __future__ import annotations

import asyncio
import sys
from functools import partial
from typing import Any

from dashboard import fastpaths

_installed = False


class InputQueue:
    """What Daphne and an ASGI application use of a queue: put_nowait (Daphne) and get (the application's receive)."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] | None = None  # made when a message waits, dropped when it is taken
        self._waiter: asyncio.Future | None = None  # the application's get, while it waits

    def put_nowait(self, item: Any) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():  # a cancelled get: the message waits for the next one
                waiter.set_result(item)
                return
        if self._items is None:
            self._items = [item]
        else:
            self._items.append(item)

    def get(self) -> asyncio.Future:
        """Return an awaitable of the next message: done when one waits, else finished by the next put_nowait.

        A future, not a coroutine: a socket waiting for its next message then
        holds the future (~140 B) and no suspended coroutine beside it (~230 B).
        """
        waiter = asyncio.get_running_loop().create_future()
        items = self._items
        if items:
            waiter.set_result(items.pop(0))
            if not items:
                self._items = None
        else:
            self._waiter = waiter
        return waiter

    def qsize(self) -> int:
        return len(self._items or ())

    def empty(self) -> bool:
        return not self._items


def create_application(self, protocol, scope):
    """daphne 4.2.3's Server.create_application, with an InputQueue instead of an asyncio.Queue."""
    assert "application_instance" not in self.connections[protocol]
    input_queue = InputQueue()
    scope.setdefault("asgi", {"version": "3.0"})
    application_instance = self.application(
        scope=scope,
        receive=input_queue.get,
        send=partial(self.handle_reply, protocol),
    )
    if protocol not in self.connections:
        return None
    self.connections[protocol]["application_instance"] = asyncio.ensure_future(
        application_instance,
        loop=asyncio.get_event_loop(),
    )
    return input_queue


def install() -> bool:
    """Give Daphne's connections an InputQueue; return whether that is (now) the case."""
    global _installed
    if not _installed and "daphne.server" in sys.modules and fastpaths.enabled("input_queue"):
        from daphne.server import Server

        Server.create_application = create_application
        _installed = True
    return _installed
