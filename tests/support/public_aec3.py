"""AEC3 through livekit's public API, with `assistant.audio.aec3.Aec3`'s interface: the reference its direct path
is checked (tests/component/test_aec3.py) and measured (bench/echo_cpu.py) against."""

from __future__ import annotations

import numpy as np
from livekit import rtc

from assistant.audio.aec3 import FRAME
from assistant.audio.streams import CAPTURE_RATE


class PublicApiAec3:
    """The same module, a frame object built and read back per 10 ms, as livekit's API has it."""

    def __init__(self, noise_suppression: bool) -> None:
        self._module = rtc.AudioProcessingModule(
            echo_cancellation=True, noise_suppression=noise_suppression, high_pass_filter=True
        )
        self.far, self.near = np.zeros(FRAME, np.int16), np.zeros(FRAME, np.int16)

    def process(self) -> None:
        self._module.process_reverse_stream(rtc.AudioFrame(self.far.tobytes(), CAPTURE_RATE, 1, FRAME))
        near = rtc.AudioFrame(self.near.tobytes(), CAPTURE_RATE, 1, FRAME)
        self._module.process_stream(near)
        self.near[:] = np.frombuffer(near.data, np.int16)
