"""faster-whisper tiny.en through the assistant's Transcriber, with faster-whisper's own 30 s windows (the default)
and with the encoder's window fitted to the turn."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from assistant.asr import SAMPLE_RATE, AsrError, WhisperTranscriber, _repeats, _segments, _unlooped
from assistant.audio.wavfile import read_wav
from assistant.config import AsrConfig
from tests.support.speech import Clip, word_error_rate


class EncoderWindows:
    """Wraps the CT2 Whisper model, recording the frames each encoding read (a spy; the model does the work)."""

    def __init__(self, model) -> None:
        self.model, self.frames = model, []

    def encode(self, features, *args, **kwargs):
        self.frames.append(features.shape[-1])
        return self.model.encode(features, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.model, name)


@pytest.fixture(scope="module", params=["fitted", "full"])
def transcriber(request: pytest.FixtureRequest, whisper_tiny_en: Path) -> WhisperTranscriber:
    config = AsrConfig(model=str(whisper_tiny_en), device="cpu", window=request.param)
    return WhisperTranscriber(config, cpu_threads=1)


def test_librivox_speech_is_transcribed(transcriber: WhisperTranscriber, speech_clips: list[Clip]) -> None:
    heard = [transcriber.transcribe(read_wav(c.path, 16000)[0]) for c in speech_clips]
    assert word_error_rate([c.text for c in speech_clips], [t.text for t in heard]) < 0.2
    assert all(t.language == "en" and not t.is_empty for t in heard)
    assert heard[0].audio_s == pytest.approx(len(read_wav(speech_clips[0].path)[0]) / 16000)


def test_a_fitted_window_reads_the_turn_and_three_seconds_and_a_long_turn_the_whole_30(
    whisper_tiny_en: Path, speech_clips: list[Clip]
) -> None:
    transcriber = WhisperTranscriber(
        AsrConfig(model=str(whisper_tiny_en), device="cpu", window="fitted"), cpu_threads=1
    )
    spy = transcriber.model.model = EncoderWindows(transcriber.model.model)
    clip = read_wav(speech_clips[0].path, 16000)[0]
    short = transcriber.transcribe(clip)
    assert spy.frames == [pytest.approx(len(clip) / 160 + 300, abs=3)]  # 10 ms frames of the turn, and 3 s more
    assert word_error_rate([speech_clips[0].text], [short.text]) < 0.2
    assert len(short.text.split()) <= len(speech_clips[0].text.split()) + 2  # not looped into the silence after it
    long = np.concatenate([clip] * int(np.ceil(28 * 16000 / len(clip))))[: 28 * 16000]
    spy.frames.clear()
    assert not transcriber.transcribe(long).is_empty
    assert spy.frames and all(frames == 3000 for frames in spy.frames)  # over 27 s: faster-whisper's windows


@pytest.mark.parametrize("kind", ["silence", "noise"])
def test_no_speech_gives_an_empty_transcript(transcriber: WhisperTranscriber, kind: str) -> None:
    rng = np.random.default_rng(1)
    audio = np.zeros(16000 * 2, np.float32) if kind == "silence" else 0.05 * rng.standard_normal(32000)
    assert transcriber.transcribe(audio.astype(np.float32)).is_empty


def brown_noise(seed: int, seconds: float = 3.0, level: float = 0.6) -> np.ndarray:
    """Brown noise as sox's `synth brownnoise` makes it (a walk of small random steps kept within +-1), with the 0.3 s
    of silence on either side that a turn cut by the VAD has."""
    steps, walk, at = np.random.default_rng(seed).uniform(-1 / 16, 1 / 16, int(4 * SAMPLE_RATE * seconds)), [], 0.0
    for step in steps:
        if abs(at + step) <= 1:
            at += step
            walk.append(at)
    pad = np.zeros(int(0.3 * SAMPLE_RATE))
    return np.concatenate([pad, level * np.array(walk[: int(SAMPLE_RATE * seconds)]), pad]).astype(np.float32)


@pytest.mark.parametrize("seed", [2, 3, 9, 11])
def test_brown_noise_is_not_heard_as_you(transcriber: WhisperTranscriber, seed: int) -> None:
    """Whisper's noise output: tiny.en hears "You" in these (no_speech_prob ~0.8, avg_logprob ~-0.95)."""
    assert transcriber.transcribe(brown_noise(seed)).text == ""


