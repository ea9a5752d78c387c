"""The voice loop: hear a turn, transcribe it, answer it in speech; one turn at a time, interruptible.

Audio blocks come from any `AudioSource` (microphone or wav file) and replies go to any `AudioSink`
(speaker or wav file). Typed turns (`ask`) and given speech (`say`) share the same reply path.
Turns run one after another in the order they were started, whoever started them (microphone, API,
MQTT). Blocking work (ASR, Mimi encoding, CSM) runs in worker threads; everything here runs on the
event loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Protocol

import numpy as np
import torch

from assistant.asr import Transcriber, Transcript
from assistant.audio.streams import AudioSink, AudioSource
from assistant.config import Config
from assistant.conversation import Conversation, Turn
from assistant.events import (
    BargeInPaused,
    BargeInResumed,
    ConversationReset,
    ErrorEvent,
    EventBus,
    Interrupted,
    MuteChanged,
    ReplyText,
    SpeechStarted,
    State,
    StateChanged,
    TurnTakenBack,
    UserTranscript,
    UtteranceEnded,
    next_turn_id,
)
from assistant.llm.backend import ChatBackend
from assistant.segment import Segment
from assistant.tts.reference_voice import ReferenceVoice
from assistant.turn_end import silence_to_end, takes_the_turn
from assistant.vad import Pause, SpeechOnset, SpeechResumed, Utterance, VadSegmenter
from pipelines.reply import Deltas, Reply, SpeechEngine, Spoken, Voice
from pipelines.speculation import Speculation
from pipelines.turn_clock import TurnClock

log = logging.getLogger(__name__)

class TurnDetector(Protocol):
    """An end-of-turn model (`assistant.turn_model.SmartTurn`): the probability that a turn's audio so far is all."""

    def complete(self, audio: np.ndarray) -> float: ...


AudioEncoder = Callable[[np.ndarray, int], Awaitable[torch.Tensor]]
"""Mono audio at a sample rate -> Mimi codes `[K, frames]` (`CSMEngine.encode`, on the engine's own thread)."""


