"""The floor: who speaks when. One sans-I/O state machine for turn-taking, barge-in and the queue of turns.

`actions = floor.on(event, now)`: the voice loop (the shell) feeds it what the microphone's VAD heard, what the
replies did and what the user asked for, each with the time it happened, and carries out the actions it returns.
The floor does no I/O, owns no task and reads no clock; it asks for a timer (`SetTimer`) and is told when it fires.

Turns are answered one at a time, in the order they were queued (`Queued` for typed and given turns; spoken turns
are committed by the floor itself). The head of the queue is the turn being answered.

Two regions, each in one named state at a time (`floor.user`, `floor.assistant`). Each line reads
`state --event--> next: actions`.

The user's side (the microphone):

    LISTENING --Heard(in speech)--> SOUND: PauseReply of an unheard reply to the user's last turn (a hold)
    SOUND --Heard(silence): a click, a cough--> LISTENING: ResumeReply (the hold ends)
    SOUND --VoiceOnset--> SPEAKING: publish SpeechStarted; TakeBack the last turn if its reply is still unheard
    SPEAKING --VoiceLull--> SPEAKING: Look (detectors model and both, if a turn ending now is answered)
    SPEAKING --VoicePause--> PAUSE: StartSpeculation (with the look, if no speech came since), EndTurnAfter(
        incomplete_ms) (if a turn ending now is answered)
    PAUSE --PauseWords / TurnScore--> PAUSE: PrepareReply; EndTurnAfter(the silence the words or the model ask)
    PAUSE --PauseGlance and TurnScore (detector both)--> PAUSE: PrepareReply on the quick words (the full
        transcript prepares it again only if its words differ); EndTurnAfter(complete_ms) when the quick words end
        a sentence and the model calls the turn complete, else incomplete_ms
    PAUSE --VoiceResumed--> SPEAKING: DropSpeculation
    SPEAKING, PAUSE --VoiceEnded--> LISTENING: CommitTurn; or JudgeUtterance (it paused a reply); or nothing (a
        reply not interrupted is being answered)
    any --Mute(True)--> MUTED: ForgetSpeech, Listen(False); a judgement or a hold waiting on the speech ends
    WAITING (listen.mode wake_word or push_to_talk: nobody addressed it) --Attend (the wake word, a button, the
        API)--> LISTENING: Detect(False), Listen(True), publish StateChanged(listening); push-to-talk interrupts the
        reply first
    LISTENING --nothing going on for listen.follow_up_s (wake_word), or at once (push_to_talk, released)-->
        WAITING: Listen(False), Detect(True), publish StateChanged(waiting)
    any (push-to-talk) --TalkReleased--> EndTurnAfter(0): the speech held is the turn; silences while held end none
    any --barge-in off: a turn answered, an interrupted reply winding down, or its echo tail--> DEAF: the same
    MUTED, DEAF --Mute(False); the turn and its echo tail over--> LISTENING: Listen(True)

The assistant's side (the turn at the head of the queue):

    IDLE --Queued / CommitTurn--> ANSWERING: StartTurn
    ANSWERING --ReplyStarted, then the user's sound--> HOLDING: PauseReply
    HOLDING --the sound ends--> ANSWERING: ResumeReply
    HOLDING --the sound is speech: VoiceOnset--> STOPPING: TakeBack, publish TurnTakenBack
    ANSWERING --ReplySounding--> SPEAKING
    ANSWERING, SPEAKING --ToolsWanted--> ACTING: RunTools (the turn can no longer be taken back); while HOLDING the
        calls wait for the sound to end (then RunTools) or to take the turn back (then they never run)
    ACTING --ToolsDone--> ANSWERING or SPEAKING (whichever it was)
    SPEAKING --speech past hold_ms for min_speech_ms (barge-in vad)--> PAUSED: PauseReply, publish BargeInPaused,
        SetTimer(judge); resume_ms 0: InterruptTurn at once
    PAUSED --VoiceEnded / TimerFired(judge)--> PAUSED: JudgeUtterance / JudgeSoFar
    PAUSED --JudgedWords with words--> STOPPING: InterruptTurn, publish Interrupted; an ended utterance commits
    PAUSED --JudgedWords without (a cough, "mm-hm")--> SPEAKING: ResumeReply, publish BargeInResumed
    PAUSED --ReplyEnded--> (the speech is a turn of its own when it ends)
    ANSWERING, HOLDING, SPEAKING, ACTING, PAUSED --Interrupt--> STOPPING: InterruptTurn, publish Interrupted (once a
        turn; a turn queued behind a stopping one is dropped instead: DropTurn; `every` drops them all)
    any --ReplyEnded after it sounded (barge-in off)--> ECHO_TAIL: SetTimer(tail)
    ECHO_TAIL --TimerFired(tail)--> IDLE
    any --TurnEnded of the head--> the next turn's ANSWERING (StartTurn), or IDLE
    any --Stop--> STOPPING: every turn interrupted or dropped, timers cancelled; whatever is queued later is dropped

With `conversation.idle_reset_s`, the `idle` timer runs whenever a conversation has begun and nothing is going on;
its firing asks to ForgetConversation (a kiosk's next visitor starts afresh).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Literal

from assistant.config import BargeInConfig, ListenConfig, TurnConfig
from assistant.events import (
    BargeInPaused,
    BargeInResumed,
    Event,
    Interrupted,
    MuteChanged,
    SpeechStarted,
    StateChanged,
    TurnTakenBack,
    UtteranceEnded,
    next_turn_id,
)
from assistant.turn_end import silence_to_end, takes_the_turn
from assistant.vad import Utterance

log = logging.getLogger(__name__)


class UserState(Enum):
    LISTENING = "listening"
    SOUND = "sound"  # a sound too short to tell (under vad.min_speech_ms)
    SPEAKING = "speaking"
    PAUSE = "pause"  # a pause in the user's speech: a speculation may be running
    MUTED = "muted"
    DEAF = "deaf"  # barge-in off: the assistant is answering, or its echo may still linger
    WAITING = "waiting"  # for the wake word (or the talk key): audio reaches the wake-word detector only


class AssistantState(Enum):
    IDLE = "idle"
    ANSWERING = "answering"  # transcribing, thinking or generating: not heard yet
    HOLDING = "holding"  # an unheard reply waits while a sound is too short to tell
    ACTING = "acting"  # its tool calls are running (a filler may sound meanwhile)
    SPEAKING = "speaking"
    PAUSED = "paused"  # paused for a barge-in: its words are being judged
    STOPPING = "stopping"  # interrupted, winding down
    ECHO_TAIL = "echo_tail"  # barge-in off: its last sound may still echo


TurnKind = Literal["voice", "text", "reset"]


# Events: what happened, fed with `floor.on(event, now)`.


@dataclass(frozen=True)
class Heard:
    """After each block the VAD read: whether a sound is in progress (confirmed or not), and its voiced ms."""

    in_speech: bool
    voiced_ms: int


@dataclass(frozen=True)
class VoiceOnset:
    """The sound is speech (`vad.min_speech_ms` voiced); `continues_last`: the VAD can reopen the turn it ended last."""

    continues_last: bool


@dataclass(frozen=True)
class VoiceLull:
    utterance: Utterance  # the turn so far, as it would end here; a pause may follow


@dataclass(frozen=True)
class VoicePause:
    utterance: Utterance  # the turn so far, as it would end here


@dataclass(frozen=True)
class VoiceResumed:
    pass


@dataclass(frozen=True)
class VoiceEnded:
    utterance: Utterance


@dataclass(frozen=True)
class PauseWords:
    """The pause's transcript is in."""

    text: str


