"""The voice loop: hear a turn, transcribe it, answer it in speech; one turn at a time, interruptible.

Audio blocks come from any `AudioSource` (microphone or wav file) and replies go to any `AudioSink`
(speaker or wav file). Typed turns (`ask`) and given speech (`say`) share the same reply path.
Turns run one after another in the order they were started, whoever started them (microphone, API,
MQTT). Blocking work (ASR, Mimi encoding, CSM) runs in worker threads; everything here runs on the
event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch

from assistant.asr import Transcriber, Transcript
from assistant.audio.streams import AudioSink, AudioSource
from assistant.config import Config
from assistant.conversation import Conversation, Turn
from assistant.events import (
    ConversationReset,
    ErrorEvent,
    EventBus,
    ReplyText,
    State,
    StateChanged,
    UserTranscript,
    WakeDetected,
    next_turn_id,
)
from assistant.llm.backend import ChatBackend
from assistant.segment import Segment
from assistant.tools.registry import ToolRegistry
from assistant.tts.reference_voice import ReferenceVoice
from assistant.vad import Lull, Pause, SpeechOnset, SpeechResumed, Utterance, VadSegmenter
from assistant.wake_word import WakeWordDetector
from pipelines.floor import (
    Action,
    Attend,
    CancelTimer,
    CommitTurn,
    Detect,
    DropJudgement,
    DropSpeculation,
    DropTurn,
    EndTurnAfter,
    Floor,
    FloorEvent,
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
from pipelines.reply import Deltas, Reply, SpeechEngine, Spoken, Voice
from pipelines.speculation import Lookahead, Speculation
from pipelines.tool_rounds import LlmStream, ToolRounds
from pipelines.turn_clock import TurnClock

log = logging.getLogger(__name__)


class TurnDetector(Protocol):
    """An end-of-turn model (`assistant.turn_model.SmartTurn`): the probability that a turn's audio so far is all."""

    def complete(self, audio: np.ndarray) -> float: ...


AudioEncoder = Callable[[np.ndarray, int], Awaitable[torch.Tensor]]
"""Mono audio at a sample rate -> Mimi codes `[K, frames]` (`CSMEngine.encode`, on the engine's own thread)."""


