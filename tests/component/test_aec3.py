"""The echo canceller's direct path into livekit's native library does what livekit's public API does."""

from __future__ import annotations

import numpy as np
import pytest
from livekit import rtc

from assistant.audio.aec3 import FRAME, Aec3, EchoCancellerError
from assistant.audio.streams import CAPTURE_RATE
from assistant.audio.wavfile import read_wav
from tests.support.room import room
from tests.support.speech import Clip


@pytest.mark.parametrize("noise_suppression", [False, True])
def test_the_direct_path_cleans_as_livekits_api_does(noise_suppression: bool, speech_clips: list[Clip]) -> None:
    far = read_wav(speech_clips[0].path, CAPTURE_RATE)[0][: 2 * CAPTURE_RATE]
    person = read_wav(speech_clips[1].path, CAPTURE_RATE)[0][: 2 * CAPTURE_RATE]
    near = room(far, 0.05, -6) + 0.5 * person
    far_pcm, near_pcm = ((signal * 16_000).astype(np.int16) for signal in (far, near))
    public = rtc.AudioProcessingModule(
        echo_cancellation=True, noise_suppression=noise_suppression, high_pass_filter=True
    )
    direct = Aec3(noise_suppression)
    by_api, by_direct = [], []
    for start in range(0, len(far_pcm) - FRAME + 1, FRAME):
        far_frame = rtc.AudioFrame(far_pcm[start : start + FRAME].tobytes(), CAPTURE_RATE, 1, FRAME)
        near_frame = rtc.AudioFrame(near_pcm[start : start + FRAME].tobytes(), CAPTURE_RATE, 1, FRAME)
        public.process_reverse_stream(far_frame)
        public.process_stream(near_frame)
        by_api.append(np.frombuffer(near_frame.data, np.int16).copy())
        direct.far[:], direct.near[:] = far_pcm[start : start + FRAME], near_pcm[start : start + FRAME]
        direct.process()
        by_direct.append(direct.near.copy())
    assert np.array_equal(np.concatenate(by_api), np.concatenate(by_direct))
    assert not np.array_equal(np.concatenate(by_direct), near_pcm[: len(by_direct) * FRAME])  # it did clean


def test_a_refused_request_is_an_error_not_a_garbled_response() -> None:
    aec3 = Aec3(noise_suppression=False)
    aec3.process()
    aec3._module._ffi_handle.dispose()  # the library no longer knows the module: it refuses the request
    with pytest.raises(EchoCancellerError, match="refused"):
        aec3.process()
