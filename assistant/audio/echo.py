"""Echo cancellation on the microphone: WebRTC's AEC3, through livekit's AudioProcessingModule.

With open speakers the microphone hears the assistant. The assistant plays every sample itself, so the canceller
gets the exact far-end signal: the speaker reports each block as it hands it to its device (`rendered`, from the
audio thread), and `clean` feeds AEC3 one frame of that reference, in the order it was handed out and through a
short jitter buffer, before each 10 ms microphone frame. A block is handed out before it can be heard, so the
reference always comes before its echo; AEC3's delay estimator finds the rest (the device's buffer, the room, the
microphone's buffer: up to ~500 ms, so keep `audio.output_latency_ms` at 250 or less with it). The devices' own estimates of when a block is
heard were tried for alignment and dropped: PulseAudio's null sink plays a block as soon as it has it, ~100 ms
before PortAudio's estimate, which put the reference after its echo.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import AsyncIterator

import numpy as np

from assistant.audio.live import StreamResampler
from assistant.audio.streams import CAPTURE_RATE, AudioSource

FRAME = CAPTURE_RATE // 100  # AEC3 works on 10 ms frames
PRIME_S = 0.12
MAX_AHEAD_S = 0.3
"""Beyond this much reference not yet fed (the speaker handed out audio before the microphone started, or the loop
fell behind), only the newest PRIME_S is kept: one reference frame goes with each microphone frame, so a backlog
would put every echo that much further from its reference, past what AEC3 can find."""
WARM_UP_S = 3.0
"""Until AEC3 has heard this much of the speaker, the microphone is silent while the speaker sounds (as Unmute
ignores the first 3 s): its first adaptation lets enough echo through to sound like speech."""
SOUND = 1e-4


class EchoCancellerError(RuntimeError):
    """The canceller's library is missing or would not start."""


class EchoCanceller:
    """Cleans 16 kHz microphone blocks of what the speaker played (`clean`, on the loop's thread).

    `cpu_s` is the CPU time spent cancelling, for the benchmark.
    """

    def __init__(self, noise_suppression: bool = False) -> None:
        try:
            from livekit import rtc
        except ImportError as error:
            raise EchoCancellerError(f"echo cancellation needs the livekit package ({error})") from None
        self._rtc = rtc
        self._apm = rtc.AudioProcessingModule(
            echo_cancellation=True, noise_suppression=noise_suppression, high_pass_filter=True
        )
        self._rendered: deque[tuple[int, np.ndarray]] = deque()  # (rate, samples) from the audio thread
        self._lock = threading.Lock()
        self._resampler: StreamResampler | None = None
        self._rate = 0
        self._far = np.zeros(0, np.float32)  # 16 kHz reference handed out, not yet fed
        self._drop_far = False  # the speaker dropped what its device held: so does `_far`
        self._primed = False  # `_far` has filled to PRIME_S since it was last empty
        self._near = np.zeros(0, np.float32)  # microphone samples short of a whole frame
        self.sounded_s = 0.0  # seconds of the speaker's sound fed as the reference so far
        self.cpu_s = 0.0

    @property
    def warming_up(self) -> bool:
        """AEC3 has heard less than WARM_UP_S of the speaker's sound: its first adaptation still lets echo through."""
        return self.sounded_s < WARM_UP_S

    def rendered(self, audio: np.ndarray, rate: int) -> None:
        """The speaker handed `audio` (mono, at its device rate) to its device. Called from the audio thread;
        only a copy is queued."""
        with self._lock:
            self._rendered.append((rate, np.array(audio, np.float32)))

    def dropped(self) -> None:
        """The speaker's device dropped what it held (an interrupt, a pause): that audio, the newest handed out, is
        never heard, and the reference not yet fed is about the same audio, so it goes too; otherwise every later
        echo would come that much after its reference. Called from the speaker's flushing thread."""
        with self._lock:
            self._rendered.clear()
            self._drop_far = True

    def clean(self, block: np.ndarray) -> np.ndarray:
        """The block with the speaker's echo taken out; up to one frame (10 ms) later than it came."""
        started = time.thread_time()
        self._take_rendered()
        near = np.concatenate([self._near, np.asarray(block, np.float32)])
        whole = len(near) // FRAME * FRAME
        out = np.empty(whole, np.float32)
        for start in range(0, whole, FRAME):
            far = self._next_far()
            sounding = bool(np.max(np.abs(far)) > SOUND)
            self.sounded_s += sounding * FRAME / CAPTURE_RATE
            self._apm.process_reverse_stream(self._frame(far))
            out[start : start + FRAME] = self._process(near[start : start + FRAME])
            if sounding and self.warming_up:  # not adapted yet: what it lets through would be mostly echo
                out[start : start + FRAME] = 0.0
        self._near = near[whole:]
        self.cpu_s += time.thread_time() - started
        return out

    def _next_far(self) -> np.ndarray:
        """The reference frame that goes with the next microphone frame. The speaker hands its audio out in bursts
        (PulseAudio asks for ~100 ms at a time), so the reference waits in a jitter buffer: feeding starts once
        PRIME_S is in, and only a buffer that ran dry starts again (with silence until then), so the reference
        keeps one distance from its echo."""
        if not self._primed and len(self._far) >= PRIME_S * CAPTURE_RATE:
            self._primed = True
        if not self._primed or len(self._far) < FRAME:
            self._primed = False
            return np.zeros(FRAME, np.float32)
        far, self._far = self._far[:FRAME], self._far[FRAME:]
        return far

    def _take_rendered(self) -> None:
        with self._lock:
            blocks, self._rendered = self._rendered, deque()
            if self._drop_far:
                self._far, self._drop_far, self._primed = self._far[:0], False, False
        for rate, audio in blocks:
            if rate != self._rate:
                self._resampler, self._rate = StreamResampler(rate, CAPTURE_RATE), rate
            assert self._resampler is not None
            self._far = np.concatenate([self._far, self._resampler(audio)])
        if len(self._far) > MAX_AHEAD_S * CAPTURE_RATE:  # far ahead of the microphone: keep the newest
            self._far = self._far[-int(PRIME_S * CAPTURE_RATE) :]

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
