"""Turn-taking in the voice loop, with fakes: latency from the last voiced frame, the end of turn decided by the
words, the speculative transcript and reply that a pause starts (dropped without a trace when the user goes on), and
a turn taken back when the user goes on before its reply is heard."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator

import numpy as np
import pytest

from assistant.asr import Transcript
from assistant.config import Config
from assistant.events import EventBus, ReplyText, TurnLatency, TurnTakenBack, UserTranscript
from assistant.mqtt.messages import event_message
from assistant.vad import VadSegmenter
from pipelines.voice_loop import VoiceLoop
from tests.support.fakes import (
    FRAME,
    FakeBackend,
    FakeSpeechEngine,
    FakeTranscriber,
    ManualSink,
    QueueSource,
    drain,
    energy_classifier,
    loud,
    quiet,
)
from tests.unit.test_reply import until

REPLY = ["Sure. ", "Here you go."]


class FakeTurnModel:
    """An end-of-turn model that always gives the same probability, recording what it heard."""

    def __init__(self, probability: float) -> None:
        self.probability, self.heard = probability, []

    def complete(self, audio) -> float:
        self.heard.append(audio)
        return self.probability


def setup(
    *texts: str,
    speculate_ms: int = 210,
    llm_delay_s: float = 0.0,
    turn_model: FakeTurnModel | None = None,
    take_back: bool = True,
    detector: str | None = None,
    transcriber: FakeTranscriber | None = None,
):
    config = Config.model_validate(
        {
            "vad": {"frame_ms": 30, "min_speech_ms": 90, "end_silence_ms": 600, "preroll_ms": 90},
            "turn": {
                "speculate_ms": speculate_ms,
                "complete_ms": 270,
                "incomplete_ms": 1200,
                "detector": detector or ("model" if turn_model else "words"),
                "take_back": take_back,
            },
            "csm": {"chunk_frames": 1},
        }
    )
    bus, sink, source = EventBus(), ManualSink(), QueueSource()
    transcriber, backend = transcriber or FakeTranscriber(*texts), FakeBackend(REPLY, delay_s=llm_delay_s)
    voice = VoiceLoop(
        config,
        bus,
        backend,
        transcriber=transcriber,
        engine=FakeSpeechEngine(frames_per_text=2),
        sink=sink,
        segmenter=VadSegmenter(config.vad, classifier=energy_classifier),
        turn_model=turn_model,
    )
    published = bus.subscribe(UserTranscript, ReplyText, TurnLatency, TurnTakenBack)
    return voice, source, sink, transcriber, backend, published


async def hear_the_reply_and_stop(listening: asyncio.Task, source: QueueSource, sink: ManualSink) -> None:
    """Wait for the reply's audio, play it all, then end the microphone and the loop."""
    await until(lambda: sink.queued >= 4 * FRAME)
    sink.advance(4 * FRAME)
    source.end()
    await listening


async def test_a_finished_sentence_ends_the_turn_soon_and_the_pause_s_work_is_used() -> None:
    voice, source, sink, transcriber, backend, published = setup("What time is it?")
    listening = asyncio.create_task(voice.listen(source))
    source.put(quiet(0.1))
    source.put(loud(0.6))
    source.put(quiet(0.3))  # 300 ms: past the pause (210) and a finished sentence's end (270)
    await hear_the_reply_and_stop(listening, source, sink)
    assert len(transcriber.heard) == 1 and len(backend.messages) == 1  # transcribed and asked once, at the pause
    assert [t.text for t in voice.conversation.turns] == ["What time is it?", "Sure. Here you go."]
    latency = next(e for e in drain(published.queue) if isinstance(e, TurnLatency))
    assert latency.transcript_s is not None and latency.first_audio_s is not None
    assert 0.2 <= latency.endpoint_s < latency.first_audio_s  # counted from the last voiced frame, not the commit


async def test_a_trailing_and_waits_longer_than_a_finished_sentence() -> None:
    voice, source, sink, transcriber, backend, published = setup("I'd like a coffee and")
    listening = asyncio.create_task(voice.listen(source))
    source.put(loud(0.6))
    source.put(quiet(0.9))
    await until(lambda: len(transcriber.heard) == 1)
    await asyncio.sleep(0.05)
    assert not voice.busy and voice.conversation.turns == [] and drain(published.queue) == []
    source.put(quiet(0.4))  # 1.3 s of silence in all: past incomplete_ms
    await hear_the_reply_and_stop(listening, source, sink)
    assert [t.text for t in voice.conversation.turns][0] == "I'd like a coffee and"
    assert len(transcriber.heard) == 1  # the pause's transcript served the turn


