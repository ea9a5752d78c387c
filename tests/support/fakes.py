"""Fakes for unit tests of the voice loop's logic: stand-ins for CSM, the LLM and the speaker.

They keep the real contracts (AudioSink, SpeechEngine, ChatBackend) and record what happened to
them; end-to-end tests use the real parts instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from assistant.asr import Transcript
from assistant.llm.backend import LlmError, Message, ToolCall, ToolSpec
from assistant.segment import Segment

FRAME = 1920


@dataclass
class FakeChunk:
    audio: np.ndarray
    codes: torch.Tensor


@dataclass
class FakeSpeechEngine:
    """Speaks `frames_per_text` frames per text, one per `frame_s`; frame codes count up from 1.

    The text `fail_on` raises after `fail_after_frames` of its frames.
    """

    frames_per_text: int = 3
    frame_s: float = 0.0
    codebooks: int = 4
    fail_on: str | None = None
    fail_after_frames: int = 0
    calls: list[tuple[str, list[Segment]]] = field(default_factory=list)
    references: list[Segment | None] = field(default_factory=list)  # the reference voice of each call
    cancelled: int = 0
    cache_forgotten: int = 0
    _next_code: int = 1

    def forget_cache(self) -> None:
        self.cache_forgotten += 1

    async def stream(
        self,
        text: str,
        speaker: int = 1,
        context: Sequence[Segment] = (),
        temperature: float = 0.9,
        topk: int = 50,
        seed: int | None = None,
        max_audio_ms: float | None = None,
        cancel: Any = None,
        chunk_frames: int = 1,
        reference: Segment | None = None,
    ) -> AsyncIterator[FakeChunk]:
        self.calls.append((text, list(context)))
        self.references.append(reference)
        try:
            for n in range(self.frames_per_text):
                if text == self.fail_on and n == self.fail_after_frames:
                    raise RuntimeError("the fake engine was told to fail")
                await asyncio.sleep(self.frame_s)
                if cancel is not None and cancel.is_set():
                    self.cancelled += 1
                    return
                codes = torch.full((self.codebooks, 1), self._next_code, dtype=torch.long)
                self._next_code += 1
                yield FakeChunk(np.full(FRAME, 0.1, np.float32), codes)
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise


class ManualSink:
    """A speaker whose playback the test moves forward with `advance`, like a clock it controls."""

    def __init__(self) -> None:
        self.queued = 0  # end position of everything queued
        self._played = 0
        self.interrupts = 0
        self.paused = False
        self.pauses = 0
        self.chunks: list[np.ndarray] = []
        self._waiters: list[tuple[int, asyncio.Future[bool]]] = []

    def play(self, audio: np.ndarray) -> int:
        self.chunks.append(audio)
        self.queued += len(audio)
        return self.queued

    @property
    def played(self) -> int:
        return self._played

    def advance(self, samples: int) -> None:
        if not self.paused:
            self._played = min(self.queued, self._played + samples)
        self._wake()

    def pause(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume(self) -> None:
        self.paused = False

    def interrupt(self) -> None:
        self.interrupts += 1
        self.paused = False
        self.queued = self._played
        self._wake(dropped=True)

    async def wait_played(self, position: int) -> bool:
        if self._played >= position:
            return True
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append((position, future))
        return await future

    def _wake(self, dropped: bool = False) -> None:
        for position, future in list(self._waiters):
            if not future.done() and (self._played >= position or dropped):
                future.set_result(self._played >= position)
        self._waiters = [(p, f) for p, f in self._waiters if not f.done()]

    async def aclose(self) -> None:
        self._wake(dropped=True)


class FakeBackend:
    """An LLM that streams the given deltas (text, and tool calls), then optionally fails; records the messages and
    tools of each request, cancellation and closing. Request n streams `replies[n]` (the last one again after
    the last), the first being `deltas`."""

    name = "fake"

    def __init__(
        self,
        deltas: Sequence[str | ToolCall],
        fail_after: int | None = None,
        delay_s: float = 0.0,
        *,
        then: Sequence[Sequence[str | ToolCall]] = (),
    ) -> None:
        self.replies = [list(deltas), *(list(reply) for reply in then)]
        self.fail_after = fail_after
        self.delay_s = delay_s
        self.messages: list[list[Message]] = []
        self.tools: list[list[ToolSpec]] = []
        self.streams_closed = 0

    @property
    def deltas(self) -> list[str | ToolCall]:
        return self.replies[min(len(self.messages), len(self.replies) - 1)]

    async def start(self) -> None:
        return None

    async def stream(
        self, messages: list[Message], cancel: asyncio.Event | None = None, tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[str | ToolCall]:
        deltas = self.deltas
        self.messages.append(list(messages))
        self.tools.append(list(tools))
        try:
            for i, delta in enumerate(deltas):
                if i == self.fail_after:
                    raise LlmError("the fake LLM was told to fail", before_first_token=i == 0)
                await asyncio.sleep(self.delay_s)
                if cancel is not None and cancel.is_set():
                    return
                yield delta
            if self.fail_after is not None and self.fail_after >= len(deltas):
                raise LlmError("the fake LLM was told to fail", before_first_token=not deltas)
        finally:
            self.streams_closed += 1

    async def aclose(self) -> None:
        return None


class FakeTranscriber:
    """Returns the given texts in turn, whatever the audio."""

    def __init__(self, *texts: str) -> None:
        self.texts = list(texts)
        self.heard: list[np.ndarray] = []

    def transcribe(self, audio: np.ndarray) -> Transcript:
        self.heard.append(audio)
        return Transcript(self.texts.pop(0), "en", len(audio) / 16_000)

    def glance(self, audio: np.ndarray) -> Transcript:
        """The quick look hears what the transcript will (the next text, not taken)."""
        return Transcript(self.texts[0] if self.texts else "", "en", len(audio) / 16_000)


class QueueSource:
    """A microphone the test speaks into with `put`; `end()` closes it."""

    def __init__(self) -> None:
        self._blocks: asyncio.Queue[np.ndarray | None] = asyncio.Queue()

    def put(self, audio: np.ndarray, block: int = 480) -> None:
        for start in range(0, len(audio), block):
            self._blocks.put_nowait(audio[start : start + block])

    def end(self) -> None:
        self._blocks.put_nowait(None)

    async def blocks(self) -> AsyncIterator[np.ndarray]:
        while (block := await self._blocks.get()) is not None:
            yield block

    async def aclose(self) -> None:
        self.end()


def loud(seconds: float, rate: int = 16_000) -> np.ndarray:
    """'Speech' for the energy classifier below."""
    return np.full(int(seconds * rate), 0.5, np.float32)


def quiet(seconds: float, rate: int = 16_000) -> np.ndarray:
    return np.zeros(int(seconds * rate), np.float32)


def energy_classifier(frame: np.ndarray) -> bool:
    """A stand-in for webrtcvad: loud frames are speech."""
    return float(np.abs(frame).mean()) > 0.1


def drain(queue: asyncio.Queue) -> list:
    """Everything waiting in an event subscription's queue, taken out."""
    return [queue.get_nowait() for _ in range(queue.qsize())]
