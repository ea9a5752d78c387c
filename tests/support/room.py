"""A room between a speaker and a microphone, simulated: what the microphone hears of what the speaker plays."""

from __future__ import annotations

import numpy as np

RATE = 16_000


def room(far: np.ndarray, delay_s: float, gain_db: float) -> np.ndarray:
    """`far` (16 kHz) as a microphone across the room hears it: late, quieter, with a few reflections."""
    response = np.zeros(int(0.06 * RATE))
    for at_s, level in ((0.0, 1.0), (0.011, 0.45), (0.023, 0.3), (0.041, 0.2), (0.057, 0.1)):
        response[int(at_s * RATE)] = level
    late = np.concatenate([np.zeros(int(delay_s * RATE)), far])[: len(far)]
    return np.convolve(late, response)[: len(far)] * 10 ** (gain_db / 20)


def db(signal: np.ndarray) -> float:
    return 10 * np.log10(np.mean(signal**2) + 1e-12)
