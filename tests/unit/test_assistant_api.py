"""The embedding API's logic with fakes: say, ask, interrupt, mute, reset, events, start and stop."""

from __future__ import annotations

import asyncio

import pytest

from assistant.events import ConversationReset, EventBus, Interrupted, MuteChanged, ReplyText, UserTranscript
from pipelines import Assistant
from tests.support.fakes import (
    FRAME,
    FakeBackend,
    FakeSpeechEngine,
    FakeTranscriber,
    ManualSink,
    QueueSource,
    drain,
    loud,
    quiet,
)
from tests.unit.test_reply import until
from tests.unit.test_voice_loop import REPLY, config, voice_loop


def assistant(sink: ManualSink, source: QueueSource | None = None, backend: FakeBackend | None = None) -> Assistant:
    return Assistant(
        config("off"),
        backend=backend or FakeBackend(REPLY),
        engine=FakeSpeechEngine(frames_per_text=3),
        transcriber=FakeTranscriber(),
        source=source or QueueSource(),
        sink=sink,
    )


async def test_say_speaks_the_text_as_the_assistants_turn_with_the_conversation_as_context() -> None:
    sink = ManualSink()
    async with assistant(sink) as kiosk:
        with kiosk.subscribe(ReplyText) as replies:
            asked = kiosk.ask("hi")
            await until(lambda: sink.queued >= 6 * FRAME)
            sink.advance(6 * FRAME)
            assert await asked == "One two three. Four five six."
            said = kiosk.say("Welcome back. Please take a seat.")
            await until(lambda: sink.queued >= 12 * FRAME)
            sink.advance(6 * FRAME)
            assert await said == "Welcome back. Please take a seat."
            finals = [e.text for e in drain(replies.queue) if e.final]
        assert finals == ["One two three. Four five six.", "Welcome back. Please take a seat."]
        turns = kiosk.conversation.turns
        assert [(t.role, t.text) for t in turns][-1] == ("assistant", "Welcome back. Please take a seat.")
        engine = kiosk._voice.engine  # the said text was spoken with the conversation so far as CSM's context
        text, context = engine.calls[-2]
        assert text == "Welcome back." and [s.text for s in context] == ["One two three. Four five six."]
        assert len(kiosk._voice.backend.messages) == 1  # the LLM was not asked for a said turn


async def test_interrupt_keeps_what_was_heard_and_turns_run_in_the_order_they_were_started() -> None:
    sink = ManualSink()
    async with assistant(sink) as kiosk:
        first, second = kiosk.say("One two three. Four five six."), kiosk.ask("and then?")
        await until(lambda: sink.queued >= 3 * FRAME)
        sink.advance(2 * FRAME)
        assert kiosk.interrupt()
        assert await first == "One two three."
        await until(lambda: sink.queued >= sink.played + 6 * FRAME)  # the ask, started second, runs after
        sink.advance(6 * FRAME)
        assert await second == "One two three. Four five six."
        said, user, answer = kiosk.conversation.turns
        assert said.interrupted and said.codes.shape[1] == 2
        assert (user.role, user.text) == ("user", "and then?") and not answer.interrupted
        assert not kiosk.interrupt()  # nothing is being said


async def test_an_interrupt_is_spent_once_and_the_next_stops_the_turn_asked_behind_the_stopping_reply() -> None:
    sink = ManualSink()
    async with assistant(sink) as kiosk:
        with kiosk.subscribe(Interrupted) as events:
            first = kiosk.say("One two three. Four five six.")
            await until(lambda: sink.queued >= 3 * FRAME)
            sink.advance(FRAME)
            assert kiosk.interrupt()
            second = kiosk.ask("and then?")  # asked while the first winds down
            assert kiosk.interrupt()  # stops the second before it sounds, not the first again
            assert not kiosk.interrupt() and not kiosk.busy
            assert (await first, await second) == ("One two three.", "")
            interrupts = drain(events.queue)
        assert [e.turn for e in interrupts] == [interrupts[0].turn, interrupts[0].turn + 1]
        assert [t.text for t in kiosk.conversation.turns] == ["One two three."]  # the second never began
        assert sink.interrupts == 1


async def test_interrupting_all_drops_every_queued_turn() -> None:
    sink = ManualSink()
    async with assistant(sink) as kiosk:
        with kiosk.subscribe(Interrupted) as events:
            turns = [kiosk.say("One two three."), kiosk.ask("and then?"), kiosk.say("Goodbye.")]
            await until(lambda: sink.queued >= FRAME)
            assert kiosk.interrupt("mqtt", all=True)
            assert [await t for t in turns] == ["", "", ""]
            assert len(drain(events.queue)) == 3 and not kiosk.interrupt()
        assert kiosk.conversation.turns == []


