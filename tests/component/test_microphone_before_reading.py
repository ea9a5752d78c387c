"""The microphone opens before the models load (issue 31): the audio that piles up meanwhile is let go without a
warning, and only a reader that falls behind is reported."""

from __future__ import annotations

import asyncio

import numpy as np

from assistant.audio.microphone import QUEUE_S, Microphone
from tests.support.pulse import PulseAudio


async def test_audio_nobody_reads_yet_is_dropped_silently_and_a_slow_reader_is_reported(pulse: PulseAudio) -> None:
    pulse.microphone()  # the virtual microphone sounds (silence) in real time
    errors: list[str] = []
    mic = Microphone("pulse", on_error=errors.append)
    await mic.start()
    await asyncio.sleep(QUEUE_S + 1.5)  # the models load: more than the queue holds comes in, unread
    assert errors == []
    blocks = mic.blocks()
    loop = asyncio.get_running_loop()
    caught_up_at = loop.time() + 1.0
    kept: list[np.ndarray] = []
    while loop.time() < caught_up_at:  # the reader takes what was queued, then each block as it comes
        kept.append(await anext(blocks))
    assert errors == [] and sum(map(len, kept)) > 0
    await asyncio.sleep(QUEUE_S + 1.0)  # now the reader falls behind
    await anext(blocks)
    await blocks.aclose()
    await mic.aclose()
    assert len(errors) == 1 and "not read fast enough" in errors[0], errors
