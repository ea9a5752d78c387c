"""Timing an interrupt from what the virtual speaker's monitor heard: from the call to the last sound.

An attempt only tells something when there was sound to stop: sound on the monitor at the call, and
audio the speaker would have gone on playing without a break (Speaker.unbroken). The tiny random engine
of the end-to-end tests runs slower than real time on a 2-core machine, so its speech comes in stretches
a chunk long with gaps between; attempts that fall into a gap or a stretch's last AHEAD_S are not measured.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np

from assistant.audio.speaker import Speaker
from assistant.audio.streams import PLAYBACK_RATE
from tests.support.pulse import MonitorRecording

SOUND = 1e-4  # the virtual speaker's monitor is exactly zero when nothing plays
NEAR_S = 0.02  # sound this near the call (the monitor's times may run late by about this): there was sound to stop
AHEAD_S = 0.1  # audio the speaker would have gone on playing without a break after the call


class WatchedSpeaker(Speaker):
    """A real Speaker that notes, at each interrupt(), the seconds it would have gone on sounding without it."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.unbroken_at_interrupts: list[float] = []

    @property
    def unbroken_s(self) -> float:
        return self.unbroken / PLAYBACK_RATE

    def interrupt(self) -> None:
        self.unbroken_at_interrupts.append(self.unbroken_s)
        super().interrupt()


async def interrupt_while_sounding(
    monitor: MonitorRecording,
    interrupt: Callable[[], object],
    timeout_s: float = 5,
    level: float = SOUND,
    ready: Callable[[], bool] = lambda: True,
) -> float:
    """Call `interrupt` just as sound above `level` arrives from the monitor and `ready()` holds; returns when."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        block, arrived = monitor.latest()
        if np.max(np.abs(block)) > level and time.monotonic() - arrived < 0.005 and ready():
            break
        await asyncio.sleep(0.001)
    called = time.monotonic()
    interrupt()
    return called


def silent_after(monitor: MonitorRecording, called: float, unbroken_s: float) -> float | None:
    """Seconds from `called` to the end of the last sound on the monitor; None when the attempt shows nothing
    (no sound within NEAR_S of the call, or less than AHEAD_S to go without a break)."""
    heard, times = monitor.recorded()
    sounding = np.abs(heard) > SOUND
    if unbroken_s < AHEAD_S or not np.any(sounding & (np.abs(times - called) < NEAR_S)):
        return None
    return times[np.flatnonzero(sounding)[-1]] + 1 / monitor.rate - called
