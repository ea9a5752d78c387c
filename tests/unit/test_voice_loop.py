"""The voice loop's turn-taking with fakes: barge-in modes, empty transcripts, history, typed turns."""

from __future__ import annotations

import asyncio

from assistant.config import Config
from assistant.events import EventBus, Interrupted, TurnLatency, UserTranscript
from assistant.vad import VadSegmenter
from pipelines.voice_loop import VoiceLoop
from tests.support.fakes import (
    FRAME,
    FakeBackend,
    FakeSpeechEngine,
    FakeTranscriber,
    ManualSink,
    QueueSource,
    energy_classifier,
    loud,
    quiet,
)
from tests.unit.test_reply import until

REPLY = ["One two three. ", "Four five six."]


def voice_loop(config: Config, transcriber: FakeTranscriber, sink: ManualSink, bus: EventBus) -> VoiceLoop:
    return VoiceLoop(
        config, bus, FakeBackend(REPLY), transcriber=transcriber, engine=FakeSpeechEngine(frames_per_text=3),
        sink=sink, segmenter=VadSegmenter(config.vad, classifier=energy_classifier),
    )


def config(barge_in: str) -> Config:
    return Config.model_validate({
        "vad": {"min_speech_ms": 90, "end_silence_ms": 300, "preroll_ms": 90},
        "barge_in": {"mode": barge_in, "min_speech_ms": 150, "tail_ms": 0},
        "csm": {"chunk_frames": 1},
    })


async def speak_turn(source: QueueSource, sink: ManualSink) -> None:
    target = sink.queued + 6 * FRAME
    source.put(quiet(0.1))
    source.put(loud(0.5))
    source.put(quiet(0.5))
    await until(lambda: sink.queued >= target)  # the whole reply is waiting to be played


async def test_off_mode_ignores_speech_while_speaking_and_answers_after() -> None:
    bus, sink, source = EventBus(), ManualSink(), QueueSource()
    interrupts = bus.subscribe(Interrupted)
    voice = voice_loop(config("off"), FakeTranscriber("hello", "again"), sink, bus)
    listening = asyncio.create_task(voice.listen(source))
    await speak_turn(source, sink)
    source.put(loud(0.6))  # the user (or the echo) speaks over the reply
    source.put(quiet(0.5))
    await asyncio.sleep(0.05)
    assert voice.busy and interrupts.queue.empty()
    sink.advance(6 * FRAME)
    await until(lambda: not voice.busy)
    assert [t.text for t in voice.conversation.turns] == ["hello", "One two three. Four five six."]
    assert not voice.conversation.turns[-1].interrupted
    await speak_turn(source, sink)  # after the reply the microphone counts again
    sink.advance(6 * FRAME)
    source.end()
    await listening
    assert [t.text for t in voice.conversation.turns][2] == "again"


async def test_vad_mode_barge_in_interrupts_and_the_new_speech_becomes_the_next_turn() -> None:
    bus, sink, source = EventBus(), ManualSink(), QueueSource()
    interrupts = bus.subscribe(Interrupted)
    voice = voice_loop(config("vad"), FakeTranscriber("tell me a story", "stop, tell me a joke"), sink, bus)
    listening = asyncio.create_task(voice.listen(source))
    await speak_turn(source, sink)
    sink.advance(2 * FRAME)
    source.put(loud(0.1))  # a click: shorter than barge_in.min_speech_ms
    source.put(quiet(0.5))
    await asyncio.sleep(0.05)
    assert interrupts.queue.empty()
    source.put(loud(0.6))
    await until(lambda: not interrupts.queue.empty())
    assert interrupts.queue.get_nowait().source == "barge-in"
    source.put(quiet(0.5))
    await until(lambda: sink.queued >= 8 * FRAME)  # 2 frames heard, then the next reply
    sink.advance(6 * FRAME)
    source.end()
    await listening
    user, cut, user2, answer = voice.conversation.turns
    assert (user.text, user2.text) == ("tell me a story", "stop, tell me a joke")
    assert cut.interrupted and cut.text == "One two three." and cut.codes.shape[1] == 2
    assert not answer.interrupted


async def test_an_empty_transcript_starts_no_reply() -> None:
    bus, sink, source = EventBus(), ManualSink(), QueueSource()
    latencies = bus.subscribe(TurnLatency)
    voice = voice_loop(config("off"), FakeTranscriber("  ...  "), sink, bus)
    source.put(loud(0.5))
    source.put(quiet(0.5))
    source.end()
    await voice.listen(source)
    assert voice.conversation.turns == [] and sink.queued == 0 and latencies.queue.empty()


async def test_every_voice_turn_records_each_latency_stage() -> None:
    bus, sink, source = EventBus(), ManualSink(), QueueSource()
    latencies, transcripts = bus.subscribe(TurnLatency), bus.subscribe(UserTranscript)
    voice = voice_loop(config("off"), FakeTranscriber("hello"), sink, bus)
    listening = asyncio.create_task(voice.listen(source))
    await speak_turn(source, sink)
    sink.advance(6 * FRAME)
    source.end()
    await listening
    latency = latencies.queue.get_nowait()
    assert latency.turn == transcripts.queue.get_nowait().turn
    stages = [latency.transcript_s, latency.first_token_s, latency.first_chunk_s, latency.first_audio_s,
              latency.first_played_s]
    assert all(s is not None for s in stages) and stages == sorted(stages)


async def test_typed_turns_share_the_reply_path_and_the_history() -> None:
    bus, sink = EventBus(), ManualSink()
    voice = voice_loop(config("off"), FakeTranscriber(), sink, bus)
    asking = voice.ask("hi")
    await until(lambda: sink.queued >= 6 * FRAME)
    sink.advance(6 * FRAME)
    spoken = await asking
    assert spoken.text == "One two three. Four five six."
    assert [m["content"] for m in voice.backend.messages[0][1:]] == ["hi"]
    assert not voice.interrupt()  # nothing is going on any more
