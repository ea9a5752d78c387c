"""The live microphone: a sounddevice input stream at the device's own rate, as 16 kHz blocks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import numpy as np

from assistant.audio.live import Callback, DeviceStream, StreamResampler
from assistant.audio.streams import CAPTURE_RATE

QUEUE_S = 2.0
"""Audio held for a consumer that falls behind; older blocks are dropped beyond it."""


class Microphone(DeviceStream):
    """An AudioSource on a sound card (or sound server) input.

    The device opens on the first `blocks()` step or an explicit `await mic.start()`, which raise
    AudioDeviceError naming the device when it is missing or will not open (busy, bad rate).
    Losing it later is reported through `on_error` and retried every `retry_s` (see DeviceStream);
    `blocks()` just waits meanwhile and goes on when the device is back.

    The audio thread never waits: each block is resampled there (streaming, so block edges leave
    no trace), goes through `process` when one is set (the echo canceller: there, in step with the
    speaker's audio thread, the loop's own delays cannot move its reference), and is handed to the
    loop; when the consumer falls more than QUEUE_S behind, the oldest blocks are dropped, reported
    once per episode. Before the first read (the device opens before the models load) they are dropped
    silently, until the first reader has caught up: nobody was behind.
    """

    direction = "input"
    role = "microphone"
    latency: float | Literal["low", "high"] = "high"  # larger host buffers, fewer overruns (`latency_ms` asks for less)

    def __init__(
        self,
        device: int | str | None,
        block_ms: int = 20,
        capture_rate: int | None = None,
        on_error: Callable[[str], None] | None = None,
        retry_s: float = 1.0,
        latency_ms: int | None = None,
    ) -> None:
        super().__init__(device, block_ms, capture_rate, on_error, retry_s)
        if latency_ms is not None:
            self.latency = latency_ms / 1000
        self._queue: asyncio.Queue[np.ndarray | None] = asyncio.Queue()  # None: closed
        self._queued = 0  # samples in the queue (soxr gives blocks of uneven size)
        self._behind = False
        self._reading = False  # blocks() has begun: from then on, dropped audio is reported
        self.process: Callable[[np.ndarray], np.ndarray] | None = None  # applied to each block in the audio thread

    async def blocks(self) -> AsyncIterator[np.ndarray]:
        """Mono float32 blocks at 16 kHz until `aclose()`."""
        if self.closed:
            return
        await self.start()
        self._reading = True
        while (block := await self._queue.get()) is not None:
            self._queued -= block.size
            if not self._queued:
                self._behind = False
            yield block

    async def aclose(self) -> None:
        await super().aclose()
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queued = 0
        self._queue.put_nowait(None)  # ends blocks()

    def _stream_callback(self) -> Callback:
        resample = StreamResampler(self.rate, CAPTURE_RATE)

        def callback(indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
            block = resample(indata[:, 0])
            if self.process is not None:
                block = self.process(block)
            if block.size:
                self._notify(self._put, block)

        return callback

    def _put(self, block: np.ndarray) -> None:
        if self.closed:
            return
        while self._queued + block.size > QUEUE_S * CAPTURE_RATE and not self._queue.empty():
            dropped = self._queue.get_nowait()
            assert dropped is not None  # None is put only once closed
            self._queued -= dropped.size
            if not self._behind:  # an episode: until the consumer has caught up (the queue ran empty)
                self._behind = True
                if self._reading:  # before that, the audio queued while the models load is only let go
                    self._report(f"{self.role} {self.name}: audio is not read fast enough; dropping the oldest")
        self._queue.put_nowait(block)
        self._queued += block.size
