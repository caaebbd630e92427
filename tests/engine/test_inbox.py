"""Inbox: outputs posted from another thread reach their asyncio queues in order, a burst
wakes the event loop once, and a closed loop refuses outputs (so the request is aborted)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from blendrt.engine.inbox import Inboxes


def test_burst_wakes_the_loop_once_and_keeps_order() -> None:
    async def main() -> tuple[list[list[int]], int]:
        loop = asyncio.get_running_loop()
        inbox = Inboxes().for_loop(loop)
        wakeups = 0
        original = loop.call_soon_threadsafe

        def counting(*args, **kwargs):
            nonlocal wakeups
            wakeups += 1
            return original(*args, **kwargs)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        queues = [asyncio.Queue() for _ in range(3)]
        sinks = [inbox.sink(q) for q in queues]
        burst = threading.Thread(target=lambda: [sinks[i % 3](i) for i in range(30)])
        burst.start()  # the event loop is busy in join(): the burst lands before any drain
        burst.join()
        got = [[await q.get() for _ in range(10)] for q in queues]
        return got, wakeups

    got, wakeups = asyncio.run(main())
    assert got == [list(range(k, 30, 3)) for k in range(3)]
    assert wakeups == 1


def test_posts_after_a_drain_wake_the_loop_again() -> None:
    async def main() -> list[int]:
        inbox = Inboxes().for_loop(asyncio.get_running_loop())
        queue: asyncio.Queue = asyncio.Queue()
        sink = inbox.sink(queue)
        out = []
        for i in range(5):  # one post at a time, each drained before the next
            threading.Thread(target=sink, args=(i,)).start()
            out.append(await asyncio.wait_for(queue.get(), 5))
        return out

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]


def test_closed_loop_refuses() -> None:
    loop = asyncio.new_event_loop()
    inboxes = Inboxes()
    sink = inboxes.for_loop(loop).sink(asyncio.Queue())
    assert inboxes.for_loop(loop) is inboxes.for_loop(loop)
    loop.close()
    with pytest.raises(RuntimeError, match="closed"):
        sink(1)
