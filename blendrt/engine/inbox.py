"""Outputs from the engine thread to asyncio event loops: one wake-up per burst, not per token.

A step ends with an output for every running stream. Handing each over with
`loop.call_soon_threadsafe` writes the event loop's self-pipe and wakes its thread once per
token, and every wake-up takes the GIL from the engine thread in the middle of its next step.
An Inbox gathers a burst and wakes its loop once; the loop then hands every output to its
stream's queue.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import deque
from collections.abc import Callable

from blendrt.engine.request import RequestOutput


class Inbox:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: deque[tuple[asyncio.Queue, RequestOutput]] = deque()
        self._lock = threading.Lock()
        self._scheduled = False  # a drain is queued on the loop and has not started

    def sink(self, queue: asyncio.Queue) -> Callable[[RequestOutput], None]:
        """A sink for EngineLoop that delivers into `queue` on this inbox's loop."""
        return lambda out: self._post(queue, out)

    def _post(self, queue: asyncio.Queue, out: RequestOutput) -> None:  # engine thread
        # NOTE: raises RuntimeError once the loop is closed (nobody is listening); EngineLoop
        # then aborts the request, as for any sink that fails.
        if self._loop.is_closed():
            raise RuntimeError("the stream's event loop is closed")
        self._pending.append((queue, out))
        with self._lock:
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:
            with self._lock:
                self._scheduled = False
            raise

    def _drain(self) -> None:  # the event loop's thread
        # NOTE: the flag is cleared before draining: an output posted after this line is
        # either drained below or schedules the next drain, never stranded.
        with self._lock:
            self._scheduled = False
        while self._pending:
            queue, out = self._pending.popleft()
            queue.put_nowait(out)


class Inboxes:
    """One Inbox per event loop, made on first use, dropped with its loop."""

    def __init__(self) -> None:
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Inbox] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def for_loop(self, loop: asyncio.AbstractEventLoop) -> Inbox:
        with self._lock:
            inbox = self._by_loop.get(loop)
            if inbox is None:
                inbox = self._by_loop[loop] = Inbox(loop)
            return inbox
