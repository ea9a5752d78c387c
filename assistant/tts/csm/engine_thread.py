"""The one long-lived thread an engine runs all its model and codec work on.

CUDA keeps its library handles (cuBLAS, cuDNN) and moshi its graph state per thread: on a GPU, the first call
on a thread that never ran the engine paid 300-400 ms for them. The engine therefore owns one thread, does its
loading, graph capture and warm-up on it, and hands every later call to it; nothing of the engine runs on a
shared executor.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class EngineThread:
    """A single worker thread: calls run on it one at a time, in the order they were handed in."""

    def __init__(self, name: str = "csm-engine"):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.thread: threading.Thread = self._executor.submit(threading.current_thread).result()
        self._pending = 0
        self._count = threading.Lock()
        weakref.finalize(self, self._executor.shutdown, wait=False)

    def on_it(self) -> bool:
        return threading.current_thread() is self.thread

    def idle(self) -> bool:
        """Whether no call is running or waiting."""
        return self._pending == 0

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        with self._count:
            self._pending += 1
        future = self._executor.submit(fn, *args)
        future.add_done_callback(self._done)
        return future

    def _done(self, _: Future[Any]) -> None:
        with self._count:
            self._pending -= 1

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the thread and wait for it (directly when already on it, which would otherwise deadlock)."""
        return fn(*args) if self.on_it() else self.submit(fn, *args).result()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the thread without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(fn, *args))

    def close(self) -> None:
        """Let the thread end once the calls already handed in are done."""
        self._executor.shutdown(wait=False)
