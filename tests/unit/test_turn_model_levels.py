"""What Smart Turn is given of a turn: the audio up to where its speech ends, with its pauses closed up."""

from __future__ import annotations

import numpy as np

from assistant.turn_model import closed_up, speech_end

RNG = np.random.default_rng(0)


def speech(ms: int) -> np.ndarray:
    return (0.5 * np.sin(np.arange(16 * ms) * 0.3) * np.linspace(0.5, 1, 16 * ms)).astype(np.float32)


def room(ms: int) -> np.ndarray:
    return (1e-3 * RNG.standard_normal(16 * ms)).astype(np.float32)


def test_the_speech_ends_after_its_last_loud_frame_and_pauses_inside_keep_200_ms() -> None:
    audio = np.concatenate([room(100), speech(500), room(600), speech(300), room(150), speech(200), room(300)])
    assert speech_end(audio) == 16 * 1850
    kept = closed_up(audio[: speech_end(audio)])
    assert len(kept) == 16 * (100 + 500 + 200 + 300 + 150 + 200)  # the 600 ms pause is 200 ms now; 150 ms stays
    assert np.array_equal(kept[: 16 * 700], audio[: 16 * 700])  # the pause's first 100 ms ...
    assert np.array_equal(kept[16 * 700 :], audio[16 * 1100 : 16 * 1850])  # ... and its last 100 ms, then the rest


def test_audio_without_a_long_pause_or_without_sound_is_left_as_it_is() -> None:
    audio = np.concatenate([speech(300), room(150), speech(300)])
    assert np.array_equal(closed_up(audio), audio)
    silence = np.zeros(16_000, np.float32)
    assert np.array_equal(closed_up(silence), silence) and speech_end(silence) == len(silence)
