"""The one registry of per-event-loop services."""

from __future__ import annotations

import asyncio
import threading

from dashboard import loops


class Thing:
    """A service with nothing in it."""


async def test_a_service_is_made_once_per_loop_and_found_again() -> None:
    """The running loop gets one instance per key; existing and services_of see it."""
    assert loops.existing(Thing) is None
    first = loops.service(Thing, Thing)
    assert loops.service(Thing, Thing) is first
    assert loops.existing(Thing) is first
    assert loops.services_of(asyncio.get_running_loop())[Thing] is first
    assert (asyncio.get_running_loop(), first) in loops.instances(Thing)
    loops.forget(Thing)
    assert loops.existing(Thing) is None


def test_each_event_loop_has_its_own_services() -> None:
    """A service made on one loop is never handed to another loop."""
    made: list[Thing] = []

    async def make() -> None:
        made.append(loops.service(Thing, Thing))

    for _ in range(2):
        thread = threading.Thread(target=asyncio.run, args=(make(),))
        thread.start()
        thread.join()
    assert len(made) == 2 and made[0] is not made[1]


async def test_registering_none_removes_a_service() -> None:
    """register(key, None) takes the running loop's service away."""
    loops.register("test.thing", Thing())
    assert isinstance(loops.existing("test.thing"), Thing)
    loops.register("test.thing", None)
    assert loops.existing("test.thing") is None
