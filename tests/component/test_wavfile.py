"""Reading the audio files people have (libsndfile through soundfile), and a clear error for what is not audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from assistant.audio.wavfile import WavError, read_wav, write_wav

RATE = 22_050
TONE = (0.5 * np.sin(np.arange(RATE // 2) * 2 * np.pi * 440 / RATE)).astype(np.float32)


@pytest.mark.parametrize(
    ("format", "subtype"),
    [
        ("WAV", "PCM_16"),
        ("WAV", "PCM_24"),
        ("WAV", "PCM_32"),
        ("WAV", "FLOAT"),
        ("WAV", "PCM_U8"),
        ("WAVEX", "PCM_16"),
        ("WAVEX", "PCM_24"),
        ("FLAC", "PCM_16"),
    ],
)
def test_common_formats_read_as_the_same_mono_audio(tmp_path: Path, format: str, subtype: str) -> None:
    path = tmp_path / f"tone.{'flac' if format == 'FLAC' else 'wav'}"
    stereo = np.stack([TONE, TONE], axis=1)
    soundfile.write(path, stereo, RATE, format=format, subtype=subtype)
    audio, rate = read_wav(path)
    tolerance = 1 / 100 if subtype == "PCM_U8" else 1 / 30_000
    assert rate == RATE and audio.dtype == np.float32 and np.abs(audio - TONE).max() < tolerance
    resampled, rate16 = read_wav(path, 16_000)
    assert rate16 == 16_000 and abs(len(resampled) - len(TONE) * 16_000 / RATE) <= 1


def test_what_is_not_audio_is_one_clear_error(tmp_path: Path) -> None:
    empty, text = tmp_path / "empty.wav", tmp_path / "notes.wav"
    empty.write_bytes(b"")
    text.write_text("these are not the droids you are looking for\n")
    with pytest.raises(WavError, match="empty.wav: the file is empty"):
        read_wav(empty)
    with pytest.raises(WavError, match=r"notes.wav: not an audio file that can be read \(.+\)"):
        read_wav(text)


def test_written_wavs_read_back(tmp_path: Path) -> None:
    write_wav(tmp_path / "out.wav", TONE, RATE)
    audio, rate = read_wav(tmp_path / "out.wav")
    assert rate == RATE and np.abs(audio - TONE).max() < 1 / 30_000
