"""Stopping an embedded assistant: every part is closed, even when the stop is cancelled (the README's example, run
from another folder and stopped with Ctrl-C, is tests/e2e/test_embedding_example.py)."""

from __future__ import annotations

import asyncio

import pytest

from pipelines import Assistant
from tests.support.fakes import FakeBackend, FakeSpeechEngine, FakeTranscriber, ManualSink, QueueSource
from tests.unit.test_voice_loop import REPLY, config


async def test_stop_closes_every_part_even_when_it_is_cancelled_meanwhile() -> None:
    kiosk = Assistant(
        config("off"),
        backend=FakeBackend(REPLY),
        engine=FakeSpeechEngine(),
        transcriber=FakeTranscriber(),
        source=QueueSource(),
        sink=ManualSink(),
    )
    await kiosk.start()
    voice, listening = kiosk._voice, kiosk._listening
    assert voice is not None and listening is not None
    closing = asyncio.Event()

    async def slow_close() -> None:  # a part that takes its time to close: the stop is cancelled meanwhile
        closing.set()
        await asyncio.sleep(60)

    voice.aclose = slow_close  # type: ignore[method-assign]
    stopping = asyncio.create_task(kiosk.stop())
    await closing.wait()
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert listening.cancelled() and not kiosk._tools_open and kiosk._voice is None
