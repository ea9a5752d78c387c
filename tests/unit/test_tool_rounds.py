"""Tool calls in the voice loop, with a fake LLM and real Python tools: rounds, speech around the calls, faults,
and the history an interruption leaves (never a call without its result; a finished call never run twice)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest

from assistant.config import Config
from assistant.events import EventBus, Interrupted, ReplyText, ToolCalled, ToolResult, TurnLatency
from assistant.llm.backend import Message, ToolCall
from assistant.tools import ToolRegistry, tool
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


def settings(**tools: Any) -> Config:
    return Config.model_validate(
        {
            "tools": {"filler_ms": 100, "timeout_s": 5, **tools},
            "barge_in": {"mode": "vad", "tail_ms": 0, "hold_ms": 0},
            "csm": {"chunk_frames": 1},
        }
    )


class Robot:
    """Real Python tools with a memory of what they did."""

    def __init__(self, move_s: float = 0.0) -> None:
        self.moves: list[str] = []
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.move_s = move_s
        self.registry = ToolRegistry()

        @tool
        async def move(room: str) -> str:
            """Drive to a room."""
            self.started.append(room)
            try:
                await asyncio.sleep(self.move_s)
            except asyncio.CancelledError:
                self.cancelled.append(room)
                raise
            self.moves.append(room)
            return f"arrived in the {room}"

        @tool
        def battery() -> dict[str, int]:
            """The battery level."""
            return {"percent": 80}

        self.registry.add(move)
        self.registry.add(battery)


T = TypeVar("T")


def call(name: str, arguments: Any = None, id: str = "call_1") -> ToolCall:
    return ToolCall(id, name, arguments if isinstance(arguments, str) else json.dumps(arguments or {}))


def loop(backend: FakeBackend, robot: Robot, config: Config | None = None, **speech: Any) -> VoiceLoop:
    return VoiceLoop(config or settings(), EventBus(), backend, tools=robot.registry, **speech)


async def play_out(sink: ManualSink, task: Awaitable[T], timeout_s: float = 20) -> T:
    """Play whatever is queued until `task` is done (the engine may still be making the rest of a reply)."""
    waiting = asyncio.ensure_future(task)
    async with asyncio.timeout(timeout_s):
        while not waiting.done():
            sink.advance(sink.queued - sink.played)
            await asyncio.sleep(0.005)
    return waiting.result()


def roles(messages: list[Message]) -> list[str]:
    return [m["role"] for m in messages]


def assert_valid(messages: list[Message]) -> None:
    """What OpenAI's API demands: every call answered by a tool message right after its assistant message."""
    for i, message in enumerate(messages):
        if message["role"] == "assistant" and message.get("tool_calls"):
            ids = [c["id"] for c in message["tool_calls"]]
            answers = messages[i + 1 : i + 1 + len(ids)]
            assert [m["role"] for m in answers] == ["tool"] * len(ids)
            assert [m["tool_call_id"] for m in answers] == ids  # type: ignore[typeddict-item]


async def test_a_call_runs_and_its_result_goes_back_to_the_model_for_the_answer() -> None:
    robot = Robot()
    backend = FakeBackend([call("move", {"room": "kitchen"})], then=[["I am in the kitchen."]])
    voice = loop(backend, robot)
    events = voice.bus.subscribe(ToolCalled, ToolResult, TurnLatency)
    spoken = await voice.ask("Come to the kitchen.")
    assert spoken is not None and spoken.text == "I am in the kitchen."
    assert robot.moves == ["kitchen"]
    assert [t.name for t in backend.tools[0]] == ["move", "battery"]
    second = backend.messages[1]
    assert roles(second) == ["system", "user", "assistant", "tool"]
    assert second[3] == {"role": "tool", "tool_call_id": "call_1", "content": "arrived in the kitchen"}
    called, result, latency = [events.queue.get_nowait() for _ in range(3)]
    assert isinstance(called, ToolCalled) and called.arguments == '{"room": "kitchen"}'
    assert isinstance(result, ToolResult) and result.status == "ok" and result.result == "arrived in the kitchen"
    assert isinstance(latency, TurnLatency) and latency.tool_s is not None
    history = voice.conversation.messages()
    assert roles(history) == ["system", "user", "assistant", "tool", "assistant"]
    assert history[-1]["content"] == "I am in the kitchen."
    assert_valid(history)


async def test_calls_of_one_round_run_side_by_side() -> None:
    robot = Robot(move_s=0.2)
    calls = [call("move", {"room": "kitchen"}, "a"), call("move", {"room": "hall"}, "b")]
    voice = loop(FakeBackend(calls, then=[["Done."]]), robot)
    asking = voice.ask("Go to both.")
    await until(lambda: len(robot.started) == 2)
    assert robot.moves == []  # both started before either finished
    await asking
    assert_valid(voice.conversation.messages())


