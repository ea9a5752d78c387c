"""The reply's logic with fakes: chunks to speech to the sink, what is kept when interrupted, failures."""

from __future__ import annotations

import asyncio

import torch

from assistant.audio.streams import FileSink
from assistant.events import ErrorEvent, EventBus, ReplyText, StateChanged
from assistant.segment import Segment
from pipelines.reply import Reply, Voice
from pipelines.turn_clock import TurnClock
from tests.support.fakes import FRAME, FakeBackend, FakeSpeechEngine, ManualSink

TWO_SENTENCES = ["The sky ", "is blue today. ", "It may ", "rain later, ", "or not at all."]


def reply(backend: FakeBackend, engine: FakeSpeechEngine, sink, bus: EventBus, clock: TurnClock, **kw) -> Reply:
    return Reply(
        7,
        lambda cancel: backend.stream([], cancel),
        bus,
        clock,
        engine=engine,
        sink=sink,
        voice=Voice(chunk_frames=1),
        **kw,
    )


async def until(condition, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.001)


async def test_a_whole_reply_is_spoken_chunk_by_chunk_and_timed(tmp_path) -> None:
    bus, clock = EventBus(), TurnClock()
    events = bus.subscribe(ReplyText, StateChanged)
    engine, sink = FakeSpeechEngine(frames_per_text=3), FileSink(tmp_path / "out.wav")
    spoken = await reply(FakeBackend(TWO_SENTENCES), engine, sink, bus, clock).run()

    assert [text for text, _ in engine.calls] == ["The sky is blue today.", "It may rain later, or not at all."]
    assert spoken.text == "The sky is blue today. It may rain later, or not at all."
    assert not spoken.interrupted
    assert spoken.codes.shape == (4, 6) and spoken.codes[0].tolist() == [1, 2, 3, 4, 5, 6]
    assert sink.played == 6 * FRAME
    # The second chunk is spoken with the first one (text and codes) as context, for a consistent voice.
    (_, first_context), (_, second_context) = engine.calls
    assert first_context == [] and second_context[-1].text == "The sky is blue today."
    assert second_context[-1].codes[0].tolist() == [1, 2, 3]
    assert set(clock.stages) == {"first_token", "first_chunk", "first_audio", "first_played"}
    seen = [events.queue.get_nowait() for _ in range(events.queue.qsize())]
    assert [e.text for e in seen if isinstance(e, ReplyText)] == [
        "The sky is blue today.",
        "It may rain later, or not at all.",
    ]
    assert [e.state for e in seen if isinstance(e, StateChanged)] == ["speaking"]


