"""The voice loop's turn-taking with fakes: barge-in modes, empty transcripts, history, typed turns."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from assistant.config import Config
from assistant.events import (
    BargeInPaused,
    BargeInResumed,
    ConversationReset,
    ErrorEvent,
    EventBus,
    Interrupted,
    StateChanged,
    TurnLatency,
    UserTranscript,
    UtteranceEnded,
    WakeDetected,
)
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
        config,
        bus,
        FakeBackend(REPLY),
        transcriber=transcriber,
        engine=FakeSpeechEngine(frames_per_text=3),
        sink=sink,
        segmenter=VadSegmenter(config.vad, classifier=energy_classifier),
    )


def config(barge_in: str, **forgiving: int) -> Config:
    return Config.model_validate(
        {
            "vad": {"min_speech_ms": 90, "end_silence_ms": 300, "preroll_ms": 90},
            "barge_in": {"mode": barge_in, "min_speech_ms": 150, "tail_ms": 0, "hold_ms": 0, **forgiving},
            "csm": {"chunk_frames": 1},
        }
    )


async def speak_turn(source: QueueSource, sink: ManualSink) -> None:
    target = sink.queued + 6 * FRAME
    source.put(quiet(0.1))
    source.put(loud(0.5))
    source.put(quiet(0.5))
    await until(lambda: sink.queued >= target)  # the whole reply is waiting to be played
    sink.advance(FRAME)  # its first frame is heard: speech from now on no longer takes the turn back
    await asyncio.sleep(0.01)


async def answer_the_words_and_stop(listening: asyncio.Task, source: QueueSource, sink: ManualSink) -> None:
    """The speech that cut the reply ends; its turn's whole reply is queued and played; the loop stops."""
    source.put(quiet(0.5))
    await until(lambda: sink.queued >= sink.played + 6 * FRAME)
    sink.advance(6 * FRAME)
    source.end()
    await listening


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


async def test_vad_mode_barge_in_pauses_then_words_interrupt_and_become_the_next_turn() -> None:
    bus, sink, source = EventBus(), ManualSink(), QueueSource()
    events = bus.subscribe(Interrupted, BargeInPaused, BargeInResumed)
    voice = voice_loop(config("vad"), FakeTranscriber("tell me a story", "stop, tell me a joke"), sink, bus)
    listening = asyncio.create_task(voice.listen(source))
    await speak_turn(source, sink)
    sink.advance(FRAME)
    source.put(loud(0.1))  # a click: shorter than barge_in.min_speech_ms
    source.put(quiet(0.5))
    await asyncio.sleep(0.05)
    assert events.queue.empty()
    source.put(loud(0.6))
    await until(lambda: not events.queue.empty())
    assert isinstance(events.queue.get_nowait(), BargeInPaused) and sink.paused  # silent while the words are judged
    source.put(quiet(0.5))
    await until(lambda: not events.queue.empty())
    assert events.queue.get_nowait().source == "barge-in"
    await until(lambda: sink.queued >= 8 * FRAME)  # 2 frames heard, then the next reply
    sink.advance(6 * FRAME)
    source.end()
    await listening
    user, cut, user2, answer = voice.conversation.turns
    assert (user.text, user2.text) == ("tell me a story", "stop, tell me a joke")
    assert cut.interrupted and cut.text == "One two three." and cut.codes.shape[1] == 2
    assert not answer.interrupted and events.queue.empty()


@pytest.mark.parametrize(("over_the_reply", "resume_ms"), [("Mm-hmm.", 2000), ("", 2000), ("Uh-huh, yeah.", 100)])
async def test_a_cough_or_a_backchannel_pauses_the_reply_and_it_resumes_where_it_paused(
    over_the_reply: str, resume_ms: int
) -> None:
    bus, sink, source = EventBus(), ManualSink(), QueueSource()
    events = bus.subscribe(Interrupted, BargeInPaused, BargeInResumed)
    voice = voice_loop(
        config("vad", resume_ms=resume_ms), FakeTranscriber("tell me a story", over_the_reply), sink, bus
    )
    listening = asyncio.create_task(voice.listen(source))
    await speak_turn(source, sink)
    sink.advance(FRAME)
    source.put(loud(0.6))
    if resume_ms > 1000:
        source.put(quiet(0.5))  # it ends before resume_ms; otherwise resume_ms passes while it goes on
    await until(lambda: events.queue.qsize() == 2, timeout_s=5)
    assert isinstance(events.queue.get_nowait(), BargeInPaused)
    assert isinstance(events.queue.get_nowait(), BargeInResumed) and not sink.paused and sink.pauses == 1
    sink.advance(4 * FRAME)
    source.put(quiet(0.5))
    source.end()
    await listening
    user, reply = voice.conversation.turns  # the speech over the reply did not become a turn
    assert reply.text == "One two three. Four five six." and not reply.interrupted and reply.codes.shape[1] == 6
    assert events.queue.empty()


