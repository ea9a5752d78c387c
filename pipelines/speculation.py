"""Work started at a pause in the user's speech, before the turn is known to be over.

At a pause the voice loop transcribes the turn so far, starts Mimi-encoding its audio and, once there are words,
starts the LLM on them. None of it is published or remembered: if the user speaks again it is all dropped; if
the turn ends there, the turn takes it over and the reply begins with a head start.

With a quick transcript of the pause (`glance`, detector both), the turn need not wait for the full one: its reply
begins on the quick words, and the full transcript, when it comes, is what the conversation keeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import torch

from assistant.asr import Transcriber, Transcript
from assistant.llm.backend import ChatBackend, Message, ToolCall, ToolSpec
from assistant.vad import Utterance
from pipelines.turn_clock import TurnClock

_DONE = object()


class PrefetchedReply:
    """An LLM stream started ahead of its reply; `follow` replays what came so far, then follows it live. Tool calls
    the model asks for are only passed on: they run once the turn is committed, if at all."""

    def __init__(self, backend: ChatBackend, messages: list[Message], tools: list[ToolSpec]):
        self.messages = messages
        self._cancel = asyncio.Event()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._pump = asyncio.create_task(self._run(backend, tools))

    async def _run(self, backend: ChatBackend, tools: list[ToolSpec]) -> None:
        try:
            async for delta in backend.stream(self.messages, self._cancel, tools):
                self._queue.put_nowait(delta)
        except Exception as error:  # raised in the reply, which reports it as any LLM failure
            self._queue.put_nowait(error)
        finally:
            self._queue.put_nowait(_DONE)

    def cancel(self) -> None:
        self._cancel.set()
        self._pump.cancel()

    async def follow(self, cancel: asyncio.Event) -> AsyncIterator[str | ToolCall]:
        async def forward() -> None:  # the reply's interrupt stops the stream
            await cancel.wait()
            self._cancel.set()

        link = asyncio.create_task(forward())
        try:
            while (item := await self._queue.get()) is not _DONE:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            link.cancel()


@dataclass
class Lookahead:
    """What a lull in the user's speech began: the quick transcript (`glance`) and the end-of-turn model's `score` of
    the turn so far, for the pause that may follow with no more speech (the turn ending at `end_sample`)."""

    end_sample: int
    glance: asyncio.Future[Transcript] | None
    score: asyncio.Future[float] | None

    def fits(self, utterance: Utterance) -> bool:
        return utterance.end_sample == self.end_sample

    def cancel(self) -> None:
        for work in (self.glance, self.score):
            if work is not None:
                work.cancel()


class Speculation:
    """What a pause started: `transcript` (a task), `glance` (a quick transcript, a future or None), `codes` (the
    audio's Mimi codes, a future or None) and, once there are words, `reply` (the LLM's answer to `messages` with
    them)."""

    def __init__(
        self,
        utterance: Utterance,
        clock: TurnClock,
        transcriber: Transcriber,
        codes: asyncio.Future[torch.Tensor] | None,
        on_transcript: Callable[[Speculation], None],
        glance: asyncio.Future[Transcript] | None = None,
    ):
        self.utterance = utterance
        self.clock = clock
        self.codes = codes
        self.glance = glance
        self.reply: PrefetchedReply | None = None
        self.others: list[asyncio.Future[Any]] = [glance] if glance is not None else []  # more work started at the
        # pause: the glance, the end-of-turn model
        self.transcript: asyncio.Task[Transcript] = asyncio.create_task(self._transcribe(transcriber))

        def transcribed(task: asyncio.Task[Transcript]) -> None:
            if not (task.cancelled() or task.exception()):
                on_transcript(self)

        self.transcript.add_done_callback(transcribed)

    async def _transcribe(self, transcriber: Transcriber) -> Transcript:
        try:
            return await asyncio.to_thread(transcriber.transcribe, self.utterance.audio)
        finally:
            self.clock.mark("transcript")

    def start_reply(self, backend: ChatBackend, messages: list[Message], tools: list[ToolSpec]) -> None:
        """Start the LLM on `messages`; a reply started before (on other words) is dropped."""
        if self.reply is not None:
            self.reply.cancel()
        self.reply = PrefetchedReply(backend, messages, tools)

    async def words(self) -> tuple[Transcript, asyncio.Task[Transcript] | None]:
        """The turn's words as soon as they are known: the full transcript when it is in first, else the glance's
        words (when it has some) and the full transcript still to come."""
        if self.glance is not None and not self.transcript.done():
            await asyncio.wait([self.glance, self.transcript], return_when=asyncio.FIRST_COMPLETED)
            glance = self.glance
            if not self.transcript.done() and glance.done() and not glance.cancelled() and glance.exception() is None:
                if not glance.result().is_empty:
                    self.clock.mark("transcript")
                    return glance.result(), self.transcript
        return await self.transcript, None

    def matches(self, utterance: Utterance) -> bool:
        """Whether the turn that ended is the one this pause saw (no speech came between)."""
        return utterance.end_sample == self.utterance.end_sample

    def cancel(self) -> None:
        """Drop everything: nothing of it may be heard, published or remembered."""
        self.transcript.cancel()
        for work in self.others:
            work.cancel()
        if self.codes is not None:
            self.codes.cancel()
        if self.reply is not None:
            self.reply.cancel()