def test_a_spoken_thank_you_is_still_heard(transcriber: WhisperTranscriber, espeak_wav) -> None:
    """The words of a noise output, said: Whisper is sure of them (no_speech_prob ~0.3, avg_logprob ~-0.6)."""
    pad = np.zeros(int(0.3 * SAMPLE_RATE), np.float32)
    for words in ("Thank you.", "Thank you very much."):
        audio = read_wav(espeak_wav(words), SAMPLE_RATE)[0]
        assert transcriber.transcribe(np.concatenate([pad, audio, pad])).text == words


class EncodingsDone(EncoderWindows):
    """The spy above, also noting each encoding's frames when it is done."""

    def __init__(self, model) -> None:
        super().__init__(model)
        self.done: list[int] = []

    def encode(self, features, *args, **kwargs):
        encoded = super().encode(features, *args, **kwargs)
        self.done.append(features.shape[-1])
        return encoded


def test_a_glance_does_not_wait_behind_a_full_transcript_already_running(
    whisper_tiny_en: Path, speech_clips: list[Clip]
) -> None:
    """A pause the user talked through leaves its full transcript running (a CTranslate2 call cannot be stopped);
    the next pause's glance runs beside it instead of queueing behind it: its short encoding is done first."""
    transcriber = WhisperTranscriber(AsrConfig(model=str(whisper_tiny_en), device="cpu"), cpu_threads=1)
    transcriber.model.model = spy = EncodingsDone(transcriber.model.model)
    clips = [read_wav(c.path, SAMPLE_RATE)[0] for c in speech_clips]
    full = threading.Thread(target=transcriber.transcribe, args=(clips[0],))
    full.start()
    while not spy.frames:  # until the full transcript's encoding (30 s of window) has begun
        time.sleep(0.001)
    glance = transcriber.glance(clips[0][: 2 * SAMPLE_RATE])
    full.join()
    assert not glance.is_empty and spy.frames[0] == 3000 and spy.done == sorted(spy.frames)


def test_missing_model_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AsrError, match=r"cannot load Whisper model 'no-such-model'.*local faster-whisper"):
        WhisperTranscriber(AsrConfig(model="no-such-model", device="cpu", download_root=str(tmp_path)))


class FakeTokenizer:
    """Whisper's token layout in miniature: words below `eot`, timestamps (0.02 s each) from `timestamp_begin`."""

    eot, timestamp_begin = 100, 200

    def decode(self, tokens: list[int]) -> str:
        return " ".join(f"w{t}" for t in tokens)


def test_a_timestamped_decode_splits_into_segments_with_their_starts() -> None:
    at = lambda s: 200 + round(s / 0.02)  # noqa: E731
    tokens = [at(0.0), 1, 2, at(1.0), at(1.0), 3, at(2.0), 4, at(3.0), 5, 100]
    assert _segments(tokens, FakeTokenizer()) == [(0.0, "w1 w2"), (1.0, "w3"), (2.0, "w4"), (3.0, "w5")]
    assert _repeats("Set a timer for", ["Set a timer for 10 minutes."])
    assert not _repeats("for 10 minutes", ["Set a timer for 10 minutes."]) and not _repeats("...", ["Hello."])
    assert _unlooped("Play some music... umm... play some music... u") == "Play some music... umm..."
    assert _unlooped("No, no, no. Not that one, no.") == "No, no, no. Not that one, no."