async def test_a_judge_that_fails_resumes_the_reply_and_says_why() -> None:
    class FailingSegmenter(VadSegmenter):  # a fake: the speech so far cannot be read
        def so_far(self):
            raise RuntimeError("no audio")

    bus, sink, source = EventBus(), ManualSink(), QueueSource()
    events = bus.subscribe(BargeInPaused, BargeInResumed, ErrorEvent)
    cfg = config("vad", resume_ms=100)
    voice = VoiceLoop(
        cfg,
        bus,
        FakeBackend(REPLY),
        transcriber=FakeTranscriber("tell me a story", "stop"),
        engine=FakeSpeechEngine(frames_per_text=3),
        sink=sink,
        segmenter=FailingSegmenter(cfg.vad, classifier=energy_classifier),
    )
    listening = asyncio.create_task(voice.listen(source))
    await speak_turn(source, sink)
    sink.advance(FRAME)
    source.put(loud(0.6))  # still going on when resume_ms has passed: the judge reads the speech so far, and fails
    await until(lambda: events.queue.qsize() == 3, timeout_s=5)
    got = [events.queue.get_nowait() for _ in range(3)]
    assert [type(e) for e in got] == [BargeInPaused, ErrorEvent, BargeInResumed] and not sink.paused
    assert "judging the speech over the reply failed: RuntimeError: no audio" in got[1].message
    sink.advance(4 * FRAME)
    source.put(quiet(0.5))
    source.end()
    await listening


async def test_no_barge_in_while_the_reply_is_held_and_at_once_without_resume() -> None:
    bus, sink, source = EventBus(), ManualSink(), QueueSource()
    events, ended = bus.subscribe(Interrupted, BargeInPaused), bus.subscribe(UtteranceEnded)
    voice = voice_loop(config("vad", hold_ms=10_000), FakeTranscriber("hello", "stop"), sink, bus)
    listening = asyncio.create_task(voice.listen(source))
    await speak_turn(source, sink)
    ended.queue.get_nowait()  # the first turn's
    source.put(loud(0.6))
    source.put(quiet(0.5))
    await until(lambda: not ended.queue.empty())  # heard whole while the reply sounds (after it, it would be a turn)
    assert events.queue.empty() and not sink.paused
    sink.advance(5 * FRAME)
    source.end()
    await listening
    assert not voice.conversation.turns[-1].interrupted

    bus, sink, source = EventBus(), ManualSink(), QueueSource()
    events = bus.subscribe(Interrupted, BargeInPaused)
    voice = voice_loop(config("vad", resume_ms=0), FakeTranscriber("hello", "stop"), sink, bus)
    listening = asyncio.create_task(voice.listen(source))
    await speak_turn(source, sink)
    source.put(loud(0.6))
    await until(lambda: not events.queue.empty())
    assert events.queue.get_nowait().source == "barge-in" and sink.interrupts == 1
    await answer_the_words_and_stop(listening, source, sink)


async def test_speech_heard_in_the_hold_does_not_count_toward_a_barge_in() -> None:
    bus, sink, source = EventBus(), ManualSink(), QueueSource()
    events = bus.subscribe(Interrupted)
    voice = voice_loop(config("vad", hold_ms=1000, resume_ms=0), FakeTranscriber("hello", "stop"), sink, bus)
    listening = asyncio.create_task(voice.listen(source))
    await speak_turn(source, sink)
    source.put(loud(0.4))  # an echo, say, while the canceller converges: 400 ms voiced, in the hold
    await until(lambda: voice.segmenter.voiced_ms >= 390)
    await asyncio.sleep(1.0)  # the hold is over; the same speech goes on
    source.put(loud(0.12))
    await until(lambda: voice.segmenter.voiced_ms >= 510)
    assert events.queue.empty()  # 120 of the 150 ms needed after the hold
    source.put(loud(0.06))
    await until(lambda: not events.queue.empty())
    assert events.queue.get_nowait().source == "barge-in"
    await answer_the_words_and_stop(listening, source, sink)


