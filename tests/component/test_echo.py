"""WebRTC's echo canceller (livekit) on real speech: the speaker's audio, heard back by the microphone late, quieter
and with reverberation, is taken out; a person's speech over it is kept. Time is simulated: 20 ms blocks, one
after another, with the speaker's blocks reported before they are heard, as its audio thread does."""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from assistant.audio.echo import EchoCanceller
from assistant.audio.wavfile import read_wav
from tests.support.speech import Clip

RATE, SPEAKER_RATE, BLOCK = 16_000, 48_000, 320


def room(far: np.ndarray, delay_s: float, gain_db: float) -> np.ndarray:
    """`far` as a microphone across the room hears it: late, quieter, with a few reflections."""
    response = np.zeros(int(0.06 * RATE))
    for at_s, level in ((0.0, 1.0), (0.011, 0.45), (0.023, 0.3), (0.041, 0.2), (0.057, 0.1)):
        response[int(at_s * RATE)] = level
    late = np.concatenate([np.zeros(int(delay_s * RATE)), far])[: len(far)]
    return np.convolve(late, response)[: len(far)] * 10 ** (gain_db / 20)


def db(signal: np.ndarray) -> float:
    return 10 * np.log10(np.mean(signal**2) + 1e-12)


@pytest.mark.parametrize(("delay_s", "gain_db"), [(0.03, -6), (0.12, -20)])
def test_the_speakers_echo_is_taken_out_and_a_voice_over_it_is_kept(
    delay_s: float, gain_db: float, speech_clips: list[Clip]
) -> None:
    far = np.concatenate([read_wav(clip.path, RATE)[0] for clip in speech_clips[:2]])
    person = np.zeros_like(far)
    voice = read_wav(speech_clips[2].path, RATE)[0][: 2 * RATE]
    person[-len(voice) - RATE // 2 : -RATE // 2] = voice
    heard = room(far, delay_s, gain_db)
    device = soxr.resample(far, RATE, SPEAKER_RATE).astype(np.float32)  # the speaker runs at its own rate
    step, ahead = SPEAKER_RATE * BLOCK // RATE, 5  # it hands out each block 5 blocks (100 ms) before it is heard
    canceller = EchoCanceller()
    out = []
    for k in range(len(far) // BLOCK):
        if (k + ahead) * step < len(device):
            canceller.rendered(device[(k + ahead) * step : (k + ahead + 1) * step], SPEAKER_RATE)
        out.append(canceller.clean(heard[k * BLOCK : (k + 1) * BLOCK] + person[k * BLOCK : (k + 1) * BLOCK]))
    cleaned = np.concatenate(out)
    echo_only = slice(3 * RATE, len(far) - len(voice) - RATE)  # after 3 s to converge, before the person speaks
    assert db(heard[echo_only]) - db(cleaned[echo_only]) > 20  # echo return loss enhancement
    spoken = slice(len(far) - len(voice) - RATE // 2, len(far) - RATE // 2)
    assert abs(db(cleaned[spoken]) - db(person[spoken])) < 6  # the person's voice is still there
