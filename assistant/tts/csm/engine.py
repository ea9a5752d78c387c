"""CSMEngine: text (+ a conversation's context) in, Mimi codes and 24 kHz audio out, whole or streamed."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tokenizers import Tokenizer

from assistant.segment import Segment

from .budget import Budget, split_sentences
from .codec import SAMPLE_RATE, MimiCodec, load_mimi
from .config import CSMConfig
from .graphs import CUDAGraphFrames
from .hugepages import in_huge_pages
from .model import CSMModel
from .prompt import TextEncoder, audio_rows, text_rows
from .sampling import TopKSampler
from .weights import read_checkpoint, resolve_checkpoint


class CancelSignal(Protocol):
    """`asyncio.Event` or `threading.Event`: generation stops before the next frame once it is set."""

    def is_set(self) -> bool: ...


@dataclass
class GenerationResult:
    codes: torch.Tensor  # LongTensor [num_codebooks, frames], on the CPU
    audio: np.ndarray  # float32, 24 kHz
    sample_rate: int = SAMPLE_RATE


@dataclass
class AudioChunk:
    audio: np.ndarray  # float32, 24 kHz: 1920 samples per frame
    codes: torch.Tensor  # the frames behind it, LongTensor [num_codebooks, frames]
    sample_rate: int = SAMPLE_RATE


@dataclass(frozen=True)
class _Request:
    text: str
    speaker: int
    context: Sequence[Segment]
    temperature: float
    topk: int
    seed: int | None
    max_audio_ms: float | None


class CSMEngine:
    """Sesame's CSM: one generation at a time (calls from several threads queue on a lock).

    With `cuda_graphs` (CUDA only) the per-frame work replays CUDA graphs, captured here for Sesame's default
    sampling and for greedy, and on first use for any other top-k.
    """

    def __init__(
        self, model: CSMModel, text: TextEncoder, codec: MimiCodec, budget: Budget | None = None, cuda_graphs: bool = False
    ):
        self.model = model
        self.text = text
        self.codec = codec
        self.budget = budget or Budget(max_seq_len=model.config.max_seq_len)
        self.generator = torch.Generator(model.device)  # reseeded by every request
        self.steps: CSMModel | CUDAGraphFrames = model
        if cuda_graphs:
            self.steps = CUDAGraphFrames(model)
            self.steps.warm_up(self.sampler(0.9, 50), self.sampler(0, 1))
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path,
        mimi: Any = None,
        tokenizer: Tokenizer | str | Path | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        cuda_graphs: bool = True,
    ) -> CSMEngine:
        """Load a checkpoint directory or hub id (either layout), its tokenizer.json and Mimi.

        `dtype` defaults to bfloat16 on CUDA and float32 elsewhere. `cuda_graphs` applies on CUDA devices only.
        """
        directory = resolve_checkpoint(model)
        config, weights = read_checkpoint(directory)
        tokenizer = tokenizer if tokenizer is not None else directory / "tokenizer.json"
        return cls.from_weights(config, weights, mimi, tokenizer, device, dtype, cuda_graphs)

    @classmethod
    def from_weights(
        cls,
        config: CSMConfig,
        weights: dict[str, torch.Tensor],
        mimi: Any,
        tokenizer: Tokenizer | str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        cuda_graphs: bool = True,
    ) -> CSMEngine:
        """An engine from weights already converted (`weights.convert_checkpoint`); the rest as in `from_pretrained`."""
        device = torch.device(device)
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        weights = {name: w.to(device, dtype).contiguous() for name, w in weights.items()}
        if device.type == "cpu":  # embeddings too: on a VM a 32-row gather took 4-14 ms from 4 KiB pages, 0.4 from 2 MiB
            weights = in_huge_pages(weights)
        codec = MimiCodec(load_mimi(mimi, config.num_codebooks, device))
        graphs = cuda_graphs and device.type == "cuda"
        return cls(CSMModel(config, weights), TextEncoder(tokenizer), codec, cuda_graphs=graphs)

    def generate(
        self,
        text: str,
        speaker: int = 1,
        context: Sequence[Segment] = (),
        temperature: float = 0.9,
        topk: int = 50,
        seed: int | None = None,
        max_audio_ms: float | None = None,
        cancel: CancelSignal | None = None,
    ) -> GenerationResult:
        """Speak `text` as `speaker` after `context`; returns all frames and their one-shot decoded audio."""
        request = _Request(text, speaker, tuple(context), temperature, topk, seed, max_audio_ms)
        with self._lock:
            frames = list(self._frames(request, _stopper(cancel)))
            codes = self._stack(frames)
            return GenerationResult(codes, self.codec.decode(codes))

    async def stream(
        self,
        text: str,
        speaker: int = 1,
        context: Sequence[Segment] = (),
        temperature: float = 0.9,
        topk: int = 50,
        seed: int | None = None,
        max_audio_ms: float | None = None,
        cancel: CancelSignal | None = None,
        chunk_frames: int = 1,
    ) -> AsyncIterator[AudioChunk]:
        """Yield audio as it is generated: the first chunk after the first frame, then `chunk_frames` at a time.

        The model runs in a worker thread; setting `cancel`, or closing the iterator (`contextlib.aclosing`
        when leaving a loop early), stops it within one frame and frees the engine.
        """
        request = _Request(text, speaker, tuple(context), temperature, topk, seed, max_audio_ms)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        closed = threading.Event()
        done = object()

        def produce() -> None:
            try:
                for chunk in self._chunks(request, _stopper(cancel, closed), chunk_frames):
                    loop.call_soon_threadsafe(queue.put_nowait, chunk)
                loop.call_soon_threadsafe(queue.put_nowait, done)
            except BaseException as error:  # handed to the consumer
                loop.call_soon_threadsafe(queue.put_nowait, error)

        worker = loop.run_in_executor(None, produce)
        try:
            while (item := await queue.get()) is not done:
                if isinstance(item, BaseException):
                    raise item
                if cancel is not None and cancel.is_set():
                    break
                yield item
        finally:
            closed.set()
            await worker

    def _chunks(self, request: _Request, stop: Callable[[], bool], chunk_frames: int) -> Iterator[AudioChunk]:
        with self._lock, self.codec.stream() as decode:
            codes: list[torch.Tensor] = []
            audio: list[np.ndarray] = []
            size = 1
            for frame in self._frames(request, stop):
                codes.append(frame)
                audio.append(decode(frame))
                if len(codes) >= size:
                    yield AudioChunk(np.concatenate(audio), self._stack(codes))
                    codes, audio, size = [], [], max(1, chunk_frames)
            if codes:
                yield AudioChunk(np.concatenate(audio), self._stack(codes))

    def _frames(self, request: _Request, stop: Callable[[], bool]) -> Iterator[torch.Tensor]:
        """The generation loop: frames `[K]` until the all-zero frame, the length cap, or `stop()`."""
        steps, budget = self.steps, self.budget
        if request.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(request.seed)
        sampler = self.sampler(request.temperature, request.topk)
        count = lambda piece: len(self.text.encode(piece, request.speaker))  # noqa: E731
        pieces = [request.text] if budget.fits(count(request.text)) else split_sentences(request.text, count, budget.fits)
        context = list(request.context)
        remaining = budget.frames(0, request.max_audio_ms or budget.absolute_ms)
        with torch.inference_mode():  # once for the loop: entering it per call cost more than a tiny model's step
            for piece in pieces:
                ids = self.text.encode(piece, request.speaker)
                frames = min(remaining, budget.frames(len(ids), request.max_audio_ms), budget.max_seq_len - len(ids))
                tokens, mask = self._prompt(context, ids, budget.max_seq_len - len(ids) - frames)
                hidden = steps.prefill(tokens, mask)
                spoken: list[torch.Tensor] = []
                for n in range(frames):
                    if stop():
                        return
                    codes = steps.decode_frame(hidden, sampler)
                    if not codes.any():  # the all-zero frame ends the utterance
                        break
                    spoken.append(codes)
                    yield codes
                    if n + 1 < frames:
                        hidden = steps.append_frame(codes)
                remaining -= len(spoken)
                if remaining <= 0:
                    return
                context.append(Segment(request.speaker, piece, codes=self._stack(spoken)))

    def sampler(self, temperature: float, topk: int) -> TopKSampler:
        """A sampler drawing from this engine's generator (the one its CUDA graphs were captured with)."""
        return TopKSampler(temperature, topk, self.model.config.codec_bins, self.generator)

    def prompt(
        self, text: str, speaker: int = 1, context: Sequence[Segment] = (), max_audio_ms: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone's input rows `[T, K+1]` and mask for `text` (one piece) after `context`, as `generate` builds them."""
        ids = self.text.encode(text, speaker)
        return self._prompt(context, ids, self.budget.max_seq_len - len(ids) - self.budget.frames(len(ids), max_audio_ms))

    def _prompt(self, context: Sequence[Segment], ids: list[int], room: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of the newest context segments that fit in `room` positions (oldest dropped first), then the text."""
        k = self.model.config.num_codebooks
        parts: list[tuple[torch.Tensor, torch.Tensor]] = []
        used = 0
        for segment in reversed(context):
            rows = self._segment_rows(segment)
            used += sum(r.shape[0] for r, _ in rows)
            if used > room:
                break
            parts = rows + parts
        parts.append(text_rows(ids, k))
        return torch.cat([t for t, _ in parts]), torch.cat([m for _, m in parts])

    def _segment_rows(self, segment: Segment) -> list[tuple[torch.Tensor, torch.Tensor]]:
        k = self.model.config.num_codebooks
        rows = [text_rows(self.text.encode(segment.text, segment.speaker), k)]
        codes = segment.codes
        if codes is None and segment.audio is not None:
            codes = self.codec.encode(segment.audio, segment.sample_rate)
        if codes is not None:
            if codes.ndim != 2 or codes.shape[0] < k:
                raise ValueError(f"a context segment's codes must be [>= {k} codebooks, frames], got {tuple(codes.shape)}")
            rows.append(audio_rows(codes[:k]))
        return rows

    def _stack(self, frames: list[torch.Tensor]) -> torch.Tensor:
        if not frames:
            return torch.zeros(self.model.config.num_codebooks, 0, dtype=torch.long)
        return torch.stack(frames, dim=1).cpu()


def _stopper(*signals: CancelSignal | None) -> Callable[[], bool]:
    active = [s for s in signals if s is not None]
    return lambda: any(s.is_set() for s in active)
