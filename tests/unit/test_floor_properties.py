"""The floor's invariants over random sequences of events, from a small simulated world that answers its actions as
the voice loop would (hypothesis chooses what happens next at every step)."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assistant.config import Config
from assistant.events import Interrupted
from assistant.vad import Utterance
from pipelines.floor import (
    AssistantState,
    Attend,
    CancelTimer,
    CommitTurn,
    Detect,
    DropJudgement,
    DropSpeculation,
    DropTurn,
    EndTurnAfter,
    Floor,
    ForgetSpeech,
    Heard,
    Interrupt,
    InterruptTurn,
    JudgedWords,
    JudgeSoFar,
    JudgeUtterance,
    Listen,
    Mute,
    PauseReply,
    PauseWords,
    Publish,
    Queued,
    ReplyEnded,
    ReplySounding,
    ReplyStarted,
    Reset,
    ResumeReply,
    RunTools,
    SetTimer,
    SourceEnded,
    StartSpeculation,
    StartTurn,
    Stop,
    TakeBack,
    TalkReleased,
    TimerFired,
    ToolsDone,
    ToolsWanted,
    TurnEnded,
    TurnScore,
    UserState,
    VoiceEnded,
    VoiceOnset,
    VoicePause,
    VoiceResumed,
)

WORDS = ["", "Mm-hmm.", "yeah", "stop", "What time is it?", "a coffee and", "tell me a joke"]


@dataclass
class Turn:
    id: int
    started: bool = False
    replying: bool = False
    sounding: bool = False
    paused: bool = False
    reply_over: bool = False
    stopping: bool = False
    over: bool = False  # its task ended (the world has fed TurnEnded, or it was dropped)
    tools: str = "none"  # none, wanted, running
    acted: bool = False


@dataclass
class World:
    """What the voice loop would know: the turns it runs, the VAD's state, the timers, the work pending."""

    floor: Floor
    now: float = 0.0
    listening: bool = True
    detecting: bool = False  # the wake-word detector is fed
    vad: str = "silent"  # silent, sound, speech, pause
    voiced_ms: int = 0
    samples: int = 0
    closed: bool = False  # the VAD can reopen the turn it ended last
    end_after: bool = False  # the floor asked for an end of turn at a silence
    turns: dict[int, Turn] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)  # turns in the order they were queued
    timers: set[str] = field(default_factory=set)
    judging: bool = False
    speculating: bool = False
    interrupted: set[int] = field(default_factory=set)
    stopped: bool = False
    ids: Any = field(default_factory=lambda: itertools.count(1000))

    def feed(self, event: Any) -> list[Any]:
        actions = self.floor.on(event, self.now)
        for action in actions:
            self.carry_out(action)
        self.check()
        return actions

    def carry_out(self, action: Any) -> None:
        if isinstance(action, Listen):
            assert self.listening != action.on
            self.listening = action.on
        elif isinstance(action, Detect):
            assert self.detecting != action.on and not (action.on and self.listening)
            self.detecting = action.on
        elif isinstance(action, ForgetSpeech):
            self.vad, self.voiced_ms, self.end_after = "silent", 0, False
        elif isinstance(action, StartSpeculation):
            self.speculating = True
        elif isinstance(action, DropSpeculation):
            self.speculating = False
        elif isinstance(action, EndTurnAfter):
            self.end_after = True
        elif isinstance(action, CommitTurn):
            self.speculating = self.speculating and action.prepared != "pause"
            head = self.head()
            assert head is None or head.stopping, "a turn was committed while another is answered"
            assert not self.stopped
            self.add(action.turn)
        elif isinstance(action, StartTurn):
            turn = self.turns[action.turn]
            assert not turn.started and not turn.over
            assert self.head() is None, "two turns under way at once"
            assert [t for t in self.order if not self.turns[t].over][0] == action.turn, "turns out of order"
            turn.started = True
        elif isinstance(action, DropTurn):
            turn = self.turns[action.turn]
            assert not turn.started
            turn.over = turn.stopping = True
        elif isinstance(action, InterruptTurn | TakeBack):
            turn = self.turns[action.turn]
            assert not turn.over
            if isinstance(action, TakeBack):
                assert self.closed and self.vad == "speech"
                assert not turn.acted, "a turn taken back after its tools ran"
                self.closed = False
            if not turn.started:
                turn.over = True
            turn.stopping = True
        elif isinstance(action, RunTools):
            turn = self.turns[action.turn]
            assert turn.tools == "wanted" and turn.started and not turn.stopping and not turn.over
            assert self.floor.assistant is not AssistantState.HOLDING, "tools ran while a sound may take the turn back"
            turn.tools, turn.acted = "running", True
        elif isinstance(action, PauseReply):
            turn = self.turns[action.turn]
            assert turn.started and turn.replying and not turn.paused
            turn.paused = True
        elif isinstance(action, ResumeReply):
            turn = self.turns[action.turn]
            assert turn.paused and not turn.stopping
            turn.paused = False
        elif isinstance(action, JudgeUtterance | JudgeSoFar):
            assert not self.judging
            self.judging = True
        elif isinstance(action, DropJudgement):
            self.judging = False
        elif isinstance(action, SetTimer):
            self.timers.add(action.name)
        elif isinstance(action, CancelTimer):
            self.timers.discard(action.name)
        elif isinstance(action, Publish) and isinstance(action.event, Interrupted):
            assert action.event.turn not in self.interrupted, "a turn interrupted twice"
            self.interrupted.add(action.event.turn)

    def check(self) -> None:
        """The floor's invariants, as the world sees them."""
        under_way = [t for t in self.turns.values() if t.started and not t.over]
        assert len(under_way) <= 1
        sounding = [t for t in under_way if t.sounding and not t.paused and not t.reply_over and not t.stopping]
        assert len(sounding) <= 1
        for turn in under_way:
            if turn.paused and not turn.reply_over and not turn.stopping:
                state = self.floor.assistant
                assert state in (AssistantState.HOLDING, AssistantState.PAUSED), state
                if state is AssistantState.PAUSED:  # something will resume or cut it
                    assert "judge" in self.timers or self.judging
                else:  # the sound it waits on is still going
                    assert self.floor.user in (UserState.SOUND, UserState.SPEAKING, UserState.PAUSE)
        assert self.floor.timers == self.timers
        assert self.detecting == (self.floor.user is UserState.WAITING)
        assert not (self.listening and self.detecting)

    def head(self) -> Turn | None:
        return next((t for t in self.turns.values() if t.started and not t.over), None)

    def add(self, turn: int) -> None:
        self.turns[turn] = Turn(turn)
        self.order.append(turn)

    def utterance(self) -> Utterance:
        return Utterance(np.zeros(160, np.float32), 16_000, self.voiced_ms, self.samples)

    # what may happen next

    def choices(self) -> list[tuple[str, Any]]:
        options: list[tuple[str, Any]] = [
            ("ask", None),
            ("interrupt", False),
            ("interrupt", True),
            ("reset", None),
            ("mute", True),
            ("mute", False),
            ("source ended", None),
            ("stale timer", None),
        ]
        if self.listening:
            options += {
                "silent": [("sound", None)],
                "sound": [("onset", True), ("onset", False), ("click ends", None)],
                "speech": [("more speech", None), ("pause", None)],
                "pause": [("resume", None), ("end", None)],
            }[self.vad]
        if self.floor.listen.mode != "always":
            options += [("attend", None), ("release", None)]
        if self.speculating:
            options += [("words", w) for w in WORDS] + [("score", 0.9), ("score", 0.1), ("score", None)]
        if self.judging:
            options += [("judged", w) for w in WORDS]
        options += [("timer", name) for name in sorted(self.timers)]
        if (head := self.head()) is not None:
            options.append(("progress", head.id))
            if head.replying and not head.reply_over and not head.stopping and head.tools == "none":
                options.append(("want tools", head.id))
            if head.tools == "running":
                options.append(("tools done", head.id))
        return options

    def step(self, choice: tuple[str, Any]) -> None:
        what, arg = choice
        if what == "ask":
            turn = next(self.ids)
            self.add(turn)
            self.feed(Queued(turn))
        elif what == "reset":
            turn = next(self.ids)
            self.add(turn)
            self.feed(Reset(turn))
        elif what == "interrupt":
            self.feed(Interrupt("api", every=arg))
        elif what == "mute":
            self.feed(Mute(arg))
        elif what == "source ended":
            self.feed(SourceEnded())
        elif what == "stale timer":
            self.feed(TimerFired("judge" if "judge" not in self.timers else "tail-that-is-not"))
        elif what == "sound":
            self.vad, self.voiced_ms = "sound", 30
            self.block([])
        elif what == "onset":
            self.vad, self.voiced_ms = "speech", 90
            self.block([VoiceOnset(continues_last=self.closed and arg)])
        elif what == "click ends":
            self.vad, self.voiced_ms = "silent", 0
            self.block([])
        elif what == "more speech":
            self.voiced_ms += 120
            self.block([])
        elif what == "pause":
            self.vad = "pause"
            self.block([VoicePause(self.utterance())])
        elif what == "resume":
            self.vad, self.end_after = "speech", False
            self.block([VoiceResumed()])
        elif what == "end":
            utterance = self.utterance()
            self.vad, self.voiced_ms, self.closed, self.end_after = "silent", 0, True, False
            self.block([VoiceEnded(utterance)])
        elif what == "words":
            self.feed(PauseWords(arg))
        elif what == "score":
            self.feed(TurnScore(arg))
        elif what == "judged":
            self.judging = False
            self.feed(JudgedWords(arg))
        elif what == "timer":
            self.timers.discard(arg)
            self.feed(TimerFired(arg))
        elif what == "progress":
            self.progress(self.turns[arg])
        elif what == "attend":
            self.feed(Attend("button"))
        elif what == "release":
            self.feed(TalkReleased())
        elif what == "want tools":
            self.turns[arg].tools = "wanted"
            self.feed(ToolsWanted(arg))
        elif what == "tools done":
            self.turns[arg].tools = "none"
            self.feed(ToolsDone(arg))

    def block(self, events: list[Any]) -> None:
        """A block of audio: the VAD's events, then what it hears now (as the voice loop feeds them)."""
        self.samples += 1600
        for event in events:
            self.feed(event)
            if not self.listening:
                return
        self.feed(Heard(self.vad != "silent", self.voiced_ms))

    def progress(self, turn: Turn) -> None:
        """The turn under way takes its next step: its tools end, its reply starts, sounds, ends; then the turn
        ends. Tools still wanted when the reply ends are never run (the reply was interrupted before they were)."""
        if turn.tools == "running":
            turn.tools = "none"
            self.feed(ToolsDone(turn.id))
        elif turn.stopping or turn.reply_over:
            turn.tools = "none"
            if turn.replying and not turn.reply_over:
                turn.reply_over = True
                self.feed(ReplyEnded(turn.id))
            turn.over = True
            self.feed(TurnEnded(turn.id))
        elif not turn.replying:
            turn.replying = True
            self.feed(ReplyStarted(turn.id))
        elif not turn.sounding and not turn.paused:
            turn.sounding = True
            self.feed(ReplySounding(turn.id))
        else:
            turn.reply_over, turn.paused = True, False  # a reply paused at its last sound ends all the same
            self.feed(ReplyEnded(turn.id))

    def drain(self) -> None:
        """Everything that is going on ends: the speech, the work pending, the turns, the timers."""
        self.feed(Mute(False))
        self.feed(TalkReleased())
        for _ in range(5000):
            if self.vad == "pause":
                self.step(("end", None))
            elif self.vad != "silent":
                self.step(("click ends", None) if self.vad == "sound" else ("pause", None))
            elif self.judging:
                self.step(("judged", ""))
            elif (head := self.head()) is not None:
                self.progress(head)
            elif self.timers:
                self.step(("timer", sorted(self.timers)[0]))
            else:
                return
        raise AssertionError("the world did not come to rest")


