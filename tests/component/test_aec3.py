"""The echo canceller's direct path into livekit's native library does what livekit's public API does."""

from __future__ import annotations

import numpy as np
import pytest

from assistant.audio.aec3 import FRAME, Aec3, EchoCancellerError
from assistant.audio.streams import CAPTURE_RATE
from assistant.audio.wavfile import read_wav
from tests.support.public_aec3 import PublicApiAec3
from tests.support.room import room
from tests.support.speech import Clip


@pytest.mark.parametrize("noise_suppression", [False, True])
def test_the_direct_path_cleans_as_livekits_api_does(noise_suppression: bool, speech_clips: list[Clip]) -> None:
    far = read_wav(speech_clips[0].path, CAPTURE_RATE)[0][: 2 * CAPTURE_RATE]
    person = read_wav(speech_clips[1].path, CAPTURE_RATE)[0][: 2 * CAPTURE_RATE]
    near = room(far, 0.05, -6) + 0.5 * person
    far_pcm, near_pcm = ((signal * 16_000).astype(np.int16) for signal in (far, near))
    cleaned: dict[str, list[np.ndarray]] = {"public": [], "direct": []}
    for name, aec3 in (("public", PublicApiAec3(noise_suppression)), ("direct", Aec3(noise_suppression))):
        for start in range(0, len(far_pcm) - FRAME + 1, FRAME):
            aec3.far[:], aec3.near[:] = far_pcm[start : start + FRAME], near_pcm[start : start + FRAME]
            aec3.process()
            cleaned[name].append(aec3.near.copy())
    by_api, by_direct = np.concatenate(cleaned["public"]), np.concatenate(cleaned["direct"])
    assert np.array_equal(by_api, by_direct)
    assert not np.array_equal(by_direct, near_pcm[: len(by_direct)])  # it did clean


def test_a_refused_request_is_an_error_not_a_garbled_response() -> None:
    aec3 = Aec3(noise_suppression=False)
    aec3.process()
    aec3._module._ffi_handle.dispose()  # the library no longer knows the module: it refuses the request
    with pytest.raises(EchoCancellerError, match="refused"):
        aec3.process()
