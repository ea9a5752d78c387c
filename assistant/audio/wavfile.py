"""Mono float32 audio from the audio files people have (libsndfile through soundfile: wav of any PCM width, float
or WAVE_FORMAT_EXTENSIBLE, FLAC, OGG, AIFF), and to 16-bit PCM wav files (the stdlib `wave` module)."""

from __future__ import annotations

import io
import wave
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from assistant.audio.resample import resample

T = TypeVar("T")


class WavError(ValueError):
    """An audio file that cannot be read, or whose audio cannot be used; the message names the file and why."""


def check_audio_file(path: str | Path) -> None:
    """Raise WavError naming the problem if `path` cannot be read as audio (only its header is read)."""
    _read(path, _header)


def read_wav(path: str | Path, rate: int | None = None) -> tuple[np.ndarray, int]:
    """Read an audio file as mono float32 in [-1, 1] (channels averaged), resampled to `rate` if given."""
    import soundfile

    data, source_rate = _read(path, lambda p: soundfile.read(p, dtype="float32", always_2d=True))
    return _mono(data, source_rate, rate)


def read_audio_bytes(data: bytes, what: str = "the audio") -> tuple[np.ndarray, int]:
    """`read_wav` for a file's bytes (as an HTTP request carries them); WavError naming `what` when unreadable."""
    import soundfile

    if not data:
        raise WavError(f"{what} is empty")
    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
        raise WavError(f"{what} is not an audio file that can be read ({exc})") from None
    return _mono(samples, rate)


def _mono(data: np.ndarray, source_rate: int, rate: int | None = None) -> tuple[np.ndarray, int]:
    audio = data.mean(axis=1, dtype=np.float32)
    if rate is not None and rate != source_rate:
        return resample(audio, source_rate, rate), rate
    return audio, source_rate


def _header(path: str) -> object:
    import soundfile

    return soundfile.info(path)


def _read(path: str | Path, reader: Callable[[str], T]) -> T:
    import soundfile

    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise WavError(f"{path}: the file is empty")
    try:
        return reader(str(path))
    except (soundfile.LibsndfileError, RuntimeError) as exc:
        raise WavError(f"{path}: not an audio file that can be read ({exc})") from None


def pcm16(audio: np.ndarray) -> bytes:
    """Float audio as 16-bit little-endian PCM samples (clipped to [-1, 1])."""
    return (np.clip(np.asarray(audio, np.float32), -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def write_wav(path: str | Path, audio: np.ndarray, rate: int) -> None:
    """Write mono float audio as 16-bit PCM (clipped to [-1, 1])."""
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(pcm16(audio))
