"""BatchedCSMEngine: many requests spoken at once, advancing together one frame at a time (continuous batching).

One thread owns the model (as `engine_thread.py` explains for the one-at-a-time engine) and runs a frame loop:
between two frames it takes new requests into free slots (each prompt prefilled into its own slot of the KV
cache), runs calls handed to it, and lets go of requests that ended or were cancelled. Then one batched step gives
every slot in use its next frame, Mimi decodes all of them in one call, and each request's audio goes to its own
consumer. A request that waits for a slot waits in order of arrival. Context audio is encoded between frames in
pieces (Mimi's streaming encoder, the one-shot encoder's codes), a share of a frame's time each, so that streams
speaking go on at their pace while another request's context is encoded.

A request is spoken exactly as `CSMEngine` speaks it (the same prompts and pieces, `speech_plan.py`, and the same
sampler drawing from its own seeded generator), so a seeded request gives the same frames alone or in a batch,
up to the rounding of batched matrix products (none seen in float32 on the CPU; bfloat16 may differ).
"""

from __future__ import annotations

import asyncio
import heapq
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from tokenizers import Tokenizer

from assistant.audio.resample import resample
from assistant.segment import Segment

from .batched_frames import BatchedFrames, BatchGraphs
from .budget import Budget
from .codec import FRAME_SAMPLES, SAMPLE_RATE, MimiCodec, RowDecoder, load_mimi
from .config import CSMConfig
from .engine import AudioChunk, CancelSignal, GenerationResult, placed, pretrained, stopper, warm_up_requests
from .prompt import TextEncoder
from .sampling import TopKSampler
from .speech_plan import Piece, Prompts, SpeechPlan, SpeechRequest

T = TypeVar("T")
Parts = tuple[BatchedFrames, TextEncoder, MimiCodec]
_DONE = object()
CPU_MIMI_GROUP = 8
"""Rows per Mimi call on a CPU (one call for all of them on a GPU, where a call costs its launches): measured on
the tiny codec, 1/2/4/8/16 rows took 2.2/3.7/4.3/5.5/12.1 ms (docs/benchmarks.md)."""
ENCODE_SHARE = 0.4
"""Between two frames, context audio is encoded for about this share of a frame's time (at least one piece), so
that a stream's gaps grow by about this much while another request's context is encoded."""
IDLE_ENCODE_S = 0.25
"""With no stream speaking, encoding returns to the loop this often, to take in new requests."""
MAX_PIECE_FRAMES = 32
"""The most Mimi frames encoded in one piece."""


class EngineClosed(RuntimeError):
    """The engine was closed while a request waited or spoke."""