class VoiceLoop:
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
    ) -> None:
        self.config = config
        self.bus = bus
        self.backend = backend
        self.transcriber = transcriber
        self.engine = engine
        self.encode_audio = encode_audio
        self.sink = sink
        self.segmenter = segmenter
        self.turn_model = turn_model  # with turn.detector "model": it, not the words, decides each pause
        if segmenter is not None:  # pauses this long start a speculative transcript and reply
            segmenter.pause_ms = config.turn.speculate_ms
        csm = config.csm
        speaker = reference.speaker if reference is not None else csm.speaker  # the voice speaks as who it stands for
        self.voice = Voice(
            speaker, csm.temperature, csm.topk, csm.seed, csm.max_audio_ms, csm.chunk_frames,
            reference.segment() if reference is not None else None,
        )
        user_speaker = 0 if speaker != 0 else 1
        self.conversation = Conversation(config.conversation, config.llm.system_prompt, user_speaker, speaker)
        self._turn: asyncio.Task[Spoken | None] | None = None
        self._reply: Reply | None = None
        self._turn_id: int | None = None
        self._spoken: tuple[asyncio.Task[Spoken | None], int] | None = None  # the microphone's last turn, and its id
        self._holding: Reply | None = None  # an unheard reply waiting while the user may be going on
        self._quiet_until = 0.0  # off-mode barge-in: the microphone is ignored until then
        self._speculation: Speculation | None = None  # what the current pause in the user's speech started
        self._barge_in: asyncio.Future[Utterance | None] | None = None  # speech that paused the reply: its end
        self._forgiven = False  # the speech in progress was judged to say nothing: it does not pause the reply again
        self._held_ms = 0  # voiced ms of the speech in progress heard in a reply's hold: not counted for a barge-in
        self._judging: asyncio.Future[None] | None = None  # the judging of the speech that paused the reply
        self._heard = (0.0, 0)  # time.monotonic() when the last block came, and the segmenter's samples then
        self.muted = False  # nothing heard becomes a turn (see set_muted)
        self.frames_spoken = 0  # CSM frames the user heard, over the whole session

    @property
    def busy(self) -> bool:
        """A turn is being answered (thinking or speaking); a turn being cancelled (dropped, taken back) is not."""
        return self._turn is not None and not self._turn.done() and not self._turn.cancelling()

    async def listen(self, source: AudioSource, *, sequential: bool = False) -> None:
        """Answer the turns heard in `source` until it ends; `sequential` reads on only between turns (files)."""
        if self.segmenter is None or self.transcriber is None:
            raise ValueError("listening needs a VAD segmenter and a transcriber")
        self._state("listening")
        async for block in source.blocks():
            self._hear(block)
            if sequential and self._speculation is not None:  # read faster than spoken: judge a pause where it is
                await asyncio.wait([self._speculation.transcript, *self._speculation.others])
            if sequential and self._turn is not None:
                await _finished(self._turn)
                self._quiet_until = 0.0  # a recording holds no echo of the reply, and is read faster than real time
        self._forget_speech()  # speech cut off by the source's end is no turn, and holds no reply back
        await _finished(self._turn)
        self._state("idle")

    def ask(self, text: str) -> asyncio.Task[Spoken | None]:
        """Start a typed turn now (it runs after the turn before it); the reply is spoken when there is a sink.

        Await the task for what the user heard of the reply; None if interrupted before it began.
        """
        return self._start(self._text_turn(text))

    def say(self, text: str) -> asyncio.Task[Spoken | None]:
        """Start speaking `text` as the assistant's own turn, with the conversation as the voice's context."""
        return self._start(self._said_turn(text))

    def set_muted(self, muted: bool) -> None:
        """Muted, the microphone's audio is dropped here: nothing said is heard, transcribed or interrupts."""
        self.muted = muted
        if muted:
            self._forget_speech()  # speech under way when muted is dropped too
        log.info("microphone %s", "muted" if muted else "unmuted")
        self.bus.publish(MuteChanged(muted=muted))

    def reset(self) -> asyncio.Task[Spoken | None]:
        """Interrupt the current reply and forget the conversation once that turn has ended.

        Turns started before the reset finish first; turns started after it begin a new conversation.
        """
        self.interrupt("reset")
        return self._start(self._clear())

    def interrupt(self, source: str = "api") -> bool:
        """Stop the current reply now: silence, cancel the LLM and the engine. False when nothing was going on."""
        called = time.monotonic()  # the event's time: silence is counted from the call, not from after it
        if not self.busy:
            return False
        assert self._turn is not None
        if self._reply is not None:
            self._reply.interrupt()
        else:  # still transcribing: drop the turn
            self._turn.cancel()
        log.info("interrupted (%s)", source)
        self.bus.publish(Interrupted(source=source, turn=self._turn_id, at=called))
        return True

    async def aclose(self) -> None:
        """Interrupt whatever is going on and wait for it to finish."""
        self.interrupt("shutdown")
        await _finished(self._turn)
        await _finished(self._judging)

    def _hear(self, block: np.ndarray) -> None:
        assert self.segmenter is not None
        if self.muted:
            return
        barge_in = self.config.barge_in
        if barge_in.mode == "off" and ((self.busy and not self._retractable()) or time.monotonic() < self._quiet_until):
            self._forget_speech()  # the assistant's own voice (or its echo) is not a turn
            return
        events = self.segmenter.feed(block)
        self._heard = (time.monotonic(), self.segmenter.samples_seen)
        for event in events:
            if isinstance(event, SpeechOnset):
                self.bus.publish(SpeechStarted())
                self._take_back()
            elif isinstance(event, Pause):
                self._speculate(event.utterance)
            elif isinstance(event, SpeechResumed):
                self._drop_speculation()
            else:
                self._on_utterance(event)
        self._forgiven &= self.segmenter.in_speech
        if not self.segmenter.in_speech:
            self._held_ms = 0
        self._hold_for_speech()
        if barge_in.mode == "vad" and self._reply is not None and self._barge_in is None and not self._forgiven and not (
            self._reply.interrupted or self._retractable()  # speech before an unheard reply is the turn going on
        ):
            if not self._past_hold(self._reply):  # heard in the hold (echo a canceller still learns): not counted
                self._held_ms = self.segmenter.voiced_ms
            elif self.segmenter.voiced_ms - self._held_ms >= barge_in.min_speech_ms:
                self._barge_in_on(self._reply)

    def _retractable(self) -> bool:
        """The turn being answered is the microphone's last and its reply has not been heard: speech now continues it."""
        if not self.config.turn.take_back or self._spoken is None or self._spoken[0] is not self._turn or not self.busy:
            return False
        return self._reply is None or (not self._reply.interrupted and self._reply.sounding_since is None)

    def _take_back(self) -> None:
        """The user went on before hearing the reply to their last turn: drop the reply unheard, withdraw the turn
        (`TurnTakenBack`) and let the speech in progress continue it."""
        assert self.segmenter is not None
        if self._spoken is None or not self._retractable() or not self.segmenter.reopen():
            return
        (task, turn), self._spoken = self._spoken, None
        if self._reply is not None:
            self._reply.interrupt()
        task.cancel()
        log.info("turn %d: the user went on before hearing the reply; taken back", turn)
        self.bus.publish(TurnTakenBack(turn=turn))

    def _hold_for_speech(self) -> None:
        """An unheard reply waits while speech that may take its turn back is too short to tell (`vad.min_speech_ms`)."""
        assert self.segmenter is not None
        wanted = self._reply if self.segmenter.in_speech and self._retractable() else None
        if self._holding is not None and self._holding is not wanted:
            if not self._holding.interrupted:
                self._holding.resume()
            self._holding = None
        if wanted is not None and self._holding is None:
            wanted.pause()
            self._holding = wanted

    def _past_hold(self, reply: Reply) -> bool:
        """Barge-in is held in the first `barge_in.hold_ms` of a reply's sound (not before it sounds), and again after
        it resumes from a pause: the speaker's device started again, and an echo canceller learns anew where its
        echo comes."""
        since = reply.sounding_since
        return since is None or time.monotonic() - since >= self.config.barge_in.hold_ms / 1000

    def _barge_in_on(self, reply: Reply) -> None:
        """Speech over the reply: pause it until its words are known (`barge_in.resume_ms`: 0 interrupts at once)."""
        if not self.config.barge_in.resume_ms:
            self.interrupt("barge-in")
            return
        reply.pause()
        log.info("turn %d: speech over the reply; paused", reply.turn)
        self.bus.publish(BargeInPaused(turn=reply.turn))
        self._barge_in = asyncio.get_running_loop().create_future()
        self._judging = asyncio.ensure_future(self._judge_barge_in(reply, self._barge_in))

    async def _judge_barge_in(self, reply: Reply, ended: asyncio.Future[Utterance | None]) -> None:
        """Interrupt if the speech says something within `barge_in.resume_ms` (then it is the user's turn), else
        resume where the reply paused. Speech that ended in time is transcribed as a pause's speculation would be,
        so its turn takes the transcript over."""
        assert self.transcriber is not None and self.segmenter is not None
        speculation = None
        try:
            try:
                utterance = await asyncio.wait_for(asyncio.shield(ended), self.config.barge_in.resume_ms / 1000)
            except TimeoutError:
                utterance = None
            if utterance is not None:
                codes = self._encode(utterance.audio, utterance.sample_rate)
                speculation = Speculation(utterance, self._clock(utterance), self.transcriber, codes, lambda _: None)
                transcribing: Awaitable[Transcript] | None = speculation.transcript
            elif (so_far := self.segmenter.so_far()) is not None:
                transcribing = asyncio.to_thread(self.transcriber.transcribe, so_far.audio)
            else:
                transcribing = None
            words = ""
            try:
                words = (await transcribing).text if transcribing is not None else ""
            except Exception as error:  # judged as no words: the reply goes on
                self._report("asr", f"transcription failed: {type(error).__name__}: {error}")
        except Exception as error:  # a paused reply must not stay paused: judged as no words
            self._report("pipeline", f"judging the speech over the reply failed: {type(error).__name__}: {error}")
            words = ""
        finally:
            self._barge_in = None
        if reply is self._reply and not reply.interrupted and takes_the_turn(words):
            self.interrupt("barge-in")
            if ended.done() and (utterance := ended.result()) is not None:  # it is the user's turn, with its transcript
                self._speculation = speculation
                self._on_utterance(utterance)
            return
        if speculation is not None:
            speculation.cancel()
        if reply is self._reply and not reply.interrupted:
            log.info("turn %d: no words over the reply (%r); resuming", reply.turn, words)
            self._forgiven = True
            reply.resume()
            self.bus.publish(BargeInResumed(turn=reply.turn))

    def _answering(self) -> bool:
        """Whether a turn ending now would be answered: nothing is being answered, or that reply was interrupted."""
        return not self.busy or (self._reply is not None and self._reply.interrupted)

    def _clock(self, utterance: Utterance) -> TurnClock:
        """A turn's clock, started at the end of the user's speech (the last voiced frame), not when the VAD
        decided the turn was over: that wait is the turn's `endpoint` stage."""
        at, seen = self._heard
        return TurnClock(at - (seen - utterance.end_sample) / utterance.sample_rate)

    def _speculate(self, utterance: Utterance) -> None:
        """A pause: transcribe and encode the turn so far and, once it has words, start the LLM on them; decide from
        the words how long a silence ends this turn (until then, the longest)."""
        assert self.segmenter is not None and self.transcriber is not None
        self._drop_speculation()
        if not self._answering():
            return
        self.segmenter.wait(self.config.turn.incomplete_ms)
        codes = self._encode(utterance.audio, utterance.sample_rate)
        self._speculation = speculation = Speculation(
            utterance, self._clock(utterance), self.transcriber, codes, self._on_transcript
        )
        if self.turn_model is not None:
            listening = asyncio.ensure_future(asyncio.to_thread(self.turn_model.complete, utterance.audio))
            listening.add_done_callback(lambda done: self._on_model(speculation, done))
            speculation.others.append(listening)

    def _on_model(self, speculation: Speculation, done: asyncio.Future[float]) -> None:
        """The end-of-turn model has listened to the pause: a turn it finds complete ends at `turn.complete_ms`."""
        if speculation is not self._speculation or done.cancelled():
            return
        if (error := done.exception()) is not None:  # decide by the words instead
            self._report("turn", f"the end-of-turn model failed: {type(error).__name__}: {error}")
            self.turn_model = None
            return
        turn = self.config.turn
        self._end_turn_after(turn.complete_ms if done.result() >= turn.model_threshold else turn.incomplete_ms)

    def _end_turn_after(self, silence_ms: int) -> None:
        assert self.segmenter is not None
        if (utterance := self.segmenter.wait(silence_ms)) is not None:  # that much silence has passed already
            self._on_utterance(utterance)

    def _on_transcript(self, speculation: Speculation) -> None:
        """The pause's transcript is in: start the LLM on the words (nothing is published or remembered before the
        turn ends) and, unless the end-of-turn model decides, set the silence that ends the turn by them."""
        if speculation is not self._speculation:
            return
        transcript = speculation.transcript.result()
        if not transcript.is_empty:
            messages = self.conversation.messages() + [{"role": "user", "content": transcript.text}]
            speculation.start_reply(self.backend, messages)
        if self.turn_model is None:
            self._end_turn_after(silence_to_end(transcript.text, self.config.turn, self.config.vad.end_silence_ms))

    def _drop_speculation(self) -> None:
        if self._speculation is not None:
            self._speculation.cancel()
            self._speculation = None

    def _forget_speech(self) -> None:
        assert self.segmenter is not None
        self.segmenter.reset()
        self._drop_speculation()
        self._hold_for_speech()  # a reply held for that speech plays on

    def _on_utterance(self, utterance: Utterance) -> None:
        if self._barge_in is not None and not self._barge_in.done():  # speech over the reply: judged there
            self._barge_in.set_result(utterance)
            return
        speculation, self._speculation = self._speculation, None
        if speculation is not None and not speculation.matches(utterance):
            speculation.cancel()
            speculation = None
        self.bus.publish(UtteranceEnded(duration_s=utterance.duration_s))
        if not self._answering():
            log.info("ignored %.1f s of speech that came while replying without interrupting", utterance.duration_s)
            if speculation is not None:
                speculation.cancel()
            return
        clock = speculation.clock if speculation is not None else self._clock(utterance)
        clock.mark("endpoint")
        turn = next_turn_id()
        self._spoken = (self._start(self._voice_turn(turn, utterance, clock, speculation)), turn)

    def _start(self, turn: Coroutine[Any, Any, Spoken | None]) -> asyncio.Task[Spoken | None]:
        """Make `turn` the current turn; it runs once the one before it has finished."""
        previous = self._turn

        async def after_previous() -> Spoken | None:
            try:
                await _finished(previous)
            except asyncio.CancelledError:
                turn.close()
                raise
            return await turn

        self._turn = asyncio.ensure_future(after_previous())
        self._turn.add_done_callback(self._report_crash)
        return self._turn

    def _report_crash(self, task: asyncio.Future[Spoken | None]) -> None:
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("a turn failed", exc_info=error)
            self.bus.publish(ErrorEvent(source="pipeline", message=f"a turn failed: {type(error).__name__}: {error}"))

    def _begin(self, turn: int | None = None) -> int:
        self._turn_id = turn if turn is not None else next_turn_id()
        self._state("thinking")
        return self._turn_id

    async def _voice_turn(
        self, turn: int, utterance: Utterance, clock: TurnClock, speculation: Speculation | None
    ) -> Spoken | None:
        """Answer a turn that ended; what its last pause started (`speculation`) is taken over where it still fits.

        Cancelled (taken back, or dropped while transcribing), it leaves nothing behind: no history, no work going on."""
        transcriber = self.transcriber
        assert transcriber is not None
        self._begin(turn)
        if speculation is not None:
            codes, transcribing = speculation.codes, speculation.transcript
        else:
            codes = self._encode(utterance.audio, utterance.sample_rate)
            transcribing = asyncio.ensure_future(asyncio.to_thread(transcriber.transcribe, utterance.audio))
        user = None
        try:
            try:
                transcript = await transcribing
            except Exception as error:
                self._report("asr", f"transcription failed: {type(error).__name__}: {error}")
                return self._done(codes, speculation)
            finally:
                clock.mark("transcript")
            if transcript.is_empty:
                log.info("turn %d: no words in %.1f s of audio; not replying", turn, utterance.duration_s)
                return self._done(codes, speculation)
            self.bus.publish(UserTranscript(text=transcript.text, turn=turn))
            user = self.conversation.add_user(transcript.text, utterance.audio, utterance.sample_rate)
            deltas = None
            if speculation is not None and speculation.reply is not None:
                if speculation.reply.messages == self.conversation.messages():
                    deltas = speculation.reply.deltas()
                else:  # the conversation moved on since the pause (a typed turn, a reset): ask again
                    speculation.reply.cancel()
            return await self._respond(turn, clock, self._speech_context(user, codes), deltas)
        except asyncio.CancelledError:
            _drop(codes, speculation)
            if user is None:  # still transcribing (once replying, `_respond` says it is listening again)
                self._state("listening")
            else:
                self.conversation.withdraw(user)
            raise

    async def _text_turn(self, text: str) -> Spoken | None:
        clock, turn = TurnClock(), self._begin()
        self.bus.publish(UserTranscript(text=text, turn=turn))
        self.conversation.add_user(text)
        return await self._respond(turn, clock, self._speech_context(None, None))

    async def _said_turn(self, text: str) -> Spoken | None:
        clock, turn = TurnClock(), self._begin()
        return await self._respond(turn, clock, self._speech_context(None, None), _given(text))

    async def _clear(self) -> None:
        self.conversation.reset()
        log.info("conversation reset")
        self.bus.publish(ConversationReset())

    async def _respond(
        self, turn: int, clock: TurnClock, context: Coroutine[Any, Any, list[Segment]], deltas: Deltas | None = None
    ) -> Spoken:
        """Speak a reply: the LLM's answer to the conversation, or the `deltas` given."""
        if deltas is None:
            deltas = functools.partial(self.backend.stream, self.conversation.messages())
        reply = Reply(
            turn, deltas, self.bus, clock, engine=self.engine, sink=self.sink, context=context,
            voice=self.voice, apology=self.config.llm.apology,
        )
        self._reply = reply
        try:
            spoken = await reply.run()
        finally:
            self._reply = None
            if reply.sounding_since is not None:  # its echo may linger
                self._quiet_until = time.monotonic() + self.config.barge_in.tail_ms / 1000
            self._state("listening")
        if spoken.codes is not None:
            self.frames_spoken += spoken.codes.shape[1]
        if spoken.text or spoken.codes is not None:
            self.conversation.add_assistant(spoken.text, codes=spoken.codes, interrupted=spoken.interrupted)
        self.bus.publish(ReplyText(text=spoken.text, turn=turn, final=True, interrupted=spoken.interrupted))
        self.bus.publish(clock.latency(turn))
        return spoken

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

    def _done(self, codes: asyncio.Future[torch.Tensor] | None, speculation: Speculation | None = None) -> None:
        _drop(codes, speculation)
        self._state("listening")
        return None

    def _state(self, state: State) -> None:
        self.bus.publish(StateChanged(state=state))

    def _report(self, source: str, message: str) -> None:
        log.warning("%s", message)
        self.bus.publish(ErrorEvent(source=source, message=message))


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


async def _finished(task: asyncio.Future[Any] | None) -> None:
    """Wait for a turn to end, whatever way it ends (its errors were reported where they happened)."""
    if task is not None and not task.done():
        await asyncio.wait([task])
