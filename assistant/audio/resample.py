"""Sample-rate conversion of mono float32 audio (libsoxr, high quality)."""

from __future__ import annotations

import numpy as np
import soxr


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample a whole signal; returns float32 (the input itself when the rates match)."""
    audio = np.asarray(audio, np.float32)
    if from_rate == to_rate or audio.size == 0:
        return audio
    return soxr.resample(audio, from_rate, to_rate, quality="HQ").astype(np.float32, copy=False)