async def test_an_interrupt_keeps_only_what_was_played() -> None:
    bus, clock = EventBus(), TurnClock()
    backend, engine, sink = FakeBackend(TWO_SENTENCES), FakeSpeechEngine(frames_per_text=3, frame_s=0.005), ManualSink()
    speech = reply(backend, engine, sink, bus, clock)
    task = asyncio.create_task(speech.run())
    await until(lambda: sink.queued >= 5 * FRAME)  # both chunks partly generated
    sink.advance(3 * FRAME + FRAME // 2)  # the user heard chunk one and half a frame of chunk two
    speech.interrupt()
    spoken = await task

    assert spoken.interrupted
    assert spoken.text == "The sky is blue today. It may rain later, or not at all."
    assert spoken.codes[0].tolist() == [1, 2, 3, 4]  # the frame cut in the middle counts as heard
    assert sink.interrupts == 1 and sink.played == 3 * FRAME + FRAME // 2
    assert backend.streams_closed == 1


async def test_a_reply_paused_as_its_last_audio_is_heard_does_not_leave_the_sink_paused() -> None:
    bus, clock, sink = EventBus(), TurnClock(), ManualSink()
    speech = reply(FakeBackend(TWO_SENTENCES), FakeSpeechEngine(frames_per_text=3), sink, bus, clock)
    task = asyncio.create_task(speech.run())
    await until(lambda: sink.queued >= 6 * FRAME)
    sink.advance(6 * FRAME)  # all of it heard; the reply has not seen it yet
    speech.pause()  # speech over its last moments (the echo of its tail, say) pauses it as it ends
    spoken = await task
    assert not spoken.interrupted and spoken.codes.shape[1] == 6
    assert not sink.paused  # the next reply plays


async def test_an_interrupt_before_the_second_chunk_plays_drops_its_text() -> None:
    bus, clock = EventBus(), TurnClock()
    engine, sink = FakeSpeechEngine(frames_per_text=3, frame_s=0.005), ManualSink()
    speech = reply(FakeBackend(TWO_SENTENCES), engine, sink, bus, clock)
    task = asyncio.create_task(speech.run())
    await until(lambda: sink.queued >= 4 * FRAME)
    sink.advance(2 * FRAME)
    speech.interrupt()
    spoken = await task
    assert spoken.text == "The sky is blue today."
    assert spoken.codes[0].tolist() == [1, 2]
    assert engine.cancelled == 1  # the second chunk's generation was stopped


async def test_an_interrupt_before_any_audio_played_keeps_nothing() -> None:
    bus, clock = EventBus(), TurnClock()
    sink = ManualSink()
    speech = reply(FakeBackend(TWO_SENTENCES, delay_s=0.01), FakeSpeechEngine(), sink, bus, clock)
    task = asyncio.create_task(speech.run())
    await until(lambda: sink.queued > 0)
    speech.interrupt()
    spoken = await task
    assert spoken.text == "" and spoken.codes is None and spoken.interrupted
    assert "first_played" not in clock.stages


async def test_an_llm_failing_before_its_first_token_gets_the_apology_spoken(tmp_path) -> None:
    bus, clock = EventBus(), TurnClock()
    errors = bus.subscribe(ErrorEvent)
    engine = FakeSpeechEngine()
    spoken = await reply(
        FakeBackend([], fail_after=0),
        engine,
        FileSink(tmp_path / "a.wav"),
        bus,
        clock,
        apology="Sorry, I can't think right now.",
    ).run()
    assert spoken.text == "Sorry, I can't think right now."
    assert errors.queue.get_nowait().source == "llm"


async def test_an_llm_failing_mid_reply_ends_with_what_was_said(tmp_path) -> None:
    bus, clock = EventBus(), TurnClock()
    errors = bus.subscribe(ErrorEvent)
    spoken = await reply(
        FakeBackend(TWO_SENTENCES, fail_after=3),
        FakeSpeechEngine(),
        FileSink(tmp_path / "a.wav"),
        bus,
        clock,
        apology="Sorry.",
    ).run()
    assert spoken.text == "The sky is blue today."  # no apology, no half sentence
    assert "mid-reply" in errors.queue.get_nowait().message


async def test_a_failing_engine_ends_the_reply_and_is_reported(tmp_path) -> None:
    bus, clock = EventBus(), TurnClock()
    errors = bus.subscribe(ErrorEvent)
    engine = FakeSpeechEngine(fail_on="It may rain later, or not at all.")
    spoken = await reply(FakeBackend(TWO_SENTENCES), engine, FileSink(tmp_path / "a.wav"), bus, clock).run()
    assert spoken.text == "The sky is blue today." and spoken.codes.shape[1] == 3
    assert errors.queue.get_nowait().source == "speech"


async def test_an_engine_failing_mid_sentence_keeps_the_heard_part(tmp_path) -> None:
    bus, clock = EventBus(), TurnClock()
    errors = bus.subscribe(ErrorEvent)
    engine = FakeSpeechEngine(fail_on="It may rain later, or not at all.", fail_after_frames=2)
    spoken = await reply(FakeBackend(TWO_SENTENCES), engine, FileSink(tmp_path / "a.wav"), bus, clock).run()
    assert spoken.text == "The sky is blue today. It may rain later, or not at all."  # its first 2 frames were heard
    assert spoken.codes[0].tolist() == [1, 2, 3, 4, 5]
    assert errors.queue.get_nowait().source == "speech"


async def test_text_only_replies_need_no_engine() -> None:
    bus, clock = EventBus(), TurnClock()
    spoken = await Reply(1, lambda cancel: FakeBackend(TWO_SENTENCES).stream([], cancel), bus, clock).run()
    assert spoken.text == "The sky is blue today. It may rain later, or not at all." and spoken.codes is None


async def test_the_context_is_awaited_before_the_first_chunk(tmp_path) -> None:
    bus, clock = EventBus(), TurnClock()
    engine = FakeSpeechEngine()
    ready = asyncio.get_running_loop().create_future()

    async def context():
        return await ready

    speech = reply(FakeBackend(["Hi there."]), engine, FileSink(tmp_path / "a.wav"), bus, clock, context=context())
    task = asyncio.create_task(speech.run())
    await asyncio.sleep(0.01)
    assert engine.calls == []
    ready.set_result([Segment(0, "hello", codes=torch.zeros(4, 2, dtype=torch.long))])
    await task
    assert [s.text for s in engine.calls[0][1]] == ["hello"]
