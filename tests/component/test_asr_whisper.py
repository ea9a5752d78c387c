"""faster-whisper tiny.en through the assistant's Transcriber."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from assistant.asr import AsrError, WhisperTranscriber
from assistant.audio.wavfile import read_wav
from assistant.config import AsrConfig
from tests.support.speech import Clip, word_error_rate


@pytest.fixture(scope="module")
def transcriber(whisper_tiny_en: Path) -> WhisperTranscriber:
    return WhisperTranscriber(AsrConfig(model=str(whisper_tiny_en), device="cpu"), cpu_threads=1)


def test_librivox_speech_is_transcribed(transcriber: WhisperTranscriber, speech_clips: list[Clip]) -> None:
    heard = [transcriber.transcribe(read_wav(c.path, 16000)[0]) for c in speech_clips]
    assert word_error_rate([c.text for c in speech_clips], [t.text for t in heard]) < 0.2
    assert all(t.language == "en" and not t.is_empty for t in heard)
    assert heard[0].audio_s == pytest.approx(len(read_wav(speech_clips[0].path)[0]) / 16000)


@pytest.mark.parametrize("kind", ["silence", "noise"])
def test_no_speech_gives_an_empty_transcript(transcriber: WhisperTranscriber, kind: str) -> None:
    rng = np.random.default_rng(1)
    audio = np.zeros(16000 * 2, np.float32) if kind == "silence" else 0.05 * rng.standard_normal(32000)
    assert transcriber.transcribe(audio.astype(np.float32)).is_empty


def test_missing_model_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AsrError, match=r"cannot load Whisper model 'no-such-model'.*local faster-whisper"):
        WhisperTranscriber(AsrConfig(model="no-such-model", device="cpu", download_root=str(tmp_path)))