def make_floor(mode: str, take_back: bool, resume_ms: int, model: bool, listen: str = "always") -> Floor:
    config = Config.model_validate(
        {
            "barge_in": {"mode": mode, "min_speech_ms": 150, "hold_ms": 500, "resume_ms": resume_ms, "tail_ms": 300},
            "turn": {"take_back": take_back},
            "listen": {"mode": listen, "follow_up_s": 2},
            "conversation": {"idle_reset_s": 30},
        }
    )
    ids = itertools.count(1)
    return Floor(
        config.turn,
        config.barge_in,
        config.vad.end_silence_ms,
        model=model,
        new_turn_id=lambda: next(ids),
        listen=config.listen,
        idle_reset_s=config.conversation.idle_reset_s,
    )


@settings(  # the same examples every run (CI stays deterministic); FLOOR_EXAMPLES=6000 searches deeper
    max_examples=int(os.environ.get("FLOOR_EXAMPLES", "400")),
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    mode=st.sampled_from(["off", "vad"]),
    take_back=st.booleans(),
    resume_ms=st.sampled_from([0, 2000]),
    model=st.booleans(),
    listen=st.sampled_from(["always", "wake_word", "push_to_talk"]),
    data=st.data(),
)
def test_random_sequences_keep_the_invariants_and_come_back_to_listening(
    mode: str, take_back: bool, resume_ms: int, model: bool, listen: str, data: st.DataObject
) -> None:
    world = World(make_floor(mode, take_back, resume_ms, model, listen))
    world.detecting = world.listening = world.floor.user is UserState.WAITING
    world.listening = not world.detecting
    for _ in range(data.draw(st.integers(1, 60), label="steps")):
        world.now += data.draw(st.sampled_from([0.0, 0.03, 0.2, 0.6]), label="time passes")
        world.step(data.draw(st.sampled_from(world.choices()), label="what happens"))
    if data.draw(st.booleans(), label="stop"):
        world.stopped = True
        world.feed(Stop())
        assert not world.floor.busy and all(t.stopping or t.over for t in world.turns.values())
    world.drain()
    rest = UserState.LISTENING if listen == "always" else UserState.WAITING
    if listen == "wake_word" and world.stopped:  # stopped, the follow-up window no longer runs
        rest = world.floor.user if world.floor.user is UserState.WAITING else UserState.LISTENING
    assert (world.floor.user, world.floor.assistant) == (rest, AssistantState.IDLE)
    assert world.floor.queued == [] and world.timers == set() and not world.judging
    assert world.listening == (rest is UserState.LISTENING) and world.detecting == (rest is UserState.WAITING)
    assert all(t.over for t in world.turns.values())