@dataclass
class _Call:
    """A function handed to the engine's thread, run between two frames."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    done: Future[Any]

    def run(self) -> None:
        try:
            self.done.set_result(self.fn(*self.args))
        except BaseException as error:
            self.done.set_exception(error)


@dataclass
class _Encoding:
    """24 kHz audio being encoded, a piece at a time, between frames (`BatchedCSMEngine._encode`)."""

    pcm: torch.Tensor  # [1, 1, frames * FRAME_SAMPLES], zero-padded as Mimi's one-shot encoder pads it
    done: Future[torch.Tensor]
    codes: list[torch.Tensor] = field(default_factory=list)
    at: int = 0  # samples encoded so far
    left: bool = False  # the caller stopped waiting: encode no more


@dataclass
class _Stream:
    """One request on its way through the frame loop."""

    plan: SpeechPlan
    sampler: TopKSampler
    stop: Callable[[], bool]
    deliver: Callable[[Any], object]  # an AudioChunk, an exception, or _DONE
    chunk_frames: int
    slot: int = -1
    piece: Piece | None = None
    spoken: list[torch.Tensor] = field(default_factory=list)  # this piece's frames so far
    codes: list[torch.Tensor] = field(default_factory=list)  # frames and audio not yet handed out
    audio: list[np.ndarray] = field(default_factory=list)
    handed_out: int = 0  # chunks so far

    def send(self, item: Any) -> None:
        """Hand `item` to the consumer; one that is gone (its event loop closed) stops the stream."""
        try:
            self.deliver(item)
        except RuntimeError:
            self.stop = lambda: True

    def add(self, frame: torch.Tensor, audio: np.ndarray) -> None:
        self.codes.append(frame)
        self.audio.append(audio)
        if len(self.codes) >= (self.chunk_frames if self.handed_out else 1):  # the first chunk waits for one frame
            self.flush()

    def flush(self) -> None:
        if self.codes:
            self.send(AudioChunk(np.concatenate(self.audio), torch.stack(self.codes, dim=1)))
            self.codes, self.audio = [], []
            self.handed_out += 1


class BatchedCSMEngine:
    """CSM for many conversations at once: up to `slots` requests speak together, the rest wait their turn.

    The interface is `CSMEngine`'s (`stream`, `generate`, `encode`, `reference_positions`, `codec`, `budget`), so
    either serves the speech server and the assistant. `active` and `waiting` count the requests speaking and
    waiting; `frames_generated` counts the frames generated since load. With `cuda_graphs` (CUDA only) each batch
    replays the graph of its bucket of rows (`BatchGraphs`). Sampling's top-k may be at most `topk_cap`.
    """

    def __init__(
        self,
        build: Callable[[], Parts],
        budget: Budget | None = None,
        cuda_graphs: bool = False,
    ):
        self.frames_generated = 0
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._waiting: deque[_Stream] = deque()
        self._speaking: dict[int, _Stream] = {}
        self._encodings: deque[_Encoding] = deque()
        self._frame_s = 0.0  # the last frame's time
        self._piece_cost: dict[int, float] = {}  # seconds a piece of encoding took, by its frames (an average)
        self._ready: Future[None] = Future()
        self._closed = False
        self._door = threading.Lock()  # taken to hand something in, and to close: nothing is handed in after that
        self._thread = threading.Thread(
            target=self._run, args=(build, budget, cuda_graphs), name="csm-batch", daemon=True
        )
        self._thread.start()
        self._ready.result()

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path,
        mimi: Any = None,
        tokenizer: Tokenizer | str | Path | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        slots: int = 16,
        topk_cap: int = 100,
        cuda_graphs: bool = True,
    ) -> BatchedCSMEngine:
        """Load a checkpoint (as `CSMEngine.from_pretrained`) for `slots` requests at once."""
        config, weights, tokenizer = pretrained(model, tokenizer)
        return cls.from_weights(config, weights, mimi, tokenizer, device, dtype, slots, topk_cap, cuda_graphs)

    @classmethod
    def from_weights(
        cls,
        config: CSMConfig,
        weights: dict[str, torch.Tensor],
        mimi: Any,
        tokenizer: Tokenizer | str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        slots: int = 16,
        topk_cap: int = 100,
        cuda_graphs: bool = True,
    ) -> BatchedCSMEngine:
        """An engine from weights already converted (`weights.convert_checkpoint`); the rest as in
        `from_pretrained`. Everything from moving the weights on happens on the engine's thread."""
        device = torch.device(device)
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)

        def build() -> Parts:
            codec = MimiCodec(load_mimi(mimi, config.num_codebooks, device))
            return BatchedFrames(config, placed(weights, device, dtype), slots, topk_cap), TextEncoder(tokenizer), codec

        return cls(build, cuda_graphs=cuda_graphs and device.type == "cuda")

    # -- the interface the server and the assistant use ------------------------------------------------------

    @property
    def slots(self) -> int:
        return self._frames.slots

    @property
    def active(self) -> int:
        return len(self._speaking)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def budget(self) -> Budget:
        return self.prompts.budget

    def reference_positions(self, reference: Segment) -> int:
        """The positions `reference` takes in every prompt; ValueError beyond `reference_limit`, naming it."""
        return self.prompts.reference_positions(reference)

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
        """Yield audio as it is generated, as `CSMEngine.stream` does; setting `cancel` or closing the iterator
        frees the request's slot within one frame. Segments with audio and no codes are encoded first (as `encode`
        does: between frames, in pieces)."""
        context = [await self._coded(segment) for segment in context]
        reference = await self._coded(reference) if reference is not None else None
        request = SpeechRequest(text, speaker, tuple(context), temperature, topk, seed, max_audio_ms, reference)
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[Any] = asyncio.Queue()
        closed = threading.Event()
        deliver = lambda item: loop.call_soon_threadsafe(items.put_nowait, item)  # noqa: E731
        self._hand_in(self._new_stream(request, stopper(cancel, closed), deliver, chunk_frames))
        try:
            while (item := await items.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                if cancel is not None and cancel.is_set():
                    break
                yield item
        finally:
            closed.set()

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
        """Speak `text` whole (blocking): all frames, and their one-shot decoded audio."""
        request = SpeechRequest(text, speaker, tuple(context), temperature, topk, seed, max_audio_ms, reference)
        items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._hand_in(self._new_stream(request, stopper(cancel), items.put, 1))
        chunks: list[torch.Tensor] = []
        while (item := items.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            chunks.append(item.codes)
        k = self._frames.model.config.num_codebooks
        codes = torch.cat(chunks, dim=1) if chunks else torch.zeros(k, 0, dtype=torch.long)
        return GenerationResult(codes, self.call(self.codec.decode, codes))

    async def encode(self, audio: np.ndarray, sample_rate: int) -> torch.Tensor:
        """Mimi codes `[K, frames]` (on the CPU) of mono audio at any rate: `MimiCodec.encode`'s codes, computed
        between frames in pieces that leave the streams speaking their pace (`ENCODE_SHARE`)."""
        pcm = await asyncio.to_thread(resample, np.asarray(audio, np.float32).reshape(-1), sample_rate, SAMPLE_RATE)
        job = self._encoding(pcm)
        try:
            return await asyncio.wrap_future(job.done)
        finally:
            job.left = True

    async def _coded(self, segment: Segment) -> Segment:
        if segment.codes is not None or segment.audio is None:
            return segment
        return Segment(segment.speaker, segment.text, codes=await self.encode(segment.audio, segment.sample_rate))

    def _encoding(self, pcm: np.ndarray) -> _Encoding:
        padded = np.zeros(-(-pcm.size // FRAME_SAMPLES) * FRAME_SAMPLES, np.float32)
        padded[: pcm.size] = pcm
        job = _Encoding(torch.from_numpy(padded)[None, None], Future())
        if pcm.size == 0:
            job.done.set_result(torch.zeros(self.model.config.num_codebooks, 0, dtype=torch.long))
        else:
            self._hand_in(job)
        return job

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the engine's thread between two frames and wait for it."""
        if threading.current_thread() is self._thread:
            return fn(*args)
        return self._handoff(fn, *args).result()

    def close(self) -> None:
        """Stop the frame loop: requests still waiting or speaking end with EngineClosed."""
        self._inbox.put(None)
        self._thread.join()

    # -- the frame loop, on the engine's thread ----------------------------------------------------------------

    def _handoff(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        done: Future[T] = Future()
        self._hand_in(_Call(fn, args, done))
        return done

    def _hand_in(self, item: _Stream | _Call | _Encoding) -> None:
        with self._door:
            if self._closed:
                raise EngineClosed("the speech engine was closed")
            self._inbox.put(item)

    def _run(self, build: Callable[[], Parts], budget: Budget | None, graphs: bool) -> None:
        try:
            frames, text, self.codec = build()
            self._frames, self.model = frames, frames.model
            config = self.model.config
            self.prompts = Prompts(
                text, self.codec, budget or Budget(max_seq_len=config.max_seq_len), config.num_codebooks
            )
            self._steps: BatchedFrames | BatchGraphs = BatchGraphs(frames) if graphs else frames
            group = frames.slots if self.model.device.type == "cuda" else CPU_MIMI_GROUP
            self._decoder: RowDecoder = self.codec.rows(frames.slots, group)
            self._free = list(range(frames.slots))  # a heap: the lowest free slot first keeps batches short
            self._encoder = self.codec._streaming_copy(1)  # Mimi's streaming encoder, for `_encode`
            self._warm_up()
        except BaseException as error:
            self._ready.set_exception(error)
            return
        self._ready.set_result(None)
        with torch.inference_mode():
            while self._take_inbox(block=not (self._speaking or self._waiting or self._encodings)):
                self._step()
        with self._door:
            self._closed = True
        left: list[Any] = [*self._waiting, *self._speaking.values(), *self._encodings]
        while not self._inbox.empty():
            left.append(self._inbox.get())
        for item in left:
            closed = EngineClosed("the speech engine was closed")
            if isinstance(item, (_Call, _Encoding)):
                if not item.done.done():
                    item.done.set_exception(closed)
            elif item is not None:
                item.send(closed)

    def _warm_up(self) -> None:
        """The one-at-a-time engine's warm-up requests, run to the end (graphs are
        captured and moshi's first calls made now); a failure fails the load."""
        failures: list[BaseException] = []

        def keep(item: Any) -> None:
            if isinstance(item, BaseException):
                failures.append(item)

        with torch.inference_mode():
            for request in warm_up_requests():
                self._waiting.append(self._new_stream(request, lambda: False, keep, 1))
                while self._waiting or self._speaking:
                    self._step()
            warm = _Encoding(torch.zeros(1, 1, 2 * FRAME_SAMPLES), Future())  # the streaming encoder's first calls
            self._encodings.append(warm)
            while self._encodings:
                self._encode(float("inf"))
            warm.done.result()
            self._piece_cost.clear()
        if failures:
            raise failures[0]
        self.frames_generated = 0

    def _step(self) -> None:
        """Give free slots to waiting requests, then one frame for every speaking request, then a piece of the
        context audio waiting to be encoded."""
        self._admit()
        if self._speaking:
            start = time.perf_counter()
            try:
                self._frame()
            except Exception as error:  # every request in the batch learns why; the engine goes on
                for stream in list(self._speaking.values()):
                    self._end(stream, error)
            self._frame_s = time.perf_counter() - start
        if self._encodings:
            self._encode(ENCODE_SHARE * self._frame_s if self._speaking else IDLE_ENCODE_S)

    def _encode(self, budget_s: float) -> None:
        """Encode pieces of the waiting audio for at most about `budget_s` (at least one piece). A piece is as many
        frames (a power of two) as their cost so far says fit what is left of the budget: on a CPU a streaming Mimi
        call costs ~50 ms however short the piece (8 frames cost ~2 times one); the codes do not depend on it."""
        start = time.perf_counter()
        while self._encodings:
            job, piece_start = self._encodings[0], time.perf_counter()
            if job.left or (job.at == 0 and not job.done.set_running_or_notify_cancel()):  # the request left
                self._encodings.popleft()
                continue
            frames = self._piece_frames(budget_s - (piece_start - start))
            piece = job.pcm[..., job.at : job.at + frames * FRAME_SAMPLES]
            try:
                if job.at == 0:
                    self._encoder.reset_streaming()
                job.codes.append(self._encoder.encode(piece.to(self.codec.device))[0].cpu())
                job.at += piece.shape[-1]
                if job.at == job.pcm.shape[-1]:
                    self._encodings.popleft()
                    job.done.set_result(torch.cat(job.codes, dim=1))
            except Exception as error:
                self._encodings.popleft()
                job.done.set_exception(error)
            now = time.perf_counter()
            if piece.shape[-1] == frames * FRAME_SAMPLES:  # a whole piece: its cost is known better
                self._piece_cost[frames] = (self._piece_cost.get(frames, now - piece_start) + now - piece_start) / 2
            if now - start + self._piece_cost.get(1, 0.0) > budget_s:
                return

    def _piece_frames(self, left_s: float) -> int:
        """The most frames (1, 2, 4...) whose piece's cost fits `left_s`, the first size not tried yet taken to
        cost what the one below it does; 1 at least, and always 1 on a GPU (moshi replays a CUDA graph captured
        for one frame)."""
        frames, cost = 1, self._piece_cost
        while frames < MAX_PIECE_FRAMES and self.codec.device.type == "cpu" and frames in cost:
            if cost.get(2 * frames, cost[frames]) > left_s:
                break
            frames *= 2
        return frames

    def _take_inbox(self, block: bool) -> bool:
        """Move new requests to the waiting line and run handed-off calls; False once the engine is closed."""
        while True:
            try:
                item = self._inbox.get(block=block)
            except queue.Empty:
                return True
            block = False
            if item is None:
                return False
            if isinstance(item, _Call):
                item.run()
            elif isinstance(item, _Encoding):
                self._encodings.append(item)
            else:
                self._waiting.append(item)

    def _new_stream(
        self, request: SpeechRequest, stop: Callable[[], bool], deliver: Callable[[Any], object], chunk_frames: int
    ) -> _Stream:
        """A request made ready to speak (ValueError, at once, for a sampling setting or text it cannot speak)."""
        generator = torch.Generator(self.model.device)
        if request.seed is None:
            generator.seed()
        else:
            generator.manual_seed(request.seed)
        sampler = TopKSampler(request.temperature, request.topk, self.model.config.codec_bins, generator)
        if sampler.topk > self._frames.sampling.topk_cap:
            raise ValueError(f"topk {request.topk} is above this engine's limit of {self._frames.sampling.topk_cap}")
        return _Stream(self.prompts.plan(request), sampler, stop, deliver, max(1, chunk_frames))

    def _admit(self) -> None:
        """Give waiting requests the free slots, in order of arrival; a request cancelled while waiting ends."""
        while self._waiting and self._free:
            stream = self._waiting.popleft()
            if stream.stop():
                stream.send(_DONE)
                continue
            stream.slot = heapq.heappop(self._free)
            self._speaking[stream.slot] = stream
            self._frames.sampling.set_row(stream.slot, stream.sampler)
            self._decoder.restart(stream.slot)
            self._next_piece(stream)

    def _next_piece(self, stream: _Stream) -> None:
        """Prefill the stream's next piece into its slot, or end it when there is none (or its prompt fails)."""
        try:
            stream.piece = stream.plan.next()
            if stream.piece is not None:
                self._frames.prefill(stream.slot, stream.piece.tokens, stream.piece.mask)
                stream.spoken = []
                return
        except Exception as error:
            self._end(stream, error)
            return
        self._end(stream, _DONE)

    def _end(self, stream: _Stream, outcome: Any) -> None:
        if outcome is _DONE and not stream.stop():
            stream.flush()
        stream.send(outcome)
        del self._speaking[stream.slot]
        self._frames.release(stream.slot)
        heapq.heappush(self._free, stream.slot)

    def _frame(self) -> None:
        """One frame for every speaking request: batched step, batched Mimi decode, then each request's part."""
        frames, n = self._frames, max(self._speaking) + 1
        for slot, stream in self._speaking.items():
            frames.sampling.draw(slot, stream.sampler)
        self._steps.decode(n)
        codes = frames.codes[:n].to("cpu", copy=True)  # waits for the step; the buffer is written again next frame
        frames.length = int(frames.pos[:n].max()) + 1 if self._steps is frames else None
        self._steps.append(n)
        ended, spoken = [], torch.zeros(frames.slots, dtype=torch.bool)
        for slot, stream in self._speaking.items():
            if stream.stop():
                ended.append(stream)
            elif codes[slot].any():  # the all-zero frame ends the piece
                spoken[slot] = True
        self.frames_generated += int(spoken.sum())
        rows = torch.zeros(frames.slots, codes.shape[1], dtype=torch.long)
        rows[:n] = codes
        audio = self._decoder.decode(rows, spoken) if spoken.any() else None
        for stream in ended:
            self._end(stream, _DONE)
        for slot, stream in list(self._speaking.items()):
            assert stream.piece is not None
            if spoken[slot]:
                assert audio is not None  # decoded, as a slot spoke
                stream.spoken.append(codes[slot])
                stream.add(codes[slot], audio[slot])
            if not spoken[slot] or len(stream.spoken) >= stream.piece.frames:
                stream.plan.spoke(stream.spoken)
                self._next_piece(stream)
