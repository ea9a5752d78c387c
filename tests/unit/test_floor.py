"""The floor alone: no asyncio, no clock but the one these tests give it, no audio but the utterances they name."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from assistant.config import Config
from assistant.events import (
    BargeInPaused,
    BargeInResumed,
    Interrupted,
    MuteChanged,
    SpeechStarted,
    StateChanged,
    TurnTakenBack,
    UtteranceEnded,
)
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
    ForgetConversation,
    ForgetSpeech,
    Heard,
    Interrupt,
    InterruptTurn,
    JudgedWords,
    JudgeSoFar,
    JudgeUtterance,
    Listen,
    Look,
    Mute,
    PauseGlance,
    PauseReply,
    PauseWords,
    PrepareReply,
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
    VoiceLull,
    VoiceOnset,
    VoicePause,
    VoiceResumed,
)


def utterance(end_sample: int = 16_000, seconds: float = 1.0) -> Utterance:
    return Utterance(np.zeros(int(16_000 * seconds), np.float32), 16_000, 600, end_sample)


def rules(
    listen: dict[str, Any] | None = None, idle_reset_s: float | None = None, detector: str = "model", **barge_in: Any
) -> Config:
    return Config.model_validate(
        {
            "listen": listen or {},
            "conversation": {"idle_reset_s": idle_reset_s},
            "vad": {"end_silence_ms": 600},
            "turn": {"speculate_ms": 200, "complete_ms": 250, "incomplete_ms": 1200, "detector": detector},
            "barge_in": {
                "mode": "vad",
                "min_speech_ms": 150,
                "hold_ms": 500,
                "resume_ms": 2000,
                "tail_ms": 300,
                **barge_in,
            },
        }
    )


class Driver:
    """A floor and a fake clock (seconds); `on` returns the actions, `kinds` their types, `events` what it published."""

    def __init__(self, config: Config | None = None, model: bool = False) -> None:
        config = config or rules()
        ids = itertools.count(1)
        self.floor = Floor(
            config.turn,
            config.barge_in,
            config.vad.end_silence_ms,
            model=model,
            new_turn_id=lambda: next(ids),
            listen=config.listen,
            idle_reset_s=config.conversation.idle_reset_s,
        )
        self.now = 0.0
        self.next_text_turn = itertools.count(100)

    def on(self, event: Any, at: float | None = None) -> list[Any]:
        self.now = self.now if at is None else at
        return self.floor.on(event, self.now)

    def state(self) -> tuple[UserState, AssistantState]:
        return self.floor.user, self.floor.assistant

    # the steps most cases share

    def speak(self, voiced_ms: int = 300) -> list[Any]:
        """A sound that becomes speech."""
        return self.on(Heard(True, 30)) + self.on(VoiceOnset(continues_last=True)) + self.on(Heard(True, voiced_ms))

    def say_a_turn(self, words: str = "What time is it?") -> int:
        """The user speaks, pauses, the words come and the turn ends at their silence: the turn is committed."""
        self.speak()
        end = utterance()
        self.on(VoicePause(end))
        self.on(PauseWords(words))
        actions = self.on(VoiceEnded(end)) + self.on(Heard(False, 0))
        (commit,) = [a for a in actions if isinstance(a, CommitTurn)]
        return commit.turn

    def answer(self, turn: int, sounding: bool = True) -> None:
        self.on(ReplyStarted(turn))
        if sounding:
            self.on(ReplySounding(turn))

    def end(self, turn: int) -> list[Any]:
        return self.on(ReplyEnded(turn)) + self.on(TurnEnded(turn))


def kinds(actions: list[Any]) -> list[type]:
    return [type(a) for a in actions]


def published(actions: list[Any]) -> list[Any]:
    return [a.event for a in actions if isinstance(a, Publish)]


# --- the user's turn: speculation, the end of turn, take-back


def test_a_pause_speculates_and_its_words_end_the_turn_with_the_pause_s_work() -> None:
    d = Driver()
    assert d.state() == (UserState.LISTENING, AssistantState.IDLE)
    assert kinds(d.on(Heard(True, 30))) == [] and d.floor.user is UserState.SOUND
    onset = d.on(VoiceOnset(continues_last=False))
    assert [type(e) for e in published(onset)] == [SpeechStarted] and d.floor.user is UserState.SPEAKING
    end = utterance()
    assert d.on(VoicePause(end), 1.0) == [EndTurnAfter(1200), StartSpeculation(end, score=False)]
    assert d.floor.user is UserState.PAUSE
    assert d.on(PauseWords("What time is it?")) == [PrepareReply("What time is it?"), EndTurnAfter(250)]
    actions = d.on(VoiceEnded(end))
    assert isinstance(published(actions)[0], UtteranceEnded)
    assert [a for a in actions if not isinstance(a, Publish)] == [CommitTurn(1, end, "pause"), StartTurn(1)]
    assert d.state() == (UserState.LISTENING, AssistantState.ANSWERING)


@pytest.mark.parametrize(
    ("words", "silence_ms"),
    [("I'd like a coffee and", 1200), ("What time is it?", 250), ("so", 1200), ("", 600), ("turn left", 600)],
)
def test_the_words_of_a_pause_decide_the_silence_that_ends_it(words: str, silence_ms: int) -> None:
    d = Driver()
    d.speak()
    d.on(VoicePause(utterance()))
    actions = d.on(PauseWords(words))
    assert actions[-1] == EndTurnAfter(silence_ms)
    assert (PrepareReply(words) in actions) == bool(words)


def test_speech_resuming_drops_the_speculation_and_the_turn_then_starts_afresh() -> None:
    d = Driver()
    d.speak()
    d.on(VoicePause(utterance(16_000)))
    d.on(PauseWords("a coffee and"))
    assert d.on(VoiceResumed()) == [DropSpeculation()] and d.floor.user is UserState.SPEAKING
    later = utterance(40_000)
    actions = d.on(VoiceEnded(later))
    assert CommitTurn(1, later, None) in actions  # the turn as it ended, with no work from the dropped pause


def test_the_end_of_turn_model_decides_and_the_words_take_over_when_it_fails() -> None:
    d = Driver(model=True)
    d.speak()
    end = utterance()
    assert StartSpeculation(end, score=True) in d.on(VoicePause(end))
    assert d.on(PauseWords("turn left")) == [PrepareReply("turn left")]  # the words do not decide
    assert d.on(TurnScore(0.9)) == [EndTurnAfter(250)]
    assert d.on(TurnScore(0.1)) == [EndTurnAfter(1200)]
    assert d.on(TurnScore(None)) == [EndTurnAfter(600)]  # failed: the words ("turn left": undecided) decide
    assert not d.floor.model


@pytest.mark.parametrize("detector", ["model", "both", "words"])
def test_a_lull_begins_the_look_a_pause_is_decided_by_only_when_a_model_decides(detector: str) -> None:
    d = Driver(rules(detector=detector), model=detector != "words")
    d.speak()
    end = utterance()
    assert d.on(VoiceLull(end)) == ([Look(end)] if detector != "words" else [])  # the words need the full transcript
    assert d.state()[0] is UserState.SPEAKING  # nothing is decided at a lull
    turn = d.say_a_turn()
    d.answer(turn)
    assert d.on(VoiceLull(end)) == []  # a turn ending now would not be answered: nothing to look at


def test_a_turn_is_taken_back_when_the_user_goes_on_before_hearing_its_reply() -> None:
    d = Driver()
    turn = d.say_a_turn()
    d.answer(turn, sounding=False)
    assert d.on(Heard(True, 30)) == [PauseReply(turn)]  # held while the sound is too short to tell
    assert d.state() == (UserState.SOUND, AssistantState.HOLDING)
    actions = d.on(VoiceOnset(continues_last=True))
    assert TakeBack(turn) in actions and ResumeReply(turn) not in actions
    assert TurnTakenBack(turn=turn, at=0.0) in published(actions)
    assert d.floor.assistant is AssistantState.STOPPING and not d.floor.busy


def test_a_click_over_an_unheard_reply_holds_it_only_while_it_lasts() -> None:
    d = Driver()
    turn = d.say_a_turn()
    d.answer(turn, sounding=False)
    assert d.on(Heard(True, 30)) == [PauseReply(turn)]
    assert d.on(Heard(False, 0)) == [ResumeReply(turn)]
    assert d.state() == (UserState.LISTENING, AssistantState.ANSWERING)


@pytest.mark.parametrize("why", ["heard", "take_back off", "typed turn", "not the last queued", "no reopen"])
def test_no_take_back(why: str) -> None:
    d = Driver(rules() if why != "take_back off" else Config.model_validate({"turn": {"take_back": False}}))
    turn = d.say_a_turn() if why != "typed turn" else 100
    if why == "typed turn":
        d.on(Queued(turn))
    if why == "not the last queued":
        d.on(Queued(200))
    d.answer(turn, sounding=why == "heard")
    d.on(Heard(True, 30))
    actions = d.on(VoiceOnset(continues_last=why != "no reopen"))
    assert TakeBack(turn) not in actions and not any(isinstance(e, TurnTakenBack) for e in published(actions))


# --- tool calls: a turn acts only once it can no longer be taken back


def test_tools_run_at_once_and_the_turn_then_cannot_be_taken_back() -> None:
    d = Driver()
    turn = d.say_a_turn()
    d.answer(turn, sounding=False)
    assert d.on(ToolsWanted(turn)) == [RunTools(turn)]
    assert d.floor.assistant is AssistantState.ACTING
    d.on(Heard(True, 30))  # no hold: taking the turn back would not undo what the tools did
    assert d.floor.assistant is AssistantState.ACTING
    actions = d.on(VoiceOnset(continues_last=True))
    assert TakeBack(turn) not in actions
    assert d.on(ToolsDone(turn)) == [] and d.floor.assistant is AssistantState.ANSWERING


def test_tools_wait_while_a_sound_may_take_the_turn_back_and_run_when_it_ends() -> None:
    d = Driver()
    turn = d.say_a_turn()
    d.answer(turn, sounding=False)
    d.on(Heard(True, 30))
    assert d.on(ToolsWanted(turn)) == [] and d.floor.assistant is AssistantState.HOLDING
    assert d.on(Heard(False, 0)) == [ResumeReply(turn), RunTools(turn)]


def test_tools_never_run_for_a_turn_the_user_takes_back() -> None:
    d = Driver()
    turn = d.say_a_turn()
    d.answer(turn, sounding=False)
    d.on(Heard(True, 30))
    d.on(ToolsWanted(turn))
    actions = d.on(VoiceOnset(continues_last=True)) + d.on(Heard(True, 300))
    assert TakeBack(turn) in actions and RunTools(turn) not in actions
    assert d.on(ToolsWanted(turn)) == []  # a stopping turn acts no more


def test_speech_while_tools_run_for_a_typed_turn_barges_in_as_over_a_reply() -> None:
    d = Driver()
    d.on(Queued(100))
    d.answer(100, sounding=False)
    assert d.on(ToolsWanted(100)) == [RunTools(100)]
    actions = d.speak()
    assert PauseReply(100) in actions and d.floor.assistant is AssistantState.PAUSED
    actions = d.on(VoiceEnded(utterance())) + d.on(JudgedWords("Cancel that."))
    assert InterruptTurn(100) in actions


def test_speech_ending_while_a_reply_is_answered_is_not_a_turn() -> None:
    d = Driver()
    d.on(Queued(100))
    d.answer(100)
    d.speak(100)
    actions = d.on(VoiceEnded(utterance()))
    assert [type(e) for e in published(actions)] == [UtteranceEnded]
    assert not any(isinstance(a, CommitTurn) for a in actions)


# --- barge-in


def sounding_reply(config: Config | None = None) -> tuple[Driver, int]:
    d = Driver(config)
    d.on(Queued(100))
    d.answer(100)
    return d, 100


def test_barge_in_waits_out_the_hold_and_does_not_count_speech_heard_in_it() -> None:
    d, turn = sounding_reply()
    d.speak(400)  # at 0.0: in the hold
    assert d.floor.assistant is AssistantState.SPEAKING
    assert d.on(Heard(True, 520), 0.6) == []  # 120 ms past the hold: under min_speech_ms
    actions = d.on(Heard(True, 550), 0.63)
    assert actions[:2] == [SetTimer("judge", 2.63), PauseReply(turn)]
    assert published(actions) == [BargeInPaused(turn=turn, at=0.63)]
    assert d.floor.assistant is AssistantState.PAUSED


def pause_for_barge_in(config: Config | None = None) -> tuple[Driver, int]:
    d, turn = sounding_reply(config)
    d.now = 1.0
    d.speak(200)
    assert d.floor.assistant is AssistantState.PAUSED
    return d, turn


def test_words_over_the_reply_interrupt_it_and_become_the_next_turn() -> None:
    d, turn = pause_for_barge_in()
    end = utterance()
    assert d.on(VoiceEnded(end)) == [CancelTimer("judge"), JudgeUtterance(end)]
    actions = d.on(JudgedWords("stop, tell me a joke"))
    assert actions[0] == InterruptTurn(turn)
    assert [type(e) for e in published(actions)] == [Interrupted, UtteranceEnded]
    assert published(actions)[0].source == "barge-in"
    assert CommitTurn(1, end, "judgement") in actions and StartTurn(1) not in actions  # after the cut reply ends
    assert d.end(turn)[-1] == StartTurn(1)


@pytest.mark.parametrize("words", ["Mm-hmm.", "", "uh-huh, yeah"])
def test_a_cough_or_a_backchannel_resumes_the_reply(words: str) -> None:
    d, turn = pause_for_barge_in()
    d.on(VoiceEnded(utterance()))
    actions = d.on(JudgedWords(words), 1.5)
    assert actions[:2] == [DropJudgement(), ResumeReply(turn)]
    assert published(actions) == [BargeInResumed(turn=turn, at=1.5)]
    assert d.floor.assistant is AssistantState.SPEAKING
    d.speak(300)  # new speech right after the resume is held again, as at the reply's start
    assert d.floor.assistant is AssistantState.SPEAKING


def test_speech_still_going_when_resume_ms_passes_is_judged_on_what_was_said_so_far() -> None:
    d, turn = pause_for_barge_in()
    assert d.on(TimerFired("judge"), 3.0) == [JudgeSoFar()]
    actions = d.on(JudgedWords("wait"))
    assert actions[0] == InterruptTurn(turn) and not any(isinstance(a, CommitTurn) for a in actions)
    actions = d.on(VoiceEnded(utterance()))  # the speech ends later, a turn like any other
    assert any(isinstance(a, CommitTurn) for a in actions)


def test_a_reply_that_ends_while_paused_leaves_the_speech_a_turn_of_its_own() -> None:
    d, turn = pause_for_barge_in()
    assert d.on(ReplyEnded(turn)) == [CancelTimer("judge")]
    d.on(TurnEnded(turn))
    end = utterance()
    assert CommitTurn(1, end, None) in d.on(VoiceEnded(end))


def test_resume_ms_zero_interrupts_at_once() -> None:
    d, turn = sounding_reply(rules(resume_ms=0))
    d.now = 1.0
    actions = d.speak(200)
    assert InterruptTurn(turn) in actions and PauseReply(turn) not in actions


def test_a_judgement_the_reply_outlives_is_forgiven_until_the_speech_ends() -> None:
    d, turn = pause_for_barge_in()
    d.on(TimerFired("judge"), 3.0)
    d.on(JudgedWords(""))
    assert d.on(Heard(True, 800), 4.0) == []  # the same speech goes on: it does not pause the reply again
    d.on(Heard(False, 0))
    d.speak(300)  # new speech, past the hold after the resume
    assert d.floor.assistant is AssistantState.PAUSED


# --- barge-in off: the echo tail


def test_barge_in_off_ignores_the_microphone_while_answering_and_in_the_echo_tail() -> None:
    d = Driver(rules(mode="off"))
    turn = d.say_a_turn()
    d.answer(turn, sounding=False)
    assert d.floor.user is UserState.LISTENING  # unheard: speech would take it back
    actions = d.on(ReplySounding(turn), 1.0)
    assert actions == [Listen(False)] and d.floor.user is UserState.DEAF
    assert d.end(turn) == [SetTimer("tail", 1.3)]
    assert d.state() == (UserState.DEAF, AssistantState.ECHO_TAIL)
    assert d.on(TimerFired("tail")) == [Listen(True)]
    assert d.state() == (UserState.LISTENING, AssistantState.IDLE)


def test_barge_in_off_an_interrupted_reply_is_not_heard_over_until_its_echo_tail_ends() -> None:
    d, turn = sounding_reply(rules(mode="off"))
    d.on(Interrupt("key"))
    assert d.state() == (UserState.DEAF, AssistantState.STOPPING)
    assert d.end(turn) == [SetTimer("tail", 0.3)]
    assert d.on(TimerFired("tail")) == [Listen(True)]


def test_speech_under_way_when_the_microphone_goes_deaf_is_forgotten() -> None:
    d = Driver(rules(mode="off"))
    d.speak()
    actions = d.on(Queued(100))
    assert actions == [StartTurn(100), ForgetSpeech(), Listen(False)]


# --- interrupts and the queue


def test_an_interrupt_stops_what_sounds_once_then_what_waits_behind_it() -> None:
    d, first = sounding_reply()
    assert d.on(Interrupt("api")) == [InterruptTurn(first), Publish(Interrupted(source="api", turn=first, at=0.0))]
    d.on(Queued(101))  # asked while the first winds down
    actions = d.on(Interrupt("api"))
    assert actions == [DropTurn(101), Publish(Interrupted(source="api", turn=101, at=0.0))]
    assert d.on(Interrupt("api")) == []  # nothing sounds or waits: nothing changes, nothing is said
    assert d.end(first) == [] and d.state() == (UserState.LISTENING, AssistantState.IDLE)


def test_an_interrupt_of_every_turn_drops_the_queue() -> None:
    d, first = sounding_reply()
    d.on(Queued(101))
    d.on(Queued(102))
    actions = d.on(Interrupt("mqtt", every=True))
    assert [a for a in actions if not isinstance(a, Publish)] == [InterruptTurn(first), DropTurn(101), DropTurn(102)]
    assert [e.turn for e in published(actions)] == [first, 101, 102]
    assert d.floor.queued == [first] and not d.floor.busy


def test_a_reset_interrupts_everything_and_then_clears() -> None:
    d, first = sounding_reply()
    d.on(Queued(101))
    actions = d.on(Reset(102))
    assert [a for a in actions if not isinstance(a, Publish)] == [InterruptTurn(first), DropTurn(101)]
    assert {e.source for e in published(actions)} == {"reset"}
    assert d.end(first) == [StartTurn(102)]
    assert d.on(Interrupt("api")) == []  # the reset itself is not something to interrupt


def test_stop_ends_the_reply_drops_the_queue_and_takes_nothing_new() -> None:
    d, first = sounding_reply()
    d.on(Queued(101))
    d.on(Reset(102))
    d.on(Queued(103))
    actions = d.on(Stop())
    assert DropTurn(103) in actions and DropTurn(102) in actions
    assert d.on(Queued(104)) == [DropTurn(104)]
    d.end(first)
    assert d.floor.queued == [] and d.floor.timers == frozenset()


def test_turns_are_answered_one_at_a_time_in_order() -> None:
    d = Driver()
    assert d.on(Queued(100)) == [StartTurn(100)]
    assert d.on(Queued(101)) == [] and d.on(Queued(102)) == []
    assert d.end(100) == [StartTurn(101)]
    assert d.on(TurnEnded(101)) == [StartTurn(102)]


# --- mute, and interrupt, in every state


def reach(state: str) -> tuple[Driver, int | None]:
    """A floor in the named state, and the turn being answered."""
    if state == "listening":
        return Driver(), None
    if state == "user speaking":
        d = Driver()
        d.speak()
        return d, None
    if state == "pause":
        d = Driver()
        d.speak()
        d.on(VoicePause(utterance()))
        return d, None
    if state == "answering":
        d = Driver()
        return d, d.say_a_turn()
    if state == "holding":
        d = Driver()
        turn = d.say_a_turn()
        d.answer(turn, sounding=False)
        d.on(Heard(True, 30))
        return d, turn
    if state == "speaking":
        return sounding_reply()
    if state == "paused for barge-in":
        return pause_for_barge_in()
    if state == "judging":
        d, turn = pause_for_barge_in()
        d.on(VoiceEnded(utterance()))
        return d, turn
    if state == "echo tail":
        d, turn = sounding_reply(rules(mode="off"))
        d.end(turn)
        return d, None
    raise AssertionError(state)


STATES = [
    "listening",
    "user speaking",
    "pause",
    "answering",
    "holding",
    "speaking",
    "paused for barge-in",
    "judging",
    "echo tail",
]


@pytest.mark.parametrize("state", STATES)
def test_mute_in_every_state_forgets_the_speech_and_leaves_no_reply_paused(state: str) -> None:
    d, turn = reach(state)
    actions = d.on(Mute(True))
    assert d.floor.user is UserState.MUTED and MuteChanged(muted=True, at=d.now) in published(actions)
    assert Listen(False) in actions or state == "echo tail"  # already deaf there
    if state in ("user speaking", "pause", "holding", "paused for barge-in"):  # speech under way
        assert ForgetSpeech() in actions
    if state == "pause":
        assert DropSpeculation() in actions
    if state in ("holding", "paused for barge-in", "judging"):
        assert ResumeReply(turn) in actions  # type: ignore[arg-type]
    assert d.floor.assistant not in (AssistantState.HOLDING, AssistantState.PAUSED)
    assert d.floor.timers <= {"tail"}
    d.on(TimerFired("tail"))
    assert Listen(True) in d.on(Mute(False)) and d.floor.user is UserState.LISTENING


@pytest.mark.parametrize("state", STATES)
def test_interrupt_in_every_state(state: str) -> None:
    d, turn = reach(state)
    actions = d.on(Interrupt("key"))
    if turn is None:
        assert actions == []
        return
    assert InterruptTurn(turn) in actions
    assert [e.turn for e in published(actions) if isinstance(e, Interrupted)] == [turn]
    assert d.floor.assistant is AssistantState.STOPPING and not d.floor.busy
    assert ResumeReply(turn) not in actions  # an interrupted reply is not resumed
    assert d.on(Interrupt("key")) == []
    assert d.floor.timers == frozenset()  # a barge-in's wait has nothing left to decide


@pytest.mark.parametrize("state", STATES)
def test_the_source_ending_in_every_state_leaves_nothing_held(state: str) -> None:
    d, turn = reach(state)
    d.on(SourceEnded())
    assert d.floor.assistant not in (AssistantState.HOLDING,) and (
        d.floor.assistant is not AssistantState.PAUSED or "judge" in d.floor.timers
    )
    if turn is not None:
        d.end(turn)
    d.on(TimerFired("tail"))
    assert d.state() == (UserState.LISTENING, AssistantState.IDLE)


# --- attention: the wake word, the follow-up window, push-to-talk, the idle reset


def test_with_a_wake_word_nothing_is_heard_until_it_is_said_then_a_turn_and_a_follow_up_window() -> None:
    d = Driver(rules(listen={"mode": "wake_word", "follow_up_s": 8}))
    assert d.floor.user is UserState.WAITING
    assert d.on(Heard(True, 30)) == []  # the VAD is not fed: nothing it reports counts
    actions = d.on(Attend("wake word"), at=1.0)
    assert actions == [
        Publish(StateChanged(state="listening", at=1.0)),
        Listen(True),
        Detect(False),
        SetTimer("follow_up", 9.0),
    ]
    turn = d.say_a_turn()  # speech cancels the window; the turn is answered
    assert "follow_up" not in d.floor.timers
    d.answer(turn)
    actions = d.end(turn)
    assert SetTimer("follow_up", d.now + 8) in actions  # after the reply, a turn needs no wake word for 8 s
    actions = d.on(TimerFired("follow_up"), at=d.now + 8)
    assert actions == [Listen(False), Detect(True), Publish(StateChanged(state="waiting", at=d.now))]
    assert d.floor.user is UserState.WAITING


def test_a_sound_in_the_follow_up_window_restarts_it_and_mute_stops_detection() -> None:
    d = Driver(rules(listen={"mode": "wake_word", "follow_up_s": 5}))
    d.on(Attend("wake word"), at=0.0)
    assert d.on(Heard(True, 30), at=2.0) == [CancelTimer("follow_up")]
    assert d.on(Heard(False, 0), at=2.1) == [SetTimer("follow_up", 7.1)]
    d.on(TimerFired("follow_up"), at=7.1)
    actions = d.on(Mute(True))
    assert Detect(False) in actions and d.floor.user is UserState.MUTED
    actions = d.on(Mute(False))
    assert Detect(True) in actions and d.floor.user is UserState.WAITING
    assert d.on(Attend("mqtt")) != [] and d.floor.user is UserState.LISTENING


def test_push_to_talk_listens_while_held_ends_the_turn_when_let_go_and_cuts_the_reply_short() -> None:
    d = Driver(rules(listen={"mode": "push_to_talk"}))
    d.on(Attend("key"))
    d.speak()
    end = utterance()
    assert d.on(VoicePause(end))[0] == EndTurnAfter(600_000)  # a silence while held ends nothing
    assert d.on(PauseWords("What time is it?")) == [PrepareReply("What time is it?"), EndTurnAfter(600_000)]
    assert d.on(TalkReleased()) == [EndTurnAfter(0)]
    actions = d.on(VoiceEnded(end))
    (commit,) = [a for a in actions if isinstance(a, CommitTurn)]
    d.answer(commit.turn)
    actions = d.on(Attend("key"))  # pressed again while it speaks: the reply stops, it listens
    assert InterruptTurn(commit.turn) in actions
    assert Interrupted(source="push-to-talk", turn=commit.turn, at=d.now) in published(actions)
    d.on(TalkReleased())  # let go without a word
    d.end(commit.turn)
    assert d.floor.user is UserState.WAITING


def test_a_listen_request_in_always_mode_changes_nothing() -> None:
    d = Driver()
    assert d.on(Attend("mqtt")) == [] and d.floor.user is UserState.LISTENING


def test_the_conversation_is_forgotten_after_idle_reset_s_with_no_turn() -> None:
    d = Driver(rules(idle_reset_s=60))
    assert d.floor.timers == frozenset()  # nothing to forget yet
    turn = d.say_a_turn()
    assert "idle" not in d.floor.timers
    d.answer(turn)
    assert SetTimer("idle", d.now + 60) in d.end(turn)
    d.on(Queued(100), at=10.0)  # a typed turn: the clock stops, and starts again after it
    assert "idle" not in d.floor.timers
    d.answer(100)
    d.end(100)
    assert d.on(TimerFired("idle"), at=70.0) == [ForgetConversation()]
    assert d.floor.timers == frozenset()


@pytest.mark.parametrize(
    "glance, score, silence_ms",
    [
        ("What time is it?", 0.9, 250),  # both say it is over
        ("What time is it?", 0.2, 1200),  # the model hears more coming
        ("I would like a coffee and", 0.9, 1200),  # the words hold it open
        ("I would like a coffee...", 0.9, 1200),
    ],
)
def test_with_both_the_quick_words_and_the_model_must_agree(glance: str, score: float, silence_ms: int) -> None:
    d = Driver(rules(detector="both"), model=True)
    d.speak()
    d.on(VoicePause(utterance()))
    assert d.on(PauseGlance(glance)) == [PrepareReply(glance)]  # the reply starts on the quick words; the model
    # has not spoken yet
    assert d.on(TurnScore(score)) == [EndTurnAfter(silence_ms)]
    assert d.on(PauseWords(glance)) == []  # the same words: the reply goes on
    assert d.on(PauseWords("What time is it now?")) == [PrepareReply("What time is it now?")]  # others: asked again;
    # the turn's transcript decides nothing


def test_with_both_a_failed_model_leaves_the_words_and_a_failed_glance_the_model() -> None:
    d = Driver(rules(detector="both"), model=True)
    d.speak()
    d.on(VoicePause(utterance()))
    d.on(PauseGlance(None))
    assert d.on(TurnScore(0.9)) == [EndTurnAfter(250)]
    d = Driver(rules(detector="both"), model=True)
    d.speak()
    d.on(VoicePause(utterance()))
    d.on(TurnScore(None))
    assert EndTurnAfter(250) in d.on(PauseWords("What time is it?"))