async def test_stop_ends_the_reply_and_drops_the_queue_at_once() -> None:
    sink = ManualSink()  # it plays nothing unless told: a queued turn that was spoken would never finish
    kiosk = assistant(sink)
    await kiosk.start()
    turns = [kiosk.ask("A"), kiosk.ask("B"), kiosk.ask("C")]
    await until(lambda: sink.queued >= 3 * FRAME)
    conversation = kiosk.conversation
    await asyncio.wait_for(kiosk.stop(), 5)
    assert [await t for t in turns] == ["", "", ""]
    assert [t.text for t in conversation.turns] == ["A"]  # nothing of the reply was heard


async def test_reset_interrupts_and_forgets_the_conversation_after_the_turn_under_way() -> None:
    sink = ManualSink()
    async with assistant(sink) as kiosk:
        with kiosk.subscribe(Interrupted, ConversationReset) as events:
            asked = kiosk.ask("hi")
            await until(lambda: sink.queued >= 3 * FRAME)
            await kiosk.reset()
            assert await asked == ""
            assert kiosk.conversation.turns == []
            kinds = [e.kind for e in drain(events.queue)]
        assert kinds == ["Interrupted", "ConversationReset"]
        after = kiosk.ask("hello again")
        await until(lambda: sink.queued >= sink.played + 6 * FRAME)
        sink.advance(sink.queued)
        await after
        assert [m["content"] for m in kiosk._voice.backend.messages[-1][1:]] == ["hello again"]


async def test_bad_text_is_a_clear_error_and_changes_nothing() -> None:
    sink = ManualSink()
    async with assistant(sink) as kiosk:
        for bad in ("", "   ", None, 42):
            with pytest.raises(ValueError, match=r"say\(\) needs some text"):
                kiosk.say(bad)  # type: ignore[arg-type]
            with pytest.raises(ValueError, match=r"ask\(\) needs some text"):
                kiosk.ask(bad)  # type: ignore[arg-type]
        assert not kiosk.busy and kiosk.conversation.turns == [] and sink.queued == 0


async def test_calls_before_start_and_after_stop_say_so() -> None:
    kiosk = assistant(ManualSink())
    with pytest.raises(RuntimeError, match="not started"):
        kiosk.ask("hi")
    await kiosk.start()
    with pytest.raises(RuntimeError, match="already started"):
        await kiosk.start()
    await kiosk.stop()
    with pytest.raises(RuntimeError, match="not started"):
        kiosk.mute()


async def test_stop_ends_listening_and_wait_returns_when_the_source_ends() -> None:
    source = QueueSource()
    kiosk = assistant(ManualSink(), source)
    await kiosk.start()
    source.end()
    await asyncio.wait_for(kiosk.wait(), 5)
    await kiosk.stop()
    assert kiosk._listening is None


async def test_muted_speech_is_not_heard_and_unmuting_hears_again() -> None:
    bus, sink, source = EventBus(), ManualSink(), QueueSource()
    voice = voice_loop(config("off"), FakeTranscriber("after unmuting"), sink, bus)
    events = bus.subscribe(MuteChanged, UserTranscript)
    listening = asyncio.create_task(voice.listen(source))
    source.put(loud(0.3))  # speech under way when muted is dropped as well
    await until(lambda: voice.segmenter.voiced_ms > 0)
    voice.set_muted(True)
    source.put(loud(0.5))
    source.put(quiet(0.5))
    await asyncio.sleep(0.05)
    assert not voice.busy and voice.conversation.turns == []
    voice.set_muted(False)
    source.put(loud(0.5))
    source.put(quiet(0.5))
    await until(lambda: sink.queued >= 6 * FRAME)
    sink.advance(6 * FRAME)
    source.end()
    await listening
    assert [t.text for t in voice.conversation.turns][0] == "after unmuting"
    seen = drain(events.queue)
    assert [(e.kind, getattr(e, "muted", None)) for e in seen] == [
        ("MuteChanged", True),
        ("MuteChanged", False),
        ("UserTranscript", None),
    ]


async def test_python_tools_handed_in_or_decorated_are_offered_and_called(tmp_path) -> None:
    from assistant.audio.streams import FileSink
    from assistant.llm.backend import ToolCall

    moved: list[str] = []

    async def move(room: str) -> str:
        """Drive to a room."""
        moved.append(room)
        return f"in the {room}"

    backend = FakeBackend([ToolCall("c1", "move", '{"room": "hall"}'), ToolCall("c2", "wave", "{}")], then=[["Hi."]])
    robot = Assistant(
        config("off"),
        backend=backend,
        engine=FakeSpeechEngine(frames_per_text=1),
        transcriber=FakeTranscriber(),
        source=QueueSource(),
        sink=FileSink(tmp_path / "replies.wav"),
        tools=[move],
    )

    @robot.tool(name="wave")
    def greet() -> str:
        """Wave a hand."""
        return "waved"

    async with robot:
        assert await robot.ask("Come and wave.") == "Hi."
    assert moved == ["hall"] and [t.name for t in backend.tools[0]] == ["move", "wave"]
    assert [m["content"] for m in backend.messages[1] if m["role"] == "tool"] == ["in the hall", "waved"]