@dataclass(frozen=True)
class PauseGlance:
    """A quick transcript of the pause (detector both: it decides with the model); None: it failed."""

    text: str | None


@dataclass(frozen=True)
class TurnScore:
    """The end-of-turn model's probability that the pause ends the turn; None: the model failed."""

    probability: float | None


@dataclass(frozen=True)
class JudgedWords:
    """The words of the speech that paused a reply (empty when they could not be read)."""

    text: str


@dataclass(frozen=True)
class Queued:
    """A typed (`ask`) or given (`say`) turn, or a reset, queued by the API, MQTT or the terminal."""

    turn: int
    kind: TurnKind = "text"


@dataclass(frozen=True)
class ReplyStarted:
    turn: int


@dataclass(frozen=True)
class ReplySounding:
    """The reply's first sound was heard."""

    turn: int


@dataclass(frozen=True)
class ReplyEnded:
    """The reply is over: played out, interrupted or failed."""

    turn: int


@dataclass(frozen=True)
class ToolsWanted:
    """The reply reached tool calls; they run once the floor says so (`RunTools`)."""

    turn: int


@dataclass(frozen=True)
class ToolsDone:
    """The round of tool calls `RunTools` allowed is over."""

    turn: int


@dataclass(frozen=True)
class TurnEnded:
    turn: int


@dataclass(frozen=True)
class Interrupt:
    """Stop what sounds or is about to sound; `every` also drops every turn queued."""

    source: str
    every: bool = False


@dataclass(frozen=True)
class Reset:
    """Interrupt everything, then forget the conversation (`turn` is the reset's place in the queue)."""

    turn: int


@dataclass(frozen=True)
class Mute:
    muted: bool