async def test_text_before_a_call_is_said_first_and_no_filler_follows() -> None:
    robot = Robot(move_s=0.3)
    voice = loop(FakeBackend(["Let me ", "go there. ", call("move", {"room": "hall"})], then=[["Here."]]), robot)
    replies = voice.bus.subscribe(ReplyText)
    spoken = await voice.ask("Go to the hall.")
    assert spoken is not None and spoken.pieces == ("Let me go there.", "Here.")
    assert [e.text for e in drain_texts(replies)] == ["Let me go there.", "Here."]
    assistant = voice.conversation.messages()[2]
    assert assistant["role"] == "assistant" and assistant["content"] == "Let me go there."


def drain_texts(subscription: Any) -> list[ReplyText]:
    events = []
    while not subscription.queue.empty():
        event = subscription.queue.get_nowait()
        if not event.final:
            events.append(event)
    return events


@pytest.mark.parametrize("move_s, filler", [(0.4, True), (0.0, False)])
async def test_a_filler_is_heard_only_when_a_silent_call_outlasts_filler_ms(move_s: float, filler: bool) -> None:
    robot, engine, sink = Robot(move_s=move_s), FakeSpeechEngine(frames_per_text=2), ManualSink()
    voice = loop(FakeBackend([call("move", {"room": "hall"})], then=[["Here."]]), robot, engine=engine, sink=sink)
    asking = voice.ask("Go to the hall.")
    await until(lambda: robot.moves)
    await until(lambda: sink.queued >= (4 if filler else 2) * FRAME)
    spoken = await play_out(sink, asking)
    assert spoken is not None
    assert spoken.pieces == (("One moment.", "Here.") if filler else ("Here.",))
    assert engine.calls[0][0] == "One moment."  # prepared as the call started, in either case
    history = voice.conversation.messages()
    assert history[-1]["content"] == ("One moment. Here." if filler else "Here.")
    assert_valid(history)


async def test_no_filler_when_it_is_off() -> None:
    robot = Robot(move_s=0.3)
    voice = loop(FakeBackend([call("move", {"room": "hall"})], then=[["Here."]]), robot, settings(filler=None))
    spoken = await voice.ask("Go to the hall.")
    assert spoken is not None and spoken.pieces == ("Here.",)


async def test_an_interrupt_while_a_call_runs_cancels_it_and_the_history_says_so() -> None:
    robot = Robot(move_s=5.0)
    backend = FakeBackend([call("move", {"room": "garden"})], then=[["I went."]])
    voice = loop(backend, robot, settings(filler=None))
    results = voice.bus.subscribe(ToolResult)
    asking = voice.ask("Go to the garden.")
    await until(lambda: robot.started)
    assert voice.interrupt()
    await asking
    assert robot.cancelled == ["garden"] and robot.moves == []
    result = results.queue.get_nowait()
    assert isinstance(result, ToolResult) and result.status == "cancelled"
    history = voice.conversation.messages()
    assert roles(history) == ["system", "user", "assistant", "tool", "assistant"]
    assert history[3]["content"].startswith("cancelled")
    assert history[4]["content"] == "[the user interrupted here]"
    assert_valid(history)
    backend.replies.append(["Shall I try again?"])
    await voice.ask("What happened?")
    assert_valid(backend.messages[-1])


async def test_a_call_that_completed_is_kept_when_the_answer_is_interrupted_and_is_not_run_again() -> None:
    robot, engine, sink = Robot(), FakeSpeechEngine(frames_per_text=4), ManualSink()
    backend = FakeBackend(
        [call("move", {"room": "kitchen"})], then=[["I am in the kitchen now. ", "It is warm here."], ["Sure."]]
    )
    voice = loop(backend, robot, settings(filler=None), engine=engine, sink=sink)
    asking = voice.ask("Go to the kitchen.")
    await until(lambda: sink.queued >= 2 * FRAME)
    sink.advance(FRAME)
    await until(lambda: voice.floor.assistant.value == "speaking")
    voice.interrupt()
    await asking
    history = voice.conversation.messages()
    assert roles(history) == ["system", "user", "assistant", "tool", "assistant"]
    assert history[3]["content"] == "arrived in the kitchen"
    assert history[4]["content"].endswith("[the user interrupted here]")
    await play_out(sink, voice.ask("Go on."))
    assert robot.moves == ["kitchen"]  # once: the model saw it done
    assert "arrived in the kitchen" in [m["content"] for m in backend.messages[-1]]


