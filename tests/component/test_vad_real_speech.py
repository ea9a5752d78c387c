"""webrtcvad on real speech: LibriVox clips and espeak-ng sentences."""

from __future__ import annotations

import numpy as np

from assistant.audio.wavfile import read_wav
from assistant.config import VadConfig
from assistant.vad import SpeechOnset, Utterance, VadSegmenter
from tests.support.speech import Clip

RATE = 16000


def feed_in_blocks(seg: VadSegmenter, audio: np.ndarray, block: int = 320) -> list:
    return [e for i in range(0, len(audio), block) for e in seg.feed(audio[i : i + block])]


def test_each_librivox_clip_is_one_turn(speech_clips: list[Clip]) -> None:
    silence = np.zeros(RATE, np.float32)
    for clip in speech_clips[:3]:
        audio, _ = read_wav(clip.path, RATE)
        events = feed_in_blocks(VadSegmenter(VadConfig(end_silence_ms=700)), np.concatenate([silence, audio, silence]))
        turns = [e for e in events if isinstance(e, Utterance)]
        assert len(turns) == 1, clip.path.name
        assert [type(e) for e in events] == [SpeechOnset, Utterance]
        # the turn covers the clip's speech (the clip's own edges may hold a little silence)
        assert 0.7 * len(audio) / RATE < turns[0].duration_s < len(audio) / RATE + 0.5


def test_two_sentences_with_a_pause_are_two_turns_and_noise_is_none(espeak_wav) -> None:
    first, _ = read_wav(espeak_wav("Please turn on the kitchen lights."), RATE)
    second, _ = read_wav(espeak_wav("What time is it in London?"), RATE)
    pause = np.zeros(int(1.5 * RATE), np.float32)
    rng = np.random.default_rng(0)
    hum = (0.003 * rng.standard_normal(2 * RATE)).astype(np.float32)  # quiet room noise
    events = feed_in_blocks(
        VadSegmenter(VadConfig(aggressiveness=3)), np.concatenate([hum, first, pause, second, pause])
    )
    turns = [e for e in events if isinstance(e, Utterance)]
    assert len(turns) == 2
    for turn, sentence in zip(turns, (first, second)):
        assert abs(turn.duration_s - len(sentence) / RATE) < 0.6


def test_speech_quieter_than_the_floor_is_not_speech(speech_clips: list[Clip]) -> None:
    """webrtcvad judges a sound's shape, not its loudness: a clip 40 dB down (-67 dBFS median, about the level of
    what an echo canceller leaves of a loud echo) is still speech to it; `vad.min_level_db` (-60 dBFS) says no."""
    audio, _ = read_wav(speech_clips[0].path, RATE)
    silence = np.zeros(RATE, np.float32)
    faint = np.concatenate([silence, audio * 10 ** (-40 / 20), silence])
    turns = lambda config: [e for e in feed_in_blocks(VadSegmenter(config), faint) if isinstance(e, Utterance)]  # noqa: E731
    assert turns(VadConfig(min_level_db=-120))
    assert turns(VadConfig()) == []
    as_recorded = np.concatenate([silence, audio, silence])  # -27 dBFS median: it is unchanged
    assert len([e for e in feed_in_blocks(VadSegmenter(VadConfig()), as_recorded) if isinstance(e, Utterance)]) == 1