async def test_speech_after_a_pause_drops_everything_the_pause_started() -> None:
    voice, source, sink, transcriber, backend, published = setup(
        "I want to go to the", "I want to go to the beach.", llm_delay_s=0.05
    )
    listening = asyncio.create_task(voice.listen(source))
    source.put(loud(0.6))
    source.put(quiet(0.3))  # a pause: "...to the" holds the turn open, and the LLM starts on it
    await until(lambda: len(backend.messages) == 1)
    assert backend.messages[0][-1]["content"] == "I want to go to the"
    source.put(loud(0.5))  # the user goes on
    await until(lambda: backend.streams_closed == 1)  # the speculative reply was stopped
    assert drain(published.queue) == [] and voice.conversation.turns == [] and sink.queued == 0
    source.put(quiet(0.3))
    await hear_the_reply_and_stop(listening, source, sink)
    events = drain(published.queue)
    assert [e.text for e in events if isinstance(e, UserTranscript)] == ["I want to go to the beach."]
    assert len([e for e in events if isinstance(e, TurnLatency)]) == 1
    assert [t.text for t in voice.conversation.turns] == ["I want to go to the beach.", "Sure. Here you go."]
    assert len(transcriber.heard[1]) > len(transcriber.heard[0])  # the turn that ended holds both bursts
    assert voice.conversation.turns[0].audio is not None and len(voice.conversation.turns[0].audio) == len(
        transcriber.heard[1]
    )
    assert backend.messages[1][-1]["content"] == "I want to go to the beach."
    assert sink.queued == 4 * FRAME  # only the reply to the whole turn was ever played


async def test_a_conversation_that_moved_on_since_the_pause_asks_the_llm_again() -> None:
    voice, source, sink, transcriber, backend, published = setup("Is it raining?", llm_delay_s=0.02)
    listening = asyncio.create_task(voice.listen(source))
    source.put(loud(0.6))
    source.put(quiet(0.24))  # past the pause, not yet the end
    await until(lambda: len(backend.messages) == 1)
    voice.conversation.add_user("typed meanwhile")  # as a typed turn or a reset would
    source.put(quiet(0.1))
    await hear_the_reply_and_stop(listening, source, sink)
    assert len(backend.messages) == 2 and backend.messages[1][-2]["content"] == "typed meanwhile"


async def test_without_speculation_the_turn_ends_at_the_vad_s_silence_and_counts_from_the_last_word() -> None:
    voice, source, sink, transcriber, backend, published = setup("What time is it?", speculate_ms=0)
    listening = asyncio.create_task(voice.listen(source))
    source.put(loud(0.6))
    source.put(quiet(0.5))
    await asyncio.sleep(0.05)
    assert transcriber.heard == []  # 500 ms of silence: no turn yet (end_silence_ms 600)
    source.put(quiet(0.2))
    await hear_the_reply_and_stop(listening, source, sink)
    latency = next(e for e in drain(published.queue) if isinstance(e, TurnLatency))
    assert latency.endpoint_s >= 0.6 and latency.transcript_s > latency.endpoint_s


async def test_with_the_end_of_turn_model_its_judgement_and_not_the_words_decides() -> None:
    unsure = FakeTurnModel(0.1)  # a finished question, but the model hears an unfinished turn: wait long
    voice, source, sink, transcriber, backend, published = setup("What time is it?", turn_model=unsure)
    listening = asyncio.create_task(voice.listen(source))
    source.put(loud(0.6))
    source.put(quiet(0.9))
    await until(lambda: len(unsure.heard) == 1 and len(transcriber.heard) == 1)
    await asyncio.sleep(0.05)
    assert voice.conversation.turns == [] and drain(published.queue) == []
    assert len(unsure.heard[0]) == len(transcriber.heard[0])  # both got the turn as it would end at the pause
    source.put(quiet(0.4))
    await hear_the_reply_and_stop(listening, source, sink)

    sure = FakeTurnModel(0.9)  # a trailing "and", but the model hears a finished turn: end it soon
    voice, source, sink, transcriber, backend, published = setup("I'd like a coffee and", turn_model=sure)
    listening = asyncio.create_task(voice.listen(source))
    source.put(loud(0.6))
    source.put(quiet(0.3))
    await hear_the_reply_and_stop(listening, source, sink)
    assert [t.text for t in voice.conversation.turns][0] == "I'd like a coffee and"