@dataclass(frozen=True)
class Attend:
    """The user addressed the assistant: its wake word was heard, or a key, `command/listen` or the API asked it to
    listen (`source`)."""

    source: str


@dataclass(frozen=True)
class TalkReleased:
    """Push-to-talk: the key or button was let go: what was said while it was held is the turn."""


@dataclass(frozen=True)
class SourceEnded:
    """The audio source ended: speech cut off by it is no turn."""


@dataclass(frozen=True)
class Stop:
    """The assistant stops: the reply ends, the queue is dropped, nothing new is taken."""


@dataclass(frozen=True)
class TimerFired:
    name: str


FloorEvent = (
    Heard
    | VoiceOnset
    | VoiceLull
    | VoicePause
    | VoiceResumed
    | VoiceEnded
    | PauseWords
    | PauseGlance
    | TurnScore
    | JudgedWords
    | Queued
    | ReplyStarted
    | ReplySounding
    | ReplyEnded
    | ToolsWanted
    | ToolsDone
    | TurnEnded
    | Interrupt
    | Reset
    | Mute
    | Attend
    | TalkReleased
    | SourceEnded
    | Stop
    | TimerFired
)


# Actions: what the shell must do, in order.


@dataclass(frozen=True)
class Listen:
    """Feed the microphone's audio to the VAD (True) or drop it (False)."""

    on: bool


@dataclass(frozen=True)
class Detect:
    """Feed the microphone's audio to the wake-word detector (True) or stop (False)."""

    on: bool


@dataclass(frozen=True)
class ForgetConversation:
    """Nothing happened for `conversation.idle_reset_s`: forget the conversation (the next visitor starts afresh)."""


@dataclass(frozen=True)
class ForgetSpeech:
    """Forget the speech in progress (the VAD's turn so far)."""


@dataclass(frozen=True)
class Look:
    """Begin what decides a pause (the quick transcript with detector both, the model's score) on the turn so far:
    a pause that follows with no more speech takes it over."""

    utterance: Utterance


@dataclass(frozen=True)
class StartSpeculation:
    """Transcribe and encode the turn so far; `score` it with the end-of-turn model too."""

    utterance: Utterance
    score: bool


@dataclass(frozen=True)
class PrepareReply:
    """Start the LLM on the pause's words (nothing is published or remembered before the turn commits)."""

    words: str


@dataclass(frozen=True)
class DropSpeculation:
    pass


@dataclass(frozen=True)
class EndTurnAfter:
    """End the user's turn after this much silence (at once if it has passed)."""

    silence_ms: int


@dataclass(frozen=True)
class CommitTurn:
    """Queue the user's turn; `prepared` names the work it takes over: the pause's, a barge-in judgement's, or none."""

    turn: int
    utterance: Utterance
    prepared: Literal["pause", "judgement"] | None


@dataclass(frozen=True)
class StartTurn:
    turn: int


@dataclass(frozen=True)
class DropTurn:
    """A queued turn that never started: it ends with nothing said."""

    turn: int


@dataclass(frozen=True)
class InterruptTurn:
    """Stop the turn under way: its reply keeps what was heard; one still being transcribed is dropped."""

    turn: int


@dataclass(frozen=True)
class TakeBack:
    """The user went on before hearing the reply: drop it unheard, withdraw the turn, and let the speech in
    progress continue it (the VAD reopens it)."""

    turn: int


@dataclass(frozen=True)
class RunTools:
    """The turn's tool calls may run now: it acts, so it can no longer be taken back."""

    turn: int


@dataclass(frozen=True)
class PauseReply:
    turn: int


@dataclass(frozen=True)
class ResumeReply:
    turn: int


@dataclass(frozen=True)
class JudgeUtterance:
    """Transcribe the speech that paused the reply, which has ended (and encode it, as a pause's would be)."""

    utterance: Utterance


@dataclass(frozen=True)
class JudgeSoFar:
    """Transcribe the speech that paused the reply as it is now (it goes on)."""


@dataclass(frozen=True)
class DropJudgement:
    pass


@dataclass(frozen=True)
class Publish:
    event: Event


@dataclass(frozen=True)
class SetTimer:
    name: str
    at: float  # the floor's clock


@dataclass(frozen=True)
class CancelTimer:
    name: str


Action = (
    Listen
    | Detect
    | ForgetConversation
    | ForgetSpeech
    | Look
    | StartSpeculation
    | PrepareReply
    | DropSpeculation
    | EndTurnAfter
    | CommitTurn
    | StartTurn
    | DropTurn
    | InterruptTurn
    | TakeBack
    | RunTools
    | PauseReply
    | ResumeReply
    | JudgeUtterance
    | JudgeSoFar
    | DropJudgement
    | Publish
    | SetTimer
    | CancelTimer
)