class VoiceLoop:
    """The shell around the floor (`pipelines.floor`): it feeds the floor what the VAD heard, what the replies did and
    what was asked of it, and carries out the floor's actions with tasks, the engine, the sink and the bus. The rules
    of who speaks when are the floor's alone."""

    def __init__(
        self,
        config: Config,
        bus: EventBus,
        backend: ChatBackend,
        *,
        transcriber: Transcriber | None = None,
        engine: SpeechEngine | None = None,
        encode_audio: AudioEncoder | None = None,
        sink: AudioSink | None = None,
        segmenter: VadSegmenter | None = None,
        turn_model: TurnDetector | None = None,
        reference: ReferenceVoice | None = None,
        tools: ToolRegistry | None = None,
        wake_word: WakeWordDetector | None = None,
        earcon: np.ndarray | None = None,
    ) -> None:
        self.config = config
        self.bus = bus
        self.backend = backend
        self.transcriber = transcriber
        self.engine = engine
        self.encode_audio = encode_audio
        self.sink = sink
        self.segmenter = segmenter
        self.turn_model = turn_model  # with turn.detector "model" (or "both", with a glance at the words) it decides
        self.tools = tools if tools is not None else ToolRegistry(config.tools.enabled)
        self.wake_word = wake_word  # with listen.mode wake_word: what the floor's Detect feeds (none: no microphone)
        self.earcon = earcon  # 24 kHz audio played when the wake word is heard
        if segmenter is not None:  # pauses this long start a speculative transcript and reply
            segmenter.pause_ms = config.turn.speculate_ms
            segmenter.lull_ms = config.turn.look_ms if config.turn.speculate_ms else 0
        csm = config.csm
        speaker = reference.speaker if reference is not None else csm.speaker  # the voice speaks as who it stands for
        self.voice = Voice(
            speaker,
            csm.temperature,
            csm.topk,
            csm.seed,
            csm.max_audio_ms,
            csm.chunk_frames,
            reference.segment() if reference is not None else None,
        )
        user_speaker = 0 if speaker != 0 else 1
        self.conversation = Conversation(config.conversation, config.llm.system_prompt, user_speaker, speaker)
        self.floor = Floor(
            config.turn,
            config.barge_in,
            config.vad.end_silence_ms,
            model=turn_model is not None,
            listen=config.listen,
            idle_reset_s=config.conversation.idle_reset_s,
        )
        self._events: deque[FloorEvent] = deque()  # fed to the floor one at a time, in order
        self._feeding = False
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._turns: dict[int, _QueuedTurn] = {}
        self._reply: Reply | None = None  # the reply of the turn being answered
        self._permits: dict[int, asyncio.Future[None]] = {}  # tool calls waiting for the floor's RunTools
        self._listening = self.floor.user is UserState.LISTENING  # the floor's Listen: audio reaches the VAD
        self._detecting = self.floor.user is UserState.WAITING  # the floor's Detect: audio reaches the wake word
        self._speculation: Speculation | None = None  # what the current pause in the user's speech started
        self._lookahead: Lookahead | None = None  # what the last lull in it began, for a pause that follows
        self._judged: Speculation | None = None  # the ended speech over the reply, being transcribed and encoded
        self._judging: asyncio.Task[None] | None = None  # the transcription of the speech over the reply
        self._heard = (0.0, 0)  # time.monotonic() when the last block came, and the segmenter's samples then
        self.frames_spoken = 0  # CSM frames the user heard, over the whole session

    @property
    def busy(self) -> bool:
        """A turn is being answered or waits to be; a turn interrupted, dropped or taken back is not."""
        return self.floor.busy

    @property
    def muted(self) -> bool:
        return self.floor.muted

    async def listen(self, source: AudioSource, *, sequential: bool = False) -> None:
        """Answer the turns heard in `source` until it ends; `sequential` reads on only between turns (files)."""
        if self.segmenter is None or self.transcriber is None:
            raise ValueError("listening needs a VAD segmenter and a transcriber")
        if sequential:  # a recording holds no echo of the replies, and is read faster than real time
            self.floor.tail_ms = 0
        self._state("waiting" if self.floor.user is UserState.WAITING else "listening")
        async for block in source.blocks():
            self._hear(block)
            if sequential and self._speculation is not None:  # read faster than spoken: judge a pause where it is
                await asyncio.wait([self._speculation.transcript, *self._speculation.others])
            if sequential and self._turns:
                await self._all_finished()
        self._feed(SourceEnded())  # speech cut off by the source's end is no turn, and holds no reply back
        await self._all_finished()
        self._state("idle")

    def ask(self, text: str) -> asyncio.Task[Spoken | None]:
        """Queue a typed turn (it runs after the turns before it); the reply is spoken when there is a sink.

        Await the task for what the user heard of the reply; None if interrupted before it began.
        """
        turn = next_turn_id()
        return self._queue(Queued(turn), self._text_turn(turn, text))

    def say(self, text: str) -> asyncio.Task[Spoken | None]:
        """Queue speaking `text` as the assistant's own turn, with the conversation as the voice's context."""
        turn = next_turn_id()
        return self._queue(Queued(turn), self._said_turn(turn, text))

    def attend(self, source: str = "api") -> None:
        """Listen now without the wake word (a button, `command/listen`, a face at the kiosk); with push-to-talk, the
        key went down: what is said until `release()` is the turn."""
        self._feed(Attend(source))

    def release(self) -> None:
        """Push-to-talk: the key went up; the speech held is the turn."""
        self._feed(TalkReleased())

    def set_muted(self, muted: bool) -> None:
        """Muted, the microphone's audio is dropped here: nothing said is heard, transcribed or interrupts."""
        self._feed(Mute(muted))

    def reset(self) -> asyncio.Task[Spoken | None]:
        """Interrupt the reply, drop the turns queued, and forget the conversation once the turn under way has ended;
        turns queued after the reset begin a new conversation."""
        turn = next_turn_id()
        return self._queue(Reset(turn), self._clear())

    def interrupt(self, source: str = "api", *, all: bool = False) -> bool:
        """Stop what is sounding or about to sound now (with `all`, drop every queued turn too); False when there
        was nothing to stop."""
        return any(isinstance(action, (InterruptTurn, DropTurn)) for action in self._feed(Interrupt(source, all)))

    async def aclose(self) -> None:
        """End what is sounding, drop what is queued, and wait for the turn under way to wind down."""
        self._feed(Stop())
        await self._all_finished()
        if self._judging is not None:
            self._judging.cancel()
            await asyncio.wait([self._judging])

    # --- feeding the floor and carrying out its actions

    def _feed(self, event: FloorEvent) -> list[Action]:
        """Give the floor an event and carry out its actions; events that arise meanwhile are fed after it, in order.
        Returns the actions for `event` (empty when it was queued behind the one being fed)."""
        self._events.append(event)
        if self._feeding:
            return []
        self._feeding = True
        first: list[Action] | None = None
        try:
            while self._events:
                event, now = self._events.popleft(), time.monotonic()
                actions = self.floor.on(event, now)
                if actions:
                    log.debug("floor at %.3f: %s -> %s", now, event, actions)
                first = actions if first is None else first
                for action in actions:
                    self._do(action)
        finally:
            self._feeding = False
        return first or []

    def _do(self, action: Action) -> None:
        if isinstance(action, Publish):
            self.bus.publish(action.event)
        elif isinstance(action, Listen):
            self._listening = action.on
        elif isinstance(action, Detect):
            self._detecting = action.on
            if action.on and self.wake_word is not None:
                self.wake_word.reset()
        elif isinstance(action, ForgetConversation):
            self._forget("idle")
        elif isinstance(action, ForgetSpeech):
            assert self.segmenter is not None
            self.segmenter.reset()
        elif isinstance(action, Look):
            if self._lookahead is not None:
                self._lookahead.cancel()
            self._lookahead = self._look(action.utterance)
        elif isinstance(action, StartSpeculation):
            self._speculate(action.utterance, action.score)
        elif isinstance(action, PrepareReply):
            if self._speculation is not None:
                messages = self.conversation.messages() + [{"role": "user", "content": action.words}]
                self._speculation.start_reply(self.backend, messages, self.tools.specs())
        elif isinstance(action, DropSpeculation):
            if self._speculation is not None:
                self._speculation.cancel()
                self._speculation = None
        elif isinstance(action, EndTurnAfter):
            assert self.segmenter is not None
            if (utterance := self.segmenter.wait(action.silence_ms)) is not None:  # that much silence has passed
                self._feed(VoiceEnded(utterance))
        elif isinstance(action, CommitTurn):
            self._commit(action)
        elif isinstance(action, StartTurn):
            self._turns[action.turn].go.set_result(True)
        elif isinstance(action, DropTurn):
            self._cancel(action.turn)
        elif isinstance(action, InterruptTurn):
            if self._reply is not None and self._reply.turn == action.turn:
                self._reply.interrupt()
            else:  # still transcribing: drop the turn
                self._cancel(action.turn)
        elif isinstance(action, TakeBack):
            assert self.segmenter is not None
            self.segmenter.reopen()
            if self._reply is not None and self._reply.turn == action.turn:
                self._reply.interrupt()
            self._cancel(action.turn)
        elif isinstance(action, RunTools):
            if (permit := self._permits.get(action.turn)) is not None and not permit.done():
                permit.set_result(None)
        elif isinstance(action, PauseReply):
            if self._reply is not None and self._reply.turn == action.turn:
                self._reply.pause()
        elif isinstance(action, ResumeReply):
            if self._reply is not None and self._reply.turn == action.turn:
                self._reply.resume()
        elif isinstance(action, JudgeUtterance):
            self._judge_utterance(action.utterance)
        elif isinstance(action, JudgeSoFar):
            self._judge_so_far()
        elif isinstance(action, DropJudgement):
            self._drop_judgement()
        elif isinstance(action, SetTimer):
            self._set_timer(action.name, action.at)
        elif isinstance(action, CancelTimer):
            if (handle := self._timers.pop(action.name, None)) is not None:
                handle.cancel()

    def _set_timer(self, name: str, at: float) -> None:
        if (old := self._timers.pop(name, None)) is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, at - time.monotonic())

        def fire() -> None:
            self._timers.pop(name, None)
            self._feed(TimerFired(name))

        self._timers[name] = loop.call_at(loop.time() + delay, fire)

    # --- the microphone

    def _hear(self, block: np.ndarray) -> None:
        assert self.segmenter is not None
        if self._detecting and self.wake_word is not None:
            if (detection := self.wake_word.feed(block)) is not None:
                log.info("wake word %r (%.2f)", detection.phrase, detection.score)
                self.bus.publish(WakeDetected(model=detection.model, score=detection.score))
                if self.earcon is not None and self.sink is not None:
                    self.sink.play(self.earcon)
                self._feed(Attend("wake word"))
            return
        if not self._listening:
            return
        events = self.segmenter.feed(block)
        self._heard = (time.monotonic(), self.segmenter.samples_seen)
        for event in events:
            if isinstance(event, SpeechOnset):
                self._feed(VoiceOnset(continues_last=self.segmenter.can_reopen))
            elif isinstance(event, Lull):
                self._feed(VoiceLull(event.utterance))
            elif isinstance(event, Pause):
                self._feed(VoicePause(event.utterance))
            elif isinstance(event, SpeechResumed):
                self._feed(VoiceResumed())
            else:
                self._feed(VoiceEnded(event))
            if not self._listening:  # the rest of the block is not heard
                return
        self._feed(Heard(self.segmenter.in_speech, self.segmenter.voiced_ms))

    def _clock(self, utterance: Utterance) -> TurnClock:
        """A turn's clock, started at the end of the user's speech (the last voiced frame), not when the VAD
        decided the turn was over: that wait is the turn's `endpoint` stage."""
        at, seen = self._heard
        return TurnClock(at - (seen - utterance.end_sample) / utterance.sample_rate)

    def _speculate(self, utterance: Utterance, score: bool) -> None:
        """A pause: transcribe and encode the turn so far (and score it with the end-of-turn model); the floor hears
        of the words and the score."""
        assert self.transcriber is not None
        look, self._lookahead = self._lookahead, None
        if look is None or not look.fits(utterance):  # speech came since the lull (or there was none): look now
            if look is not None:
                look.cancel()
            look = self._look(utterance)  # asked first: Whisper serves the glance before the full transcript
        codes = self._encode(utterance.audio, utterance.sample_rate)
        glancing = look.glance
        self._speculation = speculation = Speculation(
            utterance, self._clock(utterance), self.transcriber, codes, self._on_transcript, glancing
        )
        if glancing is not None:
            glancing.add_done_callback(lambda done: self._on_glance(speculation, done))
        if score and look.score is not None:
            look.score.add_done_callback(lambda done: self._on_model(speculation, done))
            speculation.others.append(look.score)
        elif look.score is not None:
            look.score.cancel()

    def _look(self, utterance: Utterance) -> Lookahead:
        """Begin what decides a pause of the turn so far: the glance (detector both) and the model's score."""
        assert self.transcriber is not None
        glance = score = None
        if self.floor.detector == "both":
            glance = asyncio.ensure_future(asyncio.to_thread(self.transcriber.glance, utterance.audio))
        if self.floor.model and self.turn_model is not None:
            score = asyncio.ensure_future(asyncio.to_thread(self.turn_model.complete, utterance.audio))
        return Lookahead(utterance.end_sample, glance, score)

    def _on_transcript(self, speculation: Speculation) -> None:
        if speculation is self._speculation:
            self._feed(PauseWords(speculation.transcript.result().text))

    def _on_glance(self, speculation: Speculation, done: asyncio.Future[Transcript]) -> None:
        if speculation is not self._speculation or done.cancelled():
            return
        if (error := done.exception()) is not None:  # the full transcript's words decide instead
            self._report("asr", f"the quick transcript failed: {type(error).__name__}: {error}")
            self._feed(PauseGlance(None))
            return
        self._feed(PauseGlance(done.result().text))

    def _on_model(self, speculation: Speculation, done: asyncio.Future[float]) -> None:
        if speculation is not self._speculation or done.cancelled():
            return
        if (error := done.exception()) is not None:  # the floor decides by the words instead
            self._report("turn", f"the end-of-turn model failed: {type(error).__name__}: {error}")
            self.turn_model = None
            self._feed(TurnScore(None))
            return
        self._feed(TurnScore(done.result()))

    # --- barge-in: the words of the speech over the reply

    def _judge_utterance(self, utterance: Utterance) -> None:
        """Speech that ended over the reply is transcribed as a pause's speculation would be, so that if it takes the
        turn, its turn takes the transcript over."""
        assert self.transcriber is not None
        codes = self._encode(utterance.audio, utterance.sample_rate)
        self._judged = Speculation(utterance, self._clock(utterance), self.transcriber, codes, lambda _: None)
        self._judging = asyncio.ensure_future(self._judge(self._judged.transcript))

    def _judge_so_far(self) -> None:
        assert self.transcriber is not None and self.segmenter is not None
        try:
            so_far = self.segmenter.so_far()
        except Exception as error:  # a paused reply must not stay paused: judged as no words
            self._report("pipeline", f"judging the speech over the reply failed: {type(error).__name__}: {error}")
            self._feed(JudgedWords(""))
            return
        audio = so_far.audio if so_far is not None else np.zeros(0, np.float32)
        self._judging = asyncio.ensure_future(self._judge(asyncio.to_thread(self.transcriber.transcribe, audio)))

    async def _judge(self, transcribing: Awaitable[Transcript]) -> None:
        try:
            words = (await transcribing).text
        except asyncio.CancelledError:
            raise
        except Exception as error:  # judged as no words: the reply goes on
            self._report("asr", f"transcription failed: {type(error).__name__}: {error}")
            words = ""
        self._judging = None
        self._feed(JudgedWords(words))

    def _drop_judgement(self) -> None:
        if self._judging is not None:
            self._judging.cancel()
            self._judging = None
        if self._judged is not None:
            self._judged.cancel()
            self._judged = None

    # --- the queue of turns

    def _commit(self, action: CommitTurn) -> None:
        """The user's turn: queued with the work its pause (or its judgement over a reply) started, if any."""
        speculation = None
        if action.prepared == "pause":
            speculation, self._speculation = self._speculation, None
        elif action.prepared == "judgement":
            speculation, self._judged = self._judged, None
        clock = speculation.clock if speculation is not None else self._clock(action.utterance)
        clock.mark("endpoint")
        turn = self._voice_turn(action.turn, action.utterance, clock, speculation)
        codes = speculation.codes if speculation is not None else None
        self._enqueue(action.turn, turn, lambda: _drop(codes, speculation))

    def _queue(self, event: Queued | Reset, turn: Coroutine[Any, Any, Spoken | None]) -> asyncio.Task[Spoken | None]:
        task = self._enqueue(event.turn, turn)
        self._feed(event)
        return task

    def _enqueue(
        self, turn: int, work: Coroutine[Any, Any, Spoken | None], dropped: Callable[[], None] = lambda: None
    ) -> asyncio.Task[Spoken | None]:
        """A turn that runs once the floor starts it; dropped before that, it ends with None."""
        go: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        async def when_started() -> Spoken | None:
            try:
                started = await go
            except asyncio.CancelledError:
                started = False
            if not started:
                work.close()
                dropped()
                return None
            return await work

        task = asyncio.ensure_future(when_started())
        self._turns[turn] = _QueuedTurn(go, task)
        task.add_done_callback(functools.partial(self._turn_ended, turn))
        return task

    def _cancel(self, turn: int) -> None:
        """End a turn: one not started yet never starts; one under way is cancelled."""
        if (queued := self._turns.get(turn)) is None:
            return
        if not queued.go.done():
            queued.go.set_result(False)
        else:
            queued.task.cancel()

    def _turn_ended(self, turn: int, task: asyncio.Future[Spoken | None]) -> None:
        self._turns.pop(turn, None)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("a turn failed", exc_info=error)
            self.bus.publish(ErrorEvent(source="pipeline", message=f"a turn failed: {type(error).__name__}: {error}"))
        self._feed(TurnEnded(turn))

    async def _all_finished(self) -> None:
        """Until every turn queued now or while waiting has ended (whatever way it ends)."""
        while self._turns:
            await asyncio.wait([queued.task for queued in self._turns.values()])

    async def _voice_turn(
        self, turn: int, utterance: Utterance, clock: TurnClock, speculation: Speculation | None
    ) -> Spoken | None:
        """Answer a turn that ended; what its last pause started (`speculation`) is taken over where it still fits.

        Cancelled (taken back, or dropped while transcribing), it leaves nothing behind: no history, no work going
        on."""
        transcriber = self.transcriber
        assert transcriber is not None
        self._state("thinking")
        later = None  # the full transcript, when the turn goes on with a glance's words
        if speculation is not None:
            codes, transcribing = speculation.codes, speculation.words()
        else:
            codes = self._encode(utterance.audio, utterance.sample_rate)
            transcribing = _alone(asyncio.to_thread(transcriber.transcribe, utterance.audio))
        user = None
        try:
            try:
                transcript, later = await transcribing
            except Exception as error:
                self._report("asr", f"transcription failed: {type(error).__name__}: {error}")
                self._done(codes, speculation)
                return None
            finally:
                clock.mark("transcript")
            if self.wake_word is not None:
                transcript = dataclasses.replace(transcript, text=self.wake_word.strip_phrase(transcript.text))
            if transcript.is_empty:
                log.info("turn %d: no words in %.1f s of audio; not replying", turn, utterance.duration_s)
                self._done(codes, speculation)
                return None
            self.bus.publish(UserTranscript(text=transcript.text, turn=turn))
            user = self.conversation.add_user(transcript.text, utterance.audio, utterance.sample_rate)
            if later is not None:
                later.add_done_callback(functools.partial(self._keep_full_words, turn, user))
            first = None
            if speculation is not None and speculation.reply is not None:
                if speculation.reply.messages == self.conversation.messages():
                    first = speculation.reply.follow
                else:  # the conversation moved on since the pause (a typed turn, a reset): ask again
                    speculation.reply.cancel()
            return await self._respond(turn, clock, self._speech_context(user, codes), first=first)
        except asyncio.CancelledError:
            _drop(codes, speculation)
            if user is None:  # still transcribing (once replying, `_respond` says it is listening again)
                self._state("listening")
            else:
                self.conversation.withdraw(user)
            raise

    async def _text_turn(self, turn: int, text: str) -> Spoken | None:
        clock = TurnClock()
        self._state("thinking")
        self.bus.publish(UserTranscript(text=text, turn=turn))
        self.conversation.add_user(text)
        return await self._respond(turn, clock, self._speech_context(None, None))

    async def _said_turn(self, turn: int, text: str) -> Spoken | None:
        clock = TurnClock()
        self._state("thinking")
        return await self._respond(turn, clock, self._speech_context(None, None), given=text)

    async def _clear(self) -> None:  # a turn of the queue, so that it returns None like the others
        self._forget("command")

    def _forget(self, reason: Literal["command", "idle"]) -> None:
        """A new conversation: its text, its audio, and the rows of it CSM's cache holds."""
        self.conversation.reset()
        if (forget_cache := getattr(self.engine, "forget_cache", None)) is not None:  # an in-process engine's
            forget_cache()
        log.info("conversation reset (%s)", reason)
        self.bus.publish(ConversationReset(reason=reason))

    async def _respond(
        self,
        turn: int,
        clock: TurnClock,
        context: Coroutine[Any, Any, list[Segment]],
        *,
        first: LlmStream | None = None,
        given: str | None = None,
    ) -> Spoken:
        """Speak a reply: the LLM's answer to the conversation (calling tools as it asks; `first` is its stream
        already started at a pause), or the text `given`."""
        rounds = None
        if given is not None:
            deltas = _given(given)
        else:
            rounds = ToolRounds(
                turn,
                self.backend,
                self.conversation.messages(),
                self.tools,
                self.config.tools,
                self.bus,
                clock,
                first=first,
                permission=functools.partial(self._permission, turn),
                finished=functools.partial(self._feed, ToolsDone(turn)),
            )
            deltas = rounds.deltas

        def sounding() -> None:
            self._feed(ReplySounding(turn))

        reply = Reply(
            turn,
            deltas,
            self.bus,
            clock,
            engine=self.engine,
            sink=self.sink,
            context=context,
            voice=self.voice,
            apology=self.config.llm.apology,
            on_sounding=sounding,
        )
        self._reply = reply
        self._feed(ReplyStarted(turn))
        try:
            spoken = await reply.run()
        finally:
            self._reply = None
            self._feed(ReplyEnded(turn))
            self._state("listening")
        if spoken.codes is not None:
            self.frames_spoken += spoken.codes.shape[1]
        acted = rounds.rounds(spoken) if rounds is not None else ()
        if spoken.text or spoken.codes is not None or acted:
            closing = rounds.closing(spoken) if rounds is not None else spoken.text
            self.conversation.add_assistant(closing, codes=spoken.codes, interrupted=spoken.interrupted, rounds=acted)
        self.bus.publish(ReplyText(text=spoken.text, turn=turn, final=True, interrupted=spoken.interrupted))
        self.bus.publish(clock.latency(turn))
        return spoken

    async def _permission(self, turn: int) -> None:
        """Until the floor lets the turn's tool calls run (`RunTools`)."""
        permit = self._permits[turn] = asyncio.get_running_loop().create_future()
        try:
            self._feed(ToolsWanted(turn))
            await permit
        finally:
            del self._permits[turn]

    def _encode(self, audio: np.ndarray, sample_rate: int) -> asyncio.Future[torch.Tensor] | None:
        """Start Mimi-encoding the user's audio for CSM's context, alongside ASR."""
        if self.encode_audio is None or self.engine is None or self.sink is None:
            return None
        return asyncio.ensure_future(self.encode_audio(audio, sample_rate))

    async def _speech_context(self, user: Turn | None, codes: asyncio.Future[torch.Tensor] | None) -> list[Segment]:
        if user is not None and codes is not None:
            try:
                user.codes = await codes
            except Exception as error:  # speak anyway, without the user's voice in the context
                self._report("speech", f"could not encode the user's audio: {type(error).__name__}: {error}")
                user.audio = None
        return self.conversation.speech_context()

    def _keep_full_words(self, turn: int, user: Turn, done: asyncio.Future[Transcript]) -> None:
        """The full transcript of a turn whose reply began on a glance's words: the conversation keeps its words
        where they differ (the user's turn may be gone: taken back, or the conversation reset)."""
        if done.cancelled() or done.exception() is not None:
            return
        text = done.result().text
        if self.wake_word is not None:
            text = self.wake_word.strip_phrase(text)
        if text.strip() and text != user.text and self.conversation.revise(user, text):
            log.info(
                "turn %d: the reply began on %r; the conversation keeps the full transcript %r", turn, user.text, text
            )

    def _done(self, codes: asyncio.Future[torch.Tensor] | None, speculation: Speculation | None = None) -> None:
        _drop(codes, speculation)
        self._state("listening")

    def _state(self, state: State) -> None:
        self.bus.publish(StateChanged(state=state))

    def _report(self, source: str, message: str) -> None:
        log.warning("%s", message)
        self.bus.publish(ErrorEvent(source=source, message=message))


async def _alone(transcribing: Awaitable[Transcript]) -> tuple[Transcript, None]:
    return await transcribing, None


def _drop(codes: asyncio.Future[torch.Tensor] | None, speculation: Speculation | None) -> None:
    """Stop the encoding and the pause's work a turn that ends without a reply leaves behind."""
    if codes is not None:
        codes.cancel()
    if speculation is not None:
        speculation.cancel()


def _given(text: str) -> Deltas:
    """A reply whose text is known: one delta, so it goes through the same chunking and speech as an LLM's."""

    async def deltas(cancel: asyncio.Event) -> AsyncIterator[str]:
        yield text

    return deltas


@dataclass(frozen=True)
class _QueuedTurn:
    go: asyncio.Future[bool]  # set when the floor starts the turn (True) or drops it unstarted (False)
    task: asyncio.Task[Spoken | None]