async def test_the_model_scores_at_a_lull_and_the_pause_that_follows_takes_that_score_over() -> None:
    """Each lull (turn.look_ms of silence) begins the look; a pause with no speech since uses it, so the model's
    verdict is ready when the pause comes, and nothing is scored twice."""
    model = FakeTurnModel(0.9)
    voice, source, sink, transcriber, backend, published = setup("Turn left, then right.", turn_model=model)
    listening = asyncio.create_task(voice.listen(source))
    source.put(loud(0.6))
    source.put(quiet(0.18))  # a gap: a lull, no pause
    await until(lambda: len(model.heard) == 1)
    source.put(loud(0.3))
    source.put(quiet(0.4))  # a lull, then the pause, then the end (the model: complete)
    await hear_the_reply_and_stop(listening, source, sink)
    assert len(model.heard) == 2 and len(transcriber.heard) == 1  # a look at each lull; one transcript, at the pause
    assert len(model.heard[0]) < len(model.heard[1])
    assert np.array_equal(model.heard[1], transcriber.heard[0])  # the pause's audio is the last lull's
    assert np.array_equal(model.heard[1], voice.conversation.turns[0].audio)


class SlowFakeTranscriber(FakeTranscriber):
    """A fake whose glance hears `quick` at once, while its full transcript waits for `release`."""

    def __init__(self, quick: str, full: str) -> None:
        super().__init__(full)
        self.quick, self.release = quick, threading.Event()

    def transcribe(self, audio: np.ndarray) -> Transcript:
        self.release.wait(10)
        return super().transcribe(audio)

    def glance(self, audio: np.ndarray) -> Transcript:
        return Transcript(self.quick, "en", len(audio) / 16_000)


@contextlib.asynccontextmanager
async def asked_with_a_slow_transcript(quick: str, full: str) -> AsyncIterator[tuple]:
    """detector both, Whisper's full transcript held back: the user asks a question (the model: complete), and its
    reply on the glance's words is ready. Yields (slow transcriber, voice, source, sink, backend, published); at the
    end the full transcript is let go and the loop stopped."""
    slow = SlowFakeTranscriber(quick, full)
    voice, source, sink, _, backend, published = setup(turn_model=FakeTurnModel(0.9), detector="both", transcriber=slow)
    listening = asyncio.create_task(voice.listen(source))
    try:
        source.put(loud(0.6))
        source.put(quiet(0.4))
        await until(lambda: sink.queued >= 4 * FRAME)  # the reply, with the full transcript still under way
        yield slow, voice, source, sink, backend, published
    finally:
        slow.release.set()
        source.end()
        await listening


async def test_with_both_the_reply_begins_on_the_glance_and_the_conversation_keeps_the_full_transcript() -> None:
    """Whisper's full transcript is off the turn's path: the reply starts on the quick words, and the full words,
    when they come, are what the conversation remembers."""
    async with asked_with_a_slow_transcript("What's the time.", "What is the time?") as asked:
        slow, voice, source, sink, backend, published = asked
        assert slow.heard == [] and backend.messages[0][-1]["content"] == "What's the time."
        assert [e.text for e in drain(published.queue) if isinstance(e, UserTranscript)] == ["What's the time."]
        assert voice.conversation.turns[0].text == "What's the time."
        slow.release.set()
        await until(lambda: voice.conversation.turns[0].text == "What is the time?")
        sink.advance(4 * FRAME)  # the reply heard
    assert [t.text for t in voice.conversation.turns] == ["What is the time?", "Sure. Here you go."]
    assert len(backend.messages) == 1  # asked once, on the quick words


async def test_with_both_a_turn_taken_back_keeps_no_words_of_its_full_transcript() -> None:
    async with asked_with_a_slow_transcript("What is the capital.", "What is the capital?") as asked:
        slow, voice, source, sink, backend, published = asked
        source.put(loud(0.5))  # the user goes on before hearing the reply
        await until(lambda: any(isinstance(e, TurnTakenBack) for e in drain(published.queue)))
        slow.release.set()
        await asyncio.sleep(0.05)
        assert voice.conversation.turns == []


