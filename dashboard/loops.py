"""The one owner of per-event-loop services: the writer, hub, flusher, outbox, key index, ... of each loop.

A server process has one event loop, but each test (and each thread that
runs its own loop) has another, and a service made on one loop must never
be used from another: its tasks, futures and locks belong to that loop.
Every "one per event loop" object is therefore kept here, keyed by the loop
(weakly, so a closed test loop takes its services with it), and by the
service's class or a name. A service must not hold a strong reference to
its loop, or the loop would never be collected.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")

_services: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, Any]] = weakref.WeakKeyDictionary()


def service(key: Hashable, factory: Callable[[], T]) -> T:
    """Return the running loop's service under key, made by factory() on first use."""
    loop = asyncio.get_running_loop()
    services = _services.get(loop)
    if services is None:
        services = _services[loop] = {}
    try:
        return services[key]
    except KeyError:
        pass
    instance = factory()
    # The factory may have registered it (or another service) itself; keep the first.
    return services.setdefault(key, instance)


def existing(key: Hashable) -> Any | None:
    """Return the running loop's service under key if it was made, without making it."""
    services = _services.get(asyncio.get_running_loop())
    return None if services is None else services.get(key)


def register(key: Hashable, instance: Any) -> None:
    """Set (or with None, remove) the running loop's service under key."""
    loop = asyncio.get_running_loop()
    if instance is None:
        _services.get(loop, {}).pop(key, None)
    else:
        _services.setdefault(loop, {})[key] = instance


def services_of(loop: asyncio.AbstractEventLoop) -> dict[Hashable, Any]:
    """Return a copy of one loop's services by key (shutdown, inspection)."""
    return dict(_services.get(loop, {}))


def instances(key: Hashable) -> list[tuple[asyncio.AbstractEventLoop, Any]]:
    """Return (loop, service) for every live loop that has a service under key."""
    return [(loop, services[key]) for loop, services in list(_services.items()) if key in services]


def forget(key: Hashable) -> None:
    """Drop the service under key from every loop (tests, shutdown: the next use makes a fresh one)."""
    for services in list(_services.values()):
        services.pop(key, None)
