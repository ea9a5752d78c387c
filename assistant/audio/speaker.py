"""The live speaker: 24 kHz audio through a callback-driven sounddevice output stream."""

from __future__ import annotations

import asyncio
import math
import threading
import time
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
    (silence was going to follow the tail anyway). The device samples handed out convert back to
    the 24 kHz timeline exactly (soxr's stream output starts aligned with its input: its delay
    only holds samples back, which are counted when they come out).

    The device holds `latency` of audio: PortAudio recovers an underrun with snd_pcm_prepare,
    which through ALSA's pulse plugin drops what the server held, and on a busy 2-core machine
    the audio thread stalls for 100-250 ms now and then (with 0.2 s speech still came out chopped,
    with 0.3 s now and then). So audio is heard up to `latency` after it is handed out, and
    `interrupt()` drops that buffer (see DeviceStream._flush).

    `played` is what has been heard: a block counts once PortAudio's estimate of when its last
    sample reaches the speaker (outputBufferDacTime) has passed, as a later callback or
    interrupt() sees it. Through PulseAudio the estimate is mostly ~20 ms late, now and then
    ~100 ms off between the bursts of callbacks the server asks for; audio that interrupt()
    dropped is never counted.

    "First audio played": `await speaker.wait_played(start + 1)`, where `start` is the position
    before the chunk (its `play()` return value minus its length), resolves once the block with
    the chunk's first samples is estimated heard. Call `play()`, `interrupt()` and `wait_played()`
    from the loop's thread.
    """

    direction = "output"
    role = "speaker"
    flushable = True
    latency: float = 0.4  # seconds the device holds (see above); `latency_ms` changes it

    def __init__(
        self,
        device: int | str | None,
        block_ms: int = 10,
        playback_rate: int | None = None,
        on_error: Callable[[str], None] | None = None,
        latency_ms: int | None = None,
        on_render: Callable[[np.ndarray, int], None] | None = None,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(device, block_ms, playback_rate, on_error, retry_s=1.0)
        self.on_render = on_render  # (block, device rate) as handed to the device, from the audio thread
        self.on_drop = on_drop  # the device dropped what it held (flushed, or an underrun: see _callback)
        if latency_ms is not None:
            self.latency = latency_ms / 1000
        self._lock = threading.Lock()  # guards the queue and the run, shared with the audio thread
        self._queue: deque[np.ndarray] = deque()  # 24 kHz audio not yet resampled
        self._ready: np.ndarray = _EMPTY  # the current run's resampled audio, not yet handed out
        self._resampler: StreamResampler | None = None
        self._run = _Run(start=0)
        self._end = 0
        self._sent = 0  # 24 kHz position handed out to the device
        self._unheard: deque[tuple[float, int]] = deque()  # (monotonic time heard, position then) per block
        self._played = 0  # 24 kHz position heard
        self._silenced = False  # interrupt() until the device has dropped what it held: hand out nothing
        self._paused = False  # pause() until resume(): hand out nothing, keep what is queued
        self._handed: deque[tuple[int, np.ndarray]] = deque()  # (24 kHz position, audio) handed out, not all heard
        self._waiters: list[tuple[int, asyncio.Future[bool]]] = []
        self._wake_at: float = math.inf  # smallest position waited for; read by the audio thread

    @property
    def played(self) -> int:
        return self._played

    @property
    def unheard(self) -> int:
        """24 kHz samples given to play() and not yet heard (queued or in the device): what interrupt() drops."""
        return self._end - self._played

    @property
    def unbroken(self) -> int:
        """Of `unheard`, the samples that will be heard from now on without a break (0 during a gap).

        They all are while the run being heard (see _Run: some of it has been heard, so no silence comes
        before it) is still going: it ends only when the queue runs dry, after them.
        """
        with self._lock:
            run = self._run
            return self.unheard if run.start < self._played and not run.flushed else 0

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
        """Go silent now: drop everything queued and what the device holds; play() goes on from `played`.

        `played` stays what had been heard at the call. The device drops its buffer in a thread
        (see DeviceStream._flush): until then callbacks output silence, so audio played right
        after the call goes to the emptied buffer.
        """
        with self._lock:
            self._silenced = True
        self._drop()
        self._flush()

    def pause(self) -> None:
        """Go silent now, keeping what was not heard: resume() plays on from `played` (see interrupt())."""
        with self._lock:
            self._hear(time.monotonic())
            self._paused = self._silenced = True
            replay = [
                audio[max(self._played - start, 0) :]
                for start, audio in self._handed
                if start + audio.size > self._played
            ]
            self._queue.extendleft(reversed(replay))
            self._rewind()
        self._flush()

    def resume(self) -> None:
        """Play on after pause()."""
        with self._lock:
            self._paused = False

    def _rewind(self) -> None:
        """Back to `played`: nothing handed out is still to be heard (lock held)."""
        self._handed.clear()
        self._ready = _EMPTY
        if self._resampler is not None:
            self._resampler.clear()
        self._unheard.clear()
        self._run = _Run(start=self._played)
        self._sent = self._played

    def _drop(self) -> None:
        """Forget the queued audio and what was handed out but not heard; settle the waits."""
        with self._lock:
            self._hear(time.monotonic())
            self._paused = False
            self._queue.clear()
            self._rewind()
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
        self._drop()

    def _on_lost(self) -> None:
        self._drop()

    def _on_flushed(self) -> None:
        with self._lock:
            self._silenced = False
        if self.on_drop is not None:
            self.on_drop()

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
            self._silenced = False
        return self._callback

    def _callback(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        now = time.monotonic()
        heard_at = now + time_info.outputBufferDacTime - time_info.currentTime + frames / self.rate
        with self._lock:
            audio = _EMPTY if self._silenced or self._paused else self._take(frames)
            if self._sent > (self._unheard[-1][1] if self._unheard else self._played):
                self._unheard.append((heard_at, self._sent))
            self._hear(now)
        outdata[: audio.size, 0] = audio
        outdata[audio.size :] = 0
        if status.output_underflow and self.on_drop is not None:
            # PortAudio recovered an underrun (snd_pcm_prepare: through ALSA's pulse plugin the server's buffer went
            # too); this block starts the device's buffer anew, as after a flush. On a busy machine this happens as
            # the assistant starts, and an echo canceller that kept its reference's timeline put the echo ~70 ms
            # nearer than after any later restart.
            self.on_drop()
        if self.on_render is not None:  # the echo canceller's reference: what the device will play, silence too
            self.on_render(outdata[:, 0], self.rate)
        if self._played >= self._wake_at:
            self._notify(self._wake)

    def _hear(self, now: float) -> None:
        """Advance `played` over the blocks heard by `now` (lock held)."""
        while self._unheard and self._unheard[0][0] <= now:
            self._played = self._unheard.popleft()[1]
        while self._handed and self._handed[0][0] + self._handed[0][1].size <= self._played:
            self._handed.popleft()

    def _take(self, frames: int) -> np.ndarray:
        """Up to `frames` device-rate samples of queued audio, advancing `_sent` (lock held)."""
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
            self._handed.append((run.start + run.fed, piece))
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
            self._sent = run.start + run.fed
        else:
            self._sent = run.start + min(run.fed, run.out * PLAYBACK_RATE // self.rate)
