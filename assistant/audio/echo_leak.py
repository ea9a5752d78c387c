"""Noticing when the echo canceller lets the echo through.

AEC3 needs a second or two to find the echo again when its distance from the reference moves (a changed room or
device, a sound server that restarted a stream with a different buffer): meanwhile a loud echo passes nearly
untouched and sounds like a person talking over the assistant. What passes then is the reference itself, late and
filtered, at one distance; a person's voice is not. So every CHECK_S the canceller's output of the last WINDOW_S
is correlated with the reference of the MAX_LAG_S before it (both pre-emphasised, so that speech's low-frequency
weight does not correlate anything with anything), normalised at each lag: the echo peaks at its distance, a
person's voice, or the faint residue of a canceller that works, stays low at scattered lags. (Measured through
PulseAudio at -6 dB: leaking echo 0.3-0.9 at one lag check after check; people talking over the echo 0.04-0.2;
the residue up to 0.34, at a new lag each time.) So a leak is found by two checks in a row at one distance over
LEAKING, or by one over SURELY_LEAKING (the first ~50 ms of a loud leak then pass, not ~100).

A leak is let go only after MISSES checks in a row that do not find it (a leaking AEC3 adapts as it goes, and its
output dips below the mark for a check now and then), or once the reference has been silent for all the check looks
back on (WINDOW_S and MAX_LAG_S: no echo can follow). Its distance is remembered: the next burst of echo at that
distance is a leak from its first check.
"""

from __future__ import annotations

import numpy as np

from assistant.audio.streams import CAPTURE_RATE as RATE

WINDOW_S = 0.3
MAX_LAG_S = 0.5
"""The longest distance looked at: AEC3 finds echoes up to about this far behind their reference."""
CHECK_S = 0.05
LEAKING = 0.3
"""Correlation at which the output is the echo, when the check before found the same distance."""
SURELY_LEAKING = 0.5
"""Correlation at which the output is the echo at the first check."""
STILL_LEAKING = 0.2
"""Correlation that keeps a leak going, or starts one at a distance that leaked before."""
MISSES = 3
SAME_LAG_S = 0.002
DECIMATE = 2
"""Checked at RATE / DECIMATE: speech's correlation is in its lower band."""
QUIET = 1e-6
"""Mean square of an output too faint to matter (-60 dBFS, the VAD's floor): not checked."""


class EchoLeakDetector:
    """Fed the reference and the canceller's output frame by frame; `leaking` says whether the output is the echo."""

    def __init__(self) -> None:
        self._window, self._max_lag = round(WINDOW_S * RATE), round(MAX_LAG_S * RATE)
        self._far = np.zeros(self._window + self._max_lag, np.float32)
        self._out = np.zeros(self._window, np.float32)
        self._size = 1 << int(np.ceil(np.log2(len(self._far) // DECIMATE)))  # no lag up to MAX_LAG_S wraps around
        self._fed: list[tuple[np.ndarray, np.ndarray]] = []  # frames since the last check (joined only for it)
        self._since_check = 0
        self._lag: int | None = None  # the best lag at the last check of an output that was not quiet (decimated)
        self._leak_lag: int | None = None  # where the last leak was
        self._misses = 0
        self.leaking = False

    def feed(self, far: np.ndarray, out: np.ndarray) -> bool:
        """One frame of reference and the output for the microphone frame at the same time; returns `leaking`."""
        self._fed.append((far, out))
        self._since_check += len(out)
        if self._since_check >= CHECK_S * RATE:
            self._far = _slid(self._far, [f for f, _ in self._fed])
            self._out = _slid(self._out, [o for _, o in self._fed])
            self._fed, self._since_check = [], 0
            self._check()
        return self.leaking

    def _check(self) -> None:
        if not np.any(self._far):
            self.leaking = False
            return
        if np.mean(np.square(self._out)) < QUIET:  # nothing to judge (nor to silence)
            return
        correlation, lag = self._peak()
        at_leak = self._leak_lag is not None and self._near(lag, self._leak_lag) and correlation >= STILL_LEAKING
        again = self._lag is not None and self._near(lag, self._lag) and correlation >= LEAKING
        found = at_leak or again or correlation >= SURELY_LEAKING
        self._lag = lag
        if found:
            self.leaking, self._leak_lag, self._misses = True, lag, 0
        elif self.leaking:
            self._misses += 1
            self.leaking = self._misses < MISSES

    @staticmethod
    def _near(lag: int, other: int) -> bool:
        return abs(lag - other) <= SAME_LAG_S * RATE / DECIMATE

    def _peak(self) -> tuple[float, int]:
        """The highest normalised correlation of the output with the reference, and its lag, at RATE / DECIMATE
        (half the rate, a third of the cost)."""
        out, far = _prepared(self._out), _prepared(self._far)
        window, max_lag = len(out), len(far) - len(out)
        spectrum = np.fft.rfft(far, self._size) * np.conj(np.fft.rfft(out, self._size))
        products = np.fft.irfft(spectrum, self._size)[: max_lag + 1]  # [k]: out against far from sample k on
        energy = np.cumsum(np.concatenate([[0.0], far.astype(np.float64) ** 2]))
        far_norms = np.sqrt(np.maximum(energy[window:] - energy[: max_lag + 1], 1e-12))
        correlations = np.abs(products) / (far_norms * np.sqrt(np.sum(out.astype(np.float64) ** 2)) + 1e-9)
        best = int(np.argmax(correlations))
        return float(correlations[best]), max_lag - best


def _slid(history: np.ndarray, frames: list[np.ndarray]) -> np.ndarray:
    """`history` moved on by `frames`, its length kept."""
    return np.concatenate([history, *frames])[-len(history) :]


def _prepared(signal: np.ndarray) -> np.ndarray:
    """At RATE / DECIMATE (each DECIMATE samples averaged: a gentle low-pass), pre-emphasised."""
    reduced = signal.reshape(-1, DECIMATE).mean(axis=1)
    return np.append(reduced[:1], reduced[1:] - 0.95 * reduced[:-1])
