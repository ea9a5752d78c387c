"""One assistant reply: text deltas -> sentence chunks -> CSM audio -> the sink, cancellable at any moment.

Audio goes to the sink as soon as the engine yields it, so the engine works on the next chunk while
the sink plays this one. The sink's `played` count says what the user actually heard: an
interrupted reply keeps only the frames that went out and the text of the chunks they belong to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from assistant.audio.streams import AudioSink
from assistant.events import ErrorEvent, EventBus, ReplyText, StateChanged
from assistant.llm.backend import LlmError
from assistant.llm.speech_text import SpeechChunker
from assistant.segment import Segment
from pipelines.turn_clock import TurnClock

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Flush:
    """In a reply's text stream: say the text so far now, as a chunk of its own (it comes before a tool call). Once
    the reply reaches it, `at` is the number of chunks before it."""

    at: int | None = None


@dataclass(frozen=True, eq=False)
class Filler:
    """In a reply's text stream: words to say while a tool runs, prepared at once but heard only if `release`
    resolves True (the call is still running when the filler is due); on False they are dropped unheard."""

    text: str
    release: asyncio.Future[bool]


Deltas = Callable[[asyncio.Event], AsyncIterator[str | Flush | Filler]]
"""Starts the reply's text stream; it must stop once the event is set."""


class SpokenChunk(Protocol):
    audio: np.ndarray  # float32, 24 kHz
    codes: torch.Tensor  # [num_codebooks, frames]


class SpeechEngine(Protocol):
    """What a reply needs of the CSM engine (`assistant.tts.csm.CSMEngine`)."""

    def stream(
        self,
        text: str,
        speaker: int = ...,
        context: Sequence[Segment] = ...,
        temperature: float = ...,
        topk: int = ...,
        seed: int | None = ...,
        max_audio_ms: float | None = ...,
        cancel: Any = ...,
        chunk_frames: int = ...,
        reference: Segment | None = ...,
    ) -> AsyncGenerator[SpokenChunk, None]: ...


@dataclass(frozen=True)
class Voice:
    """How the engine is asked to speak (the `csm` config section, and the reference voice heading each prompt)."""

    speaker: int = 1
    temperature: float = 0.9
    topk: int = 50
    seed: int | None = None
    max_audio_ms: float | None = None
    chunk_frames: int = 2
    reference: Segment | None = None


@dataclass(frozen=True)
class Spoken:
    """What the user heard of a reply: its first `pieces` (chunks), and their codes."""

    pieces: tuple[str, ...]
    codes: torch.Tensor | None  # [num_codebooks, frames played]; None without speech
    interrupted: bool

    @property
    def text(self) -> str:
        return " ".join(self.pieces)


@dataclass(frozen=True)
class _Placed:
    """Audio of chunk `piece` that occupies sink positions [start, end)."""

    piece: int
    codes: torch.Tensor
    start: int
    end: int

    def frames_before(self, position: int) -> int:
        """Frames of this audio that had started playing when the sink reached `position`."""
        if position <= self.start:
            return 0
        per_frame = (self.end - self.start) / self.codes.shape[1]
        return min(self.codes.shape[1], math.ceil((position - self.start) / per_frame))