JUDGE, TAIL, FOLLOW_UP, IDLE = "judge", "tail", "follow_up", "idle"


@dataclass
class _Turn:
    id: int
    kind: TurnKind
    started: bool = False
    stopping: bool = False  # interrupted, dropped or taken back
    replying: bool = False  # its reply has begun and not ended
    sounding_since: float | None = None  # when its reply sounded, or last resumed after a pause; None: unheard
    wants_tools: bool = False  # its tool calls wait for a hold to end
    acting: bool = False  # its tool calls are running
    acted: bool = False  # it ran tool calls: taking it back would not undo them

    @property
    def heard(self) -> bool:
        return self.sounding_since is not None


@dataclass
class _Judgement:
    """Speech paused `turn`'s reply: until its words are known, `utterance` (once it ended) is held here."""

    turn: int
    utterance: Utterance | None = None
    transcribing: bool = False
    whole: bool = False  # what is transcribed is `utterance` (not the speech so far): its work can become the turn's


@dataclass
class _Pause:
    """A pause with a speculation running."""

    utterance: Utterance
    words: str | None = None
    glance: str | None = None
    score: float | None = None
    prepared: str | None = None  # the words the reply was prepared on


class Floor:
    """The rules of who speaks when; see the module's docstring for the states and what moves them.

    `undecided_ms` is the silence that ends a turn the words do not decide (vad.end_silence_ms); with `model`, an
    end-of-turn model scores each pause and decides instead of the words; `tail_ms` overrides barge_in.tail_ms.
    `listen` says when it listens at all (always, after a wake word, or push-to-talk); `idle_reset_s` when a
    conversation nobody continues is forgotten.
    """

    def __init__(
        self,
        turn: TurnConfig,
        barge_in: BargeInConfig,
        undecided_ms: int,
        *,
        model: bool = False,
        tail_ms: int | None = None,
        new_turn_id: Callable[[], int] = next_turn_id,
        listen: ListenConfig | None = None,
        idle_reset_s: float | None = None,
    ) -> None:
        self.turn, self.barge_in, self.undecided_ms, self.model = turn, barge_in, undecided_ms, model
        self.detector = turn.detector if model else "words"  # what decides a pause (the words, if no model)
        self.tail_ms = barge_in.tail_ms if tail_ms is None else tail_ms
        self.new_turn_id = new_turn_id
        self.listen = listen or ListenConfig()
        self.idle_reset_s = idle_reset_s
        self._waiting = self.listen.mode != "always"  # nobody has addressed it: audio goes to the detector only
        self._talking = False  # push-to-talk: the key is held
        self._conversing = False  # a turn was taken since the conversation began (or was last forgotten)
        self.user = UserState.WAITING if self._waiting else UserState.LISTENING
        self.muted = False
        self._turns: list[_Turn] = []  # the queue; its head is being answered once started
        self._last_voice: int | None = None  # the microphone's last committed turn
        self._in_speech = False
        self._voiced_ms = 0
        self._held_ms = 0  # voiced ms of the speech in progress heard in a reply's hold: not counted for a barge-in
        self._forgiven = False  # the speech in progress was judged to say nothing: it does not pause the reply again
        self._pause: _Pause | None = None
        self._holding: int | None = None  # the turn whose reply waits for a sound to tell
        self._judgement: _Judgement | None = None
        self._tail = False
        self._timers: set[str] = set()
        self._stopped = False
        self._now = 0.0
        self._out: list[Action] = []

    # --- what the shell may read

    @property
    def assistant(self) -> AssistantState:
        head = self._head()
        if head is None:
            return AssistantState.ECHO_TAIL if self._tail else AssistantState.IDLE
        if head.stopping:
            return AssistantState.STOPPING
        if self._judgement is not None and self._judgement.turn == head.id:
            return AssistantState.PAUSED
        if self._holding == head.id:
            return AssistantState.HOLDING
        if head.acting:
            return AssistantState.ACTING
        return AssistantState.SPEAKING if head.heard else AssistantState.ANSWERING

    @property
    def busy(self) -> bool:
        """A turn is being answered or waits to be (one interrupted and winding down is not)."""
        return any(not t.stopping and t.kind != "reset" for t in self._turns)

    @property
    def queued(self) -> list[int]:
        """The turns in the queue, the one being answered first."""
        return [t.id for t in self._turns]

    @property
    def timers(self) -> frozenset[str]:
        return frozenset(self._timers)

    # --- the one entry point

    def on(self, event: FloorEvent, now: float) -> list[Action]:
        self._now, self._out = now, []
        handler: Callable[[FloorEvent], None] = getattr(self, f"_on_{type(event).__name__}")
        handler(event)
        self._settle()
        return self._out

    # --- events from the microphone

    def _on_Heard(self, event: Heard) -> None:
        if not self._hearing() or self._waiting:
            return
        self._in_speech, self._voiced_ms = event.in_speech, event.voiced_ms
        if not event.in_speech:
            self._held_ms, self._forgiven, self.user = 0, False, UserState.LISTENING
        elif self.user is UserState.LISTENING:
            self.user = UserState.SOUND
        self._settle()
        self._check_barge_in()

    def _on_VoiceOnset(self, event: VoiceOnset) -> None:
        self.user = UserState.SPEAKING
        self._in_speech = True
        self._emit(Publish(SpeechStarted(at=self._now)))
        last = self._retractable()
        if last is not None and event.continues_last:
            self._stop(last, taken_back=True)
            self._last_voice = None
            log.info("turn %d: the user went on before hearing the reply; taken back", last.id)
            self._emit(TakeBack(last.id), Publish(TurnTakenBack(turn=last.id, at=self._now)))

    def _on_VoiceLull(self, event: VoiceLull) -> None:
        if self._answering() and self.detector != "words":
            self._emit(Look(event.utterance))

    def _on_VoicePause(self, event: VoicePause) -> None:
        self.user = UserState.PAUSE
        self._drop_pause()
        if not self._answering():
            return
        self._pause = _Pause(event.utterance)
        self._emit(EndTurnAfter(self._silence(self.turn.incomplete_ms)), StartSpeculation(event.utterance, self.model))

    def _on_VoiceResumed(self, event: VoiceResumed) -> None:
        self.user = UserState.SPEAKING
        self._drop_pause()

    def _on_PauseWords(self, event: PauseWords) -> None:
        if self._pause is None:
            return
        self._pause.words = event.text
        self._prepare(event.text)
        if self.detector == "words":
            self._emit(EndTurnAfter(self._silence(silence_to_end(event.text, self.turn, self.undecided_ms))))

    def _on_PauseGlance(self, event: PauseGlance) -> None:
        if self._pause is None or self.detector != "both":
            return
        if event.text is None:  # no quick words: the model alone decides
            self.detector = "model"
            if self._pause.score is not None:
                self._on_TurnScore(TurnScore(self._pause.score))
            return
        self._pause.glance = event.text
        self._prepare(event.text)
        self._both()

    def _prepare(self, words: str) -> None:
        """Start the reply on these words, unless it was started on the same ones."""
        assert self._pause is not None
        if words.strip() and words != self._pause.prepared:
            self._pause.prepared = words
            self._emit(PrepareReply(words))

    def _both(self) -> None:
        """Detector both: the turn ends soon only when the quick words end a sentence and the model agrees."""
        assert self._pause is not None
        if self._pause.glance is None or self._pause.score is None:
            return
        finished = silence_to_end(self._pause.glance, self.turn, self.undecided_ms) == self.turn.complete_ms
        complete = finished and self._pause.score >= self.turn.model_threshold
        self._emit(EndTurnAfter(self._silence(self.turn.complete_ms if complete else self.turn.incomplete_ms)))

    def _on_TurnScore(self, event: TurnScore) -> None:
        if self._pause is None or self.detector == "words":
            return
        if event.probability is None:  # the model failed: the words decide from now on
            self.model, self.detector = False, "words"
            if self._pause.words is not None:
                self._emit(EndTurnAfter(self._silence(silence_to_end(self._pause.words, self.turn, self.undecided_ms))))
            return
        if self.detector == "both":
            self._pause.score = event.probability
            self._both()
            return
        complete = event.probability >= self.turn.model_threshold
        self._emit(EndTurnAfter(self._silence(self.turn.complete_ms if complete else self.turn.incomplete_ms)))

    def _on_VoiceEnded(self, event: VoiceEnded) -> None:
        self.user = UserState.LISTENING
        self._in_speech = False
        judgement = self._judgement
        if judgement is not None and judgement.utterance is None:  # the speech over the reply ended: judged there
            judgement.utterance = event.utterance
            if not judgement.transcribing:
                judgement.transcribing = judgement.whole = True
                self._cancel_timer(JUDGE)
                self._emit(JudgeUtterance(event.utterance))
            return
        pause, self._pause = self._pause, None
        prepared = pause is not None and pause.utterance.end_sample == event.utterance.end_sample
        if pause is not None and not prepared:
            self._emit(DropSpeculation())
        self._commit(event.utterance, "pause" if prepared else None)

    # --- barge-in

    def _check_barge_in(self) -> None:
        head = self._head()
        if (
            self.barge_in.mode != "vad"
            or head is None
            or not head.replying
            or head.stopping
            or self._judgement is not None
            or self._forgiven
            or self._retractable() is not None
        ):
            return
        if head.sounding_since is not None and self._now - head.sounding_since < self.barge_in.hold_ms / 1000:
            self._held_ms = self._voiced_ms  # heard in the hold (echo a canceller still learns): not counted
        elif self._voiced_ms - self._held_ms >= self.barge_in.min_speech_ms:
            if not self.barge_in.resume_ms:
                self._stop(head, source="barge-in")
                return
            log.info("turn %d: speech over the reply; paused", head.id)
            self._judgement = _Judgement(head.id)
            self._set_timer(JUDGE, self.barge_in.resume_ms)
            self._emit(PauseReply(head.id), Publish(BargeInPaused(turn=head.id, at=self._now)))

    def _on_TimerFired(self, event: TimerFired) -> None:
        if event.name not in self._timers:
            return  # cancelled after it fired
        self._timers.discard(event.name)
        if event.name == TAIL:
            self._tail = False
        elif event.name == FOLLOW_UP:
            log.info("nobody spoke for %g s: waiting for the wake word", self.listen.follow_up_s)
            self._waiting = True
        elif event.name == IDLE:
            log.info("nobody spoke for %g s: the conversation is forgotten", self.idle_reset_s)
            self._conversing = False
            self._emit(ForgetConversation())
        elif event.name == JUDGE and (judgement := self._judgement) is not None and not judgement.transcribing:
            if self._in_speech:  # the speech goes on: judge what was said so far
                judgement.transcribing = True
                self._emit(JudgeSoFar())
            else:
                self._judged("")

    def _on_JudgedWords(self, event: JudgedWords) -> None:
        if self._judgement is not None and self._judgement.transcribing:
            self._judged(event.text)

    def _judged(self, words: str) -> None:
        judgement, self._judgement = self._judgement, None
        assert judgement is not None
        head = self._head()
        paused = head if head is not None and head.id == judgement.turn and not head.stopping else None
        if takes_the_turn(words):
            if paused is not None:
                self._stop(paused, source="barge-in")
            if judgement.utterance is not None:  # it is the user's turn, with its transcript
                self._commit(judgement.utterance, "judgement" if judgement.whole else None)
            return
        if judgement.whole:
            self._emit(DropJudgement())
        if paused is not None:
            log.info("turn %d: no words over the reply (%r); resuming", paused.id, words)
            self._forgiven = self._in_speech
            self._resume(paused)
            self._emit(Publish(BargeInResumed(turn=paused.id, at=self._now)))

    def _abandon_judgement(self) -> None:
        """The reply the speech paused is gone or stopping: the speech, if it goes on, is a turn like any other."""
        if self._judgement is not None and not self._judgement.transcribing:
            self._judgement = None
            self._cancel_timer(JUDGE)

    # --- the replies' progress

    def _on_ReplyStarted(self, event: ReplyStarted) -> None:
        if (head := self._head(event.turn)) is not None:
            head.replying = True

    def _on_ReplySounding(self, event: ReplySounding) -> None:
        if (head := self._head(event.turn)) is not None and head.replying:
            head.sounding_since = self._now

    def _on_ReplyEnded(self, event: ReplyEnded) -> None:
        head = self._head(event.turn)
        if head is None:
            return
        head.replying = False
        if self._holding == head.id:
            self._holding = None
        self._abandon_judgement()
        if head.heard and self.barge_in.mode == "off" and self.tail_ms:
            self._tail = True
            self._set_timer(TAIL, self.tail_ms)

    def _on_ToolsWanted(self, event: ToolsWanted) -> None:
        head = self._head(event.turn)
        if head is None or head.stopping:
            return
        if self._holding == head.id:  # a sound may yet take the turn back: no acting until it is told
            head.wants_tools = True
            return
        self._run_tools(head)

    def _on_ToolsDone(self, event: ToolsDone) -> None:
        if (head := self._head(event.turn)) is not None:
            head.acting = False

    def _on_TurnEnded(self, event: TurnEnded) -> None:
        turn = next((t for t in self._turns if t.id == event.turn), None)
        if turn is None:
            return
        was_head = turn is self._turns[0]
        self._turns.remove(turn)
        if self._holding == turn.id:
            self._holding = None
        if was_head:
            self._abandon_judgement()
            self._start_next()

    # --- the user's and the program's requests

    def _on_Queued(self, event: Queued) -> None:
        self._conversing = True
        self._queue(_Turn(event.turn, event.kind))

    def _on_Interrupt(self, event: Interrupt) -> None:
        targets = [t for t in self._turns if not t.stopping and t.kind != "reset"]
        if not targets:
            log.info("interrupt (%s): nothing is being said or waits to be", event.source)
            return
        for turn in targets if event.every else targets[:1]:
            self._stop(turn, source=event.source)

    def _on_Reset(self, event: Reset) -> None:
        self._conversing = False
        self._on_Interrupt(Interrupt("reset", every=True))
        self._queue(_Turn(event.turn, "reset"))

    def _on_Mute(self, event: Mute) -> None:
        self.muted = event.muted
        log.info("microphone %s", "muted" if event.muted else "unmuted")
        self._emit(Publish(MuteChanged(muted=event.muted, at=self._now)))

    def _on_Attend(self, event: Attend) -> None:
        if self.listen.mode == "always" or self.muted or self._stopped:
            log.info("listen (%s): %s", event.source, "muted" if self.muted else "it listens all the time already")
            return
        if self.listen.mode == "push_to_talk":
            self._talking = True
            if (head := self._head()) is not None and not head.stopping and head.kind != "reset":
                self._stop(head, source="push-to-talk")  # pressing to talk cuts the reply short
        if self._waiting:
            log.info("addressed (%s): listening", event.source)
            self._waiting = False
            self._emit(Publish(StateChanged(state="listening", at=self._now)))
        self._cancel_timer(FOLLOW_UP)  # its window starts afresh

    def _on_TalkReleased(self, event: TalkReleased) -> None:
        if not self._talking:
            return
        self._talking = False
        if self._in_speech and self.user in (UserState.SPEAKING, UserState.PAUSE):
            self._emit(EndTurnAfter(0))

    def _on_SourceEnded(self, event: SourceEnded) -> None:
        self._forget_speech()

    def _on_Stop(self, event: Stop) -> None:
        self._stopped = True
        for turn in [t for t in self._turns if not t.stopping]:
            self._stop(turn, source="shutdown", quietly=turn.kind == "reset")
        self._forget_speech()
        for name in list(self._timers):
            self._cancel_timer(name)
        self._tail = False
        self._talking = False

    # --- rules that hold after every event

    def _settle(self) -> None:
        self._attend()
        off: UserState | None = None  # the state that keeps the VAD from hearing, if one does
        if not self._hearing():
            off = UserState.MUTED if self.muted else UserState.DEAF
        elif self._waiting:
            off = UserState.WAITING
        was = self.user
        if off is not None and was not in (UserState.MUTED, UserState.DEAF, UserState.WAITING):
            self._forget_speech()
            self._emit(Listen(False))
        elif off is None and was in (UserState.MUTED, UserState.DEAF, UserState.WAITING):
            self._emit(Listen(True))
        if (was is UserState.WAITING) != (off is UserState.WAITING):
            self._emit(Detect(off is UserState.WAITING))
            if off is UserState.WAITING:
                self._emit(Publish(StateChanged(state="waiting", at=self._now)))
        if off is not None:
            self.user = off
        elif was in (UserState.MUTED, UserState.DEAF, UserState.WAITING):
            self.user = UserState.LISTENING
        self._hold_for_sound()
        self._keep_time()

    def _attend(self) -> None:
        """Push-to-talk: back to waiting once the key is up and its turn is over. Wake word: once nothing has gone on
        for the follow-up window (timed by `_keep_time`)."""
        if self.listen.mode == "push_to_talk" and not self._waiting and self._quiet and not self._talking:
            self._waiting = True

    def _keep_time(self) -> None:
        """The follow-up window and the idle reset run while nothing goes on, and stop when something does."""
        quiet = self._quiet and not self._stopped
        follow_up = quiet and self.listen.mode == "wake_word" and not self._waiting and not self.muted
        self._run_timer(FOLLOW_UP, follow_up, int(self.listen.follow_up_s * 1000))
        if self.idle_reset_s is not None:
            self._run_timer(IDLE, quiet and self._conversing, int(self.idle_reset_s * 1000))

    @property
    def _quiet(self) -> bool:
        """Nothing goes on: no speech, no pause being judged, no turn queued or under way."""
        return not self._in_speech and not self._turns and self._pause is None

    def _run_timer(self, name: str, wanted: bool, after_ms: int) -> None:
        if wanted and name not in self._timers:
            self._set_timer(name, after_ms)
        elif not wanted:
            self._cancel_timer(name)

    def _silence(self, silence_ms: int) -> int:
        """While the talk key is held, no silence ends the turn: letting go does."""
        return 600_000 if self._talking else silence_ms

    def _hearing(self) -> bool:
        """Muted, nothing is heard. With barge-in off, nothing is heard while a turn is answered (unless speech would
        take it back), while an interrupted reply that sounded winds down, or in the echo tail after it."""
        if self.muted:
            return False
        if self.barge_in.mode != "off":
            return True
        occupied = any((not t.stopping and t.kind != "reset") or (t.replying and t.heard) for t in self._turns)
        return not self._tail and not (occupied and self._retractable() is None)

    def _hold_for_sound(self) -> None:
        """An unheard reply waits while a sound that may take its turn back is too short to tell."""
        last = self._retractable() if self._in_speech else None
        wanted = last.id if last is not None and last.replying else None
        if self._holding is not None and self._holding != wanted:
            held = self._head(self._holding)
            self._holding = None
            if held is not None and not held.stopping and held.replying:
                self._resume(held)
                if held.wants_tools:
                    self._run_tools(held)
        if wanted is not None and self._holding is None:
            self._holding = wanted
            self._emit(PauseReply(wanted))

    def _retractable(self) -> _Turn | None:
        """The microphone's last turn, when it is the last queued and its reply has not been heard: speech now
        continues it."""
        if not self.turn.take_back or not self._turns:
            return None
        last = self._turns[-1]
        if last.id != self._last_voice or last.stopping or last.heard or last.acted:
            return None
        return last

    def _answering(self) -> bool:
        """Whether a turn ending now would be answered: nothing is being answered, or that turn was interrupted."""
        head = self._head()
        return head is None or head.stopping

    # --- helpers

    def _commit(self, utterance: Utterance, prepared: Literal["pause", "judgement"] | None) -> None:
        self._emit(Publish(UtteranceEnded(duration_s=utterance.duration_s, at=self._now)))
        if not self._answering() or self._stopped:
            log.info("ignored %.1f s of speech that came while replying without interrupting", utterance.duration_s)
            if prepared is not None:
                self._emit(DropSpeculation() if prepared == "pause" else DropJudgement())
            return
        turn = self.new_turn_id()
        self._last_voice = turn
        self._conversing = True
        self._emit(CommitTurn(turn, utterance, prepared))
        self._queue(_Turn(turn, "voice"))

    def _queue(self, turn: _Turn) -> None:
        if self._stopped:
            self._emit(DropTurn(turn.id))
            return
        self._turns.append(turn)
        if len(self._turns) == 1:
            self._start_next()

    def _start_next(self) -> None:
        if self._turns and not self._turns[0].started:
            self._turns[0].started = True
            self._emit(StartTurn(self._turns[0].id))

    def _stop(self, turn: _Turn, *, source: str = "", taken_back: bool = False, quietly: bool = False) -> None:
        """Interrupt (or take back) a turn under way; drop one still queued."""
        turn.stopping = True
        if self._holding == turn.id:
            self._holding = None
        if self._judgement is not None and self._judgement.turn == turn.id:
            self._abandon_judgement()
        if not turn.started:
            self._turns.remove(turn)
            if not taken_back:
                self._emit(DropTurn(turn.id))
        elif not taken_back:
            self._emit(InterruptTurn(turn.id))
        if source and not quietly:
            log.info("interrupted turn %d (%s)", turn.id, source)
            self._emit(Publish(Interrupted(source=source, turn=turn.id, at=self._now)))

    def _run_tools(self, turn: _Turn) -> None:
        turn.wants_tools, turn.acting, turn.acted = False, True, True
        self._emit(RunTools(turn.id))

    def _resume(self, turn: _Turn) -> None:
        if turn.sounding_since is not None:  # it sounds again from now: held as at its start
            turn.sounding_since = self._now
        self._emit(ResumeReply(turn.id))

    def _forget_speech(self) -> None:
        if self._in_speech or self.user in (UserState.SOUND, UserState.SPEAKING, UserState.PAUSE):
            self._emit(ForgetSpeech())
            self.user = UserState.LISTENING  # until _settle says the microphone is not heard
        self._in_speech, self._voiced_ms, self._held_ms, self._forgiven = False, 0, 0, False
        self._drop_pause()
        if (judgement := self._judgement) is not None:  # the speech it judged is gone: the reply plays on
            self._judgement = None
            self._cancel_timer(JUDGE)
            if judgement.transcribing:
                self._emit(DropJudgement())
            head = self._head(judgement.turn)
            if head is not None and not head.stopping:
                self._resume(head)
                self._emit(Publish(BargeInResumed(turn=head.id, at=self._now)))

    def _drop_pause(self) -> None:
        if self._pause is not None:
            self._pause = None
            self._emit(DropSpeculation())

    def _head(self, turn: int | None = None) -> _Turn | None:
        """The turn being answered (when it is `turn`, if given)."""
        if not self._turns or not self._turns[0].started:
            return None
        head = self._turns[0]
        return head if turn is None or head.id == turn else None

    def _set_timer(self, name: str, after_ms: int) -> None:
        self._timers.add(name)
        self._emit(SetTimer(name, self._now + after_ms / 1000))

    def _cancel_timer(self, name: str) -> None:
        if name in self._timers:
            self._timers.discard(name)
            self._emit(CancelTimer(name))

    def _emit(self, *actions: Action) -> None:
        self._out.extend(actions)
