"""Timing an interrupt from what the virtual speaker's monitor heard: from the call to the last sound."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np

from tests.support.pulse import MonitorRecording

SOUND = 1e-4  # the virtual speaker's monitor is exactly zero when nothing plays


async def interrupt_while_sounding(
    monitor: MonitorRecording, interrupt: Callable[[], object], timeout_s: float = 5, level: float = SOUND
) -> float:
    """Call `interrupt` just as sound above `level` arrives from the monitor (so there is sound to stop); returns when."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        block, arrived = monitor.latest()
        if np.max(np.abs(block)) > level and time.monotonic() - arrived < 0.005:
            break
        await asyncio.sleep(0.001)
    called = time.monotonic()
    interrupt()
    return called


def last_sound_after(monitor: MonitorRecording, called: float) -> float:
    """Seconds from `called` to the end of the last sound the monitor recorded."""
    heard, times = monitor.recorded()
    sounding = np.flatnonzero(np.abs(heard) > SOUND)
    return times[sounding[-1]] + 1 / monitor.rate - called
