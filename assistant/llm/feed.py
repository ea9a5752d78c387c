"""Hand a reply's items (text deltas, tool calls) from a producer (a task reading a server, or a worker thread
running a model) to the async generator that yields them, so that waiting for the next one can end on a timeout
or on cancel without the producer being interrupted half-way through a read.
"""

from __future__ import annotations

import asyncio
import enum
from typing import Generic

from typing_extensions import TypeVar

from assistant.llm.backend import ToolCall


class Progress(enum.Enum):
    """A sign of life with nothing to yield yet (a piece of a tool call's arguments): the consumer restarts its
    stall timer on it."""

    MADE = enum.auto()


T = TypeVar("T", default=str | ToolCall)
"""What the consumer gets: text deltas and tool calls, unless a producer says otherwise (e.g. with `Progress`)."""

Item = str | ToolCall | BaseException | None
"""What a default feed carries: a delta, a tool call, the producer's failure, or None for the end of the reply."""


class Feed(Generic[T]):
    """One reply's items; `get` returns None at the end or once the `cancel` event is set."""

    def __init__(self, cancel: asyncio.Event | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[T | BaseException | None] = asyncio.Queue()
        self._cancel = cancel
        self._watcher = asyncio.ensure_future(self._end_on(cancel)) if cancel is not None else None

    def put(self, item: T | BaseException | None) -> None:
        """From the event loop: an item, the producer's failure, or None for the end of the reply."""
        self._queue.put_nowait(item)

    def put_threadsafe(self, item: T | BaseException | None) -> None:
        """From a worker thread."""
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def get(self, timeout_s: float | None = None) -> T | None:
        """The next item; None when the reply ended or was cancelled. Raises the producer's error, or
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