@pytest.mark.parametrize(
    "asked, error",
    [
        (call("fly", {"to": "moon"}), "there is no tool named 'fly'; the tools are: move, battery"),
        (call("move", '{"room": '), "the arguments are not valid JSON"),
        (call("move", "[1]"), "the arguments must be a JSON object, not list"),
        (call("move", {"room": 3}), "invalid arguments: room: 3 is not of type 'string'"),
        (call("move", {}), "invalid arguments: arguments: 'room' is a required property"),
    ],
)
async def test_a_call_the_model_gets_wrong_gets_an_error_result_it_recovers_from(asked: ToolCall, error: str) -> None:
    robot = Robot()
    backend = FakeBackend([asked], then=[["Sorry, I could not."]])
    voice = loop(backend, robot)
    spoken = await voice.ask("Fly me to the moon.")
    assert spoken is not None and spoken.text == "Sorry, I could not."
    tool_message = backend.messages[1][-1]
    assert tool_message["role"] == "tool" and tool_message["content"].startswith(f"error: {error}")
    assert robot.started == []


async def test_a_tool_that_raises_hangs_or_answers_at_length_gives_an_error_or_a_trimmed_result(caplog) -> None:
    registry = ToolRegistry()

    @tool
    def broken() -> str:
        """Fails."""
        raise RuntimeError("the arm is stuck")

    @tool
    async def slow() -> str:
        """Never answers in time."""
        await asyncio.sleep(10)
        return "late"

    @tool
    def chatty() -> str:
        """Says too much."""
        return "x" * 1000

    for t in (broken, slow, chatty):
        registry.add(t)
    calls = [call("broken", id="a"), call("slow", id="b"), call("chatty", id="c")]
    backend = FakeBackend(calls, then=[["Done."]])
    voice = VoiceLoop(settings(timeout_s=0.2, max_result_chars=100), EventBus(), backend, tools=registry)
    assert (await voice.ask("Try them.")) is not None
    results = {m["tool_call_id"]: m["content"] for m in backend.messages[1] if m["role"] == "tool"}
    assert results["a"] == "error: the tool failed: RuntimeError: the arm is stuck"
    assert results["b"].startswith("error: no result within 0.2 s (tools.timeout_s)")
    assert results["c"].startswith("x" * 100 + "... [trimmed: 1000 characters")
    assert "tool broken failed" in caplog.text


async def test_a_model_calling_in_a_loop_is_stopped_after_max_rounds_and_must_answer() -> None:
    robot = Robot()
    backend = FakeBackend([call("battery")], then=[[call("battery")], [call("battery")], ["It is at 80 percent."]])
    voice = loop(backend, robot, settings(max_rounds=2))
    spoken = await voice.ask("Battery?")
    assert spoken is not None and spoken.text == ""  # the third request offered no tools, and the fake called again
    assert [len(t) for t in backend.tools] == [2, 2, 0]
    assert_valid(voice.conversation.messages())


async def test_tools_not_enabled_are_neither_offered_nor_callable() -> None:
    robot = Robot()
    robot.registry.enabled = frozenset({"battery"})
    backend = FakeBackend([call("move", {"room": "hall"})], then=[["No."]])
    voice = loop(backend, robot)
    await voice.ask("Go.")
    assert [t.name for t in backend.tools[0]] == ["battery"]
    assert robot.started == [] and backend.messages[1][-1]["content"].startswith("error: there is no tool named")


async def test_barge_in_during_the_filler_interrupts_and_cancels_the_call_and_the_speech_is_the_next_turn() -> None:
    config = Config.model_validate(
        {
            "vad": {"min_speech_ms": 90, "end_silence_ms": 300, "preroll_ms": 90},
            "barge_in": {"mode": "vad", "min_speech_ms": 150, "tail_ms": 0, "hold_ms": 0, "resume_ms": 2000},
            "tools": {"filler_ms": 100},
            "csm": {"chunk_frames": 1},
        }
    )
    robot, engine, sink, source = Robot(move_s=5.0), FakeSpeechEngine(frames_per_text=8), ManualSink(), QueueSource()
    backend = FakeBackend([call("move", {"room": "hall"})], then=[["Going to the kitchen."]])
    voice = VoiceLoop(
        config,
        EventBus(),
        backend,
        transcriber=FakeTranscriber("No, the kitchen."),
        engine=engine,
        sink=sink,
        segmenter=VadSegmenter(config.vad, classifier=energy_classifier),
        tools=robot.registry,
    )
    interrupted = voice.bus.subscribe(Interrupted)
    listening = asyncio.create_task(voice.listen(source))
    asking = voice.ask("Go to the hall.")
    await until(lambda: sink.queued >= FRAME)  # the filler is ready
    sink.advance(FRAME)  # and heard
    await until(lambda: voice.floor.assistant.value == "acting")
    source.put(loud(0.5))  # the user talks over it
    source.put(quiet(0.5))
    await asking
    event = await asyncio.wait_for(interrupted.get(), 5)
    assert isinstance(event, Interrupted) and event.source == "barge-in"
    assert robot.cancelled == ["hall"] and robot.moves == []
    await until(lambda: sink.queued >= sink.played + FRAME)  # the next turn's answer
    source.end()
    await play_out(sink, listening)
    history = voice.conversation.messages()
    assert_valid(history)
    assert [m["role"] for m in history[1:]] == ["user", "assistant", "tool", "assistant", "user", "assistant"]
    assert history[4]["content"] == "One moment. [the user interrupted here]"
    assert history[5:] == [
        {"role": "user", "content": "No, the kitchen."},
        {"role": "assistant", "content": "Going to the kitchen."},
    ]


