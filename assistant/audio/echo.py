"""Echo cancellation on the microphone: WebRTC's AEC3, through livekit's native library (`assistant.audio.aec3`).

With open speakers the microphone hears the assistant. The assistant plays every sample itself, so the canceller
gets the exact far-end signal: the speaker reports each block as it hands it to its device (`rendered`, from its
audio thread) and the microphone's audio thread cleans each block as it is captured (`clean`). Both run in step
with the devices, so the loop's delays never move the reference. A block handed out is placed where the
microphone is at that moment by its clock, and each later block right after it: the echo then always comes a fixed
distance after its reference (the device's buffer, the room, the microphone's buffer), which AEC3's delay
estimator finds, up to ~500 ms (keep `audio.output_latency_ms` at 250 or less with it). Only a new start of the
speaker's stream (after a pause, an interrupt or an underrun dropped what its device held) or a speaker that fell
behind places a block anew, which keeps the old distance.

The microphone's clock, not its count of samples: its blocks reach the callback 0-40 ms late, varying, and
placing a new start by the count moved the echo by that much (on PulseAudio the echo's distance after each restart
followed the count's lateness with a correlation of 0.99); AEC3 then needed a second to find it again, and a loud
echo passed meanwhile. The earliest-arriving of the recent blocks tell where the clock is. The devices' own
estimates of when a block is heard were tried for alignment and dropped: PortAudio's estimate for PulseAudio's null
sink is ~100 ms late, and 0 at a stream's first callback.

When the echo's distance moves anyway (a changed room or device, a sound server that started the stream again with
a different buffer), AEC3 needs a second or two to find it again and lets a loud echo through meanwhile: while the
output is that echo (`EchoLeakDetector`), the microphone is silent. Silencing it whenever the raw microphone's echo
seemed to move was tried first and dropped: a person talking over the assistant moved it too, and their barge-ins
were held back by up to a second.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from assistant.audio.aec3 import FRAME, Aec3
from assistant.audio.echo_leak import EchoLeakDetector
from assistant.audio.live import StreamResampler
from assistant.audio.streams import CAPTURE_RATE

CLOCK_S = 5.0
"""The microphone's clock is read from the blocks of the last this many seconds (long enough to hold a few that
came on time, short enough to follow a sound card's drift)."""
MAX_PENDING = 1000
"""Speaker blocks kept while the microphone's clock is not known yet (~10 s of them); beyond, they start afresh."""
MAX_AHEAD_S = 0.5
"""A reference this far ahead of the microphone (the microphone stopped while the speaker went on) is placed anew."""
WARM_UP_S = 3.0
"""Until AEC3 has heard this much of the speaker, the microphone is silent while the speaker sounds (as Unmute
ignores the first 3 s): its first adaptation lets enough echo through to sound like speech."""
ECHO_SPAN_S = 0.5
"""The echo of a sound goes on this long after its reference (the distance and the room's reverberation)."""
SOUND = 1e-4  # a reference frame with a sample above this has sound


