"""Mono float32 audio to and from 16-bit PCM wav files (the stdlib `wave` module, no extra codecs)."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from assistant.audio.resample import resample


class WavError(ValueError):
    """A wav file that cannot be read as PCM audio."""


def read_wav(path: str | Path, rate: int | None = None) -> tuple[np.ndarray, int]:
    """Read a PCM wav as mono float32 in [-1, 1] (channels averaged), resampled to `rate` if given."""
    try:
        with wave.open(str(path), "rb") as f:
            width, channels, source_rate = f.getsampwidth(), f.getnchannels(), f.getframerate()
            raw = f.readframes(f.getnframes())
    except (wave.Error, EOFError) as exc:
        raise WavError(f"{path}: not a PCM wav file ({exc})") from None
    if width == 1:
        samples = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width in (2, 4):
        dtype = np.int16 if width == 2 else np.int32
        samples = np.frombuffer(raw, dtype).astype(np.float32) / float(np.iinfo(dtype).max + 1)
    else:
        raise WavError(f"{path}: {8 * width}-bit samples are not supported")
    audio = samples.reshape(-1, channels).mean(axis=1, dtype=np.float32)
    if rate is not None and rate != source_rate:
        return resample(audio, source_rate, rate), rate
    return audio, source_rate


def write_wav(path: str | Path, audio: np.ndarray, rate: int) -> None:
    """Write mono float audio as 16-bit PCM (clipped to [-1, 1])."""
    pcm = (np.clip(np.asarray(audio, np.float32), -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(pcm.tobytes())
