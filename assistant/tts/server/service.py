"""The server's state: its settings, the engine once loaded, the slots, the open streams and the metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch

from assistant.segment import Segment

from .admission import Admission
from .errors import unavailable
from .metrics import Metrics

Phase = Literal["loading", "ready", "draining"]
log = logging.getLogger(__name__)


class Engine(Protocol):
    """What the server needs of a CSM engine (`assistant.tts.csm.CSMEngine`, or a batched one with `slots`)."""

    codec: Any  # .fingerprint: names the Mimi weights
    model: Any  # .config.num_codebooks, .config.codec_bins
    prompts: Any  # .text.encode(text, speaker): the tokens of a text

    @property
    def budget(self) -> Any: ...  # .max_seq_len

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
    ) -> AsyncGenerator[Any, None]: ...

    async def encode(self, audio: np.ndarray, sample_rate: int) -> torch.Tensor: ...

    def reference_positions(self, segment: Segment) -> int: ...


@dataclass(frozen=True)
class Settings:
    model_id: str  # the name clients give as `model`, and /v1/models lists
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # None: no Authorization needed
    max_input_chars: int = 4096
    max_queue: int = 64
    drain_s: float = 10.0  # on shutdown, how long open streams may run on before they are cancelled
    cors_origins: tuple[str, ...] = ()  # origins a browser page may call from ("*": any); none: no CORS


class SpeechService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine: Engine | None = None
        self.phase: Phase = "loading"
        self.admission = Admission(1, settings.max_queue)  # sized by the engine when it is ready
        self.metrics = Metrics()
        self.created = int(time.time())
        self._streams: dict[asyncio.Event, str] = {}  # each open stream's cancel event, and its request's id

    def ready(self, engine: Engine) -> None:
        self.engine = engine
        self.admission = Admission(getattr(engine, "slots", 1), self.settings.max_queue)
        self.phase = "ready"

    def serving(self) -> Engine:
        """The engine, or 503 while it loads or the server drains."""
        if self.phase == "loading" or self.engine is None:
            raise unavailable("the speech model is still loading")
        if self.phase == "draining":
            raise unavailable("the speech server is shutting down")
        return self.engine

    @contextmanager
    def stream(self, request_id: str = "-") -> Iterator[asyncio.Event]:
        """The cancel event of a stream being generated: set by `drain` once its time is up."""
        cancel = asyncio.Event()
        self._streams[cancel] = request_id
        try:
            yield cancel
        finally:
            self._streams.pop(cancel, None)

    async def drain(self, grace_s: float) -> None:
        """Refuse new requests (503) and the waiting ones; let open streams finish for `grace_s`, then cancel them
        (each stops within a frame)."""
        self.phase = "draining"
        self.admission.close()
        if not await _until(lambda: not self._streams, grace_s):
            log.warning(
                "drained for %.1f s: cutting %d stream(s) still speaking (request %s)",
                grace_s,
                len(self._streams),
                ", ".join(self._streams.values()),
            )
            for cancel in self._streams:
                cancel.set()
            await _until(lambda: not self._streams, 10.0)


async def _until(done: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True