async def test_going_on_before_the_reply_is_heard_takes_the_turn_back_and_the_speech_continues_it() -> None:
    voice, source, sink, transcriber, backend, published = setup(
        "What is the capital?", "What is the capital of Australia?"
    )
    listening = asyncio.create_task(voice.listen(source))
    source.put(loud(0.6))
    source.put(quiet(0.4))  # a finished question: the turn ends at 270 ms of silence
    await until(lambda: sink.queued >= 4 * FRAME)  # its reply is ready, and not yet heard
    (heard,) = [e for e in drain(published.queue) if isinstance(e, UserTranscript)]
    assert heard.text == "What is the capital?"
    source.put(loud(0.5))  # the user goes on
    await until(lambda: not published.queue.empty())
    (taken,) = drain(published.queue)
    assert isinstance(taken, TurnTakenBack) and taken.turn == heard.turn
    assert event_message(taken)[0] == "taken_back"  # for the kiosk's screen, over MQTT
    await asyncio.sleep(0.05)
    assert voice.conversation.turns == [] and sink.queued == sink.played == 0 and not voice.busy
    source.put(quiet(0.4))
    await hear_the_reply_and_stop(listening, source, sink)
    events = drain(published.queue)
    assert [e.text for e in events if isinstance(e, UserTranscript)] == ["What is the capital of Australia?"]
    assert [e.turn for e in events if isinstance(e, TurnLatency)] == [events[0].turn]  # the withdrawn turn has none
    assert not any(isinstance(e, ReplyText) and e.final and e.turn == heard.turn for e in events)
    assert [t.text for t in voice.conversation.turns] == ["What is the capital of Australia?", "Sure. Here you go."]
    assert len(transcriber.heard[-1]) >= 16_000 * 1.4  # one turn: both bursts and the pause between them
    assert len(voice.conversation.turns[0].audio) == len(transcriber.heard[-1])
    assert [m["content"] for m in backend.messages[-1][1:]] == ["What is the capital of Australia?"]


async def test_a_click_before_the_reply_is_heard_holds_it_only_while_it_lasts() -> None:
    voice, source, sink, transcriber, backend, published = setup("What time is it?")
    listening = asyncio.create_task(voice.listen(source))
    source.put(loud(0.6))
    source.put(quiet(0.4))
    await until(lambda: sink.queued >= 4 * FRAME)
    source.put(loud(0.03))  # shorter than vad.min_speech_ms: it may be the user going on, or a click
    await until(lambda: sink.paused)  # nothing is heard while it is unclear
    source.put(quiet(0.7))  # a click: the candidate is dropped after end_silence_ms
    await until(lambda: not sink.paused)
    await hear_the_reply_and_stop(listening, source, sink)
    assert not any(isinstance(e, TurnTakenBack) for e in drain(published.queue))
    assert [t.text for t in voice.conversation.turns] == ["What time is it?", "Sure. Here you go."]


@pytest.mark.parametrize(("heard", "take_back"), [(True, True), (False, False)])
async def test_speech_after_the_reply_is_heard_or_without_take_back_leaves_the_turn_standing(
    heard: bool, take_back: bool
) -> None:
    voice, source, sink, transcriber, backend, published = setup("What is the capital?", take_back=take_back)
    listening = asyncio.create_task(voice.listen(source))
    source.put(loud(0.6))
    source.put(quiet(0.4))
    await until(lambda: sink.queued >= 4 * FRAME)
    if heard:
        sink.advance(FRAME)
        await asyncio.sleep(0.01)
    source.put(loud(0.5))  # barge_in.mode off: speech over the reply is ignored
    source.put(quiet(0.4))
    await asyncio.sleep(0.05)
    assert not sink.paused and voice.busy
    await hear_the_reply_and_stop(listening, source, sink)
    assert not any(isinstance(e, TurnTakenBack) for e in drain(published.queue))
    assert [t.text for t in voice.conversation.turns] == ["What is the capital?", "Sure. Here you go."]
    assert len(transcriber.heard) == 1


@pytest.mark.parametrize("how", ["muted", "ended"])
async def test_a_reply_held_for_a_sound_plays_on_when_the_microphone_is_muted_or_ends(how: str) -> None:
    voice, source, sink, transcriber, backend, published = setup("What time is it?")
    listening = asyncio.create_task(voice.listen(source))
    source.put(loud(0.6))
    source.put(quiet(0.4))
    await until(lambda: sink.queued >= 4 * FRAME)
    source.put(loud(0.03))
    await until(lambda: sink.paused)
    if how == "muted":
        voice.set_muted(True)
    else:
        source.end()
    await until(lambda: not sink.paused)
    sink.advance(4 * FRAME)
    source.end()
    await listening
    assert [t.text for t in voice.conversation.turns] == ["What time is it?", "Sure. Here you go."]
