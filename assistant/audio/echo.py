"""Echo cancellation on the microphone: WebRTC's AEC3, through livekit's AudioProcessingModule.

With open speakers the microphone hears the assistant. The assistant plays every sample itself, so the canceller
gets the exact far-end signal: the speaker reports each block it hands to its device with the time the block will
be heard (`rendered`, from the audio thread), and before each 10 ms microphone frame `clean` feeds the canceller
the speaker's audio heard up to when that frame was captured. What is left for AEC3's own delay estimator (it
finds up to ~500 ms) is the acoustic path and the error of the devices' latency estimates; the reference is fed
`lead_s` early so that it never comes after its own echo.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

import numpy as np

from assistant.audio.live import StreamResampler
from assistant.audio.streams import CAPTURE_RATE, AudioSource

log = logging.getLogger(__name__)

FRAME = CAPTURE_RATE // 100  # AEC3 works on 10 ms frames
LEAD_S = 0.08


class EchoCancellerError(RuntimeError):
    """The canceller's library is missing or would not start."""


class EchoCanceller:
    """Cleans 16 kHz microphone blocks of what the speaker played (`clean`, on the loop's thread).

    `input_latency_s` says how long ago the newest microphone sample was captured when its block arrives (the
    microphone stream's reported latency); `clock` is the clock of the speaker's `heard_at` times. `cpu_s` is the
    CPU time spent cancelling, for the benchmark.
    """

    def __init__(
        self, input_latency_s: Callable[[], float], noise_suppression: bool = False, lead_s: float = LEAD_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        try:
            from livekit import rtc
        except ImportError as error:
            raise EchoCancellerError(f"echo cancellation needs the livekit package ({error})") from None
        self._rtc = rtc
        self._apm = rtc.AudioProcessingModule(
            echo_cancellation=True, noise_suppression=noise_suppression, high_pass_filter=True
        )
        self._input_latency_s = input_latency_s
        self._lead_s = lead_s
        self._clock = clock
        self._rendered: deque[tuple[float, int, np.ndarray]] = deque()  # (heard at, rate, samples) from the audio thread
        self._lock = threading.Lock()
        self._resampler: StreamResampler | None = None
        self._rate = 0
        self._far = np.zeros(0, np.float32)  # 16 kHz reference not yet fed
        self._far_at = 0.0  # when the first sample of `_far` is heard
        self._near = np.zeros(0, np.float32)  # microphone samples short of a whole frame
        self.cpu_s = 0.0

    def rendered(self, audio: np.ndarray, rate: int, heard_at: float) -> None:
        """The speaker handed `audio` (mono, at its device rate) to its device; its first sample is heard at
        `heard_at` (time.monotonic()). Called from the audio thread; only a copy is queued."""
        with self._lock:
            self._rendered.append((heard_at, rate, np.array(audio, np.float32)))

    def clean(self, block: np.ndarray) -> np.ndarray:
        """The block with the speaker's echo taken out; up to one frame (10 ms) later than it came."""
        started = time.thread_time()
        captured_at = self._clock() - self._input_latency_s() - len(block) / CAPTURE_RATE
        near = np.concatenate([self._near, np.asarray(block, np.float32)])
        whole = len(near) // FRAME * FRAME
        out = np.empty(whole, np.float32)
        self._take_rendered()
        for start in range(0, whole, FRAME):
            self._feed_far(captured_at + (start - len(self._near)) / CAPTURE_RATE + self._lead_s)
            out[start : start + FRAME] = self._process(near[start : start + FRAME])
        self._near = near[whole:]
        self.cpu_s += time.thread_time() - started
        return out

    def _take_rendered(self) -> None:
        with self._lock:
            blocks, self._rendered = self._rendered, deque()
        for heard_at, rate, audio in blocks:
            if rate != self._rate:
                self._resampler, self._rate = StreamResampler(rate, CAPTURE_RATE), rate
            assert self._resampler is not None
            if not self._far.size:
                self._far_at = heard_at
            self._far = np.concatenate([self._far, self._resampler(audio)])

    def _feed_far(self, until: float) -> None:
        """Feed the reference frames heard before `until`."""
        due = int((until - self._far_at) * CAPTURE_RATE) // FRAME * FRAME
        if due <= 0:
            return
        frames, self._far = self._far[:due], self._far[due:]
        self._far_at += due / CAPTURE_RATE
        for start in range(0, len(frames) - FRAME + 1, FRAME):
            self._apm.process_reverse_stream(self._frame(frames[start : start + FRAME]))

    def _process(self, samples: np.ndarray) -> np.ndarray:
        frame = self._frame(samples)
        self._apm.process_stream(frame)
        return np.frombuffer(frame.data, np.int16).astype(np.float32) / 32768

    def _frame(self, samples: np.ndarray) -> object:
        pcm = (np.clip(samples, -1.0, 32767 / 32768) * 32768).astype(np.int16)
        return self._rtc.AudioFrame(pcm.tobytes(), CAPTURE_RATE, 1, FRAME)


class EchoCancelledSource:
    """An AudioSource whose blocks went through an EchoCanceller."""

    def __init__(self, source: AudioSource, canceller: EchoCanceller) -> None:
        self.source = source
        self.canceller = canceller

    async def blocks(self) -> AsyncIterator[np.ndarray]:
        async for block in self.source.blocks():
            if (cleaned := self.canceller.clean(block)).size:
                yield cleaned

    async def aclose(self) -> None:
        await self.source.aclose()
