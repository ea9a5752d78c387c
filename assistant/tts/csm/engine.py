"""CSMEngine: text (+ a conversation's context) in, Mimi codes and 24 kHz audio out, whole or streamed."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from tokenizers import Tokenizer

from assistant.segment import Segment

from .budget import FRAME_MS, Budget
from .cached_rows import CachedRows
from .codec import FRAME_SAMPLES, SAMPLE_RATE, MimiCodec, check_mimi, load_mimi
from .config import CSMConfig
from .engine_thread import EngineThread
from .graphs import CUDAGraphFrames
from .hugepages import in_huge_pages
from .model import CSMModel
from .prompt import TextEncoder
from .sampling import TopKSampler
from .speech_plan import Prompts, SpeechRequest
from .weights import check_tokenizer, load_tokenizer, read_checkpoint, resolve_checkpoint


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


T = TypeVar("T")
WARM_UP_MODES = ((0.9, 50), (0.0, 1))  # Sesame's default sampling, and greedy: the CUDA graphs captured at load


def pretrained(
    model: str | Path, tokenizer: Tokenizer | str | Path | None
) -> tuple[CSMConfig, dict[str, torch.Tensor], Tokenizer]:
    """A checkpoint directory or hub id (either layout) read: its config, converted weights, and the tokenizer
    (the directory's tokenizer.json unless one is given). A tokenizer path that is not a tokenizer.json is a
    PathError (`assistant.hub`), told before the checkpoint is fetched or read when it can be."""
    given = tokenizer if tokenizer is None or isinstance(tokenizer, Tokenizer) else check_tokenizer(tokenizer)
    directory = resolve_checkpoint(model)
    found = check_tokenizer(directory / "tokenizer.json") if given is None else given
    config, weights = read_checkpoint(directory)
    return config, weights, found if isinstance(found, Tokenizer) else load_tokenizer(found)


def placed(weights: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The weights on `device` in `dtype`, contiguous; on a CPU in huge pages where Linux offers them (embeddings
    too: on a VM a 32-row gather took 4-14 ms from 4 KiB pages, 0.4 from 2 MiB)."""
    on_device = {name: w.to(device, dtype).contiguous() for name, w in weights.items()}
    return in_huge_pages(on_device) if device.type == "cpu" else on_device


def warm_up_requests() -> list[SpeechRequest]:
    """What an engine speaks at load: a short request after a context with audio, in each of `WARM_UP_MODES`."""
    context = [Segment(0, "Warming up.", audio=np.zeros(4 * FRAME_SAMPLES, np.float32))]
    return [SpeechRequest("Warming up.", 1, context, t, k, 0, 4 * FRAME_MS) for t, k in WARM_UP_MODES]


class CSMEngine:
    """Sesame's CSM: one generation at a time, all of it on the engine's own thread (see `engine_thread.py`).

    Construction runs on that thread and ends with a warm-up there (a short stream in each sampling mode of
    `WARM_UP_MODES`, Mimi's streaming decode, a context encode), so the first turn costs what later ones do.
    With `cuda_graphs` (CUDA only) the per-frame work and the prompt's prefill replay CUDA graphs, captured at
    load for those modes and on first use for any other top-k; with `fused` the per-frame work is compiled by
    TorchInductor first (`CSMModel.fuse`). With `overlap` (CUDA only), decoding a frame to audio runs on a second
    CUDA stream beside generating the next (the audio is the same). With `reuse_cache`, a prompt that begins with
    rows the backbone's cache already holds prefills only the rest (`cached_rows.py`).

    A `reference` segment (the assistant's voice: a clip and its transcript) heads every prompt and is never
    dropped for room; the context's oldest segments are. At the head, its rows stay in the cache from turn to turn.
    """

    def __init__(
        self,
        model: CSMModel,
        text: TextEncoder,
        codec: MimiCodec,
        budget: Budget | None = None,
        cuda_graphs: bool = False,
        fused: bool = False,
        overlap: bool = True,
        reuse_cache: bool = True,
        thread: EngineThread | None = None,
    ):
        self.model = model
        self.text = text
        self.codec = codec
        self.prompts = Prompts(
            text, codec, budget or Budget(max_seq_len=model.config.max_seq_len), model.config.num_codebooks
        )
        self.overlap = overlap
        self.reuse_cache = reuse_cache
        self.thread = thread or EngineThread()
        self.generator = torch.Generator(model.device)  # reseeded by every request
        self.steps: CSMModel | CUDAGraphFrames = model
        self._cache = CachedRows(model.config.num_codebooks + 1)
        self.thread.call(self._prepare, cuda_graphs, fused)

    def _prepare(self, cuda_graphs: bool, fused: bool) -> None:
        if fused:
            self.model.fuse()
        if cuda_graphs:
            self.steps = CUDAGraphFrames(self.model)
            self.steps.warm_up(*(self.sampler(t, k) for t, k in WARM_UP_MODES))
        self._warm_up()

    def _warm_up(self) -> None:
        """Run what a turn runs, on the engine's thread: context encoding, the prompt's prefill, each sampling mode
        of `WARM_UP_MODES` (compiling or capturing what is lazy), and Mimi's streaming decode (moshi captures its
        CUDA graphs on the first calls)."""
        for request in warm_up_requests():
            for _ in self._chunks(request, lambda: False, 1):
                pass

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path,
        mimi: Any = None,
        tokenizer: Tokenizer | str | Path | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        cuda_graphs: bool = True,
        fused: bool = False,
    ) -> CSMEngine:
        """Load a checkpoint directory or hub id (either layout), its tokenizer.json and Mimi.

        `dtype` defaults to bfloat16 on CUDA and float32 elsewhere. `cuda_graphs` applies on CUDA devices only;
        `fused` compiles the per-frame work (see the class).
        """
        if isinstance(mimi, (str, Path)):
            check_mimi(mimi)  # before the weights are read
        config, weights, tokenizer = pretrained(model, tokenizer)
        return cls.from_weights(config, weights, mimi, tokenizer, device, dtype, cuda_graphs, fused)

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
        fused: bool = False,
    ) -> CSMEngine:
        """An engine from weights already converted (`weights.convert_checkpoint`); the rest as in `from_pretrained`.
        Everything from moving the weights on happens on the engine's thread."""
        device = torch.device(device)
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        thread = EngineThread()

        def load() -> CSMEngine:
            codec = MimiCodec(load_mimi(mimi, config.num_codebooks, device))
            graphs = cuda_graphs and device.type == "cuda"
            model = CSMModel(config, placed(weights, device, dtype))
            return cls(model, TextEncoder(tokenizer), codec, cuda_graphs=graphs, fused=fused, thread=thread)

        return thread.call(load)

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
        reference: Segment | None = None,
    ) -> GenerationResult:
        """Speak `text` as `speaker` after `reference` and `context`; returns all frames and their one-shot decoded
        audio."""
        request = SpeechRequest(text, speaker, tuple(context), temperature, topk, seed, max_audio_ms, reference)

        def run() -> GenerationResult:
            codes = self._stack(list(self._frames(request, stopper(cancel), lambda frame, read: read)))
            return GenerationResult(codes, self.codec.decode(codes))

        return self.thread.call(run)

    async def encode(self, audio: np.ndarray, sample_rate: int) -> torch.Tensor:
        """Mimi codes `[K, frames]` (on the CPU) of mono audio at any rate, for a context segment; on the engine's
        thread, queued behind any generation in progress."""
        return await self.thread.run(self.codec.encode, audio, sample_rate)

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
        reference: Segment | None = None,
    ) -> AsyncGenerator[AudioChunk, None]:
        """Yield audio as it is generated: the first chunk after the first frame, then `chunk_frames` at a time.

        The model runs on the engine's thread; setting `cancel`, or closing the iterator (`contextlib.aclosing`
        when leaving a loop early), stops it within one frame and frees the engine.
        """
        request = SpeechRequest(text, speaker, tuple(context), temperature, topk, seed, max_audio_ms, reference)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        closed = threading.Event()
        done = object()

        def produce() -> None:
            try:
                for chunk in self._chunks(request, stopper(cancel, closed), chunk_frames):
                    loop.call_soon_threadsafe(queue.put_nowait, chunk)
                loop.call_soon_threadsafe(queue.put_nowait, done)
            except BaseException as error:  # handed to the consumer
                loop.call_soon_threadsafe(queue.put_nowait, error)

        worker = asyncio.wrap_future(self.thread.submit(produce))
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

    def _chunks(self, request: SpeechRequest, stop: Callable[[], bool], chunk_frames: int) -> Iterator[AudioChunk]:
        with self.codec.stream(self.overlap) as decoder:
            codes: list[torch.Tensor] = []
            audio: list[np.ndarray] = []
            size = 1
            for frame, decoded in self._frames(request, stop, lambda frame, read: (read, decoder.submit(frame))):
                codes.append(frame)
                audio.append(decoded.result())
                if len(codes) >= size:
                    yield AudioChunk(np.concatenate(audio), self._stack(codes))
                    codes, audio, size = [], [], max(1, chunk_frames)
            if codes:
                yield AudioChunk(np.concatenate(audio), self._stack(codes))

    def _frames(
        self, request: SpeechRequest, stop: Callable[[], bool], submit: Callable[[torch.Tensor, torch.Tensor], T]
    ) -> Iterator[T]:
        """The generation loop: `submit(frame, read)` for each frame `[K]` (on the model's device, and as read on
        the host) until the all-zero frame, the length cap, or `stop()`, yielding what it returns. From the second
        frame on, a frame is submitted once the next frame's work has been queued: on a GPU, what `submit` starts
        (decoding the frame's audio on a second stream) runs beside the model, the host's time launching it is
        hidden too, and nothing the caller does with `read` waits for the model. The first frame is submitted at
        once, for the first audio."""
        steps = self.steps
        if request.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(request.seed)
        sampler = self.sampler(request.temperature, request.topk)
        plan = self.prompts.plan(request)
        with torch.inference_mode():  # once for the loop: entering it per call cost more than a tiny model's step
            while (piece := plan.next()) is not None:
                codes = steps.decode_frame(self._prefill(piece.tokens, piece.mask), sampler)
                spoken: list[torch.Tensor] = []
                for n in range(piece.frames):
                    if stop():
                        break
                    read = codes.cpu()  # waits for this frame, and no more
                    if not read.any():  # the all-zero frame ends the utterance
                        break
                    spoken.append(read)
                    if n == 0:  # first audio waits for nothing more
                        yield submit(codes, read)
                    done = codes
                    if n + 1 < piece.frames:
                        self._cache.append(read)
                        codes = steps.decode_frame(steps.append_frame(codes), sampler)
                    if n > 0:
                        yield submit(done, read)
                if stop():
                    return
                plan.spoke(spoken)

    def forget_cache(self) -> None:
        """Prefill the next prompt in full: the model's cache was written around the engine (as a benchmark that
        drives `steps` directly does), or a measurement wants the full cost."""
        self._cache.clear()

    def _prefill(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        start = self._cache.shared(tokens, mask) if self.reuse_cache else 0
        hidden = self.steps.prefill(tokens[start:], mask[start:], start)
        self._cache.hold(tokens, mask)
        return hidden

    def sampler(self, temperature: float, topk: int) -> TopKSampler:
        """A sampler drawing from this engine's generator (the one its CUDA graphs were captured with)."""
        return TopKSampler(temperature, topk, self.model.config.codec_bins, self.generator)

    @property
    def budget(self) -> Budget:
        return self.prompts.budget

    @budget.setter
    def budget(self, budget: Budget) -> None:
        self.prompts.budget = budget

    def prompt(
        self,
        text: str,
        speaker: int = 1,
        context: Sequence[Segment] = (),
        max_audio_ms: float | None = None,
        reference: Segment | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone's input rows `[T, K+1]` and mask for `text` (one piece) after `reference` and `context`, as
        `generate` builds them."""
        ids = self.text.encode(text, speaker)
        room = self.prompts.room(ids, max_audio_ms)
        # audio is encoded on the engine's thread
        return self.thread.call(self.prompts.prompt, reference, context, ids, room)

    @property
    def reference_limit(self) -> int:
        return self.prompts.reference_limit

    def reference_positions(self, reference: Segment) -> int:
        """The positions `reference` takes in every prompt; ValueError beyond `reference_limit`, naming it."""
        return self.prompts.reference_positions(reference)

    def _stack(self, frames: list[torch.Tensor]) -> torch.Tensor:
        if not frames:
            return torch.zeros(self.model.config.num_codebooks, 0, dtype=torch.long)
        return torch.stack(frames, dim=1).cpu()


def stopper(*signals: CancelSignal | None) -> Callable[[], bool]:
    active = [s for s in signals if s is not None]
    return lambda: any(s.is_set() for s in active)
