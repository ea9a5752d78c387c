"""How many streams run at once (the engine's slots) and how many requests may wait for one."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .errors import ApiError, unavailable


class Admission:
    """`async with admission.slot():` runs with one of `slots` slots, waiting in line (first come, first served)
    behind at most `max_queue` others; beyond that a request is refused at once (429), and after `close()` every
    request, waiting or new, gets 503."""

    def __init__(self, slots: int, max_queue: int) -> None:
        self.slots, self.max_queue = slots, max_queue
        self.active = 0
        self.closed = False
        self._waiting: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self._acquire()
        try:
            yield
        finally:
            self._release()

    async def _acquire(self) -> None:
        if self.closed:
            raise _closing()
        if self.active < self.slots:
            self.active += 1
            return
        if len(self._waiting) >= self.max_queue:
            raise ApiError(
                429,
                f"all {self.slots} speech slots are busy and {self.max_queue} requests are waiting; try again shortly",
                type="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": "1"},
            )
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            await turn  # a released slot is handed over as it stands: `active` does not change
        except asyncio.CancelledError:
            if turn in self._waiting:
                self._waiting.remove(turn)
            elif not turn.cancelled() and turn.exception() is None:
                self._release()  # handed a slot in the same moment the client left: pass it on
            raise

    def _release(self) -> None:
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self.active -= 1

    def close(self) -> None:
        """Refuse new requests, and the waiting ones (503)."""
        self.closed = True
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_exception(_closing())


def _closing() -> ApiError:
    return unavailable("the speech server is shutting down")
