"""Daphne's per-connection input queue made small (dashboard/fastpaths/inputqueue.py): same order, same waiting."""

from __future__ import annotations

import asyncio
import inspect
import sys
import tracemalloc

import pytest

from dashboard import fastpaths
from dashboard.fastpaths import inputqueue
from dashboard.fastpaths.inputqueue import InputQueue


async def test_messages_come_out_in_the_order_they_went_in_whether_or_not_the_reader_waits() -> None:
    queue = InputQueue()
    queue.put_nowait({"n": 1})
    queue.put_nowait({"n": 2})
    assert queue.qsize() == 2 and queue
    assert [(await queue.get())["n"], (await queue.get())["n"]] == [1, 2]
    assert queue.empty()
    waiting = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    queue.put_nowait({"n": 3})
    queue.put_nowait({"n": 4})
    assert (await waiting)["n"] == 3 and (await queue.get())["n"] == 4


async def test_a_cancelled_receive_loses_no_message() -> None:
    queue = InputQueue()
    waiting = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    queue.put_nowait("disconnect")
    assert await asyncio.wait_for(queue.get(), 1) == "disconnect"


async def test_a_waiting_receive_is_a_future_and_no_suspended_coroutine() -> None:
    queue = InputQueue()
    waiting = queue.get()
    assert isinstance(waiting, asyncio.Future) and not waiting.done()  # what an idle socket's task awaits
    queue.put_nowait("connect")
    assert waiting.done() and await waiting == "connect"
    queue.put_nowait("receive")
    ready = queue.get()
    assert ready.done() and await ready == "receive" and queue.empty()


async def test_an_idle_input_queue_is_a_tenth_of_an_asyncio_queue() -> None:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        queues = [asyncio.Queue() for _ in range(100)]
        for queue in queues:
            queue.put_nowait(1)
            await queue.get()
        asyncio_queue = (tracemalloc.get_traced_memory()[0] - before) / 100
        before = tracemalloc.get_traced_memory()[0]
        small = [InputQueue() for _ in range(100)]
        for queue in small:
            queue.put_nowait(1)
            await queue.get()
        input_queue = (tracemalloc.get_traced_memory()[0] - before) / 100
    finally:
        tracemalloc.stop()
    print(f"an idle queue after one message: asyncio.Queue {asyncio_queue:.0f} B, InputQueue {input_queue:.0f} B")
    assert input_queue * 10 < asyncio_queue


def test_it_replaces_daphne_s_method_only_on_the_version_it_copies(monkeypatch) -> None:
    from daphne.server import Server

    original = Server.create_application
    # The copy differs from Daphne's in the queue it makes, nothing else.
    ours = inspect.getsource(inputqueue.create_application).split('"""')[2]
    theirs = inspect.getsource(original).split('"""')[2]
    strip = [line.strip() for line in theirs.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert [line.strip() for line in ours.splitlines() if line.strip()] == [
        "input_queue = InputQueue()" if line == "input_queue = asyncio.Queue()" else line for line in strip
    ]
    monkeypatch.setattr(inputqueue, "_installed", False)
    monkeypatch.setattr(Server, "create_application", original)
    monkeypatch.setitem(fastpaths.WRITTEN_FOR, "input_queue", {"daphne": ("1.0.0",)})
    fastpaths.reset()
    try:
        assert "daphne.server" in sys.modules
        assert not inputqueue.install() and Server.create_application is original
    finally:
        fastpaths.reset()