class EchoCanceller:
    """Cleans 16 kHz microphone blocks of what the speaker played (`clean`, in the microphone's audio thread).

    `cpu_s` is the CPU time it has spent, in both audio threads, for the benchmark.
    """

    def __init__(self, noise_suppression: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        self._aec3 = Aec3(noise_suppression)
        self._lock = threading.Lock()  # guards `_rendered` and `_restarted`; the rest is the microphone thread's
        self._rendered: list[tuple[int, np.ndarray, float]] = []  # (rate, samples, when handed out)
        self._restarted = True  # the speaker's stream (re)started: its next block is placed anew
        self._resampler: StreamResampler | None = None
        self._rate = 0
        self._far: np.ndarray = np.zeros(0, np.float32)  # 16 kHz reference, from microphone position `_far_at`
        self._far_at = 0
        self._near: np.ndarray = np.zeros(0, np.float32)  # microphone samples short of a whole frame
        self._position = 0  # microphone samples taken in so far (whole frames and `_near`)
        self._clock = clock
        # per block (of 10 ms or more): when the microphone would have started had that block come at once (its
        # arrival less its position); the smallest is the clock
        self._starts: deque[float] = deque(maxlen=round(CLOCK_S * 100))
        self._last_sound = -CAPTURE_RATE  # microphone position of the last reference frame with sound
        self._leak = EchoLeakDetector()
        self.sounded_s = 0.0  # seconds of the speaker's sound fed as the reference so far
        self._cpu_s = [0.0, 0.0]  # in the speaker's audio thread, in the microphone's

    @property
    def cpu_s(self) -> float:
        return sum(self._cpu_s)

    @property
    def warming_up(self) -> bool:
        """AEC3 has heard less than WARM_UP_S of the speaker: the microphone is silent while the speaker sounds."""
        return self.sounded_s < WARM_UP_S

    def rendered(self, audio: np.ndarray, rate: int) -> None:
        """The speaker handed `audio` (mono, at its device rate) to its device. Called from its audio thread;
        only a copy is queued, with the time."""
        started = time.thread_time()
        with self._lock:
            if len(self._rendered) > MAX_PENDING:  # the microphone has not started (or stopped): start afresh
                self._rendered.clear()
                self._restarted = True
            self._rendered.append((rate, np.array(audio, np.float32), self._clock()))
        self._cpu_s[0] += time.thread_time() - started

    def microphone_at(self, now: float) -> int:
        """The microphone's position at time `now`, by its clock (once a block has come)."""
        return round((now - min(self._starts)) * CAPTURE_RATE)

    def dropped(self) -> None:
        """The speaker's device dropped what it held and its stream starts again (an interrupt, a pause, an
        underrun): the reference not yet fed is never heard, and the next block handed out is placed anew. Called
        from the speaker's flushing thread while no callback runs, or from its audio thread before that block."""
        with self._lock:
            self._rendered.clear()
            self._restarted = True

    def clean(self, block: np.ndarray) -> np.ndarray:
        """The block with the speaker's echo taken out; up to one frame (10 ms) later than it came. Called from
        the microphone's audio thread."""
        started, arrived = time.thread_time(), self._clock()
        self._take_rendered()
        near = np.concatenate([self._near, np.asarray(block, np.float32)])
        whole = len(near) // FRAME * FRAME
        at = self._position - len(self._near)  # microphone position of `near[0]`
        far = self._far_span(at, whole)
        cleaned = self._cancel(far, near[:whole])
        out = cleaned.copy()  # the leak check keeps `cleaned`'s frames; the silenced ones are zeroed in `out`
        sounding = np.max(np.abs(far.reshape(-1, FRAME)), axis=1, initial=0.0) > SOUND
        for start in range(0, whole, FRAME):
            if sounding[start // FRAME]:
                self.sounded_s += FRAME / CAPTURE_RATE
                self._last_sound = at + start
            leaking = self._leak.feed(far[start : start + FRAME], cleaned[start : start + FRAME])
            if leaking or self.warming_up and at + start - self._last_sound < ECHO_SPAN_S * CAPTURE_RATE:
                out[start : start + FRAME] = 0.0  # what it lets through is mostly echo (not adapted yet, or lost it)
        self._near = near[whole:]
        self._position += len(block)
        self._starts.append(arrived - self._position / CAPTURE_RATE)
        self._cpu_s[1] += time.thread_time() - started
        return out

    def _take_rendered(self) -> None:
        """Place the blocks handed out since the last call on the microphone's timeline: each right after the one
        before, except the first after a new start of the stream, and one the microphone has passed (the speaker
        fell behind and its device ran dry) or has not nearly reached: those at the microphone's position when
        they were handed out."""
        if not self._starts:  # the microphone's clock is not known yet: they wait
            return
        with self._lock:
            blocks, self._rendered = self._rendered, []
            restarted = self._restarted
            self._restarted &= not blocks  # a new start waits for its first block
        if restarted:
            self._far, self._resampler = self._far[:0], None
        for rate, audio, handed_at in blocks:
            position = self.microphone_at(handed_at)
            if self._resampler is None or rate != self._rate:
                self._resampler, self._rate = StreamResampler(rate, CAPTURE_RATE), rate
            assert self._resampler is not None
            samples = self._resampler(audio)
            end = self._far_at + len(self._far)
            if restarted or not position <= end <= position + MAX_AHEAD_S * CAPTURE_RATE:
                self._far, self._far_at, restarted = samples, position, False
            else:
                self._far = np.concatenate([self._far, samples])

    def _far_span(self, at: int, length: int) -> np.ndarray:
        """The reference for the `length` microphone samples from position `at` (silence where none was handed
        out)."""
        if self._far_at < at:  # what the microphone has passed goes
            passed = min(at - self._far_at, len(self._far))
            self._far, self._far_at = self._far[passed:], self._far_at + passed
        span = np.zeros(length, np.float32)
        offset = self._far_at - at
        if offset < length:
            part = self._far[: length - offset]
            span[offset : offset + len(part)] = part
        return span

    def _cancel(self, far: np.ndarray, near: np.ndarray) -> np.ndarray:
        """AEC3 over whole frames: each frame of the reference, then the microphone's frame at the same time."""
        far_pcm, near_pcm = _pcm(far), _pcm(near)
        out = np.empty(len(near), np.float32)
        for start in range(0, len(near), FRAME):
            self._aec3.far[:] = far_pcm[start : start + FRAME]
            self._aec3.near[:] = near_pcm[start : start + FRAME]
            self._aec3.process()
            out[start : start + FRAME] = self._aec3.near
        out *= 1 / 32768
        return out


def _pcm(samples: np.ndarray) -> np.ndarray:
    return (np.clip(samples, -1.0, 32767 / 32768) * 32768).astype(np.int16)