async def test_barge_in_is_held_again_after_the_reply_resumes() -> None:
    """A resumed reply restarts the speaker's device, and an echo canceller learns its echo anew: as at its start."""
    bus, sink, source = EventBus(), ManualSink(), QueueSource()
    events = bus.subscribe(BargeInPaused, BargeInResumed)
    cfg = config("vad", hold_ms=300, resume_ms=100)
    voice = voice_loop(cfg, FakeTranscriber("tell me a story", "Mm-hmm.", "Mm-hmm."), sink, bus)
    listening = asyncio.create_task(voice.listen(source))
    await speak_turn(source, sink)
    await asyncio.sleep(0.35)  # past the reply's hold
    source.put(loud(0.6))
    await until(lambda: events.queue.qsize() == 2, timeout_s=5)
    assert [type(events.queue.get_nowait()) for _ in range(2)] == [BargeInPaused, BargeInResumed]
    source.put(quiet(0.5))
    source.put(loud(0.3))  # right after it resumed: held
    await until(lambda: voice.segmenter.voiced_ms >= 290)
    await asyncio.sleep(0.05)
    assert events.queue.empty() and not sink.paused
    await asyncio.sleep(0.3)  # the hold after the resume is over
    source.put(loud(0.2))
    await until(lambda: not events.queue.empty(), timeout_s=5)
    assert isinstance(events.queue.get_nowait(), BargeInPaused)
    await until(lambda: not events.queue.empty(), timeout_s=5)
    sink.advance(6 * FRAME)
    source.put(quiet(0.5))
    source.end()
    await listening


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
    stages = [
        latency.transcript_s,
        latency.first_token_s,
        latency.first_chunk_s,
        latency.first_audio_s,
        latency.first_played_s,
    ]
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


async def test_an_idle_conversation_is_forgotten_its_text_its_audio_and_the_speech_cache() -> None:
    bus, sink = EventBus(), ManualSink()
    settings = config("off").model_copy(deep=True)
    settings.conversation.idle_reset_s = 0.3
    engine = FakeSpeechEngine(frames_per_text=3)
    voice = VoiceLoop(settings, bus, FakeBackend(REPLY), engine=engine, sink=sink)
    resets = bus.subscribe(ConversationReset)
    asking = voice.ask("hi")
    await until(lambda: sink.queued >= 6 * FRAME)
    sink.advance(6 * FRAME)
    await asking
    assert voice.conversation.turns[-1].codes is not None  # the reply's audio is in the history
    reset = await asyncio.wait_for(resets.get(), 5)
    assert isinstance(reset, ConversationReset) and reset.reason == "idle"
    assert voice.conversation.turns == [] and engine.cache_forgotten == 1


class FakeWakeWord:
    """A wake-word detector (named a fake) that hears its phrase in any loud block; counts its resets."""

    name, phrase = "fake_word", "Fake Word"

    def __init__(self) -> None:
        self.resets = 0

    def feed(self, block):
        from assistant.wake_word import Detection

        return Detection(self.name, self.phrase, 0.99) if float(abs(block).mean()) > 0.1 else None

    def reset(self) -> None:
        self.resets += 1

    def strip_phrase(self, text: str) -> str:
        return text


async def test_the_wake_word_plays_the_earcon_and_opens_listening() -> None:
    bus, sink, source = EventBus(), ManualSink(), QueueSource()
    settings = config("off").model_copy(deep=True)
    settings.listen.mode = "wake_word"
    earcon = np.full(1200, 0.2, np.float32)
    voice = VoiceLoop(
        settings,
        bus,
        FakeBackend(REPLY),
        transcriber=FakeTranscriber(),
        segmenter=VadSegmenter(settings.vad, classifier=energy_classifier),
        sink=sink,
        wake_word=FakeWakeWord(),  # type: ignore[arg-type]
        earcon=earcon,
    )
    events = bus.subscribe(WakeDetected, StateChanged)
    listening = asyncio.create_task(voice.listen(source))
    source.put(quiet(0.2))
    await asyncio.sleep(0.05)
    assert voice.floor.user.value == "waiting" and sink.queued == 0
    source.put(loud(0.03))
    await until(lambda: voice.floor.user.value == "listening")
    assert sink.queued == len(earcon)  # the earcon, and nothing else, went to the speaker
    seen = [events.queue.get_nowait() for _ in range(events.queue.qsize())]
    assert [type(e).__name__ for e in seen] == ["StateChanged", "WakeDetected", "StateChanged"]
    assert [e.state for e in seen if isinstance(e, StateChanged)] == ["waiting", "listening"]
    source.end()
    await listening
