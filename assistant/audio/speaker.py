"""The live speaker: 24 kHz audio through a callback-driven sounddevice output stream."""

from __future__ import annotations

import asyncio
import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from assistant.audio.live import Callback, DeviceStream, StreamResampler
from assistant.audio.streams import PLAYBACK_RATE

_EMPTY = np.zeros(0, np.float32)


@dataclass
class _Run:
    """Audio that went through the resampler without a break, on the 24 kHz timeline."""

    start: int  # 24 kHz position of its first sample
    fed: int = 0  # 24 kHz samples fed to the resampler
    out: int = 0  # device-rate samples handed out
    flushed: bool = False  # the resampler has given up its tail: nothing more joins this run


class Speaker(DeviceStream):
    """An AudioSink on a sound card (or sound server) output, at the device's own rate.

    `await speaker.start()` (or `async with`) opens the device: AudioDeviceError names it when it
    is missing or will not open; losing it later drops what is queued (as `interrupt()` does),
    is reported through `on_error` and retried every second (see DeviceStream).

    `play()` only queues 24 kHz audio. The callback resamples it as it goes, through one streaming
    resampler for as long as audio keeps coming, so consecutive chunks join without a seam; when
    the queue runs dry it flushes the resampler's tail and starts a new run with the next chunk
    (silence was going to follow the tail anyway). `played` converts the device samples handed
    out back to the 24 kHz timeline exactly, so a chunk's end position is reached exactly when its
    last resampled sample has gone out (soxr's stream output starts aligned with its input: its
    delay only holds samples back, which are counted when they come out).

    "First audio played": `await speaker.wait_played(start + 1)`, where `start` is the position
    before the chunk (its `play()` return value minus its length), resolves one loop wake-up after
    the callback that handed out the chunk's first samples (median 1.4 ms, at most 14 ms on a busy
    2-core machine); they are heard PortAudio's output latency later (~20 ms through PulseAudio).
    Call `play()`, `interrupt()` and `wait_played()` from the loop's thread.
    """

    direction = "output"
    role = "speaker"
    latency = "low"  # what PortAudio holds is still heard after interrupt()

    def __init__(
        self,
        device: int | str | None,
        block_ms: int = 10,
        playback_rate: int | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(device, block_ms, playback_rate, on_error, retry_s=1.0)
        self._lock = threading.Lock()  # guards the queue and the run, shared with the audio thread
        self._queue: deque[np.ndarray] = deque()  # 24 kHz audio not yet resampled
        self._ready = _EMPTY  # the current run's resampled audio, not yet handed out
        self._resampler: StreamResampler | None = None
        self._run = _Run(start=0)
        self._end = 0
        self._played = 0
        self._waiters: list[tuple[int, asyncio.Future[bool]]] = []
        self._wake_at: float = math.inf  # smallest position waited for; read by the audio thread

    @property
    def played(self) -> int:
        return self._played

    def play(self, audio: np.ndarray) -> int:
        """Queue mono float32 24 kHz audio; returns the `played` position at which it ends."""
        if self._opened is None:
            raise RuntimeError(f"{self.role} {self.name} is not started: await its start() first")
        audio = np.array(audio, np.float32).reshape(-1)
        with self._lock:
            if audio.size:
                self._queue.append(audio)
            self._end += audio.size
            return self._end

    def interrupt(self) -> None:
        """Drop everything queued: the next callback outputs silence, and play() goes on from `played`."""
        with self._lock:
            self._queue.clear()
            self._ready = _EMPTY
            if self._resampler is not None:
                self._resampler.clear()
            self._run = _Run(start=self._played)
            self._end = played = self._played
        for position, future in self._waiters:
            if not future.done():
                future.set_result(position <= played)
        self._waiters.clear()
        self._wake_at = math.inf

    async def wait_played(self, position: int) -> bool:
        """True once `played` reaches `position`; False when interrupt(), a lost device or aclose() drops it."""
        if position <= self._played:
            return True
        if self.closed:
            return False
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((position, future))
        self._wake_at = min(self._wake_at, position)
        if position <= self._played:  # the callback may have passed it before seeing _wake_at
            self._wake()
        try:
            return await future
        finally:
            if future.cancelled():
                self._wake()  # forgets it

    async def aclose(self) -> None:
        await super().aclose()
        self.interrupt()

    def _on_lost(self) -> None:
        self.interrupt()

    def _wake(self) -> None:
        """Resolve the waits that `played` has reached (on the loop)."""
        played = self._played
        waiting = []
        for position, future in self._waiters:
            if future.done():
                continue
            if position <= played:
                future.set_result(True)
            else:
                waiting.append((position, future))
        self._waiters = waiting
        self._wake_at = min((position for position, _ in waiting), default=math.inf)

    def _stream_callback(self) -> Callback:
        with self._lock:
            self._resampler = StreamResampler(PLAYBACK_RATE, self.rate)
        return self._callback

    def _callback(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        with self._lock:
            audio = self._take(frames)
        outdata[: audio.size, 0] = audio
        outdata[audio.size :] = 0
        if self._played >= self._wake_at:
            self._notify(self._wake)

    def _take(self, frames: int) -> np.ndarray:
        """Up to `frames` device-rate samples of queued audio, advancing `played` (lock held)."""
        parts = []
        need = frames
        while need:
            if not self._ready.size and not self._refill(need):
                break
            part, self._ready = self._ready[:need], self._ready[need:]
            parts.append(part)
            need -= part.size
            self._advance(part.size)
        return np.concatenate(parts) if parts else _EMPTY

    def _refill(self, need: int) -> bool:
        """Resample more of the queue into `_ready` (which is empty); False when there is nothing."""
        assert self._resampler is not None
        run = self._run
        if run.flushed:  # its tail has gone out: the next audio starts a new run
            run = self._run = _Run(start=run.start + run.fed)
        if self._queue:
            piece = self._pop(max(math.ceil(need * PLAYBACK_RATE / self.rate), PLAYBACK_RATE * self._block_ms // 1000))
            self._ready = self._resampler(piece)
            run.fed += piece.size
            return True
        if run.fed:  # the queue ran dry: flush what the resampler still holds
            self._ready = self._resampler(_EMPTY, last=True)
            self._resampler.clear()
            run.flushed = True
            return True
        return False

    def _pop(self, count: int) -> np.ndarray:
        """Take up to `count` samples from the front of the 24 kHz queue."""
        parts = []
        while count and self._queue:
            head = self._queue[0]
            parts.append(head[:count])
            if head.size <= count:
                self._queue.popleft()
            else:
                self._queue[0] = head[count:]
            count -= parts[-1].size
        return np.concatenate(parts)

    def _advance(self, handed_out: int) -> None:
        run = self._run
        run.out += handed_out
        if run.flushed and not self._ready.size:
            self._played = run.start + run.fed
        else:
            self._played = run.start + min(run.fed, run.out * PLAYBACK_RATE // self.rate)