class Reply:
    """Run with `await reply.run()`; `interrupt()` from the same loop stops it and keeps what was heard.

    `context` resolves to CSM's context for the first chunk (it may still be encoding the user's audio
    when the reply starts). Without an `engine` or `sink` the reply is text only: each chunk counts as
    heard once it is complete.
    """

    def __init__(
        self,
        turn: int,
        deltas: Deltas,
        bus: EventBus,
        clock: TurnClock,
        *,
        engine: SpeechEngine | None = None,
        sink: AudioSink | None = None,
        context: Awaitable[list[Segment]] | None = None,
        voice: Voice = Voice(),
        apology: str | None = None,
        on_sounding: Callable[[], None] = lambda: None,
    ) -> None:
        self.turn = turn
        self._deltas = deltas
        self._bus = bus
        self._clock = clock
        self._engine = engine if sink is not None else None
        self._sink = sink
        self._context = asyncio.ensure_future(context) if context is not None else None
        self._voice = voice
        self._apology = apology
        self._cancel = asyncio.Event()
        self._pieces: list[str] = []
        self._placed: list[_Placed] = []
        self._heard_until: int | None = None  # the sink position when interrupted
        self._tasks: list[asyncio.Task[None]] = []
        self._on_sounding = on_sounding  # called when its first audio is heard
        self._paused = False  # it paused the sink

    @property
    def interrupted(self) -> bool:
        return self._cancel.is_set()

    async def run(self) -> Spoken:
        chunks: asyncio.Queue[str | Flush | Filler | None] = asyncio.Queue()
        self._tasks += [asyncio.create_task(self._write(chunks)), asyncio.create_task(self._speak(chunks))]
        try:
            while pending := [t for t in self._tasks if not t.done()]:  # the speaker adds a watcher task
                await asyncio.wait(pending)
        except asyncio.CancelledError:
            self.interrupt()
            await asyncio.wait(self._tasks)
            raise
        finally:
            if self._context is not None:
                self._context.cancel()
            self.resume()  # paused as its last audio was heard, it ended: the next reply must not start paused
        for task in self._tasks:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return self._spoken()

    def interrupt(self) -> None:
        """Silence the sink now, stop the LLM and the engine, and remember how far playback got."""
        if self._cancel.is_set():
            return
        self._cancel.set()
        if self._sink is not None:
            self._sink.interrupt()
            self._heard_until = self._sink.played
        for task in self._tasks:
            task.cancel()

    def pause(self) -> None:
        """Hold playback (the LLM and the engine go on); `resume()` plays on from what was heard."""
        if self._sink is not None:
            self._sink.pause()
            self._paused = True

    def resume(self) -> None:
        if self._sink is not None and self._paused:
            self._sink.resume()
            self._paused = False

    async def _write(self, chunks: asyncio.Queue[str | Flush | Filler | None]) -> None:
        """LLM deltas into sayable sentence chunks; a failing LLM ends the reply with what it had said."""
        chunker, any_text = SpeechChunker(), False
        try:
            async for delta in self._deltas(self._cancel):
                if not isinstance(delta, str):  # a flush or a filler: what came before is said first
                    for piece in chunker.flush():
                        chunks.put_nowait(piece)
                    chunks.put_nowait(delta)
                    continue
                if not any_text:
                    self._clock.mark("first_token")
                    any_text = True
                for piece in chunker.push(delta):
                    chunks.put_nowait(piece)
            for piece in chunker.flush():
                chunks.put_nowait(piece)
        except Exception as error:  # any backend failure: report it and keep the assistant running
            before = error.before_first_token if isinstance(error, LlmError) else not any_text
            self._report("llm", f"the LLM failed {'before replying' if before else 'mid-reply'}: {error}")
            if before and self._apology:
                chunks.put_nowait(self._apology)
        finally:
            chunks.put_nowait(None)

    async def _speak(self, chunks: asyncio.Queue[str | Flush | Filler | None]) -> None:
        spoken: list[Segment] = []
        end = None
        while (item := await chunks.get()) is not None:
            if isinstance(item, Flush):
                item.at = len(self._pieces)
                continue
            piece = item.text if isinstance(item, Filler) else item
            audio = self._synthesise(piece, spoken) if self._engine is not None else None
            try:
                if isinstance(item, Filler) and not await item.release:
                    continue
                self._clock.mark("first_chunk")
                index = len(self._pieces)
                self._pieces.append(piece)
                self._bus.publish(ReplyText(text=piece, turn=self.turn))
                if audio is None:
                    continue
                codes = []
                try:
                    while (chunk := await audio.get()) is not None:
                        if isinstance(chunk, Exception):
                            raise chunk
                        end = self._place(index, chunk)
                        codes.append(chunk.codes)
                except Exception as error:  # a failing engine ends this reply, not the assistant
                    self._report("speech", f"speech generation failed: {type(error).__name__}: {error}")
                    del self._pieces[index + bool(codes) :]  # a sentence cut off mid-way keeps what was heard
                    break
                if codes:
                    spoken.append(Segment(self._voice.speaker, piece, codes=torch.cat(codes, dim=1)))
            finally:
                if audio is not None:
                    await audio.aclose()
        if end is not None and self._sink is not None:
            await self._sink.wait_played(end)

    def _synthesise(self, piece: str, spoken: list[Segment]) -> _Synthesis:
        """Start CSM on `piece` now, in the context of the conversation and of what this reply said so far."""
        assert self._engine is not None
        engine, voice = self._engine, self._voice

        async def chunks() -> AsyncIterator[SpokenChunk]:
            context = (await self._context if self._context is not None else []) + spoken
            async with contextlib.aclosing(
                engine.stream(
                    piece,
                    voice.speaker,
                    context,
                    voice.temperature,
                    voice.topk,
                    voice.seed,
                    voice.max_audio_ms,
                    self._cancel,
                    voice.chunk_frames,
                    reference=voice.reference,
                )
            ) as stream:
                async for chunk in stream:
                    yield chunk

        return _Synthesis(chunks())

    def _place(self, piece: int, chunk: SpokenChunk) -> int:
        assert self._sink is not None
        self._clock.mark("first_audio")
        end = self._sink.play(chunk.audio)
        placed = _Placed(piece, chunk.codes, end - len(chunk.audio), end)
        if not self._placed:
            self._tasks.append(asyncio.create_task(self._watch_first_played(placed.start + 1)))
        self._placed.append(placed)
        return end

    async def _watch_first_played(self, position: int) -> None:
        assert self._sink is not None
        if await self._sink.wait_played(position):
            self._clock.mark("first_played")
            self._on_sounding()
            self._bus.publish(StateChanged(state="speaking"))

    def _spoken(self) -> Spoken:
        if self._sink is None or self._engine is None:
            return Spoken(tuple(self._pieces), None, self.interrupted)
        until = self._heard_until if self._heard_until is not None else self._sink.played
        heard = [(p, n) for p in self._placed if (n := p.frames_before(until)) > 0]
        pieces = sorted({p.piece for p, _ in heard})  # played in order: always the first ones
        codes = torch.cat([p.codes[:, :n] for p, n in heard], dim=1) if heard else None
        return Spoken(tuple(self._pieces[i] for i in pieces), codes, self.interrupted)

    def _report(self, source: str, message: str) -> None:
        log.warning("turn %d: %s", self.turn, message)
        self._bus.publish(ErrorEvent(source=source, message=message))


class _Synthesis:
    """One chunk's speech, generated ahead in a task of its own: `get()` gives its audio chunks in order, then None
    (or the engine's error); `aclose()` stops the engine on it."""

    def __init__(self, chunks: AsyncIterator[SpokenChunk]) -> None:
        self._queue: asyncio.Queue[SpokenChunk | Exception | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._pump(chunks))

    async def _pump(self, chunks: AsyncIterator[SpokenChunk]) -> None:
        try:
            async for chunk in chunks:
                self._queue.put_nowait(chunk)
            self._queue.put_nowait(None)
        except Exception as error:
            self._queue.put_nowait(error)

    async def get(self) -> SpokenChunk | Exception | None:
        return await self._queue.get()

    async def aclose(self) -> None:
        self._task.cancel()
        await asyncio.wait([self._task])