def voice_with_tools(robot: Robot, backend: FakeBackend, *texts: str) -> tuple[VoiceLoop, ManualSink, QueueSource]:
    config = Config.model_validate(
        {
            "vad": {"frame_ms": 30, "min_speech_ms": 90, "end_silence_ms": 600, "preroll_ms": 90},
            "turn": {"speculate_ms": 210, "complete_ms": 270, "incomplete_ms": 1200},
            "tools": {"filler": None},
            "csm": {"chunk_frames": 1},
        }
    )
    sink, source = ManualSink(), QueueSource()
    voice = VoiceLoop(
        config,
        EventBus(),
        backend,
        transcriber=FakeTranscriber(*texts),
        engine=FakeSpeechEngine(frames_per_text=2),
        sink=sink,
        segmenter=VadSegmenter(config.vad, classifier=energy_classifier),
        tools=robot.registry,
    )
    return voice, sink, source


async def test_a_pause_s_speculative_reply_that_calls_a_tool_runs_nothing_before_the_turn_is_committed() -> None:
    robot = Robot()
    backend = FakeBackend([call("move", {"room": "kitchen"})], then=[["Done."]])
    voice, sink, source = voice_with_tools(robot, backend, "Go to the", "Go to the hall and wait.")
    listening = asyncio.create_task(voice.listen(source))
    source.put(loud(0.6))
    source.put(quiet(0.25))  # a pause: transcribed, and the model asked, which calls a tool at once
    await until(lambda: len(backend.messages) == 1)
    await asyncio.sleep(0.1)
    assert robot.started == [] and not voice.busy
    source.put(loud(0.4))  # the user goes on: the speculation is dropped, its call never made
    source.put(quiet(0.4))
    await until(lambda: sink.queued >= 2 * FRAME)
    source.end()
    await play_out(sink, listening)
    assert robot.started == []
    assert [m["content"] for m in voice.conversation.messages()[1:]] == ["Go to the hall and wait.", "Done."]


@pytest.mark.parametrize("sound", ["a click", "the user going on"])
async def test_a_turn_that_may_still_be_taken_back_calls_no_tool_until_it_cannot(sound: str) -> None:
    """The reply reaches its call while a sound over it may yet take the turn back: the call waits. A click ends
    and it runs; speech takes the turn back and it never runs (the speech continues the turn instead)."""
    robot = Robot()
    backend = FakeBackend([call("move", {"room": "kitchen"})], delay_s=0.3, then=[["Done."]])
    voice, sink, source = voice_with_tools(robot, backend, "Go to the kitchen.", "Go to the kitchen and wait.")
    listening = asyncio.create_task(voice.listen(source))
    source.put(loud(0.6))
    source.put(quiet(0.4))  # a finished sentence: the turn is committed, its reply follows the pause's request
    await until(lambda: voice.floor.assistant.value == "answering")
    source.put(loud(0.03))  # a sound too short to tell: the unheard reply is held
    await until(lambda: voice.floor.assistant.value == "holding")
    await asyncio.sleep(0.4)  # the model's call came meanwhile
    assert robot.started == [] and len(backend.messages) == 1
    if sound == "a click":
        source.put(quiet(0.7))  # the VAD drops a sound that never became speech after end_silence_ms
        await until(lambda: robot.moves == ["kitchen"])
    else:
        source.put(loud(0.5))
        source.put(quiet(0.4))
    await until(lambda: sink.queued >= 2 * FRAME)
    source.end()
    await play_out(sink, listening)
    history = voice.conversation.messages()
    assert_valid(history)
    if sound != "a click":
        assert robot.started == []
        assert [m["content"] for m in history[1:]] == ["Go to the kitchen and wait.", "Done."]
