"""Hand text deltas from a producer (a task reading a server, or a worker thread running a model) to the
async generator that yields them, so that waiting for the next delta can end on a timeout or on cancel
without the producer being interrupted half-way through a read.
"""

from __future__ import annotations

import asyncio

Item = str | BaseException | None
"""A delta, the producer's failure, or None for the end of the reply."""


class Feed:
    """One reply's deltas; `get` returns None at the end or once the `cancel` event is set."""

    def __init__(self, cancel: asyncio.Event | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Item] = asyncio.Queue()
        self._cancel = cancel
        self._watcher = asyncio.ensure_future(self._end_on(cancel)) if cancel is not None else None

    def put(self, item: Item) -> None:
        """From the event loop."""
        self._queue.put_nowait(item)

    def put_threadsafe(self, item: Item) -> None:
        """From a worker thread."""
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def get(self, timeout_s: float | None = None) -> str | None:
        """The next delta; None when the reply ended or was cancelled. Raises the producer's error, or
        TimeoutError when nothing came within `timeout_s`."""
        item = await asyncio.wait_for(self._queue.get(), timeout_s)
        if self._cancel is not None and self._cancel.is_set():
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()

    async def _end_on(self, cancel: asyncio.Event) -> None:
        await cancel.wait()
        self._queue.put_nowait(None)
